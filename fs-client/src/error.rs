//! The client's error type and the one table that maps it to errno.

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
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Fs(e) => match e {
                FsError::NotFound => libc::ENOENT,
                FsError::Exists => libc::EEXIST,
                FsError::NotEmpty => libc::ENOTEMPTY,
                FsError::NotDir => libc::ENOTDIR,
                FsError::IsDir => libc::EISDIR,
                FsError::NameTooLong => libc::ENAMETOOLONG,
                FsError::InvalidArgument => libc::EINVAL,
                FsError::Stale => libc::ESTALE,
                FsError::NoSpace => libc::ENOSPC,
                // Every replica failed its checksum: the data cannot be read.
                FsError::Corrupt => libc::EIO,
                FsError::Internal => libc::EIO,
                FsError::NoAttr => libc::ENODATA,
                FsError::TooLarge => libc::E2BIG,
                FsError::NotSupported => libc::EOPNOTSUPP,
                // No live node holds or can take the data: an I/O error, not ENOSPC.
                FsError::Unavailable => libc::EIO,
                FsError::PermissionDenied => libc::EACCES,
                FsError::FileTooLarge => libc::EFBIG,
                FsError::TooManyLinks => libc::EMLINK,
                FsError::NotPermitted => libc::EPERM,
            },
            // Transport trouble is an I/O error to the application; the cause is logged.
            ClientError::Transport(_) => libc::EIO,
            ClientError::BadHandle => libc::EBADF,
            ClientError::ReadOnly => libc::EROFS,
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
