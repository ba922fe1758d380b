//! `stripefs`: the admin command line of stripefs.

mod bench;
mod fsck;
mod inspect;
mod local_cluster;
mod masters;
mod target;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Administer a stripefs cluster: start a local one, show its state, show
/// where a file's chunks live, set data policies, measure its speed, check it (fsck).
///
/// Commands that talk to a cluster find it from --master ADDR (with the
/// secret from --secret-file, $STRIPEFS_SECRET, $STRIPEFS_SECRET_FILE or
/// /etc/stripefs/secret), from any PATH inside a stripefs mount of this
/// host, or else from the local cluster started by `stripefs up`.
#[derive(Parser, Debug)]
#[command(name = "stripefs", version)]
struct Cli {
    /// Master address, HOST:PORT; the masters of a group comma-separated
    /// (m1:9400,m2:9400,m3:9400: the leader is found).
    #[arg(long, global = true, value_name = "ADDR")]
    master: Option<String>,
    /// File holding the cluster secret.
    #[arg(long, global = true, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a master and N storage nodes on loopback and mount the filesystem.
    Up(local_cluster::UpArgs),
    /// Unmount and stop the local cluster started by `stripefs up`.
    Down(local_cluster::DownArgs),
    /// Show every storage node (address, host, zone, state, space, chunks) and totals.
    Status {
        /// Any path inside a stripefs mount (selects its cluster).
        path: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Data directory of a local cluster (default /var/tmp/stripefs).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// Show a file's chunks: id, version, length, stored size and replicas.
    Info {
        /// A file or directory inside a stripefs mount.
        path: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show or set the data policy of a directory (inherited by new files) or file.
    Policy {
        /// A directory or file inside a stripefs mount.
        path: PathBuf,
        /// Number of replicas of each chunk (1-8).
        #[arg(long, value_name = "N")]
        replication: Option<u8>,
        /// Block compression: on (zstd level 1), off, or a zstd level 1-19.
        #[arg(long, value_name = "on|off|LEVEL")]
        compression: Option<String>,
        /// Where new files' data lives. replicated (the default): chunks on
        /// several nodes. scratch: one plain file on the node of the host that
        /// creates the file, read and written there at local-disk speed through
        /// FUSE passthrough, lost with that host (for Ray spilling, Spark's
        /// spark.local.dir). A file changes class only while empty.
        #[arg(long, value_name = "replicated|scratch")]
        class: Option<String>,
        /// With --class scratch: remove a scratch file once its home node has
        /// been declared gone (silent for the master's --scratch-lost-after-secs,
        /// 15 minutes by default), so a spill directory does not fill with lost
        /// files.
        #[arg(long, requires = "class")]
        remove_lost: bool,
    },
    /// Measure a directory (a stripefs mount, or any other) against a baseline directory.
    ///
    /// Runs one fixed suite in a scratch directory DIR/.stripefs-bench-<pid>, then the same suite in one
    /// made in the baseline (by default local disk under /var/tmp; any other mount works, e.g. MooseFS),
    /// and prints each figure with its ratio DIR/baseline (above 1: DIR is faster). Both scratch
    /// directories are removed afterwards, also on error or Ctrl-C.
    ///
    /// The suite: sequential write of --size in 1 MiB writes with an fsync at the end; cold sequential
    /// read of it; random aligned 4 KiB reads of it by 1 thread and by --threads threads; --threads
    /// writers each writing --size/--threads; on --files files in one directory: create, stat (cold),
    /// readdir, rename, unlink, then mkdir and rmdir of as many directories; the same create, rename,
    /// unlink, mkdir and rmdir by --meta-threads threads at once, each in a directory of its own
    /// (--files names in all); --small-files files of 64 KiB: write (no fsync), cold read. Data is incompressible. Before each cold test the page cache
    /// is dropped when running as root (the report says when it could not be).
    ///
    /// When DIR (or the baseline) is in a stripefs mount, cold tests also empty that client's block
    /// cache; the report gives the client's peak RSS and --replication sets the scratch directory's
    /// replication.
    #[command(after_help = bench::EXAMPLES)]
    Bench(bench::BenchArgs),
    /// Check the filesystem: namespace (entries, link counts, detached inodes, sizes, counters) and data (missing,
    /// under-replicated, stale, unreferenced and corrupt replicas); with --repair, fix what can be fixed.
    ///
    /// Runs on the live cluster through its master (found from --master ADDR or PATH, as other commands), or with
    /// --db on a stopped master's database file, opened read-only. Prints a summary, or with --json the whole
    /// report, and exits as fsck(8) does.
    #[command(after_help = fsck::EXAMPLES)]
    Fsck(fsck::FsckArgs),
    /// The master group: list its members (the default), or change it.
    ///
    /// Give the masters with --master m1:9400,m2:9400,m3:9400 (any of them will do: the leader is found), or a
    /// path inside a stripefs mount.
    #[command(after_help = MASTERS_EXAMPLES)]
    Masters {
        #[command(subcommand)]
        action: Option<masters::MastersCmd>,
        /// Any path inside a stripefs mount (selects its cluster).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Data directory of a local cluster (default /var/tmp/stripefs).
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
}

const MASTERS_EXAMPLES: &str = "Examples:
  stripefs masters --master m1:9400,m2:9400,m3:9400
  stripefs masters --master m1:9400 init m1:9400,m2:9400,m3:9400   # masters started with --join
  stripefs masters --master m1:9400 add m4:9400                      # started with --join
  stripefs masters --master m1:9400 remove 2803512731
  stripefs masters --master m1:9400 step-down";

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // fsck(8) reports bad arguments as an operational error.
            let fsck = std::env::args().skip(1).any(|a| a == "fsck");
            let code = if e.use_stderr() && fsck { fsck::EXIT_OPERATIONAL } else { e.exit_code() };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let failure = if matches!(cli.command, Command::Fsck(_)) { fsck::EXIT_OPERATIONAL } else { 1 };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stripefs: error: cannot start the async runtime: {e}");
            std::process::exit(failure);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("stripefs: error: {e:#}");
            std::process::exit(failure);
        }
    }
}

/// Runs a command; returns the exit code (non-zero only from fsck).
async fn run(cli: Cli) -> anyhow::Result<i32> {
    let local = target::default_local_dir();
    let resolve = |path: Option<&std::path::Path>, local: &std::path::Path| {
        target::Target::resolve(cli.master.as_deref(), cli.secret_file.as_deref(), path, local)
    };
    match cli.command {
        Command::Up(args) => local_cluster::up(args).await.map(|_| 0),
        Command::Down(args) => local_cluster::down(args).map(|_| 0),
        Command::Status { path, json, data } => {
            inspect::status(&resolve(path.as_deref(), data.as_deref().unwrap_or(&local))?, json).await.map(|_| 0)
        }
        Command::Info { ref path, json } => inspect::info(&resolve(Some(path), &local)?, path, json).await.map(|_| 0),
        Command::Policy { ref path, replication, ref compression, ref class, remove_lost } => {
            let level = compression.as_deref().map(inspect::parse_compression).transpose()?;
            let class = class.as_deref().map(|c| inspect::parse_class(c, remove_lost)).transpose()?;
            inspect::policy(&resolve(Some(path), &local)?, path, replication, level, class).await.map(|_| 0)
        }
        Command::Bench(args) => bench::run(args, cli.master.as_deref(), cli.secret_file.as_deref()).await.map(|_| 0),
        Command::Fsck(args) => fsck::run(args, cli.master.as_deref(), cli.secret_file.as_deref()).await,
        Command::Masters { action, path, json, data } => {
            let t = resolve(path.as_deref(), data.as_deref().unwrap_or(&local))?;
            masters::run(&t, action, json).await.map(|_| 0)
        }
    }
}
