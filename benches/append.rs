//! Append throughput of both engines on the same workload: 100-byte messages under async flush
//! (1 thread, batches of 1 and 16) and under sync flush with group commit (1 and 16 threads).
//!
//! Run: `cargo bench --bench append`. Figures go to BENCHMARKS.md; nothing here asserts a speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::{
    CommitLogOptions, EngineKind, FlushPolicy, LogStore, Message, SegmentedOptions, StoreOptions,
    TopicConfig,
};

const ENGINES: [EngineKind; 2] = [EngineKind::CommitLog, EngineKind::Segmented];

fn store(dir: &std::path::Path, engine: EngineKind, flush: FlushPolicy) -> Arc<dyn LogStore> {
    let options = StoreOptions {
        engine: Some(engine),
        flush,
        commitlog: CommitLogOptions {
            file_size: 256 << 20,
            retention: None,
            ..CommitLogOptions::default()
        },
        segmented: SegmentedOptions {
            segment_bytes: 256 << 20,
            retention: None,
            ..SegmentedOptions::default()
        },
        ..StoreOptions::default()
    };
    let s = duolog::open(dir, options).expect("open");
    s.create_topic("bench", TopicConfig::with_partitions(16))
        .expect("topic");
    Arc::from(s)
}

fn message() -> Message {
    Message::new(vec![b'm'; 100])
}

fn async_flush(c: &mut Criterion) {
    let mut g = c.benchmark_group("append/async/100B");
    for engine in ENGINES {
        for batch in [1usize, 16] {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            let s = store(dir.path(), engine, FlushPolicy::default());
            let msgs: Vec<Message> = (0..batch).map(|_| message()).collect();
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("{engine}/batch"), batch),
                &batch,
                |b, _| b.iter(|| s.append("bench", 0, &msgs).expect("append")),
            );
        }
    }
    g.finish();
}

fn sync_flush(c: &mut Criterion) {
    let mut g = c.benchmark_group("append/sync/100B");
    g.measurement_time(Duration::from_secs(10));
    for engine in ENGINES {
        for threads in [1usize, 16] {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            let s = store(dir.path(), engine, FlushPolicy::Sync);
            g.throughput(Throughput::Elements(1));
            g.bench_with_input(
                BenchmarkId::new(format!("{engine}/threads"), threads),
                &threads,
                |b, &threads| {
                    b.iter_custom(|iters| {
                        // `iters` appends in total, spread over the threads; wall time, so the rate
                        // is the aggregate one.
                        let per = iters.div_ceil(threads as u64);
                        let start = Instant::now();
                        std::thread::scope(|scope| {
                            for t in 0..threads {
                                let s = Arc::clone(&s);
                                scope.spawn(move || {
                                    let m = [message()];
                                    for _ in 0..per {
                                        s.append("bench", t as u32 % 16, &m).expect("append");
                                    }
                                });
                            }
                        });
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per * threads as u64) as f64)
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, async_flush, sync_flush);
criterion_main!(benches);
