//! Mount options (`-o a,b=c`), as given to `stripefs-mount` or by mount(8)
//! from /etc/fstab.

use std::path::PathBuf;
use std::time::Duration;

/// Parsed mount options.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    /// `ro`: refuse every change.
    pub read_only: bool,
    /// `allow_other[=on|off]`: let every user use the mount (the kernel
    /// still checks modes, `default_permissions`). Unset: on when the
    /// mounting user is root, off otherwise; see [`MountOptions::allows_other`].
    pub allow_other: Option<bool>,
    /// `allow_root`: let root use the mount too.
    pub allow_root: bool,
    /// `attr_timeout=SECS`: kernel attribute cache time.
    pub attr_ttl: Duration,
    /// `entry_timeout=SECS`: kernel name cache time.
    pub entry_ttl: Duration,
    /// `host=NAME`: this host's name for read-local (default: hostname).
    pub host: Option<String>,
    /// `zone=NAME`: this host's zone for read preference.
    pub zone: Option<String>,
    /// `secret_file=PATH`: the cluster secret.
    pub secret_file: Option<PathBuf>,
    /// `threads=N`: FUSE session threads (default: [`default_threads`]).
    pub threads: Option<usize>,
    /// `log=PATH`: where a background client logs.
    pub log: Option<PathBuf>,
    /// `cache_mb=N`: block cache size.
    pub cache_mb: u64,
    /// `dirty_mb=N`: unwritten data the mount may hold (every open file's
    /// buffers and the uploads under way) before writers wait for uploads.
    pub dirty_mb: u64,
    /// `read_ahead_kb=N`: the kernel's read-ahead on this mount (0: leave
    /// the kernel's default, 128 KiB).
    pub read_ahead_kb: u64,
    /// `master_timeout=SECS`: how long operations wait for an unreachable
    /// master (e.g. while it restarts) before failing with EIO.
    pub master_timeout: Duration,
    /// `local_reads=on|off`: read replicas of nodes on this host from
    /// their files (default on).
    pub local_reads: bool,
    /// `dir_leases=on|off`: hold directory leases, so lookups of names
    /// that do not exist in a directory this mount alone changes need no
    /// round trip to the master (default on).
    pub dir_leases: bool,
    /// `passthrough=on|off`: let the kernel read and write scratch files
    /// whose node is on this host straight from their plain files (FUSE
    /// passthrough; needs a root mount and kernel 6.9+; default on).
    pub passthrough: bool,
    /// `metrics=ADDR`: serve Prometheus metrics and health checks there.
    pub metrics: Option<String>,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            read_only: false,
            allow_other: None,
            allow_root: false,
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            host: None,
            zone: None,
            secret_file: None,
            threads: None,
            log: None,
            cache_mb: 256,
            dirty_mb: 128,
            read_ahead_kb: DEFAULT_READ_AHEAD_KB,
            master_timeout: Duration::from_secs(60),
            local_reads: true,
            dir_leases: true,
            passthrough: true,
            metrics: None,
        }
    }
}

/// Default kernel read-ahead: 4 MiB. The kernel's 128 KiB sends one small
/// read at a time; 4 MiB keeps four 1 MiB reads in flight, so the disks
/// behind the nodes always have the next ones queued: with four session
/// threads to serve them it took a cold sequential read from ~730 MB/s (1
/// MiB, two threads) to ~1.1 GB/s here; 8 MiB and more did worse.
pub const DEFAULT_READ_AHEAD_KB: u64 = 4096;

/// Fewest FUSE session threads by default: four, so that the four
/// read-ahead requests of a sequential reader (and a few metadata requests
/// beside them) are served at once even on a 2-core host. Session threads
/// mostly wait on the network and the disks, not on the CPU.
pub const MIN_DEFAULT_THREADS: usize = 4;

/// FUSE session threads when `threads=N` is not given: the number of
/// cores, and at least [`MIN_DEFAULT_THREADS`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(MIN_DEFAULT_THREADS)
}

/// Largest `master_timeout`: a call retries for that long (plus one call's
/// deadline, 30 s), which must stay well below the 600 s the master
/// remembers a request's answer (`master::namespace::requests`), or a late
/// retry could be applied twice.
pub const MAX_MASTER_TIMEOUT: Duration = Duration::from_secs(240);

/// Largest `read_ahead_kb`.
const MAX_READ_AHEAD_KB: u64 = 1 << 20;

/// Options mount(8), fstab or systemd pass that mean nothing to the client.
const IGNORED: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "async",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "nodiratime",
    "diratime",
    "default_permissions",
    "loop",
];

fn secs(key: &str, v: &str) -> Result<Duration, String> {
    let f: f64 = v.parse().map_err(|_| format!("mount option {key}={v}: not a number of seconds"))?;
    if !(0.0..=86400.0).contains(&f) {
        return Err(format!("mount option {key}={v}: must be between 0 and 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(f))
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("mount option {key}={v}: not a valid number"))
}

fn switch(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "1" => Ok(true),
        "off" | "no" | "0" => Ok(false),
        _ => Err(format!("mount option {key}={v}: must be on or off")),
    }
}

impl MountOptions {
    /// Whether users other than the mounting one may use the mount: as
    /// `allow_other` says, else when `mounting_as_root` (as mfsmount and
    /// bindfs do). A root mount serves the Ray and Spark workers, which
    /// rarely run as root; the kernel checks every access against the
    /// files' modes (`default_permissions`), so this opens nothing the
    /// modes do not. A normal user's mount needs `user_allow_other` in
    /// /etc/fuse.conf for it, so it stays off there unless asked.
    pub fn allows_other(&self, mounting_as_root: bool) -> bool {
        self.allow_other.unwrap_or(mounting_as_root)
    }
}

/// Parses `-o` lists (each may hold several comma-separated options).
pub fn parse_options<S: AsRef<str>>(lists: &[S]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    for list in lists {
        for opt in list.as_ref().split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match (key, value) {
                ("ro", None) => o.read_only = true,
                ("allow_other", None) => o.allow_other = Some(true),
                ("allow_other", Some(v)) => o.allow_other = Some(switch(key, v)?),
                ("allow_root", None) => o.allow_root = true,
                ("attr_timeout", Some(v)) => o.attr_ttl = secs(key, v)?,
                ("entry_timeout", Some(v)) => o.entry_ttl = secs(key, v)?,
                ("master_timeout", Some(v)) => {
                    o.master_timeout = secs(key, v)?;
                    if o.master_timeout > MAX_MASTER_TIMEOUT {
                        return Err(format!(
                            "mount option master_timeout={v}: at most {} seconds (a retried change must reach \
                             the master while it still remembers the answer)",
                            MAX_MASTER_TIMEOUT.as_secs()
                        ));
                    }
                }
                ("host", Some(v)) if !v.is_empty() => o.host = Some(v.to_string()),
                ("zone", Some(v)) if !v.is_empty() => o.zone = Some(v.to_string()),
                ("secret_file", Some(v)) => o.secret_file = Some(PathBuf::from(v)),
                ("threads", Some(v)) => {
                    let n: usize = number(key, v)?;
                    if n == 0 || n > 256 {
                        return Err(format!("mount option threads={v}: must be between 1 and 256"));
                    }
                    o.threads = Some(n);
                }
                ("log", Some(v)) => o.log = Some(PathBuf::from(v)),
                ("metrics", Some(v)) if !v.is_empty() => o.metrics = Some(v.to_string()),
                ("cache_mb", Some(v)) => o.cache_mb = number(key, v)?,
                ("read_ahead_kb", Some(v)) => {
                    o.read_ahead_kb = number(key, v)?;
                    if o.read_ahead_kb > MAX_READ_AHEAD_KB {
                        return Err(format!("mount option read_ahead_kb={v}: at most {MAX_READ_AHEAD_KB}"));
                    }
                }
                ("local_reads", Some(v)) => o.local_reads = switch(key, v)?,
                ("dir_leases", Some(v)) => o.dir_leases = switch(key, v)?,
                ("passthrough", Some(v)) => o.passthrough = switch(key, v)?,
                ("dirty_mb", Some(v)) => {
                    o.dirty_mb = number(key, v)?;
                    if o.dirty_mb == 0 {
                        return Err("mount option dirty_mb must be at least 1".into());
                    }
                }
                (k, None) if IGNORED.contains(&k) => {}
                // systemd's and mount's own options: x-systemd.*, comment=...
                (k, _) if k.starts_with("x-") || k == "comment" => {}
                _ => return Err(format!("unknown mount option {opt:?} (see stripefs-mount --help)")),
            }
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_options_parse() {
        let o =
            parse_options(&["rw,_netdev,noatime,allow_other", "attr_timeout=0.5,host=web1,threads=4"]).expect("parse");
        assert_eq!(o.allow_other, Some(true));
        assert!(!o.read_only);
        assert_eq!(o.attr_ttl, Duration::from_millis(500));
        assert_eq!(o.host.as_deref(), Some("web1"));
        assert_eq!(o.threads, Some(4));
    }

    #[test]
    fn bad_options_are_explained() {
        let e = parse_options(&["bogus"]).expect_err("unknown");
        assert!(e.contains("bogus"), "{e}");
        assert!(parse_options(&["attr_timeout=x"]).is_err());
        assert!(parse_options(&["threads=0"]).is_err());
        assert!(parse_options(&["ro"]).expect("ro").read_only);
        assert!(parse_options(&["read_ahead_kb=2000000"]).expect_err("too big").contains("read_ahead_kb"));
        assert!(parse_options(&["local_reads=maybe"]).expect_err("not a switch").contains("on or off"));
        assert!(parse_options(&["master_timeout=241"]).expect_err("too long").contains("at most 240"));
        assert_eq!(parse_options(&["master_timeout=240"]).expect("the most").master_timeout, MAX_MASTER_TIMEOUT);
    }

    #[test]
    fn allow_other_defaults_to_on_for_root_only_and_can_be_turned_off() {
        let none = parse_options::<&str>(&[]).expect("none");
        assert!(none.allows_other(true));
        assert!(!none.allows_other(false));
        let off = parse_options(&["allow_other=off"]).expect("off");
        assert!(!off.allows_other(true));
        assert!(parse_options(&["allow_other=on"]).expect("on").allows_other(false));
        assert!(parse_options(&["allow_other"]).expect("bare").allows_other(false));
        assert!(parse_options(&["allow_other=perhaps"]).expect_err("not a switch").contains("on or off"));
    }

    #[test]
    fn local_reads_are_on_unless_turned_off() {
        assert!(parse_options::<&str>(&[]).expect("none").local_reads);
        assert!(!parse_options(&["local_reads=off"]).expect("off").local_reads);
        assert!(parse_options(&["local_reads=on"]).expect("on").local_reads);
        assert!(parse_options::<&str>(&[]).expect("none").dir_leases);
        assert!(!parse_options(&["dir_leases=off"]).expect("off").dir_leases);
        assert!(parse_options::<&str>(&[]).expect("none").passthrough);
        assert!(!parse_options(&["passthrough=off"]).expect("off").passthrough);
    }

    #[test]
    fn read_ahead_has_a_default_and_can_be_set_or_left_alone() {
        assert_eq!(parse_options::<&str>(&[]).expect("none").read_ahead_kb, DEFAULT_READ_AHEAD_KB);
        assert_eq!(parse_options(&["read_ahead_kb=4096"]).expect("set").read_ahead_kb, 4096);
        assert_eq!(parse_options(&["read_ahead_kb=0"]).expect("kernel's").read_ahead_kb, 0);
    }
}
