//! Review of the Kafka transaction layer: the engine-side findings (markers and compaction).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
use duolog::{EngineKind, LogStore, Message, TopicConfig};

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

fn sim_opts(engine: EngineKind, sim: &duolog::io::SimFs) -> duolog::StoreOptions {
    duolog::StoreOptions {
        fs: Arc::new(sim.clone()),
        ..common::small_options(engine)
    }
}

/// A topic's `max_message_bytes` applies to the end marker the coordinator writes (on the
/// CommitLog engine the marker record is ~200 bytes with its properties): with a small limit
/// no transaction on the topic can ever end — commit fails, and the abort the timeout thread
/// retries forever fails too, so the LSO sticks. (Engine side: hand-off.)
#[test]
fn a_small_max_message_size_does_not_block_the_end_marker() {
    common::for_each_engine(|engine, dir| {
        let store = open(engine, dir);
        store
            .create_topic(
                "t",
                TopicConfig {
                    max_message_bytes: Some(180),
                    ..TopicConfig::default()
                },
            )
            .unwrap();
        let txns = manual(&store);
        let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
        p.begin().unwrap();
        p.send("t", 0, &[Message::new("small")]).unwrap();
        let commit = p.commit();
        let _ = p.abort();
        let _ = txns.check_timeouts();
        let b = store.bounds("t", 0).unwrap();
        assert!(
            commit.is_ok() && b.last_stable == b.end,
            "{engine:?}: commit {commit:?}, bounds {b:?}"
        );
    });
}

/// Disk growth of the internal offsets topic: every exactly-once round commits a transaction
/// enrolled in `__consumer_offsets-0`, which gets one end marker per round. The offsets topic
/// is compacted, but the cleaners of both engines keep every marker forever (Kafka removes
/// them after `delete.retention.ms` once their transaction's records are gone), so the topic
/// grows by one marker per transaction without bound, and every group coordinator's load
/// scans them all.
#[test]
fn compaction_bounds_the_offsets_topic_under_exactly_once() {
    use duolog::consumer::{GroupCoordinator, OFFSETS_TOPIC};
    use duolog::io::SimFs;
    let mut grown = Vec::new();
    for engine in common::engines() {
        let sim = SimFs::new();
        let mut opts = sim_opts(engine, &sim);
        opts.compaction.enabled = false;
        opts.compaction.delete_retention = Duration::ZERO;
        let store: Arc<dyn LogStore> = Arc::from(duolog::open("/s", opts).unwrap());
        store.create_topic("in", TopicConfig::default()).unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let txns = TransactionCoordinator::open(
            Arc::clone(&store),
            TxnCoordinatorConfig {
                groups: Some(groups.clone()),
                ..TxnCoordinatorConfig::default()
            },
        )
        .unwrap();
        let p = txns.producer("eos", TxnProducerConfig::default()).unwrap();
        for i in 0..2000u64 {
            p.begin().unwrap();
            p.send_offsets("g", &[("in", 0, i)]).unwrap();
            p.commit().unwrap();
        }
        let mut total = duolog::CompactionReport::default();
        for _ in 0..3 {
            total.add(&store.compact(Some(OFFSETS_TOPIC)).unwrap());
        }
        let left = total.bytes_after;
        if left >= 32 * 1024 {
            grown.push(format!(
                "{engine:?}: {left} bytes of __consumer_offsets left after compaction of 2000 \
                 transactions holding one group's offsets ({total:?})"
            ));
        }
    }
    assert!(grown.is_empty(), "{}", grown.join("\n"));
}
