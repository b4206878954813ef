//! End-to-end latency append → push handler: one 100-byte message in flight at a time; the
//! time from just before `append` to the moment a `PushConsumer` worker's handler runs on it.
//! Both engines, default `StoreOptions` and `PushConfig` (20 workers, batch of 1), except that
//! the new group starts from the earliest offset: with the default `Latest`, a first append
//! that lands before the consumer has resolved its position is skipped, as in Kafka.
//! `DUOLOG_PUSH_MESSAGES` messages per sample set (default 20,000); criterion reports the mean
//! round, the bench prints p50/p99/p999 over every message.
//!
//! Run: `cargo bench --bench push`. Nothing here asserts a speed.

use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use duolog::consumer::{
    ConsumeResult, ConsumerRecord, GroupCoordinator, OffsetReset, PushConfig, PushConsumer,
};
use duolog::{EngineKind, LogStore, Message, StoreOptions, TopicConfig};

fn push_latency(c: &mut Criterion) {
    let total: u32 = std::env::var("DUOLOG_PUSH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut g = c.benchmark_group("push/append-to-handler");
    g.sample_size(10);
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let options = StoreOptions {
            engine: Some(engine),
            ..StoreOptions::default()
        };
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), options).expect("open"));
        store
            .create_topic("bench", TopicConfig::default())
            .expect("topic");
        let groups = GroupCoordinator::new(Arc::clone(&store)).expect("groups");
        let (tx, rx) = mpsc::channel::<Instant>();
        let tx = Mutex::new(tx);
        let handler = move |_: &[ConsumerRecord]| {
            let now = Instant::now();
            let _ = tx.lock().expect("sender").send(now);
            ConsumeResult::Success
        };
        // Earliest: the partition is empty, so the consumer starts at the first append whenever
        // it gets its position (with `Latest` an append before that is skipped).
        let mut config = PushConfig::new("bench");
        config.consumer.auto_offset_reset = OffsetReset::Earliest;
        let push =
            PushConsumer::start(&groups, config, &["bench"], Arc::new(handler)).expect("start");
        let m = [Message::new(vec![b'p'; 100])];
        // Until the consumer holds the partition, the first append is only delivered late.
        store.append("bench", 0, &m).expect("append");
        rx.recv_timeout(Duration::from_secs(30))
            .expect("first delivery");
        let mut all: Vec<Duration> = Vec::new();
        g.bench_function(BenchmarkId::new(engine.name(), total), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let mut sum = Duration::ZERO;
                    for _ in 0..total {
                        let sent = Instant::now();
                        store.append("bench", 0, &m).expect("append");
                        let handled = rx.recv_timeout(Duration::from_secs(30)).expect("handled");
                        let lat = handled.saturating_duration_since(sent);
                        sum += lat;
                        all.push(lat);
                    }
                    elapsed += sum / total;
                }
                elapsed
            })
        });
        push.shutdown().expect("shutdown");
        all.sort_unstable();
        let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
        eprintln!(
            "{engine}: append → push handler p50 {:?} p99 {:?} p999 {:?} over {} messages",
            p(0.5),
            p(0.99),
            p(0.999),
            all.len()
        );
    }
    g.finish();
}

criterion_group!(benches, push_latency);
criterion_main!(benches);
