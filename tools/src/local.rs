//! `stripefs up` and `stripefs down`: a whole cluster on this machine's
//! loopback, for trying stripefs out and for tests.

use crate::target::default_local_dir;
use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stripefs_proto::net::{connect_master, Secret};

/// Options of `stripefs up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Number of storage nodes (each on its own 127.0.1.N address and host name).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Directory for the master's database, the nodes' chunks, logs and the secret.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where to mount the filesystem (created if missing).
    #[arg(long, value_name = "DIR", default_value = "/mnt/stripefs")]
    mount: PathBuf,
    /// Chunk size of a new filesystem, in bytes.
    #[arg(long, value_name = "BYTES")]
    chunk_size: Option<u32>,
    /// More mount options for the client, comma-separated, as
    /// `stripefs-mount -o` takes them (e.g. `local_reads=off` to read over
    /// TCP, `cache_mb=512`).
    #[arg(short = 'o', long, value_name = "OPTIONS")]
    options: Option<String>,
}

/// Options of `stripefs down`.
#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// Data directory given to `stripefs up`.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

/// What `up` started, kept in DIR/cluster so that `down` can stop it.
const STATE_FILE: &str = "cluster";
/// How long a process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find this program")?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        bail!("{} not found next to {} (build the whole workspace)", p.display(), exe.display());
    }
    Ok(p)
}

fn check_fuse() -> anyhow::Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("FUSE is not available (/dev/fuse is missing): run `apt-get install -y fuse3` and `modprobe fuse`");
    }
    if !nix::unistd::geteuid().is_root() && which("fusermount3").is_none() {
        bail!("mounting as a normal user needs fusermount3: run `apt-get install -y fuse3` (or run as root)");
    }
    Ok(())
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(prog)).find(|p| p.exists())
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Starts a detached server process with its log in `log`.
fn spawn(prog: &Path, args: &[String], log: &Path) -> anyhow::Result<u32> {
    use std::os::unix::process::CommandExt;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {}", prog.display()))?;
    Ok(child.id())
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Waits for a process to write its bound address.
fn wait_addr(file: &Path, pid: u32, log: &Path) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(a) = std::fs::read_to_string(file) {
            if !a.trim().is_empty() {
                return Ok(a.trim().to_string());
            }
        }
        if !alive(pid as i32) {
            bail!("process {pid} exited during start-up; last lines of {}:\n{}", log.display(), tail(log));
        }
        if start.elapsed() > START_TIMEOUT {
            bail!("process {pid} did not start listening within {START_TIMEOUT:?}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct State {
    master: String,
    mount: PathBuf,
    pids: Vec<(String, i32)>,
}

fn read_state(dir: &Path) -> Option<State> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    let (mut master, mut mount, mut pids) = (String::new(), PathBuf::new(), Vec::new());
    for line in text.lines() {
        match line.split_once('=') {
            Some(("master", v)) => master = v.to_string(),
            Some(("mount", v)) => mount = PathBuf::from(v),
            Some((name, v)) if name.starts_with("pid.") => {
                pids.push((name[4..].to_string(), v.parse().ok()?));
            }
            _ => {}
        }
    }
    Some(State { master, mount, pids })
}

fn write_state(dir: &Path, s: &State) -> anyhow::Result<()> {
    let mut text = format!("master={}\nmount={}\n", s.master, s.mount.display());
    for (name, pid) in &s.pids {
        text.push_str(&format!("pid.{name}={pid}\n"));
    }
    std::fs::write(dir.join(STATE_FILE), text).context("write the cluster state file")
}

/// `stripefs up`.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 200 {
        bail!("--nodes must be between 1 and 200");
    }
    if let Some(o) = &args.options {
        // Refused now, before any server starts.
        stripefs_client::options::parse_options(&[o]).map_err(|e| anyhow::anyhow!("-o {o}: {e}"))?;
    }
    check_fuse()?;
    let dir = args.data.clone().unwrap_or_else(default_local_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    if let Some(s) = read_state(&dir) {
        if s.pids.iter().any(|(_, p)| alive(*p)) {
            bail!(
                "a cluster from {} is already running; stop it with `stripefs down --data {}`",
                dir.display(),
                dir.display()
            );
        }
    }
    let secret_file = dir.join("secret");
    if !secret_file.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&secret_file)?;
        std::io::Write::write_all(&mut f, Secret::generate().as_bytes())?;
    }
    let secret = Secret::from_file(&secret_file)?;
    let secret_arg = secret_file.display().to_string();
    let mut state = State { master: String::new(), mount: args.mount.clone(), pids: Vec::new() };

    let master_dir = dir.join("master");
    std::fs::create_dir_all(&master_dir)?;
    let _ = std::fs::remove_file(master_dir.join("listen.addr"));
    let mut margs = vec![
        "--data".into(),
        master_dir.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--secret-file".into(),
        secret_arg.clone(),
    ];
    if let Some(c) = args.chunk_size {
        margs.extend(["--chunk-size".into(), c.to_string()]);
    }
    let log = dir.join("master.log");
    let pid = spawn(&sibling("stripefs-master")?, &margs, &log)?;
    state.pids.push(("master".into(), pid as i32));
    write_state(&dir, &state)?;
    state.master = wait_addr(&master_dir.join("listen.addr"), pid, &log)?;
    write_state(&dir, &state)?;

    let node_bin = sibling("stripefs-node")?;
    for i in 1..=args.nodes {
        let ndir = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&ndir)?;
        let _ = std::fs::remove_file(ndir.join("listen.addr"));
        let nargs = vec![
            "--data".into(),
            ndir.display().to_string(),
            "--listen".into(),
            format!("127.0.1.{i}:0"),
            "--master".into(),
            state.master.clone(),
            "--host".into(),
            format!("node{i}"),
            "--secret-file".into(),
            secret_arg.clone(),
        ];
        let log = dir.join(format!("node{i}.log"));
        let pid = spawn(&node_bin, &nargs, &log)?;
        state.pids.push((format!("node{i}"), pid as i32));
        write_state(&dir, &state)?;
        wait_addr(&ndir.join("listen.addr"), pid, &log)?;
    }

    // Wait until every node has registered and reported its space.
    let client = connect_master(&state.master, &secret, Duration::from_secs(5)).await?;
    let start = Instant::now();
    loop {
        let nodes = client.nodes(tarpc::context::current()).await?.map_err(|e| anyhow::anyhow!("master: {e}"))?;
        if nodes.iter().filter(|n| n.alive && n.capacity_bytes > 0).count() >= args.nodes as usize {
            break;
        }
        if start.elapsed() > START_TIMEOUT {
            bail!(
                "only {} of {} nodes registered within {START_TIMEOUT:?}; see the logs in {}",
                nodes.len(),
                args.nodes,
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    std::fs::create_dir_all(&args.mount).with_context(|| format!("create mount point {}", args.mount.display()))?;
    let status = Command::new(sibling("stripefs-mount")?)
        .arg(&state.master)
        .arg(&args.mount)
        .arg("-o")
        .arg(format!(
            "secret_file={secret_arg},host=node1,log={}{}",
            dir.join("mount.log").display(),
            args.options.as_deref().map(|o| format!(",{o}")).unwrap_or_default()
        ))
        .status()
        .context("run stripefs-mount")?;
    if !status.success() {
        bail!(
            "mounting on {} failed (see above); the servers keep running, stop them with `stripefs down --data {}`",
            args.mount.display(),
            dir.display()
        );
    }
    println!("stripefs is up:");
    println!("  master   {} (database in {})", state.master, master_dir.display());
    for i in 1..=args.nodes {
        println!("  node{i}    127.0.1.{i} (chunks in {})", dir.join(format!("node{i}")).display());
    }
    println!("  mounted  on {}", args.mount.display());
    println!("  logs     {}/*.log, secret in {}", dir.display(), secret_file.display());
    println!(
        "Try `stripefs status {}`; stop everything with `stripefs down --data {}`.",
        args.mount.display(),
        dir.display()
    );
    Ok(())
}

/// `stripefs down`.
pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let dir = args.data.unwrap_or_else(default_local_dir);
    let Some(state) = read_state(&dir) else {
        bail!("no cluster was started from {} (no {} file)", dir.display(), dir.join(STATE_FILE).display());
    };
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| {
        l.split(' ').nth(4).map(stripefs_client::mount::unescape_mount_path) == Some(state.mount.display().to_string())
    });
    if mounted {
        let out = Command::new("umount").arg(&state.mount).output().context("run umount")?;
        if !out.status.success() {
            bail!(
                "cannot unmount {}: {} (is a process still using it? `fuser -vm {}` shows which)",
                state.mount.display(),
                String::from_utf8_lossy(&out.stderr).trim(),
                state.mount.display()
            );
        }
        println!("unmounted {}", state.mount.display());
    }
    // Nodes first, the master last.
    for (name, pid) in state.pids.iter().rev() {
        if !alive(*pid) {
            continue;
        }
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
        let start = Instant::now();
        while alive(*pid) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(*pid) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            println!("{name} (pid {pid}) did not stop in 10 s: killed");
        } else {
            println!("stopped {name} (pid {pid})");
        }
    }
    std::fs::remove_file(dir.join(STATE_FILE)).context("remove the cluster state file")?;
    println!("the data stays in {}; `stripefs up --data {}` starts it again", dir.display(), dir.display());
    Ok(())
}
