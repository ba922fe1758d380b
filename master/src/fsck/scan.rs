//! The checks: one pass over the tables of one read transaction, then the
//! cross-checks between them. Produces the problems, in a stable order,
//! and the repair planned for each.
//!
//! [`scan`] runs one checker per phase, in order, over a shared
//! [`Checker`]: each reads what the phases before it gathered and adds
//! its own facts and problems. Meta counters, inodes, orphans, entries,
//! directory names, directory cycles, link counts, chunks, extents and
//! allocation, counters; then, online, corrupt replicas and the nodes'
//! inventories.

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
    /// A scratch file's home node.
    home: Option<NodeId>,
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
    let total = txn.open_table(tables::INODES)?.len()?
        + txn.open_table(tables::DIR_ENTRIES)?.len()?
        + txn.open_table(tables::CHUNKS)?.len()?;
    progress(0, total);
    let mut c = Checker {
        txn,
        nodes,
        ticker: Ticker { done: 0, total, progress },
        now: Timestamp::now(),
        s: Scan::default(),
        meta: Meta::default(),
        inodes: BTreeMap::new(),
        orphans: BTreeSet::new(),
        names: HashMap::new(),
        dir_names: BTreeMap::new(),
        up: HashMap::new(),
        subdirs: HashMap::new(),
        chunks: ChunkFacts::default(),
    };
    c.meta()?;
    c.inodes()?;
    c.orphans()?;
    c.entries()?;
    c.dir_names();
    c.dir_cycles();
    c.link_counts();
    c.chunks()?;
    progress(c.ticker.done, total);
    c.extents_and_allocation();
    c.counters();
    c.s.counts.scratch_files = c.inodes.values().flatten().filter(|f| f.home.is_some()).count() as u64;
    if let Some(view) = nodes {
        c.corrupt_replicas();
        c.scratch_files(view);
        c.inventories(view)?;
    }
    Ok(c.s)
}

/// The meta counters the checks use (None: unreadable).
#[derive(Debug, Default)]
struct Meta {
    chunk_size: Option<u32>,
    inode_count: Option<u64>,
    next_inode: Option<u64>,
}

/// What the chunk phase gathers for the later ones.
#[derive(Debug, Default)]
struct ChunkFacts {
    /// chunk id → (version, file, index) of the first record carrying it.
    by_id: HashMap<u64, (u64, u64, u64)>,
    /// file → bytes its chunk records cover.
    allocated: HashMap<u64, u64>,
    /// file → (size, furthest end, problems) for chunks past the end of file.
    past_eof: BTreeMap<u64, (u64, u64, Vec<P>)>,
    /// Corrupt replicas still listed: (node, chunk, version, file, index, replicas listed).
    corrupt_listed: Vec<(NodeId, ChunkId, Version, u64, u64, usize)>,
}

/// The shared state of one scan: the transaction, the facts gathered so
/// far, and the problems found.
struct Checker<'a> {
    txn: &'a ReadTransaction,
    nodes: Option<&'a NodeView>,
    ticker: Ticker<'a>,
    now: Timestamp,
    s: Scan,
    meta: Meta,
    /// Every inode; None when its record is unreadable (its kind unknown:
    /// checks that need it are skipped rather than guessed).
    inodes: BTreeMap<u64, Option<Facts>>,
    orphans: BTreeSet<u64>,
    /// Names per non-directory.
    names: HashMap<u64, u32>,
    /// Names per directory: (directory holding it, name).
    dir_names: BTreeMap<u64, Vec<(u64, String)>>,
    /// The one name kept of each directory: child → (parent, name).
    up: HashMap<u64, (u64, String)>,
    /// Subdirectories per directory.
    subdirs: HashMap<u64, u32>,
    chunks: ChunkFacts,
}

impl Checker<'_> {
    /// Meta counters: the chunk size, the inode count, the next inode.
    fn meta(&mut self) -> Result<(), redb::Error> {
        let meta = self.txn.open_table(tables::META)?;
        let bytes =
            |key: &str| -> Result<Option<Vec<u8>>, redb::Error> { Ok(meta.get(key)?.map(|v| v.value().to_vec())) };
        self.meta.chunk_size = bytes(meta_keys::CHUNK_SIZE)?
            .and_then(|b| Some(u32::from_le_bytes(b.as_slice().try_into().ok()?)))
            .filter(|c| *c > 0);
        if self.meta.chunk_size.is_none() {
            self.s.found(unreadable("meta.v1", meta_keys::CHUNK_SIZE), Plan::Cannot);
        }
        let mut u64_of = |key: &'static str| -> Result<Option<u64>, redb::Error> {
            let v = bytes(key)?.and_then(|b| Some(u64::from_le_bytes(b.as_slice().try_into().ok()?)));
            if v.is_none() {
                self.s.found(unreadable("meta.v1", key), Plan::Cannot);
            }
            Ok(v)
        };
        let inode_count = u64_of(meta_keys::INODE_COUNT)?;
        let next_inode = u64_of(meta_keys::NEXT_INODE)?;
        self.meta.inode_count = inode_count;
        self.meta.next_inode = next_inode;
        Ok(())
    }

    /// Inodes: each one's facts, the counts, and a root directory.
    fn inodes(&mut self) -> Result<(), redb::Error> {
        let inodes_t = self.txn.open_table(tables::INODES)?;
        for item in inodes_t.iter()? {
            let (k, v) = item?;
            self.ticker.tick();
            let ino = k.value();
            let facts = match InodeRecord::decode(v.value()) {
                Ok(r) => {
                    match r.kind {
                        FileKind::Dir => self.s.counts.directories += 1,
                        FileKind::File => {
                            self.s.counts.files += 1;
                            self.s.counts.file_bytes += r.size;
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
                        home: r.home,
                    })
                }
                Err(_) => {
                    self.s.found(unreadable("inodes.v1", ino), Plan::Cannot);
                    None
                }
            };
            self.inodes.insert(ino, facts);
        }
        self.s.counts.inodes = self.inodes.len() as u64;
        match self.inodes.get(&InodeId::ROOT.0) {
            Some(Some(f)) if f.kind == FileKind::Dir => {}
            Some(None) => {}
            _ => self
                .s
                .found(unreadable("inodes.v1", "1 (the root directory is missing or not a directory)"), Plan::Cannot),
        }
        Ok(())
    }

    /// The orphan table (unlinked files still open).
    fn orphans(&mut self) -> Result<(), redb::Error> {
        for item in self.txn.open_table(tables::ORPHANS)?.iter()? {
            self.orphans.insert(item?.0.value());
        }
        Ok(())
    }

    /// Directory entries: wrong ones, names per file, names per directory.
    fn entries(&mut self) -> Result<(), redb::Error> {
        let entries_t = self.txn.open_table(tables::DIR_ENTRIES)?;
        for item in entries_t.iter()? {
            let (k, v) = item?;
            self.ticker.tick();
            let (dir, name) = k.value();
            let child = v.value();
            self.s.counts.entries += 1;
            let remove = || FsckOp::RemoveEntry { dir: InodeId(dir), name: name.to_string(), child: InodeId(child) };
            let in_dir = match self.inodes.get(&dir) {
                None => false,
                // Unreadable: its entries cannot be judged, so they count.
                Some(None) => true,
                Some(Some(f)) => f.kind == FileKind::Dir,
            };
            if !in_dir {
                let p = P::EntryOutsideDir { dir: InodeId(dir), name: name.to_string(), child: InodeId(child) };
                self.s.fixable(p, Phase::Entries, remove());
                continue;
            }
            match self.inodes.get(&child) {
                None => {
                    let p = P::DanglingEntry { dir: InodeId(dir), name: name.to_string(), child: InodeId(child) };
                    self.s.fixable(p, Phase::Entries, remove());
                }
                Some(None) => {}
                Some(Some(f)) if f.kind == FileKind::Dir => {
                    self.dir_names.entry(child).or_default().push((dir, name.to_string()))
                }
                Some(Some(_)) => *self.names.entry(child).or_default() += 1,
            }
        }
        Ok(())
    }

    /// A directory has exactly one name (the root none), in the directory
    /// its `parent` field gives.
    fn dir_names(&mut self) {
        for (child, list) in std::mem::take(&mut self.dir_names) {
            let Some(Some(f)) = self.inodes.get(&child).copied() else { continue };
            let keep = if child == InodeId::ROOT.0 {
                None
            } else {
                Some(list.iter().position(|(d, _)| *d == f.parent).unwrap_or(0))
            };
            for (i, (dir, name)) in list.into_iter().enumerate() {
                if Some(i) != keep {
                    let op = FsckOp::RemoveEntry { dir: InodeId(dir), name: name.clone(), child: InodeId(child) };
                    let p = P::ExtraDirName { dir: InodeId(dir), name, child: InodeId(child) };
                    self.s.fixable(p, Phase::Entries, op);
                    continue;
                }
                if f.parent != dir {
                    let p = P::WrongParent { ino: InodeId(child), stored: InodeId(f.parent), dir: InodeId(dir) };
                    let op = FsckOp::SetInode {
                        ino: InodeId(child),
                        field: InodeField::Parent,
                        expect: f.parent,
                        value: dir,
                    };
                    self.s.fixable(p, Phase::Fields, op);
                }
                *self.subdirs.entry(dir).or_default() += 1;
                self.up.insert(child, (dir, name));
            }
        }
    }

    /// Directories in a loop of names, cut off from the root: one of each
    /// loop (the lowest numbered) moves to /lost+found.
    fn dir_cycles(&mut self) {
        let mut walked: HashMap<u64, bool> = HashMap::new(); // false: on the current path; true: done
        let mut starts: Vec<u64> = self.up.keys().copied().collect();
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
                        let (dir, name) = self.up[&ino].clone();
                        let p = P::DirCycle { ino: InodeId(ino), dir: InodeId(dir), name: name.clone() };
                        let op =
                            FsckOp::Attach { ino: InodeId(ino), detach: Some((InodeId(dir), name)), now: self.now };
                        self.s.fixable(p, Phase::Attach, op);
                        break;
                    }
                    None => {}
                }
                let Some((parent, _)) = self.up.get(&cur) else { break };
                walked.insert(cur, false);
                path.push(cur);
                cur = *parent;
            }
            for x in path {
                walked.insert(x, true);
            }
        }
    }

    /// Names and link counts of every inode; orphans that are not.
    fn link_counts(&mut self) {
        for (&ino, facts) in &self.inodes {
            let Some(f) = facts else { continue };
            let set_nlink = |counted: u32| FsckOp::SetInode {
                ino: InodeId(ino),
                field: InodeField::Nlink,
                expect: f.nlink as u64,
                value: counted as u64,
            };
            let wrong_nlink =
                |counted: u32| P::WrongNlink { ino: InodeId(ino), kind: f.kind, stored: f.nlink, counted };
            let attach = FsckOp::Attach { ino: InodeId(ino), detach: None, now: self.now };
            if f.kind == FileKind::Dir {
                if ino != InodeId::ROOT.0 && !self.up.contains_key(&ino) {
                    self.s.fixable(P::Detached { ino: InodeId(ino), kind: f.kind }, Phase::Attach, attach);
                }
                let counted = 2 + self.subdirs.get(&ino).copied().unwrap_or(0);
                if f.nlink != counted {
                    self.s.fixable(wrong_nlink(counted), Phase::Fields, set_nlink(counted));
                }
            } else {
                let counted = self.names.get(&ino).copied().unwrap_or(0);
                let orphan = self.orphans.contains(&ino);
                if counted == 0 && !orphan {
                    self.s.fixable(P::Detached { ino: InodeId(ino), kind: f.kind }, Phase::Attach, attach);
                } else if f.nlink != counted {
                    self.s.fixable(wrong_nlink(counted), Phase::Fields, set_nlink(counted));
                }
                if counted > 0 && orphan {
                    self.s.fixable(
                        P::LinkedOrphan { ino: InodeId(ino) },
                        Phase::Orphans,
                        FsckOp::ForgetOrphan { ino: InodeId(ino) },
                    );
                }
            }
        }
        for &ino in &self.orphans {
            if !self.inodes.contains_key(&ino) {
                let op = FsckOp::ForgetOrphan { ino: InodeId(ino) };
                self.s.fixable(P::StaleOrphan { ino: InodeId(ino) }, Phase::Orphans, op);
            }
        }
    }

    /// Chunks: their file, their extent, their replicas.
    fn chunks(&mut self) -> Result<(), redb::Error> {
        let alive: HashSet<NodeId> =
            self.nodes.map(|n| n.nodes.iter().filter(|(_, a)| *a).map(|(id, _)| *id).collect()).unwrap_or_default();
        let chunks_t = self.txn.open_table(tables::CHUNKS)?;
        for item in chunks_t.iter()? {
            let (k, v) = item?;
            self.ticker.tick();
            let (ino, index) = k.value();
            let rec = match ChunkRecord::decode(v.value()) {
                Ok(r) => r,
                Err(_) => {
                    self.s.found(unreadable("chunks.v1", format!("({ino}, {index})")), Plan::Cannot);
                    continue;
                }
            };
            self.s.counts.chunks += 1;
            self.s.counts.replicas += rec.replicas.len() as u64;
            match self.chunks.by_id.entry(rec.chunk.0) {
                Entry::Occupied(o) => {
                    let (_, first_ino, first_index) = *o.get();
                    let p = P::SharedChunkId {
                        chunk: rec.chunk,
                        ino: InodeId(first_ino),
                        index: first_index,
                        other_ino: InodeId(ino),
                        other_index: index,
                    };
                    self.s.found(p, Plan::Cannot);
                }
                Entry::Vacant(e) => {
                    e.insert((rec.version.0, ino, index));
                }
            }
            let Some(want) = self.chunk_file(ino, index, &rec) else { continue };
            let Some(view) = self.nodes else {
                if rec.replicas.is_empty() {
                    let p = P::MissingChunk { ino: InodeId(ino), index, chunk: rec.chunk, version: rec.version };
                    self.s.found(p, Plan::Cannot);
                }
                continue;
            };
            let listed: BTreeSet<NodeId> = rec.replicas.iter().copied().collect();
            let is_corrupt = |n: &NodeId| view.corrupt.contains(&(*n, rec.chunk, rec.version));
            let good = listed.iter().filter(|n| alive.contains(n) && !is_corrupt(n)).count();
            if good == 0 {
                let p = P::MissingChunk { ino: InodeId(ino), index, chunk: rec.chunk, version: rec.version };
                self.s.found(p, Plan::Cannot);
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
                self.s.found(p, Plan::Automatic);
            }
            for n in listed.iter().filter(|n| is_corrupt(n)) {
                self.chunks.corrupt_listed.push((*n, rec.chunk, rec.version, ino, index, listed.len()));
            }
        }
        Ok(())
    }

    /// The file of chunk record (`ino`, `index`): its extent against the
    /// file's size, and the replication it wants. None when the record has
    /// no file (a problem, with its repair).
    fn chunk_file(&mut self, ino: u64, index: u64, rec: &ChunkRecord) -> Option<u8> {
        match self.inodes.get(&ino) {
            Some(Some(f)) if f.kind == FileKind::File => {
                *self.chunks.allocated.entry(ino).or_default() += rec.length as u64;
                if let Some(cs) = self.meta.chunk_size {
                    if rec.length > cs {
                        let p = P::ChunkTooLong {
                            ino: InodeId(ino),
                            index,
                            chunk: rec.chunk,
                            length: rec.length,
                            chunk_size: cs,
                        };
                        self.s.found(p, Plan::Cannot);
                    }
                    let end = index.saturating_mul(cs as u64).saturating_add(rec.length as u64);
                    if end > f.size {
                        let e = self.chunks.past_eof.entry(ino).or_insert((f.size, 0, Vec::new()));
                        e.1 = e.1.max(end);
                        e.2.push(P::ChunkPastEof { ino: InodeId(ino), index, chunk: rec.chunk, end, size: f.size });
                    }
                }
                Some(f.replication)
            }
            // A file whose record is unreadable: its replication is unknown.
            Some(None) => Some(1),
            _ => {
                let p = P::ChunkWithoutFile { ino: InodeId(ino), index, chunk: rec.chunk, version: rec.version };
                let op = FsckOp::DropChunk { ino: InodeId(ino), index, chunk: rec.chunk, version: rec.version };
                self.s.fixable(p, Phase::Chunks, op);
                None
            }
        }
    }

    /// Sizes that chunks reach past (one repair per file, for all its
    /// chunks), and the bytes each file's chunks cover.
    fn extents_and_allocation(&mut self) {
        for (ino, (size, end, problems)) in std::mem::take(&mut self.chunks.past_eof) {
            let i = self.s.fixes.len();
            let op = FsckOp::SetInode { ino: InodeId(ino), field: InodeField::Size, expect: size, value: end };
            self.s.fixes.push(Fix { phase: Phase::Fields, op });
            self.s.problems.extend(problems.into_iter().map(|p| (p, Plan::Fix(i))));
        }
        for (&ino, facts) in &self.inodes {
            let Some(f) = facts.filter(|f| f.kind == FileKind::File) else { continue };
            let counted = self.chunks.allocated.get(&ino).copied().unwrap_or(0);
            if counted != f.allocated {
                let p = P::WrongAllocated { ino: InodeId(ino), stored: f.allocated, counted };
                let op = FsckOp::SetInode {
                    ino: InodeId(ino),
                    field: InodeField::Allocated,
                    expect: f.allocated,
                    value: counted,
                };
                self.s.fixable(p, Phase::Fields, op);
            }
        }
    }

    /// The inode count and the next inode number.
    fn counters(&mut self) {
        if let Some(stored) = self.meta.inode_count {
            let counted = self.inodes.len() as u64;
            if stored != counted {
                let op = FsckOp::SetMeta { counter: MetaCounter::InodeCount, expect: stored, value: counted };
                self.s.fixable(P::WrongInodeCount { stored, counted }, Phase::Fields, op);
            }
        }
        if let Some(next) = self.meta.next_inode {
            let max = self.inodes.keys().next_back().copied().unwrap_or(InodeId::ROOT.0);
            if next <= max {
                let op = FsckOp::SetMeta { counter: MetaCounter::NextInode, expect: next, value: max + 1 };
                self.s.fixable(P::NextInodeTooLow { next_inode: next, max_inode: max }, Phase::Fields, op);
            }
        }
    }

    /// Corrupt replicas still listed: dropped (re-replication replaces
    /// them) unless they are the last copy.
    fn corrupt_replicas(&mut self) {
        for (node, chunk, version, ino, index, copies) in std::mem::take(&mut self.chunks.corrupt_listed) {
            let p = P::CorruptReplica { node, ino: InodeId(ino), index, chunk, version };
            if copies > 1 {
                let op = FsckOp::DropCorruptReplica { node, chunk, version, ino: InodeId(ino), index };
                self.s.fixable(p, Phase::Chunks, op);
            } else {
                self.s.found(p, Plan::Cannot);
            }
        }
    }

    /// Scratch files whose home node is down (their one copy is out of
    /// reach), and those found corrupt.
    fn scratch_files(&mut self, view: &NodeView) {
        let alive: HashSet<NodeId> = view.nodes.iter().filter(|(_, up)| *up).map(|(n, _)| *n).collect();
        let lost: Vec<(u64, NodeId)> = self
            .inodes
            .iter()
            .filter_map(|(ino, f)| Some((*ino, f.as_ref()?.home?)))
            .filter(|(_, home)| !alive.contains(home))
            .collect();
        for (ino, node) in lost {
            self.s.found(P::LostScratchFile { ino: InodeId(ino), node }, Plan::Cannot);
        }
        let corrupt: Vec<(u64, NodeId)> = self
            .inodes
            .iter()
            .filter_map(|(ino, f)| Some((*ino, f.as_ref()?.home?)))
            .filter(|(ino, home)| view.corrupt.contains(&(*home, ChunkId(*ino), Version::SCRATCH_FILE)))
            .collect();
        for (ino, node) in corrupt {
            self.s.found(P::CorruptScratchFile { ino: InodeId(ino), node }, Plan::Cannot);
        }
    }

    /// Replicas the nodes hold that no chunk record makes current.
    fn inventories(&mut self, view: &NodeView) -> Result<(), redb::Error> {
        if view.inventories.is_empty() {
            return Ok(());
        }
        let mut pending: HashSet<(u64, u64, u64)> = HashSet::new();
        for item in self.txn.open_table(tables::DELETIONS)?.iter()? {
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
                if version == Version::SCRATCH_FILE {
                    // A scratch file: garbage unless its inode has this home.
                    let home = self.inodes.get(&chunk.0).and_then(|f| f.as_ref()?.home);
                    if home != Some(*node) {
                        self.s.found(P::UnreferencedReplica { node: *node, chunk, version }, Plan::Keep);
                    }
                    continue;
                }
                match self.chunks.by_id.get(&chunk.0) {
                    None => self.s.found(P::UnreferencedReplica { node: *node, chunk, version }, Plan::Keep),
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
                            let op =
                                FsckOp::DeleteStaleReplica { node: *node, chunk, version, ino: InodeId(ino), index };
                            self.s.fixable(p, Phase::Chunks, op);
                        } else {
                            // Newer than the current version: maybe an upload
                            // whose commit is on its way.
                            self.s.found(p, Plan::Keep);
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }
}
