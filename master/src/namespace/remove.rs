//! Removing names and inodes: unlink, rmdir, and the purge of orphans.

use super::{ApplyError, Context, Tables};
use redb::ReadableTable;
use stripefs_proto::types::{DataClass, FileKind, Timestamp};
use stripefs_proto::{check_name, ops, FsError, InodeId, NodeId};

/// Removes the non-directory name `name` from `parent` (the inode stays
/// as an orphan while it is open).
pub(super) fn unlink(t: &mut Tables, op: &ops::Unlink, now: Timestamp, ctx: &Context) -> Result<(), ApplyError> {
    let (parent, name) = (op.parent, op.name.as_str());
    check_name(name)?;
    let mut dir = t.dir(parent)?;
    let child = t.entry(parent, name)?.ok_or(FsError::NotFound)?;
    let rec = t.inode(child)?;
    if rec.kind == FileKind::Dir {
        return Err(FsError::IsDir.into());
    }
    t.dir_entries.remove((parent.0, name))?;
    dir.mtime = now;
    dir.ctime = now;
    t.put_inode(parent, &dir)?;
    t.drop_link(child, rec, now, ctx)
}

/// Removes the empty directory `name` from `parent`.
pub(super) fn rmdir(t: &mut Tables, op: &ops::Rmdir, now: Timestamp) -> Result<(), ApplyError> {
    let (parent, name) = (op.parent, op.name.as_str());
    check_name(name)?;
    let mut dir = t.dir(parent)?;
    let child = t.entry(parent, name)?.ok_or(FsError::NotFound)?;
    let rec = t.inode(child)?;
    if rec.kind != FileKind::Dir {
        return Err(FsError::NotDir.into());
    }
    if !t.dir_is_empty(child)? {
        return Err(FsError::NotEmpty.into());
    }
    t.dir_entries.remove((parent.0, name))?;
    dir.nlink = dir.nlink.saturating_sub(1);
    dir.mtime = now;
    dir.ctime = now;
    t.put_inode(parent, &dir)?;
    t.purge(child)
}

/// Frees the orphan `ino` unless a client holds it open.
pub(super) fn purge_orphan(t: &mut Tables, ino: InodeId, ctx: &Context) -> Result<(), ApplyError> {
    if t.orphans.get(ino.0)?.is_some() && !(ctx.is_open)(ino) {
        t.purge(ino)?;
    }
    Ok(())
}

/// Removes the names of scratch file `ino` whose home `node` is gone,
/// when it still has that home and its class removes lost files; the file
/// is freed (or kept as an orphan while open).
pub(super) fn remove_lost_scratch(
    t: &mut Tables,
    ino: InodeId,
    node: NodeId,
    names: &[(InodeId, String)],
    now: Timestamp,
    ctx: &Context,
) -> Result<(), ApplyError> {
    for (dir, name) in names {
        let Ok(rec) = t.inode(ino) else { break };
        if rec.home != Some(node) || rec.class != (DataClass::Scratch { remove_lost: true }) {
            break;
        }
        if t.entry(*dir, name)? != Some(ino) {
            continue;
        }
        let mut d = t.dir(*dir)?;
        t.dir_entries.remove((dir.0, name.as_str()))?;
        d.mtime = now;
        d.ctime = now;
        t.put_inode(*dir, &d)?;
        t.drop_link(ino, rec, now, ctx)?;
    }
    Ok(())
}
