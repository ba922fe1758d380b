//! The master's RPC service: one [`MasterServer`] per connection over the
//! [`MasterState`]. Reads go straight to the store; mutations become
//! [`Command`]s for the writer; background work is left to the workers.

use crate::records::NodeRecord;
use crate::state::MasterState;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use stripefs_daemon::lock;
use stripefs_proto::ops::*;
use stripefs_proto::types::*;
use stripefs_proto::{check_name, ChunkId, FsError, InodeId, MasterService, NodeId, Version};
use tarpc::context::Context;

/// Most entries returned by one readdir call.
const MAX_READDIR: u32 = 4096;
/// Most chunks returned by one chunks call.
const MAX_CHUNKS: u64 = 4096;
/// Chunk locations `open` returns with the attributes (as many as a
/// client asks for at once on a read).
const OPEN_CHUNKS: u64 = 16;
/// Largest file: chunk indexes beyond this are refused.
const MAX_FILE_BYTES: u64 = 1 << 60;

/// What one connection holds open; released when the connection ends.
struct Connection {
    shared: Arc<MasterState>,
    peer: SocketAddr,
    opens: Mutex<HashMap<InodeId, u64>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let opens = std::mem::take(&mut *lock(&self.opens));
        if !opens.is_empty() {
            tracing::info!("connection from {} closed with {} open files; releasing them", self.peer, opens.len());
        }
        for (ino, n) in opens {
            self.shared.release_lost(ino, n);
        }
    }
}

/// The service behind one connection.
#[derive(Clone)]
pub struct MasterServer {
    shared: Arc<MasterState>,
    conn: Arc<Connection>,
}

impl MasterServer {
    /// A server for a new connection from `peer`.
    pub fn new(shared: Arc<MasterState>, peer: SocketAddr) -> MasterServer {
        let conn = Arc::new(Connection { shared: shared.clone(), peer, opens: Mutex::new(HashMap::new()) });
        MasterServer { shared, conn }
    }

    /// The attributes of directory `dir` now (after a change in it); none
    /// if it is gone meanwhile (the change itself stands).
    fn dir_attr(&self, dir: InodeId) -> Option<Attr> {
        self.shared.store.inode(dir).ok().map(|r| r.to_attr(dir))
    }

    /// The reply to a create or mkdir of `attr` in `parent`.
    fn new_entry(&self, attr: Attr, parent: InodeId) -> NewEntry {
        NewEntry { attr, parent: self.dir_attr(parent) }
    }

    /// Takes an open reference to `ino` for this connection unless it holds
    /// one already (checked and taken under one lock: two copies of one
    /// retried create take one reference).
    fn take_open_once(&self, ino: InodeId) {
        let mut mine = lock(&self.conn.opens);
        if mine.contains_key(&ino) {
            return;
        }
        mine.insert(ino, 1);
        self.shared.opens.acquire(ino);
    }

    /// Drops one of this connection's open references to `ino`, if it
    /// holds one.
    fn drop_open(&self, ino: InodeId) {
        let held = {
            let mut m = lock(&self.conn.opens);
            match m.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    true
                }
                Some(_) => {
                    m.remove(&ino);
                    true
                }
                None => false,
            }
        };
        if held {
            self.shared.release(ino, 1);
        }
    }

    /// Takes an open reference to `ino` for this connection.
    fn take_open(&self, ino: InodeId) {
        self.shared.opens.acquire(ino);
        *lock(&self.conn.opens).entry(ino).or_insert(0) += 1;
    }

    fn locate(&self, index: u64, rec: crate::records::ChunkRecord) -> ChunkLoc {
        let mut replicas: Vec<(Replica, bool)> = {
            // One lock per chunk, not per replica: this is the read path.
            let corrupt = lock(&self.shared.corrupt);
            rec.replicas
                .iter()
                .filter(|id| !corrupt.contains(&(**id, rec.chunk, rec.version)))
                .filter_map(|id| self.shared.registry.replica(*id))
                .collect()
        };
        // Live replicas first. A corrupt replica is offered only when
        // nothing else is left (its other blocks may still be good).
        replicas.sort_by_key(|(_, alive)| !alive);
        if replicas.is_empty() {
            replicas = rec.replicas.iter().filter_map(|id| self.shared.registry.replica(*id)).collect();
        }
        ChunkLoc {
            index,
            chunk: rec.chunk,
            version: rec.version,
            length: rec.length,
            stored_bytes: rec.stored_bytes,
            replicas: replicas.into_iter().map(|(r, _)| r).collect(),
        }
    }
}

impl MasterService for MasterServer {
    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "fs_info", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn fs_info(self, ctx: Context) -> Result<FsInfo, FsError> {
        self.shared.store.ensure_leader_now().await?;
        Ok(FsInfo { fs_id: self.shared.store.fs_id().to_string(), chunk_size: self.shared.store.chunk_size() })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "lookup", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %parent))]
    async fn lookup(self, ctx: Context, parent: InodeId, name: String) -> Result<Attr, FsError> {
        self.shared.store.ensure_leader().await?;
        check_name(&name)?;
        let (ino, rec) = self.shared.store.lookup(parent, &name)?;
        Ok(rec.to_attr(ino))
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "getattr", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %ino))]
    async fn getattr(self, ctx: Context, ino: InodeId) -> Result<Attr, FsError> {
        self.shared.store.ensure_leader().await?;
        Ok(self.shared.store.inode(ino)?.to_attr(ino))
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "setattr", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.ino))]
    async fn setattr(self, ctx: Context, req: Request<SetAttrs>) -> Result<Acked<Attr>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        if req.op.set.size.is_some_and(|s| s > MAX_FILE_BYTES) {
            return Err(FsError::FileTooLarge);
        }
        let resized = req.op.set.size.is_some() || req.op.set.mtime.is_some();
        let acked = self.shared.store.run(req).await?;
        if let (true, Some(home)) = (resized, acked.value.home) {
            // A scratch file written again: an earlier corruption is gone.
            self.shared.scratch_rewritten(home, acked.value.ino);
        }
        Ok(acked)
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "mknod", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.parent))]
    async fn mknod(self, ctx: Context, req: Request<Mknod>) -> Result<Acked<Attr>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        self.shared.store.run(req).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "create", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.parent))]
    async fn create(self, ctx: Context, req: Request<Create>) -> Result<Acked<NewEntry>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        let parent = req.op.parent;
        let Create { parent: _, name, perm, owner } = req.op;
        let op = Mknod { parent, name, kind: FileKind::File, perm, owner, rdev: 0 };
        let replay = req.replay;
        let done =
            self.shared.store.run(Request { id: req.id, answered_below: req.answered_below, op, replay }).await?;
        // A retry on the connection that made the file already holds its
        // reference; one on a new connection (the old one was cut, and
        // released what it held) takes it. A replay takes none: the
        // client re-opens what it still has open after replaying.
        if replay.is_none() {
            self.take_open_once(done.value.ino);
        }
        Ok(Acked { value: self.new_entry(done.value, parent), durability: done.durability })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "mkdir", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.parent))]
    async fn mkdir(self, ctx: Context, req: Request<Mkdir>) -> Result<Acked<NewEntry>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        let parent = req.op.parent;
        let done = self.shared.store.run(req).await?;
        Ok(Acked { value: self.new_entry(done.value, parent), durability: done.durability })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "symlink", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.parent))]
    async fn symlink(self, ctx: Context, req: Request<Symlink>) -> Result<Acked<Attr>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        self.shared.store.run(req).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "readlink", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %ino))]
    async fn readlink(self, ctx: Context, ino: InodeId) -> Result<String, FsError> {
        self.shared.store.ensure_leader().await?;
        self.shared.store.inode(ino)?.target.ok_or(FsError::InvalidArgument)
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "link", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.ino))]
    async fn link(self, ctx: Context, req: Request<Link>) -> Result<Acked<Attr>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        self.shared.store.run(req).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "unlink", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.parent))]
    async fn unlink(self, ctx: Context, req: Request<Unlink>) -> Result<Acked<Option<Attr>>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        let parent = req.op.parent;
        let done = self.shared.store.run(req).await?;
        Ok(Acked { value: self.dir_attr(parent), durability: done.durability })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "rmdir", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.parent))]
    async fn rmdir(self, ctx: Context, req: Request<Rmdir>) -> Result<Acked<Option<Attr>>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        let parent = req.op.parent;
        let done = self.shared.store.run(req).await?;
        Ok(Acked { value: self.dir_attr(parent), durability: done.durability })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "rename", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.parent))]
    async fn rename(self, ctx: Context, req: Request<Rename>) -> Result<Acked<RenamedDirs>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        let (parent, new_parent) = (req.op.parent, req.op.new_parent);
        let done = self.shared.store.run(req).await?;
        Ok(Acked { value: (self.dir_attr(parent), self.dir_attr(new_parent)), durability: done.durability })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "readdir", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %dir))]
    async fn readdir(
        self,
        ctx: Context,
        dir: InodeId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<DirEntry>, FsError> {
        self.shared.store.ensure_leader().await?;
        let limit = limit.clamp(1, MAX_READDIR) as usize;
        self.shared.store.readdir(dir, after.as_deref(), limit)
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "open", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %ino))]
    async fn open(self, ctx: Context, ino: InodeId) -> Result<Opened, FsError> {
        self.shared.store.ensure_leader().await?;
        // The reference first: a command in flight that frees the inode
        // (proposed while nobody held it) is applied before we look, so
        // the file is either gone or kept open for us.
        self.take_open(ino);
        self.shared.store.settled(ino).await;
        let opened = (|| {
            let attr = self.shared.store.inode(ino)?.to_attr(ino);
            let chunk_size = u64::from(self.shared.store.chunk_size());
            let covered = match attr.kind {
                FileKind::File => attr.size.div_ceil(chunk_size).min(OPEN_CHUNKS),
                _ => 0,
            };
            let chunks = match covered {
                0 => Vec::new(),
                n => self.shared.store.chunks(ino, 0, n)?.into_iter().map(|(i, r)| self.locate(i, r)).collect(),
            };
            Ok(Opened { attr, covered, chunks })
        })();
        if opened.is_err() {
            self.drop_open(ino);
        }
        opened
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "release", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %ino))]
    async fn release(self, ctx: Context, ino: InodeId) -> Result<(), FsError> {
        self.shared.store.ensure_leader().await?;
        self.drop_open(ino);
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "chunks", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %ino))]
    async fn chunks(self, ctx: Context, ino: InodeId, first: u64, count: u64) -> Result<Vec<ChunkLoc>, FsError> {
        self.shared.store.ensure_leader().await?;
        let count = count.min(MAX_CHUNKS);
        let recs = self.shared.store.chunks(ino, first, count)?;
        Ok(recs.into_iter().map(|(i, r)| self.locate(i, r)).collect())
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "alloc_chunk", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %ino))]
    async fn alloc_chunk(
        self,
        ctx: Context,
        ino: InodeId,
        index: u64,
        client_host: String,
        exclude: Vec<stripefs_proto::NodeId>,
    ) -> Result<ChunkAlloc, FsError> {
        self.shared.store.ensure_leader().await?;
        let chunk_size = self.shared.store.chunk_size() as u64;
        if index.checked_mul(chunk_size).is_none_or(|o| o >= MAX_FILE_BYTES) {
            return Err(FsError::FileTooLarge);
        }
        let rec = self.shared.store.inode(ino)?;
        if rec.kind != FileKind::File {
            return Err(FsError::InvalidArgument);
        }
        let existing = self.shared.store.chunks(ino, index, 1)?.into_iter().next();
        let chunk = match existing {
            Some((_, c)) => c.chunk,
            None => stripefs_proto::ChunkId(self.shared.store.next_id().await?),
        };
        let version = stripefs_proto::Version(self.shared.store.next_id().await?);
        let want = rec.policy.replication as usize;
        // A master that has just taken the lead has not heard from every
        // node yet: wait for them (up to the time a node has to report)
        // rather than fail the write or place it on too few nodes.
        let mut targets = self.shared.registry.place(want, &client_host, &exclude);
        while targets.as_ref().map_or(true, |t| t.len() < want)
            && self.shared.registry.any_unseen()
            && self.shared.leading_for().is_some_and(|d| d < self.shared.registry.dead_after())
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            targets = self.shared.registry.place(want, &client_host, &exclude);
        }
        let targets = targets?;
        if targets.len() < rec.policy.replication as usize {
            tracing::warn!(
                "chunk {chunk} of inode {ino}: only {} of {} replicas can be placed",
                targets.len(),
                rec.policy.replication
            );
        }
        Ok(ChunkAlloc { chunk, version, targets, compression_level: rec.policy.compression_level })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "commit_chunk", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.ino, index = req.op.index))]
    async fn commit_chunk(self, ctx: Context, req: Request<ChunkCommit>) -> Result<Acked<Attr>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        self.shared.store.run(req).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "statfs", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn statfs(self, ctx: Context) -> Result<StatFs, FsError> {
        self.shared.store.ensure_leader_now().await?;
        let (total_bytes, free_bytes) = self.shared.registry.space();
        Ok(StatFs { total_bytes, free_bytes, files: self.shared.store.inode_count()? })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "setxattr", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.ino))]
    async fn setxattr(self, ctx: Context, req: Request<SetXattr>) -> Result<Acked<()>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        self.shared.store.run(req).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "getxattr", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %ino))]
    async fn getxattr(self, ctx: Context, ino: InodeId, name: String) -> Result<Vec<u8>, FsError> {
        self.shared.store.ensure_leader().await?;
        self.shared.store.inode(ino)?;
        self.shared.store.xattr(ino, &name)
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "listxattr", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %ino))]
    async fn listxattr(self, ctx: Context, ino: InodeId) -> Result<Vec<String>, FsError> {
        self.shared.store.ensure_leader().await?;
        self.shared.store.inode(ino)?;
        self.shared.store.xattr_names(ino)
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "removexattr", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.ino))]
    async fn removexattr(self, ctx: Context, req: Request<RemoveXattr>) -> Result<Acked<()>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        self.shared.store.run(req).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "set_policy", peer = %self.conn.peer, trace = %ctx.trace_id(), request = %req.id, ino = %req.op.ino))]
    async fn set_policy(self, ctx: Context, req: Request<SetPolicy>) -> Result<Acked<Attr>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        self.shared.store.run(req).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "set_class", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn set_class(self, ctx: Context, req: Request<SetClass>) -> Result<Acked<Attr>, FsError> {
        self.shared.store.ensure_leader_for(&req).await?;
        self.shared.store.run(req).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "nodes", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn nodes(self, ctx: Context) -> Result<Vec<NodeStatus>, FsError> {
        self.shared.store.ensure_leader_now().await?;
        let pending = self.shared.store.pending_deletions_by_node()?;
        let mut nodes = self.shared.registry.status();
        for n in &mut nodes {
            n.pending_deletions = pending.get(&n.id).copied().unwrap_or(0);
        }
        Ok(nodes)
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "register_node", peer = %self.conn.peer, trace = %ctx.trace_id(), host = %hello.host))]
    async fn register_node(self, ctx: Context, hello: NodeHello) -> Result<Registered, FsError> {
        self.shared.store.ensure_leader_now().await?;
        let fs_id = self.shared.store.fs_id().to_string();
        if let Some(theirs) = &hello.fs_id {
            if *theirs != fs_id {
                tracing::error!(
                    "refused node {} at {}: it belongs to filesystem {theirs}, this is {fs_id}",
                    hello.host,
                    hello.addr
                );
                return Err(FsError::PermissionDenied);
            }
        }
        let record = NodeRecord { addr: hello.addr, host: hello.host, zone: hello.zone };
        let node_id = self.shared.store.register_node(hello.node_id, record.clone()).await?;
        tracing::info!("node {node_id} registered: {} host={} zone={}", record.addr, record.host, record.zone);
        self.shared.registry.registered(node_id, record);
        // A node (back) is a new source and target for copies.
        self.shared.copies.wake();
        Ok(Registered { node_id, fs_id })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "heartbeat", peer = %self.conn.peer, trace = %ctx.trace_id(), node = %hb.node))]
    async fn heartbeat(self, ctx: Context, hb: Heartbeat) -> Result<HeartbeatReply, FsError> {
        self.shared.store.ensure_leader_now().await?;
        if !self.shared.registry.heartbeat(&hb) {
            return Err(FsError::NotFound);
        }
        for cmd in self.shared.copies.reported(hb.node, &hb.replicated, &hb.failed, &self.shared) {
            if let Err(e) = self.shared.store.execute(cmd).await {
                tracing::error!("recording a copy made by node {}: {e}", hb.node);
            }
        }
        for (chunk, version) in &hb.corrupt {
            self.shared.corrupt_replica(hb.node, *chunk, *version).await;
        }
        let replicate = self.shared.copies.take_orders(hb.node);
        let delete = if self.shared.store.has_deletions(hb.node)? {
            self.shared.store.take_deletions(hb.node, 1000).await?
        } else {
            Vec::new()
        };
        Ok(HeartbeatReply { delete, replicate, term: self.shared.store.term() })
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "report_inventory", peer = %self.conn.peer, trace = %ctx.trace_id(), node = %node))]
    async fn report_inventory(self, ctx: Context, node: NodeId, items: Vec<InventoryItem>) -> Result<(), FsError> {
        self.shared.store.ensure_leader_now().await?;
        if self.shared.registry.replica(node).is_none() {
            return Err(FsError::NotFound);
        }
        // Garbage collection compares it with the chunk map in the background.
        self.shared.gc_queue.push(node, items);
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "report_corrupt", peer = %self.conn.peer, trace = %ctx.trace_id(), node = %node))]
    async fn report_corrupt(self, ctx: Context, node: NodeId, chunk: ChunkId, version: Version) -> Result<(), FsError> {
        self.shared.store.ensure_leader_now().await?;
        self.shared.corrupt_replica(node, chunk, version).await;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "fsck", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn fsck(self, ctx: Context, repair: bool) -> Result<FsckReport, FsError> {
        self.shared.store.ensure_leader().await?;
        tracing::info!("fsck requested by {}{}", self.conn.peer, if repair { " (repair)" } else { "" });
        crate::fsck::online(self.shared.clone(), repair).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "workers", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn workers(self, ctx: Context) -> Result<Vec<WorkerStatus>, FsError> {
        self.shared.store.ensure_leader_now().await?;
        Ok(self.shared.workers.status())
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "open_session", peer = %self.conn.peer, trace = %ctx.trace_id(), session = %format_args!("{session:x}")))]
    async fn open_session(self, ctx: Context, session: u64, host: String) -> Result<SessionInfo, FsError> {
        self.shared.store.ensure_leader_now().await?;
        self.shared.store.open_session(session, host).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "session_replayed", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn session_replayed(self, ctx: Context, session: u64) -> Result<(), FsError> {
        self.shared.store.ensure_leader_now().await?;
        self.shared.store.session_replayed(session);
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "close_session", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn close_session(self, ctx: Context, session: u64) -> Result<(), FsError> {
        self.shared.store.ensure_leader_now().await?;
        self.shared.store.close_session(session).await
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "lease_dir", peer = %self.conn.peer, trace = %ctx.trace_id(), ino = %dir))]
    async fn lease_dir(self, ctx: Context, session: u64, dir: InodeId) -> Result<Option<DirLease>, FsError> {
        self.shared.store.ensure_leader().await?;
        self.shared.store.lease_dir(session, dir)
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "lease_poll", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn lease_poll(
        self,
        ctx: Context,
        session: u64,
        held: Vec<(InodeId, u64)>,
        released: Vec<(InodeId, u64)>,
    ) -> Result<LeasePoll, FsError> {
        // A master that is not (or no longer) sure it leads renews nothing.
        self.shared.store.ensure_leader_now().await?;
        Ok(self.shared.store.lease_poll(session, held, released).await)
    }

    #[tracing::instrument(level = "debug", name = "rpc", skip_all, fields(op = "sync", peer = %self.conn.peer, trace = %ctx.trace_id()))]
    async fn sync(self, ctx: Context) -> Result<Durability, FsError> {
        self.shared.store.ensure_leader().await?;
        self.shared.store.sync().await
    }

    async fn leader(self, _: Context) -> Result<Option<String>, FsError> {
        Ok(self.shared.store.leader_addr())
    }

    async fn raft(self, _: Context, msg: Vec<u8>) -> Result<Vec<u8>, FsError> {
        crate::raft::network::serve(self.shared.store.raft(), &msg).await
    }

    async fn group(self, _: Context) -> Result<GroupStatus, FsError> {
        Ok(self.shared.store.group_status())
    }

    async fn group_change(self, _: Context, change: GroupChange) -> Result<GroupStatus, String> {
        tracing::info!("master group change asked: {change:?}");
        self.shared.store.group_change(change).await
    }
}
