//! The master's own records: storage nodes and the id ceiling.

use super::{ApplyError, Tables};
use crate::records::NodeRecord;
use crate::tables::meta_keys;
use redb::ReadableTable;
use stripefs_proto::NodeId;

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
