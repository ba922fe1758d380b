//! A fault-injecting proxy between a client and a server (the master), as
//! openraft's tests route messages through a router that can drop, delay
//! and reorder them. It forwards the authentication handshake untouched,
//! then whole tarpc frames (4-byte big-endian length + body), and applies
//! the faults it was given to the next frames that pass: a reply dropped,
//! delayed, duplicated or swapped with the next one; a connection cut
//! after a request reached the server (its reply is lost) or before (it
//! never arrives). The client under test connects to [`FaultProxy::addr`]
//! as if it were the master; nodes talk to the master directly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bytes the server sends before the first frame: its hello (magic,
/// version, nonce) and its answer to the client's proof.
const SERVER_HANDSHAKE_BYTES: usize = 8 + 4 + 32 + 1 + 32;
/// Bytes the client sends before the first frame: its nonce and proof.
const CLIENT_HANDSHAKE_BYTES: usize = 32 + 32;
/// A swapped reply is sent anyway after this long if no other comes.
const SWAP_WAIT: Duration = Duration::from_millis(300);

/// One fault, applied to the next frame it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The next reply is dropped (the client waits for it until its deadline).
    DropReply,
    /// The next reply is held back this long.
    DelayReply(Duration),
    /// The next reply is delivered twice.
    DuplicateReply,
    /// The next reply is delivered after the one that follows it.
    SwapReplies,
    /// The next request reaches the server, then the connection is cut
    /// before its reply comes back.
    CutAfterRequest,
    /// The connection is cut instead of forwarding the next request.
    CutBeforeRequest,
}

impl Fault {
    fn on_request(self) -> bool {
        matches!(self, Fault::CutAfterRequest | Fault::CutBeforeRequest)
    }
}

#[derive(Default)]
struct Shared {
    faults: Mutex<VecDeque<Fault>>,
    applied: Mutex<Vec<Fault>>,
    /// Every connection's cut switch.
    conns: Mutex<Vec<CancellationToken>>,
}

impl Shared {
    /// Takes the first queued fault of the kind a frame going this way can suffer.
    fn take(&self, request: bool) -> Option<Fault> {
        let mut q = self.faults.lock().expect("faults");
        let i = q.iter().position(|f| f.on_request() == request)?;
        let f = q.remove(i)?;
        self.applied.lock().expect("applied").push(f);
        Some(f)
    }
}

/// A running proxy; stops (and cuts every connection) when dropped.
pub struct FaultProxy {
    addr: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port in front of `target`.
    pub fn start(target: &str) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let (target, s, token) = (target.to_string(), shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("proxy runtime");
                rt.block_on(async move {
                    listener.set_nonblocking(true).expect("nonblocking");
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    loop {
                        let (client, _) = tokio::select! {
                            _ = token.cancelled() => break,
                            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                        };
                        let cut = token.child_token();
                        s.conns.lock().expect("conns").push(cut.clone());
                        tokio::spawn(relay(client, target.clone(), s.clone(), cut));
                    }
                });
            })
            .expect("spawn the proxy thread");
        FaultProxy { addr, shared, stop, thread: Some(thread) }
    }

    /// Where clients connect.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Queues a fault for the next frame it concerns.
    pub fn inject(&self, f: Fault) {
        self.shared.faults.lock().expect("faults").push_back(f);
    }

    /// Faults queued and not yet applied (dropped).
    pub fn clear(&self) -> Vec<Fault> {
        self.shared.faults.lock().expect("faults").drain(..).collect()
    }

    /// The faults applied so far, in order.
    pub fn applied(&self) -> Vec<Fault> {
        self.shared.applied.lock().expect("applied").clone()
    }

    /// Cuts every connection now.
    pub fn cut_all(&self) {
        for c in self.shared.conns.lock().expect("conns").drain(..) {
            c.cancel();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards one connection until either side closes or it is cut.
async fn relay(client: TcpStream, target: String, shared: Arc<Shared>, cut: CancellationToken) {
    let Ok(server) = TcpStream::connect(&target).await else { return };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let blocked = Arc::new(AtomicBool::new(false));
    let up = pump(cr, sw, CLIENT_HANDSHAKE_BYTES, true, shared.clone(), cut.clone(), blocked.clone());
    let down = pump(sr, cw, SERVER_HANDSHAKE_BYTES, false, shared, cut.clone(), blocked);
    tokio::select! {
        _ = cut.cancelled() => {}
        _ = async { tokio::join!(up, down) } => {}
    }
    // Dropping both halves of both sockets closes them.
}

async fn read_frame(r: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let mut frame = len.to_vec();
    frame.resize(4 + u32::from_be_bytes(len) as usize, 0);
    r.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}

/// Copies `raw` handshake bytes, then frames, applying the faults of this
/// direction (`requests`: client to server). Once `blocked` is set (a cut
/// after a request), no reply goes through any more.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    raw: usize,
    requests: bool,
    shared: Arc<Shared>,
    cut: CancellationToken,
    blocked: Arc<AtomicBool>,
) {
    // The handshake goes as it comes: each side waits for the other's part.
    let mut left = raw;
    let mut buf = vec![0u8; raw];
    while left > 0 {
        let n = match r.read(&mut buf[..left]).await {
            Ok(0) | Err(_) => {
                cut.cancel();
                return;
            }
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            cut.cancel();
            return;
        }
        left -= n;
    }
    let mut held: Option<Vec<u8>> = None;
    loop {
        let next = match &held {
            Some(_) => match tokio::time::timeout(SWAP_WAIT, read_frame(&mut r)).await {
                Ok(f) => f,
                Err(_) => {
                    // Nothing to swap with: let the held reply go.
                    let f = held.take().expect("held");
                    if w.write_all(&f).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
            None => read_frame(&mut r).await,
        };
        let Some(frame) = next else { break };
        if !requests && blocked.load(Ordering::SeqCst) {
            continue;
        }
        let mut out = vec![frame];
        match shared.take(requests) {
            None => {}
            Some(Fault::CutBeforeRequest) => break,
            Some(Fault::CutAfterRequest) => {
                blocked.store(true, Ordering::SeqCst);
                let _ = w.write_all(&out[0]).await;
                let _ = w.flush().await;
                // Let the server take it before the connection goes.
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
            Some(Fault::DropReply) => out.clear(),
            Some(Fault::DelayReply(d)) => tokio::time::sleep(d).await,
            Some(Fault::DuplicateReply) => out.push(out[0].clone()),
            Some(Fault::SwapReplies) => {
                held = out.pop();
                continue;
            }
        }
        if let Some(h) = held.take() {
            out.push(h);
        }
        for f in out {
            if w.write_all(&f).await.is_err() {
                cut.cancel();
                return;
            }
        }
    }
    cut.cancel();
}
