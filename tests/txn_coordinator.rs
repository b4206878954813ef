//! The Kafka transaction layer (issue 14, item 2) on both engines: atomic commits across
//! partitions and topics, aborts, fencing of an older instance of a transactional id, the
//! transaction timeout (Kafka's stuck-LSO complaint), recovery of what a crash left in
//! progress, transactional offsets, and clear errors for misuse.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duolog::consumer::GroupCoordinator;
use duolog::txn::{
    TXN_LOG_PARTITIONS, TXN_LOG_TOPIC, TransactionCoordinator, TxnCoordinatorConfig, TxnLogEntry,
    TxnProducerConfig, TxnState,
};
use duolog::{
    EngineKind, Error, IsolationLevel, LogStore, Message, ProducerId, ReadLimits, TopicConfig,
};

/// Bodies a reader at `isolation` sees in a partition, fetched from the start with each
/// fetch's `next_offset`.
fn visible(store: &dyn LogStore, topic: &str, p: u32, isolation: IsolationLevel) -> Vec<String> {
    let b = store.bounds(topic, p).unwrap();
    let bound = match isolation {
        IsolationLevel::ReadCommitted => b.last_stable,
        IsolationLevel::ReadUncommitted => b.end,
    };
    let mut at = b.start;
    let mut out = Vec::new();
    while at < bound {
        let f = store
            .fetch(
                topic,
                p,
                at,
                ReadLimits::messages(100).with_isolation(isolation),
            )
            .unwrap();
        assert!(f.next_offset > at, "fetch at {at} below {bound} stalled");
        out.extend(
            f.records
                .iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
        at = f.next_offset;
    }
    out
}

fn rc(store: &dyn LogStore, topic: &str, p: u32) -> Vec<String> {
    visible(store, topic, p, IsolationLevel::ReadCommitted)
}

fn ru(store: &dyn LogStore, topic: &str, p: u32) -> Vec<String> {
    visible(store, topic, p, IsolationLevel::ReadUncommitted)
}

fn msgs(tag: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::new(format!("{tag}-{i}"))).collect()
}

fn open(engine: EngineKind, dir: &Path) -> Arc<dyn LogStore> {
    Arc::from(common::open(dir, &common::small_options(engine)))
}

fn setup(engine: EngineKind, dir: &Path) -> Arc<dyn LogStore> {
    let store = open(engine, dir);
    store
        .create_topic("a", TopicConfig::with_partitions(2))
        .unwrap();
    store.create_topic("b", TopicConfig::default()).unwrap();
    store
}

fn coordinator(store: &Arc<dyn LogStore>) -> TransactionCoordinator {
    TransactionCoordinator::open(Arc::clone(store), TxnCoordinatorConfig::default()).unwrap()
}

#[test]
fn a_commit_shows_every_partition_and_topic_at_once() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let txns = coordinator(&store);
        let p = txns.producer("t1", TxnProducerConfig::default()).unwrap();
        store.append("a", 0, &msgs("plain", 1)).unwrap();
        p.begin().unwrap();
        p.send("a", 0, &msgs("a0", 2)).unwrap();
        p.send("a", 1, &msgs("a1", 1)).unwrap();
        p.send("b", 0, &msgs("b0", 3)).unwrap();
        p.send("a", 0, &msgs("a0-more", 1)).unwrap();
        // Open: read_committed sees nothing of it, read_uncommitted everything.
        assert_eq!(rc(store.as_ref(), "a", 0), ["plain-0"]);
        assert!(rc(store.as_ref(), "a", 1).is_empty());
        assert!(rc(store.as_ref(), "b", 0).is_empty());
        assert_eq!(ru(store.as_ref(), "b", 0).len(), 3);
        assert_eq!(store.bounds("a", 0).unwrap().last_stable, 1);
        assert_eq!(txns.describe("t1").unwrap().state, TxnState::Ongoing);
        p.commit().unwrap();
        assert_eq!(
            rc(store.as_ref(), "a", 0),
            ["plain-0", "a0-0", "a0-1", "a0-more-0"]
        );
        assert_eq!(rc(store.as_ref(), "a", 1), ["a1-0"]);
        assert_eq!(rc(store.as_ref(), "b", 0), ["b0-0", "b0-1", "b0-2"]);
        for (t, part) in [("a", 0), ("a", 1), ("b", 0)] {
            let b = store.bounds(t, part).unwrap();
            assert_eq!(b.last_stable, b.end, "{t}-{part}: the LSO is released");
        }
        let entry = txns.describe("t1").unwrap();
        assert_eq!(entry.state, TxnState::CompleteCommit);
        assert_eq!(entry.partitions.len(), 3);
        // The next transaction of the same producer goes on with its sequences.
        p.begin().unwrap();
        p.send("a", 0, &msgs("second", 1)).unwrap();
        p.commit().unwrap();
        assert_eq!(rc(store.as_ref(), "a", 0).last().unwrap(), "second-0");
    });
}

#[test]
fn an_abort_hides_the_records_and_releases_the_last_stable_offset() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let txns = coordinator(&store);
        let p = txns.producer("t1", TxnProducerConfig::default()).unwrap();
        p.begin().unwrap();
        p.send("a", 0, &msgs("gone", 2)).unwrap();
        p.send("b", 0, &msgs("gone", 1)).unwrap();
        p.abort().unwrap();
        store.append("a", 0, &msgs("after", 1)).unwrap();
        assert_eq!(rc(store.as_ref(), "a", 0), ["after-0"]);
        assert!(rc(store.as_ref(), "b", 0).is_empty());
        assert_eq!(ru(store.as_ref(), "a", 0), ["gone-0", "gone-1", "after-0"]);
        let b = store.bounds("b", 0).unwrap();
        assert_eq!(b.last_stable, b.end);
        assert_eq!(txns.describe("t1").unwrap().state, TxnState::CompleteAbort);
        // Begin then abort with nothing sent is fine and writes nothing.
        let end = store.bounds("a", 1).unwrap().end;
        p.begin().unwrap();
        p.abort().unwrap();
        assert_eq!(store.bounds("a", 1).unwrap().end, end);
    });
}

#[test]
fn a_new_instance_fences_the_old_one_and_aborts_what_it_left_open() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let txns = coordinator(&store);
        let old = txns.producer("app", TxnProducerConfig::default()).unwrap();
        old.begin().unwrap();
        old.send("a", 0, &msgs("old", 2)).unwrap();
        let new = txns.producer("app", TxnProducerConfig::default()).unwrap();
        assert_eq!(new.producer_id().id, old.producer_id().id);
        assert!(new.producer_id().epoch > old.producer_id().epoch);
        // The old transaction was aborted: nothing of it shows, and the LSO moved on.
        assert!(rc(store.as_ref(), "a", 0).is_empty());
        let b = store.bounds("a", 0).unwrap();
        assert_eq!(b.last_stable, b.end);
        // The old instance is fenced: on a partition it had, on a new one, and at commit.
        assert!(matches!(
            old.send("a", 0, &msgs("late", 1)),
            Err(Error::ProducerFenced { .. })
        ));
        assert!(matches!(old.commit(), Err(Error::ProducerFenced { .. })));
        assert!(matches!(old.begin(), Err(Error::ProducerFenced { .. })));
        // The new one works, on the same partition (its sequences start again at 0).
        new.begin().unwrap();
        new.send("a", 0, &msgs("new", 1)).unwrap();
        new.commit().unwrap();
        assert_eq!(rc(store.as_ref(), "a", 0), ["new-0"]);
        // An older instance that was idle is fenced at its next transaction too.
        let newest = txns.producer("app", TxnProducerConfig::default()).unwrap();
        new.begin().unwrap();
        assert!(matches!(
            new.send("b", 0, &msgs("x", 1)),
            Err(Error::ProducerFenced { .. })
        ));
        newest.begin().unwrap();
        newest.send("b", 0, &msgs("y", 1)).unwrap();
        newest.commit().unwrap();
        assert_eq!(rc(store.as_ref(), "b", 0), ["y-0"]);
    });
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let config = TxnCoordinatorConfig {
            abort_timed_out_interval: Duration::from_millis(20),
            ..TxnCoordinatorConfig::default()
        };
        let txns = TransactionCoordinator::open(Arc::clone(&store), config).unwrap();
        let p = txns
            .producer(
                "slow",
                TxnProducerConfig {
                    transaction_timeout: Duration::from_millis(100),
                    ..TxnProducerConfig::default()
                },
            )
            .unwrap();
        p.begin().unwrap();
        p.send("a", 0, &msgs("slow", 1)).unwrap();
        store.append("a", 0, &msgs("plain", 1)).unwrap();
        assert_eq!(store.bounds("a", 0).unwrap().last_stable, 0, "held");
        // The background thread aborts it: the LSO never sticks.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let b = store.bounds("a", 0).unwrap();
            if b.last_stable == b.end {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the LSO stuck: {b:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(rc(store.as_ref(), "a", 0), ["plain-0"]);
        assert_eq!(
            txns.describe("slow").unwrap().state,
            TxnState::CompleteAbort
        );
        assert!(txns.describe("slow").unwrap().epoch > p.producer_id().epoch);
        assert!(matches!(
            p.send("a", 0, &msgs("late", 1)),
            Err(Error::ProducerFenced { .. })
        ));
        assert!(matches!(p.commit(), Err(Error::ProducerFenced { .. })));
        // A new instance of the id carries on.
        let again = txns.producer("slow", TxnProducerConfig::default()).unwrap();
        again.begin().unwrap();
        again.send("a", 0, &msgs("again", 1)).unwrap();
        again.commit().unwrap();
        assert_eq!(rc(store.as_ref(), "a", 0), ["plain-0", "again-0"]);
    });
}

#[test]
fn misuse_is_a_clear_error() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let txns = coordinator(&store);
        let p = txns.producer("p", TxnProducerConfig::default()).unwrap();
        let invalid = |r: duolog::Result<()>| matches!(r, Err(Error::InvalidTxnState { .. }));
        assert!(invalid(p.send("a", 0, &msgs("x", 1)).map(|_| ())));
        assert!(invalid(p.send_offsets("g", &[("a", 0, 1)])));
        assert!(invalid(p.commit()));
        assert!(invalid(p.abort()));
        p.begin().unwrap();
        assert!(invalid(p.begin()));
        assert!(matches!(
            p.send("nope", 0, &msgs("x", 1)),
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            p.send("a", 9, &msgs("x", 1)),
            Err(Error::UnknownPartition { .. })
        ));
        assert!(matches!(
            p.send("a", 0, &[]),
            Err(Error::InvalidArgument(_))
        ));
        // None of those spoiled the transaction.
        p.send("a", 0, &msgs("ok", 1)).unwrap();
        p.commit().unwrap();
        assert_eq!(rc(store.as_ref(), "a", 0), ["ok-0"]);
        for timeout in [Duration::ZERO, Duration::from_secs(16 * 60), Duration::MAX] {
            let config = TxnProducerConfig {
                transaction_timeout: timeout,
                ..TxnProducerConfig::default()
            };
            assert!(
                matches!(txns.producer("q", config), Err(Error::InvalidArgument(_))),
                "{timeout:?}"
            );
        }
        for id in [String::new(), "x".repeat(256)] {
            assert!(matches!(
                txns.producer(&id, TxnProducerConfig::default()),
                Err(Error::InvalidArgument(_))
            ));
        }
        // One coordinator per store.
        assert!(matches!(
            TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default()),
            Err(Error::InvalidArgument(_))
        ));
        let zero = TxnCoordinatorConfig {
            abort_timed_out_interval: Duration::ZERO,
            ..TxnCoordinatorConfig::default()
        };
        assert!(matches!(
            TransactionCoordinator::open(Arc::clone(&store), zero),
            Err(Error::InvalidArgument(_))
        ));
        // While a producer of it lives, the coordinator's state does: no second one yet.
        drop(txns);
        assert!(matches!(
            TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default()),
            Err(Error::InvalidArgument(_))
        ));
        // Dropped with its producers, the coordinator frees the store for another.
        drop(p);
        coordinator(&store).close().unwrap();
        // Huge settings saturate instead of overflowing.
        let huge = TxnCoordinatorConfig {
            transaction_max_timeout: Duration::MAX,
            transactional_id_expiration: Duration::MAX,
            abort_timed_out_interval: Duration::MAX,
            ..TxnCoordinatorConfig::default()
        };
        let txns = TransactionCoordinator::open(Arc::clone(&store), huge).unwrap();
        let long = TxnProducerConfig {
            transaction_timeout: Duration::from_secs(3600),
            ..TxnProducerConfig::default()
        };
        let p = txns.producer("p", long).unwrap();
        let too_long = TxnProducerConfig {
            transaction_timeout: Duration::MAX,
            ..TxnProducerConfig::default()
        };
        assert!(matches!(
            txns.producer("p", too_long),
            Err(Error::InvalidArgument(_))
        ));
        txns.check_timeouts().unwrap();
        p.begin().unwrap();
        p.send("b", 0, &msgs("late", 1)).unwrap();
        p.commit().unwrap();
        txns.close().unwrap();
    });
}

/// A crash (the process dies: `abandon`) with a transaction open: the next open of the
/// coordinator aborts it, and a committed one before it is still there.
#[test]
fn a_crash_aborts_the_open_transaction_and_keeps_the_committed_one() {
    common::for_each_engine(|engine, dir| {
        {
            let store = setup(engine, dir);
            let txns = coordinator(&store);
            let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
            p.begin().unwrap();
            p.send("a", 0, &msgs("kept", 2)).unwrap();
            p.send("b", 0, &msgs("kept", 1)).unwrap();
            p.commit().unwrap();
            p.begin().unwrap();
            p.send("a", 0, &msgs("lost", 1)).unwrap();
            p.send("a", 1, &msgs("lost", 1)).unwrap();
            store.sync().unwrap();
            txns.close().unwrap();
            store.abandon();
        }
        let store = open(engine, dir);
        // Before the coordinator runs, the open transaction holds the LSO.
        assert_eq!(store.bounds("a", 1).unwrap().last_stable, 0);
        let txns = coordinator(&store);
        assert_eq!(rc(store.as_ref(), "a", 0), ["kept-0", "kept-1"]);
        assert_eq!(rc(store.as_ref(), "b", 0), ["kept-0"]);
        assert!(rc(store.as_ref(), "a", 1).is_empty());
        for part in 0..2 {
            let b = store.bounds("a", part).unwrap();
            assert_eq!(b.last_stable, b.end);
        }
        assert_eq!(txns.describe("app").unwrap().state, TxnState::CompleteAbort);
        // The id goes on after the restart.
        let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
        p.begin().unwrap();
        p.send("a", 1, &msgs("next", 1)).unwrap();
        p.commit().unwrap();
        assert_eq!(rc(store.as_ref(), "a", 1), ["next-0"]);
    });
}

/// A commit decided (PrepareCommit durable) but whose markers never went out — the coordinator
/// finishes it at the next open: the transaction is visible in every partition.
#[test]
fn a_decided_commit_is_finished_at_the_next_open() {
    common::for_each_engine(|engine, dir| {
        {
            let store = setup(engine, dir);
            let producer = ProducerId {
                id: store.allocate_producer_id().unwrap(),
                epoch: 0,
            };
            store
                .append_transactional("a", 0, producer, 0, &msgs("x", 2))
                .unwrap();
            store
                .append_transactional("b", 0, producer, 0, &msgs("y", 1))
                .unwrap();
            // What a coordinator writes before its markers; it then dies.
            let txns = coordinator(&store);
            drop(txns);
            let mut entry = TxnLogEntry {
                transactional_id: "app".into(),
                producer_id: producer.id,
                epoch: 0,
                state: TxnState::PrepareCommit,
                ..TxnLogEntry::default()
            };
            entry.partitions.insert(("a".into(), 0));
            entry.partitions.insert(("b".into(), 0));
            let p = duolog::partition_for_key(b"app", TXN_LOG_PARTITIONS);
            store
                .append(
                    TXN_LOG_TOPIC,
                    p,
                    &[Message::new(entry.encode()).with_key("app")],
                )
                .unwrap();
            store.sync().unwrap();
            store.abandon();
        }
        let store = open(engine, dir);
        assert!(rc(store.as_ref(), "a", 0).is_empty());
        let txns = coordinator(&store);
        assert_eq!(rc(store.as_ref(), "a", 0), ["x-0", "x-1"]);
        assert_eq!(rc(store.as_ref(), "b", 0), ["y-0"]);
        assert_eq!(
            txns.describe("app").unwrap().state,
            TxnState::CompleteCommit
        );
    });
}

#[test]
fn a_corrupt_transaction_log_record_is_an_error_not_a_panic() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        coordinator(&store).close().unwrap();
        store
            .append(
                TXN_LOG_TOPIC,
                0,
                &[Message::new(Bytes::from_static(b"\x01garbage")).with_key("x")],
            )
            .unwrap();
        let got = TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default());
        assert!(matches!(got, Err(Error::Corrupted { .. })), "{got:?}");
    });
}

#[test]
fn an_idle_transactional_id_expires_with_a_tombstone() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let config = TxnCoordinatorConfig {
            transactional_id_expiration: Duration::from_millis(1),
            ..TxnCoordinatorConfig::default()
        };
        {
            let txns = TransactionCoordinator::open(Arc::clone(&store), config.clone()).unwrap();
            let p = txns
                .producer("short", TxnProducerConfig::default())
                .unwrap();
            let open = txns.producer("open", TxnProducerConfig::default()).unwrap();
            open.begin().unwrap();
            open.send("a", 0, &msgs("x", 1)).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            txns.check_timeouts().unwrap();
            assert!(txns.describe("short").is_none());
            // A transaction in progress keeps its id.
            assert!(txns.describe("open").is_some());
            p.begin().unwrap();
            assert!(
                p.send("a", 1, &msgs("x", 1)).is_err(),
                "its mapping is gone"
            );
        }
        let txns = TransactionCoordinator::open(Arc::clone(&store), config).unwrap();
        assert!(txns.describe("short").is_none(), "the tombstone is durable");
        // Used again, it is a new mapping.
        txns.producer("short", TxnProducerConfig::default())
            .unwrap();
    });
}

/// `send_offsets`: the group's offsets apply when the transaction commits — in the group
/// coordinator of the process and after a reopen — and never when it aborts.
#[test]
fn offsets_sent_in_a_transaction_apply_only_at_its_commit() {
    common::for_each_engine(|engine, dir| {
        {
            let store = setup(engine, dir);
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let config = TxnCoordinatorConfig {
                groups: Some(groups.clone()),
                ..TxnCoordinatorConfig::default()
            };
            let txns = TransactionCoordinator::open(Arc::clone(&store), config).unwrap();
            let p = txns.producer("etl", TxnProducerConfig::default()).unwrap();
            groups.commit_offsets("g", &[("a", 1, 7)]).unwrap();
            p.begin().unwrap();
            p.send("b", 0, &msgs("out", 1)).unwrap();
            p.send_offsets("g", &[("a", 0, 3)]).unwrap();
            assert_eq!(groups.committed_offsets("g")["a"].get(&0), None);
            p.abort().unwrap();
            assert_eq!(groups.committed_offsets("g")["a"].get(&0), None);
            p.begin().unwrap();
            p.send_offsets("g", &[("a", 0, 4)]).unwrap();
            // A second call in the same transaction keeps the first one's other offsets.
            p.send_offsets("g", &[("a", 0, 5), ("b", 0, 1)]).unwrap();
            p.commit().unwrap();
            assert_eq!(groups.committed_offsets("g")["a"][&0], 5);
            assert_eq!(groups.committed_offsets("g")["a"][&1], 7);
            assert_eq!(groups.committed_offsets("g")["b"][&0], 1);
            p.begin().unwrap();
            p.send_offsets("g", &[("b", 0, 2)]).unwrap();
            p.send_offsets("g", &[("a", 1, 8)]).unwrap();
            p.commit().unwrap();
            assert_eq!(
                groups.committed_offsets("g")["b"][&0],
                2,
                "the first call's offset"
            );
            assert_eq!(groups.committed_offsets("g")["a"][&1], 8);
            p.begin().unwrap();
            p.send_offsets("g", &[("a", 1, 7)]).unwrap();
            p.commit().unwrap();
            // A transaction left open at the crash: its offsets never apply.
            p.begin().unwrap();
            p.send_offsets("g", &[("a", 0, 9)]).unwrap();
            // A plain commit of another group after it: loading must not stop at its LSO.
            groups.commit_offsets("other", &[("b", 0, 1)]).unwrap();
            store.sync().unwrap();
            txns.close().unwrap();
            store.abandon();
        }
        let store = open(engine, dir);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let config = TxnCoordinatorConfig {
            groups: Some(groups.clone()),
            ..TxnCoordinatorConfig::default()
        };
        let _txns = TransactionCoordinator::open(Arc::clone(&store), config).unwrap();
        assert_eq!(groups.committed_offsets("g")["a"][&0], 5);
        assert_eq!(groups.committed_offsets("g")["a"][&1], 7);
        assert_eq!(groups.committed_offsets("g")["b"][&0], 2);
        assert_eq!(groups.committed_offsets("other")["b"][&0], 1);
    });
}

/// A producer dropped (or closed) with a transaction open aborts it, so it holds no LSO until
/// the timeout.
#[test]
fn a_producer_dropped_mid_transaction_aborts_it() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let txns = coordinator(&store);
        {
            let p = txns.producer("p", TxnProducerConfig::default()).unwrap();
            p.begin().unwrap();
            p.send("a", 0, &msgs("dropped", 1)).unwrap();
            assert_eq!(store.bounds("a", 0).unwrap().last_stable, 0);
        }
        let b = store.bounds("a", 0).unwrap();
        assert_eq!(b.last_stable, b.end);
        assert!(rc(store.as_ref(), "a", 0).is_empty());
        assert_eq!(txns.describe("p").unwrap().state, TxnState::CompleteAbort);
        let p = txns.producer("p", TxnProducerConfig::default()).unwrap();
        p.close().unwrap();
        p.begin().unwrap();
        p.send("a", 1, &msgs("closed", 1)).unwrap();
        p.close().unwrap();
        assert!(!p.in_transaction());
        assert!(rc(store.as_ref(), "a", 1).is_empty());
    });
}

/// Producers of several transactional ids commit and abort in parallel threads, over shared
/// partitions and groups, while the timeout thread sweeps every few milliseconds: nothing
/// deadlocks, every committed record shows once, no aborted one does, and every group ends at
/// its last committed offsets.
#[test]
fn parallel_transactions_commit_and_abort_independently() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let txns = Arc::new(
            TransactionCoordinator::open(
                Arc::clone(&store),
                TxnCoordinatorConfig {
                    groups: Some(groups.clone()),
                    abort_timed_out_interval: Duration::from_millis(2),
                    ..TxnCoordinatorConfig::default()
                },
            )
            .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let txns = Arc::clone(&txns);
                std::thread::spawn(move || {
                    let p = txns
                        .producer(&format!("worker-{t}"), TxnProducerConfig::default())
                        .unwrap();
                    for i in 0..30u64 {
                        p.begin().unwrap();
                        let body = format!("w{t}-{i}");
                        p.send("a", (i % 2) as u32, &[Message::new(body.clone())])
                            .unwrap();
                        p.send("b", 0, &[Message::new(body)]).unwrap();
                        p.send_offsets(&format!("g{t}"), &[("a", 0, i + 1)])
                            .unwrap();
                        if i % 3 == 2 {
                            p.abort().unwrap();
                        } else {
                            p.commit().unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut seen = rc(store.as_ref(), "b", 0);
        let mut a = rc(store.as_ref(), "a", 0);
        a.extend(rc(store.as_ref(), "a", 1));
        seen.sort();
        a.sort();
        let mut want: Vec<String> = (0..4)
            .flat_map(|t| {
                (0..30)
                    .filter(|i| i % 3 != 2)
                    .map(move |i| format!("w{t}-{i}"))
            })
            .collect();
        want.sort();
        assert_eq!(seen, want);
        assert_eq!(a, want);
        for t in 0..4 {
            // The last transaction (i = 29) aborted: the one before it (i = 28) set 29.
            assert_eq!(groups.committed_offsets(&format!("g{t}"))["a"][&0], 29);
        }
        for (topic, p) in [("a", 0), ("a", 1), ("b", 0)] {
            let b = store.bounds(topic, p).unwrap();
            assert_eq!(b.last_stable, b.end);
        }
    });
}
