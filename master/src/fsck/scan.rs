//! The checks: one pass over the tables of one read transaction, then the
//! cross-checks between them. Produces the problems, in a stable order,
//! and the repair planned for each.

use super::NodeView;
use crate::namespace::{FsckOp, InodeField, MetaCounter};
use crate::records::{ChunkRecord, InodeRecord};
use crate::tables::{self, meta_keys};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use stripefs_proto::types::{FileKind, FsckCounts, FsckProblemKind as P, Timestamp};
use stripefs_proto::{ChunkId, InodeId, NodeId, Version};

/// What becomes of a problem under `--repair`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plan {
    /// The repair at this index of [`Scan::fixes`].
    Fix(usize),
    /// The master repairs it by itself (re-replication).
    Automatic,
    /// Left alone on purpose.
    Keep,
    /// Nothing can repair it.
    Cannot,
}

/// The order repairs are applied in. Fields are first set to what the
/// scan counted; the later phases then change link counts by deltas
/// (attaching a directory to `/lost+found` adds one to it), which stay
/// right on top of the corrected values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Inode fields and meta counters.
    Fields,
    /// Wrong directory entries.
    Entries,
    /// Orphan table rows.
    Orphans,
    /// Chunk records and replicas.
    Chunks,
    /// Names in `/lost+found`.
    Attach,
}

/// One planned repair.
#[derive(Debug)]
pub(super) struct Fix {
    /// When it runs.
    pub phase: Phase,
    /// The command.
    pub op: FsckOp,
}

/// What a scan found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Each problem with its plan.
    pub problems: Vec<(P, Plan)>,
    /// The repairs the plans refer to.
    pub fixes: Vec<Fix>,
    /// What was scanned.
    pub counts: FsckCounts,
}

impl Scan {
    fn found(&mut self, p: P, plan: Plan) {
        self.problems.push((p, plan));
    }

    fn fixable(&mut self, p: P, phase: Phase, op: FsckOp) {
        let i = self.fixes.len();
        self.fixes.push(Fix { phase, op });
        self.problems.push((p, Plan::Fix(i)));
    }
}

/// The inode fields the checks use.
#[derive(Clone, Copy, Debug)]
struct Facts {
    kind: FileKind,
    nlink: u32,
    parent: u64,
    size: u64,
    allocated: u64,
    replication: u8,
}

fn unreadable(table: &str, key: impl ToString) -> P {
    P::Unreadable { table: table.to_string(), key: key.to_string() }
}

/// Counts records for the progress callback, reporting every few thousand.
struct Ticker<'a> {
    done: u64,
    total: u64,
    progress: &'a dyn Fn(u64, u64),
}

impl Ticker<'_> {
    fn tick(&mut self) {
        self.done += 1;
        if self.done.is_multiple_of(4096) {
            (self.progress)(self.done, self.total);
        }
    }
}

/// Runs every check on the state `txn` sees. `nodes` is `None` offline.
pub(super) fn scan(
    txn: &ReadTransaction,
    nodes: Option<&NodeView>,
    progress: &dyn Fn(u64, u64),
) -> Result<Scan, redb::Error> {
    let mut s = Scan::default();
    let now = Timestamp::now();
    let meta = txn.open_table(tables::META)?;
    let inodes_t = txn.open_table(tables::INODES)?;
    let entries_t = txn.open_table(tables::DIR_ENTRIES)?;
    let chunks_t = txn.open_table(tables::CHUNKS)?;
    let orphans_t = txn.open_table(tables::ORPHANS)?;
    let total = inodes_t.len()? + entries_t.len()? + chunks_t.len()?;
    let mut ticker = Ticker { done: 0, total, progress };
    progress(0, total);

    let meta_bytes =
        |key: &str| -> Result<Option<Vec<u8>>, redb::Error> { Ok(meta.get(key)?.map(|v| v.value().to_vec())) };
    let chunk_size = meta_bytes(meta_keys::CHUNK_SIZE)?
        .and_then(|b| Some(u32::from_le_bytes(b.as_slice().try_into().ok()?)))
        .filter(|c| *c > 0);
    if chunk_size.is_none() {
        s.found(unreadable("meta.v1", meta_keys::CHUNK_SIZE), Plan::Cannot);
    }
    let mut meta_u64 = |key: &'static str| -> Result<Option<u64>, redb::Error> {
        let v = meta_bytes(key)?.and_then(|b| Some(u64::from_le_bytes(b.as_slice().try_into().ok()?)));
        if v.is_none() {
            s.found(unreadable("meta.v1", key), Plan::Cannot);
        }
        Ok(v)
    };
    let inode_count = meta_u64(meta_keys::INODE_COUNT)?;
    let next_inode = meta_u64(meta_keys::NEXT_INODE)?;

    // Inodes. An unreadable one is known to exist, of unknown kind: checks
    // that need its kind are skipped rather than guessed.
    let mut inodes: BTreeMap<u64, Option<Facts>> = BTreeMap::new();
    for item in inodes_t.iter()? {
        let (k, v) = item?;
        ticker.tick();
        let ino = k.value();
        let facts = match InodeRecord::decode(v.value()) {
            Ok(r) => {
                match r.kind {
                    FileKind::Dir => s.counts.directories += 1,
                    FileKind::File => {
                        s.counts.files += 1;
                        s.counts.file_bytes += r.size;
                    }
                    _ => {}
                }
                Some(Facts {
                    kind: r.kind,
                    nlink: r.nlink,
                    parent: r.parent,
                    size: r.size,
                    allocated: r.allocated,
                    replication: r.policy.replication,
                })
            }
            Err(_) => {
                s.found(unreadable("inodes.v1", ino), Plan::Cannot);
                None
            }
        };
        inodes.insert(ino, facts);
    }
    s.counts.inodes = inodes.len() as u64;
    match inodes.get(&InodeId::ROOT.0) {
        Some(Some(f)) if f.kind == FileKind::Dir => {}
        Some(None) => {}
        _ => s.found(unreadable("inodes.v1", "1 (the root directory is missing or not a directory)"), Plan::Cannot),
    }
    let mut orphans = BTreeSet::new();
    for item in orphans_t.iter()? {
        orphans.insert(item?.0.value());
    }

    // Directory entries: wrong ones, names per file, names per directory.
    let mut names: HashMap<u64, u32> = HashMap::new();
    let mut dir_names: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for item in entries_t.iter()? {
        let (k, v) = item?;
        ticker.tick();
        let (dir, name) = k.value();
        let child = v.value();
        s.counts.entries += 1;
        let remove = || FsckOp::RemoveEntry { dir: InodeId(dir), name: name.to_string(), child: InodeId(child) };
        let in_dir = match inodes.get(&dir) {
            None => false,
            // Unreadable: its entries cannot be judged, so they count.
            Some(None) => true,
            Some(Some(f)) => f.kind == FileKind::Dir,
        };
        if !in_dir {
            let p = P::EntryOutsideDir { dir: InodeId(dir), name: name.to_string(), child: InodeId(child) };
            s.fixable(p, Phase::Entries, remove());
            continue;
        }
        match inodes.get(&child) {
            None => {
                let p = P::DanglingEntry { dir: InodeId(dir), name: name.to_string(), child: InodeId(child) };
                s.fixable(p, Phase::Entries, remove());
            }
            Some(None) => {}
            Some(Some(f)) if f.kind == FileKind::Dir => {
                dir_names.entry(child).or_default().push((dir, name.to_string()))
            }
            Some(Some(_)) => *names.entry(child).or_default() += 1,
        }
    }

    // A directory has exactly one name (the root none), in the directory
    // its `parent` field gives.
    let mut up: HashMap<u64, (u64, String)> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    for (child, list) in dir_names {
        let Some(Some(f)) = inodes.get(&child).copied() else { continue };
        let keep = if child == InodeId::ROOT.0 {
            None
        } else {
            Some(list.iter().position(|(d, _)| *d == f.parent).unwrap_or(0))
        };
        for (i, (dir, name)) in list.into_iter().enumerate() {
            if Some(i) != keep {
                let op = FsckOp::RemoveEntry { dir: InodeId(dir), name: name.clone(), child: InodeId(child) };
                s.fixable(P::ExtraDirName { dir: InodeId(dir), name, child: InodeId(child) }, Phase::Entries, op);
                continue;
            }
            if f.parent != dir {
                let p = P::WrongParent { ino: InodeId(child), stored: InodeId(f.parent), dir: InodeId(dir) };
                let op =
                    FsckOp::SetInode { ino: InodeId(child), field: InodeField::Parent, expect: f.parent, value: dir };
                s.fixable(p, Phase::Fields, op);
            }
            *subdirs.entry(dir).or_default() += 1;
            up.insert(child, (dir, name));
        }
    }

    // Directories in a loop of names, cut off from the root: one of each
    // loop (the lowest numbered) moves to /lost+found.
    let mut walked: HashMap<u64, bool> = HashMap::new(); // false: on the current path; true: done
    let mut starts: Vec<u64> = up.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        let mut path = Vec::new();
        let mut cur = start;
        loop {
            match walked.get(&cur) {
                Some(true) => break,
                Some(false) => {
                    let pos = path.iter().position(|x| *x == cur).expect("a directory in progress is on the path");
                    let ino = *path[pos..].iter().min().expect("a loop is not empty");
                    let (dir, name) = up[&ino].clone();
                    let p = P::DirCycle { ino: InodeId(ino), dir: InodeId(dir), name: name.clone() };
                    let op = FsckOp::Attach { ino: InodeId(ino), detach: Some((InodeId(dir), name)), now };
                    s.fixable(p, Phase::Attach, op);
                    break;
                }
                None => {}
            }
            let Some((parent, _)) = up.get(&cur) else { break };
            walked.insert(cur, false);
            path.push(cur);
            cur = *parent;
        }
        for x in path {
            walked.insert(x, true);
        }
    }

    // Names and link counts of every inode.
    for (&ino, facts) in &inodes {
        let Some(f) = facts else { continue };
        let set_nlink = |counted: u32| FsckOp::SetInode {
            ino: InodeId(ino),
            field: InodeField::Nlink,
            expect: f.nlink as u64,
            value: counted as u64,
        };
        let wrong_nlink = |counted: u32| P::WrongNlink { ino: InodeId(ino), kind: f.kind, stored: f.nlink, counted };
        let attach = FsckOp::Attach { ino: InodeId(ino), detach: None, now };
        if f.kind == FileKind::Dir {
            if ino != InodeId::ROOT.0 && !up.contains_key(&ino) {
                s.fixable(P::Detached { ino: InodeId(ino), kind: f.kind }, Phase::Attach, attach);
            }
            let counted = 2 + subdirs.get(&ino).copied().unwrap_or(0);
            if f.nlink != counted {
                s.fixable(wrong_nlink(counted), Phase::Fields, set_nlink(counted));
            }
        } else {
            let counted = names.get(&ino).copied().unwrap_or(0);
            let orphan = orphans.contains(&ino);
            if counted == 0 && !orphan {
                s.fixable(P::Detached { ino: InodeId(ino), kind: f.kind }, Phase::Attach, attach);
            } else if f.nlink != counted {
                s.fixable(wrong_nlink(counted), Phase::Fields, set_nlink(counted));
            }
            if counted > 0 && orphan {
                s.fixable(
                    P::LinkedOrphan { ino: InodeId(ino) },
                    Phase::Orphans,
                    FsckOp::ForgetOrphan { ino: InodeId(ino) },
                );
            }
        }
    }
    for &ino in &orphans {
        if !inodes.contains_key(&ino) {
            s.fixable(P::StaleOrphan { ino: InodeId(ino) }, Phase::Orphans, FsckOp::ForgetOrphan { ino: InodeId(ino) });
        }
    }

    // Chunks: their file, their extent, their replicas.
    let alive: HashSet<NodeId> =
        nodes.map(|n| n.nodes.iter().filter(|(_, a)| *a).map(|(id, _)| *id).collect()).unwrap_or_default();
    // chunk id → (version, file, index) of the first record carrying it.
    let mut by_id: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    let mut allocated: HashMap<u64, u64> = HashMap::new();
    // file → (size, furthest end, problems)
    let mut past_eof: BTreeMap<u64, (u64, u64, Vec<P>)> = BTreeMap::new();
    let mut corrupt_listed: Vec<(NodeId, ChunkId, Version, u64, u64, usize)> = Vec::new();
    for item in chunks_t.iter()? {
        let (k, v) = item?;
        ticker.tick();
        let (ino, index) = k.value();
        let rec = match ChunkRecord::decode(v.value()) {
            Ok(r) => r,
            Err(_) => {
                s.found(unreadable("chunks.v1", format!("({ino}, {index})")), Plan::Cannot);
                continue;
            }
        };
        s.counts.chunks += 1;
        s.counts.replicas += rec.replicas.len() as u64;
        match by_id.entry(rec.chunk.0) {
            Entry::Occupied(o) => {
                let (_, first_ino, first_index) = *o.get();
                let p = P::SharedChunkId {
                    chunk: rec.chunk,
                    ino: InodeId(first_ino),
                    index: first_index,
                    other_ino: InodeId(ino),
                    other_index: index,
                };
                s.found(p, Plan::Cannot);
            }
            Entry::Vacant(e) => {
                e.insert((rec.version.0, ino, index));
            }
        }
        let want = match inodes.get(&ino) {
            Some(Some(f)) if f.kind == FileKind::File => {
                *allocated.entry(ino).or_default() += rec.length as u64;
                if let Some(cs) = chunk_size {
                    if rec.length > cs {
                        let p = P::ChunkTooLong {
                            ino: InodeId(ino),
                            index,
                            chunk: rec.chunk,
                            length: rec.length,
                            chunk_size: cs,
                        };
                        s.found(p, Plan::Cannot);
                    }
                    let end = index.saturating_mul(cs as u64).saturating_add(rec.length as u64);
                    if end > f.size {
                        let e = past_eof.entry(ino).or_insert((f.size, 0, Vec::new()));
                        e.1 = e.1.max(end);
                        e.2.push(P::ChunkPastEof { ino: InodeId(ino), index, chunk: rec.chunk, end, size: f.size });
                    }
                }
                f.replication
            }
            // A file whose record is unreadable: its replication is unknown.
            Some(None) => 1,
            _ => {
                let p = P::ChunkWithoutFile { ino: InodeId(ino), index, chunk: rec.chunk, version: rec.version };
                let op = FsckOp::DropChunk { ino: InodeId(ino), index, chunk: rec.chunk, version: rec.version };
                s.fixable(p, Phase::Chunks, op);
                continue;
            }
        };
        let Some(view) = nodes else {
            if rec.replicas.is_empty() {
                s.found(
                    P::MissingChunk { ino: InodeId(ino), index, chunk: rec.chunk, version: rec.version },
                    Plan::Cannot,
                );
            }
            continue;
        };
        let listed: BTreeSet<NodeId> = rec.replicas.iter().copied().collect();
        let is_corrupt = |n: &NodeId| view.corrupt.contains(&(*n, rec.chunk, rec.version));
        let good = listed.iter().filter(|n| alive.contains(n) && !is_corrupt(n)).count();
        if good == 0 {
            s.found(P::MissingChunk { ino: InodeId(ino), index, chunk: rec.chunk, version: rec.version }, Plan::Cannot);
        } else if good < want as usize && listed.iter().filter(|n| alive.contains(n)).count() < want as usize {
            // (A shortfall due only to corrupt replicas is listed as those.)
            let p = P::UnderReplicated {
                ino: InodeId(ino),
                index,
                chunk: rec.chunk,
                version: rec.version,
                live: good as u32,
                want,
            };
            s.found(p, Plan::Automatic);
        }
        for n in listed.iter().filter(|n| is_corrupt(n)) {
            corrupt_listed.push((*n, rec.chunk, rec.version, ino, index, listed.len()));
        }
    }
    progress(ticker.done, total);
    for (ino, (size, end, problems)) in past_eof {
        let i = s.fixes.len();
        let op = FsckOp::SetInode { ino: InodeId(ino), field: InodeField::Size, expect: size, value: end };
        s.fixes.push(Fix { phase: Phase::Fields, op });
        s.problems.extend(problems.into_iter().map(|p| (p, Plan::Fix(i))));
    }
    for (&ino, facts) in &inodes {
        match facts {
            Some(f) if f.kind == FileKind::File => {
                let counted = allocated.get(&ino).copied().unwrap_or(0);
                if counted != f.allocated {
                    let p = P::WrongAllocated { ino: InodeId(ino), stored: f.allocated, counted };
                    let op = FsckOp::SetInode {
                        ino: InodeId(ino),
                        field: InodeField::Allocated,
                        expect: f.allocated,
                        value: counted,
                    };
                    s.fixable(p, Phase::Fields, op);
                }
            }
            _ => {}
        }
    }

    // Counters.
    if let Some(stored) = inode_count {
        let counted = inodes.len() as u64;
        if stored != counted {
            let op = FsckOp::SetMeta { counter: MetaCounter::InodeCount, expect: stored, value: counted };
            s.fixable(P::WrongInodeCount { stored, counted }, Phase::Fields, op);
        }
    }
    if let Some(next) = next_inode {
        let max = inodes.keys().next_back().copied().unwrap_or(InodeId::ROOT.0);
        if next <= max {
            let op = FsckOp::SetMeta { counter: MetaCounter::NextInode, expect: next, value: max + 1 };
            s.fixable(P::NextInodeTooLow { next_inode: next, max_inode: max }, Phase::Fields, op);
        }
    }

    let Some(view) = nodes else { return Ok(s) };
    // Corrupt replicas still listed: dropped (re-replication replaces
    // them) unless they are the last copy.
    for (node, chunk, version, ino, index, copies) in corrupt_listed {
        let p = P::CorruptReplica { node, ino: InodeId(ino), index, chunk, version };
        if copies > 1 {
            let op = FsckOp::DropCorruptReplica { node, chunk, version, ino: InodeId(ino), index };
            s.fixable(p, Phase::Chunks, op);
        } else {
            s.found(p, Plan::Cannot);
        }
    }
    // Replicas the nodes hold that no chunk record makes current.
    if view.inventories.is_empty() {
        return Ok(s);
    }
    let deletions_t = txn.open_table(tables::DELETIONS)?;
    let mut pending: HashSet<(u64, u64, u64)> = HashSet::new();
    for item in deletions_t.iter()? {
        pending.insert(item?.0.value());
    }
    let mut reporting: Vec<&NodeId> = view.inventories.keys().collect();
    reporting.sort_unstable();
    for node in reporting {
        let mut held = view.inventories[node].clone();
        held.sort_unstable();
        held.dedup();
        for (chunk, version) in held {
            if pending.contains(&(node.0, chunk.0, version.0)) {
                continue;
            }
            match by_id.get(&chunk.0) {
                None => s.found(P::UnreferencedReplica { node: *node, chunk, version }, Plan::Keep),
                Some(&(current, ino, index)) if current != version.0 => {
                    let p = P::StaleReplica {
                        node: *node,
                        chunk,
                        version,
                        current: Version(current),
                        ino: InodeId(ino),
                        index,
                    };
                    if version.0 < current {
                        let op = FsckOp::DeleteStaleReplica { node: *node, chunk, version, ino: InodeId(ino), index };
                        s.fixable(p, Phase::Chunks, op);
                    } else {
                        // Newer than the current version: maybe an upload
                        // whose commit is on its way.
                        s.found(p, Plan::Keep);
                    }
                }
                Some(_) => {}
            }
        }
    }
    Ok(s)
}
