//! What the node tells the master in its next heartbeat besides its space:
//! copies done and failed, corrupt replicas found.

use std::sync::Mutex;
use stripefs_proto::{ChunkId, Version};

/// Outcomes waiting for the next heartbeat.
#[derive(Debug, Default)]
pub(crate) struct Reports(Mutex<Pending>);

/// The lists a heartbeat carries.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pending {
    pub(crate) replicated: Vec<(ChunkId, Version)>,
    pub(crate) failed: Vec<(ChunkId, Version)>,
    pub(crate) corrupt: Vec<(ChunkId, Version)>,
}

impl Reports {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy ordered by the master succeeded.
    pub(crate) fn replicated(&self, key: (ChunkId, Version)) {
        self.lock().replicated.push(key);
    }

    /// A copy ordered by the master failed.
    pub(crate) fn failed(&self, key: (ChunkId, Version)) {
        self.lock().failed.push(key);
    }

    /// A replica here failed its checksum (reported once per replica).
    pub(crate) fn corrupt(&self, key: (ChunkId, Version)) {
        let mut g = self.lock();
        if !g.corrupt.contains(&key) {
            tracing::error!("replica of chunk {} v{} is corrupt; reporting it to the master", key.0, key.1);
            g.corrupt.push(key);
        }
    }

    /// Everything pending, for a heartbeat.
    pub(crate) fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back what a heartbeat that failed carried.
    pub(crate) fn restore(&self, p: Pending) {
        let mut g = self.lock();
        g.replicated.extend(p.replicated);
        g.failed.extend(p.failed);
        g.corrupt.extend(p.corrupt);
    }
}
