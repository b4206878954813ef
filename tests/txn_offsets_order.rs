//! Transactional offsets mixed with plain commits of the same group and partition (issue 14
//! follow-up, item 2, KIP-447), on both engines. Kafka's rule (`OffsetMetadataManager`
//! `replayEndTransactionMarker`): at the commit marker, a transaction's pending offset replaces
//! the current one only if its record is later in `__consumer_offsets` than the record that
//! set the current one — the later write in log order wins, live and after a reopen alike.
//! And a transaction whose send failed after its batch landed, aborted with the epoch kept,
//! does not leave the next transaction a stale sequence (KIP-360).

mod common;
mod txn_probe;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
use duolog::{
    Error, FlushPolicy, IsolationLevel, LogStore, Message, ReadLimits, StoreOptions, TopicConfig,
};

fn setup(store: &dyn LogStore) {
    store.create_topic("in", TopicConfig::default()).unwrap();
    store.create_topic("out", TopicConfig::default()).unwrap();
}

fn coordinator(store: &Arc<dyn LogStore>, groups: &GroupCoordinator) -> TransactionCoordinator {
    let config = TxnCoordinatorConfig {
        groups: Some(groups.clone()),
        ..TxnCoordinatorConfig::default()
    };
    TransactionCoordinator::open(Arc::clone(store), config).unwrap()
}

fn committed_in(groups: &GroupCoordinator, group: &str) -> Option<u64> {
    groups
        .committed_offsets(group)
        .get("in")
        .and_then(|p| p.get(&0))
        .copied()
}

/// What a fresh process loads from the log, for comparison with the live value.
fn reloaded(dir: &std::path::Path, opts: &StoreOptions, group: &str) -> Option<u64> {
    let store: Arc<dyn LogStore> = Arc::from(common::open(dir, opts));
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    let _txns = coordinator(&store, &groups);
    committed_in(&groups, group)
}

#[test]
fn a_plain_commit_between_a_transactions_offsets_and_its_marker_wins() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        {
            let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &opts));
            setup(store.as_ref());
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let txns = coordinator(&store, &groups);
            let p = txns.producer("etl", TxnProducerConfig::default()).unwrap();
            p.begin().unwrap();
            p.send("out", 0, &[Message::new("r")]).unwrap();
            p.send_offsets("g", &[("in", 0, 7)]).unwrap();
            // A plain commit of the same partition, later in the log than the offsets record.
            groups.commit_offsets("g", &[("in", 0, 5)]).unwrap();
            p.commit().unwrap();
            assert_eq!(
                committed_in(&groups, "g"),
                Some(5),
                "the later write in log order (the plain commit) wins"
            );
            store.close().unwrap();
        }
        assert_eq!(reloaded(dir, &opts, "g"), Some(5), "after a reopen too");
    });
}

#[test]
fn a_transactions_offsets_written_after_a_plain_commit_win_at_its_commit() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        {
            let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &opts));
            setup(store.as_ref());
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let txns = coordinator(&store, &groups);
            let p = txns.producer("etl", TxnProducerConfig::default()).unwrap();
            groups.commit_offsets("g", &[("in", 0, 5)]).unwrap();
            p.begin().unwrap();
            p.send("out", 0, &[Message::new("r")]).unwrap();
            p.send_offsets("g", &[("in", 0, 7)]).unwrap();
            assert_eq!(
                committed_in(&groups, "g"),
                Some(5),
                "pending until the commit"
            );
            p.commit().unwrap();
            assert_eq!(committed_in(&groups, "g"), Some(7));
            store.close().unwrap();
        }
        assert_eq!(reloaded(dir, &opts, "g"), Some(7));
    });
}

/// An async plain commit appended before the transaction's offsets record but made durable
/// (its completion run) only after the transaction committed: its completion must not put the
/// older plain offset back over the transaction's.
#[test]
fn an_async_commit_completing_after_a_transactions_commit_does_not_undo_it() {
    common::for_each_engine(|engine, dir| {
        // No background flush (neither timed nor at checkpoints): durability comes only from
        // the syncs below.
        let hour = Duration::from_secs(3600);
        let mut opts = StoreOptions {
            flush: FlushPolicy::Async { interval: hour },
            ..common::small_options(engine)
        };
        opts.commitlog.checkpoint_interval = hour;
        opts.commitlog.retention_check_interval = hour;
        opts.segmented.checkpoint_interval = hour;
        opts.segmented.retention_check_interval = hour;
        {
            let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &opts));
            setup(store.as_ref());
            let input: Vec<Message> = (0..10).map(|i| Message::new(format!("{i}"))).collect();
            store.append("in", 0, &input).unwrap();
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let txns = coordinator(&store, &groups);
            let p = txns.producer("etl", TxnProducerConfig::default()).unwrap();
            // Every partition of the transaction enrolled (their enrolment syncs the store)
            // before the async commits, so nothing below makes them durable but `flusher`.
            p.begin().unwrap();
            p.send("out", 0, &[Message::new("r")]).unwrap();
            p.send_offsets("other", &[("in", 0, 1)]).unwrap();
            // Group "x"'s completion runs first and holds the flushing thread until told.
            let x = Consumer::new(
                &groups,
                ConsumerConfig {
                    enable_auto_commit: false,
                    ..ConsumerConfig::new("x")
                },
            )
            .unwrap();
            x.assign(&[("in", 0)]).unwrap();
            x.seek("in", 0, 1).unwrap();
            let (entered_tx, entered) = mpsc::channel();
            let (go, go_rx) = mpsc::channel::<()>();
            x.commit_async(move |_| {
                entered_tx.send(()).unwrap();
                let _ = go_rx.recv_timeout(Duration::from_secs(10));
            })
            .unwrap();
            let g = Consumer::new(
                &groups,
                ConsumerConfig {
                    enable_auto_commit: false,
                    ..ConsumerConfig::new("g")
                },
            )
            .unwrap();
            g.assign(&[("in", 0)]).unwrap();
            g.seek("in", 0, 5).unwrap();
            let (done_tx, done) = mpsc::channel();
            g.commit_async(move |r| done_tx.send(r.is_ok()).unwrap())
                .unwrap();
            p.send_offsets("g", &[("in", 0, 7)]).unwrap();
            // Another thread makes both async commits durable and runs their completions:
            // x's holds it, so g's runs only after the transaction below committed.
            let flusher = {
                let store = Arc::clone(&store);
                std::thread::spawn(move || store.sync())
            };
            entered.recv_timeout(Duration::from_secs(10)).unwrap();
            p.commit().unwrap();
            assert_eq!(committed_in(&groups, "g"), Some(7));
            go.send(()).unwrap();
            assert!(done.recv_timeout(Duration::from_secs(10)).unwrap());
            flusher.join().unwrap().unwrap();
            assert_eq!(
                committed_in(&groups, "g"),
                Some(7),
                "the transaction's offset (the later record) stays after g's completion"
            );
            drop((x, g));
            store.close().unwrap();
        }
        assert_eq!(reloaded(dir, &opts, "g"), Some(7));
    });
}

fn rc(store: &dyn LogStore, topic: &str) -> Vec<String> {
    let b = store.bounds(topic, 0).unwrap();
    let limits = ReadLimits::messages(100).with_isolation(IsolationLevel::ReadCommitted);
    let f = store.fetch(topic, 0, b.start, limits).unwrap();
    f.records
        .iter()
        .map(|r| String::from_utf8(r.body().to_vec()).unwrap())
        .collect()
}

/// KIP-360: the send's batch landed but the send reported an error (no retries left); the
/// transaction is aborted with the epoch kept. The next transaction's batches, the same size
/// or not, are written and committed: neither taken for a duplicate of the aborted batch nor
/// refused as out of order.
#[test]
fn a_send_that_failed_after_landing_does_not_poison_the_next_transaction() {
    common::for_each_engine(|engine, dir| {
        let inner: Arc<dyn LogStore> = Arc::from(common::open(dir, &common::small_options(engine)));
        setup(inner.as_ref());
        let probe = txn_probe::probe(inner);
        let store: Arc<dyn LogStore> = probe.clone();
        let txns =
            TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())
                .unwrap();
        let config = TxnProducerConfig {
            retries: 0,
            ..TxnProducerConfig::default()
        };
        let p = txns.producer("app", config).unwrap();
        let epoch = p.producer_id().epoch;
        for (round, size) in [(0, 2), (1, 3)] {
            p.begin().unwrap();
            probe.land_then_fail(1);
            let lost: Vec<Message> = (0..2)
                .map(|i| Message::new(format!("lost{round}-{i}")))
                .collect();
            assert!(matches!(p.send("out", 0, &lost), Err(Error::Io { .. })));
            p.abort().unwrap();
            assert_eq!(p.producer_id().epoch, epoch, "the abort keeps the epoch");
            p.begin().unwrap();
            let kept: Vec<Message> = (0..size)
                .map(|i| Message::new(format!("kept{round}-{i}")))
                .collect();
            let end = store.bounds("out", 0).unwrap().end;
            let r = p
                .send("out", 0, &kept)
                .expect("the next transaction's send");
            assert!(
                r.base_offset >= end,
                "written anew, not the aborted batch's offsets: {r:?}, end was {end}"
            );
            p.commit().unwrap();
        }
        assert_eq!(
            rc(store.as_ref(), "out"),
            ["kept0-0", "kept0-1", "kept1-0", "kept1-1", "kept1-2"]
        );
    });
}

/// A model of one partition's committed offset under Kafka's rule: a plain commit sets it; a
/// committed transaction's offset replaces it only if the transaction's record is later in
/// `__consumer_offsets` than the record that set it. Random interleavings of plain commits, two
/// producers' transactions (committed or aborted, with plain commits between their offsets and
/// their markers) and filler commits of other partitions (enough to roll the offsets topic's
/// segments), then compaction and a reopen: the live table, the model and the reloaded table
/// must agree (review t2 finding 1: compaction kept an old transactional record and dropped the
/// newer plain one, and the reload went backwards).
#[test]
fn committed_offsets_match_the_model_live_and_after_compaction_and_reload() {
    use duolog::consumer::OFFSETS_TOPIC;
    use std::collections::BTreeMap;
    const PARTS: u32 = 3;
    for seed in [1u64, 42] {
        common::for_each_engine(|engine, dir| {
            let opts = common::small_options(engine);
            let mut rng = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = |n: u64| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) % n
            };
            // partition → (offset, record order of the record that set it)
            let mut model: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
            let live;
            {
                let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &opts));
                store
                    .create_topic("in", TopicConfig::with_partitions(PARTS))
                    .unwrap();
                store
                    .create_topic("wide", TopicConfig::with_partitions(1500))
                    .unwrap();
                let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
                let txns = coordinator(&store, &groups);
                let producers: Vec<_> = ["a", "b"]
                    .iter()
                    .map(|id| txns.producer(id, TxnProducerConfig::default()).unwrap())
                    .collect();
                // Per producer: `None` = no transaction, else its pending (partition, offset,
                // record order).
                let mut open: Vec<Option<Vec<(u32, u64, u64)>>> = vec![None, None];
                let (mut value, mut order) = (0u64, 0u64);
                for step in 0..100u64 {
                    match next(8) {
                        0 | 1 => {
                            let p = next(u64::from(PARTS)) as u32;
                            value += 1;
                            order += 1;
                            groups.commit_offsets("g", &[("in", p, value)]).unwrap();
                            model.insert(p, (value, order));
                        }
                        2 | 3 => {
                            let k = next(2) as usize;
                            if open[k].is_none() {
                                producers[k].begin().unwrap();
                                open[k] = Some(Vec::new());
                            }
                            let p = next(u64::from(PARTS)) as u32;
                            value += 1;
                            order += 1;
                            producers[k].send_offsets("g", &[("in", p, value)]).unwrap();
                            let pending = open[k].as_mut().unwrap();
                            pending.retain(|e| e.0 != p);
                            pending.push((p, value, order));
                        }
                        4 => {
                            let k = next(2) as usize;
                            if let Some(pending) = open[k].take() {
                                if next(3) == 0 {
                                    producers[k].abort().unwrap();
                                } else {
                                    producers[k].commit().unwrap();
                                    for (p, v, at) in pending {
                                        if model.get(&p).is_none_or(|&(_, set)| set < at) {
                                            model.insert(p, (v, at));
                                        }
                                    }
                                }
                            }
                        }
                        _ => {
                            order += 1;
                            let wide: Vec<(&str, u32, u64)> =
                                (0..1500).map(|p| ("wide", p, step + 1)).collect();
                            groups.commit_offsets("g", &wide).unwrap();
                        }
                    }
                }
                for (k, pending) in open.iter_mut().enumerate() {
                    if let Some(pending) = pending.take() {
                        producers[k].commit().unwrap();
                        for (p, v, at) in pending {
                            if model.get(&p).is_none_or(|&(_, set)| set < at) {
                                model.insert(p, (v, at));
                            }
                        }
                    }
                }
                // Filler commits enough to roll past every record above, so compaction may
                // clean all of them.
                for i in 0..30u64 {
                    let wide: Vec<(&str, u32, u64)> =
                        (0..1500).map(|p| ("wide", p, 1000 + i)).collect();
                    groups.commit_offsets("g", &wide).unwrap();
                }
                live = groups
                    .committed_offsets("g")
                    .get("in")
                    .cloned()
                    .unwrap_or_default();
                store.compact(Some(OFFSETS_TOPIC)).unwrap();
                txns.close().unwrap();
                drop(producers);
                drop(txns);
                drop(groups);
                store.close().unwrap();
            }
            let expected: BTreeMap<u32, u64> = model.iter().map(|(&p, &(v, _))| (p, v)).collect();
            assert_eq!(live, expected, "{engine} seed {seed}: live table vs model");
            let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &opts));
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let _txns = coordinator(&store, &groups);
            let reloaded = groups
                .committed_offsets("g")
                .get("in")
                .cloned()
                .unwrap_or_default();
            assert_eq!(
                reloaded, expected,
                "{engine} seed {seed}: reloaded after compaction"
            );
        });
    }
}
