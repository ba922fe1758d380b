//! The directory leases this client holds: lookups of names that are not
//! in a leased directory are answered here, without a round trip to the
//! master (docs/ARCHITECTURE.md, "Directory leases"; the master's side is
//! `stripefs_master::leases`).
//!
//! A directory is asked for after [`ASK_AFTER`] lookups of missing names
//! in it went to the master within [`COUNT_PERIOD`] (the kernel looks up
//! every name before creating it). The grant carries the directory's
//! names; this client's own changes keep them true, and nobody else
//! changes them without the master recalling the lease first.
//!
//! A lease serves only while it is surely valid: until its length
//! (minus a margin for clocks) after the moment this client *sent* the
//! request that granted or last renewed it, so whatever the master's
//! clock says, the master never thinks it expired earlier. A recall, a
//! failed poll or a new master process drops it at once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use stripefs_daemon::lock;
use stripefs_proto::InodeId;

/// Lookups of missing names in one directory, within [`COUNT_PERIOD`],
/// after which its lease is asked for.
pub const ASK_AFTER: u32 = 3;
/// See [`ASK_AFTER`].
pub const COUNT_PERIOD: Duration = Duration::from_secs(2);
/// After a refusal, how long before the directory is asked for again.
pub const REFUSED_FOR: Duration = Duration::from_secs(2);
/// Leases held at once; the least recently used goes back beyond that.
pub const MAX_LEASES: usize = 64;
/// Part of a lease's length this client counts on (the rest covers a
/// master clock running faster than this host's).
const TRUST: f64 = 0.8;

#[derive(Debug)]
enum State {
    /// Counting lookups of missing names since `since`.
    Counting { since: Instant, misses: u32 },
    /// Asked (request sent at `sent`); `disturbed` once a change of this
    /// client in the directory ended meanwhile (its effect may be missing
    /// from the names the master sends: the grant is then given back).
    Asking { sent: Instant, disturbed: bool },
    /// Held.
    Held { id: u64, names: HashSet<String>, lease: Duration, valid_until: Instant, used: Instant },
    /// Refused until then.
    Refused { until: Instant },
}

#[derive(Debug, Default)]
struct Inner {
    dirs: HashMap<InodeId, State>,
    /// Size of `dirs` at which old entries are pruned next.
    prune_at: usize,
    /// Grants recalled before their answer arrived.
    recalled_early: HashSet<u64>,
    /// Leases to name as given back in the next poll.
    released: Vec<(InodeId, u64)>,
    /// Lookups answered from leases.
    answered: u64,
}

/// What [`DirLeases::polled`] and friends decided.
#[derive(Debug, Default, PartialEq)]
pub struct PollArgs {
    /// Leases to renew.
    pub held: Vec<(InodeId, u64)>,
    /// Leases to give back.
    pub released: Vec<(InodeId, u64)>,
}

impl PollArgs {
    /// Nothing to poll for.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.released.is_empty()
    }
}

/// The leases of one client.
#[derive(Debug)]
pub struct DirLeases {
    enabled: bool,
    inner: Mutex<Inner>,
}

/// How a change of this client in a directory ended, for the names there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The name now exists (made, or found to exist already).
    Exists,
    /// The name no longer exists (removed, renamed away, or not there).
    Gone,
    /// Unknown (the call failed without an answer): the lease goes.
    Unknown,
}

impl DirLeases {
    /// Leases on (`enabled`) or off.
    pub fn new(enabled: bool) -> DirLeases {
        DirLeases { enabled, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Whether `name` is surely not in `dir` (a lease held says so).
    pub fn absent(&self, dir: InodeId, name: &str) -> bool {
        let mut inner = self.lock();
        let answered = match inner.dirs.get_mut(&dir) {
            Some(State::Held { names, valid_until, used, .. }) => {
                let now = Instant::now();
                if now >= *valid_until {
                    return false;
                }
                *used = now;
                !names.contains(name)
            }
            _ => false,
        };
        if answered {
            inner.answered += 1;
        }
        answered
    }

    /// A lookup of a missing name in `dir` went to the master: true when
    /// the caller should now ask for its lease (it is then marked as
    /// asked for, so only one ask per directory is under way).
    pub fn missed(&self, dir: InodeId) -> bool {
        if !self.enabled {
            return false;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        let state = inner.dirs.entry(dir).or_insert(State::Counting { since: now, misses: 0 });
        let ask = match state {
            State::Counting { since, misses } => {
                if now.duration_since(*since) >= COUNT_PERIOD {
                    *since = now;
                    *misses = 0;
                }
                *misses += 1;
                *misses >= ASK_AFTER
            }
            State::Refused { until } if *until <= now => {
                *state = State::Counting { since: now, misses: 1 };
                false
            }
            // A held lease that expired unrenewed: ask again (the master
            // renews it under a new id).
            State::Held { valid_until, .. } if *valid_until <= now => true,
            _ => false,
        };
        if ask {
            let old = inner.dirs.insert(dir, State::Asking { sent: now, disturbed: false });
            if let Some(State::Held { id, .. }) = old {
                inner.released.push((dir, id));
            }
        }
        self.bound(&mut inner);
        ask
    }

    /// A change of this client to `name` in `dir` is about to be sent: a
    /// lease held counts the name as maybe there until the change ends
    /// (so no lookup finds it missing while another client may already
    /// see it), and a grant under way is given back.
    pub fn before(&self, dir: InodeId, name: &str) {
        if !self.enabled {
            return;
        }
        match self.lock().dirs.get_mut(&dir) {
            Some(State::Held { names, .. }) => {
                names.insert(name.to_string());
            }
            Some(State::Asking { disturbed, .. }) => *disturbed = true,
            _ => {}
        }
    }

    /// The master granted lease `id` on `dir` with its `names`, lasting
    /// `lease`. False if this client gives it back at once (a change of
    /// it ended meanwhile, or it was recalled already).
    pub fn granted(&self, dir: InodeId, id: u64, names: Vec<String>, lease: Duration) -> bool {
        let mut inner = self.lock();
        let recalled = inner.recalled_early.remove(&id);
        let keep = match inner.dirs.get(&dir) {
            Some(State::Asking { sent, disturbed: false }) if !recalled => Some(*sent),
            _ => None,
        };
        match keep {
            Some(sent) => {
                let valid_until = sent + lease.mul_f64(TRUST);
                let names = names.into_iter().collect();
                inner.dirs.insert(dir, State::Held { id, names, lease, valid_until, used: Instant::now() });
                true
            }
            None => {
                inner.released.push((dir, id));
                if matches!(inner.dirs.get(&dir), Some(State::Asking { .. })) {
                    inner.dirs.insert(dir, State::Refused { until: Instant::now() + REFUSED_FOR });
                }
                false
            }
        }
    }

    /// The master refused `dir`'s lease, or the ask failed.
    pub fn refused(&self, dir: InodeId) {
        let mut inner = self.lock();
        if matches!(inner.dirs.get(&dir), Some(State::Asking { .. })) {
            inner.dirs.insert(dir, State::Refused { until: Instant::now() + REFUSED_FOR });
        }
    }

    /// A change of this client to `name` in `dir` ended so.
    pub fn changed(&self, dir: InodeId, name: &str, outcome: Outcome) {
        if !self.enabled {
            return;
        }
        let mut inner = self.lock();
        let inner = &mut *inner;
        match inner.dirs.get_mut(&dir) {
            Some(State::Held { id, names, .. }) => match outcome {
                Outcome::Exists => {
                    names.insert(name.to_string());
                }
                Outcome::Gone => {
                    names.remove(name);
                }
                Outcome::Unknown => {
                    inner.released.push((dir, *id));
                    inner.dirs.remove(&dir);
                }
            },
            Some(State::Asking { disturbed, .. }) => *disturbed = true,
            _ => {}
        }
    }

    /// What the next poll sends: the leases held, and those given back
    /// (never one held: a release ends it at the master).
    pub fn poll_args(&self) -> PollArgs {
        let mut inner = self.lock();
        let held: Vec<(InodeId, u64)> = inner
            .dirs
            .iter()
            .filter_map(|(d, s)| match s {
                State::Held { id, .. } => Some((*d, *id)),
                _ => None,
            })
            .collect();
        let mut released = std::mem::take(&mut inner.released);
        released.retain(|r| !held.contains(r));
        PollArgs { held, released }
    }

    /// A poll failed: what it gave back is given back by the next one.
    pub fn poll_failed(&self, args: PollArgs) {
        self.lock().released.extend(args.released);
    }

    /// Whether a poll should be under way (leases held, asked for or to
    /// give back).
    pub fn wants_poll(&self) -> bool {
        let inner = self.lock();
        !inner.released.is_empty()
            || inner.dirs.values().any(|s| matches!(s, State::Held { .. } | State::Asking { .. }))
    }

    /// The master answered the poll of `args` sent at `sent`: the leases
    /// it renewed serve on, those `recalled` or `lost` go (and the
    /// recalled are given back in the next poll).
    pub fn polled(&self, args: &PollArgs, sent: Instant, recalled: &[(InodeId, u64)], lost: &[(InodeId, u64)]) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let gone: HashSet<(InodeId, u64)> = recalled.iter().chain(lost).copied().collect();
        for (dir, id) in recalled {
            match inner.dirs.get(dir) {
                Some(State::Held { id: held, .. }) if held == id => {
                    inner.dirs.remove(dir);
                }
                // Granted, but the answer is not here yet.
                Some(State::Asking { .. }) => {
                    inner.recalled_early.insert(*id);
                }
                _ => {}
            }
            inner.released.push((*dir, *id));
        }
        for (dir, id) in lost {
            if matches!(inner.dirs.get(dir), Some(State::Held { id: held, .. }) if held == id) {
                inner.dirs.remove(dir);
            }
        }
        for (dir, id) in &args.held {
            if gone.contains(&(*dir, *id)) {
                continue;
            }
            if let Some(State::Held { id: held, lease, valid_until, .. }) = inner.dirs.get_mut(dir) {
                if held == id {
                    *valid_until = (*valid_until).max(sent + lease.mul_f64(TRUST));
                }
            }
        }
        // Forgotten only while no grant is on its way.
        if inner.recalled_early.len() > 1024 && !inner.dirs.values().any(|s| matches!(s, State::Asking { .. })) {
            inner.recalled_early.clear();
        }
    }

    /// Drops every lease (a failed poll, a new master process).
    pub fn drop_all(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let released = &mut inner.released;
        inner.dirs.retain(|dir, s| match s {
            State::Held { id, .. } => {
                // The same master process may still hold it.
                released.push((*dir, *id));
                false
            }
            State::Asking { disturbed, .. } => {
                *disturbed = true;
                true
            }
            _ => true,
        });
    }

    /// Leases held now.
    pub fn held(&self) -> usize {
        self.lock().dirs.values().filter(|s| matches!(s, State::Held { .. })).count()
    }

    /// Lookups answered from leases so far.
    pub fn answered(&self) -> u64 {
        self.lock().answered
    }

    /// Keeps at most [`MAX_LEASES`] leases, and forgets old counts once
    /// the table has doubled since the last time.
    fn bound(&self, inner: &mut Inner) {
        let now = Instant::now();
        if inner.dirs.len() > inner.prune_at.max(4 * MAX_LEASES) {
            inner.dirs.retain(|_, s| match s {
                State::Counting { since, .. } => now.duration_since(*since) < COUNT_PERIOD,
                State::Refused { until } => *until > now,
                _ => true,
            });
            inner.prune_at = 2 * inner.dirs.len();
        }
        let mut held: Vec<(Instant, InodeId, u64)> = inner
            .dirs
            .iter()
            .filter_map(|(d, s)| match s {
                State::Held { id, used, .. } => Some((*used, *d, *id)),
                _ => None,
            })
            .collect();
        if held.len() > MAX_LEASES {
            held.sort();
            for (_, dir, id) in &held[..held.len() - MAX_LEASES] {
                inner.dirs.remove(dir);
                inner.released.push((*dir, *id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: InodeId = InodeId(4);
    const LEASE: Duration = Duration::from_secs(3);

    fn held(l: &DirLeases) -> u64 {
        for _ in 1..ASK_AFTER {
            assert!(!l.missed(D));
        }
        assert!(l.missed(D), "asks after {ASK_AFTER} misses");
        assert!(!l.missed(D), "one ask at a time");
        assert!(l.granted(D, 7, vec!["a".into(), "b".into()], LEASE));
        7
    }

    #[test]
    fn a_held_lease_answers_missing_names_and_knows_this_clients_changes() {
        let l = DirLeases::new(true);
        assert!(!l.absent(D, "x"), "nothing held yet");
        held(&l);
        assert!(l.absent(D, "x"));
        assert!(!l.absent(D, "a"), "a listed name is not absent");
        assert!(!l.absent(InodeId(5), "x"), "another directory");
        l.changed(D, "x", Outcome::Exists);
        assert!(!l.absent(D, "x"), "made here");
        l.changed(D, "a", Outcome::Gone);
        assert!(l.absent(D, "a"), "removed here");
        assert_eq!(l.answered(), 2);
        l.changed(D, "y", Outcome::Unknown);
        assert!(!l.absent(D, "zz"), "an unknown outcome drops the lease");
        assert_eq!(l.poll_args().released, vec![(D, 7)]);
    }

    #[test]
    fn a_grant_across_a_change_of_this_client_is_given_back() {
        let l = DirLeases::new(true);
        for (started, ended) in [(true, false), (false, true)] {
            asked(&l);
            if started {
                l.before(D, "x");
            }
            if ended {
                l.changed(D, "x", Outcome::Exists);
            }
            assert!(!l.granted(D, 7, vec![], LEASE));
            assert!(!l.absent(D, "y"));
            assert_eq!(l.poll_args(), PollArgs { held: vec![], released: vec![(D, 7)] });
        }
    }

    /// Asks for D's lease (as after enough misses).
    fn asked(l: &DirLeases) {
        l.lock().dirs.remove(&D);
        while !l.missed(D) {}
    }

    #[test]
    fn a_name_being_made_here_is_never_found_missing() {
        let l = DirLeases::new(true);
        held(&l);
        l.before(D, "x");
        assert!(!l.absent(D, "x"), "maybe there already (another client may see it)");
        l.changed(D, "x", Outcome::Exists);
        assert!(!l.absent(D, "x"));
    }

    #[test]
    fn a_held_lease_is_never_given_back_and_a_failed_poll_keeps_what_it_gave_back() {
        let l = DirLeases::new(true);
        held(&l);
        l.lock().released.extend([(D, 7), (D, 3)]);
        let args = l.poll_args();
        assert_eq!(args, PollArgs { held: vec![(D, 7)], released: vec![(D, 3)] });
        l.poll_failed(args);
        assert_eq!(l.poll_args().released, vec![(D, 3)]);
    }

    #[test]
    fn a_recall_drops_the_lease_and_gives_it_back_even_before_the_grant_arrives() {
        let l = DirLeases::new(true);
        let id = held(&l);
        let args = l.poll_args();
        assert_eq!(args.held, vec![(D, id)]);
        l.polled(&args, Instant::now(), &[(D, id)], &[]);
        assert!(!l.absent(D, "x"));
        assert_eq!(l.poll_args().released, vec![(D, id)]);
        // Recalled while the grant's answer is on its way.
        asked(&l);
        l.polled(&PollArgs::default(), Instant::now(), &[(D, 9)], &[]);
        assert!(!l.granted(D, 9, vec![], LEASE));
        assert!(!l.absent(D, "x"));
        assert_eq!(l.poll_args().released, vec![(D, 9), (D, 9)]);
    }

    #[test]
    fn a_lease_serves_only_while_surely_valid_and_polls_renew_it() {
        let l = DirLeases::new(true);
        let short = Duration::from_millis(100);
        asked(&l);
        assert!(l.granted(D, 7, vec![], short));
        assert!(l.absent(D, "x"));
        std::thread::sleep(short.mul_f64(TRUST));
        assert!(!l.absent(D, "x"), "expired");
        let sent = Instant::now();
        l.polled(&PollArgs { held: vec![(D, 7)], released: vec![] }, sent, &[], &[]);
        assert!(l.absent(D, "x"), "renewed from the poll's sending");
        l.polled(&PollArgs { held: vec![(D, 7)], released: vec![] }, sent, &[], &[(D, 7)]);
        assert!(!l.absent(D, "x"), "lost");
    }

    #[test]
    fn drop_all_forgets_every_lease_and_any_grant_under_way() {
        let l = DirLeases::new(true);
        held(&l);
        while !l.missed(InodeId(5)) {}
        l.drop_all();
        assert!(!l.absent(D, "x"));
        assert!(!l.granted(InodeId(5), 8, vec![], LEASE));
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn turned_off_it_never_asks() {
        let l = DirLeases::new(false);
        assert!(!(0..ASK_AFTER * 2).any(|_| l.missed(D)));
    }
}
