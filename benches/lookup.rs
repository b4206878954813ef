//! Lookups on both engines, same data: 200,000 × 100-byte messages over 4 partitions with 20,000
//! distinct keys (10 records per key). `find_by_key` of a random key, and `offset_for_time` of a
//! random time inside the data.
//!
//! Run: `cargo bench --bench lookup`. Nothing here asserts a speed.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use duolog::{EngineKind, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};

const MESSAGES: usize = 200_000;
const KEYS: usize = 20_000;

fn filled(dir: &std::path::Path, engine: EngineKind) -> (Box<dyn LogStore>, i64, i64) {
    let s = duolog::open(
        dir,
        StoreOptions {
            engine: Some(engine),
            ..StoreOptions::default()
        },
    )
    .expect("open");
    s.create_topic("bench", TopicConfig::with_partitions(4))
        .expect("topic");
    let mut n = 0;
    while n < MESSAGES {
        let batch: Vec<Message> = (n..n + 100)
            .map(|i| Message::new(vec![b'l'; 100]).with_key(format!("key-{}", i % KEYS)))
            .collect();
        s.append_oneway("bench", (n / 100 % 4) as u32, &batch)
            .expect("append");
        n += 100;
        if n % 20_000 == 0 {
            // Spread store times so time lookups have something to search.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    s.sync().expect("sync");
    let first = s
        .read("bench", 0, 0, ReadLimits::messages(1))
        .expect("read")[0]
        .store_timestamp();
    let end = s.bounds("bench", 0).expect("bounds").end;
    let last = s
        .read("bench", 0, end - 1, ReadLimits::messages(1))
        .expect("read")[0]
        .store_timestamp();
    (s, first, last)
}

fn lookups(c: &mut Criterion) {
    let engines = [EngineKind::CommitLog, EngineKind::Segmented];
    let dirs: Vec<_> = engines
        .iter()
        .map(|_| tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir"))
        .collect();
    let stores: Vec<_> = engines
        .iter()
        .zip(&dirs)
        .map(|(e, d)| (*e, filled(d.path(), *e)))
        .collect();
    let mut g = c.benchmark_group("lookup/key");
    for (engine, (s, _, _)) in &stores {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        g.bench_function(BenchmarkId::new(engine.name(), "10-hits"), |b| {
            b.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("key-{}", x as usize % KEYS);
                s.find_by_key("bench", &key, (0, i64::MAX / 2), 100)
                    .expect("find")
                    .len()
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("lookup/time");
    for (engine, (s, first, last)) in &stores {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let span = (last - first).max(1) as u64;
        g.bench_function(BenchmarkId::new(engine.name(), "offset-for-time"), |b| {
            b.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.offset_for_time("bench", 0, first + (x % span) as i64)
                    .expect("time")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
