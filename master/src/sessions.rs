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
//!   another session changed waits until that change is on disk. The
//!   changes still to replay after a crash then touch disjoint inodes per
//!   session, and the order in which sessions replay does not matter.
//! - **A session's answers are forgotten only once durable**: the client
//!   counts a request as answered (`answered_below`) only then, so a
//!   replay of a change that did survive gets its remembered answer.
//!
//! Sessions that never registered (admin commands, older clients) are
//! answered once their change is durable, as before.

use crate::namespace::{ApplyError, Tables};
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
}

macro_rules! touches {
    ($($op:ty => |$o:ident| $v:expr;)*) => {$(
        impl Touches for $op {
            fn touches(&self) -> Vec<InodeId> {
                let $o = self;
                $v
            }
        }
    )*};
}

touches! {
    ops::Mknod => |o| vec![o.parent];
    ops::Mkdir => |o| vec![o.parent];
    ops::Symlink => |o| vec![o.parent];
    ops::Link => |o| vec![o.ino, o.new_parent];
    ops::Unlink => |o| vec![o.parent];
    ops::Rmdir => |o| vec![o.parent];
    ops::Rename => |o| vec![o.parent, o.new_parent];
    ops::SetAttrs => |o| vec![o.ino];
    ops::SetXattr => |o| vec![o.ino];
    ops::RemoveXattr => |o| vec![o.ino];
    ops::SetPolicy => |o| vec![o.ino];
    stripefs_proto::types::ChunkCommit => |o| vec![o.ino];
}

/// The last session to change an inode, and how far that is.
#[derive(Debug, Clone, Copy)]
struct Mark {
    session: u64,
    /// Its changes of the inode being applied now.
    inflight: u32,
    /// Log position of its last applied change of the inode.
    at: u64,
}

/// Which session changed each inode last, while that is not durable.
#[derive(Default)]
pub struct Marks {
    by: Mutex<HashMap<InodeId, Mark>>,
    released: tokio::sync::Notify,
}

/// What keeps a change from building on another session's change that is
/// not durable yet: the position to wait for, or a change in flight.
enum Blocked {
    InFlight,
    Until(u64),
}

impl Marks {
    /// Claims `inodes` for a change of `session`, first waiting until no
    /// other session's change of them is in flight or not yet durable
    /// (`durable_end`: entries below it are on disk; `wait`: waits for an
    /// entry to be on disk).
    pub async fn claim<W, F>(
        self: &Arc<Self>,
        session: u64,
        inodes: Vec<InodeId>,
        durable_end: impl Fn() -> u64,
        wait: W,
    ) -> Claim
    where
        W: Fn(u64) -> F,
        F: std::future::Future<Output = ()>,
    {
        loop {
            let released = self.released.notified();
            let blocked = {
                let mut by = lock(&self.by);
                let end = durable_end();
                let mut blocked = None;
                for ino in &inodes {
                    if let Some(m) = by.get(ino) {
                        if m.session != session {
                            if m.inflight > 0 {
                                blocked = Some(Blocked::InFlight);
                                break;
                            }
                            if m.at >= end {
                                blocked = Some(Blocked::Until(m.at));
                            }
                        }
                    }
                }
                if blocked.is_none() {
                    for ino in &inodes {
                        let m = by.entry(*ino).or_insert(Mark { session, inflight: 0, at: 0 });
                        if m.session != session {
                            *m = Mark { session, inflight: 0, at: 0 };
                        }
                        m.inflight += 1;
                    }
                    if by.len() > 4096 {
                        by.retain(|_, m| m.inflight > 0 || m.at >= end);
                    }
                }
                blocked
            };
            match blocked {
                None => return Claim { marks: self.clone(), session, inodes, done: false },
                Some(Blocked::InFlight) => released.await,
                Some(Blocked::Until(at)) => wait(at).await,
            }
        }
    }

    /// Claims `inodes` for a replayed change of `session` without waiting:
    /// what sessions replay after a crash touches disjoint inodes, and the
    /// replay must land before anyone else's new change.
    pub fn claim_now(self: &Arc<Self>, session: u64, inodes: Vec<InodeId>) -> Claim {
        let mut by = lock(&self.by);
        for ino in &inodes {
            let m = by.entry(*ino).or_insert(Mark { session, inflight: 0, at: 0 });
            if m.session != session {
                *m = Mark { session, inflight: m.inflight, at: 0 };
            }
            m.inflight += 1;
        }
        drop(by);
        Claim { marks: self.clone(), session, inodes, done: false }
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
    /// The change was applied at log position `at` (early: not yet
    /// durable), and created `created` if anything.
    pub fn applied(mut self, at: u64, early: bool, created: Option<InodeId>) {
        let mut by = lock(&self.marks.by);
        for ino in &self.inodes {
            if let Some(m) = by.get_mut(ino) {
                m.inflight = m.inflight.saturating_sub(1);
                if early && m.session == self.session {
                    m.at = m.at.max(at);
                }
            }
        }
        if let (Some(ino), true) = (created, early) {
            let m = by.entry(ino).or_insert(Mark { session: self.session, inflight: 0, at: 0 });
            if m.inflight == 0 {
                *m = Mark { session: self.session, inflight: 0, at: m.at.max(at) };
            }
        }
        drop(by);
        self.done = true;
        self.marks.released.notify_waiters();
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut by = lock(&self.marks.by);
        for ino in &self.inodes {
            if let Some(m) = by.get_mut(ino) {
                m.inflight = m.inflight.saturating_sub(1);
            }
        }
        drop(by);
        self.marks.released.notify_waiters();
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
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn a_change_waits_for_another_sessions_change_to_be_durable() {
        let marks = Arc::new(Marks::default());
        let end = Arc::new(AtomicU64::new(10));
        let notify = Arc::new(tokio::sync::Notify::new());
        let wait = {
            let (end, notify) = (end.clone(), notify.clone());
            move |at: u64| {
                let (end, notify) = (end.clone(), notify.clone());
                async move {
                    loop {
                        let n = notify.notified();
                        if end.load(Ordering::SeqCst) > at {
                            return;
                        }
                        n.await;
                    }
                }
            }
        };
        let dir = InodeId(5);
        // Session 1 changes the directory early, at 12 (not durable: end 10).
        let e = end.clone();
        marks.claim(1, vec![dir], || e.load(Ordering::SeqCst), &wait).await.applied(12, true, Some(InodeId(40)));
        // Session 1 again: no wait (its own changes replay in order).
        let e = end.clone();
        marks.claim(1, vec![dir], || e.load(Ordering::SeqCst), &wait).await.applied(13, true, None);
        // Session 2 on the same directory waits for 13 to be on disk; on
        // another directory it does not.
        let e = end.clone();
        marks.claim(2, vec![InodeId(6)], || e.load(Ordering::SeqCst), &wait).await.applied(14, true, None);
        let (m2, e2, w2) = (marks.clone(), end.clone(), wait.clone());
        let blocked = tokio::spawn(async move {
            m2.claim(2, vec![dir], || e2.load(Ordering::SeqCst), &w2).await.applied(15, true, None);
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "session 2 went ahead of session 1's change that is not durable");
        // The file session 1 created counts too.
        end.store(13, Ordering::SeqCst);
        notify.notify_waiters();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!blocked.is_finished(), "13 is not on disk yet (end 13 means below 13)");
        end.store(14, Ordering::SeqCst);
        notify.notify_waiters();
        tokio::time::timeout(Duration::from_secs(5), blocked).await.expect("released once durable").expect("task");
        let e = end.clone();
        let created = tokio::time::timeout(
            Duration::from_millis(50),
            marks.claim(3, vec![InodeId(40)], || e.load(Ordering::SeqCst), &wait),
        )
        .await;
        assert!(created.is_ok(), "the created inode's change (12) is durable: no wait");
    }

    #[tokio::test]
    async fn a_change_in_flight_holds_other_sessions_back_until_applied() {
        let marks = Arc::new(Marks::default());
        let wait = |_at: u64| async {};
        let claim = marks.claim(1, vec![InodeId(7)], || 100, wait).await;
        let m2 = marks.clone();
        let other = tokio::spawn(async move {
            m2.claim(2, vec![InodeId(7)], || 100, |_at: u64| async {}).await.applied(101, true, None);
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!other.is_finished(), "went ahead of a change in flight");
        // Dropped without being applied (it failed): released too.
        drop(claim);
        tokio::time::timeout(Duration::from_secs(5), other).await.expect("released").expect("task");
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
