//! Tests of the chunk store.

use super::*;
use rand::RngCore;
use stripefs_proto::block::{decode, BlockEncoder, Codec, BLOCK_SIZE};
use stripefs_proto::replica::{ENTRY_BYTES, HEADER_BODY_BYTES, HEADER_BYTES};

const C: ChunkId = ChunkId(0x1234_5678_9abc_de01);
const V: Version = Version(7);

/// Three full blocks (compressible, random, text) and a short random tail.
fn sample_data() -> Vec<u8> {
    let mut data = Vec::new();
    data.extend((0..BLOCK_SIZE).map(|i| (i / 100) as u8));
    let mut random = vec![0u8; BLOCK_SIZE];
    rand::rng().fill_bytes(&mut random);
    data.extend_from_slice(&random);
    let text = "all work and no play makes jack a dull boy\n".repeat(BLOCK_SIZE / 40);
    data.extend_from_slice(&text.as_bytes()[..BLOCK_SIZE]);
    let mut tail = vec![0u8; 1000];
    rand::rng().fill_bytes(&mut tail);
    data.extend_from_slice(&tail);
    data
}

fn encoded() -> (Vec<u8>, Vec<EncodedBlock>) {
    let data = sample_data();
    let blocks = BlockEncoder::new(3).encode_all(&data);
    (data, blocks)
}

fn decode_all(blocks: &[EncodedBlock]) -> Vec<u8> {
    blocks.iter().flat_map(|b| decode(b).expect("decode")).collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("ls") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn multi_block_chunk_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    let (data, blocks) = encoded();
    assert!(blocks.iter().any(|b| b.codec == Codec::Zstd as u8), "expected some compressed blocks");
    assert!(blocks.iter().any(|b| b.codec == Codec::Raw as u8), "expected some raw blocks");

    let stored = store.write(C, V, data.len() as u32, &blocks, true).expect("write");
    let read = store.read_blocks(C, V, 0, 1024).expect("read");
    assert_eq!(read, blocks);
    assert_eq!(decode_all(&read), data);

    let path = store.replica_path(C, V);
    assert_eq!(path.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()), Some("01"));
    assert_eq!(fs::metadata(&path).expect("stat").len(), stored);
    assert_eq!(store.inventory().expect("inventory"), vec![(C, V, stored)]);
    assert_eq!(store.used_bytes(), stored);
    assert_eq!(store.chunk_count(), 1);
    assert_eq!(files_under(dir.path()), vec![path]);
}

#[test]
fn empty_chunk_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    store.write(C, V, 0, &[], false).expect("write");
    assert_eq!(store.read_blocks(C, V, 0, 10).expect("read"), vec![]);
}

#[test]
fn partial_ranges_are_read_and_clamped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    let (data, blocks) = encoded();
    store.write(C, V, data.len() as u32, &blocks, false).expect("write");
    assert_eq!(store.read_blocks(C, V, 1, 2).expect("read"), blocks[1..3].to_vec());
    assert_eq!(store.read_blocks(C, V, 3, 100).expect("read"), blocks[3..].to_vec());
    assert_eq!(store.read_blocks(C, V, 4, 1).expect("read"), vec![]);
    assert_eq!(store.read_blocks(C, V, u32::MAX, u32::MAX).expect("read"), vec![]);
    assert_eq!(store.read_blocks(C, V, 0, 0).expect("read"), vec![]);
}

#[test]
fn missing_replica_is_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    let e = store.read_blocks(C, V, 0, 1).expect_err("absent");
    assert!(matches!(e, StoreError::NotFound { .. }), "{e:?}");
    assert_eq!(e.to_wire(), FsError::NotFound);
}

#[test]
fn a_flipped_byte_anywhere_is_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    let (data, blocks) = encoded();
    store.write(C, V, data.len() as u32, &blocks, false).expect("write");
    let path = store.replica_path(C, V);
    let pristine = fs::read(&path).expect("read file");
    let table_end = HEADER_BYTES + blocks.len() * ENTRY_BYTES;
    // Header fields, every byte of the block table, the first and last data bytes.
    let mut positions: Vec<usize> = vec![0, 9, 13, 21, 29, 33, HEADER_BODY_BYTES];
    positions.extend(HEADER_BYTES..table_end);
    positions.extend([table_end, table_end + 5000, pristine.len() - 1]);
    for pos in positions {
        for bit in [0x01u8, 0x80] {
            let mut bad = pristine.clone();
            bad[pos] ^= bit;
            fs::write(&path, &bad).expect("write file");
            let r = store.read_blocks(C, V, 0, 1024);
            assert!(
                matches!(r, Err(StoreError::Corrupt { .. })),
                "flip of bit {bit:#x} at byte {pos} went unnoticed: {:?}",
                r.map(|b| b.len())
            );
        }
    }
    fs::write(&path, &pristine).expect("restore");
    let e = {
        let mut bad = pristine.clone();
        bad[table_end + 10] ^= 0x40;
        fs::write(&path, &bad).expect("write file");
        store.read_blocks(C, V, 0, 1024).expect_err("corrupt")
    };
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert_eq!(e.to_wire(), FsError::Corrupt);
    // A truncated file is corrupt too.
    fs::write(&path, &pristine[..pristine.len() - 1]).expect("truncate");
    assert!(matches!(store.read_blocks(C, V, 0, 1), Err(StoreError::Corrupt { .. })));
    fs::write(&path, &pristine[..10]).expect("truncate");
    assert!(matches!(store.read_blocks(C, V, 0, 1), Err(StoreError::Corrupt { .. })));
}

#[test]
fn a_block_with_a_bad_crc_is_refused_and_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    let (data, mut blocks) = encoded();
    let mut damaged = blocks[2].data.to_vec();
    damaged[17] ^= 0x10;
    blocks[2].data = damaged.into();
    let e = store.write(C, V, data.len() as u32, &blocks, true).expect_err("must refuse");
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
    assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
    assert_eq!(store.chunk_count(), 0);
    assert_eq!(store.used_bytes(), 0);
}

#[test]
fn bad_layouts_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    let (data, blocks) = encoded();
    let len = data.len() as u32;
    let mut enc = BlockEncoder::new(0);
    let short = enc.encode(&[1u8; 100]);
    let cases: Vec<(u32, Vec<EncodedBlock>)> = vec![
        (len + 1, blocks.clone()),
        (len - 1, blocks.clone()),
        (100 + len, vec![short.clone(), blocks[0].clone(), blocks[1].clone(), blocks[2].clone(), blocks[3].clone()]),
        (0, vec![enc.encode(&[])]),
        (1, vec![]),
    ];
    for (length, blocks) in cases {
        let e = store.write(C, V, length, &blocks, false).expect_err("must refuse");
        assert!(matches!(e, StoreError::Invalid(_)), "{e:?}");
        assert_eq!(e.to_wire(), FsError::InvalidArgument);
    }
    assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
}

#[test]
fn rewriting_a_version_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    let (data, blocks) = encoded();
    store.write(C, V, data.len() as u32, &blocks, false).expect("write");
    let small = BlockEncoder::new(0).encode_all(b"hello");
    let stored = store.write(C, V, 5, &small, true).expect("rewrite");
    assert_eq!(store.read_blocks(C, V, 0, 10).expect("read"), small);
    assert_eq!(store.chunk_count(), 1);
    assert_eq!(store.used_bytes(), stored);
}

#[test]
fn reopen_counts_what_is_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, blocks) = encoded();
    let mut total = 0;
    {
        let store = ChunkStore::open(dir.path()).expect("open");
        for i in 0..5u64 {
            total += store.write(ChunkId(i * 300), Version(i + 1), data.len() as u32, &blocks, false).expect("write");
        }
        total +=
            store.write(ChunkId(9), Version(1), 5, &BlockEncoder::new(0).encode_all(b"hello"), false).expect("write");
    }
    let store = ChunkStore::open(dir.path()).expect("reopen");
    assert_eq!(store.chunk_count(), 6);
    assert_eq!(store.used_bytes(), total);
    let mut inv = store.inventory().expect("inventory");
    inv.sort();
    assert_eq!(inv.len(), 6);
    assert_eq!(inv[0].0, ChunkId(0));
    assert_eq!(inv[5], (ChunkId(1200), Version(5), inv[5].2));
}

#[test]
fn leftover_temp_files_are_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, blocks) = encoded();
    let path = {
        let store = ChunkStore::open(dir.path()).expect("open");
        store.write(C, V, data.len() as u32, &blocks, false).expect("write");
        store.replica_path(C, V)
    };
    let stale = temp_path_for(&path);
    fs::write(&stale, b"half a replica").expect("write stale");
    let other = dir.path().join("chunks").join("ab").join("0000000000000000-0000000000000001.chunk.1234.tmp");
    fs::write(&other, b"x").expect("write stale");
    let store = ChunkStore::open(dir.path()).expect("reopen");
    assert!(!stale.exists());
    assert!(!other.exists());
    assert_eq!(files_under(dir.path()), vec![path]);
    assert_eq!(store.chunk_count(), 1);
}

#[test]
fn delete_frees_the_counters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    let (data, blocks) = encoded();
    let a = store.write(C, V, data.len() as u32, &blocks, false).expect("write");
    let b = store.write(C, Version(8), data.len() as u32, &blocks, false).expect("write");
    assert_eq!(store.used_bytes(), a + b);
    store.delete(C, V).expect("delete");
    assert_eq!(store.chunk_count(), 1);
    assert_eq!(store.used_bytes(), b);
    store.delete(C, V).expect("deleting again is fine");
    assert_eq!(store.chunk_count(), 1);
    assert!(matches!(store.read_blocks(C, V, 0, 1), Err(StoreError::NotFound { .. })));
    store.delete(C, Version(8)).expect("delete");
    assert_eq!((store.chunk_count(), store.used_bytes()), (0, 0));
    assert_eq!(store.inventory().expect("inventory"), vec![]);
}

#[test]
fn an_unusable_directory_fails_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    fs::write(&file, b"x").expect("write");
    let e = ChunkStore::open(&file).expect_err("must fail");
    assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
    assert_eq!(e.to_wire(), FsError::Internal);
}

#[test]
fn replica_names_parse() {
    assert_eq!(parse_replica_name("00000000000000ff-0000000000000002.chunk"), Some((ChunkId(255), Version(2))));
    assert_eq!(parse_replica_name("ff-2.chunk"), None);
    assert_eq!(parse_replica_name("00000000000000ff-0000000000000002.chunk.1.tmp"), None);
    assert_eq!(parse_replica_name("zzzzzzzzzzzzzzzz-0000000000000002.chunk"), None);
}

#[test]
fn sync_many_syncs_present_replicas_and_skips_deleted_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ChunkStore::open(dir.path()).expect("open");
    let (data, blocks) = encoded();
    let other = ChunkId(C.0 + 1);
    store.write(C, V, data.len() as u32, &blocks, false).expect("write");
    store.write(other, V, data.len() as u32, &blocks, false).expect("write");
    store.write(C, Version(V.0 + 1), data.len() as u32, &blocks, false).expect("write");
    store.delete(C, V).expect("delete");
    store.sync_many(&[(C, V), (other, V), (C, Version(V.0 + 1))]).expect("sync");
    assert_eq!(decode_all(&store.read_blocks(other, V, 0, 1024).expect("read")), data);
    assert!(matches!(store.read_blocks(C, V, 0, 1), Err(StoreError::NotFound { .. })));
}
