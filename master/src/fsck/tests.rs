//! Tests of fsck: filesystems built with commands, then damaged by writing
//! the tables with redb directly; the report must list exactly the damage,
//! a repair must leave a filesystem that checks clean, and every repair
//! command must refuse, writing nothing, when the state is not what the
//! scan saw.

use super::*;
use crate::namespace::{apply, ApplyError, Context, FsckOp, InodeField, MetaCounter, Tables, LOST_FOUND};
use crate::records::{ChunkRecord, InodeRecord};
use crate::store::DB_FILE;
use crate::tables::meta_keys;
use redb::{Database, ReadableTable};
use stripefs_proto::ops;
use stripefs_proto::types::{FileKind, FsckCounts, Timestamp};
use stripefs_proto::InodeId;
use tempfile::TempDir;

use crate::test_util::{commit, exec, mkdir, mknod, open_store, CHUNK};
use FsckProblemKind as P;

const ROOT: InodeId = InodeId::ROOT;
const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);

/// A small, healthy filesystem: `/a/b/`, `/f` (one chunk, hard-linked as
/// `/a/b/link`), `/a/g` (two chunks), `/c/`; every chunk on nodes 1 and 2.
struct Clean {
    // Field order is drop order: nothing holds the directory open by then.
    dir: TempDir,
    a: InodeId,
    b: InodeId,
    c: InodeId,
    f: InodeId,
    g: InodeId,
}

impl Clean {
    async fn new() -> Clean {
        let dir = TempDir::new().expect("temp dir");
        let store = open_store(dir.path());
        let a = mkdir(&store, ROOT, "a").await;
        let b = mkdir(&store, a, "b").await;
        let c = mkdir(&store, ROOT, "c").await;
        let f = mknod(&store, ROOT, "f").await;
        exec(
            &store,
            Command::Link { op: ops::Link { ino: f, new_parent: b, new_name: "link".into() }, now: Timestamp::now() },
        )
        .await;
        let g = mknod(&store, a, "g").await;
        commit(&store, f, 0, 100, 1000, 1000, &[N1, N2]).await;
        commit(&store, g, 0, 101, 1001, CHUNK, &[N1, N2]).await;
        commit(&store, g, 1, 102, 1002, 10, &[N2, N1]).await;
        drop(store);
        Clean { dir, a, b, c, f, g }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join(DB_FILE)
    }

    /// Changes the tables directly, as a bug or a bad disk would.
    fn damage(&self, f: impl FnOnce(&mut Tables)) {
        let db = Database::open(self.db()).expect("open the database");
        let txn = db.begin_write().expect("write transaction");
        {
            let mut t = Tables::open(&txn).expect("tables");
            f(&mut t);
        }
        txn.commit().expect("commit");
    }

    fn offline(&self) -> FsckReport {
        offline(&self.db(), &|_, _| {}).expect("offline fsck")
    }

    /// Runs the online check (and repair) on a store over the database.
    async fn online(&self, view: NodeView, repair: bool) -> FsckReport {
        let store = Arc::new(open_store(self.dir.path()));
        let r = run(store.clone(), view, repair).await.expect("online fsck");
        drop(store);
        r
    }
}

fn inode(t: &Tables, ino: InodeId) -> InodeRecord {
    InodeRecord::decode(t.inodes.get(ino.0).expect("get").expect("inode exists").value()).expect("decode")
}

fn edit_inode(t: &mut Tables, ino: InodeId, f: impl FnOnce(&mut InodeRecord)) {
    let mut r = inode(t, ino);
    f(&mut r);
    t.inodes.insert(ino.0, r.encode().as_slice()).expect("insert");
}

fn meta(t: &Tables, key: &str) -> u64 {
    u64::from_le_bytes(t.meta.get(key).expect("get").expect("meta key").value().try_into().expect("8 bytes"))
}

fn set_meta(t: &mut Tables, key: &str, v: u64) {
    t.meta.insert(key, v.to_le_bytes().as_slice()).expect("insert");
}

/// Nodes 1 and 2 alive, no inventory.
fn healthy_view() -> NodeView {
    NodeView { nodes: vec![(N1, true), (N2, true)], ..NodeView::default() }
}

/// Asserts that the report lists exactly `want`, in any order.
fn assert_problems(r: &FsckReport, want: &[P]) {
    let mut got: Vec<String> = r.problems.iter().map(|p| format!("{:?}", p.kind)).collect();
    let mut want: Vec<String> = want.iter().map(|p| format!("{p:?}")).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "problems listed (left) are not the expected ones (right); report: {r:#?}");
    assert_eq!(r.problem_count, r.problems.len() as u64);
}

fn assert_all(r: &FsckReport, outcome: FsckOutcome) {
    for p in &r.problems {
        assert_eq!(p.outcome, outcome, "{p:?}");
    }
}

fn outcome_of(r: &FsckReport, pred: impl Fn(&P) -> bool) -> FsckOutcome {
    let found: Vec<&FsckProblem> = r.problems.iter().filter(|p| pred(&p.kind)).collect();
    assert_eq!(found.len(), 1, "want one such problem in {r:#?}");
    found[0].outcome
}

#[tokio::test]
async fn a_clean_filesystem_reports_nothing() {
    let fs = Clean::new().await;
    let r = fs.offline();
    assert_problems(&r, &[]);
    assert!(r.is_clean() && !r.online && !r.repair);
    assert_eq!(
        r.counts,
        FsckCounts {
            inodes: 6,
            directories: 4,
            files: 2,
            entries: 6,
            chunks: 3,
            replicas: 6,
            file_bytes: 1000 + CHUNK as u64 + 10,
            ..FsckCounts::default()
        }
    );
    assert!(r.notes.iter().any(|n| n.contains("offline")), "{:?}", r.notes);
    let r = fs.online(healthy_view(), false).await;
    assert_problems(&r, &[]);
    assert_eq!((r.counts.nodes, r.counts.nodes_alive), (2, 2));
    assert!(
        r.notes.iter().any(|n| n.contains("inventory")),
        "the missing inventories are not mentioned: {:?}",
        r.notes
    );
    // A repair of a clean filesystem changes nothing.
    let r = fs.online(healthy_view(), true).await;
    assert_problems(&r, &[]);
    assert_eq!((r.corrected, r.uncorrected), (0, 0));
}

#[tokio::test]
async fn the_issue_damage_is_listed_exactly_and_repaired() {
    let fs = Clean::new().await;
    let count = std::cell::Cell::new(0);
    fs.damage(|t| {
        // A dangling entry.
        t.dir_entries.insert((ROOT.0, "ghost"), 999_999).expect("insert");
        // A wrong link count.
        edit_inode(t, fs.f, |r| r.nlink = 5);
        // A detached file: its only name is gone.
        t.dir_entries.remove((fs.a.0, "g")).expect("remove");
        // A chunk past the end of its file (the file's chunk 0 holds 1000 bytes).
        edit_inode(t, fs.f, |r| r.size = 500);
        // A wrong inode count.
        count.set(meta(t, meta_keys::INODE_COUNT));
        set_meta(t, meta_keys::INODE_COUNT, count.get() + 3);
    });
    let want = [
        P::DanglingEntry { dir: ROOT, name: "ghost".into(), child: InodeId(999_999) },
        P::WrongNlink { ino: fs.f, kind: FileKind::File, stored: 5, counted: 2 },
        P::Detached { ino: fs.g, kind: FileKind::File },
        P::ChunkPastEof { ino: fs.f, index: 0, chunk: ChunkId(100), end: 1000, size: 500 },
        P::WrongInodeCount { stored: count.get() + 3, counted: count.get() },
    ];
    let r = fs.offline();
    assert_problems(&r, &want);
    assert_all(&r, FsckOutcome::Found);
    assert_eq!((r.corrected, r.uncorrected), (0, 5));

    let r = fs.online(healthy_view(), false).await;
    assert_problems(&r, &want);
    let r = fs.online(healthy_view(), true).await;
    assert_problems(&r, &want);
    assert_all(&r, FsckOutcome::Repaired);
    assert_eq!((r.corrected, r.uncorrected), (5, 0));

    assert_problems(&fs.offline(), &[]);
    let store = open_store(fs.dir.path());
    let (lf, lf_rec) = store.lookup(ROOT, LOST_FOUND).expect("lost+found was made");
    assert_eq!((lf_rec.kind, lf_rec.perm, lf_rec.uid, lf_rec.gid, lf_rec.nlink), (FileKind::Dir, 0o700, 0, 0, 2));
    let (g, g_rec) = store.lookup(lf, &format!("#{}", fs.g.0)).expect("the detached file is in lost+found");
    assert_eq!((g, g_rec.nlink, g_rec.size), (fs.g, 1, CHUNK as u64 + 10));
    assert_eq!(store.lookup(ROOT, "ghost").map(|_| ()), Err(FsError::NotFound));
    let f = store.inode(fs.f).expect("f");
    assert_eq!((f.nlink, f.size), (2, 1000));
    assert_eq!(store.inode_count().expect("count"), count.get() + 1, "lost+found is one more inode");
}

#[tokio::test]
async fn directory_orphan_chunk_and_counter_damage_is_repaired() {
    let fs = Clean::new().await;
    // More structure to break: /d/e (to become a loop), /z/q (to detach).
    let (d, e, z, q, h, next) = {
        let store = open_store(fs.dir.path());
        let d = mkdir(&store, ROOT, "d").await;
        let e = mkdir(&store, d, "e").await;
        let z = mkdir(&store, ROOT, "z").await;
        let q = mknod(&store, z, "q").await;
        let h = mknod(&store, fs.c, "h").await;
        // h is the newest inode.
        (d, e, z, q, h, h.0 + 1)
    };
    let root_nlink = std::cell::Cell::new(0);
    fs.damage(|t| {
        // A second name of /a/b, in the root.
        t.dir_entries.insert((ROOT.0, "b2"), fs.b.0).expect("insert");
        // /c's parent field points elsewhere.
        edit_inode(t, fs.c, |r| r.parent = fs.a.0);
        // /d and /d/e name each other, cut off from the root.
        t.dir_entries.remove((ROOT.0, "d")).expect("remove");
        t.dir_entries.insert((e.0, "loop"), d.0).expect("insert");
        edit_inode(t, d, |r| r.parent = e.0);
        // /z loses its name (the root's link count is kept right).
        t.dir_entries.remove((ROOT.0, "z")).expect("remove");
        edit_inode(t, ROOT, |r| r.nlink -= 1);
        root_nlink.set(inode(t, ROOT).nlink);
        // An entry filed under a regular file.
        t.dir_entries.insert((fs.f.0, "x"), fs.g.0).expect("insert");
        // Orphan rows: one for a file that has a name, one for nothing.
        t.orphans.insert(h.0, ()).expect("insert");
        t.orphans.insert(777_777, ()).expect("insert");
        // Chunks of no file, and of a directory.
        let rec = ChunkRecord {
            chunk: ChunkId(500),
            version: Version(5000),
            length: 10,
            stored_bytes: 10,
            replicas: vec![N1],
        };
        t.chunks.insert((888_888, 0), rec.encode().as_slice()).expect("insert");
        let rec = ChunkRecord { chunk: ChunkId(501), ..rec };
        t.chunks.insert((fs.a.0, 3), rec.encode().as_slice()).expect("insert");
        // Wrong allocated bytes, and a next inode number already in use.
        edit_inode(t, fs.g, |r| r.allocated = 5);
        set_meta(t, meta_keys::NEXT_INODE, next - 1);
    });
    let want = [
        P::ExtraDirName { dir: ROOT, name: "b2".into(), child: fs.b },
        P::WrongParent { ino: fs.c, stored: fs.a, dir: ROOT },
        P::DirCycle { ino: d, dir: e, name: "loop".into() },
        // The root lost /d; /e gained it.
        P::WrongNlink { ino: ROOT, kind: FileKind::Dir, stored: root_nlink.get(), counted: root_nlink.get() - 1 },
        P::WrongNlink { ino: e, kind: FileKind::Dir, stored: 2, counted: 3 },
        P::Detached { ino: z, kind: FileKind::Dir },
        P::EntryOutsideDir { dir: fs.f, name: "x".into(), child: fs.g },
        P::LinkedOrphan { ino: h },
        P::StaleOrphan { ino: InodeId(777_777) },
        P::ChunkWithoutFile { ino: InodeId(888_888), index: 0, chunk: ChunkId(500), version: Version(5000) },
        P::ChunkWithoutFile { ino: fs.a, index: 3, chunk: ChunkId(501), version: Version(5000) },
        P::WrongAllocated { ino: fs.g, stored: 5, counted: CHUNK as u64 + 10 },
        P::NextInodeTooLow { next_inode: next - 1, max_inode: next - 1 },
    ];
    assert_problems(&fs.offline(), &want);
    let r = fs.online(healthy_view(), true).await;
    assert_problems(&r, &want);
    assert_all(&r, FsckOutcome::Repaired);
    assert_problems(&fs.offline(), &[]);

    let store = open_store(fs.dir.path());
    let (lf, lf_rec) = store.lookup(ROOT, LOST_FOUND).expect("lost+found");
    assert_eq!(lf_rec.nlink, 4, "lost+found holds two directories");
    assert_eq!(store.lookup(lf, &format!("#{}", d.0)).expect("d").0, d);
    assert_eq!(store.lookup(lf, &format!("#{}", z.0)).expect("z").0, z);
    assert_eq!(store.lookup(z, "q").expect("z keeps its content").0, q);
    assert_eq!(store.inode(d).expect("d").parent, lf.0);
    assert_eq!(store.lookup(d, "e").expect("e stays in d").0, e);
    assert_eq!(store.lookup(e, "loop").map(|_| ()), Err(FsError::NotFound));
    assert_eq!(store.lookup(ROOT, "b2").map(|_| ()), Err(FsError::NotFound));
    assert_eq!(store.lookup(fs.a, "b").expect("b keeps its name").0, fs.b);
    assert!(!store.is_orphan(h).expect("orphans"));
    assert!(store.chunks(InodeId(888_888), 0, 10).expect("chunks").is_empty());
    // The replicas of the dropped chunks are queued for deletion.
    let txn = store.read().expect("read");
    let del = txn.open_table(tables::DELETIONS).expect("deletions");
    assert!(del.get((N1.0, 500, 5000)).expect("get").is_some());
    assert!(del.get((N1.0, 501, 5000)).expect("get").is_some());
}

#[tokio::test]
async fn data_checks_use_liveness_inventories_and_corrupt_replicas() {
    let fs = Clean::new().await;
    let (x, y) = {
        let store = open_store(fs.dir.path());
        let x = mknod(&store, ROOT, "x").await;
        let y = mknod(&store, ROOT, "y").await;
        // x: chunk 0 on nodes 1 and 3 (3 is dead); chunk 1 on node 3 only.
        commit(&store, x, 0, 200, 2000, CHUNK, &[N1, N3]).await;
        commit(&store, x, 1, 201, 2001, 10, &[N3]).await;
        // y: rewritten: version 2002 on node 1 is queued for deletion.
        commit(&store, y, 0, 202, 2002, 10, &[N1]).await;
        commit(&store, y, 0, 202, 2003, 10, &[N1, N2]).await;
        (x, y)
    };
    let mut view = NodeView { nodes: vec![(N1, true), (N2, true), (N3, false)], ..NodeView::default() };
    // Node 2's replica of /f's chunk is corrupt.
    view.corrupt.insert((N2, ChunkId(100), Version(1000)));
    view.inventories.insert(
        N1,
        vec![
            (ChunkId(100), Version(1000)),
            (ChunkId(100), Version(900)),  // older than current: stale
            (ChunkId(100), Version(1100)), // newer: maybe an upload
            (ChunkId(202), Version(2002)), // queued for deletion already
            (ChunkId(404), Version(7)),    // nobody's
        ],
    );
    view.inventories.insert(N2, vec![]);
    // The corrupt replica explains /f's shortfall by itself: no
    // under-replicated entry for it.
    let want = [
        P::CorruptReplica { node: N2, ino: fs.f, index: 0, chunk: ChunkId(100), version: Version(1000) },
        P::UnderReplicated { ino: x, index: 0, chunk: ChunkId(200), version: Version(2000), live: 1, want: 2 },
        P::MissingChunk { ino: x, index: 1, chunk: ChunkId(201), version: Version(2001) },
        P::StaleReplica {
            node: N1,
            chunk: ChunkId(100),
            version: Version(900),
            current: Version(1000),
            ino: fs.f,
            index: 0,
        },
    ];
    // Not problems: replicas garbage collection will delete.
    let garbage = [
        P::StaleReplica {
            node: N1,
            chunk: ChunkId(100),
            version: Version(1100),
            current: Version(1000),
            ino: fs.f,
            index: 0,
        },
        P::UnreferencedReplica { node: N1, chunk: ChunkId(404), version: Version(7) },
    ];
    let r = fs.online(view.clone(), false).await;
    assert_problems(&r, &want);
    assert_eq!(r.garbage, garbage);
    assert_eq!(r.garbage_count, 2);
    assert!(r.notes.iter().any(|n| n.contains("2 replica(s) await garbage collection")), "{:?}", r.notes);
    assert_eq!(r.counts.inventories, 2);
    assert!(!r.notes.iter().any(|n| n.contains("not reported")), "{:?}", r.notes);
    assert!(r.notes.iter().any(|n| n.contains("node(s) 3 are not alive")), "{:?}", r.notes);

    let r = fs.online(view.clone(), true).await;
    assert_problems(&r, &want);
    use FsckOutcome as O;
    assert_eq!(outcome_of(&r, |k| matches!(k, P::CorruptReplica { .. })), O::Repaired);
    assert_eq!(outcome_of(&r, |k| matches!(k, P::MissingChunk { .. })), O::NotRepairable);
    assert_eq!(outcome_of(&r, |k| matches!(k, P::StaleReplica { version: Version(900), .. })), O::Repaired);
    assert_eq!(outcome_of(&r, |k| matches!(k, P::UnderReplicated { chunk: ChunkId(200), .. })), O::Queued);
    assert_eq!((r.corrected, r.uncorrected), (2, 2));
    assert_eq!(r.garbage, garbage);
    assert!(r.notes.iter().any(|n| n.contains("re-replication")), "{:?}", r.notes);

    let store = open_store(fs.dir.path());
    let f0 = store.chunks(fs.f, 0, 1).expect("chunks");
    assert_eq!(f0[0].1.replicas, vec![N1], "the corrupt replica is forgotten");
    let txn = store.read().expect("read");
    let del = txn.open_table(tables::DELETIONS).expect("deletions");
    assert!(del.get((N1.0, 100, 900)).expect("get").is_some(), "the stale replica is queued for deletion");
    assert!(del.get((N2.0, 100, 1000)).expect("get").is_some(), "the corrupt replica is queued for deletion");
    assert!(del.get((N1.0, 100, 1100)).expect("get").is_none(), "a newer version is not deleted");
    assert!(del.get((N1.0, 404, 7)).expect("get").is_none(), "an unreferenced replica is not deleted");
    let _ = y;
}

#[tokio::test]
async fn offline_lists_chunks_without_replicas_and_refuses_a_busy_or_foreign_file() {
    let fs = Clean::new().await;
    fs.damage(|t| {
        let key = (fs.g.0, 1);
        let mut rec = ChunkRecord::decode(t.chunks.get(key).expect("get").expect("chunk").value()).expect("decode");
        rec.replicas.clear();
        t.chunks.insert(key, rec.encode().as_slice()).expect("insert");
    });
    let r = fs.offline();
    assert_problems(&r, &[P::MissingChunk { ino: fs.g, index: 1, chunk: ChunkId(102), version: Version(1002) }]);

    let store = open_store(fs.dir.path());
    match offline(&fs.db(), &|_, _| {}) {
        Err(OfflineError::InUse { .. }) => {}
        other => panic!("the database is open in a store, yet offline fsck gave {other:?}"),
    }
    drop(store);

    let other = TempDir::new().expect("temp dir");
    let path = other.path().join("x.redb");
    drop(Database::create(&path).expect("create"));
    match offline(&path, &|_, _| {}) {
        Err(e @ OfflineError::NotOurs { .. }) => assert!(e.to_string().contains("not a stripefs")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(offline(&other.path().join("none"), &|_, _| {}), Err(OfflineError::Open { .. })));
}

/// Applies `op` to the tables of the clean filesystem and expects a
/// refusal that writes nothing.
fn must_refuse(fs: &Clean, op: FsckOp, want: FsError) {
    let db = Database::open(fs.db()).expect("open");
    let txn = db.begin_write().expect("write");
    {
        let mut t = Tables::open(&txn).expect("tables");
        let before = dump(&t);
        let ctx = Context { chunk_size: CHUNK as u64, is_open: &|_| false };
        match apply(&mut t, &Command::Fsck(op.clone()), &ctx) {
            Err(ApplyError::Fs(e)) => assert_eq!(e, want, "{op:?}"),
            other => panic!("{op:?} should be refused with {want:?}, got {other:?}"),
        }
        assert_eq!(dump(&t), before, "{op:?} was refused but wrote");
    }
    txn.abort().expect("abort");
}

/// Every row of every table, as text.
fn dump(t: &Tables) -> Vec<String> {
    let mut out = Vec::new();
    for r in t.meta.iter().expect("iter") {
        let (k, v) = r.expect("row");
        out.push(format!("meta {} {:?}", k.value(), v.value()));
    }
    for r in t.inodes.iter().expect("iter") {
        let (k, v) = r.expect("row");
        out.push(format!("inode {} {:?}", k.value(), v.value()));
    }
    for r in t.dir_entries.iter().expect("iter") {
        let (k, v) = r.expect("row");
        out.push(format!("entry {:?} {}", k.value(), v.value()));
    }
    for r in t.chunks.iter().expect("iter") {
        let (k, v) = r.expect("row");
        out.push(format!("chunk {:?} {:?}", k.value(), v.value()));
    }
    for r in t.orphans.iter().expect("iter") {
        out.push(format!("orphan {}", r.expect("row").0.value()));
    }
    for r in t.deletions.iter().expect("iter") {
        out.push(format!("deletion {:?}", r.expect("row").0.value()));
    }
    out
}

#[tokio::test]
async fn repair_commands_check_before_they_write() {
    let fs = Clean::new().await;
    let now = Timestamp::now();
    let stale = FsError::Stale;
    // RemoveEntry: only wrong entries, only as seen.
    must_refuse(&fs, FsckOp::RemoveEntry { dir: ROOT, name: "f".into(), child: fs.f }, stale);
    must_refuse(&fs, FsckOp::RemoveEntry { dir: ROOT, name: "f".into(), child: fs.g }, stale);
    must_refuse(&fs, FsckOp::RemoveEntry { dir: fs.a, name: "b".into(), child: fs.b }, stale);
    must_refuse(&fs, FsckOp::RemoveEntry { dir: ROOT, name: "none".into(), child: fs.f }, stale);
    // SetInode: compare and set.
    let set = |ino, field, expect, value| FsckOp::SetInode { ino, field, expect, value };
    must_refuse(&fs, set(fs.f, InodeField::Nlink, 1, 7), stale);
    must_refuse(&fs, set(fs.f, InodeField::Size, 999, 7), stale);
    must_refuse(&fs, set(fs.a, InodeField::Size, 0, 7), FsError::InvalidArgument);
    must_refuse(&fs, set(fs.f, InodeField::Parent, 0, ROOT.0), FsError::NotDir);
    must_refuse(&fs, set(fs.b, InodeField::Parent, fs.a.0, fs.f.0), stale);
    must_refuse(&fs, set(InodeId(999_999), InodeField::Nlink, 1, 2), stale);
    // SetMeta: compare and set; the next inode number only goes up.
    must_refuse(&fs, FsckOp::SetMeta { counter: MetaCounter::InodeCount, expect: 99, value: 6 }, stale);
    must_refuse(&fs, FsckOp::SetMeta { counter: MetaCounter::NextInode, expect: 99, value: 100 }, stale);
    must_refuse(
        &fs,
        FsckOp::SetMeta { counter: MetaCounter::NextInode, expect: 99, value: 3 },
        FsError::InvalidArgument,
    );
    // ForgetOrphan: only a row that exists, of an inode gone or named.
    must_refuse(&fs, FsckOp::ForgetOrphan { ino: fs.f }, stale);
    // DropChunk: only chunks of no regular file, as seen.
    let drop_chunk =
        |ino, index, chunk, version| FsckOp::DropChunk { ino, index, chunk: ChunkId(chunk), version: Version(version) };
    must_refuse(&fs, drop_chunk(fs.f, 0, 100, 1000), stale);
    must_refuse(&fs, drop_chunk(fs.a, 0, 100, 1000), stale);
    // DeleteStaleReplica: only versions older than the current one.
    let stale_replica = |version| FsckOp::DeleteStaleReplica {
        node: N1,
        chunk: ChunkId(100),
        version: Version(version),
        ino: fs.f,
        index: 0,
    };
    must_refuse(&fs, stale_replica(1000), stale);
    must_refuse(&fs, stale_replica(1001), stale);
    let other_chunk =
        FsckOp::DeleteStaleReplica { node: N1, chunk: ChunkId(101), version: Version(1), ino: fs.f, index: 0 };
    must_refuse(&fs, other_chunk, stale);
    // DropCorruptReplica: a listed replica of the current version, never the last.
    let corrupt = |node, version| FsckOp::DropCorruptReplica {
        node,
        chunk: ChunkId(100),
        version: Version(version),
        ino: fs.f,
        index: 0,
    };
    must_refuse(&fs, corrupt(N3, 1000), stale);
    must_refuse(&fs, corrupt(N1, 999), stale);
    // Attach: never the root, never a named directory, never over a name.
    let attach = |ino| FsckOp::Attach { ino, detach: None, now };
    must_refuse(&fs, attach(ROOT), FsError::InvalidArgument);
    must_refuse(&fs, attach(fs.b), stale);
    must_refuse(&fs, attach(InodeId(999_999)), stale);
    must_refuse(&fs, FsckOp::Attach { ino: fs.b, detach: Some((ROOT, "b".into())), now }, stale);
    must_refuse(&fs, FsckOp::Attach { ino: fs.f, detach: Some((ROOT, "f".into())), now }, FsError::NotDir);

    fs.damage(|t| {
        // A single replica; an orphan with no link; lost+found as a file.
        let mut rec =
            ChunkRecord::decode(t.chunks.get((fs.g.0, 1)).expect("get").expect("chunk").value()).expect("decode");
        rec.replicas = vec![N2];
        t.chunks.insert((fs.g.0, 1), rec.encode().as_slice()).expect("insert");
        edit_inode(t, fs.g, |r| r.nlink = 0);
        t.dir_entries.remove((fs.a.0, "g")).expect("remove");
        t.orphans.insert(fs.g.0, ()).expect("insert");
        // A detached file, and a lost+found that is a regular file.
        let copy = inode(t, fs.f);
        t.inodes.insert(5000, copy.encode().as_slice()).expect("insert");
        t.dir_entries.insert((ROOT.0, LOST_FOUND), fs.f.0).expect("insert");
    });
    must_refuse(
        &fs,
        FsckOp::DropCorruptReplica { node: N2, chunk: ChunkId(102), version: Version(1002), ino: fs.g, index: 1 },
        FsError::Unavailable,
    );
    must_refuse(&fs, FsckOp::ForgetOrphan { ino: fs.g }, stale);
    must_refuse(&fs, attach(fs.g), stale);
    must_refuse(&fs, attach(InodeId(5000)), FsError::NotDir);
    fs.damage(|t| {
        // lost+found is a directory that already holds the name.
        t.dir_entries.insert((ROOT.0, LOST_FOUND), fs.c.0).expect("insert");
        t.dir_entries.insert((fs.c.0, "#5000"), fs.f.0).expect("insert");
    });
    must_refuse(&fs, attach(InodeId(5000)), FsError::Exists);
}

#[tokio::test]
async fn offline_fsck_refuses_a_database_whose_log_was_not_applied() {
    let fs = Clean::new().await;
    // A master that died: its last changes are only in the log.
    let crashed = TempDir::new().expect("temp dir");
    {
        let store = open_store(fs.dir.path());
        mkdir(&store, ROOT, "late").await;
        crate::test_util::copy_live(fs.dir.path(), crashed.path());
    }
    let e = offline(&crashed.path().join(DB_FILE), &|_, _| {}).expect_err("unapplied log");
    assert!(matches!(e, OfflineError::NotStoppedCleanly { .. }), "{e}");
    assert!(e.to_string().contains("start stripefs-master"), "{e}");
    // Starting the master applies it; then the offline check runs, and
    // finds the late directory.
    let store = open_store(crashed.path());
    assert!(store.lookup(ROOT, "late").is_ok());
    drop(store);
    let r = offline(&crashed.path().join(DB_FILE), &|_, _| {}).expect("offline fsck after the replay");
    assert_problems(&r, &[]);
    // A clean stop left nothing to apply either.
    assert_problems(&fs.offline(), &[]);
}
