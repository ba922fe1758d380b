//! Real processes killed with SIGKILL: storage nodes during writes and
//! during reads, the master during writes. Every acknowledged byte must be
//! intact (sha256) and applications must see no error.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stripefs_client::MountOptions;
use stripefs_tests::{bin, fsck_lists_only, random_bytes, sha256, temp_dir, TestMount, TEST_SECRET};
use tempfile::TempDir;

/// A cluster of real processes; everything is SIGKILLed on drop.
struct ProcCluster {
    dir: TempDir,
    master: Option<Child>,
    master_addr: String,
    nodes: Vec<Option<Child>>,
}

fn wait_file(p: &Path, child: &mut Child) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = fs::read_to_string(p) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
        assert!(child.try_wait().expect("try_wait").is_none(), "process exited during start-up");
        assert!(start.elapsed() < Duration::from_secs(20), "{} not written", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl ProcCluster {
    fn start(nodes: usize) -> ProcCluster {
        stripefs_tests::must_have_fuse();
        let dir = temp_dir("stripefs-proc-");
        fs::write(dir.path().join("secret"), TEST_SECRET).expect("secret");
        let mut c = ProcCluster { dir, master: None, master_addr: "127.0.0.1:0".into(), nodes: Vec::new() };
        c.start_master();
        for i in 0..nodes {
            c.start_node(i);
        }
        c
    }

    fn log(&self, name: &str) -> Stdio {
        Stdio::from(fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log file"))
    }

    fn start_master(&mut self) {
        let data = self.dir.path().join("master");
        let _ = fs::remove_file(data.join("listen.addr"));
        let child = Command::new(bin("stripefs-master"))
            .args(["--data", &data.display().to_string(), "--listen", &self.master_addr])
            .args(["--secret-file", &self.dir.path().join("secret").display().to_string()])
            .args(["--node-dead-after", "2"])
            .stderr(self.log("master"))
            .spawn()
            .expect("start master");
        // Owned by the cluster before waiting, so a failure kills it too.
        let child = self.master.insert(child);
        self.master_addr = wait_file(&data.join("listen.addr"), child);
    }

    fn start_node(&mut self, i: usize) {
        let data = self.dir.path().join(format!("node{i}"));
        fs::create_dir_all(&data).expect("node dir");
        let child = Command::new(bin("stripefs-node"))
            .args(["--data", &data.display().to_string(), "--listen", &format!("127.0.0.{}:0", i + 2)])
            .args(["--master", &self.master_addr, "--host", &format!("host{i}"), "--heartbeat-ms", "200"])
            .args(["--reserve-mb", "0", "--secret-file", &self.dir.path().join("secret").display().to_string()])
            .stderr(self.log(&format!("node{i}")))
            .spawn()
            .expect("start node");
        if self.nodes.len() <= i {
            self.nodes.resize_with(i + 1, || None);
        }
        let child = self.nodes[i].insert(child);
        wait_file(&data.join("listen.addr"), child);
    }

    fn sigkill(child: &mut Child) {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("kill -9");
        let _ = child.wait();
    }

    fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            Self::sigkill(&mut c);
        }
    }

    fn kill_master(&mut self) {
        if let Some(mut c) = self.master.take() {
            Self::sigkill(&mut c);
        }
    }

    fn wait_dead(&self, n: usize) {
        stripefs_tests::TestCluster::wait_dead_at(&self.master_addr, n);
    }

    fn wait_nodes(&self, n: usize) {
        stripefs_tests::TestCluster::wait_nodes_up_at(&self.master_addr, n);
    }

    fn mount(&self) -> TestMount {
        TestMount::start(&self.master_addr, MountOptions::default()).expect("mount")
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for e in fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    let text = fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    eprintln!("--- {} (last lines)", e.path().display());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        for c in self.nodes.iter_mut().flatten() {
            Self::sigkill(c);
        }
        if let Some(c) = self.master.as_mut() {
            Self::sigkill(c);
        }
    }
}

/// Writes `data` to `path` in 1 MiB writes, then closes (flush).
fn write_file(path: PathBuf, data: Vec<u8>) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        let mut f = fs::File::create(&path)?;
        for piece in data.chunks(1 << 20) {
            f.write_all(piece)?;
            std::thread::sleep(Duration::from_millis(5));
        }
        f.sync_all()
    })
}

#[test]
fn sigkill_of_a_node_during_writes_and_reads() {
    let mut c = ProcCluster::start(4);
    c.wait_nodes(4);
    let m = c.mount();
    let data = random_bytes(48 << 20);
    let writer = write_file(m.join("big"), data.clone());
    std::thread::sleep(Duration::from_millis(150));
    c.kill_node(1);
    if let Err(e) = writer.join().expect("writer thread") {
        panic!("the writer got {e}");
    }
    assert_eq!(sha256(&fs::read(m.join("big")).expect("read")), sha256(&data));
    // Once the master knows node 1 is dead, fsck lists at most chunks of
    // the file that lost their replica there (uploads the kill cut short
    // leave garbage, which is not a problem).
    c.wait_dead(1);
    let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(m.join("big")).expect("stat"));
    fsck_lists_only(m.path(), "node 1 SIGKILLed", |p| {
        p["kind"] == "under_replicated" && p["ino"] == ino && p["live"] == 1 && p["want"] == 2
    });
    // Replication 2 survives one failure at a time: the next node dies
    // only once every chunk has two live replicas again.
    let took = stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(60));
    println!("fsck clean {:.1} s after the first kill was noticed", took.as_secs_f64());

    // Reads: a fresh mount reads the file while another node dies.
    drop(m);
    let m = c.mount();
    let path = m.join("big");
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut f = fs::File::open(path)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    c.kill_node(2);
    let back = reader.join().expect("reader thread").expect("no error reaches the reader");
    assert_eq!(sha256(&back), sha256(&data));
    // Two of four nodes are gone: every chunk is copied back to two live
    // nodes, then fsck finds nothing.
    let took = stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(60));
    println!("fsck clean {:.1} s after the second kill", took.as_secs_f64());
}

#[test]
fn sigkill_of_the_master_during_writes() {
    let mut c = ProcCluster::start(3);
    c.wait_nodes(3);
    let m = c.mount();
    let data = random_bytes(24 << 20);
    let local = temp_dir("stripefs-src-");
    fs::write(local.path().join("src"), &data).expect("local copy");
    fs::create_dir(m.join("before")).expect("mkdir");
    // The writer is another process: this one must hold no file of the
    // mount open when it starts the master, or the child's close-on-exec
    // of it (a FUSE flush, which waits for the master) would block the
    // exec of the very master it waits for.
    let mut dd = Command::new("dd")
        .arg(format!("if={}", local.path().join("src").display()))
        .arg(format!("of={}", m.join("f").display()))
        .args(["bs=1M", "conv=fsync"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start dd");
    std::thread::sleep(Duration::from_millis(150));
    c.kill_master();
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    c.start_master();
    fs::create_dir(m.join("after")).expect("mkdir after the restart");
    println!("first operation {:.3} s after the master was restarted", started.elapsed().as_secs_f64());
    let status = dd.wait().expect("wait for dd");
    assert!(status.success(), "no error reaches the writer: dd {status}");
    assert!(m.join("before").is_dir(), "an acknowledged mkdir survived kill -9 of the master");
    assert_eq!(sha256(&fs::read(m.join("f")).expect("read")), sha256(&data));
    stripefs_tests::wait_fsck_clean(m.path(), Duration::from_secs(60));
}

/// The node of a scratch file killed with SIGKILL: the file's data was
/// there only. Another host's reads of it fail with EIO, fsck lists it as
/// lost (exit code 4) and nothing else but the replicated file's expected
/// under-replication; that file reads on.
#[test]
fn sigkill_of_the_node_holding_a_scratch_file() {
    let mut c = ProcCluster::start(3);
    // Every node registered (a node that was turned away while the master
    // was starting retries later): a scratch file's home must exist.
    c.wait_nodes(3);
    let host = |i: usize| MountOptions { host: Some(format!("host{i}")), ..Default::default() };
    let a = TestMount::start(&c.master_addr, host(0)).expect("mount on host0");
    fs::create_dir(a.join("spill")).expect("mkdir");
    let out = Command::new(bin("stripefs"))
        .args(["policy".as_ref(), a.join("spill").as_os_str(), "--class".as_ref(), "scratch".as_ref()])
        .env("STRIPEFS_SECRET", std::str::from_utf8(TEST_SECRET).expect("utf-8"))
        .output()
        .expect("stripefs policy");
    assert!(out.status.success(), "stripefs policy: {}", String::from_utf8_lossy(&out.stderr));
    let data = random_bytes(1_000_000);
    fs::write(a.join("spill/f"), &data).expect("write the scratch file");
    fs::write(a.join("kept"), &data).expect("write a replicated file");
    drop(a);
    c.kill_node(0);
    c.wait_dead(1);
    let b = TestMount::start(&c.master_addr, host(1)).expect("mount on host1");
    let err = fs::read(b.join("spill/f")).expect_err("its only copy is on the killed node");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(sha256(&fs::read(b.join("kept")).expect("the replicated file")), sha256(&data));
    let (code, v) = stripefs_tests::fsck("scratch node killed", &[b.path().as_os_str()]);
    let problems = stripefs_tests::fsck_problems(&v);
    let lost = problems.iter().filter(|p| p["kind"] == "lost_scratch_file").count();
    assert_eq!(lost, 1, "{v:#}");
    assert!(problems.iter().all(|p| p["kind"] == "lost_scratch_file" || p["kind"] == "under_replicated"), "{v:#}");
    assert_eq!(code, 4, "{v:#}");
}
