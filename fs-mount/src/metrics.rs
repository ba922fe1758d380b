//! The mount's `/metrics`, `/healthz` and `/readyz` (mount option
//! `metrics=ADDR`; see [`stripefs_daemon::metrics`]): kernel requests by
//! operation, bytes read and written, the block cache, unwritten data,
//! calls to the master sent again and reconnections; ready while the
//! session serves.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use stripefs_client::FsCore;
use stripefs_daemon::metrics::{Endpoint, OpMetrics};

/// What the mount counts as it serves the kernel.
pub struct MountMetrics {
    /// Kernel requests, by operation.
    pub fuse: OpMetrics,
    /// Bytes returned to reads.
    pub read_bytes: Counter,
    /// Bytes taken by writes.
    pub written_bytes: Counter,
    /// Whether the FUSE session serves.
    pub serving: AtomicBool,
}

/// Times one kernel request and counts it when dropped.
pub struct RequestTimer {
    metrics: Arc<MountMetrics>,
    op: &'static str,
    started: Instant,
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.metrics.fuse.observe(self.op, self.started.elapsed());
    }
}

impl MountMetrics {
    /// Starts timing request `op`.
    pub fn start(self: &Arc<Self>, op: &'static str) -> RequestTimer {
        RequestTimer { metrics: self.clone(), op, started: Instant::now() }
    }
}

/// The mount's metrics and the endpoint serving them, with `core`'s
/// figures read at each scrape.
pub fn build(core: Arc<FsCore>) -> (Arc<MountMetrics>, Endpoint) {
    let mut registry = Registry::with_prefix("stripefs_mount");
    let m = Arc::new(MountMetrics {
        fuse: OpMetrics::register(&mut registry, "fuse_requests", "Kernel requests served"),
        read_bytes: Counter::default(),
        written_bytes: Counter::default(),
        serving: AtomicBool::new(false),
    });
    registry.register("read_bytes", "Bytes returned to reads", m.read_bytes.clone());
    registry.register("written_bytes", "Bytes taken by writes", m.written_bytes.clone());
    let counter = |registry: &mut Registry, name: &str, help: &str| {
        let c: Counter = Counter::default();
        registry.register(name, help, c.clone());
        c
    };
    let gauge = |registry: &mut Registry, name: &str, help: &str| {
        let g: Gauge<i64, AtomicI64> = Gauge::default();
        registry.register(name, help, g.clone());
        g
    };
    let hits = counter(&mut registry, "cache_hits", "Block cache lookups that found the block");
    let misses = counter(&mut registry, "cache_misses", "Block cache lookups that did not");
    let retries =
        counter(&mut registry, "master_retries", "Master calls sent again after a broken connection or a timeout");
    let reconnects = counter(&mut registry, "master_reconnects", "Connections made again to the master");
    let cached = gauge(&mut registry, "cached_blocks", "Blocks in the block cache");
    let dirty = gauge(&mut registry, "dirty_bytes", "Unwritten bytes held (buffers and uploads under way)");
    let uploading = gauge(&mut registry, "uploading_bytes", "Bytes of uploads under way");
    let open = gauge(&mut registry, "open_files", "Files open on this client");
    let held = gauge(
        &mut registry,
        "held_changes",
        "Metadata changes the master answered before they were on its disk, kept to replay until they are",
    );
    let leases = gauge(&mut registry, "dir_leases", "Directory leases held");
    let lease_lookups = counter(
        &mut registry,
        "lease_lookups",
        "Lookups of missing names answered from a directory lease, without the master",
    );
    // Two scrapes at once must not both add the same difference.
    let scraping = std::sync::Mutex::new(());
    let refresh = Box::new(move || {
        let _one_at_a_time = stripefs_daemon::lock(&scraping);
        let s = core.stats();
        use stripefs_daemon::metrics::catch_up;
        catch_up(&hits, s.cache_hits);
        catch_up(&misses, s.cache_misses);
        catch_up(&retries, s.master_retries);
        catch_up(&reconnects, s.master_reconnects);
        catch_up(&lease_lookups, s.lease_lookups);
        cached.set(s.cached_blocks as i64);
        dirty.set(s.dirty_bytes as i64);
        uploading.set(s.uploading_bytes as i64);
        open.set(s.open_files as i64);
        held.set(s.held_changes as i64);
        leases.set(s.dir_leases as i64);
    });
    let me = m.clone();
    let ready = Box::new(move || {
        if me.serving.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the FUSE session does not serve".to_string())
        }
    });
    (m, Endpoint { registry, refresh, ready })
}
