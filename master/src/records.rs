//! On-disk records of the master's tables, encoded explicitly: one format
//! byte, then a bincode body of a fixed struct. Changing a struct means a
//! new format byte (and a decode arm for the old one), never a silent
//! layout change.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use stripefs_proto::types::{Attr, DataClass, FileKind, Policy, Timestamp};
use stripefs_proto::{ChunkId, InodeId, NodeId, Version};

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what} record: {detail}")]
pub struct DecodeError {
    what: &'static str,
    detail: String,
}

const FORMAT_V1: u8 = 1;
/// Inode records since database format 5: with the data class and home.
const FORMAT_V2: u8 = 2;

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    bincode::serialize_into(&mut out, value).expect("serializing a plain struct into a Vec cannot fail");
    out
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => bincode::deserialize(body).map_err(|e| DecodeError { what, detail: e.to_string() }),
        Some((v, _)) => Err(DecodeError { what, detail: format!("unknown format byte {v}") }),
        None => Err(DecodeError { what, detail: "empty".into() }),
    }
}

/// An inode as stored in `inodes.v1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRecord {
    /// File kind.
    pub kind: FileKind,
    /// Permission bits.
    pub perm: u16,
    /// Link count (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Creation time.
    pub crtime: Timestamp,
    /// Device number.
    pub rdev: u32,
    /// Data policy.
    pub policy: Policy,
    /// Parent directory (directories only; 0 otherwise). Used to refuse
    /// moving a directory into its own subtree.
    pub parent: u64,
    /// Symlink target.
    pub target: Option<String>,
    /// Sum of the lengths of the file's chunks (holes excluded).
    pub allocated: u64,
    /// Data class (format 5; older records are replicated).
    pub class: DataClass,
    /// The node holding a scratch file's data (format 5).
    pub home: Option<NodeId>,
}

/// An inode as stored before format 5 (format byte 1): without class and
/// home.
#[derive(Deserialize)]
struct InodeRecordV1 {
    kind: FileKind,
    perm: u16,
    nlink: u32,
    uid: u32,
    gid: u32,
    size: u64,
    atime: Timestamp,
    mtime: Timestamp,
    ctime: Timestamp,
    crtime: Timestamp,
    rdev: u32,
    policy: Policy,
    parent: u64,
    target: Option<String>,
    allocated: u64,
}

impl InodeRecord {
    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_V2];
        bincode::serialize_into(&mut out, self).expect("serializing a plain struct into a Vec cannot fail");
        out
    }

    /// Decodes from storage, either format.
    pub fn decode(bytes: &[u8]) -> Result<InodeRecord, DecodeError> {
        let err = |detail: String| DecodeError { what: "inode", detail };
        match bytes.split_first() {
            Some((&FORMAT_V2, body)) => bincode::deserialize(body).map_err(|e| err(e.to_string())),
            Some((&FORMAT_V1, body)) => {
                let r: InodeRecordV1 = bincode::deserialize(body).map_err(|e| err(e.to_string()))?;
                Ok(InodeRecord {
                    kind: r.kind,
                    perm: r.perm,
                    nlink: r.nlink,
                    uid: r.uid,
                    gid: r.gid,
                    size: r.size,
                    atime: r.atime,
                    mtime: r.mtime,
                    ctime: r.ctime,
                    crtime: r.crtime,
                    rdev: r.rdev,
                    policy: r.policy,
                    parent: r.parent,
                    target: r.target,
                    allocated: r.allocated,
                    class: DataClass::Replicated,
                    home: None,
                })
            }
            Some((v, _)) => Err(err(format!("unknown format byte {v}"))),
            None => Err(err("empty".into())),
        }
    }

    /// The permission bits this inode may carry: a scratch file with a
    /// home has no setuid or setgid bit (its writes through passthrough do
    /// not reach a place that could drop them).
    pub fn allowed_bits(&self) -> u16 {
        if self.home.is_some() {
            0o1777
        } else {
            0o7777
        }
    }

    /// The attributes clients see.
    pub fn to_attr(&self, ino: InodeId) -> Attr {
        Attr {
            ino,
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
            rdev: self.rdev,
            policy: self.policy,
            allocated_bytes: self.allocated,
            class: self.class,
            home: self.home,
        }
    }
}

/// A chunk as stored in `chunks.v1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Chunk id.
    pub chunk: ChunkId,
    /// Current version.
    pub version: Version,
    /// Valid bytes.
    pub length: u32,
    /// Bytes one replica takes on disk.
    pub stored_bytes: u64,
    /// Nodes holding the current version.
    pub replicas: Vec<NodeId>,
}

impl ChunkRecord {
    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes from storage.
    pub fn decode(bytes: &[u8]) -> Result<ChunkRecord, DecodeError> {
        decode("chunk", bytes)
    }
}

/// A storage node as stored in `nodes.v1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// RPC address.
    pub addr: String,
    /// Host name.
    pub host: String,
    /// Zone.
    pub zone: String,
}

impl NodeRecord {
    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes from storage.
    pub fn decode(bytes: &[u8]) -> Result<NodeRecord, DecodeError> {
        decode("node", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_round_trips() {
        let r = InodeRecord {
            kind: FileKind::Symlink,
            perm: 0o755,
            nlink: 1,
            uid: 1000,
            gid: 100,
            size: 7,
            atime: Timestamp { secs: -5, nanos: 3 },
            mtime: Timestamp { secs: 1, nanos: 2 },
            ctime: Timestamp { secs: 3, nanos: 4 },
            crtime: Timestamp { secs: 5, nanos: 6 },
            rdev: 0,
            policy: Policy { replication: 3, compression_level: 0 },
            parent: 0,
            target: Some("a/b/c".into()),
            allocated: 7,
            class: DataClass::Scratch { remove_lost: true },
            home: Some(NodeId(4)),
        };
        assert_eq!(InodeRecord::decode(&r.encode()).expect("decode"), r);
    }

    /// A record written before format 5 reads as replicated, homeless.
    #[test]
    fn a_format_1_inode_reads_as_replicated() {
        #[derive(Serialize)]
        struct Old {
            kind: FileKind,
            perm: u16,
            nlink: u32,
            uid: u32,
            gid: u32,
            size: u64,
            atime: Timestamp,
            mtime: Timestamp,
            ctime: Timestamp,
            crtime: Timestamp,
            rdev: u32,
            policy: Policy,
            parent: u64,
            target: Option<String>,
            allocated: u64,
        }
        let t = Timestamp { secs: 1, nanos: 2 };
        let old = Old {
            kind: FileKind::File,
            perm: 0o640,
            nlink: 1,
            uid: 7,
            gid: 8,
            size: 9,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            rdev: 0,
            policy: Policy::default(),
            parent: 0,
            target: None,
            allocated: 9,
        };
        let mut bytes = vec![FORMAT_V1];
        bincode::serialize_into(&mut bytes, &old).expect("encode");
        let r = InodeRecord::decode(&bytes).expect("decode");
        assert_eq!((r.size, r.uid, r.perm, r.class, r.home), (9, 7, 0o640, DataClass::Replicated, None));
    }

    #[test]
    fn chunk_and_node_round_trip() {
        let c = ChunkRecord {
            chunk: ChunkId(9),
            version: Version(12),
            length: 4096,
            stored_bytes: 100,
            replicas: vec![NodeId(1), NodeId(3)],
        };
        assert_eq!(ChunkRecord::decode(&c.encode()).expect("decode"), c);
        let n = NodeRecord { addr: "127.0.0.1:1".into(), host: "h".into(), zone: "z".into() };
        assert_eq!(NodeRecord::decode(&n.encode()).expect("decode"), n);
    }

    #[test]
    fn unknown_format_is_an_error() {
        assert!(InodeRecord::decode(&[9, 1, 2]).is_err());
        assert!(InodeRecord::decode(&[]).is_err());
    }
}
