//! The chunk map: commits, copies recorded by re-replication, and the
//! queue of replica deletions the nodes take.

use super::{ApplyError, Context, Tables};
use crate::records::ChunkRecord;
use redb::ReadableTable;
use stripefs_proto::types::{Attr, ChunkCommit, FileKind, Timestamp};
use stripefs_proto::{ChunkId, FsError, InodeId, NodeId, Version};

/// Makes a stored chunk version current (an older commit arriving late
/// loses, and its replicas are deleted).
pub(super) fn commit_chunk(t: &mut Tables, c: &ChunkCommit, now: Timestamp, ctx: &Context) -> Result<Attr, ApplyError> {
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

/// Records a copy made by re-replication on `node` and drops `drop`; a
/// copy of a chunk that moved on meanwhile is deleted instead.
pub(super) fn add_replica(
    t: &mut Tables,
    ino: InodeId,
    index: u64,
    (chunk, version): (ChunkId, Version),
    node: NodeId,
    drop: &[NodeId],
) -> Result<(), ApplyError> {
    let rec = match t.chunks.get((ino.0, index))? {
        Some(v) => Some(ChunkRecord::decode(v.value())?),
        None => None,
    };
    match rec {
        Some(mut rec) if rec.chunk == chunk && rec.version == version => {
            if !rec.replicas.contains(&node) {
                rec.replicas.push(node);
            }
            let dropped: Vec<NodeId> = rec.replicas.iter().copied().filter(|n| drop.contains(n)).collect();
            rec.replicas.retain(|n| !drop.contains(n));
            for n in dropped {
                t.deletions.insert((n.0, chunk.0, version.0), ())?;
            }
            t.chunks.insert((ino.0, index), rec.encode().as_slice())?;
        }
        // The chunk moved on (rewritten, truncated, deleted) while it
        // was copied: the copy is garbage.
        _ => {
            t.deletions.insert((node.0, chunk.0, version.0), ())?;
        }
    }
    Ok(())
}

/// Queues replicas for deletion on their nodes.
pub(super) fn queue_deletions(t: &mut Tables, replicas: &[(NodeId, ChunkId, Version)]) -> Result<(), ApplyError> {
    for (node, chunk, version) in replicas {
        t.deletions.insert((node.0, chunk.0, version.0), ())?;
    }
    Ok(())
}

/// Takes up to `max` deletions queued for `node`.
pub(super) fn take_deletions(t: &mut Tables, node: NodeId, max: u32) -> Result<Vec<(ChunkId, Version)>, ApplyError> {
    let keys: Vec<(u64, u64, u64)> = t
        .deletions
        .range((node.0, 0, 0)..=(node.0, u64::MAX, u64::MAX))?
        .take(max as usize)
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for k in &keys {
        t.deletions.remove(*k)?;
    }
    Ok(keys.into_iter().map(|(_, c, v)| (ChunkId(c), Version(v))).collect())
}
