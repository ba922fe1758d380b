//! Newtypes for every id that crosses a process boundary.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// An inode number. The root directory is [`InodeId::ROOT`].
    InodeId
);
id_type!(
    /// A chunk's identity; stable across its versions.
    ChunkId
);
id_type!(
    /// A storage node's identity, assigned by the master at first registration.
    NodeId
);
id_type!(
    /// A chunk version. Versions come from one cluster-wide counter, so a
    /// (chunk, version) pair is never reused.
    Version
);

impl InodeId {
    /// The root directory.
    pub const ROOT: InodeId = InodeId(1);
}

impl Version {
    /// Not a chunk version: a replica deletion `(ChunkId(ino),
    /// SCRATCH_FILE)` removes the scratch file of inode `ino` from the
    /// node (the version counter never gets near it).
    pub const SCRATCH_FILE: Version = Version(u64::MAX);
}
