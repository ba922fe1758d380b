//! The stripefs master: the namespace, the inode table and the chunk map in
//! one redb database, the registry of storage nodes and replica placement.
//!
//! The master never touches chunk bytes: clients write them to nodes and
//! report back with a commit.

pub mod fsck;
pub mod journal;
pub mod leases;
pub mod metrics;
pub mod namespace;
pub mod raft;
pub mod records;
pub mod registry;
pub mod service;
pub mod sessions;
pub mod state;
pub mod store;
pub mod tables;
#[cfg(test)]
mod test_util;
pub mod workers;

use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stripefs_proto::net::{accept_loop, Secret};
use stripefs_proto::MasterService;
use tarpc::server::{BaseChannel, Channel};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the master runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the metadata database.
    pub data_dir: PathBuf,
    /// Chunk size for a new filesystem; must match an existing one if given.
    pub chunk_size: Option<u32>,
    /// A node silent for this long is dead.
    pub node_dead_after: Duration,
    /// Cluster secret.
    pub secret: Secret,
    /// Replicas nobody references are deleted once older than this.
    pub gc_grace: Duration,
    /// A node silent this long is declared gone for its scratch files:
    /// those whose class says so are removed.
    pub scratch_lost_after: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (port 0: any;
    /// the bound address goes to `DIR/metrics.addr`); none: not served.
    pub metrics_addr: Option<String>,
    /// Log entries between two snapshots of the master group's state.
    pub snapshot_every: u64,
    /// The address other masters, nodes and clients reach this one at
    /// (None: the address it listens on).
    pub advertise: Option<String>,
    /// Wait to be made a member of a master group instead of starting a
    /// group of one with a new filesystem.
    pub join: bool,
    /// After a crash, how long the master waits for its client sessions
    /// to replay the changes it answered and lost before it serves
    /// anyone (see [`sessions`]).
    pub replay_window: Duration,
}

/// Follows this master's leadership: on taking the lead, the soft state
/// is rebuilt (see [`state::MasterState::took_the_lead`]).
async fn watch_leadership(shared: Arc<state::MasterState>) {
    let mut led = false;
    loop {
        let leads = shared.store.is_leader();
        // Confirmed, with every committed entry applied, before the soft
        // state is rebuilt from the tables.
        if leads && !led && shared.store.confirm_leader().await.is_ok() {
            shared.took_the_lead();
            shared.store.set_serving(true);
            led = true;
        } else if !leads && led {
            shared.store.set_serving(false);
            shared.lost_the_lead();
            led = false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens the database and serves on `listener` until `shutdown`.
pub async fn run(cfg: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let opens = Arc::new(state::OpenFiles::default());
    let fatal = CancellationToken::new();
    let store = {
        let dir = cfg.data_dir.clone();
        let opens = opens.clone();
        let fatal = fatal.clone();
        let addr = match &cfg.advertise {
            Some(a) => a.clone(),
            None => listener.local_addr()?.to_string(),
        };
        let group = store::GroupOptions {
            addr,
            snapshot_every: cfg.snapshot_every,
            join: cfg.join,
            secret: Some(cfg.secret.clone()),
        };
        tokio::task::spawn_blocking(move || {
            store::Store::open_group(&dir, cfg.chunk_size, Box::new(move |ino| opens.is_open(ino)), fatal, group)
        })
        .await??
    };
    let registry = registry::Registry::new(store.nodes()?, cfg.node_dead_after);
    let conns = CancellationToken::new();
    let workers = stripefs_daemon::Workers::new(conns.child_token());
    let shared =
        Arc::new(state::MasterState::new(store, registry, opens, cfg.gc_grace, cfg.scratch_lost_after, workers));
    tracing::info!("serving on {}", listener.local_addr()?);
    workers::start(&shared);
    tokio::spawn(conns.child_token().run_until_cancelled_owned(watch_leadership(shared.clone())));
    {
        let (shared, window) = (shared.clone(), cfg.replay_window);
        tokio::spawn(conns.child_token().run_until_cancelled_owned(async move {
            shared.store.end_replay_window(window).await;
        }));
    }
    let mut registry = prometheus_client::registry::Registry::with_prefix("stripefs_master");
    let rpc_metrics = metrics::rpc(&mut registry);
    if let Some(addr) = &cfg.metrics_addr {
        let endpoint = metrics::endpoint(&shared, registry);
        let bound = stripefs_daemon::metrics::start(addr, endpoint, conns.clone())
            .await
            .map_err(|e| anyhow::anyhow!("serve metrics on {addr}: {e}"))?;
        std::fs::write(cfg.data_dir.join("metrics.addr"), bound.to_string())?;
    }
    let tracker = TaskTracker::new();
    let accept = {
        let shared = shared.clone();
        let (conns, tracker) = (conns.clone(), tracker.clone());
        tokio::spawn(accept_loop(listener, cfg.secret.clone(), conns.clone(), move |stream, peer| {
            let server = service::MasterServer::new(shared.clone(), peer).serve();
            let (conns, requests, rpc_metrics) = (conns.clone(), tracker.clone(), rpc_metrics.clone());
            tracker.spawn(async move {
                let serve = BaseChannel::with_defaults(stripefs_proto::net::transport(stream))
                    .requests()
                    .take_while(|r| futures::future::ready(r.is_ok()))
                    .filter_map(|r| futures::future::ready(r.ok()))
                    .for_each(|request| {
                        let op = tarpc::RequestName::name(&request.get().message).to_string();
                        let (server, rpc_metrics) = (server.clone(), rpc_metrics.clone());
                        let started = std::time::Instant::now();
                        let served = async move {
                            request.execute(server).await;
                            rpc_metrics.observe(&op, started.elapsed());
                        };
                        requests.spawn(conns.clone().run_until_cancelled_owned(served));
                        async {}
                    });
                conns.run_until_cancelled(serve).await;
            });
        }))
    };
    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        _ = fatal.cancelled() => Err(anyhow::anyhow!("a metadata commit failed; the master stopped to protect the database")),
    };
    // Stop accepting, end every connection and request, then close the
    // database (dropping the last reference applies what is queued and
    // checkpoints), so a new master can open it as soon as this returns.
    conns.cancel();
    let _ = accept.await;
    tracker.close();
    tracker.wait().await;
    shared.workers.stop().await;
    let _ = tokio::task::spawn_blocking(move || drop(shared)).await;
    tracing::info!("master stopped");
    result
}
