//! What transactions cost, both engines, default `StoreOptions`, 100-byte messages:
//! - `txn/append`: plain appends against idempotent appends (one message per call, the
//!   producer's sequence advancing), the idempotent producer's overhead;
//! - `txn/commit`: transactions of 10 and of 100 messages spread round-robin over 4 partitions
//!   through the transaction layer (`begin`, sends, `commit`: enrolment in the transaction log,
//!   a sync, the prepare record, the markers of all partitions written at once, the complete
//!   record), one message per `send` or one batch per partition in a single `send_all` (one
//!   enrolment record), against the same
//!   messages appended plainly in batches of the same shape and made durable with one `sync`;
//! - `txn/read`: reading 100,000 records back, 10% of them in aborted transactions, under
//!   `read_committed` against `read_uncommitted`.
//!
//! Run: `cargo bench --bench txn`. Nothing here asserts a speed.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
use duolog::{
    EngineKind, IsolationLevel, LogStore, Message, ProducerId, ReadLimits, StoreOptions,
    TopicConfig, TxnMarker,
};

const ENGINES: [EngineKind; 2] = [EngineKind::CommitLog, EngineKind::Segmented];

fn open(engine: EngineKind) -> (tempfile::TempDir, Arc<dyn LogStore>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let opts = StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    };
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), opts).expect("open"));
    (dir, store)
}

fn idempotent_overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("txn/append/100B");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    for engine in ENGINES {
        let (_dir, store) = open(engine);
        store
            .create_topic("t", TopicConfig::default())
            .expect("topic");
        let message = [Message::new(vec![b'm'; 100])];
        group.bench_function(BenchmarkId::new(engine.name(), "plain"), |b| {
            b.iter(|| store.append("t", 0, &message).expect("append"))
        });
        let producer = ProducerId {
            id: store.allocate_producer_id().expect("id"),
            epoch: 0,
        };
        let mut seq = 0i32;
        group.bench_function(BenchmarkId::new(engine.name(), "idempotent"), |b| {
            b.iter(|| {
                let r = store
                    .append_idempotent("t", 0, producer, seq, &message)
                    .expect("append");
                seq = if seq == i32::MAX { 0 } else { seq + 1 };
                r
            })
        });
        store.close().expect("close");
    }
    group.finish();
}

fn transactions(c: &mut Criterion) {
    const PARTITIONS: u32 = 4;
    let mut group = c.benchmark_group("txn/commit/100B");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for engine in ENGINES {
        let (_dir, store) = open(engine);
        store
            .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
            .expect("topic");
        let coordinator =
            TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())
                .expect("coordinator");
        let producer = coordinator
            .producer("bench", TxnProducerConfig::default())
            .expect("producer");
        let message = [Message::new(vec![b't'; 100])];
        for size in [10u64, 100] {
            group.throughput(Throughput::Elements(size));
            // One transaction of `size` messages, one per send, round-robin over the partitions.
            group.bench_function(
                BenchmarkId::new(engine.name(), format!("transaction-of-{size}")),
                |b| {
                    b.iter(|| {
                        producer.begin().expect("begin");
                        for i in 0..size {
                            producer
                                .send("t", i as u32 % PARTITIONS, &message)
                                .expect("send");
                        }
                        producer.commit().expect("commit");
                    })
                },
            );
            // The same transaction sent in one `send_all`: one batch per partition, all four
            // enrolled in one transaction log record.
            let batches: Vec<Vec<Message>> = (0..PARTITIONS)
                .map(|p| {
                    (0..size)
                        .filter(|i| *i as u32 % PARTITIONS == p)
                        .map(|_| message[0].clone())
                        .collect()
                })
                .collect();
            let all: Vec<(&str, u32, &[Message])> = (0..PARTITIONS)
                .map(|p| ("t", p, batches[p as usize].as_slice()))
                .collect();
            group.bench_function(
                BenchmarkId::new(engine.name(), format!("transaction-of-{size}-send-all")),
                |b| {
                    b.iter(|| {
                        producer.begin().expect("begin");
                        producer.send_all(&all).expect("send_all");
                        producer.commit().expect("commit");
                    })
                },
            );
            // The same messages appended plainly, made durable once: what the transaction adds.
            group.bench_function(
                BenchmarkId::new(engine.name(), format!("plain-{size}-then-sync")),
                |b| {
                    b.iter(|| {
                        for i in 0..size {
                            store
                                .append("t", i as u32 % PARTITIONS, &message)
                                .expect("append");
                        }
                        store.sync().expect("sync");
                    })
                },
            );
        }
        producer.close().expect("close producer");
        coordinator.close().expect("close coordinator");
        store.close().expect("close");
    }
    group.finish();
}

fn read_isolation(c: &mut Criterion) {
    const RECORDS: u64 = 100_000;
    let mut group = c.benchmark_group("txn/read/100B");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS));
    for engine in ENGINES {
        let (_dir, store) = open(engine);
        store
            .create_topic("t", TopicConfig::default())
            .expect("topic");
        let producer = ProducerId {
            id: store.allocate_producer_id().expect("id"),
            epoch: 0,
        };
        let batch: Vec<Message> = (0..10).map(|_| Message::new(vec![b'r'; 100])).collect();
        let mut seq = 0;
        // Transactions of 10 records; every tenth one aborted.
        for k in 0..RECORDS / 10 {
            store
                .append_transactional("t", 0, producer, seq, &batch)
                .expect("append");
            seq += 10;
            let marker = if k % 10 == 9 {
                TxnMarker::Abort
            } else {
                TxnMarker::Commit
            };
            store
                .write_marker("t", 0, producer, marker, 0)
                .expect("marker");
        }
        for isolation in [
            IsolationLevel::ReadUncommitted,
            IsolationLevel::ReadCommitted,
        ] {
            let name = match isolation {
                IsolationLevel::ReadUncommitted => "read_uncommitted",
                IsolationLevel::ReadCommitted => "read_committed",
            };
            let limits = ReadLimits::default().with_isolation(isolation);
            group.bench_function(BenchmarkId::new(engine.name(), name), |b| {
                b.iter(|| {
                    let end = store.bounds("t", 0).expect("bounds").end;
                    let (mut at, mut n) = (0, 0usize);
                    while at < end {
                        let f = store.fetch("t", 0, at, limits).expect("fetch");
                        n += f.records.len();
                        at = f.next_offset;
                    }
                    n
                })
            });
        }
        store.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, idempotent_overhead, transactions, read_isolation);
criterion_main!(benches);
