//! Engine support for transactions (issue 14, items 2–3), the same on both engines: batches
//! appended to a producer's transaction, end-transaction markers, the last stable offset, and
//! reads under both isolation levels (Kafka's `UnifiedLogTest` LSO and aborted-transaction
//! cases in our own words). The coordinator that decides commits lives in `src/txn/`; these
//! tests drive the engine primitives directly.

mod common;

use std::path::Path;
use std::sync::Arc;

use duolog::io::{CrashMode, SimFs};
use duolog::{
    EngineKind, Error, FlushPolicy, IsolationLevel, LogStore, Message, ProducerId, ReadLimits,
    StoreOptions, TopicConfig, TxnMarker,
};

const COMMITTED: ReadLimits = ReadLimits {
    max_messages: 1024,
    max_bytes: 4 << 20,
    isolation: IsolationLevel::ReadCommitted,
};
const UNCOMMITTED: ReadLimits = ReadLimits {
    max_messages: 1024,
    max_bytes: 4 << 20,
    isolation: IsolationLevel::ReadUncommitted,
};

fn batch(tag: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::new(format!("{tag}-{i}"))).collect()
}

fn producer(store: &dyn LogStore, epoch: i16) -> ProducerId {
    ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch,
    }
}

/// Bodies of every record `limits` lets a reader see, fetched from the start to the end with
/// the fetch's own `next_offset` (which must always advance below the bound).
fn visible(store: &dyn LogStore, topic: &str, partition: u32, limits: ReadLimits) -> Vec<String> {
    let b = store.bounds(topic, partition).unwrap();
    let bound = match limits.isolation {
        IsolationLevel::ReadCommitted => b.last_stable,
        IsolationLevel::ReadUncommitted => b.end,
    };
    let mut at = b.start;
    let mut out = Vec::new();
    while at < bound {
        let f = store.fetch(topic, partition, at, limits).unwrap();
        assert!(
            f.next_offset > at,
            "fetch at {at} below {bound} made no progress"
        );
        assert!(f.next_offset <= bound, "fetch passed its bound {bound}");
        for r in &f.records {
            assert!(r.offset() >= at && r.offset() < f.next_offset);
            out.push(String::from_utf8(r.body().to_vec()).unwrap());
        }
        at = f.next_offset;
    }
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn setup(engine: EngineKind, dir: &Path) -> Box<dyn LogStore> {
    let store = common::open(dir, &common::small_options(engine));
    store.create_topic("t", TopicConfig::default()).unwrap();
    store
}

#[test]
fn an_open_transaction_holds_the_last_stable_offset_until_its_commit() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        store.append("t", 0, &batch("plain", 2)).unwrap();
        let p = producer(store.as_ref(), 0);
        let r = store
            .append_transactional("t", 0, p, 0, &batch("tx", 3))
            .unwrap();
        assert_eq!((r.base_offset, r.last_offset), (2, 4));
        // Records after the open transaction's first offset wait too, plain ones included.
        store.append("t", 0, &batch("after", 1)).unwrap();
        let b = store.bounds("t", 0).unwrap();
        assert_eq!((b.end, b.last_stable), (6, 2), "{engine}");
        assert_eq!(
            visible(store.as_ref(), "t", 0, COMMITTED),
            strings(&["plain-0", "plain-1"])
        );
        assert_eq!(visible(store.as_ref(), "t", 0, UNCOMMITTED).len(), 6);
        let state = store.producer_state("t", 0).unwrap();
        assert_eq!(state[0].open_transaction, Some(2), "{engine}");

        let marker = store.write_marker("t", 0, p, TxnMarker::Commit, 7).unwrap();
        assert_eq!(marker, Some(6), "{engine}: the marker takes an offset");
        let b = store.bounds("t", 0).unwrap();
        assert_eq!((b.end, b.last_stable), (7, 7), "{engine}");
        let all = strings(&["plain-0", "plain-1", "tx-0", "tx-1", "tx-2", "after-0"]);
        assert_eq!(visible(store.as_ref(), "t", 0, COMMITTED), all);
        assert_eq!(visible(store.as_ref(), "t", 0, UNCOMMITTED), all);
        let state = store.producer_state("t", 0).unwrap();
        assert_eq!(state[0].open_transaction, None);
        assert_eq!(state[0].coordinator_epoch, 7);
    });
}

#[test]
fn aborted_records_are_never_read_committed_and_markers_never_read_at_all() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let a = producer(store.as_ref(), 0);
        let b = producer(store.as_ref(), 0);
        // Two producers interleave; a aborts, b commits.
        store
            .append_transactional("t", 0, a, 0, &batch("a", 2))
            .unwrap();
        store
            .append_transactional("t", 0, b, 0, &batch("b", 2))
            .unwrap();
        store
            .append_transactional("t", 0, a, 2, &batch("a2", 1))
            .unwrap();
        assert_eq!(
            store.write_marker("t", 0, a, TxnMarker::Abort, 0).unwrap(),
            Some(5)
        );
        // b still open: LSO at b's first offset.
        assert_eq!(store.bounds("t", 0).unwrap().last_stable, 2, "{engine}");
        assert_eq!(
            store.write_marker("t", 0, b, TxnMarker::Commit, 0).unwrap(),
            Some(6)
        );
        store.append("t", 0, &batch("plain", 1)).unwrap();
        assert_eq!(
            visible(store.as_ref(), "t", 0, COMMITTED),
            strings(&["b-0", "b-1", "plain-0"]),
            "{engine}"
        );
        assert_eq!(
            visible(store.as_ref(), "t", 0, UNCOMMITTED),
            strings(&["a-0", "a-1", "b-0", "b-1", "a2-0", "plain-0"]),
            "{engine}"
        );
        // Plain reads skip markers too; offsets stay dense around them.
        let offsets: Vec<u64> = store
            .read("t", 0, 0, ReadLimits::default())
            .unwrap()
            .iter()
            .map(|r| r.offset())
            .collect();
        assert_eq!(offsets, [0, 1, 2, 3, 4, 7], "{engine}");
        // A fetch at a marker goes past it.
        let f = store.fetch("t", 0, 5, COMMITTED).unwrap();
        assert_eq!(f.records[0].offset(), 7);
        assert_eq!(f.next_offset, 8);
        // The same producer may start its next transaction after the abort.
        store
            .append_transactional("t", 0, a, 3, &batch("a3", 1))
            .unwrap();
        store.write_marker("t", 0, a, TxnMarker::Commit, 0).unwrap();
        assert_eq!(
            visible(store.as_ref(), "t", 0, COMMITTED).last().unwrap(),
            "a3-0"
        );
    });
}

#[test]
fn a_trailing_marker_does_not_stall_a_reader_at_the_end() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let p = producer(store.as_ref(), 0);
        store
            .append_transactional("t", 0, p, 0, &batch("x", 2))
            .unwrap();
        store.write_marker("t", 0, p, TxnMarker::Abort, 0).unwrap();
        for limits in [COMMITTED, UNCOMMITTED] {
            let f = store.fetch("t", 0, 0, limits).unwrap();
            assert_eq!(f.next_offset, 3, "{engine} {:?}", limits.isolation);
            let f = store.fetch("t", 0, 2, limits).unwrap();
            assert!(f.records.is_empty());
            assert_eq!(f.next_offset, 3, "{engine}: past the marker");
        }
    });
}

#[test]
fn a_marker_without_an_open_transaction_writes_nothing() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let p = producer(store.as_ref(), 0);
        assert_eq!(
            store.write_marker("t", 0, p, TxnMarker::Commit, 0).unwrap(),
            None
        );
        store
            .append_transactional("t", 0, p, 0, &batch("x", 1))
            .unwrap();
        assert_eq!(
            store.write_marker("t", 0, p, TxnMarker::Commit, 0).unwrap(),
            Some(1)
        );
        // A coordinator resending the marker after a crash: nothing more is written.
        assert_eq!(
            store.write_marker("t", 0, p, TxnMarker::Commit, 0).unwrap(),
            None,
            "{engine}"
        );
        assert_eq!(store.bounds("t", 0).unwrap().end, 2);
    });
}

#[test]
fn transactional_duplicates_fencing_and_state_errors() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let p = producer(store.as_ref(), 1);
        let first = store
            .append_transactional("t", 0, p, 0, &batch("x", 2))
            .unwrap();
        // A retried transactional batch returns its original offsets.
        assert_eq!(
            store
                .append_transactional("t", 0, p, 0, &batch("x", 2))
                .unwrap(),
            first
        );
        // A plain idempotent append while the transaction is open is refused.
        assert!(
            matches!(
                store.append_idempotent("t", 0, p, 2, &batch("y", 1)),
                Err(Error::InvalidTxnState { .. })
            ),
            "{engine}"
        );
        // An older epoch cannot end the transaction.
        let old = ProducerId { id: p.id, epoch: 0 };
        assert!(matches!(
            store.write_marker("t", 0, old, TxnMarker::Commit, 0),
            Err(Error::ProducerFenced { .. })
        ));
        // A newer epoch may abort it (Kafka: the coordinator fences a zombie by aborting with
        // a bumped epoch); afterwards the old epoch is fenced on appends too.
        let newer = ProducerId { id: p.id, epoch: 2 };
        assert_eq!(
            store
                .write_marker("t", 0, newer, TxnMarker::Abort, 0)
                .unwrap(),
            Some(2),
            "{engine}"
        );
        assert!(matches!(
            store.append_transactional("t", 0, p, 2, &batch("z", 1)),
            Err(Error::ProducerFenced { .. })
        ));
        assert!(visible(store.as_ref(), "t", 0, COMMITTED).is_empty());
        let b = store.bounds("t", 0).unwrap();
        assert_eq!((b.end, b.last_stable), (3, 3));
    });
}

#[test]
fn transactions_span_topics_and_partitions_independently() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        store
            .create_topic("u", TopicConfig::with_partitions(3))
            .unwrap();
        let p = producer(store.as_ref(), 0);
        store
            .append_transactional("t", 0, p, 0, &batch("t0", 1))
            .unwrap();
        for part in 0..3 {
            store
                .append_transactional("u", part, p, 0, &batch(&format!("u{part}"), 2))
                .unwrap();
        }
        for part in 0..3 {
            assert_eq!(store.bounds("u", part).unwrap().last_stable, 0);
        }
        for (topic, part) in [("t", 0), ("u", 0), ("u", 1), ("u", 2)] {
            store
                .write_marker(topic, part, p, TxnMarker::Commit, 0)
                .unwrap();
        }
        for part in 0..3 {
            assert_eq!(
                visible(store.as_ref(), "u", part, COMMITTED),
                strings(&[&format!("u{part}-0"), &format!("u{part}-1")]),
                "{engine}"
            );
        }
    });
}

#[test]
fn open_and_aborted_transactions_survive_a_clean_reopen() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let (a, b) = {
            let store = common::open(dir, &opts);
            store.create_topic("t", TopicConfig::default()).unwrap();
            let a = producer(store.as_ref(), 0);
            let b = producer(store.as_ref(), 0);
            // Enough data to roll files, so the state crosses snapshots and segments.
            for k in 0..50 {
                store
                    .append_transactional("t", 0, a, k * 20, &batch(&format!("a{k}"), 20))
                    .unwrap();
            }
            store.write_marker("t", 0, a, TxnMarker::Abort, 3).unwrap();
            store
                .append_transactional("t", 0, b, 0, &batch("b", 2))
                .unwrap();
            store.close().unwrap();
            (a, b)
        };
        let store = common::open(dir, &opts);
        let bounds = store.bounds("t", 0).unwrap();
        assert_eq!(bounds.end, 1003);
        assert_eq!(
            bounds.last_stable, 1001,
            "{engine}: b's transaction still open"
        );
        let state = store.producer_state("t", 0).unwrap();
        let sb = state.iter().find(|e| e.producer == b).unwrap();
        assert_eq!(sb.open_transaction, Some(1001));
        store.write_marker("t", 0, b, TxnMarker::Commit, 3).unwrap();
        assert_eq!(
            visible(store.as_ref(), "t", 0, COMMITTED),
            strings(&["b-0", "b-1"]),
            "{engine}: the aborted thousand stay invisible after the reopen"
        );
        // The aborting producer's sequence continues after its abort.
        store
            .append_transactional("t", 0, a, 1000, &batch("a-next", 1))
            .unwrap();
        assert!(store.verify().unwrap().is_ok());
    });
}

#[test]
fn markers_and_open_transactions_survive_a_crash() {
    for engine in common::engines() {
        for (m, &mode) in CrashMode::ALL.iter().enumerate() {
            for seed in 0..3u64 {
                let sim = SimFs::new();
                let opts = |sim: &SimFs| StoreOptions {
                    fs: Arc::new(sim.clone()),
                    flush: FlushPolicy::Async {
                        interval: std::time::Duration::from_secs(3600),
                    },
                    ..common::small_options(engine)
                };
                let store = duolog::open("/s", opts(&sim)).unwrap();
                store.create_topic("t", TopicConfig::default()).unwrap();
                let a = producer(store.as_ref(), 0);
                let b = producer(store.as_ref(), 0);
                store
                    .append_transactional("t", 0, a, 0, &batch("a", 3))
                    .unwrap();
                store
                    .append_transactional("t", 0, b, 0, &batch("b", 2))
                    .unwrap();
                // A marker is durable when it returns, whatever the flush policy: the
                // transaction's records before it are too.
                store.write_marker("t", 0, a, TxnMarker::Abort, 0).unwrap();
                store.write_marker("t", 0, b, TxnMarker::Commit, 0).unwrap();
                let c = producer(store.as_ref(), 0);
                store
                    .append_transactional("t", 0, c, 0, &batch("c", 2))
                    .unwrap();
                store.sync().unwrap();
                // Unacknowledged: may be lost, but only whole.
                store
                    .append_transactional("t", 0, c, 2, &batch("c-late", 2))
                    .unwrap();
                store.abandon();
                drop(store);
                let sim = sim.crash(mode, seed * 10 + m as u64);
                let store = duolog::open("/s", opts(&sim)).unwrap();
                let bounds = store.bounds("t", 0).unwrap();
                assert!(
                    bounds.end == 9 || bounds.end == 11,
                    "{engine} {mode:?}: end {}",
                    bounds.end
                );
                assert_eq!(bounds.last_stable, 7, "{engine} {mode:?}: c still open");
                assert_eq!(
                    visible(store.as_ref(), "t", 0, COMMITTED),
                    strings(&["b-0", "b-1"]),
                    "{engine} {mode:?} seed {seed}"
                );
                store.write_marker("t", 0, c, TxnMarker::Abort, 0).unwrap();
                assert_eq!(
                    visible(store.as_ref(), "t", 0, COMMITTED),
                    strings(&["b-0", "b-1"])
                );
                assert!(store.verify().unwrap().is_ok(), "{engine} {mode:?}");
            }
        }
    }
}

#[test]
fn tagged_reads_honour_isolation() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let p = producer(store.as_ref(), 0);
        let tagged = |tag: &str, body: &str| Message::new(body.to_string()).with_tags(tag);
        store
            .append_transactional("t", 0, p, 0, &[tagged("A", "gone"), tagged("B", "x")])
            .unwrap();
        store.write_marker("t", 0, p, TxnMarker::Abort, 0).unwrap();
        store
            .append("t", 0, &[tagged("A", "kept"), tagged("B", "y")])
            .unwrap();
        let tags = ["A".to_string()];
        let r = store.read_tagged("t", 0, 0, COMMITTED, &tags).unwrap();
        let bodies: Vec<&[u8]> = r.records.iter().map(|r| r.body()).collect();
        assert_eq!(bodies, [&b"kept"[..]], "{engine}");
        assert_eq!(r.next_offset, 5);
        let r = store.read_tagged("t", 0, 0, UNCOMMITTED, &tags).unwrap();
        assert_eq!(r.records.len(), 2, "{engine}");
    });
}

#[test]
fn many_aborted_transactions_are_skipped_in_few_fetches() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let p = producer(store.as_ref(), 0);
        let mut seq = 0;
        for k in 0..300 {
            store
                .append_transactional("t", 0, p, seq, &batch(&format!("x{k}"), 3))
                .unwrap();
            seq += 3;
            let marker = if k % 100 == 99 {
                TxnMarker::Commit
            } else {
                TxnMarker::Abort
            };
            store.write_marker("t", 0, p, marker, 0).unwrap();
        }
        let got = visible(store.as_ref(), "t", 0, COMMITTED);
        assert_eq!(
            got,
            strings(&[
                "x99-0", "x99-1", "x99-2", "x199-0", "x199-1", "x199-2", "x299-0", "x299-1",
                "x299-2"
            ]),
            "{engine}"
        );
        // Each fetch fills up to its limit or reaches the bound: skipped records do not end it.
        let f = store.fetch("t", 0, 0, COMMITTED).unwrap();
        assert_eq!(f.records.len(), 9, "{engine}");
        assert_eq!(f.next_offset, 1200);
    });
}

#[test]
fn bad_transactional_input_is_an_error() {
    common::for_each_engine(|engine, dir| {
        let store = setup(engine, dir);
        let p = producer(store.as_ref(), 0);
        assert!(matches!(
            store.append_transactional("nope", 0, p, 0, &batch("x", 1)),
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            store.write_marker("t", 9, p, TxnMarker::Commit, 0),
            Err(Error::UnknownPartition { .. })
        ));
        assert!(matches!(
            store.append_transactional("t", 0, p, 0, &[]),
            Err(Error::InvalidArgument(_))
        ));
        let negative = ProducerId { id: -1, epoch: 0 };
        assert!(
            matches!(
                store.write_marker("t", 0, negative, TxnMarker::Abort, 0),
                Err(Error::InvalidArgument(_))
            ),
            "{engine}"
        );
        let f = store.fetch("t", 0, 5, COMMITTED);
        assert!(matches!(f, Err(Error::OffsetOutOfRange { .. })), "{engine}");
    });
}

/// Aborted-transaction index entries of partition `t`/0, counted from the engine's files
/// (`aborted.txnindex` on the CommitLog engine: an 8-byte header and 38-byte entries;
/// Kafka's 34-byte `.txnindex` entries per segment on the segmented engine).
fn abort_index_entries(engine: EngineKind, dir: &Path) -> u64 {
    fn walk(p: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                walk(&e, out);
            } else {
                out.push(e);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let len = |f: &Path| std::fs::metadata(f).unwrap().len();
    match engine {
        EngineKind::CommitLog => files
            .iter()
            .filter(|f| f.ends_with("consumequeue/t/0/aborted.txnindex"))
            .map(|f| len(f).saturating_sub(8) / 38)
            .sum(),
        _ => files
            .iter()
            .filter(|f| f.extension().is_some_and(|x| x == "txnindex"))
            .map(|f| len(f) / 34)
            .sum(),
    }
}

/// Kafka's cleaner rule for abort markers: once compaction has removed every record of an
/// aborted transaction, its marker goes after `delete.retention` like a commit marker, and
/// with it the transaction's aborted-index entry. Both isolation levels see the right records
/// before and after, a reopen agrees and `verify` is clean.
#[test]
fn compaction_drops_an_abort_marker_and_its_index_entry_after_delete_retention() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let store = common::open(dir, &opts);
        store
            .create_topic(
                "t",
                TopicConfig {
                    partitions: 1,
                    cleanup_policy: duolog::CleanupPolicy::Compact,
                    segment_bytes: Some(1024),
                    delete_retention: Some(std::time::Duration::from_millis(300)),
                    ..TopicConfig::default()
                },
            )
            .unwrap();
        let kv = |k: String, v: String| Message::new(v).with_key(k);
        let p = producer(store.as_ref(), 0);
        let q = producer(store.as_ref(), 0);
        let mut expected = Vec::new();
        store
            .append("t", 0, &[kv("a".into(), "plain-a".into())])
            .unwrap();
        expected.push("plain-a".to_string());
        store
            .append_transactional(
                "t",
                0,
                q,
                0,
                &[
                    kv("b".into(), "aborted-b".into()),
                    kv("c".into(), "aborted-c".into()),
                ],
            )
            .unwrap();
        store
            .append_transactional("t", 0, p, 0, &[kv("d".into(), "committed-d".into())])
            .unwrap();
        store.write_marker("t", 0, q, TxnMarker::Abort, 0).unwrap();
        store.write_marker("t", 0, p, TxnMarker::Commit, 0).unwrap();
        expected.push("committed-d".to_string());
        // q goes on: its aborted batch is not its last (the segmented engine keeps a
        // producer's last batch, emptied, for its sequence; that holds its marker, as in Kafka).
        store
            .append_transactional("t", 0, q, 2, &[kv("e".into(), "committed-e".into())])
            .unwrap();
        store.write_marker("t", 0, q, TxnMarker::Commit, 0).unwrap();
        expected.push("committed-e".to_string());
        // Enough distinct keys after them to roll segments past the markers.
        for i in 0..40 {
            let v = format!("pad-{i}-{}", "y".repeat(60));
            store
                .append("t", 0, &[kv(format!("pad{i}"), v.clone())])
                .unwrap();
            expected.push(v);
        }
        store.sync().unwrap();

        let first = store.compact(Some("t")).unwrap();
        assert!(
            first.records_removed >= 2,
            "{first:?}: the aborted records go"
        );
        assert_eq!(visible(store.as_ref(), "t", 0, COMMITTED), expected);
        assert_eq!(visible(store.as_ref(), "t", 0, UNCOMMITTED), expected);
        assert_eq!(
            abort_index_entries(engine, dir),
            1,
            "within delete.retention the marker and its entry stay"
        );

        std::thread::sleep(std::time::Duration::from_millis(600));
        // The next pass (which, like Kafka's, runs for new dirty records) drops the markers.
        for i in 40..60 {
            let v = format!("pad-{i}-{}", "y".repeat(60));
            store
                .append("t", 0, &[kv(format!("pad{i}"), v.clone())])
                .unwrap();
            expected.push(v);
        }
        store.sync().unwrap();
        let second = store.compact(Some("t")).unwrap();
        // (The commit marker stays: its transaction's record is kept.)
        assert_eq!(
            second.records_removed, 1,
            "{second:?}: the abort marker goes"
        );
        assert_eq!(
            abort_index_entries(engine, dir),
            0,
            "the abort marker's index entry goes with it"
        );
        assert_eq!(visible(store.as_ref(), "t", 0, COMMITTED), expected);
        assert_eq!(visible(store.as_ref(), "t", 0, UNCOMMITTED), expected);
        assert!(store.verify().unwrap().is_ok(), "{engine}");
        store.close().unwrap();

        let store = common::open(dir, &opts);
        assert_eq!(visible(store.as_ref(), "t", 0, COMMITTED), expected);
        assert_eq!(visible(store.as_ref(), "t", 0, UNCOMMITTED), expected);
        assert_eq!(abort_index_entries(engine, dir), 0);
        assert!(store.verify().unwrap().is_ok(), "{engine}");
        store.close().unwrap();
    });
}

fn is_fenced<T: std::fmt::Debug>(r: duolog::Result<T>) -> bool {
    matches!(r, Err(Error::ProducerFenced { .. }))
}

/// A marker with a bumped epoch fences the older epoch on its partition even when it ends
/// nothing there (`Ok(None)`): on a partition where the producer has written (and its
/// transaction is not open) and on one where it never has; durable across a clean reopen and a
/// crash. The new epoch starts its sequences at 0.
#[test]
fn a_marker_with_a_bumped_epoch_fences_the_old_epoch_even_when_nothing_is_open() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let store = common::open(dir, &opts);
        store
            .create_topic(
                "t",
                TopicConfig {
                    partitions: 2,
                    ..TopicConfig::default()
                },
            )
            .unwrap();
        let old = producer(store.as_ref(), 3);
        let new = ProducerId {
            id: old.id,
            epoch: 4,
        };
        store
            .append_transactional("t", 0, old, 0, &batch("b", 3))
            .unwrap();
        store
            .write_marker("t", 0, old, TxnMarker::Commit, 0)
            .unwrap();
        for p in 0..2 {
            assert_eq!(
                store
                    .write_marker("t", p, new, TxnMarker::Abort, 1)
                    .unwrap(),
                None,
                "{engine}: nothing open on partition {p}"
            );
        }
        let check = |store: &dyn LogStore, when: &str| {
            for p in 0..2 {
                assert!(
                    is_fenced(store.append_idempotent("t", p, old, 3, &batch("z", 1))),
                    "{engine} {when}: idempotent append of the old epoch on {p}"
                );
                assert!(
                    is_fenced(store.append_transactional("t", p, old, 3, &batch("z", 1))),
                    "{engine} {when}: transactional append of the old epoch on {p}"
                );
                assert!(
                    is_fenced(store.append_idempotent("t", p, old, 0, &batch("z", 1))),
                    "{engine} {when}: old epoch from sequence 0 on {p}"
                );
            }
        };
        check(store.as_ref(), "before a reopen");
        store.close().unwrap();
        let store = common::open(dir, &opts);
        check(store.as_ref(), "after a clean reopen");
        store.abandon();
        drop(store);
        let store = common::open(dir, &opts);
        check(store.as_ref(), "after a crash");
        // The new epoch's sequences start at 0 on both partitions.
        for p in 0..2 {
            store
                .append_idempotent("t", p, new, 0, &batch("n", 1))
                .unwrap();
        }
        assert!(store.verify().unwrap().is_ok(), "{engine}");
        store.close().unwrap();
    });
}
