//! What a mount leaves for admin commands and what they read back: the
//! mount's record (master address and secret, root-only, in
//! /run/stripefs/mounts), the kernel's mount table, the host name, the
//! read-ahead file. No FUSE here: the admin tool uses this module without
//! linking fuser.

use std::path::{Path, PathBuf};
use stripefs_proto::net::Secret;

/// Environment variable overriding where mounts are recorded.
pub const RUN_DIR_ENV: &str = "STRIPEFS_RUN_DIR";
/// Where mounts are recorded for admin commands.
pub const DEFAULT_RUN_DIR: &str = "/run/stripefs";

/// The directory holding one record per live mount.
pub fn mounts_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)).join("mounts")
}

/// The record of the mount whose filesystem has device number `dev`.
pub fn mount_record_path(dev: u64) -> PathBuf {
    mounts_dir().join(format!("{dev:x}"))
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The sysfs file holding the read-ahead of the filesystem with device
/// number `dev`.
pub fn read_ahead_path(dev: u64) -> PathBuf {
    PathBuf::from(format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev)))
}

/// Records the mount (master address and secret, root-only) so that admin
/// commands given a path inside it can reach its cluster.
pub fn write_record(dev: u64, mountpoint: &Path, master: &str, secret: &Secret) -> Option<PathBuf> {
    let path = mount_record_path(dev);
    let text = format!(
        "master={master}\nsecret_hex={}\nmountpoint={}\npid={}\n",
        hex::encode(secret.bytes()),
        mountpoint.display(),
        std::process::id()
    );
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = mounts_dir();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        std::fs::rename(&tmp, &path)
    };
    match write() {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!("cannot record the mount in {}: {e}; admin commands will need --master", path.display());
            None
        }
    }
}

/// Every stripefs mount of this process's mount namespace, as (mount
/// point, device number), in mountinfo's order (later mounts last).
fn stripefs_mounts() -> Vec<(PathBuf, u64)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            if *f.get(sep + 1)? != "fuse.stripefs" {
                return None;
            }
            let (major, minor) = f.get(2)?.split_once(':')?;
            let dev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
            Some((PathBuf::from(unescape_mount_path(f.get(4)?)), dev))
        })
        .collect()
}

/// The device number of the stripefs mount at `mountpoint`, from
/// /proc/self/mountinfo (the last such mount wins, as in path lookup).
pub fn mount_dev(mountpoint: &Path) -> Option<u64> {
    let want = mountpoint.canonicalize().ok()?;
    stripefs_mounts().into_iter().rev().find(|(p, _)| *p == want).map(|(_, dev)| dev)
}

/// Whether a stripefs filesystem is mounted on `path`. Only the parent is
/// resolved, never the mount itself, so a mount whose client died (every
/// call on it fails) is found too.
pub fn stripefs_mount_on(path: &Path) -> bool {
    let abs = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            parent.canonicalize().map(|p| p.join(name)).unwrap_or_else(|_| path.into())
        }
        _ => path.to_path_buf(),
    };
    stripefs_mounts().iter().any(|(p, _)| *p == abs)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
pub fn unescape_mount_path(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a mount's record.
pub fn remove_record(record: Option<&Path>) {
    if let Some(p) = record {
        let _ = std::fs::remove_file(p);
    }
}
