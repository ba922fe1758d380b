//! The replicated state machine: the master's redb tables. Committed log
//! entries are applied in batches, one write transaction each, with the
//! last applied log id and the membership in the same transaction.
//!
//! Applied transactions are not flushed one by one (the log already holds
//! them): a durable redb commit (a checkpoint) follows at most every
//! [`CHECKPOINT_INTERVAL`], and openraft re-applies from the log what a
//! crash took from the database.
//!
//! A snapshot is every table streamed to one file (`DIR/raft/snapshot`:
//! a header with its [`SnapshotMeta`], then one record per row, then an
//! end record with the count and a crc32). Installing one replaces every
//! table in one transaction. A database found behind the snapshot at start
//! (a crash after the snapshot, before the next checkpoint; the log before
//! the snapshot may already be purged) is brought up to it first.

use super::log::LogStore;
use super::{Answer, Member, TypeConfig};
use crate::namespace::{apply, ApplyError, Context, Tables};
use crate::store::{Gate, StoreMetrics};
use crate::tables::{self, meta_keys};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stripefs_proto::InodeId;

/// Longest time between durable commits of the database.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

const SNAPSHOT_FILE: &str = "snapshot";
const INCOMING_FILE: &str = "snapshot.incoming";
const SNAPSHOT_MAGIC: &[u8; 16] = b"stripefs-snap-1\n";

type NodeId = u64;
type Meta = SnapshotMeta<NodeId, Member>;
/// The last applied log id and the membership it left.
pub type Applied = (Option<LogId<NodeId>>, StoredMembership<NodeId, Member>);

/// One row of one table, as a snapshot stores it.
#[derive(Debug, Serialize, Deserialize)]
enum Row {
    Meta(String, Vec<u8>),
    Inode(u64, Vec<u8>),
    DirEntry(u64, String, u64),
    Chunk(u64, u64, Vec<u8>),
    Xattr(u64, String, Vec<u8>),
    Orphan(u64),
    Deletion(u64, u64, u64),
    Node(u64, Vec<u8>),
    Request(u64, u64, Vec<u8>),
    /// The last record: how many rows came before, and the crc32 of their
    /// encoding.
    End(u64, u32),
    /// A client session (format 4; after `End` so that older snapshots
    /// decode as they were written).
    Session(u64, Vec<u8>),
}

/// The state machine.
pub struct StateMachine {
    db: Arc<Database>,
    gate: Gate,
    /// The filesystem's chunk size (0: not known yet; read when needed).
    chunk_size: u64,
    dir: PathBuf,
    metrics: Arc<StoreMetrics>,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    last_checkpoint: Instant,
    /// The log (flushed before a checkpoint: see [`checkpoint`]).
    log: LogStore,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&io::Error::other(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &io::Error::other(e.to_string())).into()
}

/// The applied log id and membership the database records.
pub fn applied_in(txn: &redb::ReadTransaction) -> Result<Applied, String> {
    let meta = txn.open_table(tables::META).map_err(|e| e.to_string())?;
    let applied = match meta.get(meta_keys::RAFT_APPLIED).map_err(|e| e.to_string())? {
        Some(v) => bincode::deserialize(v.value()).map_err(|e| e.to_string())?,
        None => None,
    };
    let membership = match meta.get(meta_keys::RAFT_MEMBERSHIP).map_err(|e| e.to_string())? {
        Some(v) => bincode::deserialize(v.value()).map_err(|e| e.to_string())?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

fn record_applied(
    t: &mut Tables,
    applied: &Option<LogId<NodeId>>,
    membership: &StoredMembership<NodeId, Member>,
) -> Result<(), String> {
    let a = bincode::serialize(applied).map_err(|e| e.to_string())?;
    let m = bincode::serialize(membership).map_err(|e| e.to_string())?;
    t.meta.insert(meta_keys::RAFT_APPLIED, a.as_slice()).map_err(|e| e.to_string())?;
    t.meta.insert(meta_keys::RAFT_MEMBERSHIP, m.as_slice()).map_err(|e| e.to_string())?;
    Ok(())
}

impl StateMachine {
    /// The state machine over `db`, with snapshots in `dir`. Brings the
    /// database up to the snapshot when it is behind it.
    pub fn open(
        db: Arc<Database>,
        gate: Gate,
        dir: &Path,
        metrics: Arc<StoreMetrics>,
        log: LogStore,
    ) -> Result<StateMachine, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (applied, membership) = applied_in(&db.begin_read().map_err(|e| e.to_string())?)?;
        let mut sm = StateMachine {
            db,
            gate,
            chunk_size: 0,
            dir: dir.to_path_buf(),
            metrics,
            applied,
            membership,
            last_checkpoint: Instant::now(),
            log,
        };
        let path = dir.join(SNAPSHOT_FILE);
        if let Some(meta) = read_header(&path).map_err(|e| format!("{}: {e}", path.display()))? {
            if meta.last_log_id > sm.applied {
                tracing::info!(
                    "the database is behind the snapshot ({:?} < {:?}): loading the snapshot",
                    sm.applied,
                    meta.last_log_id
                );
                sm.load(&path, &meta).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        Ok(sm)
    }

    /// Replaces every table with the snapshot's rows, durably.
    fn load(&mut self, path: &Path, meta: &Meta) -> io::Result<()> {
        let mut r = BufReader::new(std::fs::File::open(path)?);
        skip_header(&mut r)?;
        let other = |e: &dyn std::fmt::Display| io::Error::other(e.to_string());
        let mut txn = self.db.begin_write().map_err(|e| other(&e))?;
        txn.set_durability(redb::Durability::Immediate).map_err(|e| other(&e))?;
        {
            macro_rules! clear {
                ($($def:expr),*) => {$( txn.delete_table($def).map_err(|e| other(&e))?; )*};
            }
            clear!(
                tables::META,
                tables::INODES,
                tables::DIR_ENTRIES,
                tables::CHUNKS,
                tables::XATTRS,
                tables::ORPHANS,
                tables::DELETIONS,
                tables::NODES,
                tables::REQUESTS,
                tables::SESSIONS
            );
            let mut t = Tables::open(&txn).map_err(|e| other(&e))?;
            let mut crc = crc32fast::Hasher::new();
            let mut count = 0u64;
            loop {
                let row: Row = bincode::deserialize_from(&mut r).map_err(|e| other(&e))?;
                if let Row::End(n, sum) = row {
                    if n != count || sum != crc.finalize() {
                        return Err(io::Error::other("the snapshot is damaged (count or crc32 differ)"));
                    }
                    break;
                }
                crc.update(&bincode::serialize(&row).map_err(|e| other(&e))?);
                count += 1;
                insert_row(&mut t, row).map_err(|e| other(&e))?;
            }
            record_applied(&mut t, &meta.last_log_id, &meta.last_membership).map_err(|e| other(&e))?;
        }
        let _no_readers = self.gate.write().unwrap_or_else(|e| e.into_inner());
        txn.commit().map_err(|e| other(&e))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.last_checkpoint = Instant::now();
        self.chunk_size = 0;
        Ok(())
    }
}

fn insert_row(t: &mut Tables, row: Row) -> Result<(), redb::Error> {
    match row {
        Row::Meta(k, v) => {
            t.meta.insert(k.as_str(), v.as_slice())?;
        }
        Row::Inode(k, v) => {
            t.inodes.insert(k, v.as_slice())?;
        }
        Row::DirEntry(p, n, c) => {
            t.dir_entries.insert((p, n.as_str()), c)?;
        }
        Row::Chunk(i, x, v) => {
            t.chunks.insert((i, x), v.as_slice())?;
        }
        Row::Xattr(i, n, v) => {
            t.xattrs.insert((i, n.as_str()), v.as_slice())?;
        }
        Row::Orphan(i) => {
            t.orphans.insert(i, ())?;
        }
        Row::Deletion(n, c, v) => {
            t.deletions.insert((n, c, v), ())?;
        }
        Row::Node(i, v) => {
            t.nodes.insert(i, v.as_slice())?;
        }
        Row::Request(s, q, v) => {
            t.requests.insert((s, q), v.as_slice())?;
        }
        Row::Session(s, v) => {
            t.sessions.insert(s, v.as_slice())?;
        }
        Row::End(..) => {}
    }
    Ok(())
}

/// Writes every row of the database as `txn` sees it.
fn dump(txn: &redb::ReadTransaction, w: &mut impl Write) -> Result<(), String> {
    let mut crc = crc32fast::Hasher::new();
    let mut count = 0u64;
    let mut put = |row: Row| -> Result<(), String> {
        let bytes = bincode::serialize(&row).map_err(|e| e.to_string())?;
        crc.update(&bytes);
        count += 1;
        w.write_all(&bytes).map_err(|e| e.to_string())
    };
    let s = |e: redb::Error| e.to_string();
    macro_rules! each {
        ($def:expr, |$k:ident, $v:ident| $row:expr) => {{
            let table = txn.open_table($def).map_err(|e| s(e.into()))?;
            for item in table.iter().map_err(|e| s(e.into()))? {
                let (k, v) = item.map_err(|e| s(e.into()))?;
                let ($k, $v) = (k.value(), v.value());
                put($row)?;
            }
        }};
    }
    each!(tables::META, |k, v| Row::Meta(k.to_string(), v.to_vec()));
    each!(tables::INODES, |k, v| Row::Inode(k, v.to_vec()));
    each!(tables::DIR_ENTRIES, |k, v| Row::DirEntry(k.0, k.1.to_string(), v));
    each!(tables::CHUNKS, |k, v| Row::Chunk(k.0, k.1, v.to_vec()));
    each!(tables::XATTRS, |k, v| Row::Xattr(k.0, k.1.to_string(), v.to_vec()));
    each!(tables::ORPHANS, |k, _v| Row::Orphan(k));
    each!(tables::DELETIONS, |k, _v| Row::Deletion(k.0, k.1, k.2));
    each!(tables::NODES, |k, v| Row::Node(k, v.to_vec()));
    each!(tables::REQUESTS, |k, v| Row::Request(k.0, k.1, v.to_vec()));
    each!(tables::SESSIONS, |k, v| Row::Session(k, v.to_vec()));
    let end = bincode::serialize(&Row::End(count, crc.finalize())).map_err(|e| e.to_string())?;
    w.write_all(&end).map_err(|e| e.to_string())
}

/// The snapshot header of the file at `path` (None: no snapshot).
fn read_header(path: &Path) -> io::Result<Option<Meta>> {
    match std::fs::File::open(path) {
        Ok(f) => Ok(Some(skip_header(&mut BufReader::new(f))?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn skip_header(r: &mut impl Read) -> io::Result<Meta> {
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(io::Error::other("not a stripefs snapshot"));
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > 1 << 24 {
        return Err(io::Error::other("snapshot header too large"));
    }
    let mut header = vec![0u8; len as usize];
    r.read_exact(&mut header)?;
    bincode::deserialize(&header).map_err(|e| io::Error::other(e.to_string()))
}

fn write_header(w: &mut impl Write, meta: &Meta) -> io::Result<()> {
    let header = bincode::serialize(meta).map_err(|e| io::Error::other(e.to_string()))?;
    w.write_all(SNAPSHOT_MAGIC)?;
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)
}

/// A durable commit: everything committed before is on disk once it
/// returns. The log is flushed first: the database on disk is never ahead
/// of the log on disk (entries may be applied before their flush; see
/// [`crate::raft::log`]).
pub fn checkpoint(db: &Database, gate: &Gate, log: &LogStore) -> Result<(), redb::Error> {
    log.flush()?;
    let mut txn = db.begin_write()?;
    txn.set_durability(redb::Durability::Immediate).map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    let _no_readers = gate.write().unwrap_or_else(|e| e.into_inner());
    txn.commit()?;
    Ok(())
}

/// Builds a snapshot of the database as it is.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    gate: Gate,
    dir: PathBuf,
    log: LogStore,
}

impl SnapshotBuilder {
    fn build(&self) -> Result<Meta, String> {
        let started = Instant::now();
        // The snapshot may hold transactions a crash would take from the
        // database; the start of the next master loads the snapshot then.
        checkpoint(&self.db, &self.gate, &self.log).map_err(|e| e.to_string())?;
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let meta = {
            let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
            let txn = self.db.begin_read().map_err(|e| e.to_string())?;
            let (applied, membership) = applied_in(&txn)?;
            let id = format!(
                "{}-{}-{}",
                applied.map(|a| a.leader_id.term).unwrap_or(0),
                applied.map(|a| a.index).unwrap_or(0),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
            );
            let meta = Meta { last_log_id: applied, last_membership: membership, snapshot_id: id };
            let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            write_header(&mut w, &meta).map_err(|e| e.to_string())?;
            dump(&txn, &mut w)?;
            let file = w.into_inner().map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
            meta
        };
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE)).map_err(|e| e.to_string())?;
        std::fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| e.to_string())?;
        tracing::info!(
            "snapshot {} at log index {:?} built in {:.2} s",
            meta.snapshot_id,
            meta.last_log_id.map(|l| l.index),
            started.elapsed().as_secs_f64()
        );
        Ok(meta)
    }
}

async fn open_snapshot(dir: &Path, meta: Meta) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
    let file = tokio::fs::File::open(dir.join(SNAPSHOT_FILE)).await.map_err(snap_err)?;
    Ok(Snapshot { meta, snapshot: Box::new(file) })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let me = SnapshotBuilder {
            db: self.db.clone(),
            gate: self.gate.clone(),
            dir: self.dir.clone(),
            log: self.log.clone(),
        };
        let meta = tokio::task::spawn_blocking(move || me.build()).await.map_err(snap_err)?.map_err(snap_err)?;
        open_snapshot(&self.dir, meta).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<Applied, StorageError<NodeId>> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answer>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let durable = self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
        let _span = tracing::debug_span!("apply", batch = entries.len(), durable).entered();
        if durable {
            // Never ahead of the log on disk (see `checkpoint`).
            self.log.flush().map_err(sm_err)?;
        }
        let mut txn = self.db.begin_write().map_err(sm_err)?;
        let durability = if durable { redb::Durability::Immediate } else { redb::Durability::None };
        txn.set_durability(durability).map_err(sm_err)?;
        let mut answers = Vec::with_capacity(entries.len());
        {
            let mut t = Tables::open(&txn).map_err(sm_err)?;
            for entry in &entries {
                if self.chunk_size == 0 {
                    // Known once the filesystem exists (CreateFs or a snapshot).
                    self.chunk_size = match t.meta.get(meta_keys::CHUNK_SIZE).map_err(sm_err)? {
                        Some(v) => v.value().try_into().map(u32::from_le_bytes).map(u64::from).unwrap_or(0),
                        None => 0,
                    };
                }
                self.applied = Some(entry.log_id);
                answers.push(match &entry.payload {
                    EntryPayload::Blank => Ok(crate::namespace::Reply::Unit),
                    EntryPayload::Normal(p) => {
                        // Whether an inode is open was decided by the
                        // leader when it proposed the command (see
                        // `Proposal::closed`); every member answers alike.
                        let is_open = |ino: InodeId| !p.closed.contains(&ino);
                        let ctx = Context { chunk_size: self.chunk_size, is_open: &is_open };
                        match apply(&mut t, &p.cmd, &ctx) {
                            Ok(r) => Ok(r),
                            Err(ApplyError::Fs(e)) => Err(e),
                            Err(e) => {
                                return Err(StorageIOError::apply(entry.log_id, &io::Error::other(e.to_string())).into())
                            }
                        }
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        Ok(crate::namespace::Reply::Unit)
                    }
                });
            }
            record_applied(&mut t, &self.applied, &self.membership).map_err(sm_err)?;
        }
        {
            let _no_readers = self.gate.write().unwrap_or_else(|e| e.into_inner());
            let started = Instant::now();
            txn.commit().map_err(sm_err)?;
            self.metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
        if durable {
            self.last_checkpoint = Instant::now();
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), gate: self.gate.clone(), dir: self.dir.clone(), log: self.log.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.dir.join(INCOMING_FILE))
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let started = Instant::now();
        // Rare, and nothing else may touch the state machine meanwhile:
        // done right here, on the master group's own runtime. The data is
        // kept as this master's current snapshot, then loaded from there.
        let mut received = snapshot.into_std().await;
        let (tmp, current) = (self.dir.join(format!("{SNAPSHOT_FILE}.tmp")), self.dir.join(SNAPSHOT_FILE));
        let mut copy = || -> io::Result<()> {
            use std::io::Seek;
            received.seek(io::SeekFrom::Start(0))?;
            let mut out = std::fs::File::create(&tmp)?;
            io::copy(&mut received, &mut out)?;
            out.sync_all()?;
            std::fs::rename(&tmp, &current)?;
            std::fs::File::open(&self.dir)?.sync_all()?;
            let _ = std::fs::remove_file(self.dir.join(INCOMING_FILE));
            Ok(())
        };
        copy().map_err(snap_err)?;
        self.load(&current, meta).map_err(snap_err)?;
        tracing::info!(
            "installed the leader's snapshot at log index {:?} in {:.2} s",
            self.applied.map(|a| a.index),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let path = self.dir.join(SNAPSHOT_FILE);
        match read_header(&path).map_err(snap_err)? {
            Some(meta) => Ok(Some(open_snapshot(&self.dir, meta).await?)),
            None => Ok(None),
        }
    }
}
