//! The master's redb database: creation and format checks, read queries on
//! concurrent read transactions, and the single writer that applies
//! [`Command`]s with group commit (many commands, one fsync) and makes them
//! durable through the [`crate::journal`].
//!
//! The writer is not a thread of its own: whoever queues a command and
//! finds the writer free applies everything queued, on its own thread, and
//! answers the others; who finds it busy leaves the command to the thread
//! holding it. A lone client's mutation thus costs no hand-off to another
//! thread and back (two wake-ups of a sleeping CPU, tens of µs each on a
//! VM), while concurrent mutations still share one commit.
//!
//! This is the only module that touches redb directly besides
//! [`crate::namespace`], so another engine can later stand behind it.

use crate::journal::{Applied, Entry, Journal, JOURNAL_FILE};
use crate::namespace::{apply, ApplyError, Command, Context, Op, Reply, Tables};
use crate::records::{ChunkRecord, InodeRecord, NodeRecord};
use crate::tables::{self, meta_keys, FORMAT_VERSION, MAGIC_VALUE};
use rand::RngCore;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};
use stripefs_proto::ops::Request;
use stripefs_proto::types::{DirEntry, FileKind, Owner, Policy, Timestamp};
use stripefs_proto::{ChunkId, FsError, InodeId, NodeId, Version};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// File name of the database inside the master's data directory.
pub const DB_FILE: &str = "master.redb";

/// Files the master itself may leave in its data directory.
const OWN_FILES: &[&str] = &[DB_FILE, JOURNAL_FILE, "listen.addr", "listen.tmp", "master.log", "secret"];

/// Longest time between durable redb commits (checkpoints); the journal
/// covers the commits in between.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Journal size that forces a checkpoint: half the journal's preallocated
/// size, so records are written over existing blocks (see [`crate::journal`]).
const CHECKPOINT_BYTES: u64 = crate::journal::PREALLOC_BYTES / 2;

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 512;

/// Ids handed out per reservation of the id ceiling.
const ID_BATCH: u64 = 1 << 20;

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory holds something else.
    #[error("{0}")]
    Refused(String),
    /// The database failed.
    #[error("metadata database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: redb::Error,
    },
    /// I/O on the directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

struct Job {
    cmd: Command,
    reply: oneshot::Sender<Result<Reply, FsError>>,
}

/// The master's database.
pub struct Store {
    db: Arc<Database>,
    fs_id: String,
    chunk_size: u32,
    /// Commands waiting for the writer.
    queue: Mutex<VecDeque<Job>>,
    /// The writer; whoever holds it applies what is queued. `None` once a
    /// commit failed: the master is stopping.
    writer: Mutex<Option<Writer>>,
    /// Read transactions share it, commits take it alone (see [`Store::read`]).
    gate: Arc<std::sync::RwLock<()>>,
    ids: tokio::sync::Mutex<(u64, u64)>,
    metrics: Arc<StoreMetrics>,
}

/// What the writer measures, for the master's `/metrics`.
pub struct StoreMetrics {
    /// Commands per batch (group commit).
    pub batch_commands: prometheus_client::metrics::histogram::Histogram,
    /// Time of a batch's journal write and fdatasync.
    pub journal_sync_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Time of a batch's database commit (a checkpoint's includes its fsync).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for StoreMetrics {
    fn default() -> StoreMetrics {
        StoreMetrics {
            batch_commands: stripefs_daemon::metrics::size_histogram(),
            journal_sync_seconds: stripefs_daemon::metrics::latency_histogram(),
            commit_seconds: stripefs_daemon::metrics::latency_histogram(),
        }
    }
}

/// A read transaction holding the commit gate (see [`Store::read`]). Never
/// keep one across a call to [`Store::execute`]: the commit would wait for it.
pub struct Read<'a> {
    // Declared first: the transaction ends before the gate opens.
    txn: redb::ReadTransaction,
    _gate: std::sync::RwLockReadGuard<'a, ()>,
}

impl std::ops::Deref for Read<'_> {
    type Target = redb::ReadTransaction;
    fn deref(&self) -> &redb::ReadTransaction {
        &self.txn
    }
}

/// A chunk with fewer live replicas than wanted.
#[derive(Debug, Clone)]
pub struct Degraded {
    /// File.
    pub ino: InodeId,
    /// Chunk index.
    pub index: u64,
    /// Live replicas.
    pub live: usize,
    /// Wanted replicas.
    pub want: u8,
    /// The chunk.
    pub rec: ChunkRecord,
}

/// Logs a database failure where it is turned into a wire error.
pub fn internal(e: impl std::fmt::Display) -> FsError {
    tracing::error!("metadata database: {e}");
    FsError::Internal
}

fn db_err(path: &Path) -> impl Fn(redb::Error) -> OpenError + '_ {
    move |source| OpenError::Db { path: path.to_path_buf(), source }
}

fn read_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.try_into().ok()?))
}

impl Store {
    /// Opens the database in `dir`, creating a new filesystem there when
    /// the directory is empty. `chunk_size` applies at creation; given on
    /// a later start it must match.
    ///
    /// `is_open` tells the writer whether an inode is open on a client;
    /// `fatal` is cancelled if a commit fails (the master must stop).
    pub fn open(
        dir: &Path,
        chunk_size: Option<u32>,
        is_open: Box<dyn Fn(InodeId) -> bool + Send + Sync>,
        fatal: CancellationToken,
    ) -> Result<Store, OpenError> {
        let path = dir.join(DB_FILE);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| OpenError::Io { path: p, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let db = if path.exists() {
            let db = Database::open(&path).map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Refused(format!(
                    "{} is already open; is another stripefs-master running on {}?",
                    path.display(),
                    dir.display()
                )),
                e => OpenError::Refused(format!("{} is not a stripefs master database: {e}", path.display())),
            })?;
            check_existing(&db, &path, chunk_size)?;
            db
        } else {
            for entry in std::fs::read_dir(dir).map_err(io(dir))? {
                let name = entry.map_err(io(dir))?.file_name();
                let name = name.to_string_lossy();
                if name == "node.id" || name == "chunks" {
                    return Err(OpenError::Refused(format!(
                        "{} is a storage node's data directory; give the master a directory of its own",
                        dir.display()
                    )));
                }
                if !OWN_FILES.contains(&name.as_ref()) {
                    return Err(OpenError::Refused(format!(
                        "{} is not empty and holds no stripefs master database (found {name:?}); \
                         use an empty directory for a new filesystem",
                        dir.display()
                    )));
                }
            }
            let chunk_size = chunk_size.unwrap_or(4 << 20);
            let db = Database::create(&path).map_err(|e| db_err(&path)(e.into()))?;
            create_fs(&db, chunk_size).map_err(db_err(&path))?;
            tracing::info!("created a new filesystem in {} (chunk size {chunk_size})", path.display());
            db
        };
        let (journal, entries) = Journal::open(dir).map_err(io(&dir.join(JOURNAL_FILE)))?;
        let (seq, journal) = replay(&db, journal, entries).map_err(|e| match e {
            ReplayError::Db(e) => db_err(&path)(e),
            ReplayError::Io(e) => io(&dir.join(JOURNAL_FILE))(e),
        })?;
        let (fs_id, chunk_size, ceiling) = read_identity(&db).map_err(db_err(&path))?;
        // Ids below the stored ceiling may have been handed out before a
        // crash: start above it and reserve a new range now.
        let new_ceiling = ceiling + ID_BATCH;
        {
            let txn = db.begin_write().map_err(|e| db_err(&path)(e.into()))?;
            {
                let mut meta = txn.open_table(tables::META).map_err(|e| db_err(&path)(e.into()))?;
                meta.insert(meta_keys::ID_CEILING, new_ceiling.to_le_bytes().as_slice())
                    .map_err(|e| db_err(&path)(e.into()))?;
                // Upgrades an older format: its tables are all still read
                // as they are; the new ones are created here.
                txn.open_table(tables::REQUESTS).map_err(|e| db_err(&path)(e.into()))?;
                meta.insert(meta_keys::FORMAT_VERSION, FORMAT_VERSION.to_le_bytes().as_slice())
                    .map_err(|e| db_err(&path)(e.into()))?;
            }
            txn.commit().map_err(|e| db_err(&path)(e.into()))?;
        }
        let db = Arc::new(db);
        let gate = Arc::new(std::sync::RwLock::new(()));
        let metrics = Arc::new(StoreMetrics::default());
        let writer = Writer {
            metrics: metrics.clone(),
            db: db.clone(),
            gate: gate.clone(),
            journal,
            seq,
            chunk_size: chunk_size as u64,
            is_open,
            fatal,
            last_checkpoint: std::time::Instant::now(),
        };
        Ok(Store {
            db,
            fs_id,
            chunk_size,
            queue: Mutex::new(VecDeque::new()),
            writer: Mutex::new(Some(writer)),
            gate,
            ids: tokio::sync::Mutex::new((ceiling, new_ceiling)),
            metrics,
        })
    }

    /// The filesystem id.
    pub fn fs_id(&self) -> &str {
        &self.fs_id
    }

    /// The chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Applies a command durably (group commit) and returns its reply.
    /// It may block the calling thread while it commits (see the module
    /// documentation).
    pub async fn execute(&self, cmd: Command) -> Result<Reply, FsError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.queue).push_back(Job { cmd, reply: tx });
        // Let the other requests this thread has ready queue theirs first:
        // they then share this commit instead of each making its own.
        tokio::task::yield_now().await;
        self.lead();
        rx.await.map_err(|_| FsError::Internal)?
    }

    /// Applies a client's request once (a retry gets the first answer; see
    /// [`crate::namespace::requests`]) and returns its typed answer.
    pub async fn run<O: Op>(&self, req: Request<O>) -> Result<O::Output, FsError> {
        let cmd = Command::Requested {
            id: req.id,
            answered_below: req.answered_below,
            cmd: Box::new(req.op.command(Timestamp::now())),
        };
        let reply = self.execute(cmd).await?;
        O::output(reply.clone()).ok_or_else(|| {
            tracing::error!("request {} answered {reply:?}, not what it asks for", req.id);
            FsError::Internal
        })
    }

    /// What the writer measured.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Number of chunk records.
    pub fn chunk_count(&self) -> Result<u64, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::CHUNKS).map_err(internal)?;
        t.len().map_err(internal)
    }

    /// How many request answers are remembered (see
    /// [`crate::namespace::requests`]).
    pub fn remembered_requests(&self) -> Result<u64, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::REQUESTS).map_err(internal)?;
        t.len().map_err(internal)
    }

    /// Records a storage node; returns its id (a new one when `id` is unknown).
    pub async fn register_node(&self, id: Option<NodeId>, record: NodeRecord) -> Result<NodeId, FsError> {
        match self.execute(Command::RegisterNode { id, record }).await? {
            Reply::Node(id) => Ok(id),
            other => Err(unexpected("register a node", other)),
        }
    }

    /// Takes up to `max` replica deletions queued for `node`.
    pub async fn take_deletions(&self, node: NodeId, max: u32) -> Result<Vec<(ChunkId, Version)>, FsError> {
        match self.execute(Command::TakeDeletions { node, max }).await? {
            Reply::Deletions(d) => Ok(d),
            other => Err(unexpected("take deletions", other)),
        }
    }

    /// Applies a command without waiting for its reply.
    pub fn submit(&self, cmd: Command) {
        let (tx, _rx) = oneshot::channel();
        lock(&self.queue).push_back(Job { cmd, reply: tx });
        self.lead();
    }

    /// Unless another thread holds the writer (it takes what is queued
    /// before letting go), applies everything queued right here.
    fn lead(&self) {
        loop {
            let mut writer = match self.writer.try_lock() {
                Ok(w) => w,
                Err(TryLockError::WouldBlock) => return,
                // A panic while applying: stop writing, as a failed commit does.
                Err(TryLockError::Poisoned(p)) => {
                    let mut w = p.into_inner();
                    if let Some(dead) = w.take() {
                        tracing::error!("the metadata writer panicked, stopping the master");
                        dead.fatal.cancel();
                    }
                    self.writer.clear_poison();
                    w
                }
            };
            self.drain(&mut writer);
            drop(writer);
            // A job queued while we held the writer, by a thread that then
            // found it busy, is ours to apply.
            if lock(&self.queue).is_empty() {
                return;
            }
        }
    }

    /// Applies queued jobs, a batch at a time, until none is left.
    fn drain(&self, writer: &mut Option<Writer>) {
        loop {
            let jobs: Vec<Job> = {
                let mut q = lock(&self.queue);
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect()
            };
            if jobs.is_empty() {
                return;
            }
            match writer.as_mut() {
                Some(w) => {
                    if !w.process(jobs) {
                        *writer = None;
                    }
                }
                None => {
                    for job in jobs {
                        let _ = job.reply.send(Err(FsError::Internal));
                    }
                }
            }
        }
    }

    /// A fresh id for a chunk or a chunk version (never reused).
    pub async fn next_id(&self) -> Result<u64, FsError> {
        let mut ids = self.ids.lock().await;
        if ids.0 >= ids.1 {
            let ceiling = ids.1 + ID_BATCH;
            self.execute(Command::ReserveIds { ceiling }).await?;
            ids.1 = ceiling;
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// A read transaction. It keeps commits out while it lives: redb 4.6
    /// can free pages a concurrent reader still holds when a commit races
    /// with it (a debug assertion in `free_helper` fires; in release builds
    /// the reader could see a reused page). Reads and commits are short, so
    /// excluding each other costs little until redb is fixed.
    pub fn read(&self) -> Result<Read<'_>, FsError> {
        let gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let txn = self.db.begin_read().map_err(internal)?;
        Ok(Read { txn, _gate: gate })
    }

    /// An inode's record.
    pub fn inode(&self, ino: InodeId) -> Result<InodeRecord, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::INODES).map_err(internal)?;
        let v = t.get(ino.0).map_err(internal)?.ok_or(FsError::NotFound)?;
        InodeRecord::decode(v.value()).map_err(internal)
    }

    /// The inode named `name` in `parent`.
    pub fn lookup(&self, parent: InodeId, name: &str) -> Result<(InodeId, InodeRecord), FsError> {
        let txn = self.read()?;
        let inodes = txn.open_table(tables::INODES).map_err(internal)?;
        let entries = txn.open_table(tables::DIR_ENTRIES).map_err(internal)?;
        let p = inodes.get(parent.0).map_err(internal)?.ok_or(FsError::NotFound)?;
        if InodeRecord::decode(p.value()).map_err(internal)?.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        let child = entries.get((parent.0, name)).map_err(internal)?.ok_or(FsError::NotFound)?.value();
        let v = inodes.get(child).map_err(internal)?.ok_or(FsError::NotFound)?;
        Ok((InodeId(child), InodeRecord::decode(v.value()).map_err(internal)?))
    }

    /// Up to `limit` entries of `dir` after the name `after`.
    pub fn readdir(&self, dir: InodeId, after: Option<&str>, limit: usize) -> Result<Vec<DirEntry>, FsError> {
        let txn = self.read()?;
        let inodes = txn.open_table(tables::INODES).map_err(internal)?;
        let entries = txn.open_table(tables::DIR_ENTRIES).map_err(internal)?;
        let d = inodes.get(dir.0).map_err(internal)?.ok_or(FsError::NotFound)?;
        if InodeRecord::decode(d.value()).map_err(internal)?.kind != FileKind::Dir {
            return Err(FsError::NotDir);
        }
        let start = after.unwrap_or("");
        let mut out = Vec::new();
        for item in entries.range((dir.0, start)..(dir.0 + 1, "")).map_err(internal)? {
            let (k, v) = item.map_err(internal)?;
            let name = k.value().1;
            if after.is_some() && name == start {
                continue;
            }
            let child = v.value();
            let Some(rec) = inodes.get(child).map_err(internal)? else {
                tracing::error!("directory {dir} entry {name:?} points to missing inode {child}");
                continue;
            };
            let rec = InodeRecord::decode(rec.value()).map_err(internal)?;
            out.push(DirEntry { name: name.to_string(), attr: rec.to_attr(InodeId(child)) });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Chunks of `ino` with index in `[first, first+count)`.
    pub fn chunks(&self, ino: InodeId, first: u64, count: u64) -> Result<Vec<(u64, ChunkRecord)>, FsError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let txn = self.read()?;
        let t = txn.open_table(tables::CHUNKS).map_err(internal)?;
        let last = first.saturating_add(count.saturating_sub(1));
        let mut out = Vec::new();
        for item in t.range((ino.0, first)..=(ino.0, last)).map_err(internal)? {
            let (k, v) = item.map_err(internal)?;
            out.push((k.value().1, ChunkRecord::decode(v.value()).map_err(internal)?));
        }
        Ok(out)
    }

    /// Up to `limit` chunks with fewer usable replicas (on live nodes, not
    /// corrupt: `usable` decides) than their file's replication factor (but
    /// at least one), fewest usable replicas first.
    pub fn under_replicated(
        &self,
        usable: impl Fn(NodeId, ChunkId, Version) -> bool,
        limit: usize,
    ) -> Result<Vec<Degraded>, FsError> {
        let txn = self.read()?;
        let chunks = txn.open_table(tables::CHUNKS).map_err(internal)?;
        let inodes = txn.open_table(tables::INODES).map_err(internal)?;
        let mut policy: Option<(u64, u8)> = None;
        let mut out = Vec::new();
        for item in chunks.iter().map_err(internal)? {
            let (k, v) = item.map_err(internal)?;
            let (ino, index) = k.value();
            let want = match policy {
                Some((i, w)) if i == ino => w,
                _ => {
                    let w = match inodes.get(ino).map_err(internal)? {
                        Some(r) => InodeRecord::decode(r.value()).map_err(internal)?.policy.replication,
                        None => continue,
                    };
                    policy = Some((ino, w));
                    w
                }
            };
            let rec = ChunkRecord::decode(v.value()).map_err(internal)?;
            let live = rec.replicas.iter().filter(|n| usable(**n, rec.chunk, rec.version)).count();
            if live > 0 && live < want as usize {
                out.push(Degraded { ino: InodeId(ino), index, live, want, rec });
            }
        }
        out.sort_by_key(|d| (d.live, std::cmp::Reverse(d.want)));
        out.truncate(limit);
        Ok(out)
    }

    /// Where chunk `chunk` lives in the namespace, with its record (a
    /// full scan: for rare events such as corruption reports).
    pub fn find_chunk(&self, chunk: ChunkId) -> Result<Option<(InodeId, u64, ChunkRecord)>, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::CHUNKS).map_err(internal)?;
        for item in t.iter().map_err(internal)? {
            let (k, v) = item.map_err(internal)?;
            let rec = ChunkRecord::decode(v.value()).map_err(internal)?;
            if rec.chunk == chunk {
                let (ino, index) = k.value();
                return Ok(Some((InodeId(ino), index, rec)));
            }
        }
        Ok(None)
    }

    /// The current version and replicas of every chunk.
    pub fn current_chunks(&self) -> Result<HashMap<ChunkId, (Version, Vec<NodeId>)>, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::CHUNKS).map_err(internal)?;
        let mut out = HashMap::new();
        for item in t.iter().map_err(internal)? {
            let (_, v) = item.map_err(internal)?;
            let rec = ChunkRecord::decode(v.value()).map_err(internal)?;
            out.insert(rec.chunk, (rec.version, rec.replicas));
        }
        Ok(out)
    }

    /// An xattr value.
    pub fn xattr(&self, ino: InodeId, name: &str) -> Result<Vec<u8>, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::XATTRS).map_err(internal)?;
        let v = t.get((ino.0, name)).map_err(internal)?.ok_or(FsError::NoAttr)?;
        Ok(v.value().to_vec())
    }

    /// All xattr names of an inode.
    pub fn xattr_names(&self, ino: InodeId) -> Result<Vec<String>, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::XATTRS).map_err(internal)?;
        let mut out = Vec::new();
        for item in t.range((ino.0, "")..(ino.0 + 1, "")).map_err(internal)? {
            let (k, _) = item.map_err(internal)?;
            out.push(k.value().1.to_string());
        }
        Ok(out)
    }

    /// Number of inodes.
    pub fn inode_count(&self) -> Result<u64, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::META).map_err(internal)?;
        let v = t.get(meta_keys::INODE_COUNT).map_err(internal)?.ok_or(FsError::Internal)?;
        read_u64(v.value()).ok_or(FsError::Internal)
    }

    /// Every registered node.
    pub fn nodes(&self) -> Result<Vec<(NodeId, NodeRecord)>, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::NODES).map_err(internal)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(internal)? {
            let (k, v) = item.map_err(internal)?;
            out.push((NodeId(k.value()), NodeRecord::decode(v.value()).map_err(internal)?));
        }
        Ok(out)
    }

    /// Whether replica deletions wait for `node`.
    pub fn has_deletions(&self, node: NodeId) -> Result<bool, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::DELETIONS).map_err(internal)?;
        let mut r = t.range((node.0, 0, 0)..=(node.0, u64::MAX, u64::MAX)).map_err(internal)?;
        Ok(r.next().is_some())
    }

    /// Number of replica deletions waiting, over all nodes.
    pub fn pending_deletions(&self) -> Result<u64, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::DELETIONS).map_err(internal)?;
        t.len().map_err(internal)
    }

    /// Replica deletions waiting, per node.
    pub fn pending_deletions_by_node(&self) -> Result<HashMap<NodeId, u64>, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::DELETIONS).map_err(internal)?;
        let mut out = HashMap::new();
        for item in t.iter().map_err(internal)? {
            let (k, _) = item.map_err(internal)?;
            *out.entry(NodeId(k.value().0)).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Whether `ino` is an orphan (unlinked, still open).
    pub fn is_orphan(&self, ino: InodeId) -> Result<bool, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::ORPHANS).map_err(internal)?;
        Ok(t.get(ino.0).map_err(internal)?.is_some())
    }

    /// Every orphan.
    pub fn orphans(&self) -> Result<Vec<InodeId>, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::ORPHANS).map_err(internal)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(internal)? {
            out.push(InodeId(item.map_err(internal)?.0.value()));
        }
        Ok(out)
    }
}

impl Drop for Store {
    /// Applies what is still queued and checkpoints, so the database holds
    /// everything and its file is closed (and can be opened again) when
    /// this returns.
    fn drop(&mut self) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.drain(&mut writer);
        if let Some(w) = writer.take() {
            w.close();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn create_fs(db: &Database, chunk_size: u32) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut t = Tables::open(&txn)?;
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let meta: [(&str, Vec<u8>); 7] = [
            (meta_keys::MAGIC, MAGIC_VALUE.to_vec()),
            (meta_keys::FORMAT_VERSION, FORMAT_VERSION.to_le_bytes().to_vec()),
            (meta_keys::FS_ID, hex::encode(id).into_bytes()),
            (meta_keys::CHUNK_SIZE, chunk_size.to_le_bytes().to_vec()),
            (meta_keys::NEXT_INODE, 2u64.to_le_bytes().to_vec()),
            (meta_keys::ID_CEILING, 1u64.to_le_bytes().to_vec()),
            (meta_keys::INODE_COUNT, 1u64.to_le_bytes().to_vec()),
        ];
        for (k, v) in meta {
            t.meta.insert(k, v.as_slice())?;
        }
        let now = Timestamp::now();
        let mut root =
            crate::namespace::new_record(FileKind::Dir, 0o755, Owner { uid: 0, gid: 0 }, Policy::default(), now);
        root.nlink = 2;
        root.parent = InodeId::ROOT.0;
        t.inodes.insert(InodeId::ROOT.0, root.encode().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn check_existing(db: &Database, path: &Path, chunk_size: Option<u32>) -> Result<(), OpenError> {
    let not_ours = || OpenError::Refused(format!("{} is not a stripefs master database", path.display()));
    let txn = db.begin_read().map_err(|e| db_err(path)(e.into()))?;
    match tables::check_format(&txn).map_err(|e| db_err(path)(e.into()))? {
        tables::Format::NotOurs => Err(not_ours()),
        tables::Format::TooNew(version) => Err(OpenError::Refused(format!(
            "{} has database format version {version}, newer than this stripefs-master supports \
             ({FORMAT_VERSION}); run a newer stripefs-master",
            path.display()
        ))),
        tables::Format::Ours { chunk_size: have } => match (chunk_size, have) {
            (Some(want), Some(have)) if want != have => Err(OpenError::Refused(format!(
                "this filesystem was created with chunk size {have}; --chunk-size {want} cannot change it"
            ))),
            (Some(_), None) => Err(not_ours()),
            _ => Ok(()),
        },
    }
}

fn read_identity(db: &Database) -> Result<(String, u32, u64), redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(tables::META)?;
    let corrupt = || redb::Error::Corrupted("meta table lacks a required key".into());
    let fs_id = meta.get(meta_keys::FS_ID)?.map(|v| String::from_utf8_lossy(v.value()).into_owned());
    let chunk = meta.get(meta_keys::CHUNK_SIZE)?.and_then(|v| Some(u32::from_le_bytes(v.value().try_into().ok()?)));
    let ceiling = meta.get(meta_keys::ID_CEILING)?.and_then(|v| read_u64(v.value()));
    match (fs_id, chunk, ceiling) {
        (Some(f), Some(c), Some(i)) => Ok((f, c, i)),
        _ => Err(corrupt()),
    }
}

/// Why replaying the journal failed.
enum ReplayError {
    Db(redb::Error),
    Io(std::io::Error),
}

impl<E: Into<redb::Error>> From<E> for ReplayError {
    fn from(e: E) -> ReplayError {
        ReplayError::Db(e.into())
    }
}

/// The journal's sequence number stored in the database (0: none yet).
fn stored_seq(db: &Database) -> Result<u64, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(tables::META)?;
    let seq = meta.get(meta_keys::JOURNAL_SEQ)?.and_then(|v| read_u64(v.value()));
    Ok(seq.unwrap_or(0))
}

/// A reply of the wrong kind: a bug, logged, `Internal` to the caller.
fn unexpected(what: &str, reply: Reply) -> FsError {
    tracing::error!("{what}: the command answered {reply:?}");
    FsError::Internal
}

/// Applies the journaled batches the database lost in a crash (those after
/// its stored sequence number), makes the result durable and empties the
/// journal. Returns the last sequence number.
fn replay(db: &Database, mut journal: Journal, entries: Vec<Entry>) -> Result<(u64, Journal), ReplayError> {
    let mut seq = stored_seq(db)?;
    let lost = seq;
    let mut replayed = 0usize;
    let (_, chunk_size, _) = read_identity(db)?;
    for entry in entries.into_iter().filter(|e| e.seq > lost) {
        let txn = db.begin_write()?;
        {
            let mut t = Tables::open(&txn)?;
            for a in &entry.cmds {
                let is_open = |ino: InodeId| a.open.contains(&ino);
                let ctx = Context { chunk_size: u64::from(chunk_size), is_open: &is_open };
                match apply(&mut t, &a.cmd, &ctx) {
                    // Failed the same way when it was first applied.
                    Ok(_) | Err(ApplyError::Fs(_)) => {}
                    Err(ApplyError::Store(e)) => return Err(e.into()),
                    Err(ApplyError::Decode(e)) => return Err(redb::Error::Corrupted(e.to_string()).into()),
                }
                replayed += 1;
            }
            t.meta.insert(meta_keys::JOURNAL_SEQ, entry.seq.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        seq = entry.seq;
    }
    if replayed > 0 {
        tracing::info!("replayed {replayed} metadata commands from the journal {}", journal.path().display());
    }
    checkpoint(db)?;
    journal.clear().map_err(ReplayError::Io)?;
    Ok((seq, journal))
}

/// A durable commit: everything committed before is on disk once it returns.
fn checkpoint(db: &Database) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    txn.commit()?;
    Ok(())
}

/// The writer's state.
struct Writer {
    db: Arc<Database>,
    gate: Arc<std::sync::RwLock<()>>,
    journal: Journal,
    /// Sequence number of the last batch.
    seq: u64,
    chunk_size: u64,
    is_open: Box<dyn Fn(InodeId) -> bool + Send + Sync>,
    /// Cancelled when a commit fails: the master stops.
    fatal: CancellationToken,
    last_checkpoint: std::time::Instant,
    metrics: Arc<StoreMetrics>,
}

impl Writer {
    /// Applies one batch and answers its jobs; `false` when the commit
    /// failed (every job got `Internal`, the master is stopping).
    fn process(&mut self, jobs: Vec<Job>) -> bool {
        let durable = self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL || self.journal.len() >= CHECKPOINT_BYTES;
        match self.apply_batch(&jobs, durable) {
            Ok(results) => {
                if durable {
                    self.last_checkpoint = std::time::Instant::now();
                }
                for (job, r) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(r);
                }
                true
            }
            Err(e) => {
                tracing::error!("metadata commit failed, stopping the master: {e}");
                for job in jobs {
                    let _ = job.reply.send(Err(FsError::Internal));
                }
                self.fatal.cancel();
                false
            }
        }
    }

    /// Clean shutdown: leaves everything in the database, nothing to replay.
    fn close(mut self) {
        let _no_readers = self.gate.write().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = checkpoint(&self.db)
            .map_err(|e| e.to_string())
            .and_then(|()| self.journal.clear().map_err(|e| e.to_string()))
        {
            tracing::error!("final metadata checkpoint failed (the journal will be replayed at the next start): {e}");
        }
    }

    /// Applies `jobs` in one transaction and makes it durable: by a durable
    /// commit (then the journal is emptied) or by journaling the batch.
    fn apply_batch(&mut self, jobs: &[Job], durable: bool) -> Result<Vec<Result<Reply, FsError>>, String> {
        let seq = self.seq + 1;
        // Inside the span of the request whose thread leads the commit.
        let _span = tracing::debug_span!("commit", seq, batch = jobs.len(), durable).entered();
        // The open inodes each command asked about, for the journal.
        let asked = std::cell::RefCell::new(Vec::new());
        let is_open = &self.is_open;
        let recording = |ino: InodeId| {
            let open = is_open(ino);
            if open {
                asked.borrow_mut().push(ino);
            }
            open
        };
        let ctx = Context { chunk_size: self.chunk_size, is_open: &recording };
        let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
        let durability = if durable { redb::Durability::Immediate } else { redb::Durability::None };
        txn.set_durability(durability).map_err(|e| e.to_string())?;
        let mut results = Vec::with_capacity(jobs.len());
        let mut applied = Vec::with_capacity(jobs.len());
        {
            let mut t = Tables::open(&txn).map_err(|e| e.to_string())?;
            for job in jobs {
                results.push(match apply(&mut t, &job.cmd, &ctx) {
                    Ok(r) => Ok(r),
                    Err(ApplyError::Fs(e)) => Err(e),
                    Err(ApplyError::Store(e)) => return Err(e.to_string()),
                    Err(ApplyError::Decode(e)) => return Err(e.to_string()),
                });
                // A durable batch is not journaled: nothing to keep.
                let open = asked.take();
                if !durable {
                    applied.push(Applied { cmd: job.cmd.clone(), open });
                }
            }
            t.meta.insert(meta_keys::JOURNAL_SEQ, seq.to_le_bytes().as_slice()).map_err(|e| e.to_string())?;
        }
        let path = self.journal.path().to_path_buf();
        let journal_err = |e: std::io::Error| format!("metadata journal {}: {e}", path.display());
        // Journaled before the commit: nobody can read a change (and act on
        // it) before it is durable. Should the commit then fail, the master
        // stops and the next start applies the batch from the journal.
        if !durable {
            let started = std::time::Instant::now();
            self.journal.append(&Entry { seq, cmds: applied }).map_err(journal_err)?;
            tracing::debug!(micros = started.elapsed().as_micros() as u64, "journal write and fdatasync");
            self.metrics.journal_sync_seconds.observe(started.elapsed().as_secs_f64());
        }
        {
            let _no_readers = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let started = std::time::Instant::now();
            txn.commit().map_err(|e| e.to_string())?;
            tracing::debug!(micros = started.elapsed().as_micros() as u64, "database commit");
            self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
            self.metrics.batch_commands.observe(jobs.len() as f64);
        }
        self.seq = seq;
        if durable {
            self.journal.clear().map_err(journal_err)?;
        }
        Ok(results)
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
