//! Repairs made by `fsck` ([`crate::fsck`]), applied by the single writer
//! like every other mutation. Each one first re-checks, in the writer's
//! transaction, that what the scan saw still holds, and refuses with
//! [`FsError::Stale`] otherwise (nothing written), so a repair never undoes
//! a change made after the scan.

use crate::namespace::{new_record, ApplyError, Reply, Tables};
use crate::records::{ChunkRecord, InodeRecord};
use crate::tables::meta_keys;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use stripefs_proto::types::{FileKind, Owner, Timestamp};
use stripefs_proto::{ChunkId, FsError, InodeId, NodeId, Version};

/// Name of the directory in the root that receives detached inodes.
pub const LOST_FOUND: &str = "lost+found";

/// The entry name a detached inode gets in [`LOST_FOUND`].
pub fn lost_found_name(ino: InodeId) -> String {
    format!("#{}", ino.0)
}

/// An inode field that fsck sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InodeField {
    /// Link count.
    Nlink,
    /// Parent directory (directories only).
    Parent,
    /// Size (regular files only).
    Size,
    /// Sum of the chunk lengths.
    Allocated,
}

/// A counter of `meta.v1` that fsck sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCounter {
    /// Number of inodes.
    InodeCount,
    /// Next inode number (only ever raised).
    NextInode,
}

/// One repair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsckOp {
    /// Remove an entry that is wrong: it names a missing inode, it is filed
    /// under something that is not a directory, or it is an extra name of a
    /// directory (or of the root).
    RemoveEntry {
        /// The inode the entry is filed under.
        dir: InodeId,
        /// Entry name.
        name: String,
        /// The inode it names.
        child: InodeId,
    },
    /// Set a field of an inode if it still holds `expect`.
    SetInode {
        /// Inode.
        ino: InodeId,
        /// Field.
        field: InodeField,
        /// The value the scan saw.
        expect: u64,
        /// The right value.
        value: u64,
    },
    /// Set a counter of `meta.v1` if it still holds `expect`.
    SetMeta {
        /// Counter.
        counter: MetaCounter,
        /// The value the scan saw.
        expect: u64,
        /// The right value.
        value: u64,
    },
    /// Remove an inode from the orphan table: it is gone, or it has names.
    ForgetOrphan {
        /// Inode.
        ino: InodeId,
    },
    /// Remove a chunk record whose inode is missing or not a regular file,
    /// and delete its replicas.
    DropChunk {
        /// The inode it is filed under.
        ino: InodeId,
        /// Chunk index.
        index: u64,
        /// Chunk.
        chunk: ChunkId,
        /// Version.
        version: Version,
    },
    /// Delete a replica of a version older than the chunk's current one.
    DeleteStaleReplica {
        /// Node holding it.
        node: NodeId,
        /// Chunk.
        chunk: ChunkId,
        /// The stale version.
        version: Version,
        /// File of the chunk.
        ino: InodeId,
        /// Chunk index.
        index: u64,
    },
    /// Forget a corrupt replica of a chunk's current version (and delete
    /// it), so that re-replication copies a good one; never the last one.
    DropCorruptReplica {
        /// Node holding it.
        node: NodeId,
        /// Chunk.
        chunk: ChunkId,
        /// The current version.
        version: Version,
        /// File of the chunk.
        ino: InodeId,
        /// Chunk index.
        index: u64,
    },
    /// Give an inode a name in `/lost+found` (made if missing: a directory,
    /// mode 0700, owned by root), named `#<ino>`. `detach` is the entry
    /// that names a directory inside a loop cut off from the root: it is
    /// removed. Without it the inode must have no name (for a directory,
    /// this is checked against its recorded parent; a file's names cannot
    /// be listed without a full scan, so the scan's word is taken).
    Attach {
        /// Inode.
        ino: InodeId,
        /// Entry to remove (a directory in a loop).
        detach: Option<(InodeId, String)>,
        /// Time of the repair.
        now: Timestamp,
    },
}

/// Why a check failed: the state is not what the scan saw.
fn changed() -> ApplyError {
    FsError::Stale.into()
}

/// An inode's record; an unreadable one refuses the repair (fsck reported
/// it already) rather than stopping the master.
fn inode(t: &Tables, ino: InodeId) -> Result<Option<InodeRecord>, ApplyError> {
    match t.inodes.get(ino.0)? {
        Some(v) => Ok(Some(InodeRecord::decode(v.value()).map_err(|_| FsError::Internal)?)),
        None => Ok(None),
    }
}

fn chunk(t: &Tables, ino: InodeId, index: u64) -> Result<Option<ChunkRecord>, ApplyError> {
    match t.chunks.get((ino.0, index))? {
        Some(v) => Ok(Some(ChunkRecord::decode(v.value()).map_err(|_| FsError::Internal)?)),
        None => Ok(None),
    }
}

/// Whether directory `dir` holds an entry naming `ino`, other than `except`.
fn names(t: &Tables, dir: u64, ino: InodeId, except: Option<&str>) -> Result<bool, ApplyError> {
    for item in t.dir_entries.range((dir, "")..(dir + 1, ""))? {
        let (k, v) = item?;
        if v.value() == ino.0 && Some(k.value().1) != except {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Applies one repair. On `Err(ApplyError::Fs)` nothing was written.
pub(crate) fn apply(t: &mut Tables, op: &FsckOp) -> Result<Reply, ApplyError> {
    match op {
        FsckOp::RemoveEntry { dir, name, child } => {
            if t.entry(*dir, name)? != Some(*child) {
                return Err(changed());
            }
            let wrong = *child == InodeId::ROOT
                || match inode(t, *dir)? {
                    Some(d) if d.kind == FileKind::Dir => match inode(t, *child)? {
                        None => true,
                        Some(c) => {
                            c.kind == FileKind::Dir && (c.parent != dir.0 || names(t, dir.0, *child, Some(name))?)
                        }
                    },
                    _ => true,
                };
            if !wrong {
                return Err(changed());
            }
            t.dir_entries.remove((dir.0, name.as_str()))?;
            Ok(Reply::Unit)
        }
        FsckOp::SetInode { ino, field, expect, value } => {
            let mut rec = inode(t, *ino)?.ok_or_else(changed)?;
            let current = match field {
                InodeField::Nlink => rec.nlink as u64,
                InodeField::Parent => rec.parent,
                InodeField::Size => rec.size,
                InodeField::Allocated => rec.allocated,
            };
            if current != *expect {
                return Err(changed());
            }
            match field {
                InodeField::Nlink => rec.nlink = u32::try_from(*value).map_err(|_| FsError::InvalidArgument)?,
                InodeField::Parent => {
                    if rec.kind != FileKind::Dir {
                        return Err(FsError::NotDir.into());
                    }
                    if inode(t, InodeId(*value))?.is_none_or(|p| p.kind != FileKind::Dir) {
                        return Err(changed());
                    }
                    rec.parent = *value;
                }
                InodeField::Size => {
                    if rec.kind != FileKind::File {
                        return Err(FsError::InvalidArgument.into());
                    }
                    rec.size = *value;
                }
                InodeField::Allocated => rec.allocated = *value,
            }
            t.put_inode(*ino, &rec)?;
            Ok(Reply::Unit)
        }
        FsckOp::SetMeta { counter, expect, value } => {
            let key = match counter {
                MetaCounter::InodeCount => meta_keys::INODE_COUNT,
                MetaCounter::NextInode => meta_keys::NEXT_INODE,
            };
            if *counter == MetaCounter::NextInode && value <= expect {
                // Inode numbers are never reused: the counter only goes up.
                return Err(FsError::InvalidArgument.into());
            }
            if t.meta_u64(key)? != *expect {
                return Err(changed());
            }
            t.set_meta_u64(key, *value)?;
            Ok(Reply::Unit)
        }
        FsckOp::ForgetOrphan { ino } => {
            if t.orphans.get(ino.0)?.is_none() {
                return Err(changed());
            }
            if inode(t, *ino)?.is_some_and(|r| r.nlink == 0) {
                return Err(changed());
            }
            t.orphans.remove(ino.0)?;
            Ok(Reply::Unit)
        }
        FsckOp::DropChunk { ino, index, chunk: id, version } => {
            let rec = chunk(t, *ino, *index)?.ok_or_else(changed)?;
            if rec.chunk != *id || rec.version != *version {
                return Err(changed());
            }
            if inode(t, *ino)?.is_some_and(|r| r.kind == FileKind::File) {
                return Err(changed());
            }
            t.queue_deletion(&rec)?;
            t.chunks.remove((ino.0, *index))?;
            Ok(Reply::Unit)
        }
        FsckOp::DeleteStaleReplica { node, chunk: id, version, ino, index } => {
            // Only versions older than the current one: a newer one may be
            // an upload in progress, and an older one can never become
            // current again (a commit of an older version is refused).
            let rec = chunk(t, *ino, *index)?.ok_or_else(changed)?;
            if rec.chunk != *id || rec.version <= *version {
                return Err(changed());
            }
            t.deletions.insert((node.0, id.0, version.0), ())?;
            Ok(Reply::Unit)
        }
        FsckOp::DropCorruptReplica { node, chunk: id, version, ino, index } => {
            let mut rec = chunk(t, *ino, *index)?.ok_or_else(changed)?;
            if rec.chunk != *id || rec.version != *version || !rec.replicas.contains(node) {
                return Err(changed());
            }
            if rec.replicas.iter().all(|n| n == node) {
                // The last copy, even a damaged one, is kept.
                return Err(FsError::Unavailable.into());
            }
            rec.replicas.retain(|n| n != node);
            t.chunks.insert((ino.0, *index), rec.encode().as_slice())?;
            t.deletions.insert((node.0, id.0, version.0), ())?;
            Ok(Reply::Unit)
        }
        FsckOp::Attach { ino, detach, now } => attach(t, *ino, detach.as_ref(), *now),
    }
}

fn attach(
    t: &mut Tables,
    ino: InodeId,
    detach: Option<&(InodeId, String)>,
    now: Timestamp,
) -> Result<Reply, ApplyError> {
    if ino == InodeId::ROOT {
        return Err(FsError::InvalidArgument.into());
    }
    let rec = inode(t, ino)?.ok_or_else(changed)?;
    if t.orphans.get(ino.0)?.is_some() {
        return Err(changed());
    }
    match detach {
        Some((dir, name)) => {
            if rec.kind != FileKind::Dir {
                return Err(FsError::NotDir.into());
            }
            if t.entry(*dir, name)? != Some(ino) || inode(t, *dir)?.is_none() {
                return Err(changed());
            }
        }
        None => {
            if rec.kind == FileKind::Dir && rec.parent != 0 && names(t, rec.parent, ino, None)? {
                return Err(changed());
            }
        }
    }
    let root = inode(t, InodeId::ROOT)?.filter(|r| r.kind == FileKind::Dir).ok_or(FsError::NotFound)?;
    let existing = t.entry(InodeId::ROOT, LOST_FOUND)?;
    let name = lost_found_name(ino);
    if let Some(lf) = existing {
        if lf == ino {
            return Err(FsError::InvalidArgument.into());
        }
        if inode(t, lf)?.ok_or_else(changed)?.kind != FileKind::Dir {
            return Err(FsError::NotDir.into());
        }
        if t.entry(lf, &name)?.is_some() {
            return Err(FsError::Exists.into());
        }
    }

    // Checks done; from here on only writes. Records are read again as
    // they are updated, since some of them may be the same inode.
    let lf = match existing {
        Some(lf) => lf,
        None => {
            let mut dir = new_record(FileKind::Dir, 0o700, Owner { uid: 0, gid: 0 }, root.policy, now);
            dir.nlink = 2;
            dir.parent = InodeId::ROOT.0;
            let lf = t.new_inode(&dir)?;
            t.dir_entries.insert((InodeId::ROOT.0, LOST_FOUND), lf.0)?;
            let mut root = t.inode(InodeId::ROOT)?;
            root.nlink += 1;
            root.mtime = now;
            root.ctime = now;
            t.put_inode(InodeId::ROOT, &root)?;
            lf
        }
    };
    t.dir_entries.insert((lf.0, name.as_str()), ino.0)?;
    if let Some((dir, old)) = detach {
        t.dir_entries.remove((dir.0, old.as_str()))?;
        let mut d = t.inode(*dir)?;
        d.nlink = d.nlink.saturating_sub(1);
        d.mtime = now;
        d.ctime = now;
        t.put_inode(*dir, &d)?;
    }
    let mut rec = t.inode(ino)?;
    let is_dir = rec.kind == FileKind::Dir;
    if is_dir {
        rec.parent = lf.0;
    } else {
        rec.nlink = 1;
    }
    rec.ctime = now;
    t.put_inode(ino, &rec)?;
    let mut l = t.inode(lf)?;
    if is_dir {
        l.nlink += 1;
    }
    l.mtime = now;
    l.ctime = now;
    t.put_inode(lf, &l)?;
    Ok(Reply::Unit)
}
