//! The scrubber: re-reads every replica's blocks at a bounded rate and
//! reports those that fail their checksum, so the master replaces them
//! before a reader needs them.

use crate::chunk_store::{ChunkStore, StoreError};
use crate::reports::Reports;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Blocks verified per read while scrubbing (4 MiB).
const BLOCKS_PER_READ: u32 = 64;

/// Scrubs until `stop`: a full pass over every replica at
/// `bytes_per_sec`, then `pause`, then again. Does nothing when
/// `bytes_per_sec` is 0.
pub(crate) async fn run(
    store: Arc<ChunkStore>,
    reports: Arc<Reports>,
    bytes_per_sec: u64,
    pause: Duration,
    stop: CancellationToken,
) {
    if bytes_per_sec == 0 {
        tracing::info!("scrubbing is off");
        return;
    }
    loop {
        let started = Instant::now();
        let s = store.clone();
        let list = match tokio::task::spawn_blocking(move || s.inventory()).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::error!("scrub: cannot list replicas: {e}");
                Vec::new()
            }
            Err(e) => {
                tracing::error!("scrub: listing task failed: {e}");
                Vec::new()
            }
        };
        let (mut bytes, mut bad) = (0u64, 0usize);
        for (chunk, version, len) in &list {
            let (chunk, version) = (*chunk, *version);
            let mut first = 0u32;
            loop {
                let s = store.clone();
                let r =
                    tokio::task::spawn_blocking(move || s.read_blocks(chunk, version, first, BLOCKS_PER_READ)).await;
                match r {
                    Ok(Ok(blocks)) if blocks.is_empty() => break,
                    Ok(Ok(blocks)) => {
                        first += blocks.len() as u32;
                        if (blocks.len() as u32) < BLOCKS_PER_READ {
                            break;
                        }
                    }
                    Ok(Err(StoreError::Corrupt { .. })) => {
                        reports.corrupt((chunk, version));
                        bad += 1;
                        break;
                    }
                    // Deleted meanwhile, or unreadable for another reason
                    // (logged by the store): move on.
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            bytes += len;
            // Pace: this replica's bytes at the allowed rate.
            let due = Duration::from_secs_f64(*len as f64 / bytes_per_sec as f64);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(due) => {}
            }
        }
        tracing::info!(
            "scrub pass: {} replicas, {bytes} bytes, {bad} corrupt, in {:.1} s",
            list.len(),
            started.elapsed().as_secs_f64()
        );
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
