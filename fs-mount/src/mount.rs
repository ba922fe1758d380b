//! Mounting: connect to the master, mount the FUSE session, record the
//! mount for admin commands, unmount cleanly.

use crate::fuse_adapter::StripeFs;
use anyhow::{bail, Context as _};
use fuser::{MountOption, SessionACL};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stripefs_client::core::{ClientConfig, FsCore};
use stripefs_client::options::MountOptions;
use stripefs_client::records::{hostname, mount_dev, read_ahead_path, remove_record, stripefs_mount_on, write_record};
use stripefs_proto::net::Secret;

/// A mounted (not yet running) session.
pub struct Mount {
    /// The fuser session; `run` or `spawn` it.
    pub session: fuser::Session<StripeFs>,
    /// The client core.
    pub core: Arc<FsCore>,
    /// Where the mount's record was written.
    pub record: Option<PathBuf>,
    /// The mount's metrics, when `metrics=ADDR` serves them (set
    /// `serving` once the session runs: `/readyz` answers from it).
    pub metrics: Option<Arc<crate::metrics::MountMetrics>>,
    /// Stops the metrics listener.
    pub metrics_stop: tokio_util::sync::CancellationToken,
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
    // A stripefs mount whose client died (kill -9, a crash): detach it and
    // mount again, so that the client restarted by its own command line
    // brings the mount back. statfs always reaches the client (the kernel
    // caches attributes, not statfs): ENOTCONN (or ECONNABORTED, for a call
    // that was under way when the client died) means nobody serves it.
    let dead =
        |e: Option<nix::errno::Errno>| matches!(e, Some(nix::errno::Errno::ENOTCONN | nix::errno::Errno::ECONNABORTED));
    if stripefs_mount_on(mountpoint) && dead(nix::sys::statfs::statfs(mountpoint).err()) {
        tracing::warn!("{} is a stripefs mount whose client is gone: detaching it", mountpoint.display());
        detach(mountpoint)?;
    }
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
        dir_leases: opts.dir_leases,
        ..ClientConfig::default()
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
    config.n_threads = Some(opts.threads.unwrap_or_else(stripefs_client::options::default_threads));
    config.clone_fd = true;
    let mut fs = StripeFs::new(core.clone(), rt.clone()).with_passthrough(opts.passthrough);
    let metrics_stop = tokio_util::sync::CancellationToken::new();
    let mut metrics = None;
    if let Some(addr) = &opts.metrics {
        let (m, endpoint) = crate::metrics::build(core.clone());
        rt.block_on(stripefs_daemon::metrics::start(addr, endpoint, metrics_stop.clone()))
            .with_context(|| format!("serve metrics on {addr}"))?;
        fs = fs.with_metrics(m.clone());
        metrics = Some(m);
    }
    let notifier = fs.notifier_slot();
    let session = fuser::Session::new(fs, mountpoint, &config)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    // Not stat(2): the session does not serve requests yet, a stat would hang.
    let Some(dev) = mount_dev(mountpoint) else {
        tracing::warn!("cannot find the new mount {} in /proc/self/mountinfo", mountpoint.display());
        return Ok(Mount { session, core, record: None, metrics, metrics_stop });
    };
    if opts.read_ahead_kb > 0 {
        set_read_ahead(dev, opts.read_ahead_kb);
    }
    let record = write_record(dev, mountpoint, master, &secret);
    Ok(Mount { session, core, record, metrics, metrics_stop })
}

/// Lazily unmounts the dead mount on `path`: umount2(MNT_DETACH) as root,
/// `fusermount3 -uz` otherwise.
fn detach(path: &Path) -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
            .with_context(|| format!("detach the dead mount on {}", path.display()))
    } else {
        let out = std::process::Command::new("fusermount3").arg("-uz").arg(path).output()?;
        if !out.status.success() {
            bail!("fusermount3 -uz {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
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

/// A mount running in background threads of this process (for tests and
/// embedding). Dropping it unmounts.
pub struct BackgroundMount {
    session: Option<fuser::BackgroundSession>,
    record: Option<PathBuf>,
    /// The client core.
    pub core: Arc<FsCore>,
    mountpoint: PathBuf,
    metrics_stop: tokio_util::sync::CancellationToken,
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
        if let Some(metrics) = &m.metrics {
            metrics.serving.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(BackgroundMount {
            session: Some(session),
            record: m.record,
            core: m.core,
            mountpoint: mountpoint.to_path_buf(),
            metrics_stop: m.metrics_stop,
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
        self.metrics_stop.cancel();
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
