//! The Raft log on disk: what makes a mutation durable (it replaced the
//! journal of before). A group answers a mutation once it is on a
//! majority's disks; a master alone answers it before its flush ends (see
//! below).
//!
//! Entries go to segment files `log-<first index>` in `DIR/raft/`, as
//! records `[len u32][crc32 u32][bincode entry]`. A segment is filled with
//! zeros when it is created, so appending writes over allocated blocks and
//! `fdatasync` has no file size to update (one device write, not two: the
//! journal measured the difference). A zero length ends a segment.
//!
//! `append` writes a batch with one `pwrite` on the caller's task and hands
//! the flush to the `raft-log-sync` thread, which flushes everything handed
//! to it since its last flush with one `fdatasync` (group commit:
//! concurrent mutations share a flush). The vote and the purge point live
//! in `DIR/raft/state`, replaced atomically.
//!
//! When the flush is reported to openraft depends on the group:
//! - **Alone** (a group of one voter and no learner): at once, before the
//!   `fdatasync` (*early*). The entry commits and is applied and answered
//!   while its flush runs; [`LogStore::durable_end`] says how far the log
//!   really is on disk, and the clients keep every change above it until it
//!   is, replaying them to a restarted master (docs/SEMANTICS.md, the
//!   durability contract). No other member exists whose log could differ,
//!   so Raft's rule (an entry counts for the commit once on disk) is only
//!   relaxed where the clients make up for it. A failed `fdatasync` after
//!   an early report stops the process: what it acknowledged can no longer
//!   be promised.
//! - **In a group**: only after the `fdatasync`, as Raft requires (a
//!   member whose log lost a counted entry could elect a leader without
//!   it). A batch that holds a membership change is always flushed first:
//!   it is where the group grows, and everything reported early before it
//!   is then on disk.
//!
//! Every entry not yet purged is also kept in memory (openraft reads them
//! to replicate and apply): snapshots bound both the memory and the files.

use super::TypeConfig;
use crate::store::StoreMetrics;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// Size of a segment file (preallocated).
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// The vote and purge point.
const STATE_FILE: &str = "state";
const SEGMENT_PREFIX: &str = "log-";
/// Largest record accepted when reading (a bigger length is garbage).
const MAX_RECORD: u32 = 256 << 20;

type NodeId = u64;

/// What must survive a restart besides the entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HardState {
    vote: Option<Vote<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

struct Segment {
    /// Index of its first entry.
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Where the next record goes.
    end: u64,
    /// Offset of each entry, from `first` on.
    offsets: Vec<u64>,
    /// Size of the file.
    cap: u64,
}

impl Segment {
    fn last(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first + self.offsets.len() as u64 - 1)
    }
}

struct Inner {
    dir: PathBuf,
    state: HardState,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    segments: Vec<Segment>,
}

struct SyncJob {
    file: Arc<File>,
    /// Told once the flush is done (None: reported early, or a flush
    /// asked for by [`LogStore::flush`]).
    done: Option<LogFlushed<TypeConfig>>,
    /// Entries written.
    entries: usize,
    /// The log's entries below this are on disk once the job is done.
    end: u64,
    /// The truncation count when the job was made (see [`Durable`]).
    generation: u64,
    /// Told when the job is done (for [`LogStore::flush`]).
    ack: Option<mpsc::Sender<()>>,
}

/// How far the log is on disk.
#[derive(Default)]
pub struct Durable {
    /// Entries below this index are on disk (0: none known).
    end: std::sync::atomic::AtomicU64,
    /// Highest index reported to openraft before it was on disk, plus one.
    early_end: std::sync::atomic::AtomicU64,
    /// Bumped by every truncation: a flush of a truncated entry says
    /// nothing of the entry that replaced it.
    generation: std::sync::atomic::AtomicU64,
    /// Held while `end` moves: a truncation and a flush report never
    /// interleave.
    moving: Mutex<()>,
    changed: tokio::sync::Notify,
}

impl Durable {
    fn advance(&self, end: u64, generation: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let _moving = self.moving.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(SeqCst) == generation {
            self.end.fetch_max(end, SeqCst);
            self.changed.notify_waiters();
        }
    }

    /// Entries from `at` on are gone.
    fn truncate(&self, at: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let _moving = self.moving.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, SeqCst);
        self.end.fetch_min(at, SeqCst);
        self.early_end.fetch_min(at, SeqCst);
    }
}

/// The log store (cheap to clone: clones share the log).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    sync: mpsc::Sender<SyncJob>,
    /// Report flushes early (see the module documentation): this member
    /// is alone in its group.
    early: Arc<std::sync::atomic::AtomicBool>,
    /// This member's id (0: not known yet).
    member: Arc<std::sync::atomic::AtomicU64>,
    durable: Arc<Durable>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

fn segment_name(first: u64) -> String {
    format!("{SEGMENT_PREFIX}{first:020}")
}

/// Makes the entries of `dir` (a creation, removal or rename) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to `dir/name` atomically and durably.
pub(crate) fn write_file_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let f = File::create(&tmp)?;
        f.write_all_at(data, 0)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn encode(entry: &Entry<TypeConfig>, out: &mut Vec<u8>) -> io::Result<()> {
    let payload = bincode::serialize(entry).map_err(|e| io_err("encode a log entry", e))?;
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// The records of a segment's bytes: entries with their offsets, and where
/// the valid records end (a torn or zero record stops the reading).
fn decode_segment(bytes: &[u8]) -> (Vec<(u64, Entry<TypeConfig>)>, u64) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        if len == 0 || len > MAX_RECORD || at + 8 + len as usize > bytes.len() {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len as usize];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(entry) = bincode::deserialize::<Entry<TypeConfig>>(payload) else { break };
        out.push((at as u64, entry));
        at += 8 + len as usize;
    }
    (out, at as u64)
}

/// Creates a zero-filled segment file.
fn create_segment(dir: &Path, first: u64, min_len: u64) -> io::Result<Segment> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
    let len = SEGMENT_BYTES.max(min_len + 8);
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(Segment { first, path, file: Arc::new(file), end: 0, offsets: Vec::new(), cap: len })
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, reading every entry not yet
    /// purged. A torn record at the end of the last segment (a crash in
    /// the middle of a write, never acknowledged) is dropped.
    pub fn open(dir: &Path, metrics: Arc<StoreMetrics>) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let state: HardState = match std::fs::read(dir.join(STATE_FILE)) {
            Ok(b) => bincode::deserialize(&b).map_err(|e| io_err("raft state file", e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => HardState::default(),
            Err(e) => return Err(e),
        };
        let purged = state.purged.map(|l| l.index);
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix(SEGMENT_PREFIX).and_then(|n| n.parse::<u64>().ok()) {
                names.push((n, item.path()));
            }
        }
        names.sort();
        let mut entries = BTreeMap::new();
        let mut segments: Vec<Segment> = Vec::new();
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let bytes = std::fs::read(&path)?;
            let (records, end) = decode_segment(&bytes);
            let is_last = i + 1 == count;
            let mut offsets = Vec::with_capacity(records.len());
            for (n, (offset, entry)) in records.into_iter().enumerate() {
                let index = entry.log_id.index;
                if index != first + n as u64 {
                    return Err(io_err(
                        &path.display().to_string(),
                        format!("entry {index} where {} belongs: the log is damaged", first + n as u64),
                    ));
                }
                offsets.push(offset);
                if purged.is_none_or(|p| index > p) {
                    entries.insert(index, entry);
                }
            }
            if !is_last && (end as usize) < bytes.len() && bytes[end as usize..].iter().any(|b| *b != 0) {
                return Err(io_err(&path.display().to_string(), "a damaged record in the middle of the log"));
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if is_last && bytes[end as usize..].iter().any(|b| *b != 0) {
                // A torn write: never acknowledged; clear it so that no
                // later reading takes it for a record.
                tracing::warn!("dropping a torn record at the end of {}", path.display());
                file.write_all_at(&vec![0u8; bytes.len() - end as usize], end)?;
                file.sync_data()?;
            }
            let seg = Segment { first, path, file: Arc::new(file), end, offsets, cap: bytes.len() as u64 };
            match (purged, seg.last()) {
                // Wholly purged (a crash between the purge and the removal).
                (Some(p), Some(last)) if last <= p => std::fs::remove_file(&seg.path)?,
                _ => segments.push(seg),
            }
        }
        // What a crashed process wrote may still be in the page cache
        // only (of any segment: it may have crashed right after a roll):
        // on disk now, so the whole log read is durable.
        for seg in &segments {
            seg.file.sync_data()?;
        }
        let durable = Arc::new(Durable::default());
        let end = entries.keys().next_back().map(|i| i + 1).or(purged.map(|p| p + 1)).unwrap_or(0);
        durable.end.store(end, std::sync::atomic::Ordering::SeqCst);
        let (tx, rx) = mpsc::channel::<SyncJob>();
        let (m, d) = (metrics.clone(), durable.clone());
        std::thread::Builder::new().name("raft-log-sync".into()).spawn(move || sync_loop(rx, m, d))?;
        Ok(LogStore {
            inner: Arc::new(Mutex::new(Inner { dir: dir.to_path_buf(), state, entries, segments })),
            sync: tx,
            early: Arc::default(),
            member: Arc::default(),
            durable,
        })
    }

    /// Tells the log which member it belongs to and whether that member is
    /// alone in its group (its flushes are then reported early; see the
    /// module documentation). Later membership entries appended to the
    /// log keep this up to date.
    pub fn set_member(&self, id: u64, alone: bool) {
        self.member.store(id, std::sync::atomic::Ordering::SeqCst);
        self.early.store(alone, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether flushes are reported early (this member is alone).
    pub fn is_early(&self) -> bool {
        self.early.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Entries below this index are on disk.
    pub fn durable_end(&self) -> u64 {
        self.durable.end.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether entry `index` was reported to openraft before it was on
    /// disk (its answer went out early).
    pub fn was_early(&self, index: u64) -> bool {
        index < self.durable.early_end.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until entry `index` is on disk.
    pub async fn wait_durable(&self, index: u64) {
        loop {
            let changed = self.durable.changed.notified();
            if self.durable_end() > index {
                return;
            }
            changed.await;
        }
    }

    /// Has what is appended flushed without waiting for more (see
    /// [`LINGER`]); returns at once.
    pub fn flush_soon(&self) {
        // A sync thread that is gone fails the next append or flush.
        let _ = self.ask_flush();
    }

    /// Puts everything appended so far on disk, then returns (blocking:
    /// before a checkpoint of the state machine, which must never be ahead
    /// of the log on disk).
    pub fn flush(&self) -> io::Result<()> {
        let gone = || io_err("raft log", "the log's sync thread is gone");
        match self.ask_flush().map_err(|_| gone())? {
            Some(done) => done.recv().map_err(|_| gone()),
            None => Ok(()),
        }
    }

    /// Asks the sync thread to flush what is appended, at once (it ends a
    /// [`LINGER`]); the receiver hears when that is done (None: nothing
    /// to flush; Err: the sync thread is gone).
    fn ask_flush(&self) -> Result<Option<mpsc::Receiver<()>>, mpsc::SendError<SyncJob>> {
        let job = {
            let inner = lock(&self.inner);
            let end = inner.entries.keys().next_back().map(|i| i + 1).unwrap_or(0);
            let Some(file) = inner.segments.last().map(|s| s.file.clone()) else { return Ok(None) };
            if self.durable_end() >= end {
                return Ok(None);
            }
            let (tx, rx) = mpsc::channel();
            let generation = self.durable.generation.load(std::sync::atomic::Ordering::SeqCst);
            (SyncJob { file, done: None, entries: 0, end, generation, ack: Some(tx) }, rx)
        };
        self.sync.send(job.0)?;
        Ok(Some(job.1))
    }

    /// Index of the last entry in the log (None: empty).
    pub fn last_index(&self) -> Option<u64> {
        let inner = lock(&self.inner);
        inner.entries.keys().next_back().copied().or(inner.state.purged.map(|p| p.index))
    }

    /// Bytes the log's segment files take on disk.
    pub fn disk_bytes(&self) -> u64 {
        let inner = lock(&self.inner);
        inner.segments.iter().map(|s| s.file.metadata().map(|m| m.len()).unwrap_or(0)).sum()
    }

    fn save_state(inner: &Inner) -> io::Result<()> {
        let bytes = bincode::serialize(&inner.state).map_err(|e| io_err("encode the raft state", e))?;
        write_file_atomic(&inner.dir, STATE_FILE, &bytes)
    }
}

/// How long the flush of entries answered early may wait for more
/// entries to share it: a sequential client's changes then take one
/// `fdatasync` per few, not one each (measured: a quarter of the flushes,
/// PERFORMANCE.md). Whoever waits for a flush (`fsync`, a group member,
/// a checkpoint) ends the wait at once.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// Flushes what `append` wrote, a batch at a time, and reports it.
fn sync_loop(rx: mpsc::Receiver<SyncJob>, metrics: Arc<StoreMetrics>, durable: Arc<Durable>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        // Only entries answered early wait: gather more for one flush,
        // for at most LINGER (anyone waiting for a flush ends the wait).
        {
            let until = std::time::Instant::now() + LINGER;
            while jobs.iter().all(|j| j.done.is_none() && j.ack.is_none()) {
                let left = until.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        let started = std::time::Instant::now();
        let mut synced: Vec<*const File> = Vec::new();
        let mut result: Result<(), (io::ErrorKind, String)> = Ok(());
        for job in &jobs {
            let ptr = Arc::as_ptr(&job.file);
            if synced.contains(&ptr) {
                continue;
            }
            synced.push(ptr);
            if let Err(e) = job.file.sync_data() {
                result = Err((e.kind(), e.to_string()));
            }
        }
        metrics.log_sync_seconds.observe(started.elapsed().as_secs_f64());
        let entries = jobs.iter().map(|j| j.entries).sum::<usize>();
        if entries > 0 {
            metrics.batch_commands.observe(entries as f64);
        }
        if let Err((_, m)) = &result {
            if jobs.iter().any(|j| j.done.is_none()) {
                // Entries were answered on the promise of this flush: the
                // clients replay them to the next master process.
                tracing::error!("flushing the raft log failed after its entries were answered: {m}; stopping");
                std::process::abort();
            }
        }
        for job in jobs {
            if result.is_ok() {
                durable.advance(job.end, job.generation);
            }
            if let Some(done) = job.done {
                done.log_io_completed(result.clone().map_err(|(k, m)| io::Error::new(k, m)));
            }
            if let Some(ack) = job.ack {
                let _ = ack.send(());
            }
        }
    }
}

fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&io_err("raft log", e)).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let inner = lock(&self.inner);
        Ok(inner.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let inner = lock(&self.inner);
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.state.purged);
        Ok(LogState { last_purged_log_id: inner.state.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = lock(&self.inner);
        inner.state.vote = Some(*vote);
        LogStore::save_state(&inner).map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.inner).state.vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = lock(&self.inner);
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(first) = entries.first().map(|e| e.log_id.index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let mut buf = Vec::new();
        let mut rel = Vec::with_capacity(entries.len());
        for e in &entries {
            rel.push(buf.len() as u64);
            encode(e, &mut buf).map_err(write_err)?;
        }
        let roll = match inner.segments.last() {
            None => true,
            Some(s) => s.end + buf.len() as u64 + 8 > s.cap && !s.offsets.is_empty(),
        };
        if roll {
            let seg = create_segment(&inner.dir, first, buf.len() as u64).map_err(write_err)?;
            inner.segments.push(seg);
        }
        let seg = inner.segments.last_mut().ok_or_else(|| write_err("no segment"))?;
        if let Some(last) = seg.last() {
            if last + 1 != first {
                return Err(write_err(format!("append of {first} after {last}")));
            }
        } else if seg.first != first {
            // An empty segment left by a truncation or purge: rename it.
            let path = seg.path.with_file_name(segment_name(first));
            std::fs::rename(&seg.path, &path).map_err(write_err)?;
            seg.path = path;
            seg.first = first;
        }
        seg.file.write_all_at(&buf, seg.end).map_err(write_err)?;
        let base = seg.end;
        seg.offsets.extend(rel.iter().map(|r| base + r));
        seg.end += buf.len() as u64;
        let file = seg.file.clone();
        let count = entries.len();
        // A membership change is flushed before it counts, and decides
        // whether the flushes after it may be reported early.
        let mut changes_membership = false;
        for e in &entries {
            if let openraft::EntryPayload::Membership(m) = &e.payload {
                changes_membership = true;
                let me = self.member.load(std::sync::atomic::Ordering::SeqCst);
                let alone =
                    m.get_joint_config().len() == 1 && m.voter_ids().eq([me]) && m.learner_ids().next().is_none();
                self.early.store(alone, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let end = entries.last().map(|e| e.log_id.index + 1).unwrap_or(first);
        let early = !changes_membership && self.early.load(std::sync::atomic::Ordering::SeqCst);
        // Marked early before the entries are readable (under the log's
        // lock): whoever sees an entry knows whether it must wait for it.
        if early {
            self.durable.early_end.fetch_max(end, std::sync::atomic::Ordering::SeqCst);
        }
        for e in entries {
            inner.entries.insert(e.log_id.index, e);
        }
        // Read under the log's lock: no truncation comes in between.
        let generation = self.durable.generation.load(std::sync::atomic::Ordering::SeqCst);
        drop(inner);
        let done = if early {
            callback.log_io_completed(Ok(()));
            None
        } else {
            Some(callback)
        };
        // A membership change is on disk, with everything before it,
        // before this returns: a member added to a master that answered
        // early must never receive an entry its leader could still lose.
        let (ack, wait) = match changes_membership {
            true => {
                let (tx, rx) = mpsc::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let job = SyncJob { file, done, entries: count, end, generation, ack };
        self.sync.send(job).map_err(|_| write_err("the log's sync thread is gone"))?;
        if let Some(rx) = wait {
            rx.recv().map_err(|_| write_err("the log's sync thread is gone"))?;
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = lock(&self.inner);
        let at = log_id.index;
        self.durable.truncate(at);
        inner.entries.split_off(&at);
        let dir = inner.dir.clone();
        let mut removed = false;
        while inner.segments.len() > 1 && inner.segments.last().is_some_and(|s| s.first >= at) {
            if let Some(s) = inner.segments.pop() {
                std::fs::remove_file(&s.path).map_err(write_err)?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&dir).map_err(write_err)?;
        }
        if let Some(seg) = inner.segments.last_mut() {
            let keep = at.saturating_sub(seg.first) as usize;
            if keep < seg.offsets.len() {
                let off = seg.offsets[keep];
                seg.file.write_all_at(&vec![0u8; (seg.end - off) as usize], off).map_err(write_err)?;
                seg.file.sync_data().map_err(write_err)?;
                seg.offsets.truncate(keep);
                seg.end = off;
            }
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = lock(&self.inner);
        if inner.state.purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        inner.state.purged = Some(log_id);
        LogStore::save_state(&inner).map_err(write_err)?;
        let keep = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = keep;
        // Remove whole segments now behind the purge point; the last one
        // too when everything is purged (the next append starts a new one).
        let mut removed = false;
        while let Some(s) = inner.segments.first() {
            let wholly = match s.last() {
                Some(last) => last <= log_id.index,
                None => true,
            };
            if !wholly || (inner.segments.len() == 1 && s.last().is_none()) {
                break;
            }
            let s = inner.segments.remove(0);
            std::fs::remove_file(&s.path).map_err(write_err)?;
            removed = true;
        }
        if removed {
            let dir = inner.dir.clone();
            sync_dir(&dir).map_err(write_err)?;
        }
        Ok(())
    }
}

/// Index of the last entry of the log in `dir` without opening it for
/// writing (offline fsck); None when it has none.
pub fn last_index_in(dir: &Path) -> io::Result<Option<u64>> {
    let mut last = None;
    let Ok(items) = std::fs::read_dir(dir) else { return Ok(None) };
    for item in items {
        let item = item?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with(SEGMENT_PREFIX) && !name.ends_with(".tmp") {
            let (records, _) = decode_segment(&std::fs::read(item.path())?);
            if let Some((_, e)) = records.last() {
                last = last.max(Some(e.log_id.index));
            }
        }
    }
    Ok(last)
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
