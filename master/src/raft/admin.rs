//! Running the group: its status as a master sees it, and membership
//! changes (`stripefs masters`).

use super::network::Contacts;
use super::{Member, Proposal, Raft};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use stripefs_proto::net::{connect_master, context_with_timeout, Secret};
use stripefs_proto::types::{GroupChange, GroupStatus, MasterStatus};

/// How long the group may take to elect a leader after a change.
const ELECTION_WAIT: Duration = Duration::from_secs(20);

/// The group as the metrics of this master show it.
pub fn status(m: &RaftMetrics<u64, Member>, contacts: &Contacts) -> GroupStatus {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let leads = m.state == ServerState::Leader;
    let contacts = contacts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let voter = voters.contains(id);
            let role = if *id == m.id {
                match m.state {
                    ServerState::Leader => "leader",
                    ServerState::Candidate => "candidate",
                    ServerState::Shutdown => "stopped",
                    _ if voter => "follower",
                    _ => "learner",
                }
            } else if Some(*id) == m.current_leader {
                "leader"
            } else if voter {
                "follower"
            } else {
                "learner"
            };
            let matched = m.replication.as_ref().and_then(|r| r.get(id).copied()).flatten().map(|l| l.index);
            let last = if *id == m.id { m.last_log_index } else { matched };
            let lag = match (leads, m.last_log_index) {
                (true, Some(top)) => Some(top.saturating_sub(last.unwrap_or(0))),
                _ => None,
            };
            let millis_since_contact = match leads {
                true if *id == m.id => Some(0),
                true => contacts.get(id).map(|t| t.elapsed().as_millis() as u64),
                false => None,
            };
            MasterStatus {
                id: *id,
                addr: node.addr.clone(),
                role: role.into(),
                voter,
                last_log_index: last,
                lag,
                millis_since_contact,
            }
        })
        .collect();
    GroupStatus {
        this: m.id,
        initialized: !voters.is_empty(),
        term: m.current_term,
        leader: m.current_leader,
        applied: m.last_applied.map(|l| l.index),
        last_log_index: m.last_log_index,
        snapshot: m.snapshot.map(|l| l.index),
        members,
        changing: m.membership_config.membership().get_joint_config().len() > 1,
    }
}

/// The status of the master at `addr`.
async fn ask(addr: &str, secret: &Secret) -> Result<GroupStatus, String> {
    let c = connect_master(addr, secret, Duration::from_secs(5)).await.map_err(|e| format!("{addr}: {e}"))?;
    c.group(context_with_timeout(Duration::from_secs(10)))
        .await
        .map_err(|e| format!("{addr}: {e}"))?
        .map_err(|e| format!("{addr}: {e}"))
}

/// Waits until the group has a leader; returns its id.
async fn leader(raft: &Raft) -> Result<u64, String> {
    let m = raft
        .wait(Some(ELECTION_WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .map_err(|e| format!("no leader was elected within {ELECTION_WAIT:?}: {e}"))?;
    m.current_leader.ok_or_else(|| "no leader".to_string())
}

fn not_leader(raft: &Raft) -> String {
    let m = raft.metrics().borrow().clone();
    match m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned()) {
        Some(n) => format!("this master does not lead the group; the leader is at {}", n.addr),
        None => "this master does not lead the group, and no leader is known right now".into(),
    }
}

/// Applies `change` (see [`GroupChange`]) from this master.
pub async fn change(
    raft: &Raft,
    secret: Option<Secret>,
    stepping: &AtomicBool,
    change: GroupChange,
) -> Result<(), String> {
    let id = raft.metrics().borrow().id;
    let secret = secret.ok_or("this master has no cluster secret: it cannot reach other masters")?;
    match change {
        GroupChange::Init { members, chunk_size } => {
            if !raft.is_initialized().await.map_err(|e| e.to_string())? {
                let mut ids = BTreeMap::new();
                for addr in &members {
                    let st = ask(addr, &secret).await?;
                    if st.initialized {
                        return Err(format!("{addr} (master {}) is already a member of a group", st.this));
                    }
                    if ids.insert(st.this, Member::new(addr.clone())).is_some() {
                        return Err(format!("master {} is named twice ({addr})", st.this));
                    }
                }
                if !ids.contains_key(&id) {
                    return Err(format!("this master ({id}) is not among {members:?}"));
                }
                tracing::info!("initializing a master group of {}: {ids:?}", ids.len());
                raft.initialize(ids).await.map_err(|e| e.to_string())?;
            }
            // The filesystem is created through the log, by the leader.
            let deadline = Instant::now() + ELECTION_WAIT;
            loop {
                let leader = leader(raft).await?;
                if leader == id {
                    let proposal = Proposal { cmd: crate::store::create_fs_command(chunk_size), closed: Vec::new() };
                    let r = raft.client_write(proposal).await.map_err(|e| e.to_string())?;
                    return match r.data {
                        Ok(_) => {
                            tracing::info!("created a new filesystem");
                            Ok(())
                        }
                        Err(stripefs_proto::FsError::Exists) => Err("the group already holds a filesystem".into()),
                        Err(e) => Err(format!("creating the filesystem: {e}")),
                    };
                }
                let m = raft.metrics().borrow().clone();
                if let Some(addr) = m.membership_config.membership().get_node(&leader).map(|n| n.addr.clone()) {
                    let c = connect_master(&addr, &secret, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
                    let again = GroupChange::Init { members: members.clone(), chunk_size };
                    let r = c.group_change(context_with_timeout(ELECTION_WAIT * 2), again).await;
                    match r {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(e)) if Instant::now() < deadline => tracing::info!("the leader at {addr}: {e}"),
                        Ok(Err(e)) => return Err(format!("the leader at {addr}: {e}")),
                        Err(e) if Instant::now() < deadline => tracing::info!("the leader at {addr}: {e}"),
                        Err(e) => return Err(format!("the leader at {addr}: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        GroupChange::Add { addr } => {
            let st = ask(&addr, &secret).await?;
            if st.initialized {
                return Err(format!(
                    "{addr} (master {}) is already a member of a group; start it with --join on an empty data directory",
                    st.this
                ));
            }
            let m = raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                return Err(not_leader(raft));
            }
            tracing::info!("adding master {} at {addr}: catching up as a learner", st.this);
            raft.add_learner(st.this, Member::new(addr.clone()), true).await.map_err(|e| e.to_string())?;
            let mut voters: BTreeSet<u64> =
                raft.metrics().borrow().membership_config.membership().voter_ids().collect();
            voters.insert(st.this);
            raft.change_membership(voters, false).await.map_err(|e| e.to_string())?;
            tracing::info!("master {} at {addr} is a voting member", st.this);
            Ok(())
        }
        GroupChange::Remove { id: gone } => {
            let m = raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                return Err(not_leader(raft));
            }
            let membership = m.membership_config.membership();
            if membership.get_node(&gone).is_none() {
                return Err(format!("master {gone} is not a member"));
            }
            let voters: BTreeSet<u64> = membership.voter_ids().filter(|v| *v != gone).collect();
            if voters.is_empty() {
                return Err("that is the last voting member".into());
            }
            if membership.voter_ids().any(|v| v == gone) {
                raft.change_membership(voters, false).await.map_err(|e| e.to_string())?;
            } else {
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([gone])), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tracing::info!("master {gone} removed from the group");
            Ok(())
        }
        GroupChange::StepDown => {
            let m = raft.metrics().borrow().clone();
            if m.state != ServerState::Leader {
                return Err(not_leader(raft));
            }
            if m.membership_config.membership().voter_ids().count() < 2 {
                return Err("this master is the only voting member: there is nobody to hand over to".into());
            }
            // Stop proposing and heartbeating, and do not stand again:
            // the followers elect one of themselves within about 2 s.
            stepping.store(true, Ordering::SeqCst);
            raft.runtime_config().elect(false);
            raft.runtime_config().heartbeat(false);
            let other = raft
                .wait(Some(ELECTION_WAIT))
                .metrics(|m| m.current_leader.is_some_and(|l| l != id), "another leader")
                .await;
            raft.runtime_config().heartbeat(true);
            raft.runtime_config().elect(true);
            stepping.store(false, Ordering::SeqCst);
            let m = other.map_err(|e| format!("no other master took over within {ELECTION_WAIT:?}: {e}"))?;
            tracing::info!("handed the leadership to master {:?}", m.current_leader);
            Ok(())
        }
    }
}
