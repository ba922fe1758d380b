//! Local reads: a storage node hands a client on its own host an open,
//! read-only descriptor of a replica file, and the client reads blocks with
//! `pread` instead of asking for them over TCP — HDFS's short-circuit local
//! reads. A read then costs no RPC, no copy through a socket and no node
//! thread; the client still checks every block's crc (it parses the file
//! with [`crate::replica`]).
//!
//! The node listens on an abstract Unix socket named after the address it
//! advertises ([`socket_name`]). Abstract sockets live in a network
//! namespace, so only a client on the node's own host (and in its network
//! namespace) can reach it; everyone else reads over TCP as before. The
//! connection starts with the cluster-secret handshake of [`crate::net`],
//! then carries requests one at a time:
//!
//! ```text
//! client → node: chunk u64 | version u64                        (little-endian)
//!                (version `Version::SCRATCH_FILE`: the scratch file of
//!                inode `chunk`, read-write, created if missing)
//! node → client: status u8 (0 ok, 1 error) | FsError u32 (bincode; 0 when ok)
//!                with the replica's descriptor attached (SCM_RIGHTS) when ok
//! ```
//!
//! A scratch file's descriptor is the one the client registers with its
//! kernel for FUSE passthrough (see `stripefs_client::scratch`).
//!
//! A replica file never changes once written (a new version is a new file),
//! and a descriptor stays valid after the node deletes the file, so a client
//! may keep descriptors for as long as it likes; it only pins the disk space
//! of deleted versions while it does.

use crate::net::{handshake_client, handshake_server, ConnectError, Secret, HANDSHAKE_TIMEOUT};
use crate::{ChunkId, FsError, InodeId, Version};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

const REQUEST_BYTES: usize = 16;
const REPLY_BYTES: usize = 5;

/// What a client asks a node's local socket for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalRequest {
    /// A replica file, read-only.
    Replica(ChunkId, Version),
    /// The scratch file of an inode, read-write, created if missing.
    Scratch(InodeId),
}

impl LocalRequest {
    fn encode(self) -> [u8; REQUEST_BYTES] {
        let (a, b) = match self {
            LocalRequest::Replica(c, v) => (c.0, v.0),
            LocalRequest::Scratch(ino) => (ino.0, Version::SCRATCH_FILE.0),
        };
        let mut req = [0u8; REQUEST_BYTES];
        req[..8].copy_from_slice(&a.to_le_bytes());
        req[8..].copy_from_slice(&b.to_le_bytes());
        req
    }

    fn decode(req: &[u8; REQUEST_BYTES]) -> LocalRequest {
        let a = u64::from_le_bytes(req[..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(req[8..].try_into().expect("8 bytes"));
        match Version(b) {
            Version::SCRATCH_FILE => LocalRequest::Scratch(InodeId(a)),
            v => LocalRequest::Replica(ChunkId(a), v),
        }
    }
}

/// The abstract socket name of the node advertised as `advertise`.
pub fn socket_name(advertise: &str) -> String {
    format!("stripefs-node {advertise}")
}

fn abstract_addr(advertise: &str) -> io::Result<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_abstract_name(socket_name(advertise).as_bytes())
}

/// Binds the local-read socket of the node advertised as `advertise`.
/// Fails with `AddrInUse` when another node on this host advertises the
/// same address.
pub fn bind(advertise: &str) -> io::Result<UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind_addr(&abstract_addr(advertise)?)?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Serves local-read requests on `listener` until `shutdown`: each
/// connection is authenticated, then every request gets the descriptor
/// `open` returns for it, or its error. `open` runs right on the runtime's
/// thread: opening a file is one quick system call, cheaper than a hand-off
/// to the blocking pool and back.
pub async fn serve<F>(listener: UnixListener, secret: Secret, shutdown: CancellationToken, open: F)
where
    F: Fn(LocalRequest) -> Result<File, FsError> + Clone + Send + Sync + 'static,
{
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("local-read socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (secret, shutdown, open) = (secret.clone(), shutdown.clone(), open.clone());
        tokio::spawn(async move {
            if let Some(Err(e)) = shutdown.run_until_cancelled(serve_one(stream, secret, open)).await {
                tracing::debug!("local-read connection ended: {e}");
            }
        });
    }
}

async fn serve_one<F>(mut stream: UnixStream, secret: Secret, open: F) -> io::Result<()>
where
    F: Fn(LocalRequest) -> Result<File, FsError> + Clone + Send + Sync + 'static,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_server(&mut stream, &secret)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!("refused a local-read connection: {e}");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!("refused a local-read connection: handshake timed out");
            return Ok(());
        }
    }
    let mut req = [0u8; REQUEST_BYTES];
    loop {
        match stream.read_exact(&mut req).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        send_reply(&stream, open(LocalRequest::decode(&req))).await?;
    }
}

fn encode_reply(r: &Result<File, FsError>) -> [u8; REPLY_BYTES] {
    let mut reply = [0u8; REPLY_BYTES];
    if let Err(e) = r {
        reply[0] = 1;
        let code = bincode::serialize(e).unwrap_or_default();
        let n = code.len().min(REPLY_BYTES - 1);
        reply[1..1 + n].copy_from_slice(&code[..n]);
    }
    reply
}

async fn send_reply(stream: &UnixStream, r: Result<File, FsError>) -> io::Result<()> {
    let reply = encode_reply(&r);
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            let fds;
            if let Ok(file) = &r {
                fds = [file.as_fd()];
                control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
            }
            rustix::net::sendmsg(stream, &[IoSlice::new(&reply)], &mut control, rustix::net::SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(n) if n == REPLY_BYTES => return Ok(()),
            // Five bytes into an empty Unix socket buffer do not split.
            Ok(n) => return Err(io::Error::other(format!("short local-read reply ({n} bytes)"))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A client's connection to the local-read socket of one node. Its calls
/// block: it is meant for threads that block anyway (FUSE session threads,
/// the blocking pool).
#[derive(Debug)]
pub struct LocalConn {
    stream: std::os::unix::net::UnixStream,
}

impl LocalConn {
    /// Connects to the local-read socket of the node advertised as
    /// `advertise` and authenticates. `Ok(None)`: no such node runs on this
    /// host (no socket of that name here).
    pub async fn connect(
        advertise: &str,
        secret: &Secret,
        timeout: Duration,
    ) -> Result<Option<LocalConn>, ConnectError> {
        let name = socket_name(advertise);
        let io_err = |error| ConnectError::Connect { addr: format!("@{name}"), error };
        let std = match std::os::unix::net::UnixStream::connect_addr(&abstract_addr(advertise).map_err(io_err)?) {
            Ok(s) => s,
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
                return Ok(None)
            }
            Err(e) => return Err(io_err(e)),
        };
        std.set_nonblocking(true).map_err(io_err)?;
        let mut stream = UnixStream::from_std(std).map_err(io_err)?;
        match tokio::time::timeout(timeout, handshake_client(&mut stream, secret, &format!("@{name}"))).await {
            Ok(r) => r?,
            Err(_) => return Err(ConnectError::Timeout { addr: format!("@{name}"), timeout }),
        }
        let std = stream.into_std().map_err(io_err)?;
        std.set_nonblocking(false).map_err(io_err)?;
        Ok(Some(LocalConn { stream: std }))
    }

    /// Asks for a read-only descriptor of the replica of `chunk` at
    /// `version`. The outer error is the connection's (drop it); the inner
    /// one is the node's answer (`NotFound` when it holds no such replica).
    pub fn open(&mut self, chunk: ChunkId, version: Version, timeout: Duration) -> io::Result<Result<File, FsError>> {
        self.request(LocalRequest::Replica(chunk, version), timeout)
    }

    /// Asks for a descriptor: [`LocalConn::open`] for any request.
    pub fn request(&mut self, request: LocalRequest, timeout: Duration) -> io::Result<Result<File, FsError>> {
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        self.stream.write_all(&request.encode())?;

        let mut reply = [0u8; REPLY_BYTES];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &self.stream,
            &mut [IoSliceMut::new(&mut reply)],
            &mut control,
            rustix::net::RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut file = None;
        for msg in control.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(fds) = msg {
                // Any extra descriptor is closed as it is dropped here.
                for fd in fds {
                    file.get_or_insert(File::from(fd));
                }
            }
        }
        if got.bytes == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::other("local-read reply: descriptor truncated"));
        }
        if got.bytes < REPLY_BYTES {
            self.stream.read_exact(&mut reply[got.bytes..])?;
        }
        match (reply[0], file) {
            (0, Some(f)) => Ok(Ok(f)),
            (0, None) => Err(io::Error::other("local-read reply without a descriptor")),
            (_, _) => Ok(Err(bincode::deserialize(&reply[1..]).unwrap_or(FsError::Internal))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;

    fn secret(s: &str) -> Secret {
        Secret::new(s.repeat(16), "test").expect("secret")
    }

    /// A node's local-read socket serving files from `dir` named
    /// `<chunk>-<version>`, and scratch files named `scratch-<ino>`.
    fn start(advertise: &str, dir: std::path::PathBuf, shutdown: &CancellationToken) {
        let listener = bind(advertise).expect("bind");
        let open = move |r: LocalRequest| match r {
            LocalRequest::Replica(c, v) => {
                File::open(dir.join(format!("{}-{}", c.0, v.0))).map_err(|_| FsError::NotFound)
            }
            LocalRequest::Scratch(ino) => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(format!("scratch-{}", ino.0)))
                .map_err(|_| FsError::Internal),
        };
        tokio::spawn(serve(listener, secret("a"), shutdown.clone(), open));
    }

    fn unique(what: &str) -> String {
        format!("test-{what}-{}-{:?}", std::process::id(), std::time::Instant::now())
    }

    #[tokio::test]
    async fn descriptors_are_handed_over_and_errors_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("7-9"), b"replica bytes").expect("write");
        let shutdown = CancellationToken::new();
        let addr = unique("ok");
        start(&addr, dir.path().to_path_buf(), &shutdown);

        let mut conn = LocalConn::connect(&addr, &secret("a"), Duration::from_secs(5))
            .await
            .expect("connect")
            .expect("a node is here");
        let got = tokio::task::spawn_blocking(move || {
            let mut f = conn.open(ChunkId(7), Version(9), Duration::from_secs(5)).expect("io").expect("found");
            // The file is removed on the node's side: the descriptor still reads.
            std::fs::remove_file(dir.path().join("7-9")).expect("remove");
            let mut s = String::new();
            f.rewind().expect("rewind");
            f.read_to_string(&mut s).expect("read");
            let missing = conn.open(ChunkId(7), Version(10), Duration::from_secs(5)).expect("io");
            (s, missing.err())
        })
        .await
        .expect("task");
        assert_eq!(got, ("replica bytes".to_string(), Some(FsError::NotFound)));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_scratch_file_comes_read_write_and_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let addr = unique("scratch");
        start(&addr, dir.path().to_path_buf(), &shutdown);
        let mut conn = LocalConn::connect(&addr, &secret("a"), Duration::from_secs(5))
            .await
            .expect("connect")
            .expect("a node is here");
        let path = dir.path().join("scratch-42");
        tokio::task::spawn_blocking(move || {
            let mut f =
                conn.request(LocalRequest::Scratch(InodeId(42)), Duration::from_secs(5)).expect("io").expect("ok");
            f.write_all(b"written by the client").expect("write through the descriptor");
        })
        .await
        .expect("task");
        assert_eq!(std::fs::read(path).expect("the node's file"), b"written by the client");
        assert_eq!(
            LocalRequest::decode(&LocalRequest::Scratch(InodeId(42)).encode()),
            LocalRequest::Scratch(InodeId(42))
        );
        let r = LocalRequest::Replica(ChunkId(3), Version(4));
        assert_eq!(LocalRequest::decode(&r.encode()), r);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn no_node_here_is_not_an_error() {
        let r = LocalConn::connect(&unique("absent"), &secret("a"), Duration::from_secs(5)).await.expect("connect");
        assert!(r.is_none());
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shutdown = CancellationToken::new();
        let addr = unique("secret");
        start(&addr, dir.path().to_path_buf(), &shutdown);
        let e = LocalConn::connect(&addr, &secret("b"), Duration::from_secs(5)).await.expect_err("refused");
        assert!(matches!(e, ConnectError::Refused { .. }), "{e}");
        shutdown.cancel();
    }

    #[test]
    fn two_nodes_cannot_share_a_name() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let _guard = rt.enter();
        let addr = unique("twice");
        let _first = bind(&addr).expect("first");
        assert_eq!(bind(&addr).expect_err("second").kind(), io::ErrorKind::AddrInUse);
    }
}
