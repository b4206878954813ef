//! Read throughput, every peer on the same data: 200,000 × 100-byte messages in one partition,
//! read sequentially from the start in fetches of 1,000, single messages at random offsets, and
//! tail reads (append a batch of 16, then read those 16 back: only the read is timed). Every
//! peer checks each message's CRC as it reads.
//!
//! Run: `cargo bench --bench read`. Nothing here asserts a speed.

#[path = "common/peers.rs"]
mod peers;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::Message;

const MESSAGES: u64 = 200_000;

fn consume(body: &[u8]) {
    black_box(body.len());
}

fn reads(c: &mut Criterion) {
    let filled: Vec<_> = peers::PEERS
        .iter()
        .map(|&name| {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            let peer = peers::open(name, dir.path(), 1);
            let batch: Vec<Message> = (0..100).map(|_| Message::new(vec![b'r'; 100])).collect();
            for _ in 0..MESSAGES / 100 {
                peer.append(0, &batch);
            }
            peer.sync();
            peer.publish();
            (name, dir, peer)
        })
        .collect();

    let mut seq = c.benchmark_group("read/sequential/100B");
    seq.warm_up_time(Duration::from_secs(1));
    seq.measurement_time(Duration::from_secs(3));
    seq.throughput(Throughput::Elements(1000));
    for (name, _, peer) in &filled {
        let mut at = 0u64;
        seq.bench_function(BenchmarkId::new(*name, "fetch-1000"), |b| {
            b.iter(|| {
                if at + 1000 > MESSAGES {
                    at = 0;
                }
                let n = peer.read(0, at, 1000, &mut consume);
                at += n as u64;
                n
            })
        });
    }
    seq.finish();

    let mut random = c.benchmark_group("read/random/100B");
    random.warm_up_time(Duration::from_secs(1));
    random.measurement_time(Duration::from_secs(3));
    random.throughput(Throughput::Elements(1));
    for (name, _, peer) in &filled {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        random.bench_function(BenchmarkId::new(*name, "single"), |b| {
            b.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                peer.read(0, x % MESSAGES, 1, &mut consume)
            })
        });
    }
    random.finish();

    let mut tail = c.benchmark_group("read/tail/100B");
    tail.warm_up_time(Duration::from_secs(1));
    tail.measurement_time(Duration::from_secs(3));
    tail.throughput(Throughput::Elements(16));
    let batch: Vec<Message> = (0..16).map(|_| Message::new(vec![b't'; 100])).collect();
    for (name, _, peer) in &filled {
        let mut end = MESSAGES;
        tail.bench_function(BenchmarkId::new(*name, "batch-16"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    peer.append(0, &batch);
                    peer.publish();
                    let start = Instant::now();
                    let n = peer.read(0, end, 16, &mut consume);
                    spent += start.elapsed();
                    assert_eq!(n, 16, "{name}: tail read returned {n} of 16");
                    end += 16;
                }
                spent
            })
        });
    }
    tail.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
