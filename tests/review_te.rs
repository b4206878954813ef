//! Review of the engine side of transactions (issue 14): failing cases found cold. Each test
//! is ignored with the one-line reason until the engine is fixed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use duolog::io::SimFs;
use duolog::{
    EngineKind, Error, FlushPolicy, IsolationLevel, LogStore, Message, ProducerId, ReadLimits,
    SegmentedOptions, StoreOptions, TopicConfig, TxnMarker,
};

const COMMITTED: ReadLimits = ReadLimits {
    max_messages: 1024,
    max_bytes: 4 << 20,
    isolation: IsolationLevel::ReadCommitted,
};

fn batch(tag: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::new(format!("{tag}-{i}"))).collect()
}

/// A SimFs store with no background flush or checkpoint in the way (deterministic I/O).
fn sim_options(engine: EngineKind, sim: &SimFs) -> StoreOptions {
    let mut o = common::small_options(engine);
    o.fs = Arc::new(sim.clone());
    o.flush = FlushPolicy::Async {
        interval: Duration::from_secs(3600),
    };
    o.commitlog.checkpoint_interval = Duration::from_secs(3600);
    o.segmented.checkpoint_interval = Duration::from_secs(3600);
    o.index.enabled = false;
    o
}

/// Kafka collects the aborted transactions of a fetch up to the end of the data it fetched;
/// both engines collect every abort from the fetch offset up to the LSO (the early stop only
/// triggers at the newest abort), so a lagging read_committed reader pays for every abort
/// ahead of it on every fetch: the segmented engine opens and reads every later segment's
/// `.txnindex` for a fetch of one record.
#[test]
#[ignore = "review: a read_committed fetch reads every later segment's .txnindex (aborts up to the LSO, not up to the fetched data)"]
fn a_small_read_committed_fetch_reads_a_bounded_number_of_txn_indexes() {
    let sim = SimFs::new();
    let mut o = sim_options(EngineKind::Segmented, &sim);
    o.segmented = SegmentedOptions {
        segment_bytes: 4 * 1024,
        ..o.segmented
    };
    let store = duolog::open("/s", o).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 0,
    };
    let body = "x".repeat(300);
    let mut seq = 0;
    for k in 0..400 {
        store
            .append("t", 0, &[Message::new(format!("plain-{k}"))])
            .unwrap();
        let msgs: Vec<Message> = (0..2).map(|_| Message::new(body.clone())).collect();
        store.append_transactional("t", 0, p, seq, &msgs).unwrap();
        seq += 2;
        store.write_marker("t", 0, p, TxnMarker::Abort, 0).unwrap();
    }
    let one = ReadLimits {
        max_messages: 1,
        ..COMMITTED
    };
    // Warm: the first fetch may open handles.
    store.fetch("t", 0, 0, one).unwrap();
    let before = sim.op_count();
    let f = store.fetch("t", 0, 0, one).unwrap();
    let ops = sim.op_count() - before;
    assert_eq!(f.records.len(), 1);
    assert!(
        ops <= 50,
        "a one-record read_committed fetch took {ops} I/O operations"
    );
}

/// `write_marker` accepts any coordinator epoch; a producer whose marker carried a negative
/// one (−1 is what the snapshot uses for "no marker") is restored by a reopen as a producer that
/// never wrote a marker, its last batch taken as non-transactional: its next transactional
/// batch, accepted before the reopen, is `InvalidTxnState` after it. Producer state must not
/// change meaning across a clean reopen (refuse a negative coordinator epoch, or store the flag).
#[test]
#[ignore = "review: a marker with coordinator epoch -1 makes the producer's next transactional batch InvalidTxnState after a clean reopen (not before)"]
fn a_negative_coordinator_epoch_does_not_change_the_producer_after_a_reopen() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let p;
        {
            let store = common::open(dir, &opts);
            store.create_topic("t", TopicConfig::default()).unwrap();
            p = ProducerId {
                id: store.allocate_producer_id().unwrap(),
                epoch: 0,
            };
            store
                .append_transactional("t", 0, p, 0, &batch("a", 2))
                .unwrap();
            let m = store.write_marker("t", 0, p, TxnMarker::Commit, -1);
            if m.is_err() {
                // Refused up front: consistent.
                assert!(
                    matches!(m, Err(Error::InvalidArgument(_))),
                    "{engine}: {m:?}"
                );
                return;
            }
            store.close().unwrap();
        }
        let store = common::open(dir, &opts);
        let r = store.append_transactional("t", 0, p, 2, &batch("b", 1));
        assert!(
            r.is_ok(),
            "{engine}: the producer's next transaction after a clean reopen: {r:?}"
        );
    });
}
