//! The log cleaner: one `compact()` of a partition holding 200,000 updates of 100-byte values
//! over 10,000 keys (a `compact` topic with `segment.bytes` = 1 MiB so nearly all of it is
//! cleanable), default store options otherwise. Throughput is the partition's stored bytes
//! before the pass per second. Appends during a clean and the cleaner's memory at 10,000,000
//! keys are measured by `examples/compaction.rs`.
//!
//! Run: `cargo bench --bench compaction`. Nothing here asserts a speed.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::{CleanupPolicy, EngineKind, LogStore, Message, StoreOptions, TopicConfig};

const UPDATES: usize = 200_000;
const KEYS: usize = 10_000;

fn options(engine: EngineKind) -> StoreOptions {
    StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    }
}

/// A fresh store with the updates written; returns it and the partition's bytes.
fn filled(engine: EngineKind, dir: &std::path::Path) -> (Box<dyn LogStore>, u64) {
    let s = duolog::open(dir, options(engine)).expect("open");
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: Some(1 << 20),
        ..TopicConfig::default()
    };
    s.create_topic("kv", config).expect("topic");
    let mut batch = Vec::with_capacity(100);
    for i in 0..UPDATES {
        batch.push(Message::new(vec![b'v'; 100]).with_key(format!("key-{:06}", i % KEYS)));
        if batch.len() == 100 {
            s.append_oneway("kv", 0, &batch).expect("append");
            batch.clear();
        }
    }
    let bytes = s.partition_bytes("kv", 0).expect("bytes");
    (s, bytes)
}

fn compaction(c: &mut Criterion) {
    let mut g = c.benchmark_group("compaction/clean");
    g.sample_size(10);
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let bytes = {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            filled(engine, dir.path()).1
        };
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(
            BenchmarkId::new(engine.name(), format!("{UPDATES}x100B/{KEYS}keys")),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir =
                            tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
                        let (s, _) = filled(engine, dir.path());
                        let t = Instant::now();
                        let r = s.compact(Some("kv")).expect("compact");
                        total += t.elapsed();
                        assert!(r.partitions_cleaned <= 1);
                        s.close().expect("close");
                    }
                    total
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, compaction);
criterion_main!(benches);
