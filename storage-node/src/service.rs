//! The storage node's RPC service: reads, deletes and syncs replicas.
//! Writes arrive on data connections instead (`data_server.rs`), which
//! bound the memory they take; a tarpc request is decoded whole before any
//! check could run.

use crate::chunk_store::{ChunkStore, StoreError, MAX_BLOCKS_PER_CHUNK};
use crate::reports::Reports;
use crate::write_memory::WriteMemory;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stripefs_proto::data_conn::DataPool;
use stripefs_proto::net::Secret;
use stripefs_proto::types::{EncodedBlock, ScratchData};
use stripefs_proto::{ChunkId, FsError, InodeId, NodeService, Version};
use tarpc::context::Context;

/// Longest a forwarded write may take.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest replication chain a write may carry after this node.
pub const MAX_CHAIN: usize = 16;

/// The [`NodeService`] implementation. Cheap to clone: clones share the
/// store and the connections to peers.
#[derive(Clone)]
pub struct NodeServer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<ChunkStore>,
    /// Where corrupt replicas found on reads are reported.
    reports: Arc<Reports>,
    /// Data directory and the space to keep free in it.
    space: Option<(PathBuf, u64)>,
    /// Data connections to the next nodes of chains, for forwarding
    /// writes.
    data: DataPool,
    /// Memory for writes in progress on the data path.
    writes: WriteMemory,
    /// What the node counts.
    metrics: Arc<crate::metrics::NodeMetrics>,
    /// Scratch files being sealed at once, at most.
    seals: Arc<tokio::sync::Semaphore>,
}

/// Scratch files sealed at once ([`NodeService::scratch_seal`]).
const CONCURRENT_SEALS: usize = 2;

impl NodeServer {
    /// A server that reports corrupt replicas to `reports`, keeps
    /// `reserve_bytes` free in `data_dir` and holds at most about
    /// `write_memory_bytes` of writes in progress.
    pub(crate) fn with_reports(
        store: Arc<ChunkStore>,
        secret: Secret,
        reports: Arc<Reports>,
        data_dir: PathBuf,
        reserve_bytes: u64,
        write_memory_bytes: u64,
        metrics: Arc<crate::metrics::NodeMetrics>,
    ) -> NodeServer {
        NodeServer {
            inner: Arc::new(Inner {
                store,
                data: DataPool::new(secret),
                reports,
                space: Some((data_dir, reserve_bytes)),
                writes: WriteMemory::new(write_memory_bytes),
                metrics,
                seals: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SEALS)),
            }),
        }
    }

    /// Refuses a replica of `need` bytes that would eat into the space
    /// kept free. Blocking (statfs).
    pub(crate) fn check_space(&self, chunk: ChunkId, version: Version, need: u64) -> Result<(), StoreError> {
        if let Some((dir, reserve)) = &self.inner.space {
            // If the disk cannot be measured, write and let the disk decide.
            if let Ok(s) = crate::fsutil::disk_space(dir) {
                if s.free_bytes < reserve.saturating_add(need) {
                    tracing::warn!("refusing chunk {chunk} v{version}: the disk is full (reserve {reserve} bytes)");
                    return Err(StoreError::NoSpace);
                }
            }
        }
        Ok(())
    }

    /// The store.
    pub(crate) fn store(&self) -> &ChunkStore {
        &self.inner.store
    }

    /// Connections for forwarding writes over the data path.
    pub(crate) fn data_pool(&self) -> &DataPool {
        &self.inner.data
    }

    /// Memory for writes in progress on the data path.
    /// What the node counts.
    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::NodeMetrics> {
        &self.inner.metrics
    }

    pub(crate) fn write_memory(&self) -> &WriteMemory {
        &self.inner.writes
    }
}

/// Runs a store operation on the blocking pool and maps its error.
async fn blocking<T, F>(f: F) -> Result<T, FsError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_wire()),
        Err(e) => {
            tracing::error!("store task failed: {e}");
            Err(FsError::Internal)
        }
    }
}

impl NodeService for NodeServer {
    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "read_blocks", trace = %ctx.trace_id(), chunk = %chunk, version = %version, first_block, count))]
    async fn read_blocks(
        self,
        ctx: Context,
        chunk: ChunkId,
        version: Version,
        first_block: u32,
        count: u32,
    ) -> Result<Vec<EncodedBlock>, FsError> {
        if count as usize > MAX_BLOCKS_PER_CHUNK {
            tracing::warn!(%chunk, %version, "refusing read of {count} blocks");
            return Err(FsError::InvalidArgument);
        }
        let store = self.inner.store.clone();
        let reports = self.inner.reports.clone();
        let metrics = self.inner.metrics.clone();
        blocking(move || {
            let r = store.read_blocks(chunk, version, first_block, count);
            match &r {
                Ok(blocks) => {
                    metrics.read_bytes.inc_by(blocks.iter().map(|b| b.data.len() as u64).sum());
                }
                Err(StoreError::Corrupt { .. }) => {
                    metrics.checksum_errors.inc();
                    reports.corrupt((chunk, version));
                }
                Err(_) => {}
            }
            r
        })
        .await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "delete_chunk", trace = %ctx.trace_id(), chunk = %chunk, version = %version))]
    async fn delete_chunk(self, ctx: Context, chunk: ChunkId, version: Version) -> Result<(), FsError> {
        let store = self.inner.store.clone();
        blocking(move || store.delete(chunk, version)).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "sync_chunks", trace = %ctx.trace_id(), replicas = chunks.len()))]
    async fn sync_chunks(self, ctx: Context, chunks: Vec<(ChunkId, Version)>) -> Result<(), FsError> {
        if chunks.len() > MAX_SYNC_BATCH {
            tracing::warn!("refusing sync of {} replicas", chunks.len());
            return Err(FsError::InvalidArgument);
        }
        let store = self.inner.store.clone();
        blocking(move || store.sync_many(&chunks)).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "scratch_read", trace = %ctx.trace_id(), %ino))]
    async fn scratch_read(self, ctx: Context, ino: InodeId, offset: u64, len: u32) -> Result<ScratchData, FsError> {
        let store = self.inner.store.clone();
        blocking(move || store.scratch_read(ino, offset, len)).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "scratch_write", trace = %ctx.trace_id(), %ino))]
    async fn scratch_write(self, ctx: Context, ino: InodeId, offset: u64, data: bytes::Bytes) -> Result<u64, FsError> {
        let store = self.inner.store.clone();
        blocking(move || store.scratch_write(ino, offset, &data)).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "scratch_truncate", trace = %ctx.trace_id(), %ino))]
    async fn scratch_truncate(self, ctx: Context, ino: InodeId, size: u64) -> Result<(), FsError> {
        let store = self.inner.store.clone();
        blocking(move || store.scratch_truncate(ino, size)).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "scratch_sync", trace = %ctx.trace_id(), %ino))]
    async fn scratch_sync(self, ctx: Context, ino: InodeId) -> Result<(), FsError> {
        let store = self.inner.store.clone();
        blocking(move || store.scratch_sync(ino)).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "scratch_seal", trace = %ctx.trace_id(), %ino))]
    async fn scratch_seal(self, ctx: Context, ino: InodeId) -> Result<(), FsError> {
        let (store, seals) = (self.inner.store.clone(), self.inner.seals.clone());
        tokio::spawn(async move {
            // Just closed: wait here (a stop of the node cancels the wait),
            // not in a blocking thread a stop would wait for.
            tokio::time::sleep(crate::scratch::QUIET).await;
            let Ok(_permit) = seals.acquire_owned().await else { return };
            let sealed = tokio::task::spawn_blocking(move || store.scratch_seal(ino, Duration::from_millis(100))).await;
            match sealed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("sealing scratch file {ino}: {e}"),
                Err(e) => tracing::warn!("sealing task of scratch file {ino} failed: {e}"),
            }
        });
        Ok(())
    }
}

/// Most replicas one `sync_chunks` call may name.
const MAX_SYNC_BATCH: usize = 100_000;
