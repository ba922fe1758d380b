//! Storage nodes die: reads and writes go on, and the cluster copies the
//! chunks that lost a replica until every chunk is fully replicated again.

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, Instant};
use stripefs_proto::{InodeId, NodeId};
use stripefs_tests::{fsck_lists_only, random_bytes, sha256, tarpc_ctx, TestCluster};

/// Counts the chunks of `ino` whose live replicas are fewer than `want`.
async fn under_replicated(c: &TestCluster, ino: u64, want: usize) -> usize {
    let client = c.master_client().await;
    let nodes = client.nodes(tarpc_ctx()).await.expect("rpc").expect("nodes");
    let alive: HashSet<NodeId> = nodes.iter().filter(|n| n.alive).map(|n| n.id).collect();
    let chunks = client.chunks(tarpc_ctx(), InodeId(ino), 0, 4096).await.expect("rpc").expect("chunks");
    assert!(!chunks.is_empty());
    chunks
        .iter()
        .filter(|l| {
            let live: HashSet<NodeId> = l.replicas.iter().map(|r| r.node).filter(|n| alive.contains(n)).collect();
            live.len() < want
        })
        .count()
}

fn wait_fully_replicated(c: &TestCluster, ino: u64, want: usize, dead: usize, what: &str) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let start = Instant::now();
    c.wait_dead(dead);
    assert!(rt.block_on(under_replicated(c, ino, want)) > 0, "{what}: no chunk lost a replica: the test tests nothing");
    loop {
        let missing = rt.block_on(under_replicated(c, ino, want));
        if missing == 0 {
            let took = start.elapsed();
            println!("{what}: fully replicated again after {:.1} s", took.as_secs_f64());
            return took;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: {missing} chunks still under-replicated after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_dead_node_is_replaced_and_reads_go_on() {
    use std::os::unix::fs::MetadataExt;
    let mut c = TestCluster::builder().nodes(3).chunk_size(256 * 1024).node_dead_after(Duration::from_secs(1)).start();
    let m = c.mount();
    let data = random_bytes(3_000_000);
    fs::write(m.join("f"), &data).expect("write");
    let ino = fs::metadata(m.join("f")).expect("stat").ino();
    c.stop_node(0);
    c.wait_dead(1);
    // fsck lists only chunks of f that lost their replica on node 0.
    fsck_lists_only(m.path(), "node 0 dead", |p| {
        p["kind"] == "under_replicated" && p["ino"] == ino && p["live"] == 1 && p["want"] == 2
    });
    // Reads go on from the surviving replicas.
    assert_eq!(sha256(&fs::read(m.join("f")).expect("read with a node down")), sha256(&data));
    // Writes go on too.
    let more = random_bytes(1_000_000);
    fs::write(m.join("g"), &more).expect("write with a node down");
    wait_fully_replicated(&c, ino, 2, 1, "after losing 1 of 3 nodes");
    c.stop_node(1);
    // Every chunk had two live replicas: one survives, on node 2.
    drop(m);
    let m = c.mount();
    assert_eq!(sha256(&fs::read(m.join("f")).expect("read with two nodes down")), sha256(&data));
    assert_eq!(sha256(&fs::read(m.join("g")).expect("read")), sha256(&more));
    // The files written with one node down end up fully replicated too.
    c.start_node_again(0);
    c.start_node_again(1);
    c.wait_nodes_up(3);
    stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(60));
}

#[test]
fn five_nodes_replication_three_lose_two() {
    use std::os::unix::fs::MetadataExt;
    let mut c = TestCluster::builder().nodes(5).chunk_size(256 * 1024).node_dead_after(Duration::from_secs(1)).start();
    let m = c.mount();
    fs::create_dir(m.join("r3")).expect("mkdir");
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir_ino = fs::metadata(m.join("r3")).expect("stat").ino();
    client_rt.block_on(async {
        let client = c.master_client().await;
        let op =
            stripefs_proto::ops::SetPolicy { ino: InodeId(dir_ino), replication: Some(3), compression_level: None };
        client.set_policy(tarpc_ctx(), stripefs_proto::ops::Request::single(op)).await.expect("rpc").expect("policy");
    });
    let data = random_bytes(4_000_000);
    fs::write(m.join("r3/f"), &data).expect("write");
    let ino = fs::metadata(m.join("r3/f")).expect("stat").ino();
    // How many replicas each chunk loses with nodes 1 and 3.
    let lost: std::collections::HashMap<u64, usize> = client_rt.block_on(async {
        let client = c.master_client().await;
        let chunks = client.chunks(tarpc_ctx(), InodeId(ino), 0, 4096).await.expect("rpc").expect("chunks");
        let gone = [c.node_addr(1).to_string(), c.node_addr(3).to_string()];
        chunks.iter().map(|l| (l.chunk.0, l.replicas.iter().filter(|r| gone.contains(&r.addr)).count())).collect()
    });
    assert!(lost.values().any(|n| *n > 0), "no chunk has a replica on nodes 1 or 3: the test tests nothing");
    c.stop_node(1);
    c.stop_node(3);
    let start = Instant::now();
    c.wait_dead(2);
    // Only chunks that lost replicas are listed, with at least what they
    // kept (re-replication may have begun to copy them back).
    fsck_lists_only(m.path(), "2 of 5 nodes dead", |p| {
        let kept = p["chunk"].as_u64().and_then(|id| lost.get(&id)).map(|n| 3 - *n as u64);
        p["kind"] == "under_replicated"
            && p["ino"] == ino
            && p["want"] == 3
            && kept.is_some_and(|k| k < 3 && p["live"].as_u64().is_some_and(|l| l >= k && l < 3))
    });
    stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(60));
    println!(
        "5 nodes, replication 3, 2 stopped: fsck reports full replication {:.1} s after the stop",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(sha256(&fs::read(m.join("r3/f")).expect("read")), sha256(&data));
}
