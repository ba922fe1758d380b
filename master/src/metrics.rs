//! The master's `/metrics`, `/healthz` and `/readyz` (see
//! [`stripefs_daemon::metrics`]): RPCs by operation, group commits, and
//! the state of the filesystem and its nodes, read at each scrape.

use crate::state::MasterState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use stripefs_daemon::lock;
use stripefs_daemon::metrics::{Endpoint, OpMetrics};

/// A label set of one storage node.
type NodeLabel = [(&'static str, String); 1];

/// Registers the RPC counters and latencies (`stripefs_master_rpc_requests_total{op}`,
/// `..._seconds{op}`) in `registry`; the serving loop records each RPC.
pub fn rpc(registry: &mut Registry) -> OpMetrics {
    OpMetrics::register(registry, "rpc_requests", "RPCs served")
}

/// Builds the endpoint over `registry` (the RPC metrics already in it):
/// the store's commit histograms, and gauges refreshed from `state` at
/// each scrape.
pub fn endpoint(state: &Arc<MasterState>, mut registry: Registry) -> Endpoint {
    let store = state.store.metrics();
    registry.register(
        "commit_batch_commands",
        "Log entries flushed per fdatasync of the log (group commit)",
        store.batch_commands.clone(),
    );
    registry.register(
        "log_sync_seconds",
        "Time of one fdatasync of the master group's log",
        store.log_sync_seconds.clone(),
    );
    registry.register(
        "commit_seconds",
        "Time of applying a batch of log entries to the database",
        store.commit_seconds.clone(),
    );
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let g: Gauge<i64, AtomicI64> = Gauge::default();
        registry.register(name, help, g.clone());
        g
    };
    let inodes = gauge(&mut registry, "inodes", "Inodes in the filesystem");
    let chunks = gauge(&mut registry, "chunks", "Chunk records (each with its replicas)");
    let nodes_up = gauge(&mut registry, "nodes_up", "Storage nodes alive");
    let nodes_down = gauge(&mut registry, "nodes_down", "Storage nodes known but silent");
    let under = gauge(
        &mut registry,
        "under_replicated_chunks",
        "Chunks with fewer live replicas than wanted, at the last re-replication scan (at most 128 counted)",
    );
    let in_flight = gauge(&mut registry, "rereplication_copies_in_flight", "Copies ordered and not yet reported done");
    let corrupt = gauge(&mut registry, "corrupt_replicas", "Replicas found corrupt and not yet replaced");
    let garbage =
        gauge(&mut registry, "replica_deletions_pending", "Replica deletions waiting for their nodes (garbage)");
    let orphans =
        gauge(&mut registry, "orphans_waiting", "Unlinked open files waiting for their clients before they are purged");
    let answers = gauge(&mut registry, "request_answers_remembered", "Answers kept to answer retried requests");
    let term = gauge(&mut registry, "group_term", "The master group's current term, as this master knows it");
    let leader = gauge(&mut registry, "group_is_leader", "1 when this master leads its group");
    let last_log = gauge(&mut registry, "group_last_log_index", "Index of the last entry in this master's log");
    let applied = gauge(&mut registry, "group_applied_index", "Index of the last log entry this master applied");
    let voters = gauge(&mut registry, "group_voters", "Voting members of the master group");
    let silent = gauge(
        &mut registry,
        "group_members_out_of_contact",
        "Members the leader has not heard from for 2 s (on the leader; 0 elsewhere)",
    );
    let log_bytes = gauge(&mut registry, "log_disk_bytes", "Bytes of this master's log segment files");
    let durable = gauge(
        &mut registry,
        "log_durable_index",
        "Index below which this master's log is on disk (a master alone answers before it is)",
    );
    let awaiting = gauge(
        &mut registry,
        "sessions_awaiting_replay",
        "Client sessions a master restarted after a crash still waits for before it serves",
    );
    let leases = gauge(&mut registry, "dir_leases", "Directory leases held by clients");
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let c: Counter = Counter::default();
        registry.register(name, help, c.clone());
        c
    };
    let grants = counter(&mut registry, "dir_lease_grants", "Directory leases granted");
    let recalls = counter(&mut registry, "dir_lease_recalls", "Directory leases recalled for another client's change");
    let node_family = |registry: &mut Registry, name: &str, help: &str| {
        let f: Family<NodeLabel, Gauge<i64, AtomicI64>> = Family::default();
        registry.register(name, help, f.clone());
        f
    };
    let capacity = node_family(&mut registry, "node_capacity_bytes", "Capacity of each node's disk");
    let free = node_family(&mut registry, "node_free_bytes", "Free space of each node's disk (less its reserve)");
    let used = node_family(&mut registry, "node_used_bytes", "Bytes of replicas on each node");
    let up = node_family(&mut registry, "node_up", "1 when the node heartbeats, 0 when it is silent");
    let refresh_state = state.clone();
    // Two scrapes at once must not both add the same difference.
    let scraping = std::sync::Mutex::new(());
    let refresh = Box::new(move || {
        let _one_at_a_time = lock(&scraping);
        let s = &refresh_state;
        let set = |g: &Gauge<i64, AtomicI64>, v: Result<u64, stripefs_proto::FsError>| {
            if let Ok(v) = v {
                g.set(v as i64);
            }
        };
        set(&inodes, s.store.inode_count());
        set(&chunks, s.store.chunk_count());
        set(&garbage, s.store.pending_deletions());
        set(&answers, s.store.remembered_requests());
        let nodes = s.registry.status();
        nodes_up.set(nodes.iter().filter(|n| n.alive).count() as i64);
        nodes_down.set(nodes.iter().filter(|n| !n.alive).count() as i64);
        for n in &nodes {
            let label = [("node", n.id.0.to_string())];
            capacity.get_or_create(&label).set(n.capacity_bytes as i64);
            free.get_or_create(&label).set(n.free_bytes as i64);
            used.get_or_create(&label).set(n.used_bytes as i64);
            up.get_or_create(&label).set(i64::from(n.alive));
        }
        under.set(s.under_replicated.load(std::sync::atomic::Ordering::Relaxed) as i64);
        in_flight.set(s.copies.in_flight() as i64);
        corrupt.set(lock(&s.corrupt).len() as i64);
        orphans.set(s.orphans.len() as i64);
        let g = s.store.group_status();
        term.set(g.term as i64);
        let leads = g.leader == Some(g.this);
        leader.set(i64::from(leads));
        last_log.set(g.last_log_index.unwrap_or(0) as i64);
        applied.set(g.applied.unwrap_or(0) as i64);
        voters.set(g.members.iter().filter(|m| m.voter).count() as i64);
        let out = g.members.iter().filter(|m| m.millis_since_contact.is_none_or(|ms| ms > 2000)).count();
        silent.set(if leads { out as i64 } else { 0 });
        log_bytes.set(s.store.log_disk_bytes() as i64);
        durable.set(s.store.log_durable_end() as i64);
        awaiting.set(s.store.sessions_awaiting_replay() as i64);
        let l = s.store.leases();
        leases.set(l.count() as i64);
        for (c, now) in [(&grants, &l.granted), (&recalls, &l.recalls)] {
            stripefs_daemon::metrics::catch_up(c, now.load(std::sync::atomic::Ordering::Relaxed));
        }
    });
    let ready_state = state.clone();
    let ready = Box::new(move || match ready_state.store.inode_count() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the database does not answer: {e}")),
    });
    Endpoint { registry, refresh, ready }
}

use std::sync::atomic::AtomicI64;
