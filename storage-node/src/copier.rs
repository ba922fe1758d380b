//! Re-replication on this node: copies chunk replicas the master orders
//! from another node (pull), verifies every block and stores them with
//! fsync, then reports them in the next heartbeat.

use crate::chunk_store::ChunkStore;
use crate::reports::Reports;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stripefs_daemon::{lock, Step, Worker};
use stripefs_proto::block::BLOCK_SIZE;
use stripefs_proto::net::{connect_node, context_with_timeout, Secret};
use stripefs_proto::types::ReplicateOrder;

/// Copies running at once on this node (one per copy worker).
const PARALLEL_COPIES: usize = 2;
/// Blocks fetched per request (4 MiB).
const BLOCKS_PER_FETCH: u32 = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Copy orders received and not yet started.
#[derive(Debug, Default)]
pub(crate) struct CopyQueue {
    orders: Mutex<VecDeque<ReplicateOrder>>,
    wake: tokio::sync::Notify,
}

impl CopyQueue {
    /// Queues orders from the master.
    pub(crate) fn order(&self, orders: Vec<ReplicateOrder>) {
        let n = orders.len();
        lock(&self.orders).extend(orders);
        for _ in 0..n.min(PARALLEL_COPIES) {
            self.wake.notify_one();
        }
    }

    fn pop(&self) -> Option<ReplicateOrder> {
        lock(&self.orders).pop_front()
    }

    fn len(&self) -> usize {
        lock(&self.orders).len()
    }
}

/// One of [`PARALLEL_COPIES`] copy workers: takes orders from the queue,
/// copies each from a source node, reports the outcome.
pub(crate) struct Copier {
    id: usize,
    queue: Arc<CopyQueue>,
    store: Arc<ChunkStore>,
    secret: Secret,
    reports: Arc<Reports>,
    copied: u64,
    failed: u64,
    last: Option<String>,
}

impl Copier {
    /// The [`PARALLEL_COPIES`] workers over `queue`.
    pub(crate) fn workers(
        queue: &Arc<CopyQueue>,
        store: &Arc<ChunkStore>,
        secret: &Secret,
        reports: &Arc<Reports>,
    ) -> Vec<Copier> {
        (1..=PARALLEL_COPIES)
            .map(|id| Copier {
                id,
                queue: queue.clone(),
                store: store.clone(),
                secret: secret.clone(),
                reports: reports.clone(),
                copied: 0,
                failed: 0,
                last: None,
            })
            .collect()
    }

    async fn copy(&self, o: &ReplicateOrder) -> bool {
        for src in &o.sources {
            match self.copy_from(src, o).await {
                Ok(stored) => {
                    tracing::info!("copied chunk {} v{} ({stored} bytes) from {src}", o.chunk, o.version);
                    return true;
                }
                Err(e) => tracing::warn!("copying chunk {} v{} from {src}: {e}", o.chunk, o.version),
            }
        }
        false
    }

    async fn copy_from(&self, addr: &str, o: &ReplicateOrder) -> Result<u64, String> {
        let client = connect_node(addr, &self.secret, CONNECT_TIMEOUT).await.map_err(|e| e.to_string())?;
        let total = (o.length as usize).div_ceil(BLOCK_SIZE) as u32;
        let mut blocks = Vec::with_capacity(total as usize);
        while (blocks.len() as u32) < total {
            let first = blocks.len() as u32;
            let n = BLOCKS_PER_FETCH.min(total - first);
            let got = client
                .read_blocks(context_with_timeout(FETCH_TIMEOUT), o.chunk, o.version, first, n)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            if got.is_empty() {
                return Err(format!("the source has only {first} of {total} blocks"));
            }
            blocks.extend(got);
        }
        let store = self.store.clone();
        let (chunk, version, length) = (o.chunk, o.version, o.length);
        // The store verifies every block's crc before it writes anything.
        tokio::task::spawn_blocking(move || store.write(chunk, version, length, &blocks, true))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
}

impl Worker for Copier {
    fn name(&self) -> String {
        format!("copier-{}", self.id)
    }

    async fn work(&mut self) -> Result<Step, String> {
        let Some(o) = self.queue.pop() else { return Ok(Step::Idle) };
        let key = (o.chunk, o.version);
        if self.copy(&o).await {
            self.copied += 1;
            self.reports.replicated(key);
            self.last = Some(format!("copied chunk {} v{}", o.chunk, o.version));
        } else {
            self.failed += 1;
            self.reports.failed(key);
            self.last = Some(format!("could not copy chunk {} v{}", o.chunk, o.version));
        }
        Ok(if self.queue.len() > 0 { Step::Busy } else { Step::Idle })
    }

    async fn wait_for_work(&mut self) {
        self.queue.wake.notified().await
    }

    fn detail(&self) -> String {
        let last = self.last.as_ref().map(|l| format!("; last: {l}")).unwrap_or_default();
        format!("{} orders queued; {} copied, {} failed{last}", self.queue.len(), self.copied, self.failed)
    }
}
