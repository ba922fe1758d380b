//! `stripefs bench`: one fixed suite of file-system measurements run in a
//! directory and in a baseline directory, printed side by side.

mod floors;
mod report;
mod suite;
mod system;
mod units;

use crate::target::{default_local_dir, read_mount_record, Target};
use anyhow::{anyhow, bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use report::{ClientRss, Context, Place, Report};
use std::io::IsTerminal as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stripefs_proto::types::Policy;
use stripefs_proto::InodeId;
use suite::{Bench, Config};
use tarpc::context;

/// Where the baseline's scratch directory goes when `--baseline` is not given.
pub const DEFAULT_BASELINE: &str = "/var/tmp";

/// Examples printed at the end of `stripefs bench --help`.
pub const EXAMPLES: &str = "\
Examples:
  # The whole suite in a stripefs mount, against local disk (/var/tmp):
  stripefs bench /mnt/stripefs

  # Against a MooseFS mount, both keeping 2 copies (moosefs-up.sh BASE /mnt/moosefs 2):
  stripefs bench /mnt/stripefs --baseline /mnt/moosefs --replication 2

  # A quick run, as JSON:
  stripefs bench /mnt/stripefs --size 256M --files 2000 --small-files 500 --json

  # How fast this machine's FUSE requests, metadata round trips, fdatasync and cold reads are:
  stripefs bench /mnt/stripefs --baseline /mnt/moosefs --floors";

/// Options of `stripefs bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Directory to measure: a stripefs mount (or a directory in one) or any other directory.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Directory to compare against, e.g. a MooseFS mount [default: a fresh directory in /var/tmp].
    #[arg(long, value_name = "DIR")]
    baseline: Option<PathBuf>,
    /// Size of the sequential file; the parallel writers write as much together. K, M, G and T are powers
    /// of 1024.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = units::parse_size)]
    size: u64,
    /// Files of the create, stat, readdir, rename and unlink tests; directories of mkdir and rmdir.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    files: usize,
    /// 64 KiB files of the small-file write and read tests.
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    small_files: usize,
    /// Random 4 KiB reads done by each reading thread.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    random_reads: usize,
    /// Threads of the parallel random-read and parallel-write tests.
    #[arg(long, value_name = "N", default_value_t = 4)]
    threads: usize,
    /// Threads of the parallel metadata tests (create, rename, unlink,
    /// mkdir, rmdir of --files names in all), each in its own directory.
    #[arg(long, value_name = "N", default_value_t = 8)]
    meta_threads: usize,
    /// Replicas of the data written in a stripefs DIR (its scratch directory's policy) [default: inherited
    /// from DIR].
    #[arg(long, value_name = "N")]
    replication: Option<u8>,
    /// Do not drop the kernel's page cache before cold tests (dropping needs root and slows the whole
    /// machine for a moment); cold tests then only drop the data files' cached pages (and a stripefs
    /// client's block cache, which needs no root).
    #[arg(long)]
    no_drop_caches: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Measure only the machine's latency floors (a few seconds): a request the stripefs client answers
    /// itself, a lookup of a missing name in DIR (and in --baseline), and a 4 KiB write + fdatasync and cold
    /// 4 KiB and 64 KiB reads on the local disk (--floors-disk). They bound what any FUSE file system can
    /// reach on this machine.
    #[arg(long)]
    floors: bool,
    /// Directory on the local disk for --floors' disk measurements (needs 256 MiB free).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BASELINE, requires = "floors")]
    floors_disk: PathBuf,
    /// Operations timed per floor by --floors.
    #[arg(long, value_name = "N", default_value_t = 2000, requires = "floors")]
    floor_samples: usize,
}

/// `stripefs bench`.
pub async fn run(args: BenchArgs, master: Option<&str>, secret_file: Option<&Path>) -> anyhow::Result<()> {
    if let Some(r) = args.replication {
        if r == 0 || r > Policy::MAX_REPLICATION {
            bail!("--replication must be between 1 and {}", Policy::MAX_REPLICATION);
        }
    }
    let dir = args.dir.canonicalize().with_context(|| format!("DIR {}", args.dir.display()))?;
    let baseline_arg = args.baseline.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_BASELINE));
    let baseline =
        baseline_arg.canonicalize().with_context(|| format!("baseline directory {}", baseline_arg.display()))?;
    let dir_mount = system::mount_of(&dir);
    // The mount type decides when it is known: a record may be left over
    // from an earlier mount whose device number was reused.
    let record = read_mount_record(&dir);
    let stripefs = match &dir_mount {
        Some(m) => m.is_stripefs(),
        None => record.is_ok(),
    };
    if args.floors {
        // Only a baseline given on the command line is measured.
        let baseline = args.baseline.is_some().then_some(baseline);
        return run_floors(&args, dir, stripefs, baseline).await;
    }
    let cfg = Config {
        dir,
        label: if stripefs { "stripefs" } else { "dir" }.to_string(),
        baseline,
        size_bytes: args.size,
        files: args.files,
        small_files: args.small_files,
        random_reads: args.random_reads,
        threads: args.threads,
        meta_threads: args.meta_threads,
        drop_caches: !args.no_drop_caches,
    };
    // From here on, returning removes the scratch directories.
    let bench = Bench::prepare(cfg)?;
    let mut notes = Vec::new();

    let mut policy = None;
    let mut copies = 1;
    if stripefs {
        let found = async {
            let t = Target::resolve(master, secret_file, Some(bench.scratch()), &default_local_dir())?;
            scratch_policy(&t, bench.scratch(), args.replication).await
        }
        .await;
        match found {
            Ok(p) => {
                copies = u64::from(p.replication);
                policy = Some(p.describe());
            }
            Err(e) if args.replication.is_some() => return Err(e.context("set the scratch directory's replication")),
            Err(e) => notes.push(format!("the scratch directory's policy is unknown: {e:#}")),
        }
    } else if args.replication.is_some() {
        notes.push("--replication was ignored: DIR is not in a stripefs mount".to_string());
    }
    let peak = bench.config().peak_bytes();
    check_space(bench.scratch(), peak.saturating_mul(copies), "DIR")?;
    check_space(bench.baseline_scratch(), peak, "the baseline")?;

    let client = if stripefs { Some(record.as_ref().map_err(|e| format!("{e:#}")).and_then(client_pid)) } else { None };
    let rss_before = match &client {
        Some(Ok(pid)) => system::peak_rss(*pid).ok(),
        _ => None,
    };
    if let Some(Ok(pid)) = &client {
        notes.push(match system::client_local_reads(*pid) {
            Some(true) => "reads of replicas on this host go to their files (local reads); mount with \
                           -o local_reads=off (stripefs up -o local_reads=off) to measure reads over TCP"
                .to_string(),
            Some(false) => "local reads are off: every read goes over TCP".to_string(),
            None => "whether the client reads local replicas from their files is unknown".to_string(),
        });
    }
    let dir_place = Place { path: bench.config().dir.clone(), fstype: dir_mount.map(|m| m.fstype) };
    let baseline_place = Place {
        path: bench.config().baseline.clone(),
        fstype: system::mount_of(&bench.config().baseline).map(|m| m.fstype),
    };

    let report = run_interruptible(bench, !args.json).await?;

    let rss = match client {
        None => ClientRss::NotStripefs,
        Some(Err(why)) => ClientRss::Unknown(why),
        Some(Ok(pid)) => match system::peak_rss(pid) {
            Ok(after_bytes) => ClientRss::Peak { pid, before_bytes: rss_before, after_bytes },
            Err(e) => ClientRss::Unknown(format!("{e:#}")),
        },
    };
    let ctx = Context {
        dir: dir_place,
        baseline: baseline_place,
        policy,
        rss,
        machine: system::Machine::collect(),
        command: system::command_line(),
        notes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report::to_json(&report, &ctx))?);
    } else {
        print!("{}", report::render_table(&report, &ctx));
    }
    Ok(())
}

/// The client process of a mount record, if it still runs.
fn client_pid(r: &crate::target::MountRecord) -> Result<u32, String> {
    match r.pid {
        None => Err("the mount record names no client process".to_string()),
        Some(pid) if !Path::new(&format!("/proc/{pid}")).exists() => {
            Err(format!("the client process {pid} of the mount record is gone"))
        }
        Some(pid) => Ok(pid),
    }
}

/// Sets (or only reads) the policy of the scratch directory of a stripefs
/// DIR: files made in it inherit it.
async fn scratch_policy(t: &Target, scratch: &Path, replication: Option<u8>) -> anyhow::Result<Policy> {
    let ino = InodeId(std::fs::metadata(scratch).with_context(|| format!("stat {}", scratch.display()))?.ino());
    let c = t.connect().await?;
    let attr = match replication {
        Some(r) => {
            let op = stripefs_proto::ops::SetPolicy { ino, replication: Some(r), compression_level: None };
            c.set_policy(context::current(), stripefs_proto::ops::Request::single(op)).await?.map(|a| a.value)
        }
        None => c.getattr(context::current(), ino).await?,
    }
    .map_err(|e| anyhow!("{}: {e}", scratch.display()))?;
    Ok(attr.policy)
}

/// Refuses to start when `dir` cannot hold `need` bytes.
fn check_space(dir: &Path, need: u64, what: &str) -> anyhow::Result<()> {
    let free = system::free_bytes(dir)?;
    if free < need {
        bail!(
            "{what} ({}) has {} free, the benchmark needs {}: lower --size or --small-files",
            dir.display(),
            crate::inspect::human(free),
            crate::inspect::human(need)
        );
    }
    Ok(())
}

/// Runs the suite on a blocking thread with a progress bar on a terminal.
/// The first Ctrl-C stops it after the current operation (the scratch
/// directories are then removed); a second one exits at once.
async fn run_interruptible(bench: Bench, show_progress: bool) -> anyhow::Result<Report> {
    let leftovers = format!("{} and {}", bench.scratch().display(), bench.baseline_scratch().display());
    interruptible(show_progress, leftovers, move |pb, stop| {
        let report = bench.run(pb, stop);
        pb.set_prefix("");
        pb.set_message("removing the scratch directories");
        drop(bench);
        report
    })
    .await
}

/// `stripefs bench --floors`: times the floors and prints them.
async fn run_floors(args: &BenchArgs, dir: PathBuf, stripefs: bool, baseline: Option<PathBuf>) -> anyhow::Result<()> {
    let disk =
        args.floors_disk.canonicalize().with_context(|| format!("--floors-disk {}", args.floors_disk.display()))?;
    check_space(&disk, floors::read_file_bytes(args.floor_samples), "--floors-disk")?;
    let cfg = floors::FloorConfig { dir, stripefs, baseline, disk, samples: args.floor_samples };
    let leftovers = format!("a .stripefs-floors-* file in {}", cfg.disk.display());
    let found = interruptible(!args.json, leftovers, move |pb, stop| {
        pb.set_message("timing the floors");
        floors::measure(&cfg, stop)
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&floors::to_json(&found))?);
    } else {
        print!("{}", floors::render(&found));
    }
    Ok(())
}

/// Runs `job` on a blocking thread with a progress bar on a terminal. The
/// first Ctrl-C sets the job's stop flag (it ends at its next check and
/// cleans up); a second one exits at once, leaving `leftovers` behind.
async fn interruptible<T: Send + 'static>(
    show_progress: bool,
    leftovers: String,
    job: impl FnOnce(&ProgressBar, &AtomicBool) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let pb = if show_progress && std::io::stderr().is_terminal() {
        let style = ProgressStyle::with_template("{prefix:>7} {wide_msg} [{bar:30}] {percent:>3}% {elapsed:>4}")
            .expect("the progress template is valid")
            .progress_chars("=> ");
        let pb = ProgressBar::new(1).with_style(style);
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    } else {
        ProgressBar::hidden()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let job = {
        let (pb, stop) = (pb.clone(), stop.clone());
        tokio::task::spawn_blocking(move || job(&pb, &stop))
    };
    tokio::pin!(job);
    let mut interrupted = false;
    let joined = loop {
        tokio::select! {
            r = &mut job => break r,
            _ = tokio::signal::ctrl_c() => {
                if interrupted {
                    pb.abandon();
                    eprintln!("stripefs: interrupted again: leaving {leftovers} behind");
                    std::process::exit(130);
                }
                interrupted = true;
                stop.store(true, Ordering::Relaxed);
                pb.println("interrupted: stopping after the current operation, then cleaning up");
            }
        }
    };
    pb.finish_and_clear();
    joined.map_err(|e| anyhow!("the benchmark thread failed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(dir: &Path, baseline: &Path) -> Config {
        Config {
            dir: dir.to_path_buf(),
            label: "dir".into(),
            baseline: baseline.to_path_buf(),
            size_bytes: 4 << 20,
            files: 50,
            small_files: 20,
            random_reads: 100,
            threads: 4,
            meta_threads: 3,
            drop_caches: false,
        }
    }

    fn context(cfg: &Config) -> Context {
        Context {
            dir: Place { path: cfg.dir.clone(), fstype: system::mount_of(&cfg.dir).map(|m| m.fstype) },
            baseline: Place { path: cfg.baseline.clone(), fstype: None },
            policy: None,
            rss: ClientRss::NotStripefs,
            machine: system::Machine::collect(),
            command: system::command_line(),
            notes: vec![],
        }
    }

    fn is_empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).expect("list the temp dir").next().is_none()
    }

    /// Runs every test of the suite with tiny sizes in two plain
    /// directories and checks each figure, the JSON and the clean-up.
    #[test]
    fn whole_suite_runs_in_two_temp_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = tempfile::tempdir().expect("tempdir");
        let bench = Bench::prepare(tiny(dir.path(), base.path())).expect("prepare");
        assert!(bench.scratch().starts_with(dir.path()) && bench.scratch().is_dir());
        assert!(bench.baseline_scratch().starts_with(base.path()) && bench.baseline_scratch().is_dir());
        let report = bench.run(&ProgressBar::hidden(), &AtomicBool::new(false)).expect("the suite runs");
        drop(bench);
        assert!(is_empty(dir.path()), "DIR's scratch directory is removed");
        assert!(is_empty(base.path()), "the baseline's scratch directory is removed");

        let json = report::to_json(&report, &context(&report.config));
        let figures = json["figures"].as_array().expect("figures");
        assert_eq!(figures.len(), suite::MEASURES);
        let keys: Vec<&str> = figures.iter().map(|f| f["key"].as_str().expect("key")).collect();
        assert_eq!(
            keys,
            [
                "seq_write",
                "seq_read",
                "random_read_1",
                "random_read_n",
                "parallel_write",
                "create",
                "stat",
                "readdir",
                "rename",
                "unlink",
                "mkdir",
                "rmdir",
                "par_create",
                "par_rename",
                "par_unlink",
                "par_mkdir",
                "par_rmdir",
                "small_write",
                "small_read"
            ]
        );
        for f in figures {
            for k in ["dir", "baseline", "ratio", "dir_seconds", "baseline_seconds"] {
                let v = f[k].as_f64().unwrap_or_else(|| panic!("{k} of {f} is a number"));
                assert!(v > 0.0, "{k} of {f} is positive");
            }
        }
        assert!(json["dir"]["cache_note"].as_str().expect("a note").contains("--no-drop-caches"));
        let table = report::render_table(&report, &context(&report.config));
        assert!(table.contains("random 4 KiB reads, 4 threads (cold)"), "{table}");
    }

    /// An interrupted run ends with an error and still removes its scratch directories.
    #[test]
    fn interrupted_run_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = tempfile::tempdir().expect("tempdir");
        let bench = Bench::prepare(tiny(dir.path(), base.path())).expect("prepare");
        let err = bench.run(&ProgressBar::hidden(), &AtomicBool::new(true)).expect_err("stopped");
        assert!(format!("{err:#}").contains("interrupted"), "{err:#}");
        drop(bench);
        assert!(is_empty(dir.path()) && is_empty(base.path()));
    }

    /// A failing run (here: the baseline directory vanishes) removes DIR's scratch directory too.
    #[test]
    fn failed_run_cleans_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = tempfile::tempdir().expect("tempdir");
        let bench = Bench::prepare(tiny(dir.path(), base.path())).expect("prepare");
        std::fs::remove_dir(bench.baseline_scratch()).expect("remove the baseline scratch");
        assert!(bench.run(&ProgressBar::hidden(), &AtomicBool::new(false)).is_err());
        drop(bench);
        assert!(is_empty(dir.path()) && is_empty(base.path()));
    }

    #[test]
    fn missing_dirs_are_refused_before_anything_is_made() {
        let base = tempfile::tempdir().expect("tempdir");
        let cfg = tiny(Path::new("/nonexistent/stripefs-bench"), base.path());
        assert!(Bench::prepare(cfg).is_err());
        assert!(is_empty(base.path()));
    }

    #[test]
    fn args_parse_with_sizes() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli = Cli::try_parse_from(["x", "/mnt/s", "--size", "256M", "--files", "2000", "--baseline", "/mnt/mfs"])
            .expect("parses");
        assert_eq!(cli.bench.size, 256 << 20);
        assert_eq!(cli.bench.files, 2000);
        assert_eq!(cli.bench.small_files, 2000);
        assert_eq!(cli.bench.random_reads, 20_000);
        assert_eq!(cli.bench.threads, 4);
        assert_eq!(cli.bench.baseline.as_deref(), Some(Path::new("/mnt/mfs")));
        let cli = Cli::try_parse_from(["x", "/mnt/s"]).expect("parses");
        assert_eq!(cli.bench.size, 1 << 30);
        assert!(Cli::try_parse_from(["x", "/mnt/s", "--size", "lots"]).is_err());
        assert!(!cli.bench.floors);
        let cli = Cli::try_parse_from(["x", "/mnt/s", "--floors", "--floors-disk", "/srv"]).expect("parses");
        assert!(cli.bench.floors);
        assert_eq!(cli.bench.floors_disk, Path::new("/srv"));
        assert!(Cli::try_parse_from(["x", "/mnt/s", "--floors-disk", "/srv"]).is_err(), "--floors-disk needs --floors");
    }
}
