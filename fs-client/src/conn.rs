//! Connections to the master and the storage nodes, re-established on
//! demand when a transport error breaks them.

use crate::error::{ClientError, Result};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;
use stripefs_proto::net::{connect_master, connect_node, ConnectError, Secret};
use stripefs_proto::{FsError, MasterServiceClient, NodeServiceClient};
use tarpc::client::RpcError;

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
pub type ReconnectHook = Box<dyn Fn(MasterServiceClient) -> BoxFuture<'static, ()> + Send + Sync>;

/// The connection to the master. When it breaks, callers wait (up to the
/// `master_timeout` mount option) for the master to come back, instead of
/// failing at once: a master restart is invisible to applications.
pub struct MasterConn {
    addr: String,
    secret: Secret,
    wait: Duration,
    /// The current client and its generation (bumped at each reconnect).
    client: tokio::sync::RwLock<(u64, Option<MasterServiceClient>)>,
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
        let client = connect_master(addr, &secret, CONNECT_TIMEOUT).await?;
        Ok(MasterConn {
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

    async fn client(&self) -> Result<(u64, MasterServiceClient)> {
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
            match connect_master(&self.addr, &self.secret, CONNECT_TIMEOUT).await {
                Ok(c) => {
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

    /// Runs one RPC; on a broken connection, waits for the master and
    /// tries again (see [`MasterConn`]).
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(MasterServiceClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        let deadline = Instant::now() + self.wait;
        loop {
            let (generation, c) = self.client().await?;
            match f(c, stripefs_proto::net::context_with_timeout(METADATA_TIMEOUT)).await {
                Ok(r) => return r.map_err(ClientError::Fs),
                Err(e) if is_broken(&e) => {
                    tracing::warn!("master connection lost: {e}");
                    self.drop_client(generation).await;
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
