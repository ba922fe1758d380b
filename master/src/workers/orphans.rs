//! Orphan purge: a file unlinked while open stays (an orphan) until its
//! last client closes it. When a client's connection is lost instead, or
//! the master restarted with orphans on disk, the client may come back and
//! open the file again, so the orphan is purged only after a grace time,
//! and only if nobody opened it meanwhile (`Command::Purge` checks that).

use crate::namespace::Command;
use crate::state::MasterState;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_daemon::{lock, Step, Worker};
use stripefs_proto::InodeId;

/// Orphans waiting for their grace time to end.
#[derive(Debug, Default)]
pub struct OrphanQueue {
    due: Mutex<Vec<(Instant, InodeId)>>,
    wake: tokio::sync::Notify,
}

impl OrphanQueue {
    /// Purges `ino` after `delay`, unless it is open then.
    pub fn purge_after(&self, ino: InodeId, delay: Duration) {
        lock(&self.due).push((Instant::now() + delay, ino));
        self.wake.notify_one();
    }

    /// Orphans waiting.
    pub fn len(&self) -> usize {
        lock(&self.due).len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take_due(&self, now: Instant) -> Vec<InodeId> {
        let mut due = lock(&self.due);
        let (ready, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|(at, _)| *at <= now);
        *due = later;
        ready.into_iter().map(|(_, ino)| ino).collect()
    }

    fn next_due(&self) -> Option<Instant> {
        lock(&self.due).iter().map(|(at, _)| *at).min()
    }
}

/// The orphan purge worker.
pub struct OrphanPurger {
    state: Arc<MasterState>,
    purged: u64,
}

impl OrphanPurger {
    /// A purger over `state.orphans`.
    pub fn new(state: Arc<MasterState>) -> OrphanPurger {
        OrphanPurger { state, purged: 0 }
    }
}

impl Worker for OrphanPurger {
    fn name(&self) -> String {
        "orphan-purge".into()
    }

    async fn work(&mut self) -> Result<Step, String> {
        for ino in self.state.orphans.take_due(Instant::now()) {
            // Purge checks again that the file is an orphan nobody holds open.
            self.state.store.submit(Command::Purge { ino });
            self.purged += 1;
        }
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        let queue = &self.state.orphans;
        match queue.next_due() {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = queue.wake.notified() => {}
                }
            }
            None => queue.wake.notified().await,
        }
    }

    fn detail(&self) -> String {
        format!("{} orphans waiting for their clients; {} purges submitted", self.state.orphans.len(), self.purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_orphans_past_their_grace_are_due() {
        let q = OrphanQueue::default();
        q.purge_after(InodeId(5), Duration::ZERO);
        q.purge_after(InodeId(6), Duration::from_secs(60));
        assert_eq!(q.take_due(Instant::now()), vec![InodeId(5)]);
        assert_eq!(q.take_due(Instant::now()), vec![]);
        assert_eq!(q.len(), 1);
        assert!(q.next_due().is_some_and(|at| at > Instant::now() + Duration::from_secs(50)));
        assert_eq!(q.take_due(Instant::now() + Duration::from_secs(61)), vec![InodeId(6)]);
        assert!(q.is_empty());
    }
}
