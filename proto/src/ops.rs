//! The namespace mutations a client asks of the master: one type per
//! operation, shared by every layer. The client builds one, the wire
//! carries it inside a [`Request`] (`MasterService`), the master's
//! `namespace::Command` holds it with the time of the request, and its
//! journal stores that (so a field added here is added everywhere at once).
//!
//! Every mutation travels in a [`Request`] with a [`RequestId`]: a client
//! that lost the answer (a connection cut, a timeout, later a failover)
//! sends the same request again, and the master answers it from what it
//! remembered instead of applying it twice: a retried `create` that
//! already happened returns the same inode, not `EEXIST`.

use crate::ids::InodeId;
use crate::types::{FileKind, Owner, SetAttr};
use serde::{Deserialize, Serialize};

/// One mutation of one client session: `seq` counts the session's requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// The client session (random, chosen when the client connects).
    pub session: u64,
    /// The request's number in its session, from 1.
    pub seq: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}/{}", self.session, self.seq)
    }
}

/// A mutation as sent: which one, and what the master may forget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<Op> {
    /// Its identity, the same on every retry.
    pub id: RequestId,
    /// Every request of the session numbered below this has its answer
    /// and is durable: the master may forget them.
    pub answered_below: u64,
    /// The operation.
    pub op: Op,
    /// Set when the client sends again a change a master answered and
    /// then lost in a crash, before it was durable (see [`Durability`]).
    pub replay: Option<Replay>,
}

impl<Op> Request<Op> {
    /// A request of a caller that sends just this one (an admin command):
    /// a session of its own, chosen at random. The master answers it once
    /// it is durable (the session is not registered: nobody would replay it).
    pub fn single(op: Op) -> Request<Op> {
        Request { id: RequestId { session: rand::random(), seq: 1 }, answered_below: 1, op, replay: None }
    }
}

/// What a replayed request carries besides the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    /// The inode the lost change created (its client and kernel know the
    /// file by it): the replay creates it under the same number.
    pub ino: Option<InodeId>,
}

/// Where a change stands, in every answer to a mutation. The master
/// answers a change of a registered client session as soon as it is
/// applied, before it is on disk; the client keeps every change above
/// `durable` and replays them, in `at` order, to the next master process
/// if this one (`incarnation`) goes away (docs/SEMANTICS.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durability {
    /// The master process that answered (random, chosen at its start).
    pub incarnation: u64,
    /// Position of this change in the master's log.
    pub at: u64,
    /// Every change at or below this position is durable.
    pub durable: u64,
}

impl Durability {
    /// Whether the change this answers is durable already.
    pub fn is_durable(&self) -> bool {
        self.at <= self.durable
    }
}

/// An answer to a mutation: its value and where the change stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acked<T> {
    /// The answer.
    pub value: T,
    /// Where the change stands.
    pub durability: Durability,
}

/// Create a non-directory, non-symlink inode (`mknod(2)`). `Exists` if the name is taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mknod {
    /// Directory.
    pub parent: InodeId,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: FileKind,
    /// Permission bits.
    pub perm: u32,
    /// Owner.
    pub owner: Owner,
    /// Device number.
    pub rdev: u32,
}

/// Create a regular file and take an open reference to it, in one round
/// trip (what `open(O_CREAT)` needs). `Exists` if the name is taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Create {
    /// Directory.
    pub parent: InodeId,
    /// Name.
    pub name: String,
    /// Permission bits.
    pub perm: u32,
    /// Owner.
    pub owner: Owner,
}

/// Create a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkdir {
    /// Parent directory.
    pub parent: InodeId,
    /// Name.
    pub name: String,
    /// Permission bits.
    pub perm: u32,
    /// Owner.
    pub owner: Owner,
}

/// Create a symbolic link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symlink {
    /// Directory.
    pub parent: InodeId,
    /// Name.
    pub name: String,
    /// Target.
    pub target: String,
    /// Owner.
    pub owner: Owner,
}

/// Add a hard link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Existing inode.
    pub ino: InodeId,
    /// Directory of the new name.
    pub new_parent: InodeId,
    /// New name.
    pub new_name: String,
}

/// Remove a non-directory name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlink {
    /// Directory.
    pub parent: InodeId,
    /// Name.
    pub name: String,
}

/// Remove an empty directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rmdir {
    /// Parent directory.
    pub parent: InodeId,
    /// Name.
    pub name: String,
}

/// Rename, with renameat2's flags (`RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    /// Source directory.
    pub parent: InodeId,
    /// Source name.
    pub name: String,
    /// Destination directory.
    pub new_parent: InodeId,
    /// Destination name.
    pub new_name: String,
    /// renameat2's flags.
    pub flags: u32,
}

/// Change attributes; a size change truncates or extends the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttrs {
    /// Inode.
    pub ino: InodeId,
    /// Changes.
    pub set: SetAttr,
}

/// Change the data class of an inode (new children inherit a
/// directory's). Only directories and empty files change class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetClass {
    /// Inode.
    pub ino: InodeId,
    /// New class.
    pub class: crate::types::DataClass,
}

/// Set an xattr (setxattr's flags: `XATTR_CREATE`, `XATTR_REPLACE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetXattr {
    /// Inode.
    pub ino: InodeId,
    /// Name.
    pub name: String,
    /// Value.
    pub value: Vec<u8>,
    /// setxattr's flags.
    pub flags: u32,
}

/// Remove an xattr.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveXattr {
    /// Inode.
    pub ino: InodeId,
    /// Name.
    pub name: String,
}

/// Change the data policy of an inode (new children inherit a directory's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPolicy {
    /// Inode.
    pub ino: InodeId,
    /// New replication factor.
    pub replication: Option<u8>,
    /// New zstd level.
    pub compression_level: Option<i8>,
}
