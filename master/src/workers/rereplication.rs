//! Re-replication: finds chunks with fewer live replicas than their file's
//! replication factor and orders a live node to copy each from a live
//! replica (pull), most endangered chunks first, a bounded number at a
//! time. Orders travel in heartbeat replies; completions come back in
//! heartbeats and become [`Command::AddReplica`].

use crate::namespace::Command;
use crate::state::MasterState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_daemon::{lock, Step, Worker};
use stripefs_proto::types::ReplicateOrder;
use stripefs_proto::{ChunkId, InodeId, NodeId, Version};

/// Copies in flight over the whole cluster.
const MAX_IN_FLIGHT: usize = 32;
/// Copies in flight per target node.
const MAX_PER_NODE: usize = 4;
/// An order not reported done within this time is given up and retried.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// How often to look for work when some node is dead or chunks are
/// under-replicated.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How often to look for work when every node is alive (policy changes,
/// writes placed on fewer nodes than wanted).
const IDLE_SCAN_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct Pending {
    ino: InodeId,
    index: u64,
    target: NodeId,
    since: Instant,
}

/// Copy orders waiting for their node's heartbeat, and copies in flight.
#[derive(Debug, Default)]
pub struct Copies {
    outbox: Mutex<HashMap<NodeId, Vec<ReplicateOrder>>>,
    pending: Mutex<HashMap<(ChunkId, Version), Pending>>,
    wake: tokio::sync::Notify,
}

/// What one round found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Chunks under their replication factor (up to the scan's limit).
    pub degraded: usize,
    /// Copies ordered this round.
    pub ordered: usize,
    /// No room for more copies: nothing was scanned (`degraded` is unknown).
    pub full: bool,
}

impl Round {
    /// Whether work is left: chunks still under-replicated or copies in flight.
    fn work_left(&self, copies: &Copies) -> bool {
        self.degraded > 0 || copies.in_flight() > 0
    }
}

impl Copies {
    /// Asks for a scan now (a replica was dropped).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Orders for `node`, handed over once.
    pub fn take_orders(&self, node: NodeId) -> Vec<ReplicateOrder> {
        lock(&self.outbox).remove(&node).unwrap_or_default()
    }

    /// Number of copies ordered and not yet done.
    pub fn in_flight(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Records what a node reported; returns the commands that record its
    /// new replicas.
    pub fn reported(
        &self,
        node: NodeId,
        done: &[(ChunkId, Version)],
        failed: &[(ChunkId, Version)],
        shared: &MasterState,
    ) -> Vec<Command> {
        let mut pending = lock(&self.pending);
        for key in failed {
            if pending.get(key).is_some_and(|p| p.target == node) {
                tracing::warn!("node {node} could not copy chunk {} v{}", key.0, key.1);
                pending.remove(key);
            }
        }
        let mut out = Vec::new();
        for &(chunk, version) in done {
            let Some(p) = pending.remove(&(chunk, version)).filter(|p| p.target == node) else {
                // Not ordered (or given up): the copy is not recorded, and
                // garbage collection removes it later.
                continue;
            };
            // Replicas on dead nodes, and corrupt ones, are dropped once
            // the chunk is whole again.
            let usable = |n: NodeId| shared.registry.is_alive(n) && !shared.is_corrupt(n, chunk, version);
            let drop = match shared.store.chunks(p.ino, p.index, 1) {
                Ok(v) => v
                    .into_iter()
                    .next()
                    .filter(|(_, rec)| rec.chunk == chunk && rec.version == version)
                    .map(|(_, rec)| {
                        let good = rec.replicas.iter().filter(|n| **n != node && usable(**n)).count() + 1;
                        let want = shared.store.inode(p.ino).map(|i| i.policy.replication as usize).unwrap_or(0);
                        if good >= want {
                            rec.replicas.into_iter().filter(|n| *n != node && !usable(*n)).collect()
                        } else {
                            Vec::new()
                        }
                    })
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            tracing::info!("chunk {chunk} v{version} copied to node {node}");
            {
                // A good copy replaces a corrupt one the node may have held,
                // and dropped replicas are no longer of interest.
                let mut corrupt = lock(&shared.corrupt);
                corrupt.remove(&(node, chunk, version));
                for n in &drop {
                    corrupt.remove(&(*n, chunk, version));
                }
            }
            out.push(Command::AddReplica { ino: p.ino, index: p.index, chunk, version, node, drop });
        }
        out
    }

    /// One round: expire stale orders, then order copies for the most
    /// endangered chunks, within the limits.
    fn round(&self, shared: &MasterState) -> Result<Round, String> {
        let now = Instant::now();
        // An order whose target died will never be done: order it elsewhere.
        let alive = |n: NodeId| shared.registry.is_alive(n);
        lock(&self.pending).retain(|_, p| now.duration_since(p.since) < ORDER_TIMEOUT && alive(p.target));
        lock(&self.outbox).retain(|n, _| alive(*n));
        let room = MAX_IN_FLIGHT.saturating_sub(self.in_flight());
        if room == 0 {
            return Ok(Round { full: true, ..Round::default() });
        }
        let usable = |n: NodeId, c: ChunkId, v: Version| shared.registry.is_alive(n) && !shared.is_corrupt(n, c, v);
        let degraded =
            shared.store.under_replicated(usable, room * 4).map_err(|e| format!("re-replication scan failed: {e}"))?;
        let mut round = Round { degraded: degraded.len(), ordered: 0, full: false };
        for d in degraded {
            if round.ordered >= room {
                break;
            }
            let key = (d.rec.chunk, d.rec.version);
            if lock(&self.pending).contains_key(&key) {
                continue;
            }
            let sources: Vec<String> = d
                .rec
                .replicas
                .iter()
                .filter(|n| usable(**n, d.rec.chunk, d.rec.version))
                .filter_map(|n| shared.registry.replica(*n).map(|(r, _)| r.addr))
                .collect();
            let busy: Vec<NodeId> = {
                let pending = lock(&self.pending);
                let mut count: HashMap<NodeId, usize> = HashMap::new();
                for p in pending.values() {
                    *count.entry(p.target).or_default() += 1;
                }
                count.into_iter().filter(|(_, c)| *c >= MAX_PER_NODE).map(|(n, _)| n).collect()
            };
            let mut avoid = d.rec.replicas.clone();
            avoid.extend(busy);
            let Ok(target) = shared.registry.place(1, "", &avoid) else { continue };
            let Some(target) = target.into_iter().next() else { continue };
            tracing::info!(
                "chunk {} v{} of inode {} has {}/{} live replicas: copying it to node {}",
                d.rec.chunk,
                d.rec.version,
                d.ino,
                d.live,
                d.want,
                target.node
            );
            lock(&self.pending).insert(key, Pending { ino: d.ino, index: d.index, target: target.node, since: now });
            lock(&self.outbox).entry(target.node).or_default().push(ReplicateOrder {
                chunk: d.rec.chunk,
                version: d.rec.version,
                length: d.rec.length,
                sources,
            });
            round.ordered += 1;
        }
        Ok(round)
    }
}

/// The re-replication worker: a round when woken (a replica was lost or
/// found corrupt, a node came back), every [`SCAN_INTERVAL`] while work
/// is left or a node is dead, else every [`IDLE_SCAN_INTERVAL`] (policy
/// changes, writes placed on fewer nodes than wanted).
pub struct Rereplicator {
    state: Arc<MasterState>,
    last_scan: Option<Instant>,
    last: Round,
    ordered: u64,
}

impl Rereplicator {
    /// A worker over `state.copies`.
    pub fn new(state: Arc<MasterState>) -> Rereplicator {
        Rereplicator { state, last_scan: None, last: Round::default(), ordered: 0 }
    }
}

impl Worker for Rereplicator {
    fn name(&self) -> String {
        "rereplication".into()
    }

    async fn work(&mut self) -> Result<Step, String> {
        if !self.state.settled_leader() {
            // A follower, or a new leader the nodes have not all reached.
            return Ok(Step::Idle);
        }
        self.last_scan = Some(Instant::now());
        let s = self.state.clone();
        // The scan reads the whole chunk table: off the async threads.
        let round = tokio::task::spawn_blocking(move || s.copies.round(&s))
            .await
            .map_err(|e| format!("re-replication round: {e}"))??;
        self.ordered += round.ordered as u64;
        if round.full {
            // Nothing scanned: the last count still stands.
            return Ok(Step::Idle);
        }
        self.last = round;
        self.state.under_replicated.store(round.degraded as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        loop {
            tokio::select! {
                biased;
                _ = self.state.copies.wake.notified() => return,
                _ = tokio::time::sleep(SCAN_INTERVAL) => {}
            }
            // Chunks were under-replicated at the last scan (maybe with
            // nowhere to copy them yet: a node that comes back or frees
            // space is a target).
            let due = self.last.work_left(&self.state.copies)
                || self.state.registry.any_dead()
                || self.last_scan.is_none_or(|t| t.elapsed() >= IDLE_SCAN_INTERVAL);
            if due {
                return;
            }
        }
    }

    fn detail(&self) -> String {
        format!(
            "{} copies in flight; last scan: {} chunks under-replicated, {} copies ordered; {} ordered in all",
            self.state.copies.in_flight(),
            self.last.degraded,
            self.last.ordered,
            self.ordered
        )
    }
}

#[cfg(test)]
#[path = "rereplication_tests.rs"]
mod tests;
