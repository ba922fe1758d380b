//! The master group: namespace [`Command`]s replicated through openraft
//! (0.9, the stable line). The Raft log ([`log`]) is where a mutation
//! becomes durable; the redb tables are the state machine
//! ([`state_machine`]). A single master is a group of one.
//!
//! The group runs on a runtime of its own (one thread, `stripefs-raft`),
//! so that busy RPC handlers never delay heartbeats or elections, and its
//! log flushes on a thread of their own.
//!
//! Applying a command must give the same result on every member, so
//! nothing local may decide it. The one thing that used to be local is
//! whether an inode is open (an unlinked open file is kept as an orphan):
//! the leader now decides it when it proposes the command and writes the
//! answer into the entry ([`Proposal::closed`]).

pub mod log;
pub mod state_machine;

use crate::namespace::{Command, Reply};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};
use stripefs_proto::{FsError, InodeId};

/// A master as the group knows it: its address.
pub type Member = openraft::BasicNode;

/// What a member answers for an entry it applies.
pub type Answer = Result<Reply, FsError>;

openraft::declare_raft_types!(
    /// The master group's types.
    pub TypeConfig:
        D = Proposal,
        R = Answer,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

/// The master group's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// A log entry's command, with what the leader decided for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proposal {
    /// The command.
    pub cmd: Command,
    /// Inodes the command may free that no client held open when the
    /// leader proposed it: an inode losing its last name is freed when it
    /// is listed here and kept as an orphan otherwise (the orphan worker
    /// frees it once nobody holds it).
    pub closed: Vec<InodeId>,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.cmd)
    }
}

/// Timing of the group (milliseconds): a heartbeat every 250 ms, an
/// election after 1 to 1.5 s of silence, so that a leader's death costs
/// about 2.5 to 3.5 s (docs/ARCHITECTURE.md, "Master group").
pub fn config(snapshot_every: u64) -> openraft::Config {
    openraft::Config {
        cluster_name: "stripefs".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 1500,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    }
}

/// Entries between snapshots by default.
pub const SNAPSHOT_EVERY: u64 = 100_000;

/// The connections to the other masters of the group.
#[derive(Clone, Default)]
pub struct Network;

/// A connection to one other master.
pub struct Peer {
    target: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("master {0} is not reachable: this master has no connections to other masters yet")]
struct NoPeers(u64);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;
    async fn new_client(&mut self, target: u64, _node: &Member) -> Peer {
        Peer { target }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoPeers(self.target))))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoPeers(self.target))))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoPeers(self.target))))
    }
}
