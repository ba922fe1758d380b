//! The data path of chunk writes: a chunk's blocks travel as raw bytes
//! after a small header, not inside a bincode frame.
//!
//! Through tarpc, every byte of an upload was copied five times in user
//! space on its way to the first node's disk: bincode serialization and
//! the length-delimited codec on the sender, deserialization on the
//! receiver, again on each chain hop, and the gather into the node's
//! write buffer. On the data path the sender writes the header and the
//! blocks' own buffers with one vectored write, and the receiver reads the
//! blocks straight into the buffer it writes to disk and forwards from.
//!
//! A data connection is a node connection (same port, same authenticated
//! handshake) whose client sends [`DATA_MAGIC`] first. tarpc frames start
//! with their big-endian length, at most [`MAX_FRAME_BYTES`], so the two
//! cannot be confused. Then, for each write, one call at a time:
//!
//! ```text
//! request  header length u32 LE | header (bincode WriteHeader) | blocks' stored bytes, back to back
//! reply    length u32 LE | bincode Result<u64, FsError> (the bytes stored)
//! ```
//!
//! Both ends use blocking sockets: the client's uploads run on the blocking
//! pool, and a node serves each data connection on a thread of its own.

use crate::net::{connect_stream, ConnectError, Secret, MAX_FRAME_BYTES};
use crate::replica::MAX_BLOCKS_PER_CHUNK;
use crate::types::EncodedBlock;
use crate::{ChunkId, FsError, Version};
use bincode::Options;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// First bytes a client sends on a data connection.
pub const DATA_MAGIC: [u8; 4] = [0xff, 0xff, 0xff, 0xfe];

/// Largest header accepted (a full chunk's table and a long chain).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Largest reply accepted.
const MAX_REPLY_BYTES: usize = 1024;

/// Idle data connections older than this are not reused (a node closes
/// them after [`SERVER_IDLE`]).
const CLIENT_IDLE: Duration = Duration::from_secs(20);

/// How long a node keeps a data connection that sends nothing.
pub const SERVER_IDLE: Duration = Duration::from_secs(60);

/// Longest a new data connection may take to set up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections kept per node address.
const IDLE_PER_ADDR: usize = 8;

const _: () = assert!(u32::from_be_bytes(DATA_MAGIC) as usize > MAX_FRAME_BYTES);

/// A block as described in a [`WriteHeader`]: everything but its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockMeta {
    /// Length of the block's data once decoded.
    pub raw_len: u32,
    /// How the stored bytes are encoded ([`Codec`]).
    pub codec: u8,
    /// crc32 of the stored bytes.
    pub crc: u32,
    /// Length of the stored bytes.
    pub stored_len: u32,
}

impl BlockMeta {
    /// The description of `block`.
    pub fn of(block: &EncodedBlock) -> BlockMeta {
        BlockMeta { raw_len: block.raw_len, codec: block.codec, crc: block.crc, stored_len: block.data.len() as u32 }
    }
}

/// What precedes a chunk's bytes on a data connection (chunk writes travel
/// only this way): the chunk version, its blocks' descriptions, and the
/// rest of the replication chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteHeader {
    /// Chunk id.
    pub chunk: ChunkId,
    /// Version.
    pub version: Version,
    /// Valid bytes in the chunk.
    pub length: u32,
    /// The blocks, in order.
    pub blocks: Vec<BlockMeta>,
    /// Addresses of the next nodes in the replication chain.
    pub chain: Vec<String>,
    /// Whether to fsync before acknowledging.
    pub sync: bool,
    /// How long the whole write may take, in milliseconds.
    pub timeout_ms: u64,
    /// Whether a node of the chain passed this write on (the writer sends
    /// `false`). Nodes let such writes in without waiting for memory, so
    /// that nodes cannot wait on each other's memory in a circle.
    pub forwarded: bool,
}

impl WriteHeader {
    /// The header for `blocks`.
    pub fn new(
        chunk: ChunkId,
        version: Version,
        length: u32,
        blocks: &[EncodedBlock],
        chain: Vec<String>,
        sync: bool,
        timeout: Duration,
    ) -> WriteHeader {
        let blocks = blocks.iter().map(BlockMeta::of).collect();
        WriteHeader {
            chunk,
            version,
            length,
            blocks,
            chain,
            sync,
            timeout_ms: timeout.as_millis() as u64,
            forwarded: false,
        }
    }

    /// Bytes of block data that follow the header.
    pub fn payload_len(&self) -> usize {
        self.blocks.iter().map(|b| b.stored_len as usize).sum()
    }

    /// How long the write may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks what can be checked before the bytes arrive: block count and
    /// sizes, that stored sizes fit their codec.
    pub fn check(&self) -> Result<(), String> {
        if self.blocks.len() > MAX_BLOCKS_PER_CHUNK {
            return Err(format!("{} blocks", self.blocks.len()));
        }
        crate::replica::check_layout(self.length, self.blocks.iter().map(|b| b.raw_len))?;
        for (i, b) in self.blocks.iter().enumerate() {
            if !crate::replica::stored_len_fits(b.codec, b.raw_len, b.stored_len) {
                return Err(format!("block {i}: codec {} with {} stored bytes", b.codec, b.stored_len));
            }
        }
        Ok(())
    }
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads the next request's header; `None` when the peer closed the
/// connection between requests.
pub fn read_header(stream: &mut impl Read) -> io::Result<Option<WriteHeader>> {
    let mut len = [0u8; 4];
    match stream.read(&mut len[..1])? {
        0 => return Ok(None),
        _ => stream.read_exact(&mut len[1..])?,
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(invalid(format!("write header of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf)?;
    codec().deserialize(&buf).map(Some).map_err(|e| invalid(format!("write header: {e}")))
}

/// Sends the answer to a write.
pub fn write_reply(stream: &mut impl Write, reply: &Result<u64, FsError>) -> io::Result<()> {
    let body = codec().serialize(reply).map_err(|e| invalid(e.to_string()))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    stream.write_all(&out)
}

/// Writes all of `bufs` (std's `write_all_vectored` is not stable).
fn write_all_vectored(stream: &mut impl Write, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match stream.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `e` says the peer closed the connection.
fn closed(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
}

/// Why a write over the data path failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The node answered with an error.
    #[error("{0}")]
    Refused(FsError),
    /// The node could not be reached, or the connection broke.
    #[error("{0}")]
    Transport(String),
}

/// One blocking data connection.
#[derive(Debug)]
pub struct DataConn {
    stream: TcpStream,
    /// When it last finished a write.
    idle_since: Instant,
    /// The socket's timeout now.
    timeout: Duration,
}

impl DataConn {
    /// Turns an authenticated node connection into a data connection.
    pub fn new(stream: tokio::net::TcpStream) -> io::Result<DataConn> {
        let mut stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_nodelay(true)?;
        stream.write_all(&DATA_MAGIC)?;
        Ok(DataConn { stream, idle_since: Instant::now(), timeout: Duration::ZERO })
    }

    /// Sends one write: the header, then `payload` (the blocks' bytes,
    /// [`WriteHeader::payload_len`] in all), in one vectored write.
    pub fn send(&mut self, header: &WriteHeader, payload: &[&[u8]]) -> io::Result<()> {
        debug_assert_eq!(payload.iter().map(|p| p.len()).sum::<usize>(), header.payload_len());
        let timeout = header.timeout().max(Duration::from_millis(1));
        if timeout != self.timeout {
            self.stream.set_read_timeout(Some(timeout))?;
            self.stream.set_write_timeout(Some(timeout))?;
            self.timeout = timeout;
        }
        let body = codec().serialize(header).map_err(|e| invalid(e.to_string()))?;
        let mut head = Vec::with_capacity(4 + body.len());
        head.extend_from_slice(&(body.len() as u32).to_le_bytes());
        head.extend_from_slice(&body);
        let mut bufs: Vec<IoSlice<'_>> = Vec::with_capacity(1 + payload.len());
        bufs.push(IoSlice::new(&head));
        bufs.extend(payload.iter().map(|p| IoSlice::new(p)));
        write_all_vectored(&mut self.stream, &mut bufs)
    }

    /// Waits for the answer to the write sent last.
    pub fn recv(&mut self) -> io::Result<Result<u64, FsError>> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_REPLY_BYTES {
            return Err(invalid(format!("write reply of {len} bytes")));
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf)?;
        self.idle_since = Instant::now();
        codec().deserialize(&buf).map_err(|e| invalid(format!("write reply: {e}")))
    }
}

/// Idle data connections to nodes, by address, shared by the threads that
/// write.
#[derive(Debug)]
pub struct DataPool {
    secret: Secret,
    idle: Mutex<HashMap<String, Vec<DataConn>>>,
}

/// A write sent on a connection whose answer has not been read yet; see
/// [`DataPool::send`].
#[derive(Debug)]
pub struct Pending<'a> {
    addr: &'a str,
    header: &'a WriteHeader,
    payload: &'a [&'a [u8]],
    conn: DataConn,
    /// Whether `conn` came from the pool (it may have been closed by the
    /// node meanwhile: a failure then is retried once on a new one).
    reused: bool,
}

impl DataPool {
    /// An empty pool connecting with `secret`.
    pub fn new(secret: Secret) -> DataPool {
        DataPool { secret, idle: Mutex::new(HashMap::new()) }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<DataConn>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to `addr` young enough to reuse.
    fn take_idle(&self, addr: &str) -> Option<DataConn> {
        let mut idle = self.idle();
        let list = idle.get_mut(addr)?;
        std::iter::from_fn(|| list.pop()).find(|c| c.idle_since.elapsed() < CLIENT_IDLE)
    }

    fn give(&self, addr: &str, conn: DataConn) {
        let mut idle = self.idle();
        let list = idle.entry(addr.to_string()).or_default();
        if list.len() < IDLE_PER_ADDR {
            list.push(conn);
        }
    }

    /// Sends a write to `addr` without waiting for its answer, so the
    /// caller can work meanwhile; [`Pending::finish`] gets the answer.
    /// Call from a thread that may block, not from async code.
    pub fn send<'a>(
        &self,
        rt: &tokio::runtime::Handle,
        addr: &'a str,
        header: &'a WriteHeader,
        payload: &'a [&'a [u8]],
    ) -> Result<Pending<'a>, DataError> {
        if let Some(mut conn) = self.take_idle(addr) {
            match conn.send(header, payload) {
                Ok(()) => return Ok(Pending { addr, header, payload, conn, reused: true }),
                Err(e) if closed(&e) => tracing::debug!("idle data connection to {addr} broke ({e}); connecting again"),
                Err(e) => return Err(DataError::Transport(format!("{addr}: {e}"))),
            }
        }
        self.send_fresh(rt, addr, header, payload)
    }

    fn send_fresh<'a>(
        &self,
        rt: &tokio::runtime::Handle,
        addr: &'a str,
        header: &'a WriteHeader,
        payload: &'a [&'a [u8]],
    ) -> Result<Pending<'a>, DataError> {
        let mut conn = self.connect(rt, addr, header.timeout())?;
        conn.send(header, payload).map_err(|e| DataError::Transport(format!("{addr}: {e}")))?;
        Ok(Pending { addr, header, payload, conn, reused: false })
    }

    /// A new data connection to `addr`, set up on `rt`.
    fn connect(&self, rt: &tokio::runtime::Handle, addr: &str, timeout: Duration) -> Result<DataConn, DataError> {
        let connect = connect_stream(addr, &self.secret, timeout.min(CONNECT_TIMEOUT));
        let stream = rt.block_on(connect).map_err(|e: ConnectError| DataError::Transport(e.to_string()))?;
        DataConn::new(stream).map_err(|e| DataError::Transport(format!("{addr}: {e}")))
    }

    /// Writes a chunk to `addr` (and its chain) and waits for the answer.
    pub fn write(
        &self,
        rt: &tokio::runtime::Handle,
        addr: &str,
        header: &WriteHeader,
        payload: &[&[u8]],
    ) -> Result<u64, DataError> {
        self.send(rt, addr, header, payload)?.finish(self, rt)
    }
}

impl Pending<'_> {
    /// Waits for the answer; the connection goes back to `pool`.
    pub fn finish(mut self, pool: &DataPool, rt: &tokio::runtime::Handle) -> Result<u64, DataError> {
        match self.conn.recv() {
            Ok(answer) => {
                pool.give(self.addr, self.conn);
                answer.map_err(DataError::Refused)
            }
            Err(e) if self.reused && closed(&e) => {
                // The node had closed the idle connection: the write did not
                // reach it. Writing a replica again is harmless anyway.
                tracing::debug!("idle data connection to {} broke ({e}); writing again", self.addr);
                pool.send_fresh(rt, self.addr, self.header, self.payload)?.finish(pool, rt)
            }
            Err(e) => Err(DataError::Transport(format!("{}: {e}", self.addr))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockEncoder, BLOCK_SIZE};
    use crate::net::handshake_server;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn secret() -> Secret {
        Secret::new(b"0123456789abcdef".to_vec(), "test").expect("secret")
    }

    /// A node stand-in: answers each write with the payload's length, and
    /// closes every connection after `per_conn` writes.
    async fn fake_node(per_conn: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.expect("accept");
                handshake_server(&mut s, &secret()).await.expect("handshake");
                counted.fetch_add(1, Ordering::SeqCst);
                let mut s = s.into_std().expect("std");
                std::thread::spawn(move || {
                    s.set_nonblocking(false).expect("blocking");
                    let mut magic = [0u8; 4];
                    s.read_exact(&mut magic).expect("magic");
                    assert_eq!(magic, DATA_MAGIC);
                    for _ in 0..per_conn {
                        let Some(h) = read_header(&mut s).expect("header") else { return };
                        let mut payload = vec![0u8; h.payload_len()];
                        s.read_exact(&mut payload).expect("payload");
                        let ok = crate::replica::verify_blocks(&h.blocks, &payload).is_ok();
                        let answer = if ok { Ok(payload.len() as u64) } else { Err(FsError::Corrupt) };
                        write_reply(&mut s, &answer).expect("reply");
                    }
                });
            }
        });
        (addr, conns)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_reuse_connections_and_survive_their_closing() {
        let (addr, conns) = fake_node(1).await;
        let pool = Arc::new(DataPool::new(secret()));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        let blocks = BlockEncoder::new(1).encode_all(&data);
        let total: usize = blocks.iter().map(|b| b.data.len()).sum();
        let h = WriteHeader::new(
            ChunkId(1),
            Version(2),
            data.len() as u32,
            &blocks,
            vec![],
            false,
            Duration::from_secs(10),
        );
        assert_eq!(h.check(), Ok(()));
        assert_eq!(h.payload_len(), total);
        let rt = tokio::runtime::Handle::current();
        let (p, a, hh, bb) = (pool.clone(), addr.clone(), h.clone(), blocks.clone());
        tokio::task::spawn_blocking(move || {
            let payload: Vec<&[u8]> = bb.iter().map(|b| &b.data[..]).collect();
            // The node closes each connection after one write: the second
            // and third writes find the pooled one closed and connect again.
            for _ in 0..3 {
                assert_eq!(p.write(&rt, &a, &hh, &payload).expect("write"), total as u64);
            }
            // A damaged block is the node's answer, not a transport error.
            let mut bad = payload[0].to_vec();
            bad[0] ^= 1;
            let mut damaged = payload.clone();
            damaged[0] = &bad;
            assert!(matches!(p.write(&rt, &a, &hh, &damaged), Err(DataError::Refused(FsError::Corrupt))));
        })
        .await
        .expect("join");
        assert_eq!(conns.load(Ordering::SeqCst), 4, "one connection per write");
    }

    #[test]
    fn headers_that_do_not_add_up_are_caught() {
        let blocks = BlockEncoder::new(0).encode_all(&vec![7u8; BLOCK_SIZE + 10]);
        let h =
            WriteHeader::new(ChunkId(1), Version(1), (BLOCK_SIZE + 10) as u32, &blocks, vec![], true, Duration::ZERO);
        assert_eq!(h.check(), Ok(()));
        let mut wrong_length = h.clone();
        wrong_length.length += 1;
        assert!(wrong_length.check().is_err());
        let mut wrong_stored = h.clone();
        wrong_stored.blocks[0].stored_len -= 1;
        assert!(wrong_stored.check().is_err(), "a raw block is stored as is");
        let mut wrong_codec = h;
        wrong_codec.blocks[1].codec = 9;
        assert!(wrong_codec.check().is_err());
    }
}
