//! Rename, with renameat2's `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.

use super::{ApplyError, Context, Tables, RENAME_EXCHANGE, RENAME_NOREPLACE};
use stripefs_proto::types::{FileKind, Timestamp};
use stripefs_proto::{check_name, ops, FsError, InodeId};

/// Renames `name` in `parent` to `new_name` in `new_parent`.
pub(super) fn rename(t: &mut Tables, op: &ops::Rename, now: Timestamp, ctx: &Context) -> Result<(), ApplyError> {
    let (parent, name, new_parent, new_name, flags) =
        (op.parent, op.name.as_str(), op.new_parent, op.new_name.as_str(), op.flags);
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
