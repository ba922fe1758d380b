//! The master's metadata writer: creates committed one at a time (each
//! waits for its own commit and fsync, as one sequential client does) and
//! as a batch of concurrent ones (which share group commits, as many
//! clients do); and a registered client's creates answered early, with
//! 10,000 and with 1,000,000 files in the filesystem (the master's part of
//! issue 15's "creates at 1M files no more than 20 % below the rate at
//! 10k"). Run: `cargo bench -p stripefs-master`.

// criterion_group!/criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::atomic::{AtomicU64, Ordering};
use stripefs_master::namespace::Command;
use stripefs_master::store::Store;
use stripefs_proto::ops;
use stripefs_proto::types::{FileKind, Owner, Timestamp};
use stripefs_proto::InodeId;
use tokio_util::sync::CancellationToken;

const BATCH: u64 = 256;

fn mknod(n: u64) -> Command {
    Command::Mknod {
        op: ops::Mknod {
            parent: InodeId::ROOT,
            name: format!("f{n}"),
            kind: FileKind::File,
            perm: 0o644,
            owner: Owner { uid: 0, gid: 0 },
            rdev: 0,
        },
        now: Timestamp::now(),
    }
}

fn creates(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), None, Box::new(|_| false), CancellationToken::new()).expect("store");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let next = AtomicU64::new(0);
    let mut g = c.benchmark_group("master creates");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("256 sequential (one commit each)", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..BATCH {
                    store.execute(mknod(next.fetch_add(1, Ordering::Relaxed))).await.expect("mknod");
                }
            })
        })
    });
    g.bench_function("256 concurrent (group commit)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let all = (0..BATCH).map(|_| store.execute(mknod(next.fetch_add(1, Ordering::Relaxed))));
                for r in futures::future::join_all(all).await {
                    r.expect("mknod");
                }
            })
        })
    });
    g.finish();
}

/// Fills the filesystem with files in 100 directories until it holds `n`
/// (256 creates in flight at a time).
fn fill(rt: &tokio::runtime::Runtime, store: &Store, dirs: &[InodeId], have: &AtomicU64, n: u64) {
    rt.block_on(async {
        while have.load(Ordering::Relaxed) < n {
            let all = (0..BATCH).map(|_| {
                let i = have.fetch_add(1, Ordering::Relaxed);
                let mut cmd = mknod(i);
                if let Command::Mknod { op, .. } = &mut cmd {
                    op.parent = dirs[(i % dirs.len() as u64) as usize];
                }
                store.execute(cmd)
            });
            for r in futures::future::join_all(all).await {
                r.expect("fill");
            }
        }
    })
}

fn creates_as_the_namespace_grows(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), None, Box::new(|_| false), CancellationToken::new()).expect("store");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let session = 0x5e55;
    rt.block_on(store.open_session(session, "bench".into())).expect("register");
    let dirs: Vec<InodeId> = (0..100)
        .map(|d| {
            let op = ops::Mkdir {
                parent: InodeId::ROOT,
                name: format!("d{d}"),
                perm: 0o755,
                owner: Owner { uid: 0, gid: 0 },
            };
            match rt.block_on(store.execute(Command::Mkdir { op, now: Timestamp::now() })).expect("mkdir") {
                stripefs_master::namespace::Reply::Attr(a) => a.ino,
                other => panic!("mkdir answered {other:?}"),
            }
        })
        .collect();
    let have = AtomicU64::new(0);
    let seq = AtomicU64::new(1);
    let mut g = c.benchmark_group("early creates of one client");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    for files in [10_000u64, 1_000_000] {
        fill(&rt, &store, &dirs, &have, files);
        g.bench_function(format!("256 sequential at {files} files"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    for _ in 0..BATCH {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let op = ops::Mknod {
                            parent: dirs[(n % 100) as usize],
                            name: format!("c{n}"),
                            kind: FileKind::File,
                            perm: 0o644,
                            owner: Owner { uid: 0, gid: 0 },
                            rdev: 0,
                        };
                        let req = ops::Request {
                            id: ops::RequestId { session, seq: n },
                            answered_below: n,
                            op,
                            replay: None,
                        };
                        store.run(req).await.expect("create");
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, creates, creates_as_the_namespace_grows);
criterion_main!(benches);
