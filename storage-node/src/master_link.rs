//! The node's link to the master: registration, identity, heartbeats.
//!
//! The node registers at start and whenever the connection is lost or the
//! master forgets it, then heartbeats with its space figures and applies
//! the replica deletions and copy orders the master hands back.

use crate::chunk_store::ChunkStore;
use crate::copier::CopyQueue;
use crate::fsutil::{disk_identity, disk_space, write_file_atomic};
use crate::reports::Reports;
use crate::Config;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stripefs_daemon::Workers;
use stripefs_proto::net::{connect_leader, context_with_timeout};
use stripefs_proto::types::{Heartbeat, InventoryItem, NodeHello};
use stripefs_proto::{FsError, MasterServiceClient, NodeId};
use tokio_util::sync::CancellationToken;

/// Name of the identity file in the data directory.
pub const IDENTITY_FILE: &str = "node.id";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the full replica list goes to the master (also after every
/// registration).
const INVENTORY_INTERVAL: Duration = Duration::from_secs(300);
const INVENTORY_TIMEOUT: Duration = Duration::from_secs(60);

/// Who this node is, as recorded in `DIR/node.id`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) node_id: Option<NodeId>,
    pub(crate) fs_id: Option<String>,
}

impl Identity {
    fn path(dir: &Path) -> PathBuf {
        dir.join(IDENTITY_FILE)
    }

    /// Reads the identity file; an absent file is an empty identity.
    pub(crate) fn load(dir: &Path) -> anyhow::Result<Identity> {
        let path = Identity::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Identity::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Identity::parse(&text).with_context(|| format!("{} is malformed; fix or remove it", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<Identity> {
        let mut id = Identity::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (key, value) = line.split_once('=').with_context(|| format!("line {line:?} is not key=value"))?;
            match key.trim() {
                "node_id" => {
                    let n = value.trim().parse().with_context(|| format!("bad node_id {value:?}"))?;
                    id.node_id = Some(NodeId(n));
                }
                "fs_id" => {
                    let fs_id = value.trim();
                    anyhow::ensure!(valid_fs_id(fs_id), "bad fs_id {fs_id:?}");
                    id.fs_id = Some(fs_id.to_string());
                }
                other => tracing::warn!("ignoring unknown key {other:?} in {IDENTITY_FILE}"),
            }
        }
        anyhow::ensure!(id.node_id.is_some() == id.fs_id.is_some(), "node_id and fs_id must both be present");
        Ok(id)
    }

    fn render(&self) -> String {
        let mut s = String::new();
        if let Some(n) = self.node_id {
            s.push_str(&format!("node_id={n}\n"));
        }
        if let Some(f) = &self.fs_id {
            s.push_str(&format!("fs_id={f}\n"));
        }
        s
    }

    fn save(&self, dir: &Path) -> std::io::Result<()> {
        write_file_atomic(&Identity::path(dir), self.render().as_bytes())
    }
}

/// Whether `s` can be stored as an fs id (hex, or at worst a uuid-like token).
fn valid_fs_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Waits before retrying: 200 ms doubling up to 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_START }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    /// The current delay; doubles the next one.
    fn advance(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }

    /// Sleeps for the current delay. False on shutdown.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.advance();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// Why a registration attempt did not succeed.
enum Failure {
    /// Try again later.
    Retry(String),
    /// Give up: the node cannot serve this master.
    Fatal(anyhow::Error),
}

/// How the heartbeat loop ended.
enum HeartbeatEnd {
    Shutdown,
    /// The connection broke: reconnect after a backoff.
    Reconnect,
    /// The master forgot us: register again now.
    Reregister,
}

/// The link task's state.
struct Link {
    /// The highest leader term seen (orders of lower ones are refused).
    fence: crate::fence::Fence,
    cfg: Config,
    /// The masters to ask: `--master`, and the group's members learned since.
    masters: std::sync::Mutex<String>,
    store: Arc<ChunkStore>,
    shutdown: CancellationToken,
    /// What this node claims to be (updated by the master's answers).
    identity: Identity,
    /// What `node.id` holds.
    saved: Identity,
    /// Copies the master orders, for the copy workers.
    copies: Arc<CopyQueue>,
    /// The node's workers, whose status goes with every heartbeat.
    workers: Workers,
    /// What the next heartbeat reports.
    reports: Arc<Reports>,
}

/// Runs the master link until `shutdown`. Returns an error only when the
/// node must stop: it belongs to another filesystem.
pub(crate) async fn run(
    cfg: Config,
    identity: Identity,
    store: Arc<ChunkStore>,
    reports: Arc<Reports>,
    copies: Arc<CopyQueue>,
    (workers, metrics): (Workers, Arc<crate::metrics::NodeMetrics>),
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let masters = std::sync::Mutex::new(cfg.master_addr.clone());
    let fence = crate::fence::Fence::open(&cfg.data_dir)?;
    let mut link =
        Link { fence, masters, cfg, store, shutdown, saved: identity.clone(), identity, copies, workers, reports };
    let mut backoff = Backoff::new();
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let shutdown = link.shutdown.clone();
        let registered = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = link.register() => r,
        };
        let (client, node) = match registered {
            Ok(x) => x,
            Err(Failure::Fatal(e)) => {
                tracing::error!("{e:#}");
                return Err(e);
            }
            Err(Failure::Retry(msg)) => {
                tracing::warn!("registration with master {} failed (attempt {attempt}): {msg}", link.cfg.master_addr);
                if !backoff.wait(&link.shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        attempt = 0;
        tracing::info!("registered with master {} as node {node}", link.cfg.master_addr);
        metrics.registered.store(true, std::sync::atomic::Ordering::Relaxed);
        link.report_inventory(&client, node);
        link.reports.report_known_again();
        let ended = link.heartbeats(&client, node, &mut backoff).await;
        metrics.registered.store(false, std::sync::atomic::Ordering::Relaxed);
        match ended {
            HeartbeatEnd::Shutdown => return Ok(()),
            HeartbeatEnd::Reregister => {}
            HeartbeatEnd::Reconnect => {
                if !backoff.wait(&link.shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

impl Link {
    /// Connects to the master and registers; records a new identity.
    async fn register(&mut self) -> Result<(MasterServiceClient, NodeId), Failure> {
        // The leader of the master group (one master: that one).
        let masters = self.masters.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (client, _) = connect_leader(&masters, &self.cfg.secret, CONNECT_TIMEOUT)
            .await
            .map_err(|e| Failure::Retry(e.to_string()))?;
        self.learn_members(&client).await;
        let hello = NodeHello {
            node_id: self.identity.node_id,
            fs_id: self.identity.fs_id.clone(),
            addr: self.cfg.advertise_addr.clone(),
            host: self.cfg.host.clone(),
            zone: self.cfg.zone.clone(),
        };
        let reg = match client.register_node(context_with_timeout(RPC_TIMEOUT), hello).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(Failure::Retry(format!("the master refused: {e}"))),
            Err(e) => return Err(Failure::Retry(e.to_string())),
        };
        if let Some(mine) = &self.identity.fs_id {
            if *mine != reg.fs_id {
                return Err(Failure::Fatal(anyhow::anyhow!(
                    "this node's data directory {} belongs to filesystem {mine}, but the master at {} serves \
                     filesystem {}; refusing to join it",
                    self.cfg.data_dir.display(),
                    self.cfg.master_addr,
                    reg.fs_id
                )));
            }
        }
        if !valid_fs_id(&reg.fs_id) {
            return Err(Failure::Retry(format!("the master sent an unusable fs id {:?}", reg.fs_id)));
        }
        if let Some(old) = self.identity.node_id.filter(|&old| old != reg.node_id) {
            tracing::warn!("the master renamed this node from {old} to {}", reg.node_id);
        }
        self.identity = Identity { node_id: Some(reg.node_id), fs_id: Some(reg.fs_id) };
        if self.identity != self.saved {
            let (identity, dir) = (self.identity.clone(), self.cfg.data_dir.clone());
            let saved = tokio::task::spawn_blocking(move || identity.save(&dir)).await;
            match saved {
                Ok(Ok(())) => self.saved = self.identity.clone(),
                Ok(Err(e)) => return Err(Failure::Retry(format!("cannot record the node identity: {e}"))),
                Err(e) => return Err(Failure::Retry(format!("cannot record the node identity: {e}"))),
            }
            tracing::info!(
                "recorded node identity {} of filesystem {}",
                reg.node_id,
                self.identity.fs_id.as_deref().unwrap_or("?")
            );
        }
        Ok((client, reg.node_id))
    }

    /// Heartbeats every interval until the link breaks or shutdown.
    async fn heartbeats(&self, client: &MasterServiceClient, node: NodeId, backoff: &mut Backoff) -> HeartbeatEnd {
        let mut ticker = tokio::time::interval(self.cfg.heartbeat_interval);
        let mut last_inventory = tokio::time::Instant::now();
        let mut last_learned = tokio::time::Instant::now();
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return HeartbeatEnd::Shutdown,
                _ = ticker.tick() => {}
            }
            if last_inventory.elapsed() >= INVENTORY_INTERVAL {
                last_inventory = tokio::time::Instant::now();
                self.report_inventory(client, node);
            }
            if last_learned.elapsed() >= Duration::from_secs(2) {
                last_learned = tokio::time::Instant::now();
                self.learn_members(client).await;
            }
            let hb = self.heartbeat(node).await;
            let reports = crate::reports::Pending {
                replicated: hb.replicated.clone(),
                failed: hb.failed.clone(),
                corrupt: hb.corrupt.clone(),
            };
            let reply = tokio::select! {
                _ = self.shutdown.cancelled() => return HeartbeatEnd::Shutdown,
                r = client.heartbeat(context_with_timeout(RPC_TIMEOUT), hb) => r,
            };
            if !matches!(reply, Ok(Ok(_))) {
                self.reports.restore(reports);
            }
            match reply {
                Ok(Ok(reply)) if !self.fence.admits(reply.term) => {
                    tracing::warn!(
                        "refused the orders of a master of term {} (a deposed leader: this node has seen term {}); \
                         finding the leader",
                        reply.term,
                        self.fence.highest()
                    );
                    return HeartbeatEnd::Reregister;
                }
                Ok(Ok(reply)) => {
                    backoff.reset();
                    // Deletions first: a copy ordered in the same reply may be
                    // of a version this node must delete first (a corrupt
                    // replica being replaced here by a good one).
                    if !reply.delete.is_empty() {
                        self.apply_deletions(reply.delete).await;
                    }
                    if !reply.replicate.is_empty() {
                        self.copies.order(reply.replicate);
                    }
                }
                Ok(Err(FsError::NotFound)) => {
                    tracing::warn!("the master does not know node {node}; registering again");
                    return HeartbeatEnd::Reregister;
                }
                Ok(Err(FsError::NotLeader)) => {
                    tracing::info!("the master no longer leads its group; registering with the new leader");
                    return HeartbeatEnd::Reregister;
                }
                Ok(Err(e)) => tracing::warn!("the master refused a heartbeat: {e}"),
                Err(e) => {
                    tracing::warn!("heartbeat to master {} failed: {e}; reconnecting", self.cfg.master_addr);
                    return HeartbeatEnd::Reconnect;
                }
            }
        }
    }

    /// Adds the group's members to the masters to ask (a node given one
    /// master finds the others once that one is gone).
    async fn learn_members(&self, client: &MasterServiceClient) {
        if let Ok(Ok(st)) = client.group(context_with_timeout(RPC_TIMEOUT)).await {
            let mut masters = self.masters.lock().unwrap_or_else(|e| e.into_inner());
            let merged = stripefs_proto::net::with_members(&masters, &st);
            if *masters != merged {
                tracing::info!("masters of the group: {merged}");
                *masters = merged;
            }
        }
    }

    /// Sends the list of every replica held, in the background.
    fn report_inventory(&self, client: &MasterServiceClient, node: NodeId) {
        let (client, store) = (client.clone(), self.store.clone());
        tokio::spawn(async move {
            let items = match tokio::task::spawn_blocking(move || store.inventory_with_age()).await {
                Ok(Ok(list)) => list
                    .into_iter()
                    .map(|(chunk, version, age_secs)| InventoryItem { chunk, version, age_secs })
                    .collect::<Vec<_>>(),
                Ok(Err(e)) => return tracing::warn!("cannot list replicas for the master: {e}"),
                Err(e) => return tracing::warn!("inventory task failed: {e}"),
            };
            let n = items.len();
            match client.report_inventory(context_with_timeout(INVENTORY_TIMEOUT), node, items).await {
                Ok(Ok(())) => tracing::info!("reported {n} replicas to the master"),
                Ok(Err(e)) => tracing::warn!("the master refused the inventory: {e}"),
                Err(e) => tracing::warn!("inventory report failed: {e}"),
            }
        });
    }

    async fn heartbeat(&self, node: NodeId) -> Heartbeat {
        let dir = self.cfg.data_dir.clone();
        // Without a disk identity (no /proc, say) the master counts this
        // node's disk on its own: the space figures still go out.
        let (space, disk) = match tokio::task::spawn_blocking(move || (disk_space(&dir), disk_identity(&dir))).await {
            Ok((space, disk)) => (space, disk.unwrap_or_default()),
            Err(e) => (Err(std::io::Error::other(format!("disk space task failed: {e}"))), String::new()),
        };
        let space = match space {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot stat the filesystem of {}: {e}", self.cfg.data_dir.display());
                None
            }
        };
        let pending = self.reports.take();
        Heartbeat {
            node,
            capacity_bytes: space.map_or(0, |s| s.capacity_bytes),
            // The reserve is not ours to fill.
            free_bytes: space.map_or(0, |s| s.free_bytes.saturating_sub(self.cfg.reserve_bytes)),
            disk,
            used_bytes: self.store.used_bytes(),
            chunk_count: self.store.chunk_count(),
            replicated: pending.replicated,
            failed: pending.failed,
            corrupt: pending.corrupt,
            workers: self.workers.status(),
        }
    }

    async fn apply_deletions(&self, delete: Vec<(stripefs_proto::ChunkId, stripefs_proto::Version)>) {
        let (store, reports) = (self.store.clone(), self.reports.clone());
        let n = delete.len();
        let done = tokio::task::spawn_blocking(move || {
            let mut failed = 0usize;
            for (chunk, version) in delete {
                match store.delete(chunk, version) {
                    Ok(()) => reports.deleted((chunk, version)),
                    Err(e) => {
                        tracing::warn!("cannot delete replica: {e}");
                        failed += 1;
                    }
                }
            }
            failed
        })
        .await;
        match done {
            Ok(0) => tracing::info!("deleted {n} replicas as the master asked"),
            Ok(failed) => tracing::warn!("deleted {} of {n} replicas the master asked to delete", n - failed),
            Err(e) => tracing::error!("deletion task failed: {e}"),
        }
    }
}

#[cfg(test)]
#[path = "master_link_tests.rs"]
mod tests;
