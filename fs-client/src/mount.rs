//! Mounting: connect to the master, mount the FUSE session, record the
//! mount for admin commands, unmount cleanly.

use crate::core::{ClientConfig, FsCore};
use crate::fuse_adapter::StripeFs;
use crate::options::MountOptions;
use anyhow::{bail, Context as _};
use fuser::{MountOption, SessionACL};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// A mounted (not yet running) session.
pub struct Mount {
    /// The fuser session; `run` or `spawn` it.
    pub session: fuser::Session<StripeFs>,
    /// The client core.
    pub core: Arc<FsCore>,
    /// Where the mount's record was written.
    pub record: Option<PathBuf>,
}

/// Connects to `master` and mounts at `mountpoint`. The mount is live when
/// this returns; the session still has to run.
pub fn mount(
    master: &str,
    mountpoint: &Path,
    opts: &MountOptions,
    secret: Secret,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Mount> {
    let meta =
        std::fs::metadata(mountpoint).with_context(|| format!("mount point {} is unusable", mountpoint.display()))?;
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", mountpoint.display());
    }
    let cfg = ClientConfig {
        host: opts.host.clone().unwrap_or_else(hostname),
        zone: opts.zone.clone(),
        attr_ttl: opts.attr_ttl,
        entry_ttl: opts.entry_ttl,
        read_only: opts.read_only,
        cache_bytes: opts.cache_mb << 20,
        dirty_limit_bytes: opts.dirty_mb << 20,
        master_timeout: opts.master_timeout,
        local_reads: opts.local_reads,
    };
    let core = rt
        .block_on(FsCore::connect(master, secret.clone(), cfg))
        .with_context(|| format!("cannot reach the stripefs master at {master}"))?;
    let mut options = vec![
        MountOption::FSName(master.to_string()),
        // A kernel option (fuser passes Subtype only to fusermount): /proc/mounts then shows fuse.stripefs.
        MountOption::CUSTOM("subtype=stripefs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.read_only {
        options.push(MountOption::RO);
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = if opts.allows_other(nix::unistd::geteuid().is_root()) {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.unwrap_or_else(crate::options::default_threads));
    config.clone_fd = true;
    let fs = StripeFs::new(core.clone(), rt.clone());
    let notifier = fs.notifier_slot();
    let session = fuser::Session::new(fs, mountpoint, &config)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    // Not stat(2): the session does not serve requests yet, a stat would hang.
    let Some(dev) = mount_dev(mountpoint) else {
        tracing::warn!("cannot find the new mount {} in /proc/self/mountinfo", mountpoint.display());
        return Ok(Mount { session, core, record: None });
    };
    if opts.read_ahead_kb > 0 {
        set_read_ahead(dev, opts.read_ahead_kb);
    }
    let record = write_record(dev, mountpoint, master, &secret);
    Ok(Mount { session, core, record })
}

/// Sets the kernel's read-ahead for the mount with device number `dev`
/// (its backing device info in sysfs; FUSE lets a filesystem lower the
/// read-ahead at init, not raise it). Needs root: otherwise the kernel's
/// default stays, which only costs sequential read speed.
fn set_read_ahead(dev: u64, kb: u64) {
    let path = read_ahead_path(dev);
    match std::fs::write(&path, format!("{kb}\n")) {
        Ok(()) => tracing::debug!("read-ahead set to {kb} KiB ({})", path.display()),
        Err(e) => tracing::info!("cannot set read-ahead to {kb} KiB in {}: {e}; keeping the kernel's", path.display()),
    }
}

/// The sysfs file holding the read-ahead of the filesystem with device
/// number `dev`.
pub fn read_ahead_path(dev: u64) -> PathBuf {
    PathBuf::from(format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev)))
}

/// Records the mount (master address and secret, root-only) so that admin
/// commands given a path inside it can reach its cluster.
fn write_record(dev: u64, mountpoint: &Path, master: &str, secret: &Secret) -> Option<PathBuf> {
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

/// The device number of the stripefs mount at `mountpoint`, from
/// /proc/self/mountinfo (the last such mount wins, as in path lookup).
fn mount_dev(mountpoint: &Path) -> Option<u64> {
    let want = mountpoint.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        let fstype = f.get(sep + 1)?;
        let path = unescape_mount_path(f.get(4)?);
        if *fstype != "fuse.stripefs" || Path::new(&path) != want {
            return None;
        }
        let (major, minor) = f.get(2)?.split_once(':')?;
        Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
    })
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

/// A mount running in background threads of this process (for tests and
/// embedding). Dropping it unmounts.
pub struct BackgroundMount {
    session: Option<fuser::BackgroundSession>,
    record: Option<PathBuf>,
    /// The client core.
    pub core: Arc<FsCore>,
    mountpoint: PathBuf,
}

impl BackgroundMount {
    /// Mounts and starts serving in the background.
    pub fn start(
        master: &str,
        mountpoint: &Path,
        opts: &MountOptions,
        secret: Secret,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<BackgroundMount> {
        let m = mount(master, mountpoint, opts, secret, rt)?;
        let session = m.session.spawn().context("start the FUSE session")?;
        Ok(BackgroundMount {
            session: Some(session),
            record: m.record,
            core: m.core,
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the session to end.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        remove_record(self.record.take().as_deref());
        if let Some(s) = self.session.take() {
            s.umount_and_join().context("unmount")?;
        }
        Ok(())
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("unmounting {}: {e:#}", self.mountpoint.display());
        }
    }
}
