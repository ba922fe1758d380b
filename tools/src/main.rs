//! `stripefs`: the admin command line of stripefs.

mod inspect;
mod local;
mod target;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Administer a stripefs cluster: start a local one, show its state, show
/// where a file's chunks live, set data policies.
///
/// Commands that talk to a cluster find it from --master ADDR (with the
/// secret from --secret-file, $STRIPEFS_SECRET, $STRIPEFS_SECRET_FILE or
/// /etc/stripefs/secret), from any PATH inside a stripefs mount of this
/// host, or else from the local cluster started by `stripefs up`.
#[derive(Parser, Debug)]
#[command(name = "stripefs", version)]
struct Cli {
    /// Master address, HOST:PORT.
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
    Up(local::UpArgs),
    /// Unmount and stop the local cluster started by `stripefs up`.
    Down(local::DownArgs),
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
    },
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stripefs: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(run(cli));
    if let Err(e) = result {
        eprintln!("stripefs: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let local = target::default_local_dir();
    let resolve = |path: Option<&std::path::Path>, local: &std::path::Path| {
        target::Target::resolve(cli.master.as_deref(), cli.secret_file.as_deref(), path, local)
    };
    match cli.command {
        Command::Up(args) => local::up(args).await,
        Command::Down(args) => local::down(args),
        Command::Status { path, json, data } => {
            inspect::status(&resolve(path.as_deref(), data.as_deref().unwrap_or(&local))?, json).await
        }
        Command::Info { ref path, json } => inspect::info(&resolve(Some(path), &local)?, path, json).await,
        Command::Policy { ref path, replication, ref compression } => {
            let level = compression.as_deref().map(inspect::parse_compression).transpose()?;
            inspect::policy(&resolve(Some(path), &local)?, path, replication, level).await
        }
    }
}
