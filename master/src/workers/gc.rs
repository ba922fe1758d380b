//! Garbage collection: a node's inventory (every replica it holds, with
//! its age) is compared with the chunk map; replicas that are not the
//! current version on that node and are older than the grace time (a
//! younger one may belong to an upload not yet committed) are queued for
//! deletion, which the node receives in its next heartbeat replies.

use crate::namespace::Command;
use crate::state::{Inventory, MasterState};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use stripefs_daemon::{lock, Step, Worker};
use stripefs_proto::types::InventoryItem;
use stripefs_proto::{ChunkId, FsError, InodeId, NodeId, Version};

/// Inventories reported and not yet checked.
#[derive(Debug, Default)]
pub struct InventoryQueue {
    queue: Mutex<VecDeque<(NodeId, Vec<InventoryItem>)>>,
    wake: tokio::sync::Notify,
}

impl InventoryQueue {
    /// Queues `node`'s inventory for checking (replacing one of the same
    /// node still waiting: the newer one says all).
    pub fn push(&self, node: NodeId, items: Vec<InventoryItem>) {
        let mut q = lock(&self.queue);
        q.retain(|(n, _)| *n != node);
        q.push_back((node, items));
        drop(q);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<(NodeId, Vec<InventoryItem>)> {
        lock(&self.queue).pop_front()
    }

    fn len(&self) -> usize {
        lock(&self.queue).len()
    }
}

/// The replicas of `items` (held by `node`) that garbage collection
/// deletes, and records the inventory for fsck.
fn garbage(
    state: &MasterState,
    node: NodeId,
    items: &[InventoryItem],
) -> Result<Vec<(NodeId, ChunkId, Version)>, FsError> {
    let current = state.store.current_chunks()?;
    let grace = state.gc_grace.as_secs();
    let mut garbage = Vec::new();
    for i in items.iter().filter(|i| i.age_secs >= grace) {
        let live = if i.version == Version::SCRATCH_FILE {
            // A scratch file: live while its inode has this home.
            match state.store.inode(InodeId(i.chunk.0)) {
                Ok(rec) => rec.home == Some(node),
                Err(FsError::NotFound) => false,
                Err(e) => return Err(e),
            }
        } else {
            matches!(current.get(&i.chunk), Some((v, nodes)) if *v == i.version && nodes.contains(&node))
        };
        if !live {
            garbage.push((node, i.chunk, i.version));
        }
    }
    lock(&state.inventories).insert(
        node,
        Inventory { replicas: items.iter().map(|i| (i.chunk, i.version)).collect(), at: Some(Instant::now()) },
    );
    Ok(garbage)
}

/// The garbage collection worker.
pub struct GarbageCollector {
    state: Arc<MasterState>,
    checked: u64,
    queued: u64,
    last: Option<(NodeId, usize)>,
}

impl GarbageCollector {
    /// A collector over `state.gc_queue`.
    pub fn new(state: Arc<MasterState>) -> GarbageCollector {
        GarbageCollector { state, checked: 0, queued: 0, last: None }
    }
}

impl Worker for GarbageCollector {
    fn name(&self) -> String {
        "gc".into()
    }

    async fn work(&mut self) -> Result<Step, String> {
        let Some((node, items)) = self.state.gc_queue.pop() else { return Ok(Step::Idle) };
        let state = self.state.clone();
        // The comparison reads the whole chunk table: off the async threads.
        let found = tokio::task::spawn_blocking(move || garbage(&state, node, &items))
            .await
            .map_err(|e| format!("inventory check of node {node}: {e}"))?
            .map_err(|e| format!("inventory check of node {node}: {e}"))?;
        self.checked += 1;
        self.last = Some((node, found.len()));
        if !found.is_empty() {
            tracing::info!("node {node} holds {} replicas nobody references; deleting them", found.len());
            self.queued += found.len() as u64;
            let n = found.len();
            self.state
                .store
                .execute(Command::QueueDeletions { replicas: found })
                .await
                .map_err(|e| format!("queueing {n} deletions on node {node}: {e}"))?;
        }
        Ok(if self.state.gc_queue.len() > 0 { Step::Busy } else { Step::Idle })
    }

    async fn wait_for_work(&mut self) {
        self.state.gc_queue.wake.notified().await
    }

    fn detail(&self) -> String {
        let last = match self.last {
            Some((node, n)) => format!("; last: node {node}, {n} unreferenced"),
            None => String::new(),
        };
        format!("{} inventories checked, {} replicas queued for deletion{last}", self.checked, self.queued)
    }
}
