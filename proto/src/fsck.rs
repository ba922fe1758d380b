//! What `stripefs fsck` reports: the wire side of the check that the master
//! runs (`master/src/fsck.rs` and `master/src/fsck/`) and the admin tool
//! prints (`tools/src/fsck.rs`). Also re-exported from [`crate::types`].

use crate::ids::{ChunkId, InodeId, NodeId, Version};
use crate::types::FileKind;
use serde::{Deserialize, Serialize};

/// What `fsck` checked, found and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    /// Whether the master was running: node liveness, inventories and
    /// corrupt replicas were checked, and repairs were possible.
    pub online: bool,
    /// Whether repairs were requested.
    pub repair: bool,
    /// What was scanned.
    pub counts: FsckCounts,
    /// The problems found, in scan order, at most [`FsckReport::MAX_LISTED`].
    pub problems: Vec<FsckProblem>,
    /// Every problem found, listed or not.
    pub problem_count: u64,
    /// Problems this run corrected.
    pub corrected: u64,
    /// Problems left as they were (check only, not repairable, or waiting
    /// for an automatic repair).
    pub uncorrected: u64,
    /// What was not checked and why, and other remarks for the reader.
    pub notes: Vec<String>,
    /// Replicas awaiting garbage collection: nobody references them, or
    /// they are newer than the current version (an upload whose commit
    /// has not arrived, or never will). Not problems: garbage collection
    /// deletes them once older than its grace period, and they do not
    /// count in the exit code. At most [`FsckReport::MAX_LISTED`].
    pub garbage: Vec<FsckProblemKind>,
    /// Every replica awaiting garbage collection, listed or not.
    pub garbage_count: u64,
}

impl FsckReport {
    /// Most problems listed in one report (all are counted and repaired).
    pub const MAX_LISTED: usize = 100_000;

    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }
}

/// Sizes of what `fsck` scanned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckCounts {
    /// Inode records.
    pub inodes: u64,
    /// Directories among them.
    pub directories: u64,
    /// Regular files among them.
    pub files: u64,
    /// Directory entries.
    pub entries: u64,
    /// Chunk records.
    pub chunks: u64,
    /// Replicas the chunk records list.
    pub replicas: u64,
    /// Sum of the regular files' sizes, in bytes.
    pub file_bytes: u64,
    /// Storage nodes the master knows (0 offline).
    pub nodes: u64,
    /// Storage nodes alive (0 offline).
    pub nodes_alive: u64,
    /// Storage nodes whose replica inventory was compared (0 offline).
    pub inventories: u64,
    /// Scratch files with a home node (their data is not in chunks).
    pub scratch_files: u64,
}

/// One problem `fsck` found, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckProblem {
    /// What is wrong.
    pub kind: FsckProblemKind,
    /// What was done about it.
    pub outcome: FsckOutcome,
}

/// What `fsck` can find wrong. Append new variants at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsckProblemKind {
    /// A directory entry names an inode that does not exist.
    DanglingEntry {
        /// Directory holding the entry.
        dir: InodeId,
        /// Entry name.
        name: String,
        /// The missing inode.
        child: InodeId,
    },
    /// An entry is held by an inode that is missing or not a directory.
    EntryOutsideDir {
        /// The inode the entry is filed under.
        dir: InodeId,
        /// Entry name.
        name: String,
        /// The inode it names.
        child: InodeId,
    },
    /// A directory (or the root) is named by more than one entry; this
    /// entry is the extra one.
    ExtraDirName {
        /// Directory holding the extra entry.
        dir: InodeId,
        /// Entry name.
        name: String,
        /// The directory named twice.
        child: InodeId,
    },
    /// A directory's `parent` field is not the directory whose entry names it.
    WrongParent {
        /// The directory.
        ino: InodeId,
        /// Its stored parent.
        stored: InodeId,
        /// The directory holding its entry.
        dir: InodeId,
    },
    /// A link count disagrees with the entries (files: names; directories:
    /// 2 + subdirectories).
    WrongNlink {
        /// The inode.
        ino: InodeId,
        /// Its kind.
        kind: FileKind,
        /// The stored count.
        stored: u32,
        /// The count the entries give.
        counted: u32,
    },
    /// No entry names this inode, and it is neither the root nor an open
    /// orphan.
    Detached {
        /// The inode.
        ino: InodeId,
        /// Its kind.
        kind: FileKind,
    },
    /// Directories name each other in a loop, cut off from the root; this
    /// one (the lowest numbered of the loop) is named by `dir`/`name`.
    DirCycle {
        /// The directory.
        ino: InodeId,
        /// Directory holding its entry.
        dir: InodeId,
        /// Entry name.
        name: String,
    },
    /// An inode in the orphan table still has names.
    LinkedOrphan {
        /// The inode.
        ino: InodeId,
    },
    /// The orphan table lists an inode that does not exist.
    StaleOrphan {
        /// The missing inode.
        ino: InodeId,
    },
    /// A chunk reaches past the end of its file.
    ChunkPastEof {
        /// File.
        ino: InodeId,
        /// Chunk index.
        index: u64,
        /// Chunk.
        chunk: ChunkId,
        /// Where the chunk's valid bytes end.
        end: u64,
        /// The file's size.
        size: u64,
    },
    /// A chunk is longer than the chunk size.
    ChunkTooLong {
        /// File.
        ino: InodeId,
        /// Chunk index.
        index: u64,
        /// Chunk.
        chunk: ChunkId,
        /// Its length.
        length: u32,
        /// The filesystem's chunk size.
        chunk_size: u32,
    },
    /// A chunk belongs to an inode that is missing or not a regular file.
    ChunkWithoutFile {
        /// The inode it is filed under.
        ino: InodeId,
        /// Chunk index.
        index: u64,
        /// Chunk.
        chunk: ChunkId,
        /// Version.
        version: Version,
    },
    /// Two chunk records carry the same chunk id.
    SharedChunkId {
        /// Chunk.
        chunk: ChunkId,
        /// File of the first record.
        ino: InodeId,
        /// Index of the first record.
        index: u64,
        /// File of the second record.
        other_ino: InodeId,
        /// Index of the second record.
        other_index: u64,
    },
    /// A file's allocated bytes disagree with the sum of its chunk lengths.
    WrongAllocated {
        /// File.
        ino: InodeId,
        /// Stored.
        stored: u64,
        /// Sum of the chunk lengths.
        counted: u64,
    },
    /// The stored inode count is not the number of inodes.
    WrongInodeCount {
        /// Stored.
        stored: u64,
        /// Inode records.
        counted: u64,
    },
    /// The next inode number is not above every inode number in use.
    NextInodeTooLow {
        /// Stored next inode number.
        next_inode: u64,
        /// Highest inode number in use.
        max_inode: u64,
    },
    /// A record cannot be decoded, or a required one is absent.
    Unreadable {
        /// Table.
        table: String,
        /// Key, as text.
        key: String,
    },
    /// A chunk has no live, good replica: its data is unavailable.
    MissingChunk {
        /// File.
        ino: InodeId,
        /// Chunk index.
        index: u64,
        /// Chunk.
        chunk: ChunkId,
        /// Version.
        version: Version,
    },
    /// A chunk has fewer live, good replicas than its file's replication.
    UnderReplicated {
        /// File.
        ino: InodeId,
        /// Chunk index.
        index: u64,
        /// Chunk.
        chunk: ChunkId,
        /// Version.
        version: Version,
        /// Live, good replicas.
        live: u32,
        /// Replicas wanted.
        want: u8,
    },
    /// A node holds a version of a chunk that is not the current one.
    StaleReplica {
        /// Node.
        node: NodeId,
        /// Chunk.
        chunk: ChunkId,
        /// The version the node holds.
        version: Version,
        /// The current version.
        current: Version,
        /// File of the chunk.
        ino: InodeId,
        /// Chunk index.
        index: u64,
    },
    /// A node holds a replica of a chunk id no file uses.
    UnreferencedReplica {
        /// Node.
        node: NodeId,
        /// Chunk.
        chunk: ChunkId,
        /// Version.
        version: Version,
    },
    /// A replica of a current chunk version failed its checksum.
    CorruptReplica {
        /// Node.
        node: NodeId,
        /// File.
        ino: InodeId,
        /// Chunk index.
        index: u64,
        /// Chunk.
        chunk: ChunkId,
        /// Version.
        version: Version,
    },
    /// A scratch file whose home node is down: its data (one copy, on
    /// that node) cannot be read.
    LostScratchFile {
        /// The file.
        ino: InodeId,
        /// Its home node.
        node: NodeId,
    },
    /// A scratch file whose blocks failed their crc (found by its node's
    /// scrubber or a reader); it has no other copy.
    CorruptScratchFile {
        /// The file.
        ino: InodeId,
        /// Its home node.
        node: NodeId,
    },
}

impl FsckProblemKind {
    /// Whether this is a replica awaiting garbage collection rather than
    /// a problem: one nobody references, or one newer than the current
    /// version (an upload not committed).
    pub fn is_garbage(&self) -> bool {
        match self {
            FsckProblemKind::UnreferencedReplica { .. } => true,
            FsckProblemKind::StaleReplica { version, current, .. } => version > current,
            _ => false,
        }
    }
}

/// What `fsck` did about a problem. Append new variants at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsckOutcome {
    /// Reported only (no `--repair`).
    Found,
    /// Corrected by this run.
    Repaired,
    /// Left to an automatic repair of the master (re-replication), still
    /// under way: counted as uncorrected.
    Queued,
    /// Nothing can correct it (e.g. data lost).
    NotRepairable,
    /// Deliberately left alone (e.g. a replica that may belong to an
    /// upload in progress; garbage collection removes it if it is not).
    Kept,
    /// The state changed between the scan and the repair; not repaired,
    /// run fsck again.
    Changed,
    /// The repair was refused or failed.
    Failed(crate::FsError),
}

impl FsckOutcome {
    /// Whether the problem is gone.
    pub fn is_corrected(&self) -> bool {
        matches!(self, FsckOutcome::Repaired)
    }
}
