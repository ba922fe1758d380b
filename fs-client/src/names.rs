//! Recent directory listings, so that lookups of names that exist need no
//! round trip to the master.
//!
//! A `stat` of every file of a directory (`ls -l` without readdirplus,
//! `find -newer`, Spark listing its shuffle files, the bench's cold stats)
//! costs one LOOKUP round trip per name. Once a directory has seen
//! [`LIST_AFTER`] lookups of existing names within one cache period, the
//! client fetches its whole listing (with attributes, as readdirplus does)
//! and answers further lookups in it from memory; an `opendir` fills the
//! same cache for free.
//!
//! What an answer may miss is bounded like the kernel's own caches: a
//! listing serves for `min(entry_ttl, attr_ttl)` from the moment its fetch
//! began, and the kernel is told to keep what it gets only for what is
//! left of that. This client's own changes are applied to its listings
//! (or make the entries they touch unusable), so it always sees them.
//!
//! Only names that exist are answered here. A name missing from a listing
//! is still asked of the master: another client may have created it since,
//! and close-to-open (create and close on one host, open on another) must
//! find it at once.

use lru::LruCache;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use stripefs_proto::types::{Attr, DirEntry};
use stripefs_proto::InodeId;

/// Lookups of existing names in one directory, within one cache period,
/// after which its listing is fetched.
pub const LIST_AFTER: u32 = 16;
/// Largest directory whose listing is kept (entries); bigger ones are
/// looked up name by name.
pub const MAX_LISTED: usize = 65_536;
/// Directories whose listings are kept at once.
const MAX_DIRS: usize = 64;
/// Inodes remembered as changed by this client before old ones are pruned.
const MAX_CHANGED: usize = 65_536;

/// What [`Listings::lookup`] knows of a name.
#[derive(Debug, Clone, PartialEq)]
pub enum Known {
    /// The name exists: its attributes, and how much longer the kernel may
    /// keep them.
    Found(Attr, Duration),
    /// Ask the master.
    Ask,
}

#[derive(Debug)]
enum State {
    /// Counting lookups of existing names since `since`.
    Counting { since: Instant, hits: u32 },
    /// A fetch is running.
    Fetching,
    /// The listing, fetched from `at`.
    Listed { at: Instant, entries: HashMap<String, Attr> },
    /// Too big to keep, until `until`.
    TooBig { until: Instant },
}

#[derive(Debug)]
struct Inner {
    dirs: LruCache<InodeId, State>,
    /// When this client last changed each inode (attributes, or entries of
    /// a directory): listings fetched before that cannot answer for it.
    changed: HashMap<InodeId, Instant>,
}

/// The listings of one mount.
#[derive(Debug)]
pub struct Listings {
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl Listings {
    /// Listings served for `ttl` (zero turns them off).
    pub fn new(ttl: Duration) -> Listings {
        Listings {
            ttl,
            inner: Mutex::new(Inner {
                dirs: LruCache::new(NonZeroUsize::new(MAX_DIRS).expect("nonzero")),
                changed: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the listing of `dir` says of `name`.
    pub fn lookup(&self, dir: InodeId, name: &str) -> Known {
        if self.ttl.is_zero() {
            return Known::Ask;
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(State::Listed { at, entries }) = inner.dirs.get(&dir) else { return Known::Ask };
        let age = at.elapsed();
        if age >= self.ttl {
            inner.dirs.pop(&dir);
            return Known::Ask;
        }
        let Some(attr) = entries.get(name) else { return Known::Ask };
        match inner.changed.get(&attr.ino) {
            Some(t) if t >= at => Known::Ask,
            _ => Known::Found(attr.clone(), self.ttl - age),
        }
    }

    /// Counts a lookup of an existing name in `dir` that went to the
    /// master; true when the caller should now fetch the listing (it then
    /// calls [`Listings::store`] or [`Listings::fetch_failed`]).
    pub fn begin_fetch(&self, dir: InodeId) -> bool {
        if self.ttl.is_zero() {
            return false;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        let state = inner.dirs.get_or_insert_mut(dir, || State::Counting { since: now, hits: 0 });
        match state {
            State::Counting { since, hits } => {
                if since.elapsed() >= self.ttl {
                    *since = now;
                    *hits = 0;
                }
                *hits += 1;
                if *hits >= LIST_AFTER {
                    *state = State::Fetching;
                    return true;
                }
                false
            }
            State::Listed { at, .. } if at.elapsed() >= self.ttl => {
                *state = State::Counting { since: now, hits: 1 };
                false
            }
            State::TooBig { until } if *until <= now => {
                *state = State::Counting { since: now, hits: 1 };
                false
            }
            _ => false,
        }
    }

    /// Keeps the listing of `dir` whose fetch began at `at`. It is dropped
    /// if this client changed `dir` meanwhile (the listing may predate the
    /// change), and refused if `entries` is `None` (too many of them).
    pub fn store(&self, dir: InodeId, at: Instant, entries: Option<&[DirEntry]>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        if inner.changed.get(&dir).is_some_and(|t| *t >= at) {
            inner.dirs.pop(&dir);
            return;
        }
        let state = match entries {
            Some(e) if e.len() <= MAX_LISTED => {
                State::Listed { at, entries: e.iter().map(|e| (e.name.clone(), e.attr.clone())).collect() }
            }
            _ => State::TooBig { until: Instant::now() + self.ttl },
        };
        inner.dirs.put(dir, state);
    }

    /// The fetch [`Listings::begin_fetch`] asked for failed.
    pub fn fetch_failed(&self, dir: InodeId) {
        let mut inner = self.lock();
        if matches!(inner.dirs.peek(&dir), Some(State::Fetching)) {
            inner.dirs.pop(&dir);
        }
    }

    /// This client changed `ino`'s attributes (or, for a directory, its
    /// entries, as a whole).
    pub fn changed(&self, ino: InodeId) {
        if self.ttl.is_zero() {
            return;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.changed.len() >= MAX_CHANGED {
            // Listings older than the ttl serve nothing: older marks neither.
            let ttl = self.ttl;
            inner.changed.retain(|_, t| now.duration_since(*t) < ttl);
        }
        inner.changed.insert(ino, now);
    }

    /// This client added `name` to `dir`: it is `attr`.
    pub fn added(&self, dir: InodeId, name: &str, attr: &Attr) {
        self.changed(dir);
        if let Some(State::Listed { entries, .. }) = self.lock().dirs.peek_mut(&dir) {
            entries.insert(name.to_string(), attr.clone());
        }
    }

    /// This client removed (or renamed away) `name` from `dir`; the inode
    /// it named, if listed, is marked changed (its link count or ctime
    /// moved).
    pub fn removed(&self, dir: InodeId, name: &str) {
        let gone = match self.lock().dirs.peek_mut(&dir) {
            Some(State::Listed { entries, .. }) => entries.remove(name).map(|a| a.ino),
            _ => None,
        };
        self.changed(dir);
        if let Some(ino) = gone {
            self.changed(ino);
        }
    }

    /// Forgets every listing (a request to drop the client's caches).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.dirs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stripefs_proto::types::{FileKind, Policy, Timestamp};

    fn attr(ino: u64) -> Attr {
        Attr {
            ino: InodeId(ino),
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: ino,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
            rdev: 0,
            policy: Policy::default(),
            allocated_bytes: 0,
            class: Default::default(),
            home: None,
        }
    }

    fn entry(name: &str, ino: u64) -> DirEntry {
        DirEntry { name: name.into(), attr: attr(ino) }
    }

    const DIR: InodeId = InodeId(7);

    fn listed(l: &Listings) -> Instant {
        let at = Instant::now();
        l.store(DIR, at, Some(&[entry("a", 10), entry("b", 11)]));
        at
    }

    #[test]
    fn a_listing_is_fetched_after_enough_lookups_and_then_answers() {
        let l = Listings::new(Duration::from_secs(60));
        for _ in 1..LIST_AFTER {
            assert!(!l.begin_fetch(DIR));
        }
        assert!(l.begin_fetch(DIR), "the {LIST_AFTER}th lookup asks for the listing");
        assert!(!l.begin_fetch(DIR), "only one fetch at a time");
        assert_eq!(l.lookup(DIR, "a"), Known::Ask, "nothing listed while fetching");
        listed(&l);
        match l.lookup(DIR, "a") {
            Known::Found(a, ttl) => {
                assert_eq!(a.ino, InodeId(10));
                assert!(ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(50), "{ttl:?}");
            }
            other => panic!("{other:?}"),
        }
        // A missing name is never answered: someone else may have made it.
        assert_eq!(l.lookup(DIR, "zz"), Known::Ask);
        assert_eq!(l.lookup(InodeId(8), "a"), Known::Ask);
    }

    #[test]
    fn listings_expire_after_the_ttl() {
        let l = Listings::new(Duration::from_millis(30));
        listed(&l);
        assert!(matches!(l.lookup(DIR, "a"), Known::Found(..)));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(l.lookup(DIR, "a"), Known::Ask);
    }

    #[test]
    fn this_clients_changes_are_never_hidden() {
        let l = Listings::new(Duration::from_secs(60));
        listed(&l);
        l.removed(DIR, "a");
        assert_eq!(l.lookup(DIR, "a"), Known::Ask, "removed names go to the master");
        l.added(DIR, "c", &attr(12));
        assert!(matches!(l.lookup(DIR, "c"), Known::Found(a, _) if a.ino == InodeId(12)));
        l.changed(InodeId(11));
        assert_eq!(l.lookup(DIR, "b"), Known::Ask, "an inode changed here after the listing");
    }

    #[test]
    fn a_listing_fetched_across_a_change_of_the_directory_is_dropped() {
        let l = Listings::new(Duration::from_secs(60));
        let at = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        l.changed(DIR);
        l.store(DIR, at, Some(&[entry("a", 10)]));
        assert_eq!(l.lookup(DIR, "a"), Known::Ask);
    }

    #[test]
    fn too_big_directories_are_left_alone_for_a_while() {
        let l = Listings::new(Duration::from_millis(30));
        for _ in 0..LIST_AFTER {
            l.begin_fetch(DIR);
        }
        l.store(DIR, Instant::now(), None);
        for _ in 0..LIST_AFTER * 2 {
            assert!(!l.begin_fetch(DIR));
        }
        std::thread::sleep(Duration::from_millis(40));
        let asked = (0..LIST_AFTER).filter(|_| l.begin_fetch(DIR)).count();
        assert_eq!(asked, 1, "asked again after the ttl");
    }

    #[test]
    fn a_zero_ttl_turns_listings_off() {
        let l = Listings::new(Duration::ZERO);
        assert!(!(0..LIST_AFTER * 2).any(|_| l.begin_fetch(DIR)));
        listed(&l);
        assert_eq!(l.lookup(DIR, "a"), Known::Ask);
    }
}
