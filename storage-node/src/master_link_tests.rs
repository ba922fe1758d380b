//! Tests of the master link: identity file, backoff, and a node against a fake master.

use super::*;

#[test]
fn identity_round_trips_through_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(Identity::load(dir.path()).expect("absent"), Identity::default());
    let id = Identity { node_id: Some(NodeId(42)), fs_id: Some("00ff3a".to_string()) };
    id.save(dir.path()).expect("save");
    let text = std::fs::read_to_string(dir.path().join(IDENTITY_FILE)).expect("read");
    assert_eq!(text, "node_id=42\nfs_id=00ff3a\n");
    assert_eq!(Identity::load(dir.path()).expect("load"), id);
}

#[test]
fn malformed_identities_are_refused() {
    for text in ["node_id=x\nfs_id=ab\n", "node_id=1\n", "fs_id=ab\n", "garbage\n", "node_id=1\nfs_id=a b\n"] {
        assert!(Identity::parse(text).is_err(), "{text:?}");
    }
    assert!(Identity::parse("").expect("empty").node_id.is_none());
}

#[tokio::test]
async fn backoff_doubles_up_to_its_cap_and_stops_on_shutdown() {
    let mut b = Backoff::new();
    let seen: Vec<Duration> = (0..7).map(|_| b.advance()).collect();
    assert_eq!(seen[0], Duration::from_millis(200));
    assert_eq!(seen[3], Duration::from_millis(1600));
    assert_eq!(seen[6], BACKOFF_MAX);
    let token = CancellationToken::new();
    token.cancel();
    assert!(!b.wait(&token).await);
    b.reset();
    assert_eq!(b.advance(), BACKOFF_START);
}

// ---- A fake master ------------------------------------------------------

use crate::node::tests::{data_write, refused_addr, secret, start_node, start_node_in, stop};
use futures::StreamExt;
use std::sync::Mutex;
use stripefs_proto::block::BlockEncoder;
use stripefs_proto::data_conn::{DataPool, WriteHeader};
use stripefs_proto::net::{accept_loop, connect_node, transport};
use stripefs_proto::ops::*;
use stripefs_proto::types::*;
use stripefs_proto::{ChunkId, InodeId, MasterService, Version};
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::TcpListener;

#[derive(Default)]
struct MasterState {
    fs_id: String,
    next_id: u64,
    hellos: Vec<NodeHello>,
    heartbeats: Vec<Heartbeat>,
    /// Deletions handed out with the next heartbeat.
    delete: Vec<(ChunkId, Version)>,
    /// Answer the next heartbeat with NotFound.
    forget: bool,
    /// The term heartbeat replies carry.
    term: u64,
}

#[derive(Clone)]
struct FakeMaster(Arc<Mutex<MasterState>>);

impl FakeMaster {
    fn state(&self) -> std::sync::MutexGuard<'_, MasterState> {
        self.0.lock().expect("fake master state")
    }
}

macro_rules! unsupported {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            async fn $name(self, _: Context, $($arg: $ty),*) -> Result<$ret, FsError> {
                $(let _ = $arg;)*
                Err(FsError::NotSupported)
            }
        )*
    };
}

impl MasterService for FakeMaster {
    async fn group_change(self, _: Context, _: GroupChange) -> Result<GroupStatus, String> {
        Err("not a master".into())
    }

    unsupported! {
        fs_info() -> FsInfo;
        lookup(parent: InodeId, name: String) -> Attr;
        getattr(ino: InodeId) -> Attr;
        setattr(req: Request<SetAttrs>) -> Acked<Attr>;
        mknod(req: Request<Mknod>) -> Acked<Attr>;
        create(req: Request<Create>) -> Acked<NewEntry>;
        mkdir(req: Request<Mkdir>) -> Acked<NewEntry>;
        symlink(req: Request<Symlink>) -> Acked<Attr>;
        readlink(ino: InodeId) -> String;
        link(req: Request<stripefs_proto::ops::Link>) -> Acked<Attr>;
        unlink(req: Request<Unlink>) -> Acked<Option<Attr>>;
        rmdir(req: Request<Rmdir>) -> Acked<Option<Attr>>;
        rename(req: Request<Rename>) -> Acked<RenamedDirs>;
        readdir(dir: InodeId, after: Option<String>, limit: u32) -> Vec<DirEntry>;
        open(ino: InodeId) -> Opened;
        release(ino: InodeId) -> ();
        chunks(ino: InodeId, first: u64, count: u64) -> Vec<ChunkLoc>;
        alloc_chunk(ino: InodeId, index: u64, client_host: String, exclude: Vec<NodeId>) -> ChunkAlloc;
        commit_chunk(req: Request<ChunkCommit>) -> Acked<Attr>;
        statfs() -> StatFs;
        setxattr(req: Request<SetXattr>) -> Acked<()>;
        getxattr(ino: InodeId, name: String) -> Vec<u8>;
        listxattr(ino: InodeId) -> Vec<String>;
        removexattr(req: Request<RemoveXattr>) -> Acked<()>;
        set_policy(req: Request<SetPolicy>) -> Acked<Attr>;
        set_class(req: Request<SetClass>) -> Acked<Attr>;
        nodes() -> Vec<NodeStatus>;
        report_inventory(node: NodeId, items: Vec<InventoryItem>) -> ();
        report_corrupt(node: NodeId, chunk: ChunkId, version: Version) -> ();
        fsck(repair: bool) -> FsckReport;
        workers() -> Vec<WorkerStatus>;
        leader() -> Option<String>;
        raft(msg: Vec<u8>) -> Vec<u8>;
        group() -> GroupStatus;
        open_session(session: u64, host: String) -> SessionInfo;
        session_replayed(session: u64) -> ();
        close_session(session: u64) -> ();
        sync() -> Durability;
        lease_dir(session: u64, dir: InodeId) -> Option<DirLease>;
        lease_poll(session: u64, held: Vec<(InodeId, u64)>, released: Vec<(InodeId, u64)>) -> LeasePoll;
    }

    async fn register_node(self, _: Context, hello: NodeHello) -> Result<Registered, FsError> {
        let mut s = self.state();
        let node_id = match hello.node_id {
            Some(id) => id,
            None => {
                s.next_id += 1;
                NodeId(s.next_id)
            }
        };
        s.hellos.push(hello);
        Ok(Registered { node_id, fs_id: s.fs_id.clone() })
    }

    async fn heartbeat(self, _: Context, hb: Heartbeat) -> Result<HeartbeatReply, FsError> {
        let mut s = self.state();
        if std::mem::take(&mut s.forget) {
            return Err(FsError::NotFound);
        }
        s.heartbeats.push(hb);
        Ok(HeartbeatReply { delete: std::mem::take(&mut s.delete), replicate: Vec::new(), term: s.term })
    }
}

/// Serves a fake master of filesystem `fs_id` on `listener` until `shutdown`.
fn start_master(listener: TcpListener, fs_id: &str, shutdown: &CancellationToken) -> FakeMaster {
    let master =
        FakeMaster(Arc::new(Mutex::new(MasterState { fs_id: fs_id.into(), next_id: 100, ..Default::default() })));
    let server = master.clone();
    let handle = move |stream, _peer| {
        let server = server.clone();
        tokio::spawn(BaseChannel::with_defaults(transport(stream)).execute(server.serve()).for_each(|f| async {
            tokio::spawn(f);
        }));
    };
    tokio::spawn(accept_loop(listener, secret(), shutdown.clone(), handle));
    master
}

/// Polls `cond` until it holds, for at most 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_registers_heartbeats_and_applies_deletions() {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let master_addr = listener.local_addr().expect("addr").to_string();
    let master = start_master(listener, "feedf00d", &shutdown);
    let node = start_node(&master_addr, &shutdown).await;

    eventually("the node registered", || !master.state().hellos.is_empty()).await;
    let hello = master.state().hellos[0].clone();
    assert_eq!((hello.node_id, hello.fs_id, hello.addr.as_str()), (None, None, node.addr.as_str()));
    assert_eq!((hello.host.as_str(), hello.zone.as_str()), ("test-host", "test-zone"));
    let id_path = node.dir.path().join(IDENTITY_FILE);
    eventually("node.id was written", || id_path.exists()).await;
    assert_eq!(std::fs::read_to_string(&id_path).expect("read"), "node_id=101\nfs_id=feedf00d\n");

    // Store a replica; heartbeats report it.
    let data = vec![9u8; 1000];
    let blocks = BlockEncoder::new(0).encode_all(&data);
    let h = WriteHeader::new(ChunkId(3), Version(4), 1000, &blocks, vec![], true, Duration::from_secs(10));
    let pool = std::sync::Arc::new(DataPool::new(secret()));
    let stored = data_write(&pool, &node.addr, h, blocks).await.expect("write");
    let client = connect_node(&node.addr, &secret(), Duration::from_secs(5)).await.expect("connect");
    let ctx = || stripefs_proto::net::context_with_timeout(Duration::from_secs(10));
    eventually("a heartbeat reports the replica", || {
        master.state().heartbeats.last().is_some_and(|hb| hb.chunk_count == 1 && hb.used_bytes == stored)
    })
    .await;
    let hb = master.state().heartbeats.last().cloned().expect("heartbeat");
    assert_eq!(hb.node, NodeId(101));
    assert!(hb.capacity_bytes > 0 && hb.free_bytes <= hb.capacity_bytes, "{hb:?}");
    assert!(!hb.disk.is_empty(), "a node knows which filesystem holds its chunks: {hb:?}");

    // The master asks for its deletion.
    master.state().delete = vec![(ChunkId(3), Version(4)), (ChunkId(99), Version(1))];
    eventually("a heartbeat reports the deletion", || {
        master.state().heartbeats.last().is_some_and(|hb| hb.chunk_count == 0 && hb.used_bytes == 0)
    })
    .await;
    let r = client.read_blocks(ctx(), ChunkId(3), Version(4), 0, 1).await.expect("rpc");
    assert_eq!(r, Err(FsError::NotFound));

    // A master of a newer term gives orders; then one of an older term (a
    // deposed leader) asks to delete a replica: the node refuses, and
    // remembers the term across a restart (tests in fence.rs).
    let stored = data_write(
        &pool,
        &node.addr,
        WriteHeader::new(
            ChunkId(5),
            Version(1),
            1000,
            &BlockEncoder::new(0).encode_all(&data),
            vec![],
            true,
            Duration::from_secs(10),
        ),
        BlockEncoder::new(0).encode_all(&data),
    )
    .await
    .expect("write");
    assert!(stored > 0);
    master.state().term = 7;
    let seen = master.state().heartbeats.len();
    eventually("a heartbeat of term 7", || master.state().heartbeats.len() > seen + 1).await;
    master.state().term = 6;
    master.state().delete = vec![(ChunkId(5), Version(1))];
    eventually("the node registers again, finding the leader", || master.state().hellos.len() >= 2).await;
    let r = client.read_blocks(ctx(), ChunkId(5), Version(1), 0, 1).await.expect("rpc");
    assert!(r.is_ok(), "a deposed leader's deletion was applied: {r:?}");
    assert_eq!(std::fs::read_to_string(node.dir.path().join(crate::fence::FENCE_FILE)).expect("fence").trim(), "7");
    master.state().term = 7;
    master.state().delete.clear();

    // The master forgets the node: it registers again under its id.
    let hellos = master.state().hellos.len();
    master.state().forget = true;
    eventually("the node registered again", || master.state().hellos.len() > hellos).await;
    let again = master.state().hellos[hellos].clone();
    assert_eq!((again.node_id, again.fs_id.as_deref()), (Some(NodeId(101)), Some("feedf00d")));

    stop(&shutdown, vec![node]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_keeps_retrying_until_the_master_appears() {
    let shutdown = CancellationToken::new();
    let master_addr = refused_addr().await;
    let dir = tempfile::tempdir().expect("tempdir");
    Identity { node_id: Some(NodeId(7)), fs_id: Some("abcd".into()) }.save(dir.path()).expect("save");
    let node = start_node_in(dir, &master_addr, &shutdown).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let listener = TcpListener::bind(&master_addr).await.expect("rebind the master port");
    let master = start_master(listener, "abcd", &shutdown);
    eventually("the node registered", || !master.state().hellos.is_empty()).await;
    let hello = master.state().hellos[0].clone();
    assert_eq!((hello.node_id, hello.fs_id.as_deref()), (Some(NodeId(7)), Some("abcd")));
    eventually("the node heartbeats", || !master.state().heartbeats.is_empty()).await;
    stop(&shutdown, vec![node]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_of_another_filesystem_stops_with_an_error() {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let master_addr = listener.local_addr().expect("addr").to_string();
    let _master = start_master(listener, "bbbb", &shutdown);
    let dir = tempfile::tempdir().expect("tempdir");
    Identity { node_id: Some(NodeId(7)), fs_id: Some("aaaa".into()) }.save(dir.path()).expect("save");
    let node = start_node_in(dir, &master_addr, &shutdown).await;
    let r = tokio::time::timeout(Duration::from_secs(10), node.task).await.expect("the node stops by itself");
    let e = r.expect("join").expect_err("must fail");
    assert!(format!("{e:#}").contains("belongs to filesystem aaaa"), "{e:#}");
    let text = std::fs::read_to_string(node.dir.path().join(IDENTITY_FILE)).expect("read");
    assert_eq!(text, "node_id=7\nfs_id=aaaa\n", "the identity must be left alone");
    shutdown.cancel();
}
