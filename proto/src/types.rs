//! Records carried by requests and replies.

use crate::ids::{ChunkId, InodeId, NodeId, Version};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl FileKind {
    /// The kind named by the file-type bits (`S_IFMT`) of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0o170000 {
            0o100000 => FileKind::File,
            0o040000 => FileKind::Dir,
            0o120000 => FileKind::Symlink,
            0o010000 => FileKind::Fifo,
            0o140000 => FileKind::Socket,
            0o020000 => FileKind::CharDevice,
            0o060000 => FileKind::BlockDevice,
            _ => return None,
        })
    }
}

/// A point in time, as seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp {
    /// Seconds since the epoch (may be negative).
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        if t.secs >= 0 {
            UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + Duration::from_nanos(t.nanos as u64)
        }
    }
}

/// Per-directory data policy, inherited by new inodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Number of replicas of each chunk (1..=8).
    pub replication: u8,
    /// zstd level for blocks; 0 stores blocks raw.
    pub compression_level: i8,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { replication: 2, compression_level: 1 }
    }
}

impl Policy {
    /// Largest replication factor accepted.
    pub const MAX_REPLICATION: u8 = 8;
    /// Largest zstd level accepted.
    pub const MAX_COMPRESSION_LEVEL: i8 = 19;

    /// The form shown in the `user.stripefs.policy` xattr and by the CLI.
    pub fn describe(&self) -> String {
        let compression =
            if self.compression_level == 0 { "off".to_string() } else { format!("zstd:{}", self.compression_level) };
        format!("replication={} compression={}", self.replication, compression)
    }
}

/// Most bytes one `scratch_read` or `scratch_write` carries.
pub const MAX_SCRATCH_IO: u32 = 4 << 20;

/// What `scratch_read` returns: the bytes, and the crc32 of each 64 KiB
/// block they cover when the node has checksums of the file as it is now
/// (computed once the file was left alone after a close) and the read
/// starts on a block boundary; empty otherwise. The reader checks them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScratchData {
    /// The bytes (fewer than asked at the end of the file).
    pub data: bytes::Bytes,
    /// crc32 of `data`'s 64 KiB blocks, in order (the last may be short).
    pub crcs: Vec<u32>,
}

impl ScratchData {
    /// The index of the first of `data`'s blocks that fails its crc, if any.
    pub fn bad_block(&self) -> Option<usize> {
        let blocks = self.data.chunks(crate::block::BLOCK_SIZE);
        self.crcs.iter().zip(blocks).position(|(crc, b)| crc32fast::hash(b) != *crc)
    }
}

/// Where a file's data lives: the class of a directory is inherited by
/// what is created in it, like its [`Policy`] (docs/SEMANTICS.md,
/// "Scratch files").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataClass {
    /// Chunks of checksummed blocks, replicated across nodes (the default).
    #[default]
    Replicated,
    /// Scratch: a new file keeps its data as one plain file on the storage
    /// node of the host that created it (its home), read and written there
    /// through FUSE passthrough; lost with that host.
    Scratch {
        /// Remove the file once its home node has been declared gone.
        remove_lost: bool,
    },
}

impl DataClass {
    /// Whether this is the scratch class.
    pub fn is_scratch(&self) -> bool {
        matches!(self, DataClass::Scratch { .. })
    }

    /// The policy and the class as shown by the CLI and the
    /// `user.stripefs.policy` xattr: the class only when it is not the
    /// default (`replication=2 compression=zstd:1 class=scratch`).
    pub fn with_policy(&self, policy: &Policy) -> String {
        match self {
            DataClass::Replicated => policy.describe(),
            c => format!("{} class={}", policy.describe(), c.describe()),
        }
    }

    /// The form shown by the CLI and the `user.stripefs.policy` xattr.
    pub fn describe(&self) -> &'static str {
        match self {
            DataClass::Replicated => "replicated",
            DataClass::Scratch { remove_lost: false } => "scratch",
            DataClass::Scratch { remove_lost: true } => "scratch(remove-lost)",
        }
    }
}

/// What `create` and `mkdir` return: the new inode, and its directory as
/// the change left it (the kernel asks for the directory's attributes right
/// after every change in it; the client answers from this).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEntry {
    /// The new inode.
    pub attr: Attr,
    /// The directory it was made in (none if it is gone meanwhile).
    pub parent: Option<Attr>,
}

/// What `open` returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    /// The inode's attributes.
    pub attr: Attr,
    /// Chunk indexes `[0, covered)` are described by `chunks`: the ones
    /// missing from it are holes.
    pub covered: u64,
    /// Locations of the existing chunks among the first `covered`.
    pub chunks: Vec<ChunkLoc>,
}

/// The attributes of an inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    /// Inode number.
    pub ino: InodeId,
    /// File kind.
    pub kind: FileKind,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    /// Hard link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (for a symlink: target length).
    pub size: u64,
    /// Last access.
    pub atime: Timestamp,
    /// Last data change.
    pub mtime: Timestamp,
    /// Last inode change.
    pub ctime: Timestamp,
    /// Creation.
    pub crtime: Timestamp,
    /// Device number for device nodes.
    pub rdev: u32,
    /// Data policy.
    pub policy: Policy,
    /// Bytes of data the file's chunks hold (holes excluded): `st_blocks`.
    pub allocated_bytes: u64,
    /// Where new files' data lives (directories), or this file's.
    pub class: DataClass,
    /// The node holding a scratch file's data as one plain file; `None`
    /// for every other inode, and for a scratch file made on a host with
    /// no node (it keeps the replicated layout).
    pub home: Option<NodeId>,
}

/// A time to set with `setattr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    /// The server's current time.
    Now,
    /// A given time.
    At(Timestamp),
}

/// The changes of a `setattr` request; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<TimeSet>,
    /// New modification time.
    pub mtime: Option<TimeSet>,
}

/// Who creates an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// One directory entry with the attributes of its target (readdirplus).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// Entry name.
    pub name: String,
    /// Attributes of the inode it names.
    pub attr: Attr,
}

/// Where a replica lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The node holding it.
    pub node: NodeId,
    /// The node's RPC address.
    pub addr: String,
    /// The node's host name (for read-local).
    pub host: String,
    /// The node's zone.
    pub zone: String,
}

/// A chunk of a file and where its replicas are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    /// Chunk index in the file: it holds bytes `[index*C, (index+1)*C)`.
    pub index: u64,
    /// Chunk id.
    pub chunk: ChunkId,
    /// Current version.
    pub version: Version,
    /// Valid bytes in the chunk; bytes past it (within the file size) read as zeros.
    pub length: u32,
    /// Bytes the replica takes on disk (after compression), as reported at commit.
    pub stored_bytes: u64,
    /// Replicas, in no particular order.
    pub replicas: Vec<Replica>,
}

/// The master's answer to a chunk allocation: where to write a new version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkAlloc {
    /// Chunk id (the existing one when the chunk is rewritten).
    pub chunk: ChunkId,
    /// The new version to write.
    pub version: Version,
    /// Replica targets, in chain order (first one receives from the client).
    pub targets: Vec<Replica>,
    /// zstd level to store the blocks with (0: raw).
    pub compression_level: i8,
}

/// The client's report that a new chunk version is stored on all targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkCommit {
    /// File.
    pub ino: InodeId,
    /// Chunk index in the file.
    pub index: u64,
    /// Chunk id from the allocation.
    pub chunk: ChunkId,
    /// Version from the allocation.
    pub version: Version,
    /// Valid bytes in the chunk.
    pub length: u32,
    /// Bytes taken on disk by one replica.
    pub stored_bytes: u64,
    /// Nodes that acknowledged the write.
    pub replicas: Vec<NodeId>,
}

/// Filesystem-wide facts a client needs at mount time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    /// The filesystem's unique id (hex).
    pub fs_id: String,
    /// Chunk size in bytes, fixed at creation.
    pub chunk_size: u32,
}

/// Space figures for statfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    /// Sum of live nodes' capacity, in bytes (a disk several nodes share counted once).
    pub total_bytes: u64,
    /// Sum of live nodes' free space, in bytes (a shared disk counted once).
    pub free_bytes: u64,
    /// Number of inodes.
    pub files: u64,
}

/// A storage node as the master sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: NodeId,
    /// RPC address.
    pub addr: String,
    /// Host name.
    pub host: String,
    /// Zone name.
    pub zone: String,
    /// Whether it heartbeated recently.
    pub alive: bool,
    /// Capacity of its data disk, in bytes.
    pub capacity_bytes: u64,
    /// Free space on its data disk, in bytes.
    pub free_bytes: u64,
    /// Bytes used by chunk replicas.
    pub used_bytes: u64,
    /// Number of chunk replicas it holds.
    pub chunk_count: u64,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
    /// Replica deletions waiting for this node (garbage not yet reclaimed).
    pub pending_deletions: u64,
    /// What its background workers did at its last heartbeat.
    pub workers: Vec<WorkerStatus>,
}

/// A node's registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHello {
    /// The id it had before, if any.
    pub node_id: Option<NodeId>,
    /// The filesystem it belongs to, if it was registered before.
    pub fs_id: Option<String>,
    /// Address clients and peers reach it at.
    pub addr: String,
    /// Host name.
    pub host: String,
    /// Zone name.
    pub zone: String,
}

/// A node's periodic report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Reporting node.
    pub node: NodeId,
    /// Capacity of its data disk, in bytes.
    pub capacity_bytes: u64,
    /// Free space on its data disk, in bytes.
    pub free_bytes: u64,
    /// Which filesystem holds its chunks: the same text for nodes whose
    /// chunks share one (empty when unknown). See `disk_identity` in the node.
    pub disk: String,
    /// Bytes used by chunk replicas.
    pub used_bytes: u64,
    /// Number of chunk replicas held.
    pub chunk_count: u64,
    /// Replicas copied here on the master's order since the last heartbeat.
    pub replicated: Vec<(ChunkId, Version)>,
    /// Ordered copies that failed since the last heartbeat.
    pub failed: Vec<(ChunkId, Version)>,
    /// Replicas found corrupt (by the scrubber) since the last heartbeat.
    pub corrupt: Vec<(ChunkId, Version)>,
    /// What its background workers (scrub, copiers) are doing.
    pub workers: Vec<WorkerStatus>,
}

/// One replica a node holds, for its inventory report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryItem {
    /// Chunk.
    pub chunk: ChunkId,
    /// Version.
    pub version: Version,
    /// Seconds since the replica was written.
    pub age_secs: u64,
}

/// The master's answer to a heartbeat: work for the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Replicas to delete.
    pub delete: Vec<(ChunkId, Version)>,
    /// Replicas to copy here from another node.
    pub replicate: Vec<ReplicateOrder>,
    /// The term of the master group's leader giving these orders. A node
    /// refuses orders of a term below the highest it has seen: those of a
    /// leader that was deposed without knowing it.
    pub term: u64,
}

/// An order to copy a replica to this node (re-replication): pull it from
/// one of `sources` and report it in the next heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateOrder {
    /// Chunk.
    pub chunk: ChunkId,
    /// Version.
    pub version: Version,
    /// Valid bytes of the chunk.
    pub length: u32,
    /// Addresses of nodes holding it, best first.
    pub sources: Vec<String>,
}

/// The master's answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The node's id.
    pub node_id: NodeId,
    /// The filesystem's id.
    pub fs_id: String,
}

/// One stored block of chunk data, as sent on the wire and kept on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedBlock {
    /// Length of the block's data once decoded.
    pub raw_len: u32,
    /// How `data` is encoded (see [`crate::block::Codec`]).
    pub codec: u8,
    /// crc32 of `data` as stored.
    pub crc: u32,
    /// The stored bytes. Shared, not copied, when a block is cloned: an
    /// upload hands the same blocks to every retry and every chain hop.
    pub data: bytes::Bytes,
}

/// What a background worker of a master or node is doing (shown by
/// `stripefs status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its name, e.g. `rereplication` or `scrub`.
    pub name: String,
    /// Working, waiting for work, or finished.
    pub state: WorkerState,
    /// One line on what it is doing or last did.
    pub detail: String,
    /// Units of work done since the daemon started.
    pub steps: u64,
    /// Units of work that failed.
    pub errors: u64,
    /// The last failure, if any.
    pub last_error: Option<String>,
}

/// The state of a background worker. Append new variants at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    /// Doing work now.
    Busy,
    /// Waiting until there is work.
    Idle,
    /// Finished for good (e.g. switched off).
    Done,
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerState::Busy => "busy",
            WorkerState::Idle => "idle",
            WorkerState::Done => "done",
        })
    }
}

pub use crate::fsck::{FsckCounts, FsckOutcome, FsckProblem, FsckProblemKind, FsckReport};

/// One master of a group, as the master answering sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterStatus {
    /// Its id in the group.
    pub id: u64,
    /// Its address.
    pub addr: String,
    /// `leader`, `follower`, `learner` (catching up, not voting yet),
    /// `candidate`, or `unknown` (seen only in the membership).
    pub role: String,
    /// Whether it votes.
    pub voter: bool,
    /// Index of the last log entry it is known to hold.
    pub last_log_index: Option<u64>,
    /// Entries it is behind the leader (known on the leader only).
    pub lag: Option<u64>,
    /// Milliseconds since the leader last heard from it (leader only; 0
    /// for the leader itself).
    pub millis_since_contact: Option<u64>,
}

/// A master group as the master answering sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The answering master's id.
    pub this: u64,
    /// Whether the group exists (a master started with `--join` waits to be
    /// made a member).
    pub initialized: bool,
    /// The current term.
    pub term: u64,
    /// The leader's id, if there is one.
    pub leader: Option<u64>,
    /// Index of the last entry applied on this master.
    pub applied: Option<u64>,
    /// Index of the last entry in this master's log.
    pub last_log_index: Option<u64>,
    /// Index of the last snapshot of this master.
    pub snapshot: Option<u64>,
    /// Every member (and learner), by id.
    pub members: Vec<MasterStatus>,
    /// Whether a membership change is under way (joint consensus).
    pub changing: bool,
}

/// A change of the master group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupChange {
    /// Make the masters at these addresses a new group (they were started
    /// with `--join` and hold nothing yet) and create the filesystem.
    Init {
        /// Addresses of every member, the answering master's included.
        members: Vec<String>,
        /// Chunk size of the new filesystem (None: the default).
        chunk_size: Option<u32>,
    },
    /// Add the master at this address (started with `--join`): it catches
    /// up as a learner, then votes.
    Add {
        /// Its address.
        addr: String,
    },
    /// Remove a member (dead or alive) by id.
    Remove {
        /// Its id.
        id: u64,
    },
    /// Make another member the leader (before maintenance of this one).
    StepDown,
}

/// A master's answer to a client session that registers with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The master process (random, chosen at its start): a client that
    /// holds changes answered by another process replays them to this one.
    pub incarnation: u64,
    /// This master started after a crash and waits for this session's
    /// replay before it serves anyone (until its replay window ends).
    pub replay: bool,
    /// The master process before this one stopped cleanly (or no process
    /// answered before changes were durable): what it answered is on
    /// disk, and the client drops it instead of replaying it.
    pub clean: bool,
    /// The incarnation of that process (0: every earlier one, in a group).
    /// Changes held from another, older process are replayed.
    pub clean_after: u64,
}

/// A lease on a directory's names (see [`crate::MasterService::lease_dir`]):
/// while it lasts, no other client changes the names in the directory
/// without the master first recalling it, so the holder answers lookups
/// of names that are not there without asking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirLease {
    /// Names this grant (a recall or a release names it).
    pub id: u64,
    /// Every name in the directory when the lease began.
    pub names: Vec<String>,
    /// How long the lease lasts from the moment the holder asked for it,
    /// and from each of its polls that renews it.
    pub lease_ms: u64,
}

/// The answer to a lease poll (see [`crate::MasterService::lease_poll`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeasePoll {
    /// Leases the master wants back: the holder stops answering from them
    /// and names them as released in its next poll.
    pub recalled: Vec<(InodeId, u64)>,
    /// Leases the poll named that the master no longer holds for this
    /// session (expired, or granted by another master process).
    pub lost: Vec<(InodeId, u64)>,
}

/// The attributes of both directories of a rename, after it (the same
/// twice for a rename within one directory; none where a directory is
/// gone meanwhile).
pub type RenamedDirs = (Option<Attr>, Option<Attr>);
