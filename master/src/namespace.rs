//! Namespace mutations as a serializable [`Command`] applied to the tables
//! of one write transaction. Every mutation of the master goes through
//! [`apply`], so commands can later become log entries of a replicated
//! state machine.
//!
//! Discipline: an `apply_*` function checks everything that can fail with
//! a user error *before* it writes anything, so a rejected command leaves
//! the transaction untouched and other commands of the same group commit
//! are unaffected.

use crate::records::{ChunkRecord, DecodeError, InodeRecord, NodeRecord};
use crate::tables::{self, meta_keys};
use redb::{ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};
use stripefs_proto::ops::{self, RequestId};
use stripefs_proto::types::{Attr, ChunkCommit, FileKind, Timestamp};
use stripefs_proto::{ChunkId, FsError, InodeId, NodeId, Version};

/// renameat2's `RENAME_NOREPLACE`.
pub const RENAME_NOREPLACE: u32 = 1;
/// renameat2's `RENAME_EXCHANGE`.
pub const RENAME_EXCHANGE: u32 = 2;
/// setxattr's `XATTR_CREATE`.
pub const XATTR_CREATE: u32 = 1;
/// setxattr's `XATTR_REPLACE`.
pub const XATTR_REPLACE: u32 = 2;

/// A mutation of the master's state.
///
/// Variants are only ever appended, and a variant's fields never change
/// order: the journal (and later the Raft log) stores commands in bincode,
/// which encodes the variant's index and then its fields in order. A
/// client's mutation is its `stripefs_proto::ops` type with the time of
/// the request; bincode does not mark where a struct begins, so these
/// encode exactly as the flat variants of before did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Create a non-directory inode.
    Mknod {
        /// What.
        op: ops::Mknod,
        /// Time of the request.
        now: Timestamp,
    },
    /// Create a directory.
    Mkdir {
        /// What.
        op: ops::Mkdir,
        /// Time of the request.
        now: Timestamp,
    },
    /// Create a symlink.
    Symlink {
        /// What.
        op: ops::Symlink,
        /// Time of the request.
        now: Timestamp,
    },
    /// Add a hard link.
    Link {
        /// What.
        op: ops::Link,
        /// Time of the request.
        now: Timestamp,
    },
    /// Remove a non-directory name.
    Unlink {
        /// What.
        op: ops::Unlink,
        /// Time of the request.
        now: Timestamp,
    },
    /// Remove an empty directory.
    Rmdir {
        /// What.
        op: ops::Rmdir,
        /// Time of the request.
        now: Timestamp,
    },
    /// Rename (renameat2 semantics).
    Rename {
        /// What.
        op: ops::Rename,
        /// Time of the request.
        now: Timestamp,
    },
    /// Change attributes.
    SetAttr {
        /// What.
        op: ops::SetAttrs,
        /// Time of the request.
        now: Timestamp,
    },
    /// Make a stored chunk version current.
    CommitChunk {
        /// The commit.
        commit: ChunkCommit,
        /// Time of the request.
        now: Timestamp,
    },
    /// Set an xattr.
    SetXattr {
        /// What.
        op: ops::SetXattr,
        /// Time of the request.
        now: Timestamp,
    },
    /// Remove an xattr.
    RemoveXattr {
        /// What.
        op: ops::RemoveXattr,
        /// Time of the request.
        now: Timestamp,
    },
    /// Change an inode's data policy.
    SetPolicy {
        /// What.
        op: ops::SetPolicy,
        /// Time of the request.
        now: Timestamp,
    },
    /// Free an orphan inode if it is no longer open.
    Purge {
        /// Inode.
        ino: InodeId,
    },
    /// Record a storage node; assigns an id when `id` is unknown.
    RegisterNode {
        /// The id the node had.
        id: Option<NodeId>,
        /// Its address and location.
        record: NodeRecord,
    },
    /// Take up to `max` pending replica deletions of a node.
    TakeDeletions {
        /// Node.
        node: NodeId,
        /// Most to take.
        max: u32,
    },
    /// A node now holds a copy of a chunk version (re-replication).
    AddReplica {
        /// File.
        ino: InodeId,
        /// Chunk index.
        index: u64,
        /// Chunk.
        chunk: ChunkId,
        /// Version copied.
        version: Version,
        /// Node holding the copy.
        node: NodeId,
        /// Replicas on dead nodes, and corrupt ones, to forget (and delete
        /// when their node is reachable) once the copy is recorded: the chunk
        /// is fully replicated again.
        drop: Vec<NodeId>,
    },
    /// Delete replicas nobody references (garbage collection).
    QueueDeletions {
        /// (node, chunk, version) of each.
        replicas: Vec<(NodeId, ChunkId, Version)>,
    },
    /// Raise the ceiling of handed-out chunk ids and versions.
    ReserveIds {
        /// New ceiling.
        ceiling: u64,
    },
    /// A repair made by fsck.
    Fsck(FsckOp),
    /// A client's mutation with its request id: applied once, and its
    /// answer remembered, so a retry gets the same answer
    /// ([`requests`]).
    Requested {
        /// The request.
        id: RequestId,
        /// The session's requests below this are answered: forget them.
        answered_below: u64,
        /// The mutation.
        cmd: Box<Command>,
    },
    /// Forget the answers of requests made before `before` (sessions that
    /// went away without saying so).
    ForgetRequests {
        /// The cutoff.
        before: Timestamp,
    },
    /// Create the filesystem: its identity, counters and root directory
    /// (the first command of a new master group; refused with `Exists`
    /// once there is one).
    CreateFs {
        /// Its id (hex).
        fs_id: String,
        /// Its chunk size.
        chunk_size: u32,
        /// Time of creation.
        now: Timestamp,
    },
    /// Reserve `count` chunk ids and versions above every range reserved
    /// before; answers [`Reply::Ids`]. (A leader of the group reserves
    /// through the log, so a new leader never hands out an id again.)
    ReserveIdRange {
        /// How many.
        count: u64,
    },
    /// Register a client session: a master restarted after a crash waits
    /// for it to replay what it lost (format 4).
    OpenSession {
        /// The session.
        session: u64,
        /// The client's host, for the log.
        host: String,
        /// When.
        now: Timestamp,
    },
    /// Forget a client session (it ended, or did not come back).
    CloseSession {
        /// The session.
        session: u64,
    },
    /// A change a master answered and lost, sent again by its client; a
    /// create takes the inode number `ino` back.
    Replayed {
        /// The inode number the change had created.
        ino: Option<InodeId>,
        /// The change.
        cmd: Box<Command>,
    },
    /// Change an inode's data class (format 5).
    SetClass {
        /// What.
        op: ops::SetClass,
        /// Time of the request.
        now: Timestamp,
    },
    /// Remove the names of a scratch file whose home node is gone, if it
    /// still has that home and a class that asks for it (format 5).
    RemoveLostScratch {
        /// The file.
        ino: InodeId,
        /// Its home node, gone.
        node: NodeId,
        /// Its names (each removed if it still names the file).
        names: Vec<(InodeId, String)>,
        /// When.
        now: Timestamp,
    },
}

/// The result of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to return.
    Unit,
    /// Attributes of the inode concerned.
    Attr(Attr),
    /// A node id.
    Node(NodeId),
    /// Replica deletions for a node.
    Deletions(Vec<(ChunkId, Version)>),
    /// A range of reserved ids: `first` up to `end`, not included.
    Ids {
        /// First id of the range.
        first: u64,
        /// First id after it.
        end: u64,
    },
}

/// A client's mutation (a `stripefs_proto::ops` type): the command it
/// becomes and the answer it gets. [`crate::store::Store::run`] applies one
/// and returns its typed answer; the one place that looks inside a
/// [`Reply`] for it is here, next to the command it made.
pub trait Op: Sized {
    /// The answer.
    type Output;
    /// The command, at the time of the request.
    fn command(self, now: Timestamp) -> Command;
    /// The answer in `reply` (None: a reply of another kind, which is a bug).
    fn output(reply: Reply) -> Option<Self::Output>;
}

macro_rules! op {
    ($op:ident => $variant:ident, Attr) => {
        op!(@impl $op => $variant, Attr, |r| match r { Reply::Attr(a) => Some(a), _ => None });
    };
    ($op:ident => $variant:ident, Unit) => {
        op!(@impl $op => $variant, (), |r| match r { Reply::Unit => Some(()), _ => None });
    };
    (@impl $op:ident => $variant:ident, $out:ty, $get:expr) => {
        impl Op for ops::$op {
            type Output = $out;
            fn command(self, now: Timestamp) -> Command {
                Command::$variant { op: self, now }
            }
            fn output(reply: Reply) -> Option<$out> {
                let get: fn(Reply) -> Option<$out> = $get;
                get(reply)
            }
        }
    };
}

op!(Mknod => Mknod, Attr);
op!(Mkdir => Mkdir, Attr);
op!(Symlink => Symlink, Attr);
op!(Link => Link, Attr);
op!(Unlink => Unlink, Unit);
op!(Rmdir => Rmdir, Unit);
op!(Rename => Rename, Unit);
op!(SetAttrs => SetAttr, Attr);
op!(SetXattr => SetXattr, Unit);
op!(RemoveXattr => RemoveXattr, Unit);
op!(SetPolicy => SetPolicy, Attr);
op!(SetClass => SetClass, Attr);

impl Op for ChunkCommit {
    type Output = Attr;
    fn command(self, now: Timestamp) -> Command {
        Command::CommitChunk { commit: self, now }
    }
    fn output(reply: Reply) -> Option<Attr> {
        match reply {
            Reply::Attr(a) => Some(a),
            _ => None,
        }
    }
}

/// Why a command was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The request is refused; nothing was written.
    #[error("{0}")]
    Fs(#[from] FsError),
    /// The database failed; the whole transaction must be abandoned.
    #[error("database: {0}")]
    Store(#[from] redb::Error),
    /// A stored record is unreadable; the whole transaction must be abandoned.
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ApplyError {
            fn from(e: $t) -> Self {
                ApplyError::Store(e.into())
            }
        }
    )*};
}
from_redb!(redb::StorageError, redb::TableError);

/// What [`apply`] needs to know beyond the tables.
pub struct Context<'a> {
    /// Chunk size of the filesystem.
    pub chunk_size: u64,
    /// Whether an inode is open on some client.
    pub is_open: &'a dyn Fn(InodeId) -> bool,
}

/// The master's tables, opened in one write transaction.
pub struct Tables<'txn> {
    /// `meta.v1`.
    pub meta: Table<'txn, &'static str, &'static [u8]>,
    /// `inodes.v1`.
    pub inodes: Table<'txn, u64, &'static [u8]>,
    /// `dir_entries.v1`.
    pub dir_entries: Table<'txn, (u64, &'static str), u64>,
    /// `chunks.v1`.
    pub chunks: Table<'txn, (u64, u64), &'static [u8]>,
    /// `xattrs.v1`.
    pub xattrs: Table<'txn, (u64, &'static str), &'static [u8]>,
    /// `orphans.v1`.
    pub orphans: Table<'txn, u64, ()>,
    /// `deletions.v1`.
    pub deletions: Table<'txn, (u64, u64, u64), ()>,
    /// `nodes.v1`.
    pub nodes: Table<'txn, u64, &'static [u8]>,
    /// `requests.v1`.
    pub requests: Table<'txn, (u64, u64), &'static [u8]>,
    /// `sessions.v1`.
    pub sessions: Table<'txn, u64, &'static [u8]>,
    /// The inode number a replayed create asks for (see [`Command::Replayed`]).
    pub(crate) ino_hint: Option<InodeId>,
    /// The session of the request being applied (see [`Command::Requested`]).
    pub(crate) session: Option<u64>,
}

impl<'txn> Tables<'txn> {
    /// Opens (creating if needed) every table.
    pub fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, redb::TableError> {
        Ok(Tables {
            meta: txn.open_table(tables::META)?,
            inodes: txn.open_table(tables::INODES)?,
            dir_entries: txn.open_table(tables::DIR_ENTRIES)?,
            chunks: txn.open_table(tables::CHUNKS)?,
            xattrs: txn.open_table(tables::XATTRS)?,
            orphans: txn.open_table(tables::ORPHANS)?,
            deletions: txn.open_table(tables::DELETIONS)?,
            nodes: txn.open_table(tables::NODES)?,
            requests: txn.open_table(tables::REQUESTS)?,
            sessions: txn.open_table(tables::SESSIONS)?,
            ino_hint: None,
            session: None,
        })
    }

    pub(crate) fn inode(&self, ino: InodeId) -> Result<InodeRecord, ApplyError> {
        match self.inodes.get(ino.0)? {
            Some(v) => Ok(InodeRecord::decode(v.value())?),
            None => Err(FsError::NotFound.into()),
        }
    }

    pub(crate) fn dir(&self, ino: InodeId) -> Result<InodeRecord, ApplyError> {
        let r = self.inode(ino)?;
        if r.kind != FileKind::Dir {
            return Err(FsError::NotDir.into());
        }
        if r.nlink == 0 {
            // A removed directory takes no new entries.
            return Err(FsError::NotFound.into());
        }
        Ok(r)
    }

    pub(crate) fn put_inode(&mut self, ino: InodeId, rec: &InodeRecord) -> Result<(), ApplyError> {
        self.inodes.insert(ino.0, rec.encode().as_slice())?;
        Ok(())
    }

    pub(crate) fn entry(&self, parent: InodeId, name: &str) -> Result<Option<InodeId>, ApplyError> {
        Ok(self.dir_entries.get((parent.0, name))?.map(|v| InodeId(v.value())))
    }

    pub(crate) fn meta_u64(&self, key: &str) -> Result<u64, ApplyError> {
        let v = self.meta.get(key)?.ok_or(FsError::Internal)?;
        let bytes: [u8; 8] = v.value().try_into().map_err(|_| FsError::Internal)?;
        Ok(u64::from_le_bytes(bytes))
    }

    pub(crate) fn set_meta_u64(&mut self, key: &str, value: u64) -> Result<(), ApplyError> {
        self.meta.insert(key, value.to_le_bytes().as_slice())?;
        Ok(())
    }

    pub(crate) fn new_inode(&mut self, rec: &InodeRecord) -> Result<InodeId, ApplyError> {
        let next = self.meta_u64(meta_keys::NEXT_INODE)?;
        // A replayed create takes back the number its client knows the
        // file by, when it is free (it is, unless the replay came after
        // the replay window: numbers are never handed out twice).
        let ino = match self.ino_hint.take() {
            Some(h) if h.0 > InodeId::ROOT.0 && self.inodes.get(h.0)?.is_none() => h.0,
            _ => next,
        };
        self.set_meta_u64(meta_keys::NEXT_INODE, next.max(ino + 1))?;
        let count = self.meta_u64(meta_keys::INODE_COUNT)?;
        self.set_meta_u64(meta_keys::INODE_COUNT, count + 1)?;
        self.put_inode(InodeId(ino), rec)?;
        Ok(InodeId(ino))
    }

    pub(crate) fn dir_is_empty(&self, dir: InodeId) -> Result<bool, ApplyError> {
        let mut range = self.dir_entries.range((dir.0, "")..(dir.0 + 1, ""))?;
        Ok(range.next().is_none())
    }

    pub(crate) fn queue_deletion(&mut self, rec: &ChunkRecord) -> Result<(), ApplyError> {
        for node in &rec.replicas {
            self.deletions.insert((node.0, rec.chunk.0, rec.version.0), ())?;
        }
        Ok(())
    }

    /// Removes an inode and everything hanging off it.
    pub(crate) fn purge(&mut self, ino: InodeId) -> Result<(), ApplyError> {
        let home = match self.inodes.get(ino.0)? {
            Some(v) => InodeRecord::decode(v.value())?.home,
            None => None,
        };
        if let Some(home) = home {
            self.queue_scratch_deletion(home, ino)?;
        }
        let chunks: Vec<(u64, ChunkRecord)> = self
            .chunks
            .range((ino.0, 0)..=(ino.0, u64::MAX))?
            .map(|r| -> Result<_, ApplyError> {
                let (k, v) = r?;
                Ok((k.value().1, ChunkRecord::decode(v.value())?))
            })
            .collect::<Result<_, _>>()?;
        for (index, rec) in chunks {
            self.queue_deletion(&rec)?;
            self.chunks.remove((ino.0, index))?;
        }
        let names: Vec<String> = self
            .xattrs
            .range((ino.0, "")..(ino.0 + 1, ""))?
            .map(|r| r.map(|(k, _)| k.value().1.to_string()))
            .collect::<Result<_, _>>()?;
        for n in names {
            self.xattrs.remove((ino.0, n.as_str()))?;
        }
        self.orphans.remove(ino.0)?;
        if self.inodes.remove(ino.0)?.is_some() {
            let count = self.meta_u64(meta_keys::INODE_COUNT)?;
            self.set_meta_u64(meta_keys::INODE_COUNT, count.saturating_sub(1))?;
        }
        Ok(())
    }

    /// Orders `home` to remove the scratch file of `ino`.
    pub(crate) fn queue_scratch_deletion(&mut self, home: NodeId, ino: InodeId) -> Result<(), ApplyError> {
        self.deletions.insert((home.0, ino.0, Version::SCRATCH_FILE.0), ())?;
        Ok(())
    }

    /// Drops one link of a non-directory; frees it when no link and no open
    /// reference is left, or keeps it as an orphan while it is open.
    pub(crate) fn drop_link(
        &mut self,
        ino: InodeId,
        mut rec: InodeRecord,
        now: Timestamp,
        ctx: &Context,
    ) -> Result<(), ApplyError> {
        rec.nlink = rec.nlink.saturating_sub(1);
        rec.ctime = now;
        if rec.nlink > 0 {
            return self.put_inode(ino, &rec);
        }
        if (ctx.is_open)(ino) {
            self.put_inode(ino, &rec)?;
            self.orphans.insert(ino.0, ())?;
            Ok(())
        } else {
            self.purge(ino)
        }
    }

    /// Whether `ino` is `ancestor` or lies below it.
    pub(crate) fn is_within(&self, mut ino: InodeId, ancestor: InodeId) -> Result<bool, ApplyError> {
        // Bounded walk: a corrupt parent chain must not loop forever.
        for _ in 0..100_000 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == InodeId::ROOT {
                return Ok(false);
            }
            ino = InodeId(self.inode(ino)?.parent);
        }
        Err(FsError::Internal.into())
    }
}

/// Applies one command. On `Err(ApplyError::Fs)` nothing was written.
/// Each family of commands has its module; this only dispatches.
pub fn apply(t: &mut Tables, cmd: &Command, ctx: &Context) -> Result<Reply, ApplyError> {
    use Command as C;
    let unit = |()| Reply::Unit;
    match cmd {
        C::Mknod { op, now } => create::mknod(t, op, *now).map(Reply::Attr),
        C::Mkdir { op, now } => create::mkdir(t, op, *now).map(Reply::Attr),
        C::Symlink { op, now } => create::symlink(t, op, *now).map(Reply::Attr),
        C::Link { op, now } => create::link(t, op, *now).map(Reply::Attr),
        C::Unlink { op, now } => remove::unlink(t, op, *now, ctx).map(unit),
        C::Rmdir { op, now } => remove::rmdir(t, op, *now).map(unit),
        C::Purge { ino } => remove::purge_orphan(t, *ino, ctx).map(unit),
        C::Rename { op, now } => rename::rename(t, op, *now, ctx).map(unit),
        C::SetAttr { op, now } => attrs::set_attr(t, op.ino, &op.set, *now, ctx).map(Reply::Attr),
        C::SetXattr { op, now } => attrs::set_xattr(t, op, *now).map(unit),
        C::RemoveXattr { op, now } => attrs::remove_xattr(t, op.ino, &op.name, *now).map(unit),
        C::SetPolicy { op, now } => attrs::set_policy(t, op, *now).map(Reply::Attr),
        C::SetClass { op, now } => attrs::set_class(t, op, *now).map(Reply::Attr),
        C::RemoveLostScratch { ino, node, names, now } => {
            remove::remove_lost_scratch(t, *ino, *node, names, *now, ctx).map(unit)
        }
        C::CommitChunk { commit, now } => chunks::commit_chunk(t, commit, *now, ctx).map(Reply::Attr),
        C::AddReplica { ino, index, chunk, version, node, drop } => {
            chunks::add_replica(t, *ino, *index, (*chunk, *version), *node, drop).map(unit)
        }
        C::QueueDeletions { replicas } => chunks::queue_deletions(t, replicas).map(unit),
        C::TakeDeletions { node, max } => chunks::take_deletions(t, *node, *max).map(Reply::Deletions),
        C::RegisterNode { id, record } => cluster::register_node(t, *id, record).map(Reply::Node),
        C::ReserveIds { ceiling } => cluster::reserve_ids(t, *ceiling).map(unit),
        C::Fsck(op) => crate::fsck::ops::apply(t, op),
        C::Requested { id, answered_below, cmd } => requests::apply(t, *id, *answered_below, cmd, ctx),
        C::ForgetRequests { before } => requests::forget_before(t, *before).map(unit),
        C::CreateFs { fs_id, chunk_size, now } => cluster::create_fs(t, fs_id, *chunk_size, *now).map(unit),
        C::ReserveIdRange { count } => cluster::reserve_range(t, *count).map(|(first, end)| Reply::Ids { first, end }),
        C::OpenSession { session, host, now } => crate::sessions::open(t, *session, host, *now).map(unit),
        C::CloseSession { session } => crate::sessions::close(t, *session).map(unit),
        C::Replayed { ino, cmd } => {
            t.ino_hint = *ino;
            let r = apply(t, cmd, ctx);
            t.ino_hint = None;
            r
        }
    }
}

mod attrs;
mod chunks;
mod cluster;
mod create;
mod remove;
mod rename;
pub mod requests;

pub use crate::fsck::ops::{lost_found_name, FsckOp, InodeField, MetaCounter, LOST_FOUND};
pub(crate) use create::new_record;
pub use create::MAX_LINKS;

#[cfg(test)]
#[path = "namespace_tests.rs"]
mod tests;
