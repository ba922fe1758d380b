//! What the benchmark learns from the kernel: the machine, the filesystem a
//! directory lives on, a process's peak memory, and how to empty the caches.

use anyhow::{bail, Context as _};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The machine the benchmark ran on.
#[derive(Clone, Debug)]
pub struct Machine {
    /// CPUs this process may run on.
    pub cores: usize,
    /// `MemTotal` of /proc/meminfo, in bytes.
    pub mem_total_bytes: Option<u64>,
    /// Kernel name, release and architecture, as `uname -srm` prints them.
    pub kernel: String,
}

impl Machine {
    /// Reads the machine's facts.
    pub fn collect() -> Machine {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mem_total_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| status_kib(&t, "MemTotal:"));
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into());
        let kernel = format!(
            "{} {} {}",
            read("/proc/sys/kernel/ostype"),
            read("/proc/sys/kernel/osrelease"),
            std::env::consts::ARCH
        );
        Machine { cores, mem_total_bytes, kernel }
    }
}

/// The value in bytes of a `Key:   1234 kB` line of /proc/meminfo or /proc/PID/status.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The peak resident set size (`VmHWM`) of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status_kib(&text, "VmHWM:").with_context(|| format!("no VmHWM line in {path}"))
}

/// The mount holding a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// Filesystem type as /proc/self/mountinfo gives it (`ext4`, `fuse.stripefs`, `fuse.mfs`).
    pub fstype: String,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
}

impl MountInfo {
    /// Whether this is a stripefs FUSE mount.
    pub fn is_stripefs(&self) -> bool {
        self.fstype == "fuse.stripefs"
    }
}

/// The mount holding `path`: the last mount whose device is the path's, or
/// else the last one whose mount point is the longest prefix of it.
pub fn mount_of(path: &Path) -> Option<MountInfo> {
    let canon = path.canonicalize().ok()?;
    let dev = std::fs::metadata(&canon).ok()?.dev();
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mount_of(&text, &canon, dev)
}

fn parse_mount_of(mountinfo: &str, path: &Path, dev: u64) -> Option<MountInfo> {
    let mut by_dev = None;
    let mut by_prefix: Option<MountInfo> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        let (Some(devno), Some(mp), Some(fstype)) = (f.get(2), f.get(4), f.get(sep + 1)) else { continue };
        let info = MountInfo {
            fstype: fstype.to_string(),
            mountpoint: stripefs_client::records::unescape_mount_path(mp).into(),
        };
        let same_dev = devno
            .split_once(':')
            .and_then(|(a, b)| Some(libc::makedev(a.parse().ok()?, b.parse().ok()?)))
            .is_some_and(|d| d == dev);
        if same_dev && path.starts_with(&info.mountpoint) {
            by_dev = Some(info.clone());
        }
        let longer =
            by_prefix.as_ref().is_none_or(|b| info.mountpoint.as_os_str().len() >= b.mountpoint.as_os_str().len());
        if path.starts_with(&info.mountpoint) && longer {
            by_prefix = Some(info);
        }
    }
    by_dev.or(by_prefix)
}

/// Writes back the dirty data of the filesystem holding `dir` (syncfs(2)),
/// then, as root, drops the kernel's clean page cache, dentries and inodes
/// (`echo 3 > /proc/sys/vm/drop_caches`).
pub fn drop_caches(dir: &Path) -> anyhow::Result<()> {
    let f = File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    nix::unistd::syncfs(&f).with_context(|| format!("syncfs {}", dir.display()))?;
    if !nix::unistd::geteuid().is_root() {
        bail!("not root");
    }
    std::fs::write("/proc/sys/vm/drop_caches", b"3").context("write /proc/sys/vm/drop_caches")
}

/// Empties the block cache of the stripefs client serving `dir` (a virtual
/// xattr the client answers itself; nothing is stored).
#[allow(unsafe_code)]
pub fn drop_client_cache(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).context("path with a NUL byte")?;
    let name = std::ffi::CString::new(stripefs_client::core::DROP_CACHE_XATTR).expect("no NUL");
    // SAFETY: valid NUL-terminated strings and a 1-byte value.
    let rc = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setxattr {} on {}", stripefs_client::core::DROP_CACHE_XATTR, dir.display()));
    }
    Ok(())
}

/// Asks the kernel to forget the cached pages of `path` (posix_fadvise
/// DONTNEED): the fallback when the whole page cache cannot be dropped.
pub fn forget_file(path: &Path) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    f.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .with_context(|| format!("posix_fadvise {}", path.display()))
}

/// Free bytes for an unprivileged user on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok(s.blocks_available().saturating_mul(s.fragment_size()))
}

/// This process's command line, quoted for a POSIX shell where needed.
pub fn command_line() -> String {
    let mut args = std::env::args();
    let prog = args
        .next()
        .map(|p| Path::new(&p).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.clone()));
    prog.into_iter().chain(args).map(|a| shell_quote(&a)).collect::<Vec<_>>().join(" ")
}

/// `s` as one word of a POSIX shell command.
pub fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-+=/.,:@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether the stripefs client `pid` reads the replicas of nodes on its
/// host from their files (mount option `local_reads`), from its command
/// line; `None` when that cannot be read.
pub fn client_local_reads(pid: u32) -> Option<bool> {
    local_reads_of(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)
}

/// [`client_local_reads`] of a NUL-separated command line.
fn local_reads_of(cmdline: &[u8]) -> Option<bool> {
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let mut lists = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.strip_prefix("-o") {
            Some("") => lists.extend(it.next().cloned()),
            Some(joined) => lists.push(joined.to_string()),
            None => {}
        }
    }
    stripefs_client::options::parse_options(&lists).ok().map(|o| o.local_reads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_reads_are_read_from_the_clients_command_line() {
        let cmd = |args: &[&str]| args.join("\0").into_bytes();
        assert_eq!(local_reads_of(&cmd(&["stripefs-mount", "m:1", "/mnt"])), Some(true));
        assert_eq!(
            local_reads_of(&cmd(&["stripefs-mount", "m:1", "/mnt", "-o", "host=a,local_reads=off", "-f"])),
            Some(false)
        );
        assert_eq!(local_reads_of(&cmd(&["stripefs-mount", "-olocal_reads=off", "m:1", "/mnt"])), Some(false));
        assert_eq!(local_reads_of(&cmd(&["stripefs-mount", "m:1", "/mnt", "-o", "bogus"])), None);
    }

    #[test]
    fn kib_lines_parse() {
        let status = "Name:\tstripefs-mount\nVmPeak:\t  900 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(2 << 20));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn own_peak_rss_is_readable() {
        assert!(peak_rss(std::process::id()).expect("own /proc status") > 0);
    }

    #[test]
    fn mounts_are_found_by_device_then_prefix() {
        let info = "\
22 1 253:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:50 / /tmp/with\\040space rw - fuse.stripefs 127.0.0.1:1 rw
31 22 0:51 / /mnt/mfs rw - fuse.mfs mfs#127.0.0.1:9421 rw
";
        let dev = libc::makedev(0, 50);
        let m = parse_mount_of(info, Path::new("/tmp/with space/x"), dev).expect("found");
        assert_eq!(m.fstype, "fuse.stripefs");
        assert!(m.is_stripefs());
        assert_eq!(m.mountpoint, Path::new("/tmp/with space"));
        // A device not listed: the longest mount point prefix wins.
        let m = parse_mount_of(info, Path::new("/mnt/mfs/a"), 12345).expect("found");
        assert_eq!(m.fstype, "fuse.mfs");
        let m = parse_mount_of(info, Path::new("/var/tmp"), libc::makedev(253, 0)).expect("found");
        assert_eq!(m.fstype, "ext4");
    }

    #[test]
    fn words_are_quoted() {
        assert_eq!(shell_quote("--size"), "--size");
        assert_eq!(shell_quote("/mnt/x"), "/mnt/x");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn machine_is_described() {
        let m = Machine::collect();
        assert!(m.cores >= 1);
        assert!(m.mem_total_bytes.expect("MemTotal") > 0);
        assert!(m.kernel.starts_with("Linux "));
    }
}
