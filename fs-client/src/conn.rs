//! Connections to the master and the storage nodes, re-established on
//! demand when a transport error breaks them.
//!
//! Master calls made on a FUSE session thread go over that thread's own
//! blocking connection ([`BlockingClient`]): the thread writes the request
//! and reads the answer itself, with no hand-off to a dispatch task and
//! back. Calls from async tasks (uploads, background releases) and the
//! calls that take or drop open references (`create`, `open`, `release`:
//! the master counts them per connection) use the shared multiplexed one.

use crate::error::{ClientError, Result};
use futures::future::BoxFuture;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;
use stripefs_proto::net::{connect_master_channel, connect_node, connect_stream, BlockingClient, ConnectError, Secret};
use stripefs_proto::{FsError, MasterServiceClient, MasterServiceRequest, MasterServiceResponse, NodeServiceClient};
use tarpc::client::RpcError;

/// The master client every call site uses: typed methods over a
/// [`MasterStub`].
pub type MasterClient = MasterServiceClient<MasterStub>;

/// How a master call travels.
#[derive(Clone, Debug)]
pub enum MasterStub {
    /// The shared multiplexed connection.
    Shared(tarpc::client::Channel<MasterServiceRequest, MasterServiceResponse>),
    /// The calling thread's own blocking connection to the [`MasterConn`]
    /// with this id.
    Own(u64),
}

impl tarpc::client::stub::Stub for MasterStub {
    type Req = MasterServiceRequest;
    type Resp = MasterServiceResponse;

    async fn call(
        &self,
        ctx: tarpc::context::Context,
        request: MasterServiceRequest,
    ) -> std::result::Result<MasterServiceResponse, RpcError> {
        match self {
            MasterStub::Shared(c) => c.call(ctx, request).await,
            MasterStub::Own(id) => {
                let Some(mut client) = OWN.with(|o| o.borrow_mut().conns.remove(id)) else {
                    return Err(RpcError::Shutdown);
                };
                let r = client.call(ctx, request);
                // After an error the stream may hold half an answer: drop it.
                if r.is_ok() {
                    OWN.with(|o| o.borrow_mut().conns.insert(*id, client));
                }
                r
            }
        }
    }
}

/// A thread's own master connections (one per [`MasterConn`]), and
/// whether the thread wants them.
#[derive(Default)]
struct Own {
    enabled: bool,
    conns: HashMap<u64, BlockingClient>,
}

thread_local! {
    static OWN: RefCell<Own> = RefCell::new(Own::default());
}

/// Marks the calling thread as one that blocks on each request (a FUSE
/// session thread): its master calls then use a connection of its own.
/// Never call it on an async runtime's worker thread.
pub fn use_own_master_connection() {
    OWN.with(|o| o.borrow_mut().enabled = true);
}

fn wants_own() -> bool {
    OWN.with(|o| o.borrow().enabled)
}

fn has_own(id: u64) -> bool {
    OWN.with(|o| o.borrow().conns.contains_key(&id))
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Time to connect and authenticate.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of a metadata call.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of a chunk transfer.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(120);

fn is_broken(e: &RpcError) -> bool {
    matches!(e, RpcError::Shutdown | RpcError::Send(_) | RpcError::Channel(_))
}

/// Called with a fresh master connection before anyone else uses it.
pub type ReconnectHook = Box<dyn Fn(MasterClient) -> BoxFuture<'static, ()> + Send + Sync>;

/// The connection to the master. When it breaks, callers wait (up to the
/// `master_timeout` mount option) for the master to come back, instead of
/// failing at once: a master restart is invisible to applications.
pub struct MasterConn {
    /// Names this master's per-thread connections.
    id: u64,
    addr: String,
    secret: Secret,
    wait: Duration,
    /// The current client and its generation (bumped at each reconnect).
    client: tokio::sync::RwLock<(u64, Option<MasterClient>)>,
    on_reconnect: OnceLock<ReconnectHook>,
}

impl MasterConn {
    /// Connects to the master (fails fast if it is unreachable or refuses
    /// us); later reconnects wait up to `wait`.
    pub async fn connect(
        addr: &str,
        secret: Secret,
        wait: Duration,
    ) -> Result<MasterConn, stripefs_proto::net::ConnectError> {
        let client =
            MasterClient::from(MasterStub::Shared(connect_master_channel(addr, &secret, CONNECT_TIMEOUT).await?));
        Ok(MasterConn {
            id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
            addr: addr.to_string(),
            secret,
            wait,
            client: tokio::sync::RwLock::new((0, Some(client))),
            on_reconnect: OnceLock::new(),
        })
    }

    /// Sets what to do on every reconnect (e.g. re-register open files).
    pub fn set_reconnect_hook(&self, hook: ReconnectHook) {
        let _ = self.on_reconnect.set(hook);
    }

    /// The master's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn client(&self) -> Result<(u64, MasterClient)> {
        if let (g, Some(c)) = &*self.client.read().await {
            return Ok((*g, c.clone()));
        }
        let mut slot = self.client.write().await;
        if let (g, Some(c)) = &*slot {
            return Ok((*g, c.clone()));
        }
        let deadline = Instant::now() + self.wait;
        let mut backoff = Duration::from_millis(50);
        let mut warned = false;
        loop {
            match connect_master_channel(&self.addr, &self.secret, CONNECT_TIMEOUT).await {
                Ok(c) => {
                    let c = MasterClient::from(MasterStub::Shared(c));
                    if let Some(hook) = self.on_reconnect.get() {
                        hook(c.clone()).await;
                    }
                    tracing::info!("reconnected to the master at {}", self.addr);
                    slot.0 += 1;
                    slot.1 = Some(c.clone());
                    return Ok((slot.0, c));
                }
                // The master is there but refuses us: waiting will not help.
                Err(e @ (ConnectError::Refused { .. } | ConnectError::ServerNotAuthentic { .. })) => {
                    return Err(ClientError::Transport(e.to_string()))
                }
                Err(e) => {
                    if Instant::now() + backoff > deadline {
                        return Err(ClientError::Transport(format!(
                            "the master at {} has been unreachable for {:?}: {e}",
                            self.addr, self.wait
                        )));
                    }
                    if !warned {
                        tracing::warn!("waiting up to {:?} for the master at {}: {e}", self.wait, self.addr);
                        warned = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Forgets the client of generation `generation` (if it is still the
    /// current one) after it broke.
    async fn drop_client(&self, generation: u64) {
        let mut slot = self.client.write().await;
        if slot.0 == generation {
            slot.1 = None;
        }
    }

    /// This thread's own connection, made now if needed; `None` if the
    /// master cannot be reached right now (the shared connection then
    /// waits for it).
    async fn own(&self) -> Option<MasterClient> {
        if !has_own(self.id) {
            let stream = connect_stream(&self.addr, &self.secret, CONNECT_TIMEOUT).await.ok()?;
            match BlockingClient::new(stream, METADATA_TIMEOUT) {
                Ok(c) => OWN.with(|o| o.borrow_mut().conns.insert(self.id, c)),
                Err(e) => {
                    tracing::warn!("setting up a master connection: {e}");
                    return None;
                }
            };
        }
        Some(MasterClient::from(MasterStub::Own(self.id)))
    }

    /// Runs one RPC; on a broken connection, waits for the master and
    /// tries again (see [`MasterConn`]). On a FUSE thread it goes over the
    /// thread's own connection (see the module documentation).
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(MasterClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        self.call_on(wants_own(), f).await
    }

    /// [`MasterConn::call`] on the shared connection, wherever it is made
    /// from: for the calls that take or drop open references, which the
    /// master counts per connection.
    pub async fn call_shared<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(MasterClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        self.call_on(false, f).await
    }

    async fn call_on<T, F, Fut>(&self, own: bool, f: F) -> Result<T>
    where
        F: Fn(MasterClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        let deadline = Instant::now() + self.wait;
        loop {
            let mine = if own { self.own().await } else { None };
            let (generation, mine, c) = match mine {
                Some(c) => (self.client.read().await.0, true, c),
                None => {
                    let (g, c) = self.client().await?;
                    (g, false, c)
                }
            };
            match f(c, stripefs_proto::net::context_with_timeout(METADATA_TIMEOUT)).await {
                Ok(r) => return r.map_err(ClientError::Fs),
                Err(e) if is_broken(&e) => {
                    tracing::warn!("master connection lost: {e}");
                    // The master probably restarted: the shared connection
                    // is broken too, and must come back now (its reconnect
                    // re-opens this client's open files), not at its next use.
                    self.drop_client(generation).await;
                    if mine {
                        self.client().await?;
                    }
                    if Instant::now() > deadline {
                        return Err(e.into());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Connections to storage nodes, by address.
pub struct NodePool {
    secret: Secret,
    clients: tokio::sync::Mutex<HashMap<String, NodeServiceClient>>,
}

impl NodePool {
    /// An empty pool.
    pub fn new(secret: Secret) -> NodePool {
        NodePool { secret, clients: tokio::sync::Mutex::new(HashMap::new()) }
    }

    async fn client(&self, addr: &str) -> Result<NodeServiceClient> {
        if let Some(c) = self.clients.lock().await.get(addr) {
            return Ok(c.clone());
        }
        let c = connect_node(addr, &self.secret, CONNECT_TIMEOUT)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        self.clients.lock().await.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Runs one RPC on the node at `addr`; on a broken connection,
    /// reconnects and tries once more.
    pub async fn call<T, F, Fut>(&self, addr: &str, timeout: Duration, f: F) -> Result<T>
    where
        F: Fn(NodeServiceClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        let mut last = None;
        for _ in 0..2 {
            let c = self.client(addr).await?;
            match f(c, stripefs_proto::net::context_with_timeout(timeout)).await {
                Ok(r) => return r.map_err(ClientError::Fs),
                Err(e) if is_broken(&e) => {
                    self.clients.lock().await.remove(addr);
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map(ClientError::from).unwrap_or_else(|| ClientError::Transport("no connection".into())))
    }
}
