//! Tests of re-replication rounds against a real store and registry.

use super::*;
use crate::records::NodeRecord;
use crate::registry::Registry;
use crate::state::{MasterState, OpenFiles};
use crate::test_util::{commit, mknod, open_store, CHUNK};
use stripefs_proto::types::Heartbeat;

const DEAD_AFTER: Duration = Duration::from_millis(300);

fn node(i: u64) -> (NodeId, NodeRecord) {
    (NodeId(i), NodeRecord { addr: format!("127.0.0.{i}:1"), host: format!("host{i}"), zone: "z".into() })
}

fn beat(shared: &MasterState, nodes: &[u64]) {
    for &i in nodes {
        let hb = Heartbeat {
            node: NodeId(i),
            capacity_bytes: 1 << 40,
            free_bytes: 1 << 39,
            disk: format!("disk{i}"),
            used_bytes: 0,
            chunk_count: 0,
            replicated: vec![],
            failed: vec![],
            corrupt: vec![],
            workers: vec![],
        };
        assert!(shared.registry.heartbeat(&hb));
    }
}

/// Keeps `alive` beating until the others count as dead.
fn let_die(shared: &MasterState, alive: &[u64]) {
    let until = Instant::now() + DEAD_AFTER + Duration::from_millis(100);
    while Instant::now() < until {
        beat(shared, alive);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ordered_to(shared: &MasterState, n: u64) -> Vec<ChunkId> {
    shared.copies.take_orders(NodeId(n)).iter().map(|o| o.chunk).collect()
}

/// The master's state over `store` and `registry`, with default graces.
fn state(store: crate::store::Store, registry: Registry) -> MasterState {
    let workers = stripefs_daemon::Workers::new(tokio_util::sync::CancellationToken::new());
    let (gc_grace, scratch_lost_after) = (Duration::from_secs(600), Duration::from_secs(900));
    MasterState::new(store, registry, Arc::new(OpenFiles::default()), gc_grace, scratch_lost_after, workers)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_to_a_node_that_died_is_given_to_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let f = mknod(&store, InodeId::ROOT, "f").await;
    // Replication 2 (the default): on nodes 1 and 2.
    commit(&store, f, 0, 100, 1000, CHUNK, &[NodeId(1), NodeId(2)]).await;
    let registry = Registry::new(vec![], DEAD_AFTER);
    for i in 1..=4 {
        let (id, rec) = node(i);
        registry.registered(id, rec);
    }
    let shared = state(store, registry);
    // Node 2 dies: the chunk is copied from node 1 to node 3 or 4.
    let_die(&shared, &[1, 3, 4]);
    assert!(shared.copies.round(&shared).expect("round").work_left(&shared.copies), "there is work");
    let (first, other) = if ordered_to(&shared, 3) == vec![ChunkId(100)] { (3, 4) } else { (4, 3) };
    assert_eq!(shared.copies.in_flight(), 1);
    // The target dies before it reports the copy: the order goes to the
    // last node left, at once rather than after the order's timeout.
    let_die(&shared, &[1, other]);
    assert!(shared.copies.round(&shared).expect("round").work_left(&shared.copies));
    assert_eq!(ordered_to(&shared, other), vec![ChunkId(100)], "the order stays with dead node {first}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_under_replicated_count_stands_while_copies_are_at_their_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    // 40 chunks on nodes 1 and 2; node 2 will die. Nodes 3 to 10 take
    // MAX_PER_NODE copies each: 32 in flight, the limit.
    for i in 0..40u64 {
        let f = mknod(&store, InodeId::ROOT, &format!("f{i}")).await;
        commit(&store, f, 0, 1000 + i, 2000 + i, CHUNK, &[NodeId(1), NodeId(2)]).await;
    }
    let registry = Registry::new(vec![], DEAD_AFTER);
    for i in 1..=10 {
        let (id, rec) = node(i);
        registry.registered(id, rec);
    }
    let shared = Arc::new(state(store, registry));
    let alive: Vec<u64> = std::iter::once(1).chain(3..=10).collect();
    // A master that has just taken the lead orders nothing: the nodes it
    // has not heard from yet are not dead.
    shared.took_the_lead();
    let mut worker = Rereplicator::new(shared.clone());
    beat(&shared, &alive);
    worker.work().await.expect("round of a new leader");
    assert_eq!(shared.copies.in_flight(), 0, "a new leader re-replicated before the nodes could report");
    let_die(&shared, &alive);
    worker.work().await.expect("first round");
    assert_eq!(shared.copies.in_flight(), MAX_IN_FLIGHT, "the first round fills the copies in flight");
    let counted = shared.under_replicated.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counted, 40);
    // A round with no room scans nothing: the count must not drop to 0.
    beat(&shared, &alive);
    worker.work().await.expect("second round");
    assert_eq!(shared.under_replicated.load(std::sync::atomic::Ordering::Relaxed), 40);
    assert!(worker.detail().contains("40 chunks under-replicated"), "{}", worker.detail());
}
