//! Creating names: mknod, mkdir, symlink and hard links.

use super::{ApplyError, Tables};
use crate::records::{InodeRecord, NodeRecord};
use redb::ReadableTable;
use stripefs_proto::types::{Attr, DataClass, FileKind, Owner, Policy, Timestamp};
use stripefs_proto::{check_name, ops, FsError, InodeId, NodeId, MAX_SYMLINK_BYTES};

/// Most hard links one inode may have.
pub const MAX_LINKS: u32 = 65_000;

/// A non-directory, non-symlink inode named `name` in `parent`.
pub(super) fn mknod(t: &mut Tables, op: &ops::Mknod, now: Timestamp) -> Result<Attr, ApplyError> {
    let (parent, name, kind, perm, owner, rdev) = (op.parent, op.name.as_str(), op.kind, op.perm, op.owner, op.rdev);
    if kind == FileKind::Dir || kind == FileKind::Symlink {
        return Err(FsError::InvalidArgument.into());
    }
    let rec = create_checks(t, parent, name)?;
    let mut child = new_record(kind, perm, owner, rec.policy, now);
    child.rdev = rdev;
    if kind == FileKind::File && rec.class.is_scratch() {
        child.class = rec.class;
        child.home = scratch_home(t)?;
        child.perm &= child.allowed_bits();
    }
    add_child(t, parent, rec, name, child, now)
}

/// The home of a scratch file the current request creates: the node
/// registered on the requesting session's host (the newest one, if the
/// host had several). None: the request has no registered session, or no
/// node ever registered on its host; the file then keeps the replicated
/// layout. Decided from replicated tables only, so every master of a
/// group decides the same.
pub(super) fn scratch_home(t: &Tables) -> Result<Option<NodeId>, ApplyError> {
    let Some(host) = t.session.map(|s| crate::sessions::host_of(t, s)).transpose()?.flatten() else {
        return Ok(None);
    };
    let mut home = None;
    for entry in t.nodes.iter()? {
        let (id, rec) = entry?;
        if NodeRecord::decode(rec.value())?.host == host {
            home = Some(NodeId(id.value()));
        }
    }
    Ok(home)
}

/// A directory named `name` in `parent`.
pub(super) fn mkdir(t: &mut Tables, op: &ops::Mkdir, now: Timestamp) -> Result<Attr, ApplyError> {
    let (parent, name, perm, owner) = (op.parent, op.name.as_str(), op.perm, op.owner);
    let rec = create_checks(t, parent, name)?;
    let mut child = new_record(FileKind::Dir, perm, owner, rec.policy, now);
    child.class = rec.class;
    child.nlink = 2;
    child.parent = parent.0;
    add_child(t, parent, rec, name, child, now)
}

/// A symlink named `name` in `parent` pointing at `target`.
pub(super) fn symlink(t: &mut Tables, op: &ops::Symlink, now: Timestamp) -> Result<Attr, ApplyError> {
    let (parent, name, target, owner) = (op.parent, op.name.as_str(), op.target.as_str(), op.owner);
    if target.is_empty() || target.contains('\0') {
        return Err(FsError::InvalidArgument.into());
    }
    if target.len() > MAX_SYMLINK_BYTES {
        return Err(FsError::NameTooLong.into());
    }
    let rec = create_checks(t, parent, name)?;
    let mut child = new_record(FileKind::Symlink, 0o777, owner, rec.policy, now);
    child.size = target.len() as u64;
    child.target = Some(target.to_string());
    add_child(t, parent, rec, name, child, now)
}

/// Writes the new inode `child` and its name `name` in `parent` (whose
/// record is `dir`, checked by [`create_checks`]), and updates the
/// directory: its times, and its link count for a subdirectory.
fn add_child(
    t: &mut Tables,
    parent: InodeId,
    mut dir: InodeRecord,
    name: &str,
    child: InodeRecord,
    now: Timestamp,
) -> Result<Attr, ApplyError> {
    let ino = t.new_inode(&child)?;
    t.dir_entries.insert((parent.0, name), ino.0)?;
    if child.kind == FileKind::Dir {
        dir.nlink += 1;
    }
    dir.mtime = now;
    dir.ctime = now;
    t.put_inode(parent, &dir)?;
    Ok(child.to_attr(ino))
}

/// A new name `new_name` in `new_parent` for the non-directory `ino`.
pub(super) fn link(t: &mut Tables, op: &ops::Link, now: Timestamp) -> Result<Attr, ApplyError> {
    let (ino, new_parent, new_name) = (op.ino, op.new_parent, op.new_name.as_str());
    let mut rec = t.inode(ino)?;
    if rec.kind == FileKind::Dir {
        return Err(FsError::NotPermitted.into());
    }
    if rec.nlink == 0 {
        return Err(FsError::NotFound.into());
    }
    if rec.nlink >= MAX_LINKS {
        return Err(FsError::TooManyLinks.into());
    }
    let mut dir = create_checks(t, new_parent, new_name)?;
    t.dir_entries.insert((new_parent.0, new_name), ino.0)?;
    rec.nlink += 1;
    rec.ctime = now;
    t.put_inode(ino, &rec)?;
    dir.mtime = now;
    dir.ctime = now;
    t.put_inode(new_parent, &dir)?;
    Ok(rec.to_attr(ino))
}

/// Checks for creating `name` in `parent`; returns the parent's record.
pub(super) fn create_checks(t: &Tables, parent: InodeId, name: &str) -> Result<InodeRecord, ApplyError> {
    check_name(name)?;
    let rec = t.dir(parent)?;
    if t.entry(parent, name)?.is_some() {
        return Err(FsError::Exists.into());
    }
    Ok(rec)
}

pub(crate) fn new_record(kind: FileKind, perm: u32, owner: Owner, policy: Policy, now: Timestamp) -> InodeRecord {
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
        class: DataClass::Replicated,
        home: None,
    }
}
