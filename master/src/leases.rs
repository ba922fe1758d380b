//! Directory leases: a client that holds one answers lookups of names
//! that are not in the directory without asking the master
//! (docs/ARCHITECTURE.md, "Directory leases").
//!
//! Before every create, mkdir, symlink or rename onto a new name, the
//! kernel looks the name up, and the answer "no such name" costs a round
//! trip to the master. A client that holds the directory's lease knows its
//! complete listing and that nobody else changes it, so it answers that
//! lookup itself. A directory used by one client at a time (Ray's spill
//! directories, Spark's block-manager directories) then costs no lookup
//! round trip at all.
//!
//! The rules, all in master memory (a lease is soft state):
//! - **A change of a directory's names by another session first recalls
//!   its lease** ([`Leases::before_change`]): the master tells the holder
//!   (its lease poll returns), the holder stops answering from it and
//!   gives it back, and only then does the change go ahead; a holder that
//!   does not answer loses the lease when it expires ([`LEASE`]).
//! - **A lease is granted only while no other session's change of the
//!   directory is under way**, and its listing is read after the grant:
//!   every change applied before is in it, every change after waits for
//!   the recall. A directory another session changed within
//!   [`CONTENDED`] is not leased (two clients taking turns would
//!   otherwise pass the lease back and forth at every turn).
//! - **A lease lasts [`LEASE`] from the moment the holder asked** (the
//!   holder counts from when it sent the request, before the master's
//!   clock started), and each poll renews it. A master that starts, or
//!   takes the lead of its group, cannot know which leases an earlier one
//!   granted: it holds every change of names until each client session it
//!   knows has come back to it (a client drops its leases before it talks
//!   to a new master process), or until [`LEASE`] has passed.
//!
//! Reads by others need no recall: the holder sends every change before
//! its system call returns, so the master's listing is always complete.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_daemon::lock;
use stripefs_proto::InodeId;
use tokio::sync::Notify;

/// How long a lease lasts without a renewal.
pub const LEASE: Duration = Duration::from_secs(3);
/// How long a lease poll waits for a recall before it returns (renewing
/// the holder's leases every time it is sent).
pub const POLL_WAIT: Duration = Duration::from_secs(1);
/// A directory whose names another session changed within this is not
/// leased.
pub const CONTENDED: Duration = Duration::from_secs(2);
/// The session named for administrative changes (fsck's repairs).
pub const ADMIN: u64 = 0;
/// Largest directory (names) leased: the grant carries its listing.
pub const MAX_NAMES: usize = 65_536;
/// Directories remembered without a lease or a change under way before
/// the old ones are pruned.
const MAX_IDLE_DIRS: usize = 4096;

/// One lease.
#[derive(Debug)]
struct Held {
    holder: u64,
    id: u64,
    expires: Instant,
    /// Asked back: not renewed any more.
    recalled: bool,
}

/// What the master knows of one directory.
#[derive(Debug, Default)]
struct Dir {
    lease: Option<Held>,
    /// Changes of its names under way, per session.
    changing: Vec<(u64, u32)>,
    /// The last session that changed its names, and when.
    last_change: Option<(u64, Instant)>,
}

impl Dir {
    fn is_idle(&self, now: Instant) -> bool {
        self.lease.as_ref().is_none_or(|h| h.expires <= now)
            && self.changing.is_empty()
            && self.last_change.is_none_or(|(_, at)| now.duration_since(at) >= CONTENDED)
    }
}

/// A holder's leases asked back, until it gives them back.
#[derive(Default)]
struct Holder {
    recalls: Vec<(InodeId, u64)>,
    notify: Arc<Notify>,
}

/// After a master starts or takes the lead: the sessions it waits for
/// (None: unknown, so it waits the whole grace).
struct Grace {
    until: Instant,
    waiting: Option<HashSet<u64>>,
}

#[derive(Default)]
struct Table {
    dirs: HashMap<InodeId, Dir>,
    holders: HashMap<u64, Holder>,
    grace: Option<Grace>,
    /// Size of `dirs` at which idle entries are pruned next.
    prune_at: usize,
}

impl Table {
    /// Whether changes of names wait for the grace (ends it when over).
    fn in_grace(&mut self, now: Instant) -> Option<Instant> {
        let g = self.grace.as_ref()?;
        if now < g.until && g.waiting.as_ref().is_none_or(|w| !w.is_empty()) {
            return Some(g.until);
        }
        self.grace = None;
        None
    }

    /// Forgets idle directories and holders without leases, once the
    /// table has doubled since the last time (so it costs O(1) per entry).
    fn prune(&mut self, now: Instant) {
        if self.dirs.len() <= self.prune_at.max(MAX_IDLE_DIRS) {
            return;
        }
        self.dirs.retain(|_, d| !d.is_idle(now));
        let holding: HashSet<u64> = self.dirs.values().filter_map(|d| d.lease.as_ref().map(|h| h.holder)).collect();
        self.holders.retain(|s, h| holding.contains(s) || !h.recalls.is_empty());
        self.prune_at = 2 * self.dirs.len();
    }

    fn recall(&mut self, dir: InodeId) {
        let Some(Dir { lease: Some(h), .. }) = self.dirs.get_mut(&dir) else { return };
        if h.recalled {
            return;
        }
        h.recalled = true;
        let holder = self.holders.entry(h.holder).or_default();
        holder.recalls.push((dir, h.id));
        holder.notify.notify_one();
    }
}

/// The directory leases of one master process.
pub struct Leases {
    table: Mutex<Table>,
    /// Woken when a lease goes (given back, or dropped) or a session comes
    /// back during the grace.
    released: Notify,
    lease: Duration,
    next_id: AtomicU64,
    /// Leases granted, recalled (counters).
    pub granted: AtomicU64,
    /// Leases recalled for another session's change.
    pub recalls: AtomicU64,
}

/// Why a grant was refused (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Another session holds it, or changes the directory now.
    Busy,
    /// Another session changed the directory within [`CONTENDED`].
    Contended,
    /// The master has just started and waits for its clients.
    Grace,
}

/// A change of names that went past the leases: while it lives, no lease
/// on its directories is granted to another session. Dropped once the
/// change is applied.
pub struct Change {
    leases: Arc<Leases>,
    session: u64,
    dirs: Vec<InodeId>,
}

impl Drop for Change {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut t = lock(&self.leases.table);
        for d in &self.dirs {
            if let Some(dir) = t.dirs.get_mut(d) {
                if let Some(i) = dir.changing.iter().position(|(s, _)| *s == self.session) {
                    dir.changing[i].1 -= 1;
                    if dir.changing[i].1 == 0 {
                        dir.changing.swap_remove(i);
                    }
                }
                dir.last_change = Some((self.session, now));
            }
        }
    }
}

impl Leases {
    /// Leases lasting `lease`.
    pub fn new(lease: Duration) -> Arc<Leases> {
        Arc::new(Leases {
            table: Mutex::default(),
            released: Notify::new(),
            lease,
            // Ids differ between master processes: a release meant for
            // an earlier process's grant never ends one of this process.
            next_id: AtomicU64::new((rand::random::<u64>() >> 2) | 1),
            granted: AtomicU64::new(0),
            recalls: AtomicU64::new(0),
        })
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// This master starts serving (at its start, or on taking the lead):
    /// it forgets every lease and holds changes of names until each of
    /// `sessions` (those it knows; None: unknown) came back, or for one
    /// lease.
    pub fn begin_grace(&self, sessions: Option<HashSet<u64>>) {
        let mut t = lock(&self.table);
        t.dirs.clear();
        t.holders.clear();
        t.grace = Some(Grace { until: Instant::now() + self.lease, waiting: sessions });
        drop(t);
        self.released.notify_waiters();
    }

    /// `session` talks to this master process: it holds no lease of an
    /// earlier one.
    pub fn session_opened(&self, session: u64) {
        let mut t = lock(&self.table);
        if let Some(Grace { waiting: Some(w), .. }) = t.grace.as_mut() {
            if w.remove(&session) && w.is_empty() {
                drop(t);
                self.released.notify_waiters();
            }
        }
    }

    /// `session` ended: it holds nothing.
    pub fn session_closed(&self, session: u64) {
        let mut t = lock(&self.table);
        t.holders.remove(&session);
        for dir in t.dirs.values_mut() {
            if dir.lease.as_ref().is_some_and(|h| h.holder == session) {
                dir.lease = None;
            }
        }
        if let Some(Grace { waiting: Some(w), .. }) = t.grace.as_mut() {
            w.remove(&session);
        }
        drop(t);
        self.released.notify_waiters();
    }

    /// Waits until `session` may change the names in `dirs`: every lease
    /// another session holds on them is recalled and given back (or has
    /// expired), and, with `grace`, the grace after this master's start
    /// is over. Keep the answer until the change is applied.
    pub async fn before_change(self: &Arc<Self>, session: u64, dirs: Vec<InodeId>, grace: bool) -> Change {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let wait_until = {
                let mut t = lock(&self.table);
                let now = Instant::now();
                match t.in_grace(now).filter(|_| grace) {
                    Some(until) => until,
                    None => match self.recall_for(&mut t, session, &dirs, now) {
                        Some(until) => until,
                        None => {
                            for d in &dirs {
                                let dir = t.dirs.entry(*d).or_default();
                                match dir.changing.iter_mut().find(|(s, _)| *s == session) {
                                    Some((_, n)) => *n += 1,
                                    None => dir.changing.push((session, 1)),
                                }
                            }
                            t.prune(now);
                            return Change { leases: self.clone(), session, dirs };
                        }
                    },
                }
            };
            let _ = tokio::time::timeout_at(wait_until.into(), released).await;
        }
    }

    /// Recalls the live leases others hold on `dirs`; the latest expiry
    /// among them (None: nothing to wait for).
    fn recall_for(&self, t: &mut Table, session: u64, dirs: &[InodeId], now: Instant) -> Option<Instant> {
        let mut wait: Option<Instant> = None;
        for d in dirs {
            let Some(dir) = t.dirs.get_mut(d) else { continue };
            let Some(h) = &dir.lease else { continue };
            if h.holder == session {
                continue;
            }
            if h.expires <= now {
                tracing::debug!("the lease on directory {d} of session {:x} expired unanswered", h.holder);
                dir.lease = None;
                continue;
            }
            let expires = h.expires;
            if !h.recalled {
                self.recalls.fetch_add(1, Ordering::Relaxed);
            }
            t.recall(*d);
            wait = Some(wait.map_or(expires, |w| w.max(expires)));
        }
        wait
    }

    /// Grants `session` a lease on `dir` (the caller then reads its
    /// listing and sends it), or says why not.
    pub fn grant(&self, session: u64, dir: InodeId) -> Result<u64, Refused> {
        let mut t = lock(&self.table);
        let now = Instant::now();
        if t.in_grace(now).is_some() {
            return Err(Refused::Grace);
        }
        t.prune(now);
        let d = t.dirs.entry(dir).or_default();
        if let Some(h) = &mut d.lease {
            if h.holder == session && !h.recalled {
                // A new id: a release of the old one the holder may have
                // queued does not end this grant.
                h.id = self.next_id.fetch_add(1, Ordering::Relaxed);
                h.expires = now + self.lease;
                return Ok(h.id);
            }
            if h.expires > now {
                return Err(Refused::Busy);
            }
            d.lease = None;
        }
        if d.changing.iter().any(|(s, _)| *s != session) {
            return Err(Refused::Busy);
        }
        if d.last_change.is_some_and(|(s, at)| s != session && now.duration_since(at) < CONTENDED) {
            return Err(Refused::Contended);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        d.lease = Some(Held { holder: session, id, expires: now + self.lease, recalled: false });
        t.holders.entry(session).or_default();
        self.granted.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// Gives back lease `id` on `dir` of `session` (too big to send, or
    /// released by its holder).
    pub fn give_back(&self, session: u64, dir: InodeId, id: u64) {
        let mut t = lock(&self.table);
        Self::release(&mut t, session, dir, id);
        drop(t);
        self.released.notify_waiters();
    }

    fn release(t: &mut Table, session: u64, dir: InodeId, id: u64) {
        if let Some(d) = t.dirs.get_mut(&dir) {
            if d.lease.as_ref().is_some_and(|h| h.holder == session && h.id == id) {
                d.lease = None;
            }
        }
        if let Some(h) = t.holders.get_mut(&session) {
            h.recalls.retain(|r| *r != (dir, id));
        }
    }

    /// A holder's poll: gives back `released`, renews `held`, and waits up
    /// to `wait` for a recall. Returns the leases asked back and those of
    /// `held` it no longer holds.
    pub async fn poll(
        &self,
        session: u64,
        held: &[(InodeId, u64)],
        released: &[(InodeId, u64)],
        wait: Duration,
    ) -> (Vec<(InodeId, u64)>, Vec<(InodeId, u64)>) {
        let (lost, now_recalled, notify) = {
            let mut t = lock(&self.table);
            let now = Instant::now();
            for (dir, id) in released {
                Self::release(&mut t, session, *dir, *id);
            }
            let mut lost = Vec::new();
            for (dir, id) in held {
                match t.dirs.get_mut(dir).and_then(|d| d.lease.as_mut()) {
                    Some(h) if h.holder == session && h.id == *id && h.expires > now => {
                        if !h.recalled {
                            h.expires = now + self.lease;
                        }
                    }
                    _ => lost.push((*dir, *id)),
                }
            }
            let holder = t.holders.entry(session).or_default();
            let now_recalled = (!holder.recalls.is_empty() || wait.is_zero()).then(|| holder.recalls.clone());
            (lost, now_recalled, holder.notify.clone())
        };
        if !released.is_empty() {
            self.released.notify_waiters();
        }
        if let Some(recalled) = now_recalled {
            return (recalled, lost);
        }
        let _ = tokio::time::timeout(wait, notify.notified()).await;
        let mut t = lock(&self.table);
        let recalls = t.holders.get(&session).map(|h| h.recalls.clone()).unwrap_or_default();
        if recalls.is_empty() && !t.dirs.values().any(|d| d.lease.as_ref().is_some_and(|h| h.holder == session)) {
            t.holders.remove(&session);
        }
        (recalls, lost)
    }

    /// Leases held now.
    pub fn count(&self) -> usize {
        lock(&self.table).dirs.values().filter(|d| d.lease.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: InodeId = InodeId(5);
    const A: u64 = 0xa;
    const B: u64 = 0xb;

    fn leases() -> Arc<Leases> {
        Leases::new(Duration::from_millis(400))
    }

    #[tokio::test]
    async fn a_change_by_another_session_waits_for_the_holder_to_give_the_lease_back() {
        let l = leases();
        let id = l.grant(A, D).expect("granted");
        // The holder's own changes go ahead.
        drop(l.before_change(A, vec![D], true).await);
        let (l2, started) = (l.clone(), Instant::now());
        let other = tokio::spawn(async move {
            let c = l2.before_change(B, vec![D], true).await;
            (started.elapsed(), c)
        });
        let (recalled, lost) = l.poll(A, &[(D, id)], &[], Duration::from_secs(5)).await;
        assert_eq!((recalled, lost), (vec![(D, id)], vec![]));
        assert!(!other.is_finished(), "the change waits for the lease to come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!other.is_finished());
        let (recalled, lost) = l.poll(A, &[], &[(D, id)], Duration::ZERO).await;
        assert_eq!((recalled, lost), (vec![], vec![]));
        let (waited, _change) = other.await.expect("change");
        assert!(waited < Duration::from_millis(300), "went ahead once given back: {waited:?}");
        assert_eq!(l.count(), 0);
        assert_eq!(l.recalls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_holder_that_does_not_answer_loses_the_lease_when_it_expires() {
        let l = leases();
        l.grant(A, D).expect("granted");
        let started = Instant::now();
        drop(l.before_change(B, vec![D], true).await);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(390), "waited for the expiry: {waited:?}");
        assert_eq!(l.count(), 0);
    }

    #[tokio::test]
    async fn polls_renew_leases_and_report_those_lost() {
        let l = leases();
        let id = l.grant(A, D).expect("granted");
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let (recalled, lost) = l.poll(A, &[(D, id)], &[], Duration::ZERO).await;
            assert!(recalled.is_empty() && lost.is_empty());
        }
        assert_eq!(l.grant(B, D), Err(Refused::Busy), "still held after more than one lease");
        let (_, lost) = l.poll(A, &[(D, id + 1), (InodeId(9), 3)], &[], Duration::ZERO).await;
        assert_eq!(lost, vec![(D, id + 1), (InodeId(9), 3)]);
    }

    #[tokio::test]
    async fn no_grant_while_another_sessions_change_is_under_way_or_just_done() {
        let l = leases();
        let change = l.before_change(B, vec![D], true).await;
        assert_eq!(l.grant(A, D), Err(Refused::Busy));
        drop(change);
        assert_eq!(l.grant(A, D), Err(Refused::Contended));
        // B's own changes do not stop B.
        let id = l.grant(B, D).expect("granted");
        let again = l.grant(B, D).expect("asking again renews the lease");
        assert_ne!(again, id, "under a new id");
        // A release of the old id (queued by the holder before it asked
        // again) does not end the renewed lease.
        l.poll(B, &[], &[(D, id)], Duration::ZERO).await;
        assert_eq!(l.count(), 1);
        assert_eq!(l.grant(A, D), Err(Refused::Busy));
    }

    #[tokio::test]
    async fn a_new_master_holds_changes_until_its_sessions_come_back() {
        let l = leases();
        l.begin_grace(Some([A, B].into()));
        assert_eq!(l.grant(A, D), Err(Refused::Grace));
        let l2 = l.clone();
        let change = tokio::spawn(async move { drop(l2.before_change(A, vec![D], true).await) });
        tokio::time::sleep(Duration::from_millis(30)).await;
        l.session_opened(A);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!change.is_finished(), "B has not come back");
        l.session_opened(B);
        tokio::time::timeout(Duration::from_millis(200), change).await.expect("went ahead").expect("task");
        // A session that never comes back holds changes for one lease;
        // so do sessions that could not be listed.
        for waiting in [Some([A].into()), None] {
            l.begin_grace(waiting);
            let started = Instant::now();
            drop(l.before_change(B, vec![D], true).await);
            assert!(started.elapsed() >= Duration::from_millis(390));
        }
        // A replay does not wait for the grace (it re-does a change made
        // before this process started).
        l.begin_grace(None);
        let started = Instant::now();
        drop(l.before_change(B, vec![D], false).await);
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_closed_session_gives_back_everything() {
        let l = leases();
        l.grant(A, D).expect("granted");
        l.grant(A, InodeId(6)).expect("granted");
        l.session_closed(A);
        assert_eq!(l.count(), 0);
        let started = Instant::now();
        drop(l.before_change(B, vec![D, InodeId(6)], true).await);
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
