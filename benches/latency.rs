//! End-to-end latency: append a message, and a consumer thread blocked in `wait_for` wakes up.
//! One message in flight at a time, 100,000 messages per engine (`DUOLOG_LATENCY_MESSAGES`
//! changes it); criterion reports the mean round, the bench prints p50/p99/p999.
//!
//! Run: `cargo bench --bench latency`. Nothing here asserts a speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use duolog::{EngineKind, LogStore, Message, StoreOptions, TopicConfig};

fn latency(c: &mut Criterion) {
    let total: u64 = std::env::var("DUOLOG_LATENCY_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut g = c.benchmark_group("latency/append-to-wakeup");
    g.sample_size(10);
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let store: Arc<dyn LogStore> = Arc::from(
            duolog::open(
                dir.path(),
                StoreOptions {
                    engine: Some(engine),
                    ..StoreOptions::default()
                },
            )
            .expect("open"),
        );
        store
            .create_topic("bench", TopicConfig::default())
            .expect("topic");
        let mut all: Vec<Duration> = Vec::new();
        g.bench_function(BenchmarkId::new(engine.name(), total), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let start = store.bounds("bench", 0).expect("bounds").end;
                    let epoch = Instant::now();
                    let sent = Arc::new(AtomicU64::new(0));
                    let woke = Arc::new(AtomicU64::new(u64::MAX));
                    let consumer = {
                        let (s, sent, woke) =
                            (Arc::clone(&store), Arc::clone(&sent), Arc::clone(&woke));
                        std::thread::spawn(move || {
                            let mut lat = Vec::with_capacity(total as usize);
                            for i in 0..total {
                                while !s
                                    .wait_for("bench", 0, start + i, Duration::from_secs(5))
                                    .expect("wait")
                                {}
                                let now = epoch.elapsed().as_nanos() as u64;
                                lat.push(Duration::from_nanos(
                                    now.saturating_sub(sent.load(Ordering::Acquire)),
                                ));
                                woke.store(i, Ordering::Release);
                            }
                            lat
                        })
                    };
                    let m = [Message::new(vec![b'l'; 100])];
                    let t = Instant::now();
                    for i in 0..total {
                        sent.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
                        store.append_oneway("bench", 0, &m).expect("append");
                        // One in flight: wait until the consumer has seen this one.
                        while woke.load(Ordering::Acquire) != i {
                            std::hint::spin_loop();
                        }
                    }
                    elapsed += t.elapsed() / total as u32;
                    all.extend(consumer.join().expect("consumer"));
                }
                elapsed
            })
        });
        all.sort_unstable();
        let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        println!(
            "{engine}: append → wake-up p50 {:?} p99 {:?} p999 {:?} over {} messages",
            p(0.5),
            p(0.99),
            p(0.999),
            all.len()
        );
    }
    g.finish();
}

criterion_group!(benches, latency);
criterion_main!(benches);
