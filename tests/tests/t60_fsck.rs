//! `stripefs fsck` through the real binary on a real cluster and mount: a
//! clean filesystem exits 0; with a node down, exactly the chunks that lost
//! a replica are reported (exit 4), also with --repair, which leaves them
//! to re-replication; offline, on the stopped master's database, a clean
//! filesystem exits 0; operational errors exit 8.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;
use stripefs_proto::InodeId;
use stripefs_tests::{bin, fsck, fsck_problems, random_bytes, run_with_deadline, tarpc_ctx, TestCluster, TEST_SECRET};

const LIMIT: Duration = Duration::from_secs(120);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(out: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Runs `stripefs ARGS` with the test secret in the environment.
fn stripefs(args: &[&std::ffi::OsStr]) -> Output {
    run_with_deadline(
        Command::new(bin("stripefs"))
            .args(args)
            .env("STRIPEFS_SECRET", std::str::from_utf8(TEST_SECRET).expect("utf-8")),
        LIMIT,
    )
}

/// (ino, index, chunk) of every chunk of the given files, from the master.
fn chunks_of(c: &TestCluster, inos: &[u64]) -> BTreeSet<(u64, u64, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = c.master_client().await;
        let mut out = BTreeSet::new();
        for &ino in inos {
            for l in client.chunks(tarpc_ctx(), InodeId(ino), 0, 4096).await.expect("rpc").expect("chunks") {
                assert_eq!(l.replicas.len(), 2, "chunk {} of {ino} should be on both nodes", l.chunk);
                out.insert((ino, l.index, l.chunk.0));
            }
        }
        out
    })
}

fn ino(p: &Path) -> u64 {
    fs::metadata(p).expect("stat").ino()
}

#[test]
fn fsck_online_clean_node_down_and_offline() {
    let mut c = TestCluster::builder().nodes(2).chunk_size(256 * 1024).node_dead_after(Duration::from_secs(1)).start();
    let m = c.mount();
    fs::create_dir_all(m.join("d/e")).expect("mkdir");
    fs::write(m.join("big"), random_bytes(1_000_000)).expect("write");
    fs::write(m.join("d/small"), b"hello").expect("write");
    fs::write(m.join("d/e/mid"), random_bytes(300_000)).expect("write");
    fs::write(m.join("empty"), b"").expect("write");
    fs::hard_link(m.join("d/small"), m.join("d/e/small-link")).expect("link");
    std::os::unix::fs::symlink("big", m.join("sym")).expect("symlink");
    let files = [ino(&m.join("big")), ino(&m.join("d/small")), ino(&m.join("d/e/mid")), ino(&m.join("empty"))];
    let path = m.path().as_os_str();

    // Clean, through the mount's path.
    let (code, v) = fsck("clean, online", &[path]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!((v["clean"].as_bool(), v["mode"].as_str()), (Some(true), Some("online")), "{v:#}");
    assert!(fsck_problems(&v).is_empty(), "{v:#}");
    assert_eq!(v["counts"]["files"], 4, "{v:#}");
    assert_eq!(v["counts"]["directories"], 3, "{v:#}");
    assert_eq!(v["counts"]["nodes_alive"], 2, "{v:#}");

    // A node down: with replication 2 on 2 nodes no chunk can be copied
    // back, so every chunk stays under-replicated, and nothing else is wrong.
    let want = chunks_of(&c, &files);
    assert_eq!(want.len(), 4 + 1 + 2, "chunks of big, small and mid");
    c.stop_node(1);
    c.wait_dead(1);
    let (code, v) = fsck("node 1 down, online", &[path]);
    assert_eq!(code, 4, "{v:#}");
    let mut got = BTreeSet::new();
    for p in fsck_problems(&v) {
        assert_eq!(p["kind"], "under_replicated", "only under-replicated chunks are expected: {v:#}");
        assert_eq!((p["live"].as_u64(), p["want"].as_u64(), p["outcome"].as_str()), (Some(1), Some(2), Some("found")));
        let field = |k: &str| p[k].as_u64().unwrap_or_else(|| panic!("{k} in {p}"));
        got.insert((field("ino"), field("index"), field("chunk")));
    }
    assert_eq!(got, want, "the under-replicated chunks are not exactly those of the files: {v:#}");
    assert_eq!(v["problem_count"].as_u64(), Some(want.len() as u64));
    assert_eq!((v["corrected"].as_u64(), v["uncorrected"].as_u64()), (Some(0), Some(want.len() as u64)));

    // --repair, found by --master: they are left to re-replication.
    let (code, v) =
        fsck("node 1 down, online, --repair", &["--master".as_ref(), c.master_addr.as_ref(), "--repair".as_ref()]);
    assert_eq!(code, 4, "{v:#}");
    assert_eq!(fsck_problems(&v).len(), want.len(), "{v:#}");
    assert!(fsck_problems(&v).iter().all(|p| p["kind"] == "under_replicated" && p["outcome"] == "queued"), "{v:#}");

    // The node comes back: clean again.
    c.restart_node(1);
    c.wait_node_registered(1);
    let (code, v) = fsck("node 1 back, online", &[path]);
    assert_eq!(code, 0, "{v:#}");

    // Offline, on the stopped master's database.
    drop(m);
    c.stop_master();
    let db = c.dir().join("master").join("master.redb");
    let (code, v) = fsck("offline", &["--db".as_ref(), db.as_os_str()]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!((v["clean"].as_bool(), v["mode"].as_str()), (Some(true), Some("offline")), "{v:#}");
    assert_eq!(v["counts"]["files"], 4, "{v:#}");
    assert!(v["notes"].as_array().is_some_and(|n| n.iter().any(|n| n.as_str().is_some_and(|s| s.contains("offline")))));

    // Operational errors: 8, with a message.
    let out = stripefs(&["fsck".as_ref(), "--db".as_ref(), db.as_os_str(), "--repair".as_ref()]);
    assert_eq!(out.status.code(), Some(8), "{}", show(&out));
    assert!(text(&out.stderr).contains("--repair needs the running master"), "{}", show(&out));
    let out = stripefs(&["fsck".as_ref(), "--master".as_ref(), c.master_addr.as_ref()]);
    assert_eq!(out.status.code(), Some(8), "a stopped master: {}", show(&out));
    assert!(text(&out.stderr).contains("cannot reach"), "{}", show(&out));
    let out = stripefs(&["fsck".as_ref(), "--db".as_ref(), c.dir().join("nothing").as_os_str()]);
    assert_eq!(out.status.code(), Some(8), "{}", show(&out));
    let out = stripefs(&["fsck".as_ref(), "--no-such-flag".as_ref()]);
    assert_eq!(out.status.code(), Some(8), "bad arguments: {}", show(&out));
}
