//! The memory a node gives to chunk writes in progress.
//!
//! A write over the data path is received whole into a buffer before it
//! goes to disk, so a node serving many writers at once would hold one
//! chunk per writer: enough, on a small VPS, to be killed for memory.
//! Writes therefore take their bytes from one [`WriteMemory`] first. A
//! writer's write waits while the memory is taken, and a write that
//! waited too long is refused with `Unavailable`, which makes the writer
//! place the chunk on other nodes. Writes forwarded along a replication
//! chain never wait: a node waiting on memory while its own writes wait
//! on another node's memory could otherwise block the two forever.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// Default [`WriteMemory`] limit: 64 chunks of the default 4 MiB.
pub const DEFAULT_WRITE_MEMORY_BYTES: u64 = 256 << 20;

/// Bytes of chunk writes in progress, bounded.
#[derive(Debug)]
pub(crate) struct WriteMemory {
    limit: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Bytes taken from a [`WriteMemory`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Grant<'a> {
    memory: &'a WriteMemory,
    bytes: u64,
}

impl WriteMemory {
    /// Memory of `limit` bytes.
    pub(crate) fn new(limit: u64) -> WriteMemory {
        WriteMemory { limit, used: Mutex::new(0), freed: Condvar::new() }
    }

    fn used_guard(&self) -> MutexGuard<'_, u64> {
        // A count cannot be left half-updated: ignore poisoning.
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `bytes`. With `wait`, waits until they fit under the limit or
    /// nothing else is taken (a write larger than the limit runs alone),
    /// and gives up at `until`. Without, takes them at once.
    pub(crate) fn take(&self, bytes: u64, wait: bool, until: Instant) -> Option<Grant<'_>> {
        let mut used = self.used_guard();
        loop {
            if !wait || *used == 0 || used.saturating_add(bytes) <= self.limit {
                *used = used.saturating_add(bytes);
                return Some(Grant { memory: self, bytes });
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            used = self.freed.wait_timeout(used, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Bytes taken now.
    pub(crate) fn used(&self) -> u64 {
        *self.used_guard()
    }

    /// The limit.
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        let mut used = self.memory.used_guard();
        *used = used.saturating_sub(self.bytes);
        drop(used);
        self.memory.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn takes_what_fits_and_gives_it_back() {
        let m = WriteMemory::new(100);
        let a = m.take(60, true, soon(0)).expect("fits");
        let b = m.take(40, true, soon(0)).expect("fits exactly");
        assert_eq!(m.used(), 100);
        assert!(m.take(1, true, soon(20)).is_none(), "full: the wait ends at its deadline");
        drop(a);
        assert_eq!(m.used(), 40);
        drop(b);
        assert_eq!(m.used(), 0);
    }

    #[test]
    fn a_write_larger_than_the_limit_runs_alone() {
        let m = WriteMemory::new(100);
        let big = m.take(500, true, soon(0)).expect("nothing else is taken");
        assert!(m.take(1, true, soon(20)).is_none());
        drop(big);
        assert!(m.take(1, true, soon(0)).is_some());
    }

    #[test]
    fn forwarded_writes_never_wait() {
        let m = WriteMemory::new(100);
        let _a = m.take(100, true, soon(0)).expect("fits");
        let f = m.take(50, false, soon(0)).expect("taken at once");
        assert_eq!(m.used(), 150);
        drop(f);
        assert_eq!(m.used(), 100);
    }

    #[test]
    fn a_waiting_write_goes_on_when_memory_is_given_back() {
        let m = std::sync::Arc::new(WriteMemory::new(100));
        let a = m.take(80, true, soon(0)).expect("fits");
        let waiter = {
            let m = m.clone();
            std::thread::spawn(move || m.take(50, true, soon(10_000)).map(|g| g.bytes))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(m.used(), 80, "the second write waits");
        drop(a);
        assert_eq!(waiter.join().expect("join"), Some(50));
        assert_eq!(m.used(), 0);
    }
}
