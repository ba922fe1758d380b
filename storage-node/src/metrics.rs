//! The node's `/metrics`, `/healthz` and `/readyz` (see
//! [`stripefs_daemon::metrics`]): RPCs, chunk writes and reads, scrubbing,
//! checksum errors, write memory, replicas held; ready once registered
//! with the master.

use crate::chunk_store::ChunkStore;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stripefs_daemon::metrics::{latency_histogram, Endpoint, OpMetrics};

/// What the node counts as it works.
pub struct NodeMetrics {
    /// tarpc RPCs served, by operation.
    pub rpc: OpMetrics,
    /// Chunk writes received on data connections.
    pub writes: Counter,
    /// Time of a chunk write (receive, store, forward, answer).
    pub write_seconds: Histogram,
    /// Stored bytes of chunk writes received.
    pub written_bytes: Counter,
    /// Stored bytes of blocks served by `read_blocks`.
    pub read_bytes: Counter,
    /// Bytes of replicas the scrubber checked.
    pub scrubbed_bytes: Counter,
    /// Replicas found corrupt (by a read or the scrubber).
    pub checksum_errors: Counter,
    /// Whether the node is registered with the master.
    pub registered: AtomicBool,
    registry: std::sync::Mutex<Option<Registry>>,
}

impl NodeMetrics {
    /// The node's metrics, registered in a registry of their own.
    pub fn new() -> Arc<NodeMetrics> {
        let mut registry = Registry::with_prefix("stripefs_node");
        let m = NodeMetrics {
            rpc: OpMetrics::register(&mut registry, "rpc_requests", "RPCs served"),
            writes: Counter::default(),
            write_seconds: latency_histogram(),
            written_bytes: Counter::default(),
            read_bytes: Counter::default(),
            scrubbed_bytes: Counter::default(),
            checksum_errors: Counter::default(),
            registered: AtomicBool::new(false),
            registry: std::sync::Mutex::new(None),
        };
        registry.register("chunk_writes", "Chunk writes received on data connections", m.writes.clone());
        registry.register("chunk_write_seconds", "Time of a chunk write (store and forward)", m.write_seconds.clone());
        registry.register("written_bytes", "Stored bytes of chunk writes received", m.written_bytes.clone());
        registry.register("read_bytes", "Stored bytes of blocks served to readers", m.read_bytes.clone());
        registry.register("scrubbed_bytes", "Bytes of replicas the scrubber checked", m.scrubbed_bytes.clone());
        registry.register("checksum_errors", "Replicas found corrupt", m.checksum_errors.clone());
        *stripefs_daemon::lock(&m.registry) = Some(registry);
        Arc::new(m)
    }

    /// Records one chunk write of `bytes` that took `took`.
    pub fn wrote(&self, bytes: u64, took: Duration) {
        self.writes.inc();
        self.written_bytes.inc_by(bytes);
        self.write_seconds.observe(took.as_secs_f64());
    }

    /// The endpoint: gauges of `store` and `write_memory` read at each scrape.
    pub(crate) fn endpoint(
        self: &Arc<Self>,
        store: Arc<ChunkStore>,
        write_memory: impl Fn() -> (u64, u64) + Send + Sync + 'static,
    ) -> Endpoint {
        let mut registry = stripefs_daemon::lock(&self.registry).take().unwrap_or_default();
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g: Gauge<i64, AtomicI64> = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let chunks = gauge(&mut registry, "replicas", "Chunk replicas held");
        let used = gauge(&mut registry, "used_bytes", "Bytes of chunk replicas held");
        let mem_used = gauge(&mut registry, "write_memory_used_bytes", "Memory taken by chunk writes in progress");
        let mem_limit = gauge(&mut registry, "write_memory_limit_bytes", "Memory chunk writes in progress may take");
        let up = gauge(&mut registry, "registered", "1 once registered with the master");
        let me = self.clone();
        let refresh = Box::new(move || {
            chunks.set(store.chunk_count() as i64);
            used.set(store.used_bytes() as i64);
            let (u, l) = write_memory();
            mem_used.set(u as i64);
            mem_limit.set(l as i64);
            up.set(i64::from(me.registered.load(Ordering::Relaxed)));
        });
        let me = self.clone();
        let ready = Box::new(move || {
            if me.registered.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not registered with the master".to_string())
            }
        });
        Endpoint { registry, refresh, ready }
    }
}
