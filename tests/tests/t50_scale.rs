//! Scale: a directory of 100,000 entries and a 10 GiB sparse file.

use futures::stream::{self, StreamExt};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::Command;
use std::time::{Duration, Instant};
use stripefs_proto::types::{FileKind, Owner};
use stripefs_proto::InodeId;
use stripefs_tests::{must_run, random_bytes, tarpc_ctx, TestCluster};

const ENTRIES: usize = 100_000;

#[test]
fn directory_with_100k_entries_lists_completely() {
    let c = TestCluster::builder().nodes(1).start();
    let m = c.mount();
    fs::create_dir(m.join("big")).expect("mkdir");
    let dir = InodeId(fs::metadata(m.join("big")).expect("stat").ino());

    // Create the entries through the master directly: 64 mknod calls in flight.
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let failures = rt.block_on(async {
        let client = c.master_client().await;
        stream::iter(0..ENTRIES)
            .map(|i| {
                let client = client.clone();
                async move {
                    let op = stripefs_proto::ops::Mknod {
                        parent: dir,
                        name: format!("entry-{i:06}"),
                        kind: FileKind::File,
                        perm: 0o644,
                        owner: Owner { uid: 0, gid: 0 },
                        rdev: 0,
                    };
                    let r = client.mknod(tarpc_ctx(), stripefs_proto::ops::Request::single(op)).await;
                    match r {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(format!("entry-{i:06}: {e}")),
                        Err(e) => Some(format!("entry-{i:06}: rpc: {e}")),
                    }
                }
            })
            .buffer_unordered(64)
            .filter_map(|r| async move { r })
            .collect::<Vec<String>>()
            .await
    });
    drop(rt);
    eprintln!("{ENTRIES} mknod calls in {:?}", t.elapsed());
    assert!(
        failures.is_empty(),
        "{} mknod calls failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // readdir through the mount returns every name exactly once.
    let t = Instant::now();
    let mut names = HashSet::with_capacity(ENTRIES);
    let mut dups = 0;
    for e in fs::read_dir(m.join("big")).expect("readdir") {
        let name = e.expect("entry").file_name().into_string().expect("utf8 name");
        if !names.insert(name) {
            dups += 1;
        }
    }
    eprintln!("readdir of {} entries in {:?}", names.len(), t.elapsed());
    assert_eq!(dups, 0, "readdir returned {dups} names twice");
    assert_eq!(names.len(), ENTRIES);
    for i in (0..ENTRIES).step_by(997).chain([ENTRIES - 1]) {
        assert!(names.contains(&format!("entry-{i:06}")), "entry-{i:06} missing");
    }

    // ls -l stats every entry: a "total" line plus one line per entry.
    let t = Instant::now();
    let out = must_run(
        Command::new("sh").arg("-c").arg("LC_ALL=C ls -l \"$1\" | wc -l").arg("sh").arg(m.join("big")),
        Duration::from_secs(300),
    );
    eprintln!("ls -l | wc -l in {:?}", t.elapsed());
    let lines: usize = String::from_utf8_lossy(&out.stdout).trim().parse().expect("a line count");
    assert_eq!(lines, ENTRIES + 1);
    // The directory's own attributes agree, and a name resolves.
    assert_eq!(fs::metadata(m.join("big/entry-054321")).expect("stat one entry").len(), 0);
}

const GIB: u64 = 1 << 30;
const MIB: usize = 1 << 20;

#[test]
fn sparse_file_of_10_gib() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let p = m.join("sparse");
    let size = 10 * GIB + 12_345;
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).expect("create");
    f.set_len(size).expect("set_len 10 GiB");
    assert_eq!(f.metadata().expect("fstat").len(), size);

    // A few MiB near the start, around 5 GiB (across a chunk boundary) and at the end.
    let regions =
        [(4096u64, 3 * MIB + 7), (5 * GIB - MIB as u64 - 3, 3 * MIB), (size - 2 * MIB as u64 - 5, 2 * MIB + 5)];
    let datas: Vec<Vec<u8>> = regions.iter().map(|&(_, len)| random_bytes(len)).collect();
    let t = Instant::now();
    for (&(off, _), d) in regions.iter().zip(&datas) {
        f.write_all_at(d, off).expect("write region");
    }
    drop(f);
    eprintln!("wrote {} MiB in 3 regions in {:?}", datas.iter().map(Vec::len).sum::<usize>() >> 20, t.elapsed());
    assert_eq!(fs::metadata(&p).expect("stat").len(), size, "writes inside the file must not change its size");

    let f = File::open(&p).expect("open");
    for (&(off, len), d) in regions.iter().zip(&datas) {
        // The region, and 100 bytes of hole on each side of it.
        let mut buf = vec![0xAAu8; len + 200];
        let start = off - 100;
        let want_len = ((size - start) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..want_len], start).expect("read region");
        assert!(buf[..100].iter().all(|&b| b == 0), "bytes before the region at {off} are not zeros");
        assert!(buf[100..100 + len] == d[..], "region at {off} differs");
        assert!(buf[100 + len..want_len].iter().all(|&b| b == 0), "bytes after the region at {off} are not zeros");
    }
    // Holes far from the data read as zeros.
    for off in [GIB, 3 * GIB + 12_345, 7 * GIB, size - 100 * MIB as u64] {
        let mut buf = vec![0xAAu8; 4 * MIB];
        f.read_exact_at(&mut buf, off).expect("read hole");
        assert!(buf.iter().all(|&b| b == 0), "hole at {off} does not read as zeros");
    }
    // Reading at the end stops at the size.
    let mut buf = vec![0u8; 1000];
    let n = f.read_at(&mut buf, size - 10).expect("read the end");
    assert_eq!(n, 10);
    assert_eq!(buf[..10], datas[2][datas[2].len() - 10..]);
    assert_eq!(f.read_at(&mut buf, size).expect("read at EOF"), 0);

    // ls -l shows the size.
    let out = must_run(Command::new("ls").arg("-l").arg(&p), Duration::from_secs(30));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let shown: u64 = line.split_whitespace().nth(4).and_then(|s| s.parse().ok()).expect("ls -l size column");
    assert_eq!(shown, size, "ls -l: {line}");

    // Only the written chunks exist: the holes take no space.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let ino = InodeId(fs::metadata(&p).expect("stat").ino());
    let chunks = rt.block_on(async {
        let client = c.master_client().await;
        client.chunks(tarpc_ctx(), ino, 0, 1 << 20).await.expect("rpc").expect("chunks")
    });
    let indexes: Vec<u64> = chunks.iter().map(|l| l.index).collect();
    eprintln!("chunks of the sparse file: {indexes:?}; st_blocks {}", fs::metadata(&p).expect("stat").blocks());
    assert!((3..=6).contains(&chunks.len()), "a 10 GiB file with 8 MiB written has chunks {indexes:?}");
}

/// st_blocks counts what a file occupies, so `du` and `cp --sparse=auto`
/// see that a sparse file's holes take no space.
#[test]
fn sparse_file_st_blocks_counts_only_written_data() {
    let c = TestCluster::builder().start();
    let m = c.mount();
    let p = m.join("sparse");
    let f = File::create(&p).expect("create");
    f.set_len(4 * GIB).expect("set_len 4 GiB");
    f.write_all_at(&random_bytes(MIB), 2 * GIB).expect("write 1 MiB");
    drop(f);
    let st = fs::metadata(&p).expect("stat");
    let out = must_run(Command::new("du").arg("-k").arg(&p), Duration::from_secs(30));
    eprintln!("size {} st_blocks {}; du -k: {}", st.len(), st.blocks(), String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        st.blocks() * 512 < 64 * MIB as u64,
        "a 4 GiB file with 1 MiB written reports {} blocks of 512 bytes ({} MiB)",
        st.blocks(),
        (st.blocks() * 512) >> 20
    );
}
