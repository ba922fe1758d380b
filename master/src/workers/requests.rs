//! Forgetting the answers of client sessions that went away: a client
//! tells the master which answers it has with every request, but one that
//! stops (its host died, it was unmounted) leaves its last ones behind.
//! Every minute, answers older than [`REMEMBER_FOR`] are dropped (a
//! command like any other, so the journal and later the Raft log keep the
//! table the same everywhere).

use crate::namespace::requests::REMEMBER_FOR;
use crate::namespace::Command;
use crate::state::MasterState;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use stripefs_daemon::{Step, Worker};
use stripefs_proto::types::Timestamp;

/// How often old answers are looked for.
const INTERVAL: Duration = Duration::from_secs(60);

/// The worker.
pub struct RequestExpiry {
    state: Arc<MasterState>,
    rounds: u64,
}

impl RequestExpiry {
    /// A worker over `state.store`.
    pub fn new(state: Arc<MasterState>) -> RequestExpiry {
        RequestExpiry { state, rounds: 0 }
    }
}

impl Worker for RequestExpiry {
    fn name(&self) -> String {
        "request-expiry".into()
    }

    async fn work(&mut self) -> Result<Step, String> {
        // Not while clients replay: a replay of a change that did reach
        // the disk is answered from these answers.
        if self.state.leading_for().is_none() || !self.state.store.is_serving_clients() {
            return Ok(Step::Idle);
        }
        let before = Timestamp::from(SystemTime::now() - REMEMBER_FOR);
        self.state.store.execute(Command::ForgetRequests { before }).await.map_err(|e| format!("{e}"))?;
        self.rounds += 1;
        Ok(Step::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(INTERVAL).await
    }

    fn detail(&self) -> String {
        match self.state.store.remembered_requests() {
            Ok(n) => format!("{n} request answers remembered; {} expiry rounds", self.rounds),
            Err(e) => format!("cannot count remembered answers: {e}"),
        }
    }
}
