//! Messages between the masters of a group: openraft's requests, encoded
//! with bincode, inside the master service's `raft` RPC, on the same
//! authenticated connections as everything else (a master that does not
//! know the cluster secret cannot join, nor split the group).

use super::{Member, Raft, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use stripefs_proto::net::{connect_master, context_with_timeout, Secret};
use stripefs_proto::{FsError, MasterServiceClient};

type NodeId = u64;

/// A request of one master to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    /// Entries to append (or a heartbeat).
    Append(AppendEntriesRequest<TypeConfig>),
    /// A vote request.
    Vote(VoteRequest<NodeId>),
    /// A piece of a snapshot.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// Its answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftResponse {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `Snapshot`.
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

/// Serves one encoded request from another master.
pub async fn serve(raft: &Raft, msg: &[u8]) -> Result<Vec<u8>, FsError> {
    let req: RaftRequest = bincode::deserialize(msg).map_err(|e| {
        tracing::warn!("an undecodable message from another master: {e}");
        FsError::InvalidArgument
    })?;
    let resp = match req {
        RaftRequest::Append(r) => RaftResponse::Append(raft.append_entries(r).await),
        RaftRequest::Vote(r) => RaftResponse::Vote(raft.vote(r).await),
        RaftRequest::Snapshot(r) => RaftResponse::Snapshot(raft.install_snapshot(r).await),
    };
    bincode::serialize(&resp).map_err(crate::store::internal)
}

/// When the last answer came from each other master.
pub type Contacts = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>>;

/// Makes the connections to the other masters.
#[derive(Clone)]
pub struct Network {
    secret: Option<Secret>,
    contacts: Contacts,
}

impl Network {
    /// Connections authenticated with `secret` (None: none can be made),
    /// noting in `contacts` when each master last answered.
    pub fn new(secret: Option<Secret>, contacts: Contacts) -> Network {
        Network { secret, contacts }
    }
}

/// The connection to one other master (made when first needed, and again
/// after it broke).
pub struct Peer {
    target: NodeId,
    addr: String,
    secret: Option<Secret>,
    client: Option<MasterServiceClient>,
    contacts: Contacts,
}

#[derive(Debug, thiserror::Error)]
#[error("master {target} at {addr}: {detail}")]
struct PeerError {
    target: NodeId,
    addr: String,
    detail: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;
    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            secret: self.secret.clone(),
            client: None,
            contacts: self.contacts.clone(),
        }
    }
}

/// How an RPC to another master failed.
enum Failed {
    /// Not reachable (openraft backs off before trying again).
    Unreachable(PeerError),
    /// Reached, but the call failed (tried again at once).
    Network(PeerError),
}

impl Peer {
    fn err(&self, detail: impl std::fmt::Display) -> PeerError {
        PeerError { target: self.target, addr: self.addr.clone(), detail: detail.to_string() }
    }

    async fn call(&mut self, req: RaftRequest, ttl: Duration) -> Result<RaftResponse, Failed> {
        let msg = bincode::serialize(&req).map_err(|e| Failed::Network(self.err(e)))?;
        if self.client.is_none() {
            let timeout = ttl.clamp(Duration::from_millis(100), Duration::from_secs(2));
            let Some(secret) = &self.secret else {
                return Err(Failed::Unreachable(self.err("this master has no cluster secret to connect with")));
            };
            match connect_master(&self.addr, secret, timeout).await {
                Ok(c) => self.client = Some(c),
                Err(e) => return Err(Failed::Unreachable(self.err(e))),
            }
        }
        let Some(client) = &self.client else { return Err(Failed::Unreachable(self.err("no connection"))) };
        match client.raft(context_with_timeout(ttl), msg).await {
            Ok(Ok(bytes)) => {
                self.contacts.lock().unwrap_or_else(|e| e.into_inner()).insert(self.target, std::time::Instant::now());
                bincode::deserialize(&bytes).map_err(|e| Failed::Network(self.err(e)))
            }
            Ok(Err(e)) => Err(Failed::Network(self.err(format!("refused: {e}")))),
            Err(e) => {
                self.client = None;
                Err(Failed::Unreachable(self.err(e)))
            }
        }
    }
}

fn rpc_error<E: std::error::Error>(f: Failed) -> RPCError<NodeId, Member, E> {
    match f {
        Failed::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
        Failed::Network(e) => RPCError::Network(NetworkError::new(&e)),
    }
}

fn unexpected<E: std::error::Error>(p: &Peer) -> RPCError<NodeId, Member, E> {
    RPCError::Network(NetworkError::new(&p.err("answered another kind of message")))
}

impl Peer {
    /// The remote master's answer: a refusal is its error, not ours.
    // openraft's error type, as its trait methods return it.
    #[allow(clippy::result_large_err)]
    fn answer<T, E: std::error::Error>(
        &self,
        r: Result<T, RaftError<NodeId, E>>,
    ) -> Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>> {
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(RaftRequest::Append(rpc), option.hard_ttl()).await.map_err(rpc_error)? {
            RaftResponse::Append(r) => self.answer(r),
            _ => Err(unexpected(self)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>>
    {
        match self.call(RaftRequest::Snapshot(rpc), option.hard_ttl()).await.map_err(rpc_error)? {
            RaftResponse::Snapshot(r) => self.answer(r),
            _ => Err(unexpected(self)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        match self.call(RaftRequest::Vote(rpc), option.hard_ttl()).await.map_err(rpc_error)? {
            RaftResponse::Vote(r) => self.answer(r),
            _ => Err(unexpected(self)),
        }
    }
}
