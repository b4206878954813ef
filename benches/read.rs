//! Read throughput of both engines on the same data: 200,000 × 100-byte messages in one
//! partition, read sequentially in fetches of 1,000, and single messages at random offsets.
//!
//! Run: `cargo bench --bench read`. Nothing here asserts a speed.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::{EngineKind, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};

const MESSAGES: u64 = 200_000;

fn filled(dir: &std::path::Path, engine: EngineKind) -> Box<dyn LogStore> {
    let s = duolog::open(
        dir,
        StoreOptions {
            engine: Some(engine),
            ..StoreOptions::default()
        },
    )
    .expect("open");
    s.create_topic("bench", TopicConfig::default())
        .expect("topic");
    let batch: Vec<Message> = (0..100)
        .map(|i| Message::new(vec![b'r'; 100]).with_key(format!("k{i}")))
        .collect();
    for _ in 0..MESSAGES / 100 {
        s.append_oneway("bench", 0, &batch).expect("append");
    }
    s.sync().expect("sync");
    s
}

fn reads(c: &mut Criterion) {
    let mut seq = c.benchmark_group("read/sequential/100B");
    let dirs: Vec<_> = [EngineKind::CommitLog, EngineKind::Segmented]
        .into_iter()
        .map(|e| {
            (
                e,
                tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir"),
            )
        })
        .collect();
    let stores: Vec<_> = dirs
        .iter()
        .map(|(e, d)| (*e, filled(d.path(), *e)))
        .collect();
    seq.throughput(Throughput::Elements(1000));
    for (engine, s) in &stores {
        let mut at = 0u64;
        seq.bench_function(BenchmarkId::new(engine.name(), "fetch-1000"), |b| {
            b.iter(|| {
                if at + 1000 > MESSAGES {
                    at = 0;
                }
                let r = s
                    .read("bench", 0, at, ReadLimits::messages(1000))
                    .expect("read");
                at += r.len() as u64;
                r.len()
            })
        });
    }
    seq.finish();
    let mut random = c.benchmark_group("read/random/100B");
    random.throughput(Throughput::Elements(1));
    for (engine, s) in &stores {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        random.bench_function(BenchmarkId::new(engine.name(), "single"), |b| {
            b.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.read("bench", 0, x % MESSAGES, ReadLimits::messages(1))
                    .expect("read")
                    .len()
            })
        });
    }
    random.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
