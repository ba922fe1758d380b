//! Damaged replicas, unreferenced replicas and full disks.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};
use stripefs_proto::{InodeId, NodeId};
use stripefs_tests::{errno, fsck, fsck_problems, random_bytes, replica_paths, sha256, tarpc_ctx, TestCluster};

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

/// One problem of an fsck report in short: kind, node, inode, index.
fn short(p: &serde_json::Value) -> String {
    let f = |k: &str| p[k].as_u64().map_or("-".to_string(), |n| n.to_string());
    format!("{} node={} ino={} index={}", p["kind"].as_str().unwrap_or("?"), f("node"), f("ino"), f("index"))
}

/// Waits (up to 20 s: reports reach the master in the background) until
/// `stripefs fsck` lists exactly `want` (see [`short`]) and exits 4;
/// fails with the last report otherwise.
fn wait_fsck_lists(m: &Path, what: &str, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    let start = Instant::now();
    loop {
        let (code, v) = fsck(what, &[m.as_os_str()]);
        let mut got: Vec<String> = fsck_problems(&v).iter().map(short).collect();
        got.sort();
        if code == 4 && got == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: fsck lists {got:?}, not {want:?}: {v:#}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The node holding the replica of chunk 0 of `ino` that the master lists
/// first (the one readers try first): its index in the cluster and id.
fn first_holder(c: &TestCluster, ino: u64, nodes: usize) -> (usize, NodeId) {
    let first = rt().block_on(async {
        let client = c.master_client().await;
        let locs = client.chunks(tarpc_ctx(), InodeId(ino), 0, 1).await.expect("rpc").expect("chunks");
        locs[0].replicas[0].clone()
    });
    let i = (0..nodes).find(|i| c.node_addr(*i) == first.addr).expect("the node of the first replica");
    (i, first.node)
}

/// A cluster of 3 nodes with node 2 away: files written now get their
/// two replicas on nodes 0 and 1, and a corrupt one cannot be replaced
/// until node 2 returns, so fsck has time to see it.
fn two_of_three(scrub: u64) -> TestCluster {
    let mut c = TestCluster::builder()
        .nodes(3)
        .chunk_size(256 * 1024)
        .node_dead_after(Duration::from_secs(1))
        .scrub_bytes_per_sec(scrub)
        .start();
    c.stop_node(2);
    c.wait_dead(1);
    c
}

/// A corrupt replica read from its file on this host (local reads).
#[test]
fn a_corrupt_replica_is_never_returned_is_listed_by_fsck_and_gets_replaced() {
    corrupt_replica_is_caught(true);
}

/// The same, read over TCP (the node checks the crc too, and reports).
#[test]
fn a_corrupt_replica_read_over_tcp_is_caught_too() {
    corrupt_replica_is_caught(false);
}

fn corrupt_replica_is_caught(local_reads: bool) {
    let mut c = two_of_three(0);
    let opts = || stripefs_client::MountOptions { local_reads, ..Default::default() };
    let m = c.mount_with(opts());
    let data = random_bytes(200_000);
    fs::write(m.join("f"), &data).expect("write");
    let ino = fs::metadata(m.join("f")).expect("stat").ino();
    let (holder, holder_id) = first_holder(&c, ino, 2);
    let damaged = replica_paths(&c.node_dir(holder));
    assert_eq!(damaged.len(), 1);
    let bad = flip_a_data_byte(&damaged[0]);
    // A fresh mount (no cached blocks) reads the damaged replica first:
    // the reader gets intact data from the other one, and reports it.
    let m2 = c.mount_with(opts());
    assert_eq!(sha256(&fs::read(m2.join("f")).expect("read")), sha256(&data), "a corrupt block reached the reader");
    assert_eq!(m2.core().local.open_count() > 0, local_reads, "read the replica files themselves");
    drop(m2);
    // fsck lists exactly that replica as corrupt (no good copy can be
    // made while node 2 is away: node 1 has one, node 0 the bad one).
    wait_fsck_lists(m.path(), "one corrupt replica", &[format!("corrupt_replica node={holder_id} ino={ino} index=0")]);
    // Meanwhile readers are not even offered the corrupt replica.
    assert!(live_replicas(&c, ino).iter().all(|s| s.len() == 1 && !s.contains(&holder_id)));
    let m3 = c.mount_with(opts());
    assert_eq!(sha256(&fs::read(m3.join("f")).expect("read")), sha256(&data));
    drop(m3);
    // Node 2 returns: a good copy is made there, the bad one deleted.
    c.start_node_again(2);
    let took = wait_until("the corrupt replica is replaced", Duration::from_secs(30), || {
        live_replicas(&c, ino).iter().all(|s| s.len() == 2) && damage_gone(&damaged[0], &bad)
    });
    println!("corrupt replica replaced {:.1} s after a node could take a good copy", took.as_secs_f64());
    let m4 = c.mount_with(opts());
    assert_eq!(sha256(&fs::read(m4.join("f")).expect("read")), sha256(&data));
    stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(30));
}

#[test]
fn the_scrubber_finds_damage_nobody_reads() {
    let mut c = two_of_three(64 << 20);
    let m = c.mount();
    let data = random_bytes(100_000);
    fs::write(m.join("cold"), &data).expect("write");
    let ino = fs::metadata(m.join("cold")).expect("stat").ino();
    let (holder, holder_id) = first_holder(&c, ino, 2);
    let damaged = replica_paths(&c.node_dir(holder));
    let bad = flip_a_data_byte(&damaged[0]);
    let want = [format!("corrupt_replica node={holder_id} ino={ino} index=0")];
    wait_fsck_lists(m.path(), "scrubbed damage", &want);
    // A restarted master learns it again from the node.
    c.restart_master();
    c.must_wait_master_serving(2);
    wait_fsck_lists(m.path(), "scrubbed damage, after a master restart", &want);
    c.start_node_again(2);
    let took = wait_until("the master replaces the scrubbed replica", Duration::from_secs(30), || {
        damage_gone(&damaged[0], &bad) && live_replicas(&c, ino).iter().all(|s| s.len() == 2)
    });
    println!("scrubbed replica replaced {:.1} s after a node could take a good copy", took.as_secs_f64());
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
    // The stale replica is already queued for deletion: nothing to report.
    stripefs_tests::fsck_lists_only(m.path(), "a node with a stale version away", |_| false);
    c.start_node_again(holder);
    let took = wait_until("the stale version is deleted on the returning node", Duration::from_secs(20), || {
        !stale[0].exists()
    });
    println!("stale replica removed {:.1} s after the node returned", took.as_secs_f64());
    drop(m);
    let m = c.mount();
    assert_eq!(sha256(&fs::read(m.join("f")).expect("read")), sha256(&new));
    stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(30));
}

/// Fills `dir` (on its own small filesystem) until the disk says ENOSPC,
/// as another program sharing the disk would; returns the ballast file.
fn fill_disk(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("ballast");
    let mut f = fs::File::create(&path).expect("create ballast");
    let mb = vec![0xa5u8; 1 << 20];
    for _ in 0..4096 {
        if let Err(e) = std::io::Write::write_all(&mut f, &mb) {
            assert_eq!(errno(&e), libc::ENOSPC, "filling {}: {e}", dir.display());
            return path;
        }
    }
    panic!("{} did not fill up", dir.display());
}

/// Real full disks (each node's data directory is a small tmpfs): a
/// write that finds no room gets ENOSPC, statfs says so, nothing written
/// before is damaged, fsck finds nothing wrong, and writes work again once
/// space is freed.
#[test]
fn really_full_disks_give_enospc_and_damage_nothing() {
    let c = TestCluster::builder().nodes(2).chunk_size(1 << 20).node_disk_bytes(96 << 20).start();
    let m = c.mount();
    let mut kept = Vec::new();
    for i in 0..6 {
        let data = random_bytes(1 << 20);
        let mut f = fs::File::create(m.join(format!("kept{i}"))).expect("create");
        std::io::Write::write_all(&mut f, &data).expect("write");
        f.sync_all().expect("fsync while there is room");
        kept.push((format!("kept{i}"), sha256(&data)));
    }
    // Something else fills both disks to the last byte.
    let ballast: Vec<_> = (0..2).map(|i| fill_disk(&c.node_dir(i))).collect();
    let mut f = fs::File::create(m.join("new")).expect("create needs no data space");
    std::io::Write::write_all(&mut f, &random_bytes(1 << 20)).expect("buffered write");
    let e = f.sync_all().expect_err("fsync with both disks full");
    assert_eq!(errno(&e), libc::ENOSPC, "{e}");
    drop(f);
    wait_until("statfs shows no space", Duration::from_secs(10), || {
        let s = nix::sys::statvfs::statvfs(m.path()).expect("statvfs");
        s.blocks_available() * s.fragment_size() < 1 << 20
    });
    let check = |m: &Path, kept: &[(String, String)]| {
        for (name, sum) in kept {
            assert_eq!(&sha256(&fs::read(m.join(name)).expect("read")), sum, "{name} was damaged");
        }
    };
    let fresh = c.mount();
    check(fresh.path(), &kept);
    drop(fresh);
    let (code, v) = fsck("disks full", &[m.path().as_os_str()]);
    assert_eq!((code, fsck_problems(&v).len()), (0, 0), "a full disk is not damage: {v:#}");
    // Space comes back: writing works again.
    for b in &ballast {
        fs::remove_file(b).expect("remove ballast");
    }
    wait_until("statfs shows space again", Duration::from_secs(10), || {
        let s = nix::sys::statvfs::statvfs(m.path()).expect("statvfs");
        s.blocks_available() * s.fragment_size() > 64 << 20
    });
    let data = random_bytes(1 << 20);
    let mut f = fs::File::create(m.join("new")).expect("create");
    std::io::Write::write_all(&mut f, &data).expect("write");
    f.sync_all().expect("fsync once there is room again");
    drop(f);
    kept.push(("new".into(), sha256(&data)));
    let fresh = c.mount();
    check(fresh.path(), &kept);
    stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(30));
}
