//! The stripefs client core: the filesystem as async operations over RPC
//! ([`core::FsCore`]), with its caches, write buffering and connections.
//! No FUSE here: `stripefs-mount` (the `fs-mount/` crate) puts the kernel
//! in front of it, tests drive it directly, and the admin tool reads mount
//! options and records ([`options`], [`records`]) without linking fuser.

pub mod cache;
pub mod conn;
pub mod core;
pub mod error;
pub mod file;
mod file_io;
pub mod leases;
pub mod local_reads;
pub mod names;
pub mod options;
pub mod records;
pub mod scratch;

pub use crate::core::{ClientConfig, FsCore};
pub use crate::error::ClientError;
pub use crate::options::{parse_options, MountOptions};
