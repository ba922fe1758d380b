//! `FsCore`: the filesystem as async operations over RPC, independent of
//! FUSE. The FUSE adapter calls these; so can tests.

use crate::cache::BlockCache;
use crate::conn::{MasterConn, NodePool};
use crate::error::{ClientError, Result};
use crate::file::{DirtyBudget, FileState};
use crate::leases::Outcome;
use crate::local_reads::LocalReads;
use crate::names::{Known, Listings};
use crate::scratch::ScratchOpen;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_proto::types::{Attr, DirEntry, FileKind, NewEntry, Owner, SetAttr, StatFs};
use stripefs_proto::{FsError, InodeId};

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// This host's name, for read-local and write-local placement.
    pub host: String,
    /// This host's zone, for read preference.
    pub zone: Option<String>,
    /// How long the kernel may cache attributes.
    pub attr_ttl: Duration,
    /// How long the kernel may cache names.
    pub entry_ttl: Duration,
    /// Refuse every change.
    pub read_only: bool,
    /// Bytes of decoded blocks kept in memory.
    pub cache_bytes: u64,
    /// Unwritten bytes the mount may hold (open files' buffers and
    /// uploads under way) before writers upload and wait.
    pub dirty_limit_bytes: u64,
    /// How long operations wait for an unreachable master before failing.
    pub master_timeout: Duration,
    /// How long one metadata call waits for its answer
    /// ([`crate::conn::METADATA_TIMEOUT`] by default).
    pub call_timeout: Duration,
    /// Read replicas of nodes on this host from their files (see
    /// [`crate::local_reads`]).
    pub local_reads: bool,
    /// Hold directory leases, answering lookups of missing names without
    /// the master (see [`crate::leases`]).
    pub dir_leases: bool,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            host: "localhost".into(),
            zone: None,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            read_only: false,
            cache_bytes: 256 << 20,
            dirty_limit_bytes: 128 << 20,
            master_timeout: Duration::from_secs(60),
            call_timeout: crate::conn::METADATA_TIMEOUT,
            local_reads: true,
            dir_leases: true,
        }
    }
}

/// How long a statfs answer is reused (Ray asks ~17 times a second).
const STATFS_TTL: Duration = Duration::from_secs(1);
/// Entries fetched per readdir RPC.
const READDIR_BATCH: u32 = 4096;

struct OpenEntry {
    refs: usize,
    state: Arc<tokio::sync::Mutex<Option<FileState>>>,
    /// Whether the master holds this client's open reference (its `open`
    /// or `create` answered): only those are re-opened after a reconnect,
    /// not one whose `open` is still being sent, which would otherwise
    /// take a second reference when it is sent again.
    claimed: Arc<std::sync::atomic::AtomicBool>,
    /// A scratch file's plain file and home ([`crate::scratch`]).
    scratch: Option<Arc<ScratchOpen>>,
}

#[derive(Clone, Copy)]
struct Handle {
    ino: InodeId,
    write: bool,
}

/// The client side of one mounted filesystem.
pub struct FsCore {
    pub(crate) master: MasterConn,
    pub(crate) nodes: NodePool,
    /// Data connections to nodes, for chunk uploads.
    pub(crate) data: Arc<stripefs_proto::data_conn::DataPool>,
    pub(crate) cfg: ClientConfig,
    pub(crate) chunk_size: u64,
    fs_id: String,
    files: Mutex<HashMap<InodeId, OpenEntry>>,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_handle: AtomicU64,
    pub(crate) cache: BlockCache,
    statfs_cache: Mutex<Option<(Instant, StatFs)>>,
    /// Directory attributes the master returned with this client's last
    /// change in each directory. The kernel drops a directory's cached
    /// attributes after every change in it and asks for them again right
    /// away (`default_permissions` needs them for the next create or
    /// unlink): that GETATTR is answered from here, once, within
    /// `attr_ttl`, instead of by another round trip to the master.
    fresh_dirs: Mutex<HashMap<InodeId, (Instant, Attr)>>,
    /// Recent directory listings: lookups of existing names without a
    /// round trip (see [`crate::names`]).
    pub(crate) listings: Listings,
    /// Background work of the client (see [`stripefs_daemon::worker`]).
    workers: stripefs_daemon::Workers,
    /// Replicas read from their files on this host.
    pub local: LocalReads,
    /// Unwritten data held by the mount, bounded by `dirty_mb`.
    pub dirty: Arc<DirtyBudget>,
    /// Per file, what it was (size, mtime, ctime at the master) when the
    /// kernel last began caching its pages: an open that finds it the same
    /// lets the kernel keep them (see [`FsCore::open`]).
    page_stamps: Mutex<lru::LruCache<InodeId, Stamp>>,
    /// Where the nodes are, for scratch files' homes.
    pub(crate) node_list: crate::scratch::NodeList,
}

/// What identifies a file's contents at the master: any change of its
/// data sets its mtime and ctime from the master's clock.
type Stamp = (u64, stripefs_proto::types::Timestamp, stripefs_proto::types::Timestamp);

fn stamp(a: &Attr) -> Stamp {
    (a.size, a.mtime, a.ctime)
}

/// Most files whose page-cache stamp is remembered.
const MAX_PAGE_STAMPS: usize = 65536;

/// What a client has done and holds, for its metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientStats {
    /// Block cache lookups that found the block.
    pub cache_hits: u64,
    /// Block cache lookups that did not.
    pub cache_misses: u64,
    /// Blocks in the cache.
    pub cached_blocks: u64,
    /// Unwritten bytes held (buffers and uploads under way).
    pub dirty_bytes: u64,
    /// Of those, the bytes of uploads under way.
    pub uploading_bytes: u64,
    /// Master calls sent again after a broken connection or a timeout.
    pub master_retries: u64,
    /// Connections made again to the master.
    pub master_reconnects: u64,
    /// Files open on this client.
    pub open_files: u64,
    /// Metadata changes the master answered and has not yet reported
    /// durable (kept to replay if it restarts).
    pub held_changes: u64,
    /// Directory leases held.
    pub dir_leases: u64,
    /// Lookups of missing names answered from a directory lease.
    pub lease_lookups: u64,
}

/// A name's attributes and how long the kernel may keep them.
#[derive(Debug, Clone)]
pub struct Looked {
    /// The inode's attributes.
    pub attr: Attr,
    /// How long the kernel may keep the name.
    pub entry_ttl: Duration,
    /// How long the kernel may keep the attributes.
    pub attr_ttl: Duration,
}

/// Most directories [`FsCore`] keeps fresh attributes of.
const MAX_FRESH_DIRS: usize = 4096;

use stripefs_daemon::lock;
use stripefs_proto::ops;

/// Closes kept replica descriptors older than [`crate::local_reads::MAX_AGE`]
/// even when nothing reads: they pin the space of deleted versions. Ends
/// with the client.
struct LocalReadExpiry {
    core: std::sync::Weak<FsCore>,
    closed: u64,
}

impl stripefs_daemon::Worker for LocalReadExpiry {
    fn name(&self) -> String {
        "local-read-expiry".into()
    }

    async fn work(&mut self) -> std::result::Result<stripefs_daemon::Step, String> {
        let Some(core) = self.core.upgrade() else { return Ok(stripefs_daemon::Step::Done) };
        self.closed += core.local.expire() as u64;
        Ok(stripefs_daemon::Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(crate::local_reads::MAX_AGE / 3).await
    }

    fn detail(&self) -> String {
        format!("{} idle replica descriptors closed", self.closed)
    }
}

/// How often the client's background tick runs (see [`MasterConn::tick`]).
const TICK: Duration = Duration::from_millis(100);
/// A change the master answered early is synced once held this long.
const HOLD_AT_MOST: Duration = Duration::from_millis(50);

impl FsCore {
    /// Connects to the master and learns the filesystem's parameters.
    pub async fn connect(
        master_addr: &str,
        secret: stripefs_proto::net::Secret,
        cfg: ClientConfig,
    ) -> anyhow::Result<Arc<FsCore>> {
        let mut master = MasterConn::connect(master_addr, secret.clone(), cfg.master_timeout, &cfg.host)
            .await?
            .with_call_timeout(cfg.call_timeout);
        if !cfg.dir_leases {
            master = master.without_leases();
        }
        let info = master.call(|c, ctx| async move { c.fs_info(ctx).await }).await?;
        let cache = BlockCache::new(cfg.cache_bytes);
        // Below two chunks, every append would upload a partial chunk.
        let dirty_limit = cfg.dirty_limit_bytes.max(2 * u64::from(info.chunk_size));
        if dirty_limit > cfg.dirty_limit_bytes {
            tracing::warn!(
                "dirty_mb is below two chunks of {} KiB: buffering up to {} MiB",
                info.chunk_size / 1024,
                dirty_limit >> 20
            );
        }
        let listings = Listings::new(cfg.entry_ttl.min(cfg.attr_ttl));
        let core = Arc::new(FsCore {
            master,
            nodes: NodePool::new(secret.clone()),
            data: Arc::new(stripefs_proto::data_conn::DataPool::new(secret.clone())),
            local: LocalReads::new(secret),
            node_list: Default::default(),
            dirty: DirtyBudget::new(dirty_limit),
            page_stamps: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_PAGE_STAMPS).expect("not zero"),
            )),
            chunk_size: info.chunk_size as u64,
            fs_id: info.fs_id,
            cfg,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            cache,
            statfs_cache: Mutex::new(None),
            fresh_dirs: Mutex::new(HashMap::new()),
            listings,
            workers: stripefs_daemon::Workers::new(tokio_util::sync::CancellationToken::new()),
        });
        // Changes the master answered early are made durable soon after,
        // even if this client goes idle; an idle client finds a restarted
        // master (which waits for it) within a second.
        {
            let weak = Arc::downgrade(&core);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TICK).await;
                    let Some(core) = weak.upgrade() else { return };
                    core.master.tick(HOLD_AT_MOST).await;
                }
            });
        }
        // Directory leases held are renewed, and recalls answered, by one
        // poll under way at a time (see `crate::leases`).
        {
            let weak = Arc::downgrade(&core);
            tokio::spawn(async move {
                loop {
                    let Some(core) = weak.upgrade() else { return };
                    core.master.poll_leases().await;
                }
            });
        }
        // After a reconnect (e.g. a master restart), open files are opened
        // again so the master keeps unlinked-but-open files alive.
        let weak = Arc::downgrade(&core);
        core.master.set_reconnect_hook(Box::new(move |client| {
            let weak = weak.clone();
            Box::pin(async move {
                let Some(core) = weak.upgrade() else { return };
                let open: Vec<InodeId> = lock(&core.files)
                    .iter()
                    .filter(|(_, e)| e.claimed.load(Ordering::Relaxed))
                    .map(|(ino, _)| *ino)
                    .collect();
                for ino in open {
                    let ctx = stripefs_proto::net::context_with_timeout(core.cfg.call_timeout);
                    match client.open(ctx, ino).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!("re-opening inode {ino} after reconnecting: {e}"),
                        Err(e) => tracing::warn!("re-opening inode {ino} after reconnecting: {e}"),
                    }
                }
            })
        }));
        core.workers.spawn(LocalReadExpiry { core: Arc::downgrade(&core), closed: 0 });
        core.workers.spawn(crate::scratch::SizeReports::new(Arc::downgrade(&core)));
        Ok(core)
    }

    /// Figures for the mount's metrics.
    pub fn stats(&self) -> ClientStats {
        let (cache_hits, cache_misses) = self.cache.hits_and_misses();
        let (master_retries, master_reconnects) = self.master.retries_and_reconnects();
        ClientStats {
            cache_hits,
            cache_misses,
            cached_blocks: self.cache.len() as u64,
            dirty_bytes: self.dirty.used(),
            uploading_bytes: self.dirty.uploading_bytes(),
            master_retries,
            master_reconnects,
            open_files: lock(&self.files).len() as u64,
            held_changes: self.master.held_changes() as u64,
            dir_leases: self.master.leases().held() as u64,
            lease_lookups: self.master.leases().answered(),
        }
    }

    /// What the client's background workers are doing.
    pub fn workers(&self) -> Vec<stripefs_proto::types::WorkerStatus> {
        self.workers.status()
    }

    /// The filesystem id.
    pub fn fs_id(&self) -> &str {
        &self.fs_id
    }

    /// The address of the master the calls go to (the leader of its
    /// group, as last found).
    pub fn master_addr(&self) -> String {
        self.master.addr()
    }

    /// The client's configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    fn writable(&self) -> Result<()> {
        if self.cfg.read_only {
            return Err(ClientError::ReadOnly);
        }
        Ok(())
    }

    /// The inode named `name` in `parent`: from a recent listing of
    /// `parent` when there is one, else from the master (and a directory
    /// looked up in name by name gets its listing fetched). A name that is
    /// not there is answered without the master when this client holds
    /// the directory's lease (see [`crate::leases`]); one that keeps being
    /// asked of the master gets the lease asked for.
    pub async fn lookup(&self, parent: InodeId, name: &str) -> Result<Looked> {
        if let Known::Found(attr, left) = self.listings.lookup(parent, name) {
            return Ok(Looked {
                attr: self.with_local_size(attr).await,
                entry_ttl: left.min(self.cfg.entry_ttl),
                attr_ttl: left.min(self.cfg.attr_ttl),
            });
        }
        if self.master.leases().absent(parent, name) {
            return Err(FsError::NotFound.into());
        }
        let name = name.to_string();
        let looked = self
            .master
            .call(|c, ctx| {
                let a1 = name.clone();
                async move { c.lookup(ctx, parent, a1).await }
            })
            .await;
        if matches!(looked, Err(ClientError::Fs(FsError::NotFound))) && self.master.leases().missed(parent) {
            self.master.ask_lease(parent).await;
        }
        let attr = looked?;
        if self.listings.begin_fetch(parent) {
            let at = Instant::now();
            match self.list_dir(parent, Some(crate::names::MAX_LISTED)).await {
                Ok(entries) => self.listings.store(parent, at, entries.as_deref()),
                Err(e) => {
                    tracing::debug!("listing directory {parent}: {e}");
                    self.listings.fetch_failed(parent);
                }
            }
        }
        Ok(Looked {
            attr: self.with_local_size(attr).await,
            entry_ttl: self.cfg.entry_ttl,
            attr_ttl: self.cfg.attr_ttl,
        })
    }

    /// Attributes, with the size this client has written but not uploaded.
    pub async fn getattr(&self, ino: InodeId) -> Result<Attr> {
        if let Some(attr) = self.take_fresh_dir(ino) {
            return Ok(attr);
        }
        let attr = self.master.call(|c, ctx| async move { c.getattr(ctx, ino).await }).await?;
        Ok(self.with_local_size(attr).await)
    }

    /// Keeps a directory's attributes as a change of this client left them.
    fn remember_dir(&self, attr: Option<Attr>) {
        let Some(attr) = attr else { return };
        let mut fresh = lock(&self.fresh_dirs);
        if fresh.len() >= MAX_FRESH_DIRS {
            fresh.clear();
        }
        fresh.insert(attr.ino, (Instant::now(), attr));
    }

    /// The inode a create or mkdir made, keeping its directory's attributes.
    fn made(&self, made: NewEntry) -> Attr {
        self.remember_dir(made.parent);
        made.attr
    }

    /// Forgets what [`FsCore::remember_dir`] kept of `dir` (another change
    /// of this client made it stale).
    fn forget_dir(&self, dir: InodeId) {
        lock(&self.fresh_dirs).remove(&dir);
    }

    /// The attributes [`FsCore::remember_dir`] kept of `ino`, if still
    /// within `attr_ttl`; taken, so the next ask goes to the master.
    fn take_fresh_dir(&self, ino: InodeId) -> Option<Attr> {
        let (at, attr) = lock(&self.fresh_dirs).remove(&ino)?;
        (at.elapsed() < self.cfg.attr_ttl).then_some(attr)
    }

    /// `attrs` with the sizes this client has written but not uploaded
    /// (for readdirplus, which must not shrink a file being written).
    pub async fn with_local_sizes(&self, attrs: impl Iterator<Item = Attr>) -> Vec<Attr> {
        let mut out = Vec::new();
        for a in attrs {
            out.push(self.with_local_size(a).await);
        }
        out
    }

    async fn with_local_size(&self, mut attr: Attr) -> Attr {
        if attr.kind != FileKind::File {
            return attr;
        }
        if let Some(sc) = self.scratch_of(attr.ino) {
            let (size, allocated) = sc.size(attr.size);
            attr.size = size;
            attr.allocated_bytes = allocated.unwrap_or(attr.allocated_bytes);
            return attr;
        }
        let state = lock(&self.files).get(&attr.ino).map(|e| e.state.clone());
        if let Some(state) = state {
            if let Some(st) = state.lock().await.as_mut() {
                attr.size = st.visible_size(attr.size);
                // Buffered bytes will take space once uploaded.
                attr.allocated_bytes += st.dirty_bytes;
            }
        }
        attr
    }

    /// Changes attributes; a size change first uploads buffered writes.
    pub async fn setattr(self: &Arc<Self>, ino: InodeId, set: SetAttr) -> Result<Attr> {
        self.writable()?;
        self.forget_dir(ino);
        let r = self.setattr_inner(ino, set).await;
        self.listings.changed(ino);
        r
    }

    async fn setattr_inner(self: &Arc<Self>, ino: InodeId, set: SetAttr) -> Result<Attr> {
        // A scratch file's plain file is cut or extended before the master
        // hears of it; one not open here after (the master says where it is).
        if let (Some(sc), Some(size)) = (self.scratch_of(ino), set.size) {
            self.scratch_truncate(Some(&sc), ino, sc.home, size).await?;
            return self.master.mutate(ops::SetAttrs { ino, set }).await;
        }
        let resize = set.size.is_some();
        let attr = self.setattr_master(ino, set).await?;
        if let (true, Some(home)) = (resize, attr.home) {
            self.scratch_truncate(None, ino, home, attr.size).await?;
        }
        Ok(attr)
    }

    /// A setattr of a file that is not a scratch file open here.
    async fn setattr_master(self: &Arc<Self>, ino: InodeId, set: SetAttr) -> Result<Attr> {
        let state = lock(&self.files).get(&ino).map(|e| e.state.clone());
        // Buffered writes land before a size or time change, so the upload's
        // commit can neither undo a truncate nor overwrite an explicit mtime.
        if set.size.is_some() || set.mtime.is_some() || set.atime.is_some() {
            if let Some(state) = &state {
                let mut guard = state.lock().await;
                if let Some(st) = guard.as_mut() {
                    self.flush_state(st).await?;
                    let attr = self.master.mutate(ops::SetAttrs { ino, set: set.clone() }).await?;
                    if set.size.is_some() {
                        st.truncated(attr.size, self.chunk_size);
                    }
                    return Ok(attr);
                }
            }
        }
        self.master.mutate(ops::SetAttrs { ino, set }).await
    }

    /// Drops the setuid bit, and the setgid bit of a group-executable
    /// file, from `attr`'s inode if it has them (what a write or truncate
    /// by an unprivileged user and a chown do); returns the attributes after.
    pub async fn kill_suidgid(self: &Arc<Self>, attr: Attr) -> Result<Attr> {
        let mut perm = attr.perm as u32;
        perm &= !0o4000;
        if perm & 0o010 != 0 {
            perm &= !0o2000;
        }
        if perm == attr.perm as u32 {
            return Ok(attr);
        }
        self.setattr(attr.ino, SetAttr { mode: Some(perm), ..Default::default() }).await
    }

    /// Creates a non-directory inode.
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &str,
        kind: FileKind,
        perm: u32,
        owner: Owner,
        rdev: u32,
    ) -> Result<Attr> {
        self.writable()?;
        self.forget_dir(parent);
        let name = name.to_string();
        self.master.leases().before(parent, &name);
        let r = self.master.mutate(ops::Mknod { parent, name: name.clone(), kind, perm, owner, rdev }).await;
        self.added(parent, &name, r)
    }

    /// Records in the listings and the leases what a create of `name` in
    /// `parent` did.
    fn added(&self, parent: InodeId, name: &str, r: Result<Attr>) -> Result<Attr> {
        match &r {
            Ok(attr) => self.listings.added(parent, name, attr),
            Err(_) => self.listings.changed(parent),
        }
        self.leases_after(parent, name, &r, Outcome::Exists, Some(Outcome::Exists));
        r
    }

    /// Tells the leases how this client's change of `name` in `dir` ended:
    /// `done` if it was done, `refused` if the master refused it with
    /// `Exists` (a create) or `NotFound` (a removal), and nothing if it
    /// refused otherwise (the name is as it was).
    fn leases_after<T>(&self, dir: InodeId, name: &str, r: &Result<T>, done: Outcome, refused: Option<Outcome>) {
        let outcome = match r {
            Ok(_) => Some(done),
            Err(ClientError::Fs(FsError::Exists | FsError::NotFound)) => refused,
            // No answer, or one that does not say whether it was applied.
            Err(ClientError::Transport(_))
            | Err(ClientError::Fs(
                FsError::NotLeader | FsError::Internal | FsError::Unavailable | FsError::Stale | FsError::Corrupt,
            )) => Some(Outcome::Unknown),
            Err(ClientError::Fs(_) | ClientError::ReadOnly | ClientError::BadHandle) => None,
        };
        if let Some(o) = outcome {
            self.master.leases().changed(dir, name, o);
        }
    }

    /// Creates a directory.
    pub async fn mkdir(&self, parent: InodeId, name: &str, perm: u32, owner: Owner) -> Result<Attr> {
        self.writable()?;
        let name = name.to_string();
        self.master.leases().before(parent, &name);
        let made = self.master.mutate(ops::Mkdir { parent, name: name.clone(), perm, owner }).await;
        self.added(parent, &name, made.map(|m| self.made(m)))
    }

    /// Creates a symlink.
    pub async fn symlink(&self, parent: InodeId, name: &str, target: &str, owner: Owner) -> Result<Attr> {
        self.writable()?;
        self.forget_dir(parent);
        let (name, target) = (name.to_string(), target.to_string());
        self.master.leases().before(parent, &name);
        let r = self.master.mutate(ops::Symlink { parent, name: name.clone(), target, owner }).await;
        self.added(parent, &name, r)
    }

    /// Reads a symlink.
    pub async fn readlink(&self, ino: InodeId) -> Result<String> {
        self.master.call(|c, ctx| async move { c.readlink(ctx, ino).await }).await
    }

    /// Adds a hard link.
    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &str) -> Result<Attr> {
        self.writable()?;
        self.forget_dir(new_parent);
        let new_name = new_name.to_string();
        self.master.leases().before(new_parent, &new_name);
        let attr = self.master.mutate(ops::Link { ino, new_parent, new_name: new_name.clone() }).await;
        self.leases_after(new_parent, &new_name, &attr, Outcome::Exists, Some(Outcome::Exists));
        // Every other name of the inode has a stale link count now.
        self.listings.changed(ino);
        self.listings.removed(new_parent, &new_name);
        Ok(self.with_local_size(attr?).await)
    }

    /// Removes a name.
    pub async fn unlink(&self, parent: InodeId, name: &str) -> Result<()> {
        self.writable()?;
        let name = name.to_string();
        self.master.leases().before(parent, &name);
        let dir = self.master.mutate(ops::Unlink { parent, name: name.clone() }).await;
        self.leases_after(parent, &name, &dir, Outcome::Gone, Some(Outcome::Gone));
        self.listings.removed(parent, &name);
        self.remember_dir(dir?);
        Ok(())
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: InodeId, name: &str) -> Result<()> {
        self.writable()?;
        let name = name.to_string();
        self.master.leases().before(parent, &name);
        let dir = self.master.mutate(ops::Rmdir { parent, name: name.clone() }).await;
        self.leases_after(parent, &name, &dir, Outcome::Gone, Some(Outcome::Gone));
        self.listings.removed(parent, &name);
        self.remember_dir(dir?);
        Ok(())
    }

    /// Renames (renameat2 flags).
    pub async fn rename(
        &self,
        parent: InodeId,
        name: &str,
        new_parent: InodeId,
        new_name: &str,
        flags: u32,
    ) -> Result<()> {
        self.writable()?;
        let (name, new_name) = (name.to_string(), new_name.to_string());
        let op = ops::Rename { parent, name: name.clone(), new_parent, new_name: new_name.clone(), flags };
        self.master.leases().before(parent, &name);
        self.master.leases().before(new_parent, &new_name);
        let r = self.master.mutate(op).await;
        // An exchange leaves both names there; a refusal leaves both as
        // they were (NotFound: the source was not there).
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let from_done = if exchange { Outcome::Exists } else { Outcome::Gone };
        self.leases_after(parent, &name, &r, from_done, None);
        self.leases_after(new_parent, &new_name, &r, Outcome::Exists, None);
        let (from, to) = r?;
        self.listings.removed(parent, &name);
        self.listings.removed(new_parent, &new_name);
        self.remember_dir(from);
        self.remember_dir(to);
        Ok(())
    }

    /// Opens a directory: its whole listing is fetched now and served from
    /// the handle, so entries are stable while it is read.
    /// It also serves as the directory's recent listing.
    pub async fn opendir(&self, ino: InodeId) -> Result<u64> {
        let at = Instant::now();
        let all = self.list_dir(ino, None).await?.unwrap_or_default();
        self.listings.store(ino, at, (all.len() <= crate::names::MAX_LISTED).then_some(&all[..]));
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(all));
        Ok(fh)
    }

    /// Every entry of `dir`, or `None` once there are more than `max`.
    async fn list_dir(&self, dir: InodeId, max: Option<usize>) -> Result<Option<Vec<DirEntry>>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let a = after.clone();
            let batch = self
                .master
                .call(|c, ctx| {
                    let a1 = a.clone();
                    async move { c.readdir(ctx, dir, a1, READDIR_BATCH).await }
                })
                .await?;
            let n = batch.len();
            after = batch.last().map(|e| e.name.clone());
            all.extend(batch);
            if max.is_some_and(|m| all.len() > m) {
                return Ok(None);
            }
            if n < READDIR_BATCH as usize {
                return Ok(Some(all));
            }
        }
    }

    /// The listing of an open directory handle.
    pub fn dir_entries(&self, fh: u64) -> Result<Arc<Vec<DirEntry>>> {
        lock(&self.dirs).get(&fh).cloned().ok_or(ClientError::BadHandle)
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// Opens a file and returns a handle.
    /// Whether the kernel may keep the pages it caches of the file (FUSE's
    /// KEEP_CACHE) comes with the handle: yes when the master says the file
    /// is as it was at the previous open on this client (same size, mtime
    /// and ctime), so a file read again is read from memory; otherwise the
    /// kernel drops them (close-to-open: another client changed it).
    pub async fn open(&self, ino: InodeId, write: bool) -> Result<(u64, bool)> {
        if write {
            self.writable()?;
        }
        self.open_with(ino, write, None).await
    }

    /// Records what the file is now; whether it was the same before.
    fn same_pages(&self, attr: &Attr) -> bool {
        let now = stamp(attr);
        lock(&self.page_stamps).put(attr.ino, now) == Some(now)
    }

    /// Creates regular file `name` in `parent` and opens it, in one round
    /// trip to the master; returns its attributes and the handle.
    pub async fn create(
        &self,
        parent: InodeId,
        name: &str,
        perm: u32,
        owner: Owner,
        write: bool,
    ) -> Result<(Attr, u64)> {
        self.writable()?;
        let name = name.to_string();
        self.master.leases().before(parent, &name);
        let made = self.master.mutate_shared(ops::Create { parent, name: name.clone(), perm, owner }).await;
        let attr = self.added(parent, &name, made.map(|m| self.made(m)))?;
        let (fh, _) = self.open_with(attr.ino, write, Some(attr.clone())).await?;
        Ok((attr, fh))
    }

    /// Opens `ino` here; `opened` is the master's answer when the master
    /// already took the open reference (a create), otherwise this asks it.
    async fn open_with(&self, ino: InodeId, write: bool, opened: Option<Attr>) -> Result<(u64, bool)> {
        let (state, claimed) = {
            let mut files = lock(&self.files);
            let e = files.entry(ino).or_insert_with(|| OpenEntry {
                refs: 0,
                state: Arc::new(tokio::sync::Mutex::new(None)),
                claimed: Default::default(),
                scratch: None,
            });
            e.refs += 1;
            (e.state.clone(), e.claimed.clone())
        };
        let mut guard = state.lock().await;
        let opened = match (guard.as_mut(), opened) {
            // Just created: the master took the reference already.
            (Some(st), Some(attr)) => {
                st.reopened(attr.size);
                Ok(attr)
            }
            (None, Some(attr)) => {
                *guard = Some(FileState::new(ino, attr.size));
                Ok(attr)
            }
            // Already open here: take a fresh look anyway (close-to-open).
            (Some(st), None) => {
                self.master.call(|c, ctx| async move { c.getattr(ctx, ino).await }).await.inspect(|attr| {
                    st.reopened(attr.size);
                })
            }
            (None, None) => self.master.call_shared(|c, ctx| async move { c.open(ctx, ino).await }).await.map(|o| {
                let mut st = FileState::new(ino, o.attr.size);
                st.learn_locations(0, o.covered, o.chunks);
                *guard = Some(st);
                o.attr
            }),
        };
        let attr = match opened {
            Ok(a) => a,
            Err(e) => {
                drop(guard);
                self.drop_ref(ino);
                return Err(e);
            }
        };
        claimed.store(true, Ordering::Relaxed);
        if let (Some(home), None) = (attr.home, self.scratch_of(ino)) {
            match self.scratch_open(&attr, home).await {
                Ok(sc) => {
                    if let Some(e) = lock(&self.files).get_mut(&ino) {
                        e.scratch = Some(Arc::new(sc));
                    }
                }
                Err(e) => {
                    drop(guard);
                    if self.drop_ref(ino).is_some() {
                        let _ = self.master.call_shared(|c, ctx| async move { c.release(ctx, ino).await }).await;
                    }
                    return Err(e);
                }
            }
        }
        let keep_pages = self.same_pages(&attr);
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Handle { ino, write });
        Ok((fh, keep_pages))
    }

    /// Drops one local reference; returns the state when it was the last.
    fn drop_ref(&self, ino: InodeId) -> Option<Arc<tokio::sync::Mutex<Option<FileState>>>> {
        let mut files = lock(&self.files);
        let e = files.get_mut(&ino)?;
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            return files.remove(&ino).map(|e| e.state);
        }
        None
    }

    /// Every scratch file open here.
    pub(crate) fn open_scratch_files(&self) -> Vec<Arc<ScratchOpen>> {
        lock(&self.files).values().filter_map(|e| e.scratch.clone()).collect()
    }

    /// The scratch file `ino` as open here, if it is one.
    pub(crate) fn scratch_of(&self, ino: InodeId) -> Option<Arc<ScratchOpen>> {
        lock(&self.files).get(&ino).and_then(|e| e.scratch.clone())
    }

    /// The scratch file behind handle `fh`, if it is one: the mount
    /// registers its plain file for passthrough when it is local.
    pub fn scratch_file(&self, fh: u64) -> Option<Arc<ScratchOpen>> {
        self.scratch_of(self.handle(fh).ok()?.0)
    }

    pub(crate) fn handle(&self, fh: u64) -> Result<(InodeId, bool)> {
        lock(&self.handles).get(&fh).map(|h| (h.ino, h.write)).ok_or(ClientError::BadHandle)
    }

    /// The state of every open file.
    pub(crate) fn open_states(&self) -> Vec<(InodeId, Arc<tokio::sync::Mutex<Option<FileState>>>)> {
        lock(&self.files).iter().map(|(i, e)| (*i, e.state.clone())).collect()
    }

    pub(crate) fn state_of(&self, ino: InodeId) -> Result<Arc<tokio::sync::Mutex<Option<FileState>>>> {
        lock(&self.files).get(&ino).map(|e| e.state.clone()).ok_or(ClientError::BadHandle)
    }

    /// Uploads everything buffered for the file (close-to-open: called on
    /// every close) and reports an earlier upload error.
    pub async fn flush(self: &Arc<Self>, fh: u64) -> Result<()> {
        let (ino, write) = self.handle(fh)?;
        if !write {
            return Ok(());
        }
        if let Some(sc) = self.scratch_of(ino) {
            return self.scratch_report(&sc).await.map(|_| ());
        }
        let state = self.state_of(ino)?;
        let mut guard = state.lock().await;
        match guard.as_mut() {
            Some(st) => self.flush_state(st).await,
            None => Ok(()),
        }
    }

    /// fsync: uploads and waits until every replica has the data on disk
    /// and the master has this client's metadata changes on its disk.
    pub async fn fsync(self: &Arc<Self>, fh: u64) -> Result<()> {
        let (ino, _) = self.handle(fh)?;
        if let Some(sc) = self.scratch_of(ino) {
            self.scratch_sync(&sc).await?;
            self.scratch_report(&sc).await?;
            return self.master.sync().await;
        }
        let state = self.state_of(ino)?;
        let mut guard = state.lock().await;
        if let Some(st) = guard.as_mut() {
            self.sync_state(st).await?;
        }
        drop(guard);
        self.master.sync().await
    }

    /// fsync of a directory (and of anything else whose data is not
    /// buffered): returns once every metadata change this client made is
    /// on the master's disk.
    pub async fn sync_metadata(&self) -> Result<()> {
        self.master.sync().await
    }

    /// Ends this client's session with the master (at unmount), after
    /// making its changes durable: a later crash of the master does not
    /// wait for this client to replay.
    pub async fn close_session(&self) -> Result<()> {
        self.master.close_session().await
    }

    /// Metadata changes the master answered and has not yet reported
    /// durable (kept to replay if it restarts).
    pub fn held_changes(&self) -> usize {
        self.master.held_changes()
    }

    /// Closes a handle; the last close of a file uploads what is left and
    /// drops the master's open reference.
    pub async fn release(self: &Arc<Self>, fh: u64) -> Result<()> {
        let Some(h) = lock(&self.handles).remove(&fh) else {
            return Err(ClientError::BadHandle);
        };
        let scratch = self.scratch_of(h.ino);
        let Some(state) = self.drop_ref(h.ino) else { return Ok(()) };
        let mut guard = state.lock().await;
        let mut result = Ok(());
        if let Some(sc) = scratch {
            result = self.scratch_report(&sc).await.map(|_| ());
            crate::scratch::seal_after_close(self, &sc);
        } else if let Some(st) = guard.as_mut() {
            result = self.flush_state(st).await;
        }
        *guard = None;
        drop(guard);
        self.release_at_master(h.ino);
        result
    }

    /// Drops this client's open reference at the master. Nobody waits for
    /// the master's side of a close: it goes in the background, so the
    /// request (and the FUSE thread serving it) does not wait for a round
    /// trip. Reference counts do not mind the order.
    fn release_at_master(self: &Arc<Self>, ino: InodeId) {
        let core = self.clone();
        tokio::spawn(async move {
            if let Err(e) = core.master.call_shared(|c, ctx| async move { c.release(ctx, ino).await }).await {
                tracing::warn!("release of inode {ino} at the master failed: {e}");
            }
        });
    }

    /// Space figures, from a cache refreshed at most once a second.
    pub async fn statfs(&self) -> Result<StatFs> {
        if let Some((at, s)) = *lock(&self.statfs_cache) {
            if at.elapsed() < STATFS_TTL {
                return Ok(s);
            }
        }
        let s = self.master.call(|c, ctx| async move { c.statfs(ctx).await }).await?;
        *lock(&self.statfs_cache) = Some((Instant::now(), s));
        Ok(s)
    }

    /// Sets an xattr.
    pub async fn setxattr(&self, ino: InodeId, name: &str, value: &[u8], flags: u32) -> Result<()> {
        if name == DROP_CACHE_XATTR {
            // Not stored: a request to this client (benchmarks' cold reads).
            self.cache.clear();
            self.listings.clear();
            self.local.clear();
            tracing::info!("block cache, directory listings and local replica files dropped on request");
            return Ok(());
        }
        self.writable()?;
        if name == POLICY_XATTR || name == SCRATCH_XATTR || is_unsupported_xattr(name) {
            return Err(FsError::NotSupported.into());
        }
        let r = self.master.mutate(ops::SetXattr { ino, name: name.to_string(), value: value.to_vec(), flags }).await;
        self.listings.changed(ino);
        r
    }

    /// Gets an xattr; `user.stripefs.policy` shows the data policy.
    pub async fn getxattr(&self, ino: InodeId, name: &str) -> Result<Vec<u8>> {
        if is_unsupported_xattr(name) {
            // Never stored (setting them is refused), so answered here: the
            // kernel asks for security.capability before every write, and
            // `ls -l` asks for ACLs and SELinux labels of every entry.
            return Err(FsError::NoAttr.into());
        }
        if name == POLICY_XATTR {
            let attr = self.master.call(|c, ctx| async move { c.getattr(ctx, ino).await }).await?;
            return Ok(attr.class.with_policy(&attr.policy).into_bytes());
        }
        if name == SCRATCH_XATTR {
            if let Some(sc) = self.scratch_of(ino) {
                return Ok(sc.describe().into_bytes());
            }
            let attr = self.master.call(|c, ctx| async move { c.getattr(ctx, ino).await }).await?;
            return match (attr.class.is_scratch(), attr.home) {
                (false, _) => Err(FsError::NoAttr.into()),
                (true, Some(home)) => Ok(format!("class=scratch home={home} access=closed").into_bytes()),
                (true, None) if attr.kind == FileKind::File => {
                    Ok(b"class=scratch home=none (no node on the host that created it: the replicated layout)".to_vec())
                }
                (true, None) => Ok(b"class=scratch".to_vec()),
            };
        }
        let name = name.to_string();
        self.master
            .call(|c, ctx| {
                let a1 = name.clone();
                async move { c.getxattr(ctx, ino, a1).await }
            })
            .await
    }

    /// Lists xattr names.
    pub async fn listxattr(&self, ino: InodeId) -> Result<Vec<String>> {
        self.master.call(|c, ctx| async move { c.listxattr(ctx, ino).await }).await
    }

    /// Removes an xattr.
    pub async fn removexattr(&self, ino: InodeId, name: &str) -> Result<()> {
        self.writable()?;
        let r = self.master.mutate(ops::RemoveXattr { ino, name: name.to_string() }).await;
        self.listings.changed(ino);
        r
    }
}

/// Whether `name` is an xattr stripefs does not store: `security.*`
/// (capabilities, SELinux labels) and `system.*` (POSIX ACLs). Reads of
/// them are answered without asking the master.
pub fn is_unsupported_xattr(name: &str) -> bool {
    name.starts_with("security.") || name.starts_with("system.")
}

/// Setting this virtual xattr (any value, on any path of the mount) empties
/// the client's block cache, as `echo 3 > /proc/sys/vm/drop_caches` does
/// for the kernel's: `stripefs bench` uses it before cold reads.
pub const DROP_CACHE_XATTR: &str = "user.stripefs.drop_cache";

/// The virtual xattr that shows an inode's data policy.
pub const POLICY_XATTR: &str = "user.stripefs.policy";

/// The virtual xattr that shows where a scratch file's data lives and how
/// this client reaches it (passthrough, local, remote, and why).
pub const SCRATCH_XATTR: &str = "user.stripefs.scratch";
