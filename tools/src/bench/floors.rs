//! `stripefs bench --floors`: the latencies of the few operations every
//! request of a FUSE file system is made of, measured on this machine.
//!
//! The suite's figures are ratios; the floors say how far a figure can
//! still move. A durable create through FUSE is at least four kernel
//! requests (LOOKUP of the new name, CREATE, FLUSH, RELEASE), one metadata
//! round trip and one fdatasync; a cold 4 KiB read is at least one request
//! and one read from the disk. Multiplying these out gives the best rate
//! any FUSE file system can reach here, whatever its design.

use super::suite::{pattern, stopped, SplitMix64};
use anyhow::{ensure, Context as _};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Most bytes of the file the cold reads read from.
const MAX_READ_FILE_BYTES: u64 = 256 << 20;
/// The small read and the journal-sized write.
const SMALL: usize = 4096;
/// The read of a whole stripefs block (its crc unit).
const BLOCK: usize = 64 * 1024;

/// What to measure, and where.
#[derive(Clone, Debug)]
pub struct FloorConfig {
    /// The directory measured (a stripefs mount, or any other directory).
    pub dir: PathBuf,
    /// Whether `dir` is in a stripefs mount (then the client's own request
    /// time is measured too).
    pub stripefs: bool,
    /// A second directory whose missing-name lookup is measured, if any.
    pub baseline: Option<PathBuf>,
    /// A directory on the local disk for the fdatasync and cold reads.
    pub disk: PathBuf,
    /// Operations timed per floor.
    pub samples: usize,
}

/// One floor: the spread of one operation's latency.
#[derive(Clone, Debug, PartialEq)]
pub struct Floor {
    /// Stable name for JSON.
    pub key: &'static str,
    /// What was timed, for people.
    pub what: String,
    /// Median latency in microseconds.
    pub p50_us: f64,
    /// 90th percentile in microseconds.
    pub p90_us: f64,
}

/// Bytes of the file the cold reads of `samples` samples read from: four
/// blocks per read, so that the reads land far apart.
pub fn read_file_bytes(samples: usize) -> u64 {
    (samples as u64).saturating_mul(4 * BLOCK as u64).clamp(1 << 20, MAX_READ_FILE_BYTES)
}

/// Times every floor. Files made on the disk are removed, also on error.
pub fn measure(cfg: &FloorConfig, stop: &AtomicBool) -> anyhow::Result<Vec<Floor>> {
    ensure!(cfg.samples >= 1, "at least one sample per floor");
    let mut out = Vec::new();
    if cfg.stripefs {
        let what = "request the stripefs client answers itself (getxattr of security.*)";
        out.push(floor("client_request", what, time(cfg.samples, stop, |_| client_request(&cfg.dir))?));
    }
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let nonce = format!("{}-{}", std::process::id(), since_epoch.as_nanos());
    let what = format!("lookup of a missing name in {}", cfg.dir.display());
    out.push(floor("missing_lookup", &what, time(cfg.samples, stop, |i| missing(&cfg.dir, &nonce, i))?));
    if let Some(b) = &cfg.baseline {
        let what = format!("lookup of a missing name in {}", b.display());
        out.push(floor("missing_lookup_baseline", &what, time(cfg.samples, stop, |i| missing(b, &nonce, i))?));
    }

    let scratch = Scratch(cfg.disk.join(format!(".stripefs-floors-{}", std::process::id())));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&scratch.0)
        .with_context(|| format!("create {}", scratch.0.display()))?;
    let disk = cfg.disk.display();
    // In place over written blocks, as the master's journal writes.
    let zeros = vec![0u8; SMALL * cfg.samples];
    f.write_all_at(&zeros, 0).and_then(|_| f.sync_all()).context("prepare the fdatasync file")?;
    let record = [0x5a_u8; SMALL];
    let synced = time(cfg.samples, stop, |i| {
        f.write_all_at(&record, (i * SMALL) as u64)?;
        f.sync_data()
    })?;
    out.push(floor("fdatasync", &format!("4 KiB write + fdatasync in {disk}"), synced));

    let file_bytes = read_file_bytes(cfg.samples);
    fill(&f, file_bytes, stop)?;
    let mut buf = vec![0u8; BLOCK];
    let mut rng = SplitMix64(0x5172_1bef_f100);
    for (key, len, what) in [("cold_read_4k", SMALL, "cold 4 KiB read"), ("cold_read_64k", BLOCK, "cold 64 KiB read")] {
        let offsets: Vec<u64> =
            (0..cfg.samples).map(|_| (rng.next() % (file_bytes / BLOCK as u64)) * BLOCK as u64).collect();
        let mut spent = Vec::with_capacity(cfg.samples);
        for off in offsets {
            stopped(stop)?;
            // Untimed: the file leaves the page cache, so the read below
            // goes to the disk as a node's first read of a replica does.
            // The whole file: the kernel keeps a large folio that a range
            // covers only in part.
            nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)
                .context("posix_fadvise")?;
            let t = Instant::now();
            f.read_exact_at(&mut buf[..len], off).context("read the cold-read file")?;
            spent.push(t.elapsed());
        }
        out.push(floor(key, &format!("{what} in {disk}"), spent));
    }
    Ok(out)
}

/// Removes a file when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `op` `n` times and returns each run's time.
fn time(
    n: usize,
    stop: &AtomicBool,
    mut op: impl FnMut(usize) -> std::io::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    let mut spent = Vec::with_capacity(n);
    for i in 0..n {
        stopped(stop)?;
        let t = Instant::now();
        op(i)?;
        spent.push(t.elapsed());
    }
    Ok(spent)
}

fn floor(key: &'static str, what: &str, mut spent: Vec<Duration>) -> Floor {
    spent.sort_unstable();
    let at = |q: usize| spent[(spent.len() * q / 100).min(spent.len() - 1)].as_secs_f64() * 1e6;
    Floor { key, what: what.to_string(), p50_us: at(50), p90_us: at(90) }
}

/// A getxattr the stripefs client answers without asking the master: one
/// FUSE request and nothing else.
#[allow(unsafe_code)]
fn client_request(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let name = c"security.stripefs.floor";
    // SAFETY: valid NUL-terminated strings; a zero-sized read only asks for the length.
    let rc = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        _ if rc >= 0 => Ok(()),
        Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) => Ok(()),
        _ => Err(e),
    }
}

/// Looks up a name nobody made: a fresh one each time, so no negative
/// entry the kernel cached answers it.
fn missing(dir: &Path, nonce: &str, i: usize) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir.join(format!(".stripefs-floor-{nonce}-{i}"))) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Err(std::io::Error::other("a name the floors never made exists")),
    }
}

/// Makes `f` `len` bytes of written, synced data.
fn fill(f: &File, len: u64, stop: &AtomicBool) -> anyhow::Result<()> {
    let chunk = pattern(1 << 20, 0x5172_1bef_f101);
    let mut off = 0;
    while off < len {
        stopped(stop)?;
        f.write_all_at(&chunk, off).context("write the cold-read file")?;
        off += chunk.len() as u64;
    }
    f.sync_all().context("fsync the cold-read file")
}

/// The floors as a table.
pub fn render(floors: &[Floor]) -> String {
    let width = floors.iter().map(|f| f.what.len()).max().unwrap_or(0).max(5);
    let mut s = String::new();
    let _ = writeln!(s, "{:<width$}  {:>9}  {:>9}", "FLOOR", "P50", "P90");
    for f in floors {
        let _ = writeln!(s, "{:<width$}  {:>6.0} us  {:>6.0} us", f.what, f.p50_us, f.p90_us);
    }
    s.push_str(
        "\nA durable create through FUSE is at least 4 requests (LOOKUP, CREATE, FLUSH, RELEASE), one metadata\n\
         round trip and one fdatasync; a cold 4 KiB read at least one request and one disk read.\n",
    );
    s
}

/// The floors as JSON.
pub fn to_json(floors: &[Floor]) -> serde_json::Value {
    let list: Vec<_> = floors
        .iter()
        .map(|f| serde_json::json!({"key": f.key, "what": f.what, "p50_us": f.p50_us, "p90_us": f.p90_us}))
        .collect();
    serde_json::json!({ "floors": list })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_run_in_temp_dirs_and_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = tempfile::tempdir().expect("tempdir");
        let cfg = FloorConfig {
            dir: dir.path().to_path_buf(),
            stripefs: false,
            baseline: Some(dir.path().to_path_buf()),
            disk: disk.path().to_path_buf(),
            samples: 20,
        };
        let floors = measure(&cfg, &AtomicBool::new(false)).expect("floors");
        let keys: Vec<_> = floors.iter().map(|f| f.key).collect();
        assert_eq!(keys, ["missing_lookup", "missing_lookup_baseline", "fdatasync", "cold_read_4k", "cold_read_64k"]);
        for f in &floors {
            assert!(f.p50_us > 0.0 && f.p90_us >= f.p50_us, "{f:?}");
        }
        assert!(std::fs::read_dir(disk.path()).expect("list").next().is_none(), "the scratch file is removed");
        let table = render(&floors);
        assert!(table.contains("4 KiB write + fdatasync in"), "{table}");
        assert_eq!(to_json(&floors)["floors"].as_array().expect("list").len(), 5);
    }

    #[test]
    fn interrupted_floors_remove_their_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = FloorConfig {
            dir: dir.path().to_path_buf(),
            stripefs: false,
            baseline: None,
            disk: dir.path().to_path_buf(),
            samples: 5,
        };
        let err = measure(&cfg, &AtomicBool::new(true)).expect_err("stopped");
        assert!(format!("{err:#}").contains("interrupted"));
        assert!(std::fs::read_dir(dir.path()).expect("list").next().is_none());
    }

    #[test]
    fn percentiles_come_from_the_sorted_times() {
        let spent: Vec<Duration> = (1..=10).rev().map(Duration::from_micros).collect();
        let f = floor("k", "w", spent);
        assert_eq!((f.p50_us.round(), f.p90_us.round()), (6.0, 10.0));
        assert_eq!(read_file_bytes(1), 1 << 20);
        assert_eq!(read_file_bytes(100), 100 * 256 * 1024);
        assert_eq!(read_file_bytes(usize::MAX), MAX_READ_FILE_BYTES);
    }
}
