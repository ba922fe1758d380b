//! Every redb table of the master, in one place. Names carry a format
//! suffix: changing a key or value layout means a new table and a copy.

use redb::TableDefinition;

/// Filesystem-wide values: format version, fs id, chunk size, counters.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta.v1");
/// Inode number → [`crate::records::InodeRecord`].
pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes.v1");
/// (directory, name) → child inode number.
pub const DIR_ENTRIES: TableDefinition<(u64, &str), u64> = TableDefinition::new("dir_entries.v1");
/// (file, chunk index) → [`crate::records::ChunkRecord`].
pub const CHUNKS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("chunks.v1");
/// (inode, xattr name) → value.
pub const XATTRS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("xattrs.v1");
/// Inodes with no name left but still open somewhere.
pub const ORPHANS: TableDefinition<u64, ()> = TableDefinition::new("orphans.v1");
/// (node, chunk, version) replicas waiting to be deleted on that node.
pub const DELETIONS: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("deletions.v1");
/// Node id → [`crate::records::NodeRecord`].
pub const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes.v1");
/// (client session, request seq) → the answer it got (see
/// [`crate::namespace::requests`]). Added in format version 2.
pub const REQUESTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("requests.v1");

/// Client session → [`crate::sessions::SessionRecord`]: the sessions a
/// master restarted after a crash waits for (they may hold changes it
/// answered and lost). Added in format version 4.
pub const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions.v1");

/// Keys of [`META`].
pub mod meta_keys {
    /// Format version of the database (u32 LE).
    pub const FORMAT_VERSION: &str = "format_version";
    /// Filesystem id (hex string).
    pub const FS_ID: &str = "fs_id";
    /// Chunk size (u32 LE).
    pub const CHUNK_SIZE: &str = "chunk_size";
    /// Next inode number (u64 LE).
    pub const NEXT_INODE: &str = "next_inode";
    /// Ceiling of reserved chunk ids / versions (u64 LE): ids below it may
    /// have been handed out.
    pub const ID_CEILING: &str = "id_ceiling";
    /// Number of live inodes (u64 LE).
    pub const INODE_COUNT: &str = "inode_count";
    /// Sequence number of the last journaled batch this database holds
    /// (u64 LE; absent: 0). See [`crate::journal`].
    pub const JOURNAL_SEQ: &str = "journal_seq";
    /// Id of the last log entry of the master group applied (bincode
    /// `Option<openraft::LogId>`; absent: none). Added in format 3.
    pub const RAFT_APPLIED: &str = "raft_applied";
    /// The group's membership as last applied (bincode
    /// `openraft::StoredMembership`). Added in format 3.
    pub const RAFT_MEMBERSHIP: &str = "raft_membership";
    /// Marks a stripefs master database (value [`super::MAGIC_VALUE`]).
    pub const MAGIC: &str = "magic";
}

/// The value of [`meta_keys::MAGIC`]: marks a stripefs master database.
pub const MAGIC_VALUE: &[u8] = b"stripefs-master";

/// The database format this master writes and reads. 2: the `requests.v1`
/// table. 3: the state machine of a master group (the Raft log replaced
/// the journal; `raft_applied` and `raft_membership` in `meta.v1`). Older
/// databases are upgraded when a master opens them (their journal is
/// applied, the new table created); an older master refuses a newer one,
/// which keeps it from ignoring the Raft log. 4: `sessions.v1`, and log
/// entries that open and close client sessions and replay lost changes.
/// 5: inode records with a data class and a scratch file's home (format
/// byte 2; older records read as replicated), `SetClass` log entries;
/// answers in `requests.v1` remembered before it still decode.
pub const FORMAT_VERSION: u32 = 5;

/// What the `meta.v1` table of a database says about its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Not a stripefs master database (no meta table, magic or version).
    NotOurs,
    /// A stripefs database of a newer format than this code reads.
    TooNew(u32),
    /// A database this code reads, with its chunk size.
    Ours {
        /// Chunk size of the filesystem, if recorded.
        chunk_size: Option<u32>,
    },
}

/// Reads the format of a database from its read transaction: the one check
/// shared by the master's open and fsck's offline open.
pub fn check_format(txn: &redb::ReadTransaction) -> Result<Format, redb::StorageError> {
    let Ok(meta) = txn.open_table(META) else { return Ok(Format::NotOurs) };
    let get_u32 = |k: &str| -> Result<Option<u32>, redb::StorageError> {
        Ok(meta.get(k)?.and_then(|v| Some(u32::from_le_bytes(v.value().try_into().ok()?))))
    };
    if meta.get(meta_keys::MAGIC)?.map(|v| v.value() == MAGIC_VALUE) != Some(true) {
        return Ok(Format::NotOurs);
    }
    match get_u32(meta_keys::FORMAT_VERSION)? {
        None => Ok(Format::NotOurs),
        Some(v) if v > FORMAT_VERSION => Ok(Format::TooNew(v)),
        Some(_) => Ok(Format::Ours { chunk_size: get_u32(meta_keys::CHUNK_SIZE)? }),
    }
}
