//! Damaged replicas, unreferenced replicas and full disks.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};
use stripefs_proto::{InodeId, NodeId};
use stripefs_tests::{errno, random_bytes, replica_paths, sha256, tarpc_ctx, TestCluster};

/// Flips one byte of a block's data in a replica file (past the header
/// and block table, so only a block's crc can catch it); returns the
/// damaged bytes.
fn flip_a_data_byte(path: &Path) -> Vec<u8> {
    let mut b = fs::read(path).expect("read replica");
    let at = b.len() - 100;
    b[at] ^= 0x5a;
    fs::write(path, &b).expect("write replica");
    b
}

/// Whether the damaged replica is gone (deleted, or replaced by a good
/// copy at the same place: the node may well be the copy's target).
fn damage_gone(path: &Path, damaged: &[u8]) -> bool {
    fs::read(path).map_or(true, |now| now != damaged)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Per chunk of `ino`: the set of live replica nodes.
fn live_replicas(c: &TestCluster, ino: u64) -> Vec<HashSet<NodeId>> {
    rt().block_on(async {
        let client = c.master_client().await;
        let alive: HashSet<NodeId> = client
            .nodes(tarpc_ctx())
            .await
            .expect("rpc")
            .expect("nodes")
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.id)
            .collect();
        let chunks = client.chunks(tarpc_ctx(), InodeId(ino), 0, 4096).await.expect("rpc").expect("chunks");
        chunks.iter().map(|l| l.replicas.iter().map(|r| r.node).filter(|n| alive.contains(n)).collect()).collect()
    })
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

#[test]
fn a_corrupt_replica_is_never_returned_and_gets_replaced() {
    let c = TestCluster::builder().nodes(3).chunk_size(256 * 1024).start();
    let m = c.mount();
    let data = random_bytes(200_000);
    fs::write(m.join("f"), &data).expect("write");
    let ino = fs::metadata(m.join("f")).expect("stat").ino();
    // Damage the replica readers try first (the first one the master lists).
    let first_addr = rt().block_on(async {
        let client = c.master_client().await;
        let locs = client.chunks(tarpc_ctx(), InodeId(ino), 0, 1).await.expect("rpc").expect("chunks");
        locs[0].replicas[0].addr.clone()
    });
    let holder = (0..3).find(|i| c.node_addr(*i) == first_addr).expect("the node of the first replica");
    let damaged = replica_paths(&c.node_dir(holder));
    assert_eq!(damaged.len(), 1);
    let bad = flip_a_data_byte(&damaged[0]);
    // A fresh mount (no cached blocks) reads the damaged replica first:
    // the reader gets intact data from the other one.
    let m2 = c.mount();
    assert_eq!(sha256(&fs::read(m2.join("f")).expect("read")), sha256(&data), "a corrupt block reached the reader");
    drop(m2);
    let took = wait_until("the corrupt replica is replaced", Duration::from_secs(30), || {
        let live = live_replicas(&c, ino);
        live.iter().all(|s| s.len() == 2) && damage_gone(&damaged[0], &bad)
    });
    println!("corrupt replica replaced after {:.1} s", took.as_secs_f64());
    assert_eq!(sha256(&fs::read(m.join("f")).expect("read")), sha256(&data));
    stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(30));
}

#[test]
fn the_scrubber_finds_damage_nobody_reads() {
    let c = TestCluster::builder().nodes(3).chunk_size(256 * 1024).scrub_bytes_per_sec(64 << 20).start();
    let m = c.mount();
    let data = random_bytes(100_000);
    fs::write(m.join("cold"), &data).expect("write");
    let ino = fs::metadata(m.join("cold")).expect("stat").ino();
    let holder = (0..3).find(|i| !replica_paths(&c.node_dir(*i)).is_empty()).expect("a holder");
    let damaged = replica_paths(&c.node_dir(holder));
    let bad = flip_a_data_byte(&damaged[0]);
    let took = wait_until("the scrubber reports and the master replaces", Duration::from_secs(30), || {
        damage_gone(&damaged[0], &bad) && live_replicas(&c, ino).iter().all(|s| s.len() == 2)
    });
    println!("scrubbed and replaced after {:.1} s", took.as_secs_f64());
    drop(m);
    let m = c.mount();
    assert_eq!(sha256(&fs::read(m.join("cold")).expect("read")), sha256(&data));
    stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(30));
}

#[test]
fn unreferenced_replicas_are_collected() {
    let mut c = TestCluster::builder().nodes(3).gc_grace(Duration::ZERO).start();
    let m = c.mount();
    fs::write(m.join("f"), random_bytes(50_000)).expect("write");
    let holder = (0..3).find(|i| !replica_paths(&c.node_dir(*i)).is_empty()).expect("a holder");
    let other = (0..3).find(|i| replica_paths(&c.node_dir(*i)).is_empty()).expect("a node without it");
    // A stray copy nobody references (as a crash in mid-upload leaves).
    let src = replica_paths(&c.node_dir(holder))[0].clone();
    let rel = src.strip_prefix(c.node_dir(holder)).expect("relative").to_path_buf();
    let stray = c.node_dir(other).join(rel);
    fs::create_dir_all(stray.parent().expect("dir")).expect("mkdir");
    fs::copy(&src, &stray).expect("copy");
    // The node reports its inventory when it registers.
    c.restart_node(other);
    let took = wait_until("the stray replica is deleted", Duration::from_secs(20), || !stray.exists());
    println!("stray replica collected after {:.1} s", took.as_secs_f64());
    assert!(src.exists(), "the referenced replica must stay");
}

#[test]
fn full_disks_give_enospc_and_damage_nothing() {
    let mut c = TestCluster::builder().nodes(2).start();
    let m = c.mount();
    let kept = random_bytes(300_000);
    fs::write(m.join("kept"), &kept).expect("write while there is room");
    // Both nodes now keep the whole disk free: no room for anything.
    for i in 0..2 {
        c.set_reserve(i, u64::MAX / 4);
        c.restart_node(i);
    }
    c.wait_nodes_up(2);
    // statfs shows the real state (once the nodes' heartbeats say so; its
    // answer is cached for a second).
    wait_until("statfs shows no space", Duration::from_secs(10), || {
        nix::sys::statvfs::statvfs(m.path()).expect("statvfs").blocks_available() == 0
    });
    // The error surfaces at fsync (or close; Rust ignores close errors).
    let mut f = fs::File::create(m.join("new")).expect("create needs no data space");
    std::io::Write::write_all(&mut f, &random_bytes(100_000)).expect("buffered write");
    let e = f.sync_all().expect_err("fsync with no space left");
    assert_eq!(errno(&e), libc::ENOSPC, "{e}");
    drop(f);
    assert_eq!(sha256(&fs::read(m.join("kept")).expect("read")), sha256(&kept), "what was written is intact");
    stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(30));
}

/// A node away while its chunk was rewritten comes back with the old
/// version: it is deleted there (and was shown pending in `stripefs
/// status` meanwhile), and readers only ever get the new one.
#[test]
fn a_returning_node_drops_stale_versions() {
    let mut c = TestCluster::builder().nodes(3).node_dead_after(Duration::from_secs(1)).start();
    let m = c.mount();
    let old = random_bytes(100_000);
    fs::write(m.join("f"), &old).expect("write v1");
    let holder = (0..3).find(|i| !replica_paths(&c.node_dir(*i)).is_empty()).expect("a holder");
    let stale = replica_paths(&c.node_dir(holder));
    assert_eq!(stale.len(), 1);
    c.stop_node(holder);
    let new = random_bytes(100_000);
    fs::write(m.join("f"), &new).expect("rewrite while the node is away");
    // `stripefs status` shows the deletion waiting for the absent node.
    let out = stripefs_tests::must_run(
        std::process::Command::new(stripefs_tests::bin("stripefs")).arg("status").arg(m.path()).arg("--json"),
        Duration::from_secs(30),
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let pending: u64 =
        status["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["pending_deletions"].as_u64()).sum();
    assert!(pending >= 1, "status shows no pending deletion: {status}");
    c.start_node_again(holder);
    let took = wait_until("the stale version is deleted on the returning node", Duration::from_secs(20), || {
        !stale[0].exists()
    });
    println!("stale replica removed {:.1} s after the node returned", took.as_secs_f64());
    drop(m);
    let m = c.mount();
    assert_eq!(sha256(&fs::read(m.join("f")).expect("read")), sha256(&new));
}
