//! Exactly-once mutations: the answers of client requests, remembered in
//! `requests.v1` in the same transaction as the change they answer, so a
//! client that lost an answer (a cut connection, a timeout, a master
//! restart, later a failover) and sends the request again gets the same
//! answer instead of a second application: a retried `create` returns the
//! inode it made, not `EEXIST`; a retried `unlink` succeeds, not `ENOENT`.
//!
//! The table is part of the state a command changes, so the journal's
//! replay (and later the Raft log's) rebuilds it exactly. It stays small:
//! each request tells which of its session's earlier requests are answered
//! (`answered_below`), and those are forgotten then; sessions that end
//! without saying so are forgotten after [`REMEMBER_FOR`]
//! (`Command::ForgetRequests`, sent by a worker of the master). A session's
//! answered requests are forgotten in batches, at every `FORGET_EVERY`th
//! of its requests.

use super::{apply as apply_command, ApplyError, Command, Context, Reply, Tables};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use stripefs_proto::ops::RequestId;
use stripefs_proto::types::Timestamp;
use stripefs_proto::FsError;

/// How long an answer is remembered at most: far longer than any client
/// retries a request (its calls give up after `master_timeout`).
pub const REMEMBER_FOR: Duration = Duration::from_secs(600);

/// Most requests of one session forgotten per command (a client that
/// reports a large gap pays for it over several requests).
const FORGET_PER_REQUEST: usize = 64;

/// A session's answered requests are forgotten at every this many
/// requests, all at once, rather than one at each: a B-tree range scan
/// and delete per mutation cost ~10 % of a sequential `mkdir` here. At
/// most this many answered requests per session wait to be forgotten.
const FORGET_EVERY: u64 = 32;

/// What `requests.v1` stores per request.
#[derive(Serialize, Deserialize)]
struct Remembered {
    /// When it was applied (the command's time).
    at: Timestamp,
    /// Its answer.
    answer: Result<Reply, FsError>,
}

/// Decodes a `requests.v1` value: this format's, or one written before
/// format 5, whose attributes had no class and home (an answer without
/// attributes reads the same in both).
fn decode_remembered(bytes: &[u8]) -> Result<Remembered, FsError> {
    if let Ok(r) = bincode::deserialize::<Remembered>(bytes) {
        return Ok(r);
    }
    let old: legacy::Remembered = bincode::deserialize(bytes).map_err(|_| FsError::Internal)?;
    Ok(old.into())
}

/// The answers `requests.v1` held before format 5.
mod legacy {
    use super::super::Reply as NewReply;
    use serde::Deserialize;
    #[cfg(test)]
    use serde::Serialize;
    use stripefs_proto::types::{DataClass, FileKind, Policy, Timestamp};
    use stripefs_proto::{ChunkId, FsError, InodeId, NodeId, Version};

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    pub(super) struct Remembered {
        at: Timestamp,
        answer: Result<Reply, FsError>,
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    enum Reply {
        Unit,
        Attr(Attr),
        Node(NodeId),
        Deletions(Vec<(ChunkId, Version)>),
        Ids { first: u64, end: u64 },
    }

    #[derive(Deserialize)]
    #[cfg_attr(test, derive(Serialize))]
    struct Attr {
        ino: InodeId,
        kind: FileKind,
        perm: u16,
        nlink: u32,
        uid: u32,
        gid: u32,
        size: u64,
        atime: Timestamp,
        mtime: Timestamp,
        ctime: Timestamp,
        crtime: Timestamp,
        rdev: u32,
        policy: Policy,
        allocated_bytes: u64,
    }

    #[cfg(test)]
    impl Remembered {
        pub(super) fn for_test(at: Timestamp) -> Remembered {
            let attr = Attr {
                ino: InodeId(5),
                kind: FileKind::File,
                perm: 0o644,
                nlink: 1,
                uid: 0,
                gid: 0,
                size: 6,
                atime: at,
                mtime: at,
                ctime: at,
                crtime: at,
                rdev: 0,
                policy: Policy::default(),
                allocated_bytes: 6,
            };
            Remembered { at, answer: Ok(Reply::Attr(attr)) }
        }
    }

    impl From<Remembered> for super::Remembered {
        fn from(r: Remembered) -> super::Remembered {
            let answer = r.answer.map(|reply| match reply {
                Reply::Unit => NewReply::Unit,
                Reply::Node(n) => NewReply::Node(n),
                Reply::Deletions(d) => NewReply::Deletions(d),
                Reply::Ids { first, end } => NewReply::Ids { first, end },
                Reply::Attr(a) => NewReply::Attr(stripefs_proto::types::Attr {
                    ino: a.ino,
                    kind: a.kind,
                    perm: a.perm,
                    nlink: a.nlink,
                    uid: a.uid,
                    gid: a.gid,
                    size: a.size,
                    atime: a.atime,
                    mtime: a.mtime,
                    ctime: a.ctime,
                    crtime: a.crtime,
                    rdev: a.rdev,
                    policy: a.policy,
                    allocated_bytes: a.allocated_bytes,
                    class: DataClass::Replicated,
                    home: None,
                }),
            });
            super::Remembered { at: r.at, answer }
        }
    }
}

/// The time a command carries (the request's), if any.
fn time_of(cmd: &Command) -> Option<Timestamp> {
    use Command as C;
    match cmd {
        C::Mknod { now, .. }
        | C::Mkdir { now, .. }
        | C::Symlink { now, .. }
        | C::Link { now, .. }
        | C::Unlink { now, .. }
        | C::Rmdir { now, .. }
        | C::Rename { now, .. }
        | C::SetAttr { now, .. }
        | C::CommitChunk { now, .. }
        | C::SetXattr { now, .. }
        | C::RemoveXattr { now, .. }
        | C::SetPolicy { now, .. }
        | C::SetClass { now, .. } => Some(*now),
        C::Replayed { cmd, .. } => time_of(cmd),
        _ => None,
    }
}

/// Applies `cmd` as request `id`, once: a request seen before gets its
/// remembered answer and changes nothing.
pub(super) fn apply(
    t: &mut Tables,
    id: RequestId,
    answered_below: u64,
    cmd: &Command,
    ctx: &Context,
) -> Result<Reply, ApplyError> {
    if id.seq.is_multiple_of(FORGET_EVERY) {
        forget_answered(t, id.session, answered_below.min(id.seq))?;
    }
    if let Some(v) = t.requests.get((id.session, id.seq))? {
        let r = decode_remembered(v.value())?;
        tracing::debug!(request = %id, "answered again from the request table");
        return r.answer.map_err(ApplyError::Fs);
    }
    t.session = Some(id.session);
    let applied = apply_command(t, cmd, ctx);
    t.session = None;
    let answer = match applied {
        Ok(r) => Ok(r),
        Err(ApplyError::Fs(e)) => Err(e),
        // The transaction is abandoned: nothing to remember.
        Err(e) => return Err(e),
    };
    let at = time_of(cmd).unwrap_or_default();
    let bytes = bincode::serialize(&Remembered { at, answer: answer.clone() }).map_err(|_| FsError::Internal)?;
    t.requests.insert((id.session, id.seq), bytes.as_slice())?;
    answer.map_err(ApplyError::Fs)
}

/// Forgets the answers of `session`'s requests numbered below `below`.
fn forget_answered(t: &mut Tables, session: u64, below: u64) -> Result<(), ApplyError> {
    let done: Vec<(u64, u64)> = t
        .requests
        .range((session, 0)..(session, below))?
        .take(FORGET_PER_REQUEST)
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for k in done {
        t.requests.remove(k)?;
    }
    Ok(())
}

/// Forgets every answer given before `before`.
pub(super) fn forget_before(t: &mut Tables, before: Timestamp) -> Result<(), ApplyError> {
    let mut old = Vec::new();
    for item in t.requests.iter()? {
        let (k, v) = item?;
        // An unreadable entry is of no use to anyone: forget it too.
        let at = decode_remembered(v.value()).map(|r| r.at).unwrap_or_default();
        if at < before {
            old.push(k.value());
        }
    }
    for k in old {
        t.requests.remove(k)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stripefs_proto::types::{DataClass, FileKind, Policy};
    use stripefs_proto::InodeId;

    /// An answer remembered before format 5 (attributes without class and
    /// home) is still given to a retry after the upgrade.
    #[test]
    fn answers_remembered_before_format_5_decode() {
        let t = Timestamp { secs: 3, nanos: 4 };
        let old = legacy::Remembered::for_test(t);
        let bytes = bincode::serialize(&old).expect("encode");
        let r = decode_remembered(&bytes).expect("decodes");
        assert_eq!(r.at, t);
        match r.answer {
            Ok(Reply::Attr(a)) => {
                assert_eq!((a.ino, a.kind, a.size, a.policy), (InodeId(5), FileKind::File, 6, Policy::default()));
                assert_eq!((a.class, a.home), (DataClass::Replicated, None));
            }
            other => panic!("not an attribute answer: {other:?}"),
        }
        let unit = bincode::serialize(&Remembered { at: t, answer: Ok(Reply::Unit) }).expect("encode");
        assert!(matches!(decode_remembered(&unit).expect("decodes").answer, Ok(Reply::Unit)));
    }
}
