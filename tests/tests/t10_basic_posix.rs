//! POSIX behaviour through a real FUSE mount, checked with std::fs and libc.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use stripefs_tests::{cpath, errno, random_bytes, sha256, xattr_get, xattr_set, TestCluster};

#[test]
fn open_flags_excl_trunc_append() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let p = m.join("x");
    OpenOptions::new().write(true).create_new(true).open(&p).expect("create_new").write_all(b"hello").expect("w");
    let e = OpenOptions::new().write(true).create_new(true).open(&p).expect_err("O_EXCL on existing");
    assert_eq!(errno(&e), libc::EEXIST);
    let mut a = OpenOptions::new().append(true).open(&p).expect("append");
    a.write_all(b" world").expect("append write");
    drop(a);
    assert_eq!(fs::read(&p).expect("read"), b"hello world");
    OpenOptions::new().write(true).truncate(true).open(&p).expect("trunc").write_all(b"new").expect("w");
    assert_eq!(fs::read(&p).expect("read"), b"new");
    let e = File::open(m.join("missing")).expect_err("ENOENT");
    assert_eq!(errno(&e), libc::ENOENT);
}

#[test]
fn truncate_down_and_up_also_through_a_descriptor() {
    let c = TestCluster::builder().chunk_size(64 * 1024).start();
    let m = c.mount();
    let data = random_bytes(300_000);
    fs::write(m.join("t"), &data).expect("write");
    let f = OpenOptions::new().read(true).write(true).open(m.join("t")).expect("open");
    f.set_len(100_000).expect("ftruncate down");
    assert_eq!(f.metadata().expect("fstat").len(), 100_000);
    f.set_len(200_000).expect("ftruncate up");
    let mut back = Vec::new();
    (&f).seek(SeekFrom::Start(0)).expect("seek");
    (&f).read_to_end(&mut back).expect("read");
    assert_eq!(back.len(), 200_000);
    assert_eq!(&back[..100_000], &data[..100_000]);
    assert!(back[100_000..].iter().all(|&b| b == 0), "bytes past a truncation read as zeros");
    drop(f);
    // Truncate by path, and to zero.
    OpenOptions::new().write(true).open(m.join("t")).expect("open").set_len(0).expect("truncate 0");
    assert_eq!(fs::read(m.join("t")).expect("read").len(), 0);
}

#[test]
fn writes_and_truncate_through_one_descriptor_are_coherent() {
    let c = TestCluster::builder().chunk_size(64 * 1024).start();
    let m = c.mount();
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.join("w")).expect("open");
    f.write_all(&[7u8; 100_000]).expect("write");
    f.set_len(50_000).expect("truncate with buffered data");
    f.write_at(&[9u8; 10], 60_000).expect("write past end");
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.read_to_end(&mut back).expect("read");
    assert_eq!(back.len(), 60_010);
    assert!(back[..50_000].iter().all(|&b| b == 7));
    assert!(back[50_000..60_000].iter().all(|&b| b == 0));
    assert!(back[60_000..].iter().all(|&b| b == 9));
}

#[test]
fn directories_mkdir_rmdir_readdir() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    fs::create_dir(m.join("d")).expect("mkdir");
    let e = fs::create_dir(m.join("d")).expect_err("EEXIST");
    assert_eq!(errno(&e), libc::EEXIST);
    fs::create_dir_all(m.join("d/e/f")).expect("mkdir -p");
    fs::write(m.join("d/file"), b"x").expect("write");
    let e = fs::remove_dir(m.join("d")).expect_err("ENOTEMPTY");
    assert_eq!(errno(&e), libc::ENOTEMPTY);
    let mut names: Vec<String> = fs::read_dir(m.join("d"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    names.sort();
    assert_eq!(names, vec!["e", "file"]);
    assert_eq!(fs::metadata(m.join("d")).expect("stat").nlink(), 3, "2 + one subdirectory");
    let e = fs::remove_dir(m.join("d/file")).expect_err("ENOTDIR");
    assert_eq!(errno(&e), libc::ENOTDIR);
    fs::remove_dir_all(m.join("d")).expect("rm -rf");
    assert!(!m.join("d").exists());
}

#[test]
fn rename_files_and_directories() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    fs::create_dir_all(m.join("a/sub")).expect("mkdir");
    fs::create_dir(m.join("b")).expect("mkdir");
    fs::write(m.join("a/f"), b"one").expect("write");
    fs::write(m.join("b/g"), b"two").expect("write");
    // Across directories, atomically replacing an existing file.
    fs::rename(m.join("a/f"), m.join("b/g")).expect("rename over");
    assert_eq!(fs::read(m.join("b/g")).expect("read"), b"one");
    assert!(!m.join("a/f").exists());
    // A directory into another.
    fs::rename(m.join("a/sub"), m.join("b/sub2")).expect("rename dir");
    assert!(m.join("b/sub2").is_dir());
    assert_eq!(fs::metadata(m.join("a")).expect("stat").nlink(), 2);
    assert_eq!(fs::metadata(m.join("b")).expect("stat").nlink(), 3);
    // Into its own subtree.
    let e = fs::rename(m.join("b"), m.join("b/sub2/inner")).expect_err("EINVAL");
    assert_eq!(errno(&e), libc::EINVAL);
    // A directory over a non-empty directory.
    fs::create_dir(m.join("c")).expect("mkdir");
    fs::write(m.join("b/sub2/x"), b"").expect("write");
    let e = fs::rename(m.join("c"), m.join("b/sub2")).expect_err("ENOTEMPTY");
    assert_eq!(errno(&e), libc::ENOTEMPTY);
}

fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: u32) -> std::io::Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::from_bits_truncate(flags),
    )
    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
}

#[test]
fn rename_noreplace_and_exchange() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    fs::write(m.join("x"), b"x").expect("write");
    fs::write(m.join("y"), b"y").expect("write");
    let e = renameat2(&m.join("x"), &m.join("y"), libc::RENAME_NOREPLACE).expect_err("EEXIST");
    assert_eq!(errno(&e), libc::EEXIST);
    renameat2(&m.join("x"), &m.join("y"), libc::RENAME_EXCHANGE).expect("exchange");
    assert_eq!(fs::read(m.join("x")).expect("read"), b"y");
    assert_eq!(fs::read(m.join("y")).expect("read"), b"x");
    fs::create_dir(m.join("d")).expect("mkdir");
    renameat2(&m.join("d"), &m.join("x"), libc::RENAME_EXCHANGE).expect("exchange dir and file");
    assert!(m.join("x").is_dir());
    assert_eq!(fs::read(m.join("d")).expect("read"), b"y");
}

#[test]
fn unlinked_open_file_stays_usable_until_closed() {
    let c = TestCluster::builder().chunk_size(64 * 1024).start();
    let m = c.mount();
    let data = random_bytes(200_000);
    fs::write(m.join("u"), &data).expect("write");
    let f = OpenOptions::new().read(true).write(true).open(m.join("u")).expect("open");
    fs::remove_file(m.join("u")).expect("unlink");
    assert!(!m.join("u").exists());
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, 0).expect("read after unlink");
    assert_eq!(back, data);
    f.write_at(b"still writable", 10).expect("write after unlink");
    let mut small = [0u8; 14];
    f.read_exact_at(&mut small, 10).expect("read back");
    assert_eq!(&small, b"still writable");
    drop(f);
    // Its chunks are freed: the master queues their replicas for deletion
    // and the nodes drop them; wait for the nodes' chunk count to reach 0.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let chunks: u64 = (0..3).map(|i| stripefs_tests::replica_paths(&c.node_dir(i)).len() as u64).sum();
        if chunks == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{chunks} replicas of the deleted file are still on the nodes");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn hard_links_and_symlinks() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    fs::write(m.join("f"), b"data").expect("write");
    fs::hard_link(m.join("f"), m.join("g")).expect("link");
    assert_eq!(fs::metadata(m.join("f")).expect("stat").nlink(), 2);
    assert_eq!(fs::metadata(m.join("f")).expect("stat").ino(), fs::metadata(m.join("g")).expect("stat").ino());
    fs::remove_file(m.join("f")).expect("unlink");
    assert_eq!(fs::read(m.join("g")).expect("read"), b"data");
    assert_eq!(fs::metadata(m.join("g")).expect("stat").nlink(), 1);
    std::os::unix::fs::symlink("g", m.join("s")).expect("symlink");
    assert_eq!(fs::read_link(m.join("s")).expect("readlink"), std::path::PathBuf::from("g"));
    assert_eq!(fs::read(m.join("s")).expect("read through link"), b"data");
    assert!(fs::symlink_metadata(m.join("s")).expect("lstat").file_type().is_symlink());
    fs::create_dir(m.join("d")).expect("mkdir");
    let e = fs::hard_link(m.join("d"), m.join("d2")).expect_err("link to dir");
    assert_eq!(errno(&e), libc::EPERM);
}

#[test]
fn chmod_chown_utimens_and_ctime() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let p = m.join("f");
    fs::write(&p, b"x").expect("write");
    let before = fs::metadata(&p).expect("stat");
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).expect("chmod");
    let after = fs::metadata(&p).expect("stat");
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert!(after.ctime_nsec() != before.ctime_nsec() || after.ctime() != before.ctime(), "chmod updates ctime");
    assert_eq!(after.mtime(), before.mtime(), "chmod leaves mtime");
    nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(1234)), Some(nix::unistd::Gid::from_raw(567)))
        .expect("chown");
    let st = fs::metadata(&p).expect("stat");
    assert_eq!((st.uid(), st.gid()), (1234, 567));
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 123_456_789);
    File::options()
        .write(true)
        .open(&p)
        .expect("open")
        .set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .expect("utimens");
    let st = fs::metadata(&p).expect("stat");
    assert_eq!((st.mtime(), st.mtime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((st.atime(), st.atime_nsec()), (1_000_000_000, 123_456_789));
    // Writing updates mtime.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&p, b"yy").expect("write");
    assert!(fs::metadata(&p).expect("stat").mtime() > 1_000_000_000);
}

#[test]
fn permissions_are_enforced_for_other_users() {
    let c = TestCluster::builder().start();
    let m = c.mount_with(stripefs_client::MountOptions { allow_other: Some(true), ..Default::default() });
    fs::set_permissions(m.path(), fs::Permissions::from_mode(0o755)).expect("chmod root");
    fs::write(m.join("secret"), b"s").expect("write");
    fs::set_permissions(m.join("secret"), fs::Permissions::from_mode(0o600)).expect("chmod");
    // As uid 65534 (nobody): reading a 0600 root file must fail.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(m.join("secret"))
        .output()
        .expect("run setpriv");
    assert!(!out.status.success(), "nobody read a 0600 file of root");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn xattrs_get_set_list_remove() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let p = m.join("f");
    fs::write(&p, b"x").expect("write");
    xattr_set(&p, "user.color", b"blue").expect("setxattr");
    assert_eq!(xattr_get(&p, "user.color").expect("getxattr"), b"blue");
    assert_eq!(xattr_list(&p), vec!["user.color".to_string()]);
    let e = xattr_get(&p, "user.missing").expect_err("ENODATA");
    assert_eq!(errno(&e), libc::ENODATA);
    xattr_remove(&p, "user.color").expect("removexattr");
    assert!(xattr_list(&p).is_empty());
    // The data policy shows as a virtual xattr.
    let pol = xattr_get(m.path(), "user.stripefs.policy").expect("policy xattr");
    assert_eq!(String::from_utf8_lossy(&pol), "replication=2 compression=zstd:1");
}

#[allow(unsafe_code)]
fn xattr_list(p: &std::path::Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid string and a writable buffer of buf.len() bytes.
    let r = unsafe { libc::listxattr(cpath(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(r as usize);
    buf.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

#[allow(unsafe_code)]
fn xattr_remove(p: &std::path::Path, name: &str) -> std::io::Result<()> {
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid NUL-terminated strings.
    let r = unsafe { libc::removexattr(cpath(p).as_ptr(), n.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Total and free bytes statfs reports for `path`.
fn space_of(path: &std::path::Path) -> (u64, u64) {
    let st = nix::sys::statvfs::statvfs(path).unwrap_or_else(|e| panic!("statvfs {}: {e}", path.display()));
    let frag = st.fragment_size() as u64;
    (st.blocks() as u64 * frag, st.blocks_available() as u64 * frag)
}

/// Whether `a` is within 2 % of `b`.
fn near(a: u64, b: u64) -> bool {
    a.abs_diff(b) <= b / 50
}

#[test]
fn statfs_reports_cluster_space() {
    let c = TestCluster::builder().nodes(2).start();
    let m = c.mount();
    let (total, free) = space_of(m.path());
    // Both nodes keep their chunks on this machine's one disk: it counts once.
    let (disk_total, _) = space_of(c.dir());
    assert!(near(total, disk_total), "statfs total {total}, the one disk under both nodes {disk_total}");
    assert!(free > 0 && free <= total);
    assert_eq!(nix::sys::statvfs::statvfs(m.path()).expect("statvfs").name_max(), 255);
}

#[test]
fn statfs_adds_up_nodes_on_their_own_disks() {
    const DISK: u64 = 256 << 20;
    let c = TestCluster::builder().nodes(2).node_disk_bytes(DISK).start();
    let m = c.mount();
    let (total, free) = space_of(m.path());
    assert!(near(total, 2 * DISK), "statfs total {total}, two disks of {DISK}");
    assert!(free > 0 && free <= total);
}

#[test]
fn fsync_and_fdatasync() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let mut f = File::create(m.join("f")).expect("create");
    f.write_all(&random_bytes(300_000)).expect("write");
    f.sync_all().expect("fsync");
    f.write_all(b"more").expect("write");
    f.sync_data().expect("fdatasync");
    assert_eq!(f.metadata().expect("fstat").len(), 300_004);
}

#[test]
fn long_names_get_enametoolong() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let ok = "n".repeat(255);
    fs::write(m.join(&ok), b"x").expect("255-byte name");
    let long = "n".repeat(256);
    let e = fs::write(m.join(&long), b"x").expect_err("256-byte name");
    assert_eq!(errno(&e), libc::ENAMETOOLONG);
    let e = fs::create_dir(m.join(&long)).expect_err("256-byte dir name");
    assert_eq!(errno(&e), libc::ENAMETOOLONG);
}

#[test]
fn read_only_mmap_shared() {
    let c = TestCluster::builder().chunk_size(1 << 20).start();
    let m = c.mount();
    let data = random_bytes(3 << 20);
    fs::write(m.join("seg"), &data).expect("write");
    let f = File::open(m.join("seg")).expect("open");
    let len = std::num::NonZeroUsize::new(data.len()).expect("nonzero");
    #[allow(unsafe_code)]
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped below.
    let ptr = unsafe {
        nix::sys::mman::mmap(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ,
            nix::sys::mman::MapFlags::MAP_SHARED,
            &f,
            0,
        )
    }
    .expect("mmap MAP_SHARED read-only");
    #[allow(unsafe_code)]
    // SAFETY: the mapping is data.len() bytes long and readable.
    let mapped = unsafe { std::slice::from_raw_parts(ptr.as_ptr() as *const u8, data.len()) };
    assert_eq!(sha256(mapped), sha256(&data));
    #[allow(unsafe_code)]
    // SAFETY: unmapping the mapping made above.
    unsafe { nix::sys::mman::munmap(ptr, data.len()) }.expect("munmap");
}

/// After each change in a directory the kernel asks for the directory's
/// attributes again; the client answers from what the master returned with
/// the change. Those must be exactly what a fresh client reads.
#[test]
fn a_directorys_attributes_follow_each_change_in_it() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    // A client that caches nothing: every stat asks the master.
    let other = c.mount_with(stripefs_client::MountOptions {
        attr_ttl: std::time::Duration::ZERO,
        entry_ttl: std::time::Duration::ZERO,
        ..Default::default()
    });
    fs::create_dir(m.join("d")).expect("mkdir d");
    let d = m.join("d");
    let seen = |what: &str, nlink: u64| {
        let here = fs::metadata(&d).expect("stat here");
        let there = fs::metadata(other.join("d")).expect("stat there");
        assert_eq!(here.nlink(), nlink, "after {what}: link count");
        assert_eq!(
            (here.nlink(), here.mtime(), here.mtime_nsec(), here.ctime_nsec()),
            (there.nlink(), there.mtime(), there.mtime_nsec(), there.ctime_nsec()),
            "after {what}: this client's view of d differs from the master's"
        );
        (here.mtime(), here.mtime_nsec())
    };
    let mut last = seen("mkdir d", 2);
    let mut step = |what: &str, nlink: u64, f: &dyn Fn()| {
        std::thread::sleep(std::time::Duration::from_millis(5));
        f();
        let now = seen(what, nlink);
        assert!(now > last, "after {what}: mtime did not move ({last:?} -> {now:?})");
        last = now;
    };
    step("mkdir d/sub", 3, &|| fs::create_dir(d.join("sub")).expect("mkdir"));
    step("create d/f", 3, &|| drop(File::create(d.join("f")).expect("create")));
    step("rename d/f d/g", 3, &|| fs::rename(d.join("f"), d.join("g")).expect("rename"));
    step("unlink d/g", 3, &|| fs::remove_file(d.join("g")).expect("unlink"));
    step("rmdir d/sub", 2, &|| fs::remove_dir(d.join("sub")).expect("rmdir"));
}
