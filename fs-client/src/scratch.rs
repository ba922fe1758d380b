//! Scratch files on the client: a file of the scratch class with a home
//! node ([`Attr::home`]) keeps its data as one plain file on that node.
//!
//! On the home node's host, the client gets the plain file itself from the
//! node's local socket ([`crate::local_reads::LocalReads::open_scratch`]);
//! the mount registers it with the kernel for FUSE passthrough, so reads
//! and writes go straight to it without a request to this process. Where
//! passthrough is refused, the same descriptor serves reads and writes
//! here. Everywhere else the client reads and writes through the home
//! node's `scratch_*` RPCs.
//!
//! The master learns the file's size and mtime at close, fsync, and the
//! last release ([`ScratchOpen`] reports what changed since it last did).

use crate::error::{ClientError, Result};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_daemon::lock;
use stripefs_proto::types::{Attr, ScratchData, SetAttr, TimeSet, Timestamp, MAX_SCRATCH_IO};
use stripefs_proto::{FsError, InodeId, NodeId};

/// How long the client's copy of the node list is used before it asks the
/// master again (it asks at once for a node it does not know).
const NODE_LIST_TTL: Duration = Duration::from_secs(30);
/// Deadline of one `scratch_*` call.
const SCRATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// A scratch file open on this client.
pub struct ScratchOpen {
    /// The file.
    pub ino: InodeId,
    /// Its home node.
    pub home: NodeId,
    /// The home node's RPC address.
    pub addr: String,
    /// The home node's host.
    pub host: String,
    /// The plain file itself, when the home node is on this host.
    pub local: Option<Arc<File>>,
    /// Why the file is not used locally or through passthrough (for
    /// `user.stripefs.scratch` and the log), once known.
    why_not: Mutex<Option<String>>,
    /// Whether the kernel serves it through passthrough.
    passthrough: AtomicBool,
    /// End of the furthest write made here through the node's RPCs.
    written_end: AtomicU64,
    /// Whether anything was written here since the last report.
    wrote: AtomicBool,
    /// Size and mtime as last reported to (or read from) the master.
    reported: Mutex<(u64, Timestamp)>,
    /// Size and mtime at the open.
    opened: (u64, Timestamp),
    /// Windows of a remote file read on sequentially.
    ahead: ReadAhead,
}

/// Bytes a remote reader that reads on sequentially fetches at once.
const WINDOW: u64 = MAX_SCRATCH_IO as u64;
/// Windows fetched ahead of a sequential remote reader.
const WINDOWS_AHEAD: u64 = 4;
/// Windows kept per open file (24 MiB).
const WINDOWS_KEPT: usize = 6;

/// One window of a remote scratch file, fetched once.
type Window = Arc<tokio::sync::OnceCell<bytes::Bytes>>;

/// Read-ahead of a remote scratch file: a reader that goes on where it
/// (or another of its reads, as the kernel's read-ahead sends them out of
/// order) left off reads whole windows, fetched ahead; any other read
/// fetches just what it asks for (random 4 KiB reads must not pull in
/// megabytes). This client's own writes drop the windows; another
/// client's show at the next open (close-to-open).
struct ReadAhead {
    windows: Mutex<lru::LruCache<u64, Window>>,
    last_end: AtomicU64,
}

impl ReadAhead {
    fn new() -> ReadAhead {
        let kept = std::num::NonZeroUsize::new(WINDOWS_KEPT).expect("not zero");
        ReadAhead { windows: Mutex::new(lru::LruCache::new(kept)), last_end: AtomicU64::new(0) }
    }

    /// Whether a read of `size` bytes at `offset` goes on sequentially.
    fn sequential(&self, offset: u64, size: u32) -> bool {
        let last = self.last_end.swap(offset + size as u64, Ordering::Relaxed);
        let index = offset / WINDOW;
        offset == last || {
            let windows = lock(&self.windows);
            windows.contains(&index) || (index > 0 && windows.contains(&(index - 1)))
        }
    }

    fn forget(&self) {
        lock(&self.windows).clear();
    }
}

impl ScratchOpen {
    /// How the file's data is reached from here, for `user.stripefs.scratch`.
    pub fn describe(&self) -> String {
        let access = if self.passthrough.load(Ordering::Relaxed) {
            "passthrough".to_string()
        } else if self.local.is_some() {
            "local".to_string()
        } else {
            "remote".to_string()
        };
        let why = lock(&self.why_not).clone().map(|w| format!(" ({w})")).unwrap_or_default();
        format!("class=scratch home={} host={} addr={} access={access}{why}", self.home, self.host, self.addr)
    }

    /// Records whether the kernel took the plain file for passthrough.
    pub fn set_passthrough(&self, r: std::result::Result<(), String>) {
        match r {
            Ok(()) => self.passthrough.store(true, Ordering::Relaxed),
            Err(why) => *lock(&self.why_not) = Some(why),
        }
    }

    /// Whether the kernel serves the file through passthrough.
    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// The size a `getattr` answers while the file is open here.
    pub fn size(&self, master_size: u64) -> (u64, Option<u64>) {
        match &self.local {
            Some(f) => match f.metadata() {
                Ok(m) => (m.len(), Some(m.blocks() * 512)),
                Err(_) => (master_size, None),
            },
            None => (master_size.max(self.written_end.load(Ordering::Relaxed)), None),
        }
    }
}

/// Node id → (address, host).
type Locations = std::collections::HashMap<NodeId, (String, String)>;

/// How often the sizes of scratch files open here are reported when they
/// changed (a file written through passthrough stays open for long; the
/// master, and so other hosts, would otherwise see its size only at close).
pub const SIZE_REPORT_EVERY: Duration = Duration::from_secs(5);

/// The worker reporting open scratch files' sizes every
/// [`SIZE_REPORT_EVERY`]. Ends with the client.
pub(crate) struct SizeReports {
    core: std::sync::Weak<crate::core::FsCore>,
    reported: u64,
}

impl SizeReports {
    pub(crate) fn new(core: std::sync::Weak<crate::core::FsCore>) -> SizeReports {
        SizeReports { core, reported: 0 }
    }
}

impl stripefs_daemon::Worker for SizeReports {
    fn name(&self) -> String {
        "scratch-sizes".into()
    }

    async fn work(&mut self) -> std::result::Result<stripefs_daemon::Step, String> {
        let Some(core) = self.core.upgrade() else { return Ok(stripefs_daemon::Step::Done) };
        let mut failed = None;
        for sc in core.open_scratch_files() {
            match core.scratch_report(&sc).await {
                Ok(true) => self.reported += 1,
                Ok(false) => {}
                Err(e) => failed = Some(format!("reporting the size of scratch file {}: {e}", sc.ino)),
            }
        }
        failed.map_or(Ok(stripefs_daemon::Step::Idle), Err)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(SIZE_REPORT_EVERY).await
    }

    fn detail(&self) -> String {
        format!("{} sizes of open scratch files reported", self.reported)
    }
}

/// What the client knows of the nodes, and since when.
#[derive(Default)]
pub struct NodeList {
    known: Mutex<Option<(Instant, Arc<Locations>)>>,
}

impl crate::core::FsCore {
    /// The address and host of node `id`, from the master's list.
    async fn node_location(&self, id: NodeId) -> Result<(String, String)> {
        if let Some((at, map)) = lock(&self.node_list.known).clone() {
            if at.elapsed() < NODE_LIST_TTL {
                if let Some(l) = map.get(&id) {
                    return Ok(l.clone());
                }
            }
        }
        let nodes = self.master.call(|c, ctx| async move { c.nodes(ctx).await }).await?;
        let map: Locations = nodes.into_iter().map(|n| (n.id, (n.addr, n.host))).collect();
        let found = map.get(&id).cloned();
        *lock(&self.node_list.known) = Some((Instant::now(), Arc::new(map)));
        found.ok_or_else(|| {
            tracing::error!("scratch file's home node {id} is unknown to the master");
            ClientError::Fs(FsError::Unavailable)
        })
    }

    /// Opens the scratch file `attr` describes (it has a home).
    pub(crate) async fn scratch_open(&self, attr: &Attr, home: NodeId) -> Result<ScratchOpen> {
        let (addr, host) = self.node_location(home).await?;
        let mut why_not = None;
        let local = if host != self.cfg.host {
            why_not = Some(format!("home node is on host {host}, this is {}", self.cfg.host));
            None
        } else {
            match self.local.open_scratch(&addr, attr.ino).await {
                Some(Ok(f)) => Some(Arc::new(f)),
                Some(Err(e)) => {
                    tracing::warn!("scratch file {}: using node {addr} over the network: {e}", attr.ino);
                    why_not = Some(format!("the node's local socket failed: {e}"));
                    None
                }
                None => {
                    why_not = Some(format!("node {addr} has no local socket reachable from here"));
                    None
                }
            }
        };
        let reported = match local.as_ref().and_then(|f| f.metadata().ok()) {
            Some(m) => (m.len(), mtime_of(&m)),
            None => (attr.size, attr.mtime),
        };
        Ok(ScratchOpen {
            ino: attr.ino,
            home,
            addr,
            host,
            local,
            why_not: Mutex::new(why_not),
            passthrough: AtomicBool::new(false),
            written_end: AtomicU64::new(0),
            wrote: AtomicBool::new(false),
            reported: Mutex::new(reported),
            opened: reported,
            ahead: ReadAhead::new(),
        })
    }

    /// Reads up to `size` bytes at `offset` of a scratch file (fewer at
    /// its end).
    pub(crate) async fn scratch_read(
        self: &Arc<Self>,
        sc: &Arc<ScratchOpen>,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>> {
        if let Some(f) = sc.local.clone() {
            let ino = sc.ino;
            return crate::conn::run_blocking(move || {
                let mut buf = vec![0u8; size as usize];
                let mut got = 0;
                while got < buf.len() {
                    match f.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(local_err(ino, e)),
                    }
                }
                buf.truncate(got);
                Ok(buf)
            })
            .await;
        }
        if !sc.ahead.sequential(offset, size) {
            return self.scratch_fetch(sc, offset, size).await;
        }
        // Read on in whole windows, and fetch the next ones meanwhile: one
        // round trip per window instead of one per kernel read.
        let end = offset + size as u64;
        let mut out = Vec::with_capacity(size as usize);
        let mut pos = offset;
        while pos < end {
            let index = pos / WINDOW;
            let w = self.scratch_window(sc, index).await?;
            let start = index * WINDOW;
            let from = (pos - start) as usize;
            if from >= w.len() {
                break;
            }
            let to = ((end - start) as usize).min(w.len());
            out.extend_from_slice(&w[from..to]);
            pos = start + to as u64;
            if w.len() < WINDOW as usize {
                break;
            }
        }
        // Only windows not yet kept or on their way: most kernel reads
        // fall inside windows fetched already and start no task.
        let next = end / WINDOW + 1;
        let missing: Vec<u64> = {
            let windows = lock(&sc.ahead.windows);
            (next..next + WINDOWS_AHEAD).filter(|i| !windows.contains(i)).collect()
        };
        for index in missing {
            let (core, sc) = (self.clone(), sc.clone());
            tokio::spawn(async move {
                let _ = core.scratch_window(&sc, index).await;
            });
        }
        Ok(out)
    }

    /// Window `index` of a remote scratch file: from the windows kept, or
    /// fetched (once, whoever asks first; the others wait for it).
    async fn scratch_window(&self, sc: &ScratchOpen, index: u64) -> Result<bytes::Bytes> {
        let cell = lock(&sc.ahead.windows).get_or_insert(index, Default::default).clone();
        let w = cell.get_or_try_init(|| self.scratch_read_once(sc, index * WINDOW, WINDOW as u32)).await?;
        Ok(w.clone())
    }

    /// One `scratch_read` call (at most [`MAX_SCRATCH_IO`] bytes), its
    /// data checked against the crcs that came with it.
    async fn scratch_read_once(&self, sc: &ScratchOpen, at: u64, len: u32) -> Result<bytes::Bytes> {
        let ino = sc.ino;
        let got = self
            .nodes
            .call(&sc.addr, SCRATCH_TIMEOUT, |c, ctx| async move { c.scratch_read(ctx, ino, at, len).await })
            .await
            .map_err(|e| lost(sc, e))?;
        self.checked(sc, at, got).await
    }

    /// `size` bytes at `offset` from the home node, in calls of at most
    /// [`MAX_SCRATCH_IO`] (fewer at the end of the file).
    async fn scratch_fetch(&self, sc: &ScratchOpen, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(size as usize);
        while out.len() < size as usize {
            let at = offset + out.len() as u64;
            let len = (size - out.len() as u32).min(MAX_SCRATCH_IO);
            let got = self.scratch_read_once(sc, at, len).await?;
            let short = got.len() < len as usize;
            out.extend_from_slice(&got);
            if short {
                break;
            }
        }
        Ok(out)
    }

    /// Writes `data` at `offset` of a scratch file.
    pub(crate) async fn scratch_write(&self, sc: &ScratchOpen, offset: u64, data: &[u8]) -> Result<u32> {
        sc.wrote.store(true, Ordering::Relaxed);
        sc.ahead.forget();
        if let Some(f) = sc.local.clone() {
            let (data, ino) = (data.to_vec(), sc.ino);
            let n = data.len() as u32;
            return crate::conn::run_blocking(move || {
                f.write_all_at(&data, offset).map_err(|e| local_err(ino, e))?;
                Ok(n)
            })
            .await;
        }
        let mut done = 0usize;
        while done < data.len() {
            let len = (data.len() - done).min(MAX_SCRATCH_IO as usize);
            let (ino, at) = (sc.ino, offset + done as u64);
            let part = bytes::Bytes::copy_from_slice(&data[done..done + len]);
            let size = self
                .nodes
                .call(&sc.addr, SCRATCH_TIMEOUT, |c, ctx| {
                    let part = part.clone();
                    async move { c.scratch_write(ctx, ino, at, part).await }
                })
                .await
                .map_err(|e| lost(sc, e))?;
            sc.written_end.fetch_max(size, Ordering::Relaxed);
            done += len;
        }
        Ok(data.len() as u32)
    }

    /// Sets the plain file's size (truncate, `O_TRUNC`).
    pub(crate) async fn scratch_truncate(
        &self,
        sc: Option<&ScratchOpen>,
        ino: InodeId,
        home: NodeId,
        size: u64,
    ) -> Result<()> {
        if let Some(f) = sc.and_then(|s| s.local.clone()) {
            return crate::conn::run_blocking(move || f.set_len(size).map_err(|e| local_err(ino, e))).await;
        }
        let addr = match sc {
            Some(s) => s.addr.clone(),
            None => self.node_location(home).await?.0,
        };
        if let Some(s) = sc {
            s.written_end.store(size, Ordering::Relaxed);
            s.ahead.forget();
        }
        self.nodes.call(&addr, SCRATCH_TIMEOUT, |c, ctx| async move { c.scratch_truncate(ctx, ino, size).await }).await
    }

    /// fsync: the plain file's data on its node's disk.
    pub(crate) async fn scratch_sync(&self, sc: &ScratchOpen) -> Result<()> {
        if let Some(f) = sc.local.clone() {
            let ino = sc.ino;
            return crate::conn::run_blocking(move || f.sync_all().map_err(|e| local_err(ino, e))).await;
        }
        let ino = sc.ino;
        self.nodes
            .call(&sc.addr, SCRATCH_TIMEOUT, |c, ctx| async move { c.scratch_sync(ctx, ino).await })
            .await
            .map_err(|e| lost(sc, e))
    }

    /// The bytes of a remote read, once they match the crcs the node sent
    /// with them (a sealed file's; none for one written lately). A
    /// damaged block is reported to the master (`stripefs fsck` lists the
    /// file) and reads as EIO.
    async fn checked(&self, sc: &ScratchOpen, at: u64, got: ScratchData) -> Result<bytes::Bytes> {
        let Some(i) = got.bad_block() else { return Ok(got.data) };
        let block = at / stripefs_proto::block::BLOCK_SIZE as u64 + i as u64;
        tracing::error!(
            "scratch file of inode {} on node {} on host {} ({}): 64 KiB block {block} fails its checksum",
            sc.ino,
            sc.home,
            sc.host,
            sc.addr
        );
        let (node, chunk) = (sc.home, stripefs_proto::ChunkId(sc.ino.0));
        let version = stripefs_proto::Version::SCRATCH_FILE;
        if let Err(e) =
            self.master.call(|c, ctx| async move { c.report_corrupt(ctx, node, chunk, version).await }).await
        {
            tracing::warn!("reporting the corrupt scratch file to the master: {e}");
        }
        Err(ClientError::Fs(FsError::Corrupt))
    }

    /// Tells the master the file's size and mtime if they changed since
    /// the last report (close, fsync, last release, and every
    /// [`SIZE_REPORT_EVERY`]); says whether it did.
    pub(crate) async fn scratch_report(&self, sc: &ScratchOpen) -> Result<bool> {
        let (size, mtime) = match &sc.local {
            Some(f) => {
                let m = f.metadata().map_err(|e| local_err(sc.ino, e))?;
                (m.len(), TimeSet::At(mtime_of(&m)))
            }
            None if sc.wrote.swap(false, Ordering::Relaxed) => {
                (lock(&sc.reported).0.max(sc.written_end.load(Ordering::Relaxed)), TimeSet::Now)
            }
            None => return Ok(false),
        };
        if let TimeSet::At(t) = mtime {
            if *lock(&sc.reported) == (size, t) {
                return Ok(false);
            }
        }
        let set = SetAttr { size: Some(size), mtime: Some(mtime), ..Default::default() };
        let attr = self.master.mutate(stripefs_proto::ops::SetAttrs { ino: sc.ino, set }).await?;
        *lock(&sc.reported) = (attr.size, attr.mtime);
        if let TimeSet::At(t) = mtime {
            *lock(&sc.reported) = (size, t);
        }
        Ok(true)
    }
}

/// Asks the home node to seal a file this client wrote and closed
/// (its checksums are computed once it is left alone; see
/// `stripefs_node`'s `scratch` module). Nobody waits for it.
pub(crate) fn seal_after_close(core: &Arc<crate::core::FsCore>, sc: &ScratchOpen) {
    let changed = sc.wrote.load(Ordering::Relaxed) || *lock(&sc.reported) != sc.opened;
    if !changed {
        return;
    }
    let (core, addr, ino) = (core.clone(), sc.addr.clone(), sc.ino);
    tokio::spawn(async move {
        let asked =
            core.nodes.call(&addr, SCRATCH_TIMEOUT, |c, ctx| async move { c.scratch_seal(ctx, ino).await }).await;
        if let Err(e) = asked {
            tracing::debug!("asking node {addr} to seal scratch file {ino}: {e}");
        }
    });
}

fn mtime_of(m: &std::fs::Metadata) -> Timestamp {
    Timestamp { secs: m.mtime(), nanos: m.mtime_nsec() as u32 }
}

fn local_err(ino: InodeId, e: std::io::Error) -> ClientError {
    tracing::error!("scratch file of inode {ino} on this host: {e}");
    ClientError::Fs(FsError::Internal)
}

/// A failed call to a scratch file's home node: the log names the file
/// and the host (the data lives there only).
fn lost(sc: &ScratchOpen, e: ClientError) -> ClientError {
    tracing::error!(
        "scratch file of inode {} lives on node {} on host {} ({}): {e}",
        sc.ino,
        sc.home,
        sc.host,
        sc.addr
    );
    match e {
        ClientError::Fs(FsError::NotFound) => ClientError::Fs(FsError::Corrupt),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_that_go_on_use_windows() {
        let r = ReadAhead::new();
        assert!(r.sequential(0, 4096), "a first read from the start");
        assert!(r.sequential(4096, 4096), "the next one");
        assert!(!r.sequential(100 << 20, 4096), "a jump far ahead");
        assert!(!r.sequential(7 << 20, 4096), "another");
        // Reads near a window already fetched go on (the kernel sends its
        // read-ahead out of order).
        lock(&r.windows).put(10, Default::default());
        assert!(r.sequential(10 * WINDOW + 5, 100));
        assert!(r.sequential(11 * WINDOW + 5, 100), "the window after a kept one");
        r.forget();
        assert!(!r.sequential(30 * WINDOW, 100), "a write dropped the windows");
    }
}
