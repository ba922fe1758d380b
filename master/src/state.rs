//! The master's state: what every connection, background worker and fsck
//! share. The database ([`Store`]) holds what must survive a restart; the
//! rest is soft state, rebuilt from the nodes' and clients' reports after a
//! restart (the node registry, open files, inventories, corrupt replicas,
//! copy orders).
//!
//! The RPC layer ([`crate::service`]) and the workers ([`crate::workers`])
//! both use this module; it uses neither.

use crate::namespace::Command;
use crate::registry::Registry;
use crate::store::Store;
use crate::workers::gc::InventoryQueue;
use crate::workers::orphans::OrphanQueue;
use crate::workers::rereplication::Copies;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_daemon::{lock, Workers};
use stripefs_proto::{ChunkId, InodeId, NodeId, Version};

/// How long an unlinked file released by a lost connection survives: the
/// client may reconnect (e.g. after a master restart) and open it again.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// Open references per inode, over all connections.
#[derive(Debug, Default)]
pub struct OpenFiles(Mutex<HashMap<InodeId, u64>>);

impl OpenFiles {
    /// Whether some client holds `ino` open.
    pub fn is_open(&self, ino: InodeId) -> bool {
        lock(&self.0).contains_key(&ino)
    }

    /// Takes one reference to `ino`.
    pub fn acquire(&self, ino: InodeId) {
        *lock(&self.0).entry(ino).or_insert(0) += 1;
    }

    /// Drops `n` references; true when none is left.
    pub fn release(&self, ino: InodeId, n: u64) -> bool {
        let mut m = lock(&self.0);
        match m.get_mut(&ino) {
            Some(c) if *c > n => {
                *c -= n;
                false
            }
            Some(_) => {
                m.remove(&ino);
                true
            }
            None => true,
        }
    }
}

/// A node's replica inventory as last reported.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Every replica the node holds.
    pub replicas: Vec<(ChunkId, Version)>,
    /// When the report arrived.
    pub at: Option<Instant>,
}

/// State shared by every connection, worker and fsck run.
pub struct MasterState {
    /// The database.
    pub store: Store,
    /// Node registry.
    pub registry: Registry,
    /// Open references.
    pub opens: Arc<OpenFiles>,
    /// Re-replication: copy orders waiting for their node, and copies in flight.
    pub copies: Copies,
    /// What each node last reported holding (its full replica inventory).
    pub inventories: Mutex<HashMap<NodeId, Inventory>>,
    /// Inventories waiting for garbage collection.
    pub gc_queue: InventoryQueue,
    /// Since when this master leads its group.
    leader_since: Mutex<Option<Instant>>,
    /// Unlinked files waiting for their grace time before they are purged.
    pub orphans: OrphanQueue,
    /// Unreferenced replicas younger than this are spared by garbage
    /// collection (they may belong to an upload not yet committed).
    pub gc_grace: Duration,
    /// A node silent this long is gone for its scratch files
    /// ([`crate::workers::scratch`]).
    pub scratch_lost_after: Duration,
    /// Replicas found corrupt (by a node's scrubber or a client's read) and
    /// not yet replaced.
    pub corrupt: Mutex<HashSet<(NodeId, ChunkId, Version)>>,
    /// The background workers (for their status).
    pub workers: Workers,
    /// Chunks under their replication factor at the last re-replication
    /// scan (for metrics).
    pub under_replicated: std::sync::atomic::AtomicU64,
}

impl MasterState {
    /// The state over an open store and registry, with nothing open,
    /// reported or queued yet.
    pub fn new(
        store: Store,
        registry: Registry,
        opens: Arc<OpenFiles>,
        gc_grace: Duration,
        scratch_lost_after: Duration,
        workers: Workers,
    ) -> MasterState {
        MasterState {
            store,
            registry,
            opens,
            copies: Copies::default(),
            inventories: Default::default(),
            gc_queue: InventoryQueue::default(),
            leader_since: Mutex::new(None),
            orphans: OrphanQueue::default(),
            gc_grace,
            scratch_lost_after,
            corrupt: Default::default(),
            workers,
            under_replicated: Default::default(),
        }
    }

    /// This master became the leader of its group: what other masters
    /// kept in memory is rebuilt here. Nodes report in with their next
    /// heartbeat (nothing is re-replicated before they had the time:
    /// [`MasterState::leading_for`]); clients re-open their files when
    /// they reconnect, so every orphan gets [`ORPHAN_GRACE`] before it is
    /// freed.
    pub fn took_the_lead(&self) {
        *lock(&self.leader_since) = Some(Instant::now());
        match self.store.nodes() {
            Ok(nodes) => self.registry.learn(nodes),
            Err(e) => tracing::error!("listing nodes: {e}"),
        }
        match self.store.orphans() {
            Ok(orphans) => {
                for ino in &orphans {
                    self.orphans.purge_after(*ino, ORPHAN_GRACE);
                }
                tracing::info!("leading the master group; {} orphans wait for their clients", orphans.len());
            }
            Err(e) => tracing::error!("listing orphans: {e}"),
        }
    }

    /// This master no longer leads its group.
    pub fn lost_the_lead(&self) {
        *lock(&self.leader_since) = None;
        tracing::info!("no longer leading the master group");
    }

    /// How long this master has led its group (None: it does not).
    pub fn leading_for(&self) -> Option<Duration> {
        if !self.store.is_leader() {
            return None;
        }
        lock(&self.leader_since).map(|t| t.elapsed())
    }

    /// Whether this master has led its group long enough for every live
    /// node to have reported to it: until then nothing is re-replicated
    /// (a node not heard from yet is not dead).
    pub fn settled_leader(&self) -> bool {
        self.leading_for().is_some_and(|d| d >= self.registry.dead_after())
    }

    /// Releases `n` references to `ino` that a client gave back, freeing
    /// the file if it was an orphan.
    pub fn release(self: &Arc<Self>, ino: InodeId, n: u64) {
        if self.opens.release(ino, n) {
            self.when_settled(ino, move |state| state.store.submit(Command::Purge { ino }));
        }
    }

    /// Releases references held by a connection that ended: an orphan is
    /// freed only after [`ORPHAN_GRACE`], if nobody opened it again.
    pub fn release_lost(self: &Arc<Self>, ino: InodeId, n: u64) {
        if self.opens.release(ino, n) {
            self.when_settled(ino, move |state| state.orphans.purge_after(ino, ORPHAN_GRACE));
        }
    }

    /// Runs `then` if `ino` is an orphan nobody holds, once no command in
    /// flight can still make it one (an unlink proposed while the file was
    /// open, applied after its last release, keeps it as an orphan).
    fn when_settled(self: &Arc<Self>, ino: InodeId, then: impl FnOnce(&MasterState) + Send + 'static) {
        let check = move |state: &MasterState| {
            if !state.opens.is_open(ino) && state.store.is_orphan(ino).unwrap_or(false) {
                then(state);
            }
        };
        if self.store.is_settled(ino) {
            check(self);
        } else {
            let state = self.clone();
            tokio::spawn(async move {
                state.store.settled(ino).await;
                check(&state);
            });
        }
    }

    /// A replica failed its checksum. A replica of a chunk's current
    /// version stays listed, marked corrupt, until re-replication has
    /// made a good copy elsewhere (then it is dropped and deleted): fsck
    /// shows it as corrupt meanwhile, it is never offered to readers while
    /// a good one exists, and placement keeps avoiding its node. Any other
    /// version is deleted at once.
    pub async fn corrupt_replica(&self, node: NodeId, chunk: ChunkId, version: Version) {
        if version == Version::SCRATCH_FILE {
            // A scratch file (inode `chunk`) has no other copy: listed by
            // fsck until it is written again or removed, never deleted here.
            let ino = stripefs_proto::InodeId(chunk.0);
            if self.store.inode(ino).is_ok_and(|r| r.home == Some(node)) {
                tracing::error!("scratch file {ino} on node {node} is corrupt (it has no other copy)");
                lock(&self.corrupt).insert((node, chunk, version));
            }
            return;
        }
        let current = match self.store.find_chunk(chunk) {
            Ok(Some((_, _, rec))) => rec.version == version && rec.replicas.contains(&node),
            Ok(None) => false,
            Err(e) => {
                tracing::error!("looking up corrupt chunk {chunk}: {e}");
                return;
            }
        };
        if current {
            tracing::error!("replica of chunk {chunk} v{version} on node {node} is corrupt; replacing it");
            lock(&self.corrupt).insert((node, chunk, version));
            self.copies.wake();
        } else {
            tracing::warn!(
                "replica of chunk {chunk} v{version} on node {node} is corrupt and not current; deleting it"
            );
            let cmd = Command::QueueDeletions { replicas: vec![(node, chunk, version)] };
            if let Err(e) = self.store.execute(cmd).await {
                tracing::error!("deleting the corrupt replica of chunk {chunk} on node {node}: {e}");
            }
        }
    }

    /// Forgets that scratch file `ino` on `node` was found corrupt (it was
    /// written again: size or mtime changed).
    pub fn scratch_rewritten(&self, node: NodeId, ino: stripefs_proto::InodeId) {
        lock(&self.corrupt).remove(&(node, ChunkId(ino.0), Version::SCRATCH_FILE));
    }

    /// Whether the replica of `chunk` `version` on `node` is known corrupt.
    pub fn is_corrupt(&self, node: NodeId, chunk: ChunkId, version: Version) -> bool {
        lock(&self.corrupt).contains(&(node, chunk, version))
    }
}
