//! The scrubber: re-reads every replica's blocks at a bounded rate and
//! reports those that fail their checksum, so the master replaces them
//! before a reader needs them. Scratch files are checked against their
//! seal (or sealed, once left alone; see [`crate::scratch`]); a corrupt one
//! has no other copy, so it is logged, naming its blocks. A [`Worker`]:
//! one replica or scratch file per step, a pause between passes.

use crate::chunk_store::{ChunkStore, StoreError};
use crate::reports::Reports;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stripefs_daemon::{Step, Worker};
use stripefs_proto::{ChunkId, Version};

/// Blocks verified per read while scrubbing (4 MiB).
const BLOCKS_PER_READ: u32 = 64;

/// The scrub worker.
pub(crate) struct Scrubber {
    store: Arc<ChunkStore>,
    reports: Arc<Reports>,
    bytes_per_sec: u64,
    pause: Duration,
    /// The pass under way: replicas left (last first), and what it found so far.
    pass: Option<Pass>,
    passes: u64,
    last_pass: Option<String>,
    metrics: Option<std::sync::Arc<crate::metrics::NodeMetrics>>,
}

struct Pass {
    started: Instant,
    left: Vec<(ChunkId, Version, u64)>,
    replicas: usize,
    total_bytes: u64,
    bytes: u64,
    corrupt: usize,
}

impl Scrubber {
    /// A scrubber of `store` at `bytes_per_sec` (0: off), resting `pause`
    /// between passes.
    pub(crate) fn new(store: Arc<ChunkStore>, reports: Arc<Reports>, bytes_per_sec: u64, pause: Duration) -> Scrubber {
        Scrubber { store, reports, bytes_per_sec, pause, pass: None, passes: 0, last_pass: None, metrics: None }
    }

    /// Counts scrubbed bytes and corrupt replicas in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::NodeMetrics>) -> Scrubber {
        self.metrics = Some(metrics);
        self
    }

    async fn start_pass(&self) -> Result<Pass, String> {
        let s = self.store.clone();
        let mut list = tokio::task::spawn_blocking(move || {
            let mut list = s.inventory()?;
            let sizes = |ino: u64| s.scratch_len(stripefs_proto::InodeId(ino));
            list.extend(s.scratch_inventory()?.into_iter().map(|(c, v, _)| (c, v, sizes(c.0))));
            Ok::<_, StoreError>(list)
        })
        .await
        .map_err(|e| format!("listing task failed: {e}"))?
        .map_err(|e| format!("cannot list replicas: {e}"))?;
        list.reverse();
        let total_bytes = list.iter().map(|r| r.2).sum();
        Ok(Pass { started: Instant::now(), replicas: list.len(), left: list, total_bytes, bytes: 0, corrupt: 0 })
    }

    /// Checks one scratch file against its seal (sealing it if it was left
    /// alone and has none); true if it is corrupt.
    async fn check_scratch(&self, ino: stripefs_proto::InodeId) -> bool {
        let s = self.store.clone();
        match tokio::task::spawn_blocking(move || s.scratch_scrub(ino)).await {
            Ok(Ok(crate::scratch::ScrubOutcome::Corrupt(blocks))) => {
                tracing::error!(
                    "scratch file of inode {ino} is corrupt: 64 KiB blocks {blocks:?} fail their crc (it has no other copy)"
                );
                self.reports.corrupt((ChunkId(ino.0), Version::SCRATCH_FILE));
                true
            }
            Ok(Ok(_)) => false,
            Ok(Err(e)) => {
                tracing::warn!("scrubbing scratch file of inode {ino}: {e}");
                false
            }
            Err(e) => {
                tracing::warn!("scrub task failed: {e}");
                false
            }
        }
    }

    /// Checks every block of one replica; true if it is corrupt.
    async fn check(&self, chunk: ChunkId, version: Version) -> bool {
        let mut first = 0u32;
        loop {
            let s = self.store.clone();
            let r = tokio::task::spawn_blocking(move || s.read_blocks(chunk, version, first, BLOCKS_PER_READ)).await;
            match r {
                Ok(Ok(blocks)) if blocks.is_empty() => return false,
                Ok(Ok(blocks)) => {
                    first += blocks.len() as u32;
                    if (blocks.len() as u32) < BLOCKS_PER_READ {
                        return false;
                    }
                }
                Ok(Err(StoreError::Corrupt { .. })) => {
                    self.reports.corrupt((chunk, version));
                    return true;
                }
                // Deleted meanwhile, or unreadable for another reason
                // (logged by the store): move on.
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }
}

impl Worker for Scrubber {
    fn name(&self) -> String {
        "scrub".into()
    }

    async fn work(&mut self) -> Result<Step, String> {
        if self.bytes_per_sec == 0 {
            tracing::info!("scrubbing is off");
            return Ok(Step::Done);
        }
        let mut pass = match self.pass.take() {
            Some(p) => p,
            None => self.start_pass().await?,
        };
        let Some((chunk, version, len)) = pass.left.pop() else {
            tracing::info!(
                "scrub pass: {} replicas, {} bytes, {} corrupt, in {:.1} s",
                pass.replicas,
                pass.bytes,
                pass.corrupt,
                pass.started.elapsed().as_secs_f64()
            );
            self.passes += 1;
            self.last_pass =
                Some(format!("last pass: {} replicas, {} bytes, {} corrupt", pass.replicas, pass.bytes, pass.corrupt));
            return Ok(Step::Idle);
        };
        let corrupt = if version == Version::SCRATCH_FILE {
            self.check_scratch(stripefs_proto::InodeId(chunk.0)).await
        } else {
            self.check(chunk, version).await
        };
        if corrupt {
            pass.corrupt += 1;
        }
        pass.bytes += len;
        if let Some(m) = &self.metrics {
            m.scrubbed_bytes.inc_by(len);
            if corrupt {
                m.checksum_errors.inc();
            }
        }
        // Pace: this replica's bytes at the allowed rate (a cancelled sleep
        // at shutdown loses nothing).
        let due = Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
        self.pass = Some(pass);
        tokio::time::sleep(due).await;
        Ok(Step::Busy)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.pause).await
    }

    fn detail(&self) -> String {
        if self.bytes_per_sec == 0 {
            return "off (--scrub-mb-per-sec 0)".into();
        }
        let now = match &self.pass {
            Some(p) => format!(
                "pass {}: {} of {} bytes checked, {} corrupt",
                self.passes + 1,
                p.bytes,
                p.total_bytes,
                p.corrupt
            ),
            None => format!("{} passes done", self.passes),
        };
        match &self.last_pass {
            Some(last) => format!("{now}; {last}"),
            None => now,
        }
    }
}
