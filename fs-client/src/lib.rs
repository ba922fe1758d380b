//! The stripefs FUSE client.
//!
//! [`core::FsCore`] is the filesystem as async operations over RPC (usable
//! without FUSE); [`fuse_adapter::StripeFs`] is the thin fuser layer on top;
//! [`mount`] sets a mount up and records it for admin commands.

pub mod cache;
pub mod conn;
pub mod core;
mod data;
pub mod error;
pub mod file;
pub mod fuse_adapter;
pub mod local;
pub mod mount;
pub mod names;
pub mod options;

pub use crate::core::{ClientConfig, FsCore};
pub use crate::error::ClientError;
pub use crate::mount::BackgroundMount;
pub use crate::options::{parse_options, MountOptions};
