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

mod admin;
pub mod log;
pub mod network;
pub mod state_machine;

use crate::namespace::{Command, Reply};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use stripefs_proto::{FsError, InodeId};
use tokio_util::sync::CancellationToken;

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
        // Entries kept behind a snapshot, for followers a little behind.
        max_in_snapshot_log_to_keep: (snapshot_every / 10).min(1000),
        ..Default::default()
    }
}

/// Entries between snapshots by default.
pub const SNAPSHOT_EVERY: u64 = 100_000;

pub use admin::{change, status};
pub use network::Network;

/// How long a confirmation of leadership by a quorum lets the leader
/// answer reads from its own state. A follower that acknowledged the
/// confirmation refuses to vote for anyone else for `election_timeout_max`
/// (1.5 s) after it; 700 ms leaves room for clocks running at different
/// speeds. A leader paused longer (SIGSTOP, a frozen VM) finds its lease
/// expired on waking and confirms again, which fails once another leads.
pub const LEASE: Duration = Duration::from_millis(700);

/// How often the leader renews its lease while it leads.
const LEASE_RENEWAL: Duration = Duration::from_millis(200);

/// Until when this master may answer reads as the leader.
pub type Lease = std::sync::Mutex<Option<Instant>>;

/// Confirms with a quorum that this master still leads and that its state
/// machine holds everything committed (openraft's read index), and renews
/// the lease from the time the confirmation began.
pub async fn confirm_leadership(raft: &Raft, lease: &Lease) -> Result<(), FsError> {
    use openraft::error::RaftError;
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(2), raft.ensure_linearizable()).await {
        Ok(Ok(_)) => {
            *lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(started + LEASE);
            Ok(())
        }
        Ok(Err(RaftError::APIError(_))) | Err(_) => Err(FsError::NotLeader),
        Ok(Err(RaftError::Fatal(e))) => {
            tracing::error!("the master group stopped: {e}");
            Err(FsError::Internal)
        }
    }
}

/// Starts the group's background tasks on the current (the group's)
/// runtime: the lease renewal, and the watch that stops the master when
/// the group stopped on a storage failure.
pub fn spawn_watchers(
    raft: Raft,
    id: u64,
    lease: std::sync::Arc<Lease>,
    stepping: std::sync::Arc<std::sync::atomic::AtomicBool>,
    fatal: CancellationToken,
) {
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        loop {
            {
                let m = metrics.borrow();
                match &m.running_state {
                    // Stopped on purpose: the master is stopping.
                    Err(openraft::error::Fatal::Stopped) => return,
                    Err(e) => {
                        tracing::error!("the master group stopped: {e}; stopping the master");
                        fatal.cancel();
                        return;
                    }
                    Ok(()) => {}
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut led = false;
        loop {
            tokio::time::sleep(LEASE_RENEWAL).await;
            let m = raft.metrics().borrow().clone();
            if m.running_state.is_err() {
                return;
            }
            let leads = m.current_leader == Some(id) && m.state == openraft::ServerState::Leader;
            // Confirming sends heartbeats: not while handing over.
            if leads && !stepping.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = confirm_leadership(&raft, &lease).await;
            } else {
                *lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            if leads != led {
                tracing::info!(
                    "master {id} {} (term {})",
                    if leads { "leads the group" } else { "no longer leads the group" },
                    m.current_term
                );
                led = leads;
            }
        }
    });
}
