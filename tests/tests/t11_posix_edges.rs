//! Edge cases of open files, each found in review; each test failed before
//! its fix.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::time::Duration;
use stripefs_client::MountOptions;
use stripefs_tests::{random_bytes, TestCluster};

/// fsync asked nodes to sync a chunk version that had been replaced (and
/// deleted) since, and failed with ENOENT.
#[test]
fn fsync_after_a_chunk_was_rewritten_succeeds() {
    let c = TestCluster::builder().chunk_size(64 * 1024).start();
    let m = c.mount();
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.join("f")).expect("open");
    f.write_all(&[1u8; 1000]).expect("write");
    // Closing another descriptor of the file uploads what is buffered.
    drop(OpenOptions::new().write(true).open(m.join("f")).expect("open+close uploads version 1"));
    f.write_all_at(&[2u8; 1000], 500).expect("rewrite");
    drop(OpenOptions::new().write(true).open(m.join("f")).expect("open+close uploads version 2"));
    // Let the nodes apply the deletion of version 1 (heartbeats every 200 ms).
    std::thread::sleep(Duration::from_millis(1500));
    f.sync_all().expect("fsync");
}

/// A write by another user must clear the set-user-id bit (the client asked
/// the kernel to leave that to it, then did nothing).
#[test]
fn write_by_another_user_clears_setuid() {
    let c = TestCluster::builder().start();
    let m = c.mount_with(MountOptions { allow_other: Some(true), ..Default::default() });
    fs::set_permissions(m.path(), fs::Permissions::from_mode(0o777)).expect("chmod root");
    let p = m.join("prog");
    fs::write(&p, b"#!/bin/sh\n").expect("write");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o4777)).expect("chmod u+s");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!("echo x >> {}", p.display()))
        .output()
        .expect("run setpriv");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mode = fs::metadata(&p).expect("stat").mode();
    assert_eq!(mode & 0o4000, 0, "setuid bit survived a write by another user: {mode:o}");
}

/// Setuid and setgid bits after a truncate by another user, a truncate
/// by root, a chown by root and a write by root are what a local disk
/// leaves (the client drops them itself: it asks the kernel to leave
/// that to it, HANDLE_KILLPRIV_V2).
#[test]
fn setuid_bits_after_truncate_chown_and_write_match_a_local_disk() {
    let c = TestCluster::builder().start();
    let m = c.mount_with(MountOptions { allow_other: Some(true), ..Default::default() });
    let local = tempfile::tempdir().expect("tempdir");
    let as_nobody = |cmd: String| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
            .arg(cmd)
            .output()
            .expect("run setpriv");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let modes = |dir: &std::path::Path| -> Vec<u32> {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).expect("chmod dir");
        let mut out = Vec::new();
        for (i, step) in
            ["truncate by another user", "truncate by root", "chown by root", "write by root"].iter().enumerate()
        {
            let p = dir.join(format!("prog{i}"));
            fs::write(&p, b"#!/bin/sh\n").expect("write");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o6777)).expect("chmod ug+s");
            match *step {
                "truncate by another user" => as_nobody(format!("truncate -s 2 {}", p.display())),
                "truncate by root" => {
                    OpenOptions::new().write(true).open(&p).expect("open").set_len(3).expect("truncate")
                }
                "chown by root" => std::os::unix::fs::chown(&p, Some(1), Some(1)).expect("chown"),
                _ => OpenOptions::new().append(true).open(&p).expect("open").write_all(b"x").expect("write"),
            }
            out.push(fs::metadata(&p).expect("stat").mode() & 0o7777);
        }
        out
    };
    let want = modes(local.path());
    assert_eq!(modes(m.path()), want, "modes after: another user's truncate, root's truncate, chown, root's write");
}

/// A second open on a client that already had the file open reused the
/// first open's size and chunk locations: changes made elsewhere in between
/// were not seen (close-to-open holds for every open).
#[test]
fn second_open_on_a_client_sees_changes_made_elsewhere() {
    let c = TestCluster::builder().chunk_size(64 * 1024).start();
    let opts = MountOptions { attr_ttl: Duration::ZERO, entry_ttl: Duration::ZERO, ..Default::default() };
    let a = c.mount_with(opts.clone());
    let b = c.mount_with(opts);
    let old = random_bytes(200_000);
    fs::write(a.join("f"), &old).expect("write");
    let mut keep = File::open(a.join("f")).expect("first open on a");
    let mut first = Vec::new();
    keep.read_to_end(&mut first).expect("read through the first open");
    assert!(first == old);
    let new = random_bytes(200_000);
    fs::write(b.join("f"), &new).expect("rewrite on b");
    let mut back = Vec::new();
    File::open(a.join("f")).expect("second open on a").read_to_end(&mut back).expect("read");
    assert_eq!(back.len(), new.len());
    assert!(back == new, "second open read stale data");
    drop(keep);
}

/// `ls -l` (readdirplus) while a file is being written told the kernel the
/// master's size, smaller than what was written; appends then went to the
/// wrong offset.
#[test]
fn listing_a_directory_while_appending_keeps_the_size() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let mut f = OpenOptions::new().append(true).create(true).open(m.join("log")).expect("open");
    f.write_all(&[b'a'; 100]).expect("write");
    // A plain listing (readdirplus), no stat: only the listing updates the
    // kernel's idea of the size before the next append.
    let names = fs::read_dir(m.path()).expect("readdir").count();
    assert_eq!(names, 1);
    f.write_all(&[b'b'; 100]).expect("append");
    drop(f);
    let data = fs::read(m.join("log")).expect("read");
    assert_eq!(data.len(), 200);
    assert!(data[..100].iter().all(|&x| x == b'a') && data[100..].iter().all(|&x| x == b'b'));
}

/// An explicit mtime set while writes were buffered was overwritten by the
/// upload that followed.
#[test]
fn mtime_set_after_buffered_writes_sticks() {
    let c = TestCluster::builder().start();
    // No attribute cache: the stat below must come from the master.
    let m = c.mount_with(MountOptions { attr_ttl: Duration::ZERO, entry_ttl: Duration::ZERO, ..Default::default() });
    let mut f = File::create(m.join("f")).expect("create");
    f.write_all(b"buffered").expect("write");
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    f.set_times(fs::FileTimes::new().set_modified(t)).expect("futimens");
    drop(f);
    assert_eq!(fs::metadata(m.join("f")).expect("stat").mtime(), 1_500_000_000);
}

/// isatty(3) on a file (Python and C stdio ask at every open) says "not a
/// terminal" with ENOTTY, as on a local filesystem.
#[test]
#[allow(unsafe_code)]
fn a_file_is_not_a_terminal() {
    use std::os::fd::AsRawFd;
    let c = TestCluster::builder().start();
    let m = c.mount();
    let f = File::create(m.join("f")).expect("create");
    // SAFETY: isatty only reads the descriptor number.
    let tty = unsafe { libc::isatty(f.as_raw_fd()) };
    let e = std::io::Error::last_os_error();
    assert_eq!(tty, 0);
    assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
}
