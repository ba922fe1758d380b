//! Live state of the storage nodes (heartbeats, space) and replica
//! placement.

use crate::records::NodeRecord;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use stripefs_proto::types::{Heartbeat, NodeStatus, Replica, WorkerStatus};
use stripefs_proto::{FsError, NodeId};

/// A node refuses new chunks when its free space falls below this.
pub const MIN_FREE_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone)]
struct Entry {
    record: NodeRecord,
    last_seen: Option<Instant>,
    capacity: u64,
    free: u64,
    /// The filesystem holding its chunks ([`Heartbeat::disk`]).
    disk: String,
    used: u64,
    chunks: u64,
    /// Its workers' status at its last heartbeat.
    workers: Vec<WorkerStatus>,
}

impl Entry {
    /// A node known from its record, not seen yet.
    fn unseen(record: NodeRecord) -> Entry {
        Entry {
            record,
            last_seen: None,
            capacity: 0,
            free: 0,
            disk: String::new(),
            used: 0,
            chunks: 0,
            workers: Vec::new(),
        }
    }
}

/// Every node the master knows, with its last report.
#[derive(Debug)]
pub struct Registry {
    nodes: Mutex<HashMap<NodeId, Entry>>,
    dead_after: Duration,
    /// When this registry began (a node never seen is silent since then).
    since: Instant,
}

impl Registry {
    /// A registry of `known` nodes (from the database), all unseen yet.
    pub fn new(known: Vec<(NodeId, NodeRecord)>, dead_after: Duration) -> Registry {
        let nodes = known.into_iter().map(|(id, record)| (id, Entry::unseen(record))).collect();
        Registry { nodes: Mutex::new(nodes), dead_after, since: Instant::now() }
    }

    /// The dead nodes, each with how long it has been silent (a node this
    /// master never heard from: since the master started).
    pub fn dead_for(&self) -> Vec<(NodeId, Duration)> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, e)| !self.alive(e, now))
            .map(|(id, e)| (*id, now.duration_since(e.last_seen.unwrap_or(self.since))))
            .collect()
    }

    /// Adds the nodes of `known` this registry does not know yet, unseen
    /// (a master that takes the lead learns the nodes registered while it
    /// followed).
    pub fn learn(&self, known: Vec<(NodeId, NodeRecord)>) {
        let mut nodes = self.lock();
        for (id, record) in known {
            nodes.entry(id).or_insert_with(|| Entry::unseen(record));
        }
    }

    /// Whether a known node has not reported to this master yet (not
    /// registered, or registered without a heartbeat with its space).
    pub fn any_unseen(&self) -> bool {
        self.lock().values().any(|e| e.last_seen.is_none() || e.capacity == 0)
    }

    /// How long a silent node is still alive.
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Entry>> {
        // A panic while holding this lock leaves plain data behind: keep going.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn alive(&self, e: &Entry, now: Instant) -> bool {
        e.last_seen.is_some_and(|t| now.duration_since(t) < self.dead_after)
    }

    /// Records a (re-)registration; the node counts as seen.
    pub fn registered(&self, id: NodeId, record: NodeRecord) {
        let mut nodes = self.lock();
        let e = nodes.entry(id).or_insert_with(|| Entry::unseen(record.clone()));
        e.record = record;
        e.last_seen = Some(Instant::now());
    }

    /// Records a heartbeat; false when the node is unknown.
    pub fn heartbeat(&self, hb: &Heartbeat) -> bool {
        let mut nodes = self.lock();
        let Some(e) = nodes.get_mut(&hb.node) else { return false };
        e.last_seen = Some(Instant::now());
        e.capacity = hb.capacity_bytes;
        e.free = hb.free_bytes;
        e.disk.clone_from(&hb.disk);
        e.used = hb.used_bytes;
        e.chunks = hb.chunk_count;
        e.workers.clone_from(&hb.workers);
        true
    }

    /// Where a replica on `id` lives, if the node is known.
    pub fn replica(&self, id: NodeId) -> Option<(Replica, bool)> {
        let now = Instant::now();
        let nodes = self.lock();
        let e = nodes.get(&id)?;
        Some((
            Replica { node: id, addr: e.record.addr.clone(), host: e.record.host.clone(), zone: e.record.zone.clone() },
            self.alive(e, now),
        ))
    }

    /// Every node's status, sorted by id.
    pub fn status(&self) -> Vec<NodeStatus> {
        let now = Instant::now();
        let nodes = self.lock();
        let mut out: Vec<NodeStatus> = nodes
            .iter()
            .map(|(id, e)| NodeStatus {
                id: *id,
                addr: e.record.addr.clone(),
                host: e.record.host.clone(),
                zone: e.record.zone.clone(),
                alive: self.alive(e, now),
                capacity_bytes: e.capacity,
                free_bytes: e.free,
                used_bytes: e.used,
                chunk_count: e.chunks,
                last_seen_ms: e.last_seen.map(|t| now.duration_since(t).as_millis() as u64).unwrap_or(u64::MAX),
                pending_deletions: 0,
                workers: e.workers.clone(),
            })
            .collect();
        out.sort_by_key(|n| n.id);
        out
    }

    /// Total capacity and free space of the live nodes. Nodes whose chunks
    /// share one filesystem count it once, with the least free space any
    /// of them reports (each keeps its own reserve out of it).
    pub fn space(&self) -> (u64, u64) {
        let now = Instant::now();
        let nodes = self.lock();
        let mut disks: HashMap<&str, (u64, u64)> = HashMap::new();
        let (mut total, mut free) = (0u64, 0u64);
        for e in nodes.values().filter(|e| self.alive(e, now)) {
            if e.disk.is_empty() {
                total = total.saturating_add(e.capacity);
                free = free.saturating_add(e.free);
                continue;
            }
            let d = disks.entry(&e.disk).or_insert((e.capacity, e.free));
            *d = (d.0.max(e.capacity), d.1.min(e.free));
        }
        for (t, f) in disks.into_values() {
            total = total.saturating_add(t);
            free = free.saturating_add(f);
        }
        (total, free)
    }

    /// Whether node `id` is known and alive.
    pub fn is_alive(&self, id: NodeId) -> bool {
        let now = Instant::now();
        self.lock().get(&id).is_some_and(|e| self.alive(e, now))
    }

    /// Whether some known node is dead.
    pub fn any_dead(&self) -> bool {
        let now = Instant::now();
        self.lock().values().any(|e| !self.alive(e, now))
    }

    /// Picks up to `n` live nodes for a new chunk: on distinct hosts, on
    /// distinct zones while there are unused ones, the client's own host
    /// first when it runs a node, otherwise weighted by free space. Nodes in
    /// `avoid`, and other nodes on their hosts, are not picked.
    pub fn place(&self, n: usize, client_host: &str, avoid: &[NodeId]) -> Result<Vec<Replica>, FsError> {
        let now = Instant::now();
        let nodes = self.lock();
        let avoided_hosts: HashSet<&str> =
            avoid.iter().filter_map(|id| nodes.get(id)).map(|e| e.record.host.as_str()).collect();
        let live: Vec<(&NodeId, &Entry)> = nodes
            .iter()
            .filter(|(id, e)| {
                self.alive(e, now) && !avoid.contains(id) && !avoided_hosts.contains(e.record.host.as_str())
            })
            .collect();
        if live.is_empty() {
            return Err(FsError::Unavailable);
        }
        let mut candidates: Vec<(&NodeId, &Entry)> =
            live.into_iter().filter(|(_, e)| e.free >= MIN_FREE_BYTES).collect();
        if candidates.is_empty() {
            return Err(FsError::NoSpace);
        }
        candidates.sort_by_key(|(id, _)| **id);
        let mut chosen: Vec<(&NodeId, &Entry)> = Vec::new();
        let mut hosts = HashSet::new();
        let mut zones = HashSet::new();
        if let Some(local) = candidates.iter().filter(|(_, e)| e.record.host == client_host).max_by_key(|(_, e)| e.free)
        {
            hosts.insert(local.1.record.host.clone());
            zones.insert(local.1.record.zone.clone());
            chosen.push(*local);
        }
        let mut rng = rand::rng();
        while chosen.len() < n {
            let pool: Vec<&(&NodeId, &Entry)> =
                candidates.iter().filter(|(_, e)| !hosts.contains(&e.record.host)).collect();
            if pool.is_empty() {
                break;
            }
            let fresh_zone: Vec<&&(&NodeId, &Entry)> =
                pool.iter().filter(|(_, e)| !zones.contains(&e.record.zone)).collect();
            let pick = if fresh_zone.is_empty() {
                weighted(&mut rng, pool.iter().copied())
            } else {
                weighted(&mut rng, fresh_zone.into_iter().copied())
            };
            let Some(pick) = pick else { break };
            hosts.insert(pick.1.record.host.clone());
            zones.insert(pick.1.record.zone.clone());
            chosen.push(*pick);
        }
        Ok(chosen
            .into_iter()
            .map(|(id, e)| Replica {
                node: *id,
                addr: e.record.addr.clone(),
                host: e.record.host.clone(),
                zone: e.record.zone.clone(),
            })
            .collect())
    }
}

fn weighted<'a, 'b>(
    rng: &mut impl Rng,
    pool: impl Iterator<Item = &'a (&'b NodeId, &'b Entry)>,
) -> Option<&'a (&'b NodeId, &'b Entry)>
where
    'b: 'a,
{
    let pool: Vec<_> = pool.collect();
    let total: u128 = pool.iter().map(|(_, e)| e.free as u128 + 1).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.random_range(0..total);
    for item in &pool {
        let w = item.1.free as u128 + 1;
        if x < w {
            return Some(item);
        }
        x -= w;
    }
    pool.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(nodes: &[(&str, &str, u64)]) -> Registry {
        let disks: Vec<(&str, &str, u64, u64, String)> =
            nodes.iter().enumerate().map(|(i, (h, z, f))| (*h, *z, 1 << 40, *f, format!("disk{i}"))).collect();
        reg_disks(&disks)
    }

    /// A registry of nodes given as (host, zone, capacity, free, disk).
    fn reg_disks(nodes: &[(&str, &str, u64, u64, String)]) -> Registry {
        let r = Registry::new(Vec::new(), Duration::from_secs(10));
        for (i, (host, zone, capacity, free, disk)) in nodes.iter().enumerate() {
            let id = NodeId(i as u64 + 1);
            r.registered(id, NodeRecord { addr: format!("a{i}"), host: host.to_string(), zone: zone.to_string() });
            r.heartbeat(&Heartbeat {
                node: id,
                capacity_bytes: *capacity,
                free_bytes: *free,
                disk: disk.clone(),
                used_bytes: 0,
                chunk_count: 0,
                replicated: Vec::new(),
                failed: Vec::new(),
                corrupt: Vec::new(),
                workers: Vec::new(),
            });
        }
        r
    }

    #[test]
    fn a_disk_nodes_share_counts_once_in_space() {
        let d = |s: &str| s.to_string();
        // Nodes 1 and 2 share disk A (each keeps its own reserve out of
        // its free figure), node 3 has disk B, node 4 does not know its disk.
        let r = reg_disks(&[
            ("h1", "z", 1000, 400, d("A")),
            ("h2", "z", 1000, 300, d("A")),
            ("h3", "z", 500, 100, d("B")),
            ("h4", "z", 70, 7, d("")),
        ]);
        assert_eq!(r.space(), (1000 + 500 + 70, 300 + 100 + 7));
        // Separate disks add up.
        let r = reg_disks(&[("h1", "z", 1000, 400, d("A")), ("h2", "z", 1000, 300, d("C"))]);
        assert_eq!(r.space(), (2000, 700));
    }

    #[test]
    fn replicas_go_to_distinct_hosts_and_local_first() {
        let r = reg(&[("h1", "z", 1 << 30), ("h1", "z", 1 << 30), ("h2", "z", 1 << 30), ("h3", "z", 1 << 30)]);
        for _ in 0..50 {
            let p = r.place(3, "h3", &[]).expect("place");
            assert_eq!(p.len(), 3);
            assert_eq!(p[0].host, "h3");
            let hosts: HashSet<_> = p.iter().map(|x| x.host.clone()).collect();
            assert_eq!(hosts.len(), 3);
        }
    }

    #[test]
    fn zones_are_spread_when_possible() {
        let r = reg(&[("h1", "a", 1 << 30), ("h2", "a", 1 << 30), ("h3", "b", 1 << 30)]);
        for _ in 0..50 {
            let p = r.place(2, "elsewhere", &[]).expect("place");
            let zones: HashSet<_> = p.iter().map(|x| x.zone.clone()).collect();
            assert_eq!(zones.len(), 2, "{p:?}");
        }
    }

    #[test]
    fn avoided_nodes_and_their_hosts_are_skipped() {
        let r = reg(&[("h1", "a", 1 << 30), ("h1", "a", 1 << 30), ("h2", "a", 1 << 30), ("h3", "a", 1 << 30)]);
        for _ in 0..50 {
            let p = r.place(3, "x", &[NodeId(1)]).expect("place");
            assert_eq!(p.len(), 2, "h1 is avoided entirely: {p:?}");
            assert!(p.iter().all(|x| x.host != "h1"));
        }
        assert_eq!(r.place(1, "x", &[NodeId(1), NodeId(3), NodeId(4)]), Err(FsError::Unavailable));
    }

    #[test]
    fn full_nodes_take_nothing() {
        let r = reg(&[("h1", "a", 1 << 30), ("h2", "a", 1000)]);
        let p = r.place(2, "x", &[]).expect("place");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].host, "h1");
        let full = reg(&[("h1", "a", 10)]);
        assert_eq!(full.place(1, "x", &[]), Err(FsError::NoSpace));
        let none = Registry::new(Vec::new(), Duration::from_secs(1));
        assert_eq!(none.place(1, "x", &[]), Err(FsError::Unavailable));
    }
}
