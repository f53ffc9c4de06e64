//! Micro-benchmarks of what verification costs next to hashing, on 256 MiB, at
//! 16 KiB chunk groups checked 256 KiB subtrees at a time, on one core and on all
//! cores; and store put/get.
//!
//! `cargo bench -p tessera-bench --bench verify` (add `-- --quick` for a fast pass).
//! After criterion's report it prints the ratios verified decode / raw hash
//! (target >= 0.95; the stream checked where it lies in memory, and read out
//! of a reader into the check buffer, which costs a copy that raw hashing of
//! bytes in memory does not) and outboard building while ingesting / raw hash
//! (>= 0.9).
//! `RATIOS_ONLY=1` prints the ratios alone, in a few seconds (`RATIO_ROUNDS=N`:
//! the best of N rounds each, default 5).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use dataplane::store::{Store, StoreConfig};
use dataplane::verified::{self, all_ranges, decode_stream, encode_to_vec, OutboardBuilder};

const SIZE: usize = 256 << 20;

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8)
        .collect()
}

fn outboard(d: &[u8]) -> verified::Outboard {
    let mut b = OutboardBuilder::new();
    b.update(d);
    b.finish()
}

fn decode(root: blake3::Hash, enc: &[u8]) -> u64 {
    decode_stream(root, enc, &all_ranges(), |_| Ok(())).unwrap_or(0)
}

/// The stream checked where it lies in memory (`decode_buffered` on `&[u8]`).
fn decode_in_place(root: blake3::Hash, enc: &[u8]) -> u64 {
    verified::decode_buffered(root, enc, &all_ranges(), |_| Ok(())).unwrap_or(0)
}

/// The check before subtrees, for comparison in the same run: every pair and
/// every 16 KiB group hashed alone, read from the stream into a group buffer.
fn group_by_group(root: blake3::Hash, enc: &[u8]) -> u64 {
    use bao_tree::iter::BaoChunk;
    let size = u64::from_le_bytes(enc[..8].try_into().unwrap_or([0; 8]));
    let tree = verified::tree(size);
    let mut v = verified::Verifier::new(root);
    let mut group = vec![0u8; verified::CHUNK_GROUP_BYTES];
    let mut pos = 8;
    for item in tree.ranges_pre_order_chunks_iter_ref(&all_ranges(), 0) {
        match item {
            BaoChunk::Parent {
                node,
                is_root,
                left,
                right,
                ..
            } => {
                let pair: [u8; 64] = enc[pos..pos + 64].try_into().unwrap_or([0; 64]);
                let (l, r) = verified::split_pair(&pair);
                if v.parent(node, is_root, left, right, (&l, &r)).is_err() {
                    return 0;
                }
                pos += 64;
            }
            BaoChunk::Leaf {
                start_chunk,
                size,
                is_root,
                ..
            } => {
                group[..size].copy_from_slice(&enc[pos..pos + size]);
                if v.group(start_chunk, &group[..size], is_root).is_err() {
                    return 0;
                }
                pos += size;
            }
        }
    }
    size
}

/// Runs `f` once on each of `threads` threads at the same time.
fn parallel(threads: usize, f: impl Fn() + Sync) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(&f);
        }
    });
}

fn hashing(c: &mut Criterion) {
    let d = data(SIZE);
    let ob = outboard(&d);
    let enc = encode_to_vec(&d, &ob.pre_order, &all_ranges());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut g = c.benchmark_group("verify-16KiB-groups");
    for threads in [1, cores] {
        g.throughput(Throughput::Bytes((SIZE * threads) as u64));
        g.bench_with_input(
            BenchmarkId::new("blake3::hash", threads),
            &threads,
            |b, &t| {
                b.iter(|| {
                    parallel(t, || {
                        black_box(blake3::hash(black_box(&d)));
                    })
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("outboard", threads), &threads, |b, &t| {
            b.iter(|| {
                parallel(t, || {
                    black_box(outboard(black_box(&d)));
                })
            })
        });
        g.bench_with_input(
            BenchmarkId::new("verified-decode", threads),
            &threads,
            |b, &t| {
                b.iter(|| {
                    parallel(t, || {
                        black_box(decode(ob.root, black_box(&enc)));
                    })
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("bao-tree-decode", threads),
            &threads,
            |b, &t| {
                let tree = bao_tree::BaoTree::new(SIZE as u64, verified::block_size());
                let all = all_ranges();
                b.iter(|| {
                    parallel(t, || {
                        let it = bao_tree::io::sync::DecodeResponseIter::new(
                            ob.root,
                            tree,
                            &enc[8..],
                            &all,
                        );
                        black_box(it.count());
                    })
                })
            },
        );
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let s = Arc::new(
        Store::open(dir.path(), StoreConfig::new(1 << 40)).unwrap_or_else(|e| panic!("store: {e}")),
    );
    let blob = data(1 << 20);
    let mut g = c.benchmark_group("store-1MiB");
    g.throughput(Throughput::Bytes(blob.len() as u64));
    let mut n = 0u64;
    g.bench_function("put (hash, outboard, fsync, commit)", |b| {
        b.iter(|| {
            let mut fresh = blob.clone();
            n += 1;
            fresh[..8].copy_from_slice(&n.to_le_bytes());
            black_box(
                s.put_reader(&fresh[..])
                    .unwrap_or_else(|e| panic!("put: {e}")),
            );
        })
    });
    let hash = s
        .put_reader(&blob[..])
        .unwrap_or_else(|e| panic!("put: {e}"))
        .hash;
    g.bench_function("get (read whole blob)", |b| {
        b.iter(|| black_box(s.read_all(&hash).unwrap_or_else(|e| panic!("get: {e}"))))
    });
    g.finish();
}

/// Best-of-3 throughput of `f` over `bytes`, in GiB/s.
fn gibps(bytes: usize, f: impl Fn()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    bytes as f64 / best.as_secs_f64() / (1u64 << 30) as f64
}

fn ratio_summary() {
    let d = data(SIZE);
    let ob = outboard(&d);
    let enc = encode_to_vec(&d, &ob.pre_order, &all_ranges());
    // Ingest: the outboard built as a body arrives, 64 KiB reads at a time.
    let ingest = || {
        let mut b = OutboardBuilder::new();
        for piece in d.chunks(64 << 10) {
            b.update(piece);
        }
        black_box(b.finish());
    };
    // What a receiver of unverified bytes pays: each byte read (copied) out
    // of a reader into a 256 KiB buffer, then hashed, as the decoder reads
    // the stream into its check buffer.
    let read_hash = || {
        let mut reader = &d[..];
        let mut buf = vec![0u8; 256 << 10];
        let mut hasher = blake3::Hasher::new();
        while let Ok(n @ 1..) = std::io::Read::read(&mut reader, &mut buf) {
            hasher.update(&buf[..n]);
        }
        black_box(hasher.finalize());
    };
    // Rounds alternate so that a noisy neighbour hits all alike; each figure
    // is the best of RATIO_ROUNDS (default 5).
    let rounds: usize = std::env::var("RATIO_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let (mut raw, mut out, mut dec, mut old, mut read) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let mut in_place = 0f64;
    for _ in 0..rounds {
        in_place = in_place.max(gibps(SIZE, || {
            black_box(decode_in_place(ob.root, &enc));
        }));
        read = read.max(gibps(SIZE, read_hash));
        old = old.max(gibps(SIZE, || {
            black_box(group_by_group(ob.root, &enc));
        }));
        raw = raw.max(gibps(SIZE, || {
            black_box(blake3::hash(&d));
        }));
        out = out.max(gibps(SIZE, ingest));
        dec = dec.max(gibps(SIZE, || {
            black_box(decode(ob.root, &enc));
        }));
    }
    println!(
        "one core, {} MiB: blake3::hash {raw:.2} GiB/s, ingest (outboard while reading) {out:.2} GiB/s, verified decode in memory {in_place:.2} GiB/s, from a reader {dec:.2} GiB/s",
        SIZE >> 20
    );
    println!(
        "ratio verified/raw = {:.3} (in memory, target >= 0.95); ingest/raw = {:.3} (target >= 0.9); from a reader/raw = {:.3}; group-by-group with a copy/raw = {:.3} ({old:.2} GiB/s)",
        in_place / raw,
        out / raw,
        dec / raw,
        old / raw
    );
    println!(
        "ratio from a reader/(read+hash) = {:.3} (read into a 256 KiB buffer, then hashed: {read:.2} GiB/s)",
        dec / read
    );
}

fn main() {
    // `RATIOS_ONLY=1`: skip criterion and print the ratios (the quick regression mode).
    if std::env::var_os("RATIOS_ONLY").is_some() {
        ratio_summary();
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    hashing(&mut c);
    store(&mut c);
    c.final_summary();
    ratio_summary();
}
