//! The on-disk store of chunk replicas.
//!
//! Each replica (a chunk id at one version) is one file,
//! `DIR/chunks/<low byte of the chunk id, 2 hex digits>/<chunk:016x>-<version:016x>.chunk`,
//! in the format of [`stripefs_proto::replica`] (header, block table,
//! blocks), which a client on this host also reads directly through a
//! descriptor this node hands it ([`stripefs_proto::local_socket`]).
//!
//! Replicas are written to a temporary file and renamed into place, so a
//! reader sees a whole replica or none. All methods are blocking; async
//! code calls them through `spawn_blocking`.

use crate::direct::{AlignedBuf, ReplicaWriter};
use crate::fsutil::{fsync_dir, start_writeback, temp_path_for, TempGuard, TMP_SUFFIX};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use stripefs_proto::block;
use stripefs_proto::replica::{self, Layout, ReplicaError};
use stripefs_proto::types::EncodedBlock;
use stripefs_proto::{ChunkId, FsError, Version};

pub use stripefs_proto::replica::{check_layout, MAX_BLOCKS_PER_CHUNK, MAX_CHUNK_BYTES};

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
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            tracing::warn!("{context}: {source}");
            StoreError::NoSpace
        }
        _ => StoreError::Io { context, source },
    }
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
    /// Scratch files, one plain file per inode ([`crate::scratch`]).
    pub(crate) scratch_dir: PathBuf,
    /// Held while a replica file appears or disappears, so the counters
    /// follow the files exactly.
    counters: Mutex<Counters>,
    /// Writes replica files (large ones around the page cache).
    writer: ReplicaWriter,
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

        let scratch_dir = dir.join("scratch");
        fs::create_dir_all(&scratch_dir).map_err(io_err(format!("cannot create {}", scratch_dir.display())))?;
        let store = ChunkStore {
            chunks_dir,
            scratch_dir,
            counters: Mutex::new(Counters::default()),
            writer: ReplicaWriter::new(true),
        };
        let replicas = store.scan(true)?;
        let mut counters = store.lock();
        counters.chunk_count = replicas.len() as u64;
        counters.used_bytes = replicas.iter().map(|r| r.2).sum();
        drop(counters);
        Ok(store)
    }

    /// With `true`, writes every replica through the page cache; by
    /// default large ones go around it ([`crate::direct`]).
    pub fn buffered_writes(mut self, buffered: bool) -> ChunkStore {
        self.writer = ReplicaWriter::new(!buffered);
        self
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
        let head = replica::encode_head(chunk, version, length, blocks);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(blocks.len() + 1);
        parts.push(&head);
        parts.extend(blocks.iter().map(|b| &b.data[..]));
        let stored = parts.iter().map(|p| p.len()).sum::<usize>();
        self.put(chunk, version, length, stored, sync, |w, file| w.write(file, &parts, stored))
    }

    /// An aligned buffer for [`ChunkStore::write_assembled`]; give it back
    /// with [`ChunkStore::recycle`].
    pub fn buffer(&self, len: usize) -> AlignedBuf {
        self.writer.buffer(len)
    }

    /// Returns a buffer from [`ChunkStore::buffer`] for reuse.
    pub fn recycle(&self, buf: AlignedBuf) {
        self.writer.recycle(buf)
    }

    /// Stores a replica already laid out in `replica` (header, table and
    /// blocks, as [`replica`] describes), whose blocks the caller has
    /// verified ([`replica::verify_blocks`]). Large ones go to disk
    /// without another copy.
    pub fn write_assembled(
        &self,
        chunk: ChunkId,
        version: Version,
        length: u32,
        replica: &AlignedBuf,
        sync: bool,
    ) -> Result<u64, StoreError> {
        self.put(chunk, version, length, replica.len(), sync, |w, file| w.write_aligned(file, replica))
    }

    /// Writes a replica file of `stored` bytes with `write`, then puts it
    /// in place atomically.
    fn put(
        &self,
        chunk: ChunkId,
        version: Version,
        length: u32,
        stored: usize,
        sync: bool,
        write: impl FnOnce(&ReplicaWriter, &mut File) -> io::Result<bool>,
    ) -> Result<u64, StoreError> {
        let path = self.replica_path(chunk, version);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.chunks_dir.clone());
        let tmp = temp_path_for(&path);
        let mut guard = TempGuard::new(tmp.clone());
        let ctx = || format!("cannot write {}", tmp.display());
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(ctx()))?;
        write(&self.writer, &mut file).map_err(io_err(ctx()))?;
        if sync {
            file.sync_all().map_err(io_err(format!("cannot fsync {}", tmp.display())))?;
        } else {
            // Not asked to wait for the disk, but a writer's fsync usually
            // follows: get the bytes moving now so it finds little left.
            start_writeback(&file);
        }
        drop(file);
        let stored = stored as u64;

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

    /// The replica file itself, open read-only, for a client on this host
    /// that reads it directly (see [`stripefs_proto::local_socket`]).
    pub fn open_replica(&self, chunk: ChunkId, version: Version) -> Result<File, StoreError> {
        let path = self.replica_path(chunk, version);
        match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound { chunk, version }),
            Err(e) => Err(io_err(format!("cannot open {}", path.display()))(e)),
        }
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
        let file = self.open_replica(chunk, version)?;
        let path = self.replica_path(chunk, version);
        let ctx = || format!("cannot read {}", path.display());
        let replica_err = |e: ReplicaError| match e {
            ReplicaError::Io(source) => StoreError::Io { context: ctx(), source },
            ReplicaError::Corrupt(detail) => StoreError::Corrupt { chunk, version, detail },
        };
        let layout = Layout::read(&file, chunk, version).map_err(replica_err)?;
        let blocks = layout.read_blocks(&file, first, count).map_err(replica_err)?;
        for (i, b) in blocks.iter().enumerate() {
            if block::verify(b).is_err() {
                let detail = format!("block {} fails its crc", first as usize + i);
                return Err(StoreError::Corrupt { chunk, version, detail });
            }
        }
        Ok(blocks)
    }

    /// Deletes a replica (or, for [`Version::SCRATCH_FILE`], the scratch
    /// file of inode `chunk`); an absent one is not an error.
    pub fn delete(&self, chunk: ChunkId, version: Version) -> Result<(), StoreError> {
        if version == Version::SCRATCH_FILE {
            return self.scratch_delete(stripefs_proto::InodeId(chunk.0));
        }
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
        let mut items: Vec<_> = self
            .inventory()?
            .into_iter()
            .filter_map(|(c, v, _)| {
                let modified = fs::metadata(self.replica_path(c, v)).ok()?.modified().ok()?;
                Some((c, v, now.duration_since(modified).map(|d| d.as_secs()).unwrap_or(0)))
            })
            .collect();
        // Scratch files too, so the master removes those of no file.
        items.extend(self.scratch_inventory()?);
        Ok(items)
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

#[cfg(test)]
#[path = "chunk_store_tests.rs"]
mod tests;
