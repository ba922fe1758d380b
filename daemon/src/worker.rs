//! Background workers with one shape, as Garage's `Worker`: every piece
//! of background work of a daemon (re-replication, garbage collection,
//! orphan purge, scrubbing, copying, local-read expiry) is a [`Worker`]
//! that [`Workers`] runs until shutdown and whose status it keeps for
//! `stripefs status`.
//!
//! A worker does its work in steps ([`Worker::work`]); after a step that
//! found nothing more to do, the runner waits in [`Worker::wait_for_work`]
//! (a timer, a wake-up, a queue). Shutdown cancels either wait at once, so
//! a step must leave things consistent at every `.await` (each of ours
//! does: a cancelled round is simply done again later).

use crate::sync::lock;
use std::future::Future;
use std::sync::{Arc, Mutex};
use stripefs_proto::types::{WorkerState, WorkerStatus};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a step left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More work is waiting: step again at once.
    Busy,
    /// Nothing to do now: wait for work.
    Idle,
    /// Finished for good: the worker ends.
    Done,
}

/// A piece of background work.
pub trait Worker: Send + 'static {
    /// Short name, e.g. `rereplication`.
    fn name(&self) -> String;

    /// Does one step of work. An error is logged and counted, then the
    /// worker waits for work as after [`Step::Idle`].
    fn work(&mut self) -> impl Future<Output = Result<Step, String>> + Send;

    /// Waits until there may be work again.
    fn wait_for_work(&mut self) -> impl Future<Output = ()> + Send;

    /// One line on what the worker is doing or last did.
    fn detail(&self) -> String;
}

/// The running workers of a daemon and their statuses.
#[derive(Clone)]
pub struct Workers {
    statuses: Arc<Mutex<Vec<Arc<Mutex<WorkerStatus>>>>>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Workers {
    /// Workers that stop when `stop` is cancelled.
    pub fn new(stop: CancellationToken) -> Workers {
        Workers { statuses: Default::default(), tracker: TaskTracker::new(), stop }
    }

    /// Starts `worker` on the current runtime.
    pub fn spawn<W: Worker>(&self, mut worker: W) {
        let status = Arc::new(Mutex::new(WorkerStatus {
            name: worker.name(),
            state: WorkerState::Busy,
            detail: worker.detail(),
            steps: 0,
            errors: 0,
            last_error: None,
        }));
        lock(&self.statuses).push(status.clone());
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            loop {
                let step = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    s = worker.work() => s,
                };
                let next = {
                    let mut s = lock(&status);
                    s.steps += 1;
                    s.detail = worker.detail();
                    match step {
                        Ok(step) => step,
                        Err(e) => {
                            tracing::warn!("worker {}: {e}", s.name);
                            s.errors += 1;
                            s.last_error = Some(e);
                            Step::Idle
                        }
                    }
                };
                match next {
                    Step::Busy => continue,
                    Step::Done => break,
                    Step::Idle => {}
                }
                lock(&status).state = WorkerState::Idle;
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    _ = worker.wait_for_work() => {}
                }
                lock(&status).state = WorkerState::Busy;
            }
            let mut s = lock(&status);
            s.state = WorkerState::Done;
            s.detail = worker.detail();
        });
    }

    /// Every worker's status, in the order they were started.
    pub fn status(&self) -> Vec<WorkerStatus> {
        lock(&self.statuses).iter().map(|s| lock(s).clone()).collect()
    }

    /// Cancels every worker and waits until they have ended.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Counts to `until`, one per step, failing at `fail_at`; then waits
    /// on a notify.
    struct Counter {
        n: u64,
        until: u64,
        fail_at: u64,
        wake: Arc<tokio::sync::Notify>,
    }

    impl Worker for Counter {
        fn name(&self) -> String {
            "counter".into()
        }

        async fn work(&mut self) -> Result<Step, String> {
            if self.n == self.until {
                return Ok(Step::Idle);
            }
            self.n += 1;
            if self.n == self.fail_at {
                return Err(format!("failed at {}", self.n));
            }
            Ok(Step::Busy)
        }

        async fn wait_for_work(&mut self) {
            self.wake.notified().await;
            self.until += 2;
        }

        fn detail(&self) -> String {
            format!("counted to {}", self.n)
        }
    }

    async fn wait_until(workers: &Workers, what: &str, f: impl Fn(&WorkerStatus) -> bool) -> WorkerStatus {
        for _ in 0..500 {
            let s = workers.status().remove(0);
            if f(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: {:?}", workers.status());
    }

    #[tokio::test]
    async fn a_worker_steps_until_idle_waits_for_work_and_reports_errors() {
        let wake = Arc::new(tokio::sync::Notify::new());
        let workers = Workers::new(CancellationToken::new());
        workers.spawn(Counter { n: 0, until: 5, fail_at: 3, wake: wake.clone() });
        // The error at 3 makes it wait for work before counting on.
        let s = wait_until(&workers, "idle after the error", |s| s.state == WorkerState::Idle).await;
        assert_eq!((s.errors, s.last_error.as_deref(), s.detail.as_str()), (1, Some("failed at 3"), "counted to 3"));
        wake.notify_one();
        let s =
            wait_until(&workers, "counts to 7", |s| s.detail == "counted to 7" && s.state == WorkerState::Idle).await;
        assert_eq!(s.name, "counter");
        assert_eq!(s.steps, 8, "7 counting steps and one that found nothing");
        workers.stop().await;
        assert_eq!(workers.status()[0].state, WorkerState::Done);
    }

    #[tokio::test]
    async fn stop_ends_a_worker_that_waits_forever() {
        let workers = Workers::new(CancellationToken::new());
        let wake = Arc::new(tokio::sync::Notify::new());
        workers.spawn(Counter { n: 0, until: 0, fail_at: 0, wake });
        wait_until(&workers, "idle", |s| s.state == WorkerState::Idle).await;
        tokio::time::timeout(Duration::from_secs(5), workers.stop()).await.expect("stopped at once");
        assert_eq!(workers.status()[0].state, WorkerState::Done);
    }
}
