//! Serving data connections ([`stripefs_proto::data_conn`]): chunk writes whose
//! blocks arrive as raw bytes.
//!
//! Each data connection gets a thread of its own that reads one write at a
//! time straight into an aligned buffer laid out as the replica file
//! (header and table first, then the blocks), checks every block's crc,
//! sends the blocks on to the next node of the chain, writes the buffer to
//! disk while they travel, and answers once both are done. The bytes are
//! never copied in user space. The buffer's size is taken from the node's
//! [`crate::write_memory::WriteMemory`] first.

use crate::service::NodeServer;
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_proto::data_conn::{read_header, write_reply, WriteHeader, SERVER_IDLE};
use stripefs_proto::replica;
use stripefs_proto::FsError;

/// The data connections a node is serving, so that stopping the node
/// closes them.
#[derive(Debug, Default)]
pub(crate) struct DataConns {
    next: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
    stopped: AtomicBool,
}

impl DataConns {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `stream` (its magic already read) on a thread of its own.
    pub(crate) fn serve(self: &Arc<Self>, stream: TcpStream, server: NodeServer, peer: std::net::SocketAddr) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        match stream.try_clone() {
            Ok(c) => {
                self.open().insert(id, c);
            }
            Err(e) => {
                tracing::warn!("data connection from {peer}: {e}");
                return;
            }
        }
        if self.stopped.load(Ordering::SeqCst) {
            self.open().remove(&id);
            return;
        }
        let conns = self.clone();
        let rt = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new().name("data-conn".into()).spawn(move || {
            tracing::debug!("data connection from {peer}");
            if let Err(e) = serve(stream, &server, &rt) {
                tracing::debug!("data connection from {peer} ended: {e}");
            }
            conns.open().remove(&id);
        });
        if let Err(e) = spawned {
            tracing::warn!("cannot start a thread for a data connection from {peer}: {e}");
            self.open().remove(&id);
        }
    }

    /// Closes every data connection (a write under way fails to answer)
    /// and waits, up to `wait`, for their threads to end.
    pub(crate) async fn stop(&self, wait: Duration) {
        self.stopped.store(true, Ordering::SeqCst);
        for s in self.open().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let t = Instant::now();
        while !self.open().is_empty() && t.elapsed() < wait {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Serves writes on `stream` until the peer closes it, sends nothing for
/// [`SERVER_IDLE`], or breaks the protocol.
fn serve(mut stream: TcpStream, server: &NodeServer, rt: &tokio::runtime::Handle) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    loop {
        stream.set_read_timeout(Some(SERVER_IDLE))?;
        let Some(header) = read_header(&mut stream)? else { return Ok(()) };
        let timeout = header.timeout().clamp(Duration::from_millis(1), crate::service::FORWARD_TIMEOUT);
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        if let Err(e) = header.check() {
            // The bytes that follow cannot be trusted to be as long as the
            // header says: answer, then close.
            tracing::warn!(chunk = %header.chunk, version = %header.version, "refusing write: {e}");
            write_reply(&mut stream, &Err(FsError::InvalidArgument))?;
            return Ok(());
        }
        if header.chain.len() > crate::service::MAX_CHAIN {
            tracing::warn!(chunk = %header.chunk, "refusing write: chain of {} nodes", header.chain.len());
            write_reply(&mut stream, &Err(FsError::InvalidArgument))?;
            return Ok(());
        }
        let span = tracing::debug_span!(
            "write",
            chunk = %header.chunk,
            version = %header.version,
            length = header.length,
            chain = header.chain.len(),
            forwarded = header.forwarded
        );
        let started = Instant::now();
        let answer = span.in_scope(|| write(&mut stream, &header, server, rt, Instant::now() + timeout))?;
        if let Ok(stored) = &answer {
            server.metrics().wrote(*stored, started.elapsed());
        }
        write_reply(&mut stream, &answer)?;
    }
}

/// Receives the blocks of one write, stores them and forwards them. An
/// `Err` means the connection is broken; a refused write is `Ok(Err(_))`.
fn write(
    stream: &mut TcpStream,
    header: &WriteHeader,
    server: &NodeServer,
    rt: &tokio::runtime::Handle,
    deadline: Instant,
) -> io::Result<Result<u64, FsError>> {
    let (chunk, version) = (header.chunk, header.version);
    let payload = header.payload_len();
    let head_len = replica::head_len(header.blocks.len());
    // A refused write's bytes are read and dropped: the connection serves
    // the next write.
    let refuse = |stream: &mut TcpStream, e: FsError| {
        io::copy(&mut stream.take(payload as u64), &mut io::sink()).map(|_| Err(e))
    };
    if let Err(e) = server.check_space(chunk, version, (head_len + payload) as u64 + 4096) {
        return refuse(stream, e.to_wire());
    }
    // Half the time left for waiting on memory, half for the write itself.
    let now = Instant::now();
    let until = now + deadline.saturating_duration_since(now) / 2;
    let memory = server.write_memory();
    let Some(_grant) = memory.take((head_len + payload) as u64, !header.forwarded, until) else {
        tracing::warn!(
            %chunk, %version,
            "refusing write: the memory for writes in progress ({} of {} bytes) stayed taken",
            memory.used(),
            memory.limit()
        );
        return refuse(stream, FsError::Unavailable);
    };
    let store = server.store();
    let mut buf = store.buffer(head_len + payload);
    let r = receive_and_store(stream, header, server, rt, deadline, &mut buf, head_len);
    store.recycle(buf);
    r
}

fn receive_and_store(
    stream: &mut TcpStream,
    header: &WriteHeader,
    server: &NodeServer,
    rt: &tokio::runtime::Handle,
    deadline: Instant,
    buf: &mut crate::direct::AlignedBuf,
    head_len: usize,
) -> io::Result<Result<u64, FsError>> {
    let (chunk, version) = (header.chunk, header.version);
    stream.read_exact(&mut buf[head_len..])?;
    if let Err(i) = replica::verify_blocks(&header.blocks, &buf[head_len..]) {
        tracing::warn!(%chunk, %version, "refusing write: received block {i} fails its crc");
        return Ok(Err(FsError::Corrupt));
    }
    buf[..head_len].copy_from_slice(&replica::encode_head_of(chunk, version, header.length, &header.blocks));
    let buf = &*buf;
    tracing::debug!(%chunk, %version, length = header.length, chain = ?header.chain, "write over the data path");

    // Send the blocks down the chain first, store them here while they
    // travel, then wait for the rest of the chain.
    let forward = header.chain.split_first().map(|(next, rest)| {
        let left = deadline.saturating_duration_since(Instant::now());
        let fwd = WriteHeader {
            chain: rest.to_vec(),
            timeout_ms: left.as_millis() as u64,
            forwarded: true,
            ..header.clone()
        };
        (next, fwd)
    });
    let payload = [&buf[head_len..]];
    let pending = forward.as_ref().map(|(next, fwd)| server.data_pool().send(rt, next, fwd, &payload));
    let local = server.store().write_assembled(chunk, version, header.length, buf, header.sync);
    let remote = pending.map(|p| p.and_then(|p| p.finish(server.data_pool(), rt)));
    let stored = match local {
        Ok(n) => n,
        Err(e) => return Ok(Err(e.to_wire())),
    };
    if let (Some(Err(e)), Some((next, _))) = (remote, forward.as_ref()) {
        // Whatever went wrong further down the chain (unreachable, full,
        // damaged in transit) is not this node's fault: `Unavailable` tells
        // the writer to place the rest of the chain elsewhere.
        tracing::warn!(%chunk, %version, "forwarding to chain peer {next} failed: {e}");
        return Ok(Err(FsError::Unavailable));
    }
    Ok(Ok(stored))
}
