//! The wire error: a closed, fieldless enum whose variant index is encoded
//! on the wire. Append new variants at the end, never reorder.

use serde::{Deserialize, Serialize};

/// An error a server returns to its caller. Detail stays in the server's
/// log; only the code travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FsError {
    /// No such file, directory, chunk or node.
    #[error("no such entry")]
    NotFound,
    /// The name already exists.
    #[error("entry exists")]
    Exists,
    /// The directory is not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// A directory was expected.
    #[error("not a directory")]
    NotDir,
    /// A directory was not expected.
    #[error("is a directory")]
    IsDir,
    /// A name is longer than 255 bytes.
    #[error("name too long")]
    NameTooLong,
    /// A request argument is invalid (bad name, bad offset, rename into own subtree...).
    #[error("invalid argument")]
    InvalidArgument,
    /// The inode or chunk version referred to no longer exists.
    #[error("stale handle")]
    Stale,
    /// No node can take the data.
    #[error("no space left")]
    NoSpace,
    /// Stored data failed its checksum.
    #[error("checksum mismatch")]
    Corrupt,
    /// Something went wrong inside the server; its log says what.
    #[error("internal error")]
    Internal,
    /// The extended attribute does not exist.
    #[error("no such attribute")]
    NoAttr,
    /// The value does not fit (xattr value too large).
    #[error("value too large")]
    TooLarge,
    /// The operation is not supported.
    #[error("operation not supported")]
    NotSupported,
    /// Not enough live storage nodes to place or read data.
    #[error("storage unavailable")]
    Unavailable,
    /// The caller is not authorised for this request.
    #[error("permission denied")]
    PermissionDenied,
    /// The file is too large.
    #[error("file too large")]
    FileTooLarge,
    /// Too many hard links.
    #[error("too many links")]
    TooManyLinks,
    /// The operation is not permitted (e.g. a hard link to a directory).
    #[error("operation not permitted")]
    NotPermitted,
    /// This master does not lead its group (ask `leader` who does).
    #[error("this master is not the leader of its group")]
    NotLeader,
}
