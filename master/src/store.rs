//! The master's redb database: creation and format checks, read queries on
//! concurrent read transactions, and [`Store::execute`], which proposes a
//! [`Command`] to the master group ([`crate::raft`]) and returns its answer
//! once the command is in the durable log and applied (concurrent commands
//! share one log flush).
//!
//! This is the only module that touches redb directly besides
//! [`crate::namespace`], so another engine can later stand behind it.

use crate::journal::{Entry, Journal, JOURNAL_FILE};
use crate::namespace::{apply, ApplyError, Command, Context, Op, Reply, Tables};
use crate::raft::log::LogStore;
use crate::raft::state_machine::{checkpoint, StateMachine};
use crate::raft::{Member, Proposal, Raft};
use crate::records::{ChunkRecord, InodeRecord, NodeRecord};
use crate::sessions::Touches;
use crate::tables::{self, meta_keys, FORMAT_VERSION, MAGIC_VALUE};
use rand::RngCore;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use stripefs_proto::ops::{Acked, Durability, Request};
use stripefs_proto::types::{DataClass, DirEntry, FileKind, Timestamp};
use stripefs_proto::types::{DirLease, LeasePoll, SessionInfo};
use stripefs_proto::{ChunkId, FsError, InodeId, NodeId, Version};
use tokio_util::sync::CancellationToken;

/// File name of the database inside the master's data directory.
pub const DB_FILE: &str = "master.redb";

/// Files the master itself may leave in its data directory.
const OWN_FILES: &[&str] =
    &[DB_FILE, JOURNAL_FILE, RAFT_DIR, "listen.addr", "listen.tmp", "master.log", "secret", "metrics.addr"];

/// Directory of the master group's log, vote and snapshot, inside the
/// data directory.
pub const RAFT_DIR: &str = "raft";

/// Ids handed out per reservation of the id ceiling.
const ID_BATCH: u64 = 1 << 20;

/// Chunk size of a new filesystem unless told otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;

/// How a master takes part in its group.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// The address other masters and clients reach this one at.
    pub addr: String,
    /// Log entries between snapshots.
    pub snapshot_every: u64,
    /// Wait to be made a member of a group (by `stripefs masters init` or
    /// `add`) instead of starting a group of one with a new filesystem.
    pub join: bool,
    /// The cluster secret (masters of a group talk to each other with it;
    /// None: a group of one that never grows, in tests).
    pub secret: Option<stripefs_proto::net::Secret>,
}

impl Default for GroupOptions {
    fn default() -> GroupOptions {
        GroupOptions { addr: String::new(), snapshot_every: crate::raft::SNAPSHOT_EVERY, join: false, secret: None }
    }
}

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

/// Read transactions share it, commits take it alone (see [`Store::read`]).
pub type Gate = Arc<std::sync::RwLock<()>>;

/// A scratch file whose home node is gone: (file, home, its names as
/// (directory, name)).
pub type LostScratch = (InodeId, NodeId, Vec<(InodeId, String)>);

/// The master's database.
pub struct Store {
    db: Arc<Database>,
    /// The filesystem's id and chunk size, once it exists.
    identity: std::sync::OnceLock<(String, u32)>,
    gate: Gate,
    /// Chunk ids and versions reserved and not yet handed out.
    ids: tokio::sync::Mutex<(u64, u64)>,
    metrics: Arc<StoreMetrics>,
    group: Group,
    is_open: Box<dyn Fn(InodeId) -> bool + Send + Sync>,
    /// Inodes proposed as closed whose commands are not applied yet.
    pending: Arc<Pending>,
    /// Commands of [`Store::submit`] not yet answered.
    submitted: tokio_util::task::TaskTracker,
    fatal: CancellationToken,
    /// Client sessions, early answers and the replay window.
    sessions: crate::sessions::Sessions,
    /// Directory leases granted to client sessions.
    leases: Arc<crate::leases::Leases>,
    /// The group's directory (the clean-stop marker lives there).
    raft_dir: PathBuf,
    /// Every change an earlier master process answered is durable: it
    /// stopped cleanly, or it never answered early (see [`SessionInfo`]).
    clean_start: bool,
    /// The process whose clean stop `clean_start` means (0: any).
    clean_after: u64,
}

/// In the group's directory while no master process runs on it after a
/// clean stop (its log was flushed): a start without it follows a crash,
/// and waits for the clients to replay.
const CLEAN_STOP: &str = "clean-stop";

/// The master group as the store runs it.
struct Group {
    raft: Raft,
    /// The runtime the group runs on (None once stopped).
    handle: Option<tokio::runtime::Handle>,
    /// The group's own runtime.
    rt: Option<tokio::runtime::Runtime>,
    id: u64,
    log: LogStore,
    /// Until when this master may answer reads as the leader.
    lease: Arc<crate::raft::Lease>,
    /// Set while this master hands its leadership to another.
    stepping_down: Arc<std::sync::atomic::AtomicBool>,
    /// See [`Store::set_serving`].
    serving: std::sync::atomic::AtomicBool,
    secret: Option<stripefs_proto::net::Secret>,
    /// When the leader last heard from each other master.
    contacts: crate::raft::network::Contacts,
}

/// Inodes a command in flight may free or keep as an orphan, depending on
/// whether they were open when it was proposed: opens and last releases
/// of one wait until the command is applied (see [`Store::settled`]).
#[derive(Default)]
struct Pending {
    inodes: Mutex<HashMap<InodeId, u32>>,
    applied: tokio::sync::Notify,
}

/// Removes its inodes from [`Pending`] when the command is done.
struct PendingGuard {
    pending: Arc<Pending>,
    inodes: Vec<InodeId>,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.inodes.is_empty() {
            return;
        }
        let mut m = lock(&self.pending.inodes);
        for ino in &self.inodes {
            if let Some(n) = m.get_mut(ino) {
                *n -= 1;
                if *n == 0 {
                    m.remove(ino);
                }
            }
        }
        drop(m);
        self.pending.applied.notify_waiters();
    }
}

/// What the writer measures, for the master's `/metrics`.
pub struct StoreMetrics {
    /// Log entries per flush of the log (group commit).
    pub batch_commands: prometheus_client::metrics::histogram::Histogram,
    /// Time of a batch's log flush (fdatasync).
    pub log_sync_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Time of a batch's database commit (a checkpoint's includes its fsync).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for StoreMetrics {
    fn default() -> StoreMetrics {
        StoreMetrics {
            batch_commands: stripefs_daemon::metrics::size_histogram(),
            log_sync_seconds: stripefs_daemon::metrics::latency_histogram(),
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
        Store::open_group(dir, chunk_size, is_open, fatal, GroupOptions::default())
    }

    /// [`Store::open`] with the master's place in its group.
    pub fn open_group(
        dir: &Path,
        chunk_size: Option<u32>,
        is_open: Box<dyn Fn(InodeId) -> bool + Send + Sync>,
        fatal: CancellationToken,
        group: GroupOptions,
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
            let db = Database::create(&path).map_err(|e| db_err(&path)(e.into()))?;
            new_member_db(&db).map_err(db_err(&path))?;
            db
        };
        // A data directory of a master from before the group: apply what
        // its journal holds, then the journal is gone for good.
        let journal_path = dir.join(JOURNAL_FILE);
        if journal_path.exists() {
            let (journal, entries) = Journal::open(dir).map_err(io(&journal_path))?;
            replay(&db, journal, entries).map_err(|e| match e {
                ReplayError::Db(e) => db_err(&path)(e),
                ReplayError::Io(e) => io(&journal_path)(e),
            })?;
            std::fs::remove_file(&journal_path).map_err(io(&journal_path))?;
        }
        let identity = std::sync::OnceLock::new();
        if let Some((fs_id, size, _)) = read_identity(&db).map_err(db_err(&path))? {
            let _ = identity.set((fs_id, size));
        }
        {
            let txn = db.begin_write().map_err(|e| db_err(&path)(e.into()))?;
            {
                let mut meta = txn.open_table(tables::META).map_err(|e| db_err(&path)(e.into()))?;
                // Upgrades an older format: its tables are all still read
                // as they are; the new ones are created here.
                txn.open_table(tables::REQUESTS).map_err(|e| db_err(&path)(e.into()))?;
                txn.open_table(tables::SESSIONS).map_err(|e| db_err(&path)(e.into()))?;
                meta.insert(meta_keys::FORMAT_VERSION, FORMAT_VERSION.to_le_bytes().as_slice())
                    .map_err(|e| db_err(&path)(e.into()))?;
            }
            txn.commit().map_err(|e| db_err(&path)(e.into()))?;
        }
        let db = Arc::new(db);
        let gate: Gate = Arc::new(std::sync::RwLock::new(()));
        let metrics = Arc::new(StoreMetrics::default());
        let join = group.join;
        let (group, alone) = start_group(dir, &db, &gate, &metrics, &fatal, &group)?;
        let raft_dir = dir.join(RAFT_DIR);
        // After a crash, a master alone in its group may have answered
        // changes it lost: it waits for its registered sessions to replay.
        let clean = raft_dir.join(CLEAN_STOP);
        // The marker names the process that stopped cleanly.
        let stopped = std::fs::read_to_string(&clean).ok();
        let crashed = stopped.is_none();
        if !crashed {
            std::fs::remove_file(&clean).map_err(io(&clean))?;
            crate::raft::log::sync_dir(&raft_dir).map_err(io(&raft_dir))?;
        }
        let clean_start = !(crashed && alone && group.log.is_early());
        // A group answers only durable changes: every earlier process's
        // answers are on disk (0).
        let clean_after = stopped.and_then(|s| u64::from_str_radix(s.trim(), 16).ok()).unwrap_or(0);
        let waiting = match clean_start {
            false => registered_sessions(&db).map_err(db_err(&path))?,
            true => HashMap::new(),
        };
        let store = Store {
            db,
            identity,
            gate,
            ids: tokio::sync::Mutex::new((0, 0)),
            metrics,
            group,
            is_open,
            pending: Arc::default(),
            submitted: tokio_util::task::TaskTracker::new(),
            fatal,
            sessions: crate::sessions::Sessions::new(waiting),
            leases: crate::leases::Leases::new(crate::leases::LEASE),
            raft_dir,
            clean_start,
            clean_after,
        };
        // A new group of one (or one that stopped before its filesystem
        // was created) creates it now, through its log. (A larger group's
        // is created by `stripefs masters init`.)
        if store.identity().is_none() && !join && alone && store.is_leader() {
            let raft = store.group.raft.clone();
            let proposal = Proposal { cmd: create_fs_command(chunk_size), closed: Vec::new() };
            let rt = store.group.handle.as_ref().ok_or_else(|| OpenError::Refused("no runtime".into()))?;
            match block_on(rt, async move { raft.client_write(proposal).await.map(|r| r.data) }) {
                Ok(Ok(Ok(_))) => tracing::info!("created a new filesystem in {}", dir.display()),
                other => return Err(OpenError::Refused(format!("creating the filesystem: {other:?}"))),
            }
        }
        if let Some((fs_id, size)) = store.identity() {
            tracing::info!("filesystem {fs_id} (chunk size {size}) in {}", dir.display());
        }
        Ok(store)
    }

    /// The filesystem's id and chunk size (None: a master waiting to join
    /// a group, or a group whose filesystem is not created yet).
    pub fn identity(&self) -> Option<(String, u32)> {
        if let Some(i) = self.identity.get() {
            return Some(i.clone());
        }
        let (fs_id, size, _) = read_identity(&self.db).ok()??;
        Some(self.identity.get_or_init(|| (fs_id, size)).clone())
    }

    /// The filesystem id ("" before it exists: see [`Store::identity`]).
    pub fn fs_id(&self) -> String {
        self.identity().map(|i| i.0).unwrap_or_default()
    }

    /// The chunk size (the default before the filesystem exists).
    pub fn chunk_size(&self) -> u32 {
        self.identity().map(|i| i.1).unwrap_or(DEFAULT_CHUNK_SIZE)
    }

    /// Applies a command durably (in the group's log, flushed with the
    /// commands proposed meanwhile) and returns its reply.
    pub async fn execute(&self, cmd: Command) -> Result<Reply, FsError> {
        let (reply, at) = self.execute_at(cmd).await?;
        self.wait_durable(at).await;
        reply
    }

    /// Waits until log entry `at` is durable (at once when it was not
    /// answered early: a group commits an entry once on disk on a majority).
    async fn wait_durable(&self, at: u64) {
        if self.group.log.was_early(at) && self.group.log.durable_end() <= at {
            self.group.log.flush_soon();
            self.group.log.wait_durable(at).await;
        }
    }

    /// The highest log position at or below which every change is
    /// durable, as far as an answer at `at` can tell.
    fn durable_mark(&self, at: u64) -> u64 {
        let on_disk = self.group.log.durable_end().saturating_sub(1);
        if self.group.log.was_early(at) {
            on_disk
        } else {
            on_disk.max(at)
        }
    }

    /// Applies a command and returns its reply and log position, as soon
    /// as it is applied (maybe before it is durable: see
    /// [`crate::raft::log`]).
    async fn execute_at(&self, cmd: Command) -> Result<(Result<Reply, FsError>, u64), FsError> {
        self.execute_at_then(cmd, |_, _| {}).await
    }

    /// [`Store::execute_at`], and `then` with the answer and position once
    /// the command is applied, even if the caller stopped waiting (an RPC
    /// cancelled at its deadline): the write runs on the group's runtime
    /// to its end, since a proposal may be applied whether or not anyone
    /// waits for it.
    async fn execute_at_then(
        &self,
        cmd: Command,
        then: impl FnOnce(&Result<Reply, FsError>, u64) + Send + 'static,
    ) -> Result<(Result<Reply, FsError>, u64), FsError> {
        use tracing::Instrument as _;
        if self.group.stepping_down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(FsError::NotLeader);
        }
        let (proposal, pending) = self.propose(cmd)?;
        let raft = self.group.raft.clone();
        let rt = self.group.handle.as_ref().ok_or(FsError::NotLeader)?;
        // Inside the span of the request: its log shows where it went.
        let span = tracing::debug_span!("commit", member = self.group.id);
        let written = rt
            .spawn(
                async move {
                    let written = raft.client_write(proposal).await;
                    if let Ok(r) = &written {
                        then(&r.data, r.log_id.index);
                    }
                    drop(pending);
                    written
                }
                .instrument(span),
            )
            .await
            .map_err(internal)?;
        match written {
            Ok(r) => {
                tracing::debug!(log_index = r.log_id.index, "committed and applied");
                Ok((r.data, r.log_id.index))
            }
            Err(e) => Err(self.write_failed(e)),
        }
    }

    /// The proposal for `cmd`: which inodes it may free are not open.
    fn propose(&self, cmd: Command) -> Result<(Proposal, PendingGuard), FsError> {
        let mut targets = Vec::new();
        let mut c = &cmd;
        while let Command::Requested { cmd, .. } = c {
            c = cmd;
        }
        // Only these may free an inode: the others need no read.
        if matches!(c, Command::Unlink { .. } | Command::Rename { .. } | Command::Purge { .. }) {
            let txn = self.read()?;
            let entries = txn.open_table(tables::DIR_ENTRIES).map_err(internal)?;
            let mut name = |parent: InodeId, n: &str| -> Result<(), FsError> {
                if let Some(v) = entries.get((parent.0, n)).map_err(internal)? {
                    targets.push(InodeId(v.value()));
                }
                Ok(())
            };
            match c {
                Command::Unlink { op, .. } => name(op.parent, &op.name)?,
                Command::Rename { op, .. } => name(op.new_parent, &op.new_name)?,
                Command::Purge { ino } => targets.push(*ino),
                _ => {}
            }
        }
        let closed: Vec<InodeId> = {
            let mut m = lock(&self.pending.inodes);
            for ino in &targets {
                *m.entry(*ino).or_insert(0) += 1;
            }
            targets.iter().copied().filter(|i| !(self.is_open)(*i)).collect()
        };
        let guard = PendingGuard { pending: self.pending.clone(), inodes: targets };
        Ok((Proposal { cmd, closed }, guard))
    }

    /// Whether no command in flight may free `ino` or keep it as an orphan.
    pub fn is_settled(&self, ino: InodeId) -> bool {
        !lock(&self.pending.inodes).contains_key(&ino)
    }

    /// Waits until no command in flight may free `ino` or keep it as an
    /// orphan. After taking a reference: the inode is then either gone or
    /// kept for it. After dropping the last one: an orphan made meanwhile
    /// is then visible (and must be freed).
    pub async fn settled(&self, ino: InodeId) {
        loop {
            let applied = self.pending.applied.notified();
            if !lock(&self.pending.inodes).contains_key(&ino) {
                return;
            }
            applied.await;
        }
    }

    fn write_failed(
        &self,
        e: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, Member>>,
    ) -> FsError {
        use openraft::error::{ClientWriteError, RaftError};
        match e {
            // Not proposed, or proposed and then lost with the leadership:
            // either way the caller asks the leader again, with the same
            // request id (applied once if it was committed after all).
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                tracing::debug!("not the leader (the leader is {:?})", f.leader_id);
                FsError::NotLeader
            }
            RaftError::APIError(e) => internal(e),
            RaftError::Fatal(e) => {
                tracing::error!("the master group stopped, stopping the master: {e}");
                self.fatal.cancel();
                FsError::Internal
            }
        }
    }

    /// This master's id in its group.
    pub fn member_id(&self) -> u64 {
        self.group.id
    }

    /// The group's Raft handle.
    pub fn raft(&self) -> &Raft {
        &self.group.raft
    }

    /// Index of the last entry of this master's log.
    pub fn last_log_index(&self) -> Option<u64> {
        self.group.log.last_index()
    }

    /// Bytes this master's log takes on disk.
    pub fn log_disk_bytes(&self) -> u64 {
        self.group.log.disk_bytes()
    }

    /// Whether this master leads its group (as far as it knows: see
    /// [`Store::ensure_leader`] for a confirmed answer).
    pub fn is_leader(&self) -> bool {
        let m = self.group.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.group.id) && m.state == openraft::ServerState::Leader
    }

    /// This master's current term in its group.
    pub fn term(&self) -> u64 {
        self.group.raft.metrics().borrow().current_term
    }

    /// The leader's address, as far as this master knows.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.group.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone())
    }

    /// Ok when this master leads its group and may answer reads from its
    /// state: within its lease, or after confirming with a quorum (see
    /// [`crate::raft::LEASE`]). `NotLeader` otherwise: the caller asks
    /// [`Store::leader_addr`]'s master.
    /// After a crash it first waits for the clients' replays (see
    /// [`crate::sessions`]).
    pub async fn ensure_leader(&self) -> Result<(), FsError> {
        self.ensure_leader_now().await?;
        if !self.sessions.is_serving() {
            self.sessions.serving().await;
        }
        Ok(())
    }

    /// [`Store::ensure_leader`] for a client's mutation: a replay of a
    /// session this master waits for goes ahead at once.
    pub async fn ensure_leader_for<O>(&self, req: &Request<O>) -> Result<(), FsError> {
        if req.replay.is_some() && self.sessions.is_replaying(req.id.session) {
            return self.ensure_leader_now().await;
        }
        self.ensure_leader().await
    }

    /// [`Store::ensure_leader`] without waiting for replays (nodes, status,
    /// session calls).
    pub async fn ensure_leader_now(&self) -> Result<(), FsError> {
        if !self.group.serving.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(FsError::NotLeader);
        }
        self.confirm_leader().await
    }

    /// [`Store::ensure_leader`] before the soft state is rebuilt.
    pub async fn confirm_leader(&self) -> Result<(), FsError> {
        if self.group.stepping_down.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(FsError::NotLeader);
        }
        if let Some(until) = *lock(&self.group.lease) {
            if std::time::Instant::now() < until {
                return Ok(());
            }
        }
        crate::raft::confirm_leadership(&self.group.raft, &self.group.lease).await?;
        if self.identity().is_none() {
            // A group whose filesystem is still being created.
            return Err(FsError::NotLeader);
        }
        Ok(())
    }

    /// Whether this master serves clients and nodes as the leader: set
    /// once it has rebuilt its soft state after taking the lead (see
    /// `MasterState::took_the_lead`), cleared when it loses the lead.
    /// Taking the lead starts the directory leases' grace (see
    /// [`crate::leases`]).
    pub fn set_serving(&self, serving: bool) {
        if serving {
            match self.session_ids() {
                Ok(s) => self.leases.begin_grace(Some(s)),
                Err(e) => {
                    tracing::error!("listing client sessions: {e}");
                    self.leases.begin_grace(None);
                }
            }
        }
        self.group.serving.store(serving, std::sync::atomic::Ordering::SeqCst);
    }

    /// The group as this master sees it.
    pub fn group_status(&self) -> stripefs_proto::types::GroupStatus {
        crate::raft::status(&self.group.raft.metrics().borrow(), &self.group.contacts)
    }

    /// Changes the group (see [`stripefs_proto::types::GroupChange`]).
    pub async fn group_change(
        &self,
        change: stripefs_proto::types::GroupChange,
    ) -> Result<stripefs_proto::types::GroupStatus, String> {
        let raft = self.group.raft.clone();
        let (secret, stepping) = (self.group.secret.clone(), self.group.stepping_down.clone());
        let rt = self.group.handle.clone().ok_or("the master is stopping")?;
        // On the group's runtime: a change outlives a client that gives up.
        rt.spawn(async move { crate::raft::change(&raft, secret, &stepping, change).await })
            .await
            .map_err(|e| e.to_string())??;
        Ok(self.group_status())
    }

    /// Applies a client's request once (a retry gets the first answer; see
    /// [`crate::namespace::requests`]) and returns its typed answer. A
    /// registered session's change is answered once applied, maybe before
    /// it is durable ([`crate::sessions`]); others once durable.
    pub async fn run<O: Op + Touches>(&self, req: Request<O>) -> Result<Acked<O::Output>, FsError> {
        let session = req.id.session;
        let log = &self.group.log;
        // Every change of a master that answers early is marked, whoever
        // made it; one that builds on another session's change not yet
        // durable is answered only once durable itself (see
        // `crate::sessions`).
        let (claim, builds_on_others) = match log.is_early() {
            true => {
                let (c, b) = self.sessions.marks.claim(session, req.op.touches(), log.durable_end());
                (Some(c), b)
            }
            false => (None, false),
        };
        let early = log.is_early() && self.sessions.is_registered(session) && !builds_on_others;
        // A change of names waits for other sessions' leases on them to be
        // given back, and keeps new ones off until it is applied. A replay
        // (a change made before this process started) does not wait for
        // the grace after the start, but a late one takes leases back too.
        let names = req.op.names();
        let change = match names.is_empty() {
            false => Some(self.leases.before_change(session, names, req.replay.is_none()).await),
            true => None,
        };
        let mut cmd = req.op.command(Timestamp::now());
        if let Some(r) = req.replay {
            cmd = Command::Replayed { ino: r.ino, cmd: Box::new(cmd) };
        }
        let cmd = Command::Requested { id: req.id, answered_below: req.answered_below, cmd: Box::new(cmd) };
        let (reply, at) = self
            .execute_at_then(cmd, move |reply, at| {
                drop(change);
                // A refusal changed nothing: its claim just goes.
                if let (Some(claim), Ok(reply)) = (claim, reply) {
                    let created = match reply {
                        Reply::Attr(a) => Some(a.ino),
                        _ => None,
                    };
                    claim.applied(at, created);
                }
            })
            .await?;
        if !early {
            self.wait_durable(at).await;
        }
        let reply = reply?;
        let value = O::output(reply.clone()).ok_or_else(|| {
            tracing::error!("request {} answered {reply:?}, not what it asks for", req.id);
            FsError::Internal
        })?;
        let durability = Durability { incarnation: self.sessions.incarnation, at, durable: self.durable_mark(at) };
        Ok(Acked { value, durability })
    }

    /// Registers a client session with this master process (durably, the
    /// first time: a master that crashes waits for it after its restart).
    pub async fn open_session(&self, session: u64, host: String) -> Result<SessionInfo, FsError> {
        let known = {
            let txn = self.read()?;
            let t = txn.open_table(tables::SESSIONS).map_err(internal)?;
            t.get(session).map_err(internal)?.is_some()
        };
        if !known {
            self.execute(Command::OpenSession { session, host, now: Timestamp::now() }).await?;
        }
        let replay = self.sessions.register(session);
        self.leases.session_opened(session);
        Ok(SessionInfo {
            incarnation: self.sessions.incarnation,
            replay,
            clean: self.clean_start,
            clean_after: self.clean_after,
        })
    }

    /// A session replayed what it held.
    pub fn session_replayed(&self, session: u64) {
        self.sessions.replayed(session);
    }

    /// A session ended: a crash of this master no longer waits for it.
    pub async fn close_session(&self, session: u64) -> Result<(), FsError> {
        self.execute(Command::CloseSession { session }).await?;
        self.leases.session_closed(session);
        Ok(())
    }

    /// The registered client sessions, read through the gate (a read
    /// beside a commit trips redb: see [`Store::read`]).
    fn session_ids(&self) -> Result<std::collections::HashSet<u64>, FsError> {
        let txn = self.read()?;
        let t = txn.open_table(tables::SESSIONS).map_err(internal)?;
        let mut out = std::collections::HashSet::new();
        for item in t.iter().map_err(internal)? {
            out.insert(item.map_err(internal)?.0.value());
        }
        Ok(out)
    }

    /// Grants `session` a lease on the names of `dir`, with its listing
    /// (see [`crate::leases`]); None when refused, or when `dir` has more
    /// than [`crate::leases::MAX_NAMES`] names.
    pub fn lease_dir(&self, session: u64, dir: InodeId) -> Result<Option<DirLease>, FsError> {
        // Only a registered session is waited for after a restart (see
        // `Leases::begin_grace`).
        if !self.sessions.is_registered(session) {
            return Ok(None);
        }
        let id = match self.leases.grant(session, dir) {
            Ok(id) => id,
            Err(why) => {
                tracing::debug!("lease on directory {dir} for session {session:x} refused: {why:?}");
                return Ok(None);
            }
        };
        // Read after the grant: every other session's change is in it or
        // waits for the lease to come back.
        match self.names(dir, crate::leases::MAX_NAMES) {
            Ok(Some(names)) => Ok(Some(DirLease { id, names, lease_ms: self.leases.lease().as_millis() as u64 })),
            Ok(None) => {
                self.leases.give_back(session, dir, id);
                Ok(None)
            }
            Err(e) => {
                self.leases.give_back(session, dir, id);
                Err(e)
            }
        }
    }

    /// A holder's lease poll (see [`crate::leases::Leases::poll`]).
    pub async fn lease_poll(
        &self,
        session: u64,
        held: Vec<(InodeId, u64)>,
        released: Vec<(InodeId, u64)>,
    ) -> LeasePoll {
        let (recalled, lost) = self.leases.poll(session, &held, &released, crate::leases::POLL_WAIT).await;
        LeasePoll { recalled, lost }
    }

    /// The directory leases (metrics, tests).
    pub fn leases(&self) -> &crate::leases::Leases {
        &self.leases
    }

    /// Takes back every client's lease on `dirs` before an administrative
    /// change of their names (fsck's repairs); keep the answer until it
    /// is applied.
    pub async fn recall_leases(&self, dirs: Vec<InodeId>) -> crate::leases::Change {
        self.leases.before_change(crate::leases::ADMIN, dirs, true).await
    }

    /// Every name in `dir`, read in pieces; None once there are more than
    /// `max`.
    fn names(&self, dir: InodeId, max: usize) -> Result<Option<Vec<String>>, FsError> {
        const PIECE: usize = 4096;
        let mut out: Vec<String> = Vec::new();
        loop {
            let txn = self.read()?;
            must_be_dir(&txn.open_table(tables::INODES).map_err(internal)?, dir)?;
            let entries = txn.open_table(tables::DIR_ENTRIES).map_err(internal)?;
            let after = out.last().cloned();
            let start = after.as_deref().unwrap_or("");
            let mut n = 0;
            for item in entries.range((dir.0, start)..(dir.0 + 1, "")).map_err(internal)? {
                let (k, _) = item.map_err(internal)?;
                let name = k.value().1;
                if after.is_some() && name == start {
                    continue;
                }
                out.push(name.to_string());
                n += 1;
                if out.len() > max {
                    return Ok(None);
                }
                if n >= PIECE {
                    break;
                }
            }
            if n < PIECE {
                return Ok(Some(out));
            }
        }
    }

    /// Waits until every change applied so far is durable.
    pub async fn sync(&self) -> Result<Durability, FsError> {
        let at = self.group.log.last_index().unwrap_or(0);
        self.wait_durable(at).await;
        Ok(Durability { incarnation: self.sessions.incarnation, at, durable: self.durable_mark(at) })
    }

    /// Ends the replay window after `window` (see [`crate::sessions`]):
    /// the sessions that did not come back are forgotten.
    pub async fn end_replay_window(&self, window: std::time::Duration) {
        if self.sessions.is_serving() {
            return;
        }
        let _ = tokio::time::timeout(window, self.sessions.serving()).await;
        for (session, _) in self.sessions.end_window() {
            if let Err(e) = self.execute(Command::CloseSession { session }).await {
                tracing::warn!("forgetting client session {session:x}: {e}");
            }
        }
    }

    /// Entries of the log below this index are on disk.
    pub fn log_durable_end(&self) -> u64 {
        self.group.log.durable_end()
    }

    /// Client sessions this master still waits for to replay.
    pub fn sessions_awaiting_replay(&self) -> usize {
        self.sessions.awaiting()
    }

    /// Whether this master serves clients (no replay awaited).
    pub fn is_serving_clients(&self) -> bool {
        self.sessions.is_serving()
    }

    /// This master process's incarnation (see [`Durability`]).
    pub fn incarnation(&self) -> u64 {
        self.sessions.incarnation
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
        let Ok((proposal, pending)) = self.propose(cmd) else { return };
        let raft = self.group.raft.clone();
        if let Some(rt) = &self.group.handle {
            let _entered = rt.enter();
            self.submitted.spawn(async move {
                if let Err(e) = raft.client_write(proposal).await {
                    tracing::warn!("a background metadata command failed: {e}");
                }
                drop(pending);
            });
        }
    }

    /// A fresh id for a chunk or a chunk version (never reused).
    pub async fn next_id(&self) -> Result<u64, FsError> {
        let mut ids = self.ids.lock().await;
        if ids.0 >= ids.1 {
            match self.execute(Command::ReserveIdRange { count: ID_BATCH }).await? {
                Reply::Ids { first, end } => *ids = (first, end),
                other => return Err(unexpected("reserve ids", other)),
            }
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

    /// The scratch files whose home is one of `gone` and whose class
    /// removes lost files. Reads every inode and entry: for the rare
    /// times a node is gone.
    pub fn lost_scratch(&self, gone: &HashSet<NodeId>) -> Result<Vec<LostScratch>, FsError> {
        let txn = self.read()?;
        let inodes = txn.open_table(tables::INODES).map_err(internal)?;
        let mut lost: HashMap<u64, (NodeId, Vec<(InodeId, String)>)> = HashMap::new();
        for item in inodes.iter().map_err(internal)? {
            let (k, v) = item.map_err(internal)?;
            let Ok(rec) = InodeRecord::decode(v.value()) else { continue };
            if let (Some(home), DataClass::Scratch { remove_lost: true }) = (rec.home, rec.class) {
                if gone.contains(&home) {
                    lost.insert(k.value(), (home, Vec::new()));
                }
            }
        }
        if !lost.is_empty() {
            let entries = txn.open_table(tables::DIR_ENTRIES).map_err(internal)?;
            for item in entries.iter().map_err(internal)? {
                let (k, v) = item.map_err(internal)?;
                if let Some((_, names)) = lost.get_mut(&v.value()) {
                    let (dir, name) = k.value();
                    names.push((InodeId(dir), name.to_string()));
                }
            }
        }
        Ok(lost.into_iter().map(|(ino, (home, names))| (InodeId(ino), home, names)).collect())
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
        must_be_dir(&inodes, parent)?;
        let child = entries.get((parent.0, name)).map_err(internal)?.ok_or(FsError::NotFound)?.value();
        let v = inodes.get(child).map_err(internal)?.ok_or(FsError::NotFound)?;
        Ok((InodeId(child), InodeRecord::decode(v.value()).map_err(internal)?))
    }

    /// Up to `limit` entries of `dir` after the name `after`.
    pub fn readdir(&self, dir: InodeId, after: Option<&str>, limit: usize) -> Result<Vec<DirEntry>, FsError> {
        let txn = self.read()?;
        let inodes = txn.open_table(tables::INODES).map_err(internal)?;
        let entries = txn.open_table(tables::DIR_ENTRIES).map_err(internal)?;
        must_be_dir(&inodes, dir)?;
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
    /// Stops the group (what was proposed is applied or not answered) and
    /// makes the database durable, so that its file is closed (and can be
    /// opened again) when this returns.
    fn drop(&mut self) {
        if let Some(rt) = self.group.handle.take() {
            // What was submitted is applied first.
            self.submitted.close();
            let submitted = self.submitted.clone();
            if let Err(e) = block_on(&rt, async move { submitted.wait().await }) {
                tracing::error!("waiting for submitted commands: {e}");
            }
            let raft = self.group.raft.clone();
            if let Err(e) = block_on(&rt, async move { raft.shutdown().await }) {
                tracing::error!("stopping the master group: {e}");
            }
            if let Some(own) = self.group.rt.take() {
                own.shutdown_background();
            }
        }
        match checkpoint(&self.db, &self.gate, &self.group.log) {
            // Everything answered is on disk: the next start needs no replay.
            Ok(()) => {
                let me = format!("{:x}\n", self.sessions.incarnation);
                if let Err(e) = crate::raft::log::write_file_atomic(&self.raft_dir, CLEAN_STOP, me.as_bytes()) {
                    tracing::error!("marking the stop as clean: {e} (the next start waits for replays)");
                }
            }
            Err(e) => tracing::error!(
                "final metadata checkpoint failed (the log will be applied again at the next start): {e}"
            ),
        }
    }
}

/// Runs `fut` on `rt` and waits for it from a thread that may itself be
/// inside another runtime (a test, or `spawn_blocking`).
fn block_on<T: Send + 'static>(
    rt: &tokio::runtime::Handle,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv_timeout(std::time::Duration::from_secs(60)).map_err(|e| format!("the master group did not answer: {e}"))
}

/// This master's id in its group: random at the first start, kept in
/// `raft/id`.
fn member_id(raft_dir: &Path) -> std::io::Result<u64> {
    let path = raft_dir.join("id");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Small enough to type, never 0.
            let id = rand::random::<u32>() as u64 + 1;
            crate::raft::log::write_file_atomic(raft_dir, "id", format!("{id}\n").as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e),
    }
}

/// Opens the log and state machine and starts this master's group. A
/// master not told to join starts a group of one (creating the filesystem
/// through the log) when it has none, and returns once it leads its group
/// of one; a member of a larger group returns at once (it may have to
/// wait for the others).
fn start_group(
    dir: &Path,
    db: &Arc<Database>,
    gate: &Gate,
    metrics: &Arc<StoreMetrics>,
    fatal: &CancellationToken,
    opts: &GroupOptions,
) -> Result<(Group, bool), OpenError> {
    let raft_dir = dir.join(RAFT_DIR);
    let io = |source| OpenError::Io { path: raft_dir.clone(), source };
    std::fs::create_dir_all(&raft_dir).map_err(io)?;
    let id = member_id(&raft_dir).map_err(io)?;
    let log = LogStore::open(&raft_dir, metrics.clone()).map_err(io)?;
    let sm = StateMachine::open(db.clone(), gate.clone(), &raft_dir, metrics.clone(), log.clone())
        .map_err(|e| OpenError::Refused(format!("the master group's state in {}: {e}", raft_dir.display())))?;
    // Its own runtime: busy RPC handlers never delay heartbeats. (Running
    // it on the RPC handlers' runtime instead, to save the two thread
    // hand-offs of a mutation, measured no better: PERFORMANCE.md, stop 12.)
    let own = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("stripefs-raft")
        .enable_all()
        .build()
        .map_err(io)?;
    let handle = own.handle().clone();
    let rt = Some(own);
    let config = crate::raft::config(opts.snapshot_every)
        .validate()
        .map_err(|e| OpenError::Refused(format!("master group configuration: {e}")))?;
    let contacts = crate::raft::network::Contacts::default();
    let network = crate::raft::Network::new(opts.secret.clone(), contacts.clone());
    let (addr, join) = (opts.addr.clone(), opts.join);
    let (log2, log3, fatal) = (log.clone(), log.clone(), fatal.clone());
    // Not alone until its membership says so (the first start of a group
    // of one appends that membership: the log then knows).
    log.set_member(id, false);
    let lease = Arc::new(Mutex::new(None));
    let stepping_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (lease2, stepping2) = (lease.clone(), stepping_down.clone());
    let (started, alone) = block_on(&handle, async move {
        let raft = Raft::new(id, Arc::new(config), network, log2, sm).await.map_err(|e| e.to_string())?;
        let initialized = raft.is_initialized().await.map_err(|e| e.to_string())?;
        if !initialized && !join {
            tracing::info!("starting a new master group of one (member {id} at {addr})");
            let members = std::collections::BTreeMap::from([(id, Member::new(addr))]);
            raft.initialize(members).await.map_err(|e| e.to_string())?;
        } else if !initialized {
            tracing::info!("member {id} waits to be added to a master group (stripefs masters init or add)");
        }
        let voters: Vec<u64> = raft
            .with_raft_state(|st| st.membership_state.effective().membership().voter_ids().collect())
            .await
            .map_err(|e| e.to_string())?;
        let learners = raft
            .with_raft_state(|st| st.membership_state.effective().membership().learner_ids().count())
            .await
            .map_err(|e| e.to_string())?;
        let alone = voters == [id];
        log3.set_member(id, alone && learners == 0);
        if alone {
            raft.wait(Some(std::time::Duration::from_secs(30)))
                .metrics(
                    // Leader, with the first entry of its term applied:
                    // everything before it is applied too.
                    |m| {
                        m.state == openraft::ServerState::Leader
                            && m.current_leader == Some(id)
                            && m.last_applied.map(|l| l.leader_id.term) == Some(m.current_term)
                            && m.last_applied.map(|l| l.index) == m.last_log_index
                    },
                    "lead the group of one and apply its log",
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        crate::raft::spawn_watchers(raft.clone(), id, lease2, stepping2, fatal);
        Ok::<_, String>((raft, alone))
    })
    .and_then(|r| r)
    .map_err(|e| OpenError::Refused(format!("starting the master group in {}: {e}", raft_dir.display())))?;
    let group = Group {
        raft: started,
        handle: Some(handle),
        rt,
        id,
        log,
        lease,
        stepping_down,
        serving: std::sync::atomic::AtomicBool::new(false),
        secret: opts.secret.clone(),
        contacts,
    };
    Ok((group, alone))
}

/// `NotFound` unless `dir` exists, `NotDir` unless it is a directory.
fn must_be_dir(inodes: &impl ReadableTable<u64, &'static [u8]>, dir: InodeId) -> Result<(), FsError> {
    let d = inodes.get(dir.0).map_err(internal)?.ok_or(FsError::NotFound)?;
    match InodeRecord::decode(d.value()).map_err(internal)?.kind {
        FileKind::Dir => Ok(()),
        _ => Err(FsError::NotDir),
    }
}

/// The registered client sessions (session → host).
fn registered_sessions(db: &Database) -> Result<HashMap<u64, String>, redb::Error> {
    let txn = db.begin_read()?;
    let t = txn.open_table(tables::SESSIONS)?;
    let mut out = HashMap::new();
    for item in t.iter()? {
        let (k, v) = item?;
        let host = bincode::deserialize::<crate::sessions::SessionRecord>(v.value())
            .map(|r| r.host)
            .unwrap_or_else(|_| "?".into());
        out.insert(k.value(), host);
    }
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prepares the database of a new member: the tables and the marks of a
/// stripefs database, but no filesystem yet (it comes through the log, or
/// with a snapshot, the same on every member: [`Command::CreateFs`]).
fn new_member_db(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut t = Tables::open(&txn)?;
        t.meta.insert(meta_keys::MAGIC, MAGIC_VALUE)?;
        t.meta.insert(meta_keys::FORMAT_VERSION, FORMAT_VERSION.to_le_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

/// The command creating a new filesystem (a random id, `chunk_size`).
pub fn create_fs_command(chunk_size: Option<u32>) -> Command {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    Command::CreateFs {
        fs_id: hex::encode(id),
        chunk_size: chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE),
        now: Timestamp::now(),
    }
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
            // A member whose filesystem is not created yet.
            _ => Ok(()),
        },
    }
}

/// The filesystem's id, chunk size and id ceiling (None: no filesystem yet).
fn read_identity(db: &Database) -> Result<Option<(String, u32, u64)>, redb::Error> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(tables::META)?;
    let corrupt = || redb::Error::Corrupted("meta table lacks a required key".into());
    let fs_id = meta.get(meta_keys::FS_ID)?.map(|v| String::from_utf8_lossy(v.value()).into_owned());
    let chunk = meta.get(meta_keys::CHUNK_SIZE)?.and_then(|v| Some(u32::from_le_bytes(v.value().try_into().ok()?)));
    let ceiling = meta.get(meta_keys::ID_CEILING)?.and_then(|v| read_u64(v.value()));
    match (fs_id, chunk, ceiling) {
        (Some(f), Some(c), Some(i)) => Ok(Some((f, c, i))),
        (None, _, _) => Ok(None),
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
    let Some((_, chunk_size, _)) = read_identity(db)? else {
        return Err(redb::Error::Corrupted("a journal without a filesystem".into()).into());
    };
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
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    txn.commit()?;
    journal.clear().map_err(ReplayError::Io)?;
    Ok((seq, journal))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
