//! Tests of the namespace commands. Most run through [`Store::execute`]
//! like the service does; the "a rejected command writes nothing" rule is
//! checked on [`apply`] directly, by comparing every table before and after.

use super::*;
use crate::store::Store;
use futures::future::join_all;
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use stripefs_proto::ops;
use stripefs_proto::types::TimeSet;
use stripefs_proto::types::{DataClass, Policy, SetAttr};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const CHUNK: u64 = 64 << 10;
const ROOT: InodeId = InodeId::ROOT;
use crate::test_util::OWNER;
const MISSING: InodeId = InodeId(999_999);

/// A time well after the root's creation time, so updates are visible.
fn at(secs: i64) -> Timestamp {
    Timestamp { secs: 4_000_000_000 + secs, nanos: 7 }
}

/// A store on a temporary directory, with a controllable "is open" set.
struct Fs {
    // Field order is drop order: the store goes before its directory.
    store: Store,
    open: Arc<Mutex<HashSet<InodeId>>>,
    clock: AtomicI64,
    _dir: TempDir,
}

impl Fs {
    fn new() -> Fs {
        let dir = TempDir::new().expect("create a temp dir");
        let open: Arc<Mutex<HashSet<InodeId>>> = Arc::default();
        let is_open = {
            let open = open.clone();
            move |ino| open.lock().expect("open set lock").contains(&ino)
        };
        let store = Store::open(dir.path(), Some(CHUNK as u32), Box::new(is_open), CancellationToken::new())
            .expect("create a new filesystem in an empty dir");
        Fs { store, open, clock: AtomicI64::new(0), _dir: dir }
    }

    /// A fresh, strictly increasing time for each command.
    fn now(&self) -> Timestamp {
        at(self.clock.fetch_add(1, Ordering::Relaxed))
    }

    fn set_open(&self, ino: InodeId, open: bool) {
        let mut set = self.open.lock().expect("open set lock");
        if open {
            set.insert(ino);
        } else {
            set.remove(&ino);
        }
    }

    async fn run(&self, cmd: Command) -> Result<Reply, FsError> {
        self.store.execute(cmd).await
    }

    async fn attr(&self, cmd: Command) -> Result<Attr, FsError> {
        match self.run(cmd).await? {
            Reply::Attr(a) => Ok(a),
            other => panic!("expected attributes, got {other:?}"),
        }
    }

    async fn unit(&self, cmd: Command) -> Result<(), FsError> {
        match self.run(cmd).await? {
            Reply::Unit => Ok(()),
            other => panic!("expected no reply, got {other:?}"),
        }
    }

    async fn mkdir(&self, parent: InodeId, name: &str) -> Result<Attr, FsError> {
        self.attr(Command::Mkdir {
            op: ops::Mkdir { parent, name: name.into(), perm: 0o755, owner: OWNER },
            now: self.now(),
        })
        .await
    }

    async fn create(&self, parent: InodeId, name: &str) -> Result<Attr, FsError> {
        self.attr(crate::test_util::new_file(parent, name, self.now())).await
    }

    async fn symlink(&self, parent: InodeId, name: &str, target: &str) -> Result<Attr, FsError> {
        self.attr(Command::Symlink {
            op: ops::Symlink { parent, name: name.into(), target: target.into(), owner: OWNER },
            now: self.now(),
        })
        .await
    }

    async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &str) -> Result<Attr, FsError> {
        self.attr(Command::Link { op: ops::Link { ino, new_parent, new_name: new_name.into() }, now: self.now() }).await
    }

    async fn unlink(&self, parent: InodeId, name: &str) -> Result<(), FsError> {
        self.unit(Command::Unlink { op: ops::Unlink { parent, name: name.into() }, now: self.now() }).await
    }

    async fn rmdir(&self, parent: InodeId, name: &str) -> Result<(), FsError> {
        self.unit(Command::Rmdir { op: ops::Rmdir { parent, name: name.into() }, now: self.now() }).await
    }

    async fn rename(
        &self,
        parent: InodeId,
        name: &str,
        new_parent: InodeId,
        new_name: &str,
        flags: u32,
    ) -> Result<(), FsError> {
        self.unit(Command::Rename {
            op: ops::Rename { parent, name: name.into(), new_parent, new_name: new_name.into(), flags },
            now: self.now(),
        })
        .await
    }

    async fn set_attr(&self, ino: InodeId, set: SetAttr) -> Result<Attr, FsError> {
        self.attr(Command::SetAttr { op: ops::SetAttrs { ino, set }, now: self.now() }).await
    }

    async fn truncate(&self, ino: InodeId, size: u64) -> Result<Attr, FsError> {
        self.set_attr(ino, SetAttr { size: Some(size), ..SetAttr::default() }).await
    }

    async fn commit(
        &self,
        ino: InodeId,
        index: u64,
        (chunk, version): (u64, u64),
        length: u32,
        replicas: &[u64],
    ) -> Result<Attr, FsError> {
        let commit = ChunkCommit {
            ino,
            index,
            chunk: ChunkId(chunk),
            version: Version(version),
            length,
            stored_bytes: length as u64 / 2,
            replicas: replicas.iter().map(|n| NodeId(*n)).collect(),
        };
        self.attr(Command::CommitChunk { commit, now: self.now() }).await
    }

    async fn take_deletions(&self, node: u64, max: u32) -> Vec<(u64, u64)> {
        match self.run(Command::TakeDeletions { node: NodeId(node), max }).await.expect("take deletions") {
            Reply::Deletions(d) => d.into_iter().map(|(c, v)| (c.0, v.0)).collect(),
            other => panic!("expected deletions, got {other:?}"),
        }
    }

    async fn set_xattr(&self, ino: InodeId, name: &str, value: &[u8], flags: u32) -> Result<(), FsError> {
        self.unit(Command::SetXattr {
            op: ops::SetXattr { ino, name: name.into(), value: value.to_vec(), flags },
            now: self.now(),
        })
        .await
    }

    async fn set_policy(&self, ino: InodeId, replication: Option<u8>, level: Option<i8>) -> Result<Attr, FsError> {
        self.attr(Command::SetPolicy {
            op: ops::SetPolicy { ino, replication, compression_level: level },
            now: self.now(),
        })
        .await
    }

    fn ino(&self, parent: InodeId, name: &str) -> InodeId {
        self.store.lookup(parent, name).unwrap_or_else(|e| panic!("lookup {name:?} in {parent}: {e}")).0
    }

    fn rec(&self, ino: InodeId) -> InodeRecord {
        self.store.inode(ino).unwrap_or_else(|e| panic!("inode {ino}: {e}"))
    }

    fn nlink(&self, ino: InodeId) -> u32 {
        self.rec(ino).nlink
    }

    fn names(&self, dir: InodeId) -> Vec<String> {
        self.store.readdir(dir, None, usize::MAX).expect("readdir").into_iter().map(|e| e.name).collect()
    }

    fn count(&self) -> u64 {
        self.store.inode_count().expect("inode count")
    }

    fn chunk_list(&self, ino: InodeId) -> Vec<(u64, ChunkRecord)> {
        self.store.chunks(ino, 0, u64::MAX).expect("chunks")
    }
}

// ---------------------------------------------------------------- creation

#[tokio::test]
async fn create_file_dir_symlink_and_fifo() {
    let fs = Fs::new();
    assert_eq!(fs.count(), 1, "a new filesystem has only the root");
    let root = fs.rec(ROOT);
    assert_eq!((root.kind, root.nlink), (FileKind::Dir, 2));

    let f = fs.create(ROOT, "file").await.expect("create file");
    assert_eq!((f.kind, f.perm, f.nlink, f.uid, f.gid, f.size), (FileKind::File, 0o644, 1, 1000, 100, 0));
    let d = fs.mkdir(ROOT, "dir").await.expect("mkdir");
    assert_eq!((d.kind, d.perm, d.nlink), (FileKind::Dir, 0o755, 2));
    let s = fs.symlink(ROOT, "link", "some/where").await.expect("symlink");
    assert_eq!((s.kind, s.perm, s.size), (FileKind::Symlink, 0o777, 10));
    assert_eq!(fs.rec(s.ino).target.as_deref(), Some("some/where"));
    let p = fs
        .attr(Command::Mknod {
            op: ops::Mknod {
                parent: ROOT,
                name: "pipe".into(),
                kind: FileKind::CharDevice,
                perm: 0o170_640, // file-type bits are dropped
                owner: OWNER,
                rdev: 0x0103,
            },
            now: fs.now(),
        })
        .await
        .expect("mknod a device");
    assert_eq!((p.kind, p.perm, p.rdev), (FileKind::CharDevice, 0o640, 0x0103));

    let inos: HashSet<InodeId> = [f.ino, d.ino, s.ino, p.ino].into_iter().collect();
    assert_eq!(inos.len(), 4, "every inode gets its own number");
    assert!(!inos.contains(&ROOT));
    assert_eq!(fs.count(), 5);
    assert_eq!(fs.names(ROOT), ["dir", "file", "link", "pipe"]);
    assert_eq!(fs.ino(ROOT, "file"), f.ino);
    assert_eq!(fs.store.lookup(ROOT, "dir").expect("lookup dir").1.to_attr(d.ino), d);
    assert_eq!(fs.nlink(ROOT), 3, "root: 2 + one subdirectory");
    let entries = fs.store.readdir(ROOT, None, 10).expect("readdir");
    let by_readdir: Vec<InodeId> = entries.iter().map(|e| e.attr.ino).collect();
    assert_eq!(by_readdir, [d.ino, f.ino, s.ino, p.ino]);

    // mknod refuses kinds that have their own command.
    for kind in [FileKind::Dir, FileKind::Symlink] {
        let r = fs
            .attr(Command::Mknod {
                op: ops::Mknod { parent: ROOT, name: "x".into(), kind, perm: 0o644, owner: OWNER, rdev: 0 },
                now: fs.now(),
            })
            .await;
        assert_eq!(r, Err(FsError::InvalidArgument), "mknod of a {kind:?}");
    }
    assert_eq!(fs.count(), 5);
}

#[tokio::test]
async fn readdir_pages_after_a_name() {
    let fs = Fs::new();
    for n in ["a", "b", "c", "d", "e"] {
        fs.create(ROOT, n).await.expect("create");
    }
    let page = |after: Option<&str>, limit| -> Vec<String> {
        fs.store.readdir(ROOT, after, limit).expect("readdir").into_iter().map(|e| e.name).collect()
    };
    assert_eq!(page(None, 2), ["a", "b"]);
    assert_eq!(page(Some("b"), 2), ["c", "d"]);
    assert_eq!(page(Some("d"), 2), ["e"]);
    assert!(page(Some("e"), 2).is_empty());
    let file = fs.ino(ROOT, "a");
    assert_eq!(fs.store.readdir(file, None, 10).map(|v| v.len()), Err(FsError::NotDir));
    assert_eq!(fs.store.readdir(MISSING, None, 10).map(|v| v.len()), Err(FsError::NotFound));
}

#[tokio::test]
async fn create_errors() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create f");
    let d = fs.mkdir(ROOT, "d").await.expect("mkdir d");
    let before = (fs.count(), fs.rec(ROOT));

    // EEXIST, whatever the kinds.
    assert_eq!(fs.create(ROOT, "f").await, Err(FsError::Exists));
    assert_eq!(fs.create(ROOT, "d").await, Err(FsError::Exists));
    assert_eq!(fs.mkdir(ROOT, "f").await, Err(FsError::Exists));
    assert_eq!(fs.mkdir(ROOT, "d").await, Err(FsError::Exists));
    assert_eq!(fs.symlink(ROOT, "d", "t").await, Err(FsError::Exists));
    assert_eq!(fs.link(f.ino, ROOT, "d").await, Err(FsError::Exists));
    // ENOENT: no such parent.
    assert_eq!(fs.create(MISSING, "x").await, Err(FsError::NotFound));
    assert_eq!(fs.mkdir(MISSING, "x").await, Err(FsError::NotFound));
    assert_eq!(fs.symlink(MISSING, "x", "t").await, Err(FsError::NotFound));
    assert_eq!(fs.link(f.ino, MISSING, "x").await, Err(FsError::NotFound));
    // ENOTDIR: the parent is a file.
    assert_eq!(fs.create(f.ino, "x").await, Err(FsError::NotDir));
    assert_eq!(fs.mkdir(f.ino, "x").await, Err(FsError::NotDir));
    assert_eq!(fs.symlink(f.ino, "x", "t").await, Err(FsError::NotDir));
    assert_eq!(fs.link(f.ino, f.ino, "x").await, Err(FsError::NotDir));
    // Names.
    let long = "n".repeat(256);
    assert_eq!(fs.create(ROOT, &long).await, Err(FsError::NameTooLong));
    assert_eq!(fs.mkdir(ROOT, &long).await, Err(FsError::NameTooLong));
    assert_eq!(fs.symlink(ROOT, &long, "t").await, Err(FsError::NameTooLong));
    assert_eq!(fs.link(f.ino, ROOT, &long).await, Err(FsError::NameTooLong));
    for bad in ["a/b", "/", "", ".", "..", "nul\0"] {
        assert_eq!(fs.create(ROOT, bad).await, Err(FsError::InvalidArgument), "create {bad:?}");
        assert_eq!(fs.mkdir(ROOT, bad).await, Err(FsError::InvalidArgument), "mkdir {bad:?}");
        assert_eq!(fs.symlink(ROOT, bad, "t").await, Err(FsError::InvalidArgument), "symlink {bad:?}");
        assert_eq!(fs.link(f.ino, ROOT, bad).await, Err(FsError::InvalidArgument), "link {bad:?}");
    }
    // A multi-byte name is measured in bytes: 128 two-byte characters are too long.
    assert_eq!(fs.create(ROOT, &"é".repeat(128)).await, Err(FsError::NameTooLong));
    assert_eq!(fs.names(d.ino), Vec::<String>::new());
    assert_eq!((fs.count(), fs.rec(ROOT)), before, "refused creations changed nothing");

    // 255 bytes is fine.
    let ok = "n".repeat(255);
    fs.create(ROOT, &ok).await.expect("a 255-byte name");
    assert_eq!(fs.ino(ROOT, &ok), fs.store.lookup(ROOT, &ok).expect("lookup").0);
}

#[tokio::test]
async fn symlink_targets_are_checked() {
    let fs = Fs::new();
    assert_eq!(fs.symlink(ROOT, "s", "").await, Err(FsError::InvalidArgument));
    assert_eq!(fs.symlink(ROOT, "s", "a\0b").await, Err(FsError::InvalidArgument));
    assert_eq!(fs.symlink(ROOT, "s", &"t".repeat(4096)).await, Err(FsError::NameTooLong));
    let s = fs.symlink(ROOT, "s", &"t".repeat(4095)).await.expect("longest target");
    assert_eq!(s.size, 4095);
    assert_eq!(fs.count(), 2);
}

// ---------------------------------------------------------------- removal

#[tokio::test]
async fn unlink_frees_the_inode() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    let s = fs.symlink(ROOT, "s", "f").await.expect("symlink");
    let d = fs.mkdir(ROOT, "d").await.expect("mkdir");
    assert_eq!(fs.count(), 4);

    assert_eq!(fs.unlink(ROOT, "nope").await, Err(FsError::NotFound));
    assert_eq!(fs.unlink(ROOT, "d").await, Err(FsError::IsDir));
    assert_eq!(fs.unlink(f.ino, "x").await, Err(FsError::NotDir));
    assert_eq!(fs.unlink(MISSING, "x").await, Err(FsError::NotFound));
    assert_eq!(fs.unlink(ROOT, "a/b").await, Err(FsError::InvalidArgument));
    assert_eq!(fs.unlink(ROOT, &"x".repeat(256)).await, Err(FsError::NameTooLong));
    assert_eq!(fs.count(), 4);

    fs.unlink(ROOT, "f").await.expect("unlink file");
    fs.unlink(ROOT, "s").await.expect("unlink symlink");
    assert_eq!(fs.count(), 2);
    assert_eq!(fs.store.inode(f.ino), Err(FsError::NotFound));
    assert_eq!(fs.store.inode(s.ino), Err(FsError::NotFound));
    assert_eq!(fs.store.lookup(ROOT, "f").map(|x| x.0), Err(FsError::NotFound));
    assert_eq!(fs.names(ROOT), ["d"]);
    assert_eq!(fs.nlink(d.ino), 2);
    assert!(fs.store.orphans().expect("orphans").is_empty());
    assert_eq!(fs.unlink(ROOT, "f").await, Err(FsError::NotFound), "already gone");
}

#[tokio::test]
async fn rmdir_and_directory_link_counts() {
    let fs = Fs::new();
    let a = fs.mkdir(ROOT, "a").await.expect("mkdir a");
    let b = fs.mkdir(ROOT, "b").await.expect("mkdir b");
    assert_eq!(fs.nlink(ROOT), 4);
    let c = fs.mkdir(a.ino, "c").await.expect("mkdir a/c");
    fs.create(a.ino, "file").await.expect("create a/file");
    assert_eq!((fs.nlink(ROOT), fs.nlink(a.ino), fs.nlink(c.ino)), (4, 3, 2), "a file adds no link to its dir");

    assert_eq!(fs.rmdir(ROOT, "a").await, Err(FsError::NotEmpty));
    assert_eq!(fs.rmdir(a.ino, "file").await, Err(FsError::NotDir));
    assert_eq!(fs.rmdir(ROOT, "zz").await, Err(FsError::NotFound));
    assert_eq!(fs.rmdir(MISSING, "a").await, Err(FsError::NotFound));
    assert_eq!(fs.rmdir(ROOT, ".").await, Err(FsError::InvalidArgument));
    assert_eq!(fs.rmdir(ROOT, "..").await, Err(FsError::InvalidArgument));
    assert_eq!(fs.count(), 5);

    fs.rmdir(a.ino, "c").await.expect("rmdir a/c");
    assert_eq!(fs.nlink(a.ino), 2);
    assert_eq!(fs.store.inode(c.ino), Err(FsError::NotFound));
    fs.rmdir(ROOT, "b").await.expect("rmdir b");
    assert_eq!(fs.nlink(ROOT), 3);
    assert_eq!(fs.count(), 3);
    // Nothing can be created in a removed directory.
    assert_eq!(fs.create(b.ino, "x").await, Err(FsError::NotFound));
    assert_eq!(fs.mkdir(c.ino, "x").await, Err(FsError::NotFound));
    assert_eq!(fs.names(ROOT), ["a"]);
}

// ---------------------------------------------------------------- hard links

#[tokio::test]
async fn hard_links() {
    let fs = Fs::new();
    let d = fs.mkdir(ROOT, "d").await.expect("mkdir");
    let f = fs.create(ROOT, "f").await.expect("create");
    let l = fs.link(f.ino, d.ino, "g").await.expect("link");
    assert_eq!((l.ino, l.nlink), (f.ino, 2));
    assert_eq!(fs.ino(d.ino, "g"), f.ino);
    assert_eq!(fs.count(), 3, "a link is not an inode");
    assert_eq!(fs.nlink(d.ino), 2, "a file link adds no link to the directory");

    assert_eq!(fs.link(d.ino, ROOT, "dirlink").await, Err(FsError::NotPermitted));
    assert_eq!(fs.link(MISSING, ROOT, "x").await, Err(FsError::NotFound));

    fs.unlink(ROOT, "f").await.expect("unlink the first name");
    assert_eq!(fs.nlink(f.ino), 1);
    assert_eq!(fs.count(), 3, "one name is left");
    fs.unlink(d.ino, "g").await.expect("unlink the last name");
    assert_eq!(fs.store.inode(f.ino), Err(FsError::NotFound));
    assert_eq!(fs.count(), 2);
    assert_eq!(fs.link(f.ino, ROOT, "again").await, Err(FsError::NotFound), "no link to a freed inode");
}

// ---------------------------------------------------------------- rename

#[tokio::test]
async fn rename_moves_names() {
    let fs = Fs::new();
    let a = fs.mkdir(ROOT, "a").await.expect("mkdir a");
    let f = fs.create(ROOT, "f").await.expect("create f");
    fs.rename(ROOT, "f", ROOT, "g", 0).await.expect("rename within a dir");
    assert_eq!(fs.names(ROOT), ["a", "g"]);
    assert_eq!(fs.ino(ROOT, "g"), f.ino);
    fs.rename(ROOT, "g", a.ino, "h", 0).await.expect("rename across dirs");
    assert_eq!(fs.names(ROOT), ["a"]);
    assert_eq!(fs.names(a.ino), ["h"]);
    assert_eq!(fs.ino(a.ino, "h"), f.ino);
    assert_eq!((fs.nlink(ROOT), fs.nlink(a.ino), fs.nlink(f.ino)), (3, 2, 1));
    assert_eq!(fs.count(), 3);

    assert_eq!(fs.rename(ROOT, "nope", ROOT, "x", 0).await, Err(FsError::NotFound));
    assert_eq!(fs.rename(MISSING, "h", ROOT, "x", 0).await, Err(FsError::NotFound));
    assert_eq!(fs.rename(a.ino, "h", MISSING, "x", 0).await, Err(FsError::NotFound));
    assert_eq!(fs.rename(a.ino, "h", f.ino, "x", 0).await, Err(FsError::NotDir));
    assert_eq!(fs.rename(f.ino, "h", ROOT, "x", 0).await, Err(FsError::NotDir));
    assert_eq!(fs.rename(a.ino, "h", ROOT, "x/y", 0).await, Err(FsError::InvalidArgument));
    assert_eq!(fs.rename(a.ino, "h", ROOT, &"x".repeat(256), 0).await, Err(FsError::NameTooLong));
    assert_eq!(fs.rename(a.ino, "h", ROOT, "..", 0).await, Err(FsError::InvalidArgument));
    assert_eq!(fs.rename(a.ino, "h", ROOT, "x", 4).await, Err(FsError::InvalidArgument), "unknown flag");
    assert_eq!(
        fs.rename(a.ino, "h", ROOT, "x", RENAME_NOREPLACE | RENAME_EXCHANGE).await,
        Err(FsError::InvalidArgument)
    );
    assert_eq!(fs.names(a.ino), ["h"], "refused renames moved nothing");

    // Renaming a name onto itself changes nothing.
    fs.rename(a.ino, "h", a.ino, "h", 0).await.expect("rename onto itself");
    assert_eq!(fs.names(a.ino), ["h"]);
}

#[tokio::test]
async fn rename_over_a_file_frees_it() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create f");
    let g = fs.create(ROOT, "g").await.expect("create g");
    fs.commit(g.ino, 0, (50, 51), 100, &[1, 2]).await.expect("give g a chunk");
    fs.set_xattr(g.ino, "user.x", b"v", 0).await.expect("give g an xattr");
    assert_eq!(fs.count(), 3);
    fs.rename(ROOT, "f", ROOT, "g", 0).await.expect("rename over g");
    assert_eq!(fs.names(ROOT), ["g"]);
    assert_eq!(fs.ino(ROOT, "g"), f.ino);
    assert_eq!(fs.count(), 2, "the replaced inode is freed");
    assert_eq!(fs.store.inode(g.ino), Err(FsError::NotFound));
    assert!(fs.chunk_list(g.ino).is_empty());
    assert!(fs.store.xattr_names(g.ino).expect("xattr names").is_empty());
    assert_eq!(fs.take_deletions(1, 10).await, [(50, 51)]);
    assert_eq!(fs.take_deletions(2, 10).await, [(50, 51)]);

    // A replaced name with another link only loses that link.
    let h = fs.create(ROOT, "h").await.expect("create h");
    fs.link(h.ino, ROOT, "h2").await.expect("link h2");
    fs.rename(ROOT, "g", ROOT, "h", 0).await.expect("rename over h");
    assert_eq!(fs.nlink(h.ino), 1);
    assert_eq!(fs.ino(ROOT, "h2"), h.ino);
    assert_eq!(fs.count(), 3);
}

#[tokio::test]
async fn rename_kind_mismatches_and_non_empty_target() {
    let fs = Fs::new();
    let d = fs.mkdir(ROOT, "d").await.expect("mkdir d");
    fs.mkdir(ROOT, "e").await.expect("mkdir e");
    let full = fs.mkdir(ROOT, "full").await.expect("mkdir full");
    fs.create(full.ino, "x").await.expect("create full/x");
    fs.create(ROOT, "f").await.expect("create f");
    let before = (fs.count(), fs.nlink(ROOT), fs.names(ROOT));

    assert_eq!(fs.rename(ROOT, "d", ROOT, "f", 0).await, Err(FsError::NotDir), "dir over a file");
    assert_eq!(fs.rename(ROOT, "f", ROOT, "d", 0).await, Err(FsError::IsDir), "file over a dir");
    assert_eq!(fs.rename(ROOT, "d", ROOT, "full", 0).await, Err(FsError::NotEmpty));
    assert_eq!((fs.count(), fs.nlink(ROOT), fs.names(ROOT)), before);

    // A directory replaces an empty one: one directory less.
    fs.rename(ROOT, "d", ROOT, "e", 0).await.expect("dir over an empty dir");
    assert_eq!(fs.names(ROOT), ["e", "f", "full"]);
    assert_eq!(fs.ino(ROOT, "e"), d.ino);
    assert_eq!(fs.nlink(ROOT), 4, "root: 2 + e + full");
    assert_eq!(fs.count(), before.0 - 1);
}

#[tokio::test]
async fn rename_directories_keeps_link_counts() {
    let fs = Fs::new();
    let a = fs.mkdir(ROOT, "a").await.expect("mkdir a");
    let b = fs.mkdir(ROOT, "b").await.expect("mkdir b");
    let sub = fs.mkdir(a.ino, "sub").await.expect("mkdir a/sub");
    fs.mkdir(sub.ino, "deeper").await.expect("mkdir a/sub/deeper");
    assert_eq!((fs.nlink(ROOT), fs.nlink(a.ino), fs.nlink(b.ino)), (4, 3, 2));

    fs.rename(a.ino, "sub", b.ino, "moved", 0).await.expect("move a dir across dirs");
    assert_eq!((fs.nlink(ROOT), fs.nlink(a.ino), fs.nlink(b.ino)), (4, 2, 3));
    assert_eq!(fs.nlink(sub.ino), 3, "the moved dir keeps its own subdirectory link");
    assert_eq!(fs.rec(sub.ino).parent, b.ino.0);

    // Replacing an empty dir in another parent: source parent loses one,
    // target parent loses the replaced one and gains the moved one.
    fs.mkdir(a.ino, "empty").await.expect("mkdir a/empty");
    assert_eq!(fs.nlink(a.ino), 3);
    fs.rename(b.ino, "moved", a.ino, "empty", 0).await.expect("dir over an empty dir across parents");
    assert_eq!((fs.nlink(a.ino), fs.nlink(b.ino)), (3, 2));
    assert_eq!(fs.ino(a.ino, "empty"), sub.ino);

    // Within one directory nothing changes.
    fs.rename(a.ino, "empty", a.ino, "renamed", 0).await.expect("rename a dir in place");
    assert_eq!(fs.nlink(a.ino), 3);

    // Up to the root.
    fs.rename(a.ino, "renamed", ROOT, "top", 0).await.expect("move a dir to the root");
    assert_eq!((fs.nlink(ROOT), fs.nlink(a.ino)), (5, 2));
    assert_eq!(fs.rec(sub.ino).parent, ROOT.0);
}

#[tokio::test]
async fn rename_into_own_subtree_is_refused() {
    let fs = Fs::new();
    let a = fs.mkdir(ROOT, "a").await.expect("mkdir a");
    let b = fs.mkdir(a.ino, "b").await.expect("mkdir a/b");
    let c = fs.mkdir(b.ino, "c").await.expect("mkdir a/b/c");
    let before = (fs.nlink(ROOT), fs.nlink(a.ino), fs.nlink(b.ino), fs.nlink(c.ino));

    assert_eq!(fs.rename(ROOT, "a", a.ino, "x", 0).await, Err(FsError::InvalidArgument), "into itself");
    assert_eq!(fs.rename(ROOT, "a", b.ino, "x", 0).await, Err(FsError::InvalidArgument), "into its child");
    assert_eq!(fs.rename(ROOT, "a", c.ino, "x", 0).await, Err(FsError::InvalidArgument), "into a grandchild");
    // An empty target name inside the subtree does not change that.
    fs.mkdir(c.ino, "e").await.expect("mkdir a/b/c/e");
    assert_eq!(fs.rename(ROOT, "a", c.ino, "e", 0).await, Err(FsError::InvalidArgument), "over an empty dir below");
    fs.rmdir(c.ino, "e").await.expect("rmdir a/b/c/e");
    // Exchange with something inside its own subtree, either way round.
    fs.create(c.ino, "f").await.expect("create a/b/c/f");
    assert_eq!(fs.rename(ROOT, "a", c.ino, "f", RENAME_EXCHANGE).await, Err(FsError::InvalidArgument));
    assert_eq!(fs.rename(c.ino, "f", ROOT, "a", RENAME_EXCHANGE).await, Err(FsError::InvalidArgument));
    assert_eq!(fs.names(ROOT), ["a"]);
    assert_eq!((fs.nlink(ROOT), fs.nlink(a.ino), fs.nlink(b.ino), fs.nlink(c.ino)), before);

    // Once b is moved out of a, a may go below b: parent pointers follow renames.
    fs.rename(a.ino, "b", ROOT, "b", 0).await.expect("move b to the root");
    fs.rename(ROOT, "a", c.ino, "a", 0).await.expect("a is no longer above c");
    assert_eq!(fs.names(ROOT), ["b"]);
    assert_eq!(fs.ino(c.ino, "a"), a.ino);
    // ... and now b cannot go below a.
    assert_eq!(fs.rename(ROOT, "b", a.ino, "b", 0).await, Err(FsError::InvalidArgument));
    assert_eq!((fs.nlink(ROOT), fs.nlink(a.ino), fs.nlink(b.ino), fs.nlink(c.ino)), (3, 2, 3, 3));
}

#[tokio::test]
async fn rename_noreplace() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create f");
    let g = fs.create(ROOT, "g").await.expect("create g");
    assert_eq!(fs.rename(ROOT, "f", ROOT, "g", RENAME_NOREPLACE).await, Err(FsError::Exists));
    assert_eq!((fs.ino(ROOT, "f"), fs.ino(ROOT, "g")), (f.ino, g.ino));
    assert_eq!(fs.count(), 3);
    fs.rename(ROOT, "f", ROOT, "h", RENAME_NOREPLACE).await.expect("noreplace onto a free name");
    assert_eq!(fs.names(ROOT), ["g", "h"]);
}

#[tokio::test]
async fn rename_exchange() {
    let fs = Fs::new();
    let a = fs.mkdir(ROOT, "a").await.expect("mkdir a");
    let b = fs.mkdir(ROOT, "b").await.expect("mkdir b");
    let f = fs.create(ROOT, "f").await.expect("create f");
    let g = fs.create(ROOT, "g").await.expect("create g");

    fs.rename(ROOT, "f", ROOT, "g", RENAME_EXCHANGE).await.expect("exchange two files");
    assert_eq!((fs.ino(ROOT, "f"), fs.ino(ROOT, "g")), (g.ino, f.ino));
    assert_eq!(fs.count(), 5, "an exchange frees nothing");

    assert_eq!(fs.rename(ROOT, "f", ROOT, "none", RENAME_EXCHANGE).await, Err(FsError::NotFound));
    assert_eq!(fs.rename(ROOT, "none", ROOT, "f", RENAME_EXCHANGE).await, Err(FsError::NotFound));

    // A directory (sub, in a) and a file (x, in b) across directories.
    let sub = fs.mkdir(a.ino, "sub").await.expect("mkdir a/sub");
    let x = fs.create(b.ino, "x").await.expect("create b/x");
    assert_eq!((fs.nlink(a.ino), fs.nlink(b.ino)), (3, 2));
    fs.rename(a.ino, "sub", b.ino, "x", RENAME_EXCHANGE).await.expect("exchange a dir and a file");
    assert_eq!((fs.ino(a.ino, "sub"), fs.ino(b.ino, "x")), (x.ino, sub.ino));
    assert_eq!((fs.nlink(a.ino), fs.nlink(b.ino)), (2, 3), "the subdirectory link moves with the dir");
    assert_eq!(fs.rec(sub.ino).parent, b.ino.0);
    assert_eq!(fs.nlink(ROOT), 4);

    // The same the other way round (file first).
    fs.rename(a.ino, "sub", b.ino, "x", RENAME_EXCHANGE).await.expect("exchange back");
    assert_eq!((fs.ino(a.ino, "sub"), fs.ino(b.ino, "x")), (sub.ino, x.ino));
    assert_eq!((fs.nlink(a.ino), fs.nlink(b.ino)), (3, 2));
    assert_eq!(fs.rec(sub.ino).parent, a.ino.0);

    // Two directories across parents: counts stay.
    let other = fs.mkdir(b.ino, "other").await.expect("mkdir b/other");
    fs.rename(a.ino, "sub", b.ino, "other", RENAME_EXCHANGE).await.expect("exchange two dirs");
    assert_eq!((fs.ino(a.ino, "sub"), fs.ino(b.ino, "other")), (other.ino, sub.ino));
    assert_eq!((fs.nlink(a.ino), fs.nlink(b.ino)), (3, 3));
    assert_eq!((fs.rec(sub.ino).parent, fs.rec(other.ino).parent), (b.ino.0, a.ino.0));
    assert_eq!(fs.count(), 8);
}

#[tokio::test]
async fn rename_between_links_of_one_inode_is_a_no_op() {
    let fs = Fs::new();
    let d = fs.mkdir(ROOT, "d").await.expect("mkdir");
    let f = fs.create(ROOT, "f").await.expect("create");
    fs.link(f.ino, ROOT, "g").await.expect("link g");
    fs.link(f.ino, d.ino, "h").await.expect("link d/h");
    let before = fs.rec(f.ino);
    fs.rename(ROOT, "f", ROOT, "g", 0).await.expect("rename f over g");
    fs.rename(ROOT, "g", d.ino, "h", 0).await.expect("rename g over d/h");
    fs.rename(ROOT, "f", ROOT, "g", RENAME_EXCHANGE).await.expect("exchange f and g");
    assert_eq!(fs.names(ROOT), ["d", "f", "g"], "both names stay");
    assert_eq!(fs.names(d.ino), ["h"]);
    assert_eq!(fs.rec(f.ino), before, "not even ctime changes");
    assert_eq!(fs.nlink(f.ino), 3);
    assert_eq!(fs.count(), 3);
}

#[tokio::test]
async fn parent_times_are_updated() {
    let fs = Fs::new();
    let a = fs.mkdir(ROOT, "a").await.expect("mkdir a");
    let b = fs.mkdir(ROOT, "b").await.expect("mkdir b");
    let times = |ino: InodeId| {
        let r = fs.rec(ino);
        (r.mtime, r.ctime)
    };
    let t = at(1000);
    let f = fs
        .attr(Command::Mknod {
            op: ops::Mknod {
                parent: a.ino,
                name: "f".into(),
                kind: FileKind::File,
                perm: 0o600,
                owner: OWNER,
                rdev: 0,
            },
            now: t,
        })
        .await
        .expect("mknod");
    assert_eq!(times(a.ino), (t, t), "mknod");
    assert_eq!((f.atime, f.mtime, f.ctime, f.crtime), (t, t, t, t));

    let t = at(1001);
    fs.attr(Command::Mkdir { op: ops::Mkdir { parent: b.ino, name: "d".into(), perm: 0o700, owner: OWNER }, now: t })
        .await
        .expect("mkdir");
    assert_eq!(times(b.ino), (t, t), "mkdir");

    let t = at(1002);
    fs.attr(Command::Symlink {
        op: ops::Symlink { parent: a.ino, name: "s".into(), target: "f".into(), owner: OWNER },
        now: t,
    })
    .await
    .expect("symlink");
    assert_eq!(times(a.ino), (t, t), "symlink");

    let t = at(1003);
    fs.attr(Command::Link { op: ops::Link { ino: f.ino, new_parent: b.ino, new_name: "l".into() }, now: t })
        .await
        .expect("link");
    assert_eq!(times(b.ino), (t, t), "link: new parent");
    assert_eq!(fs.rec(f.ino).ctime, t, "link: the inode's ctime");
    assert_eq!(fs.rec(f.ino).mtime, at(1000), "link: not the inode's mtime");

    let t = at(1004);
    fs.unit(Command::Rename {
        op: ops::Rename { parent: a.ino, name: "s".into(), new_parent: b.ino, new_name: "s2".into(), flags: 0 },
        now: t,
    })
    .await
    .expect("rename");
    assert_eq!((times(a.ino), times(b.ino)), ((t, t), (t, t)), "rename: both parents");
    let s = fs.ino(b.ino, "s2");
    assert_eq!(fs.rec(s).ctime, t, "rename: the moved inode's ctime");

    let t = at(1005);
    fs.unit(Command::Unlink { op: ops::Unlink { parent: b.ino, name: "l".into() }, now: t }).await.expect("unlink");
    assert_eq!(times(b.ino), (t, t), "unlink");
    assert_eq!(fs.rec(f.ino).ctime, t, "unlink: the remaining inode's ctime");

    let t = at(1006);
    fs.unit(Command::Rmdir { op: ops::Rmdir { parent: b.ino, name: "d".into() }, now: t }).await.expect("rmdir");
    assert_eq!(times(b.ino), (t, t), "rmdir");

    // A refused command touches nothing.
    let t = at(1007);
    let r = fs.unit(Command::Rmdir { op: ops::Rmdir { parent: ROOT, name: "a".into() }, now: t }).await;
    assert_eq!(r, Err(FsError::NotEmpty));
    assert_ne!(times(ROOT).0, t);
}

// ---------------------------------------------------------------- orphans

#[tokio::test]
async fn rename_over_an_open_file_keeps_an_orphan() {
    let fs = Fs::new();
    fs.create(ROOT, "f").await.expect("create f");
    let g = fs.create(ROOT, "g").await.expect("create g");
    fs.commit(g.ino, 0, (7, 8), 10, &[3]).await.expect("commit g");
    fs.set_open(g.ino, true);
    fs.rename(ROOT, "f", ROOT, "g", 0).await.expect("rename over an open file");
    assert_eq!(fs.count(), 3, "the open inode is kept");
    assert_eq!(fs.names(ROOT), ["g"]);
    assert_eq!(fs.store.orphans().expect("orphans"), [g.ino]);
    assert_eq!(fs.store.is_orphan(g.ino), Ok(true));
    let rec = fs.rec(g.ino);
    assert_eq!((rec.nlink, rec.size), (0, 10), "an orphan keeps its data");
    assert_eq!(fs.chunk_list(g.ino).len(), 1);
    assert_eq!(fs.store.pending_deletions(), Ok(0));

    // Still open: a purge does nothing.
    fs.unit(Command::Purge { ino: g.ino }).await.expect("purge while open");
    assert_eq!(fs.store.orphans().expect("orphans"), [g.ino]);
    assert_eq!(fs.count(), 3);

    fs.set_open(g.ino, false);
    fs.unit(Command::Purge { ino: g.ino }).await.expect("purge once closed");
    assert!(fs.store.orphans().expect("orphans").is_empty());
    assert_eq!(fs.store.is_orphan(g.ino), Ok(false));
    assert_eq!(fs.count(), 2);
    assert_eq!(fs.store.inode(g.ino), Err(FsError::NotFound));
    assert_eq!(fs.take_deletions(3, 10).await, [(7, 8)], "the orphan's replicas go too");
}

#[tokio::test]
async fn unlink_of_an_open_file_keeps_an_orphan() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create f");
    fs.set_open(f.ino, true);
    fs.unlink(ROOT, "f").await.expect("unlink an open file");
    assert_eq!(fs.store.orphans().expect("orphans"), [f.ino]);
    assert_eq!(fs.nlink(f.ino), 0);
    // An open orphan still takes writes and attribute changes.
    fs.commit(f.ino, 0, (1, 2), 5, &[1]).await.expect("commit to an orphan");
    fs.set_attr(f.ino, SetAttr { mode: Some(0o600), ..SetAttr::default() }).await.expect("chmod an orphan");
    // ... but no new name.
    assert_eq!(fs.link(f.ino, ROOT, "back").await, Err(FsError::NotFound));

    // A purge of a live, non-orphan inode does nothing.
    let g = fs.create(ROOT, "g").await.expect("create g");
    fs.unit(Command::Purge { ino: g.ino }).await.expect("purge a linked inode");
    assert_eq!(fs.nlink(g.ino), 1);

    fs.set_open(f.ino, false);
    fs.unit(Command::Purge { ino: f.ino }).await.expect("purge");
    assert_eq!(fs.store.inode(f.ino), Err(FsError::NotFound));
    assert_eq!(fs.count(), 2);
    assert_eq!(fs.take_deletions(1, 10).await, [(1, 2)]);
}

// ---------------------------------------------------------------- setattr

#[tokio::test]
async fn set_attributes() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    let d = fs.mkdir(ROOT, "d").await.expect("mkdir");
    let s = fs.symlink(ROOT, "s", "f").await.expect("symlink");
    let t = at(2000);
    let given = at(-3_999_999_000);
    let set = SetAttr {
        mode: Some(0o104_751),
        uid: Some(5),
        gid: Some(6),
        size: None,
        atime: Some(TimeSet::At(given)),
        mtime: Some(TimeSet::Now),
    };
    let a = fs.attr(Command::SetAttr { op: ops::SetAttrs { ino: f.ino, set }, now: t }).await.expect("setattr");
    assert_eq!((a.perm, a.uid, a.gid), (0o4751, 5, 6));
    assert_eq!((a.atime, a.mtime, a.ctime), (given, t, t));
    assert_eq!(fs.rec(f.ino).to_attr(f.ino), a);

    assert_eq!(fs.truncate(d.ino, 0).await, Err(FsError::IsDir));
    assert_eq!(fs.truncate(s.ino, 0).await, Err(FsError::InvalidArgument));
    assert_eq!(fs.truncate(MISSING, 0).await, Err(FsError::NotFound));
    let a = fs.truncate(f.ino, 12345).await.expect("extend");
    assert_eq!(a.size, 12345);
    assert!(fs.chunk_list(f.ino).is_empty(), "extending allocates nothing");
}

// ---------------------------------------------------------------- chunks

#[tokio::test]
async fn commit_extends_the_size() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    let a = fs.commit(f.ino, 2, (10, 11), 100, &[1, 2]).await.expect("commit chunk 2");
    assert_eq!(a.size, 2 * CHUNK + 100);
    assert!(a.mtime > f.mtime && a.ctime > f.ctime);
    let a = fs.commit(f.ino, 0, (20, 21), CHUNK as u32, &[1]).await.expect("commit chunk 0");
    assert_eq!(a.size, 2 * CHUNK + 100, "a chunk inside the file does not change its size");
    let chunks = fs.chunk_list(f.ino);
    assert_eq!(chunks.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 2]);
    let (_, c2) = &chunks[1];
    assert_eq!(
        c2,
        &ChunkRecord {
            chunk: ChunkId(10),
            version: Version(11),
            length: 100,
            stored_bytes: 50,
            replicas: vec![NodeId(1), NodeId(2)]
        }
    );
    assert_eq!(fs.store.chunks(f.ino, 1, 1).expect("chunk 1"), []);
    assert_eq!(fs.store.chunks(f.ino, 2, 1).expect("chunk 2").len(), 1);

    let d = fs.mkdir(ROOT, "d").await.expect("mkdir");
    assert_eq!(fs.commit(f.ino, 3, (1, 2), CHUNK as u32 + 1, &[1]).await, Err(FsError::InvalidArgument));
    assert_eq!(fs.commit(f.ino, 3, (1, 2), 10, &[]).await, Err(FsError::InvalidArgument), "no replica");
    assert_eq!(fs.commit(d.ino, 0, (1, 2), 10, &[1]).await, Err(FsError::InvalidArgument), "a directory");
    assert_eq!(fs.commit(MISSING, 0, (1, 2), 10, &[1]).await, Err(FsError::NotFound));
    assert_eq!(fs.commit(f.ino, u64::MAX, (1, 2), 10, &[1]).await, Err(FsError::FileTooLarge));
    assert_eq!(fs.chunk_list(f.ino).len(), 2);
    assert_eq!(fs.store.pending_deletions(), Ok(0), "refused commits queue nothing");
}

#[tokio::test]
async fn chunks_with_count_zero_is_empty() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    fs.commit(f.ino, 0, (1, 2), 10, &[1]).await.expect("commit");
    fs.commit(f.ino, 1, (3, 4), 10, &[1]).await.expect("commit");
    // `Store::chunks` returns indexes in [first, first+count): none for count 0.
    assert_eq!(fs.store.chunks(f.ino, 0, 0).expect("chunks"), []);
    assert_eq!(fs.store.chunks(f.ino, 1, 0).expect("chunks"), []);
    assert_eq!(fs.store.chunks(f.ino, 0, 2).expect("chunks").len(), 2);
    assert_eq!(fs.store.chunks(f.ino, 1, u64::MAX).expect("chunks").len(), 1);
}

#[tokio::test]
async fn replacing_a_chunk_queues_the_old_version() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    fs.commit(f.ino, 0, (5, 1), 100, &[1, 2]).await.expect("version 1");
    assert_eq!(fs.store.pending_deletions(), Ok(0));
    fs.commit(f.ino, 0, (5, 3), 200, &[2, 3]).await.expect("version 3");
    assert_eq!(fs.store.pending_deletions(), Ok(2));
    assert_eq!(fs.store.has_deletions(NodeId(1)), Ok(true));
    assert_eq!(fs.store.has_deletions(NodeId(3)), Ok(false));
    let chunks = fs.chunk_list(f.ino);
    assert_eq!(chunks.len(), 1);
    assert_eq!((chunks[0].1.version, chunks[0].1.length), (Version(3), 200));
    assert_eq!(chunks[0].1.replicas, [NodeId(2), NodeId(3)]);

    assert_eq!(fs.take_deletions(1, 100).await, [(5, 1)]);
    assert_eq!(fs.take_deletions(2, 100).await, [(5, 1)]);
    assert_eq!(fs.take_deletions(3, 100).await, []);
    assert_eq!(fs.take_deletions(1, 100).await, [], "handed out once");
    assert_eq!(fs.take_deletions(2, 100).await, []);
    assert_eq!(fs.store.pending_deletions(), Ok(0));
    assert_eq!(fs.store.has_deletions(NodeId(1)), Ok(false));

    // Committing the current version again (a retried commit) queues nothing.
    fs.commit(f.ino, 0, (5, 3), 200, &[2, 3]).await.expect("same version again");
    assert_eq!(fs.store.pending_deletions(), Ok(0));
}

#[tokio::test]
async fn an_older_commit_loses() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    fs.commit(f.ino, 1, (9, 20), 300, &[1, 2]).await.expect("version 20");
    let size = fs.rec(f.ino).size;
    let a = fs.commit(f.ino, 1, (9, 10), CHUNK as u32, &[3, 4]).await.expect("a late, older commit is not an error");
    assert_eq!(a.size, size, "the losing commit does not extend the file");
    let chunks = fs.chunk_list(f.ino);
    assert_eq!((chunks[0].1.version, chunks[0].1.length), (Version(20), 300));
    assert_eq!(chunks[0].1.replicas, [NodeId(1), NodeId(2)]);
    assert_eq!(fs.take_deletions(3, 10).await, [(9, 10)], "the losing version is deleted where it was written");
    assert_eq!(fs.take_deletions(4, 10).await, [(9, 10)]);
    assert_eq!(fs.take_deletions(1, 10).await, [], "the current version is kept");
    assert_eq!(fs.take_deletions(3, 10).await, []);
}

#[tokio::test]
async fn take_deletions_respects_max() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    for i in 0..5 {
        fs.commit(f.ino, i, (100 + i, 200 + i), 10, &[7]).await.expect("commit");
    }
    fs.unlink(ROOT, "f").await.expect("unlink");
    assert_eq!(fs.store.pending_deletions(), Ok(5));
    assert_eq!(fs.take_deletions(7, 2).await, [(100, 200), (101, 201)]);
    assert_eq!(fs.take_deletions(7, 2).await, [(102, 202), (103, 203)]);
    assert_eq!(fs.take_deletions(7, 2).await, [(104, 204)]);
    assert_eq!(fs.take_deletions(7, 2).await, []);
}

#[tokio::test]
async fn truncate_drops_and_cuts_chunks() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    let full = CHUNK as u32;
    fs.commit(f.ino, 0, (1, 11), full, &[1]).await.expect("chunk 0");
    fs.commit(f.ino, 1, (2, 12), full, &[1, 2]).await.expect("chunk 1");
    fs.commit(f.ino, 2, (3, 13), full, &[2, 3]).await.expect("chunk 2");
    fs.commit(f.ino, 3, (4, 14), 99, &[3]).await.expect("chunk 3");
    assert_eq!(fs.rec(f.ino).size, 3 * CHUNK + 99);

    let a = fs.truncate(f.ino, CHUNK + 10).await.expect("truncate into chunk 1");
    assert_eq!(a.size, CHUNK + 10);
    let chunks = fs.chunk_list(f.ino);
    assert_eq!(chunks.iter().map(|(i, c)| (*i, c.length)).collect::<Vec<_>>(), [(0, full), (1, 10)]);
    assert_eq!(chunks[1].1.version, Version(12), "the cut chunk keeps its version");
    assert_eq!(fs.take_deletions(1, 10).await, []);
    assert_eq!(fs.take_deletions(2, 10).await, [(3, 13)]);
    assert_eq!(fs.take_deletions(3, 10).await, [(3, 13), (4, 14)]);

    // Truncating to a chunk boundary drops the chunk starting there.
    fs.truncate(f.ino, CHUNK).await.expect("truncate to the boundary");
    let chunks = fs.chunk_list(f.ino);
    assert_eq!(chunks.iter().map(|(i, c)| (*i, c.length)).collect::<Vec<_>>(), [(0, full)]);
    assert_eq!(fs.take_deletions(1, 10).await, [(2, 12)]);
    assert_eq!(fs.take_deletions(2, 10).await, [(2, 12)]);

    // Growing again keeps chunk 0 as it is.
    fs.truncate(f.ino, 5 * CHUNK).await.expect("extend");
    assert_eq!(fs.chunk_list(f.ino).len(), 1);
    assert_eq!(fs.store.pending_deletions(), Ok(0));

    // Cutting inside a chunk shorter than the cut leaves its length alone.
    fs.commit(f.ino, 4, (5, 15), 100, &[1]).await.expect("chunk 4");
    fs.truncate(f.ino, 4 * CHUNK + 500).await.expect("truncate past chunk 4's data");
    assert_eq!(fs.store.chunks(f.ino, 4, 1).expect("chunk 4")[0].1.length, 100);

    fs.truncate(f.ino, 0).await.expect("truncate to zero");
    assert!(fs.chunk_list(f.ino).is_empty());
    assert_eq!(fs.rec(f.ino).size, 0);
    let mut gone = fs.take_deletions(1, 10).await;
    gone.sort();
    assert_eq!(gone, [(1, 11), (5, 15)]);
}

#[tokio::test]
async fn unlink_queues_every_replica() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    fs.commit(f.ino, 0, (1, 2), 10, &[1, 2]).await.expect("chunk 0");
    fs.commit(f.ino, 7, (3, 4), 10, &[2, 3]).await.expect("chunk 7");
    fs.unlink(ROOT, "f").await.expect("unlink");
    assert!(fs.chunk_list(f.ino).is_empty());
    assert_eq!(fs.store.pending_deletions(), Ok(4));
    assert_eq!(fs.take_deletions(1, 10).await, [(1, 2)]);
    assert_eq!(fs.take_deletions(2, 10).await, [(1, 2), (3, 4)]);
    assert_eq!(fs.take_deletions(3, 10).await, [(3, 4)]);
    assert_eq!(fs.store.pending_deletions(), Ok(0));
}

// ---------------------------------------------------------------- group commit

#[tokio::test]
async fn concurrent_commands_are_isolated() {
    let fs = &Fs::new();
    let base = fs.mkdir(ROOT, "base").await.expect("mkdir base").ino;
    fs.create(base, "keep").await.expect("create base/keep");
    // 150 distinct names, 50 of them submitted twice, interleaved with
    // commands that fail late (after several reads) in the same batches.
    let names: Vec<String> = (0..200).map(|i| format!("d{}", i % 150)).collect();
    let mkdirs = names.iter().map(|n| fs.mkdir(ROOT, n));
    let failing = (0..50).map(|i| async move {
        match i % 5 {
            0 => fs.rmdir(ROOT, "base").await,
            1 => fs.rename(ROOT, "base", base, "x", 0).await,
            2 => fs.unlink(base, "nope").await,
            3 => fs.set_xattr(base, "user.a", b"v", XATTR_REPLACE).await,
            _ => fs.set_policy(base, Some(3), Some(100)).await.map(|_| ()),
        }
    });
    let (made, failed) = futures::join!(join_all(mkdirs), join_all(failing));

    for (i, r) in failed.iter().enumerate() {
        let want = [FsError::NotEmpty, FsError::InvalidArgument, FsError::NotFound, FsError::NoAttr];
        assert!(matches!(r, Err(e) if want.contains(e)), "failing command {i}: {r:?}");
    }
    let mut ok: Vec<(String, Attr)> = Vec::new();
    let mut exists: BTreeSet<String> = BTreeSet::new();
    for (name, r) in names.iter().zip(made) {
        match r {
            Ok(a) => ok.push((name.clone(), a)),
            Err(FsError::Exists) => assert!(exists.insert(name.clone()), "{name} refused twice"),
            Err(e) => panic!("mkdir {name}: {e}"),
        }
    }
    assert_eq!(ok.len(), 150, "each distinct name is created once");
    assert_eq!(exists.len(), 50);
    let inos: HashSet<InodeId> = ok.iter().map(|(_, a)| a.ino).collect();
    assert_eq!(inos.len(), 150, "no inode number handed out twice");
    for (name, a) in &ok {
        let (ino, rec) = fs.store.lookup(ROOT, name).unwrap_or_else(|e| panic!("lookup {name}: {e}"));
        assert_eq!(ino, a.ino, "{name}");
        assert_eq!((rec.kind, rec.nlink, rec.parent), (FileKind::Dir, 2, ROOT.0), "{name}");
    }
    let mut want: Vec<String> = (0..150).map(|i| format!("d{i}")).collect();
    want.push("base".into());
    want.sort();
    assert_eq!(fs.names(ROOT), want);
    assert_eq!(fs.nlink(ROOT), 2 + 151);
    assert_eq!(fs.count(), 1 + 151 + 1);
    // The late failures did not disturb base.
    assert_eq!(fs.names(base), ["keep"]);
    assert_eq!(fs.rec(base).policy, Policy::default());
    assert!(fs.store.xattr_names(base).expect("xattrs").is_empty());

    // Concurrent creations in the new dirs, then concurrent removals.
    let creates = ok.iter().map(|(n, a)| async move { (n, fs.create(a.ino, "f").await) });
    for (n, r) in join_all(creates).await {
        r.unwrap_or_else(|e| panic!("create {n}/f: {e}"));
    }
    let removals = ok.iter().map(|(n, a)| async move {
        fs.unlink(a.ino, "f").await.unwrap_or_else(|e| panic!("unlink {n}/f: {e}"));
        fs.rmdir(ROOT, n).await
    });
    let second = ok.iter().map(|(n, _)| fs.rmdir(ROOT, n));
    let (first, second) = futures::join!(join_all(removals), join_all(second));
    for ((n, _), (a, b)) in ok.iter().zip(first.into_iter().zip(second)) {
        // Exactly one rmdir of each name succeeds; the other finds it not
        // empty (before the unlink) or gone (after the first rmdir).
        let oks = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(oks, 1, "{n}: {a:?} {b:?}");
        for r in [a, b].into_iter().filter_map(Result::err) {
            assert!([FsError::NotEmpty, FsError::NotFound].contains(&r), "{n}: {r}");
        }
    }
    assert_eq!(fs.names(ROOT), ["base"]);
    assert_eq!(fs.nlink(ROOT), 3);
    assert_eq!(fs.count(), 3);
}

// ---------------------------------------------------------------- xattrs and policy

#[tokio::test]
async fn xattrs() {
    let fs = Fs::new();
    let f = fs.create(ROOT, "f").await.expect("create");
    fs.set_xattr(f.ino, "user.a", b"1", 0).await.expect("set");
    assert_eq!(fs.store.xattr(f.ino, "user.a"), Ok(b"1".to_vec()));
    assert_eq!(fs.set_xattr(f.ino, "user.a", b"2", XATTR_CREATE).await, Err(FsError::Exists));
    assert_eq!(fs.store.xattr(f.ino, "user.a"), Ok(b"1".to_vec()));
    fs.set_xattr(f.ino, "user.a", b"3", XATTR_REPLACE).await.expect("replace");
    assert_eq!(fs.store.xattr(f.ino, "user.a"), Ok(b"3".to_vec()));
    assert_eq!(fs.set_xattr(f.ino, "user.b", b"4", XATTR_REPLACE).await, Err(FsError::NoAttr));
    assert_eq!(fs.store.xattr(f.ino, "user.b"), Err(FsError::NoAttr));
    fs.set_xattr(f.ino, "user.b", b"", XATTR_CREATE).await.expect("create an empty value");
    assert_eq!(fs.store.xattr(f.ino, "user.b"), Ok(Vec::new()));
    fs.set_xattr(f.ino, "user.a", b"5", 0).await.expect("set over");
    assert_eq!(fs.store.xattr_names(f.ino), Ok(vec!["user.a".to_string(), "user.b".to_string()]));

    let max = vec![0xab; 65536];
    fs.set_xattr(f.ino, "user.big", &max, 0).await.expect("largest value");
    assert_eq!(fs.store.xattr(f.ino, "user.big"), Ok(max));
    assert_eq!(fs.set_xattr(f.ino, "user.huge", &[0; 65537], 0).await, Err(FsError::TooLarge));
    assert_eq!(fs.set_xattr(f.ino, "", b"v", 0).await, Err(FsError::InvalidArgument));
    assert_eq!(fs.set_xattr(f.ino, "a\0b", b"v", 0).await, Err(FsError::InvalidArgument));
    assert_eq!(fs.set_xattr(f.ino, &"n".repeat(256), b"v", 0).await, Err(FsError::NameTooLong));
    fs.set_xattr(f.ino, &"n".repeat(255), b"v", 0).await.expect("a 255-byte name");
    assert_eq!(fs.set_xattr(MISSING, "user.a", b"v", 0).await, Err(FsError::NotFound));

    let t = at(3000);
    fs.unit(Command::RemoveXattr { op: ops::RemoveXattr { ino: f.ino, name: "user.a".into() }, now: t })
        .await
        .expect("remove");
    assert_eq!(fs.rec(f.ino).ctime, t);
    let remove =
        |name: &str| Command::RemoveXattr { op: ops::RemoveXattr { ino: f.ino, name: name.into() }, now: at(3001) };
    assert_eq!(fs.unit(remove("user.a")).await, Err(FsError::NoAttr));
    assert_eq!(fs.unit(remove("")).await, Err(FsError::InvalidArgument));
    assert_eq!(fs.rec(f.ino).ctime, t, "a refused removal changes nothing");
    assert_eq!(fs.store.xattr_names(f.ino).expect("names").len(), 3);

    // Xattrs go with the inode.
    fs.unlink(ROOT, "f").await.expect("unlink");
    assert_eq!(fs.store.xattr_names(f.ino), Ok(Vec::new()));
}

#[tokio::test]
async fn set_policy_bounds() {
    let fs = Fs::new();
    let d = fs.mkdir(ROOT, "d").await.expect("mkdir");
    assert_eq!(d.policy, Policy::default());
    for (r, l) in [(Some(0), None), (Some(9), None), (None, Some(-1)), (None, Some(20)), (Some(3), Some(20))] {
        assert_eq!(fs.set_policy(d.ino, r, l).await, Err(FsError::InvalidArgument), "{r:?} {l:?}");
    }
    assert_eq!(fs.rec(d.ino).policy, Policy::default(), "refused changes change nothing");
    let a = fs.set_policy(d.ino, Some(8), Some(19)).await.expect("largest policy");
    assert_eq!(a.policy, Policy { replication: 8, compression_level: 19 });
    let a = fs.set_policy(d.ino, Some(1), None).await.expect("replication only");
    assert_eq!(a.policy, Policy { replication: 1, compression_level: 19 });
    let a = fs.set_policy(d.ino, None, Some(0)).await.expect("compression only");
    assert_eq!(a.policy, Policy { replication: 1, compression_level: 0 });
    assert_eq!(fs.rec(d.ino).policy, a.policy);
    assert_eq!(fs.set_policy(MISSING, Some(1), None).await, Err(FsError::NotFound));
}

#[tokio::test]
async fn new_inodes_inherit_the_parent_policy() {
    let fs = Fs::new();
    let d = fs.mkdir(ROOT, "d").await.expect("mkdir d");
    let p = Policy { replication: 3, compression_level: 7 };
    fs.set_policy(d.ino, Some(3), Some(7)).await.expect("set policy");
    let e = fs.mkdir(d.ino, "e").await.expect("mkdir d/e");
    let f = fs.create(e.ino, "f").await.expect("create d/e/f");
    let s = fs.symlink(d.ino, "s", "e").await.expect("symlink d/s");
    assert_eq!((e.policy, f.policy, s.policy), (p, p, p));
    assert_eq!(fs.rec(f.ino).policy, p);
    let other = fs.create(ROOT, "other").await.expect("create other");
    assert_eq!(other.policy, Policy::default());
    // Existing inodes keep their policy when the parent's changes.
    fs.set_policy(d.ino, Some(1), None).await.expect("change d");
    assert_eq!(fs.rec(e.ino).policy, p);
    // A hard link does not change the inode's policy.
    fs.link(other.ino, d.ino, "other").await.expect("link");
    assert_eq!(fs.rec(other.ino).policy, Policy::default());
}

/// A regular file made in a scratch directory gets the class and, when
/// the requesting session's host has a node, that node as its home; the
/// purge of the inode orders the node to remove the plain file. Classes
/// of files that hold data do not change.
#[tokio::test]
async fn scratch_files_get_the_node_of_their_host() {
    let fs = Fs::new();
    let scratch = DataClass::Scratch { remove_lost: false };
    for (host, addr) in [("h1", "a:1"), ("h2", "b:1"), ("h2", "c:1")] {
        let record = NodeRecord { addr: addr.into(), host: host.into(), zone: "z".into() };
        fs.run(Command::RegisterNode { id: None, record }).await.expect("register");
    }
    fs.unit(Command::OpenSession { session: 42, host: "h2".into(), now: fs.now() }).await.expect("session");
    let requested = |seq: u64, cmd: Command| Command::Requested {
        id: ops::RequestId { session: 42, seq },
        answered_below: 0,
        cmd: Box::new(cmd),
    };
    let d = fs.mkdir(ROOT, "spill").await.expect("mkdir");
    let set = |ino, class| Command::SetClass { op: ops::SetClass { ino, class }, now: fs.now() };
    assert_eq!(fs.attr(set(d.ino, scratch)).await.expect("set class").class, scratch);
    let sub = fs.mkdir(d.ino, "sub").await.expect("mkdir sub");
    assert_eq!((sub.class, sub.home), (scratch, None), "a directory inherits the class, has no home");

    let f = fs.attr(requested(1, crate::test_util::new_file(sub.ino, "f", fs.now()))).await.expect("create");
    assert_eq!((f.class, f.home), (scratch, Some(NodeId(3))), "the newest node on the session's host");
    // Without a session (or a node on its host): the replicated layout.
    let g = fs.create(sub.ino, "g").await.expect("create");
    assert_eq!((g.class, g.home), (scratch, None));
    let s = fs.symlink(sub.ino, "s", "f").await.expect("symlink");
    assert_eq!(s.class, DataClass::Replicated);
    assert_eq!(fs.rec(f.ino).home, Some(NodeId(3)), "stored");

    // A file with data keeps its class; an empty one changes.
    fs.commit(g.ino, 0, (2, 1), 100, &[1]).await.expect("commit");
    assert_eq!(fs.attr(set(g.ino, DataClass::Replicated)).await, Err(FsError::NotSupported));
    let e = fs.create(ROOT, "e").await.expect("create");
    let e2 = fs.attr(requested(2, set(e.ino, scratch))).await.expect("empty file to scratch");
    assert_eq!((e2.class, e2.home), (scratch, Some(NodeId(3))));
    let e3 = fs.attr(set(e.ino, DataClass::Replicated)).await.expect("and back");
    assert_eq!((e3.class, e3.home), (DataClass::Replicated, None));
    assert_eq!(fs.take_deletions(3, 10).await, [(e.ino.0, Version::SCRATCH_FILE.0)], "its plain file goes");

    fs.unlink(sub.ino, "f").await.expect("unlink");
    assert_eq!(fs.take_deletions(3, 10).await, [(f.ino.0, Version::SCRATCH_FILE.0)]);
    assert!(fs.take_deletions(2, 10).await.is_empty());
}

// ---------------------------------------------------------------- ids and nodes

#[tokio::test]
async fn node_registration_assigns_ids() {
    let fs = &Fs::new();
    let rec = |n: &str| NodeRecord { addr: format!("{n}:1"), host: n.into(), zone: "z".into() };
    let register = |id: Option<u64>, r: NodeRecord| async move {
        match fs.run(Command::RegisterNode { id: id.map(NodeId), record: r }).await.expect("register") {
            Reply::Node(id) => id.0,
            other => panic!("expected a node id, got {other:?}"),
        }
    };
    assert_eq!(register(None, rec("a")).await, 1);
    assert_eq!(register(None, rec("b")).await, 2);
    assert_eq!(register(Some(1), rec("a2")).await, 1, "a known id is kept");
    assert_eq!(register(Some(77), rec("c")).await, 3, "an unknown id is replaced");
    let nodes = fs.store.nodes().expect("nodes");
    assert_eq!(nodes, [(NodeId(1), rec("a2")), (NodeId(2), rec("b")), (NodeId(3), rec("c"))]);
}

#[tokio::test]
async fn ids_are_unique_and_increasing() {
    let fs = Fs::new();
    let mut last = 0;
    for _ in 0..1000 {
        let id = fs.store.next_id().await.expect("next id");
        assert!(id > last, "{id} after {last}");
        last = id;
    }
}

// ---------------------------------------------------------------- the write-nothing rule

/// Every row of every table, for before/after comparisons.
fn snapshot(t: &Tables) -> Vec<String> {
    let mut out = Vec::new();
    macro_rules! dump {
        ($($table:ident),*) => {$(
            for row in t.$table.iter().expect("iterate a table") {
                let (k, v) = row.expect("read a row");
                out.push(format!("{} {:?} = {:?}", stringify!($table), k.value(), v.value()));
            }
        )*};
    }
    dump!(meta, inodes, dir_entries, chunks, xattrs, orphans, deletions, nodes);
    out
}

fn applied(t: &mut Tables, ctx: &Context, cmd: Command) -> Reply {
    apply(t, &cmd, ctx).unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn created(t: &mut Tables, ctx: &Context, cmd: Command) -> InodeId {
    match applied(t, ctx, cmd) {
        Reply::Attr(a) => a.ino,
        other => panic!("expected attributes, got {other:?}"),
    }
}

#[test]
fn a_refused_command_writes_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let db = redb::Database::create(dir.path().join("t.redb")).expect("create a database");
    let txn = db.begin_write().expect("begin");
    let mut t = Tables::open(&txn).expect("open tables");
    for (k, v) in [(meta_keys::NEXT_INODE, 2u64), (meta_keys::INODE_COUNT, 1), (meta_keys::ID_CEILING, 1)] {
        t.set_meta_u64(k, v).expect("meta");
    }
    let mut root = new_record(FileKind::Dir, 0o755, OWNER, Policy::default(), at(0));
    root.nlink = 2;
    root.parent = ROOT.0;
    t.put_inode(ROOT, &root).expect("root");
    let is_open = |_: InodeId| false;
    let ctx = Context { chunk_size: CHUNK, is_open: &is_open };
    let now = at(1);
    fn s(x: &str) -> String {
        x.to_string()
    }
    let mkdir = |parent, name: &str| Command::Mkdir {
        op: ops::Mkdir { parent, name: s(name), perm: 0o755, owner: OWNER },
        now,
    };
    let mknod = |parent, name: &str| Command::Mknod {
        op: ops::Mknod { parent, name: s(name), kind: FileKind::File, perm: 0o644, owner: OWNER, rdev: 0 },
        now,
    };

    let a = created(&mut t, &ctx, mkdir(ROOT, "a"));
    let b = created(&mut t, &ctx, mkdir(a, "b"));
    created(&mut t, &ctx, mkdir(ROOT, "empty"));
    let f = created(&mut t, &ctx, mknod(b, "f"));
    let g = created(&mut t, &ctx, mknod(ROOT, "g"));
    let commit = ChunkCommit {
        ino: f,
        index: 0,
        chunk: ChunkId(1),
        version: Version(5),
        length: 10,
        stored_bytes: 10,
        replicas: vec![NodeId(1)],
    };
    applied(&mut t, &ctx, Command::CommitChunk { commit: commit.clone(), now });
    applied(
        &mut t,
        &ctx,
        Command::SetXattr { op: ops::SetXattr { ino: f, name: s("user.x"), value: b"v".to_vec(), flags: 0 }, now },
    );
    // An inode at the link limit.
    let mut full = t.inode(g).expect("g");
    full.nlink = MAX_LINKS;
    t.put_inode(g, &full).expect("put g");

    let rename = |parent, name: &str, new_parent, new_name: &str, flags| Command::Rename {
        op: ops::Rename { parent, name: s(name), new_parent, new_name: s(new_name), flags },
        now,
    };
    let refused: Vec<(Command, FsError)> = vec![
        (mkdir(ROOT, "a"), FsError::Exists),
        (mkdir(f, "x"), FsError::NotDir),
        (mkdir(MISSING, "x"), FsError::NotFound),
        (mknod(ROOT, "a/b"), FsError::InvalidArgument),
        (
            Command::Mknod {
                op: ops::Mknod { parent: ROOT, name: s("d"), kind: FileKind::Dir, perm: 0, owner: OWNER, rdev: 0 },
                now,
            },
            FsError::InvalidArgument,
        ),
        (
            Command::Symlink { op: ops::Symlink { parent: ROOT, name: s("s"), target: s(""), owner: OWNER }, now },
            FsError::InvalidArgument,
        ),
        (
            Command::Symlink { op: ops::Symlink { parent: ROOT, name: s("a"), target: s("t"), owner: OWNER }, now },
            FsError::Exists,
        ),
        (Command::Link { op: ops::Link { ino: a, new_parent: ROOT, new_name: s("x") }, now }, FsError::NotPermitted),
        (Command::Link { op: ops::Link { ino: g, new_parent: ROOT, new_name: s("x") }, now }, FsError::TooManyLinks),
        (Command::Link { op: ops::Link { ino: f, new_parent: ROOT, new_name: s("g") }, now }, FsError::Exists),
        (Command::Unlink { op: ops::Unlink { parent: ROOT, name: s("a") }, now }, FsError::IsDir),
        (Command::Unlink { op: ops::Unlink { parent: ROOT, name: s("zz") }, now }, FsError::NotFound),
        (Command::Rmdir { op: ops::Rmdir { parent: ROOT, name: s("a") }, now }, FsError::NotEmpty),
        (Command::Rmdir { op: ops::Rmdir { parent: ROOT, name: s("g") }, now }, FsError::NotDir),
        (rename(ROOT, "a", b, "a", 0), FsError::InvalidArgument),
        (rename(ROOT, "a", ROOT, "empty", RENAME_EXCHANGE | RENAME_NOREPLACE), FsError::InvalidArgument),
        (rename(ROOT, "a", b, "f", RENAME_EXCHANGE), FsError::InvalidArgument),
        (rename(ROOT, "a", ROOT, "g", 0), FsError::NotDir),
        (rename(ROOT, "g", ROOT, "a", 0), FsError::IsDir),
        (rename(ROOT, "empty", ROOT, "a", 0), FsError::NotEmpty),
        (rename(ROOT, "g", ROOT, "empty", RENAME_NOREPLACE), FsError::Exists),
        (rename(ROOT, "g", ROOT, "zz", RENAME_EXCHANGE), FsError::NotFound),
        (rename(ROOT, "zz", ROOT, "g", 0), FsError::NotFound),
        (
            Command::SetAttr {
                op: ops::SetAttrs { ino: a, set: SetAttr { size: Some(0), mode: Some(0), ..SetAttr::default() } },
                now,
            },
            FsError::IsDir,
        ),
        (Command::SetAttr { op: ops::SetAttrs { ino: MISSING, set: SetAttr::default() }, now }, FsError::NotFound),
        (Command::CommitChunk { commit: ChunkCommit { ino: a, ..commit.clone() }, now }, FsError::InvalidArgument),
        (
            Command::CommitChunk {
                commit: ChunkCommit { index: u64::MAX, version: Version(9), ..commit.clone() },
                now,
            },
            FsError::FileTooLarge,
        ),
        (
            Command::CommitChunk { commit: ChunkCommit { replicas: Vec::new(), ..commit.clone() }, now },
            FsError::InvalidArgument,
        ),
        (
            Command::SetXattr {
                op: ops::SetXattr { ino: f, name: s("user.x"), value: vec![], flags: XATTR_CREATE },
                now,
            },
            FsError::Exists,
        ),
        (
            Command::SetXattr {
                op: ops::SetXattr { ino: f, name: s("user.y"), value: vec![], flags: XATTR_REPLACE },
                now,
            },
            FsError::NoAttr,
        ),
        (
            Command::SetXattr { op: ops::SetXattr { ino: f, name: s("user.y"), value: vec![0; 65537], flags: 0 }, now },
            FsError::TooLarge,
        ),
        (Command::RemoveXattr { op: ops::RemoveXattr { ino: f, name: s("user.y") }, now }, FsError::NoAttr),
        (
            Command::SetPolicy {
                op: ops::SetPolicy { ino: a, replication: Some(2), compression_level: Some(-3) },
                now,
            },
            FsError::InvalidArgument,
        ),
        (
            Command::SetPolicy { op: ops::SetPolicy { ino: MISSING, replication: None, compression_level: None }, now },
            FsError::NotFound,
        ),
    ];
    for (cmd, want) in refused {
        let before = snapshot(&t);
        match apply(&mut t, &cmd, &ctx) {
            Err(ApplyError::Fs(e)) => assert_eq!(e, want, "{cmd:?}"),
            other => panic!("{cmd:?}: expected {want:?}, got {other:?}"),
        }
        assert_eq!(snapshot(&t), before, "{cmd:?} was refused but wrote");
    }
}
