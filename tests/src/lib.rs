//! Test harness: a real stripefs cluster (master and storage nodes
//! in-process, each on its own runtime and thread, listening on loopback
//! port 0, data in temporary directories) and real FUSE mounts of it.
//!
//! Everything a [`TestCluster`] or [`TestMount`] starts is stopped and
//! unmounted when it is dropped, also when a test panics.

pub mod faults;
pub mod group;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stripefs_client::MountOptions;
use stripefs_mount::BackgroundMount;
use stripefs_proto::net::Secret;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The secret every test cluster uses.
pub const TEST_SECRET: &[u8] = b"stripefs-test-secret-0123456789";

/// Installs a log subscriber once per process (RUST_LOG controls it).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,tarpc=error".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Fails the test with a clear message when FUSE cannot be used here.
pub fn must_have_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "FUSE is not available: /dev/fuse is missing. Install fuse3 (apt-get install -y fuse3) and load the fuse module."
    );
    assert!(nix::unistd::geteuid().is_root(), "these tests mount FUSE filesystems directly and must run as root");
}

/// The test secret.
pub fn secret() -> Secret {
    Secret::new(TEST_SECRET, "test").expect("test secret is long enough")
}

/// A server (master or node) running on its own thread and runtime.
struct Server {
    token: CancellationToken,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    fn start<F, Fut>(name: &str, listener: std::net::TcpListener, run: F) -> Server
    where
        F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let token = CancellationToken::new();
        let t = token.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
                let r = rt.block_on(async move {
                    listener.set_nonblocking(true)?;
                    let l = tokio::net::TcpListener::from_std(listener)?;
                    run(l, t).await
                });
                rt.shutdown_timeout(Duration::from_secs(2));
                r
            })
            .expect("spawn server thread");
        Server { token, thread: Some(thread) }
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        self.token.cancel();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("server thread panicked"))?,
            None => Ok(()),
        }
    }

    fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn bind(ip: &str) -> (std::net::TcpListener, SocketAddr) {
    // Outside the ephemeral range: a restarted server finds its port free
    // (see `stripefs_proto::net::lasting_addr`).
    for _ in 0..20 {
        let a = stripefs_proto::net::lasting_addr(ip).expect("a free port");
        if let Ok(l) = std::net::TcpListener::bind(a) {
            return (l, a);
        }
    }
    panic!("no free port on {ip}")
}

/// How to build a cluster.
pub struct ClusterBuilder {
    nodes: usize,
    chunk_size: Option<u32>,
    node_dead_after: Duration,
    gc_grace: Duration,
    scratch_lost_after: Duration,
    scrub_bytes_per_sec: u64,
    node_disk_bytes: Option<u64>,
}

impl ClusterBuilder {
    /// Number of storage nodes (each with its own 127.0.0.x address and host name).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Chunk size of the filesystem.
    pub fn chunk_size(mut self, bytes: u32) -> Self {
        self.chunk_size = Some(bytes);
        self
    }

    /// How long a silent node counts as alive (default 10 s).
    pub fn node_dead_after(mut self, d: Duration) -> Self {
        self.node_dead_after = d;
        self
    }

    /// Age after which unreferenced replicas are deleted (default 600 s).
    pub fn gc_grace(mut self, d: Duration) -> Self {
        self.gc_grace = d;
        self
    }

    /// Silence after which a node is gone for its scratch files (default 900 s).
    pub fn scratch_lost_after(mut self, d: Duration) -> Self {
        self.scratch_lost_after = d;
        self
    }

    /// Scrubber speed of every node, with a 1 s pause between passes
    /// (default: no scrubbing).
    pub fn scrub_bytes_per_sec(mut self, rate: u64) -> Self {
        self.scrub_bytes_per_sec = rate;
        self
    }

    /// Gives every node a disk of its own: a tmpfs of `bytes` mounted on
    /// its data directory, which really fills up (needs root).
    pub fn node_disk_bytes(mut self, bytes: u64) -> Self {
        self.node_disk_bytes = Some(bytes);
        self
    }

    /// Starts the master and the nodes and waits until every node is up.
    pub fn start(self) -> TestCluster {
        init_logs();
        let dir = tempfile::Builder::new().prefix("stripefs-test-").tempdir().expect("tempdir");
        let mut disks = Vec::new();
        if let Some(bytes) = self.node_disk_bytes {
            for i in 0..self.nodes {
                disks.push(Tmpfs::mount(&dir.path().join(format!("node{i}")), bytes));
            }
        }
        let mut c = TestCluster {
            _disks: disks,
            master: None,
            master_addr: String::new(),
            nodes: Vec::new(),
            node_addrs: Vec::new(),
            chunk_size: self.chunk_size,
            node_dead_after: self.node_dead_after,
            gc_grace: self.gc_grace,
            scratch_lost_after: self.scratch_lost_after,
            scrub_bytes_per_sec: self.scrub_bytes_per_sec,
            reserve: Vec::new(),
            dir,
        };
        c.start_master();
        for i in 0..self.nodes {
            c.start_node(i);
        }
        c.wait_nodes_up(self.nodes);
        c
    }
}

/// A running cluster.
pub struct TestCluster {
    // Field order is drop order: nodes and master stop before the temp dir goes.
    nodes: Vec<Option<Server>>,
    node_addrs: Vec<String>,
    node_dead_after: Duration,
    gc_grace: Duration,
    scratch_lost_after: Duration,
    scrub_bytes_per_sec: u64,
    /// Reserve (kept-free bytes) of each node, by index; 0 when unset.
    reserve: Vec<u64>,
    master: Option<Server>,
    /// The nodes' own disks, when they have them (unmounted after the nodes stop).
    _disks: Vec<Tmpfs>,
    /// The master's address.
    pub master_addr: String,
    chunk_size: Option<u32>,
    dir: TempDir,
}

impl TestCluster {
    /// A builder: 3 nodes, default chunk size.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 3,
            chunk_size: None,
            node_dead_after: Duration::from_secs(10),
            gc_grace: Duration::from_secs(600),
            scratch_lost_after: Duration::from_secs(900),
            scrub_bytes_per_sec: 0,
            node_disk_bytes: None,
        }
    }

    /// The cluster's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory of node `i`.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }

    /// The host name of node `i`.
    pub fn node_host(i: usize) -> String {
        format!("host{i}")
    }

    fn start_master(&mut self) {
        // Reuse the old address on restart so clients and nodes find it again.
        let (listener, addr) = if self.master_addr.is_empty() {
            bind("127.0.0.1")
        } else {
            let l = bind_retry(&self.master_addr);
            let a = l.local_addr().expect("addr");
            (l, a)
        };
        self.master_addr = addr.to_string();
        let cfg = stripefs_master::Config {
            data_dir: self.dir.path().join("master"),
            chunk_size: self.chunk_size,
            node_dead_after: self.node_dead_after,
            secret: secret(),
            gc_grace: self.gc_grace,
            metrics_addr: Some("127.0.0.1:0".into()),
            snapshot_every: stripefs_master::raft::SNAPSHOT_EVERY,
            advertise: None,
            join: false,
            replay_window: stripefs_master::sessions::REPLAY_WINDOW,
            scratch_lost_after: self.scratch_lost_after,
        };
        self.master = Some(Server::start("master", listener, move |l, t| stripefs_master::run(cfg, l, t)));
    }

    fn start_node(&mut self, i: usize) {
        let (listener, addr) = bind(&format!("127.0.0.{}", i + 2));
        let cfg = stripefs_node::Config {
            data_dir: self.node_dir(i),
            advertise_addr: addr.to_string(),
            master_addr: self.master_addr.clone(),
            host: Self::node_host(i),
            zone: "zone-a".into(),
            secret: secret(),
            heartbeat_interval: Duration::from_millis(200),
            reserve_bytes: self.reserve.get(i).copied().unwrap_or(0),
            scrub_bytes_per_sec: self.scrub_bytes_per_sec,
            scrub_pause: Duration::from_secs(1),
            buffered_writes: false,
            write_memory_bytes: stripefs_node::DEFAULT_WRITE_MEMORY_BYTES,
            metrics_addr: Some(format!("{}:0", addr.ip())),
        };
        let server = Server::start(&format!("node{i}"), listener, move |l, t| stripefs_node::run(cfg, l, t));
        if self.nodes.len() <= i {
            self.nodes.resize_with(i + 1, || None);
            self.node_addrs.resize_with(i + 1, String::new);
        }
        self.nodes[i] = Some(server);
        self.node_addrs[i] = addr.to_string();
    }

    /// Where the master serves `/metrics` (from `DIR/master/metrics.addr`).
    pub fn master_metrics_addr(&self) -> String {
        read_addr(&self.dir.path().join("master").join("metrics.addr"))
    }

    /// Where node `i` serves `/metrics`.
    pub fn node_metrics_addr(&self, i: usize) -> String {
        read_addr(&self.node_dir(i).join("metrics.addr"))
    }

    /// Sets the disk space node `i` keeps free (effective from its next start).
    pub fn set_reserve(&mut self, i: usize, bytes: u64) {
        if self.reserve.len() <= i {
            self.reserve.resize(i + 1, 0);
        }
        self.reserve[i] = bytes;
    }

    /// The address node `i` listens on (a new one after each restart).
    pub fn node_addr(&self, i: usize) -> &str {
        &self.node_addrs[i]
    }

    /// Waits until the master lists node `i` alive at its current address
    /// (after [`TestCluster::restart_node`] it re-registers on a new port).
    pub fn wait_node_registered(&self, i: usize) {
        let want = self.node_addrs[i].clone();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(c) =
                    stripefs_proto::net::connect_master(&self.master_addr, &secret(), Duration::from_secs(2)).await
                {
                    if let Ok(Ok(nodes)) = c.nodes(tarpc_ctx()).await {
                        if nodes.iter().any(|x| x.addr == want && x.alive && x.capacity_bytes > 0) {
                            return;
                        }
                    }
                }
                assert!(Instant::now() < deadline, "node {i} did not register at {want} within 20 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    /// How many chunk replica files (`*.chunk`) the nodes hold on disk.
    pub fn replica_files(&self) -> u64 {
        (0..self.nodes.len()).map(|i| replica_paths(&self.node_dir(i)).len() as u64).sum()
    }

    /// Waits (up to 20 s) until the nodes hold exactly `n` replica files.
    pub fn wait_replica_files(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = self.replica_files();
            if now == n {
                return;
            }
            assert!(Instant::now() < deadline, "the nodes hold {now} replica files, not {n}, after 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops node `i` gracefully.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut s) = self.nodes[i].take() {
            s.stop().expect("node stopped cleanly");
        }
    }

    /// Starts node `i` again after [`TestCluster::stop_node`], on its data
    /// directory.
    pub fn start_node_again(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        self.start_node(i);
    }

    /// Restarts node `i` on its data directory.
    pub fn restart_node(&mut self, i: usize) {
        self.stop_node(i);
        self.start_node(i);
    }

    /// Stops the master gracefully (until [`TestCluster::start_master_again`]).
    pub fn stop_master(&mut self) {
        if let Some(mut m) = self.master.take() {
            m.stop().expect("master stopped cleanly");
        }
    }

    /// Starts the master again after [`TestCluster::stop_master`], on the
    /// same database and address.
    pub fn start_master_again(&mut self) {
        assert!(self.master.is_none(), "the master is running");
        self.start_master();
    }

    /// Stops the master gracefully and starts it again on the same
    /// database and address.
    pub fn restart_master(&mut self) {
        if let Some(mut m) = self.master.take() {
            m.stop().expect("master stopped cleanly");
        }
        self.start_master();
    }

    /// Waits (up to 20 s) until the master answers and `n` nodes are alive;
    /// panics with the master's own error if it stopped instead.
    pub fn must_wait_master_serving(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(m) = self.master.as_mut().filter(|m| m.is_finished()) {
                let r = m.stop();
                panic!("the master stopped on its own: {:#}", r.err().unwrap_or_else(|| anyhow::anyhow!("no error")));
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let up = rt.block_on(async {
                let Ok(c) =
                    stripefs_proto::net::connect_master(&self.master_addr, &secret(), Duration::from_millis(500)).await
                else {
                    return false;
                };
                matches!(c.nodes(tarpc_ctx()).await, Ok(Ok(nodes)) if nodes.iter().filter(|x| x.alive && x.capacity_bytes > 0).count() >= n)
            });
            if up {
                return;
            }
            assert!(Instant::now() < deadline, "the master did not serve {n} live nodes within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the master is still running (it stops on a fatal error).
    pub fn master_running(&self) -> bool {
        self.master.as_ref().is_some_and(|m| !m.is_finished())
    }

    /// A client of the master, for checks below the filesystem interface.
    pub async fn master_client(&self) -> stripefs_proto::MasterServiceClient {
        stripefs_proto::net::connect_master(&self.master_addr, &secret(), Duration::from_secs(5))
            .await
            .expect("connect to master")
    }

    /// Waits until `n` nodes are alive and have reported their space.
    pub fn wait_nodes_up(&self, n: usize) {
        Self::wait_nodes_up_at(&self.master_addr, n)
    }

    /// Waits until the master at `master_addr` has `n` live nodes that
    /// reported their space.
    pub fn wait_nodes_up_at(master_addr: &str, n: usize) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(c) = stripefs_proto::net::connect_master(master_addr, &secret(), Duration::from_secs(2)).await
                {
                    if let Ok(Ok(nodes)) = c.nodes(tarpc_ctx()).await {
                        if nodes.iter().filter(|x| x.alive && x.capacity_bytes > 0).count() >= n {
                            return;
                        }
                    }
                }
                assert!(Instant::now() < deadline, "{n} nodes did not come up within 20 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    /// Waits (up to 20 s) until the master counts at least `n` dead nodes.
    pub fn wait_dead(&self, n: usize) {
        Self::wait_dead_at(&self.master_addr, n)
    }

    /// Waits (up to 20 s) until the master at `master_addr` counts at
    /// least `n` dead nodes.
    pub fn wait_dead_at(master_addr: &str, n: usize) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let start = Instant::now();
            loop {
                if let Ok(c) = stripefs_proto::net::connect_master(master_addr, &secret(), Duration::from_secs(2)).await
                {
                    if let Ok(Ok(nodes)) = c.nodes(tarpc_ctx()).await {
                        if nodes.iter().filter(|x| !x.alive).count() >= n {
                            return;
                        }
                    }
                }
                assert!(start.elapsed() < Duration::from_secs(20), "the master did not notice {n} dead nodes");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Mounts the filesystem with default options.
    pub fn mount(&self) -> TestMount {
        self.mount_with(MountOptions::default())
    }

    /// Mounts the filesystem with `opts`.
    pub fn mount_with(&self, opts: MountOptions) -> TestMount {
        must_have_fuse();
        TestMount::start(&self.master_addr, opts).expect("mount")
    }
}

impl TestCluster {
    /// A client core of this cluster driven directly, without FUSE (no
    /// root, no kernel): for tests of the client where the kernel is not
    /// the point.
    pub fn client(&self) -> TestClient {
        TestClient::connect(&self.master_addr, stripefs_client::ClientConfig::default())
    }
}

/// A client core ([`stripefs_client::FsCore`]) on a runtime of its own,
/// with sync helpers that act as a program on a mount would.
pub struct TestClient {
    core: std::sync::Arc<stripefs_client::FsCore>,
    rt: Option<tokio::runtime::Runtime>,
}

/// The owner every [`TestClient`] creates files as.
pub const TEST_OWNER: stripefs_proto::types::Owner = stripefs_proto::types::Owner { uid: 1000, gid: 1000 };

impl TestClient {
    /// A client of the master at `master` (a cluster's, or a
    /// [`faults::FaultProxy`] in front of it) with `cfg`.
    pub fn connect(master: &str, cfg: stripefs_client::ClientConfig) -> TestClient {
        init_logs();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let core = rt
            .block_on(stripefs_client::FsCore::connect(master, secret(), cfg))
            .unwrap_or_else(|e| panic!("client of {master}: {e:#}"));
        TestClient { core, rt: Some(rt) }
    }

    /// The core.
    pub fn core(&self) -> &std::sync::Arc<stripefs_client::FsCore> {
        &self.core
    }

    /// Runs `f` to completion on the client's runtime.
    pub fn run<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.as_ref().expect("runtime").block_on(f)
    }

    /// The inode at `path` ("a/b/c", relative to the root).
    pub fn resolve(&self, path: &str) -> Result<stripefs_proto::InodeId, stripefs_client::ClientError> {
        let mut ino = stripefs_proto::InodeId::ROOT;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            ino = self.run(self.core.lookup(ino, part))?.attr.ino;
        }
        Ok(ino)
    }

    /// Creates (or truncates) the file `name` in `dir`, writes `data` and
    /// closes it, as `open(O_CREAT|O_TRUNC)`, `write`, `close` do.
    pub fn write_file(
        &self,
        dir: stripefs_proto::InodeId,
        name: &str,
        data: &[u8],
    ) -> Result<stripefs_proto::InodeId, stripefs_client::ClientError> {
        let core = self.core.clone();
        self.run(async move {
            let (attr, fh) = match core.lookup(dir, name).await {
                Ok(l) => {
                    let (fh, _) = core.open(l.attr.ino, true).await?;
                    let set = stripefs_proto::types::SetAttr { size: Some(0), ..Default::default() };
                    core.setattr(l.attr.ino, set).await?;
                    (l.attr, fh)
                }
                Err(stripefs_client::ClientError::Fs(stripefs_proto::FsError::NotFound)) => {
                    core.create(dir, name, 0o644, TEST_OWNER, true).await?
                }
                Err(e) => return Err(e),
            };
            let mut off = 0;
            while off < data.len() {
                off += core.write(fh, off as u64, &data[off..]).await? as usize;
            }
            let flushed = core.flush(fh).await;
            core.release(fh).await?;
            flushed.map(|()| attr.ino)
        })
    }

    /// Reads the whole file `ino`.
    pub fn read_file(&self, ino: stripefs_proto::InodeId) -> Result<Vec<u8>, stripefs_client::ClientError> {
        let core = self.core.clone();
        self.run(async move {
            let (fh, _) = core.open(ino, false).await?;
            let mut out = Vec::new();
            loop {
                let got = core.read(fh, out.len() as u64, 1 << 20).await?;
                if got.is_empty() {
                    break;
                }
                out.extend_from_slice(&got);
            }
            core.release(fh).await?;
            Ok(out)
        })
    }

    /// The names in directory `dir`, sorted.
    pub fn list(&self, dir: stripefs_proto::InodeId) -> Result<Vec<String>, stripefs_client::ClientError> {
        let core = self.core.clone();
        self.run(async move {
            let fh = core.opendir(dir).await?;
            let entries = core.dir_entries(fh);
            core.releasedir(fh);
            let mut names: Vec<String> =
                entries?.iter().map(|e| e.name.clone()).filter(|n| n != "." && n != "..").collect();
            names.sort();
            Ok(names)
        })
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// A tmpfs of a fixed size mounted on a directory: a disk that fills up.
/// Unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Tmpfs {
        assert!(nix::unistd::geteuid().is_root(), "a test disk (tmpfs) needs root");
        std::fs::create_dir_all(path).expect("mkdir for tmpfs");
        let data = format!("size={bytes},mode=0700");
        nix::mount::mount(
            Some("stripefs-test-disk"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .unwrap_or_else(|e| panic!("cannot mount a {bytes}-byte tmpfs on {}: {e}", path.display()));
        Tmpfs { path: path.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cannot unmount the test disk {}: {e}", self.path.display());
        }
    }
}

/// An address a server wrote to `path` once it listened (waits up to 10 s).
fn read_addr(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(a) = std::fs::read_to_string(path) {
            if !a.trim().is_empty() {
                return a.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "{} was not written within 10 s", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback address with a port free right now (for a metrics server).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// `GET path` on the HTTP server at `addr`: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the answer");
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, as exposed) in a
/// Prometheus text exposition; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn bind_retry(addr: &str) -> std::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A tarpc context for test calls.
pub fn tarpc_ctx() -> tarpc_context::Context {
    stripefs_proto::net::context_with_timeout(Duration::from_secs(10))
}

/// Re-export of tarpc's context type for tests.
pub mod tarpc_context {
    pub use stripefs_proto::net::TarpcContext as Context;
}

/// A FUSE mount of a test cluster, in this process. Dropping it unmounts.
pub struct TestMount {
    mount: Option<BackgroundMount>,
    rt: Option<tokio::runtime::Runtime>,
    dir: TempDir,
}

impl TestMount {
    /// Mounts the cluster at `master` on a fresh temporary directory.
    pub fn start(master: &str, opts: MountOptions) -> anyhow::Result<TestMount> {
        let dir = tempfile::Builder::new().prefix("stripefs-mnt-").tempdir()?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let mount = BackgroundMount::start(master, dir.path(), &opts, secret(), rt.handle())?;
        Ok(TestMount { mount: Some(mount), rt: Some(rt), dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The client behind the mount, to look at its state.
    pub fn core(&self) -> &std::sync::Arc<stripefs_client::core::FsCore> {
        &self.mount.as_ref().expect("mounted").core
    }

    /// A path inside the mount.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            if let Err(e) = m.unmount() {
                eprintln!("unmount of {} failed: {e:#}", self.dir.path().display());
            }
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Path of a workspace binary (built by `cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> → target/debug/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: build the binaries first (cargo build --workspace --bins)", p.display());
    p
}

/// sha256 of a byte slice, hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// The errno of an I/O error (panics if it has none).
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or_else(|| panic!("no errno in {e}"))
}

/// Makes the kernel forget cached names and inodes of every filesystem
/// (`echo 2 > /proc/sys/vm/drop_caches`; needs root), so the next stat of
/// a path asks the filesystem again however long its TTLs are.
pub fn forget_kernel_names() {
    std::fs::write("/proc/sys/vm/drop_caches", "2")
        .unwrap_or_else(|e| panic!("writing /proc/sys/vm/drop_caches (these tests run as root): {e}"));
}

/// A fresh temporary directory with a recognisable prefix.
pub fn temp_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().expect("tempdir")
}

/// Runs a command to completion, killing it after `limit`; panics if it
/// cannot be started or does not finish in time. Returns its output.
pub fn run_with_deadline(cmd: &mut std::process::Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    // Drain the pipes on threads so a chatty child cannot block on them.
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for child") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A daemon the command started may hold the pipes open: do not wait for them forever.
    let join = |t: std::thread::JoinHandle<Vec<u8>>| {
        let until = Instant::now() + Duration::from_secs(5);
        while !t.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if t.is_finished() {
            t.join().unwrap_or_default()
        } else {
            b"<output pipe still held open by another process>".to_vec()
        }
    };
    std::process::Output { status, stdout: join(t_out), stderr: join(t_err) }
}

/// Runs a command (with a deadline) and panics with its output unless it succeeds.
pub fn must_run(cmd: &mut std::process::Command, limit: Duration) -> std::process::Output {
    let desc = format!("{cmd:?}");
    let out = run_with_deadline(cmd, limit);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The fs type of the mount on `dir` (an absolute path without symlinks,
/// as temp dirs are), from /proc/self/mountinfo; None if nothing is mounted
/// there. Never touches the mount itself, so a dead FUSE mount cannot hang it.
pub fn mount_type(dir: &Path) -> Option<String> {
    let want = dir;
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        let path = stripefs_client::records::unescape_mount_path(f.get(4)?);
        (Path::new(&path) == want).then(|| f.get(sep + 1).map(|s| s.to_string()).unwrap_or_default())
    })
}

/// Every replica file (`*.chunk`) under `dir`, e.g. a node's data directory.
pub fn replica_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(replica_paths(&p));
        } else if p.extension().is_some_and(|x| x == "chunk") {
            out.push(p);
        }
    }
    out
}

/// Runs `stripefs fsck ARGS` (the test secret in its environment) with
/// `--json`, and once more without to print the human report; returns
/// the exit code and the JSON report. `what` names the moment in the
/// printed output.
pub fn fsck(what: &str, args: &[&std::ffi::OsStr]) -> (i32, serde_json::Value) {
    let run = |json: bool| {
        let mut cmd = std::process::Command::new(bin("stripefs"));
        cmd.arg("fsck").args(args).env("STRIPEFS_SECRET", std::str::from_utf8(TEST_SECRET).expect("utf-8"));
        if json {
            cmd.arg("--json");
        }
        run_with_deadline(&mut cmd, Duration::from_secs(120))
    };
    let show = |out: &std::process::Output| {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let human = run(false);
    println!("---- stripefs fsck ({what}): {}", show(&human));
    let out = run(true);
    let code = out.status.code().unwrap_or_else(|| panic!("fsck killed by a signal: {}", show(&out)));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fsck --json printed no JSON ({e}): {}", show(&out)));
    assert_eq!(v["exit_code"], code, "{v:#}");
    (code, v)
}

/// The problems of an fsck JSON report.
pub fn fsck_problems(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["problems"].as_array().expect("problems array")
}

/// Runs fsck once, during a failure, and checks that every problem it
/// lists is one that `expected` accepts: the failure's own damage, which
/// repairs may already be shrinking. Exit 4 when it lists any, 0 when not.
/// Returns how many it listed.
pub fn fsck_lists_only(path: &Path, what: &str, expected: impl Fn(&serde_json::Value) -> bool) -> usize {
    let (code, v) = fsck(what, &[path.as_os_str()]);
    let problems = fsck_problems(&v);
    for p in problems {
        assert!(expected(p), "{what}: fsck lists a problem the failure does not explain: {p}\n{v:#}");
    }
    assert_eq!(code, if problems.is_empty() { 0 } else { 4 }, "{v:#}");
    problems.len()
}

/// Runs `stripefs fsck PATH --json` until it reports a clean filesystem,
/// for up to `limit`; returns how long that took. Fails with fsck's last
/// report when it never gets there: after a failure has been repaired,
/// fsck must find nothing else (replicas awaiting garbage collection are
/// not problems: they are listed apart and do not change the exit code).
pub fn wait_fsck_clean(path: &Path, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let out = run_with_deadline(
            std::process::Command::new(bin("stripefs")).arg("fsck").arg(path).arg("--json"),
            Duration::from_secs(60),
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let clean = out.status.code() == Some(0) && report["problems"].as_array().is_some_and(|p| p.is_empty());
        if clean {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "fsck still reports problems after {limit:?} (exit {:?}):\n{}\n{}",
            out.status.code(),
            serde_json::to_string_pretty(&report).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `path` as a C string.
pub fn cpath(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL")
}

/// setxattr(2).
#[allow(unsafe_code)]
pub fn xattr_set(p: &Path, name: &str, v: &[u8]) -> std::io::Result<()> {
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid NUL-terminated strings and a buffer of v.len() bytes.
    let r = unsafe { libc::setxattr(cpath(p).as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// getxattr(2).
#[allow(unsafe_code)]
pub fn xattr_get(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid strings and a writable buffer of buf.len() bytes.
    let r = unsafe { libc::getxattr(cpath(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf)
}
