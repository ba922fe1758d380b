//! In-process tests of whole nodes talking to each other.

use super::*;
use crate::MAX_CHAIN;
use stripefs_proto::block::{decode, BlockEncoder, BLOCK_SIZE};
use stripefs_proto::net::{connect_node, context_with_timeout};
use stripefs_proto::types::EncodedBlock;
use stripefs_proto::{ChunkId, FsError, NodeServiceClient, Version};
use tempfile::TempDir;
use tokio::task::JoinHandle;

pub(crate) fn secret() -> Secret {
    Secret::new(b"0123456789abcdef".to_vec(), "test").expect("secret")
}

/// An address where nothing listens.
pub(crate) async fn refused_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    addr
}

pub(crate) struct TestNode {
    pub(crate) addr: String,
    pub(crate) dir: TempDir,
    pub(crate) task: JoinHandle<anyhow::Result<()>>,
}

pub(crate) async fn start_node(master: &str, shutdown: &CancellationToken) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    start_node_in(dir, master, shutdown).await
}

pub(crate) async fn start_node_in(dir: TempDir, master: &str, shutdown: &CancellationToken) -> TestNode {
    start_node_with(dir, master, shutdown, crate::DEFAULT_WRITE_MEMORY_BYTES).await
}

/// A node whose memory for writes in progress is `write_memory_bytes`.
async fn start_node_with(
    dir: TempDir,
    master: &str,
    shutdown: &CancellationToken,
    write_memory_bytes: u64,
) -> TestNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        advertise_addr: addr.clone(),
        master_addr: master.to_string(),
        host: "test-host".into(),
        zone: "test-zone".into(),
        secret: secret(),
        heartbeat_interval: Duration::from_millis(50),
        reserve_bytes: 0,
        scrub_bytes_per_sec: 0,
        scrub_pause: Duration::from_secs(3600),
        buffered_writes: false,
        write_memory_bytes,
        metrics_addr: None,
    };
    let task = tokio::spawn(run(cfg, listener, shutdown.clone()));
    TestNode { addr, dir, task }
}

pub(crate) async fn stop(shutdown: &CancellationToken, nodes: Vec<TestNode>) {
    shutdown.cancel();
    for n in nodes {
        let r = tokio::time::timeout(Duration::from_secs(10), n.task).await.expect("node stops promptly");
        r.expect("join").expect("node ran cleanly");
    }
}

async fn client(addr: &str) -> NodeServiceClient {
    connect_node(addr, &secret(), Duration::from_secs(5)).await.expect("connect")
}

fn chunk_data() -> (Vec<u8>, Vec<EncodedBlock>) {
    let mut data: Vec<u8> = (0..3 * BLOCK_SIZE).map(|i| (i / 97 % 256) as u8).collect();
    data.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let blocks = BlockEncoder::new(1).encode_all(&data);
    (data, blocks)
}

async fn read_all(c: &NodeServiceClient, chunk: ChunkId, version: Version) -> Result<Vec<u8>, FsError> {
    let blocks =
        c.read_blocks(context_with_timeout(Duration::from_secs(10)), chunk, version, 0, 1024).await.expect("rpc")?;
    Ok(blocks.iter().flat_map(|b| decode(b).expect("decode")).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_written_down_a_chain_are_read_and_deleted() {
    let master = refused_addr().await;
    let shutdown = CancellationToken::new();
    let a = start_node(&master, &shutdown).await;
    let b = start_node(&master, &shutdown).await;
    let c = start_node(&master, &shutdown).await;
    let pool = Arc::new(stripefs_proto::data_conn::DataPool::new(secret()));
    let (data, blocks) = chunk_data();
    let (chunk, version) = (ChunkId(77), Version(1));
    let mut h = header(chunk.0, data.len(), &blocks, vec![b.addr.clone(), c.addr.clone()]);
    h.sync = true;
    let stored = data_write(&pool, &a.addr, h, blocks).await.expect("write");
    assert!(stored > 0 && stored < data.len() as u64, "compressed replica, got {stored}");
    for n in [&a, &b, &c] {
        assert_eq!(read_all(&client(&n.addr).await, chunk, version).await, Ok(data.clone()), "node {}", n.addr);
    }
    // A partial range.
    let ca = client(&a.addr).await;
    let two = ca.read_blocks(context_with_timeout(Duration::from_secs(10)), chunk, version, 2, 5).await.expect("rpc");
    assert_eq!(two.expect("read").len(), 2);

    ca.delete_chunk(context_with_timeout(Duration::from_secs(10)), chunk, version).await.expect("rpc").expect("delete");
    assert_eq!(read_all(&ca, chunk, version).await, Err(FsError::NotFound));
    let cb = client(&b.addr).await;
    assert_eq!(read_all(&cb, chunk, version).await, Ok(data));
    stop(&shutdown, vec![a, b, c]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_requests_get_error_replies() {
    use stripefs_proto::data_conn::{DataError, DataPool};
    let master = refused_addr().await;
    let shutdown = CancellationToken::new();
    let a = start_node(&master, &shutdown).await;
    let ca = client(&a.addr).await;
    let ctx = || context_with_timeout(Duration::from_secs(10));
    let r = ca.read_blocks(ctx(), ChunkId(5), Version(9), 0, 5000).await.expect("rpc");
    assert_eq!(r, Err(FsError::InvalidArgument));
    let r = ca.read_blocks(ctx(), ChunkId(5), Version(1), 0, 1).await.expect("rpc");
    assert_eq!(r, Err(FsError::NotFound));

    // A chain longer than any placement makes is refused.
    let pool = Arc::new(DataPool::new(secret()));
    let (data, blocks) = chunk_data();
    let long_chain = vec![refused_addr().await; MAX_CHAIN + 1];
    let h = header(5, data.len(), &blocks, long_chain);
    let r = data_write(&pool, &a.addr, h, blocks.clone()).await;
    assert!(matches!(r, Err(DataError::Refused(FsError::InvalidArgument))), "{r:?}");
    assert_eq!(read_all(&ca, ChunkId(5), Version(1)).await, Err(FsError::NotFound));
    // The node still serves after it.
    let h = header(5, data.len(), &blocks, vec![]);
    data_write(&pool, &a.addr, h, blocks).await.expect("write");
    assert_eq!(read_all(&ca, ChunkId(5), Version(1)).await, Ok(data));
    stop(&shutdown, vec![a]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_data_dir_fails_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cfg = Config {
        data_dir: file,
        advertise_addr: "127.0.0.1:1".into(),
        master_addr: refused_addr().await,
        host: "h".into(),
        zone: "z".into(),
        secret: secret(),
        heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
        reserve_bytes: 0,
        scrub_bytes_per_sec: 0,
        scrub_pause: Duration::from_secs(3600),
        buffered_writes: false,
        write_memory_bytes: crate::DEFAULT_WRITE_MEMORY_BYTES,
        metrics_addr: None,
    };
    let e = run(cfg, listener, CancellationToken::new()).await.expect_err("must fail");
    assert!(format!("{e:#}").contains("data directory"), "{e:#}");
}

/// Writes over the data path from the blocking pool, as the client does.
/// Writes `blocks` to `addr` over the data path, from the blocking pool.
pub(crate) async fn data_write(
    pool: &Arc<stripefs_proto::data_conn::DataPool>,
    addr: &str,
    header: stripefs_proto::data_conn::WriteHeader,
    blocks: Vec<EncodedBlock>,
) -> Result<u64, stripefs_proto::data_conn::DataError> {
    let (pool, addr, rt) = (pool.clone(), addr.to_string(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || {
        let payload: Vec<&[u8]> = blocks.iter().map(|b| &b.data[..]).collect();
        pool.write(&rt, &addr, &header, &payload)
    })
    .await
    .expect("join")
}

fn header(
    chunk: u64,
    length: usize,
    blocks: &[EncodedBlock],
    chain: Vec<String>,
) -> stripefs_proto::data_conn::WriteHeader {
    stripefs_proto::data_conn::WriteHeader::new(
        ChunkId(chunk),
        Version(1),
        length as u32,
        blocks,
        chain,
        false,
        Duration::from_secs(30),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chain_writes_over_the_data_path_land_on_every_node() {
    use stripefs_proto::data_conn::{DataError, DataPool};
    let master = refused_addr().await;
    let shutdown = CancellationToken::new();
    let a = start_node(&master, &shutdown).await;
    let b = start_node(&master, &shutdown).await;
    let c = start_node(&master, &shutdown).await;
    let pool = Arc::new(DataPool::new(secret()));
    // A small compressible chunk, and 3 MiB of noise (stored raw, and
    // large enough for direct writes), twice each on the same connection.
    let (small, small_blocks) = chunk_data();
    let noise: Vec<u8> = (0..3 * 1024 * 1024 + 777u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let noise_blocks = BlockEncoder::new(1).encode_all(&noise);
    for round in 0..2u64 {
        for (k, (data, blocks)) in [(&small, &small_blocks), (&noise, &noise_blocks)].into_iter().enumerate() {
            let chunk = 100 + round * 10 + k as u64;
            let h = header(chunk, data.len(), blocks, vec![b.addr.clone(), c.addr.clone()]);
            let stored = data_write(&pool, &a.addr, h, blocks.clone()).await.expect("write");
            assert_eq!(
                stored as usize,
                stripefs_proto::replica::head_len(blocks.len()) + blocks.iter().map(|b| b.data.len()).sum::<usize>()
            );
            for n in [&a, &b, &c] {
                let back = read_all(&client(&n.addr).await, ChunkId(chunk), Version(1)).await;
                assert!(back.as_ref() == Ok(data), "chunk {chunk} on node {}", n.addr);
            }
        }
    }

    // A block damaged on the way is refused, nothing is stored, and the
    // connection serves the next write.
    let mut bad = small_blocks.clone();
    let mut damaged = bad[1].data.to_vec();
    damaged[3] ^= 1;
    bad[1].data = damaged.into();
    let h = header(200, small.len(), &small_blocks, vec![]);
    let r = data_write(&pool, &a.addr, h, bad).await;
    assert!(matches!(r, Err(DataError::Refused(FsError::Corrupt))), "{r:?}");
    assert_eq!(read_all(&client(&a.addr).await, ChunkId(200), Version(1)).await, Err(FsError::NotFound));
    let h = header(201, small.len(), &small_blocks, vec![]);
    data_write(&pool, &a.addr, h, small_blocks.clone()).await.expect("write after a refused one");

    // A dead chain peer: the first node stores its replica but answers
    // Unavailable, so the writer places the chain elsewhere.
    let h = header(202, small.len(), &small_blocks, vec![refused_addr().await]);
    let r = data_write(&pool, &a.addr, h, small_blocks.clone()).await;
    assert!(matches!(r, Err(DataError::Refused(FsError::Unavailable))), "{r:?}");

    // A header that does not add up is refused.
    let mut h = header(203, small.len(), &small_blocks, vec![]);
    h.length += 1;
    let r = data_write(&pool, &a.addr, h, small_blocks.clone()).await;
    assert!(matches!(r, Err(DataError::Refused(FsError::InvalidArgument))), "{r:?}");

    // A stopped node takes no more writes on the connections it had.
    let h = header(204, small.len(), &small_blocks, vec![]);
    data_write(&pool, &c.addr, h.clone(), small_blocks.clone()).await.expect("write to c");
    let c_addr = c.addr.clone();
    stop(&shutdown, vec![a, b, c]).await;
    let r = data_write(&pool, &c_addr, h, small_blocks).await;
    assert!(r.is_err(), "a stopped node must not take writes: {r:?}");
}

/// Nodes whose write memory holds one chunk at a time: writers' writes
/// wait their turn, writes passed along a chain never wait (two chains
/// running opposite ways through two nodes would otherwise wait on each
/// other), and a write that cannot get memory in half its time is refused
/// as Unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_memory_bounds_writes_without_blocking_chains() {
    use stripefs_proto::data_conn::{DataError, DataPool};
    let master = refused_addr().await;
    let shutdown = CancellationToken::new();
    let tiny = 1; // every writer's write runs alone
    let a = start_node_with(tempfile::tempdir().expect("tempdir"), &master, &shutdown, tiny).await;
    let b = start_node_with(tempfile::tempdir().expect("tempdir"), &master, &shutdown, tiny).await;
    let pool = Arc::new(DataPool::new(secret()));
    let (small, blocks) = chunk_data();

    // 16 writes at once, half a -> b and half b -> a.
    let mut writes = Vec::new();
    for i in 0..16u64 {
        let (head, next) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let h = header(300 + i, small.len(), &blocks, vec![next.addr.clone()]);
        let (pool, addr, blocks) = (pool.clone(), head.addr.clone(), blocks.clone());
        writes.push(tokio::spawn(async move { data_write(&pool, &addr, h, blocks).await }));
    }
    for (i, w) in writes.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(20), w).await.expect("chains must not wait on each other");
        r.expect("join").unwrap_or_else(|e| panic!("write {i}: {e}"));
    }
    for i in 0..16u64 {
        for n in [&a, &b] {
            let back = read_all(&client(&n.addr).await, ChunkId(300 + i), Version(1)).await;
            assert!(back.as_ref() == Ok(&small), "chunk {} on {}", 300 + i, n.addr);
        }
    }

    // A write whose next node never answers holds a's memory ...
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut h = header(400, small.len(), &blocks, vec![silent.local_addr().expect("addr").to_string()]);
    h.timeout_ms = 3000;
    let holder = {
        let (pool, addr, blocks) = (pool.clone(), a.addr.clone(), blocks.clone());
        tokio::spawn(async move { data_write(&pool, &addr, h, blocks).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... so a writer's write that may take 400 ms is refused after 200 ...
    let mut h = header(401, small.len(), &blocks, vec![]);
    h.timeout_ms = 400;
    let r = data_write(&pool, &a.addr, h, blocks.clone()).await;
    assert!(matches!(r, Err(DataError::Refused(FsError::Unavailable))), "{r:?}");
    assert_eq!(read_all(&client(&a.addr).await, ChunkId(401), Version(1)).await, Err(FsError::NotFound));
    // ... while one passed on by another node goes through at once.
    let mut h = header(402, small.len(), &blocks, vec![]);
    h.forwarded = true;
    h.timeout_ms = 400;
    data_write(&pool, &a.addr, h, blocks.clone()).await.expect("a forwarded write does not wait");
    let r = holder.await.expect("join");
    assert!(matches!(r, Err(DataError::Refused(FsError::Unavailable))), "the silent peer fails the chain: {r:?}");
    // The memory came back.
    let h = header(403, small.len(), &blocks, vec![]);
    data_write(&pool, &a.addr, h, blocks.clone()).await.expect("write after the memory came back");
    drop(silent);
    stop(&shutdown, vec![a, b]).await;
}
