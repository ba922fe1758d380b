//! What the node tells the master in its next heartbeat besides its space:
//! copies done and failed, corrupt replicas found.

use std::collections::HashSet;
use std::sync::Mutex;
use stripefs_proto::{ChunkId, Version};

/// Outcomes waiting for the next heartbeat.
#[derive(Debug, Default)]
pub(crate) struct Reports(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    pending: Pending,
    /// Every replica found corrupt and not deleted since: reported again
    /// to a master that may have forgotten them (a restart).
    known_corrupt: HashSet<(ChunkId, Version)>,
}

/// The lists a heartbeat carries.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pending {
    pub(crate) replicated: Vec<(ChunkId, Version)>,
    pub(crate) failed: Vec<(ChunkId, Version)>,
    pub(crate) corrupt: Vec<(ChunkId, Version)>,
}

impl Reports {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy ordered by the master succeeded.
    pub(crate) fn replicated(&self, key: (ChunkId, Version)) {
        self.lock().pending.replicated.push(key);
    }

    /// A copy ordered by the master failed.
    pub(crate) fn failed(&self, key: (ChunkId, Version)) {
        self.lock().pending.failed.push(key);
    }

    /// A replica here failed its checksum (reported once per replica, and
    /// again after each registration until it is deleted).
    pub(crate) fn corrupt(&self, key: (ChunkId, Version)) {
        let mut g = self.lock();
        if g.known_corrupt.insert(key) {
            tracing::error!("replica of chunk {} v{} is corrupt; reporting it to the master", key.0, key.1);
            g.pending.corrupt.push(key);
        }
    }

    /// A replica was deleted: a good copy may take its name later.
    pub(crate) fn deleted(&self, key: (ChunkId, Version)) {
        self.lock().known_corrupt.remove(&key);
    }

    /// Queues every known corrupt replica for the next heartbeat (after a
    /// registration: the master may have restarted and forgotten them).
    pub(crate) fn report_known_again(&self) {
        let mut g = self.lock();
        let known: Vec<_> = g.known_corrupt.iter().copied().filter(|k| !g.pending.corrupt.contains(k)).collect();
        g.pending.corrupt.extend(known);
    }

    /// Everything pending, for a heartbeat.
    pub(crate) fn take(&self) -> Pending {
        std::mem::take(&mut self.lock().pending)
    }

    /// Puts back what a heartbeat that failed carried.
    pub(crate) fn restore(&self, p: Pending) {
        let g = &mut self.lock().pending;
        g.replicated.extend(p.replicated);
        g.failed.extend(p.failed);
        g.corrupt.extend(p.corrupt);
    }
}
