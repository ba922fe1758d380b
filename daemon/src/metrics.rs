//! Prometheus metrics and health checks of a daemon, on one HTTP listener
//! (`--metrics ADDR` on the master and the nodes, `metrics=ADDR` on a
//! mount):
//!
//! - `GET /metrics`: every metric of the daemon's [`Registry`], in the
//!   OpenMetrics text format (prometheus-client), after the daemon's
//!   `refresh` has updated the gauges read at scrape time;
//! - `GET /healthz`: `200 ok` while the process serves HTTP at all (alive);
//! - `GET /readyz`: `200 ready`, or `503` with the reason, from the daemon's
//!   `ready` check (master: database open and serving; node: registered
//!   with the master; mount: mounted and serving).
//!
//! Names follow Prometheus' conventions: a prefix per daemon
//! (`stripefs_master_`, `stripefs_node_`, `stripefs_mount_`), counters end
//! in `_total`, durations in `_seconds`, sizes in `_bytes`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use prometheus_client;

/// A label set of one operation name.
pub type OpLabel = [(&'static str, String); 1];

/// Raises `counter` to `now`, a total counted elsewhere (scrapes add what
/// was counted since the last one; counters only go up). Callers refresh
/// one scrape at a time, or two would add the same difference.
pub fn catch_up(counter: &Counter, now: u64) {
    let seen = counter.get();
    if now > seen {
        counter.inc_by(now - seen);
    }
}

/// Buckets of a latency histogram: 50 µs to about 6.5 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// Buckets of a size histogram (bytes or items): 1 to about 16 M, ×4.
pub fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 13))
}

/// Counts and latencies of a daemon's operations, by operation name.
#[derive(Clone)]
pub struct OpMetrics {
    count: Family<OpLabel, Counter>,
    seconds: Family<OpLabel, Histogram, fn() -> Histogram>,
}

impl OpMetrics {
    /// Registers `NAME_total{op}` and `NAME_duration_seconds{op}` (with
    /// NAME's plural `s` dropped: `rpc_requests_total`,
    /// `rpc_request_duration_seconds`) in `registry`.
    pub fn register(registry: &mut Registry, name: &str, help: &str) -> OpMetrics {
        let m = OpMetrics {
            count: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        registry.register(name, format!("{help}, by operation"), m.count.clone());
        let duration = format!("{}_duration_seconds", name.strip_suffix('s').unwrap_or(name));
        registry.register(duration, format!("Time {help} took, by operation"), m.seconds.clone());
        m
    }

    /// Records one `op` that took `took` (a tarpc request name such as
    /// `MasterService.create` counts as `create`).
    pub fn observe(&self, op: &str, took: Duration) {
        let op = op.rsplit('.').next().unwrap_or(op);
        let label = [("op", op.to_string())];
        self.count.get_or_create(&label).inc();
        self.seconds.get_or_create(&label).observe(took.as_secs_f64());
    }
}

/// What a daemon exposes over HTTP.
pub struct Endpoint {
    /// The daemon's metrics.
    pub registry: Registry,
    /// Updates the gauges that are read at scrape time.
    pub refresh: Box<dyn Fn() + Send + Sync>,
    /// Whether the daemon is ready; `Err` says why not.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// Most bytes of a request head read.
const MAX_REQUEST_BYTES: usize = 8192;

/// Serves `endpoint` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>, shutdown: CancellationToken) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(Duration::from_secs(10), async {
                let path = read_path(&mut stream).await?;
                let (status, kind, body) = respond(&endpoint, &path);
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
            if let Ok(Err(e)) = answer {
                tracing::debug!("metrics request: {e}");
            }
        });
    }
}

/// The path of a `GET` request (the head is read and dropped).
async fn read_path(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("GET"), Some(path)) => Ok(path.to_string()),
        _ => Ok(String::new()),
    }
}

fn respond(endpoint: &Endpoint, path: &str) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            (endpoint.refresh)();
            let mut body = String::new();
            match encode(&mut body, &endpoint.registry) {
                Ok(()) => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", body),
                Err(e) => ("500 Internal Server Error", TEXT, format!("encoding the metrics failed: {e}\n")),
            }
        }
        "/healthz" => ("200 OK", TEXT, "ok\n".into()),
        "/readyz" => match (endpoint.ready)() {
            Ok(()) => ("200 OK", TEXT, "ready\n".into()),
            Err(why) => ("503 Service Unavailable", TEXT, format!("not ready: {why}\n")),
        },
        "" => ("405 Method Not Allowed", TEXT, "only GET\n".into()),
        _ => ("404 Not Found", TEXT, "try /metrics, /healthz or /readyz\n".into()),
    }
}

/// Binds `addr` and serves `endpoint` there in the background until
/// `shutdown`; returns the bound address.
pub async fn start(
    addr: &str,
    endpoint: Endpoint,
    shutdown: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!("metrics on http://{bound}/metrics (health: /healthz, /readyz)");
    tokio::spawn(serve(listener, Arc::new(endpoint), shutdown));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn metrics_health_and_readiness_over_http() {
        let mut registry = Registry::with_prefix("stripefs_test");
        let ops = OpMetrics::register(&mut registry, "requests", "Requests served");
        ops.observe("lookup", Duration::from_millis(2));
        let ready = Arc::new(AtomicBool::new(false));
        let r = ready.clone();
        let endpoint = Endpoint {
            registry,
            refresh: Box::new(|| {}),
            ready: Box::new(move || if r.load(Ordering::SeqCst) { Ok(()) } else { Err("not yet".into()) }),
        };
        let stop = CancellationToken::new();
        let addr = start("127.0.0.1:0", endpoint, stop.clone()).await.expect("start");
        let m = get(addr, "/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("stripefs_test_requests_total{op=\"lookup\"} 1"), "{m}");
        assert!(m.contains("stripefs_test_request_duration_seconds_count{op=\"lookup\"} 1"), "{m}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not = get(addr, "/readyz").await;
        assert!(not.starts_with("HTTP/1.1 503") && not.contains("not yet"), "{not}");
        ready.store(true, Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
    }
}
