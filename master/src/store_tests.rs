//! Tests of creating, reopening and refusing databases.

use super::*;
use crate::namespace::{Command, Reply};
use std::collections::HashSet;
use stripefs_proto::ops;
use stripefs_proto::types::{Attr, ChunkCommit, Owner, Policy};
use stripefs_proto::{ChunkId, Version};
use tempfile::TempDir;

const ROOT: InodeId = InodeId::ROOT;
const OWNER: Owner = Owner { uid: 1, gid: 2 };

fn open(dir: &Path, chunk_size: Option<u32>) -> Result<Store, OpenError> {
    Store::open(dir, chunk_size, Box::new(|_| false), CancellationToken::new())
}

fn open_ok(dir: &Path, chunk_size: Option<u32>) -> Store {
    open(dir, chunk_size).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

/// Opens and expects a refusal; returns its message.
fn refused(dir: &Path, chunk_size: Option<u32>) -> String {
    match open(dir, chunk_size) {
        Ok(_) => panic!("{} was opened but should have been refused", dir.display()),
        Err(OpenError::Refused(msg)) => msg,
        Err(e) => panic!("{}: expected a refusal, got {e}", dir.display()),
    }
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

async fn attr(store: &Store, cmd: Command) -> Attr {
    match store.execute(cmd.clone()).await {
        Ok(Reply::Attr(a)) => a,
        other => panic!("{cmd:?}: {other:?}"),
    }
}

fn mkdir(parent: InodeId, name: &str) -> Command {
    Command::Mkdir { op: ops::Mkdir { parent, name: name.into(), perm: 0o750, owner: OWNER }, now: Timestamp::now() }
}

fn mknod(parent: InodeId, name: &str) -> Command {
    Command::Mknod {
        op: ops::Mknod { parent, name: name.into(), kind: FileKind::File, perm: 0o640, owner: OWNER, rdev: 0 },
        now: Timestamp::now(),
    }
}

/// Writes a meta value straight into the database file.
fn poke_meta(path: &Path, key: &str, value: &[u8]) {
    let db = Database::open(path).expect("open the database with redb");
    let txn = db.begin_write().expect("begin");
    {
        let mut meta = txn.open_table(tables::META).expect("meta table");
        meta.insert(key, value).expect("insert");
    }
    txn.commit().expect("commit");
}

#[test]
fn creates_a_new_filesystem_in_an_empty_dir() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    assert_eq!(store.chunk_size(), 4 << 20, "the default chunk size");
    assert_eq!(store.fs_id().len(), 32);
    assert!(store.fs_id().chars().all(|c| c.is_ascii_hexdigit()), "{}", store.fs_id());
    let root = store.inode(ROOT).expect("root");
    assert_eq!((root.kind, root.nlink, root.perm, root.parent), (FileKind::Dir, 2, 0o755, ROOT.0));
    assert_eq!(store.inode_count(), Ok(1));
    assert_eq!(store.readdir(ROOT, None, 100), Ok(Vec::new()));
    assert!(store.nodes().expect("nodes").is_empty());
    assert!(store.orphans().expect("orphans").is_empty());
    assert_eq!(store.pending_deletions(), Ok(0));
    assert_eq!(dir_entries(tmp.path()), [DB_FILE, RAFT_DIR]);

    // Two filesystems get different ids.
    let other = TempDir::new().expect("temp dir");
    assert_ne!(open_ok(other.path(), None).fs_id(), store.fs_id());
}

#[test]
fn creates_the_directory_when_missing() {
    let tmp = TempDir::new().expect("temp dir");
    let dir = tmp.path().join("a/b/master");
    let store = open_ok(&dir, Some(1 << 16));
    assert_eq!(store.chunk_size(), 1 << 16);
    assert!(dir.join(DB_FILE).is_file());
}

#[test]
fn the_masters_own_files_do_not_block_creation() {
    let tmp = TempDir::new().expect("temp dir");
    std::fs::write(tmp.path().join("listen.addr"), "127.0.0.1:9400").expect("write listen.addr");
    std::fs::write(tmp.path().join("master.log"), "").expect("write master.log");
    let store = open_ok(tmp.path(), None);
    assert_eq!(store.inode_count(), Ok(1));
}

#[tokio::test]
async fn reopening_keeps_everything() {
    let tmp = TempDir::new().expect("temp dir");
    let (fs_id, files, last_id, tree) = {
        let store = open_ok(tmp.path(), Some(1 << 16));
        let a = attr(&store, mkdir(ROOT, "a")).await;
        let b = attr(&store, mkdir(a.ino, "b")).await;
        let f = attr(&store, mknod(b.ino, "f")).await;
        attr(
            &store,
            Command::Link {
                op: ops::Link { ino: f.ino, new_parent: ROOT, new_name: "f2".into() },
                now: Timestamp::now(),
            },
        )
        .await;
        attr(
            &store,
            Command::Symlink {
                op: ops::Symlink { parent: ROOT, name: "s".into(), target: "a/b/f".into(), owner: OWNER },
                now: Timestamp::now(),
            },
        )
        .await;
        let commit = ChunkCommit {
            ino: f.ino,
            index: 3,
            chunk: ChunkId(40),
            version: Version(41),
            length: 1000,
            stored_bytes: 600,
            replicas: vec![NodeId(1), NodeId(2)],
        };
        attr(&store, Command::CommitChunk { commit, now: Timestamp::now() }).await;
        store
            .execute(Command::SetXattr {
                op: ops::SetXattr { ino: a.ino, name: "user.k".into(), value: b"value".to_vec(), flags: 0 },
                now: Timestamp::now(),
            })
            .await
            .expect("setxattr");
        attr(
            &store,
            Command::SetPolicy {
                op: ops::SetPolicy { ino: a.ino, replication: Some(3), compression_level: Some(0) },
                now: Timestamp::now(),
            },
        )
        .await;
        let rec = NodeRecord { addr: "10.0.0.1:9500".into(), host: "h1".into(), zone: "z1".into() };
        store.execute(Command::RegisterNode { id: None, record: rec }).await.expect("register");
        let mut last_id = 0;
        for _ in 0..3 {
            last_id = store.next_id().await.expect("next id");
        }
        let tree = [
            store.readdir(ROOT, None, 100).expect("readdir /"),
            store.readdir(a.ino, None, 100).expect("readdir /a"),
            store.readdir(b.ino, None, 100).expect("readdir /a/b"),
        ];
        (store.fs_id().to_string(), store.inode_count().expect("count"), last_id, tree)
    };

    for chunk_size in [None, Some(1 << 16)] {
        let store = open_ok(tmp.path(), chunk_size);
        assert_eq!(store.fs_id(), fs_id);
        assert_eq!(store.chunk_size(), 1 << 16, "the chunk size is kept");
        assert_eq!(store.inode_count(), Ok(files));
        let (a, arec) = store.lookup(ROOT, "a").expect("lookup a");
        let (b, _) = store.lookup(a, "b").expect("lookup a/b");
        let (f, frec) = store.lookup(b, "f").expect("lookup a/b/f");
        assert_eq!(store.lookup(ROOT, "f2").expect("lookup f2").0, f);
        assert_eq!(frec.nlink, 2);
        assert_eq!(frec.size, 3 * (1 << 16) + 1000);
        assert_eq!((arec.nlink, arec.perm, arec.uid, arec.gid), (3, 0o750, 1, 2));
        assert_eq!(arec.policy, Policy { replication: 3, compression_level: 0 });
        assert_eq!(
            store.inode(store.lookup(ROOT, "s").expect("lookup s").0).expect("s").target.as_deref(),
            Some("a/b/f")
        );
        let now = [
            store.readdir(ROOT, None, 100).expect("readdir /"),
            store.readdir(a, None, 100).expect("readdir /a"),
            store.readdir(b, None, 100).expect("readdir /a/b"),
        ];
        assert_eq!(now, tree, "readdir agrees after reopening");
        let chunks = store.chunks(f, 0, 10).expect("chunks");
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].0, chunks[0].1.chunk, chunks[0].1.version), (3, ChunkId(40), Version(41)));
        assert_eq!(store.xattr(a, "user.k"), Ok(b"value".to_vec()));
        assert_eq!(store.nodes().expect("nodes").len(), 1);
        let id = store.next_id().await.expect("next id after reopening");
        assert!(id > last_id, "id {id} after reopening must be above {last_id}");
        // New inodes do not reuse numbers.
        let g = attr(&store, mknod(ROOT, "g")).await;
        let used: HashSet<InodeId> = [ROOT, a, b, f].into_iter().collect();
        assert!(!used.contains(&g.ino));
        // Clean up so the next round sees the same tree.
        store
            .execute(Command::Unlink { op: ops::Unlink { parent: ROOT, name: "g".into() }, now: Timestamp::now() })
            .await
            .expect("unlink g");
    }
}

#[test]
fn dropping_the_store_applies_what_was_queued_and_closes_the_database() {
    let tmp = TempDir::new().expect("temp dir");
    {
        let store = open_ok(tmp.path(), None);
        for i in 0..50 {
            store.submit(mkdir(ROOT, &format!("d{i:02}")));
        }
        // No await: the commands are only queued when the store goes.
    }
    // The database is closed as soon as the store is dropped ...
    let store = open_ok(tmp.path(), None);
    // ... and everything queued before was applied.
    let names: Vec<String> = store.readdir(ROOT, None, 100).expect("readdir").into_iter().map(|e| e.name).collect();
    let want: Vec<String> = (0..50).map(|i| format!("d{i:02}")).collect();
    assert_eq!(names, want);
    assert_eq!(store.inode(ROOT).expect("root").nlink, 52);
}

#[tokio::test]
async fn orphans_survive_a_reopen() {
    let tmp = TempDir::new().expect("temp dir");
    let ino = {
        let store = Store::open(tmp.path(), None, Box::new(|_| true), CancellationToken::new()).expect("open");
        let f = attr(&store, mknod(ROOT, "f")).await;
        store
            .execute(Command::Unlink { op: ops::Unlink { parent: ROOT, name: "f".into() }, now: Timestamp::now() })
            .await
            .expect("unlink");
        assert_eq!(store.orphans(), Ok(vec![f.ino]));
        f.ino
    };
    let store = open_ok(tmp.path(), None);
    assert_eq!(store.orphans(), Ok(vec![ino]));
    assert_eq!(store.inode_count(), Ok(2));
    store.execute(Command::Purge { ino }).await.expect("purge");
    assert_eq!(store.orphans(), Ok(vec![]));
    assert_eq!(store.inode_count(), Ok(1));
}

#[test]
fn refuses_a_storage_nodes_directory() {
    for (what, make) in [
        ("node.id", Box::new(|p: &Path| std::fs::write(p.join("node.id"), "3")) as Box<dyn Fn(&Path) -> _>),
        ("chunks", Box::new(|p: &Path| std::fs::create_dir(p.join("chunks")))),
    ] {
        let tmp = TempDir::new().expect("temp dir");
        make(tmp.path()).expect("make a node's file");
        let msg = refused(tmp.path(), None);
        assert!(msg.contains("storage node"), "{what}: {msg}");
        assert!(msg.contains(&tmp.path().display().to_string()), "{what}: {msg}");
        assert_eq!(dir_entries(tmp.path()), [what], "nothing was created next to {what}");
    }
}

#[test]
fn refuses_a_non_empty_unrelated_directory() {
    let tmp = TempDir::new().expect("temp dir");
    std::fs::write(tmp.path().join("notes.txt"), "hello").expect("write");
    let msg = refused(tmp.path(), None);
    assert!(msg.contains("not empty"), "{msg}");
    assert!(msg.contains("notes.txt"), "{msg}");
    assert_eq!(dir_entries(tmp.path()), ["notes.txt"]);

    let tmp = TempDir::new().expect("temp dir");
    std::fs::create_dir(tmp.path().join("sub")).expect("mkdir");
    let msg = refused(tmp.path(), Some(1 << 16));
    assert!(msg.contains("not empty") && msg.contains("sub"), "{msg}");
}

#[test]
fn refuses_a_redb_file_that_is_not_ours() {
    // A redb database with other tables.
    let tmp = TempDir::new().expect("temp dir");
    {
        let db = Database::create(tmp.path().join(DB_FILE)).expect("create");
        let txn = db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(redb::TableDefinition::<u64, u64>::new("other")).expect("table");
            t.insert(1, 2).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let msg = refused(tmp.path(), None);
    assert!(msg.contains("not a stripefs master database"), "{msg}");

    // A redb database with a meta table of ours, but no magic.
    let tmp = TempDir::new().expect("temp dir");
    {
        let db = Database::create(tmp.path().join(DB_FILE)).expect("create");
        let txn = db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(tables::META).expect("table");
            t.insert(meta_keys::MAGIC, b"someone-else".as_slice()).expect("insert");
            t.insert(meta_keys::FORMAT_VERSION, 1u32.to_le_bytes().as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let msg = refused(tmp.path(), None);
    assert!(msg.contains("not a stripefs master database"), "{msg}");

    // A redb database whose meta table has other types.
    let tmp = TempDir::new().expect("temp dir");
    {
        let db = Database::create(tmp.path().join(DB_FILE)).expect("create");
        let txn = db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(redb::TableDefinition::<u64, u64>::new("meta.v1")).expect("table");
            t.insert(1, 2).expect("insert");
        }
        txn.commit().expect("commit");
    }
    let msg = refused(tmp.path(), None);
    assert!(msg.contains("not a stripefs master database"), "{msg}");
}

#[test]
fn refuses_a_file_that_is_not_a_database() {
    let tmp = TempDir::new().expect("temp dir");
    let junk: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(tmp.path().join(DB_FILE), &junk).expect("write junk");
    let msg = refused(tmp.path(), None);
    assert!(msg.contains("not a stripefs master database"), "{msg}");
    assert_eq!(std::fs::read(tmp.path().join(DB_FILE)).expect("read back"), junk, "the file is left alone");
}

#[test]
fn refuses_a_newer_format_version() {
    let tmp = TempDir::new().expect("temp dir");
    drop(open_ok(tmp.path(), None));
    poke_meta(&tmp.path().join(DB_FILE), meta_keys::FORMAT_VERSION, &(FORMAT_VERSION + 1).to_le_bytes());
    let msg = refused(tmp.path(), None);
    assert!(msg.contains(&format!("format version {}", FORMAT_VERSION + 1)), "{msg}");
    assert!(msg.contains("newer"), "{msg}");

    // The current version opens.
    poke_meta(&tmp.path().join(DB_FILE), meta_keys::FORMAT_VERSION, &FORMAT_VERSION.to_le_bytes());
    open_ok(tmp.path(), None);
}

#[test]
fn refuses_another_chunk_size() {
    let tmp = TempDir::new().expect("temp dir");
    drop(open_ok(tmp.path(), Some(1 << 16)));
    let msg = refused(tmp.path(), Some(1 << 17));
    assert!(msg.contains("chunk size 65536"), "{msg}");
    assert!(msg.contains("131072"), "{msg}");
    // Neither giving none nor the same one is a problem.
    assert_eq!(open_ok(tmp.path(), None).chunk_size(), 1 << 16);
    assert_eq!(open_ok(tmp.path(), Some(1 << 16)).chunk_size(), 1 << 16);
}

#[test]
fn refuses_a_database_open_elsewhere() {
    let tmp = TempDir::new().expect("temp dir");
    let _first = open_ok(tmp.path(), None);
    let msg = match open(tmp.path(), None) {
        Ok(_) => panic!("the database was opened twice"),
        Err(e) => e.to_string(),
    };
    assert!(msg.to_lowercase().contains("already open"), "{msg}");
    assert!(!msg.contains("not a stripefs master database"), "a database in use is ours: {msg}");
}

/// Log entries the (closed) database in `dir` has not applied.
fn unapplied(dir: &Path) -> u64 {
    let db = Database::open(dir.join(DB_FILE)).expect("open the database");
    let txn = db.begin_read().expect("read");
    let applied = crate::raft::state_machine::applied_in(&txn).expect("applied").0.map(|a| a.index).unwrap_or(0);
    let last = crate::raft::log::last_index_in(&dir.join(RAFT_DIR)).expect("log").unwrap_or(0);
    last.saturating_sub(applied)
}

/// What a killed master leaves (see [`crate::test_util::copy_live`]).
fn crash_copy(from: &Path) -> TempDir {
    let to = TempDir::new().expect("temp dir");
    crate::test_util::copy_live(from, to.path());
    to
}

#[tokio::test]
async fn acknowledged_commands_survive_a_crash_through_the_log() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    for i in 0..50 {
        attr(&store, mkdir(ROOT, &format!("d{i:02}"))).await;
    }
    let crashed = crash_copy(tmp.path());
    drop(store);
    // A clean stop leaves nothing to replay.
    assert_eq!(unapplied(tmp.path()), 0);

    let store = open_ok(crashed.path(), None);
    let names: Vec<String> = store.readdir(ROOT, None, 100).expect("readdir").into_iter().map(|e| e.name).collect();
    let want: Vec<String> = (0..50).map(|i| format!("d{i:02}")).collect();
    assert_eq!(names, want);
    assert_eq!(store.inode(ROOT).expect("root").nlink, 52);
    // New inodes continue after the replayed ones.
    let f = attr(&store, mknod(ROOT, "after")).await;
    assert!(names.iter().all(|n| store.lookup(ROOT, n).expect("lookup").0 != f.ino));
    drop(store);
    assert_eq!(unapplied(crashed.path()), 0, "replayed, then checkpointed");
}

#[tokio::test]
async fn replay_gives_unlink_the_open_answers_it_had() {
    let tmp = TempDir::new().expect("temp dir");
    // Every inode is open on some client: unlink keeps them as orphans.
    let store = Store::open(tmp.path(), None, Box::new(|_| true), CancellationToken::new()).expect("open");
    let f = attr(&store, mknod(ROOT, "f")).await;
    store
        .execute(Command::Unlink { op: ops::Unlink { parent: ROOT, name: "f".into() }, now: Timestamp::now() })
        .await
        .expect("unlink");
    let crashed = crash_copy(tmp.path());
    drop(store);
    // Reopened with nothing open: replay must still keep the orphan.
    let store = open_ok(crashed.path(), None);
    assert_eq!(store.orphans(), Ok(vec![f.ino]));
    assert!(store.lookup(ROOT, "f").is_err());
}

fn request<O>(seq: u64, answered_below: u64, op: O) -> ops::Request<O> {
    ops::Request { id: ops::RequestId { session: 0xabc, seq }, answered_below, op, replay: None }
}

fn mkdir_op(name: &str) -> ops::Mkdir {
    ops::Mkdir { parent: ROOT, name: name.into(), perm: 0o755, owner: OWNER }
}

/// Answers remembered in `requests.v1`.
fn remembered(store: &Store) -> u64 {
    let txn = store.read().expect("read");
    txn.open_table(tables::REQUESTS).expect("requests table").len().expect("len")
}

#[tokio::test]
async fn a_request_sent_twice_is_applied_once_and_answered_the_same() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    let first = store.run(request(1, 1, mkdir_op("d"))).await.expect("mkdir");
    // The answer was lost; the client sends the same request again.
    let again = store.run(request(1, 1, mkdir_op("d"))).await.expect("a retried mkdir is not EEXIST");
    assert_eq!(again.value, first.value);
    assert_eq!(store.inode(ROOT).expect("root").nlink, 3, "one directory, not two");
    // A new request for the same name is a new mkdir: EEXIST.
    assert_eq!(store.run(request(2, 1, mkdir_op("d"))).await, Err(FsError::Exists));
    // A refusal is remembered too: a retried unlink of a missing name stays
    // NotFound even after the name appears.
    let unlink = || request(3, 1, ops::Unlink { parent: ROOT, name: "f".into() });
    assert_eq!(store.run(unlink()).await, Err(FsError::NotFound));
    attr(&store, mknod(ROOT, "f")).await;
    assert_eq!(store.run(unlink()).await, Err(FsError::NotFound));
    assert!(store.lookup(ROOT, "f").is_ok(), "the retry did not unlink the new file");
}

#[tokio::test]
async fn answers_are_forgotten_once_the_client_has_them_or_after_a_while() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    for seq in 1..=31 {
        store.run(request(seq, 1, mkdir_op(&format!("d{seq}")))).await.expect("mkdir");
    }
    assert_eq!(remembered(&store), 31);
    // The client has the answers of 1..=29: at the 32nd request (they are
    // forgotten in batches) only 30, 31 and 32 stay.
    store.run(request(32, 30, mkdir_op("d32"))).await.expect("mkdir");
    assert_eq!(remembered(&store), 3);
    // A session that went away: forgotten after the cutoff.
    let cmd = Command::ForgetRequests { before: Timestamp::now() };
    store.execute(cmd).await.expect("forget");
    assert_eq!(remembered(&store), 0);
}

#[tokio::test]
async fn remembered_answers_survive_a_crash_through_the_log() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    let first = store.run(request(1, 1, mkdir_op("d"))).await.expect("mkdir");
    let crashed = crash_copy(tmp.path());
    drop(store);
    let store = open_ok(crashed.path(), None);
    assert_eq!(
        store.run(request(1, 1, mkdir_op("d"))).await.map(|a| a.value),
        Ok(first.value),
        "the log kept the answer"
    );
    assert_eq!(store.inode(ROOT).expect("root").nlink, 3);
}

/// A master data directory written by the previous format (database
/// format 1, protocol 5: commit bb9ccea's stripefs up), left by a
/// `kill -9` with changes still in the journal: `d/` with `a` (64 KiB),
/// `b` renamed to `c`, and `gone` unlinked.
const FORMAT1_FIXTURE: &[u8] = include_bytes!("../tests/fixtures/master-format1-killed.tar.gz");

#[tokio::test]
async fn a_data_directory_of_the_previous_format_still_opens() {
    let tmp = TempDir::new().expect("temp dir");
    let tar = tmp.path().join("fixture.tar.gz");
    std::fs::write(&tar, FORMAT1_FIXTURE).expect("write the fixture");
    let out = std::process::Command::new("tar").arg("xzf").arg(&tar).arg("-C").arg(tmp.path()).output().expect("tar");
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    let dir = tmp.path().join("master");
    {
        let db = Database::open(dir.join(DB_FILE)).expect("open the fixture");
        let seq = stored_seq(&db).expect("stored sequence number");
        let pending = crate::journal::pending(&dir, seq).expect("journal");
        assert!(!pending.is_empty(), "the fixture should hold journaled changes to replay");
    }
    {
        let db = Database::open(dir.join(DB_FILE)).expect("open the fixture");
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(tables::META).expect("meta");
        let v = meta.get(meta_keys::FORMAT_VERSION).expect("get").expect("version");
        assert_eq!(v.value(), 1u32.to_le_bytes().as_slice(), "the fixture is of format 1");
    }
    let store = open_ok(&dir, None);
    let (d, _) = store.lookup(ROOT, "d").expect("d");
    let names: Vec<String> = store.readdir(d, None, 100).expect("readdir").into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(store.lookup(d, "a").expect("a").1.size, 65536);
    // Upgraded: the new table is there and requests work; the journal
    // was applied and is gone (the group's log replaced it).
    store.run(request(1, 1, mkdir_op("new"))).await.expect("mkdir on the upgraded database");
    assert!(!dir.join(JOURNAL_FILE).exists(), "the journal is gone");
    drop(store);
    assert_eq!(unapplied(&dir), 0);
    let store = open_ok(&dir, None);
    assert!(store.lookup(ROOT, "new").is_ok() && store.lookup(d, "c").is_ok(), "kept across a restart");
    drop(store);
    let db = Database::open(dir.join(DB_FILE)).expect("open");
    let txn = db.begin_read().expect("read");
    assert_eq!(tables::check_format(&txn).expect("format"), tables::Format::Ours { chunk_size: Some(4 << 20) });
    let meta = txn.open_table(tables::META).expect("meta");
    let v = meta.get(meta_keys::FORMAT_VERSION).expect("get").expect("version");
    assert_eq!(v.value(), FORMAT_VERSION.to_le_bytes().as_slice());
}

#[tokio::test]
async fn an_unlinked_file_nobody_holds_is_freed_at_once() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    let f = attr(&store, mknod(ROOT, "f")).await;
    assert_eq!(store.inode_count(), Ok(2));
    store
        .execute(Command::Unlink { op: ops::Unlink { parent: ROOT, name: "f".into() }, now: Timestamp::now() })
        .await
        .expect("unlink");
    assert_eq!(store.inode_count(), Ok(1));
    assert!(store.inode(f.ino).is_err());
    assert_eq!(store.orphans(), Ok(vec![]));
}

/// A request of session `session`.
fn session_request<O>(session: u64, seq: u64, op: O) -> ops::Request<O> {
    ops::Request { id: ops::RequestId { session, seq }, answered_below: 1, op, replay: None }
}

fn mknod_op(parent: InodeId, name: &str) -> ops::Mknod {
    ops::Mknod { parent, name: name.into(), kind: FileKind::File, perm: 0o644, owner: OWNER, rdev: 0 }
}

/// The names of `dir`, sorted, with their inodes.
fn listing(store: &Store, dir: InodeId) -> Vec<(String, InodeId)> {
    let mut v: Vec<(String, InodeId)> =
        store.readdir(dir, None, 1000).expect("readdir").into_iter().map(|e| (e.name, e.attr.ino)).collect();
    v.sort();
    v
}

/// A power cut after a master alone in its group answered changes early:
/// none of them reached its disk (the copy is taken before them). The
/// restarted master waits for both registered sessions; their replays, in
/// order, bring back every change with the inode numbers the clients know,
/// and a replay of a change that did survive is answered from memory.
#[tokio::test]
async fn changes_answered_early_and_lost_in_a_power_cut_come_back_by_replay() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    assert!(store.group.log.is_early(), "a master alone answers early");
    let (s1, s2) = (0x51, 0x52);
    for s in [s1, s2] {
        let info = store.open_session(s, format!("host-{s:x}")).await.expect("register");
        assert!(!info.replay);
    }
    let a = store.run(session_request(s1, 1, mkdir_op("a"))).await.expect("mkdir a").value.ino;
    let b = store.run(session_request(s2, 1, mkdir_op("b"))).await.expect("mkdir b").value.ino;
    store.sync().await.expect("sync");
    // The disk as a power cut would leave it: nothing after this point.
    let cut = crash_copy(tmp.path());
    // Session 1 in a/, session 2 in b/: interleaved, as two clients do.
    let mut held: Vec<(u64, u64, ops::Request<ops::Mknod>)> = Vec::new();
    for i in 0..5u64 {
        for (s, dir) in [(s1, a), (s2, b)] {
            let req = session_request(s, 2 + i, mknod_op(dir, &format!("f{i}")));
            let done = store.run(req.clone()).await.expect("create");
            held.push((
                s,
                done.durability.at,
                ops::Request { replay: Some(ops::Replay { ino: Some(done.value.ino) }), ..req },
            ));
        }
    }
    let rename = session_request(
        s1,
        10,
        ops::Rename { parent: a, name: "f0".into(), new_parent: a, new_name: "g0".into(), flags: 0 },
    );
    let renamed_at = store.run(rename.clone()).await.expect("rename").durability.at;
    let unlink = session_request(s2, 10, ops::Unlink { parent: b, name: "f1".into() });
    let unlinked_at = store.run(unlink.clone()).await.expect("unlink").durability.at;
    let (want_a, want_b) = (listing(&store, a), listing(&store, b));
    drop(store);

    let store = open_ok(cut.path(), None);
    assert!(!store.sessions.is_serving(), "after a crash the master waits for its sessions");
    assert!(listing(&store, a).is_empty(), "the cut lost the creates");
    // Session 2 comes back first: the order of sessions does not matter.
    for s in [s2, s1] {
        let info = store.open_session(s, "again".into()).await.expect("register again");
        assert!(info.replay, "session {s:x} is awaited");
        let mut mine: Vec<&(u64, u64, ops::Request<ops::Mknod>)> = held.iter().filter(|h| h.0 == s).collect();
        mine.sort_by_key(|h| h.1);
        for (_, _, req) in mine {
            let done = store.run(req.clone()).await.expect("replayed create");
            assert_eq!(Some(done.value.ino), req.replay.and_then(|r| r.ino), "the replay kept the inode number");
        }
        let replay = Some(ops::Replay { ino: None });
        if s == s1 {
            let _ = renamed_at;
            store.run(ops::Request { replay, ..rename.clone() }).await.expect("replayed rename");
        } else {
            let _ = unlinked_at;
            store.run(ops::Request { replay, ..unlink.clone() }).await.expect("replayed unlink");
        }
        store.session_replayed(s);
    }
    assert!(store.sessions.is_serving(), "every session replayed: serving");
    assert_eq!(listing(&store, a), want_a);
    assert_eq!(listing(&store, b), want_b);
    // A replay of a change that survived the cut is answered, not applied again.
    let again =
        store.run(ops::Request { replay: Some(ops::Replay { ino: None }), ..session_request(s1, 1, mkdir_op("a")) });
    assert_eq!(again.await.expect("mkdir a again").value.ino, a);
    // New inode numbers continue above every replayed one.
    let next = store.run(session_request(s1, 20, mknod_op(a, "new"))).await.expect("create").value.ino;
    assert!(held.iter().all(|h| h.2.replay.and_then(|r| r.ino).is_some_and(|i| i < next)));
}

/// A session that does not come back within the replay window is
/// forgotten, and the master serves; a clean stop needs no window.
#[tokio::test]
async fn the_replay_window_ends_without_the_sessions_that_died() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    store.open_session(7, "gone".into()).await.expect("register");
    let cut = crash_copy(tmp.path());
    drop(store);
    // Stopped cleanly: the session is known, but there is nothing to wait for.
    let store = open_ok(tmp.path(), None);
    assert!(store.sessions.is_serving(), "a clean stop leaves nothing to replay");
    drop(store);
    let store = open_ok(cut.path(), None);
    assert!(!store.sessions.is_serving());
    store.end_replay_window(std::time::Duration::from_millis(50)).await;
    assert!(store.sessions.is_serving());
    assert!(registered_sessions(&store.db).expect("sessions").is_empty(), "the dead session is forgotten");
}

/// A session's changes are answered before they are durable only once it
/// registered; an unregistered caller's answer says its change is durable.
#[tokio::test]
async fn only_registered_sessions_are_answered_early() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    for i in 0..20 {
        let d = store.run(session_request(9, i + 1, mkdir_op(&format!("u{i}")))).await.expect("mkdir").durability;
        assert!(d.is_durable(), "an unregistered session's answer is durable: {d:?}");
    }
    store.open_session(10, "h".into()).await.expect("register");
    let mut early = 0;
    for i in 0..20 {
        let d = store.run(session_request(10, i + 1, mkdir_op(&format!("r{i}")))).await.expect("mkdir").durability;
        assert_eq!(d.incarnation, store.incarnation());
        if store.group.log.was_early(d.at) {
            early += 1;
        }
    }
    assert_eq!(early, 20, "every change of a registered session went out before its flush");
    let d = store.sync().await.expect("sync");
    assert!(d.durable >= d.at, "sync returns once everything is durable: {d:?}");
}

/// Another session's change of names, and a replay late for its window
/// too, waits for the holder of the directory's lease to give it back;
/// only a registered session gets a lease.
#[tokio::test]
async fn changes_of_names_take_other_sessions_leases_back_first_replays_too() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    let (a, b) = (0x61, 0x62);
    assert!(store.lease_dir(a, InodeId::ROOT).expect("ask").is_none(), "not registered: no lease");
    store.open_session(a, "host-a".into()).await.expect("register a");
    store.open_session(b, "host-b".into()).await.expect("register b");
    let d1 = store.run(session_request(a, 1, mkdir_op("d1"))).await.expect("mkdir").value.ino;
    let d2 = store.run(session_request(a, 2, mkdir_op("d2"))).await.expect("mkdir").value.ino;
    store.run(session_request(a, 3, mknod_op(d2, "mine"))).await.expect("mknod");
    let g1 = store.lease_dir(a, d1).expect("ask").expect("granted");
    let g2 = store.lease_dir(a, d2).expect("ask").expect("granted");
    assert!(g1.names.is_empty());
    assert_eq!(g2.names, ["mine"]);
    assert!(store.lease_dir(b, d1).expect("ask").is_none(), "held by another session");
    let replay = Some(ops::Replay { ino: None });
    for (seq, dir, grant, replay) in [(1, d1, &g1, None), (2, d2, &g2, replay)] {
        let started = std::time::Instant::now();
        let change = store.run(ops::Request { replay, ..session_request(b, seq, mknod_op(dir, "theirs")) });
        let holder = async {
            // The holder's poll brings the recall; its next gives it back.
            let polled = store.lease_poll(a, vec![(dir, grant.id)], vec![]).await;
            store.lease_poll(a, vec![], polled.recalled.clone()).await;
            polled.recalled
        };
        let (done, recalled) = tokio::join!(change, holder);
        done.expect("B's change");
        assert_eq!(recalled, vec![(dir, grant.id)], "replay {:?}: the lease was recalled", replay.is_some());
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "went ahead once given back, not at expiry");
        assert_eq!(store.leases().count(), if seq == 1 { 1 } else { 0 });
    }
}

/// Taking the lead lists the client sessions through the gate, never
/// beside a commit (redb 4.6 trips over a read that races a commit: a
/// debug assertion in `free_helper`, which stopped a master in a test run).
#[test]
fn taking_the_lead_reads_the_sessions_through_the_gate() {
    let tmp = TempDir::new().expect("temp dir");
    let store = open_ok(tmp.path(), None);
    let commit = store.gate.write().expect("as a commit holds it");
    std::thread::scope(|s| {
        let lead = s.spawn(|| store.set_serving(true));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!lead.is_finished(), "the sessions were read while a commit ran");
        drop(commit);
        lead.join().expect("set_serving");
    });
}
