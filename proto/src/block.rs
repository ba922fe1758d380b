//! Chunk data as blocks: 64 KiB of file data, zstd-compressed when that
//! saves space and raw otherwise, each with a crc32 of its stored bytes.
//!
//! The client encodes blocks before upload and decodes (verifying the crc)
//! after download, so every byte is checked end to end; storage nodes
//! verify crcs on receipt and when scrubbing, without decompressing.

use crate::error::FsError;
use crate::types::EncodedBlock;

/// Bytes of file data per block.
pub const BLOCK_SIZE: usize = 64 * 1024;

/// How a block's stored bytes are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is.
    Raw = 0,
    /// One zstd frame.
    Zstd = 1,
}

/// Bytes sampled to estimate whether a block is worth compressing.
const SAMPLE_BYTES: usize = 4096;

/// Shannon entropy (bits per byte) above which a sample is taken to be
/// incompressible: zstd gains nothing measurable on such data.
const INCOMPRESSIBLE_BITS_PER_BYTE: f64 = 7.2;

/// Encodes blocks for one upload, remembering what it learned.
pub struct BlockEncoder {
    level: i32,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Number of zstd attempts made, for tests and metrics.
    pub attempts: u64,
}

impl BlockEncoder {
    /// An encoder that compresses at `level` (0: never compress).
    pub fn new(level: i8) -> BlockEncoder {
        BlockEncoder { level: level.into(), compressor: None, attempts: 0 }
    }

    /// Encodes one block of at most [`BLOCK_SIZE`] bytes.
    pub fn encode(&mut self, raw: &[u8]) -> EncodedBlock {
        self.encode_with(raw, || bytes::Bytes::copy_from_slice(raw))
    }

    /// Encodes one block; `stored` gives the raw bytes when they are kept
    /// uncompressed.
    fn encode_with(&mut self, raw: &[u8], stored: impl FnOnce() -> bytes::Bytes) -> EncodedBlock {
        debug_assert!(raw.len() <= BLOCK_SIZE);
        if self.level > 0 && !looks_incompressible(raw) {
            if let Some(compressed) = self.try_compress(raw) {
                // Keep compression only when it saves at least 1/16.
                if compressed.len() + raw.len() / 16 < raw.len() {
                    return EncodedBlock {
                        raw_len: raw.len() as u32,
                        codec: Codec::Zstd as u8,
                        crc: crc32fast::hash(&compressed),
                        data: compressed.into(),
                    };
                }
            }
        }
        EncodedBlock { raw_len: raw.len() as u32, codec: Codec::Raw as u8, crc: crc32fast::hash(raw), data: stored() }
    }

    fn try_compress(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        self.attempts += 1;
        if self.compressor.is_none() {
            self.compressor = zstd::bulk::Compressor::new(self.level).ok();
        }
        self.compressor.as_mut()?.compress(raw).ok()
    }

    /// Encodes a whole chunk's data into blocks.
    pub fn encode_all(&mut self, data: &[u8]) -> Vec<EncodedBlock> {
        data.chunks(BLOCK_SIZE).map(|b| self.encode(b)).collect()
    }

    /// Encodes a whole chunk's data into blocks; blocks kept uncompressed
    /// share `data` instead of copying it.
    pub fn encode_shared(&mut self, data: &bytes::Bytes) -> Vec<EncodedBlock> {
        (0..data.len())
            .step_by(BLOCK_SIZE)
            .map(|start| {
                let range = start..(start + BLOCK_SIZE).min(data.len());
                self.encode_with(&data[range.clone()], || data.slice(range))
            })
            .collect()
    }
}

/// Whether a sample of `raw` has so little redundancy that zstd cannot win.
/// Costs one pass over at most [`SAMPLE_BYTES`] bytes.
fn looks_incompressible(raw: &[u8]) -> bool {
    if raw.len() < 256 {
        return false;
    }
    // Sample from the middle of the block: headers at the start are often
    // structured even when the payload is not.
    let start = raw.len().saturating_sub(SAMPLE_BYTES) / 2;
    let sample = &raw[start..(start + SAMPLE_BYTES).min(raw.len())];
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    let n = sample.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum();
    // A small sample underestimates entropy; scale the threshold with it.
    let max_bits = n.log2().min(8.0);
    entropy > INCOMPRESSIBLE_BITS_PER_BYTE.min(max_bits - 0.3)
}

/// Checks a block's crc without decoding it.
pub fn verify(block: &EncodedBlock) -> Result<(), FsError> {
    if crc32fast::hash(&block.data) != block.crc {
        return Err(FsError::Corrupt);
    }
    if block.raw_len as usize > BLOCK_SIZE {
        return Err(FsError::Corrupt);
    }
    match block.codec {
        c if c == Codec::Raw as u8 => {
            if block.data.len() != block.raw_len as usize {
                return Err(FsError::Corrupt);
            }
        }
        c if c == Codec::Zstd as u8 => {}
        _ => return Err(FsError::Corrupt),
    }
    Ok(())
}

/// Verifies and decodes a block into its file data (a raw block's data
/// is shared, not copied).
pub fn decode(block: &EncodedBlock) -> Result<bytes::Bytes, FsError> {
    verify(block)?;
    if block.codec == Codec::Raw as u8 {
        return Ok(block.data.clone());
    }
    let out = zstd::bulk::decompress(&block.data, block.raw_len as usize).map_err(|_| FsError::Corrupt)?;
    if out.len() != block.raw_len as usize {
        return Err(FsError::Corrupt);
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn compressible_data_is_compressed_and_round_trips() {
        let raw: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i / 100) as u8).collect();
        let mut enc = BlockEncoder::new(1);
        let b = enc.encode(&raw);
        assert_eq!(b.codec, Codec::Zstd as u8);
        assert!(b.data.len() < raw.len() / 4);
        assert_eq!(decode(&b).expect("decode"), raw);
    }

    #[test]
    fn random_data_is_stored_raw_without_compression_attempts() {
        let mut raw = vec![0u8; 4 * 1024 * 1024];
        rand::rng().fill_bytes(&mut raw);
        let mut enc = BlockEncoder::new(1);
        let blocks = enc.encode_all(&raw);
        assert_eq!(blocks.len(), 64);
        assert!(blocks.iter().all(|b| b.codec == Codec::Raw as u8));
        assert_eq!(enc.attempts, 0, "incompressible blocks must not pay a zstd attempt");
        let back: Vec<u8> = blocks.iter().flat_map(|b| decode(b).expect("decode")).collect();
        assert_eq!(back, raw);
    }

    #[test]
    fn text_is_compressed() {
        let text = "the quick brown fox jumps over the lazy dog 0123456789\n".repeat(2000);
        let mut enc = BlockEncoder::new(1);
        let blocks = enc.encode_all(text.as_bytes());
        assert!(blocks.iter().all(|b| b.codec == Codec::Zstd as u8));
    }

    #[test]
    fn shared_encoding_matches_copying_encoding() {
        let mut raw: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i / 100) as u8).collect();
        raw.extend((0..BLOCK_SIZE + 5000).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]));
        let shared = bytes::Bytes::from(raw.clone());
        for level in [0, 1] {
            let copied = BlockEncoder::new(level).encode_all(&raw);
            assert_eq!(BlockEncoder::new(level).encode_shared(&shared), copied);
        }
        assert!(BlockEncoder::new(0).encode_shared(&bytes::Bytes::new()).is_empty());
    }

    #[test]
    fn level_zero_never_compresses() {
        let raw = vec![7u8; BLOCK_SIZE];
        let mut enc = BlockEncoder::new(0);
        assert_eq!(enc.encode(&raw).codec, Codec::Raw as u8);
        assert_eq!(enc.attempts, 0);
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let raw = vec![42u8; 1000];
        for level in [0, 3] {
            let mut b = BlockEncoder::new(level).encode(&raw);
            let last = b.data.len() - 1;
            let mut damaged = b.data.to_vec();
            damaged[last] ^= 0x40;
            b.data = damaged.into();
            assert_eq!(decode(&b), Err(FsError::Corrupt));
        }
    }
}
