//! The suite: one fixed list of measurements, run in a scratch directory
//! of DIR and then in one of the baseline, each removed again by a guard.
//!
//! Every figure is timed with [`Instant`] around the measured phase only:
//! buffers, names and random offsets are made before the clock starts and
//! caches are dropped before it starts. Data is incompressible, so a
//! compressing filesystem gains nothing from it.

use super::report::{Measure, Report, SideResult, Unit};
use super::system;
use super::units::{group, short_size};
use anyhow::{anyhow, bail, ensure, Context as _};
use indicatif::ProgressBar;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Bytes of each write and read of the sequential and parallel tests.
pub const IO_BYTES: usize = 1 << 20;
/// Bytes of each random read.
pub const RANDOM_READ_BYTES: usize = 4096;
/// Size of each small file.
pub const SMALL_FILE_BYTES: usize = 64 << 10;
/// Figures measured in each directory.
pub const MEASURES: usize = 19;
/// Operations between two progress updates (and interrupt checks in threads).
const TICK_OPS: usize = 64;

/// What the suite runs, and where.
#[derive(Clone, Debug)]
pub struct Config {
    /// The directory measured; the scratch directory is made inside it.
    pub dir: PathBuf,
    /// Name of DIR in progress messages and in the table (`stripefs`, `dir`).
    pub label: String,
    /// The directory compared against; its scratch directory is made inside it.
    pub baseline: PathBuf,
    /// Size of the sequential file, in bytes; the parallel writers write as much together.
    pub size_bytes: u64,
    /// Files (and directories) of the metadata tests.
    pub files: usize,
    /// Number of 64 KiB files of the small-file tests.
    pub small_files: usize,
    /// Random 4 KiB reads done by each reading thread.
    pub random_reads: usize,
    /// Threads of the parallel random-read and write tests.
    pub threads: usize,
    /// Threads of the parallel metadata tests, each in a directory of its
    /// own (as Spark's executors or Ray's workers).
    pub meta_threads: usize,
    /// Drop the kernel's page cache before cold phases (needs root). When it
    /// is off or fails, cold phases only make the kernel forget the data
    /// files' pages (posix_fadvise DONTNEED) and the report says so.
    pub drop_caches: bool,
}

impl Config {
    /// Refuses sizes and counts the suite cannot run with.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(self.size_bytes >= IO_BYTES as u64, "--size must be at least 1M");
        ensure!((1..=256).contains(&self.threads), "--threads must be between 1 and 256");
        ensure!(
            self.size_bytes / self.threads as u64 >= RANDOM_READ_BYTES as u64,
            "--size must be at least 4K per thread"
        );
        ensure!(self.files >= 1, "--files must be at least 1");
        ensure!((1..=256).contains(&self.meta_threads), "--meta-threads must be between 1 and 256");
        ensure!(self.small_files >= 1, "--small-files must be at least 1");
        ensure!(self.random_reads >= 1, "--random-reads must be at least 1");
        Ok(())
    }

    /// The most bytes of file data the suite keeps in one directory at once.
    pub fn peak_bytes(&self) -> u64 {
        self.size_bytes.max(self.small_files as u64 * SMALL_FILE_BYTES as u64)
    }
}

/// A directory this run made, removed with everything in it when dropped:
/// on success, on error, on interrupt and on panic alike.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Makes `parent/name`, which must not exist yet: a directory this run
    /// did not make is never adopted, so never removed.
    pub fn create(parent: &Path, name: &str) -> anyhow::Result<Scratch> {
        let path = parent.join(name);
        std::fs::create_dir(&path).with_context(|| format!("create the scratch directory {}", path.display()))?;
        Ok(Scratch { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!(
                "stripefs: warning: cannot remove the scratch directory {}: {e}; remove it by hand",
                self.path.display()
            ),
        }
    }
}

/// A prepared run: the configuration and both scratch directories, which
/// are removed when it is dropped.
pub struct Bench {
    cfg: Config,
    dir: Scratch,
    baseline: Scratch,
}

impl Bench {
    /// Checks the configuration and makes the scratch directories
    /// `DIR/.stripefs-bench-<pid>` and `BASELINE/.stripefs-bench-<pid>-baseline`.
    pub fn prepare(cfg: Config) -> anyhow::Result<Bench> {
        cfg.check()?;
        for (what, p) in [("DIR", &cfg.dir), ("baseline", &cfg.baseline)] {
            let m = std::fs::metadata(p).with_context(|| format!("{what} {}", p.display()))?;
            ensure!(m.is_dir(), "{what} {} is not a directory", p.display());
        }
        let pid = std::process::id();
        let dir = Scratch::create(&cfg.dir, &format!(".stripefs-bench-{pid}"))?;
        let baseline = Scratch::create(&cfg.baseline, &format!(".stripefs-bench-{pid}-baseline"))?;
        Ok(Bench { cfg, dir, baseline })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// DIR's scratch directory.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// The baseline's scratch directory.
    pub fn baseline_scratch(&self) -> &Path {
        self.baseline.path()
    }

    /// Runs the suite in DIR, then in the baseline. `progress` shows each
    /// phase; setting `stop` ends the run with an error at the next check.
    pub fn run(&self, progress: &ProgressBar, stop: &AtomicBool) -> anyhow::Result<Report> {
        let data = pattern(IO_BYTES, 0x5172_1bef_5eed);
        let total = 2 * MEASURES;
        let dir = Runner::new(&self.cfg, self.dir.path(), &self.cfg.label, progress, stop, &data, 0, total)
            .run_all()
            .with_context(|| format!("benchmark in {}", self.dir.path().display()))?;
        let baseline = Runner::new(&self.cfg, self.baseline.path(), "baseline", progress, stop, &data, MEASURES, total)
            .run_all()
            .with_context(|| format!("benchmark in {}", self.baseline.path().display()))?;
        Ok(Report::new(self.cfg.clone(), dir, baseline))
    }
}

/// The suite in one directory.
struct Runner<'a> {
    cfg: &'a Config,
    root: &'a Path,
    label: &'a str,
    pb: &'a ProgressBar,
    stop: &'a AtomicBool,
    /// `IO_BYTES` of random data; every write sends (a prefix of) it with
    /// its index stamped in the first 8 bytes.
    data: &'a [u8],
    step: usize,
    total: usize,
    /// Whether `root` is in a stripefs mount, whose client cache cold
    /// phases empty too.
    stripefs: bool,
    cache_note: Option<String>,
    measures: Vec<Measure>,
}

impl<'a> Runner<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &'a Config,
        root: &'a Path,
        label: &'a str,
        pb: &'a ProgressBar,
        stop: &'a AtomicBool,
        data: &'a [u8],
        step: usize,
        total: usize,
    ) -> Runner<'a> {
        let stripefs = system::mount_of(root).is_some_and(|m| m.is_stripefs());
        Runner { cfg, root, label, pb, stop, data, step, total, stripefs, cache_note: None, measures: Vec::new() }
    }

    fn run_all(mut self) -> anyhow::Result<SideResult> {
        let seq = self.root.join("seq");
        self.seq_write(&seq)?;
        self.seq_read(&seq)?;
        self.random_reads(&seq, 1)?;
        self.random_reads(&seq, self.cfg.threads)?;
        std::fs::remove_file(&seq).with_context(|| format!("remove {}", seq.display()))?;
        self.parallel_write()?;
        self.metadata()?;
        self.parallel_metadata()?;
        self.small_files()?;
        debug_assert_eq!(self.measures.len(), MEASURES);
        Ok(SideResult { measures: self.measures, cache_note: self.cache_note })
    }

    /// Starts the next phase on the progress bar, with `len` units of work.
    fn phase(&mut self, what: &str, len: u64) -> anyhow::Result<()> {
        stopped(self.stop)?;
        self.step += 1;
        self.pb.set_prefix(format!("[{}/{}]", self.step, self.total));
        self.pb.set_message(format!("{}: {what}", self.label));
        self.pb.set_length(len.max(1));
        self.pb.set_position(0);
        Ok(())
    }

    fn record(&mut self, key: &'static str, test: String, unit: Unit, amount: f64, elapsed: Duration) {
        self.measures.push(Measure { key, test, unit, amount, seconds: elapsed.as_secs_f64() });
    }

    /// Empties the caches before a cold phase that reads `files` (or only
    /// names, when `files` is empty).
    fn cold(&mut self, files: &[PathBuf]) -> anyhow::Result<()> {
        if self.stripefs {
            system::drop_client_cache(self.root).context("empty the stripefs client's block cache")?;
        }
        let why = if self.cfg.drop_caches {
            match system::drop_caches(self.root) {
                Ok(()) => return Ok(()),
                Err(e) => format!("{e:#}"),
            }
        } else {
            "--no-drop-caches".to_string()
        };
        for f in files {
            stopped(self.stop)?;
            system::forget_file(f)?;
        }
        if self.cache_note.is_none() {
            self.cache_note = Some(format!(
                "page cache not dropped ({why}): cold phases only made the kernel forget the data files' pages \
                 (posix_fadvise), cached names and attributes stayed"
            ));
        }
        Ok(())
    }

    fn seq_write(&mut self, path: &Path) -> anyhow::Result<()> {
        let size = self.cfg.size_bytes;
        self.phase("sequential write", size)?;
        let mut buf = self.data.to_vec();
        let t = Instant::now();
        write_stream(path, size, &mut buf, self.pb, self.stop)?;
        let e = t.elapsed();
        let test = format!("seq write {} (1 MiB writes + fsync)", short_size(size));
        self.record("seq_write", test, Unit::Mib, mib(size), e);
        Ok(())
    }

    fn seq_read(&mut self, path: &Path) -> anyhow::Result<()> {
        let size = self.cfg.size_bytes;
        self.phase("sequential read", size)?;
        self.cold(&[path.to_path_buf()])?;
        let mut buf = vec![0u8; IO_BYTES];
        let t = Instant::now();
        let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut total = 0u64;
        for i in 0u64.. {
            stopped(self.stop)?;
            let n = read_full(&mut f, &mut buf).with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                break;
            }
            check_block(&buf[..n], i * IO_BYTES as u64, self.data)
                .with_context(|| format!("{} read back wrong data", path.display()))?;
            total += n as u64;
            self.pb.inc(n as u64);
        }
        drop(f);
        let e = t.elapsed();
        ensure!(total == size, "{} read back {total} bytes, {size} were written", path.display());
        let test = format!("seq read {} (1 MiB reads, cold)", short_size(size));
        self.record("seq_read", test, Unit::Mib, mib(size), e);
        Ok(())
    }

    fn random_reads(&mut self, path: &Path, threads: usize) -> anyhow::Result<()> {
        let n = self.cfg.random_reads;
        let what = if threads == 1 { "1 thread".to_string() } else { format!("{threads} threads") };
        self.phase(&format!("random 4 KiB reads, {what}"), (n * threads) as u64)?;
        self.cold(&[path.to_path_buf()])?;
        let blocks = self.cfg.size_bytes / RANDOM_READ_BYTES as u64;
        let offsets: Vec<Vec<u64>> = (0..threads)
            .map(|t| {
                let mut rng = SplitMix64(0x4b1d_0000 + t as u64 * 7919 + threads as u64);
                (0..n).map(|_| rng.next() % blocks * RANDOM_READ_BYTES as u64).collect()
            })
            .collect();
        let (pb, stop, data) = (self.pb, self.stop, self.data);
        let e = timed_threads(&offsets, |offs| {
            let file = File::open(path).with_context(|| format!("open {}", path.display()));
            move || -> anyhow::Result<()> {
                let f = file?;
                let mut buf = [0u8; RANDOM_READ_BYTES];
                for (k, &off) in offs.iter().enumerate() {
                    if k.is_multiple_of(TICK_OPS) {
                        stopped(stop)?;
                        pb.inc(k.min(TICK_OPS) as u64);
                    }
                    f.read_exact_at(&mut buf, off).with_context(|| format!("read {} at {off}", path.display()))?;
                    check_block(&buf, off, data).with_context(|| format!("{} read back wrong data", path.display()))?;
                }
                Ok(())
            }
        })?;
        let key = if threads == 1 { "random_read_1" } else { "random_read_n" };
        let test = format!("random 4 KiB reads, {what} (cold)");
        self.record(key, test, Unit::Ops, (n * threads) as f64, e);
        Ok(())
    }

    fn parallel_write(&mut self) -> anyhow::Result<()> {
        let threads = self.cfg.threads;
        let per = self.cfg.size_bytes / threads as u64;
        self.phase(&format!("parallel write, {threads} writers"), per * threads as u64)?;
        let paths: Vec<PathBuf> = (0..threads).map(|i| self.root.join(format!("par{i}"))).collect();
        let (pb, stop, data) = (self.pb, self.stop, self.data);
        let e = timed_threads(&paths, |path| {
            let mut buf = data.to_vec();
            move || write_stream(path, per, &mut buf, pb, stop)
        })?;
        for p in &paths {
            std::fs::remove_file(p).with_context(|| format!("remove {}", p.display()))?;
        }
        let test = format!("parallel write {threads} x {} (1 MiB + fsync)", short_size(per));
        self.record("parallel_write", test, Unit::Mib, mib(per * threads as u64), e);
        Ok(())
    }

    fn metadata(&mut self) -> anyhow::Result<()> {
        let n = self.cfg.files;
        let dir = self.root.join("meta");
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let names = |prefix: char| -> Vec<PathBuf> { (0..n).map(|i| dir.join(format!("{prefix}{i:07}"))).collect() };
        let (files, renamed, dirs) = (names('f'), names('r'), names('d'));
        let count = group(n as u64);

        self.phase(&format!("create {count} files"), n as u64)?;
        let e = self.each(&files, |p| OpenOptions::new().write(true).create_new(true).open(p).map(drop))?;
        self.record("create", format!("create {count} files (O_CREAT + close)"), Unit::Ops, n as f64, e);

        self.phase(&format!("stat {count} files"), n as u64)?;
        self.cold(&[])?;
        let e = self.each(&files, |p| {
            let m = std::fs::metadata(p)?;
            if !m.is_file() || m.len() != 0 {
                return Err(std::io::Error::other(format!("not an empty file: {m:?}")));
            }
            Ok(())
        })?;
        self.record("stat", format!("stat {count} files (cold)"), Unit::Ops, n as f64, e);

        self.phase(&format!("readdir {count} entries"), n as u64)?;
        self.cold(&[])?;
        let t = Instant::now();
        let mut listed = 0usize;
        for entry in std::fs::read_dir(&dir).with_context(|| format!("readdir {}", dir.display()))? {
            entry.with_context(|| format!("readdir {}", dir.display()))?;
            listed += 1;
            if listed.is_multiple_of(TICK_OPS) {
                self.pb.inc(TICK_OPS as u64);
            }
        }
        let e = t.elapsed();
        ensure!(listed == n, "readdir of {} listed {listed} entries, {n} files were created", dir.display());
        self.record("readdir", format!("readdir {count} entries (cold)"), Unit::Entries, n as f64, e);

        self.phase(&format!("rename {count} files"), n as u64)?;
        let pairs: Vec<(&PathBuf, &PathBuf)> = files.iter().zip(&renamed).collect();
        let e = self.each(&pairs, |(from, to)| std::fs::rename(from, to))?;
        self.record("rename", format!("rename {count} files"), Unit::Ops, n as f64, e);

        self.phase(&format!("unlink {count} files"), n as u64)?;
        let e = self.each(&renamed, |p| std::fs::remove_file(p))?;
        self.record("unlink", format!("unlink {count} files"), Unit::Ops, n as f64, e);

        self.phase(&format!("mkdir {count} directories"), n as u64)?;
        let e = self.each(&dirs, |p| std::fs::create_dir(p))?;
        self.record("mkdir", format!("mkdir {count} directories"), Unit::Ops, n as f64, e);

        self.phase(&format!("rmdir {count} directories"), n as u64)?;
        let e = self.each(&dirs, |p| std::fs::remove_dir(p))?;
        self.record("rmdir", format!("rmdir {count} directories"), Unit::Ops, n as f64, e);

        std::fs::remove_dir(&dir).with_context(|| format!("remove {}", dir.display()))
    }

    /// The metadata tests by `meta_threads` threads at once, each in a
    /// directory of its own, `files` names in all.
    fn parallel_metadata(&mut self) -> anyhow::Result<()> {
        let threads = self.cfg.meta_threads;
        let per = (self.cfg.files / threads).max(1);
        let n = per * threads;
        let top = self.root.join("meta-par");
        std::fs::create_dir(&top).with_context(|| format!("create {}", top.display()))?;
        let dirs: Vec<PathBuf> = (0..threads).map(|t| top.join(format!("t{t:03}"))).collect();
        for d in &dirs {
            std::fs::create_dir(d).with_context(|| format!("create {}", d.display()))?;
        }
        let count = group(n as u64);
        let label = format!("{threads} threads in {threads} directories");
        type Op = fn(&Path, usize) -> std::io::Result<()>;
        let phases: [(&'static str, &str, Op); 5] = [
            ("par_create", "create", |d, i| {
                OpenOptions::new().write(true).create_new(true).open(d.join(format!("f{i:07}"))).map(drop)
            }),
            ("par_rename", "rename", |d, i| std::fs::rename(d.join(format!("f{i:07}")), d.join(format!("r{i:07}")))),
            ("par_unlink", "unlink", |d, i| std::fs::remove_file(d.join(format!("r{i:07}")))),
            ("par_mkdir", "mkdir", |d, i| std::fs::create_dir(d.join(format!("d{i:07}")))),
            ("par_rmdir", "rmdir", |d, i| std::fs::remove_dir(d.join(format!("d{i:07}")))),
        ];
        for (key, what, op) in phases {
            let noun = if what.ends_with("dir") { "directories" } else { "files" };
            self.phase(&format!("{what} {count} {noun}, {label}"), n as u64)?;
            let (pb, stop) = (self.pb, self.stop);
            let e = timed_threads(&dirs, |d| {
                move || -> anyhow::Result<()> {
                    for i in 0..per {
                        if i.is_multiple_of(TICK_OPS) {
                            stopped(stop)?;
                            pb.inc(i.min(TICK_OPS) as u64);
                        }
                        op(d, i).with_context(|| format!("{what} #{i} in {}", d.display()))?;
                    }
                    Ok(())
                }
            })?;
            self.record(key, format!("{what} {count} {noun}, {label}"), Unit::Ops, n as f64, e);
        }
        for d in &dirs {
            std::fs::remove_dir(d).with_context(|| format!("remove {}", d.display()))?;
        }
        std::fs::remove_dir(&top).with_context(|| format!("remove {}", top.display()))
    }

    fn small_files(&mut self) -> anyhow::Result<()> {
        let n = self.cfg.small_files;
        let dir = self.root.join("small");
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("s{i:07}"))).collect();
        let bytes = (n * SMALL_FILE_BYTES) as u64;
        let count = group(n as u64);
        let data = self.data;

        self.phase(&format!("write {count} x 64 KiB files"), n as u64)?;
        let mut buf = data[..SMALL_FILE_BYTES].to_vec();
        let indexed: Vec<(usize, &PathBuf)> = paths.iter().enumerate().collect();
        let e = self.each(&indexed, |(i, p)| {
            stamp(&mut buf, *i as u64);
            OpenOptions::new().write(true).create_new(true).open(p)?.write_all(&buf)
        })?;
        self.record("small_write", format!("write {count} x 64 KiB files (no fsync)"), Unit::Mib, mib(bytes), e);

        self.phase(&format!("read {count} x 64 KiB files"), n as u64)?;
        self.cold(&paths)?;
        // One byte more than a file holds: a longer file shows.
        let mut buf = vec![0u8; SMALL_FILE_BYTES + 1];
        let e = self.each(&indexed, |(i, p)| {
            let got = read_full(&mut File::open(p)?, &mut buf)?;
            if got != SMALL_FILE_BYTES {
                return Err(std::io::Error::other(format!("read {got} bytes, {SMALL_FILE_BYTES} were written")));
            }
            check_block(&buf[..got], *i as u64 * IO_BYTES as u64, data).map_err(std::io::Error::other)
        })?;
        self.record("small_read", format!("read {count} x 64 KiB files (cold)"), Unit::Mib, mib(bytes), e);

        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))
    }

    /// Times `op` on each item, one after another, and returns the time taken.
    fn each<T: std::fmt::Debug>(
        &self,
        items: &[T],
        mut op: impl FnMut(&T) -> std::io::Result<()>,
    ) -> anyhow::Result<Duration> {
        let t = Instant::now();
        for (i, item) in items.iter().enumerate() {
            if i.is_multiple_of(TICK_OPS) {
                stopped(self.stop)?;
                self.pb.set_position(i as u64);
            }
            op(item).with_context(|| format!("{item:?}"))?;
        }
        Ok(t.elapsed())
    }
}

/// Runs one thread per job: `setup(job)` runs in the thread before the
/// clock starts (opening files, say) and returns the timed work. Returns
/// the time from the moment every thread is ready until the last ends.
fn timed_threads<'j, J, S, W>(jobs: &'j [J], setup: S) -> anyhow::Result<Duration>
where
    J: Sync,
    S: Fn(&'j J) -> W + Sync,
    W: FnOnce() -> anyhow::Result<()>,
{
    let ready = Barrier::new(jobs.len() + 1);
    let (elapsed, results) = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|job| {
                let (ready, setup) = (&ready, &setup);
                s.spawn(move || {
                    let work = setup(job);
                    ready.wait();
                    work()
                })
            })
            .collect();
        ready.wait();
        let t = Instant::now();
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (t.elapsed(), results)
    });
    for r in results {
        r.map_err(|_| anyhow!("a benchmark thread panicked"))??;
    }
    Ok(elapsed)
}

/// Creates `path` and writes `size` bytes in `IO_BYTES` writes of `buf`
/// (each with its index stamped in front), then fsyncs and closes it.
fn write_stream(path: &Path, size: u64, buf: &mut [u8], pb: &ProgressBar, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let mut off = 0u64;
    while off < size {
        stopped(stop)?;
        let n = (size - off).min(buf.len() as u64) as usize;
        stamp(buf, off / IO_BYTES as u64);
        f.write_all(&buf[..n]).with_context(|| format!("write {} at {off}", path.display()))?;
        off += n as u64;
        pb.inc(n as u64);
    }
    f.sync_all().with_context(|| format!("fsync {}", path.display()))
}

/// Puts `index` in the first 8 bytes of a block about to be written.
fn stamp(buf: &mut [u8], index: u64) {
    buf[..8].copy_from_slice(&index.to_le_bytes());
}

/// Checks the start of `block`, read from file offset `off`, against what
/// was written there: the stamp of its write at the start of every
/// `IO_BYTES`, else the random data. Only the first 64 bytes are compared,
/// so that checking costs nothing next to reading.
fn check_block(block: &[u8], off: u64, data: &[u8]) -> anyhow::Result<()> {
    let pos = (off % IO_BYTES as u64) as usize;
    let end = block.len().min(64);
    let from = if pos == 0 && end >= 8 {
        let index = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        ensure!(index == off / IO_BYTES as u64, "at offset {off}: stamp of write {index}");
        8
    } else {
        0
    };
    if block[from..end] != data[pos + from..pos + end] {
        bail!("at offset {off}: bytes differ from those written");
    }
    Ok(())
}

/// Reads until `buf` is full or the end of the file; returns the bytes read.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Fails with "interrupted" once `stop` is set.
pub(super) fn stopped(stop: &AtomicBool) -> anyhow::Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// `len` pseudo-random (incompressible) bytes.
pub(super) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The SplitMix64 generator: fast, seedable, good enough for offsets and
/// incompressible data.
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    /// The next number.
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_does_not_compress() {
        let p = pattern(1 << 16, 1);
        let distinct: std::collections::HashSet<&[u8]> = p.chunks(8).collect();
        assert_eq!(distinct.len(), p.len() / 8);
        assert_ne!(pattern(64, 1), pattern(64, 2));
    }

    #[test]
    fn blocks_are_checked() {
        let data = pattern(IO_BYTES, 3);
        let mut block = data[..4096].to_vec();
        stamp(&mut block, 5);
        check_block(&block, 5 * IO_BYTES as u64, &data).expect("stamped start of a write");
        assert!(check_block(&block, 4 * IO_BYTES as u64, &data).is_err(), "wrong stamp");
        check_block(&data[8192..12288], 7 * IO_BYTES as u64 + 8192, &data).expect("inside a write");
        assert!(check_block(&data[4096..8192], 8192, &data).is_err(), "wrong place");
    }

    #[test]
    fn configs_are_checked() {
        let mut cfg = Config {
            dir: "/".into(),
            label: "dir".into(),
            baseline: "/".into(),
            size_bytes: 4 << 20,
            files: 1,
            small_files: 1,
            random_reads: 1,
            threads: 4,
            meta_threads: 8,
            drop_caches: false,
        };
        cfg.check().expect("small but valid");
        cfg.size_bytes = 4096;
        assert!(cfg.check().is_err());
        cfg.size_bytes = 4 << 20;
        cfg.threads = 0;
        assert!(cfg.check().is_err());
        cfg.threads = 1;
        cfg.files = 0;
        assert!(cfg.check().is_err());
    }

    #[test]
    fn scratch_is_removed_when_dropped() {
        let parent = tempfile::tempdir().expect("tempdir");
        let path = {
            let s = Scratch::create(parent.path(), "x").expect("create");
            std::fs::create_dir(s.path().join("sub")).expect("mkdir");
            std::fs::write(s.path().join("sub/f"), b"data").expect("write");
            assert!(Scratch::create(parent.path(), "x").is_err(), "an existing directory is not adopted");
            s.path().to_path_buf()
        };
        assert!(!path.exists());
    }
}
