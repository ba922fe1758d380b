//! An LRU cache of decoded blocks, keyed by (chunk, version, block): a new
//! version never hits an old entry, so the cache needs no invalidation.

use bytes::Bytes;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use stripefs_proto::block::BLOCK_SIZE;
use stripefs_proto::{ChunkId, Version};

type Key = (ChunkId, Version, u32);

/// Decoded blocks shared by every open file of a mount.
pub struct BlockCache(Mutex<LruCache<Key, Bytes>>, Stats);

/// Lookups that found their block, and those that did not.
#[derive(Debug, Default)]
struct Stats {
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl BlockCache {
    /// A cache holding about `bytes` of block data.
    pub fn new(bytes: u64) -> BlockCache {
        let blocks = (bytes / BLOCK_SIZE as u64).max(16) as usize;
        BlockCache(Mutex::new(LruCache::new(NonZeroUsize::new(blocks).expect("at least 16"))), Stats::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Key, Bytes>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cached block.
    pub fn get(&self, chunk: ChunkId, version: Version, block: u32) -> Option<Bytes> {
        let got = self.lock().get(&(chunk, version, block)).cloned();
        let counter = if got.is_some() { &self.1.hits } else { &self.1.misses };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        got
    }

    /// Lookups that found their block, and lookups that did not, so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.1.hits.load(std::sync::atomic::Ordering::Relaxed),
            self.1.misses.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Whether a block is cached (without touching its recency).
    pub fn contains(&self, chunk: ChunkId, version: Version, block: u32) -> bool {
        self.lock().contains(&(chunk, version, block))
    }

    /// Caches a block.
    pub fn put(&self, chunk: ChunkId, version: Version, block: u32, data: Bytes) {
        self.lock().put((chunk, version, block), data);
    }

    /// Forgets every block.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Number of cached blocks.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no block is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
