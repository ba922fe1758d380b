//! Local reads: replicas held by a storage node on this host are read
//! straight from their files, through descriptors the node hands over
//! ([`stripefs_proto::local_socket`]), instead of over TCP.
//!
//! A node is local when its local-read socket can be reached from here; a
//! node that cannot be reached that way is asked again only after
//! [`ABSENT_RECHECK`]. Open replicas are kept in an LRU keyed by node,
//! chunk and version (a version's file never changes); since a kept
//! descriptor pins the disk space of a version the node has deleted, none
//! is kept longer than [`MAX_AGE`].

use crate::error::{ClientError, Result, TransportError};
use lru::LruCache;
use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_proto::local_socket::{LocalConn, LocalRequest};
use stripefs_proto::net::Secret;
use stripefs_proto::replica::{Layout, ReplicaError};
use stripefs_proto::types::EncodedBlock;
use stripefs_proto::{ChunkId, FsError, InodeId, NodeId, Version};

/// How long a node found not to be local is not asked again.
pub const ABSENT_RECHECK: Duration = Duration::from_secs(10);
/// Longest time a replica's descriptor is kept.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// Most replica descriptors kept open.
const MAX_OPEN: usize = 512;
/// Deadline of one request on a local-read socket.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type Key = (NodeId, ChunkId, Version);

/// An open replica file and its block table.
struct OpenReplica {
    file: File,
    layout: Layout,
    opened: Instant,
}

/// What is known of one node's local-read socket.
enum NodeState {
    /// Not reachable from here (found at that time).
    Absent(Instant),
    /// Reachable; these connections are not in use.
    Idle(Vec<LocalConn>),
}

struct Inner {
    nodes: Mutex<HashMap<String, NodeState>>,
    replicas: Mutex<LruCache<Key, Arc<OpenReplica>>>,
}

use stripefs_daemon::lock;

/// The local-read side of one mount.
pub struct LocalReads {
    secret: Secret,
    inner: Arc<Inner>,
}

impl LocalReads {
    /// No node known yet.
    pub fn new(secret: Secret) -> LocalReads {
        let replicas = LruCache::new(NonZeroUsize::new(MAX_OPEN).expect("not zero"));
        LocalReads { secret, inner: Arc::new(Inner { nodes: Mutex::default(), replicas: Mutex::new(replicas) }) }
    }

    /// Blocks `[first, first+count)` of the replica of `chunk` at `version`
    /// held by `node` (at `addr`), as stored (the caller verifies them), or
    /// `None` when that node is not on this host: read over TCP then. Errors
    /// are the node's answer (`NotFound`), `Corrupt` for a replica file that
    /// is not what its header says, or a transport error.
    pub async fn read_blocks(
        &self,
        node: NodeId,
        addr: &str,
        chunk: ChunkId,
        version: Version,
        first: u32,
        count: u32,
    ) -> Option<Result<Vec<EncodedBlock>>> {
        let key = (node, chunk, version);
        // Open already, or a connection to the node (and its address, to
        // give the connection back under) to open it with.
        let found = match self.inner.cached(&key) {
            Some(r) => Ok(r),
            None => Err((self.conn(addr).await?, addr.to_string())),
        };
        let inner = self.inner.clone();
        let read = move || {
            let replica = match found {
                Ok(r) => r,
                Err((conn, addr)) => inner.open(key, &addr, conn)?,
            };
            replica.layout.read_blocks(&replica.file, first, count).map_err(|e| {
                inner.forget(&key);
                replica_error(chunk, version, e)
            })
        };
        Some(crate::conn::run_blocking(read).await)
    }

    /// The scratch file of `ino` held by the node at `addr`, open
    /// read-write (created if missing), or `None` when that node is not
    /// on this host. Errors: the node's answer, or a transport error.
    pub async fn open_scratch(&self, addr: &str, ino: InodeId) -> Option<Result<File>> {
        let mut conn = self.conn(addr).await?;
        let inner = self.inner.clone();
        let addr = addr.to_string();
        let open = move || {
            let answer = conn.request(LocalRequest::Scratch(ino), REQUEST_TIMEOUT);
            if answer.is_ok() {
                if let Some(NodeState::Idle(conns)) = lock(&inner.nodes).get_mut(&addr) {
                    conns.push(conn);
                }
            }
            let file = answer.map_err(|e| TransportError::LocalScratch {
                ino,
                detail: format!("local socket of node {addr}: {e}"),
            })??;
            Ok(file)
        };
        Some(crate::conn::run_blocking(open).await)
    }

    /// A connection to the node at `addr`'s local-read socket, or `None`
    /// when it has none reachable from here.
    async fn conn(&self, addr: &str) -> Option<LocalConn> {
        {
            let mut nodes = lock(&self.inner.nodes);
            match nodes.get_mut(addr) {
                Some(NodeState::Absent(at)) if at.elapsed() < ABSENT_RECHECK => return None,
                Some(NodeState::Idle(conns)) => {
                    if let Some(c) = conns.pop() {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        let found = match LocalConn::connect(addr, &self.secret, crate::conn::CONNECT_TIMEOUT).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("local reads from node {addr} are off for {ABSENT_RECHECK:?}: {e}");
                None
            }
        };
        let mut nodes = lock(&self.inner.nodes);
        match found {
            Some(c) => {
                if !matches!(nodes.get(addr), Some(NodeState::Idle(_))) {
                    tracing::info!("node {addr} is on this host: reading its replicas locally");
                    nodes.insert(addr.to_string(), NodeState::Idle(Vec::new()));
                }
                Some(c)
            }
            None => {
                nodes.insert(addr.to_string(), NodeState::Absent(Instant::now()));
                None
            }
        }
    }

    /// Closes every kept descriptor (a cold start for benchmarks, and
    /// what frees the space of deleted versions at once).
    pub fn clear(&self) {
        lock(&self.inner.replicas).clear();
    }

    /// Closes the descriptors kept longer than [`MAX_AGE`]; returns how many.
    pub fn expire(&self) -> usize {
        let mut cache = lock(&self.inner.replicas);
        let old: Vec<Key> = cache.iter().filter(|(_, r)| r.opened.elapsed() >= MAX_AGE).map(|(k, _)| *k).collect();
        for k in &old {
            cache.pop(k);
        }
        old.len()
    }

    /// Descriptors kept open now.
    pub fn open_count(&self) -> usize {
        lock(&self.inner.replicas).len()
    }
}

impl Inner {
    fn cached(&self, key: &Key) -> Option<Arc<OpenReplica>> {
        let mut cache = lock(&self.replicas);
        match cache.get(key) {
            Some(r) if r.opened.elapsed() < MAX_AGE => Some(r.clone()),
            Some(_) => {
                cache.pop(key);
                None
            }
            None => None,
        }
    }

    fn forget(&self, key: &Key) {
        lock(&self.replicas).pop(key);
    }

    /// Asks the node for the replica file and reads its block table
    /// (blocking). The connection goes back to the node's idle ones unless
    /// it broke.
    fn open(&self, key: Key, addr: &str, mut conn: LocalConn) -> Result<Arc<OpenReplica>> {
        let (_, chunk, version) = key;
        let answer = conn.open(chunk, version, REQUEST_TIMEOUT);
        if answer.is_ok() {
            if let Some(NodeState::Idle(conns)) = lock(&self.nodes).get_mut(addr) {
                conns.push(conn);
            }
        }
        let file = answer.map_err(|e| TransportError::LocalRead {
            chunk,
            version,
            detail: format!("local-read socket of node {addr}: {e}"),
        })??;
        let layout = Layout::read(&file, chunk, version).map_err(|e| replica_error(chunk, version, e))?;
        let replica = Arc::new(OpenReplica { file, layout, opened: Instant::now() });
        lock(&self.replicas).put(key, replica.clone());
        Ok(replica)
    }
}

fn replica_error(chunk: ChunkId, version: Version, e: ReplicaError) -> ClientError {
    match e {
        ReplicaError::Corrupt(detail) => {
            tracing::error!("local replica of chunk {chunk} v{version} is corrupt: {detail}");
            FsError::Corrupt.into()
        }
        ReplicaError::Io(e) => TransportError::LocalRead { chunk, version, detail: e.to_string() }.into(),
    }
}
