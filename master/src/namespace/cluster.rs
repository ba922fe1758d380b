//! The master's own records: storage nodes and the id ceiling.

use super::{ApplyError, Tables};
use crate::records::NodeRecord;
use crate::tables::meta_keys;
use redb::ReadableTable;
use stripefs_proto::types::{FileKind, Owner, Policy, Timestamp};
use stripefs_proto::{FsError, InodeId, NodeId};

/// Records a storage node; a node without a known id gets the next one.
pub(super) fn register_node(t: &mut Tables, id: Option<NodeId>, record: &NodeRecord) -> Result<NodeId, ApplyError> {
    let known = match id {
        Some(id) => t.nodes.get(id.0)?.is_some(),
        None => false,
    };
    let id = match (id, known) {
        (Some(id), true) => id,
        _ => {
            let last = t.nodes.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            NodeId(last + 1)
        }
    };
    t.nodes.insert(id.0, record.encode().as_slice())?;
    Ok(id)
}

/// Raises the ceiling below which ids may be handed out.
pub(super) fn reserve_ids(t: &mut Tables, ceiling: u64) -> Result<(), ApplyError> {
    let current = t.meta_u64(meta_keys::ID_CEILING)?;
    t.set_meta_u64(meta_keys::ID_CEILING, current.max(ceiling))
}

/// Reserves `count` ids above the ceiling: the range `[first, end)`.
pub(super) fn reserve_range(t: &mut Tables, count: u64) -> Result<(u64, u64), ApplyError> {
    let first = t.meta_u64(meta_keys::ID_CEILING)?;
    let end = first.checked_add(count).ok_or(stripefs_proto::FsError::NoSpace)?;
    t.set_meta_u64(meta_keys::ID_CEILING, end)?;
    Ok((first, end))
}

/// Creates the filesystem in a member's empty tables.
pub(super) fn create_fs(t: &mut Tables, fs_id: &str, chunk_size: u32, now: Timestamp) -> Result<(), ApplyError> {
    if t.meta.get(meta_keys::FS_ID)?.is_some() {
        return Err(FsError::Exists.into());
    }
    if !chunk_size.is_power_of_two() || !(64 << 10..=64 << 20).contains(&chunk_size) {
        return Err(FsError::InvalidArgument.into());
    }
    let meta: [(&str, Vec<u8>); 5] = [
        (meta_keys::FS_ID, fs_id.as_bytes().to_vec()),
        (meta_keys::CHUNK_SIZE, chunk_size.to_le_bytes().to_vec()),
        (meta_keys::NEXT_INODE, 2u64.to_le_bytes().to_vec()),
        (meta_keys::ID_CEILING, 1u64.to_le_bytes().to_vec()),
        (meta_keys::INODE_COUNT, 1u64.to_le_bytes().to_vec()),
    ];
    for (k, v) in meta {
        t.meta.insert(k, v.as_slice())?;
    }
    let mut root = super::new_record(FileKind::Dir, 0o755, Owner { uid: 0, gid: 0 }, Policy::default(), now);
    root.nlink = 2;
    root.parent = InodeId::ROOT.0;
    t.put_inode(InodeId::ROOT, &root)
}
