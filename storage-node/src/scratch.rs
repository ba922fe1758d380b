//! Scratch files: the data of a file of the scratch class
//! ([`stripefs_proto::types::DataClass::Scratch`]) as one plain file,
//! `DIR/scratch/<inode:016x>`, on the node of the host that created it.
//! A client on this host reads and writes it itself, through a descriptor
//! handed over on the local socket and registered with its kernel for FUSE
//! passthrough; clients elsewhere use the `scratch_*` RPCs. The master
//! orders its removal like a replica's (`Version::SCRATCH_FILE`). All
//! methods are blocking.

use crate::chunk_store::{io_err, ChunkStore, StoreError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use stripefs_proto::types::MAX_SCRATCH_IO;
use stripefs_proto::{ChunkId, InodeId, Version};

impl ChunkStore {
    fn scratch_path(&self, ino: InodeId) -> PathBuf {
        self.scratch_dir.join(format!("{:016x}", ino.0))
    }

    fn scratch_not_found(ino: InodeId) -> StoreError {
        StoreError::NotFound { chunk: ChunkId(ino.0), version: Version::SCRATCH_FILE }
    }

    /// The scratch file of `ino`, read-write, created (empty) if missing.
    pub fn scratch_open(&self, ino: InodeId) -> Result<File, StoreError> {
        let path = self.scratch_path(ino);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))
    }

    /// Up to `len` bytes from `offset` (fewer at the end of the file).
    pub fn scratch_read(&self, ino: InodeId, offset: u64, len: u32) -> Result<Vec<u8>, StoreError> {
        if len > MAX_SCRATCH_IO {
            return Err(StoreError::Invalid(format!("scratch read of {len} bytes")));
        }
        let path = self.scratch_path(ino);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Self::scratch_not_found(ino)),
            Err(e) => return Err(io_err(format!("cannot open {}", path.display()))(e)),
        };
        // read_to_end fills the buffer without zeroing it first.
        let mut buf = Vec::with_capacity(len as usize);
        let mut file = file;
        file.seek(io::SeekFrom::Start(offset))
            .and_then(|_| file.take(u64::from(len)).read_to_end(&mut buf))
            .map_err(io_err(format!("cannot read {}", path.display())))?;
        Ok(buf)
    }

    /// Writes `data` at `offset`; returns the file's size after it.
    pub fn scratch_write(&self, ino: InodeId, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        if data.len() > MAX_SCRATCH_IO as usize {
            return Err(StoreError::Invalid(format!("scratch write of {} bytes", data.len())));
        }
        let file = self.scratch_open(ino)?;
        let path = self.scratch_path(ino);
        file.write_all_at(data, offset).map_err(io_err(format!("cannot write {}", path.display())))?;
        Ok(file.metadata().map_err(io_err(format!("cannot stat {}", path.display())))?.len())
    }

    /// Sets the file's size.
    pub fn scratch_truncate(&self, ino: InodeId, size: u64) -> Result<(), StoreError> {
        let file = self.scratch_open(ino)?;
        file.set_len(size).map_err(io_err(format!("cannot truncate {}", self.scratch_path(ino).display())))
    }

    /// Puts the file's data on disk.
    pub fn scratch_sync(&self, ino: InodeId) -> Result<(), StoreError> {
        let path = self.scratch_path(ino);
        match File::open(&path) {
            Ok(f) => f.sync_all().map_err(io_err(format!("cannot fsync {}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Self::scratch_not_found(ino)),
            Err(e) => Err(io_err(format!("cannot open {}", path.display()))(e)),
        }
    }

    /// Removes the file; an absent one is not an error.
    pub fn scratch_delete(&self, ino: InodeId) -> Result<(), StoreError> {
        let path = self.scratch_path(ino);
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::debug!(%ino, "deleted scratch file");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("cannot remove {}", path.display()))(e)),
        }
    }

    /// Every scratch file as an inventory item `(ChunkId(ino),
    /// Version::SCRATCH_FILE, age in seconds)`.
    pub fn scratch_inventory(&self) -> Result<Vec<(ChunkId, Version, u64)>, StoreError> {
        let dir =
            fs::read_dir(&self.scratch_dir).map_err(io_err(format!("cannot list {}", self.scratch_dir.display())))?;
        let now = std::time::SystemTime::now();
        let mut items = Vec::new();
        for entry in dir {
            let entry = entry.map_err(io_err(format!("cannot list {}", self.scratch_dir.display())))?;
            let Some(ino) = entry.file_name().to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) else {
                continue;
            };
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else { continue };
            let age = now.duration_since(modified).map(|d| d.as_secs()).unwrap_or(0);
            items.push((ChunkId(ino), Version::SCRATCH_FILE, age));
        }
        Ok(items)
    }

    /// Bytes the scratch files take.
    pub fn scratch_bytes(&self) -> u64 {
        let Ok(dir) = fs::read_dir(&self.scratch_dir) else { return 0 };
        dir.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn scratch_files_are_written_read_truncated_and_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(dir.path()).expect("open");
        let ino = InodeId(77);
        assert!(matches!(store.scratch_read(ino, 0, 10), Err(StoreError::NotFound { .. })));
        assert_eq!(store.scratch_write(ino, 4, b"data").expect("write"), 8);
        assert_eq!(store.scratch_read(ino, 0, 100).expect("read"), b"\0\0\0\0data");
        // What a client writes through its descriptor, remote readers see.
        store.scratch_open(ino).expect("open").write_all(b"abcd").expect("write");
        assert_eq!(store.scratch_read(ino, 0, 6).expect("read"), b"abcdda");
        store.scratch_truncate(ino, 2).expect("truncate");
        assert_eq!(store.scratch_read(ino, 0, 100).expect("read"), b"ab");
        store.scratch_sync(ino).expect("sync");
        assert_eq!(store.scratch_bytes(), 2);
        let inv = store.inventory_with_age().expect("inventory");
        assert_eq!(inv.iter().map(|i| (i.0, i.1)).collect::<Vec<_>>(), [(ChunkId(77), Version::SCRATCH_FILE)]);
        store.delete(ChunkId(ino.0), Version::SCRATCH_FILE).expect("delete");
        assert!(matches!(store.scratch_read(ino, 0, 10), Err(StoreError::NotFound { .. })));
        // Scratch files are no replicas.
        assert!(store.inventory().expect("inventory").is_empty());
        assert!(store.scratch_read(ino, 0, MAX_SCRATCH_IO + 1).is_err());
    }
}
