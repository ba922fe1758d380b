//! Chunk encode and decode, the client's and nodes' hot path: a 4 MiB
//! chunk cut into 64 KiB blocks, each zstd level 1 (or raw when it does not
//! shrink) with a crc32, and back. Run: `cargo bench -p stripefs-proto`.

// criterion_group!/criterion_main! generate undocumented functions.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::RngCore;
use std::hint::black_box;
use stripefs_proto::block::{self, BlockEncoder};

const CHUNK: usize = 4 << 20;

/// Incompressible (random) and compressible (repetitive text) chunks.
fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut random = vec![0u8; CHUNK];
    rand::rng().fill_bytes(&mut random);
    let line = b"2026-11-25T02:36:41.388721Z INFO stripefs_master::service: node 2 registered host=host1\n";
    let text: Vec<u8> = line.iter().copied().cycle().take(CHUNK).collect();
    vec![("random", random), ("text", text)]
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode 4 MiB chunk");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for (name, data) in inputs() {
        for level in [0i8, 1] {
            g.bench_with_input(BenchmarkId::new(name, format!("zstd {level}")), &data, |b, data| {
                let mut enc = BlockEncoder::new(level);
                b.iter(|| black_box(enc.encode_all(black_box(data))));
            });
        }
        // What the client does: raw blocks are slices of the chunk buffer.
        let shared = bytes::Bytes::from(data.clone());
        g.bench_with_input(BenchmarkId::new(name, "zstd 1, shared"), &shared, |b, data| {
            let mut enc = BlockEncoder::new(1);
            b.iter(|| black_box(enc.encode_shared(black_box(data))));
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify and decode 4 MiB chunk");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for (name, data) in inputs() {
        let blocks = BlockEncoder::new(1).encode_all(&data);
        g.bench_with_input(BenchmarkId::new(name, "zstd 1"), &blocks, |b, blocks| {
            b.iter(|| {
                for blk in blocks {
                    black_box(block::decode(black_box(blk)).expect("decode"));
                }
            });
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
