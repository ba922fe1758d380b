//! fsck: checks the namespace, the chunk map and the replicas against each
//! other, on a running master ([`online`], which can also repair) or on a
//! stopped master's database opened read-only ([`offline`]).
//!
//! The checks read every table in one read transaction, so they judge one
//! consistent state. Repairs are [`crate::namespace::FsckOp`] commands applied by the single
//! writer; each one checks again, before it writes, that the state is still
//! the one the scan saw.

pub mod ops;
mod scan;

use crate::namespace::Command;
use crate::state::MasterState;
use crate::store::{internal, Store};
use crate::tables::{self, FORMAT_VERSION};
use redb::{ReadOnlyDatabase, ReadTransaction, ReadableDatabase};
use scan::{Plan, Scan};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use stripefs_proto::types::{FsckOutcome, FsckProblem, FsckProblemKind, FsckReport};
use stripefs_proto::{ChunkId, FsError, NodeId, Version};

/// Repairs sent to the writer at once (they share its group commits).
const REPAIR_BATCH: usize = 256;

/// What fsck knows about the storage nodes (online only).
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Every node the master knows, and whether it is alive.
    pub nodes: Vec<(NodeId, bool)>,
    /// The replicas each node last reported holding; empty when no node
    /// has reported yet.
    pub inventories: HashMap<NodeId, Vec<(ChunkId, Version)>>,
    /// Age of the oldest inventory.
    pub oldest_inventory: Option<Duration>,
    /// Replicas found corrupt.
    pub corrupt: HashSet<(NodeId, ChunkId, Version)>,
}

impl NodeView {
    /// The master's current view of its nodes.
    pub fn of(shared: &MasterState) -> NodeView {
        let nodes = shared.registry.status().iter().map(|n| (n.id, shared.registry.is_alive(n.id))).collect();
        let (inventories, oldest_inventory) = {
            let inv = stripefs_daemon::lock(&shared.inventories);
            let oldest = inv.values().filter_map(|i| i.at).map(|at| at.elapsed()).max();
            (inv.iter().map(|(n, i)| (*n, i.replicas.clone())).collect(), oldest)
        };
        let corrupt = stripefs_daemon::lock(&shared.corrupt).clone();
        NodeView { nodes, inventories, oldest_inventory, corrupt }
    }
}

/// Why an offline check could not run.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// A master has the database open.
    #[error(
        "{} is open in a running stripefs-master; check the live filesystem instead \
         (stripefs fsck --master ADDR, or a path inside a mount)",
        path.display()
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The master did not stop cleanly: its journal holds changes the
    /// database file lacks, or the file needs redb's repair. Only the
    /// master applies them.
    #[error(
        "the master of {} did not stop cleanly ({why}); start stripefs-master on that directory once \
         (it recovers at start), then check again, or check the live filesystem",
        dir.display()
    )]
    NotStoppedCleanly {
        /// The master's data directory.
        dir: PathBuf,
        /// What shows it.
        why: String,
    },
    /// The file is not a master database.
    #[error("{} is not a stripefs master database", path.display())]
    NotOurs {
        /// The database file.
        path: PathBuf,
    },
    /// The database is of a newer format.
    #[error(
        "{} has database format version {version}, newer than this fsck supports ({FORMAT_VERSION})",
        path.display()
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its format version.
        version: u32,
    },
    /// redb could not open the file.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: redb::DatabaseError,
    },
    /// Reading failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: redb::Error,
    },
}

/// Something that owns the store; fsck runs the scan on a blocking thread
/// and needs to keep its owner alive there.
pub trait HoldsStore: Send + Sync + 'static {
    /// The store.
    fn store(&self) -> &Store;
}

impl HoldsStore for MasterState {
    fn store(&self) -> &Store {
        &self.store
    }
}

impl HoldsStore for Store {
    fn store(&self) -> &Store {
        self
    }
}

/// Checks the filesystem of a stopped master: the database file at `path`,
/// opened read-only. Without the nodes, data checks are limited to chunks
/// that have no replica recorded. `progress` is called now and then with
/// the records done and the records in all.
pub fn offline(path: &Path, progress: &dyn Fn(u64, u64)) -> Result<FsckReport, OfflineError> {
    let p = || path.to_path_buf();
    let dir = path.parent().unwrap_or(Path::new("."));
    let unclean = |why: String| OfflineError::NotStoppedCleanly { dir: dir.to_path_buf(), why };
    let db = ReadOnlyDatabase::open(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OfflineError::InUse { path: p() },
        redb::DatabaseError::RepairAborted => unclean("the database needs redb's crash repair".into()),
        e => OfflineError::Open { path: p(), source: e },
    })?;
    let txn = db.begin_read().map_err(|e| OfflineError::Read { path: p(), source: e.into() })?;
    check_identity(&txn, path)?;
    let read_err = |e: redb::Error| OfflineError::Read { path: p(), source: e };
    // Entries of the group's log the database has not applied: the master
    // was killed (or its group is in the middle of something).
    let (applied, _) = crate::raft::state_machine::applied_in(&txn).map_err(|e| read_err(redb::Error::Corrupted(e)))?;
    let raft_dir = dir.join(crate::store::RAFT_DIR);
    let last = crate::raft::log::last_index_in(&raft_dir)
        .map_err(|e| unclean(format!("its log in {} is unreadable: {e}", raft_dir.display())))?;
    let applied = applied.map(|a| a.index);
    if last > applied {
        let behind = last.unwrap_or(0) - applied.unwrap_or(0);
        return Err(unclean(format!("its log holds {behind} entries the database has not applied")));
    }
    let _ = read_err;
    let journal = crate::journal::pending(dir, 0).map_err(|e| unclean(format!("its journal is unreadable: {e}")))?;
    if !journal.is_empty() {
        return Err(unclean(format!("its journal (of an older stripefs-master) holds {} batches", journal.len())));
    }
    let scan = scan::scan(&txn, None, progress).map_err(|e| OfflineError::Read { path: p(), source: e })?;
    Ok(report(scan, false, false, &[]))
}

fn check_identity(txn: &ReadTransaction, path: &Path) -> Result<(), OfflineError> {
    match tables::check_format(txn).map_err(|e| OfflineError::Read { path: path.to_path_buf(), source: e.into() })? {
        tables::Format::NotOurs => Err(OfflineError::NotOurs { path: path.to_path_buf() }),
        tables::Format::TooNew(version) => Err(OfflineError::TooNew { path: path.to_path_buf(), version }),
        tables::Format::Ours { .. } => Ok(()),
    }
}

/// Checks the live filesystem of a running master and, with `repair`,
/// fixes what can be fixed.
pub async fn online(shared: Arc<MasterState>, repair: bool) -> Result<FsckReport, FsError> {
    let view = NodeView::of(&shared);
    run(shared, view, repair).await
}

/// The online check with a given view of the nodes.
pub async fn run<H: HoldsStore>(owner: Arc<H>, view: NodeView, repair: bool) -> Result<FsckReport, FsError> {
    let started = std::time::Instant::now();
    let (scan, view) = {
        let owner = owner.clone();
        tokio::task::spawn_blocking(move || -> Result<(Scan, NodeView), FsError> {
            // The transaction is dropped before any repair goes to the
            // writer: commits wait for readers of the store.
            let txn = owner.store().read()?;
            let scan = scan::scan(&txn, Some(&view), &|_, _| {}).map_err(internal)?;
            Ok((scan, view))
        })
        .await
        .map_err(internal)??
    };
    tracing::info!(
        "fsck scanned {} inodes and {} chunks in {:.1} s: {} problems",
        scan.counts.inodes,
        scan.counts.chunks,
        started.elapsed().as_secs_f64(),
        scan.problems.len()
    );
    let outcomes = if repair { apply_fixes(owner.store(), &scan).await } else { Vec::new() };
    let mut r = report(scan, true, repair, &outcomes);
    r.counts.nodes = view.nodes.len() as u64;
    r.counts.nodes_alive = view.nodes.iter().filter(|(_, a)| *a).count() as u64;
    r.counts.inventories = view.inventories.len() as u64;
    let mut dead: Vec<u64> = view.nodes.iter().filter(|(_, a)| !*a).map(|(n, _)| n.0).collect();
    dead.sort_unstable();
    if !dead.is_empty() {
        let list: Vec<String> = dead.iter().map(u64::to_string).collect();
        r.notes.push(format!(
            "node(s) {} are not alive (silent, or not heard from since the master started): their replicas count as \
             unavailable",
            list.join(", ")
        ));
    }
    if view.inventories.is_empty() {
        r.notes.push(
            "no storage node has reported its replica inventory yet: stale and unreferenced replicas were not checked"
                .into(),
        );
    } else {
        let mut silent: Vec<u64> =
            view.nodes.iter().filter(|(n, a)| *a && !view.inventories.contains_key(n)).map(|(n, _)| n.0).collect();
        silent.sort_unstable();
        if !silent.is_empty() {
            let list: Vec<String> = silent.iter().map(u64::to_string).collect();
            r.notes.push(format!(
                "node(s) {} have not reported a replica inventory yet: their stale and unreferenced replicas were not checked",
                list.join(", ")
            ));
        }
        if let Some(age) = view.oldest_inventory {
            r.notes.push(format!(
                "replica inventories are as the nodes last reported them (the oldest {} s ago): a replica \
                 deleted since may still be listed as stale or unreferenced",
                age.as_secs()
            ));
        }
    }
    if repair {
        let has = |f: fn(&FsckProblemKind) -> bool| r.problems.iter().any(|p| f(&p.kind));
        if has(|k| matches!(k, FsckProblemKind::UnderReplicated { .. })) {
            r.notes.push(
                "under-replicated chunks are copied by the master's automatic re-replication; they count as \
                 uncorrected until fully replicated (run fsck again later)"
                    .into(),
            );
        }
    }
    Ok(r)
}

/// Applies the planned repairs, phase by phase; returns each one's outcome.
async fn apply_fixes(store: &Store, scan: &Scan) -> Vec<FsckOutcome> {
    let mut outcomes = vec![FsckOutcome::Found; scan.fixes.len()];
    // Attaching adds names in /lost+found (made in the root if missing):
    // clients' leases on both go back first (removals need no recall: a
    // name a lease still lists is asked of the master).
    let _leases = match scan.fixes.iter().any(|f| matches!(f.op, ops::FsckOp::Attach { .. })) {
        true => {
            let mut dirs = vec![stripefs_proto::InodeId::ROOT];
            if let Ok((lf, _)) = store.lookup(stripefs_proto::InodeId::ROOT, ops::LOST_FOUND) {
                dirs.push(lf);
            }
            Some(store.recall_leases(dirs).await)
        }
        false => None,
    };
    let mut order: Vec<usize> = (0..scan.fixes.len()).collect();
    order.sort_by_key(|i| scan.fixes[*i].phase);
    let mut start = 0;
    while start < order.len() {
        let phase = scan.fixes[order[start]].phase;
        let end = order[start..].iter().position(|i| scan.fixes[*i].phase != phase).map_or(order.len(), |n| start + n);
        for batch in order[start..end].chunks(REPAIR_BATCH) {
            let results = futures::future::join_all(
                batch.iter().map(|i| store.execute(Command::Fsck(scan.fixes[*i].op.clone()))),
            )
            .await;
            for (i, r) in batch.iter().zip(results) {
                outcomes[*i] = match r {
                    Ok(_) => FsckOutcome::Repaired,
                    Err(FsError::Stale) => FsckOutcome::Changed,
                    Err(e) => {
                        tracing::warn!("fsck repair {:?} failed: {e}", scan.fixes[*i].op);
                        FsckOutcome::Failed(e)
                    }
                };
            }
        }
        start = end;
    }
    outcomes
}

/// The report of a scan, with the outcomes of its repairs if any ran.
fn report(scan: Scan, online: bool, repair: bool, outcomes: &[FsckOutcome]) -> FsckReport {
    let mut r = FsckReport {
        online,
        repair,
        counts: scan.counts,
        problems: Vec::new(),
        problem_count: scan.problems.len() as u64,
        corrected: 0,
        uncorrected: 0,
        notes: Vec::new(),
        garbage: Vec::new(),
        garbage_count: 0,
    };
    for (kind, plan) in scan.problems {
        if kind.is_garbage() {
            r.problem_count -= 1;
            r.garbage_count += 1;
            if r.garbage.len() < FsckReport::MAX_LISTED {
                r.garbage.push(kind);
            }
            continue;
        }
        let outcome = if !repair {
            FsckOutcome::Found
        } else {
            match plan {
                Plan::Fix(i) => outcomes.get(i).copied().unwrap_or(FsckOutcome::Found),
                Plan::Automatic => FsckOutcome::Queued,
                Plan::Keep => FsckOutcome::Kept,
                Plan::Cannot => FsckOutcome::NotRepairable,
            }
        };
        if outcome.is_corrected() {
            r.corrected += 1;
        } else {
            r.uncorrected += 1;
        }
        if r.problems.len() < FsckReport::MAX_LISTED {
            r.problems.push(FsckProblem { kind, outcome });
        }
    }
    if r.garbage_count > 0 {
        r.notes.push(format!(
            "{} replica(s) await garbage collection (nobody references them, or an upload never committed them): \
             not problems; the master deletes them once they are older than its grace period",
            r.garbage_count
        ));
    }
    if r.problem_count > r.problems.len() as u64 {
        r.notes.push(format!("only the first {} of {} problems are listed", r.problems.len(), r.problem_count));
    }
    if !online {
        r.notes.push(
            "offline check: without the master there is no node information, so data checks cover only chunks \
             with no replica recorded (liveness, under-replication, stale and corrupt replicas were not checked)"
                .into(),
        );
    }
    r
}

#[cfg(test)]
#[path = "fsck/tests.rs"]
mod tests;
