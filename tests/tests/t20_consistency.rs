//! Consistency: close-to-open between two mounts of one cluster, a seeded
//! differential test against a local file, and data surviving restarts of
//! the master and of the storage nodes.
//!
//! Kernel caches: a mount caches attributes and names for `attr_timeout` /
//! `entry_timeout` (1 s by default). Most two-mount tests use 0 for both,
//! because a name cached by mount B hides A's create, rename or unlink from
//! B for that long (allowed: names are not covered by close-to-open). File
//! contents and sizes must follow close-to-open even with the default
//! caches: `close_to_open_with_default_ttls_after_b_cached_the_size`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};
use stripefs_client::MountOptions;
use stripefs_tests::{errno, forget_kernel_names, random_bytes, sha256, TestCluster, TestMount};

const CHUNK: u64 = 64 * 1024;

fn no_kernel_cache() -> MountOptions {
    MountOptions { attr_ttl: Duration::ZERO, entry_ttl: Duration::ZERO, ..Default::default() }
}

fn must_read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Panics with the first differing offset when `got` and `want` differ.
fn must_equal(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: contents differ: got {} bytes, want {} bytes, first difference at offset {first} (chunk {})",
        got.len(),
        want.len(),
        first as u64 / CHUNK
    );
}

#[test]
fn close_to_open_between_two_mounts() {
    let c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    let a = c.mount_with(no_kernel_cache());
    let b = c.mount_with(no_kernel_cache());

    // Write and close on A; open and read on B.
    let mut data = random_bytes(300_000);
    {
        let mut f = File::create(a.join("f")).expect("create on A");
        f.write_all(&data).expect("write on A");
    }
    must_equal(&must_read(&b.join("f")), &data, "B after A's first write");

    // Overwrite across a chunk boundary on A; B sees the new bytes.
    let patch = random_bytes(10_000);
    {
        let f = OpenOptions::new().write(true).open(a.join("f")).expect("open on A");
        f.write_at(&patch, 2 * CHUNK - 5_000).expect("overwrite on A");
    }
    let at = (2 * CHUNK - 5_000) as usize;
    data[at..at + patch.len()].copy_from_slice(&patch);
    must_equal(&must_read(&b.join("f")), &data, "B after A's overwrite");

    // Append on A (grows the file into a new chunk); B sees all of it.
    let tail = random_bytes(100_000);
    OpenOptions::new().append(true).open(a.join("f")).expect("open append").write_all(&tail).expect("append");
    data.extend_from_slice(&tail);
    must_equal(&must_read(&b.join("f")), &data, "B after A's append");

    // Truncate on A; B sees the shorter file.
    OpenOptions::new().write(true).open(a.join("f")).expect("open").set_len(70_000).expect("truncate on A");
    data.truncate(70_000);
    must_equal(&must_read(&b.join("f")), &data, "B after A's truncate");

    // O_TRUNC and rewrite with other content of the same length.
    let same_len = random_bytes(data.len());
    fs::write(a.join("f"), &same_len).expect("rewrite on A");
    must_equal(&must_read(&b.join("f")), &same_len, "B after A's rewrite with O_TRUNC");

    // And the other way round: B writes, A reads.
    let from_b = random_bytes(200_000);
    fs::write(b.join("g"), &from_b).expect("write on B");
    must_equal(&must_read(&a.join("g")), &from_b, "A after B's write");

    // Names: a new file, a rename and an unlink on A show on B.
    fs::write(a.join("new"), b"fresh").expect("create on A");
    let names: Vec<String> = fs::read_dir(b.path())
        .expect("readdir on B")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"new".to_string()), "B's listing {names:?} lacks A's new file");
    fs::rename(a.join("new"), a.join("renamed")).expect("rename on A");
    assert_eq!(must_read(&b.join("renamed")), b"fresh");
    let e = File::open(b.join("new")).expect_err("old name gone on B");
    assert_eq!(errno(&e), libc::ENOENT);
    fs::remove_file(a.join("renamed")).expect("unlink on A");
    let e = File::open(b.join("renamed")).expect_err("unlinked on A");
    assert_eq!(errno(&e), libc::ENOENT);
}

/// Mount B reads a file (so its kernel caches the size), A changes the file
/// and closes it, B opens it again at once, with the default 1 s attribute
/// cache. Close-to-open requires B's new open to see A's bytes and A's
/// length: the open must drop both B's cached pages and B's cached size.
#[test]
fn close_to_open_with_default_ttls_after_b_cached_the_size() {
    let c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    let a = c.mount();
    let b = c.mount();
    let first = random_bytes(100_000);
    fs::write(a.join("f"), &first).expect("write on A");
    must_equal(&must_read(&b.join("f")), &first, "B's first read");

    // Same size, new bytes: only B's page cache could hide these.
    let other = random_bytes(first.len());
    assert_eq!(fs::metadata(b.join("f")).expect("stat on B").len(), 100_000);
    fs::write(a.join("f"), &other).expect("overwrite on A");
    must_equal(&must_read(&b.join("f")), &other, "B's open right after A rewrote the file (default TTLs)");

    // Grow while B's kernel holds size 100,000 in its attribute cache.
    let mut grown = other.clone();
    grown.extend_from_slice(&random_bytes(150_000));
    assert_eq!(fs::metadata(b.join("f")).expect("stat on B").len(), 100_000);
    let t = Instant::now();
    fs::write(a.join("f"), &grown).expect("grow on A");
    let back = must_read(&b.join("f"));
    eprintln!("B re-read {} bytes {:?} after A's close", back.len(), t.elapsed());
    must_equal(&back, &grown, "B's open right after A grew the file (default TTLs)");

    // Shrink: B must not read past the new end either.
    assert_eq!(fs::metadata(b.join("f")).expect("stat on B").len(), grown.len() as u64);
    fs::write(a.join("f"), &first[..10_000]).expect("shrink on A");
    must_equal(&must_read(&b.join("f")), &first[..10_000], "B's open right after A shrank the file (default TTLs)");
}

/// Close-to-open is about each new open: B holding an older descriptor of
/// the file must not make B's next open return stale data.
#[test]
fn new_open_on_b_sees_new_data_while_b_holds_an_older_descriptor() {
    let c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    let a = c.mount_with(no_kernel_cache());
    let b = c.mount_with(no_kernel_cache());
    let v1 = random_bytes(200_000);
    fs::write(a.join("f"), &v1).expect("write v1 on A");
    let held = File::open(b.join("f")).expect("open on B");
    let mut buf = vec![0u8; v1.len()];
    held.read_exact_at(&mut buf, 0).expect("read v1 on B");
    must_equal(&buf, &v1, "B's first read");

    let v2 = random_bytes(260_000);
    fs::write(a.join("f"), &v2).expect("write v2 on A");
    must_equal(&must_read(&b.join("f")), &v2, "a new open on B while B holds an older descriptor");
    drop(held);
}

// ---------------------------------------------------------------------------
// Differential test: the same random operations on the mount and on a local
// file must leave the same bytes.

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: usize },
    SetLen(u64),
    Read { off: u64, len: usize },
    Append { len: usize },
    Reopen,
    Sync,
}

fn pick_op(rng: &mut StdRng, size: u64, fsync: bool) -> Op {
    let max = 6 * CHUNK;
    match rng.random_range(0..100) {
        0..=34 => {
            // Writes: small, medium, big, and straddling a chunk boundary.
            let (off, len) = match rng.random_range(0..4) {
                0 => (rng.random_range(0..max), rng.random_range(1..200)),
                1 => (rng.random_range(0..max), rng.random_range(1..20_000)),
                2 => (rng.random_range(0..max), rng.random_range(1..3 * CHUNK as usize)),
                _ => {
                    let boundary = rng.random_range(1..7) * CHUNK;
                    (boundary - rng.random_range(1..2_000), rng.random_range(2..6_000))
                }
            };
            Op::Write { off, len }
        }
        35..=44 => Op::SetLen(match rng.random_range(0..5) {
            0 => 0,
            1 => rng.random_range(0..7) * CHUNK,
            2 => size.saturating_sub(rng.random_range(0..5_000)),
            3 => size + rng.random_range(0..CHUNK * 2),
            _ => rng.random_range(0..max + CHUNK),
        }),
        45..=69 => Op::Read { off: rng.random_range(0..size + 2_000), len: rng.random_range(1..3 * CHUNK as usize) },
        70..=79 => Op::Append { len: rng.random_range(1..50_000) },
        80..=91 => Op::Reopen,
        _ if fsync => Op::Sync,
        _ => Op::Reopen,
    }
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(p).expect("open read-write")
}

fn read_full_at(f: &File, off: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let mut n = 0;
    while n < len {
        let r = f.read_at(&mut buf[n..], off + n as u64).expect("read_at");
        if r == 0 {
            break;
        }
        n += r;
    }
    buf.truncate(n);
    buf
}

fn differential(opts: MountOptions, steps: usize, fsync: bool) {
    let seed: u64 = match std::env::var("STRIPEFS_SEED") {
        Ok(s) => s.parse().expect("STRIPEFS_SEED is a u64"),
        Err(_) => rand::rng().random(),
    };
    eprintln!("differential test seed {seed} (rerun with STRIPEFS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    let m = c.mount_with(opts);
    let local_dir = stripefs_tests::temp_dir("stripefs-local-");
    let (mp, lp) = (m.join("diff"), local_dir.path().join("diff"));
    let (mut mf, mut lf) = (open_rw(&mp), open_rw(&lp));
    let mut log: Vec<String> = Vec::new();
    let start = Instant::now();
    let check = |log: &[String], what: &str| {
        let (got, want) = (must_read(&mp), must_read(&lp));
        if got != want {
            let recent = &log[log.len().saturating_sub(25)..];
            eprintln!("seed {seed}; last operations:\n{}", recent.join("\n"));
            must_equal(&got, &want, &format!("seed {seed}, {what}"));
        }
    };
    for step in 0..steps {
        let size = lf.metadata().expect("local fstat").len();
        let op = pick_op(&mut rng, size, fsync);
        log.push(format!("{step}: {op:?} (size {size})"));
        if let Op::Reopen = op {
            // A real close (the last descriptor) and a fresh open.
            drop(mf);
            drop(lf);
            mf = open_rw(&mp);
            lf = open_rw(&lp);
        }
        let result: std::io::Result<()> = (|| {
            match &op {
                Op::Write { off, len } => {
                    let data: Vec<u8> = (0..*len).map(|_| rng.random()).collect();
                    lf.write_all_at(&data, *off)?;
                    mf.write_all_at(&data, *off)?;
                }
                Op::SetLen(n) => {
                    lf.set_len(*n)?;
                    mf.set_len(*n)?;
                }
                Op::Read { off, len } => {
                    let (got, want) = (read_full_at(&mf, *off, *len), read_full_at(&lf, *off, *len));
                    if got != want {
                        eprintln!("seed {seed}; last operations:\n{}", log[log.len().saturating_sub(25)..].join("\n"));
                        must_equal(&got, &want, &format!("seed {seed}, step {step}: {op:?}"));
                    }
                }
                Op::Append { len } => {
                    let data: Vec<u8> = (0..*len).map(|_| rng.random()).collect();
                    OpenOptions::new().append(true).open(&lp)?.write_all(&data)?;
                    OpenOptions::new().append(true).open(&mp)?.write_all(&data)?;
                }
                Op::Reopen => {}
                Op::Sync => mf.sync_all()?,
            }
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("seed {seed}; last operations:\n{}", log[log.len().saturating_sub(25)..].join("\n"));
            panic!("seed {seed}, step {step}: {op:?} failed on the mount: {e}");
        }
        let (msize, lsize) =
            (mf.metadata().expect("fstat on the mount").len(), lf.metadata().expect("local fstat").len());
        assert_eq!(msize, lsize, "seed {seed}, step {step} ({op:?}): size on the mount vs local");
        if step % 10 == 9 {
            check(&log, &format!("full compare after step {step}"));
        }
    }
    // Through a descriptor's position too.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    mf.seek(SeekFrom::Start(0)).expect("seek");
    mf.read_to_end(&mut a).expect("read_to_end on the mount");
    lf.seek(SeekFrom::Start(0)).expect("seek");
    lf.read_to_end(&mut b).expect("local read_to_end");
    must_equal(&a, &b, &format!("seed {seed}, sequential read at the end"));
    drop(mf);
    drop(lf);
    check(&log, "full compare after the last close");
    // Another mount sees the same bytes after close.
    let other = c.mount_with(no_kernel_cache());
    must_equal(&must_read(&other.join("diff")), &must_read(&lp), &format!("seed {seed}, a second mount at the end"));
    eprintln!("{steps} operations in {:?}", start.elapsed());
}

#[test]
fn differential_random_ops_match_a_local_file() {
    differential(MountOptions::default(), 300, false);
}

/// The same with a 1 MiB write buffer, so uploads happen in the middle of
/// sequences of writes, and a tiny block cache.
#[test]
fn differential_random_ops_with_a_small_write_buffer() {
    differential(MountOptions { dirty_mb: 1, cache_mb: 1, ..Default::default() }, 300, false);
}

/// The same with fsync(2) among the operations.
#[test]
fn differential_random_ops_with_fsync() {
    differential(MountOptions::default(), 300, true);
}

/// fsync(2) after a chunk uploaded earlier through the same descriptor was
/// replaced (overwritten, or cut off by a truncate) must succeed: the old
/// version is gone from the nodes and has nothing left to sync.
#[test]
fn fsync_after_uploaded_chunks_were_replaced_or_truncated() {
    let c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    let m = c.mount();
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.join("f")).expect("open");
    // Three full chunks: uploaded (without sync) as each one fills.
    f.write_all_at(&random_bytes(3 * CHUNK as usize), 0).expect("write");
    f.set_len(0).expect("truncate to 0");
    // Wait until the nodes have deleted the truncated replicas.
    c.wait_replica_files(0);
    f.sync_all().expect("fsync after the uploaded chunks were truncated away");

    let g = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.join("g")).expect("open");
    let v2 = random_bytes(2 * CHUNK as usize);
    g.write_all_at(&random_bytes(2 * CHUNK as usize), 0).expect("write v1");
    g.write_all_at(&v2, 0).expect("write v2 over v1");
    // 2 chunks × 2 replicas of the new versions, none of the old.
    c.wait_replica_files(4);
    g.sync_all().expect("fsync after the uploaded chunks were overwritten");
    drop(g);
    must_equal(&must_read(&m.join("g")), &v2, "g after fsync");
}

// ---------------------------------------------------------------------------
// Restarts.

/// Writes a small tree of files; returns (relative path, sha256, size).
fn write_tree(m: &TestMount) -> Vec<(String, String, u64)> {
    fs::create_dir_all(m.join("d/e")).expect("mkdir");
    let mut files = Vec::new();
    for (name, len) in [("empty", 0usize), ("small", 100), ("d/chunk", CHUNK as usize), ("d/e/big", 1_000_003)] {
        let data = random_bytes(len);
        fs::write(m.join(name), &data).expect("write");
        files.push((name.to_string(), sha256(&data), len as u64));
    }
    // A sparse one, with a hole chunk in the middle.
    let f = File::create(m.join("sparse")).expect("create");
    f.write_all_at(b"tail", 5 * CHUNK).expect("write far");
    drop(f);
    let mut sparse = vec![0u8; 5 * CHUNK as usize];
    sparse.extend_from_slice(b"tail");
    files.push(("sparse".into(), sha256(&sparse), sparse.len() as u64));
    std::os::unix::fs::symlink("d/e/big", m.join("link")).expect("symlink");
    files
}

fn must_match_tree(m: &TestMount, files: &[(String, String, u64)], what: &str) {
    for (name, sum, len) in files {
        let data = must_read(&m.join(name));
        assert_eq!(data.len() as u64, *len, "{what}: size of {name}");
        assert_eq!(&sha256(&data), sum, "{what}: sha256 of {name}");
    }
    assert_eq!(fs::read_link(m.join("link")).expect("readlink"), Path::new("d/e/big"), "{what}");
}

#[test]
fn data_survives_a_master_restart() {
    let mut c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    let files = {
        let m = c.mount();
        write_tree(&m)
    };
    let old = c.mount_with(no_kernel_cache());
    let ino = fs::metadata(old.join("d/e/big")).expect("stat").ino();
    let t = Instant::now();
    c.restart_master();
    c.wait_nodes_up(3);
    eprintln!("master restarted and nodes back in {:?}", t.elapsed());
    assert!(c.master_running(), "master stopped after restart");
    let m = c.mount();
    must_match_tree(&m, &files, "new mount after a master restart");
    assert_eq!(fs::metadata(m.join("d/e/big")).expect("stat").ino(), ino, "inode numbers are kept");
    // The mount made before the restart reconnects and keeps working.
    must_match_tree(&old, &files, "mount made before the master restart");
    let after = random_bytes(150_000);
    fs::write(old.join("after"), &after).expect("write through the old mount after the restart");
    must_equal(&must_read(&m.join("after")), &after, "file written after the restart");
    // Two restarts in a row lose nothing either.
    drop(m);
    c.restart_master();
    c.restart_master();
    c.wait_nodes_up(3);
    let m = c.mount();
    must_match_tree(&m, &files, "after two more master restarts");
    must_equal(&must_read(&m.join("after")), &after, "file written between restarts");
}

/// A master stopped through its cancellation token must have closed its
/// database when `stripefs_master::run` returns, so that a new master (in
/// the same process: tests, embedding) can open it at once.
#[test]
fn master_restart_in_process_reopens_the_database() {
    let mut c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    // A mount stays connected (with a file open) across the restarts, as in real use.
    let m = c.mount_with(no_kernel_cache());
    fs::write(m.join("x"), b"before").expect("write");
    let held = File::open(m.join("x")).expect("open");
    for round in 0..10 {
        eprintln!("restart {round}");
        c.restart_master();
        c.must_wait_master_serving(3);
        assert_eq!(must_read(&m.join("x")), b"before", "after restart {round}");
    }
    drop(held);
}

#[test]
fn data_survives_restarts_of_every_node() {
    let mut c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    let old = c.mount_with(no_kernel_cache());
    let files = write_tree(&old);
    let t = Instant::now();
    // Stop all nodes at once, then start them again: every byte read
    // afterwards comes from a restarted node (on a new port).
    for i in 0..3 {
        c.stop_node(i);
    }
    for i in 0..3 {
        c.restart_node(i);
    }
    for i in 0..3 {
        c.wait_node_registered(i);
    }
    eprintln!("nodes restarted and registered in {:?}", t.elapsed());
    let m = c.mount();
    must_match_tree(&m, &files, "new mount after every node restarted");
    must_match_tree(&old, &files, "mount made before the nodes restarted");
    // Writing works again, and one node restarting alone loses nothing.
    let after = random_bytes(300_000);
    fs::write(old.join("after"), &after).expect("write after the restarts");
    c.restart_node(1);
    c.wait_node_registered(1);
    must_equal(&must_read(&m.join("after")), &after, "file written after the restarts");
    must_match_tree(&m, &files, "after node 1 restarted once more");
}

/// Long kernel caches, so that a mount keeps the directory listings it
/// fetches (they serve for the shorter of the two TTLs).
fn long_ttls() -> MountOptions {
    MountOptions { attr_ttl: Duration::from_secs(60), entry_ttl: Duration::from_secs(60), ..Default::default() }
}

/// Stats every name of `dir` twice: enough lookups for the mount to fetch
/// the directory's listing and answer from it.
fn stat_all_twice(dir: &Path, names: &[String]) {
    for _ in 0..2 {
        forget_kernel_names();
        for n in names {
            fs::metadata(dir.join(n)).unwrap_or_else(|e| panic!("stat {n}: {e}"));
        }
    }
}

/// A mount answers lookups of existing names from a recent listing of the
/// directory: its own changes made after the listing must show at once.
#[test]
fn own_changes_show_through_a_listed_directory() {
    let c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    let m = c.mount_with(long_ttls());
    let dir = m.join("d");
    fs::create_dir(&dir).expect("mkdir");
    let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    for n in &names {
        fs::write(dir.join(n), b"").expect("create");
    }
    fs::create_dir(dir.join("sub")).expect("mkdir sub");
    stat_all_twice(&dir, &names);

    fs::write(dir.join("f1"), random_bytes(5_000)).expect("write f1");
    fs::remove_file(dir.join("f2")).expect("unlink f2");
    fs::rename(dir.join("f3"), dir.join("g3")).expect("rename f3");
    fs::set_permissions(dir.join("f4"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod f4");
    fs::hard_link(dir.join("f5"), dir.join("h5")).expect("link f5");
    fs::create_dir(dir.join("sub/inner")).expect("mkdir sub/inner");
    OpenOptions::new().write(true).open(dir.join("f6")).expect("open f6").set_len(123).expect("truncate f6");

    forget_kernel_names();
    assert_eq!(fs::metadata(dir.join("f1")).expect("stat f1").len(), 5_000, "size written here");
    assert_eq!(errno(&fs::metadata(dir.join("f2")).expect_err("f2 unlinked")), libc::ENOENT);
    assert_eq!(errno(&fs::metadata(dir.join("f3")).expect_err("f3 renamed")), libc::ENOENT);
    assert!(fs::metadata(dir.join("g3")).expect("stat g3").is_file());
    assert_eq!(fs::metadata(dir.join("f4")).expect("stat f4").mode() & 0o7777, 0o600, "mode set here");
    assert_eq!(fs::metadata(dir.join("f5")).expect("stat f5").nlink(), 2, "link count after a link here");
    assert_eq!(fs::metadata(dir.join("sub")).expect("stat sub").nlink(), 3, "subdirectory made here");
    assert_eq!(fs::metadata(dir.join("f6")).expect("stat f6").len(), 123, "truncated here");
    // A name made here after the listing is found too.
    fs::write(dir.join("late"), b"x").expect("create late");
    forget_kernel_names();
    assert_eq!(fs::metadata(dir.join("late")).expect("stat late").len(), 1);
}

/// A listing never hides a name another mount created after it: close on
/// A, then open on B finds the file at once (Ray restores spilled objects
/// on other hosts by name).
#[test]
fn a_listed_directory_still_finds_names_made_elsewhere_at_once() {
    let c = TestCluster::builder().chunk_size(CHUNK as u32).start();
    let a = c.mount_with(long_ttls());
    let b = c.mount_with(long_ttls());
    fs::create_dir(a.join("spill")).expect("mkdir");
    let names: Vec<String> = (0..40).map(|i| format!("obj{i}")).collect();
    for n in &names {
        fs::write(a.join("spill").join(n), b"old").expect("create");
    }
    stat_all_twice(&b.join("spill"), &names);
    for i in 0..5 {
        let data = random_bytes(1_000 + i);
        let name = format!("new{i}");
        fs::write(a.join("spill").join(&name), &data).expect("create on A");
        must_equal(&must_read(&b.join("spill").join(&name)), &data, "B opens A's new file at once");
    }
}
