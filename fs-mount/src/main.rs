//! `stripefs-mount`: mounts a stripefs filesystem. Also works as the
//! mount(8) helper `/sbin/mount.fuse.stripefs`.

use anyhow::Context as _;
use clap::Parser;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use stripefs_client::parse_options;
use stripefs_client::records::remove_record;
use stripefs_mount::mount::mount;
use stripefs_proto::net::Secret;

/// Set in the background child so it knows to report readiness on stdout.
const CHILD_ENV: &str = "STRIPEFS_MOUNT_CHILD";
/// How long the parent waits for the background client to mount.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Mount a stripefs filesystem.
///
/// Returns once the mount is live and leaves the client running in the
/// background (-f keeps it in the foreground). Unmount with `umount MOUNTPOINT`.
///
/// Mount options (-o, comma-separated): ro, allow_other[=on|off] (let
/// every user use the mount, modes still checked by the kernel; on by
/// default when root mounts, as Ray and Spark workers rarely run as root;
/// allow_other=off keeps it to root), allow_root,
/// attr_timeout=SECS, entry_timeout=SECS (kernel caches, default 1),
/// master_timeout=SECS (how long calls wait for an unreachable master,
/// e.g. during its restart, before failing with EIO; default 60, at most 240),
/// host=NAME (this host, for read-local; default: hostname), zone=NAME,
/// secret_file=PATH (default: $STRIPEFS_SECRET, $STRIPEFS_SECRET_FILE or
/// /etc/stripefs/secret), threads=N (FUSE threads, default: cores,
/// at least 4), cache_mb=N (block
/// cache, default 256), dirty_mb=N (unwritten data the whole mount may hold, default 128),
/// read_ahead_kb=N (kernel read-ahead, default 4096; 0 keeps the kernel's
/// 128; needs root), local_reads=on|off (read the replicas of storage nodes
/// on this host straight from their files, default on), dir_leases=on|off
/// (answer lookups of missing names in a directory this mount alone
/// changes without asking the master, default on), passthrough=on|off (the
/// kernel reads and writes scratch files kept on this host's node straight
/// from their plain files; needs a root mount; default on), log=PATH (log of a
/// background client), metrics=ADDR (serve Prometheus metrics on
/// http://ADDR/metrics, with /healthz and /readyz). fstab options such as _netdev, defaults, noauto and
/// nofail are accepted and ignored.
///
/// As a mount(8) helper: link this binary as /sbin/mount.fuse.stripefs, then
/// `mount -t fuse.stripefs HOST:PORT /mnt` or in /etc/fstab:
/// `HOST:PORT /mnt fuse.stripefs _netdev,secret_file=/etc/stripefs/secret 0 0`
#[derive(Parser, Debug)]
#[command(name = "stripefs-mount", version, verbatim_doc_comment)]
struct Args {
    /// Address of the master, HOST:PORT.
    master: String,
    /// Directory to mount on.
    mountpoint: PathBuf,
    /// Mount options, comma-separated (may be repeated).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (logs go to stderr).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// mount(8) compatibility: do not write /etc/mtab (ignored).
    #[arg(short = 'n', hide = true)]
    no_mtab: bool,
    /// mount(8) compatibility: sloppy options (ignored).
    #[arg(short = 's', hide = true)]
    sloppy: bool,
    /// mount(8) compatibility: verbose (ignored).
    #[arg(short = 'v', hide = true)]
    verbose: bool,
}

fn main() {
    let args = Args::parse();
    let child = std::env::var_os(CHILD_ENV).is_some();
    let result = if args.foreground || child { run_here(&args, child) } else { start_background(&args) };
    if let Err(e) = result {
        if child {
            // The waiting parent prints it.
            println!("error: {e:#}");
        } else {
            eprintln!("stripefs-mount: error: {e:#}");
        }
        std::process::exit(1);
    }
}

/// Re-runs this program in the background and waits until it reports the
/// mount live (or fails).
fn start_background(args: &Args) -> anyhow::Result<()> {
    let opts = parse_options(&args.options).map_err(anyhow::Error::msg)?;
    let exe = std::env::current_exe().context("find this program")?;
    let stderr = match &opts.log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("open log {}", p.display()))?,
        ),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(exe);
    cmd.arg(&args.master).arg(&args.mountpoint);
    for o in &args.options {
        cmd.arg("-o").arg(o);
    }
    let mut child = {
        use std::os::unix::process::CommandExt;
        cmd.env(CHILD_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Its own process group: a Ctrl-C in this terminal does not reach it.
            .process_group(0)
            .spawn()
            .context("start the background client")?
    };
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(line) if line.trim() == "ready" => Ok(()),
        Ok(line) if line.starts_with("error: ") => {
            let _ = child.wait();
            anyhow::bail!("{}", line.trim_start_matches("error: ").trim())
        }
        Ok(_) => {
            let status = child.wait().ok();
            anyhow::bail!("the client exited during start-up ({status:?}); run with -f to see its log")
        }
        Err(_) => {
            let _ = child.kill();
            anyhow::bail!("the client did not finish mounting within {START_TIMEOUT:?}")
        }
    }
}

/// Mounts and serves in this process until unmounted or signalled.
fn run_here(args: &Args, child: bool) -> anyhow::Result<()> {
    stripefs_daemon::logs::init();
    let opts = parse_options(&args.options).map_err(anyhow::Error::msg)?;
    let secret = Secret::resolve(opts.secret_file.as_deref())?;
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    let mut m = mount(&args.master, &args.mountpoint, &opts, secret, rt.handle())?;
    tracing::info!("mounted {} on {}", args.master, args.mountpoint.display());
    let mut unmounter = m.session.unmount_callable();
    rt.spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install the SIGTERM handler: {e}");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received: unmounting");
        if let Err(e) = unmounter.unmount() {
            tracing::error!("unmount failed: {e}");
        }
    });
    if child {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    if let Some(metrics) = &m.metrics {
        metrics.serving.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let r = m.session.run();
    m.metrics_stop.cancel();
    remove_record(m.record.take().as_deref());
    tracing::info!("unmounted {}", args.mountpoint.display());
    rt.shutdown_timeout(Duration::from_secs(5));
    r.context("FUSE session")
}
