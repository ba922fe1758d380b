//! Re-replication on this node: copies chunk replicas the master orders
//! from another node (pull), verifies every block and stores them with
//! fsync, then reports them in the next heartbeat.

use crate::chunk_store::ChunkStore;
use crate::reports::Reports;
use std::sync::Arc;
use std::time::Duration;
use stripefs_proto::block::BLOCK_SIZE;
use stripefs_proto::net::{connect_node, context_with_timeout, Secret};
use stripefs_proto::types::ReplicateOrder;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Copies running at once on this node.
const PARALLEL_COPIES: usize = 2;
/// Blocks fetched per request (4 MiB).
const BLOCKS_PER_FETCH: u32 = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs ordered copies and collects their outcomes.
pub(crate) struct Copier {
    store: Arc<ChunkStore>,
    secret: Secret,
    slots: Arc<Semaphore>,
    reports: Arc<Reports>,
    shutdown: CancellationToken,
}

impl Copier {
    pub(crate) fn new(
        store: Arc<ChunkStore>,
        secret: Secret,
        reports: Arc<Reports>,
        shutdown: CancellationToken,
    ) -> Arc<Copier> {
        Arc::new(Copier { store, secret, slots: Arc::new(Semaphore::new(PARALLEL_COPIES)), reports, shutdown })
    }

    /// Starts the copies of `orders` in the background.
    pub(crate) fn order(self: &Arc<Self>, orders: Vec<ReplicateOrder>) {
        for o in orders {
            let me = self.clone();
            tokio::spawn(async move {
                let stop = me.shutdown.clone();
                let Some(Ok(_permit)) = stop.run_until_cancelled(me.slots.clone().acquire_owned()).await else {
                    return;
                };
                let key = (o.chunk, o.version);
                let ok = stop.run_until_cancelled(me.copy(&o)).await;
                match ok {
                    Some(true) => me.reports.replicated(key),
                    Some(false) => me.reports.failed(key),
                    None => {}
                }
            });
        }
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
