//! Orderly consumption (`OrderlyConsumer`, default options): throughput on 1 partition and on 8
//! partitions (records pre-produced, time from start until every record was handled), and the
//! lock hand-over time on rebalance (from a second member joining until it handles its first
//! record of a partition moved to it: the old owner finishes its call, commits, releases the
//! lease, the new one acquires it and reads the committed offset). Both engines.
//! `DUOLOG_ORDER_MESSAGES` records per throughput run (default 20,000).
//!
//! Run: `cargo bench --bench order`. Nothing here asserts a speed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::consumer::{ConsumerRecord, GroupCoordinator, OffsetReset};
use duolog::order::{ConsumeOrderlyStatus, OrderlyConfig, OrderlyConsumer, OrderlyContext};
use duolog::{EngineKind, LogStore, Message, StoreOptions, TopicConfig};

fn open(engine: EngineKind, dir: &std::path::Path) -> Arc<dyn LogStore> {
    let options = StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    };
    Arc::from(duolog::open(dir, options).expect("open"))
}

fn config(group: &str) -> OrderlyConfig {
    let mut c = OrderlyConfig::new(group);
    c.consumer.auto_offset_reset = OffsetReset::Earliest;
    c
}

fn throughput(c: &mut Criterion) {
    let total: u64 = std::env::var("DUOLOG_ORDER_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut g = c.benchmark_group("order/orderly-throughput");
    g.sample_size(10);
    g.throughput(Throughput::Elements(total));
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        for partitions in [1u32, 8] {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            let store = open(engine, dir.path());
            store
                .create_topic("bench", TopicConfig::with_partitions(partitions))
                .expect("topic");
            let per = total / u64::from(partitions);
            let batch: Vec<Message> = (0..100).map(|_| Message::new(vec![b'o'; 100])).collect();
            for p in 0..partitions {
                for _ in 0..per.div_ceil(100) {
                    store.append("bench", p, &batch).expect("append");
                }
            }
            let groups = GroupCoordinator::new(Arc::clone(&store)).expect("groups");
            let mut run = 0u64;
            let id = BenchmarkId::new(engine.name(), format!("{partitions}-partitions"));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        // A fresh group each time: it reads everything from the start.
                        run += 1;
                        let count = Arc::new(AtomicU64::new(0));
                        let n = Arc::clone(&count);
                        let start = Instant::now();
                        let consumer = OrderlyConsumer::start(
                            &groups,
                            config(&format!("g{run}")),
                            &["bench"],
                            move |_: &ConsumerRecord, _: &OrderlyContext| {
                                n.fetch_add(1, Ordering::Relaxed);
                                ConsumeOrderlyStatus::Success
                            },
                        )
                        .expect("start");
                        let want = per.div_ceil(100) * 100 * u64::from(partitions);
                        while count.load(Ordering::Relaxed) < want {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        elapsed += start.elapsed();
                        consumer.close().expect("close");
                    }
                    elapsed
                })
            });
        }
    }
    g.finish();
}

fn handover(c: &mut Criterion) {
    let mut g = c.benchmark_group("order/lock-handover");
    g.sample_size(10);
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let store = open(engine, dir.path());
        store
            .create_topic("bench", TopicConfig::with_partitions(2))
            .expect("topic");
        let groups = GroupCoordinator::new(Arc::clone(&store)).expect("groups");
        let m = [Message::new(vec![b'h'; 100])];
        let mut run = 0u64;
        g.bench_function(BenchmarkId::new(engine.name(), "join"), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    run += 1;
                    let group = format!("h{run}");
                    let first = OrderlyConsumer::start(
                        &groups,
                        config(&group),
                        &["bench"],
                        |_: &ConsumerRecord, _: &OrderlyContext| ConsumeOrderlyStatus::Success,
                    )
                    .expect("first");
                    while first.leased().len() < 2 {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    let (tx, rx) = mpsc::sync_channel::<Instant>(1024);
                    let joined = Instant::now();
                    let second = OrderlyConsumer::start(
                        &groups,
                        config(&group),
                        &["bench"],
                        move |_: &ConsumerRecord, _: &OrderlyContext| {
                            let _ = tx.try_send(Instant::now());
                            ConsumeOrderlyStatus::Success
                        },
                    )
                    .expect("second");
                    // A record on each partition, again until the moved one reaches the second.
                    let handled = loop {
                        for p in 0..2 {
                            store.append("bench", p, &m).expect("append");
                        }
                        if let Ok(at) = rx.recv_timeout(Duration::from_millis(1)) {
                            break at;
                        }
                    };
                    elapsed += handled.saturating_duration_since(joined);
                    second.close().expect("close");
                    first.close().expect("close");
                }
                elapsed
            })
        });
    }
    g.finish();
}

criterion_group!(benches, throughput, handover);
criterion_main!(benches);
