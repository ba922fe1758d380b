//! The built binaries against real clusters: `stripefs-mount` (directly,
//! as mount(8)'s helper and from an fstab line), its start-up errors, and
//! the `stripefs` admin CLI (`status`, `info`, `policy`, `up`, `down`).
//!
//! Every mount and process a test starts is undone by a guard's Drop
//! (`umount -l`, then SIGKILL of what is left), also when the test fails.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use stripefs_tests::{bin, mount_type, must_run, random_bytes, run_with_deadline, sha256, temp_dir, TestCluster};

/// Generous bound for a command that should finish in seconds.
const LIMIT: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(out: &Output) -> String {
    format!("status {}\nstdout:\n{}\nstderr:\n{}", out.status, text(&out.stdout), text(&out.stderr))
}

/// Pids of processes (other than this one) with an argument containing `s`.
fn pids_with_arg(s: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(rd) = fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| pid != me && !exited(pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| String::from_utf8_lossy(a).contains(s)))
        })
        .collect()
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet).
fn exited(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name. A killed
        // process's first thread is a zombie while its other threads may
        // still be ending (holding its sockets): all must be gone.
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
                && fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count()) <= 1
        }
        Err(_) => true,
    }
}

/// Waits (bounded) until every pid in `pids` has exited.
fn must_wait_exited(pids: &[i32], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|&p| !exited(p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: processes {alive:?} still run 15 s later");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until nothing is mounted on `dir`.
fn must_wait_unmounted(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while mount_type(dir).is_some() {
        assert!(Instant::now() < deadline, "{} is still mounted 15 s later", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Undoes a mount made by a binary: `umount -l`, then kills every process
/// still naming the (unique) mount point, i.e. the client this test started.
struct MountGuard {
    dir: PathBuf,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        cleanup_mount(&self.dir);
    }
}

fn cleanup_mount(dir: &Path) {
    if mount_type(dir).is_some() {
        let out = run_with_deadline(Command::new("umount").arg("-l").arg(dir), Duration::from_secs(20));
        if !out.status.success() {
            eprintln!("cleanup: umount -l {}: {}", dir.display(), show(&out));
        }
    }
    for pid in pids_with_arg(&dir.display().to_string()) {
        eprintln!("cleanup: killing leftover process {pid} of {}", dir.display());
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A secret file holding the test clusters' secret, root-only.
fn secret_file(dir: &Path) -> PathBuf {
    let p = dir.join("secret");
    fs::write(&p, stripefs_tests::TEST_SECRET).expect("write secret file");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).expect("chmod secret");
    p
}

/// Checks that `dir` is a live stripefs mount: a file written there can be
/// read back there and through a harness mount of the same cluster.
fn must_be_live(dir: &Path, c: &TestCluster) {
    assert_eq!(mount_type(dir).as_deref(), Some("fuse.stripefs"), "{} is not a stripefs mount", dir.display());
    let data = random_bytes(300_000);
    let name = format!("live-{}", std::process::id());
    fs::write(dir.join(&name), &data).expect("write through the mount");
    assert_eq!(sha256(&fs::read(dir.join(&name)).expect("read back")), sha256(&data));
    let other = c.mount();
    assert_eq!(sha256(&fs::read(other.join(&name)).expect("read through another mount")), sha256(&data));
    fs::remove_file(dir.join(&name)).expect("unlink");
}

/// `umount DIR`, then waits until the mount and its client are gone.
fn must_umount(dir: &Path, client: &[i32]) {
    must_run(Command::new("umount").arg(dir), LIMIT);
    must_wait_unmounted(dir);
    must_wait_exited(client, &format!("client of {}", dir.display()));
}

// ---------------------------------------------------------------------------
// (a) stripefs-mount

#[test]
fn stripefs_mount_runs_in_the_background_and_umount_ends_it() {
    let c = TestCluster::builder().start();
    let tmp = temp_dir("stripefs-t40-");
    let secret = secret_file(tmp.path());
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir mount point");
    let _guard = MountGuard { dir: mnt.clone() };
    let log = tmp.path().join("client.log");

    let t = Instant::now();
    let out = run_with_deadline(
        Command::new(bin("stripefs-mount")).arg(&c.master_addr).arg(&mnt).arg("-o").arg(format!(
            "secret_file={},log={}",
            secret.display(),
            log.display()
        )),
        LIMIT,
    );
    eprintln!("stripefs-mount returned in {:?}", t.elapsed());
    assert!(out.status.success(), "stripefs-mount failed: {}", show(&out));
    // It returned with the mount live and the client in the background.
    let client = pids_with_arg(&mnt.display().to_string());
    assert_eq!(client.len(), 1, "want one background client, found {client:?}");
    must_be_live(&mnt, &c);
    // Its mount record lets admin commands find the cluster from a path.
    let dev = fs::metadata(&mnt).expect("stat mount").dev();
    let record = stripefs_client::records::mount_record_path(dev);
    assert!(record.exists(), "no mount record {}", record.display());
    // The kernel's read-ahead was raised to the default.
    let ra = stripefs_client::records::read_ahead_path(dev);
    let default = stripefs_client::options::DEFAULT_READ_AHEAD_KB.to_string();
    assert_eq!(fs::read_to_string(&ra).expect("read-ahead").trim(), default, "{}", ra.display());
    // It serves requests on at least four session threads, even on a 2-core host.
    let tasks = fs::read_dir(format!("/proc/{}/task", client[0])).expect("client threads");
    let session_threads = tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("fuser-"))
        .count();
    assert!(session_threads >= stripefs_client::options::MIN_DEFAULT_THREADS, "{session_threads} session threads");
    let out = must_run(Command::new(bin("stripefs")).arg("status").arg(&mnt), LIMIT);
    assert!(text(&out.stdout).contains("3/3 nodes up"), "{}", show(&out));
    // `bench --floors` times a request the client answers itself.
    let disk = tempfile::tempdir().expect("tempdir");
    let out = must_run(
        Command::new(bin("stripefs"))
            .args(["bench", "--floors", "--floor-samples", "20", "--json", "--floors-disk"])
            .arg(disk.path())
            .arg(&mnt),
        LIMIT,
    );
    let floors: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    let keys: Vec<&str> =
        floors["floors"].as_array().expect("floors").iter().filter_map(|f| f["key"].as_str()).collect();
    assert_eq!(keys, ["client_request", "missing_lookup", "fdatasync", "cold_read_4k", "cold_read_64k"], "{floors}");

    must_umount(&mnt, &client);
    assert!(!record.exists(), "the mount record {} outlived the mount", record.display());
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    assert!(log_text.contains("unmounted"), "client log lacks the unmount:\n{log_text}");
}

// ---------------------------------------------------------------------------
// (a2) a mount made by root serves every user

/// The uid and gid of `nobody` on Debian.
const NOBODY: u32 = 65534;

/// Runs `sh -c script` as the user nobody (no supplementary groups).
fn as_nobody(script: &str) -> Output {
    use std::os::unix::process::CommandExt;
    run_with_deadline(Command::new("sh").arg("-c").arg(script).uid(NOBODY).gid(NOBODY), LIMIT)
}

/// Whether the kernel's options of the mount on `dir` hold `opt`.
fn mount_has_option(dir: &Path, opt: &str) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines().rev().any(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        f.get(4).map(|p| stripefs_client::records::unescape_mount_path(p)) == Some(dir.display().to_string())
            && line.rsplit(' ').next().is_some_and(|super_opts| super_opts.split(',').any(|o| o == opt))
    })
}

/// Mounts with `stripefs-mount` as root with `options` beside the secret.
fn mount_as_root(c: &TestCluster, mnt: &Path, secret: &Path, options: &str) -> Vec<i32> {
    must_run(
        Command::new(bin("stripefs-mount"))
            .arg(&c.master_addr)
            .arg(mnt)
            .arg("-o")
            .arg(format!("secret_file={}{options}", secret.display())),
        LIMIT,
    );
    pids_with_arg(&mnt.display().to_string())
}

#[test]
fn a_mount_made_by_root_serves_every_user_unless_told_not_to() {
    let c = TestCluster::builder().nodes(2).start();
    let tmp = temp_dir("stripefs-t40-users-");
    // nobody must be able to walk to the mount point.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod tmp");
    let secret = secret_file(tmp.path());
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir mount point");
    let _guard = MountGuard { dir: mnt.clone() };

    // Default options, mounted by root: every user may use the mount, the
    // kernel checks modes (a Ray or Spark worker is rarely root).
    let client = mount_as_root(&c, &mnt, &secret, "");
    assert!(mount_has_option(&mnt, "allow_other"), "root's mount lacks allow_other");
    let shared = mnt.join("shared");
    fs::create_dir(&shared).expect("mkdir shared");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod 1777");
    fs::write(mnt.join("by-root"), b"root's words\n").expect("write by root");
    fs::write(mnt.join("private"), b"secret").expect("write private");
    fs::set_permissions(mnt.join("private"), fs::Permissions::from_mode(0o600)).expect("chmod 600");
    let out = as_nobody(&format!(
        "echo spilled > {s}/by-nobody && cat {s}/by-nobody && cat {m}/by-root && ls {s}",
        s = shared.display(),
        m = mnt.display()
    ));
    assert!(out.status.success(), "nobody cannot use root's mount: {}", show(&out));
    assert_eq!(text(&out.stdout), "spilled\nroot's words\nby-nobody\n", "{}", show(&out));
    let meta = fs::metadata(shared.join("by-nobody")).expect("stat nobody's file");
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "nobody's file has the wrong owner");
    // Modes still hold: nobody cannot read a root-only file nor write in root's directory.
    let out = as_nobody(&format!("cat {}/private", mnt.display()));
    assert!(!out.status.success() && text(&out.stderr).contains("Permission denied"), "{}", show(&out));
    let out = as_nobody(&format!("touch {}/intruder", mnt.display()));
    assert!(!out.status.success() && text(&out.stderr).contains("Permission denied"), "{}", show(&out));
    must_umount(&mnt, &client);

    // allow_other=off keeps the mount to its owner: the kernel refuses nobody everything.
    let client = mount_as_root(&c, &mnt, &secret, ",allow_other=off");
    assert!(!mount_has_option(&mnt, "allow_other"), "allow_other=off still mounted with allow_other");
    let out = as_nobody(&format!("ls {}", shared.display()));
    assert!(!out.status.success() && text(&out.stderr).contains("Permission denied"), "{}", show(&out));
    assert!(shared.join("by-nobody").exists(), "root lost its view");
    must_umount(&mnt, &client);
}

// ---------------------------------------------------------------------------
// (b) start-up errors

/// Runs stripefs-mount expecting a failure; returns its stderr.
fn must_fail_to_mount(master: &str, mnt: &Path, options: &str) -> String {
    let t = Instant::now();
    let out = run_with_deadline(Command::new(bin("stripefs-mount")).arg(master).arg(mnt).arg("-o").arg(options), LIMIT);
    eprintln!("stripefs-mount failed in {:?}: {}", t.elapsed(), text(&out.stderr).trim());
    assert!(!out.status.success(), "stripefs-mount succeeded: {}", show(&out));
    assert_eq!(mount_type(mnt), None, "a failed stripefs-mount left a mount");
    let left = pids_with_arg(&mnt.display().to_string());
    must_wait_exited(&left, "a failed stripefs-mount");
    text(&out.stderr)
}

#[test]
fn stripefs_mount_with_a_wrong_secret_fails_and_says_so() {
    let c = TestCluster::builder().nodes(1).start();
    let tmp = temp_dir("stripefs-t40-");
    let wrong = tmp.path().join("wrong");
    fs::write(&wrong, "a-secret-that-is-not-the-cluster-one").expect("write");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let _guard = MountGuard { dir: mnt.clone() };
    let err = must_fail_to_mount(&c.master_addr, &mnt, &format!("secret_file={}", wrong.display()));
    assert!(err.contains("secret"), "the error does not mention the secret: {err}");
}

#[test]
fn stripefs_mount_with_an_unreachable_master_fails_and_says_so() {
    // A port nothing listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let tmp = temp_dir("stripefs-t40-");
    let secret = secret_file(tmp.path());
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let _guard = MountGuard { dir: mnt.clone() };
    let err = must_fail_to_mount(&addr, &mnt, &format!("secret_file={}", secret.display()));
    assert!(err.contains(&addr), "the error does not name the master {addr}: {err}");
    assert!(err.contains("cannot reach"), "the error does not say the master is unreachable: {err}");
}

#[test]
fn stripefs_mount_on_a_missing_mount_point_fails_and_says_so() {
    let c = TestCluster::builder().nodes(1).start();
    let tmp = temp_dir("stripefs-t40-");
    let secret = secret_file(tmp.path());
    let mnt = tmp.path().join("no-such-dir");
    let _guard = MountGuard { dir: mnt.clone() };
    let err = must_fail_to_mount(&c.master_addr, &mnt, &format!("secret_file={}", secret.display()));
    assert!(err.contains(&mnt.display().to_string()), "the error does not name the mount point: {err}");
    // An unknown option is refused before anything else happens.
    fs::create_dir(&mnt).expect("mkdir");
    let err = must_fail_to_mount(&c.master_addr, &mnt, &format!("secret_file={},bogus_opt=1", secret.display()));
    assert!(err.contains("bogus_opt"), "the error does not name the unknown option: {err}");
}

// ---------------------------------------------------------------------------
// (c) mount(8) and fstab

const HELPER: &str = "/sbin/mount.fuse.stripefs";

/// Removes the helper link on drop if this test created it (a link left
/// behind would point into this build's target directory).
struct HelperGuard {
    created: bool,
}

impl Drop for HelperGuard {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = fs::remove_file(HELPER) {
                eprintln!("cleanup: remove {HELPER}: {e}");
            }
        }
    }
}

/// Makes /sbin/mount.fuse.stripefs a link to the built stripefs-mount.
fn must_have_helper() -> HelperGuard {
    let target = bin("stripefs-mount");
    let helper = Path::new(HELPER);
    match fs::symlink_metadata(helper) {
        Ok(_) => {
            let points = fs::canonicalize(helper).ok();
            assert!(
                points.as_deref() == Some(target.canonicalize().expect("canonical target").as_path()),
                "{HELPER} exists but is not a link to {} (it resolves to {points:?}); \
                 remove it or point it there to run this test",
                target.display()
            );
            HelperGuard { created: false }
        }
        Err(_) => {
            // Atomically, in case another test run does the same.
            let tmp = PathBuf::from(format!("{HELPER}.tmp-{}", std::process::id()));
            std::os::unix::fs::symlink(&target, &tmp).expect("create the helper link");
            fs::rename(&tmp, helper).expect("install the helper link");
            HelperGuard { created: true }
        }
    }
}

#[test]
fn mount_t_fuse_stripefs_and_an_fstab_line_with_netdev() {
    let _helper = must_have_helper();
    let c = TestCluster::builder().start();
    let tmp = temp_dir("stripefs-t40-");
    let secret = secret_file(tmp.path());
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let _guard = MountGuard { dir: mnt.clone() };

    let t = Instant::now();
    must_run(
        Command::new("mount")
            .args(["-t", "fuse.stripefs"])
            .arg(&c.master_addr)
            .arg(&mnt)
            .arg("-o")
            .arg(format!("secret_file={}", secret.display())),
        LIMIT,
    );
    eprintln!("mount -t fuse.stripefs took {:?}", t.elapsed());
    let client = pids_with_arg(&mnt.display().to_string());
    must_be_live(&mnt, &c);
    must_umount(&mnt, &client);

    // The fstab line the README gives, from an alternative fstab file.
    let fstab = tmp.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\n{}  {}  fuse.stripefs  _netdev,secret_file={},read_ahead_kb=4096  0 0\n",
            c.master_addr,
            mnt.display(),
            secret.display()
        ),
    )
    .expect("write fstab");
    let t = Instant::now();
    must_run(Command::new("mount").arg("-T").arg(&fstab).arg(&mnt), LIMIT);
    eprintln!("mount -T fstab took {:?}", t.elapsed());
    let client = pids_with_arg(&mnt.display().to_string());
    must_be_live(&mnt, &c);
    let ra = stripefs_client::records::read_ahead_path(fs::metadata(&mnt).expect("stat mount").dev());
    assert_eq!(fs::read_to_string(&ra).expect("read-ahead").trim(), "4096", "fstab's read_ahead_kb: {}", ra.display());
    must_umount(&mnt, &client);
}

// ---------------------------------------------------------------------------
// (d) status, info, policy through a path inside a mount

fn stripefs(args: &[&std::ffi::OsStr]) -> Output {
    must_run(Command::new(bin("stripefs")).args(args), LIMIT)
}

fn info_json(path: &Path) -> serde_json::Value {
    let out = stripefs(&["info".as_ref(), "--json".as_ref(), path.as_os_str()]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stripefs info --json: {e}: {}", show(&out)))
}

fn chunks(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["chunks"].as_array().expect("chunks array")
}

#[test]
fn stripefs_status_info_and_policy_on_a_mount_path() {
    let c = TestCluster::builder().chunk_size(64 * 1024).start();
    let m = c.mount();

    // status
    let out = stripefs(&["status".as_ref(), m.path().as_os_str()]);
    let s = text(&out.stdout);
    assert!(s.contains("3/3 nodes up"), "{s}");
    assert!(s.contains(&c.master_addr), "status does not name the master: {s}");
    for i in 0..3 {
        assert!(s.contains(c.node_addr(i)), "status lacks node {i} at {}: {s}", c.node_addr(i));
        assert!(s.contains(&TestCluster::node_host(i)), "status lacks host{i}: {s}");
    }
    let out = stripefs(&["status".as_ref(), "--json".as_ref(), m.path().as_os_str()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{v}");
    assert!(nodes.iter().all(|n| n["state"] == "up" && n["capacity_bytes"].as_u64() > Some(0)), "{v}");

    // info: a 4-chunk file, 2 replicas (the default) on distinct hosts.
    let f = m.join("f");
    fs::write(&f, random_bytes(200_000)).expect("write");
    let v = info_json(&f);
    assert_eq!(v["size"], 200_000, "{v}");
    assert_eq!(v["replication"], 2, "{v}");
    assert_eq!(chunks(&v).len(), 4, "{v}");
    for ch in chunks(&v) {
        let hosts: std::collections::BTreeSet<&str> =
            ch["replicas"].as_array().expect("replicas").iter().filter_map(|r| r["host"].as_str()).collect();
        assert_eq!(hosts.len(), 2, "chunk {} replicas not on 2 distinct hosts: {v}", ch["index"]);
    }
    let lengths: Vec<u64> = chunks(&v).iter().filter_map(|ch| ch["length"].as_u64()).collect();
    assert_eq!(lengths, vec![65_536, 65_536, 65_536, 200_000 - 3 * 65_536], "{v}");
    let out = stripefs(&["info".as_ref(), f.as_os_str()]);
    let s = text(&out.stdout);
    assert!(s.contains("200000 bytes") && s.contains("replication=2"), "{s}");
    assert_eq!(s.lines().filter(|l| l.contains("@host")).count(), 4, "want 4 chunk lines with replicas: {s}");

    // policy: a directory set to 1 replica and no compression.
    let dir = m.join("scratch");
    fs::create_dir(&dir).expect("mkdir");
    let out = stripefs(&[
        "policy".as_ref(),
        dir.as_os_str(),
        "--replication".as_ref(),
        "1".as_ref(),
        "--compression".as_ref(),
        "off".as_ref(),
    ]);
    assert_eq!(text(&out.stdout).trim(), format!("{}: replication=1 compression=off", dir.display()));
    let out = stripefs(&["policy".as_ref(), dir.as_os_str()]);
    assert_eq!(text(&out.stdout).trim(), format!("{}: replication=1 compression=off", dir.display()));

    // A file created afterwards inherits it; compressible data stays raw there.
    let compressible: Vec<u8> = b"spark shuffle block ".iter().copied().cycle().take(300_000).collect();
    fs::write(dir.join("new"), &compressible).expect("write in scratch");
    let v = info_json(&dir.join("new"));
    assert_eq!(v["replication"], 1, "{v}");
    assert_eq!(v["compression_level"], 0, "{v}");
    assert!(chunks(&v).iter().all(|ch| ch["replicas"].as_array().map(Vec::len) == Some(1)), "{v}");
    assert!(v["stored_bytes"].as_u64() >= Some(300_000), "compression off yet stored smaller: {v}");
    // The same data under the default policy is compressed.
    fs::write(m.join("compressed"), &compressible).expect("write");
    let v = info_json(&m.join("compressed"));
    assert!(v["stored_bytes"].as_u64() < Some(100_000), "default policy did not compress: {v}");

    // Errors are explained.
    let out = run_with_deadline(Command::new(bin("stripefs")).args(["policy", "--replication", "0"]).arg(&dir), LIMIT);
    assert!(!out.status.success() && text(&out.stderr).contains("replication"), "{}", show(&out));
    let outside = temp_dir("stripefs-t40-");
    let out = run_with_deadline(Command::new(bin("stripefs")).arg("info").arg(outside.path()), LIMIT);
    assert!(
        !out.status.success() && text(&out.stderr).contains("not inside a stripefs mount"),
        "info outside a mount: {}",
        show(&out)
    );
}

/// `stripefs status --json` of the cluster behind `mnt`.
fn status_json(mnt: &Path) -> serde_json::Value {
    let out = stripefs(&["status".as_ref(), "--json".as_ref(), mnt.as_os_str()]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("stripefs status --json: {e}: {}", show(&out)))
}

/// The workers of a status report's `workers` array, by name.
fn workers_of(v: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("no workers array: {v}"))
        .iter()
        .map(|w| (w["name"].as_str().expect("worker name").to_string(), w.clone()))
        .collect()
}

/// Waits (bounded) until `f` holds of `stripefs status --json`.
fn must_see_status(mnt: &Path, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = status_json(mnt);
        if f(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not seen within 30 s in\n{v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn stripefs_status_shows_every_background_worker_and_their_numbers_move_with_the_work() {
    let mut c = TestCluster::builder().nodes(3).chunk_size(64 * 1024).node_dead_after(Duration::from_secs(1)).start();
    let m = c.mount();
    let v = status_json(m.path());
    let master = workers_of(&v["workers"]);
    let names = ["gc", "orphan-purge", "request-expiry", "rereplication", "scratch-reaper"];
    assert_eq!(master.keys().collect::<Vec<_>>(), names, "{v:#}");
    for n in v["nodes"].as_array().expect("nodes") {
        let w = workers_of(&n["workers"]);
        assert_eq!(w.keys().collect::<Vec<_>>(), ["copier-1", "copier-2", "scrub"], "{v:#}");
        // The test nodes do not scrub: the worker says so and ends.
        assert_eq!(w["scrub"]["state"], "done", "{v:#}");
        assert!(w["scrub"]["detail"].as_str().is_some_and(|d| d.contains("off")), "{v:#}");
    }
    // Every node reports its inventory when it registers: garbage
    // collection checks each.
    must_see_status(m.path(), "gc checked three inventories", |v| {
        workers_of(&v["workers"])["gc"]["detail"].as_str().is_some_and(|d| d.starts_with("3 inventories checked"))
    });
    let text_out = text(&stripefs(&["status".as_ref(), m.path().as_os_str()]).stdout);
    assert!(text_out.contains("background work:") && text_out.contains("rereplication"), "{text_out}");

    // A node holding replicas dies: re-replication orders copies, and a
    // copier of a surviving node reports them done.
    fs::write(m.join("f"), random_bytes(300_000)).expect("write");
    let f = info_json(&m.join("f"));
    let holder = chunks(&f)[0]["replicas"][0]["host"].as_str().expect("host").to_string();
    let i = (0..3).find(|&i| TestCluster::node_host(i) == holder).expect("holder is a test node");
    c.stop_node(i);
    let v = must_see_status(m.path(), "a copy ordered and made", |v| {
        let ordered = workers_of(&v["workers"])["rereplication"]["detail"]
            .as_str()
            .and_then(|d| d.split("; ").last()?.split(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        let copied: u64 = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["state"] == "up")
            .flat_map(|n| workers_of(&n["workers"]).into_values())
            .filter_map(|w| w["detail"].as_str()?.split("; ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
            .sum();
        ordered >= 1 && copied >= 1
    });
    eprintln!("after the node loss: {v:#}");
}

// ---------------------------------------------------------------------------
// (e) stripefs up / down

/// Undoes `stripefs up`: unmounts, then kills every process whose
/// command line names a path in the cluster's directory.
struct UpGuard {
    data: PathBuf,
    mount: PathBuf,
}

/// The running processes of the `stripefs up` cluster in `data`, however
/// they were started (their arguments name a path under it).
fn cluster_pids(data: &Path) -> Vec<i32> {
    pids_with_arg(&format!("{}/", data.display()))
}

impl Drop for UpGuard {
    fn drop(&mut self) {
        cleanup_mount(&self.mount);
        for pid in cluster_pids(&self.data) {
            eprintln!("cleanup: killing leftover process {pid} of {}", self.data.display());
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn must_up(data: &Path, mnt: &Path, extra: &[&str]) -> String {
    let t = Instant::now();
    let out = must_run(
        Command::new(bin("stripefs"))
            .arg("up")
            .arg("--data")
            .arg(data)
            .arg("--mount")
            .arg(mnt)
            .args(["--nodes", "2"])
            .args(extra),
        Duration::from_secs(120),
    );
    eprintln!("stripefs up took {:?}:\n{}", t.elapsed(), text(&out.stdout));
    assert!(text(&out.stdout).contains("stripefs is up"), "{}", show(&out));
    assert_eq!(mount_type(mnt).as_deref(), Some("fuse.stripefs"), "stripefs up did not mount {}", mnt.display());
    text(&out.stdout)
}

/// `stripefs down`, then checks that the mount and every process of the
/// cluster are gone; returns its output.
fn must_down(data: &Path, mnt: &Path) -> String {
    let pids = cluster_pids(data);
    assert!(!pids.is_empty(), "no process of the cluster in {} runs", data.display());
    let t = Instant::now();
    let out = must_run(Command::new(bin("stripefs")).arg("down").arg("--data").arg(data), LIMIT);
    let took = t.elapsed();
    eprintln!("stripefs down took {took:?}:\n{}", text(&out.stdout));
    // It returns once everything is stopped (a hang check, not a speed test:
    // it takes about a second, and took minutes when a mount user blocked umount(8)).
    assert!(took < Duration::from_secs(20), "stripefs down took {took:?}");
    assert_eq!(mount_type(mnt), None, "stripefs down left {} mounted", mnt.display());
    let left: Vec<i32> = pids.iter().copied().filter(|&p| !exited(p)).collect();
    assert!(left.is_empty(), "stripefs down left processes {left:?} running:\n{}", show(&out));
    assert!(cluster_pids(data).is_empty(), "processes of the cluster still run after stripefs down");
    text(&out.stdout)
}

/// The command line of a running process.
fn cmdline(pid: i32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).expect("read cmdline");
    raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The one process of the cluster in `data` running `program` with an
/// argument ending in `arg_end`.
fn must_find(data: &Path, program: &str, arg_end: &str) -> i32 {
    let found: Vec<i32> = cluster_pids(data)
        .into_iter()
        .filter(|&p| {
            let args = cmdline(p);
            args.first().is_some_and(|a| a.ends_with(program)) && args.iter().any(|a| a.ends_with(arg_end))
        })
        .collect();
    assert_eq!(found.len(), 1, "want one {program} ({arg_end}) of {}, found {found:?}", data.display());
    found[0]
}

/// Kills `pid` with SIGKILL, as a host's death would, and waits until it is gone.
fn must_kill9(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    must_wait_exited(&[pid], "kill -9");
}

/// Starts `args` again, as an operator would from `ps`'s line, detached,
/// with its output in `log`.
fn restart_by_command_line(args: &[String], log: &Path) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    let out = fs::OpenOptions::new().create(true).append(true).open(log).expect("open log");
    let child = Command::new(&args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("dup log"))
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("restart by command line");
    ChildGuard(child)
}

/// Creates and reads back a file through `mnt`, retrying (bounded) while
/// the cluster comes back; panics with the last error after `limit`, and
/// the end of the logs of the cluster whose data directory is `mnt`'s
/// sibling `data` (or of the processes' own logs next to it).
fn must_create_through(mnt: &Path, name: &str, limit: Duration) {
    let data = random_bytes(200_000);
    let deadline = Instant::now() + limit;
    loop {
        let r = fs::write(mnt.join(name), &data).and_then(|()| fs::read(mnt.join(name)));
        match r {
            Ok(back) if back == data => return,
            Ok(_) => panic!("{name} read back different bytes"),
            Err(e) if Instant::now() >= deadline => {
                let dir = mnt.parent().expect("the mount point has a parent");
                panic!("creating {name} still fails after {limit:?}: {e}\n{}", log_tails(dir))
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last lines of every `*.log` under `dir` (two levels deep), for a
/// failure message.
fn log_tails(dir: &Path) -> String {
    let mut logs: Vec<PathBuf> = Vec::new();
    for d in [dir.to_path_buf(), dir.join("data")] {
        if let Ok(entries) = fs::read_dir(&d) {
            logs.extend(entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.extension() == Some("log".as_ref())));
        }
    }
    logs.sort();
    let mut out = String::new();
    for log in logs {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out +=
            &format!("--- last lines of {}\n{}\n", log.display(), lines[lines.len().saturating_sub(40)..].join("\n"));
    }
    out
}

#[test]
fn stripefs_up_then_status_then_down_and_up_again() {
    let tmp = temp_dir("stripefs-t40-up-");
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let _guard = UpGuard { data: data.clone(), mount: mnt.clone() };

    // A bad client option is refused before anything starts.
    let out = Command::new(bin("stripefs"))
        .arg("up")
        .arg("--data")
        .arg(&data)
        .arg("--mount")
        .arg(&mnt)
        .args(["-o", "local_reads=maybe"])
        .output()
        .expect("run stripefs up");
    assert!(!out.status.success() && text(&out.stderr).contains("local_reads"), "{}", show(&out));
    assert!(!data.join("cluster").exists(), "servers were started for a refused option");
    assert!(cluster_pids(&data).is_empty(), "servers were started for a refused option");

    must_up(&data, &mnt, &[]);
    let payload = random_bytes(3 << 20);
    fs::write(mnt.join("file"), &payload).expect("write on the up mount");
    assert_eq!(sha256(&fs::read(mnt.join("file")).expect("read")), sha256(&payload));

    let out = stripefs(&["status".as_ref(), "--data".as_ref(), data.as_os_str()]);
    assert!(text(&out.stdout).contains("2/2 nodes up"), "{}", show(&out));
    let out = stripefs(&["status".as_ref(), mnt.as_os_str()]);
    assert!(text(&out.stdout).contains("2/2 nodes up"), "{}", show(&out));
    let out = stripefs(&["info".as_ref(), "--json".as_ref(), mnt.join("file").as_os_str()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["size"], 3 << 20, "{v}");

    must_down(&data, &mnt);
    // Starting again on the same directory finds the data; client options
    // reach the mount (no local reads: no replica file open in the client).
    must_up(&data, &mnt, &["-o", "local_reads=off"]);
    assert_eq!(sha256(&fs::read(mnt.join("file")).expect("read after up again")), sha256(&payload));
    let clients = pids_with_arg(&mnt.display().to_string());
    assert!(!clients.is_empty(), "no client process for {}", mnt.display());
    for pid in clients {
        let open: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.filter_map(|e| fs::read_link(e.ok()?.path()).ok()).map(|p| p.display().to_string()).collect())
            .unwrap_or_default();
        assert!(!open.iter().any(|p| p.ends_with(".chunk")), "local_reads=off, yet replica files are open: {open:?}");
    }
    must_down(&data, &mnt);
}

#[test]
fn a_stripefs_up_cluster_survives_kill_9_and_restarts_by_command_line_and_down_stops_it_all() {
    let tmp = temp_dir("stripefs-t40-restart-");
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let _guard = UpGuard { data: data.clone(), mount: mnt.clone() };
    must_up(&data, &mnt, &["-o", "master_timeout=30"]);
    must_create_through(&mnt, "before", LIMIT);

    // The master dies; the operator starts it again with the command line ps showed.
    let master = must_find(&data, "stripefs-master", "/master");
    let args = cmdline(master);
    must_kill9(master);
    let _master_again = restart_by_command_line(&args, &tmp.path().join("master-again.log"));
    must_create_through(&mnt, "after-master-restart", Duration::from_secs(25));

    // The same for a node: it comes back where the master and the client look for it.
    let node = must_find(&data, "stripefs-node", "/node1");
    let args = cmdline(node);
    must_kill9(node);
    let _node_again = restart_by_command_line(&args, &tmp.path().join("node1-again.log"));
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let out = stripefs(&["status".as_ref(), "--data".as_ref(), data.as_os_str()]);
        if text(&out.stdout).contains("2/2 nodes up") {
            break;
        }
        assert!(Instant::now() < deadline, "node1 did not come back: {}", show(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
    must_create_through(&mnt, "after-node-restart", Duration::from_secs(25));

    // The client dies: its mount is dead (ENOTCONN) until the client,
    // restarted by its own command line, replaces it.
    let client = must_find(&data, "stripefs-mount", &mnt.display().to_string());
    let args = cmdline(client);
    must_kill9(client);
    let e = nix::sys::statfs::statfs(&mnt).expect_err("statfs of a mount whose client died");
    assert!(matches!(e, nix::errno::Errno::ENOTCONN | nix::errno::Errno::ECONNABORTED), "{e}");
    let mut again = restart_by_command_line(&args, &tmp.path().join("mount-again.log"));
    let status = again.0.wait().expect("the restarted mount command");
    assert!(
        status.success(),
        "stripefs-mount did not remount: {:?}",
        fs::read_to_string(tmp.path().join("mount-again.log"))
    );
    must_create_through(&mnt, "after-client-restart", Duration::from_secs(25));

    // The client and a node die: `stripefs up` again starts just those.
    let client = must_find(&data, "stripefs-mount", &mnt.display().to_string());
    let node2 = must_find(&data, "stripefs-node", "/node2");
    must_kill9(client);
    must_kill9(node2);
    let out = must_up(&data, &mnt, &[]);
    assert!(out.contains("already running"), "the restarted master was started twice:\n{out}");
    for name in ["before", "after-master-restart", "after-node-restart"] {
        assert_eq!(fs::read(mnt.join(name)).expect("read after up again").len(), 200_000, "{name}");
    }
    must_create_through(&mnt, "after-up-again", LIMIT);

    // A process still works in the mount and the master is gone: down
    // detaches the mount rather than waiting on it, and stops everything,
    // the master restarted by hand included.
    let user = Command::new("sleep").arg("600").current_dir(&mnt).spawn().expect("start a process in the mount");
    let mut user = ChildGuard(user);
    let master = must_find(&data, "stripefs-master", "/master");
    must_kill9(master);
    let out = must_down(&data, &mnt);
    assert!(out.contains("still in use") && out.contains("sleep"), "down did not say who used the mount:\n{out}");
    user.kill_now();
    // And up brings it all back once more.
    must_up(&data, &mnt, &[]);
    must_create_through(&mnt, "after-down-and-up", LIMIT);
    must_down(&data, &mnt);
}

/// A child process killed (and reaped) when dropped.
struct ChildGuard(std::process::Child);

impl ChildGuard {
    fn kill_now(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// The `trace=...` value of a log line.
fn trace_of(line: &str) -> Option<&str> {
    let rest = &line[line.find("trace=")? + 6..];
    Some(rest.split([' ', '}']).next().unwrap_or(rest))
}

#[test]
fn with_rust_log_debug_one_create_can_be_followed_from_the_kernel_to_the_master_commit() {
    let tmp = temp_dir("stripefs-t40-trace-");
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let _guard = UpGuard { data: data.clone(), mount: mnt.clone() };
    let t = Instant::now();
    let out = must_run(
        Command::new(bin("stripefs"))
            .arg("up")
            .arg("--data")
            .arg(&data)
            .arg("--mount")
            .arg(&mnt)
            .args(["--nodes", "2"])
            .env("RUST_LOG", "debug,tarpc=warn"),
        Duration::from_secs(120),
    );
    eprintln!("stripefs up took {:?}:\n{}", t.elapsed(), text(&out.stdout));
    fs::write(mnt.join("traced-file"), b"x").expect("create through the mount");
    let mount_log = fs::read_to_string(data.join("mount.log")).expect("mount log");
    // The kernel's create request, and the master call made inside it.
    let call = mount_log
        .lines()
        .find(|l| l.contains("fuse{op=\"create\"") && l.contains("master call"))
        .unwrap_or_else(|| panic!("no master call inside a create request in the mount's log:\n{mount_log}"));
    let trace = trace_of(call).unwrap_or_else(|| panic!("no trace id in {call}"));
    assert!(trace.len() >= 8 && trace.chars().any(|c| c != '0'), "not a call's own trace id: {call}");
    // The master served that very call, and committed inside it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let master_log = fs::read_to_string(data.join("master.log")).expect("master log");
        let served: Vec<&str> = master_log.lines().filter(|l| trace_of(l) == Some(trace)).collect();
        assert!(
            served.iter().all(|l| l.contains("rpc{op=\"create\"")),
            "trace {trace} names more than the one create:\n{}",
            served.join("\n")
        );
        let ended = served.iter().any(|l| l.contains("close") && l.contains("time.busy"));
        let committed = served.iter().any(|l| l.contains("commit{"));
        if ended && committed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the master's log does not show create {trace} with its commit and time:\n{master_log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    must_down(&data, &mnt);
}

/// A single-master `stripefs up` cluster grown to a group of three with
/// `stripefs up --masters 3`: the mount carries on when the first master
/// (the one that made the filesystem, started without --join) is killed,
/// and that master, restarted by its own command line, rejoins as a
/// follower (it once stayed stuck proposing on its own).
#[test]
fn a_stripefs_up_cluster_grows_to_three_masters_and_outlives_its_first() {
    let tmp = temp_dir("stripefs-t40-masters-");
    let data = tmp.path().join("data");
    let mnt = tmp.path().join("mnt");
    let _guard = UpGuard { data: data.clone(), mount: mnt.clone() };
    must_up(&data, &mnt, &["-o", "master_timeout=60"]);
    must_create_through(&mnt, "alone", LIMIT);
    let out = must_up(&data, &mnt, &["--masters", "3"]);
    assert!(out.contains("master3"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = stripefs(&["masters".as_ref(), "--data".as_ref(), data.as_os_str()]);
        if text(&out.stdout).contains("3 voting") && text(&out.stdout).contains("all in contact") {
            break;
        }
        assert!(Instant::now() < deadline, "the group of three is not formed: {}", show(&out));
        std::thread::sleep(Duration::from_millis(300));
    }
    // The mount and the nodes, given the first master only, learn the
    // others from the group (within a few seconds).
    std::thread::sleep(Duration::from_secs(3));
    must_create_through(&mnt, "learning", LIMIT);

    let first = must_find(&data, "stripefs-master", "/master");
    let args = cmdline(first);
    assert!(!args.iter().any(|a| a == "--join"), "{args:?}");
    must_kill9(first);
    must_create_through(&mnt, "without-the-first", Duration::from_secs(30));
    let _again = restart_by_command_line(&args, &tmp.path().join("master-again.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = stripefs(&["masters".as_ref(), "--data".as_ref(), data.as_os_str()]);
        if text(&out.stdout).contains("all in contact") {
            break;
        }
        assert!(Instant::now() < deadline, "the first master did not rejoin: {}", show(&out));
        std::thread::sleep(Duration::from_millis(300));
    }
    for name in ["alone", "without-the-first"] {
        assert_eq!(fs::read(mnt.join(name)).expect("read").len(), 200_000, "{name}");
    }
    must_down(&data, &mnt);
}
