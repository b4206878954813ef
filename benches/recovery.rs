//! Open time after an unclean shutdown: a store of 10 MiB or 100 MiB of log (1 GiB too with
//! `DUOLOG_RECOVERY_1GIB=1`) gets a small unflushed tail (100 messages), is abandoned as a crash
//! would leave it, and is opened again — that open is what is timed. It should not grow with the
//! size of the log.
//!
//! Run: `cargo bench --bench recovery`. Nothing here asserts a speed.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use duolog::{EngineKind, Message, StoreOptions, TopicConfig};

fn options(engine: EngineKind) -> StoreOptions {
    StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    }
}

fn recovery(c: &mut Criterion) {
    let mut sizes: Vec<u64> = vec![10 << 20, 100 << 20];
    if std::env::var_os("DUOLOG_RECOVERY_1GIB").is_some() {
        sizes.push(1 << 30);
    }
    let mut g = c.benchmark_group("recovery/unclean-open");
    g.sample_size(10);
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        for &bytes in &sizes {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            {
                let s = duolog::open(dir.path(), options(engine)).expect("open");
                s.create_topic("bench", TopicConfig::with_partitions(4))
                    .expect("topic");
                let batch: Vec<Message> =
                    (0..100).map(|_| Message::new(vec![b'r'; 1000])).collect();
                let mut written = 0u64;
                let mut p = 0;
                while written < bytes {
                    s.append_oneway("bench", p, &batch).expect("append");
                    written += 100 * 1000;
                    p = (p + 1) % 4;
                }
                s.close().expect("close");
            }
            let tail: Vec<Message> = (0..100).map(|_| Message::new(vec![b't'; 100])).collect();
            g.bench_function(
                BenchmarkId::new(engine.name(), format!("{}MiB", bytes >> 20)),
                |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            {
                                let s = duolog::open(dir.path(), options(engine)).expect("open");
                                s.append_oneway("bench", 0, &tail).expect("tail");
                                s.abandon();
                            }
                            let t = Instant::now();
                            let s = duolog::open(dir.path(), options(engine)).expect("recover");
                            total += t.elapsed();
                            s.close().expect("close");
                        }
                        total
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, recovery);
criterion_main!(benches);
