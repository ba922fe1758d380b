//! The storage node's RPC service: stores replicas and forwards writes
//! down the replication chain.

use crate::chunk_store::{check_layout, ChunkStore, StoreError, MAX_BLOCKS_PER_CHUNK};
use crate::reports::Reports;
use crate::write_memory::WriteMemory;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_proto::data::DataPool;
use stripefs_proto::net::{connect_node, Secret};
use stripefs_proto::types::{EncodedBlock, WriteChunk};
use stripefs_proto::{ChunkId, FsError, NodeService, NodeServiceClient, Version};
use tarpc::client::RpcError;
use tarpc::context::Context;

/// Longest a forwarded write may take.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a connection to a peer node may take to set up.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest replication chain a write may carry after this node.
pub const MAX_CHAIN: usize = 16;

/// The [`NodeService`] implementation. Cheap to clone: clones share the
/// store and the peer connections.
#[derive(Clone)]
pub struct NodeServer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<ChunkStore>,
    secret: Secret,
    /// Where corrupt replicas found on reads are reported.
    reports: Arc<Reports>,
    /// Data directory and the space to keep free in it.
    space: Option<(PathBuf, u64)>,
    /// One client per peer address, for forwarding writes.
    peers: Mutex<HashMap<String, NodeServiceClient>>,
    /// Data connections to peers, for forwarding writes that came over
    /// the data path.
    data: DataPool,
    /// Memory for writes in progress on the data path.
    writes: WriteMemory,
}

impl NodeServer {
    /// A server over `store`, connecting to peers with `secret`.
    pub fn new(store: Arc<ChunkStore>, secret: Secret) -> NodeServer {
        NodeServer {
            inner: Arc::new(Inner {
                store,
                data: DataPool::new(secret.clone()),
                secret,
                reports: Arc::new(Reports::default()),
                space: None,
                peers: Mutex::new(HashMap::new()),
                writes: WriteMemory::new(crate::DEFAULT_WRITE_MEMORY_BYTES),
            }),
        }
    }

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
    ) -> NodeServer {
        NodeServer {
            inner: Arc::new(Inner {
                store,
                data: DataPool::new(secret.clone()),
                secret,
                reports,
                space: Some((data_dir, reserve_bytes)),
                peers: Mutex::new(HashMap::new()),
                writes: WriteMemory::new(write_memory_bytes),
            }),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, NodeServiceClient>> {
        // A map of clients cannot be left half-updated: ignore poisoning.
        self.inner.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached client for `addr`, connecting if there is none.
    async fn peer(&self, addr: &str, deadline: Instant) -> Result<NodeServiceClient, FsError> {
        if let Some(c) = self.peers().get(addr) {
            return Ok(c.clone());
        }
        let timeout = deadline.saturating_duration_since(Instant::now()).min(PEER_CONNECT_TIMEOUT);
        let client = connect_node(addr, &self.inner.secret, timeout).await.map_err(|e| {
            tracing::warn!("cannot reach chain peer: {e}");
            FsError::Unavailable
        })?;
        // Another request may have connected meanwhile: keep the first.
        Ok(self.peers().entry(addr.to_string()).or_insert(client).clone())
    }

    /// Sends `req` to `next`, reconnecting and retrying once on a transport error.
    async fn forward(
        &self,
        next: &str,
        req: WriteChunk,
        blocks: &[EncodedBlock],
        deadline: Instant,
    ) -> Result<(), FsError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.peer(next, deadline).await?;
            let mut ctx = tarpc::context::current();
            ctx.deadline = deadline;
            let fwd = WriteChunk { blocks: blocks.to_vec(), ..req.clone() };
            match client.write_chunk(ctx, fwd).await {
                Ok(Ok(_stored)) => return Ok(()),
                Ok(Err(e)) => {
                    tracing::warn!(chunk = %req.chunk, version = %req.version, "chain peer {next} refused the write: {e}");
                    return Err(e);
                }
                Err(e @ (RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_))) => {
                    self.peers().remove(next);
                    if attempt >= 2 {
                        tracing::warn!("forwarding to chain peer {next} failed again: {e}");
                        return Err(FsError::Unavailable);
                    }
                    tracing::info!("connection to chain peer {next} broke ({e}); reconnecting");
                }
                Err(e) => {
                    tracing::warn!(chunk = %req.chunk, version = %req.version, "forwarding to chain peer {next} failed: {e}");
                    return Err(FsError::Unavailable);
                }
            }
        }
    }

    async fn store_local(
        &self,
        chunk: ChunkId,
        version: Version,
        length: u32,
        blocks: Arc<Vec<EncodedBlock>>,
        sync: bool,
    ) -> Result<u64, FsError> {
        let server = self.clone();
        blocking(move || {
            let need: u64 = blocks.iter().map(|b| b.data.len() as u64).sum::<u64>() + 4096;
            server.check_space(chunk, version, need)?;
            server.inner.store.write(chunk, version, length, &blocks, sync)
        })
        .await
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
    async fn write_chunk(self, ctx: Context, req: WriteChunk) -> Result<u64, FsError> {
        if let Err(e) = check_layout(req.length, req.blocks.iter().map(|b| b.raw_len)) {
            tracing::warn!(chunk = %req.chunk, version = %req.version, "refusing write: {e}");
            return Err(FsError::InvalidArgument);
        }
        if req.chain.len() > MAX_CHAIN {
            tracing::warn!(chunk = %req.chunk, "refusing write: chain of {} nodes", req.chain.len());
            return Err(FsError::InvalidArgument);
        }
        let WriteChunk { chunk, version, length, blocks, mut chain, sync } = req;
        tracing::debug!(%chunk, %version, length, chain = ?chain, "write_chunk");
        let blocks = Arc::new(blocks);
        if chain.is_empty() {
            return self.store_local(chunk, version, length, blocks, sync).await;
        }
        let next = chain.remove(0);
        let deadline = ctx.deadline.min(Instant::now() + FORWARD_TIMEOUT);
        let fwd = WriteChunk { chunk, version, length, blocks: Vec::new(), chain, sync };
        let (local, remote) = tokio::join!(
            self.store_local(chunk, version, length, blocks.clone(), sync),
            self.forward(&next, fwd, &blocks, deadline),
        );
        let stored = local?;
        // Whatever went wrong further down the chain (unreachable, full,
        // damaged in transit) is not this node's fault: `Unavailable` tells
        // the writer to place the rest of the chain elsewhere.
        remote.map_err(|_| FsError::Unavailable)?;
        Ok(stored)
    }

    async fn read_blocks(
        self,
        _ctx: Context,
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
        blocking(move || {
            let r = store.read_blocks(chunk, version, first_block, count);
            if let Err(StoreError::Corrupt { .. }) = &r {
                reports.corrupt((chunk, version));
            }
            r
        })
        .await
    }

    async fn delete_chunk(self, _ctx: Context, chunk: ChunkId, version: Version) -> Result<(), FsError> {
        let store = self.inner.store.clone();
        blocking(move || store.delete(chunk, version)).await
    }

    async fn sync_chunks(self, _ctx: Context, chunks: Vec<(ChunkId, Version)>) -> Result<(), FsError> {
        if chunks.len() > MAX_SYNC_BATCH {
            tracing::warn!("refusing sync of {} replicas", chunks.len());
            return Err(FsError::InvalidArgument);
        }
        let store = self.inner.store.clone();
        blocking(move || store.sync_many(&chunks)).await
    }
}

/// Most replicas one `sync_chunks` call may name.
const MAX_SYNC_BATCH: usize = 100_000;
