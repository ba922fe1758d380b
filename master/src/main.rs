//! `stripefs-master`: serves a stripefs namespace.

use anyhow::Context as _;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use stripefs_proto::net::Secret;
use tokio_util::sync::CancellationToken;

/// The stripefs master: keeps the namespace, the inode table and the chunk
/// map in one redb database under --data, and tells clients and storage
/// nodes where chunk replicas live.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Directory of the metadata database (created if missing; a new
    /// filesystem is created in an empty directory).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:9400 (port 0 picks a free port;
    /// the bound address is written to DIR/listen.addr).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9400")]
    listen: String,
    /// Address the other masters, the nodes and the clients reach this
    /// master at, e.g. m1.example:9400 (default: the --listen address,
    /// which must then not be 0.0.0.0 in a group of several masters).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<String>,
    /// Start without a filesystem and wait to be made a member of a master
    /// group: by `stripefs masters init` (a new group) or `stripefs masters
    /// add` (a group that runs). Without it, a master with an empty data
    /// directory creates a new filesystem in a group of one.
    #[arg(long)]
    join: bool,
    /// File holding the cluster secret (else $STRIPEFS_SECRET,
    /// $STRIPEFS_SECRET_FILE or /etc/stripefs/secret).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Chunk size of a new filesystem, in bytes (power of two, 64 KiB to 64 MiB).
    #[arg(long, value_name = "BYTES")]
    chunk_size: Option<u32>,
    /// Seconds without heartbeat after which a storage node is dead
    /// (`--node-dead-after`, the older name, is accepted too).
    #[arg(long, value_name = "SECS", default_value_t = 10, alias = "node-dead-after")]
    node_dead_after_secs: u64,
    /// Seconds an unreferenced replica on a node is kept before it is
    /// deleted (it may belong to an upload still in progress).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    gc_grace_secs: u64,
    /// Seconds a storage node may be silent before it is declared gone for
    /// its scratch files: those in a directory of class scratch with
    /// --remove-lost are then removed (their data was on that node only).
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    scratch_lost_after_secs: u64,
    /// Serve Prometheus metrics (/metrics) and health checks (/healthz,
    /// /readyz) over HTTP on this address, e.g. 0.0.0.0:9401.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Log entries of the master group between two snapshots of its state
    /// (a snapshot bounds the log on disk and lets a master that was away
    /// catch up without replaying history).
    #[arg(long, value_name = "N", default_value_t = stripefs_master::raft::SNAPSHOT_EVERY)]
    snapshot_every: u64,
    /// After a crash, seconds the master waits for its clients to replay
    /// the changes it had answered but not yet written to disk, before it
    /// serves anyone. A client that does not come back in time lost its
    /// last changes (it died with the master).
    #[arg(long, value_name = "SECS", default_value_t = stripefs_master::sessions::REPLAY_WINDOW.as_secs())]
    replay_window_secs: u64,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("stripefs-master: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    stripefs_daemon::logs::init();
    if let Some(c) = args.chunk_size {
        if !c.is_power_of_two() || !(64 << 10..=64 << 20).contains(&c) {
            anyhow::bail!("--chunk-size must be a power of two between 65536 and 67108864, not {c}");
        }
    }
    let secret = Secret::resolve(args.secret_file.as_deref())?;
    std::fs::create_dir_all(&args.data).with_context(|| format!("create {}", args.data.display()))?;
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(async {
        let listener = stripefs_daemon::listen::listen(&args.listen, stripefs_daemon::listen::WAIT_FOR_ADDRESS)
            .await
            .with_context(|| format!("listen on {}", args.listen))?;
        let bound = listener.local_addr()?;
        write_atomic(&args.data.join("listen.addr"), bound.to_string().as_bytes())?;
        let shutdown = CancellationToken::new();
        tokio::spawn(stripefs_daemon::signals::cancel_on_signal(shutdown.clone()));
        let cfg = stripefs_master::Config {
            data_dir: args.data.clone(),
            chunk_size: args.chunk_size,
            node_dead_after: Duration::from_secs(args.node_dead_after_secs),
            secret,
            gc_grace: Duration::from_secs(args.gc_grace_secs),
            scratch_lost_after: Duration::from_secs(args.scratch_lost_after_secs),
            metrics_addr: args.metrics.clone(),
            snapshot_every: args.snapshot_every.max(1),
            advertise: args.advertise.clone(),
            join: args.join,
            replay_window: Duration::from_secs(args.replay_window_secs),
        };
        stripefs_master::run(cfg, listener, shutdown).await
    })
}

fn write_atomic(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    Ok(())
}
