//! A master group of real `stripefs-master` processes (so that tests can
//! kill -9, SIGSTOP and restart them by their own command line), storage
//! node processes, all on loopback, made the way an operator makes one:
//! masters started with `--join`, then `stripefs masters init`.
//!
//! Every process is killed when the [`Group`] is dropped, also when a test
//! panics.

use crate::{bin, secret, TestClient};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stripefs_proto::net::context_with_timeout;
use stripefs_proto::types::GroupStatus;

/// A free port on 127.0.0.1 outside the ephemeral range (the master
/// started next takes it, and finds it again when restarted).
fn free_port() -> u16 {
    stripefs_proto::net::lasting_addr("127.0.0.1").expect("a free port").port()
}

/// One master process.
pub struct Master {
    /// Its address.
    pub addr: String,
    /// Its data directory.
    pub dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl Master {
    fn spawn(&mut self, log: &Path) {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("master log");
        let child = Command::new(bin("stripefs-master"))
            .args(&self.args)
            .env("RUST_LOG", "info,stripefs_master=info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start stripefs-master");
        self.child = Some(child);
    }

    /// Whether its process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Its pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// A master group with storage nodes.
pub struct Group {
    dir: tempfile::TempDir,
    /// The masters, by position.
    pub masters: Vec<Master>,
    nodes: Vec<Child>,
    /// More arguments for every master.
    extra: Vec<String>,
}

impl Group {
    /// `n` masters made into a group by `stripefs masters init`, and
    /// `nodes` storage nodes; waits until the nodes are up. Snapshots every
    /// `snapshot_every` log entries.
    pub fn start(n: usize, nodes: usize, snapshot_every: u64) -> Group {
        Group::start_with(n, nodes, snapshot_every, &[])
    }

    /// [`Group::start`] with more arguments for every master.
    pub fn start_with(n: usize, nodes: usize, snapshot_every: u64, master_args: &[&str]) -> Group {
        crate::init_logs();
        let dir = tempfile::Builder::new().prefix("stripefs-group-").tempdir().expect("temp dir");
        std::fs::write(dir.path().join("secret"), crate::TEST_SECRET).expect("secret");
        let extra = master_args.iter().map(|a| a.to_string()).collect();
        let mut g = Group { dir, masters: Vec::new(), nodes: Vec::new(), extra };
        for i in 0..n {
            g.add_master_process(i, snapshot_every);
        }
        for i in 0..n {
            g.wait_listening(i);
        }
        let all = g.addrs();
        g.cli(&["masters", "--master", &g.masters[0].addr.clone(), "init", &all]).expect("stripefs masters init");
        for i in 0..nodes {
            let ndir = g.dir.path().join(format!("node{i}"));
            let log = std::fs::File::create(g.dir.path().join(format!("node{i}.log"))).expect("node log");
            let child = Command::new(bin("stripefs-node"))
                .arg("--data")
                .arg(&ndir)
                .args(["--listen", "127.0.0.1:0", "--master", &all, "--host", &format!("host{i}")])
                .arg("--secret-file")
                .arg(g.dir.path().join("secret"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start stripefs-node");
            g.nodes.push(child);
        }
        g.wait_nodes(nodes);
        g
    }

    fn add_master_process(&mut self, i: usize, snapshot_every: u64) {
        let addr = format!("127.0.0.1:{}", free_port());
        let dir = self.dir.path().join(format!("master{i}"));
        let args = vec![
            "--data".to_string(),
            dir.display().to_string(),
            "--listen".into(),
            addr.clone(),
            "--join".into(),
            "--secret-file".into(),
            self.dir.path().join("secret").display().to_string(),
            "--node-dead-after-secs".into(),
            "5".into(),
            "--snapshot-every".into(),
            snapshot_every.to_string(),
        ]
        .into_iter()
        .chain(self.extra.iter().cloned())
        .collect();
        let mut m = Master { addr, dir, child: None, args };
        m.spawn(&self.log(i));
        if i < self.masters.len() {
            self.masters[i] = m;
        } else {
            self.masters.push(m);
        }
    }

    /// The log file of master `i`.
    pub fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("master{i}.log"))
    }

    /// Every master's address, comma-separated (what clients are given).
    pub fn addrs(&self) -> String {
        self.masters.iter().map(|m| m.addr.clone()).collect::<Vec<_>>().join(",")
    }

    /// Runs the `stripefs` CLI with this group's secret; its stdout, or
    /// its stderr as the error.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(bin("stripefs"))
            .args(args)
            .arg("--secret-file")
            .arg(self.dir.path().join("secret"))
            .output()
            .expect("run stripefs");
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            false => Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))),
        }
    }

    fn wait_listening(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.masters[i].addr).is_err() {
            assert!(Instant::now() < deadline, "master {i} does not listen:\n{}", self.log_text(i));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Master `i`'s log.
    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(self.log(i)).unwrap_or_default()
    }

    /// The group as master `i` sees it (None: it does not answer).
    pub fn status(&self, i: usize) -> Option<GroupStatus> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let c = stripefs_proto::net::connect_master(&self.masters[i].addr, &secret(), Duration::from_secs(2))
                .await
                .ok()?;
            c.group(context_with_timeout(Duration::from_secs(3))).await.ok()?.ok()
        })
    }

    /// The position of the leader, waiting up to `within` for one that
    /// every running master agrees on.
    pub fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let mut seen = None;
            let mut agreed = true;
            for (i, m) in self.masters.iter().enumerate() {
                if !m.running() {
                    continue;
                }
                match self.status(i).and_then(|s| s.leader) {
                    Some(l) if seen.is_none() || seen == Some(l) => seen = Some(l),
                    _ => agreed = false,
                }
            }
            if let (true, Some(id)) = (agreed, seen) {
                for (i, m) in self.masters.iter().enumerate() {
                    if m.running() && self.status(i).is_some_and(|s| s.this == id) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader the running masters agree on within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `n` nodes are up at the leader.
    pub fn wait_nodes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        loop {
            let up = rt.block_on(async {
                let (c, _) =
                    stripefs_proto::net::connect_leader(&self.addrs(), &secret(), Duration::from_secs(2)).await.ok()?;
                let nodes = c.nodes(context_with_timeout(Duration::from_secs(3))).await.ok()?.ok()?;
                Some(nodes.iter().filter(|n| n.alive && n.capacity_bytes > 0).count())
            });
            if up.unwrap_or(0) >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{n} nodes did not come up (up: {up:?})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kill -9 of master `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.masters[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to master `i`.
    pub fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        let pid = self.masters[i].pid().expect("master runs");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("signal");
    }

    /// Starts master `i` again with its command line.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.masters[i].running(), "master {i} still runs");
        let log = self.log(i);
        self.masters[i].spawn(&log);
        self.wait_listening(i);
    }

    /// Replaces master `i` by a new one with an empty data directory
    /// (started with `--join`; not a member until added).
    pub fn start_blank(&mut self, i: usize, snapshot_every: u64) {
        self.kill(i);
        let _ = std::fs::remove_dir_all(&self.masters[i].dir);
        self.add_master_process(i, snapshot_every);
        self.wait_listening(i);
    }

    /// A client of the group (in this process: it is not what is killed).
    pub fn client(&self, host: &str) -> TestClient {
        let cfg = stripefs_client::ClientConfig {
            host: host.into(),
            master_timeout: Duration::from_secs(90),
            ..Default::default()
        };
        TestClient::connect(&self.addrs(), cfg)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for m in &mut self.masters {
            if let Some(mut c) = m.child.take() {
                // A stopped process must go too.
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGCONT);
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
