//! `stripefs up` and `stripefs down`: a whole cluster on this machine's
//! loopback, for trying stripefs out and for tests.
//!
//! Every process gets a fixed address at the cluster's first start,
//! recorded in DIR/cluster: a process killed and started again by its own
//! command line (as `ps` shows it), or by `stripefs up` again, listens
//! where the others look for it. `stripefs down` finds the cluster's
//! processes by their command lines (each names a path under DIR), so it
//! also stops processes restarted by hand.

use crate::target::default_local_dir;
use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stripefs_proto::net::{connect_leader, connect_master, context_with_timeout, Secret};

/// Options of `stripefs up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Number of storage nodes (each on its own 127.0.1.N address and host
    /// name) [default: 3, or as many as the cluster in DIR has; a larger
    /// number adds nodes].
    #[arg(long)]
    nodes: Option<u32>,
    /// Directory for the master's database, the nodes' chunks, logs, the
    /// secret and the cluster's addresses (DIR/cluster) [default: /var/tmp/stripefs].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where to mount the filesystem (created if missing) [default: where
    /// the cluster in DIR was last mounted, else /mnt/stripefs].
    #[arg(long, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Chunk size of a new filesystem, in bytes.
    #[arg(long, value_name = "BYTES")]
    chunk_size: Option<u32>,
    /// More mount options for the client, comma-separated, as
    /// `stripefs-mount -o` takes them (e.g. `local_reads=off` to read over
    /// TCP, `cache_mb=512`).
    #[arg(short = 'o', long, value_name = "OPTIONS")]
    options: Option<String>,
    /// Number of masters: 1, 3 or 5 (a master group; each on its own
    /// 127.0.2.N address) [default: 1, or as many as the cluster in DIR
    /// has; a larger number adds masters to its group].
    #[arg(long, value_name = "N")]
    masters: Option<u32>,
}

/// Options of `stripefs down`.
#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// Data directory given to `stripefs up`.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

/// The cluster's addresses and mount point, in DIR/cluster.
const LAYOUT_FILE: &str = "cluster";
/// How long a process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `down` lets processes stop on SIGTERM before it kills them.
const STOP_GRACE: Duration = Duration::from_millis(1500);
/// The programs of a cluster, as /proc/PID/comm names them.
const PROGRAMS: [&str; 3] = ["stripefs-master", "stripefs-node", "stripefs-mount"];
/// Default number of storage nodes of a new cluster.
const DEFAULT_NODES: u32 = 3;

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

/// Whether `pid` runs (a zombie nobody reaped counts as gone, once its
/// other threads, which still hold its sockets and files, are gone too).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => {
            !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
                || std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count()) > 1
        }
        Err(_) => false,
    }
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

/// Waits for a process to write its bound address to `file`.
fn wait_listening(file: &Path, pid: u32, log: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(file).is_ok_and(|a| !a.trim().is_empty()) {
            return Ok(());
        }
        if !alive(pid as i32) {
            bail!("process {pid} exited during start-up; last lines of {}:\n{}", log.display(), tail(log));
        }
        if start.elapsed() > START_TIMEOUT {
            bail!("process {pid} did not start listening within {START_TIMEOUT:?}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the cluster's processes listen and where it is mounted: chosen at
/// its first start, kept in DIR/cluster for every later one.
#[derive(Debug, Clone, PartialEq, Default)]
struct Layout {
    /// The first master's address.
    master: String,
    /// The other masters' addresses (master 2, 3, ...).
    more_masters: Vec<String>,
    mount: PathBuf,
    /// The address of node i+1.
    nodes: Vec<String>,
}

impl Layout {
    /// Every master's address.
    fn masters(&self) -> Vec<String> {
        std::iter::once(self.master.clone()).chain(self.more_masters.iter().cloned()).collect()
    }

    /// The masters as clients, nodes and the CLI are given them.
    fn master_list(&self) -> String {
        self.masters().join(",")
    }

    fn read(dir: &Path) -> anyhow::Result<Option<Layout>> {
        let path = dir.join(LAYOUT_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        Ok(Some(Layout::parse(&text)))
    }

    /// Reads the file's `key=value` lines (lines it does not know, such as
    /// the `pid.*` lines of older versions, are skipped).
    fn parse(text: &str) -> Layout {
        let mut l = Layout::default();
        let mut nodes = std::collections::BTreeMap::new();
        let mut masters = std::collections::BTreeMap::new();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("master", v)) => l.master = v.to_string(),
                Some(("mount", v)) => l.mount = PathBuf::from(v),
                Some((k, v)) => {
                    if let Some(i) = k.strip_prefix("node.").and_then(|i| i.parse::<u32>().ok()) {
                        nodes.insert(i, v.to_string());
                    }
                    if let Some(i) = k.strip_prefix("master.").and_then(|i| i.parse::<u32>().ok()) {
                        masters.insert(i, v.to_string());
                    }
                }
                None => {}
            }
        }
        // Nodes are numbered from 1 without gaps; a gap ends the list.
        l.nodes = (1..).map_while(|i| nodes.remove(&i)).collect();
        l.more_masters = (2..).map_while(|i| masters.remove(&i)).collect();
        l
    }

    fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let mut text = format!(
            "# Addresses of this stripefs up cluster, fixed at its first start.\nmaster={}\nmount={}\n",
            self.master,
            self.mount.display()
        );
        for (i, a) in self.more_masters.iter().enumerate() {
            text.push_str(&format!("master.{}={a}\n", i + 2));
        }
        for (i, a) in self.nodes.iter().enumerate() {
            text.push_str(&format!("node.{}={a}\n", i + 1));
        }
        let path = dir.join(LAYOUT_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
    }
}

/// A free TCP address on `ip` for a process of the cluster, with a port
/// outside the ephemeral range, so the process restarted (by `stripefs up`
/// or by its own command line) finds it free again (see
/// [`stripefs_proto::net::lasting_addr`]).
fn free_addr(ip: &str) -> anyhow::Result<String> {
    let a = stripefs_proto::net::lasting_addr(ip).with_context(|| format!("find a free port on {ip}"))?;
    Ok(a.to_string())
}

/// The loopback address of node `i` (from 1).
fn node_ip(i: usize) -> String {
    format!("127.0.1.{i}")
}

/// A running process of the cluster.
#[derive(Debug)]
struct Proc {
    pid: i32,
    program: String,
    args: Vec<String>,
}

impl Proc {
    /// Whether this is the process serving `data_dir` (`--data DIR`).
    fn serves(&self, program: &str, data_dir: &Path) -> bool {
        let d = data_dir.display().to_string();
        self.program == program && self.args.windows(2).any(|w| w[0] == "--data" && w[1] == d)
    }

    fn name(&self, dir: &Path) -> String {
        let data = self.args.windows(2).find(|w| w[0] == "--data").map(|w| w[1].as_str());
        match data.and_then(|d| Path::new(d).strip_prefix(dir).ok()) {
            Some(sub) => sub.display().to_string(),
            None if self.program == "stripefs-mount" => "mount client".into(),
            None => self.program.clone(),
        }
    }
}

/// Every running stripefs process of the cluster in `dir`: a master, node
/// or client whose command line names a path under `dir` (its data
/// directory, its secret or its log), whoever started it.
fn cluster_processes(dir: &Path) -> Vec<Proc> {
    let under = format!("{}/", dir.display());
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out: Vec<Proc> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let program = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?.trim().to_string();
            if !PROGRAMS.contains(&program.as_str()) || !alive(pid) {
                return None;
            }
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter().skip(1).any(|a| names_path_under(a, &under)).then_some(Proc { pid, program, args })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Whether a command-line argument names a path under `under` (which ends
/// in `/`): as the argument itself or inside an option list (`-o log=DIR/...`).
fn names_path_under(arg: &str, under: &str) -> bool {
    arg.split([',', '=']).any(|part| part.starts_with(under))
}

/// Processes with their working directory or an open file under `mnt`,
/// as "PID (NAME)". Reads only /proc's links, never the mount.
fn mount_users(mnt: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    let inside = |p: PathBuf| p.starts_with(mnt);
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(inside)
                || std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| d.flatten().any(|f| std::fs::read_link(f.path()).is_ok_and(inside)))
                    .unwrap_or(false)
        })
        .map(|pid| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{pid} ({})", name.trim())
        })
        .collect()
}

/// Unmounts `mnt` without ever waiting on it: a plain unmount, else (a
/// process still uses it) a lazy one, which detaches it at once; the
/// processes using it get errors once its client stops. umount(8) is not
/// used: it stats the mount point first, which waits on a client whose
/// master is gone.
fn unmount(mnt: &Path) -> anyhow::Result<()> {
    use nix::mount::{umount2, MntFlags};
    match umount2(mnt, MntFlags::empty()) {
        Ok(()) => println!("unmounted {}", mnt.display()),
        Err(nix::errno::Errno::EBUSY) => {
            let users = mount_users(mnt);
            umount2(mnt, MntFlags::MNT_DETACH).with_context(|| format!("detach {}", mnt.display()))?;
            println!(
                "{} was still in use{}: detached it (lazy unmount); what still uses it fails once its client stops",
                mnt.display(),
                if users.is_empty() { String::new() } else { format!(" by {}", users.join(", ")) }
            );
        }
        Err(nix::errno::Errno::EPERM) => {
            let out = Command::new("fusermount3").arg("-uz").arg(mnt).output().context("run fusermount3")?;
            if !out.status.success() {
                bail!("cannot unmount {}: {}", mnt.display(), String::from_utf8_lossy(&out.stderr).trim());
            }
            println!("unmounted {} (lazily)", mnt.display());
        }
        Err(e) => bail!("cannot unmount {}: {e}", mnt.display()),
    }
    Ok(())
}

/// What `up` found or did for one process.
enum Started {
    Now(u32),
    Already(i32),
    /// Mounted by a client that is not this cluster's.
    Elsewhere,
}

impl std::fmt::Display for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Started::Now(pid) => write!(f, "started, pid {pid}"),
            Started::Already(pid) => write!(f, "already running, pid {pid}"),
            Started::Elsewhere => write!(f, "already mounted by another client"),
        }
    }
}

/// Starts the server `program` on `data` unless one runs there already.
fn ensure_server(
    running: &[Proc],
    program: &str,
    data: &Path,
    args: Vec<String>,
    log: &Path,
) -> anyhow::Result<Started> {
    if let Some(p) = running.iter().find(|p| p.serves(program, data)) {
        return Ok(Started::Already(p.pid));
    }
    std::fs::create_dir_all(data).with_context(|| format!("create {}", data.display()))?;
    let addr_file = data.join("listen.addr");
    let _ = std::fs::remove_file(&addr_file);
    let pid = spawn(&sibling(program)?, &args, log)?;
    wait_listening(&addr_file, pid, log)?;
    Ok(Started::Now(pid))
}

/// `stripefs up`: starts whatever of the cluster in DIR is not running
/// (all of it the first time), each process on its recorded address.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    if let Some(n) = args.nodes {
        if n == 0 || n > 200 {
            bail!("--nodes must be between 1 and 200");
        }
    }
    if let Some(o) = &args.options {
        // Refused now, before any server starts.
        stripefs_client::options::parse_options(&[o]).map_err(|e| anyhow::anyhow!("-o {o}: {e}"))?;
    }
    check_fuse()?;
    let dir = args.data.clone().unwrap_or_else(default_local_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let secret_file = dir.join("secret");
    if !secret_file.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&secret_file)?;
        std::io::Write::write_all(&mut f, Secret::generate().as_bytes())?;
    }
    let secret = Secret::from_file(&secret_file)?;
    let secret_arg = secret_file.display().to_string();

    if let Some(m) = args.masters {
        if ![1, 3, 5].contains(&m) {
            bail!("--masters must be 1, 3 or 5 (a group needs a majority: an even number adds no safety)");
        }
    }
    let old = Layout::read(&dir)?;
    let mut layout = old.clone().unwrap_or_default();
    let new_cluster = !dir.join("master").join("master.redb").exists();
    let masters = args.masters.map(|m| m as usize).unwrap_or(1 + layout.more_masters.len());
    if masters < 1 + layout.more_masters.len() {
        bail!(
            "the cluster in {} has {} masters; remove masters with `stripefs masters remove`, not with `stripefs up`",
            dir.display(),
            1 + layout.more_masters.len()
        );
    }
    for i in layout.more_masters.len() + 2..=masters {
        layout.more_masters.push(free_addr(&format!("127.0.2.{i}"))?);
    }
    let nodes = args.nodes.map(|n| n as usize).unwrap_or(if layout.nodes.is_empty() {
        DEFAULT_NODES as usize
    } else {
        layout.nodes.len()
    });
    if nodes < layout.nodes.len() {
        bail!(
            "the cluster in {} has {} nodes; `stripefs up` does not remove nodes (their replicas would go with them)",
            dir.display(),
            layout.nodes.len()
        );
    }
    if layout.master.is_empty() {
        layout.master = free_addr("127.0.0.1")?;
    }
    for i in layout.nodes.len() + 1..=nodes {
        layout.nodes.push(free_addr(&node_ip(i))?);
    }
    if let Some(m) = &args.mount {
        // Absolute: it is compared with the kernel's mount table.
        layout.mount = std::path::absolute(m).with_context(|| format!("--mount {}", m.display()))?;
    } else if layout.mount.as_os_str().is_empty() {
        layout.mount = PathBuf::from("/mnt/stripefs");
    }
    if old.as_ref() != Some(&layout) {
        layout.write(&dir)?;
    }

    let running = cluster_processes(&dir);
    let master_dir = dir.join("master");
    let mut master_state = Vec::new();
    for (i, addr) in layout.masters().iter().enumerate().map(|(i, a)| (i + 1, a)) {
        let mdir = if i == 1 { master_dir.clone() } else { dir.join(format!("master{i}")) };
        let mut margs = vec![
            "--data".into(),
            mdir.display().to_string(),
            "--listen".into(),
            addr.clone(),
            "--secret-file".into(),
            secret_arg.clone(),
        ];
        if let Some(c) = args.chunk_size {
            margs.extend(["--chunk-size".into(), c.to_string()]);
        }
        // Every master of a new group, and a master added to a group,
        // waits to be made a member (below).
        if i > 1 || (new_cluster && masters > 1) {
            margs.push("--join".into());
        }
        let log = if i == 1 { dir.join("master.log") } else { dir.join(format!("master{i}.log")) };
        let started = ensure_server(&running, "stripefs-master", &mdir, margs, &log)
            .with_context(|| format!("start master {i} on {addr} (recorded in {})", dir.join(LAYOUT_FILE).display()))?;
        master_state.push((started, mdir));
    }
    if masters > 1 {
        form_group(&layout, &secret, args.chunk_size).await?;
    }
    let mut node_state = Vec::new();
    for (i, addr) in layout.nodes.iter().enumerate().map(|(i, a)| (i + 1, a)) {
        let ndir = dir.join(format!("node{i}"));
        let nargs = vec![
            "--data".into(),
            ndir.display().to_string(),
            "--listen".into(),
            addr.clone(),
            "--master".into(),
            layout.master_list(),
            "--host".into(),
            format!("node{i}"),
            "--secret-file".into(),
            secret_arg.clone(),
        ];
        let started = ensure_server(&running, "stripefs-node", &ndir, nargs, &dir.join(format!("node{i}.log")))
            .with_context(|| format!("start node{i} on {addr}"))?;
        node_state.push(started);
    }

    // Wait until every node has registered and reported its space.
    let start = Instant::now();
    loop {
        // A new leader answers NotLeader until it serves: ask again.
        let listed = match connect_leader(&layout.master_list(), &secret, Duration::from_secs(5)).await {
            Ok((client, _)) => {
                client.nodes(context_with_timeout(Duration::from_secs(5))).await.ok().and_then(|r| r.ok())
            }
            Err(_) => None,
        };
        let up = listed.unwrap_or_default().iter().filter(|n| n.alive && n.capacity_bytes > 0).count();
        if up >= nodes {
            break;
        }
        if start.elapsed() > START_TIMEOUT {
            bail!("only {up} of {nodes} nodes registered within {START_TIMEOUT:?}; see the logs in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mnt = &layout.mount;
    let serving = running.iter().find(|p| p.program == "stripefs-mount" && p.args.iter().any(|a| Path::new(a) == mnt));
    // A mount whose client died is replaced by stripefs-mount itself; a
    // live one (statfs answers) is left alone, whoever started it.
    let live = stripefs_client::records::stripefs_mount_on(mnt) && nix::sys::statfs::statfs(mnt).is_ok();
    let mount_state = match serving {
        Some(p) if live => Started::Already(p.pid),
        None if live => Started::Elsewhere,
        _ => {
            std::fs::create_dir_all(mnt).with_context(|| format!("create mount point {}", mnt.display()))?;
            let status = Command::new(sibling("stripefs-mount")?)
                .arg(layout.master_list())
                .arg(mnt)
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
                    mnt.display(),
                    dir.display()
                );
            }
            let pid = cluster_processes(&dir)
                .into_iter()
                .find(|p| p.program == "stripefs-mount" && p.args.iter().any(|a| Path::new(a) == mnt))
                .map_or(0, |p| p.pid as u32);
            Started::Now(pid)
        }
    };
    println!("stripefs is up:");
    for (i, (addr, (started, mdir))) in layout.masters().iter().zip(&master_state).enumerate() {
        let name = if masters > 1 { format!("master{}", i + 1) } else { "master".into() };
        println!("  {name:<8} {addr} ({started}; database in {})", mdir.display());
    }
    for (i, (addr, started)) in layout.nodes.iter().zip(&node_state).enumerate() {
        println!("  node{}    {addr} ({started}; chunks in {})", i + 1, dir.join(format!("node{}", i + 1)).display());
    }
    println!("  mounted  on {} ({mount_state})", mnt.display());
    println!("  logs     {}/*.log, secret in {}", dir.display(), secret_file.display());
    println!(
        "Each process keeps its address (in {}): restart one by its own command line or with `stripefs up --data {}`.",
        dir.join(LAYOUT_FILE).display(),
        dir.display()
    );
    println!("Try `stripefs status {}`; stop everything with `stripefs down --data {}`.", mnt.display(), dir.display());
    Ok(())
}

/// Makes the masters of `layout` one group: a new group of them all, or
/// the masters not yet members added to the group that runs.
async fn form_group(layout: &Layout, secret: &Secret, chunk_size: Option<u32>) -> anyhow::Result<()> {
    let ask = |addr: String| async move {
        let c = connect_master(&addr, secret, Duration::from_secs(5)).await?;
        let st = c
            .group(context_with_timeout(Duration::from_secs(10)))
            .await?
            .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        anyhow::Ok((c, st))
    };
    let (first, st) = ask(layout.master.clone()).await?;
    let change_timeout = Duration::from_secs(300);
    if !st.initialized {
        let members = layout.masters();
        let change = stripefs_proto::types::GroupChange::Init { members, chunk_size };
        first
            .group_change(context_with_timeout(change_timeout), change)
            .await?
            .map_err(|e| anyhow::anyhow!("making the master group: {e}"))?;
        return Ok(());
    }
    for addr in &layout.more_masters {
        let (_, st) = ask(addr.clone()).await?;
        if st.initialized {
            continue;
        }
        let (leader, _) = connect_leader(&layout.master_list(), secret, Duration::from_secs(5)).await?;
        let change = stripefs_proto::types::GroupChange::Add { addr: addr.clone() };
        leader
            .group_change(context_with_timeout(change_timeout), change)
            .await?
            .map_err(|e| anyhow::anyhow!("adding the master at {addr} to the group: {e}"))?;
    }
    // Until the leader is in contact with every member (a few heartbeats).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((leader, _)) = connect_leader(&layout.master_list(), secret, Duration::from_secs(5)).await {
            if let Ok(Ok(st)) = leader.group(context_with_timeout(Duration::from_secs(5))).await {
                if st.members.iter().all(|m| m.millis_since_contact.is_some_and(|ms| ms < 2000)) {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            eprintln!("warning: the master group is not in contact with every member yet (see `stripefs masters`)");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `stripefs down`: unmounts the cluster's mount, then stops every process
/// of the cluster, also those restarted by hand, within about two seconds.
pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let dir = args.data.unwrap_or_else(default_local_dir);
    let dir = dir.canonicalize().unwrap_or(dir);
    let layout = Layout::read(&dir)?;
    let procs = cluster_processes(&dir);
    let Some(layout) = layout else {
        if procs.is_empty() {
            bail!("no cluster was started from {} (no {} file)", dir.display(), dir.join(LAYOUT_FILE).display());
        }
        bail!("{} has no {} file, yet processes use it: {procs:?}", dir.display(), LAYOUT_FILE);
    };
    if stripefs_client::records::stripefs_mount_on(&layout.mount) {
        unmount(&layout.mount)?;
    }
    // Every process at once: the master's changes are on disk before it
    // answers them, so none of them needs the others to stop first.
    for p in &procs {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while procs.iter().any(|p| alive(p.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in &procs {
        if alive(p.pid) {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
            println!("{} (pid {}) did not stop within {STOP_GRACE:?}: killed", p.name(&dir), p.pid);
        } else {
            println!("stopped {} (pid {})", p.name(&dir), p.pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while procs.iter().any(|p| alive(p.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if procs.is_empty() {
        println!("no process of the cluster in {} was running", dir.display());
    }
    println!(
        "down in {:.1} s; the data stays in {}; `stripefs up --data {}` starts it again",
        start.elapsed().as_secs_f64(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port from the ephemeral range could be taken, while its process is
    /// down, by any outgoing connection (a CI run saw a master restarted by
    /// its command line fail with "Address already in use").
    #[test]
    fn the_clusters_ports_are_outside_the_ephemeral_range() {
        let eph = stripefs_proto::net::ephemeral_ports();
        for ip in ["127.0.0.1", "127.0.1.1", "127.0.2.2"] {
            for _ in 0..10 {
                let a: std::net::SocketAddr = free_addr(ip).expect("free").parse().expect("an address");
                assert!(!eph.contains(&a.port()), "{a} is in the ephemeral range {eph:?}");
            }
        }
    }

    #[test]
    fn layout_round_trips_and_reads_the_old_state_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = Layout {
            master: "127.0.0.1:4000".into(),
            more_masters: vec!["127.0.2.2:4100".into(), "127.0.2.3:4101".into()],
            mount: PathBuf::from("/mnt/x y"),
            nodes: vec!["127.0.1.1:4001".into(), "127.0.1.2:4002".into()],
        };
        l.write(dir.path()).expect("write");
        assert_eq!(Layout::read(dir.path()).expect("read"), Some(l.clone()));
        assert_eq!(l.master_list(), "127.0.0.1:4000,127.0.2.2:4100,127.0.2.3:4101");
        // The state file of earlier versions: its master address is kept, its pids ignored.
        let old = Layout::parse("master=127.0.0.1:39000\nmount=/mnt/stripefs\npid.master=12\npid.node1=13\n");
        assert_eq!(old.master, "127.0.0.1:39000");
        assert!(old.nodes.is_empty() && old.more_masters.is_empty());
        assert_eq!(Layout::read(&dir.path().join("none")).expect("missing is no error"), None);
    }

    #[test]
    fn only_paths_under_the_cluster_directory_make_a_process_its_own() {
        let under = "/tmp/c/";
        assert!(names_path_under("/tmp/c/master", under));
        assert!(names_path_under("secret_file=/tmp/c/secret,host=node1,log=/tmp/c/mount.log", under));
        assert!(!names_path_under("/x/tmp/c/master", under), "another cluster's nested path");
        assert!(!names_path_under("/tmp/cc/master", under));
        assert!(!names_path_under("/tmp/c", under), "the directory itself is not under it");
    }

    #[test]
    fn a_process_serves_the_data_directory_its_command_line_names() {
        let p = Proc {
            pid: 1,
            program: "stripefs-node".into(),
            args: ["stripefs-node", "--data", "/d/node1", "--listen", "127.0.1.1:5"].map(String::from).to_vec(),
        };
        assert!(p.serves("stripefs-node", Path::new("/d/node1")));
        assert!(!p.serves("stripefs-node", Path::new("/d/node10")));
        assert!(!p.serves("stripefs-master", Path::new("/d/node1")));
        assert_eq!(p.name(Path::new("/d")), "node1");
    }
}
