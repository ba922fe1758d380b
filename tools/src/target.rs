//! Finding the cluster an admin command talks to: `--master ADDR`, a path
//! inside a mount (from the mount's record), or the local cluster of
//! `stripefs up`.

use anyhow::{bail, Context as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stripefs_client::records::mount_record_path;
use stripefs_proto::net::{connect_master, Secret};
use stripefs_proto::MasterServiceClient;

/// Where the cluster was found.
pub struct Target {
    /// Master address.
    pub master: String,
    /// Cluster secret.
    pub secret: Secret,
}

/// A mount's record, written by `stripefs-mount` when it mounted.
pub struct MountRecord {
    /// The cluster it mounts.
    pub target: Target,
    /// The client process serving the mount.
    pub pid: Option<u32>,
}

/// Reads the record of the stripefs mount holding `path`.
pub fn read_mount_record(path: &Path) -> anyhow::Result<MountRecord> {
    let dev = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?.dev();
    let rec = mount_record_path(dev);
    let text = std::fs::read_to_string(&rec).with_context(|| {
        format!(
            "{} is not inside a stripefs mount of this host (no record {}); pass --master ADDR",
            path.display(),
            rec.display()
        )
    })?;
    let (mut master, mut secret, mut pid) = (None, None, None);
    for line in text.lines() {
        match line.split_once('=') {
            Some(("master", v)) => master = Some(v.to_string()),
            Some(("secret_hex", v)) => {
                let bytes = hex::decode(v).with_context(|| format!("bad secret in {}", rec.display()))?;
                secret = Some(Secret::new(bytes, &rec.display().to_string())?)
            }
            Some(("pid", v)) => pid = v.parse().ok(),
            _ => {}
        }
    }
    match (master, secret) {
        (Some(master), Some(secret)) => Ok(MountRecord { target: Target { master, secret }, pid }),
        _ => bail!("mount record {} is incomplete", rec.display()),
    }
}

impl Target {
    /// Resolves the cluster from the global options and an optional path.
    pub fn resolve(
        master: Option<&str>,
        secret_file: Option<&Path>,
        path: Option<&Path>,
        local: &Path,
    ) -> anyhow::Result<Target> {
        if let Some(m) = master {
            return Ok(Target { master: m.to_string(), secret: Secret::resolve(secret_file)? });
        }
        if let Some(p) = path {
            return read_mount_record(p).map(|r| r.target);
        }
        let addr_file = local.join("master").join("listen.addr");
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            let secret = match secret_file {
                Some(f) => Secret::from_file(f)?,
                None => Secret::from_file(&local.join("secret"))?,
            };
            // The other masters of a `stripefs up --masters N` group.
            let mut masters = vec![addr.trim().to_string()];
            for i in 2..=5 {
                if let Ok(a) = std::fs::read_to_string(local.join(format!("master{i}")).join("listen.addr")) {
                    masters.push(a.trim().to_string());
                }
            }
            return Ok(Target { master: masters.join(","), secret });
        }
        bail!(
            "no cluster given: pass --master ADDR, or a path inside a stripefs mount, or start one with `stripefs up`"
        )
    }

    /// A client of the master leading the group (`--master` may list
    /// several: `m1:9400,m2:9400,m3:9400`).
    pub async fn connect(&self) -> anyhow::Result<MasterServiceClient> {
        // A leader just elected serves once it has rebuilt what it keeps
        // in memory (a fraction of a second): wait for that, briefly.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let c = stripefs_proto::net::connect_leader(&self.master, &self.secret, Duration::from_secs(5))
                .await
                .map(|(c, _)| c)
                .with_context(|| format!("cannot reach the stripefs master at {}", self.master))?;
            let ctx = stripefs_proto::net::context_with_timeout(Duration::from_secs(10));
            match c.fs_info(ctx).await {
                Ok(Err(stripefs_proto::FsError::NotLeader)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => return Ok(c),
            }
        }
    }

    /// A client of one master, leader or not (`stripefs masters`).
    pub async fn connect_one(&self, addr: &str) -> anyhow::Result<MasterServiceClient> {
        connect_master(addr, &self.secret, Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot reach the stripefs master at {addr}"))
    }
}

/// The default data directory of `stripefs up`.
pub fn default_local_dir() -> PathBuf {
    PathBuf::from("/var/tmp/stripefs")
}
