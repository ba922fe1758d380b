//! The replica file: how a storage node lays out one chunk version on disk.
//!
//! Each replica (a chunk id at one version) is one file, laid out as follows
//! (all integers little-endian):
//!
//! ```text
//! header  magic "SFCHUNK1" | format u32 (=1) | chunk u64 | version u64
//!         | length u32 (valid bytes) | block count u32 | crc32 of the preceding 36 bytes
//! table   count × (raw_len u32 | codec u8 | stored_len u32 | crc u32 of the stored bytes)
//! data    the blocks' stored bytes, back to back
//! ```
//!
//! The node writes these files and reads them for remote readers; a client
//! on the node's own host reads them too, through a file descriptor the
//! node hands it ([`crate::local_socket`]). Both parse them here, so the two can
//! never disagree on the format. The readers take an open file and do
//! blocking positional reads.

#[cfg(doc)]
use crate::block;
use crate::block::{Codec, BLOCK_SIZE};
use crate::data_conn::BlockMeta;
use crate::types::EncodedBlock;
use crate::{ChunkId, Version};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Largest chunk a node stores, in bytes.
pub const MAX_CHUNK_BYTES: u32 = 64 * 1024 * 1024;

/// Largest number of blocks in a chunk (and in one read).
pub const MAX_BLOCKS_PER_CHUNK: usize = MAX_CHUNK_BYTES as usize / BLOCK_SIZE;

const MAGIC: &[u8; 8] = b"SFCHUNK1";
const FORMAT_VERSION: u32 = 1;
/// Header bytes covered by the header crc.
pub const HEADER_BODY_BYTES: usize = 8 + 4 + 8 + 8 + 4 + 4;
/// Header bytes including the crc.
pub const HEADER_BYTES: usize = HEADER_BODY_BYTES + 4;
/// Bytes of one block table entry.
pub const ENTRY_BYTES: usize = 4 + 1 + 4 + 4;
/// First bytes of every zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Why a replica could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The file's contents are not a valid replica of the chunk version
    /// asked for, or a block fails its crc.
    #[error("{0}")]
    Corrupt(String),
    /// Reading the file failed.
    #[error("{0}")]
    Io(#[from] io::Error),
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

/// Whether a block of `raw_len` bytes can take `stored_len` bytes in
/// `codec`: raw blocks are stored as they are, a zstd frame has at least
/// its magic and never more than twice a block (the encoder keeps only
/// frames that save space). Checked for replica files and incoming writes.
pub fn stored_len_fits(codec: u8, raw_len: u32, stored_len: u32) -> bool {
    match codec {
        c if c == Codec::Raw as u8 => stored_len == raw_len,
        c if c == Codec::Zstd as u8 => stored_len >= ZSTD_MAGIC.len() as u32 && stored_len as usize <= 2 * BLOCK_SIZE,
        _ => false,
    }
}

/// The header and block table of a replica holding `blocks`: what goes
/// before the blocks' stored bytes.
pub fn encode_head(chunk: ChunkId, version: Version, length: u32, blocks: &[EncodedBlock]) -> Vec<u8> {
    let metas: Vec<BlockMeta> = blocks.iter().map(BlockMeta::of).collect();
    encode_head_of(chunk, version, length, &metas)
}

/// Bytes of the header and block table of a replica of `blocks` blocks.
pub fn head_len(blocks: usize) -> usize {
    HEADER_BYTES + blocks * ENTRY_BYTES
}

/// [`encode_head`] from the blocks' descriptions.
pub fn encode_head_of(chunk: ChunkId, version: Version, length: u32, blocks: &[BlockMeta]) -> Vec<u8> {
    let mut h = Vec::with_capacity(head_len(blocks.len()));
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&chunk.0.to_le_bytes());
    h.extend_from_slice(&version.0.to_le_bytes());
    h.extend_from_slice(&length.to_le_bytes());
    h.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    for b in blocks {
        h.extend_from_slice(&b.raw_len.to_le_bytes());
        h.push(b.codec);
        h.extend_from_slice(&b.stored_len.to_le_bytes());
        h.extend_from_slice(&b.crc.to_le_bytes());
    }
    h
}

/// Checks blocks received as one buffer (`data`, the blocks back to back,
/// as `blocks` describe them): each one's crc, and that zstd blocks start
/// as zstd frames. Returns the index of the first bad block.
pub fn verify_blocks(blocks: &[BlockMeta], data: &[u8]) -> Result<(), usize> {
    let mut at = 0;
    for (i, b) in blocks.iter().enumerate() {
        let Some(d) = data.get(at..at + b.stored_len as usize) else { return Err(i) };
        if crc32fast::hash(d) != b.crc || (b.codec == Codec::Zstd as u8 && !d.starts_with(&ZSTD_MAGIC)) {
            return Err(i);
        }
        at += d.len();
    }
    if at == data.len() {
        Ok(())
    } else {
        Err(blocks.len())
    }
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

/// One block table entry.
#[derive(Clone, Copy, Debug)]
struct Entry {
    raw_len: u32,
    codec: u8,
    stored_len: u32,
    crc: u32,
}

/// A replica's validated header and block table: where each block is.
#[derive(Debug)]
pub struct Layout {
    entries: Vec<Entry>,
    /// File offset of each block's stored bytes.
    offsets: Vec<u64>,
    /// The file's length.
    end: u64,
}

impl Layout {
    /// Reads and validates the header and block table of `file`, which
    /// must hold `chunk` at `version`.
    pub fn read(file: &File, chunk: ChunkId, version: Version) -> Result<Layout, ReplicaError> {
        let bad = |s: String| ReplicaError::Corrupt(s);
        let file_len = file.metadata()?.len();
        if file_len < HEADER_BYTES as u64 {
            return Err(bad(format!("file has {file_len} bytes, shorter than a header")));
        }
        // The table of a 4 MiB chunk is 832 bytes: one read gets both
        // header and table in the common case.
        let guess = (HEADER_BYTES + 64 * ENTRY_BYTES).min(file_len as usize);
        let mut head = vec![0u8; guess];
        file.read_exact_at(&mut head, 0)?;
        if &head[..8] != MAGIC {
            return Err(bad("bad magic".into()));
        }
        if crc32fast::hash(&head[..HEADER_BODY_BYTES]) != le_u32(&head, HEADER_BODY_BYTES) {
            return Err(bad("header crc mismatch".into()));
        }
        let format = le_u32(&head, 8);
        if format != FORMAT_VERSION {
            return Err(bad(format!("unknown format version {format}")));
        }
        let (c, v) = (le_u64(&head, 12), le_u64(&head, 20));
        if c != chunk.0 || v != version.0 {
            return Err(bad(format!("file holds {c}/{v}")));
        }
        let length = le_u32(&head, 28);
        let count = le_u32(&head, 32) as usize;
        if count > MAX_BLOCKS_PER_CHUNK {
            return Err(bad(format!("{count} blocks")));
        }
        let data_start = (HEADER_BYTES + count * ENTRY_BYTES) as u64;
        if file_len < data_start {
            return Err(bad("block table truncated".into()));
        }
        if head.len() < data_start as usize {
            let have = head.len();
            head.resize(data_start as usize, 0);
            file.read_exact_at(&mut head[have..], have as u64)?;
        }
        let entries: Vec<Entry> = head[HEADER_BYTES..data_start as usize]
            .chunks_exact(ENTRY_BYTES)
            .map(|e| Entry { raw_len: le_u32(e, 0), codec: e[4], stored_len: le_u32(e, 5), crc: le_u32(e, 9) })
            .collect();
        check_layout(length, entries.iter().map(|e| e.raw_len)).map_err(bad)?;
        let mut offsets = Vec::with_capacity(count);
        let mut at = data_start;
        for (i, e) in entries.iter().enumerate() {
            if !stored_len_fits(e.codec, e.raw_len, e.stored_len) {
                return Err(bad(format!("block {i}: codec {} with {} stored bytes", e.codec, e.stored_len)));
            }
            offsets.push(at);
            at += u64::from(e.stored_len);
        }
        if at != file_len {
            return Err(bad(format!("file has {file_len} bytes, the block table says {at}")));
        }
        Ok(Layout { entries, offsets, end: file_len })
    }

    /// Number of blocks.
    pub fn block_count(&self) -> usize {
        self.entries.len()
    }

    /// Blocks `[first, first+count)` as stored; blocks past the end are
    /// left out. One read covers them all (they lie back to back), and the
    /// blocks share its buffer. Their crcs are *not* checked here: the
    /// reader does that once, with [`block::verify`] or [`block::decode`].
    pub fn read_blocks(&self, file: &File, first: u32, count: u32) -> Result<Vec<EncodedBlock>, ReplicaError> {
        let first = first as usize;
        let end = first.saturating_add(count as usize).min(self.entries.len());
        if first >= end {
            return Ok(Vec::new());
        }
        let start = self.offsets[first];
        let stop = self.offsets.get(end).copied().unwrap_or(self.end);
        let mut buf = vec![0u8; (stop - start) as usize];
        file.read_exact_at(&mut buf, start)?;
        let buf = bytes::Bytes::from(buf);
        let mut out = Vec::with_capacity(end - first);
        for i in first..end {
            let e = self.entries[i];
            let at = (self.offsets[i] - start) as usize;
            let data = buf.slice(at..at + e.stored_len as usize);
            let b = EncodedBlock { raw_len: e.raw_len, codec: e.codec, crc: e.crc, data };
            // The table has no crc of its own: a flipped codec byte would
            // pass the block crc, so check zstd blocks start as frames.
            if b.codec == Codec::Zstd as u8 && !b.data.starts_with(&ZSTD_MAGIC) {
                return Err(ReplicaError::Corrupt(format!("block {i} is not a zstd frame")));
            }
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{self, BlockEncoder};
    use std::io::Write;

    fn replica(chunk: u64, version: u64, data: &[u8], level: i8) -> (tempfile::NamedTempFile, Vec<EncodedBlock>) {
        let blocks = BlockEncoder::new(level).encode_all(data);
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&encode_head(ChunkId(chunk), Version(version), data.len() as u32, &blocks)).expect("write");
        for b in &blocks {
            f.write_all(&b.data).expect("write");
        }
        (f, blocks)
    }

    fn text(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"stripefs replica "[i % 17]).collect()
    }

    #[test]
    fn written_replicas_read_back_block_by_block_and_in_runs() {
        let data = text(5 * BLOCK_SIZE + 123);
        let (f, blocks) = replica(7, 9, &data, 1);
        let layout = Layout::read(f.as_file(), ChunkId(7), Version(9)).expect("layout");
        assert_eq!(layout.block_count(), 6);
        assert_eq!(layout.read_blocks(f.as_file(), 0, 100).expect("all"), blocks);
        assert_eq!(layout.read_blocks(f.as_file(), 4, 1).expect("one"), blocks[4..5]);
        assert!(layout.read_blocks(f.as_file(), 6, 3).expect("past the end").is_empty());
        let decoded: Vec<u8> = layout
            .read_blocks(f.as_file(), 2, 4)
            .expect("run")
            .iter()
            .flat_map(|b| block::decode(b).expect("decode").to_vec())
            .collect();
        assert_eq!(decoded, data[2 * BLOCK_SIZE..]);
    }

    #[test]
    fn a_replica_of_another_version_is_refused() {
        let (f, _) = replica(7, 9, &text(1000), 1);
        let e = Layout::read(f.as_file(), ChunkId(7), Version(10)).expect_err("other version");
        assert!(matches!(e, ReplicaError::Corrupt(ref s) if s.contains("7/9")), "{e}");
    }

    #[test]
    fn flipped_bytes_are_caught() {
        let data = text(3 * BLOCK_SIZE);
        let (f, _) = replica(1, 1, &data, 0);
        let len = f.as_file().metadata().expect("stat").len();
        // A byte of the last block's data.
        f.as_file().write_all_at(b"X", len - 10).expect("flip");
        let layout = Layout::read(f.as_file(), ChunkId(1), Version(1)).expect("layout");
        let blocks = layout.read_blocks(f.as_file(), 0, 3).expect("read");
        assert!(blocks[..2].iter().all(|b| block::verify(b).is_ok()), "the first blocks are intact");
        assert_eq!(block::verify(&blocks[2]), Err(crate::FsError::Corrupt));
        // A byte of the header.
        f.as_file().write_all_at(b"\xff", 14).expect("flip");
        assert!(matches!(Layout::read(f.as_file(), ChunkId(1), Version(1)), Err(ReplicaError::Corrupt(_))));
    }

    #[test]
    fn a_truncated_replica_is_corrupt() {
        let (f, _) = replica(1, 1, &text(2 * BLOCK_SIZE), 0);
        let len = f.as_file().metadata().expect("stat").len();
        f.as_file().set_len(len - 1).expect("truncate");
        assert!(matches!(Layout::read(f.as_file(), ChunkId(1), Version(1)), Err(ReplicaError::Corrupt(_))));
    }

    #[test]
    fn long_block_tables_are_read_whole() {
        // 200 blocks: the table does not fit the first read.
        let data = text(200 * BLOCK_SIZE);
        let (f, blocks) = replica(3, 4, &data, 0);
        let layout = Layout::read(f.as_file(), ChunkId(3), Version(4)).expect("layout");
        assert_eq!(layout.block_count(), 200);
        assert_eq!(layout.read_blocks(f.as_file(), 150, 50).expect("tail"), blocks[150..]);
    }
}
