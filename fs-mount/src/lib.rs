//! The stripefs FUSE client: [`fuse_adapter::StripeFs`] is the thin fuser
//! layer over [`stripefs_client::FsCore`]; [`mount`] sets a mount up,
//! records it for admin commands and unmounts it.

pub mod fuse_adapter;
pub mod metrics;
pub mod mount;

pub use crate::mount::BackgroundMount;
