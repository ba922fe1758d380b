//! What the first users' programs do on the mount (shared/DESIGN.md, "What
//! the first users' programs do on the mount"): Ray object spilling and
//! Spark shuffle file patterns, real programs (cp, dd, ls, rm, sha256sum)
//! on the mount, and statfs called often.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use stripefs_tests::{must_run, random_bytes, sha256, TestCluster};

const MIB: usize = 1 << 20;

fn must_read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Bytes that differ from spill to spill (cheaper than random for tens of MiB).
fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let head = random_bytes(64 * 1024);
    let mut v = Vec::with_capacity(n);
    let mut i = 0u64;
    while v.len() < n {
        let take = (n - v.len()).min(head.len());
        v.extend(head[..take].iter().map(|b| b ^ (seed as u8) ^ (i as u8)));
        i += 1;
    }
    v
}

// ---------------------------------------------------------------------------
// Ray

/// Ray's spill file: a ~100-byte header, then the object.
fn ray_spill(path: &Path, header: &[u8], object: &[u8]) {
    // Python's open(path, "wb"): O_WRONLY|O_CREAT|O_TRUNC.
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(path).expect("create spill file");
    f.write_all(header).expect("write header");
    for piece in object.chunks(8 * MIB) {
        f.write_all(piece).expect("write object");
    }
}

/// Ray's restore: open, seek past the header, read the object in one read.
fn ray_restore(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = File::open(path).expect("open spill file");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut buf = vec![0u8; len];
    let n = f.read(&mut buf).expect("one large read");
    assert_eq!(n, len, "one read(2) of {len} bytes of a regular file returned {n}");
    buf
}

#[test]
fn ray_spills_restores_and_unlinks_large_objects() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let dir = m.join("ray/session_2026/ray_spilled_objects");
    fs::create_dir_all(&dir).expect("mkdir -p spill dir");
    let t = Instant::now();
    let mut spilled = Vec::new();
    for (i, len) in [24 * MIB + 12_345, 40 * MIB, 16 * MIB + 1].into_iter().enumerate() {
        let header = format!("{{\"object_id\":\"{i:040x}\",\"size\":{len},\"owner\":\"127.0.0.1:1234\"}}\n");
        let header = format!("{header:<100}").into_bytes();
        let object = pattern(i as u64, len);
        let path = dir.join(format!("{i:040x}-multi-1"));
        ray_spill(&path, &header, &object);
        spilled.push((path, header.len() as u64, sha256(&object), len));
    }
    eprintln!("spilled {} MiB in {:?}", 80, t.elapsed());
    let t = Instant::now();
    for (path, off, sum, len) in &spilled {
        assert_eq!(fs::metadata(path).expect("stat").len(), off + *len as u64);
        assert_eq!(&sha256(&ray_restore(path, *off, *len)), sum, "restored object of {}", path.display());
    }
    eprintln!("restored in {:?}", t.elapsed());
    // Re-spilling the same object id truncates the old file (O_TRUNC).
    let (path, _, _, _) = &spilled[1];
    let small = random_bytes(3 * MIB);
    ray_spill(path, &[b'h'; 100], &small);
    assert_eq!(fs::metadata(path).expect("stat").len(), 100 + small.len() as u64);
    assert_eq!(ray_restore(path, 100, small.len()), small);
    for (path, ..) in &spilled {
        fs::remove_file(path).expect("unlink freed spill file");
    }
    assert_eq!(fs::read_dir(&dir).expect("readdir").count(), 0);
    // The freed objects' replicas leave the nodes.
    c.wait_replica_files(0);
}

#[test]
fn ray_many_spill_files_in_a_tree_then_the_tree_is_removed() {
    let c = TestCluster::builder().chunk_size(256 * 1024).start();
    let m = c.mount();
    let root = m.join("ray_tmp");
    let t = Instant::now();
    let mut files = Vec::new();
    for worker in 0..8 {
        let dir = root.join(format!("session_latest/worker_{worker}/spill"));
        fs::create_dir_all(&dir).expect("mkdir -p");
        for obj in 0..25 {
            let len = 1_000 + (worker * 25 + obj) * 4_099;
            let object = random_bytes(len);
            let path = dir.join(format!("obj_{obj:03}"));
            ray_spill(&path, &[b'H'; 100], &object);
            files.push((path, sha256(&object), len));
        }
    }
    eprintln!("{} spill files written in {:?}", files.len(), t.elapsed());
    for (path, sum, len) in files.iter().step_by(7) {
        assert_eq!(&sha256(&ray_restore(path, 100, *len)), sum, "{}", path.display());
    }
    // Objects freed one by one, then the rest of the tree at shutdown.
    for (path, ..) in files.iter().step_by(3) {
        fs::remove_file(path).expect("unlink");
    }
    let t = Instant::now();
    fs::remove_dir_all(&root).expect("remove the spill tree");
    eprintln!("tree removed in {:?}", t.elapsed());
    assert!(!root.exists());
    assert_eq!(fs::read_dir(m.path()).expect("readdir").count(), 0);
    c.wait_replica_files(0);
}

// ---------------------------------------------------------------------------
// Spark

const REDUCERS: usize = 12;
const SUBDIRS: usize = 64;

/// Spark's DiskBlockManager: blockmgr-UUID/XX/file, XX = hash % 64.
fn block_path(root: &Path, name: &str) -> PathBuf {
    let h = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let dir = root.join(format!("{:02x}", h as usize % SUBDIRS));
    if !dir.exists() {
        fs::create_dir(&dir).expect("mkdir shuffle subdir");
    }
    dir.join(name)
}

/// One map task's output: per reducer, a segment of ~24 KiB writes.
struct MapOutput {
    segments: Vec<Vec<u8>>,
}

/// Writes one map task's shuffle files the way Spark does and commits them
/// by rename over what a previous attempt left.
fn spark_write_map_output(root: &Path, map: usize) -> MapOutput {
    let name = format!("shuffle_0_{map}_0");
    let data_final = block_path(root, &format!("{name}.data"));
    let index_final = block_path(root, &format!("{name}.index"));
    let checksum_final = block_path(root, &format!("{name}.checksum.ADLER32"));
    // A failed earlier attempt left committed files: the rename replaces them.
    fs::write(&data_final, b"stale data of an earlier attempt").expect("stale data");
    fs::write(&index_final, [0u8; 8]).expect("stale index");

    let tmp = data_final.with_extension(format!("data.{map:08x}-tmp"));
    let segments: Vec<Vec<u8>> =
        (0..REDUCERS).map(|r| random_bytes(if r % 5 == 4 { 0 } else { 20_000 + (map * 7 + r) * 1_013 })).collect();
    // Spills merge: the data file is appended to across several opens.
    for part in segments.chunks(REDUCERS / 3) {
        let mut f = OpenOptions::new().append(true).create(true).open(&tmp).expect("open O_APPEND");
        for seg in part {
            for w in seg.chunks(24 * 1024) {
                f.write_all(w).expect("append 24 KiB");
            }
        }
    }
    // Index: REDUCERS+1 big-endian offsets; checksum: one u64 per reducer.
    let mut index = Vec::new();
    let mut off = 0u64;
    index.extend_from_slice(&off.to_be_bytes());
    for s in &segments {
        off += s.len() as u64;
        index.extend_from_slice(&off.to_be_bytes());
    }
    let index_tmp = index_final.with_extension(format!("index.{map:08x}-tmp"));
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&index_tmp)
        .expect("open index O_TRUNC")
        .write_all(&index)
        .expect("write index");
    let checksums: Vec<u8> = segments.iter().flat_map(|s| (s.len() as u64 * 2_654_435_761).to_be_bytes()).collect();
    let mut ck =
        OpenOptions::new().write(true).create(true).truncate(true).open(&checksum_final).expect("open O_TRUNC");
    ck.write_all(&checksums).expect("write checksums");
    drop(ck);
    fs::rename(&index_tmp, &index_final).expect("commit index by rename");
    fs::rename(&tmp, &data_final).expect("commit data by rename");
    assert!(!tmp.exists() && !index_tmp.exists());
    MapOutput { segments }
}

/// A reducer's fetch of one map output's segment: index entry, then data.
fn spark_fetch(root: &Path, map: usize, reducer: usize) -> Vec<u8> {
    let name = format!("shuffle_0_{map}_0");
    let mut index = File::open(block_path(root, &format!("{name}.index"))).expect("open index");
    index.seek(SeekFrom::Start(reducer as u64 * 8)).expect("seek index");
    let mut entry = [0u8; 16];
    index.read_exact(&mut entry).expect("read index entry");
    let start = u64::from_be_bytes(entry[..8].try_into().expect("8 bytes"));
    let end = u64::from_be_bytes(entry[8..].try_into().expect("8 bytes"));
    assert!(end >= start, "index entry {reducer} of map {map}: {start}..{end}");
    let mut data = File::open(block_path(root, &format!("{name}.data"))).expect("open data");
    data.seek(SeekFrom::Start(start)).expect("seek data");
    let mut seg = vec![0u8; (end - start) as usize];
    data.read_exact(&mut seg).expect("read segment");
    seg
}

#[test]
fn spark_shuffle_append_commit_by_rename_fetch_and_rm_rf() {
    let c = TestCluster::builder().chunk_size(128 * 1024).start();
    let m = c.mount();
    let local_dir = m.join("spark-local/blockmgr-7d9e2a51-3c4b-4f61-9a8e-0b1c2d3e4f50");
    fs::create_dir_all(&local_dir).expect("mkdir blockmgr");
    let t = Instant::now();
    let maps: Vec<MapOutput> = (0..8).map(|map| spark_write_map_output(&local_dir, map)).collect();
    eprintln!("8 map outputs written and committed in {:?}", t.elapsed());
    let t = Instant::now();
    for reducer in 0..REDUCERS {
        for (map, out) in maps.iter().enumerate() {
            let seg = spark_fetch(&local_dir, map, reducer);
            assert!(seg == out.segments[reducer], "segment of map {map} for reducer {reducer} differs");
        }
    }
    eprintln!("{} segments fetched in {:?}", REDUCERS * maps.len(), t.elapsed());
    let subdirs = fs::read_dir(&local_dir).expect("readdir").count();
    assert!(subdirs > 4 && subdirs <= SUBDIRS, "{subdirs} subdirectories");
    // Many small directories, as the block manager and the temp shuffle dirs make.
    for i in 0..100 {
        let d = m.join(format!("spark-local/spark-{i:03}/userFiles"));
        fs::create_dir_all(&d).expect("mkdir -p");
        fs::write(d.join("jar.lock"), b"").expect("empty file");
    }
    let t = Instant::now();
    must_run(Command::new("rm").arg("-rf").arg(m.join("spark-local")), Duration::from_secs(120));
    eprintln!("rm -rf of the tree in {:?}", t.elapsed());
    assert!(!m.join("spark-local").exists(), "rm -rf left the tree");
    assert_eq!(fs::read_dir(m.path()).expect("readdir").count(), 0);
    c.wait_replica_files(0);
}

/// A read-only MAP_SHARED mapping of `len` bytes of `f` at `offset`.
struct Mapping {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

impl Mapping {
    fn new(f: &File, offset: u64, len: usize) -> Mapping {
        let nz = std::num::NonZeroUsize::new(len).expect("nonzero length");
        #[allow(unsafe_code)]
        // SAFETY: a fresh read-only shared mapping of an open file; it is
        // only read through `bytes` and unmapped in Drop.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                nz,
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_SHARED,
                f,
                offset as i64,
            )
        }
        .expect("mmap PROT_READ MAP_SHARED");
        Mapping { ptr, len }
    }

    fn bytes(&self) -> &[u8] {
        #[allow(unsafe_code)]
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr() as *const u8, self.len)
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: unmapping the mapping made in `new`, once.
        let r = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
        if let Err(e) = r {
            eprintln!("munmap: {e}");
        }
    }
}

/// Java's transferTo merges shuffle files by mapping them read-only with
/// MAP_SHARED, in pieces at offsets: this must work (no forced direct_io).
/// Spark's bypass-merge-sort shuffle writer keeps one file per reduce
/// partition open and appends ~32 KiB to each in turn: no file fills a
/// chunk, so nothing is uploaded for being full. The mount must still hold
/// no more unwritten data than its budget (`dirty_mb`), and every byte must
/// arrive.
#[test]
fn many_files_appended_in_turn_stay_within_the_write_budget() {
    let c = TestCluster::builder().nodes(2).chunk_size(MIB as u32).start();
    let m = c.mount_with(stripefs_client::MountOptions { dirty_mb: 4, ..Default::default() });
    let (files, per_file, write) = (32usize, 512 * 1024, 32 * 1024);
    let dir = m.join("shuffle");
    fs::create_dir(&dir).expect("mkdir");
    let mut open: Vec<File> = (0..files)
        .map(|i| OpenOptions::new().create(true).append(true).open(dir.join(format!("part-{i:03}"))).expect("open"))
        .collect();
    let mut want: Vec<Vec<u8>> = vec![Vec::new(); files];
    let data = random_bytes(per_file);
    for round in 0..per_file / write {
        for (i, f) in open.iter_mut().enumerate() {
            let piece: Vec<u8> = data[round * write..(round + 1) * write].iter().map(|b| b ^ i as u8).collect();
            f.write_all(&piece).expect("append");
            want[i].extend_from_slice(&piece);
        }
    }
    drop(open);
    let budget = &m.core().dirty;
    // One write may push it over (by at most the buffer it grew) before
    // the writer waits.
    assert!(
        budget.peak() <= budget.limit() + MIB as u64,
        "the mount held {} KiB unwritten, over its {} KiB budget ({} KiB written in all)",
        budget.peak() >> 10,
        budget.limit() >> 10,
        (files * per_file) >> 10
    );
    assert_eq!(budget.used(), 0, "everything is uploaded after close");
    for (i, w) in want.iter().enumerate() {
        assert_eq!(sha256(&must_read(&dir.join(format!("part-{i:03}")))), sha256(w), "part-{i:03}");
    }
}

#[test]
fn spark_transfer_to_maps_segments_read_only_shared() {
    let c = TestCluster::builder().chunk_size(1 << 20).start();
    let m = c.mount();
    let path = m.join("shuffle_1_0_0.data");
    // Written through O_APPEND in 24 KiB writes, like the shuffle writer.
    let data = random_bytes(7 * MIB + 4321);
    {
        let mut f = OpenOptions::new().append(true).create(true).open(&path).expect("open O_APPEND");
        for w in data.chunks(24 * 1024) {
            f.write_all(w).expect("append");
        }
    }
    let f = File::open(&path).expect("open read-only");
    // Segments of ≥ 2 MiB at page-aligned offsets, crossing chunk boundaries.
    let page = 4096u64;
    for (offset, len) in [
        (0u64, 2 * MIB),
        (page * 3, 2 * MIB + 100),
        (MIB as u64 - page, 3 * MIB),
        (5 * MIB as u64, data.len() - 5 * MIB),
    ] {
        let map = Mapping::new(&f, offset, len);
        let want = &data[offset as usize..offset as usize + len];
        assert!(map.bytes() == want, "mapping at {offset} of {len} bytes differs from the file");
    }
    // A mapping and read(2) of the same file agree while both are open.
    let map = Mapping::new(&f, 2 * MIB as u64, 2 * MIB);
    let mut buf = vec![0u8; 2 * MIB];
    f.read_exact_at(&mut buf, 2 * MIB as u64).expect("pread");
    assert!(map.bytes() == &buf[..], "mmap and pread disagree");
    // The file another open wrote (merge output) is visible through a new mapping.
    drop(map);
    let merged = m.join("merged.data");
    {
        let mut out = File::create(&merged).expect("create merged");
        let map = Mapping::new(&f, 0, data.len());
        out.write_all(map.bytes()).expect("write merged from the mapping");
    }
    assert_eq!(sha256(&must_read(&merged)), sha256(&data));
}

// ---------------------------------------------------------------------------
// Real programs

#[test]
fn real_programs_cp_dd_ls_sha256sum_rm() {
    let c = TestCluster::builder().chunk_size(256 * 1024).start();
    let m = c.mount();
    let local = stripefs_tests::temp_dir("stripefs-local-");
    let limit = Duration::from_secs(60);

    // cp in and out, sha256sum on the mount.
    let src = local.path().join("src.bin");
    let data = random_bytes(5 * MIB + 77);
    fs::write(&src, &data).expect("write local");
    must_run(Command::new("cp").arg(&src).arg(m.join("copy.bin")), limit);
    let out = must_run(Command::new("sha256sum").arg(m.join("copy.bin")), limit);
    let sum = stdout_of(&out).split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(sum, sha256(&data), "sha256sum of the copy on the mount");
    let back = local.path().join("back.bin");
    must_run(Command::new("cp").arg(m.join("copy.bin")).arg(&back), limit);
    must_run(Command::new("cmp").arg(&src).arg(&back), limit);

    // dd: a zero-filled file, then blocks patched in place with conv=notrunc.
    let dd = m.join("dd.img");
    must_run(
        Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=8", "status=none"])
            .arg(format!("of={}", dd.display())),
        limit,
    );
    must_run(
        Command::new("dd")
            .args(["bs=4k", "seek=100", "count=10", "conv=notrunc", "status=none"])
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", dd.display())),
        limit,
    );
    let mut want = vec![0u8; 8 * MIB];
    want[100 * 4096..110 * 4096].copy_from_slice(&data[..10 * 4096]);
    assert!(must_read(&dd) == want, "dd result differs");
    // dd reading back with a large block size.
    let out = must_run(
        Command::new("dd").args(["bs=4M", "skip=1", "count=1", "status=none"]).arg(format!("if={}", dd.display())),
        limit,
    );
    assert!(out.stdout == want[4 * MIB..], "dd read of the second 4 MiB differs");

    // cp -r of a tree, diff -r, ls -l sizes.
    let tree = local.path().join("tree");
    for (i, len) in [0usize, 1, 4095, 262_144, 300_001].into_iter().enumerate() {
        let d = tree.join(format!("d{}", i % 2));
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join(format!("f{i}")), random_bytes(len)).expect("write");
    }
    must_run(Command::new("cp").arg("-r").arg(&tree).arg(m.join("tree")), limit);
    must_run(Command::new("diff").arg("-r").arg(&tree).arg(m.join("tree")), limit);
    let out = must_run(Command::new("ls").arg("-l").arg(m.join("tree/d0")), limit);
    let listing = stdout_of(&out);
    for (name, len) in [("f0", 0usize), ("f2", 4095), ("f4", 300_001)] {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().last() == Some(name))
            .unwrap_or_else(|| panic!("ls -l lacks {name}:\n{listing}"));
        let size: u64 = line.split_whitespace().nth(4).and_then(|s| s.parse().ok()).expect("size column");
        assert_eq!(size, len as u64, "ls -l size of {name}: {line}");
    }
    // mv within the mount, then rm -rf everything.
    must_run(Command::new("mv").arg(m.join("tree/d1")).arg(m.join("moved")), limit);
    must_run(Command::new("diff").arg("-r").arg(tree.join("d1")).arg(m.join("moved")), limit);
    must_run(Command::new("rm").arg("-rf").arg(m.join("tree")).arg(m.join("moved")), limit);
    assert!(!m.join("tree").exists() && !m.join("moved").exists());
    let left: Vec<String> = fs::read_dir(m.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, vec!["copy.bin", "dd.img"]);
}

// ---------------------------------------------------------------------------
// statfs

/// The raylet calls statfs about 17 times a second and stops spilling when
/// it reports more than 95 % used: statfs must succeed every time, with
/// figures that hold together, also while files are written.
#[test]
fn statfs_called_often_stays_sane() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let t = Instant::now();
    let mut first_total = None;
    for i in 0..200 {
        if i == 100 {
            // Something changes in the middle: 8 MiB written.
            fs::write(m.join("f"), random_bytes(8 * MIB)).expect("write");
        }
        let st = nix::sys::statvfs::statvfs(m.path()).unwrap_or_else(|e| panic!("statvfs call {i}: {e}"));
        let frag = st.fragment_size() as u64;
        assert!(frag > 0 && st.block_size() > 0, "call {i}: block sizes {} {frag}", st.block_size());
        let total = st.blocks() as u64 * frag;
        let free = st.blocks_free() as u64 * frag;
        let avail = st.blocks_available() as u64 * frag;
        assert!(total > 0, "call {i}: zero total");
        assert!(avail <= free && free <= total, "call {i}: avail {avail} free {free} total {total}");
        assert_eq!(st.name_max(), 255, "call {i}");
        // Total space only changes if the nodes' disks do: within 1 %.
        let t0 = *first_total.get_or_insert(total);
        assert!(total.abs_diff(t0) <= t0 / 100, "call {i}: total {total} vs {t0} at first");
    }
    eprintln!("200 statvfs calls in {:?}", t.elapsed());
    // The used share the raylet computes matches the nodes' disks (all on
    // this machine's disk): a wrong figure could stop spilling at once.
    let st = nix::sys::statvfs::statvfs(m.path()).expect("statvfs");
    let used = 1.0 - st.blocks_available() as f64 / st.blocks() as f64;
    let disk = nix::sys::statvfs::statvfs(c.dir()).expect("statvfs of the disk");
    let disk_used = 1.0 - disk.blocks_available() as f64 / disk.blocks() as f64;
    eprintln!("used: mount {:.1} %, disk {:.1} %", used * 100.0, disk_used * 100.0);
    assert!((used - disk_used).abs() < 0.05, "mount reports {used:.3} used, the disk {disk_used:.3}");
}

/// f_files is the total number of inodes and f_ffree the free ones, so
/// f_ffree ≤ f_files and `df -i` shows f_files − f_ffree inodes used.
#[test]
fn statfs_inode_counts_are_consistent() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    for i in 0..10 {
        fs::write(m.join(format!("f{i}")), b"x").expect("write");
    }
    let st = nix::sys::statvfs::statvfs(m.path()).expect("statvfs");
    let out = must_run(Command::new("df").arg("-i").arg(m.path()), Duration::from_secs(30));
    eprintln!("f_files {} f_ffree {}; df -i:\n{}", st.files(), st.files_free(), stdout_of(&out));
    assert!(
        st.files_free() <= st.files(),
        "statfs reports {} free inodes out of {} in total",
        st.files_free(),
        st.files()
    );
    let used = st.files() - st.files_free();
    assert!((11..1000).contains(&used), "{used} inodes in use, want the root and 10 files");
}

#[test]
fn o_direct_and_o_sync_writes_work() {
    // Spark and Ray do not use these, but tools run on the mount do
    // (dd oflag=direct); FUSE without direct_io must still accept them.
    let c = TestCluster::builder().chunk_size(256 * 1024).start();
    let m = c.mount();
    let data = random_bytes(2 * MIB);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_SYNC)
        .open(m.join("sync"))
        .expect("open O_SYNC");
    f.write_all(&data).expect("O_SYNC write");
    drop(f);
    assert_eq!(sha256(&must_read(&m.join("sync"))), sha256(&data));
    let out = must_run(
        Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=4", "oflag=direct", "status=none"])
            .arg(format!("of={}", m.join("direct").display())),
        Duration::from_secs(60),
    );
    drop(out);
    let back = must_read(&m.join("direct"));
    assert_eq!(back.len(), 4 * MIB);
    assert!(back.iter().all(|&b| b == 0));
}
