//! `stripefs-node`: runs one stripefs storage node.

use anyhow::Context as _;
use clap::Parser;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stripefs_node::{run, write_file_atomic, Config};
use stripefs_proto::net::Secret;
use tokio_util::sync::CancellationToken;

/// Name of the file, in the data directory, that receives the bound address.
const LISTEN_ADDR_FILE: &str = "listen.addr";

/// A stripefs storage node: keeps chunk replicas on local disk, serves them
/// to clients and forwards writes to the next node of each replica chain.
#[derive(Parser, Debug)]
#[command(
    name = "stripefs-node",
    version,
    after_help = "The node registers with the master at start and heartbeats every --heartbeat-ms. \
                  Its identity is kept in DIR/node.id; the address it actually listens on is written \
                  to DIR/listen.addr (useful with port 0).\n\nLogging is controlled by RUST_LOG \
                  (default: info, with tarpc's per-request logs at warn)."
)]
struct Args {
    /// Data directory for chunk replicas and the node identity (created if missing).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,

    /// Address to listen on, e.g. 0.0.0.0:7200; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: String,

    /// Address of the master, e.g. master.example:7100.
    #[arg(long, value_name = "ADDR")]
    master: String,

    /// Address clients and peer nodes should use to reach this node
    /// [default: the bound address, with the host name if bound to all interfaces].
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,

    /// Failure zone of this node; replicas of a chunk are spread across zones.
    #[arg(long, value_name = "NAME", default_value = "default")]
    zone: String,

    /// Host name reported to the master; clients on the same host read from this node first
    /// [default: this machine's host name].
    #[arg(long, value_name = "NAME")]
    host: Option<String>,

    /// File holding the cluster secret [default: $STRIPEFS_SECRET, $STRIPEFS_SECRET_FILE,
    /// then /etc/stripefs/secret].
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,

    /// Milliseconds between heartbeats to the master.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_ms: u64,

    /// Disk space (MiB) kept free: the node takes no new chunks into it.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    reserve_mb: u64,

    /// Scrubber speed in MiB/s: every replica is re-read and checked at this
    /// rate, corrupt ones are reported and replaced (0: no scrubbing).
    #[arg(long, value_name = "MIB", default_value_t = 8)]
    scrub_mb_per_sec: u64,

    /// Seconds to rest between two full scrub passes.
    #[arg(long, value_name = "SECS", default_value_t = 86400)]
    scrub_pause_secs: u64,

    /// Write every replica through the page cache. By default replicas of
    /// 1 MiB and more are written around it (O_DIRECT): they are not
    /// cached twice on a client's host, and cost far less CPU. Buffered
    /// writes keep recently written chunks in this node's memory, for
    /// readers that read them back at once from slow disks.
    #[arg(long)]
    buffered_writes: bool,

    /// Memory (MiB) for chunk writes in progress: each write is held whole
    /// while it goes to disk and on to the next node. A writer's write
    /// waits while this is taken; one that waits for half its time is
    /// refused, and the writer places that chunk on other nodes. Writes
    /// passed on by other nodes never wait. Lower it on small hosts.
    #[arg(long, value_name = "MIB", default_value_t = stripefs_node::DEFAULT_WRITE_MEMORY_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    write_memory_mb: u64,

    /// Serve Prometheus metrics (/metrics) and health checks (/healthz,
    /// /readyz: ready once registered with the master) over HTTP on this
    /// address, e.g. 0.0.0.0:9501.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

fn main() {
    let args = Args::parse();
    stripefs_daemon::logs::init();
    if let Err(e) = real_main(args) {
        eprintln!("stripefs-node: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    // SecretError's message already includes its cause: keep `{e:#}` from repeating it.
    let secret = Secret::resolve(args.secret_file.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create the data directory {}", args.data.display()))?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async_main(args, secret))
}

async fn async_main(args: Args, secret: Secret) -> anyhow::Result<()> {
    let listener = stripefs_daemon::listen::listen(&args.listen, stripefs_daemon::listen::WAIT_FOR_ADDRESS)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr().context("the listener has no address")?;
    let addr_file = args.data.join(LISTEN_ADDR_FILE);
    write_file_atomic(&addr_file, bound.to_string().as_bytes())
        .with_context(|| format!("cannot write {}", addr_file.display()))?;
    tracing::info!("listening on {bound}");

    let host = args.host.unwrap_or_else(hostname);
    let advertise = match args.advertise {
        Some(a) => a,
        None if bound.ip().is_unspecified() => format!("{host}:{}", bound.port()),
        None => bound.to_string(),
    };
    let cfg = Config {
        data_dir: args.data,
        advertise_addr: advertise,
        master_addr: args.master,
        host,
        zone: args.zone,
        secret,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms),
        reserve_bytes: args.reserve_mb << 20,
        scrub_bytes_per_sec: args.scrub_mb_per_sec << 20,
        scrub_pause: Duration::from_secs(args.scrub_pause_secs),
        buffered_writes: args.buffered_writes,
        write_memory_bytes: args.write_memory_mb << 20,
        metrics_addr: args.metrics,
    };

    let shutdown = CancellationToken::new();
    tokio::spawn(stripefs_daemon::signals::cancel_on_signal(shutdown.clone()));
    run(cfg, listener, shutdown).await
}

/// This machine's host name, or "localhost" when it cannot be read.
fn hostname() -> String {
    std::fs::read_to_string(Path::new("/proc/sys/kernel/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
