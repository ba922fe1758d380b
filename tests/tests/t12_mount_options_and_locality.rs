//! Mount options, replica locality and refused peers.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use stripefs_client::MountOptions;
use stripefs_proto::InodeId;
use stripefs_tests::{errno, random_bytes, replica_paths, sha256, tarpc_ctx, xattr_set, TestCluster};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn a_read_only_mount_refuses_changes_and_reads() {
    let c = TestCluster::builder().start();
    let rw = c.mount();
    fs::write(rw.join("f"), b"data").expect("write");
    let ro = c.mount_with(MountOptions { read_only: true, ..Default::default() });
    assert_eq!(fs::read(ro.join("f")).expect("read"), b"data");
    let e = fs::write(ro.join("g"), b"x").expect_err("create on ro");
    assert_eq!(errno(&e), libc::EROFS);
    let e = fs::OpenOptions::new().write(true).open(ro.join("f")).expect_err("open for write on ro");
    assert_eq!(errno(&e), libc::EROFS);
    let e = fs::remove_file(ro.join("f")).expect_err("unlink on ro");
    assert_eq!(errno(&e), libc::EROFS);
}

/// A client on a node's host writes the first replica of every chunk
/// there; a client on another node's host reads that host's replica,
/// although the master lists it second: from the replica's file, and over
/// TCP when local reads are off.
#[test]
fn writes_and_reads_stay_on_the_clients_host() {
    reads_stay_on_the_clients_host(true);
}

#[test]
fn writes_and_reads_stay_on_the_clients_host_without_local_reads() {
    reads_stay_on_the_clients_host(false);
}

fn reads_stay_on_the_clients_host(local_reads: bool) {
    // Two nodes, replication 2: every chunk is on both hosts.
    let c = TestCluster::builder().nodes(2).chunk_size(256 * 1024).start();
    let writer = MountOptions { host: Some(TestCluster::node_host(0)), ..Default::default() };
    let m = c.mount_with(writer);
    let data = random_bytes(1_000_000);
    fs::write(m.join("f"), &data).expect("write");
    let ino = fs::metadata(m.join("f")).expect("stat").ino();
    drop(m);
    let locs = rt().block_on(async {
        let client = c.master_client().await;
        client.chunks(tarpc_ctx(), InodeId(ino), 0, 100).await.expect("rpc").expect("chunks")
    });
    assert_eq!(locs.len(), 4);
    for l in &locs {
        assert_eq!(l.replicas[0].host, TestCluster::node_host(0), "chunk {} not placed writer-first", l.index);
    }
    // Damage node 0's replicas. A client on node 1's host must read node 1's
    // replicas: had it read node 0's first (as the master lists them), it
    // would have reported them corrupt and the master would replace them.
    let mut damaged = Vec::new();
    for f in replica_paths(&c.node_dir(0)) {
        let mut b = fs::read(&f).expect("read replica");
        let at = b.len() - 10;
        b[at] ^= 0xff;
        fs::write(&f, &b).expect("damage");
        damaged.push((f, b));
    }
    assert_eq!(damaged.len(), 4);
    let reader = MountOptions { host: Some(TestCluster::node_host(1)), local_reads, ..Default::default() };
    let m = c.mount_with(reader);
    for _ in 0..3 {
        assert_eq!(sha256(&fs::read(m.join("f")).expect("read")), sha256(&data));
    }
    // Local reads keep the replica files they read open (4 chunks).
    assert_eq!(m.core().local.open_count(), if local_reads { 4 } else { 0 });
    std::thread::sleep(Duration::from_millis(800));
    for (f, bytes) in &damaged {
        assert_eq!(&fs::read(f).expect("still there"), bytes, "{} was read and reported: not read-local", f.display());
    }
}

/// A node that does not hold the cluster secret is refused: it never
/// registers.
#[test]
fn a_node_with_a_wrong_secret_is_refused() {
    let c = TestCluster::builder().nodes(1).start();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let token = tokio_util::sync::CancellationToken::new();
    let master = c.master_addr.clone();
    let t = token.clone();
    let node = rt.spawn(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.9:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let cfg = stripefs_node::Config {
            data_dir: dir.path().to_path_buf(),
            advertise_addr: addr,
            master_addr: master,
            host: "intruder".into(),
            zone: "z".into(),
            secret: stripefs_proto::net::Secret::new(b"not-the-cluster-secret".to_vec(), "test").expect("secret"),
            heartbeat_interval: Duration::from_millis(100),
            reserve_bytes: 0,
            scrub_bytes_per_sec: 0,
            scrub_pause: Duration::from_secs(60),
            buffered_writes: false,
            write_memory_bytes: stripefs_node::DEFAULT_WRITE_MEMORY_BYTES,
            metrics_addr: None,
        };
        stripefs_node::run(cfg, listener, t).await
    });
    std::thread::sleep(Duration::from_secs(2));
    let nodes = rt.block_on(async {
        let client = c.master_client().await;
        client.nodes(tarpc_ctx()).await.expect("rpc").expect("nodes")
    });
    assert_eq!(nodes.len(), 1, "the intruder registered: {nodes:?}");
    assert!(nodes.iter().all(|n| n.host != "intruder"));
    token.cancel();
    let _ = rt.block_on(node);
}

/// Setting `user.stripefs.drop_cache` empties the client's block cache (the
/// bench relies on it for cold reads): a file the cache held is then read
/// from the nodes again, which here fails, the nodes being down.
#[test]
fn the_drop_cache_xattr_empties_the_block_cache() {
    let mut c = TestCluster::builder().nodes(2).start();
    let m = c.mount();
    let data = random_bytes(300_000);
    fs::write(m.join("f"), &data).expect("write");
    assert_eq!(fs::read(m.join("f")).expect("read"), data, "first read (fills the block cache)");
    c.stop_node(0);
    c.stop_node(1);
    // Without the kernel's pages of the file, this comes from the client's
    // block cache.
    drop_kernel_pages(&m.join("f"));
    assert_eq!(fs::read(m.join("f")).expect("read with the nodes down"), data);
    xattr_set(m.path(), "user.stripefs.drop_cache", b"1").expect("drop the block cache");
    drop_kernel_pages(&m.join("f"));
    let e = fs::read(m.join("f")).expect_err("no cache and no node: the read must fail");
    assert_eq!(errno(&e), libc::EIO);
    // The nodes come back on new ports: the client, which knew the old
    // addresses, must ask the master again rather than fail.
    c.start_node_again(0);
    c.start_node_again(1);
    c.wait_node_registered(0);
    c.wait_node_registered(1);
    assert_eq!(fs::read(m.join("f")).expect("read after the nodes are back"), data);
    // Nothing was stored: the name is not an xattr of the root.
    assert!(stripefs_tests::xattr_get(m.path(), "user.stripefs.drop_cache").is_err());
}

/// Local reads read replica files through descriptors the node hands over:
/// a client keeps them open while it reads, closes them on drop_cache, and
/// a replica deleted on the node (a rewritten chunk) stays readable
/// through a kept descriptor but is never read for the new version.
#[test]
fn local_reads_follow_versions_and_let_go_of_files() {
    let c = TestCluster::builder().nodes(2).chunk_size(256 * 1024).start();
    let m = c.mount();
    let first = random_bytes(600_000);
    fs::write(m.join("f"), &first).expect("write");
    xattr_set(m.path(), "user.stripefs.drop_cache", b"1").expect("drop caches");
    assert_eq!(sha256(&fs::read(m.join("f")).expect("read")), sha256(&first));
    let open = m.core().local.open_count();
    assert!((3..=6).contains(&open), "3 chunks read locally, from one replica each (or two after a retry): {open}");
    // Rewrite it: new versions, the old replicas are deleted on the nodes.
    let second = random_bytes(600_000);
    fs::write(m.join("f"), &second).expect("rewrite");
    assert_eq!(sha256(&fs::read(m.join("f")).expect("read")), sha256(&second), "read while old files are open");
    assert!(m.core().local.open_count() > open, "the new versions' files were opened beside the old");
    xattr_set(m.path(), "user.stripefs.drop_cache", b"1").expect("drop caches");
    assert_eq!(m.core().local.open_count(), 0, "drop_cache closes kept replica files");
    assert_eq!(sha256(&fs::read(m.join("f")).expect("read")), sha256(&second));
    // Another client (its own files) sees the same.
    let m2 = c.mount();
    assert_eq!(sha256(&fs::read(m2.join("f")).expect("read")), sha256(&second));
    assert!(m2.core().local.open_count() > 0);
}

/// Makes the kernel forget the cached pages of `path`.
fn drop_kernel_pages(path: &std::path::Path) {
    let f = fs::File::open(path).expect("open");
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).expect("fadvise");
}

/// A file nobody changed keeps its pages in the kernel from one open to
/// the next (KEEP_CACHE): read again, it comes from memory, here even with
/// every node down and the client's own cache empty. A file another client
/// changed (same size) is read anew at the next open (close-to-open).
#[test]
fn an_unchanged_file_is_read_again_from_the_kernels_pages() {
    let mut c = TestCluster::builder().nodes(2).start();
    let (reader, writer) = (c.mount(), c.mount());
    let data = random_bytes(300_000);
    fs::write(writer.join("f"), &data).expect("write");
    assert_eq!(fs::read(reader.join("f")).expect("first read"), data);
    c.stop_node(0);
    c.stop_node(1);
    xattr_set(reader.path(), "user.stripefs.drop_cache", b"1").expect("drop the block cache");
    assert_eq!(fs::read(reader.join("f")).expect("read again with every node down"), data);
    c.start_node_again(0);
    c.start_node_again(1);
    c.wait_node_registered(0);
    c.wait_node_registered(1);
    let changed = random_bytes(300_000);
    fs::write(writer.join("f"), &changed).expect("rewrite");
    assert_eq!(fs::read(reader.join("f")).expect("read after the change"), changed, "stale pages were kept");
}

/// Lookups of `op` the master served so far.
fn master_rpcs(c: &TestCluster, op: &str) -> f64 {
    let (_, text) = stripefs_tests::http_get(&c.master_metrics_addr(), "/metrics");
    stripefs_tests::metric(&text, &format!("stripefs_master_rpc_requests_total{{op=\"{op}\"}}"))
}

/// Runs `script` with `sh` in `dir`; panics with its output if it fails.
fn sh(dir: &std::path::Path, script: &str) {
    let out = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("run sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A shell filling a directory it alone uses (a spill directory) costs
/// no master round trip for the kernel's lookups of each new name; with
/// `dir_leases=off` every one of them goes to the master. Another mount's
/// create there is seen at once all the same.
#[test]
fn a_directory_one_mount_fills_needs_no_lookup_round_trips_unless_dir_leases_are_off() {
    let c = TestCluster::builder().start();
    let metrics = stripefs_tests::free_addr();
    let on = c.mount_with(MountOptions { metrics: Some(metrics.clone()), ..Default::default() });
    let off = c.mount_with(MountOptions { dir_leases: false, ..Default::default() });
    let fill = |root: &std::path::Path, dir: &str| {
        fs::create_dir(root.join(dir)).expect("mkdir");
        let before = master_rpcs(&c, "lookup");
        sh(&root.join(dir), "for i in $(seq 200); do : > f$i; done; mkdir d1 d2 d3; mv f1 g1");
        master_rpcs(&c, "lookup") - before
    };
    let asked_on = fill(on.path(), "spill-on");
    let asked_off = fill(off.path(), "spill-off");
    let (_, text) = stripefs_tests::http_get(&metrics, "/metrics");
    let answered = stripefs_tests::metric(&text, "stripefs_mount_lease_lookups_total");
    assert!(asked_on <= 10.0, "{asked_on} lookups reached the master with leases ({answered} answered by one)");
    assert!(answered >= 195.0, "{answered} lookups answered by the lease");
    assert_eq!(stripefs_tests::metric(&text, "stripefs_mount_dir_leases"), 1.0, "{text}");
    assert!(asked_off >= 204.0, "without leases every new name is looked up at the master: {asked_off}");
    // The other mount's create in the leased directory is seen at once.
    fs::write(off.join("spill-on/theirs"), b"x").expect("create from the other mount");
    assert_eq!(fs::read(on.join("spill-on/theirs")).expect("seen at once"), b"x");
    sh(&on.join("spill-on"), "test -e theirs && test -e g1 && ! test -e f1 && test -d d3");
}
