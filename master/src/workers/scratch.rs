//! Lost scratch files: a scratch file's data lives on its home node only.
//! Once that node has been silent for `scratch_lost_after` (the master's
//! `--scratch-lost-after-secs`), it is declared gone, and the scratch files
//! it held whose class asks for it (`stripefs policy DIR --class scratch
//! --remove-lost`) are removed, so a spill directory does not fill with
//! files nobody can read. The others stay, listed by `stripefs fsck`.

use crate::namespace::Command;
use crate::state::MasterState;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stripefs_daemon::{Step, Worker};
use stripefs_proto::types::Timestamp;
use stripefs_proto::NodeId;

/// How often the worker looks for gone nodes.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often the files of a node still gone are looked for again (a file
/// open when its names were removed is freed when closed; new ones are not
/// made on a gone node's host unless its clients still create them).
const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// The worker removing lost scratch files.
pub struct ScratchReaper {
    state: Arc<MasterState>,
    /// The gone nodes of the last scan, and when it ran.
    last: Option<(HashSet<NodeId>, Instant)>,
    removed: u64,
}

impl ScratchReaper {
    /// A reaper over `state`.
    pub fn new(state: Arc<MasterState>) -> ScratchReaper {
        ScratchReaper { state, last: None, removed: 0 }
    }

    /// The nodes silent for longer than the master's limit.
    fn gone(&self) -> HashSet<NodeId> {
        let after = self.state.scratch_lost_after;
        self.state.registry.dead_for().into_iter().filter(|(_, d)| *d >= after).map(|(n, _)| n).collect()
    }
}

impl Worker for ScratchReaper {
    fn name(&self) -> String {
        "scratch-reaper".into()
    }

    async fn work(&mut self) -> Result<Step, String> {
        if !self.state.store.is_leader() {
            return Ok(Step::Idle);
        }
        let gone = self.gone();
        let due = match &self.last {
            Some((nodes, at)) => *nodes != gone || at.elapsed() >= RESCAN_EVERY,
            None => true,
        };
        if gone.is_empty() || !due {
            return Ok(Step::Idle);
        }
        self.last = Some((gone.clone(), Instant::now()));
        let lost = self.state.store.lost_scratch(&gone).map_err(|e| format!("listing lost scratch files: {e}"))?;
        for (ino, node, names) in lost {
            let dirs = names.iter().map(|(d, _)| *d).collect();
            // Other clients' leases on those directories go first.
            let _change = self.state.store.recall_leases(dirs).await;
            let shown: Vec<String> = names.iter().map(|(d, n)| format!("{n:?} in directory {d}")).collect();
            let cmd = Command::RemoveLostScratch { ino, node, names, now: Timestamp::now() };
            match self.state.store.execute(cmd).await {
                Ok(_) => {
                    self.removed += 1;
                    tracing::warn!(
                        "removed scratch file {ino} ({}): its node {node} has been gone for over {:?}",
                        shown.join(", "),
                        self.state.scratch_lost_after
                    );
                }
                Err(e) => tracing::warn!("removing lost scratch file {ino} of node {node}: {e}"),
            }
        }
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(CHECK_EVERY).await;
    }

    fn detail(&self) -> String {
        format!("{} lost scratch files removed", self.removed)
    }
}
