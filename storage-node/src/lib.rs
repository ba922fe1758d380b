//! The stripefs storage node.
//!
//! A node keeps chunk replicas on its local disk as checksummed blocks
//! ([`ChunkStore`]), serves them over the [`stripefs_proto::NodeService`]
//! RPC interface ([`NodeServer`]), forwards writes down the replication
//! chain chosen by the master, and registers and heartbeats with the
//! master, applying the replica deletions and copy orders (re-replication)
//! it hands back. [`run`] puts it
//! all together; the `stripefs-node` binary is a thin wrapper around it.

mod chunk_store;
mod copier;
mod data_server;
mod direct;
mod fence;
mod fsutil;
mod master_link;
pub mod metrics;
mod node;
mod reports;
mod scratch;
mod scrub;
mod service;
mod write_memory;

pub use chunk_store::{check_layout, ChunkStore, StoreError, MAX_BLOCKS_PER_CHUNK, MAX_CHUNK_BYTES};
pub use direct::AlignedBuf;
pub use fsutil::{disk_space, write_file_atomic, DiskSpace};
pub use master_link::IDENTITY_FILE;
pub use node::{run, Config, DEFAULT_HEARTBEAT_INTERVAL};
pub use service::{NodeServer, FORWARD_TIMEOUT, MAX_CHAIN};
pub use write_memory::DEFAULT_WRITE_MEMORY_BYTES;
