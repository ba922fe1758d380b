//! The master's metadata writer: creates committed one at a time (each
//! waits for its own commit and fsync, as one sequential client does) and
//! as a batch of concurrent ones (which share group commits, as many
//! clients do). Run: `cargo bench -p stripefs-master`.

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

criterion_group!(benches, creates);
criterion_main!(benches);
