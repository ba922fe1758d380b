//! The stripefs wire protocol.
//!
//! Everything that crosses a socket between the master, the storage nodes,
//! the FUSE client and the admin tools is defined here: id newtypes
//! ([`ids`]), the closed wire error enum ([`FsError`]), request and reply
//! records ([`types`]), the tarpc service traits ([`service`]), the block
//! format of chunk data ([`block`]), the replica file a node stores a chunk
//! version in ([`replica`]), the authenticated connection set-up shared by
//! every process ([`net`]), the data path that carries chunk writes as raw
//! bytes ([`data`]) and the local-read socket through which a node hands
//! replica files to a client on its own host ([`local`]).
//!
//! This crate holds no state of its own: it is the vocabulary the other
//! crates speak.

pub mod block;
pub mod data_conn;
pub mod error;
pub mod fsck;
pub mod ids;
pub mod local_socket;
pub mod net;
pub mod ops;
pub mod replica;
pub mod service;
pub mod types;

pub use error::FsError;
pub use ids::{ChunkId, InodeId, NodeId, Version};
pub use service::{
    MasterService, MasterServiceClient, MasterServiceRequest, MasterServiceResponse, NodeService, NodeServiceClient,
    NodeServiceRequest, NodeServiceResponse,
};

/// Largest file name, in bytes, that the namespace accepts (as ext4).
pub const MAX_NAME_BYTES: usize = 255;

/// Largest symlink target, in bytes.
pub const MAX_SYMLINK_BYTES: usize = 4095;

/// Largest xattr value, in bytes (Linux' XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE_BYTES: usize = 65536;

/// Checks a single path component received from anywhere: no `/`, no NUL,
/// not `.` or `..`, not empty, at most [`MAX_NAME_BYTES`].
pub fn check_name(name: &str) -> Result<(), FsError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(FsError::InvalidArgument);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name("a"), Ok(()));
        assert_eq!(check_name(&"x".repeat(255)), Ok(()));
        assert_eq!(check_name(&"x".repeat(256)), Err(FsError::NameTooLong));
        assert_eq!(check_name("a/b"), Err(FsError::InvalidArgument));
        assert_eq!(check_name("a\0"), Err(FsError::InvalidArgument));
        assert_eq!(check_name(".."), Err(FsError::InvalidArgument));
        assert_eq!(check_name(""), Err(FsError::InvalidArgument));
    }
}
