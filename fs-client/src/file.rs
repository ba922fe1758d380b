//! Per-file state of an open file: buffered writes by chunk, uploads in
//! flight, known chunk locations.

use crate::error::{ClientError, Result, TransportError};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stripefs_proto::types::ChunkLoc;
use stripefs_proto::InodeId;
use tokio::task::JoinHandle;

/// The memory a mount may hold of written data that is not stored on the
/// nodes yet, in every open file's buffers and in the uploads under way
/// (mount option `dirty_mb`). Writers that find it exceeded upload buffers
/// and wait for uploads to finish, as the kernel makes writers to a slow
/// disk wait (`balance_dirty_pages`).
#[derive(Debug, Default)]
pub struct DirtyBudget {
    limit: u64,
    used: AtomicU64,
    /// Of `used`, the bytes of uploads under way.
    uploading: AtomicU64,
    peak: AtomicU64,
    freed: tokio::sync::Notify,
}

impl DirtyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<DirtyBudget> {
        Arc::new(DirtyBudget { limit, ..Default::default() })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes held in open files' buffers (not uploading yet).
    pub fn buffered(&self) -> u64 {
        self.used().saturating_sub(self.uploading.load(Ordering::Relaxed))
    }

    /// Of the bytes held, those of uploads under way.
    pub fn uploading_bytes(&self) -> u64 {
        self.uploading.load(Ordering::Relaxed)
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether more than the budget is held.
    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    /// Waits until some bytes are given back, or `max`.
    pub async fn wait_freed(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.freed.notified()).await;
    }
}

/// A share of a [`DirtyBudget`], given back when dropped: whoever ends up
/// with a buffer (an open file, an upload task) gives its bytes back by
/// dropping it, on every path.
#[derive(Debug, Default)]
pub struct Held {
    budget: Option<Arc<DirtyBudget>>,
    bytes: u64,
    uploading: bool,
}

impl Held {
    fn set(&mut self, bytes: u64) {
        let Some(b) = &self.budget else { return };
        if bytes > self.bytes {
            let now = b.used.fetch_add(bytes - self.bytes, Ordering::Relaxed) + (bytes - self.bytes);
            b.peak.fetch_max(now, Ordering::Relaxed);
            if self.uploading {
                b.uploading.fetch_add(bytes - self.bytes, Ordering::Relaxed);
            }
        } else if bytes < self.bytes {
            if self.uploading {
                b.uploading.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
            }
            b.used.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
            b.freed.notify_waiters();
        }
        self.bytes = bytes;
    }

    /// Counts these bytes as an upload's from now on.
    pub fn uploading(&mut self) {
        if let (Some(b), false) = (&self.budget, self.uploading) {
            b.uploading.fetch_add(self.bytes, Ordering::Relaxed);
            self.uploading = true;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Buffered writes to one chunk: the bytes from the first to the last
/// written byte, and which ranges of them were written. An append far into
/// a chunk holds only what was appended, not the chunk up to it.
#[derive(Debug, Default)]
pub struct DirtyChunk {
    /// Chunk offset of `data[0]`: the lowest byte written.
    pub start: usize,
    /// Bytes `[start, start + data.len())` of the chunk; unwritten gaps are
    /// zeros.
    pub data: Vec<u8>,
    /// Written ranges (chunk offsets), sorted and merged.
    pub extents: Vec<(usize, usize)>,
    /// The memory of `data`, counted in the mount's budget.
    pub held: Held,
}

impl DirtyChunk {
    /// An empty buffer whose memory counts in `budget`.
    pub fn new(budget: &Arc<DirtyBudget>) -> DirtyChunk {
        DirtyChunk { held: Held { budget: Some(budget.clone()), ..Default::default() }, ..Default::default() }
    }

    /// Records a write of `buf` at chunk offset `offset`, in a chunk of at
    /// most `chunk_size` bytes.
    pub fn write(&mut self, offset: usize, buf: &[u8], chunk_size: usize) {
        let end = offset + buf.len();
        if self.extents.is_empty() {
            self.start = offset;
            self.data.clear();
        } else if offset < self.start {
            // Below the lowest byte so far: the buffer starts lower.
            let shift = self.start - offset;
            self.data.splice(0..0, std::iter::repeat_n(0u8, shift));
            self.start = offset;
        }
        let (lo, hi) = (offset - self.start, end - self.start);
        if self.data.capacity() < hi {
            // Grow by doubling, as Vec does, but never past the chunk's end:
            // a full 4 MiB chunk would otherwise sit in a 6 MiB buffer.
            let room = chunk_size.saturating_sub(self.start).max(hi);
            let want = hi.max(self.data.capacity() * 2).min(room);
            self.data.reserve_exact(want - self.data.len());
        }
        if self.data.len() < hi {
            self.data.resize(hi, 0);
        }
        self.data[lo..hi].copy_from_slice(buf);
        self.add_extent(offset, end);
        self.held.set(self.data.capacity() as u64);
    }

    /// Chunk offset just past the last byte written.
    pub fn end(&self) -> usize {
        self.start + self.data.len()
    }

    /// The chunk's bytes from its start to the last byte written, zeros
    /// before the first (for a chunk with no earlier contents).
    pub fn into_bytes(self) -> Vec<u8> {
        if self.start == 0 {
            return self.data;
        }
        let mut v = Vec::with_capacity(self.end());
        v.resize(self.start, 0);
        v.extend_from_slice(&self.data);
        v
    }

    fn add_extent(&mut self, start: usize, end: usize) {
        // Fast path: sequential writes extend the last extent.
        if let Some(last) = self.extents.last_mut() {
            if start >= last.0 && start <= last.1 {
                last.1 = last.1.max(end);
                return;
            }
        }
        self.extents.push((start, end));
        self.extents.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(self.extents.len());
        for &(s, e) in &self.extents {
            match merged.last_mut() {
                Some(m) if s <= m.1 => m.1 = m.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.extents = merged;
    }

    /// Whether `[start, end)` was written entirely.
    pub fn covers(&self, start: usize, end: usize) -> bool {
        start >= end || self.extents.iter().any(|&(s, e)| s <= start && e >= end)
    }

    /// Copies the written ranges onto `base` (the chunk's previous bytes).
    pub fn overlay(&self, base: &mut Vec<u8>) {
        if base.len() < self.end() {
            base.resize(self.end(), 0);
        }
        for &(s, e) in &self.extents {
            base[s..e].copy_from_slice(&self.data[s - self.start..e - self.start]);
        }
    }
}

/// What is known of the chunk an upload replaces.
#[derive(Debug, Clone)]
pub enum OldChunk {
    /// There is none: the new data need not be merged with anything.
    None,
    /// This one.
    Known(ChunkLoc),
    /// Unknown: ask the master.
    Ask,
}

/// State of a file open on this client (shared by its handles).
pub struct FileState {
    /// The file.
    pub ino: InodeId,
    /// Size as this client sees it, including buffered writes.
    pub size: u64,
    /// Chunks may exist on the master only below this size.
    pub size_seen: u64,
    /// Buffered writes by chunk index.
    pub dirty: BTreeMap<u64, DirtyChunk>,
    /// Bytes held in `dirty`.
    pub dirty_bytes: u64,
    /// Uploads in flight, oldest first.
    pub uploads: VecDeque<(u64, JoinHandle<Result<ChunkLoc>>)>,
    /// Known chunk locations (`None`: known hole).
    pub locs: HashMap<u64, Option<ChunkLoc>>,
    /// Chunks this client committed since the file was opened.
    pub committed: HashSet<u64>,
    /// Chunks uploaded without fsync since the last fsync, by index (a
    /// newer upload of a chunk replaces the entry of the older one).
    pub unsynced: HashMap<u64, ChunkLoc>,
    /// First error of a background upload, reported at the next call.
    pub error: Option<ClientError>,
    /// Where the last read ended (to detect sequential reads).
    pub last_read_end: u64,
}

impl FileState {
    /// State of a file just opened with `size` bytes.
    pub fn new(ino: InodeId, size: u64) -> FileState {
        FileState {
            ino,
            size,
            size_seen: size,
            dirty: BTreeMap::new(),
            dirty_bytes: 0,
            uploads: VecDeque::new(),
            locs: HashMap::new(),
            committed: HashSet::new(),
            unsynced: HashMap::new(),
            error: None,
            last_read_end: u64::MAX,
        }
    }

    /// Records the locations of chunks `[first, first + count)`: those in
    /// `found`, and holes for the rest.
    pub fn learn_locations(&mut self, first: u64, count: u64, found: Vec<ChunkLoc>) {
        for i in first..first.saturating_add(count) {
            self.locs.insert(i, None);
        }
        for l in found {
            self.locs.insert(l.index, Some(l));
        }
    }

    /// Whether writes are buffered or uploading.
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty() || !self.uploads.is_empty()
    }

    /// The size to show given the master's: while writes are pending, the
    /// larger of the two; otherwise the master's, which becomes ours.
    pub fn visible_size(&mut self, master_size: u64) -> u64 {
        if self.has_pending() {
            master_size.max(self.size)
        } else {
            self.size = master_size;
            self.size_seen = self.size_seen.max(master_size);
            master_size
        }
    }

    /// After a truncate to `size` (with nothing pending): chunks past it
    /// are gone, so there is nothing of them to sync.
    pub fn truncated(&mut self, size: u64, chunk_size: u64) {
        self.size_seen = self.size_seen.max(self.size).max(size);
        self.size = size;
        self.locs.clear();
        self.committed.clear();
        let first_gone = size.div_ceil(chunk_size);
        self.unsynced.retain(|&i, _| i < first_gone);
    }

    /// A fresh look at the file for a new open while it is already open
    /// here (close-to-open): the master's size, no cached locations.
    pub fn reopened(&mut self, master_size: u64) {
        if self.has_pending() {
            return;
        }
        self.size = master_size;
        self.size_seen = self.size_seen.max(master_size);
        self.locs.clear();
    }

    /// What an upload of chunk `index` replaces.
    pub fn old_chunk(&self, index: u64, chunk_size: u64) -> OldChunk {
        let known = self.locs.get(&index);
        if self.committed.contains(&index) {
            return match known {
                Some(Some(l)) => OldChunk::Known(l.clone()),
                _ => OldChunk::Ask,
            };
        }
        if index.saturating_mul(chunk_size) >= self.size_seen {
            return OldChunk::None;
        }
        match known {
            Some(Some(l)) => OldChunk::Known(l.clone()),
            Some(None) => OldChunk::None,
            None => OldChunk::Ask,
        }
    }

    /// Takes in the result of a finished upload.
    pub fn reap(&mut self, index: u64, r: std::result::Result<Result<ChunkLoc>, tokio::task::JoinError>) {
        match r {
            Ok(Ok(loc)) => {
                self.locs.insert(index, Some(loc.clone()));
                self.committed.insert(index);
                self.unsynced.insert(index, loc);
            }
            Ok(Err(e)) => {
                tracing::error!("upload of chunk {index} of inode {} failed: {e}", self.ino);
                self.error.get_or_insert(e);
            }
            Err(e) => {
                tracing::error!("upload task of chunk {index} of inode {} died: {e}", self.ino);
                self.error.get_or_insert(TransportError::task("upload", e).into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_merge_and_cover() {
        let mut d = DirtyChunk::default();
        d.write(10, &[1; 10], 64);
        d.write(30, &[2; 10], 64);
        assert!(!d.covers(10, 40));
        d.write(20, &[3; 10], 64);
        assert_eq!(d.extents, vec![(10, 40)]);
        assert!(d.covers(10, 40));
        assert!(!d.covers(0, 40));
        assert_eq!((d.start, d.end(), d.data.len()), (10, 40, 30));
    }

    #[test]
    fn overlay_keeps_unwritten_bytes() {
        let mut d = DirtyChunk::default();
        d.write(2, b"xy", 64);
        let mut base = b"abcdef".to_vec();
        d.overlay(&mut base);
        assert_eq!(base, b"abxyef");
        let mut short = b"a".to_vec();
        d.overlay(&mut short);
        assert_eq!(short, b"a\0xy");
    }

    #[test]
    fn appends_far_into_a_chunk_hold_only_what_was_written() {
        let mut d = DirtyChunk::default();
        d.write(3_000_000, b"tail", 4 << 20);
        assert_eq!(d.data, b"tail");
        d.write(2_999_998, b"pre", 4 << 20);
        assert_eq!((d.start, d.data.as_slice()), (2_999_998, &b"preail"[..]));
        d.write(3_000_010, b"z", 4 << 20);
        assert_eq!(d.end(), 3_000_011);
        assert_eq!(d.extents, vec![(2_999_998, 3_000_004), (3_000_010, 3_000_011)]);
        let mut base = vec![9u8; 3_000_005];
        d.overlay(&mut base);
        assert_eq!(&base[2_999_997..], b"\x09preail\x09\0\0\0\0\0z");
        let whole = d.into_bytes();
        assert_eq!(whole.len(), 3_000_011);
        assert!(whole[..2_999_998].iter().all(|b| *b == 0));
        assert_eq!(&whole[2_999_998..], b"preail\0\0\0\0\0\0z");
    }

    #[test]
    fn buffers_count_in_the_budget_until_dropped_and_never_outgrow_the_chunk() {
        let budget = DirtyBudget::new(1 << 20);
        let chunk = 3 * 1024 * 1024 + 17;
        let mut d = DirtyChunk::new(&budget);
        let mut e = DirtyChunk::new(&budget);
        // Sequential 24 KiB appends to the whole chunk, as Spark writes.
        let mut at = 0;
        while at < chunk {
            let n = (24 * 1024).min(chunk - at);
            d.write(at, &vec![7u8; n], chunk);
            at += n;
        }
        assert_eq!(d.data.len(), chunk);
        assert_eq!(d.data.capacity(), chunk, "grown past the chunk");
        e.write(0, &[1; 100], chunk);
        assert_eq!(budget.used(), (d.data.capacity() + e.data.capacity()) as u64);
        assert!(budget.over());
        // Moved to an upload task it still counts, as uploading; dropped,
        // it is given back.
        let mut moved = d;
        moved.held.uploading();
        assert_eq!(budget.used(), (moved.data.capacity() + e.data.capacity()) as u64);
        assert_eq!(budget.buffered(), e.data.capacity() as u64);
        drop(moved);
        assert_eq!(budget.used(), e.data.capacity() as u64);
        assert!(!budget.over());
        drop(e);
        assert_eq!(budget.used(), 0);
        assert!(budget.peak() >= chunk as u64);
    }

    #[test]
    fn old_chunk_is_only_asked_for_below_the_seen_size() {
        let st = FileState::new(InodeId(5), 10);
        assert!(matches!(st.old_chunk(0, 4), OldChunk::Ask));
        assert!(matches!(st.old_chunk(2, 4), OldChunk::Ask));
        assert!(matches!(st.old_chunk(3, 4), OldChunk::None));
    }
}
