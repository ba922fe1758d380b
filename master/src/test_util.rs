//! Helpers shared by the master's unit tests: a store in a directory and
//! the commands that build a small filesystem in it.

use crate::namespace::{Command, Reply};
use crate::store::Store;
use std::path::Path;
use stripefs_proto::ops;
use stripefs_proto::types::{ChunkCommit, FileKind, Owner, Timestamp};
use stripefs_proto::{ChunkId, InodeId, NodeId, Version};
use tokio_util::sync::CancellationToken;

/// The chunk size of test filesystems.
pub(crate) const CHUNK: u32 = 64 << 10;
/// The owner of everything tests create.
pub(crate) const OWNER: Owner = Owner { uid: 1000, gid: 100 };

/// The command creating regular file `name` (0644, [`OWNER`]) in `parent`.
pub(crate) fn new_file(parent: InodeId, name: &str, now: Timestamp) -> Command {
    Command::Mknod {
        op: ops::Mknod { parent, name: name.into(), kind: FileKind::File, perm: 0o644, owner: OWNER, rdev: 0 },
        now,
    }
}

pub(crate) fn open_store(dir: &Path) -> Store {
    Store::open(dir, Some(CHUNK), Box::new(|_| false), CancellationToken::new()).expect("open the store")
}

pub(crate) async fn exec(store: &Store, cmd: Command) -> Reply {
    store.execute(cmd.clone()).await.unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub(crate) async fn mkdir(store: &Store, parent: InodeId, name: &str) -> InodeId {
    match exec(
        store,
        Command::Mkdir {
            op: ops::Mkdir { parent, name: name.into(), perm: 0o755, owner: OWNER },
            now: Timestamp::now(),
        },
    )
    .await
    {
        Reply::Attr(a) => a.ino,
        other => panic!("mkdir answered {other:?}"),
    }
}

pub(crate) async fn mknod(store: &Store, parent: InodeId, name: &str) -> InodeId {
    let cmd = new_file(parent, name, Timestamp::now());
    match exec(store, cmd).await {
        Reply::Attr(a) => a.ino,
        other => panic!("mknod answered {other:?}"),
    }
}

pub(crate) async fn commit(
    store: &Store,
    ino: InodeId,
    index: u64,
    chunk: u64,
    version: u64,
    length: u32,
    replicas: &[NodeId],
) {
    let commit = ChunkCommit {
        ino,
        index,
        chunk: ChunkId(chunk),
        version: Version(version),
        length,
        stored_bytes: length as u64,
        replicas: replicas.to_vec(),
    };
    exec(store, Command::CommitChunk { commit, now: Timestamp::now() }).await;
}

/// What a killed master leaves: the files of the data directory `from` as
/// they are now (a process crash keeps everything it wrote; only its
/// memory is lost), copied to `to` while the master still runs, so nothing
/// is checkpointed on the way out.
pub(crate) fn copy_live(from: &Path, to: &Path) {
    let out =
        std::process::Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).output().expect("cp");
    assert!(out.status.success(), "cp: {}", String::from_utf8_lossy(&out.stderr));
}
