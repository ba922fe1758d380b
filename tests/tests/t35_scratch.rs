//! The scratch class: files of a scratch directory keep their data as one
//! plain file on the node of the host that created them; that host's
//! kernel reads and writes it through FUSE passthrough, other hosts
//! through the node. Two "hosts" are two mounts with the host names of
//! two nodes.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stripefs_client::MountOptions;
use stripefs_proto::ops::{Request, SetClass};
use stripefs_proto::types::DataClass;
use stripefs_proto::InodeId;
use stripefs_tests::{free_addr, http_get, random_bytes, sha256, tarpc_ctx, xattr_get, TestCluster};
use stripefs_tests::{fsck, fsck_problems, wait_fsck_clean};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Makes directory `dir` (on a mount of `c`) a scratch directory.
fn make_scratch(c: &TestCluster, dir: &Path, remove_lost: bool) {
    fs::create_dir(dir).expect("mkdir");
    let ino = InodeId(fs::metadata(dir).expect("stat").ino());
    let attr = rt().block_on(async {
        let m = c.master_client().await;
        let op = SetClass { ino, class: DataClass::Scratch { remove_lost } };
        m.set_class(tarpc_ctx(), Request::single(op)).await.expect("rpc").expect("set_class").value
    });
    assert!(attr.class.is_scratch());
}

/// The plain file of scratch inode `ino` in node directory `node_dir`.
fn plain_file(node_dir: &Path, ino: u64) -> PathBuf {
    node_dir.join("scratch").join(format!("{ino:016x}"))
}

/// Kernel READ and WRITE requests the mount at `metrics` has served.
fn data_requests(metrics: &str) -> f64 {
    let (status, body) = http_get(metrics, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("stripefs_mount_fuse_requests_total{"))
        .filter(|l| l.contains("op=\"read\"") || l.contains("op=\"write\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Kernel GETXATTR requests the mount at `metrics` has served.
fn getxattr_requests(metrics: &str) -> f64 {
    let (_, body) = http_get(metrics, "/metrics");
    body.lines()
        .filter(|l| l.starts_with("stripefs_mount_fuse_requests_total{") && l.contains("op=\"getxattr\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scratch_xattr(p: &Path) -> String {
    String::from_utf8(xattr_get(p, "user.stripefs.scratch").expect("user.stripefs.scratch")).expect("utf-8")
}

/// Waits (up to 10 s) until `path` is gone.
fn wait_gone(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() {
        assert!(Instant::now() < deadline, "{} still there after 10 s", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// On the creating host the kernel serves the file from its plain file:
/// the mount sees no READ or WRITE request while the data is right; the
/// other host reads and writes it through the node, close-to-open; an
/// unlink removes the plain file.
#[test]
fn the_creating_host_uses_passthrough_and_another_host_the_node() {
    let c = TestCluster::builder().nodes(2).start();
    let metrics = free_addr();
    let a = c.mount_with(MountOptions {
        host: Some(TestCluster::node_host(0)),
        metrics: Some(metrics.clone()),
        ..Default::default()
    });
    make_scratch(&c, &a.join("spill"), false);
    // Over two of a remote reader's 4 MiB read-ahead windows.
    let data = random_bytes(10_000_000);

    let before = data_requests(&metrics);
    let mut f =
        fs::OpenOptions::new().create(true).write(true).truncate(true).open(a.join("spill/obj")).expect("create");
    f.write_all(&data[..100]).expect("header");
    f.write_all(&data[100..]).expect("object");
    assert!(
        scratch_xattr(&a.join("spill/obj")).contains("access=passthrough"),
        "{}",
        scratch_xattr(&a.join("spill/obj"))
    );
    // Written through the kernel: the size shows while the file is open.
    assert_eq!(fs::metadata(a.join("spill/obj")).expect("stat").len(), data.len() as u64);
    drop(f);
    let mut r = fs::File::open(a.join("spill/obj")).expect("open");
    let mut back = vec![0u8; 1000];
    r.seek(SeekFrom::Start(2_000_000)).expect("seek");
    r.read_exact(&mut back).expect("read the object back");
    assert_eq!(back, data[2_000_000..2_001_000]);
    drop(r);
    assert_eq!(sha256(&fs::read(a.join("spill/obj")).expect("read")), sha256(&data));
    assert_eq!(data_requests(&metrics), before, "the mount served READ or WRITE requests of a passthrough file");

    // Nor is the mount asked for security.capability before each write
    // (HANDLE_KILLPRIV_V2): a hundred writes, at most the first asks.
    let before = getxattr_requests(&metrics);
    let mut f = fs::File::create(a.join("spill/many")).expect("create");
    for _ in 0..100 {
        f.write_all(&data[..4096]).expect("write");
    }
    drop(f);
    assert!(getxattr_requests(&metrics) - before <= 1.0, "{} GETXATTRs", getxattr_requests(&metrics) - before);

    let ino = fs::metadata(a.join("spill/obj")).expect("stat").ino();
    let plain = plain_file(&c.node_dir(0), ino);
    assert_eq!(sha256(&fs::read(&plain).expect("the plain file on node 0")), sha256(&data));
    assert!(!plain_file(&c.node_dir(1), ino).exists());
    let master_attr = rt().block_on(async {
        c.master_client().await.getattr(tarpc_ctx(), InodeId(ino)).await.expect("rpc").expect("getattr")
    });
    assert_eq!(master_attr.size, data.len() as u64, "the size reached the master at close");
    assert!(master_attr.home.is_some());

    // Another host: reads through node 0 (on, and here and there), and
    // writes there too.
    let b = c.mount_with(MountOptions { host: Some(TestCluster::node_host(1)), ..Default::default() });
    assert_eq!(sha256(&fs::read(b.join("spill/obj")).expect("read on b")), sha256(&data));
    let r = fs::File::open(b.join("spill/obj")).expect("open on b");
    for at in [9_000_000u64, 17, 4_194_300, 8_388_000, 1_000_000, 9_999_000] {
        let mut got = vec![0u8; 1000];
        let n = std::os::unix::fs::FileExt::read_at(&r, &mut got, at).expect("read_at on b");
        assert_eq!(&got[..n], &data[at as usize..(at as usize + 1000).min(data.len())], "at {at}");
    }
    drop(r);
    let mut w = fs::OpenOptions::new().write(true).open(b.join("spill/obj")).expect("open on b");
    assert!(scratch_xattr(&b.join("spill/obj")).contains("access=remote"), "{}", scratch_xattr(&b.join("spill/obj")));
    w.seek(SeekFrom::End(0)).expect("seek");
    w.write_all(b"appended on b").expect("append on b");
    drop(w);
    let mut want = data.clone();
    want.extend_from_slice(b"appended on b");
    assert_eq!(sha256(&fs::read(a.join("spill/obj")).expect("read on a after b's close")), sha256(&want));
    assert_eq!(fs::metadata(b.join("spill/obj")).expect("stat on b").len(), want.len() as u64);

    // O_TRUNC on the creating host cuts the plain file.
    fs::write(a.join("spill/obj"), b"short").expect("rewrite");
    assert_eq!(fs::read(&plain).expect("plain"), b"short");
    assert_eq!(fs::read(b.join("spill/obj")).expect("read on b"), b"short");

    fs::remove_file(b.join("spill/obj")).expect("unlink");
    wait_gone(&plain);
}

/// With passthrough off, the creating host reads and writes the plain file
/// itself (the mount serves the requests), and says why.
#[test]
fn without_passthrough_the_mount_serves_the_plain_file() {
    let c = TestCluster::builder().nodes(1).start();
    let metrics = free_addr();
    let a = c.mount_with(MountOptions {
        host: Some(TestCluster::node_host(0)),
        metrics: Some(metrics.clone()),
        passthrough: false,
        ..Default::default()
    });
    make_scratch(&c, &a.join("spill"), false);
    let data = random_bytes(1_000_000);
    let before = data_requests(&metrics);
    let mut f = fs::File::create(a.join("spill/f")).expect("create");
    f.write_all(&data).expect("write");
    let x = scratch_xattr(&a.join("spill/f"));
    assert!(x.contains("access=local") && x.contains("passthrough=off"), "{x}");
    drop(f);
    assert_eq!(sha256(&fs::read(a.join("spill/f")).expect("read")), sha256(&data));
    assert!(data_requests(&metrics) > before, "no READ or WRITE request reached the mount");
    let ino = fs::metadata(a.join("spill/f")).expect("stat").ino();
    assert_eq!(sha256(&fs::read(plain_file(&c.node_dir(0), ino)).expect("plain file")), sha256(&data));
}

/// A host without a node: its files of a scratch directory keep the
/// replicated layout (and say so); subdirectories inherit the class.
#[test]
fn a_host_without_a_node_gets_the_replicated_layout() {
    let c = TestCluster::builder().nodes(2).start();
    let m = c.mount_with(MountOptions { host: Some("no-node-here".into()), ..Default::default() });
    make_scratch(&c, &m.join("spill"), true);
    fs::create_dir(m.join("spill/sub")).expect("mkdir");
    let data = random_bytes(500_000);
    fs::write(m.join("spill/sub/f"), &data).expect("write");
    assert_eq!(sha256(&fs::read(m.join("spill/sub/f")).expect("read")), sha256(&data));
    let x = scratch_xattr(&m.join("spill/sub/f"));
    assert!(x.contains("home=none"), "{x}");
    let pol =
        String::from_utf8(xattr_get(&m.join("spill/sub"), "user.stripefs.policy").expect("policy")).expect("utf-8");
    assert!(pol.contains("class=scratch(remove-lost)"), "{pol}");
    let ino = fs::metadata(m.join("spill/sub/f")).expect("stat").ino();
    let chunks = rt().block_on(async {
        c.master_client().await.chunks(tarpc_ctx(), InodeId(ino), 0, 10).await.expect("rpc").expect("chunks")
    });
    assert_eq!(chunks.len(), 1, "the data is in replicated chunks");
    for i in 0..2 {
        assert!(!plain_file(&c.node_dir(i), ino).exists());
    }
}

/// A scratch file whose node is down: a read on another host fails with
/// EIO (the data lives on that node only); other files are not affected.
#[test]
fn a_scratch_file_whose_node_is_down_reads_as_an_io_error() {
    let mut c = TestCluster::builder().nodes(2).start();
    let a = c.mount_with(MountOptions { host: Some(TestCluster::node_host(0)), ..Default::default() });
    make_scratch(&c, &a.join("spill"), false);
    fs::write(a.join("spill/f"), random_bytes(100_000)).expect("write");
    fs::write(a.join("kept"), b"replicated").expect("write");
    drop(a);
    c.stop_node(0);
    let b = c.mount_with(MountOptions { host: Some(TestCluster::node_host(1)), ..Default::default() });
    let err = fs::read(b.join("spill/f")).expect_err("node 0 holds the only copy");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fs::read(b.join("kept")).expect("a replicated file"), b"replicated");
}

/// `stripefs fsck` counts scratch files, lists one whose node is down as
/// lost (exit code 4: not repairable) and nothing else; garbage collection
/// removes a plain file no inode has (a deletion order lost with its
/// master, say) and keeps the live ones.
#[test]
fn fsck_lists_a_lost_scratch_file_and_gc_removes_stray_plain_files() {
    let mut c = TestCluster::builder().nodes(2).gc_grace(Duration::ZERO).start();
    let a = c.mount_with(MountOptions { host: Some(TestCluster::node_host(0)), ..Default::default() });
    make_scratch(&c, &a.join("spill"), false);
    let data = random_bytes(200_000);
    fs::write(a.join("spill/f"), &data).expect("write");
    fs::write(a.join("kept"), b"replicated").expect("write");
    let ino = fs::metadata(a.join("spill/f")).expect("stat").ino();
    let plain = plain_file(&c.node_dir(0), ino);
    let stray = plain_file(&c.node_dir(0), 999_999);
    fs::write(&stray, b"stray").expect("a stray plain file");
    // A node reports its inventory when it registers.
    c.restart_node(0);
    wait_gone(&stray);
    assert_eq!(sha256(&fs::read(&plain).expect("the live plain file stays")), sha256(&data));
    wait_fsck_clean(a.path(), Duration::from_secs(30));
    let (_, v) = fsck("clean", &[a.path().as_os_str()]);
    assert_eq!(v["counts"]["scratch_files"], 1, "{v:#}");

    c.stop_node(0);
    c.wait_dead(1);
    let (code, v) = fsck("node 0 down", &[a.path().as_os_str()]);
    // Besides, "kept" may be under-replicated until its chunk is copied.
    let (lost, others): (Vec<_>, Vec<_>) = fsck_problems(&v).iter().partition(|p| p["kind"] == "lost_scratch_file");
    assert_eq!(lost.len(), 1, "{v:#}");
    assert_eq!((&lost[0]["ino"], &lost[0]["outcome"]), (&ino.into(), &"found".into()), "{v:#}");
    assert!(others.iter().all(|p| p["kind"] == "under_replicated"), "{v:#}");
    assert_eq!(code, 4, "{v:#}");
    assert_eq!(fs::read(a.join("kept")).expect("the replicated file is not affected"), b"replicated");
}

/// Once a home node has been silent past the master's limit, the scratch
/// files it held in a directory of class scratch with `remove_lost` are
/// removed (every name); those of a plain scratch directory stay.
#[test]
fn lost_scratch_files_are_removed_when_their_class_says_so() {
    let mut c = TestCluster::builder()
        .nodes(2)
        .node_dead_after(Duration::from_secs(1))
        .scratch_lost_after(Duration::from_secs(2))
        .start();
    let a = c.mount_with(MountOptions { host: Some(TestCluster::node_host(0)), ..Default::default() });
    make_scratch(&c, &a.join("reap"), true);
    make_scratch(&c, &a.join("keep"), false);
    fs::write(a.join("reap/f"), b"lost with node 0").expect("write");
    fs::hard_link(a.join("reap/f"), a.join("reap/f2")).expect("link");
    fs::write(a.join("keep/g"), b"lost with node 0 too").expect("write");
    drop(a);
    let b = c.mount_with(MountOptions { host: Some(TestCluster::node_host(1)), ..Default::default() });
    fs::write(b.join("reap/on-b"), b"home: node 1").expect("write on b");
    c.stop_node(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.join("reap/f").exists() || b.join("reap/f2").exists() {
        assert!(Instant::now() < deadline, "lost scratch files still there after 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(b.join("keep/g").exists(), "a class without remove_lost keeps its lost files");
    assert_eq!(fs::read(b.join("reap/on-b")).expect("a file of a live node"), b"home: node 1");
}

/// A file kept open on its home host: another host sees what it wrote
/// within the size-report period without a close, and at once after its
/// fsync (close-to-open for a new open of the other host).
#[test]
fn a_file_open_on_two_hosts() {
    let c = TestCluster::builder().nodes(2).start();
    let opts = |i| MountOptions {
        host: Some(TestCluster::node_host(i)),
        attr_ttl: Duration::ZERO,
        entry_ttl: Duration::ZERO,
        ..Default::default()
    };
    let a = c.mount_with(opts(0));
    let b = c.mount_with(opts(1));
    make_scratch(&c, &a.join("spill"), false);
    let data = random_bytes(1_000_000);
    let mut w = fs::File::create(a.join("spill/log")).expect("create on a");
    w.write_all(&data[..600_000]).expect("write on a");
    let deadline = Instant::now() + stripefs_client::scratch::SIZE_REPORT_EVERY * 3;
    loop {
        let seen = fs::read(b.join("spill/log")).expect("read on b");
        if seen.len() == 600_000 {
            assert_eq!(seen, data[..600_000], "b reads what a wrote, a still writing");
            break;
        }
        assert!(Instant::now() < deadline, "b still sees {} bytes, a wrote 600000 and keeps the file open", seen.len());
        std::thread::sleep(Duration::from_millis(200));
    }
    w.write_all(&data[600_000..]).expect("write on a");
    w.sync_all().expect("fsync on a");
    assert_eq!(fs::read(b.join("spill/log")).expect("read on b"), data, "after a's fsync");
    drop(w);
}

/// A scratch file closed after a write is sealed by its node (crc32 of
/// each 64 KiB block); a remote reader then checks what it reads: damage
/// on the node's disk reads as EIO there, not as wrong bytes, and the
/// node's scrubber finds it.
#[test]
fn a_remote_reader_checks_a_sealed_file() {
    let c = TestCluster::builder().nodes(2).scrub_bytes_per_sec(100 << 20).start();
    let a = c.mount_with(MountOptions { host: Some(TestCluster::node_host(0)), ..Default::default() });
    make_scratch(&c, &a.join("spill"), false);
    let data = random_bytes(300_000);
    fs::write(a.join("spill/f"), &data).expect("write");
    let ino = fs::metadata(a.join("spill/f")).expect("stat").ino();
    let plain = plain_file(&c.node_dir(0), ino);
    let seal = plain.with_extension("crc");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seal.exists() {
        assert!(Instant::now() < deadline, "no seal after 15 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let b = c.mount_with(MountOptions { host: Some(TestCluster::node_host(1)), ..Default::default() });
    assert_eq!(sha256(&fs::read(b.join("spill/f")).expect("read on b")), sha256(&data));
    drop(b);
    // A bit flips on the node's disk; size and mtime stay.
    let mtime = fs::metadata(&plain).expect("stat").modified().expect("mtime");
    let f = fs::OpenOptions::new().write(true).open(&plain).expect("open the plain file");
    let byte = [data[200_000] ^ 1];
    std::os::unix::fs::FileExt::write_all_at(&f, &byte, 200_000).expect("damage");
    f.set_modified(mtime).expect("mtime back");
    drop(f);
    let b = c.mount_with(MountOptions { host: Some(TestCluster::node_host(1)), ..Default::default() });
    let err = fs::read(b.join("spill/f")).expect_err("a damaged block must not be served");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(&c.node_metrics_addr(0), "/metrics");
        let errors: f64 = body
            .lines()
            .filter(|l| l.starts_with("stripefs_node_checksum_errors_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if errors >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the scrubber did not find the damage in 20 s:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // fsck lists it (the reader and the scrubber reported it; their
    // heartbeat is 200 ms) until the file is written again.
    std::thread::sleep(Duration::from_secs(1));
    let (code, v) = fsck("a damaged scratch file", &[a.path().as_os_str()]);
    let problems = fsck_problems(&v);
    assert_eq!(problems.len(), 1, "{v:#}");
    assert_eq!((&problems[0]["kind"], &problems[0]["ino"]), (&"corrupt_scratch_file".into(), &ino.into()), "{v:#}");
    assert_eq!(code, 4, "{v:#}");
    fs::write(a.join("spill/f"), &data).expect("write the file again");
    wait_fsck_clean(a.path(), Duration::from_secs(10));
    assert_eq!(sha256(&fs::read(b.join("spill/f")).expect("read on b")), sha256(&data));
}
