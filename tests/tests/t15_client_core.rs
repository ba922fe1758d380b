//! The client core ([`stripefs_client::FsCore`]) driven directly, without
//! FUSE, against a real cluster: namespace and data scenarios where the
//! kernel is not the point, and the same under faults injected between
//! the client and the master (a [`FaultProxy`]): replies dropped, delayed,
//! duplicated or reordered, connections cut before or after a request
//! reached the master, nodes that fail. A program must not see any of it.

use std::time::Duration;
use stripefs_client::{ClientConfig, ClientError};
use stripefs_proto::{FsError, InodeId};
use stripefs_tests::faults::{Fault, FaultProxy};
use stripefs_tests::{random_bytes, sha256, TestClient, TestCluster, TEST_OWNER};

const ROOT: InodeId = InodeId::ROOT;

/// A client through a fault proxy, with short call deadlines so a dropped
/// reply costs a second, not thirty.
fn faulty_client(c: &TestCluster) -> (FaultProxy, TestClient) {
    let proxy = FaultProxy::start(&c.master_addr);
    let cfg = ClientConfig {
        call_timeout: Duration::from_secs(1),
        master_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let client = TestClient::connect(proxy.addr(), cfg);
    (proxy, client)
}

#[test]
fn namespace_and_data_through_the_core_without_fuse() {
    let c = TestCluster::builder().chunk_size(256 * 1024).start();
    let cl = c.client();
    let core = cl.core().clone();
    let d = cl.run(core.mkdir(ROOT, "d", 0o755, TEST_OWNER)).expect("mkdir").ino;
    let data = random_bytes(700_000);
    let f = cl.write_file(d, "f", &data).expect("write f");
    assert_eq!(sha256(&cl.read_file(f).expect("read f")), sha256(&data));
    // Another client sees it (close-to-open).
    let other = c.client();
    assert_eq!(sha256(&other.read_file(other.resolve("d/f").expect("resolve")).expect("read")), sha256(&data));
    // Rename over an existing name replaces it; the old name is gone.
    cl.write_file(d, "g", b"old").expect("write g");
    cl.run(core.rename(d, "f", d, "g", 0)).expect("rename f over g");
    assert_eq!(cl.list(d).expect("list"), ["g"]);
    assert_eq!(sha256(&cl.read_file(cl.resolve("d/g").expect("g")).expect("read g")), sha256(&data));
    let e = cl.run(core.rmdir(ROOT, "d")).expect_err("not empty");
    assert!(matches!(e, ClientError::Fs(FsError::NotEmpty)), "{e:?}");
    cl.run(core.unlink(d, "g")).expect("unlink");
    cl.run(core.rmdir(ROOT, "d")).expect("rmdir");
    assert!(cl.list(ROOT).expect("list root").is_empty());
}

/// Writes `data` at `offset` through a handle of `ino` opened for writing.
fn write_at(cl: &TestClient, ino: InodeId, offset: u64, data: &[u8]) {
    let core = cl.core().clone();
    cl.run(async move {
        let (fh, _) = core.open(ino, true).await?;
        let mut off = 0;
        while off < data.len() {
            off += core.write(fh, offset + off as u64, &data[off..]).await? as usize;
        }
        core.flush(fh).await?;
        core.release(fh).await
    })
    .expect("write at an offset");
}

/// Reads `len` bytes at `offset` of `ino`.
fn read_at(cl: &TestClient, ino: InodeId, offset: u64, len: u32) -> Vec<u8> {
    let core = cl.core().clone();
    cl.run(async move {
        let (fh, _) = core.open(ino, false).await?;
        let got = core.read(fh, offset, len).await;
        core.release(fh).await?;
        got
    })
    .expect("read at an offset")
}

#[test]
fn reads_at_odd_offsets_across_chunk_and_block_boundaries() {
    let c = TestCluster::builder().chunk_size(256 * 1024).start();
    let cl = c.client();
    let data = random_bytes(1_000_000 + 123);
    let f = cl.write_file(ROOT, "f", &data).expect("write");
    assert_eq!(cl.run(cl.core().getattr(f)).expect("getattr").size, data.len() as u64);
    for &(off, len) in &[(0usize, 10usize), (65535, 2), (262_143, 5), (262_144, 70_000), (999_990, 200)] {
        let end = (off + len).min(data.len());
        assert_eq!(read_at(&cl, f, off as u64, len as u32), &data[off..end], "offset {off}");
    }
}

#[test]
fn an_overwrite_in_the_middle_keeps_the_rest() {
    let c = TestCluster::builder().chunk_size(128 * 1024).start();
    let cl = c.client();
    let mut data = random_bytes(500_000);
    let f = cl.write_file(ROOT, "f", &data).expect("write");
    let patch = random_bytes(1000);
    write_at(&cl, f, 131_000, &patch);
    data[131_000..132_000].copy_from_slice(&patch);
    // Another client (close-to-open) reads the patched chunk and the rest.
    let other = c.client();
    assert_eq!(sha256(&other.read_file(f).expect("read")), sha256(&data));
}

#[test]
fn holes_in_a_sparse_file_read_as_zeros() {
    let c = TestCluster::builder().chunk_size(64 * 1024).start();
    let cl = c.client();
    let f = cl.write_file(ROOT, "s", b"").expect("create");
    write_at(&cl, f, 1_000_000, b"end");
    write_at(&cl, f, 0, b"start");
    let d = c.client().read_file(f).expect("read");
    assert_eq!(d.len(), 1_000_003);
    assert_eq!(&d[..5], b"start");
    assert!(d[5..1_000_000].iter().all(|&b| b == 0));
    assert_eq!(&d[1_000_000..], b"end");
}

#[test]
fn a_file_unlinked_while_open_stays_readable_until_closed() {
    let c = TestCluster::builder().start();
    let cl = c.client();
    let core = cl.core().clone();
    let data = random_bytes(100_000);
    let f = cl.write_file(ROOT, "f", &data).expect("write");
    let (fh, _) = cl.run(core.open(f, false)).expect("open");
    cl.run(core.unlink(ROOT, "f")).expect("unlink");
    assert_eq!(cl.run(core.read(fh, 0, 200_000)).expect("read after unlink"), data);
    cl.run(core.release(fh)).expect("release");
}

/// Runs `op` with `fault` armed and checks it succeeds as if nothing happened.
fn must_survive<T: std::fmt::Debug>(
    proxy: &FaultProxy,
    fault: Fault,
    what: &str,
    op: impl FnOnce() -> Result<T, ClientError>,
) -> T {
    proxy.inject(fault);
    let r = op();
    let left = proxy.clear();
    let r = r.unwrap_or_else(|e| panic!("{what} under {fault:?} failed: {e}"));
    assert!(left.is_empty(), "{what}: the fault {fault:?} was never applied");
    r
}

#[test]
fn every_mutation_survives_a_connection_cut_after_the_master_got_it() {
    let c = TestCluster::builder().start();
    let (proxy, cl) = faulty_client(&c);
    let core = cl.core().clone();
    let cut = Fault::CutAfterRequest;
    let d = must_survive(&proxy, cut, "mkdir", || cl.run(core.mkdir(ROOT, "d", 0o755, TEST_OWNER))).ino;
    let (attr, fh) = must_survive(&proxy, cut, "create", || cl.run(core.create(d, "f", 0o644, TEST_OWNER, true)));
    cl.run(core.release(fh)).expect("release");
    must_survive(&proxy, cut, "rename", || cl.run(core.rename(d, "f", d, "g", 0)));
    must_survive(&proxy, cut, "link", || cl.run(core.link(attr.ino, d, "h")));
    must_survive(&proxy, cut, "unlink", || cl.run(core.unlink(d, "g")));
    must_survive(&proxy, cut, "unlink", || cl.run(core.unlink(d, "h")));
    must_survive(&proxy, cut, "rmdir", || cl.run(core.rmdir(ROOT, "d")));
    assert!(cl.list(ROOT).expect("list").is_empty());
}

#[test]
fn replies_dropped_delayed_duplicated_or_swapped_are_not_seen() {
    let c = TestCluster::builder().start();
    let (proxy, cl) = faulty_client(&c);
    let core = cl.core().clone();
    for (i, fault) in [
        Fault::DelayReply(Duration::from_millis(300)),
        Fault::DuplicateReply,
        Fault::SwapReplies,
        Fault::CutBeforeRequest,
        Fault::DropReply,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("d{i}");
        must_survive(&proxy, fault, "mkdir", || cl.run(core.mkdir(ROOT, &name, 0o755, TEST_OWNER)));
        let data = random_bytes(10_000);
        let f = must_survive(&proxy, fault, "write a file", || cl.write_file(ROOT, &format!("f{i}"), &data));
        assert_eq!(cl.read_file(f).expect("read back"), data, "{fault:?}");
    }
    let mut names = cl.list(ROOT).expect("list");
    names.sort();
    assert_eq!(names, ["d0", "d1", "d2", "d3", "d4", "f0", "f1", "f2", "f3", "f4"]);
}

#[test]
fn a_write_goes_on_when_a_node_fails() {
    let mut c = TestCluster::builder().nodes(3).chunk_size(256 * 1024).start();
    let cl = c.client();
    let first = random_bytes(600_000);
    let f = cl.write_file(ROOT, "before", &first).expect("write");
    c.stop_node(0);
    let second = random_bytes(600_000);
    let g = cl.write_file(ROOT, "after", &second).expect("write with a node down");
    assert_eq!(sha256(&cl.read_file(f).expect("read before")), sha256(&first));
    assert_eq!(sha256(&cl.read_file(g).expect("read after")), sha256(&second));
}

#[test]
fn an_open_whose_answer_was_lost_takes_one_reference_so_an_unlinked_file_is_freed() {
    let c = TestCluster::builder().start();
    let (proxy, cl) = faulty_client(&c);
    let core = cl.core().clone();
    let f = cl.write_file(ROOT, "f", b"data").expect("write");
    let files = || cl.run(core.statfs()).expect("statfs").files;
    let before = files();
    // The write's close sends its release in the background: let it pass
    // before the fault is armed for the open.
    std::thread::sleep(Duration::from_millis(500));
    // The open's answer is lost: the client reconnects and opens again.
    let fh = must_survive(&proxy, Fault::DropReply, "open", || cl.run(core.open(f, false))).0;
    cl.run(core.release(fh)).expect("release");
    cl.run(core.unlink(ROOT, "f")).expect("unlink");
    // With one reference, released, the unlinked file is freed at once; a
    // stray second reference would keep it as an orphan.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while files() != before - 1 {
        assert!(std::time::Instant::now() < deadline, "the unlinked file is still kept ({} inodes)", files());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lookups of `dir`'s missing names that reached the master so far.
fn master_lookups(c: &TestCluster) -> f64 {
    let (_, text) = stripefs_tests::http_get(&c.master_metrics_addr(), "/metrics");
    stripefs_tests::metric(&text, "stripefs_master_rpc_requests_total{op=\"lookup\"}")
}

#[test]
fn a_directory_one_client_works_in_answers_missing_names_without_the_master_until_another_changes_it() {
    use stripefs_proto::types::FileKind;
    let c = TestCluster::builder().start();
    let (a, b) = (c.client(), c.client());
    let (ca, cb) = (a.core().clone(), b.core().clone());
    let d = a.run(ca.mkdir(ROOT, "spill", 0o755, TEST_OWNER)).expect("mkdir").ino;
    let missing = |name: &str| match a.run(ca.lookup(d, name)) {
        Err(ClientError::Fs(FsError::NotFound)) => {}
        other => panic!("lookup of {name}: {other:?}"),
    };
    for round in 0..3 {
        // As the kernel does: a lookup of each name before creating it.
        let (asked_before, answered_before) = (master_lookups(&c), ca.stats().lease_lookups);
        for i in 0..100 {
            let name = format!("a{round}-{i}");
            missing(&name);
            a.run(ca.mknod(d, &name, FileKind::File, 0o644, TEST_OWNER, 0)).expect("mknod");
        }
        let asked = master_lookups(&c) - asked_before;
        let answered = ca.stats().lease_lookups - answered_before;
        assert_eq!(ca.stats().dir_leases, 1, "round {round}: the lease is held");
        assert!(
            asked <= f64::from(stripefs_client::leases::ASK_AFTER),
            "round {round}: {asked} lookups reached the master ({answered} answered by the lease)"
        );
        assert!(answered >= 100 - u64::from(stripefs_client::leases::ASK_AFTER), "round {round}: {answered}");
        // Names A made exist for A, and one A removed does not.
        a.run(ca.unlink(d, &format!("a{round}-0"))).expect("unlink");
        missing(&format!("a{round}-0"));
        assert!(a.run(ca.lookup(d, &format!("a{round}-1"))).is_ok());

        // Another client's create recalls the lease before it is done:
        // A sees the name as soon as B's call returned.
        let theirs = format!("b{round}");
        b.run(cb.mknod(d, &theirs, FileKind::File, 0o644, TEST_OWNER, 0)).expect("B's mknod");
        assert_eq!(ca.stats().dir_leases, 0, "round {round}: given back before B's create went ahead");
        let seen = a.run(ca.lookup(d, &theirs)).unwrap_or_else(|e| panic!("A does not see {theirs}: {e}"));
        assert_eq!(seen.attr.kind, FileKind::File);
        // B's rename onto a name A made, and A's removal of B's name.
        b.run(cb.rename(d, &theirs, d, &format!("a{round}-2"), 0)).expect("B's rename");
        a.run(ca.unlink(d, &format!("a{round}-2"))).expect("A removes what B renamed");
        missing(&theirs);
        // A directory another client just changed is not leased again
        // at once (no lease passed back and forth at every turn).
        std::thread::sleep(stripefs_master::leases::CONTENDED + Duration::from_millis(200));
    }
    // A holder that dies without giving its lease back holds the others
    // back for one lease at most.
    for i in 0..5 {
        let name = format!("last-{i}");
        missing(&name);
        a.run(ca.mknod(d, &name, FileKind::File, 0o644, TEST_OWNER, 0)).expect("mknod");
    }
    assert_eq!(ca.stats().dir_leases, 1);
    drop(a);
    b.run(cb.mknod(d, "after-a", FileKind::File, 0o644, TEST_OWNER, 0)).expect("B goes on after A died");
    assert_eq!(b.list(d).expect("list").len(), 3 * 98 + 5 + 1);
}
