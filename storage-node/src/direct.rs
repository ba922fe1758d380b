//! Writing large replicas around the page cache (`O_DIRECT`).
//!
//! A node that writes a 4 MiB replica through the page cache copies it into
//! freshly allocated cache pages, which the kernel then writes back. The
//! client on the writer's host already holds those bytes in its own page
//! cache, and a second replica on the same host would cache them a third
//! time. Worse, on virtual machines whose host reclaims free guest memory
//! (virtio-balloon free page reporting, common on VPSes), every fresh
//! page costs a fault in the hypervisor: there, buffered writes of new
//! files ran at ~340 MB/s and direct ones at 1.2-2.3 GB/s (dd, 1 GiB,
//! fsync at the end).
//!
//! So replicas of at least [`DIRECT_MIN_BYTES`] are gathered into one
//! aligned buffer, taken from a small pool so that its pages stay
//! allocated, and written with `O_DIRECT`; the unaligned tail (under 4
//! KiB) goes through the page cache. Smaller replicas, and filesystems
//! without `O_DIRECT` (tmpfs on older kernels, some FUSE filesystems), are
//! written through the page cache as before. Durability does not change:
//! a direct write is on the device but maybe only in its volatile cache,
//! so a sync still ends with `fdatasync`.

use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Smallest replica written with `O_DIRECT`. Below it the copy into the
/// page cache is cheap, and a direct write would wait for the device.
pub const DIRECT_MIN_BYTES: usize = 1024 * 1024;

/// Alignment of direct writes: buffer address, file offset and length.
/// 4 KiB suits every logical block size in use (512 B and 4 KiB).
const ALIGN: usize = 4096;

/// Buffers kept for reuse; more writes at once allocate their own.
const POOL_BUFFERS: usize = 4;

/// Largest buffer kept for reuse (a 16 MiB chunk and its block table).
const POOL_MAX_BYTES: usize = 16 * 1024 * 1024 + 64 * 1024;

/// A buffer whose bytes start at a 4 KiB boundary, as direct writes need.
#[derive(Debug)]
pub struct AlignedBuf {
    vec: Vec<u8>,
    at: usize,
    len: usize,
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.vec[self.at..self.at + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.at..self.at + self.len]
    }
}

/// Writes replica files, large ones with `O_DIRECT`.
#[derive(Debug)]
pub struct ReplicaWriter {
    /// Whether large replicas are written with `O_DIRECT`.
    direct: bool,
    pool: Mutex<Vec<Vec<u8>>>,
}

impl ReplicaWriter {
    /// A writer that writes large replicas with `O_DIRECT` when `direct`,
    /// and everything through the page cache otherwise.
    pub fn new(direct: bool) -> ReplicaWriter {
        ReplicaWriter { direct, pool: Mutex::new(Vec::new()) }
    }

    /// Writes `parts`, `total` bytes in all, at the start of the new, empty
    /// `file`. Returns whether the bulk of it went around the page cache.
    pub fn write(&self, file: &mut File, parts: &[&[u8]], total: usize) -> io::Result<bool> {
        if self.direct && total >= DIRECT_MIN_BYTES {
            let mut buf = self.buffer(total);
            let mut n = 0;
            for p in parts {
                buf[n..n + p.len()].copy_from_slice(p);
                n += p.len();
            }
            debug_assert_eq!(n, total);
            let r = self.write_direct(file, &buf);
            self.recycle(buf);
            if r? {
                return Ok(true);
            }
        }
        for p in parts {
            file.write_all(p)?;
        }
        Ok(false)
    }

    /// Writes `data` at the start of the new, empty `file`, like
    /// [`ReplicaWriter::write`] but with no copy on the direct path.
    pub fn write_aligned(&self, file: &mut File, data: &AlignedBuf) -> io::Result<bool> {
        if self.direct && data.len() >= DIRECT_MIN_BYTES && self.write_direct(file, data)? {
            return Ok(true);
        }
        file.write_all(data)?;
        Ok(false)
    }

    /// The direct write; `Ok(false)` when the filesystem refuses
    /// `O_DIRECT` before anything was written.
    fn write_direct(&self, file: &File, data: &AlignedBuf) -> io::Result<bool> {
        let flags = fcntl_getfl(file)?;
        match fcntl_setfl(file, flags | OFlags::DIRECT) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let bulk = data.len() / ALIGN * ALIGN;
        let r = file.write_all_at(&data[..bulk], 0);
        let restored = fcntl_setfl(file, flags);
        match r {
            // Some filesystems take the flag and refuse the write (an
            // alignment they need that we do not meet): nothing is written.
            Err(e) if rustix::io::Errno::from_io_error(&e) == Some(rustix::io::Errno::INVAL) => {
                restored.map(|()| false).map_err(io::Error::from)
            }
            Err(e) => Err(e),
            Ok(()) => restored
                .map_err(io::Error::from)
                .and_then(|()| file.write_all_at(&data[bulk..], bulk as u64))
                .map(|()| true),
        }
    }

    /// An aligned buffer of `len` bytes (not zeroed), from the pool when it
    /// has one large enough; give it back with [`ReplicaWriter::recycle`].
    pub fn buffer(&self, len: usize) -> AlignedBuf {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let vec = match pool.iter().position(|b| b.len() >= len + ALIGN) {
            Some(i) => pool.swap_remove(i),
            None => {
                drop(pool);
                vec![0u8; len + ALIGN]
            }
        };
        let at = vec.as_ptr().align_offset(ALIGN);
        AlignedBuf { vec, at, len }
    }

    /// Returns a buffer to the pool (the pool keeps the largest few).
    pub fn recycle(&self, buf: AlignedBuf) {
        let buf = buf.vec;
        if buf.len() > POOL_MAX_BYTES {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_BUFFERS {
            pool.push(buf);
        } else if let Some(smallest) = pool.iter_mut().min_by_key(|b| b.len()) {
            // Keep the larger buffers: they serve every size below theirs.
            if smallest.len() < buf.len() {
                *smallest = buf;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed).collect()
    }

    /// Whether files in `dir` can be opened with O_DIRECT.
    fn supports_direct(dir: &std::path::Path) -> bool {
        let p = dir.join("probe");
        std::fs::OpenOptions::new().write(true).create(true).custom_flags(OFlags::DIRECT.bits() as i32).open(p).is_ok()
    }

    #[test]
    fn replicas_read_back_whole_around_every_alignment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let direct_here = supports_direct(dir.path());
        for direct in [true, false] {
            let w = ReplicaWriter::new(direct);
            for (i, len) in [1000, DIRECT_MIN_BYTES - 1, DIRECT_MIN_BYTES, 4 << 20, (4 << 20) + 4095, (4 << 20) + 4097]
                .into_iter()
                .enumerate()
            {
                // A small head and unaligned parts, as a replica has.
                let head = pattern(45 + 13 * 3, 1);
                let body = pattern(len - head.len(), i as u8);
                let (a, b) = body.split_at(body.len() / 3);
                let path = dir.path().join(format!("r{direct}{i}"));
                let mut f = std::fs::File::create_new(&path).expect("create");
                let went_direct = w.write(&mut f, &[&head, a, b], len).expect("write");
                drop(f);
                let back = std::fs::read(&path).expect("read");
                assert_eq!(back.len(), len, "length of {len} bytes, direct {direct}");
                assert!(back[..head.len()] == head[..] && back[head.len()..] == body[..], "contents of {len} bytes");
                assert_eq!(
                    went_direct,
                    direct && direct_here && len >= DIRECT_MIN_BYTES,
                    "{len} bytes, direct {direct}"
                );
            }
        }
        // Buffers return to the pool, at most POOL_BUFFERS of them.
        let w = ReplicaWriter::new(true);
        for i in 0..6 {
            let data = pattern(DIRECT_MIN_BYTES + i * 5000, 9);
            let mut f = std::fs::File::create_new(dir.path().join(format!("p{i}"))).expect("create");
            w.write(&mut f, &[&data], data.len()).expect("write");
        }
        let pooled = w.pool.lock().expect("pool").len();
        assert!(pooled <= POOL_BUFFERS && (pooled > 0) == direct_here, "{pooled} pooled buffers");
    }
}
