//! Putting a node together: the store, the RPC server and the master link.

use crate::chunk_store::ChunkStore;
use crate::copier::{Copier, CopyQueue};
use crate::data_server::DataConns;
use crate::master_link::{self, Identity};
use crate::scrub::Scrubber;
use crate::service::NodeServer;
use anyhow::Context as _;
use futures::StreamExt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stripefs_daemon::Workers;
use stripefs_proto::data_conn::DATA_MAGIC;
use stripefs_proto::local_socket::LocalRequest;
use stripefs_proto::net::{accept_loop, transport, Secret};
use stripefs_proto::NodeService;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a node heartbeats unless told otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// What a storage node needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory holding the replicas (`chunks/`) and the identity (`node.id`).
    pub data_dir: PathBuf,
    /// Address clients and peer nodes reach this node at.
    pub advertise_addr: String,
    /// The master's address.
    pub master_addr: String,
    /// Host name reported to the master (clients on it read locally).
    pub host: String,
    /// Zone reported to the master (replicas are spread across zones).
    pub zone: String,
    /// Cluster secret.
    pub secret: Secret,
    /// Time between heartbeats (see [`DEFAULT_HEARTBEAT_INTERVAL`]).
    pub heartbeat_interval: Duration,
    /// Disk space kept free: the node reports less free space by this
    /// much and refuses writes that would eat into it.
    pub reserve_bytes: u64,
    /// Scrubber speed in bytes per second (0: no scrubbing).
    pub scrub_bytes_per_sec: u64,
    /// Pause between two full scrub passes.
    pub scrub_pause: Duration,
    /// Write every replica through the page cache, large ones too (see
    /// [`crate::chunk_store::ChunkStore::buffered_writes`]).
    pub buffered_writes: bool,
    /// Memory for chunk writes in progress (see [`crate::write_memory`];
    /// default [`crate::DEFAULT_WRITE_MEMORY_BYTES`]).
    pub write_memory_bytes: u64,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (port 0: any;
    /// the bound address goes to `DIR/metrics.addr`); none: not served.
    pub metrics_addr: Option<String>,
}

/// Runs a storage node serving on `listener` until `shutdown` is
/// cancelled. Fails if the data directory is unusable or if the master
/// serves another filesystem than the one the node's data belongs to.
pub async fn run(cfg: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(!cfg.heartbeat_interval.is_zero(), "the heartbeat interval must be positive");
    let dir = cfg.data_dir.clone();

    tracing::info!("opening the chunk store in {}", dir.display());
    let open_dir = dir.clone();
    let buffered = cfg.buffered_writes;
    let store = tokio::task::spawn_blocking(move || ChunkStore::open(&open_dir).map(|s| s.buffered_writes(buffered)))
        .await
        .context("the chunk store task failed")?
        .with_context(|| format!("cannot use {} as a data directory", dir.display()))?;
    let store = Arc::new(store);
    tracing::info!("chunk store holds {} replicas in {} bytes", store.chunk_count(), store.used_bytes());

    let id_dir = dir.clone();
    let identity =
        tokio::task::spawn_blocking(move || Identity::load(&id_dir)).await.context("the identity task failed")??;
    match (&identity.node_id, &identity.fs_id) {
        (Some(n), Some(f)) => tracing::info!("this is node {n} of filesystem {f}"),
        _ => tracing::info!("this node has not registered yet"),
    }

    let token = shutdown.child_token();
    let tracker = TaskTracker::new();
    let reports = Arc::new(crate::reports::Reports::default());
    let metrics = crate::metrics::NodeMetrics::new();
    let server = NodeServer::with_reports(
        store.clone(),
        cfg.secret.clone(),
        reports.clone(),
        dir.clone(),
        cfg.reserve_bytes,
        cfg.write_memory_bytes,
        metrics.clone(),
    );
    if let Some(addr) = &cfg.metrics_addr {
        let s = server.clone();
        let endpoint = metrics.endpoint(store.clone(), move || (s.write_memory().used(), s.write_memory().limit()));
        let bound = stripefs_daemon::metrics::start(addr, endpoint, token.clone())
            .await
            .with_context(|| format!("serve metrics on {addr}"))?;
        crate::write_file_atomic(&dir.join("metrics.addr"), bound.to_string().as_bytes())?;
    }
    let workers = Workers::new(token.clone());
    let scrubber = Scrubber::new(store.clone(), reports.clone(), cfg.scrub_bytes_per_sec, cfg.scrub_pause);
    workers.spawn(scrubber.with_metrics(metrics.clone()));
    let copies = Arc::new(CopyQueue::default());
    for copier in Copier::workers(&copies, &store, &cfg.secret, &reports) {
        workers.spawn(copier);
    }
    let local = listener.local_addr().context("the listener has no address")?;
    tracing::info!("serving on {local}, advertised as {}", cfg.advertise_addr);
    let data_conns = Arc::new(DataConns::default());
    let handler = {
        let (tracker, token, data_conns) = (tracker.clone(), token.clone(), data_conns.clone());
        move |stream: TcpStream, peer: SocketAddr| {
            serve_connection(stream, peer, &server, &tracker, &token, &data_conns)
        }
    };
    let accept = tokio::spawn(accept_loop(listener, cfg.secret.clone(), token.clone(), handler));
    let local_reads = serve_local_reads(&cfg, &store, &token);

    tracing::info!("starting the link to master {}", cfg.master_addr);
    let mut link = tokio::spawn(master_link::run(
        cfg,
        identity,
        store,
        reports,
        copies,
        (workers.clone(), metrics),
        token.clone(),
    ));
    let link_result = tokio::select! {
        r = &mut link => r,
        _ = token.cancelled() => link.await,
    };
    token.cancel();
    if let Err(e) = accept.await {
        tracing::error!("the accept loop failed: {e}");
    }
    data_conns.stop(Duration::from_secs(5)).await;
    if let Some(t) = local_reads {
        if let Err(e) = t.await {
            tracing::error!("the local-read socket failed: {e}");
        }
    }
    tracker.close();
    tracker.wait().await;
    workers.stop().await;
    tracing::info!("storage node stopped");
    link_result.context("the master link task failed")?
}

/// Starts the local-read socket ([`stripefs_proto::local_socket`]): clients on
/// this host get replica files themselves instead of reading them over TCP.
/// A node that cannot bind it (another node on this host advertises the
/// same address) still serves everything over TCP.
fn serve_local_reads(
    cfg: &Config,
    store: &Arc<ChunkStore>,
    token: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let name = stripefs_proto::local_socket::socket_name(&cfg.advertise_addr);
    match stripefs_proto::local_socket::bind(&cfg.advertise_addr) {
        Ok(listener) => {
            tracing::info!("local reads for clients on this host at @{name}");
            let store = store.clone();
            let open = move |r| match r {
                LocalRequest::Replica(chunk, version) => store.open_replica(chunk, version).map_err(|e| e.to_wire()),
                LocalRequest::Scratch(ino) => store.scratch_open(ino).map_err(|e| e.to_wire()),
            };
            Some(tokio::spawn(stripefs_proto::local_socket::serve(listener, cfg.secret.clone(), token.clone(), open)))
        }
        Err(e) => {
            tracing::warn!("no local reads for clients on this host: cannot bind @{name}: {e}");
            None
        }
    }
}

/// Serves one authenticated connection until it closes or `token` is
/// cancelled: a data connection ([`stripefs_proto::data_conn`]) on a thread of
/// its own, anything else as tarpc, each request in its own task.
fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    server: &NodeServer,
    tracker: &TaskTracker,
    token: &CancellationToken,
    data_conns: &Arc<DataConns>,
) {
    let (server, requests_tracker, token) = (server.clone(), tracker.clone(), token.clone());
    let data_conns = data_conns.clone();
    tracker.spawn(async move {
        let mut stream = stream;
        let kind = tokio::select! {
            k = first_bytes(&stream) => k,
            _ = token.cancelled() => return,
        };
        match kind {
            Ok(true) => {
                let mut magic = [0u8; 4];
                let taken = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut magic).await;
                match taken.and_then(|_| stream.into_std()) {
                    Ok(std) => data_conns.serve(std, server, peer),
                    Err(e) => tracing::debug!("data connection from {peer}: {e}"),
                }
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::debug!("connection from {peer} closed at once: {e}");
                return;
            }
        }
        tracing::debug!("connection from {peer}");
        let metrics = server.metrics().clone();
        let serve = server.serve();
        let requests = BaseChannel::with_defaults(transport(stream))
            .requests()
            .take_while(|r| futures::future::ready(r.is_ok()))
            .filter_map(|r| futures::future::ready(r.ok()))
            .for_each(|request| {
                let op = tarpc::RequestName::name(&request.get().message).to_string();
                let (serve, metrics) = (serve.clone(), metrics.clone());
                let started = std::time::Instant::now();
                let served = async move {
                    request.execute(serve).await;
                    metrics.rpc.observe(&op, started.elapsed());
                };
                requests_tracker.spawn(token.clone().run_until_cancelled_owned(served));
                async {}
            });
        token.run_until_cancelled(requests).await;
        tracing::debug!("connection from {peer} closed");
    });
}

/// Whether the connection starts with [`DATA_MAGIC`] (without reading it).
async fn first_bytes(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 4];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if first[..n] != DATA_MAGIC[..n] {
            return Ok(false);
        }
        if n == first.len() {
            return Ok(true);
        }
        // Part of the magic so far: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
pub(crate) mod tests;
