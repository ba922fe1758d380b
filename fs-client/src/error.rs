//! The client's error type and the one table that maps it to errno.

use std::time::Duration;
use stripefs_proto::net::ConnectError;
use stripefs_proto::{ChunkId, FsError, Version};

/// An error of a client operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request.
    #[error("{0}")]
    Fs(#[from] FsError),
    /// The master or a node could not be reached or did not answer.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
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
                // Followed by the connection; seen only when no master
                // led the group within master_timeout.
                FsError::NotLeader => libc::EIO,
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

/// Why the master or a node could not be used: each kind kept, so a
/// caller can tell a refusal from a timeout from a broken connection (the
/// retry logic does), with the detail for the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// Connecting to `addr` or authenticating failed.
    #[error("{detail}")]
    Connect {
        /// The peer.
        addr: String,
        /// What went wrong.
        kind: ConnectKind,
        /// The cause, for the log.
        detail: String,
    },
    /// The master stayed unreachable for the whole `master_timeout`.
    #[error("the master at {addr} has been unreachable for {waited:?}: {detail}")]
    MasterUnreachable {
        /// The master's address.
        addr: String,
        /// How long calls waited.
        waited: Duration,
        /// The last connect error.
        detail: String,
    },
    /// A call failed after it was sent.
    #[error("{kind}: {detail}")]
    Call {
        /// What went wrong.
        kind: CallFailure,
        /// The cause, for the log.
        detail: String,
    },
    /// A chunk write on a node's data connection failed.
    #[error("data connection: {0}")]
    Data(String),
    /// This host's node could not hand over or read a replica file.
    #[error("local read of chunk {chunk} v{version}: {detail}")]
    LocalRead {
        /// The chunk.
        chunk: ChunkId,
        /// Its version.
        version: Version,
        /// The cause, for the log.
        detail: String,
    },
    /// This host's node could not hand over a scratch file.
    #[error("local open of the scratch file of inode {ino}: {detail}")]
    LocalScratch {
        /// The file.
        ino: stripefs_proto::InodeId,
        /// The cause, for the log.
        detail: String,
    },
    /// A task of the client died (it panicked or the runtime stopped).
    #[error("{what} task failed: {detail}")]
    Task {
        /// Which task.
        what: &'static str,
        /// The cause, for the log.
        detail: String,
    },
}

/// Why a connection could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectKind {
    /// Nothing answered, or the network failed.
    Unreachable,
    /// The peer did not answer in time.
    Timeout,
    /// The peer refused the secret, or could not prove it holds it.
    Refused,
    /// The peer is not a stripefs server of this protocol version.
    Incompatible,
}

impl From<&ConnectError> for ConnectKind {
    fn from(e: &ConnectError) -> ConnectKind {
        match e {
            ConnectError::Connect { .. } | ConnectError::Io { .. } | ConnectError::NoLeader { .. } => {
                ConnectKind::Unreachable
            }
            ConnectError::Timeout { .. } => ConnectKind::Timeout,
            ConnectError::Refused { .. } | ConnectError::ServerNotAuthentic { .. } => ConnectKind::Refused,
            ConnectError::NotStripefs { .. } | ConnectError::Version { .. } => ConnectKind::Incompatible,
        }
    }
}

impl TransportError {
    /// A connect error to `addr`, with its kind.
    pub fn connect(addr: &str, e: &ConnectError) -> TransportError {
        TransportError::Connect { addr: addr.to_string(), kind: e.into(), detail: e.to_string() }
    }

    /// A task that died.
    pub fn task(what: &'static str, e: impl std::fmt::Display) -> TransportError {
        TransportError::Task { what, detail: e.to_string() }
    }
}

/// How a call failed after it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    /// No answer within the call's deadline.
    Timeout,
    /// The connection broke (the call may or may not have been served).
    Disconnected,
    /// The server dropped the request.
    Aborted,
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CallFailure::Timeout => "no answer in time",
            CallFailure::Disconnected => "connection lost",
            CallFailure::Aborted => "request aborted by the server",
        })
    }
}

impl From<tarpc::client::RpcError> for ClientError {
    fn from(e: tarpc::client::RpcError) -> Self {
        use tarpc::client::RpcError as R;
        let kind = match &e {
            R::DeadlineExceeded => CallFailure::Timeout,
            R::Shutdown | R::Send(_) | R::Channel(_) => CallFailure::Disconnected,
            R::Server(_) => CallFailure::Aborted,
        };
        TransportError::Call { kind, detail: e.to_string() }.into()
    }
}

/// Result of a client operation.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use tarpc::client::RpcError;

    #[test]
    fn rpc_failures_keep_their_kind_and_are_io_errors_to_applications() {
        let kinds = [
            (RpcError::DeadlineExceeded, CallFailure::Timeout),
            (RpcError::Shutdown, CallFailure::Disconnected),
            (RpcError::Send(Box::new(std::io::Error::other("reset"))), CallFailure::Disconnected),
        ];
        for (rpc, want) in kinds {
            let e = ClientError::from(rpc);
            assert!(matches!(e, ClientError::Transport(TransportError::Call { kind, .. }) if kind == want), "{e:?}");
            assert_eq!(e.errno(), libc::EIO);
            assert!(e.is_noteworthy());
        }
    }

    #[test]
    fn connect_errors_keep_their_kind() {
        let addr = "127.0.0.1:1".to_string();
        let cases = [
            (ConnectError::Refused { addr: addr.clone() }, ConnectKind::Refused),
            (ConnectError::ServerNotAuthentic { addr: addr.clone() }, ConnectKind::Refused),
            (ConnectError::Timeout { addr: addr.clone(), timeout: Duration::from_secs(1) }, ConnectKind::Timeout),
            (ConnectError::NotStripefs { addr: addr.clone() }, ConnectKind::Incompatible),
            (
                ConnectError::Connect { addr: addr.clone(), error: std::io::ErrorKind::ConnectionRefused.into() },
                ConnectKind::Unreachable,
            ),
        ];
        for (e, want) in cases {
            let t = TransportError::connect(&addr, &e);
            assert!(matches!(&t, TransportError::Connect { kind, .. } if *kind == want), "{t:?}");
            assert_eq!(t.to_string(), e.to_string(), "the log keeps the connect error's words");
        }
    }
}
