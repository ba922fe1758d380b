//! The on-disk store of chunk replicas.
//!
//! Each replica (a chunk id at one version) is one file,
//! `DIR/chunks/<low byte of the chunk id, 2 hex digits>/<chunk:016x>-<version:016x>.chunk`,
//! laid out as follows (all integers little-endian):
//!
//! ```text
//! header  magic "SFCHUNK1" | format u32 (=1) | chunk u64 | version u64
//!         | length u32 (valid bytes) | block count u32 | crc32 of the preceding 36 bytes
//! table   count × (raw_len u32 | codec u8 | stored_len u32 | crc u32 of the stored bytes)
//! data    the blocks' stored bytes, back to back
//! ```
//!
//! Replicas are written to a temporary file and renamed into place, so a
//! reader sees a whole replica or none. All methods are blocking; async
//! code calls them through `spawn_blocking`.

use crate::fsutil::{fsync_dir, start_writeback, temp_path_for, TempGuard, TMP_SUFFIX};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use stripefs_proto::block::{self, Codec, BLOCK_SIZE};
use stripefs_proto::types::EncodedBlock;
use stripefs_proto::{ChunkId, FsError, Version};

/// Largest chunk a node stores, in bytes.
pub const MAX_CHUNK_BYTES: u32 = 64 * 1024 * 1024;

/// Largest number of blocks in a chunk (and in one read).
pub const MAX_BLOCKS_PER_CHUNK: usize = MAX_CHUNK_BYTES as usize / BLOCK_SIZE;

const MAGIC: &[u8; 8] = b"SFCHUNK1";
const FORMAT_VERSION: u32 = 1;
/// Header bytes covered by the header crc.
const HEADER_BODY_BYTES: usize = 8 + 4 + 8 + 8 + 4 + 4;
/// Header bytes including the crc.
const HEADER_BYTES: usize = HEADER_BODY_BYTES + 4;
/// Bytes of one block table entry.
const ENTRY_BYTES: usize = 4 + 1 + 4 + 4;
/// First bytes of every zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The replica does not exist.
    #[error("replica {chunk}/{version} not found")]
    NotFound {
        /// Chunk id.
        chunk: ChunkId,
        /// Version.
        version: Version,
    },
    /// Stored or received data failed its checks.
    #[error("replica {chunk}/{version} is corrupt: {detail}")]
    Corrupt {
        /// Chunk id.
        chunk: ChunkId,
        /// Version.
        version: Version,
        /// What was wrong.
        detail: String,
    },
    /// The request is malformed (block sizes, lengths, counts).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The disk has no room left above the node's reserve (or none at all).
    #[error("no space left above the reserve")]
    NoSpace,
    /// The disk failed us.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: io::Error,
    },
}

impl StoreError {
    /// The wire error to reply with; logs the detail that stays here.
    pub fn to_wire(&self) -> FsError {
        match self {
            StoreError::NotFound { .. } => {
                tracing::debug!("{self}");
                FsError::NotFound
            }
            StoreError::Corrupt { .. } => {
                tracing::warn!("{self}");
                FsError::Corrupt
            }
            StoreError::Invalid(_) => {
                tracing::warn!("{self}");
                FsError::InvalidArgument
            }
            StoreError::NoSpace => FsError::NoSpace,
            StoreError::Io { .. } => {
                tracing::error!("{self}");
                FsError::Internal
            }
        }
    }
}

/// An I/O error with what was being done; a full disk (or quota) is
/// [`StoreError::NoSpace`], so the writer can go elsewhere or get ENOSPC.
fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            tracing::warn!("{context}: {source}");
            StoreError::NoSpace
        }
        _ => StoreError::Io { context, source },
    }
}

/// Checks the shape of a chunk's blocks: their decoded sizes add up to
/// `length`, every block but the last is exactly [`BLOCK_SIZE`], none is
/// empty, and the chunk fits [`MAX_CHUNK_BYTES`].
pub fn check_layout(length: u32, raw_lens: impl ExactSizeIterator<Item = u32>) -> Result<(), String> {
    if length > MAX_CHUNK_BYTES {
        return Err(format!("chunk length {length} exceeds {MAX_CHUNK_BYTES}"));
    }
    let count = raw_lens.len();
    if count > MAX_BLOCKS_PER_CHUNK {
        return Err(format!("{count} blocks exceed {MAX_BLOCKS_PER_CHUNK}"));
    }
    let mut total = 0u64;
    for (i, raw_len) in raw_lens.enumerate() {
        if raw_len == 0 || raw_len as usize > BLOCK_SIZE {
            return Err(format!("block {i} has {raw_len} bytes"));
        }
        if i + 1 < count && raw_len as usize != BLOCK_SIZE {
            return Err(format!("block {i} of {count} has {raw_len} bytes, not {BLOCK_SIZE}"));
        }
        total += u64::from(raw_len);
    }
    if total != u64::from(length) {
        return Err(format!("blocks hold {total} bytes but the chunk length is {length}"));
    }
    Ok(())
}

/// One block table entry.
#[derive(Clone, Copy, Debug)]
struct Entry {
    raw_len: u32,
    codec: u8,
    stored_len: u32,
    crc: u32,
}

/// A replica's validated header and block table.
struct Layout {
    entries: Vec<Entry>,
    /// File offset of each block's stored bytes.
    offsets: Vec<u64>,
}

fn encode_header(chunk: ChunkId, version: Version, length: u32, count: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_BYTES);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&chunk.0.to_le_bytes());
    h.extend_from_slice(&version.0.to_le_bytes());
    h.extend_from_slice(&length.to_le_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Counters kept in step with the files on disk.
#[derive(Debug, Default)]
struct Counters {
    used_bytes: u64,
    chunk_count: u64,
}

/// The replicas of one storage node.
#[derive(Debug)]
pub struct ChunkStore {
    chunks_dir: PathBuf,
    /// Held while a replica file appears or disappears, so the counters
    /// follow the files exactly.
    counters: Mutex<Counters>,
}

impl ChunkStore {
    /// Opens (creating if needed) the store under `dir`, removes temporary
    /// files left by a crash and counts the replicas present.
    pub fn open(dir: &Path) -> Result<ChunkStore, StoreError> {
        let chunks_dir = dir.join("chunks");
        fs::create_dir_all(&chunks_dir).map_err(io_err(format!("cannot create {}", chunks_dir.display())))?;
        for i in 0..=255u8 {
            let sub = chunks_dir.join(format!("{i:02x}"));
            match fs::create_dir(&sub) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(format!("cannot create {}", sub.display()))(e)),
            }
        }
        // Fail now, with a clear message, if the directory is not writable.
        let probe = temp_path_for(&chunks_dir.join("probe"));
        File::create(&probe).map_err(io_err(format!("cannot write in {}", chunks_dir.display())))?;
        fs::remove_file(&probe).map_err(io_err(format!("cannot remove {}", probe.display())))?;
        fsync_dir(&chunks_dir).map_err(io_err(format!("cannot fsync {}", chunks_dir.display())))?;
        fsync_dir(dir).map_err(io_err(format!("cannot fsync {}", dir.display())))?;

        let store = ChunkStore { chunks_dir, counters: Mutex::new(Counters::default()) };
        let replicas = store.scan(true)?;
        let mut counters = store.lock();
        counters.chunk_count = replicas.len() as u64;
        counters.used_bytes = replicas.iter().map(|r| r.2).sum();
        drop(counters);
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Counters> {
        // The counters stay consistent even if a holder panicked.
        self.counters.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn replica_path(&self, chunk: ChunkId, version: Version) -> PathBuf {
        self.chunks_dir
            .join(format!("{:02x}", chunk.0 & 0xff))
            .join(format!("{:016x}-{:016x}.chunk", chunk.0, version.0))
    }

    /// Stores a replica, replacing any existing one of the same version
    /// atomically. Every block is verified before anything is written.
    /// Returns the bytes the replica takes on disk.
    pub fn write(
        &self,
        chunk: ChunkId,
        version: Version,
        length: u32,
        blocks: &[EncodedBlock],
        sync: bool,
    ) -> Result<u64, StoreError> {
        for (i, b) in blocks.iter().enumerate() {
            if block::verify(b).is_err() {
                return Err(StoreError::Corrupt {
                    chunk,
                    version,
                    detail: format!("received block {i} fails its crc"),
                });
            }
        }
        check_layout(length, blocks.iter().map(|b| b.raw_len)).map_err(StoreError::Invalid)?;

        let path = self.replica_path(chunk, version);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.chunks_dir.clone());
        let tmp = temp_path_for(&path);
        let mut guard = TempGuard::new(tmp.clone());
        let ctx = || format!("cannot write {}", tmp.display());
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(ctx()))?;

        let mut head = encode_header(chunk, version, length, blocks.len() as u32);
        head.reserve(blocks.len() * ENTRY_BYTES);
        for b in blocks {
            head.extend_from_slice(&b.raw_len.to_le_bytes());
            head.push(b.codec);
            head.extend_from_slice(&(b.data.len() as u32).to_le_bytes());
            head.extend_from_slice(&b.crc.to_le_bytes());
        }
        file.write_all(&head).map_err(io_err(ctx()))?;
        for b in blocks {
            file.write_all(&b.data).map_err(io_err(ctx()))?;
        }
        if sync {
            file.sync_all().map_err(io_err(format!("cannot fsync {}", tmp.display())))?;
        } else {
            // Not asked to wait for the disk, but a writer's fsync usually
            // follows: get the bytes moving now so it finds little left.
            start_writeback(&file);
        }
        drop(file);
        let stored = head.len() as u64 + blocks.iter().map(|b| b.data.len() as u64).sum::<u64>();

        {
            let mut counters = self.lock();
            let old = fs::metadata(&path).ok().map(|m| m.len());
            fs::rename(&tmp, &path).map_err(io_err(format!("cannot rename into {}", path.display())))?;
            guard.disarm();
            match old {
                Some(old_len) => counters.used_bytes = counters.used_bytes.saturating_sub(old_len),
                None => counters.chunk_count += 1,
            }
            counters.used_bytes += stored;
        }
        if sync {
            fsync_dir(&dir).map_err(io_err(format!("cannot fsync {}", dir.display())))?;
        }
        tracing::debug!(%chunk, %version, length, stored, "stored replica");
        Ok(stored)
    }

    /// Puts replicas written without `sync` on disk: starts writeback of
    /// them all, then waits for each file and, once, for each directory
    /// they are in. Replicas deleted since (replaced by a newer version)
    /// are skipped.
    pub fn sync_many(&self, replicas: &[(ChunkId, Version)]) -> Result<(), StoreError> {
        let mut files = Vec::with_capacity(replicas.len());
        for &(chunk, version) in replicas {
            let path = self.replica_path(chunk, version);
            match File::open(&path) {
                Ok(f) => {
                    start_writeback(&f);
                    files.push((path, f));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("cannot open {}", path.display()))(e)),
            }
        }
        let mut dirs = std::collections::BTreeSet::new();
        for (path, f) in &files {
            f.sync_data().map_err(io_err(format!("cannot fsync {}", path.display())))?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            fsync_dir(&dir).map_err(io_err(format!("cannot fsync {}", dir.display())))?;
        }
        Ok(())
    }

    /// Blocks `[first, first+count)` of a replica as stored, each checked
    /// against its crc. Blocks past the end are left out.
    pub fn read_blocks(
        &self,
        chunk: ChunkId,
        version: Version,
        first: u32,
        count: u32,
    ) -> Result<Vec<EncodedBlock>, StoreError> {
        let path = self.replica_path(chunk, version);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound { chunk, version }),
            Err(e) => return Err(io_err(format!("cannot open {}", path.display()))(e)),
        };
        let ctx = || format!("cannot read {}", path.display());
        let file_len = file.metadata().map_err(io_err(ctx()))?.len();
        let corrupt = |detail: String| StoreError::Corrupt { chunk, version, detail };
        let layout = read_layout(&file, file_len, chunk, version).map_err(|e| match e {
            LayoutError::Io(source) => StoreError::Io { context: ctx(), source },
            LayoutError::Bad(detail) => corrupt(detail),
        })?;

        let first = first as usize;
        let end = first.saturating_add(count as usize).min(layout.entries.len());
        let mut out = Vec::with_capacity(end.saturating_sub(first));
        for i in first..end {
            let e = layout.entries[i];
            let mut data = vec![0u8; e.stored_len as usize];
            file.read_exact_at(&mut data, layout.offsets[i]).map_err(io_err(ctx()))?;
            let b = EncodedBlock { raw_len: e.raw_len, codec: e.codec, crc: e.crc, data: data.into() };
            if block::verify(&b).is_err() {
                return Err(corrupt(format!("block {i} fails its crc")));
            }
            // The table has no crc of its own: a flipped codec byte would
            // pass the block crc, so check zstd blocks start as frames.
            if b.codec == Codec::Zstd as u8 && !b.data.starts_with(&ZSTD_MAGIC) {
                return Err(corrupt(format!("block {i} is not a zstd frame")));
            }
            out.push(b);
        }
        Ok(out)
    }

    /// Deletes a replica; an absent one is not an error.
    pub fn delete(&self, chunk: ChunkId, version: Version) -> Result<(), StoreError> {
        let path = self.replica_path(chunk, version);
        let mut counters = self.lock();
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("cannot stat {}", path.display()))(e)),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("cannot remove {}", path.display()))(e)),
        }
        counters.used_bytes = counters.used_bytes.saturating_sub(len);
        counters.chunk_count = counters.chunk_count.saturating_sub(1);
        drop(counters);
        tracing::debug!(%chunk, %version, "deleted replica");
        Ok(())
    }

    /// Every replica on disk with its file size, in no particular order.
    pub fn inventory(&self) -> Result<Vec<(ChunkId, Version, u64)>, StoreError> {
        self.scan(false)
    }

    /// Every replica with its age in seconds (for the master's garbage
    /// collection, which spares young replicas of uploads in progress).
    pub fn inventory_with_age(&self) -> Result<Vec<(ChunkId, Version, u64)>, StoreError> {
        let now = std::time::SystemTime::now();
        Ok(self
            .inventory()?
            .into_iter()
            .filter_map(|(c, v, _)| {
                let modified = fs::metadata(self.replica_path(c, v)).ok()?.modified().ok()?;
                Some((c, v, now.duration_since(modified).map(|d| d.as_secs()).unwrap_or(0)))
            })
            .collect())
    }

    /// Bytes taken by all replica files.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes
    }

    /// Number of replicas held.
    pub fn chunk_count(&self) -> u64 {
        self.lock().chunk_count
    }

    /// Lists the replicas; removes temporary files when `remove_tmp`.
    fn scan(&self, remove_tmp: bool) -> Result<Vec<(ChunkId, Version, u64)>, StoreError> {
        let mut out = Vec::new();
        let mut removed = 0usize;
        for i in 0..=255u8 {
            let sub = self.chunks_dir.join(format!("{i:02x}"));
            let entries = match fs::read_dir(&sub) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("cannot list {}", sub.display()))(e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(format!("cannot list {}", sub.display())))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.ends_with(TMP_SUFFIX) {
                    if remove_tmp {
                        let p = entry.path();
                        fs::remove_file(&p).map_err(io_err(format!("cannot remove {}", p.display())))?;
                        removed += 1;
                    }
                    continue;
                }
                let Some((chunk, version)) = parse_replica_name(name) else {
                    continue;
                };
                let len = match entry.metadata() {
                    Ok(m) => m.len(),
                    // Deleted while we looked.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(format!("cannot stat {}", entry.path().display()))(e)),
                };
                out.push((chunk, version, len));
            }
        }
        if removed > 0 {
            tracing::info!("removed {removed} temporary files left by an earlier crash");
        }
        Ok(out)
    }
}

/// Parses `<chunk:016x>-<version:016x>.chunk`.
fn parse_replica_name(name: &str) -> Option<(ChunkId, Version)> {
    let stem = name.strip_suffix(".chunk")?;
    let (c, v) = stem.split_once('-')?;
    if c.len() != 16 || v.len() != 16 {
        return None;
    }
    let chunk = u64::from_str_radix(c, 16).ok()?;
    let version = u64::from_str_radix(v, 16).ok()?;
    Some((ChunkId(chunk), Version(version)))
}

enum LayoutError {
    Io(io::Error),
    Bad(String),
}

/// Reads and validates a replica's header and block table.
fn read_layout(file: &File, file_len: u64, chunk: ChunkId, version: Version) -> Result<Layout, LayoutError> {
    if file_len < HEADER_BYTES as u64 {
        return Err(LayoutError::Bad(format!("file has {file_len} bytes, shorter than a header")));
    }
    let mut h = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut h, 0).map_err(LayoutError::Io)?;
    if &h[..8] != MAGIC {
        return Err(LayoutError::Bad("bad magic".into()));
    }
    if crc32fast::hash(&h[..HEADER_BODY_BYTES]) != le_u32(&h, HEADER_BODY_BYTES) {
        return Err(LayoutError::Bad("header crc mismatch".into()));
    }
    let format = le_u32(&h, 8);
    if format != FORMAT_VERSION {
        return Err(LayoutError::Bad(format!("unknown format version {format}")));
    }
    let (c, v) = (le_u64(&h, 12), le_u64(&h, 20));
    if c != chunk.0 || v != version.0 {
        return Err(LayoutError::Bad(format!("file holds {c}/{v}")));
    }
    let length = le_u32(&h, 28);
    let count = le_u32(&h, 32) as usize;
    if count > MAX_BLOCKS_PER_CHUNK {
        return Err(LayoutError::Bad(format!("{count} blocks")));
    }
    let data_start = (HEADER_BYTES + count * ENTRY_BYTES) as u64;
    if file_len < data_start {
        return Err(LayoutError::Bad("block table truncated".into()));
    }
    let mut table = vec![0u8; count * ENTRY_BYTES];
    file.read_exact_at(&mut table, HEADER_BYTES as u64).map_err(LayoutError::Io)?;
    let entries: Vec<Entry> = table
        .chunks_exact(ENTRY_BYTES)
        .map(|e| Entry { raw_len: le_u32(e, 0), codec: e[4], stored_len: le_u32(e, 5), crc: le_u32(e, 9) })
        .collect();
    check_layout(length, entries.iter().map(|e| e.raw_len)).map_err(LayoutError::Bad)?;
    let mut offsets = Vec::with_capacity(count);
    let mut at = data_start;
    for (i, e) in entries.iter().enumerate() {
        let codec_ok = match e.codec {
            c if c == Codec::Raw as u8 => e.stored_len == e.raw_len,
            c if c == Codec::Zstd as u8 => e.stored_len >= ZSTD_MAGIC.len() as u32,
            _ => false,
        };
        if !codec_ok {
            return Err(LayoutError::Bad(format!("block {i}: codec {} with {} stored bytes", e.codec, e.stored_len)));
        }
        offsets.push(at);
        at += u64::from(e.stored_len);
    }
    if at != file_len {
        return Err(LayoutError::Bad(format!("file has {file_len} bytes, the block table says {at}")));
    }
    Ok(Layout { entries, offsets })
}

#[cfg(test)]
#[path = "chunk_store_tests.rs"]
mod tests;
