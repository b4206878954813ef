//! Review of the Kafka transaction layer (branch txk): failing tests for defects found.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duolog::txn::{
    TXN_LOG_PARTITIONS, TXN_LOG_TOPIC, TransactionCoordinator, TxnCoordinatorConfig, TxnLogEntry,
    TxnProducerConfig, TxnState,
};
use duolog::{CleanupPolicy, EngineKind, Error, LogStore, Message, TopicConfig};

fn open(engine: EngineKind, dir: &Path) -> Arc<dyn LogStore> {
    Arc::from(common::open(dir, &common::small_options(engine)))
}

/// A coordinator whose background sweep never runs on its own (the test calls
/// `check_timeouts`).
fn manual(store: &Arc<dyn LogStore>) -> TransactionCoordinator {
    TransactionCoordinator::open(
        Arc::clone(store),
        TxnCoordinatorConfig {
            abort_timed_out_interval: Duration::from_secs(3600),
            ..TxnCoordinatorConfig::default()
        },
    )
    .unwrap()
}

fn short() -> TxnProducerConfig {
    TxnProducerConfig {
        transaction_timeout: Duration::from_millis(50),
        ..TxnProducerConfig::default()
    }
}

/// KIP-890's hanging transaction. A partition is enrolled (durably, at the coordinator) but
/// the send that enrolled it writes nothing (refused: too large). The timeout aborts the
/// transaction with a bumped epoch, but the marker to that partition writes nothing (no open
/// transaction there), so the partition never learns the new epoch. The producer's next send
/// to the partition skips the coordinator (already in its local `enrolled` set) and is
/// accepted at the old epoch: it opens a transaction the coordinator no longer knows about.
/// Nothing ever ends it: the last stable offset sticks for good, across reopen too.
#[test]
fn a_send_after_a_timeout_abort_never_leaves_a_hanging_transaction() {
    common::for_each_engine(|engine, dir| {
        {
            let store = open(engine, dir);
            store
                .create_topic(
                    "t",
                    TopicConfig {
                        max_message_bytes: Some(512),
                        ..TopicConfig::default()
                    },
                )
                .unwrap();
            let txns = manual(&store);
            let p = txns.producer("app", short()).unwrap();
            p.begin().unwrap();
            let big = Message::new(vec![b'x'; 4000]);
            let r = p.send("t", 0, &[big]);
            assert!(matches!(r, Err(Error::MessageTooLarge { .. })), "{r:?}");
            std::thread::sleep(Duration::from_millis(120));
            txns.check_timeouts().unwrap();
            assert_eq!(txns.describe("app").unwrap().state, TxnState::CompleteAbort);
            // Kafka: the producer was fenced by the timeout abort.
            let late = p.send("t", 0, &[Message::new("late")]);
            let _ = p.commit();
            let _ = p.close();
            txns.check_timeouts().unwrap();
            let b = store.bounds("t", 0).unwrap();
            assert_eq!(
                b.last_stable, b.end,
                "{engine:?}: the LSO is stuck by a transaction nobody will end (late send: {late:?})"
            );
            drop(p);
            txns.close().unwrap();
        }
        // Not even a restart (recovery of the transaction log) ends it.
        let store = open(engine, dir);
        let txns = manual(&store);
        let again = txns.producer("app", TxnProducerConfig::default()).unwrap();
        drop(again);
        let b = store.bounds("t", 0).unwrap();
        assert_eq!(b.last_stable, b.end, "{engine:?}: stuck after reopen");
    });
}

/// `end(.., bump = true)` ignores `Meta::bump()` returning false: at epoch i16::MAX a timeout
/// abort does not fence the producer. Its next send to an enrolled partition opens a new
/// transaction there that the coordinator (CompleteAbort) does not know; `commit` then fails
/// with InvalidTxnState, `abort` returns Ok without writing a marker: a hanging transaction.
#[test]
fn a_timeout_abort_at_the_last_epoch_still_fences() {
    common::for_each_engine(|engine, dir| {
        let store = open(engine, dir);
        store.create_topic("t", TopicConfig::default()).unwrap();
        // A transaction log where the id already stands at epoch i16::MAX - 1 (32 766 earlier
        // instances), written as the coordinator writes it.
        store
            .create_topic(
                TXN_LOG_TOPIC,
                TopicConfig {
                    cleanup_policy: CleanupPolicy::Compact,
                    segment_bytes: Some(64 * 1024),
                    min_compaction_lag: Some(Duration::ZERO),
                    ..TopicConfig::with_partitions(TXN_LOG_PARTITIONS)
                },
            )
            .unwrap();
        let entry = TxnLogEntry {
            transactional_id: "app".into(),
            producer_id: store.allocate_producer_id().unwrap(),
            epoch: i16::MAX - 1,
            state: TxnState::CompleteCommit,
            timeout_ms: 60_000,
            txn_start_ms: -1,
            last_update_ms: 1,
            ..TxnLogEntry::default()
        };
        store
            .append(
                TXN_LOG_TOPIC,
                duolog::partition_for_key(b"app", TXN_LOG_PARTITIONS),
                &[Message::new(entry.encode()).with_key(Bytes::from_static(b"app"))],
            )
            .unwrap();
        let txns = manual(&store);
        let p = txns.producer("app", short()).unwrap();
        assert_eq!(p.producer_id().epoch, i16::MAX);
        p.begin().unwrap();
        p.send("t", 0, &[Message::new("first")]).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        txns.check_timeouts().unwrap();
        let late = p.send("t", 0, &[Message::new("late")]);
        let commit = p.commit();
        let _ = p.abort();
        txns.check_timeouts().unwrap();
        let b = store.bounds("t", 0).unwrap();
        assert_eq!(
            b.last_stable, b.end,
            "{engine:?}: LSO stuck (late send {late:?}, commit {commit:?})"
        );
    });
}

fn sim_opts(engine: EngineKind, sim: &duolog::io::SimFs) -> duolog::StoreOptions {
    duolog::StoreOptions {
        fs: Arc::new(sim.clone()),
        ..common::small_options(engine)
    }
}

fn committed(store: &dyn LogStore, topic: &str, p: u32) -> Vec<String> {
    use duolog::{IsolationLevel, ReadLimits};
    let b = store.bounds(topic, p).unwrap();
    let limits = ReadLimits::messages(100).with_isolation(IsolationLevel::ReadCommitted);
    let mut at = b.start;
    let mut out = Vec::new();
    while at < b.last_stable {
        let f = store.fetch(topic, p, at, limits).unwrap();
        assert!(f.next_offset > at);
        out.extend(
            f.records
                .iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
        at = f.next_offset;
    }
    out
}

/// A commit whose `PrepareCommit` write fails (disk full: the record never reaches the log)
/// stays `PrepareCommit` in memory; the documented retry of `commit` (or the timeout thread)
/// then sends the commit markers without ever writing the decision durably. A power cut in the
/// middle of those markers leaves `Ongoing` in the log: recovery aborts the partitions still
/// without a marker while the ones already marked stay committed. The transaction is visible in
/// some partitions and not others.
#[test]
fn a_commit_retried_after_a_failed_decision_write_is_atomic_across_a_crash() {
    use duolog::io::{CrashMode, Fault, SimFs};
    for engine in common::engines() {
        let mut k1 = 0;
        let mut partial = Vec::new();
        let mut tried = 0;
        loop {
            let mut first_ok = false;
            for k2 in 0..16u64 {
                let sim = SimFs::new();
                let store: Arc<dyn LogStore> =
                    Arc::from(duolog::open("/s", sim_opts(engine, &sim)).unwrap());
                store
                    .create_topic("a", TopicConfig::with_partitions(2))
                    .unwrap();
                let txns = manual(&store);
                let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
                p.begin().unwrap();
                p.send("a", 0, &[Message::new("x0")]).unwrap();
                p.send("a", 1, &[Message::new("x1")]).unwrap();
                sim.fail_after(k1, Fault::NoSpace);
                let r1 = p.commit();
                sim.clear_faults();
                if r1.is_ok() {
                    first_ok = true;
                    break;
                }
                sim.fail_after(k2, Fault::NoSpace);
                let r2 = p.commit();
                store.abandon();
                drop(p);
                drop(txns);
                drop(store);
                let crashed = sim.crash(CrashMode::DropUnsynced, k1 * 100 + k2);
                let store: Arc<dyn LogStore> =
                    Arc::from(duolog::open("/s", sim_opts(engine, &crashed)).unwrap());
                let txns = manual(&store);
                let (c0, c1) = (
                    committed(store.as_ref(), "a", 0),
                    committed(store.as_ref(), "a", 1),
                );
                tried += 1;
                if c0.is_empty() != c1.is_empty() || (r2.is_ok() && c0.is_empty()) {
                    partial.push(format!(
                        "k1 {k1} k2 {k2}: retry {:?}; a-0 {c0:?} a-1 {c1:?}",
                        r2.map_err(|e| e.to_string())
                    ));
                }
                txns.close().unwrap();
                drop(txns);
                store.close().unwrap();
            }
            if first_ok {
                break;
            }
            k1 += 1;
        }
        assert!(tried > 0);
        assert!(
            partial.is_empty(),
            "{engine:?}: a transaction visible in some partitions only:\n{}",
            partial.join("\n")
        );
    }
}

/// Exactly once under a rebalance (Kafka's KIP-447 zombie fencing). `send_offsets` takes a
/// bare group name: nothing checks that the sender still owns the partitions, although a plain
/// `Consumer::commit` of an evicted member is refused. A member that polled, then stalled past
/// `max_poll_interval` (a slow transform), is evicted when another member takes its partition
/// and reprocesses from the committed offset; the stalled one then commits its transaction —
/// output and offsets — and it lands. The output is doubled.
#[test]
fn a_zombie_member_cannot_commit_offsets_through_a_transaction() {
    use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
    use duolog::txn::transform;
    common::for_each_engine(|engine, dir| {
        let store = open(engine, dir);
        store
            .create_topic("in", TopicConfig::with_partitions(2))
            .unwrap();
        store
            .create_topic("out", TopicConfig::with_partitions(2))
            .unwrap();
        for p in 0..2 {
            let batch: Vec<Message> = (0..4).map(|i| Message::new(format!("{p}-{i}"))).collect();
            store.append("in", p, &batch).unwrap();
        }
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let txns = TransactionCoordinator::open(
            Arc::clone(&store),
            TxnCoordinatorConfig {
                groups: Some(groups.clone()),
                ..TxnCoordinatorConfig::default()
            },
        )
        .unwrap();
        let config = || ConsumerConfig {
            isolation: duolog::IsolationLevel::ReadCommitted,
            enable_auto_commit: false,
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_interval: Duration::from_millis(100),
            ..ConsumerConfig::new("g")
        };
        let c1 = Consumer::new(&groups, config()).unwrap();
        c1.subscribe(&["in"]).unwrap();
        let mut got = Vec::new();
        for _ in 0..20 {
            got.extend(c1.poll(Duration::from_millis(100)).unwrap());
            if got.len() == 8 {
                break;
            }
        }
        assert_eq!(got.len(), 8, "c1 holds both partitions");
        // c1 stalls in its transform; c2 joins and takes a partition from it.
        std::thread::sleep(Duration::from_millis(300));
        let c2 = Consumer::new(&groups, config()).unwrap();
        c2.subscribe(&["in"]).unwrap();
        let p2 = txns.producer("c2", TxnProducerConfig::default()).unwrap();
        let mut by_c2 = 0;
        for _ in 0..50 {
            by_c2 += transform(&c2, &p2, Duration::from_millis(50), |r| {
                vec![(
                    "out".into(),
                    r.partition(),
                    Message::new(r.record().body().to_vec()),
                )]
            })
            .unwrap();
            if by_c2 == 8 {
                break;
            }
        }
        assert!(by_c2 > 0, "c2 reprocessed what it took from c1");
        // The transactional path does not check membership: c1 finishes its stalled round.
        let p1 = txns.producer("c1", TxnProducerConfig::default()).unwrap();
        let zombie = (|| -> duolog::Result<()> {
            p1.begin()?;
            for p in 0..2u32 {
                let batch: Vec<Message> = got
                    .iter()
                    .filter(|r| r.partition() == p)
                    .map(|r| Message::new(r.record().body().to_vec()))
                    .collect();
                p1.send("out", p, &batch)?;
            }
            // Kafka's sendOffsetsToTransaction(offsets, consumer.groupMetadata()).
            p1.send_offsets(c1.group_metadata(), &[("in", 0, 4), ("in", 1, 4)])?;
            p1.commit()
        })();
        let total: usize = (0..2)
            .map(|p| committed(store.as_ref(), "out", p).len())
            .sum();
        assert_eq!(
            total, 8,
            "{engine:?}: each input's output once (zombie's commit: {zombie:?})"
        );
    });
}

/// Two transactional members of one group (the usual scale-out of an exactly-once app: one
/// producer per member) each send the offsets of their own partition. Each transactional
/// commit record is the group's WHOLE table merged from the last committed one, without the
/// other member's pending offsets; so whichever record is newer in the log erases the other's
/// offsets — in memory at the second commit, and at every reload. The erased partition is
/// reprocessed: its outputs are doubled. (Kafka keys offset records by group, topic and
/// partition, so two transactions never overwrite each other's partitions.)
#[test]
fn two_transactional_members_of_a_group_keep_each_others_offsets() {
    use duolog::consumer::GroupCoordinator;
    common::for_each_engine(|engine, dir| {
        {
            let store = open(engine, dir);
            store
                .create_topic("in", TopicConfig::with_partitions(2))
                .unwrap();
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let txns = TransactionCoordinator::open(
                Arc::clone(&store),
                TxnCoordinatorConfig {
                    groups: Some(groups.clone()),
                    ..TxnCoordinatorConfig::default()
                },
            )
            .unwrap();
            let a = txns
                .producer("member-a", TxnProducerConfig::default())
                .unwrap();
            let b = txns
                .producer("member-b", TxnProducerConfig::default())
                .unwrap();
            a.begin().unwrap();
            a.send_offsets("g", &[("in", 0, 10)]).unwrap();
            b.begin().unwrap();
            b.send_offsets("g", &[("in", 1, 20)]).unwrap();
            a.commit().unwrap();
            b.commit().unwrap();
            let table = groups.committed_offsets("g");
            assert_eq!(
                (table["in"].get(&0), table["in"].get(&1)),
                (Some(&10), Some(&20)),
                "{engine:?}: in memory, both members' committed offsets"
            );
            drop((a, b));
            txns.close().unwrap();
            drop(txns);
            drop(groups);
            store.close().unwrap();
        }
        let store = open(engine, dir);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let table = groups.committed_offsets("g");
        assert_eq!(
            (table["in"].get(&0), table["in"].get(&1)),
            (Some(&10), Some(&20)),
            "{engine:?}: after reopen, both members' committed offsets"
        );
    });
}

/// A process that crashed with `send_offsets` in an open transaction leaves that transaction
/// open in `__consumer_offsets-0`, the partition every group commits to. Until some process
/// opens a `TransactionCoordinator` (and hands it the same `GroupCoordinator`), the offsets
/// loader stops at that partition's last stable offset: every plain commit of every group
/// made after the crash is invisible at the next start. A plain consumer app on such a store
/// rewinds to the crash point at every restart.
#[test]
fn plain_group_commits_survive_a_restart_after_a_crashed_transactional_producer() {
    use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
    common::for_each_engine(|engine, dir| {
        {
            let store = open(engine, dir);
            store.create_topic("in", TopicConfig::default()).unwrap();
            let batch: Vec<Message> = (0..3).map(|i| Message::new(format!("m{i}"))).collect();
            store.append("in", 0, &batch).unwrap();
            let txns =
                TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())
                    .unwrap();
            let p = txns.producer("eos", TxnProducerConfig::default()).unwrap();
            p.begin().unwrap();
            p.send_offsets("eos-group", &[("in", 0, 1)]).unwrap();
            // The process dies here (nothing aborts the transaction).
            std::mem::forget(p);
            std::mem::forget(txns);
            store.close().unwrap();
        }
        {
            // A plain consumer app (no transactions of its own).
            let store = open(engine, dir);
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let c = Consumer::new(
                &groups,
                ConsumerConfig {
                    auto_offset_reset: OffsetReset::Earliest,
                    enable_auto_commit: false,
                    ..ConsumerConfig::new("plain")
                },
            )
            .unwrap();
            c.assign(&[("in", 0)]).unwrap();
            let mut n = 0;
            for _ in 0..20 {
                n += c.poll(Duration::from_millis(50)).unwrap().len();
                if n == 3 {
                    break;
                }
            }
            assert_eq!(n, 3);
            c.commit().unwrap();
            assert_eq!(groups.committed_offsets("plain")["in"][&0], 3);
            c.close().unwrap();
            drop(c);
            drop(groups);
            store.close().unwrap();
        }
        let store = open(engine, dir);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let table = groups.committed_offsets("plain");
        assert_eq!(
            table.get("in").and_then(|t| t.get(&0)),
            Some(&3),
            "{engine:?}: the plain group's commit is lost at restart"
        );
    });
}
