//! The client's error type and the one table that maps it to errno.

use fuser::Errno;
use stripefs_proto::FsError;

/// An error of a client operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request.
    #[error("{0}")]
    Fs(#[from] FsError),
    /// The master or a node could not be reached or did not answer.
    #[error("transport: {0}")]
    Transport(String),
    /// The operation is not valid for this handle (e.g. write on read-only).
    #[error("bad file descriptor")]
    BadHandle,
    /// The filesystem is mounted read-only.
    #[error("read-only filesystem")]
    ReadOnly,
}

impl ClientError {
    /// The errno an application sees. Every variant is listed: a new one
    /// cannot slip through unmapped.
    pub fn errno(&self) -> Errno {
        match self {
            ClientError::Fs(e) => match e {
                FsError::NotFound => Errno::ENOENT,
                FsError::Exists => Errno::EEXIST,
                FsError::NotEmpty => Errno::ENOTEMPTY,
                FsError::NotDir => Errno::ENOTDIR,
                FsError::IsDir => Errno::EISDIR,
                FsError::NameTooLong => Errno::ENAMETOOLONG,
                FsError::InvalidArgument => Errno::EINVAL,
                FsError::Stale => Errno::ESTALE,
                FsError::NoSpace => Errno::ENOSPC,
                // Every replica failed its checksum: the data cannot be read.
                FsError::Corrupt => Errno::EIO,
                FsError::Internal => Errno::EIO,
                FsError::NoAttr => Errno::ENODATA,
                FsError::TooLarge => Errno::E2BIG,
                FsError::NotSupported => Errno::EOPNOTSUPP,
                // No live node holds or can take the data: an I/O error, not ENOSPC.
                FsError::Unavailable => Errno::EIO,
                FsError::PermissionDenied => Errno::EACCES,
                FsError::FileTooLarge => Errno::EFBIG,
                FsError::TooManyLinks => Errno::EMLINK,
                FsError::NotPermitted => Errno::EPERM,
            },
            // Transport trouble is an I/O error to the application; the cause is logged.
            ClientError::Transport(_) => Errno::EIO,
            ClientError::BadHandle => Errno::EBADF,
            ClientError::ReadOnly => Errno::EROFS,
        }
    }

    /// Whether this is worth a log line above DEBUG.
    pub fn is_noteworthy(&self) -> bool {
        matches!(
            self,
            ClientError::Transport(_)
                | ClientError::Fs(FsError::Internal | FsError::Corrupt | FsError::Unavailable | FsError::NoSpace)
        )
    }
}

impl From<tarpc::client::RpcError> for ClientError {
    fn from(e: tarpc::client::RpcError) -> Self {
        ClientError::Transport(e.to_string())
    }
}

/// Result of a client operation.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
