//! The master's background work, each a [`stripefs_daemon::Worker`]
//! started by [`start`] and listed by `stripefs status`:
//!
//! - [`rereplication`]: chunks with fewer live replicas than wanted are
//!   copied to another node (the word "repair" is kept for `fsck --repair`);
//! - [`gc`]: garbage collection of replicas nobody references, from the
//!   nodes' inventories;
//! - [`orphans`]: files unlinked while open whose clients went away are
//!   purged after a grace time;
//! - [`requests`]: the remembered answers of client sessions that went
//!   away are forgotten;
//! - [`scratch`]: scratch files of a node gone for good are removed when
//!   their class asks for it.

pub mod gc;
pub mod orphans;
pub mod requests;
pub mod rereplication;
pub mod scratch;

use crate::state::MasterState;
use std::sync::Arc;

/// Starts every worker of the master on `state.workers`.
pub fn start(state: &Arc<MasterState>) {
    state.workers.spawn(rereplication::Rereplicator::new(state.clone()));
    state.workers.spawn(gc::GarbageCollector::new(state.clone()));
    state.workers.spawn(orphans::OrphanPurger::new(state.clone()));
    state.workers.spawn(requests::RequestExpiry::new(state.clone()));
    state.workers.spawn(scratch::ScratchReaper::new(state.clone()));
}
