//! File data: buffered writes, chunk uploads down the replica chain,
//! reads from the nearest replica through the block cache.

use crate::core::FsCore;
use crate::error::{ClientError, Result, TransportError};
use crate::file::{DirtyChunk, FileState, OldChunk};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use stripefs_proto::block::{self, BlockEncoder, BLOCK_SIZE};
use stripefs_proto::data_conn::{DataError, WriteHeader};
use stripefs_proto::types::{ChunkCommit, ChunkLoc, EncodedBlock, Replica};
use stripefs_proto::{ChunkId, FsError, InodeId, NodeId, Version};

use crate::conn::DATA_TIMEOUT;

/// Uploads of one file in flight at once.
const MAX_INFLIGHT_UPLOADS: usize = 4;
/// Blocks fetched ahead on sequential reads (1 MiB).
const READAHEAD_BLOCKS: u32 = 16;
/// Chunk locations fetched per master call on reads.
const LOC_PREFETCH: u64 = 16;
/// Attempts at placing and writing one chunk.
const WRITE_ATTEMPTS: usize = 3;
/// Largest file size.
const MAX_FILE_BYTES: u64 = 1 << 60;

impl FsCore {
    /// Writes `data` at `offset` through handle `fh` (buffered).
    pub async fn write(self: &Arc<Self>, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let (ino, write) = self.handle(fh)?;
        if !write {
            return Err(ClientError::BadHandle);
        }
        let end =
            offset.checked_add(data.len() as u64).filter(|e| *e <= MAX_FILE_BYTES).ok_or(FsError::FileTooLarge)?;
        if let Some(sc) = self.scratch_of(ino) {
            return self.scratch_write(&sc, offset, data).await;
        }
        let state = self.state_of(ino)?;
        let mut guard = state.lock().await;
        let st = guard.as_mut().ok_or(ClientError::BadHandle)?;
        if let Some(e) = st.error.take() {
            return Err(e);
        }
        let c = self.chunk_size;
        let mut pos = 0usize;
        while pos < data.len() {
            let at = offset + pos as u64;
            let index = at / c;
            let in_chunk = (at % c) as usize;
            let n = (c as usize - in_chunk).min(data.len() - pos);
            let d = st.dirty.entry(index).or_insert_with(|| DirtyChunk::new(&self.dirty));
            let before = d.data.len();
            d.write(in_chunk, &data[pos..pos + n], c as usize);
            st.dirty_bytes += (d.data.len() - before) as u64;
            let full = d.covers(0, c as usize);
            pos += n;
            if full {
                self.start_upload(st, index).await;
            }
        }
        st.size = st.size.max(end);
        if self.dirty.over() {
            self.relieve(st).await;
        }
        Ok(data.len() as u32)
    }

    /// The mount holds more unwritten data than its budget (`dirty_mb`):
    /// uploads this file's buffers, then those of other open files, and
    /// waits until uploads bring the mount back under its budget. A writer
    /// faster than the nodes waits here instead of filling memory.
    async fn relieve(self: &Arc<Self>, st: &mut FileState) {
        let own: Vec<u64> = st.dirty.keys().copied().collect();
        for i in own {
            self.start_upload(st, i).await;
        }
        while self.dirty.over() {
            self.push_out_others(st.ino).await;
            if !self.dirty.over() {
                break;
            }
            // Uploads give their bytes back when they end; look again now
            // and then in case another file's writer buffered meanwhile.
            self.dirty.wait_freed(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Starts uploading the buffers of other open files while they hold
    /// more than half the budget. Files busy with another request are
    /// skipped: their own writer uploads.
    async fn push_out_others(self: &Arc<Self>, me: InodeId) {
        for (ino, state) in self.open_states() {
            // Half the budget left in buffers keeps appends to them cheap
            // (an uploaded partial chunk is read back and rewritten when
            // the file grows on).
            if ino == me || self.dirty.buffered() <= self.dirty.limit() / 2 {
                continue;
            }
            let Ok(mut guard) = state.try_lock() else { continue };
            let Some(st) = guard.as_mut() else { continue };
            let indexes: Vec<u64> = st.dirty.keys().copied().collect();
            for i in indexes {
                self.start_upload(st, i).await;
            }
        }
    }

    /// Starts uploading the buffered chunk `index` in the background.
    async fn start_upload(self: &Arc<Self>, st: &mut FileState, index: u64) {
        let Some(mut chunk) = st.dirty.remove(&index) else { return };
        chunk.held.uploading();
        st.dirty_bytes = st.dirty_bytes.saturating_sub(chunk.data.len() as u64);
        // An earlier upload of the same chunk must land first: this one is
        // built on top of it.
        while let Some(pos) = st.uploads.iter().position(|(i, _)| *i == index) {
            if let Some((i, h)) = st.uploads.remove(pos) {
                let r = h.await;
                st.reap(i, r);
            }
        }
        while st.uploads.len() >= MAX_INFLIGHT_UPLOADS {
            if let Some((i, h)) = st.uploads.pop_front() {
                let r = h.await;
                st.reap(i, r);
            }
        }
        let old = st.old_chunk(index, self.chunk_size);
        let core = self.clone();
        let ino = st.ino;
        let h = tokio::spawn(async move { core.upload_chunk(ino, index, chunk, old, false).await });
        st.uploads.push_back((index, h));
    }

    /// Uploads everything buffered and waits for every upload; reports the
    /// first error of any of them.
    pub(crate) async fn flush_state(self: &Arc<Self>, st: &mut FileState) -> Result<()> {
        let indexes: Vec<u64> = st.dirty.keys().copied().collect();
        for i in indexes {
            self.start_upload(st, i).await;
        }
        while let Some((i, h)) = st.uploads.pop_front() {
            let r = h.await;
            st.reap(i, r);
        }
        match st.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Flushes, then has every replica of every chunk written since the
    /// last sync put it on disk.
    pub(crate) async fn sync_state(self: &Arc<Self>, st: &mut FileState) -> Result<()> {
        self.flush_state(st).await?;
        let mut by_node: BTreeMap<String, Vec<(stripefs_proto::ChunkId, stripefs_proto::Version)>> = BTreeMap::new();
        for loc in st.unsynced.values() {
            for r in &loc.replicas {
                by_node.entry(r.addr.clone()).or_default().push((loc.chunk, loc.version));
            }
        }
        // Every node syncs its replicas at the same time: the slowest
        // disk, not the sum of them, sets how long fsync takes (so over
        // the shared connections: blocking ones would go one by one).
        let calls = by_node.into_iter().map(|(addr, chunks)| async move {
            let r = self
                .nodes
                .call_shared(&addr, DATA_TIMEOUT, |c, ctx| {
                    let chunks = chunks.clone();
                    async move { c.sync_chunks(ctx, chunks).await }
                })
                .await;
            (addr, chunks, r)
        });
        let mut synced: std::collections::HashSet<(stripefs_proto::ChunkId, stripefs_proto::Version)> =
            std::collections::HashSet::new();
        let mut last_err = None;
        for (addr, chunks, r) in futures::future::join_all(calls).await {
            match r {
                Ok(()) => synced.extend(chunks),
                // A node that died since the upload: its replica is lost and
                // will be re-created from the others, which count.
                Err(e) => {
                    tracing::warn!("fsync: node {addr} could not sync its replicas: {e}");
                    last_err = Some(e);
                }
            }
        }
        // Every chunk must be on disk on at least one node.
        if let Some(missing) = st.unsynced.values().find(|l| !synced.contains(&(l.chunk, l.version))) {
            tracing::error!("fsync: no replica of chunk {} v{} could be synced", missing.chunk, missing.version);
            return Err(last_err.unwrap_or(ClientError::Fs(FsError::Unavailable)));
        }
        st.unsynced.clear();
        Ok(())
    }

    /// Builds the new version of chunk `index` (merging with the old one
    /// when the writes do not cover it), stores it and commits it.
    async fn upload_chunk(
        self: Arc<Self>,
        ino: InodeId,
        index: u64,
        mut chunk: DirtyChunk,
        old: OldChunk,
        sync: bool,
    ) -> Result<ChunkLoc> {
        // The buffer counts in the mount's budget until the upload ends.
        let _held = std::mem::take(&mut chunk.held);
        let old = match old {
            OldChunk::None => None,
            OldChunk::Known(l) => Some(l),
            OldChunk::Ask => {
                self.master.call(|c, ctx| async move { c.chunks(ctx, ino, index, 1).await }).await?.into_iter().next()
            }
        };
        let data = match old {
            Some(old) if !chunk.covers(0, old.length as usize) => {
                let mut base = self.read_chunk_range(&old, 0, old.length as u64, false).await?;
                chunk.overlay(&mut base);
                base
            }
            _ => chunk.into_bytes(),
        };
        self.store_chunk(ino, index, data, sync).await
    }

    /// Stores `data` as a new version of chunk `index` on fresh targets and
    /// commits it; retries on new targets when a node fails.
    async fn store_chunk(&self, ino: InodeId, index: u64, data: Vec<u8>, sync: bool) -> Result<ChunkLoc> {
        let length = data.len() as u32;
        // Uncompressed blocks are slices of this buffer, not copies.
        let data = Bytes::from(data);
        let mut encoded: Option<(i8, Arc<Vec<EncodedBlock>>)> = None;
        let mut last_err = ClientError::Fs(FsError::Unavailable);
        let host = self.cfg.host.clone();
        // Nodes that failed this upload: the next placement avoids them.
        let mut exclude: Vec<stripefs_proto::NodeId> = Vec::new();
        for attempt in 0..WRITE_ATTEMPTS {
            let alloc = match self.alloc_waiting(ino, index, &host, &exclude).await {
                Ok(a) => a,
                // Every node left has failed this upload (full disks, say):
                // their error is the answer, not "no node yet".
                Err(ClientError::Fs(FsError::Unavailable)) if !exclude.is_empty() => return Err(last_err),
                Err(e) => return Err(e),
            };
            let Some((first, rest)) = alloc.targets.split_first() else {
                return Err(FsError::Unavailable.into());
            };
            let blocks = match &encoded {
                Some((level, b)) if *level == alloc.compression_level => b.clone(),
                _ => {
                    let level = alloc.compression_level;
                    let raw = data.clone();
                    let b = tokio::task::spawn_blocking(move || BlockEncoder::new(level).encode_shared(&raw))
                        .await
                        .map_err(|e| TransportError::task("encoder", e))?;
                    let b = Arc::new(b);
                    encoded = Some((level, b.clone()));
                    b
                }
            };
            let chain = rest.iter().map(|r| r.addr.clone()).collect();
            let header = WriteHeader::new(alloc.chunk, alloc.version, length, &blocks, chain, sync, DATA_TIMEOUT);
            let stored = self.send_chunk(&first.addr, header, blocks.clone()).await;
            let stored_bytes = match stored {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(
                        "writing chunk {index} of inode {ino} to {} (attempt {}): {e}",
                        first.addr,
                        attempt + 1
                    );
                    match &e {
                        // The first node failed to forward: one of the others is at fault.
                        ClientError::Fs(FsError::Unavailable) => exclude.extend(rest.iter().map(|r| r.node)),
                        // The first node itself is unreachable or failed.
                        _ => exclude.push(first.node),
                    }
                    last_err = e;
                    continue;
                }
            };
            let commit = ChunkCommit {
                ino,
                index,
                chunk: alloc.chunk,
                version: alloc.version,
                length,
                stored_bytes,
                replicas: alloc.targets.iter().map(|r| r.node).collect(),
            };
            let committed = self.master.mutate(commit).await;
            // Size, times and allocated bytes moved.
            self.listings.changed(ino);
            committed?;
            return Ok(ChunkLoc {
                index,
                chunk: alloc.chunk,
                version: alloc.version,
                length,
                stored_bytes,
                replicas: alloc.targets,
            });
        }
        Err(last_err)
    }

    /// Writes a chunk to the node at `addr` (and down its chain) over a
    /// data connection, on the blocking pool: the blocks go out from their
    /// own buffers, with no copy.
    async fn send_chunk(&self, addr: &str, header: WriteHeader, blocks: Arc<Vec<EncodedBlock>>) -> Result<u64> {
        let (pool, addr, rt) = (self.data.clone(), addr.to_string(), tokio::runtime::Handle::current());
        let sent = tokio::task::spawn_blocking(move || {
            let payload: Vec<&[u8]> = blocks.iter().map(|b| &b.data[..]).collect();
            pool.write(&rt, &addr, &header, &payload)
        })
        .await
        .map_err(|e| TransportError::task("upload", e))?;
        sent.map_err(|e| match e {
            DataError::Refused(e) => ClientError::Fs(e),
            DataError::Transport(e) => TransportError::Data(e).into(),
        })
    }

    /// Allocates a chunk version; while no storage node is live (e.g. just
    /// after a master restart, before the nodes have registered again),
    /// waits up to `master_timeout` instead of failing. With nodes to
    /// `exclude` (they failed this upload), fails at once instead.
    async fn alloc_waiting(
        &self,
        ino: InodeId,
        index: u64,
        host: &str,
        exclude: &[stripefs_proto::NodeId],
    ) -> Result<stripefs_proto::types::ChunkAlloc> {
        let deadline = std::time::Instant::now() + self.cfg.master_timeout;
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            let r = self
                .master
                .call(|c, ctx| {
                    let (host, exclude) = (host.to_string(), exclude.to_vec());
                    async move { c.alloc_chunk(ctx, ino, index, host, exclude).await }
                })
                .await;
            match r {
                Err(ClientError::Fs(FsError::Unavailable))
                    if exclude.is_empty() && std::time::Instant::now() + backoff < deadline =>
                {
                    tracing::info!("no live storage node for chunk {index} of inode {ino} yet; waiting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
                r => return r,
            }
        }
    }

    /// Reads up to `size` bytes at `offset` through handle `fh`.
    pub async fn read(self: &Arc<Self>, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let (ino, _) = self.handle(fh)?;
        if let Some(sc) = self.scratch_of(ino) {
            return self.scratch_read(&sc, offset, size).await;
        }
        let state = self.state_of(ino)?;
        for attempt in 0..2 {
            let (end, locs, sequential) = {
                let mut guard = state.lock().await;
                let st = guard.as_mut().ok_or(ClientError::BadHandle)?;
                if st.has_pending() {
                    self.flush_state(st).await?;
                }
                let end = offset.saturating_add(size as u64).min(st.size);
                if offset >= end {
                    return Ok(Vec::new());
                }
                let locs = self.locations(st, offset, end).await?;
                let sequential = st.last_read_end == offset;
                st.last_read_end = end;
                (end, locs, sequential)
            };
            match self.read_range(offset, end, &locs, sequential).await {
                Ok(data) => return Ok(data),
                Err(e) if attempt == 0 => {
                    // A chunk was rewritten by another client since we
                    // looked, or its nodes moved (a node restarted on a new
                    // address): forget the locations and try again.
                    tracing::debug!("read of inode {ino} failed ({e}); asking the master where its chunks are");
                    if let Some(st) = state.lock().await.as_mut() {
                        st.locs.clear();
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(FsError::Stale.into())
    }

    async fn read_range(
        &self,
        offset: u64,
        end: u64,
        locs: &[(u64, Option<ChunkLoc>)],
        sequential: bool,
    ) -> Result<Vec<u8>> {
        let c = self.chunk_size;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (index, loc) in locs {
            let start = offset.max(index * c) - index * c;
            let stop = end.min((index + 1) * c) - index * c;
            match loc {
                None => out.resize(out.len() + (stop - start) as usize, 0),
                Some(l) => out.extend(self.read_chunk_range(l, start, stop, sequential).await?),
            }
        }
        Ok(out)
    }

    /// Chunk locations covering `[offset, end)`, from the file's cache or
    /// the master (fetching a few more ahead).
    async fn locations(&self, st: &mut FileState, offset: u64, end: u64) -> Result<Vec<(u64, Option<ChunkLoc>)>> {
        let c = self.chunk_size;
        let (first, last) = (offset / c, (end - 1) / c);
        if (first..=last).any(|i| !st.locs.contains_key(&i)) {
            let last_chunk = st.size.saturating_sub(1) / c;
            let count =
                (last - first + 1).max(LOC_PREFETCH).min(last_chunk.saturating_sub(first) + 1).max(last - first + 1);
            let ino = st.ino;
            let found = self.master.call(|cl, ctx| async move { cl.chunks(ctx, ino, first, count).await }).await?;
            st.learn_locations(first, count, found);
        }
        Ok((first..=last).map(|i| (i, st.locs.get(&i).cloned().flatten())).collect())
    }

    /// Bytes `[start, stop)` of a chunk; bytes past its length are zeros.
    async fn read_chunk_range(&self, loc: &ChunkLoc, start: u64, stop: u64, readahead: bool) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity((stop - start) as usize);
        let valid_end = stop.min(loc.length as u64);
        if start < valid_end {
            let bs = BLOCK_SIZE as u64;
            let total_blocks = (loc.length as u64).div_ceil(bs) as u32;
            let first = (start / bs) as u32;
            let last = ((valid_end - 1) / bs) as u32;
            let mut b = first;
            while b <= last {
                let blocks = match self.cache.get(loc.chunk, loc.version, b) {
                    Some(d) => vec![d],
                    None => {
                        let mut n = 1;
                        while b + n <= last && !self.cache.contains(loc.chunk, loc.version, b + n) {
                            n += 1;
                        }
                        if readahead {
                            n = n.max(READAHEAD_BLOCKS.min(total_blocks - b));
                        }
                        self.fetch_blocks(loc, b, n).await?
                    }
                };
                for (k, d) in blocks.iter().enumerate() {
                    let blk = b + k as u32;
                    if blk > last {
                        break;
                    }
                    let blk_start = blk as u64 * bs;
                    let from = start.max(blk_start) - blk_start;
                    let to = (valid_end.min(blk_start + d.len() as u64)).saturating_sub(blk_start);
                    if from < to {
                        out.extend_from_slice(&d[from as usize..to as usize]);
                    }
                }
                b += (blocks.len() as u32).min(last - b + 1).max(1);
            }
        }
        out.resize((stop - start) as usize, 0);
        Ok(out)
    }

    /// Replicas in order of preference: this host, this zone, the rest.
    fn preferred(&self, replicas: &[Replica]) -> Vec<Replica> {
        let mut r = replicas.to_vec();
        r.sort_by_key(|x| {
            if x.host == self.cfg.host {
                0
            } else if self.cfg.zone.as_deref() == Some(x.zone.as_str()) {
                1
            } else {
                2
            }
        });
        r
    }

    /// Fetches, verifies and caches `count` blocks from the first replica
    /// that serves them intact.
    async fn fetch_blocks(&self, loc: &ChunkLoc, first: u32, count: u32) -> Result<Vec<Bytes>> {
        let mut last_err = ClientError::Fs(FsError::Unavailable);
        for r in self.preferred(&loc.replicas) {
            let (chunk, version) = (loc.chunk, loc.version);
            let local = match self.cfg.local_reads {
                true => self.local.read_blocks(r.node, &r.addr, chunk, version, first, count).await,
                false => None,
            };
            let got = match local {
                Some(Ok(blocks)) => Ok(blocks),
                // The node does not hold it: neither would it over TCP.
                Some(Err(e @ ClientError::Fs(FsError::NotFound))) => Err(e),
                Some(Err(ClientError::Fs(FsError::Corrupt))) => {
                    // Read from the file itself: the node cannot know.
                    self.report_corrupt(r.node, chunk, version).await;
                    last_err = FsError::Corrupt.into();
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!("local read of chunk {chunk} v{version} failed, reading over TCP: {e}");
                    self.read_remote(&r.addr, chunk, version, first, count).await
                }
                None => self.read_remote(&r.addr, chunk, version, first, count).await,
            };
            let blocks = match got {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => {
                    last_err = FsError::NotFound.into();
                    continue;
                }
                Err(e) => {
                    tracing::warn!("reading chunk {chunk} v{version} from node {} ({}): {e}", r.node, r.addr);
                    last_err = e;
                    continue;
                }
            };
            let decoded = if blocks.len() > 2 {
                tokio::task::spawn_blocking(move || decode_each(&blocks))
                    .await
                    .map_err(|e| TransportError::task("decoder", e))?
            } else {
                decode_each(&blocks)
            };
            match decoded {
                Ok(d) => {
                    for (k, b) in d.iter().enumerate() {
                        self.cache.put(chunk, version, first + k as u32, b.clone());
                    }
                    return Ok(d);
                }
                Err(e) => {
                    // The node sent blocks that do not match their checksum:
                    // have the master replace that replica (rare: the node
                    // checks too, and reports what it catches itself).
                    tracing::error!("chunk {chunk} v{version} on node {} ({}) failed its checksum", r.node, r.addr);
                    self.report_corrupt(r.node, chunk, version).await;
                    last_err = e.into();
                }
            }
        }
        Err(last_err)
    }

    /// Blocks of a replica read over TCP from the node at `addr`.
    async fn read_remote(
        &self,
        addr: &str,
        chunk: ChunkId,
        version: Version,
        first: u32,
        count: u32,
    ) -> Result<Vec<EncodedBlock>> {
        self.nodes
            .call(addr, DATA_TIMEOUT, |c, ctx| async move { c.read_blocks(ctx, chunk, version, first, count).await })
            .await
    }

    /// Has the master replace a replica that failed its checks here.
    async fn report_corrupt(&self, node: NodeId, chunk: ChunkId, version: Version) {
        if let Err(e) =
            self.master.call(|c, ctx| async move { c.report_corrupt(ctx, node, chunk, version).await }).await
        {
            tracing::warn!("reporting the corrupt replica to the master: {e}");
        }
    }
}

fn decode_each(blocks: &[EncodedBlock]) -> std::result::Result<Vec<Bytes>, FsError> {
    blocks.iter().map(block::decode).collect()
}
