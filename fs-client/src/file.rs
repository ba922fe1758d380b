//! Per-file state of an open file: buffered writes by chunk, uploads in
//! flight, known chunk locations.

use crate::error::{ClientError, Result};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use stripefs_proto::types::ChunkLoc;
use stripefs_proto::InodeId;
use tokio::task::JoinHandle;

/// Buffered writes to one chunk: the bytes from the chunk start to the last
/// written byte, and which ranges of them were written.
#[derive(Debug, Default)]
pub struct DirtyChunk {
    /// Bytes `[0, data.len())` of the chunk; unwritten gaps are zeros.
    pub data: Vec<u8>,
    /// Written ranges, sorted and merged.
    pub extents: Vec<(usize, usize)>,
}

impl DirtyChunk {
    /// Records a write of `buf` at `offset` within the chunk.
    pub fn write(&mut self, offset: usize, buf: &[u8]) {
        let end = offset + buf.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(buf);
        self.add_extent(offset, end);
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
        if base.len() < self.data.len() {
            base.resize(self.data.len(), 0);
        }
        for &(s, e) in &self.extents {
            base[s..e].copy_from_slice(&self.data[s..e]);
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
                self.error.get_or_insert(ClientError::Transport(format!("upload task: {e}")));
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
        d.write(10, &[1; 10]);
        d.write(30, &[2; 10]);
        assert!(!d.covers(10, 40));
        d.write(20, &[3; 10]);
        assert_eq!(d.extents, vec![(10, 40)]);
        assert!(d.covers(10, 40));
        assert!(!d.covers(0, 40));
        assert_eq!(d.data.len(), 40);
    }

    #[test]
    fn overlay_keeps_unwritten_bytes() {
        let mut d = DirtyChunk::default();
        d.write(2, b"xy");
        let mut base = b"abcdef".to_vec();
        d.overlay(&mut base);
        assert_eq!(base, b"abxyef");
        let mut short = b"a".to_vec();
        d.overlay(&mut short);
        assert_eq!(short, b"a\0xy");
    }

    #[test]
    fn old_chunk_is_only_asked_for_below_the_seen_size() {
        let st = FileState::new(InodeId(5), 10);
        assert!(matches!(st.old_chunk(0, 4), OldChunk::Ask));
        assert!(matches!(st.old_chunk(2, 4), OldChunk::Ask));
        assert!(matches!(st.old_chunk(3, 4), OldChunk::None));
    }
}
