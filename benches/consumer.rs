//! Pull consumer throughput against a raw `read` loop over the same data, both engines:
//! 200,000 × 100-byte messages in 4 partitions; the raw loop reads 125 records from each
//! partition in turn (500 per iteration), the consumer polls with `max_poll_records` = 500 over
//! the same 4 partitions (fair shares, positions, `ConsumerRecord`s). The target: the
//! consumer at 80% of the raw loop or better.
//!
//! `consume-tagged/1in100`: 1,000,000 × 100-byte messages in one partition, 1 in 100 tagged
//! `TagA` and the rest `TagB`; one iteration consumes every `TagA` message from offset 0 to the
//! end, either with `read_tagged` (the CommitLog engine skips non-matching records by the tag
//! hash in the consume queue; the segmented engine checks headers) or with `read` and a filter
//! on `tags()` (default limits both).
//!
//! Run: `cargo bench --bench consumer`. Nothing here asserts a speed.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::TaggedRead;
use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
use duolog::{EngineKind, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};

const PARTITIONS: u32 = 4;
const PER_PARTITION: u64 = 50_000;

fn consumer_vs_raw(c: &mut Criterion) {
    let mut group = c.benchmark_group("consume/100B");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(500));
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let opts = StoreOptions {
            engine: Some(engine),
            ..StoreOptions::default()
        };
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), opts).expect("open"));
        store
            .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
            .expect("topic");
        let batch: Vec<Message> = (0..100).map(|_| Message::new(vec![b'c'; 100])).collect();
        for p in 0..PARTITIONS {
            for _ in 0..PER_PARTITION / 100 {
                store.append_oneway("t", p, &batch).expect("append");
            }
        }
        store.sync().expect("sync");

        let mut at = [0u64; PARTITIONS as usize];
        group.bench_function(BenchmarkId::new(engine.name(), "raw-read"), |b| {
            b.iter(|| {
                let mut n = 0;
                for p in 0..PARTITIONS {
                    let pos = &mut at[p as usize];
                    if *pos + 125 > PER_PARTITION {
                        *pos = 0;
                    }
                    let records = store
                        .read("t", p, *pos, ReadLimits::messages(125))
                        .expect("read");
                    for r in &records {
                        black_box(r.body().len());
                    }
                    *pos = records.last().map_or(*pos, |r| r.offset() + 1);
                    n += records.len();
                }
                n
            })
        });

        let groups = GroupCoordinator::new(Arc::clone(&store)).expect("coordinator");
        let consumer = Consumer::new(
            &groups,
            ConsumerConfig {
                auto_offset_reset: OffsetReset::Earliest,
                enable_auto_commit: false,
                ..ConsumerConfig::new("bench")
            },
        )
        .expect("consumer");
        let parts: Vec<(&str, u32)> = (0..PARTITIONS).map(|p| ("t", p)).collect();
        consumer.assign(&parts).expect("assign");
        group.bench_function(BenchmarkId::new(engine.name(), "pull-consumer"), |b| {
            b.iter(|| {
                let records = consumer.poll(Duration::ZERO).expect("poll");
                if records.len() < 500 {
                    for p in 0..PARTITIONS {
                        consumer.seek("t", p, 0).expect("seek");
                    }
                }
                for r in &records {
                    black_box(r.record().body().len());
                }
                records.len()
            })
        });
        drop(consumer);
        drop(groups);
    }
    group.finish();
}

const TAGGED_MESSAGES: u64 = 1_000_000;

fn tagged_vs_filtered_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("consume-tagged/1in100");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(TAGGED_MESSAGES));
    let wanted = vec!["TagA".to_string()];
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let opts = StoreOptions {
            engine: Some(engine),
            ..StoreOptions::default()
        };
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), opts).expect("open"));
        store
            .create_topic("t", TopicConfig::default())
            .expect("topic");
        let batch: Vec<Message> = (0..100)
            .map(|i| Message::new(vec![b'c'; 100]).with_tags(if i == 42 { "TagA" } else { "TagB" }))
            .collect();
        for _ in 0..TAGGED_MESSAGES / 100 {
            store.append_oneway("t", 0, &batch).expect("append");
        }
        store.sync().expect("sync");
        let expect = (TAGGED_MESSAGES / 100) as usize;

        group.bench_function(BenchmarkId::new(engine.name(), "read_tagged"), |b| {
            b.iter(|| {
                let (mut at, mut n) = (0u64, 0usize);
                while at < TAGGED_MESSAGES {
                    let TaggedRead {
                        records,
                        next_offset,
                    } = store
                        .read_tagged("t", 0, at, ReadLimits::default(), &wanted)
                        .expect("read_tagged");
                    for r in &records {
                        black_box(r.body().len());
                    }
                    n += records.len();
                    at = next_offset;
                }
                assert_eq!(n, expect);
                n
            })
        });

        group.bench_function(BenchmarkId::new(engine.name(), "read+filter"), |b| {
            b.iter(|| {
                let (mut at, mut n) = (0u64, 0usize);
                while at < TAGGED_MESSAGES {
                    let records = store.read("t", 0, at, ReadLimits::default()).expect("read");
                    for r in records.iter().filter(|r| r.tags() == Some("TagA")) {
                        black_box(r.body().len());
                        n += 1;
                    }
                    at = records.last().map_or(at, |r| r.offset() + 1);
                }
                assert_eq!(n, expect);
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, consumer_vs_raw, tagged_vs_filtered_read);
criterion_main!(benches);
