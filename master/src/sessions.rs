//! Early answers and client replay (docs/SEMANTICS.md, "Durability").
//!
//! A master alone in its group answers a change of a registered client
//! session as soon as it is applied, while its log entry is being flushed
//! (see [`crate::raft::log`]). Every answer says where the change stands
//! ([`stripefs_proto::ops::Durability`]); the client keeps the changes not
//! yet durable and, when it meets another master process, sends them again
//! (a *replay*, in the order the master applied them). A replayed create
//! takes back its inode number ([`crate::namespace::Command::Replayed`]).
//!
//! Three rules make replays land where the lost changes were:
//! - **Sessions are registered durably** (`sessions.v1`): a master that
//!   starts after a crash knows whom to wait for. Until every registered
//!   session has replayed, or the replay window ends, it serves nothing
//!   else (CephFS's reconnect and client-replay phases). A session that
//!   does not come back in time is forgotten, with a log line: its client
//!   died with the master, and its changes that were not durable are lost,
//!   as a local filesystem loses its last changes in a power cut.
//! - **No early answer builds on another session's change that is not
//!   durable** ([`Marks`]): a change that touches an inode or directory
//!   another session changed, while that change may not be on disk, is
//!   answered only once it is on disk itself (the log is flushed in
//!   order, so the other change is then too). The changes still to replay
//!   after a crash then touch disjoint inodes per session, and the order
//!   in which sessions replay does not matter. Nothing waits before it is
//!   proposed: concurrent changes still share their flushes.
//! - **A session's answers are forgotten only once durable**: the client
//!   counts a request as answered (`answered_below`) only then, so a
//!   replay of a change that did survive gets its remembered answer.
//!
//! Sessions that never registered (admin commands, older clients) are
//! answered once their change is durable, as before.

use crate::namespace::{ApplyError, Tables};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stripefs_daemon::lock;
use stripefs_proto::ops;
use stripefs_proto::types::Timestamp;
use stripefs_proto::InodeId;

/// How long a master restarted after a crash waits for its clients to
/// replay, unless told otherwise (`--replay-window-secs`).
pub const REPLAY_WINDOW: Duration = Duration::from_secs(10);

/// What `sessions.v1` stores per session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The client's host.
    pub host: String,
    /// When it registered.
    pub opened: Timestamp,
}

/// Applies [`crate::namespace::Command::OpenSession`].
pub(crate) fn open(t: &mut Tables, session: u64, host: &str, now: Timestamp) -> Result<(), ApplyError> {
    let rec = SessionRecord { host: host.to_string(), opened: now };
    let bytes = bincode::serialize(&rec).map_err(|_| stripefs_proto::FsError::Internal)?;
    t.sessions.insert(session, bytes.as_slice())?;
    Ok(())
}

/// The host of a registered session (None: not registered).
pub(crate) fn host_of(t: &Tables, session: u64) -> Result<Option<String>, ApplyError> {
    let Some(v) = t.sessions.get(session)? else { return Ok(None) };
    let rec: SessionRecord = bincode::deserialize(v.value()).map_err(|_| stripefs_proto::FsError::Internal)?;
    Ok(Some(rec.host))
}

/// Applies [`crate::namespace::Command::CloseSession`].
pub(crate) fn close(t: &mut Tables, session: u64) -> Result<(), ApplyError> {
    t.sessions.remove(session)?;
    Ok(())
}

/// The inodes a client's change depends on and changes (directories for
/// names, the inode for attributes). A change of a name depends on its
/// directory only: whatever another session did to the inode behind it,
/// removing or renaming the name ends the same.
pub trait Touches {
    /// Those inodes.
    fn touches(&self) -> Vec<InodeId>;
    /// The directories whose names it changes (see [`crate::leases`]).
    fn names(&self) -> Vec<InodeId> {
        Vec::new()
    }
}

macro_rules! touches {
    ($($op:ty => |$o:ident| $v:expr $(, names $n:expr)?;)*) => {$(
        impl Touches for $op {
            fn touches(&self) -> Vec<InodeId> {
                let $o = self;
                $v
            }
            $(fn names(&self) -> Vec<InodeId> {
                let $o = self;
                $n
            })?
        }
    )*};
}

touches! {
    ops::Mknod => |o| vec![o.parent], names vec![o.parent];
    ops::Mkdir => |o| vec![o.parent], names vec![o.parent];
    ops::Symlink => |o| vec![o.parent], names vec![o.parent];
    ops::Link => |o| vec![o.ino, o.new_parent], names vec![o.new_parent];
    ops::Unlink => |o| vec![o.parent], names vec![o.parent];
    ops::Rmdir => |o| vec![o.parent], names vec![o.parent];
    ops::Rename => |o| vec![o.parent, o.new_parent], names {
        let mut d = vec![o.parent];
        if o.new_parent != o.parent {
            d.push(o.new_parent);
        }
        d
    };
    ops::SetAttrs => |o| vec![o.ino];
    ops::SetXattr => |o| vec![o.ino];
    ops::RemoveXattr => |o| vec![o.ino];
    ops::SetPolicy => |o| vec![o.ino];
    ops::SetClass => |o| vec![o.ino];
    stripefs_proto::types::ChunkCommit => |o| vec![o.ino];
}

/// The last change of an inode, and the changes of it being applied now.
#[derive(Debug, Default)]
struct Mark {
    /// Session of the last change applied.
    session: u64,
    /// Its log position.
    at: u64,
    /// Changes being applied now, per session.
    inflight: Vec<(u64, u32)>,
}

/// Which session changed each inode last, while that may not be durable.
#[derive(Default)]
pub struct Marks {
    by: Mutex<HashMap<InodeId, Mark>>,
}

impl Marks {
    /// Claims `inodes` for a change of `session`. Also says whether the
    /// change builds on another session's change that may not be durable
    /// (applied at or after `durable_end`, below which the log is on disk,
    /// or still being applied): such a change must be answered only once
    /// durable itself, which makes the other durable too (the log is
    /// flushed in order). It never waits here: concurrent changes still
    /// share their flushes.
    pub fn claim(self: &Arc<Self>, session: u64, inodes: Vec<InodeId>, durable_end: u64) -> (Claim, bool) {
        let mut by = lock(&self.by);
        let mut builds_on_others = false;
        for ino in &inodes {
            let m = by.entry(*ino).or_insert_with(|| Mark { session, ..Mark::default() });
            if m.inflight.iter().any(|(s, n)| *s != session && *n > 0) || (m.session != session && m.at >= durable_end)
            {
                builds_on_others = true;
            }
            match m.inflight.iter_mut().find(|(s, _)| *s == session) {
                Some((_, n)) => *n += 1,
                None => m.inflight.push((session, 1)),
            }
        }
        if by.len() > 4096 {
            by.retain(|_, m| !m.inflight.is_empty() || m.at >= durable_end);
        }
        drop(by);
        (Claim { marks: self.clone(), session, inodes, done: false }, builds_on_others)
    }

    fn release(&self, session: u64, inodes: &[InodeId], applied_at: Option<(u64, Option<InodeId>)>) {
        let mut by = lock(&self.by);
        for ino in inodes {
            if let Some(m) = by.get_mut(ino) {
                if let Some(i) = m.inflight.iter().position(|(s, _)| *s == session) {
                    m.inflight[i].1 -= 1;
                    if m.inflight[i].1 == 0 {
                        m.inflight.swap_remove(i);
                    }
                }
                if let Some((at, _)) = applied_at {
                    if at >= m.at {
                        m.session = session;
                        m.at = at;
                    }
                }
            }
        }
        if let Some((at, Some(created))) = applied_at {
            let m = by.entry(created).or_default();
            if at >= m.at {
                m.session = session;
                m.at = at;
            }
        }
    }
}

/// Inodes claimed for one change (see [`Marks::claim`]).
pub struct Claim {
    marks: Arc<Marks>,
    session: u64,
    inodes: Vec<InodeId>,
    done: bool,
}

impl Claim {
    /// The change was applied at log position `at`, and created `created`
    /// if anything.
    pub fn applied(mut self, at: u64, created: Option<InodeId>) {
        self.marks.release(self.session, &self.inodes, Some((at, created)));
        self.done = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            self.marks.release(self.session, &self.inodes, None);
        }
    }
}

/// The sessions a master restarted after a crash waits for.
struct Phase {
    /// Session → its host, until it has replayed.
    waiting: HashMap<u64, String>,
}

/// The client sessions of this master process.
pub struct Sessions {
    /// This master process (random): clients replay what another process
    /// answered.
    pub incarnation: u64,
    registered: Mutex<HashSet<u64>>,
    phase: Mutex<Option<Phase>>,
    /// True once no replay is awaited.
    serving: tokio::sync::watch::Sender<bool>,
    /// Who changed what last (see [`Marks`]).
    pub marks: Arc<Marks>,
    started: Instant,
}

impl Sessions {
    /// The sessions of a master that waits for `waiting` (session → host)
    /// to replay (none: it serves at once).
    pub fn new(waiting: HashMap<u64, String>) -> Sessions {
        let serving = waiting.is_empty();
        if !serving {
            tracing::warn!(
                "the master stopped without flushing its log: waiting for {} client session(s) to replay \
                 the changes they hold before serving",
                waiting.len()
            );
        }
        Sessions {
            incarnation: rand::random::<u64>() | 1,
            registered: Mutex::new(HashSet::new()),
            phase: Mutex::new((!serving).then_some(Phase { waiting })),
            serving: tokio::sync::watch::Sender::new(serving),
            marks: Arc::default(),
            started: Instant::now(),
        }
    }

    /// Whether `session` registered with this process.
    pub fn is_registered(&self, session: u64) -> bool {
        lock(&self.registered).contains(&session)
    }

    /// Records that `session` registered; whether this process waits for
    /// its replay.
    pub fn register(&self, session: u64) -> bool {
        lock(&self.registered).insert(session);
        lock(&self.phase).as_ref().is_some_and(|p| p.waiting.contains_key(&session))
    }

    /// How many sessions this process still waits for.
    pub fn awaiting(&self) -> usize {
        lock(&self.phase).as_ref().map_or(0, |p| p.waiting.len())
    }

    /// Whether `session` is one this process waits for.
    pub fn is_replaying(&self, session: u64) -> bool {
        lock(&self.phase).as_ref().is_some_and(|p| p.waiting.contains_key(&session))
    }

    /// `session` replayed everything it held.
    pub fn replayed(&self, session: u64) {
        let mut phase = lock(&self.phase);
        if let Some(p) = phase.as_mut() {
            if let Some(host) = p.waiting.remove(&session) {
                tracing::info!("client session {session:x} on {host} replayed its changes");
            }
            if p.waiting.is_empty() {
                *phase = None;
                tracing::info!(
                    "every client session replayed ({:.1?} after the start): serving",
                    self.started.elapsed()
                );
                self.serving.send_replace(true);
            }
        }
    }

    /// Ends the replay window: returns the sessions that did not come back
    /// (to forget), and serves. A session that registered and is still
    /// replaying is alive: it is not forgotten (its last replays may come
    /// after others' new changes, and it is told so in the log).
    pub fn end_window(&self) -> Vec<(u64, String)> {
        let waiting: Vec<(u64, String)> = match lock(&self.phase).take() {
            Some(p) => p.waiting.into_iter().collect(),
            None => Vec::new(),
        };
        let registered = lock(&self.registered).clone();
        let (slow, gone): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(s, _)| registered.contains(s));
        for (session, host) in &slow {
            tracing::warn!(
                "client session {session:x} on {host} had not finished replaying when the replay window ended; \
                 serving the others"
            );
        }
        for (session, host) in &gone {
            tracing::warn!(
                "client session {session:x} on {host} did not come back within the replay window: \
                 the changes it made in the last moments before the master stopped, if any, are lost"
            );
        }
        self.serving.send_replace(true);
        gone
    }

    /// Waits until no replay is awaited.
    pub async fn serving(&self) {
        let mut rx = self.serving.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Whether no replay is awaited.
    pub fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_on_another_sessions_change_not_yet_durable_is_answered_once_durable() {
        let marks = Arc::new(Marks::default());
        let dir = InodeId(5);
        // Session 1 changes the directory early, at 12 (not durable: the
        // log is on disk below 10), and creates inode 40.
        let (c, builds) = marks.claim(1, vec![dir], 10);
        assert!(!builds);
        c.applied(12, Some(InodeId(40)));
        // Session 1 again: its own changes replay in order.
        let (c, builds) = marks.claim(1, vec![dir], 10);
        assert!(!builds, "a session's own change never holds it back");
        c.applied(13, None);
        // Session 2: another directory is free, this one is not.
        assert!(!marks.claim(2, vec![InodeId(6)], 10).1);
        assert!(marks.claim(2, vec![dir], 13).1, "13 is not on disk below 13");
        assert!(marks.claim(2, vec![InodeId(40)], 12).1, "nor is the file session 1 created at 12");
        assert!(!marks.claim(2, vec![dir], 14).1, "all of session 1's changes are durable below 14");
        // Once session 2 changed the directory (answered durably), session
        // 1 building on that change is held back in turn.
        let (c, _) = marks.claim(2, vec![dir], 14);
        c.applied(20, None);
        assert!(marks.claim(1, vec![dir], 14).1);
    }

    #[test]
    fn a_change_in_flight_counts_until_applied_or_dropped() {
        let marks = Arc::new(Marks::default());
        let (claim, _) = marks.claim(1, vec![InodeId(7)], 100);
        assert!(marks.claim(2, vec![InodeId(7)], 100).1, "a change in flight may land anywhere");
        // Dropped without being applied (it failed): nothing left of it.
        drop(claim);
        assert!(!marks.claim(3, vec![InodeId(7)], 100).1);
    }

    #[test]
    fn the_window_ends_when_every_session_replayed() {
        let s = Sessions::new(HashMap::from([(1, "a".to_string()), (2, "b".to_string())]));
        assert!(!s.is_serving());
        assert!(s.register(1), "session 1 is awaited");
        assert!(!s.register(3), "a new session is not");
        s.replayed(1);
        assert!(!s.is_serving());
        s.replayed(2);
        assert!(s.is_serving());
        let s = Sessions::new(HashMap::from([(1, "a".to_string()), (2, "b".to_string())]));
        s.register(2);
        assert_eq!(s.end_window(), vec![(1, "a".to_string())], "session 2 came back: not forgotten");
        assert!(s.is_serving());
    }
}
