//! Authenticated connections.
//!
//! Every connection starts with a challenge–response handshake on the
//! cluster secret before any RPC is exchanged; the secret itself never
//! crosses the wire. Both sides prove they know it:
//!
//! ```text
//! server → client: "STRIPEFS" | version u32 | nonce_s[32]
//! client → server: nonce_c[32] | HMAC-SHA256(secret, "client" | nonce_s | nonce_c)
//! server → client: status u8 (0 ok, 1 refused) | HMAC-SHA256(secret, "server" | nonce_c | nonce_s)
//! ```
//!
//! After it, the stream carries length-delimited bincode frames (tarpc).

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{de::DeserializeOwned, Serialize};
use sha2::Sha256;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tarpc::serde_transport::Transport;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const MAGIC: &[u8; 8] = b"STRIPEFS";
/// Bumped whenever a message changes shape: peers of different versions
/// refuse each other at the handshake, with an error that says so, instead
/// of failing on the first message they cannot decode.
/// 2: open returns chunk locations; create, mkdir, unlink, rmdir and
/// rename return directory attributes. 3: chunk writes on data
/// connections ([`crate::data_conn`]). 4: heartbeats name the node's disk,
/// write headers say whether a node forwarded them, and chunks are written
/// only on data connections (no `write_chunk` RPC). 5: heartbeats and node
/// statuses carry the node's worker statuses; the master's `workers` RPC.
/// 6: mutations are one `ops` type each inside a `Request` with a request id.
/// 7: master groups: `NotLeader`, the `leader`, `raft`, `group` and
/// `group_change` RPCs.
/// 8: early answers: mutations answer [`crate::ops::Acked`] with their
/// durability, requests may be replays, client sessions register.
/// 9: directory leases: the `lease_dir` and `lease_poll` RPCs.
/// 10: scratch files: [`crate::types::DataClass`] and the home node in
/// every `Attr`, `set_class`, the node's `scratch_*` RPCs and local
/// scratch opens.
pub const PROTOCOL_VERSION: u32 = 10;
const NONCE_BYTES: usize = 32;
const MAC_BYTES: usize = 32;

/// Largest frame accepted on a connection: a whole chunk plus headroom.
pub const MAX_FRAME_BYTES: usize = 80 * 1024 * 1024;

/// How long a peer may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Environment variable holding the cluster secret itself.
pub const SECRET_ENV: &str = "STRIPEFS_SECRET";
/// Environment variable naming a file that holds the cluster secret.
pub const SECRET_FILE_ENV: &str = "STRIPEFS_SECRET_FILE";
/// Where the secret is looked for when nothing else names it.
pub const DEFAULT_SECRET_FILE: &str = "/etc/stripefs/secret";
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The cluster secret shared by the master, the nodes and the clients.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why no usable secret was found.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret file could not be read.
    #[error("cannot read the cluster secret file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The secret is too short.
    #[error("the cluster secret from {from} is shorter than {MIN_SECRET_BYTES} bytes")]
    TooShort {
        /// Where it came from.
        from: String,
    },
    /// Nothing names a secret.
    #[error(
        "no cluster secret: pass --secret-file FILE, set {SECRET_ENV} or {SECRET_FILE_ENV}, \
         or create {DEFAULT_SECRET_FILE}"
    )]
    Missing,
}

impl Secret {
    /// A secret from bytes; at least [`MIN_SECRET_BYTES`] long.
    pub fn new(bytes: impl Into<Vec<u8>>, from: &str) -> Result<Secret, SecretError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort { from: from.to_string() });
        }
        Ok(Secret(bytes))
    }

    /// A fresh random secret, hex-encoded (for `stripefs up`).
    pub fn generate() -> String {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        hex::encode(b)
    }

    /// Reads a secret file; surrounding whitespace is ignored.
    pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
        let text =
            std::fs::read(path).map_err(|source| SecretError::Read { path: path.to_path_buf(), error: source })?;
        let trimmed = text.trim_ascii();
        Secret::new(trimmed, &path.display().to_string())
    }

    /// The secret named by `file`, else by the environment, else the default file.
    pub fn resolve(file: Option<&Path>) -> Result<Secret, SecretError> {
        if let Some(f) = file {
            return Secret::from_file(f);
        }
        if let Ok(s) = std::env::var(SECRET_ENV) {
            return Secret::new(s.trim().as_bytes(), SECRET_ENV);
        }
        if let Ok(f) = std::env::var(SECRET_FILE_ENV) {
            return Secret::from_file(Path::new(&f));
        }
        let default = Path::new(DEFAULT_SECRET_FILE);
        if default.exists() {
            return Secret::from_file(default);
        }
        Err(SecretError::Missing)
    }

    /// The secret's bytes, for writing the root-only runtime file that
    /// lets admin commands reach the cluster of a mount.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, label: &[u8], a: &[u8], b: &[u8]) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        m.update(label);
        m.update(a);
        m.update(b);
        m
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        error: std::io::Error,
    },
    /// The peer did not answer in time.
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The time waited.
        timeout: Duration,
    },
    /// The peer is not a stripefs server.
    #[error("{addr} is not a stripefs server")]
    NotStripefs {
        /// The address.
        addr: String,
    },
    /// The peer is a stripefs server of another protocol version.
    #[error(
        "{addr} speaks stripefs protocol version {theirs}, this program version {PROTOCOL_VERSION}: \
         run the same stripefs release on every host"
    )]
    Version {
        /// The address.
        addr: String,
        /// The peer's protocol version.
        theirs: u32,
    },
    /// None of the masters leads a group right now.
    #[error("none of the masters {addrs} leads its group right now (an election may be under way)")]
    NoLeader {
        /// The masters asked.
        addrs: String,
    },
    /// The server refused our proof: the secrets differ.
    #[error("{addr} refused the connection: wrong cluster secret")]
    Refused {
        /// The address.
        addr: String,
    },
    /// The server could not prove it knows the secret.
    #[error("{addr} failed to prove it knows the cluster secret")]
    ServerNotAuthentic {
        /// The address.
        addr: String,
    },
    /// I/O failed during the handshake.
    #[error("handshake with {addr} failed: {error}")]
    Io {
        /// The address.
        addr: String,
        /// The cause.
        error: std::io::Error,
    },
}

/// Runs the client side of the handshake on a fresh stream.
pub async fn handshake_client<S>(stream: &mut S, secret: &Secret, addr: &str) -> Result<(), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |error| ConnectError::Io { addr: addr.to_string(), error };
    let mut hello = [0u8; 8 + 4 + NONCE_BYTES];
    stream.read_exact(&mut hello).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ConnectError::NotStripefs { addr: addr.to_string() }
        } else {
            io(e)
        }
    })?;
    if &hello[..8] != MAGIC {
        return Err(ConnectError::NotStripefs { addr: addr.to_string() });
    }
    let theirs = u32::from_be_bytes(hello[8..12].try_into().expect("4 bytes"));
    if theirs != PROTOCOL_VERSION {
        return Err(ConnectError::Version { addr: addr.to_string(), theirs });
    }
    let nonce_s = &hello[12..];
    let mut nonce_c = [0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce_c);
    let proof = secret.mac(b"client", nonce_s, &nonce_c).finalize().into_bytes();
    let mut msg = Vec::with_capacity(NONCE_BYTES + MAC_BYTES);
    msg.extend_from_slice(&nonce_c);
    msg.extend_from_slice(&proof);
    stream.write_all(&msg).await.map_err(io)?;
    let mut answer = [0u8; 1 + MAC_BYTES];
    match stream.read_exact(&mut answer).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ConnectError::Refused { addr: addr.to_string() })
        }
        Err(e) => return Err(io(e)),
    }
    if answer[0] != 0 {
        return Err(ConnectError::Refused { addr: addr.to_string() });
    }
    secret
        .mac(b"server", &nonce_c, nonce_s)
        .verify_slice(&answer[1..])
        .map_err(|_| ConnectError::ServerNotAuthentic { addr: addr.to_string() })
}

/// Why a peer was refused by a server.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The peer's proof did not match: it does not hold the secret.
    #[error("wrong cluster secret")]
    BadProof,
    /// The peer did not finish in time.
    #[error("handshake timed out")]
    Timeout,
    /// I/O failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the server side of the handshake on a fresh stream.
pub async fn handshake_server<S>(stream: &mut S, secret: &Secret) -> Result<(), AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut nonce_s = [0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce_s);
    let mut hello = Vec::with_capacity(8 + 4 + NONCE_BYTES);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    hello.extend_from_slice(&nonce_s);
    stream.write_all(&hello).await?;
    let mut msg = [0u8; NONCE_BYTES + MAC_BYTES];
    stream.read_exact(&mut msg).await?;
    let (nonce_c, proof) = msg.split_at(NONCE_BYTES);
    if secret.mac(b"client", &nonce_s, nonce_c).verify_slice(proof).is_err() {
        let _ = stream.write_all(&[1u8; 1 + MAC_BYTES]).await;
        return Err(AcceptError::BadProof);
    }
    let mut answer = Vec::with_capacity(1 + MAC_BYTES);
    answer.push(0);
    answer.extend_from_slice(&secret.mac(b"server", nonce_c, &nonce_s).finalize().into_bytes());
    stream.write_all(&answer).await?;
    Ok(())
}

/// A tarpc transport over an authenticated stream.
pub type BincodeTransport<Item, SinkItem> = Transport<TcpStream, Item, SinkItem, Bincode<Item, SinkItem>>;

/// Wraps an authenticated stream into a tarpc transport.
pub fn transport<Item, SinkItem>(stream: TcpStream) -> BincodeTransport<Item, SinkItem>
where
    Item: DeserializeOwned,
    SinkItem: Serialize,
{
    let _ = stream.set_nodelay(true);
    let framed = LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_BYTES).new_framed(stream);
    tarpc::serde_transport::new(framed, Bincode::default())
}

/// Opens a TCP connection and authenticates, all within `timeout`.
pub async fn connect_stream(addr: &str, secret: &Secret, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let fut = async {
        let mut stream =
            TcpStream::connect(addr).await.map_err(|error| ConnectError::Connect { addr: addr.to_string(), error })?;
        handshake_client(&mut stream, secret, addr).await?;
        Ok(stream)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout { addr: addr.to_string(), timeout }),
    }
}

/// A client for the master at `addr`.
pub async fn connect_master(
    addr: &str,
    secret: &Secret,
    timeout: Duration,
) -> Result<crate::MasterServiceClient, ConnectError> {
    Ok(crate::MasterServiceClient::from(connect_channel(addr, secret, timeout).await?))
}

/// The addresses of a list of masters (`m1:9400,m2:9400,m3:9400`).
pub fn master_addrs(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|a| !a.is_empty()).map(String::from).collect()
}

/// A client for the master leading the group, from a list of masters
/// (`m1:9400,m2:9400`): each is asked in turn who leads, and the leader
/// it names is tried next. Returns the client and the leader's address.
/// A wrong secret or protocol version fails at once; masters that cannot
/// be reached, or a group without a leader, give the last error seen.
pub async fn connect_leader(
    list: &str,
    secret: &Secret,
    timeout: Duration,
) -> Result<(crate::MasterServiceClient, String), ConnectError> {
    let mut queue: std::collections::VecDeque<String> = master_addrs(list).into();
    let single = queue.len() == 1;
    let mut tried: Vec<String> = Vec::new();
    let mut last = ConnectError::NoLeader { addrs: list.to_string() };
    while let Some(addr) = queue.pop_front() {
        if tried.contains(&addr) {
            continue;
        }
        tried.push(addr.clone());
        let c = match connect_master(&addr, secret, timeout).await {
            Ok(c) => c,
            Err(
                e @ (ConnectError::Refused { .. }
                | ConnectError::ServerNotAuthentic { .. }
                | ConnectError::Version { .. }),
            ) => return Err(e),
            Err(e) => {
                last = e;
                continue;
            }
        };
        match c.group(context_with_timeout(timeout)).await {
            Ok(Ok(st)) => {
                if st.leader.is_some() && st.leader == Some(st.this) {
                    return Ok((c, addr));
                }
                if let Some(leader) = st.leader.and_then(|l| st.members.into_iter().find(|m| m.id == l)) {
                    queue.push_front(leader.addr);
                }
                last = ConnectError::NoLeader { addrs: list.to_string() };
            }
            // A lone master that does not say who leads is the master:
            // its calls tell the rest.
            _ if single => return Ok((c, addr)),
            _ => {}
        }
    }
    Err(last)
}

/// `list` with the addresses of every member of the group `st` added (a
/// caller given one master learns the others, and can still find the
/// leader when that one is gone).
pub fn with_members(list: &str, st: &crate::types::GroupStatus) -> String {
    let mut addrs = master_addrs(list);
    for m in &st.members {
        if !addrs.contains(&m.addr) && !m.addr.is_empty() && !m.addr.starts_with("0.0.0.0") {
            addrs.push(m.addr.clone());
        }
    }
    addrs.join(",")
}

/// The address of the master leading the group (see [`connect_leader`]).
pub async fn find_leader(list: &str, secret: &Secret, timeout: Duration) -> Result<String, ConnectError> {
    connect_leader(list, secret, timeout).await.map(|(_, addr)| addr)
}

/// A multiplexed tarpc channel to the master or node at `addr` (what
/// [`connect_master`] and [`connect_node`] wrap), for clients that pick
/// their stub per call.
pub async fn connect_channel<Req, Resp>(
    addr: &str,
    secret: &Secret,
    timeout: Duration,
) -> Result<tarpc::client::Channel<Req, Resp>, ConnectError>
where
    Req: tarpc::RequestName + Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    let stream = connect_stream(addr, secret, timeout).await?;
    Ok(tarpc::client::new(client_config(), transport(stream)).spawn())
}

/// A client for the storage node at `addr`.
pub async fn connect_node(
    addr: &str,
    secret: &Secret,
    timeout: Duration,
) -> Result<crate::NodeServiceClient, ConnectError> {
    Ok(crate::NodeServiceClient::from(connect_channel(addr, secret, timeout).await?))
}

fn client_config() -> tarpc::client::Config {
    let mut c = tarpc::client::Config::default();
    c.max_in_flight_requests = 4096;
    c.pending_request_buffer = 1024;
    c
}

/// Accepts connections until `shutdown`, authenticates each in its own
/// task, and hands authenticated streams to `handle`. Refused peers are
/// logged and dropped.
pub async fn accept_loop<H>(listener: TcpListener, secret: Secret, shutdown: CancellationToken, handle: H)
where
    H: Fn(TcpStream, SocketAddr) + Clone + Send + Sync + 'static,
{
    loop {
        let (mut stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let secret = secret.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let r = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_server(&mut stream, &secret)).await {
                Ok(r) => r,
                Err(_) => Err(AcceptError::Timeout),
            };
            match r {
                Ok(()) => handle(stream, peer),
                Err(e) => tracing::warn!("refused connection from {peer}: {e}"),
            }
        });
    }
}

/// A blocking client speaking tarpc's wire format (length-delimited
/// bincode frames, the same as [`transport`]) on an authenticated std
/// stream, one call at a time.
///
/// A thread that owns one sends and receives on its own socket: no hand-off
/// to a dispatch task and back, which is what a multiplexed tarpc client
/// costs per call (~30 µs of ~75 µs on this machine's loopback). Servers
/// cannot tell it from a tarpc client.
pub struct BlockingClient {
    stream: std::net::TcpStream,
    next_id: u64,
    /// The request being sent.
    out: Vec<u8>,
    /// Answers are read into it; it keeps its largest length, so it is
    /// not zeroed again for every answer.
    inb: Vec<u8>,
    /// The socket's read and write timeout now.
    timeout: Option<std::time::Duration>,
}

/// Bytes read at once when an answer starts: the length and, usually,
/// the whole answer in one system call.
const FIRST_READ_BYTES: usize = 16 * 1024;

impl BlockingClient {
    /// Wraps an authenticated stream.
    pub fn new(stream: TcpStream) -> std::io::Result<BlockingClient> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        Ok(BlockingClient { stream, next_id: 0, out: Vec::new(), inb: Vec::new(), timeout: None })
    }

    /// Sends `request` and waits for its answer. After any error the
    /// connection is in an unknown state: drop the client.
    pub fn call<Req, Resp>(
        &mut self,
        ctx: tarpc::context::Context,
        request: Req,
    ) -> Result<Resp, tarpc::client::RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        use bincode::Options;
        use std::io::{Read, Write};
        use tarpc::client::RpcError;
        let broken = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => RpcError::DeadlineExceeded,
            _ => RpcError::Send(Box::new(e)),
        };
        // The call's deadline bounds each wait on the socket. Calls of
        // one kind have about the same time left: the timeouts are set
        // again (two system calls) only when that changes.
        let left = ctx.deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(RpcError::DeadlineExceeded);
        }
        let slack = (left / 10).min(std::time::Duration::from_secs(1));
        if self.timeout.is_none_or(|t| t.abs_diff(left) > slack) {
            self.timeout = None;
            self.stream.set_read_timeout(Some(left)).map_err(broken)?;
            self.stream.set_write_timeout(Some(left)).map_err(broken)?;
            self.timeout = Some(left);
        }
        let codec = bincode::DefaultOptions::new();
        let id = self.next_id;
        self.next_id += 1;
        let message = tarpc::ClientMessage::Request(tarpc::Request { context: ctx, id, message: request });
        self.out.clear();
        self.out.extend_from_slice(&[0; 4]);
        codec.serialize_into(&mut self.out, &message).map_err(|e| RpcError::Send(e))?;
        let len = u32::try_from(self.out.len() - 4).map_err(|e| RpcError::Send(Box::new(e)))?;
        self.out[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&self.out).map_err(broken)?;

        if self.inb.len() < FIRST_READ_BYTES {
            self.inb.resize(FIRST_READ_BYTES, 0);
        }
        let mut have = 0;
        while have < 4 {
            match self.stream.read(&mut self.inb[have..]).map_err(broken)? {
                0 => return Err(broken(std::io::ErrorKind::UnexpectedEof.into())),
                n => have += n,
            }
        }
        let len = u32::from_be_bytes(self.inb[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(RpcError::Send(format!("answer of {len} bytes is larger than any frame").into()));
        }
        let end = 4 + len;
        // One call at a time: nothing can follow the answer.
        if have > end {
            return Err(RpcError::Send(format!("{} bytes after an answer", have - end).into()));
        }
        if self.inb.len() < end {
            self.inb.resize(end, 0);
        }
        self.stream.read_exact(&mut self.inb[have..end]).map_err(broken)?;
        let response: tarpc::Response<Resp> = codec.deserialize(&self.inb[4..end]).map_err(|e| RpcError::Send(e))?;
        if response.request_id != id {
            return Err(RpcError::Send(
                format!("answer to request {} where {id} was asked", response.request_id).into(),
            ));
        }
        Ok(response.message?)
    }
}

/// tarpc's call context.
pub type TarpcContext = tarpc::context::Context;

/// A tarpc context whose deadline is `timeout` from now.
pub fn context_with_timeout(timeout: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + timeout;
    // A trace id of its own (64 random bits: short in logs, unique enough
    // to find one call): the caller logs it, and the server's span of the
    // call carries it, so one request can be followed across processes.
    if ctx.trace_context.trace_id.is_none() {
        ctx.trace_context.trace_id = tarpc::trace::TraceId::from(u128::from(rand::random::<u64>()));
    }
    ctx
}

/// The kernel's range of ephemeral ports (`ip_local_port_range`; Linux's
/// default when it cannot be read).
pub fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|w| w.parse::<u16>().ok());
    match (it.next(), it.next()) {
        (Some(low), Some(high)) if low <= high => low..=high,
        _ => 32768..=60999,
    }
}

/// A free TCP address on `ip` whose port lies outside the ephemeral range,
/// for a server that must find its port again when it is restarted: a
/// port of that range, while its server is down, may be taken by any
/// outgoing connection on the host (as its local port), and the server
/// then cannot listen there again.
pub fn lasting_addr(ip: &str) -> std::io::Result<std::net::SocketAddr> {
    let eph = ephemeral_ports();
    // Below the ephemeral range when it leaves room there, else above it.
    let (low, high) = match *eph.start() >= 12_000 {
        true => (10_000, *eph.start() - 1),
        false => (eph.end().saturating_add(1).max(1024), u16::MAX),
    };
    if low > high {
        return Err(std::io::Error::other(format!("no port outside the ephemeral range {eph:?}")));
    }
    let mut last = None;
    for _ in 0..256 {
        let port = rand::Rng::random_range(&mut rand::rng(), low..=high);
        match std::net::TcpListener::bind((ip, port)) {
            Ok(l) => return l.local_addr(),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lasting_addresses_are_free_and_outside_the_ephemeral_range() {
        let eph = ephemeral_ports();
        for _ in 0..20 {
            let a = lasting_addr("127.0.0.1").expect("a free port");
            assert!(!eph.contains(&a.port()), "{a} is in the ephemeral range {eph:?}");
            std::net::TcpListener::bind(a).expect("still free");
        }
    }

    async fn pair(server_secret: Secret, client_secret: Secret) -> (Result<(), AcceptError>, Result<(), ConnectError>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            handshake_server(&mut s, &server_secret).await
        });
        let client = connect_stream(&addr, &client_secret, Duration::from_secs(5)).await.map(|_| ());
        (server.await.expect("join"), client)
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes(), "test").expect("secret")
    }

    #[tokio::test]
    async fn same_secret_is_accepted() {
        let (s, c) = pair(secret("0123456789abcdef"), secret("0123456789abcdef")).await;
        assert!(s.is_ok(), "{s:?}");
        assert!(c.is_ok(), "{c:?}");
    }

    #[tokio::test]
    async fn wrong_secret_is_refused_on_both_sides() {
        let (s, c) = pair(secret("0123456789abcdef"), secret("fedcba9876543210")).await;
        assert!(matches!(s, Err(AcceptError::BadProof)), "{s:?}");
        assert!(matches!(c, Err(ConnectError::Refused { .. })), "{c:?}");
    }

    #[tokio::test]
    async fn a_server_of_another_version_is_named_as_such() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut hello = MAGIC.to_vec();
            hello.extend_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
            hello.extend_from_slice(&[7u8; NONCE_BYTES]);
            s.write_all(&hello).await.expect("hello");
            // Hold the connection until the client gives up.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        let e = connect_stream(&addr, &secret("0123456789abcdef"), Duration::from_secs(5)).await.map(|_| ());
        match e {
            Err(ConnectError::Version { theirs, .. }) => assert_eq!(theirs, PROTOCOL_VERSION + 1),
            other => panic!("expected a version error, got {other:?}"),
        }
        let msg = ConnectError::Version { addr, theirs: 1 }.to_string();
        assert!(msg.contains("version 1") && msg.contains("same stripefs release"), "{msg}");
        server.await.expect("join");
    }

    #[tarpc::service]
    trait Echo {
        async fn echo(s: String) -> String;
    }

    #[derive(Clone)]
    struct EchoServer;

    impl Echo for EchoServer {
        async fn echo(self, _: tarpc::context::Context, s: String) -> String {
            s.repeat(2)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_client_talks_to_a_tarpc_server() {
        use futures::StreamExt;
        use tarpc::server::{BaseChannel, Channel};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let s = secret("0123456789abcdef");
        let server_secret = s.clone();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            handshake_server(&mut stream, &server_secret).await.expect("handshake");
            BaseChannel::with_defaults(transport(stream))
                .execute(EchoServer.serve())
                .for_each(|f| async move {
                    tokio::spawn(f);
                })
                .await;
        });
        let stream = connect_stream(&addr, &s, Duration::from_secs(5)).await.expect("connect");
        let mut client = BlockingClient::new(stream).expect("client");
        tokio::task::spawn_blocking(move || {
            for i in 0..3 {
                let said = "x".repeat(i + 1);
                let ctx = context_with_timeout(Duration::from_secs(5));
                let got: EchoResponse = client.call(ctx, EchoRequest::Echo { s: said.clone() }).expect("call");
                let EchoResponse::Echo(got) = got;
                assert_eq!(got, said.repeat(2), "call {i}");
            }
            // A big answer spans many reads.
            let ctx = context_with_timeout(Duration::from_secs(5));
            let big = "y".repeat(1 << 20);
            let EchoResponse::Echo(got) = client.call(ctx, EchoRequest::Echo { s: big.clone() }).expect("big call");
            assert_eq!(got.len(), 2 << 20);
            // Small answers after it (the answer buffer stays large), with
            // other deadlines (the socket timeouts change).
            for (i, secs) in [30, 30, 1, 120].into_iter().enumerate() {
                let ctx = context_with_timeout(Duration::from_secs(secs));
                let said = format!("after {i}");
                let EchoResponse::Echo(got) = client.call(ctx, EchoRequest::Echo { s: said.clone() }).expect("call");
                assert_eq!(got, said.repeat(2));
            }
        })
        .await
        .expect("blocking calls");
    }

    #[test]
    fn short_secrets_are_rejected() {
        assert!(matches!(Secret::new(b"short".to_vec(), "x"), Err(SecretError::TooShort { .. })));
    }
}
