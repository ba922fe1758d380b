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
use stripefs_proto::types::{Attr, ChunkCommit, FileKind, Owner, Policy, SetAttr, TimeSet, Timestamp};
use stripefs_proto::{
    check_name, ChunkId, FsError, InodeId, NodeId, Version, MAX_SYMLINK_BYTES, MAX_XATTR_VALUE_BYTES,
};

/// renameat2's `RENAME_NOREPLACE`.
pub const RENAME_NOREPLACE: u32 = 1;
/// renameat2's `RENAME_EXCHANGE`.
pub const RENAME_EXCHANGE: u32 = 2;
/// setxattr's `XATTR_CREATE`.
pub const XATTR_CREATE: u32 = 1;
/// setxattr's `XATTR_REPLACE`.
pub const XATTR_REPLACE: u32 = 2;
/// Most hard links one inode may have.
pub const MAX_LINKS: u32 = 65_000;

/// A mutation of the master's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Create a non-directory inode.
    Mknod {
        /// Directory.
        parent: InodeId,
        /// Name.
        name: String,
        /// Kind.
        kind: FileKind,
        /// Permission bits.
        perm: u32,
        /// Owner.
        owner: Owner,
        /// Device number.
        rdev: u32,
        /// Time of the request.
        now: Timestamp,
    },
    /// Create a directory.
    Mkdir {
        /// Parent directory.
        parent: InodeId,
        /// Name.
        name: String,
        /// Permission bits.
        perm: u32,
        /// Owner.
        owner: Owner,
        /// Time of the request.
        now: Timestamp,
    },
    /// Create a symlink.
    Symlink {
        /// Directory.
        parent: InodeId,
        /// Name.
        name: String,
        /// Target.
        target: String,
        /// Owner.
        owner: Owner,
        /// Time of the request.
        now: Timestamp,
    },
    /// Add a hard link.
    Link {
        /// Existing inode.
        ino: InodeId,
        /// Directory of the new name.
        new_parent: InodeId,
        /// New name.
        new_name: String,
        /// Time of the request.
        now: Timestamp,
    },
    /// Remove a non-directory name.
    Unlink {
        /// Directory.
        parent: InodeId,
        /// Name.
        name: String,
        /// Time of the request.
        now: Timestamp,
    },
    /// Remove an empty directory.
    Rmdir {
        /// Parent directory.
        parent: InodeId,
        /// Name.
        name: String,
        /// Time of the request.
        now: Timestamp,
    },
    /// Rename (renameat2 semantics).
    Rename {
        /// Source directory.
        parent: InodeId,
        /// Source name.
        name: String,
        /// Destination directory.
        new_parent: InodeId,
        /// Destination name.
        new_name: String,
        /// `RENAME_NOREPLACE` / `RENAME_EXCHANGE`.
        flags: u32,
        /// Time of the request.
        now: Timestamp,
    },
    /// Change attributes.
    SetAttr {
        /// Inode.
        ino: InodeId,
        /// Changes.
        set: SetAttr,
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
        /// Inode.
        ino: InodeId,
        /// Name.
        name: String,
        /// Value.
        value: Vec<u8>,
        /// `XATTR_CREATE` / `XATTR_REPLACE`.
        flags: u32,
        /// Time of the request.
        now: Timestamp,
    },
    /// Remove an xattr.
    RemoveXattr {
        /// Inode.
        ino: InodeId,
        /// Name.
        name: String,
        /// Time of the request.
        now: Timestamp,
    },
    /// Change an inode's data policy.
    SetPolicy {
        /// Inode.
        ino: InodeId,
        /// New replication factor.
        replication: Option<u8>,
        /// New zstd level.
        compression_level: Option<i8>,
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
}

/// The result of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nothing to return.
    Unit,
    /// Attributes of the inode concerned.
    Attr(Attr),
    /// A node id.
    Node(NodeId),
    /// Replica deletions for a node.
    Deletions(Vec<(ChunkId, Version)>),
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
        })
    }

    fn inode(&self, ino: InodeId) -> Result<InodeRecord, ApplyError> {
        match self.inodes.get(ino.0)? {
            Some(v) => Ok(InodeRecord::decode(v.value())?),
            None => Err(FsError::NotFound.into()),
        }
    }

    fn dir(&self, ino: InodeId) -> Result<InodeRecord, ApplyError> {
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

    fn put_inode(&mut self, ino: InodeId, rec: &InodeRecord) -> Result<(), ApplyError> {
        self.inodes.insert(ino.0, rec.encode().as_slice())?;
        Ok(())
    }

    fn entry(&self, parent: InodeId, name: &str) -> Result<Option<InodeId>, ApplyError> {
        Ok(self.dir_entries.get((parent.0, name))?.map(|v| InodeId(v.value())))
    }

    fn meta_u64(&self, key: &str) -> Result<u64, ApplyError> {
        let v = self.meta.get(key)?.ok_or(FsError::Internal)?;
        let bytes: [u8; 8] = v.value().try_into().map_err(|_| FsError::Internal)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn set_meta_u64(&mut self, key: &str, value: u64) -> Result<(), ApplyError> {
        self.meta.insert(key, value.to_le_bytes().as_slice())?;
        Ok(())
    }

    fn new_inode(&mut self, rec: &InodeRecord) -> Result<InodeId, ApplyError> {
        let ino = self.meta_u64(meta_keys::NEXT_INODE)?;
        self.set_meta_u64(meta_keys::NEXT_INODE, ino + 1)?;
        let count = self.meta_u64(meta_keys::INODE_COUNT)?;
        self.set_meta_u64(meta_keys::INODE_COUNT, count + 1)?;
        self.put_inode(InodeId(ino), rec)?;
        Ok(InodeId(ino))
    }

    fn dir_is_empty(&self, dir: InodeId) -> Result<bool, ApplyError> {
        let mut range = self.dir_entries.range((dir.0, "")..(dir.0 + 1, ""))?;
        Ok(range.next().is_none())
    }

    fn queue_deletion(&mut self, rec: &ChunkRecord) -> Result<(), ApplyError> {
        for node in &rec.replicas {
            self.deletions.insert((node.0, rec.chunk.0, rec.version.0), ())?;
        }
        Ok(())
    }

    /// Removes an inode and everything hanging off it.
    fn purge(&mut self, ino: InodeId) -> Result<(), ApplyError> {
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

    /// Drops one link of a non-directory; frees it when no link and no open
    /// reference is left, or keeps it as an orphan while it is open.
    fn drop_link(
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
    fn is_within(&self, mut ino: InodeId, ancestor: InodeId) -> Result<bool, ApplyError> {
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

fn new_record(kind: FileKind, perm: u32, owner: Owner, policy: Policy, now: Timestamp) -> InodeRecord {
    InodeRecord {
        kind,
        perm: (perm & 0o7777) as u16,
        nlink: 1,
        uid: owner.uid,
        gid: owner.gid,
        size: 0,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        rdev: 0,
        policy,
        parent: 0,
        target: None,
        allocated: 0,
    }
}

fn resolve(set: TimeSet, now: Timestamp) -> Timestamp {
    match set {
        TimeSet::Now => now,
        TimeSet::At(t) => t,
    }
}

/// Applies one command. On `Err(ApplyError::Fs)` nothing was written.
pub fn apply(t: &mut Tables, cmd: &Command, ctx: &Context) -> Result<Reply, ApplyError> {
    match cmd {
        Command::Mknod { parent, name, kind, perm, owner, rdev, now } => {
            if *kind == FileKind::Dir || *kind == FileKind::Symlink {
                return Err(FsError::InvalidArgument.into());
            }
            let mut rec = create_checks(t, *parent, name)?;
            let mut child = new_record(*kind, *perm, *owner, rec.policy, *now);
            child.rdev = *rdev;
            let ino = t.new_inode(&child)?;
            t.dir_entries.insert((parent.0, name.as_str()), ino.0)?;
            rec.mtime = *now;
            rec.ctime = *now;
            t.put_inode(*parent, &rec)?;
            Ok(Reply::Attr(child.to_attr(ino)))
        }
        Command::Mkdir { parent, name, perm, owner, now } => {
            let mut rec = create_checks(t, *parent, name)?;
            let mut child = new_record(FileKind::Dir, *perm, *owner, rec.policy, *now);
            child.nlink = 2;
            child.parent = parent.0;
            let ino = t.new_inode(&child)?;
            t.dir_entries.insert((parent.0, name.as_str()), ino.0)?;
            rec.nlink += 1;
            rec.mtime = *now;
            rec.ctime = *now;
            t.put_inode(*parent, &rec)?;
            Ok(Reply::Attr(child.to_attr(ino)))
        }
        Command::Symlink { parent, name, target, owner, now } => {
            if target.is_empty() || target.contains('\0') {
                return Err(FsError::InvalidArgument.into());
            }
            if target.len() > MAX_SYMLINK_BYTES {
                return Err(FsError::NameTooLong.into());
            }
            let mut rec = create_checks(t, *parent, name)?;
            let mut child = new_record(FileKind::Symlink, 0o777, *owner, rec.policy, *now);
            child.size = target.len() as u64;
            child.target = Some(target.clone());
            let ino = t.new_inode(&child)?;
            t.dir_entries.insert((parent.0, name.as_str()), ino.0)?;
            rec.mtime = *now;
            rec.ctime = *now;
            t.put_inode(*parent, &rec)?;
            Ok(Reply::Attr(child.to_attr(ino)))
        }
        Command::Link { ino, new_parent, new_name, now } => {
            let mut rec = t.inode(*ino)?;
            if rec.kind == FileKind::Dir {
                return Err(FsError::NotPermitted.into());
            }
            if rec.nlink == 0 {
                return Err(FsError::NotFound.into());
            }
            if rec.nlink >= MAX_LINKS {
                return Err(FsError::TooManyLinks.into());
            }
            let mut dir = create_checks(t, *new_parent, new_name)?;
            t.dir_entries.insert((new_parent.0, new_name.as_str()), ino.0)?;
            rec.nlink += 1;
            rec.ctime = *now;
            t.put_inode(*ino, &rec)?;
            dir.mtime = *now;
            dir.ctime = *now;
            t.put_inode(*new_parent, &dir)?;
            Ok(Reply::Attr(rec.to_attr(*ino)))
        }
        Command::Unlink { parent, name, now } => {
            check_name(name)?;
            let mut dir = t.dir(*parent)?;
            let child = t.entry(*parent, name)?.ok_or(FsError::NotFound)?;
            let rec = t.inode(child)?;
            if rec.kind == FileKind::Dir {
                return Err(FsError::IsDir.into());
            }
            t.dir_entries.remove((parent.0, name.as_str()))?;
            dir.mtime = *now;
            dir.ctime = *now;
            t.put_inode(*parent, &dir)?;
            t.drop_link(child, rec, *now, ctx)?;
            Ok(Reply::Unit)
        }
        Command::Rmdir { parent, name, now } => {
            check_name(name)?;
            let mut dir = t.dir(*parent)?;
            let child = t.entry(*parent, name)?.ok_or(FsError::NotFound)?;
            let rec = t.inode(child)?;
            if rec.kind != FileKind::Dir {
                return Err(FsError::NotDir.into());
            }
            if !t.dir_is_empty(child)? {
                return Err(FsError::NotEmpty.into());
            }
            t.dir_entries.remove((parent.0, name.as_str()))?;
            dir.nlink = dir.nlink.saturating_sub(1);
            dir.mtime = *now;
            dir.ctime = *now;
            t.put_inode(*parent, &dir)?;
            t.purge(child)?;
            Ok(Reply::Unit)
        }
        Command::Rename { parent, name, new_parent, new_name, flags, now } => {
            rename(t, *parent, name, *new_parent, new_name, *flags, *now, ctx)?;
            Ok(Reply::Unit)
        }
        Command::SetAttr { ino, set, now } => set_attr(t, *ino, set, *now, ctx).map(Reply::Attr),
        Command::CommitChunk { commit, now } => commit_chunk(t, commit, *now, ctx).map(Reply::Attr),
        Command::SetXattr { ino, name, value, flags, now } => {
            check_xattr_name(name)?;
            if value.len() > MAX_XATTR_VALUE_BYTES {
                return Err(FsError::TooLarge.into());
            }
            let mut rec = t.inode(*ino)?;
            let exists = t.xattrs.get((ino.0, name.as_str()))?.is_some();
            if flags & XATTR_CREATE != 0 && exists {
                return Err(FsError::Exists.into());
            }
            if flags & XATTR_REPLACE != 0 && !exists {
                return Err(FsError::NoAttr.into());
            }
            t.xattrs.insert((ino.0, name.as_str()), value.as_slice())?;
            rec.ctime = *now;
            t.put_inode(*ino, &rec)?;
            Ok(Reply::Unit)
        }
        Command::RemoveXattr { ino, name, now } => {
            check_xattr_name(name)?;
            let mut rec = t.inode(*ino)?;
            if t.xattrs.get((ino.0, name.as_str()))?.is_none() {
                return Err(FsError::NoAttr.into());
            }
            t.xattrs.remove((ino.0, name.as_str()))?;
            rec.ctime = *now;
            t.put_inode(*ino, &rec)?;
            Ok(Reply::Unit)
        }
        Command::SetPolicy { ino, replication, compression_level, now } => {
            let mut rec = t.inode(*ino)?;
            if let Some(r) = replication {
                if *r == 0 || *r > Policy::MAX_REPLICATION {
                    return Err(FsError::InvalidArgument.into());
                }
                rec.policy.replication = *r;
            }
            if let Some(l) = compression_level {
                if *l < 0 || *l > Policy::MAX_COMPRESSION_LEVEL {
                    return Err(FsError::InvalidArgument.into());
                }
                rec.policy.compression_level = *l;
            }
            rec.ctime = *now;
            t.put_inode(*ino, &rec)?;
            Ok(Reply::Attr(rec.to_attr(*ino)))
        }
        Command::Purge { ino } => {
            if t.orphans.get(ino.0)?.is_some() && !(ctx.is_open)(*ino) {
                t.purge(*ino)?;
            }
            Ok(Reply::Unit)
        }
        Command::RegisterNode { id, record } => {
            let known = match id {
                Some(id) => t.nodes.get(id.0)?.is_some(),
                None => false,
            };
            let id = match (id, known) {
                (Some(id), true) => *id,
                _ => {
                    let last = t.nodes.last()?.map(|(k, _)| k.value()).unwrap_or(0);
                    NodeId(last + 1)
                }
            };
            t.nodes.insert(id.0, record.encode().as_slice())?;
            Ok(Reply::Node(id))
        }
        Command::TakeDeletions { node, max } => {
            let keys: Vec<(u64, u64, u64)> = t
                .deletions
                .range((node.0, 0, 0)..=(node.0, u64::MAX, u64::MAX))?
                .take(*max as usize)
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for k in &keys {
                t.deletions.remove(*k)?;
            }
            Ok(Reply::Deletions(keys.into_iter().map(|(_, c, v)| (ChunkId(c), Version(v))).collect()))
        }
        Command::AddReplica { ino, index, chunk, version, node, drop } => {
            let rec = match t.chunks.get((ino.0, *index))? {
                Some(v) => Some(ChunkRecord::decode(v.value())?),
                None => None,
            };
            match rec {
                Some(mut rec) if rec.chunk == *chunk && rec.version == *version => {
                    if !rec.replicas.contains(node) {
                        rec.replicas.push(*node);
                    }
                    let dropped: Vec<NodeId> = rec.replicas.iter().copied().filter(|n| drop.contains(n)).collect();
                    rec.replicas.retain(|n| !drop.contains(n));
                    for n in dropped {
                        t.deletions.insert((n.0, chunk.0, version.0), ())?;
                    }
                    t.chunks.insert((ino.0, *index), rec.encode().as_slice())?;
                }
                // The chunk moved on (rewritten, truncated, deleted) while it
                // was copied: the copy is garbage.
                _ => {
                    t.deletions.insert((node.0, chunk.0, version.0), ())?;
                }
            }
            Ok(Reply::Unit)
        }
        Command::QueueDeletions { replicas } => {
            for (node, chunk, version) in replicas {
                t.deletions.insert((node.0, chunk.0, version.0), ())?;
            }
            Ok(Reply::Unit)
        }
        Command::Fsck(op) => fsck_ops::apply(t, op),
        Command::ReserveIds { ceiling } => {
            let current = t.meta_u64(meta_keys::ID_CEILING)?;
            t.set_meta_u64(meta_keys::ID_CEILING, current.max(*ceiling))?;
            Ok(Reply::Unit)
        }
    }
}

fn check_xattr_name(name: &str) -> Result<(), FsError> {
    if name.is_empty() || name.contains('\0') {
        return Err(FsError::InvalidArgument);
    }
    if name.len() > 255 {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

/// Checks for creating `name` in `parent`; returns the parent's record.
fn create_checks(t: &Tables, parent: InodeId, name: &str) -> Result<InodeRecord, ApplyError> {
    check_name(name)?;
    let rec = t.dir(parent)?;
    if t.entry(parent, name)?.is_some() {
        return Err(FsError::Exists.into());
    }
    Ok(rec)
}

#[allow(clippy::too_many_arguments)]
fn rename(
    t: &mut Tables,
    parent: InodeId,
    name: &str,
    new_parent: InodeId,
    new_name: &str,
    flags: u32,
    now: Timestamp,
    ctx: &Context,
) -> Result<(), ApplyError> {
    check_name(name)?;
    check_name(new_name)?;
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
        || (flags & RENAME_NOREPLACE != 0 && flags & RENAME_EXCHANGE != 0)
    {
        return Err(FsError::InvalidArgument.into());
    }
    t.dir(parent)?;
    t.dir(new_parent)?;
    let src = t.entry(parent, name)?.ok_or(FsError::NotFound)?;
    let mut srec = t.inode(src)?;
    let dst = t.entry(new_parent, new_name)?;
    let src_is_dir = srec.kind == FileKind::Dir;

    if flags & RENAME_EXCHANGE != 0 {
        let dst = dst.ok_or(FsError::NotFound)?;
        if dst == src {
            return Ok(());
        }
        let mut drec = t.inode(dst)?;
        let dst_is_dir = drec.kind == FileKind::Dir;
        if parent != new_parent {
            if src_is_dir && t.is_within(new_parent, src)? {
                return Err(FsError::InvalidArgument.into());
            }
            if dst_is_dir && t.is_within(parent, dst)? {
                return Err(FsError::InvalidArgument.into());
            }
        }
        t.dir_entries.insert((parent.0, name), dst.0)?;
        t.dir_entries.insert((new_parent.0, new_name), src.0)?;
        srec.ctime = now;
        drec.ctime = now;
        let mut links_delta_parent: i64 = 0;
        if parent != new_parent {
            if src_is_dir {
                srec.parent = new_parent.0;
                links_delta_parent -= 1;
            }
            if dst_is_dir {
                drec.parent = parent.0;
                links_delta_parent += 1;
            }
        }
        t.put_inode(src, &srec)?;
        t.put_inode(dst, &drec)?;
        touch_parents(t, parent, new_parent, links_delta_parent, -links_delta_parent, now)?;
        return Ok(());
    }

    if flags & RENAME_NOREPLACE != 0 && dst.is_some() {
        return Err(FsError::Exists.into());
    }
    if dst == Some(src) {
        // Two names of the same inode: POSIX says do nothing.
        return Ok(());
    }
    if src_is_dir && parent != new_parent && t.is_within(new_parent, src)? {
        return Err(FsError::InvalidArgument.into());
    }
    let mut replaced = None;
    if let Some(dst) = dst {
        let drec = t.inode(dst)?;
        if src_is_dir {
            if drec.kind != FileKind::Dir {
                return Err(FsError::NotDir.into());
            }
            if !t.dir_is_empty(dst)? {
                return Err(FsError::NotEmpty.into());
            }
        } else if drec.kind == FileKind::Dir {
            return Err(FsError::IsDir.into());
        }
        replaced = Some((dst, drec));
    }

    // Checks done; from here on only writes.
    t.dir_entries.remove((parent.0, name))?;
    let mut links_delta_parent: i64 = 0;
    let mut links_delta_new_parent: i64 = 0;
    if let Some((dst, drec)) = replaced {
        if drec.kind == FileKind::Dir {
            t.purge(dst)?;
            links_delta_new_parent -= 1;
        } else {
            t.drop_link(dst, drec, now, ctx)?;
        }
    }
    t.dir_entries.insert((new_parent.0, new_name), src.0)?;
    if src_is_dir && parent != new_parent {
        srec.parent = new_parent.0;
        links_delta_parent -= 1;
        links_delta_new_parent += 1;
    }
    srec.ctime = now;
    t.put_inode(src, &srec)?;
    touch_parents(t, parent, new_parent, links_delta_parent, links_delta_new_parent, now)
}

/// Updates mtime/ctime of both directories of a rename and adds the link
/// count deltas (summed when both are the same directory).
fn touch_parents(
    t: &mut Tables,
    first: InodeId,
    second: InodeId,
    delta_first: i64,
    delta_second: i64,
    now: Timestamp,
) -> Result<(), ApplyError> {
    let mut bump = |ino: InodeId, delta: i64| -> Result<(), ApplyError> {
        let mut r = t.inode(ino)?;
        r.nlink = (r.nlink as i64 + delta).max(0) as u32;
        r.mtime = now;
        r.ctime = now;
        t.put_inode(ino, &r)
    };
    if first == second {
        bump(first, delta_first + delta_second)
    } else {
        bump(first, delta_first)?;
        bump(second, delta_second)
    }
}

fn set_attr(t: &mut Tables, ino: InodeId, set: &SetAttr, now: Timestamp, ctx: &Context) -> Result<Attr, ApplyError> {
    let mut rec = t.inode(ino)?;
    if set.size.is_some() && rec.kind != FileKind::File {
        return Err(if rec.kind == FileKind::Dir { FsError::IsDir } else { FsError::InvalidArgument }.into());
    }
    if let Some(mode) = set.mode {
        rec.perm = (mode & 0o7777) as u16;
        rec.ctime = now;
    }
    if let Some(uid) = set.uid {
        rec.uid = uid;
        rec.ctime = now;
    }
    if let Some(gid) = set.gid {
        rec.gid = gid;
        rec.ctime = now;
    }
    if let Some(size) = set.size {
        let freed = truncate_chunks(t, ino, size, ctx.chunk_size)?;
        rec.allocated = rec.allocated.saturating_sub(freed);
        rec.size = size;
        rec.mtime = now;
        rec.ctime = now;
    }
    if let Some(a) = set.atime {
        rec.atime = resolve(a, now);
        rec.ctime = now;
    }
    if let Some(m) = set.mtime {
        rec.mtime = resolve(m, now);
        rec.ctime = now;
    }
    t.put_inode(ino, &rec)?;
    Ok(rec.to_attr(ino))
}

/// Drops chunks wholly past `size` and shortens the one it cuts.
fn truncate_chunks(t: &mut Tables, ino: InodeId, size: u64, chunk_size: u64) -> Result<u64, ApplyError> {
    let mut freed = 0u64;
    let first_gone = size.div_ceil(chunk_size);
    let gone: Vec<(u64, ChunkRecord)> = t
        .chunks
        .range((ino.0, first_gone)..=(ino.0, u64::MAX))?
        .map(|r| -> Result<_, ApplyError> {
            let (k, v) = r?;
            Ok((k.value().1, ChunkRecord::decode(v.value())?))
        })
        .collect::<Result<_, _>>()?;
    for (index, rec) in gone {
        freed += rec.length as u64;
        t.queue_deletion(&rec)?;
        t.chunks.remove((ino.0, index))?;
    }
    if !size.is_multiple_of(chunk_size) {
        let index = size / chunk_size;
        let keep = (size % chunk_size) as u32;
        let cut = match t.chunks.get((ino.0, index))? {
            Some(v) => Some(ChunkRecord::decode(v.value())?),
            None => None,
        };
        if let Some(mut rec) = cut {
            if rec.length > keep {
                // The replica keeps its bytes; readers clamp to `length`,
                // so bytes past it read as zeros if the file grows again.
                freed += (rec.length - keep) as u64;
                rec.length = keep;
                t.chunks.insert((ino.0, index), rec.encode().as_slice())?;
            }
        }
    }
    Ok(freed)
}

fn commit_chunk(t: &mut Tables, c: &ChunkCommit, now: Timestamp, ctx: &Context) -> Result<Attr, ApplyError> {
    if c.length as u64 > ctx.chunk_size || c.replicas.is_empty() {
        return Err(FsError::InvalidArgument.into());
    }
    let mut rec = t.inode(c.ino)?;
    if rec.kind != FileKind::File {
        return Err(FsError::InvalidArgument.into());
    }
    let end = c
        .index
        .checked_mul(ctx.chunk_size)
        .and_then(|s| s.checked_add(c.length as u64))
        .ok_or(FsError::FileTooLarge)?;
    let new = ChunkRecord {
        chunk: c.chunk,
        version: c.version,
        length: c.length,
        stored_bytes: c.stored_bytes,
        replicas: c.replicas.clone(),
    };
    let old = match t.chunks.get((c.ino.0, c.index))? {
        Some(v) => Some(ChunkRecord::decode(v.value())?),
        None => None,
    };
    if let Some(old) = &old {
        if old.version > c.version {
            // A newer version was committed meanwhile: this one lost.
            t.queue_deletion(&new)?;
            return Ok(rec.to_attr(c.ino));
        }
    }
    if let Some(old) = &old {
        if (old.chunk, old.version) != (new.chunk, new.version) {
            t.queue_deletion(old)?;
        }
    }
    t.chunks.insert((c.ino.0, c.index), new.encode().as_slice())?;
    rec.allocated = rec.allocated.saturating_sub(old.map_or(0, |o| o.length as u64)) + c.length as u64;
    rec.size = rec.size.max(end);
    rec.mtime = now;
    rec.ctime = now;
    t.put_inode(c.ino, &rec)?;
    Ok(rec.to_attr(c.ino))
}

mod fsck_ops;
pub use fsck_ops::{lost_found_name, FsckOp, InodeField, MetaCounter, LOST_FOUND};

#[cfg(test)]
#[path = "namespace_tests.rs"]
mod tests;
