//! Tests of the log and the state machine: openraft's own storage suite,
//! then what a crash and a long-running group do to the files.

use super::*;
use crate::raft::state_machine::StateMachine;
use crate::raft::Proposal;
use crate::store::Gate;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use redb::Database;
use stripefs_proto::InodeId;
use tempfile::TempDir;

/// A log and a state machine over a new database, in a temp dir.
struct Builder;

fn new_db(dir: &Path) -> Arc<Database> {
    let db = Database::create(dir.join("t.redb")).expect("create the database");
    let txn = db.begin_write().expect("write");
    {
        let mut t = crate::namespace::Tables::open(&txn).expect("tables");
        for (k, v) in [(crate::tables::meta_keys::NEXT_INODE, 2u64), (crate::tables::meta_keys::INODE_COUNT, 1)] {
            t.meta.insert(k, v.to_le_bytes().as_slice()).expect("meta");
        }
    }
    txn.commit().expect("commit");
    Arc::new(db)
}

fn gate() -> Gate {
    Arc::new(std::sync::RwLock::new(()))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let tmp = TempDir::new().expect("temp dir");
        let metrics = Arc::new(StoreMetrics::default());
        let log = LogStore::open(&tmp.path().join("raft"), metrics.clone()).expect("open the log");
        let sm = StateMachine::open(new_db(tmp.path()), gate(), &tmp.path().join("raft"), metrics, log.clone())
            .expect("open the state machine");
        Ok((tmp, log, sm))
    }
}

/// openraft's storage suite (`Suite::test_store`), case by case: all of
/// it but `get_initial_state_membership_from_log_and_sm`, which appends
/// entry 3 right after entry 1. A Raft log never has a hole, and ours
/// refuses one on purpose (`append_refuses_a_hole` below) rather than
/// store a log that lies.
#[tokio::test]
async fn openraft_storage_suite_passes() {
    type S = Suite<TypeConfig, LogStore, StateMachine, Builder, TempDir>;
    macro_rules! cases {
        ($($case:ident)*) => {$(
            let (_tmp, log, sm) = Builder.build().await.expect("build");
            if let Err(e) = S::$case(log, sm).await {
                panic!("openraft storage suite, {}: {e}", stringify!($case));
            }
        )*};
    }
    cases!(
        last_membership_in_log_initial
        last_membership_in_log
        last_membership_in_log_multi_step
        get_membership_initial
        get_membership_from_log_and_empty_sm
        get_membership_from_empty_log_and_sm
        get_membership_from_log_le_sm_last_applied
        get_membership_from_log_gt_sm_last_applied_1
        get_membership_from_log_gt_sm_last_applied_2
        get_initial_state_without_init
        get_initial_state_with_state
        get_initial_state_last_log_gt_sm
        get_initial_state_last_log_lt_sm
        get_initial_state_log_ids
        get_initial_state_re_apply_committed
        save_vote
        get_log_entries
        limited_get_log_entries
        try_get_log_entry
        initial_logs
        get_log_state
        get_log_id
        last_id_in_log
        last_applied_state
        purge_logs_upto_0
        purge_logs_upto_5
        purge_logs_upto_20
        delete_logs_since_11
        delete_logs_since_0
        append_to_log
        snapshot_meta
        apply_single
        apply_multiple
    );
    S::transfer_snapshot(&Builder).await.expect("openraft storage suite, transfer_snapshot");
}

#[tokio::test]
async fn append_refuses_a_hole() {
    let tmp = TempDir::new().expect("temp dir");
    let mut log = open(tmp.path());
    append(&mut log, vec![entry(1, 1)]).await;
    use openraft::storage::RaftLogStorageExt;
    let e = log.blocking_append(vec![entry(1, 3)]).await.expect_err("a hole");
    assert!(e.to_string().contains("append of 3 after 1"), "{e}");
    assert_eq!(indexes(&mut log).await, vec![1]);
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    let cmd = crate::namespace::Command::ReserveIdRange { count: index };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Proposal { cmd, closed: Vec::new() }),
    }
}

/// Appends `entries` and waits until they are flushed.
async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.expect("append");
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    log.try_get_log_entries(0..).await.expect("read").iter().map(|e| e.log_id.index).collect()
}

fn open(dir: &Path) -> LogStore {
    LogStore::open(dir, Arc::new(StoreMetrics::default())).expect("open the log")
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(SEGMENT_PREFIX))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn entries_survive_a_reopen_and_truncation_holds() {
    let tmp = TempDir::new().expect("temp dir");
    let mut log = open(tmp.path());
    append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
    log.save_vote(&Vote::new(3, 7)).await.expect("vote");
    drop(log);
    let mut log = open(tmp.path());
    assert_eq!(indexes(&mut log).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 7)));
    // A new leader's log replaces the tail from 6 on.
    log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 6)).await.expect("truncate");
    append(&mut log, (6..=8).map(|i| entry(2, i)).collect()).await;
    drop(log);
    let mut log = open(tmp.path());
    let got = log.try_get_log_entries(0..).await.expect("read");
    let ids: Vec<(u64, u64)> = got.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect();
    let want: Vec<(u64, u64)> = (1..=5).map(|i| (1, i)).chain((6..=8).map(|i| (2, i))).collect();
    assert_eq!(ids, want, "the truncated entries are gone for good, the new ones are there");
}

#[tokio::test]
async fn a_torn_last_record_is_dropped_and_the_log_goes_on() {
    let tmp = TempDir::new().expect("temp dir");
    let mut log = open(tmp.path());
    append(&mut log, (1..=5).map(|i| entry(1, i)).collect()).await;
    drop(log);
    // A crash in the middle of writing entry 6: its length and part of
    // its bytes reached the disk.
    let seg = tmp.path().join(&segments(tmp.path())[0]);
    let bytes = std::fs::read(&seg).expect("read");
    let (records, end) = decode_segment(&bytes);
    assert_eq!(records.len(), 5);
    let mut torn = Vec::new();
    let mut sixth = entry(1, 6);
    if let EntryPayload::Normal(p) = &mut sixth.payload {
        p.closed = vec![InodeId(u64::MAX)];
    }
    encode(&sixth, &mut torn).expect("encode");
    let f = OpenOptions::new().write(true).open(&seg).expect("open");
    f.write_all_at(&torn[..torn.len() - 3], end).expect("write");
    drop(f);
    let mut log = open(tmp.path());
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5]);
    append(&mut log, vec![entry(1, 6), entry(1, 7)]).await;
    drop(log);
    let mut log = open(tmp.path());
    assert_eq!(indexes(&mut log).await, vec![1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test]
async fn purging_keeps_the_files_bounded() {
    let tmp = TempDir::new().expect("temp dir");
    let mut log = open(tmp.path());
    // Entries of 1 MiB fill a segment every 15 or so.
    let big = |i: u64| {
        let mut e = entry(1, i);
        if let EntryPayload::Normal(p) = &mut e.payload {
            p.cmd = crate::namespace::Command::ForgetRequests {
                before: stripefs_proto::types::Timestamp { secs: i as i64, nanos: 0 },
            };
            p.closed = (0..(1 << 17)).map(InodeId).collect();
        }
        e
    };
    let mut next = 1;
    for round in 0..3 {
        append(&mut log, (next..next + 20).map(big).collect()).await;
        next += 20;
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), next - 5)).await.expect("purge");
        let files = segments(tmp.path());
        assert!(files.len() <= 2, "round {round}: {files:?}");
    }
    assert_eq!(indexes(&mut log).await, (next - 4..next).collect::<Vec<_>>());
    drop(log);
    let mut log = open(tmp.path());
    assert_eq!(indexes(&mut log).await, (next - 4..next).collect::<Vec<_>>());
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(next - 5));
}

#[tokio::test]
async fn last_index_in_reads_a_log_without_opening_it() {
    let tmp = TempDir::new().expect("temp dir");
    assert_eq!(last_index_in(tmp.path()).expect("empty"), None);
    let mut log = open(tmp.path());
    append(&mut log, (1..=3).map(|i| entry(1, i)).collect()).await;
    assert_eq!(last_index_in(tmp.path()).expect("log"), Some(3));
}
