//! The tarpc services: the master's and the storage node's.

// The generated client methods take one argument per RPC parameter.
#![allow(clippy::too_many_arguments)]

use crate::error::FsError;
use crate::ids::{ChunkId, InodeId, NodeId, Version};
use crate::ops::*;
use crate::types::*;

/// The master: namespace, chunk map, node registry.
///
/// Mutations come as a [`Request`] with an id: a retry of one the master
/// already applied gets the answer it got the first time. A mutation of a
/// registered session ([`MasterService::open_session`]) is answered once
/// applied, and says in its [`Durability`] when it is durable; others are
/// answered once durable.
#[tarpc::service]
pub trait MasterService {
    /// Filesystem-wide facts (id, chunk size).
    async fn fs_info() -> Result<FsInfo, FsError>;
    /// The inode named `name` in `parent`.
    async fn lookup(parent: InodeId, name: String) -> Result<Attr, FsError>;
    /// The attributes of `ino`.
    async fn getattr(ino: InodeId) -> Result<Attr, FsError>;
    /// Change attributes; a size change truncates or extends the file.
    async fn setattr(req: Request<SetAttrs>) -> Result<Acked<Attr>, FsError>;
    /// Create a non-directory, non-symlink inode. `Exists` if the name is taken.
    async fn mknod(req: Request<Mknod>) -> Result<Acked<Attr>, FsError>;
    /// Create a regular file and take an open reference to it, in one
    /// round trip (what `open(O_CREAT)` needs). `Exists` if the name is taken.
    async fn create(req: Request<Create>) -> Result<Acked<NewEntry>, FsError>;
    /// Create a directory.
    async fn mkdir(req: Request<Mkdir>) -> Result<Acked<NewEntry>, FsError>;
    /// Create a symbolic link.
    async fn symlink(req: Request<Symlink>) -> Result<Acked<Attr>, FsError>;
    /// Read a symbolic link.
    async fn readlink(ino: InodeId) -> Result<String, FsError>;
    /// Add a hard link.
    async fn link(req: Request<Link>) -> Result<Acked<Attr>, FsError>;
    /// Remove a non-directory entry; returns the directory's attributes
    /// after it (none if the directory is gone meanwhile).
    async fn unlink(req: Request<Unlink>) -> Result<Acked<Option<Attr>>, FsError>;
    /// Remove an empty directory; returns the parent's attributes after it.
    async fn rmdir(req: Request<Rmdir>) -> Result<Acked<Option<Attr>>, FsError>;
    /// Rename. Returns the attributes of both directories after it (the
    /// same twice for a rename within one directory).
    async fn rename(req: Request<Rename>) -> Result<Acked<RenamedDirs>, FsError>;
    /// Up to `limit` entries of `dir` whose names sort after `after`.
    async fn readdir(dir: InodeId, after: Option<String>, limit: u32) -> Result<Vec<DirEntry>, FsError>;
    /// Take an open reference: an unlinked file lives until its last
    /// reference goes. Returns the attributes and the locations of the
    /// file's first chunks, so a small file's read needs no other call.
    async fn open(ino: InodeId) -> Result<Opened, FsError>;
    /// Drop an open reference.
    async fn release(ino: InodeId) -> Result<(), FsError>;
    /// The chunks of `ino` with index in `[first, first+count)`; holes are absent.
    async fn chunks(ino: InodeId, first: u64, count: u64) -> Result<Vec<ChunkLoc>, FsError>;
    /// Allocate a new version of chunk `index` of `ino` and pick its replica
    /// targets, avoiding the nodes in `exclude` (they just failed a write).
    async fn alloc_chunk(
        ino: InodeId,
        index: u64,
        client_host: String,
        exclude: Vec<NodeId>,
    ) -> Result<ChunkAlloc, FsError>;
    /// Make a stored chunk version current and extend the file size to cover it.
    async fn commit_chunk(req: Request<ChunkCommit>) -> Result<Acked<Attr>, FsError>;
    /// Space and inode figures.
    async fn statfs() -> Result<StatFs, FsError>;
    /// Set an xattr.
    async fn setxattr(req: Request<SetXattr>) -> Result<Acked<()>, FsError>;
    /// Get an xattr.
    async fn getxattr(ino: InodeId, name: String) -> Result<Vec<u8>, FsError>;
    /// List xattr names.
    async fn listxattr(ino: InodeId) -> Result<Vec<String>, FsError>;
    /// Remove an xattr.
    async fn removexattr(req: Request<RemoveXattr>) -> Result<Acked<()>, FsError>;
    /// Change the data policy of an inode (new children inherit a directory's).
    async fn set_policy(req: Request<SetPolicy>) -> Result<Acked<Attr>, FsError>;
    /// Change the data class of a directory or an empty file.
    async fn set_class(req: Request<SetClass>) -> Result<Acked<Attr>, FsError>;
    /// Every node the master knows.
    async fn nodes() -> Result<Vec<NodeStatus>, FsError>;
    /// A storage node announces itself.
    async fn register_node(hello: NodeHello) -> Result<Registered, FsError>;
    /// A storage node's periodic report.
    async fn heartbeat(hb: Heartbeat) -> Result<HeartbeatReply, FsError>;
    /// A storage node's list of every replica it holds (after registering,
    /// then now and then). Replicas nobody references are deleted after a
    /// grace period.
    async fn report_inventory(node: NodeId, items: Vec<InventoryItem>) -> Result<(), FsError>;
    /// A client read a replica whose blocks failed their checksum.
    async fn report_corrupt(node: NodeId, chunk: ChunkId, version: Version) -> Result<(), FsError>;
    /// Check the namespace, the chunk map and the replicas (see
    /// `stripefs fsck`); with `repair`, fix what can be fixed.
    async fn fsck(repair: bool) -> Result<FsckReport, FsError>;
    /// What the master's background workers are doing.
    async fn workers() -> Result<Vec<WorkerStatus>, FsError>;
    /// Registers a client session (the mount's `RequestId::session`) with
    /// this master process: its mutations are then answered before they
    /// are durable. Says which master process this is, and whether it
    /// waits for this session to replay the changes it lost.
    async fn open_session(session: u64, host: String) -> Result<SessionInfo, FsError>;
    /// The session has replayed every change it held (see
    /// [`SessionInfo::replay`]).
    async fn session_replayed(session: u64) -> Result<(), FsError>;
    /// The session ends (a clean unmount): nothing to wait for after a crash.
    async fn close_session(session: u64) -> Result<(), FsError>;
    /// Asks for a lease on the names of directory `dir` for `session`
    /// (docs/ARCHITECTURE.md, "Directory leases"). None: not now (another
    /// session holds it or changed the directory lately, or it is too big
    /// to list); ask again later.
    async fn lease_dir(session: u64, dir: InodeId) -> Result<Option<DirLease>, FsError>;
    /// Renews the leases `held` by `session`, gives back those `released`,
    /// and waits (up to about a second) for the master to recall one. The
    /// holder keeps one poll under way while it holds leases.
    async fn lease_poll(
        session: u64,
        held: Vec<(InodeId, u64)>,
        released: Vec<(InodeId, u64)>,
    ) -> Result<LeasePoll, FsError>;
    /// Waits until every change applied so far is durable (fsync, syncfs).
    async fn sync() -> Result<Durability, FsError>;
    /// The address of the master leading the group, as far as this one
    /// knows (None: no leader right now, e.g. during an election).
    async fn leader() -> Result<Option<String>, FsError>;
    /// A message between masters of the group (an encoded Raft request;
    /// the answer is the encoded Raft answer).
    async fn raft(msg: Vec<u8>) -> Result<Vec<u8>, FsError>;
    /// The master group as this master sees it.
    async fn group() -> Result<GroupStatus, FsError>;
    /// Changes the master group (on its leader; `Init` on any master of a
    /// group not yet initialized). A refusal says why, in words.
    async fn group_change(change: GroupChange) -> Result<GroupStatus, String>;
}

/// A storage node: stores chunk replicas, knows nothing of inodes.
#[tarpc::service]
pub trait NodeService {
    /// Blocks `[first_block, first_block+count)` of a chunk version, as stored.
    async fn read_blocks(
        chunk: ChunkId,
        version: Version,
        first_block: u32,
        count: u32,
    ) -> Result<Vec<EncodedBlock>, FsError>;
    /// Delete a chunk version (no error if absent).
    async fn delete_chunk(chunk: ChunkId, version: Version) -> Result<(), FsError>;
    /// Put replicas written earlier without `sync` on disk (fsync(2) of a client).
    async fn sync_chunks(chunks: Vec<(ChunkId, Version)>) -> Result<(), FsError>;
    /// Up to `len` bytes (at most [`crate::types::MAX_SCRATCH_IO`]) of the
    /// scratch file of `ino` from `offset`; fewer at its end. `NotFound`
    /// when this node holds no such file.
    async fn scratch_read(ino: InodeId, offset: u64, len: u32) -> Result<ScratchData, FsError>;
    /// Writes `data` into the scratch file of `ino` at `offset` (creating
    /// the file); returns the file's size after it.
    async fn scratch_write(ino: InodeId, offset: u64, data: bytes::Bytes) -> Result<u64, FsError>;
    /// Sets the size of the scratch file of `ino` (creating the file).
    async fn scratch_truncate(ino: InodeId, size: u64) -> Result<(), FsError>;
    /// Puts the scratch file of `ino` on disk (fsync(2) of a client).
    async fn scratch_sync(ino: InodeId) -> Result<(), FsError>;
    /// The scratch file of `ino` was closed after a write: its checksums
    /// are computed once it is left alone for a second (in the
    /// background; the call returns at once).
    async fn scratch_seal(ino: InodeId) -> Result<(), FsError>;
}
