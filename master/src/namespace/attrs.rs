//! Attributes: setattr (with truncation), xattrs and data policies.

use super::{ApplyError, Context, Tables, XATTR_CREATE, XATTR_REPLACE};
use crate::records::ChunkRecord;
use redb::ReadableTable;
use stripefs_proto::types::{Attr, FileKind, Policy, SetAttr, TimeSet, Timestamp};
use stripefs_proto::{ops, FsError, InodeId, MAX_XATTR_VALUE_BYTES};

/// Changes the attributes `set` names.
pub(super) fn set_attr(
    t: &mut Tables,
    ino: InodeId,
    set: &SetAttr,
    now: Timestamp,
    ctx: &Context,
) -> Result<Attr, ApplyError> {
    let mut rec = t.inode(ino)?;
    if set.size.is_some() && rec.kind != FileKind::File {
        return Err(if rec.kind == FileKind::Dir { FsError::IsDir } else { FsError::InvalidArgument }.into());
    }
    if let Some(mode) = set.mode {
        rec.perm = (mode & 0o7777) as u16 & rec.allowed_bits();
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

fn resolve(set: TimeSet, now: Timestamp) -> Timestamp {
    match set {
        TimeSet::Now => now,
        TimeSet::At(t) => t,
    }
}

/// Sets the xattr `name` of `ino`.
pub(super) fn set_xattr(t: &mut Tables, op: &ops::SetXattr, now: Timestamp) -> Result<(), ApplyError> {
    let (ino, name, value, flags) = (op.ino, op.name.as_str(), op.value.as_slice(), op.flags);
    check_xattr_name(name)?;
    if value.len() > MAX_XATTR_VALUE_BYTES {
        return Err(FsError::TooLarge.into());
    }
    let mut rec = t.inode(ino)?;
    let exists = t.xattrs.get((ino.0, name))?.is_some();
    if flags & XATTR_CREATE != 0 && exists {
        return Err(FsError::Exists.into());
    }
    if flags & XATTR_REPLACE != 0 && !exists {
        return Err(FsError::NoAttr.into());
    }
    t.xattrs.insert((ino.0, name), value)?;
    rec.ctime = now;
    t.put_inode(ino, &rec)
}

/// Removes the xattr `name` of `ino`.
pub(super) fn remove_xattr(t: &mut Tables, ino: InodeId, name: &str, now: Timestamp) -> Result<(), ApplyError> {
    check_xattr_name(name)?;
    let mut rec = t.inode(ino)?;
    if t.xattrs.get((ino.0, name))?.is_none() {
        return Err(FsError::NoAttr.into());
    }
    t.xattrs.remove((ino.0, name))?;
    rec.ctime = now;
    t.put_inode(ino, &rec)
}

/// Changes the data policy of `ino` (inherited by what is created in it).
pub(super) fn set_policy(t: &mut Tables, op: &ops::SetPolicy, now: Timestamp) -> Result<Attr, ApplyError> {
    let (ino, replication, compression_level) = (op.ino, op.replication, op.compression_level);
    let mut rec = t.inode(ino)?;
    if let Some(r) = replication {
        if r == 0 || r > Policy::MAX_REPLICATION {
            return Err(FsError::InvalidArgument.into());
        }
        rec.policy.replication = r;
    }
    if let Some(l) = compression_level {
        if !(0..=Policy::MAX_COMPRESSION_LEVEL).contains(&l) {
            return Err(FsError::InvalidArgument.into());
        }
        rec.policy.compression_level = l;
    }
    rec.ctime = now;
    t.put_inode(ino, &rec)?;
    Ok(rec.to_attr(ino))
}

/// Changes the data class of a directory (what its new files get), or of
/// an empty regular file (a scratch file gets its home then).
pub(super) fn set_class(t: &mut Tables, op: &ops::SetClass, now: Timestamp) -> Result<Attr, ApplyError> {
    let mut rec = t.inode(op.ino)?;
    match rec.kind {
        FileKind::Dir => rec.class = op.class,
        FileKind::File if rec.class.is_scratch() && op.class.is_scratch() => rec.class = op.class,
        FileKind::File => {
            // Data would have to move between layouts: refused.
            if rec.size != 0 || rec.allocated != 0 {
                return Err(FsError::NotSupported.into());
            }
            if let Some(home) = rec.home.take() {
                t.queue_scratch_deletion(home, op.ino)?;
            }
            rec.class = op.class;
            if op.class.is_scratch() {
                rec.home = super::create::scratch_home(t)?;
                rec.perm &= rec.allowed_bits();
            }
        }
        _ => return Err(FsError::InvalidArgument.into()),
    }
    rec.ctime = now;
    t.put_inode(op.ino, &rec)?;
    Ok(rec.to_attr(op.ino))
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
