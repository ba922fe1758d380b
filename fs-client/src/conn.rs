//! Connections to the master and the storage nodes, re-established on
//! demand when a transport error breaks them.

use crate::error::{ClientError, Result};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use stripefs_proto::net::{connect_master, connect_node, Secret};
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

/// The connection to the master.
pub struct MasterConn {
    addr: String,
    secret: Secret,
    client: tokio::sync::RwLock<Option<MasterServiceClient>>,
}

impl MasterConn {
    /// Connects to the master (fails fast if it is unreachable or refuses us).
    pub async fn connect(addr: &str, secret: Secret) -> Result<MasterConn, stripefs_proto::net::ConnectError> {
        let client = connect_master(addr, &secret, CONNECT_TIMEOUT).await?;
        Ok(MasterConn { addr: addr.to_string(), secret, client: tokio::sync::RwLock::new(Some(client)) })
    }

    /// The master's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn client(&self) -> Result<MasterServiceClient> {
        if let Some(c) = self.client.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut slot = self.client.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = connect_master(&self.addr, &self.secret, CONNECT_TIMEOUT)
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        tracing::info!("reconnected to the master at {}", self.addr);
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn drop_client(&self) {
        *self.client.write().await = None;
    }

    /// Runs one RPC; on a broken connection, reconnects and tries once more.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(MasterServiceClient, tarpc::context::Context) -> Fut,
        Fut: Future<Output = std::result::Result<std::result::Result<T, FsError>, RpcError>>,
    {
        let mut last = None;
        for _ in 0..2 {
            let c = self.client().await?;
            match f(c, stripefs_proto::net::context_with_timeout(METADATA_TIMEOUT)).await {
                Ok(r) => return r.map_err(ClientError::Fs),
                Err(e) if is_broken(&e) => {
                    tracing::warn!("master connection lost: {e}");
                    self.drop_client().await;
                    last = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map(ClientError::from).unwrap_or_else(|| ClientError::Transport("no connection".into())))
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
