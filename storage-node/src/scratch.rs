//! Scratch files: the data of a file of the scratch class
//! ([`stripefs_proto::types::DataClass::Scratch`]) as one plain file,
//! `DIR/scratch/<inode:016x>`, on the node of the host that created it.
//! A client on this host reads and writes it itself, through a descriptor
//! handed over on the local socket and registered with its kernel for FUSE
//! passthrough; clients elsewhere use the `scratch_*` RPCs. The master
//! orders its removal like a replica's (`Version::SCRATCH_FILE`). All
//! methods are blocking.
//!
//! Checksums: once a written file is closed and left alone for a second
//! ([`QUIET`]), its **seal** `DIR/scratch/<inode:016x>.crc` records the
//! crc32 of each 64 KiB block with the file's size and mtime. A seal counts
//! only while the file still has that size and mtime (any write moves the
//! mtime, and a file left alone that long gets a later one): remote reads
//! then carry the blocks' crcs for the reader to check, and the scrubber
//! checks the file against it.

use crate::chunk_store::{io_err, ChunkStore, StoreError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use stripefs_proto::block::BLOCK_SIZE;
use stripefs_proto::types::{ScratchData, MAX_SCRATCH_IO};
use stripefs_proto::{ChunkId, InodeId, Version};

/// How long a file must have been left alone before it is sealed.
pub const QUIET: Duration = Duration::from_secs(1);
const SEAL_MAGIC: &[u8; 8] = b"SCRCRC01";

/// What a seal was computed for: the file's size and mtime.
type Stamp = (u64, i64, i64);

fn stamp_of(m: &fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    (m.len(), m.mtime(), m.mtime_nsec())
}

/// What [`ChunkStore::scratch_scrub`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ScrubOutcome {
    /// The file matches its seal.
    Intact,
    /// The file was sealed now.
    Sealed,
    /// Written lately, or gone: nothing to check yet.
    Busy,
    /// These blocks fail their crc.
    Corrupt(Vec<u64>),
}

impl ChunkStore {
    fn scratch_path(&self, ino: InodeId) -> PathBuf {
        self.scratch_dir.join(format!("{:016x}", ino.0))
    }

    fn seal_path(&self, ino: InodeId) -> PathBuf {
        self.scratch_dir.join(format!("{:016x}.crc", ino.0))
    }

    /// The crcs of the file's blocks if its seal fits the file as it is.
    fn fresh_seal(&self, ino: InodeId, now: &fs::Metadata) -> Option<Vec<u32>> {
        let bytes = fs::read(self.seal_path(ino)).ok()?;
        let (magic, rest) = bytes.split_at_checked(8)?;
        let (head, crcs) = rest.split_at_checked(24)?;
        if magic != SEAL_MAGIC {
            return None;
        }
        let n = |i: usize| u64::from_le_bytes(head[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let stamp = (n(0), n(1) as i64, n(2) as i64);
        if stamp != stamp_of(now) || crcs.len() as u64 != stamp.0.div_ceil(BLOCK_SIZE as u64) * 4 {
            return None;
        }
        Some(crcs.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }

    /// Seals the file if it has been left alone for [`QUIET`] (waiting up
    /// to `patience` for that); true if it is sealed now.
    pub fn scratch_seal(&self, ino: InodeId, patience: Duration) -> Result<bool, StoreError> {
        let path = self.scratch_path(ino);
        let deadline = std::time::Instant::now() + patience;
        let before = loop {
            let m = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err(format!("cannot stat {}", path.display()))(e)),
            };
            if self.fresh_seal(ino, &m).is_some() {
                return Ok(true);
            }
            let age = m.modified().ok().and_then(|t| SystemTime::now().duration_since(t).ok()).unwrap_or_default();
            if age >= QUIET {
                break m;
            }
            if std::time::Instant::now() + (QUIET - age) > deadline {
                return Ok(false);
            }
            std::thread::sleep(QUIET - age);
        };
        let crcs = {
            let mut file = File::open(&path).map_err(io_err(format!("cannot open {}", path.display())))?;
            let mut crcs = Vec::new();
            let mut buf = vec![0u8; BLOCK_SIZE];
            loop {
                let mut got = 0;
                while got < BLOCK_SIZE {
                    match file.read(&mut buf[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_err(format!("cannot read {}", path.display()))(e)),
                    }
                }
                if got == 0 {
                    break;
                }
                crcs.push(crc32fast::hash(&buf[..got]));
                if got < BLOCK_SIZE {
                    break;
                }
            }
            crcs
        };
        let after = fs::metadata(&path).map_err(io_err(format!("cannot stat {}", path.display())))?;
        let stamp = stamp_of(&before);
        if stamp != stamp_of(&after) || crcs.len() as u64 != stamp.0.div_ceil(BLOCK_SIZE as u64) {
            return Ok(false); // written meanwhile
        }
        let mut out = SEAL_MAGIC.to_vec();
        for v in [stamp.0, stamp.1 as u64, stamp.2 as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for c in crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        let seal = self.seal_path(ino);
        crate::fsutil::write_file_atomic(&seal, &out).map_err(io_err(format!("cannot write {}", seal.display())))?;
        tracing::debug!(%ino, "sealed scratch file");
        Ok(true)
    }

    /// The scrubber's look at one scratch file: checked against its seal,
    /// or sealed if it has none and was left alone.
    pub fn scratch_scrub(&self, ino: InodeId) -> Result<ScrubOutcome, StoreError> {
        let path = self.scratch_path(ino);
        let Ok(m) = fs::metadata(&path) else { return Ok(ScrubOutcome::Busy) };
        if self.fresh_seal(ino, &m).is_none() {
            return Ok(if self.scratch_seal(ino, Duration::ZERO)? { ScrubOutcome::Sealed } else { ScrubOutcome::Busy });
        }
        let mut bad = Vec::new();
        let mut at = 0u64;
        while at < m.len() {
            let data = self.scratch_read(ino, at, MAX_SCRATCH_IO)?;
            if data.data.is_empty() {
                break;
            }
            if data.crcs.is_empty() {
                return Ok(ScrubOutcome::Busy); // written meanwhile
            }
            if let Some(i) = data.bad_block() {
                bad.push(at / BLOCK_SIZE as u64 + i as u64);
            }
            at += data.data.len() as u64;
        }
        Ok(if bad.is_empty() { ScrubOutcome::Intact } else { ScrubOutcome::Corrupt(bad) })
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

    /// Up to `len` bytes from `offset` (fewer at the end of the file), with
    /// the crcs of their blocks when the file's seal fits it and `offset`
    /// is on a block boundary.
    pub fn scratch_read(&self, ino: InodeId, offset: u64, len: u32) -> Result<ScratchData, StoreError> {
        if len > MAX_SCRATCH_IO {
            return Err(StoreError::Invalid(format!("scratch read of {len} bytes")));
        }
        let path = self.scratch_path(ino);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Self::scratch_not_found(ino)),
            Err(e) => return Err(io_err(format!("cannot open {}", path.display()))(e)),
        };
        let stat = |f: &File| f.metadata().map_err(io_err(format!("cannot stat {}", path.display())));
        let before = stat(&file)?;
        // read_to_end fills the buffer without zeroing it first.
        let mut buf = Vec::with_capacity(len as usize);
        let mut reader = &file;
        reader
            .seek(io::SeekFrom::Start(offset))
            .and_then(|_| reader.take(u64::from(len)).read_to_end(&mut buf))
            .map_err(io_err(format!("cannot read {}", path.display())))?;
        let mut crcs = Vec::new();
        if offset.is_multiple_of(BLOCK_SIZE as u64) {
            if let Some(all) = self.fresh_seal(ino, &before) {
                // Sealed before the read, and not written during it.
                if stamp_of(&stat(&file)?) == stamp_of(&before) {
                    let first = (offset / BLOCK_SIZE as u64) as usize;
                    let n = buf.len().div_ceil(BLOCK_SIZE);
                    crcs = all.get(first..first + n).map(<[u32]>::to_vec).unwrap_or_default();
                }
            }
        }
        Ok(ScratchData { data: buf.into(), crcs })
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
        let _ = fs::remove_file(self.seal_path(ino));
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

    /// The size of the scratch file of `ino` (0 if it is gone).
    pub fn scratch_len(&self, ino: InodeId) -> u64 {
        fs::metadata(self.scratch_path(ino)).map(|m| m.len()).unwrap_or(0)
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
        let read = |at, len| store.scratch_read(ino, at, len).map(|d| d.data.to_vec());
        assert!(matches!(read(0, 10), Err(StoreError::NotFound { .. })));
        assert_eq!(store.scratch_write(ino, 4, b"data").expect("write"), 8);
        assert_eq!(read(0, 100).expect("read"), b"\0\0\0\0data");
        // What a client writes through its descriptor, remote readers see.
        store.scratch_open(ino).expect("open").write_all(b"abcd").expect("write");
        assert_eq!(read(0, 6).expect("read"), b"abcdda");
        store.scratch_truncate(ino, 2).expect("truncate");
        assert_eq!(read(0, 100).expect("read"), b"ab");
        store.scratch_sync(ino).expect("sync");
        assert_eq!(store.scratch_bytes(), 2);
        let inv = store.inventory_with_age().expect("inventory");
        assert_eq!(inv.iter().map(|i| (i.0, i.1)).collect::<Vec<_>>(), [(ChunkId(77), Version::SCRATCH_FILE)]);
        store.delete(ChunkId(ino.0), Version::SCRATCH_FILE).expect("delete");
        assert!(matches!(read(0, 10), Err(StoreError::NotFound { .. })));
        // Scratch files are no replicas.
        assert!(store.inventory().expect("inventory").is_empty());
        assert!(store.scratch_read(ino, 0, MAX_SCRATCH_IO + 1).is_err());
    }
}

#[cfg(test)]
mod seal_tests {
    use super::*;
    use std::io::Write;

    /// Makes the file's mtime `age` old (as if left alone that long).
    fn age(store: &ChunkStore, ino: InodeId, age: Duration) {
        let f = File::options().write(true).open(store.scratch_path(ino)).expect("open");
        f.set_modified(SystemTime::now() - age).expect("set mtime");
    }

    #[test]
    fn a_file_left_alone_is_sealed_and_reads_carry_its_crcs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(dir.path()).expect("open");
        let ino = InodeId(9);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        store.scratch_open(ino).expect("open").write_all(&data).expect("write");
        // Just written: not sealed yet, and a seal does not wait here.
        assert!(!store.scratch_seal(ino, Duration::ZERO).expect("seal"));
        assert!(store.scratch_read(ino, 0, 100).expect("read").crcs.is_empty());
        age(&store, ino, Duration::from_secs(5));
        assert!(store.scratch_seal(ino, Duration::ZERO).expect("seal"));
        let r = store.scratch_read(ino, 65536, MAX_SCRATCH_IO).expect("read");
        assert_eq!((r.data.len(), r.crcs.len(), r.bad_block()), (200_000 - 65536, 3, None));
        assert!(store.scratch_read(ino, 100, 10).expect("read").crcs.is_empty(), "not on a block boundary");
        assert_eq!(store.scratch_scrub(ino).expect("scrub"), ScrubOutcome::Intact);

        // A write makes the seal stale: no crcs, and the scrubber seals again.
        store.scratch_write(ino, 10, b"new").expect("write");
        assert!(store.scratch_read(ino, 0, 100).expect("read").crcs.is_empty());
        assert_eq!(store.scratch_scrub(ino).expect("scrub"), ScrubOutcome::Busy, "written just now");
        age(&store, ino, Duration::from_secs(5));
        assert_eq!(store.scratch_scrub(ino).expect("scrub"), ScrubOutcome::Sealed);

        // Damage behind the seal's back (same size and mtime): found.
        let path = store.scratch_path(ino);
        let mtime = fs::metadata(&path).expect("stat").modified().expect("mtime");
        let f = File::options().write(true).open(&path).expect("open");
        f.write_all_at(b"X", 150_000).expect("damage");
        f.set_modified(mtime).expect("mtime back");
        assert_eq!(store.scratch_scrub(ino).expect("scrub"), ScrubOutcome::Corrupt(vec![2]));
        assert_eq!(store.scratch_read(ino, 131072, 65536).expect("read").bad_block(), Some(0));
        store.scratch_delete(ino).expect("delete");
        assert!(!store.seal_path(ino).exists());
    }
}
