//! What a transaction commit costs in durable writes (issue 14 follow-up, item 1), on both
//! engines, counted by a forwarding store (`txn_probe`): a send enrols all its new partitions
//! in one durable transaction log record (none when all are enrolled), and a commit is one
//! data sync, the durable `PrepareCommit`, the markers of every partition written at once
//! (each durable on return, their syncs overlapping), and an unsynced `CompleteCommit` — the
//! budget the module docs of `txn/coordinator.rs` state. And a commit that returned `Ok` has
//! every marker durable: after a power cut, the store opened without the coordinator shows it.

mod common;
mod txn_probe;

use std::sync::Arc;
use std::time::Instant;

use duolog::io::{CrashMode, SimFs};
use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
use duolog::{IsolationLevel, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
use txn_probe::{Counts, Probe};

const PARTITIONS: u32 = 4;

fn msgs(tag: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::new(format!("{tag}-{i}"))).collect()
}

/// Bodies a `read_committed` reader sees in a partition.
fn committed(store: &dyn LogStore, topic: &str, p: u32) -> Vec<String> {
    let b = store.bounds(topic, p).unwrap();
    let mut at = b.start;
    let mut out = Vec::new();
    while at < b.last_stable {
        let limits = ReadLimits::messages(100).with_isolation(IsolationLevel::ReadCommitted);
        let f = store.fetch(topic, p, at, limits).unwrap();
        assert!(f.next_offset > at, "fetch at {at} stalled");
        out.extend(
            f.records
                .iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
        at = f.next_offset;
    }
    out
}

fn probe_on(dir: &std::path::Path, opts: &StoreOptions) -> (Arc<Probe>, Arc<dyn LogStore>) {
    let inner: Arc<dyn LogStore> = Arc::from(common::open(dir, opts));
    inner
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    let probe = txn_probe::probe(inner);
    let store: Arc<dyn LogStore> = probe.clone();
    (probe, store)
}

#[test]
fn a_send_enrols_all_its_new_partitions_in_one_log_record() {
    common::for_each_engine(|engine, dir| {
        let (probe, store) = probe_on(dir, &common::small_options(engine));
        let txns = TransactionCoordinator::open(store, TxnCoordinatorConfig::default()).unwrap();
        let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
        let batches: Vec<Vec<Message>> =
            (0..PARTITIONS).map(|i| msgs(&format!("m{i}"), 2)).collect();
        let all: Vec<(&str, u32, &[Message])> = (0..PARTITIONS)
            .map(|i| ("t", i, batches[i as usize].as_slice()))
            .collect();
        p.begin().unwrap();
        probe.reset();
        p.send_all(&all).unwrap();
        let c = probe.counts();
        assert_eq!(
            c.txn_log_writes, 1,
            "one enrolment record for 4 partitions: {c:?}"
        );
        assert!(c.syncs <= 1, "one sync makes the enrolment durable: {c:?}");
        // Every partition enrolled: further sends write no transaction log record.
        probe.reset();
        p.send_all(&all).unwrap();
        p.send("t", 2, &msgs("again", 1)).unwrap();
        assert_eq!(
            probe.counts(),
            Counts::default(),
            "sends to enrolled partitions"
        );
        p.commit().unwrap();
        for i in 0..PARTITIONS {
            assert_eq!(
                committed(probe.as_ref(), "t", i).len(),
                if i == 2 { 5 } else { 4 }
            );
        }
    });
}

#[test]
fn a_commit_writes_the_markers_of_every_partition_at_once() {
    common::for_each_engine(|engine, dir| {
        let (probe, store) = probe_on(dir, &common::small_options(engine));
        let txns = TransactionCoordinator::open(store, TxnCoordinatorConfig::default()).unwrap();
        let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
        p.begin().unwrap();
        for i in 0..PARTITIONS {
            p.send("t", i, &msgs(&format!("m{i}"), 2)).unwrap();
        }
        probe.reset();
        probe.rendezvous_markers(PARTITIONS as usize);
        p.commit().unwrap();
        let c = probe.counts();
        assert_eq!(c.markers, PARTITIONS as usize, "{c:?}");
        assert_eq!(
            c.markers_at_once, PARTITIONS as usize,
            "the markers are written together, not one durable write after another: {c:?}"
        );
        assert!(c.syncs <= 2, "the data sync and the decision's: {c:?}");
        assert_eq!(
            c.txn_log_writes, 2,
            "PrepareCommit and CompleteCommit: {c:?}"
        );
        // The same for an abort.
        probe.rendezvous_markers(PARTITIONS as usize);
        p.begin().unwrap();
        for i in 0..PARTITIONS {
            p.send("t", i, &msgs("aborted", 1)).unwrap();
        }
        probe.reset();
        p.abort().unwrap();
        let c = probe.counts();
        assert_eq!(c.markers_at_once, PARTITIONS as usize, "{c:?}");
        assert_eq!(c.syncs, 0, "an abort's decision need not be durable: {c:?}");
        for i in 0..PARTITIONS {
            assert_eq!(
                committed(probe.as_ref(), "t", i),
                [format!("m{i}-0"), format!("m{i}-1")]
            );
            let b = probe.bounds("t", i).unwrap();
            assert_eq!(b.last_stable, b.end);
        }
    });
}

/// The whole budget of one 4-partition transaction, sent with one `send_all`: 1 enrolment
/// record (durable), 1 data sync, 1 durable `PrepareCommit`, 4 markers written together, 1
/// unsynced `CompleteCommit`. Prints the mean commit time on the real disk (not asserted).
#[test]
fn a_four_partition_transaction_stays_within_its_documented_sync_budget() {
    common::for_each_engine(|engine, dir| {
        let opts = StoreOptions {
            engine: Some(engine),
            ..StoreOptions::default()
        };
        let (probe, store) = probe_on(dir, &opts);
        let txns = TransactionCoordinator::open(store, TxnCoordinatorConfig::default()).unwrap();
        let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
        let batches: Vec<Vec<Message>> = (0..PARTITIONS)
            .map(|i| msgs(&format!("m{i}"), 10))
            .collect();
        let all: Vec<(&str, u32, &[Message])> = (0..PARTITIONS)
            .map(|i| ("t", i, batches[i as usize].as_slice()))
            .collect();
        let rounds = 20;
        let mut commit_time = std::time::Duration::ZERO;
        for _ in 0..rounds {
            probe.reset();
            p.begin().unwrap();
            p.send_all(&all).unwrap();
            let started = Instant::now();
            p.commit().unwrap();
            commit_time += started.elapsed();
            let c = probe.counts();
            assert_eq!(c.txn_log_writes, 3, "enrol, prepare, complete: {c:?}");
            assert!(c.syncs <= 3, "enrolment, data, decision: {c:?}");
            assert_eq!(c.markers, PARTITIONS as usize, "{c:?}");
        }
        eprintln!(
            "{engine}: mean commit of a 4-partition transaction {:?}",
            commit_time / rounds
        );
    });
}

/// A commit that returned `Ok` survives a power cut right after it, on both engines, *by its
/// markers*: the store is first opened without the coordinator (whose recovery would re-drive
/// the durable `PrepareCommit` and write any lost marker again, hiding the loss), and every
/// partition must already show the transaction to `read_committed` — a marker not durable when
/// `commit` returned would leave the transaction open there, the last stable offset below its
/// records. Then the coordinator's open must leave it so.
#[test]
fn a_commit_that_returned_has_every_marker_durable_through_a_power_cut() {
    for engine in common::engines() {
        for (seed, &mode) in (0u64..).zip(CrashMode::ALL.iter()) {
            let sim = SimFs::new();
            let opts = |sim: &SimFs| StoreOptions {
                fs: Arc::new(sim.clone()),
                ..common::small_options(engine)
            };
            {
                let store: Arc<dyn LogStore> = Arc::from(common::open("/s".as_ref(), &opts(&sim)));
                store
                    .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
                    .unwrap();
                store.sync().unwrap();
                let txns = TransactionCoordinator::open(
                    Arc::clone(&store),
                    TxnCoordinatorConfig::default(),
                )
                .unwrap();
                let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
                let batches: Vec<Vec<Message>> =
                    (0..PARTITIONS).map(|i| msgs(&format!("m{i}"), 3)).collect();
                let all: Vec<(&str, u32, &[Message])> = (0..PARTITIONS)
                    .map(|i| ("t", i, batches[i as usize].as_slice()))
                    .collect();
                p.begin().unwrap();
                p.send_all(&all).unwrap();
                p.commit().unwrap();
                txns.close().unwrap();
                drop(p);
                drop(txns);
                store.abandon();
            }
            let sim = sim.crash(mode, seed);
            let store: Arc<dyn LogStore> = Arc::from(common::open("/s".as_ref(), &opts(&sim)));
            for i in 0..PARTITIONS {
                assert_eq!(
                    committed(store.as_ref(), "t", i).len(),
                    3,
                    "{engine} {mode:?}: partition {i}'s marker was lost (before the coordinator ran)"
                );
            }
            let _txns =
                TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())
                    .unwrap();
            for i in 0..PARTITIONS {
                assert_eq!(
                    committed(store.as_ref(), "t", i).len(),
                    3,
                    "{engine} {mode:?}: partition {i}"
                );
            }
        }
    }
}
