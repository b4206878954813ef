//! The idempotent producer on both engines (issue 14, item 1): Kafka's `UnifiedLogTest` cases in
//! our own words — duplicates return the original offsets, out-of-order and fenced batches are
//! refused, producer state is rebuilt after a reopen and after a crash — plus producer ids,
//! expiration, bad input, and the CommitLog engine's torn batches.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use duolog::io::{CrashMode, SimFs};
use duolog::{
    AppendResult, EngineKind, Error, FlushPolicy, LogStore, Message, ProducerId, StoreOptions,
    TopicConfig,
};

fn batch(tag: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::new(format!("{tag}-{i}"))).collect()
}

fn open_with(dir: &Path, opts: StoreOptions) -> Box<dyn LogStore> {
    duolog::open(dir, opts).expect("open")
}

fn producer(store: &dyn LogStore, epoch: i16) -> ProducerId {
    ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch,
    }
}

fn ar(base: u64, last: u64) -> AppendResult {
    AppendResult {
        base_offset: base,
        last_offset: last,
    }
}

#[test]
fn each_of_the_last_five_batches_is_a_duplicate_and_the_sixth_back_is_out_of_order() {
    common::for_each_engine(|engine, dir| {
        let store = common::open(dir, &common::small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let p = producer(store.as_ref(), 0);
        let mut results = Vec::new();
        for k in 0..6 {
            let r = store
                .append_idempotent("t", 0, p, 2 * k, &batch(&format!("b{k}"), 2))
                .unwrap();
            assert_eq!(r, ar(2 * k as u64, 2 * k as u64 + 1));
            results.push(r);
        }
        for k in 1..6 {
            let again = store
                .append_idempotent("t", 0, p, 2 * k, &batch(&format!("b{k}"), 2))
                .unwrap();
            assert_eq!(again, results[k as usize], "{engine}: retry of batch {k}");
        }
        match store.append_idempotent("t", 0, p, 0, &batch("b0", 2)) {
            Err(Error::OutOfOrderSequence {
                expected: 12,
                got: 0,
                producer,
                partition: 0,
                ..
            }) => assert_eq!(producer, p),
            other => panic!("{engine}: sixth batch back: {other:?}"),
        }
        // Nothing was written twice.
        let recs = common::read_all(store.as_ref(), "t", 0);
        assert_eq!(recs.len(), 12);
        assert_eq!(recs[11].body(), b"b5-1");
        let state = store.producer_state("t", 0).unwrap();
        assert_eq!(state.len(), 1);
        assert_eq!(
            (
                state[0].producer,
                state[0].last_sequence,
                state[0].last_offset
            ),
            (p, 11, 11)
        );
        assert_eq!(state[0].batches_retained, 5);
    });
}

#[test]
fn a_gap_in_the_sequence_is_out_of_order_and_writes_nothing() {
    common::for_each_engine(|engine, dir| {
        let store = common::open(dir, &common::small_options(engine));
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        let p = producer(store.as_ref(), 0);
        // An unknown producer starts at 0.
        let first = store.append_idempotent("t", 0, p, 3, &batch("x", 1));
        assert!(
            matches!(
                first,
                Err(Error::OutOfOrderSequence {
                    expected: 0,
                    got: 3,
                    ..
                })
            ),
            "{engine}: {first:?}"
        );
        store
            .append_idempotent("t", 0, p, 0, &batch("a", 3))
            .unwrap();
        let gap = store.append_idempotent("t", 0, p, 4, &batch("b", 1));
        assert!(
            matches!(
                gap,
                Err(Error::OutOfOrderSequence {
                    expected: 3,
                    got: 4,
                    ..
                })
            ),
            "{engine}: {gap:?}"
        );
        // A batch that overlaps the last one without matching it is no duplicate either.
        let overlap = store.append_idempotent("t", 0, p, 1, &batch("c", 2));
        assert!(matches!(overlap, Err(Error::OutOfOrderSequence { .. })));
        assert_eq!(store.bounds("t", 0).unwrap().end, 3);
        // Sequences are per partition: the other partition starts at 0 too.
        assert_eq!(
            store
                .append_idempotent("t", 1, p, 0, &batch("d", 1))
                .unwrap(),
            ar(0, 0)
        );
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 3, &batch("e", 1))
                .unwrap(),
            ar(3, 3)
        );
    });
}

#[test]
fn an_older_epoch_is_fenced_and_a_new_epoch_starts_at_zero() {
    common::for_each_engine(|engine, dir| {
        let store = common::open(dir, &common::small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let id = store.allocate_producer_id().unwrap();
        let e1 = ProducerId { id, epoch: 1 };
        let e0 = ProducerId { id, epoch: 0 };
        let e2 = ProducerId { id, epoch: 2 };
        store
            .append_idempotent("t", 0, e1, 0, &batch("a", 2))
            .unwrap();
        let fenced = store.append_idempotent("t", 0, e0, 2, &batch("b", 1));
        assert!(
            matches!(
                fenced,
                Err(Error::ProducerFenced {
                    current_epoch: 1,
                    ..
                })
            ),
            "{engine}: {fenced:?}"
        );
        // A new epoch must start its sequence again.
        let wrong = store.append_idempotent("t", 0, e2, 2, &batch("c", 1));
        assert!(
            matches!(
                wrong,
                Err(Error::OutOfOrderSequence {
                    expected: 0,
                    got: 2,
                    ..
                })
            ),
            "{engine}: {wrong:?}"
        );
        assert_eq!(
            store
                .append_idempotent("t", 0, e2, 0, &batch("d", 1))
                .unwrap(),
            ar(2, 2)
        );
        // The new epoch fences the old one, retries included.
        let old_retry = store.append_idempotent("t", 0, e1, 0, &batch("a", 2));
        assert!(matches!(
            old_retry,
            Err(Error::ProducerFenced {
                current_epoch: 2,
                ..
            })
        ));
        let s = store.producer_state("t", 0).unwrap();
        assert_eq!((s[0].producer, s[0].last_sequence), (e2, 0));
        assert_eq!(store.bounds("t", 0).unwrap().end, 3);
        // Fencing survives a reopen.
        drop(store);
        let store = common::open(dir, &common::small_options(engine));
        let fenced = store.append_idempotent("t", 0, e1, 1, &batch("e", 1));
        assert!(
            matches!(fenced, Err(Error::ProducerFenced { .. })),
            "{fenced:?}"
        );
    });
}

#[test]
fn many_producers_keep_their_own_sequences() {
    common::for_each_engine(|engine, dir| {
        let store = common::open(dir, &common::small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let producers: Vec<ProducerId> = (0..40).map(|_| producer(store.as_ref(), 0)).collect();
        let mut last = vec![
            AppendResult {
                base_offset: 0,
                last_offset: 0
            };
            producers.len()
        ];
        for round in 0..5 {
            for (i, &p) in producers.iter().enumerate() {
                last[i] = store
                    .append_idempotent("t", 0, p, round * 2, &batch(&format!("p{i}r{round}"), 2))
                    .unwrap();
            }
        }
        for (i, &p) in producers.iter().enumerate() {
            let again = store
                .append_idempotent("t", 0, p, 8, &batch(&format!("p{i}r4"), 2))
                .unwrap();
            assert_eq!(again, last[i], "{engine}: producer {i}");
        }
        assert_eq!(store.bounds("t", 0).unwrap().end, 400);
        let state = store.producer_state("t", 0).unwrap();
        assert_eq!(state.len(), 40);
        assert!(state.iter().all(|e| e.last_sequence == 9));
    });
}

#[test]
fn plain_appends_are_unaffected_by_idempotent_ones() {
    common::for_each_engine(|engine, dir| {
        let store = common::open(dir, &common::small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let p = producer(store.as_ref(), 0);
        store.append("t", 0, &batch("plain", 2)).unwrap();
        store
            .append_idempotent("t", 0, p, 0, &batch("idem", 2))
            .unwrap();
        // Plain appends are never deduplicated.
        assert_eq!(store.append("t", 0, &batch("plain", 2)).unwrap(), ar(4, 5));
        assert_eq!(store.append("t", 0, &batch("plain", 2)).unwrap(), ar(6, 7));
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 0, &batch("idem", 2))
                .unwrap(),
            ar(2, 3)
        );
        let recs = common::read_all(store.as_ref(), "t", 0);
        assert_eq!(recs.len(), 8);
        // The engines' producer fields never show as user properties.
        assert!(recs.iter().all(|r| r.properties().is_empty()), "{engine}");
        assert_eq!(
            recs[2].to_message(),
            Message::new("idem-0").with_timestamp(recs[2].timestamp())
        );
        assert_eq!(store.producer_state("t", 0).unwrap().len(), 1);
    });
}

#[test]
fn bad_input_is_a_clear_error() {
    common::for_each_engine(|engine, dir| {
        let store = common::open(dir, &common::small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let id = store.allocate_producer_id().unwrap();
        let ok = ProducerId { id, epoch: 0 };
        let invalid = |r: duolog::Result<AppendResult>| {
            assert!(
                matches!(r, Err(Error::InvalidArgument(_))),
                "{engine}: {r:?}"
            )
        };
        invalid(store.append_idempotent(
            "t",
            0,
            ProducerId { id: -1, epoch: 0 },
            0,
            &batch("a", 1),
        ));
        invalid(store.append_idempotent("t", 0, ProducerId { id, epoch: -1 }, 0, &batch("a", 1)));
        invalid(store.append_idempotent("t", 0, ok, -1, &batch("a", 1)));
        invalid(store.append_idempotent("t", 0, ok, 0, &[]));
        invalid(store.append_idempotent("t", 0, ok, i32::MAX - 1, &batch("a", 3)));
        // Users cannot forge the CommitLog engine's producer fields (reserved there only: the
        // segmented engine keeps its own in the batch header, review E (c)).
        for name in ["__PID", "__EPOCH", "__SEQ", "__LAST"] {
            if engine != EngineKind::CommitLog {
                continue;
            }
            invalid(store.append("t", 0, &[Message::new("x").with_property(name, "1")]));
        }
        assert!(matches!(
            store.append_idempotent("nope", 0, ok, 0, &batch("a", 1)),
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            store.append_idempotent("t", 9, ok, 0, &batch("a", 1)),
            Err(Error::UnknownPartition { .. })
        ));
        assert!(matches!(
            store.producer_state("t", 9),
            Err(Error::UnknownPartition { .. })
        ));
        assert_eq!(store.bounds("t", 0).unwrap().end, 0);
        assert!(store.producer_state("t", 0).unwrap().is_empty());
        let zero = StoreOptions {
            producer_id_expiration: Duration::ZERO,
            ..common::small_options(engine)
        };
        drop(store);
        assert!(matches!(
            duolog::open(dir, zero),
            Err(Error::InvalidArgument(_))
        ));
    });
}

#[test]
fn producers_expire_after_producer_id_expiration() {
    common::for_each_engine(|engine, dir| {
        let opts = StoreOptions {
            producer_id_expiration: Duration::from_millis(300),
            ..common::small_options(engine)
        };
        let store = open_with(dir, opts.clone());
        store.create_topic("t", TopicConfig::default()).unwrap();
        let old = producer(store.as_ref(), 0);
        let live = producer(store.as_ref(), 0);
        store
            .append_idempotent("t", 0, old, 0, &batch("a", 2))
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        store
            .append_idempotent("t", 0, live, 0, &batch("b", 1))
            .unwrap();
        let state = store.producer_state("t", 0).unwrap();
        assert_eq!(state.len(), 1, "{engine}: {state:?}");
        assert_eq!(state[0].producer, live);
        // Forgotten: its retry is no duplicate, and it must start again at 0.
        let retry = store.append_idempotent("t", 0, old, 0, &batch("a", 2));
        assert_eq!(retry.unwrap(), ar(3, 4), "{engine}");
        // Expired producers stay gone after a reopen (they are not rebuilt from the log).
        std::thread::sleep(Duration::from_millis(400));
        drop(store);
        let store = open_with(dir, opts);
        assert!(store.producer_state("t", 0).unwrap().is_empty(), "{engine}");
    });
}

#[test]
fn producer_ids_are_never_handed_out_twice_across_reopens_and_crashes() {
    for engine in common::engines() {
        let mut sim = SimFs::new();
        let opts = |sim: &SimFs| StoreOptions {
            fs: Arc::new(sim.clone()),
            ..common::small_options(engine)
        };
        let mut seen = std::collections::HashSet::new();
        let mut highest = -1;
        for round in 0..8u64 {
            let store = duolog::open("/s", opts(&sim)).unwrap();
            // Past a block of 1,000 in some rounds.
            let n = if round % 3 == 0 { 1_100 } else { 5 };
            for _ in 0..n {
                let id = store.allocate_producer_id().unwrap();
                assert!(id >= 0 && id > highest, "{engine}: {id} after {highest}");
                assert!(seen.insert(id));
                highest = id;
            }
            if round % 2 == 0 {
                store.close().unwrap();
            } else {
                store.abandon();
            }
            drop(store);
            sim = sim.crash(CrashMode::ALL[round as usize % CrashMode::ALL.len()], round);
        }
    }
}

/// Appends six batches of two under `Sync` and returns their results.
fn six_batches(store: &dyn LogStore, p: ProducerId) -> Vec<AppendResult> {
    store.create_topic("t", TopicConfig::default()).unwrap();
    store.append("t", 0, &batch("plain", 3)).unwrap();
    (0..6)
        .map(|k| {
            store
                .append_idempotent("t", 0, p, 2 * k, &batch(&format!("b{k}"), 2))
                .unwrap()
        })
        .collect()
}

#[test]
fn producer_state_is_rebuilt_after_a_clean_reopen() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let store = common::open(dir, &opts);
        let p = producer(store.as_ref(), 0);
        let results = six_batches(store.as_ref(), p);
        store.close().unwrap();
        drop(store);
        let store = common::open(dir, &opts);
        // The close wrote a snapshot, which keeps each producer's last batch (as Kafka's).
        let state = store.producer_state("t", 0).unwrap();
        assert_eq!(state.len(), 1, "{engine}");
        assert_eq!((state[0].last_sequence, state[0].last_offset), (11, 14));
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 10, &batch("b5", 2))
                .unwrap(),
            results[5],
            "{engine}"
        );
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 12, &batch("b6", 1))
                .unwrap(),
            ar(15, 15)
        );
        assert_eq!(store.bounds("t", 0).unwrap().end, 16);
    });
}

/// Every snapshot file in the store directory (both engines' names).
fn snapshot_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".snapshot") || name == "producer-snapshot" {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_damaged_snapshot_falls_back_to_an_older_one_or_the_log() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let store = common::open(dir, &opts);
        let p = producer(store.as_ref(), 0);
        let results = six_batches(store.as_ref(), p);
        store.close().unwrap();
        drop(store);
        let snapshots = snapshot_files(dir);
        assert!(
            !snapshots.is_empty(),
            "{engine}: a clean close writes a snapshot"
        );
        for s in &snapshots {
            let mut b = std::fs::read(s).unwrap();
            let last = b.len() - 1;
            b[last] ^= 0xFF;
            std::fs::write(s, b).unwrap();
        }
        let store = common::open(dir, &opts);
        // Rebuilt from the log: every one of the last five batches is known again.
        for k in 1..6 {
            assert_eq!(
                store
                    .append_idempotent("t", 0, p, 2 * k, &batch(&format!("b{k}"), 2))
                    .unwrap(),
                results[k as usize],
                "{engine}: batch {k}"
            );
        }
    });
}

/// A store that never had an idempotent producer keeps no snapshot (so its opens read nothing
/// more than before); its first idempotent batch starts one.
#[test]
fn plain_stores_keep_no_producer_snapshot() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let store = common::open(dir, &opts);
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        for i in 0..50 {
            store.append("t", i % 2, &batch("plain", 3)).unwrap();
        }
        store.close().unwrap();
        drop(store);
        assert!(snapshot_files(dir).is_empty(), "{engine}");
        let store = common::open(dir, &opts);
        let p = producer(store.as_ref(), 0);
        store.abandon();
        drop(store);
        let store = common::open(dir, &opts);
        assert!(snapshot_files(dir).is_empty(), "{engine}");
        assert_eq!(
            store
                .append_idempotent("t", 1, p, 0, &batch("i", 2))
                .unwrap(),
            ar(75, 76)
        );
        assert!(!snapshot_files(dir).is_empty(), "{engine}");
        store.abandon();
        drop(store);
        let store = common::open(dir, &opts);
        assert_eq!(
            store
                .append_idempotent("t", 1, p, 0, &batch("i", 2))
                .unwrap(),
            ar(75, 76),
            "{engine}"
        );
    });
}

#[test]
fn producer_state_is_rebuilt_after_a_crash() {
    for engine in common::engines() {
        for (m, &mode) in CrashMode::ALL.iter().enumerate() {
            for seed in 0..3u64 {
                let sim = SimFs::new();
                let opts = |sim: &SimFs| StoreOptions {
                    fs: Arc::new(sim.clone()),
                    flush: FlushPolicy::Sync,
                    ..common::small_options(engine)
                };
                let store = duolog::open("/s", opts(&sim)).unwrap();
                let p = producer(store.as_ref(), 0);
                let results = six_batches(store.as_ref(), p);
                // Unacknowledged: may or may not survive the crash, but only whole.
                let maybe = store.append_oneway("t", 0, &batch("maybe", 4)).unwrap();
                store.abandon();
                drop(store);
                let sim = sim.crash(mode, seed * 10 + m as u64);
                let store = duolog::open("/s", opts(&sim)).unwrap();
                let end = store.bounds("t", 0).unwrap().end;
                // A plain batch may keep a prefix on the CommitLog engine (documented).
                assert!(
                    (15..=maybe.last_offset + 1).contains(&end),
                    "{engine} {mode:?}: {end}"
                );
                for k in 1..6 {
                    assert_eq!(
                        store
                            .append_idempotent("t", 0, p, 2 * k, &batch(&format!("b{k}"), 2))
                            .unwrap(),
                        results[k as usize],
                        "{engine} {mode:?} seed {seed}: batch {k}"
                    );
                }
                let next = store
                    .append_idempotent("t", 0, p, 12, &batch("b6", 1))
                    .unwrap();
                assert_eq!(next, ar(end, end), "{engine} {mode:?}");
                assert!(store.verify().unwrap().is_ok());
            }
        }
    }
}

#[test]
fn unacknowledged_idempotent_batches_are_all_or_nothing_after_a_crash() {
    for engine in common::engines() {
        for (m, &mode) in CrashMode::ALL.iter().enumerate() {
            for seed in 0..4u64 {
                let sim = SimFs::new();
                let opts = |sim: &SimFs| StoreOptions {
                    fs: Arc::new(sim.clone()),
                    flush: FlushPolicy::Async {
                        interval: Duration::from_secs(3600),
                    },
                    ..common::small_options(engine)
                };
                let store = duolog::open("/s", opts(&sim)).unwrap();
                store.create_topic("t", TopicConfig::default()).unwrap();
                let p = producer(store.as_ref(), 0);
                let first = store
                    .append_idempotent("t", 0, p, 0, &batch("a", 3))
                    .unwrap();
                store.sync().unwrap();
                // Large records over many pages, never synced.
                let big: Vec<Message> = (0..20)
                    .map(|i| Message::new(vec![b'a' + i as u8; 1500]))
                    .collect();
                store.append_idempotent("t", 0, p, 3, &big).unwrap();
                store.abandon();
                drop(store);
                let sim = sim.crash(mode, seed * 10 + m as u64);
                let store = duolog::open("/s", opts(&sim)).unwrap();
                let end = store.bounds("t", 0).unwrap().end;
                let ctx = format!("{engine} {mode:?} seed {seed}");
                assert!(
                    end == 3 || end == 23,
                    "{ctx}: a torn batch kept {} records",
                    end - 3
                );
                assert_eq!(
                    store
                        .append_idempotent("t", 0, p, 0, &batch("a", 3))
                        .unwrap(),
                    first,
                    "{ctx}"
                );
                // The retry is written whole if the crash took it, and not again otherwise.
                assert_eq!(
                    store.append_idempotent("t", 0, p, 3, &big).unwrap(),
                    ar(3, 22),
                    "{ctx}"
                );
                let recs = common::read_all(store.as_ref(), "t", 0);
                assert_eq!(recs.len(), 23, "{ctx}");
                for (i, r) in recs[3..].iter().enumerate() {
                    assert_eq!(r.body(), &big[i].body[..], "{ctx}");
                }
                assert!(store.verify().unwrap().is_ok(), "{ctx}");
            }
        }
    }
}

/// Found by construction on the CommitLog engine: a power cut that keeps the first records of
/// an idempotent batch. Recovery cuts the log back to the batch's first record (its tail only:
/// records before it stay), so the retry writes the batch whole at the same offsets.
#[test]
fn commitlog_recovery_cuts_a_torn_idempotent_batch_back_to_its_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        flush: FlushPolicy::Async {
            interval: Duration::from_secs(3600),
        },
        ..common::small_options(EngineKind::CommitLog)
    };
    let store = duolog::CommitLogStore::open(dir.path(), opts.clone()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 0,
    };
    store.append("t", 0, &batch("plain", 2)).unwrap();
    store
        .append_idempotent("t", 0, p, 0, &batch("first", 2))
        .unwrap();
    store.sync().unwrap();
    let torn = batch("torn", 6);
    assert_eq!(
        store.append_idempotent("t", 0, p, 2, &torn).unwrap(),
        ar(4, 9)
    );
    // The power cut kept the first three records of the batch: everything from the fourth on
    // is zeros.
    let unit = store.consume_queue_unit("t", 0, 7).unwrap().unwrap();
    let files = store.commitlog_files();
    store.abandon();
    drop(store);
    let size = opts.commitlog.file_size;
    let file = &files[(unit.position / size) as usize];
    let mut bytes = std::fs::read(file).unwrap();
    let at = (unit.position % size) as usize;
    bytes[at..].fill(0);
    std::fs::write(file, bytes).unwrap();

    let store = duolog::CommitLogStore::open(dir.path(), opts).unwrap();
    assert_eq!(
        store.bounds("t", 0).unwrap().end,
        4,
        "the torn batch is gone whole"
    );
    let recs = common::read_all(&store, "t", 0);
    assert_eq!(recs.len(), 4, "records before the batch stay");
    assert_eq!(recs[3].body(), b"first-1");
    assert_eq!(store.producer_state("t", 0).unwrap()[0].last_sequence, 1);
    assert_eq!(
        store.append_idempotent("t", 0, p, 2, &torn).unwrap(),
        ar(4, 9)
    );
    assert_eq!(
        store.append_idempotent("t", 0, p, 2, &torn).unwrap(),
        ar(4, 9)
    );
    assert_eq!(common::read_all(&store, "t", 0).len(), 10);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn deleting_old_records_keeps_the_state_of_live_producers() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let store = common::open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        let p = producer(store.as_ref(), 0);
        let body = vec![b'x'; 2000];
        let mut last = ar(0, 0);
        for k in 0..100 {
            let m: Vec<Message> = (0..2).map(|_| Message::new(body.clone())).collect();
            last = store.append_idempotent("t", 0, p, 2 * k, &m).unwrap();
        }
        let end = store.bounds("t", 0).unwrap().end;
        store.delete_before("t", 0, end).unwrap();
        store.enforce_retention().unwrap();
        let m: Vec<Message> = (0..2).map(|_| Message::new(body.clone())).collect();
        assert_eq!(
            store.append_idempotent("t", 0, p, 198, &m).unwrap(),
            last,
            "{engine}"
        );
        // After a clean reopen (from the snapshot), and after a crash (snapshot and log).
        store.close().unwrap();
        drop(store);
        let store = common::open(dir, &opts);
        assert_eq!(
            store.append_idempotent("t", 0, p, 198, &m).unwrap(),
            last,
            "{engine}"
        );
        store.abandon();
        drop(store);
        let store = common::open(dir, &opts);
        assert_eq!(
            store.append_idempotent("t", 0, p, 198, &m).unwrap(),
            last,
            "{engine}"
        );
    });
}

#[test]
fn segment_rolls_write_producer_snapshots_that_retention_removes_with_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::small_options(EngineKind::Segmented);
    let store = common::open(dir.path(), &opts);
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(store.as_ref(), 0);
    let body = vec![b'y'; 3000];
    for k in 0..200 {
        let m: Vec<Message> = (0..2).map(|_| Message::new(body.clone())).collect();
        store.append_idempotent("t", 0, p, 2 * k, &m).unwrap();
    }
    let part = dir.path().join("t-0");
    let list = |suffix: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&part)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(suffix))
            .collect();
        v.sort();
        v
    };
    let logs = list(".log");
    let snaps = list(".snapshot");
    assert!(logs.len() > 3, "{logs:?}");
    // One snapshot per segment: the first idempotent append's (empty) at 0, then one per roll.
    let bases: Vec<String> = logs[..]
        .iter()
        .map(|l| l.replace(".log", ".snapshot"))
        .collect();
    assert_eq!(snaps, bases);
    let end = store.bounds("t", 0).unwrap().end;
    store.delete_before("t", 0, end - 1).unwrap();
    let left = list(".snapshot");
    assert!(!left.is_empty() && left.len() < snaps.len(), "{left:?}");
    let first_log = list(".log")[0].replace(".log", ".snapshot");
    assert!(
        left.iter().all(|s| *s >= first_log || left.len() == 1),
        "{left:?}"
    );
}

/// When kafka-python is installed, its own decoder (`DefaultRecordBatch`) reads segments with
/// idempotent batches: producer id, epoch and base sequence in the header, CRC valid, records
/// at their offsets.
#[test]
fn kafka_python_decodes_idempotent_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path(), &common::small_options(EngineKind::Segmented));
    store.create_topic("t", TopicConfig::default()).unwrap();
    let a = producer(store.as_ref(), 3);
    let b = producer(store.as_ref(), 0);
    store.append("t", 0, &batch("plain", 2)).unwrap();
    store
        .append_idempotent("t", 0, a, 0, &batch("a", 3))
        .unwrap();
    store
        .append_idempotent("t", 0, b, 0, &batch("b", 1))
        .unwrap();
    store
        .append_idempotent("t", 0, a, 3, &batch("a2", 2))
        .unwrap();
    store.close().unwrap();
    let script = r#"
import sys, glob, os
from kafka.record.default_records import DefaultRecordBatch
for path in sorted(glob.glob(os.path.join(sys.argv[1], "t-0", "*.log"))):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos + 8:pos + 12], "big") + 12
        b = DefaultRecordBatch(bytearray(data[pos:pos + size]))
        assert b.validate_crc(), path
        records = list(b)
        offsets = [r.offset for r in records]
        values = [r.value.decode() for r in records]
        print(b.producer_id, b.producer_epoch, b.base_sequence, offsets[0], offsets[-1], ",".join(values))
        pos += size
"#;
    let out = match std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
    {
        Ok(o) if o.status.success() => o,
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'kafka'") => {
            eprintln!("kafka-python not installed: its decode is skipped");
            return;
        }
        Ok(o) => panic!(
            "kafka-python failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => {
            eprintln!("python3 not found: the kafka-python decode is skipped");
            return;
        }
    };
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let want = [
        "-1 -1 -1 0 1 plain-0,plain-1".to_owned(),
        format!("{} 3 0 2 4 a-0,a-1,a-2", a.id),
        format!("{} 0 0 5 5 b-0", b.id),
        format!("{} 3 3 6 7 a2-0,a2-1", a.id),
    ];
    assert_eq!(got, want);
}

/// Compaction keeps each live producer's last batch (emptied if every record in it is
/// superseded), as Kafka's cleaner does, so its state can still be rebuilt from the log when
/// the snapshots are damaged.
#[test]
fn compaction_keeps_the_last_batch_of_each_live_producer() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::small_options(EngineKind::Segmented);
    let store = common::open(dir.path(), &opts);
    let config = TopicConfig {
        cleanup_policy: duolog::CleanupPolicy::Compact,
        segment_bytes: Some(4096),
        ..TopicConfig::default()
    };
    store.create_topic("t", config).unwrap();
    let p = producer(store.as_ref(), 0);
    let keyed = |tag: &str| -> Vec<Message> {
        (0..3)
            .map(|k| Message::new(format!("{tag}-{k}")).with_key(format!("k{k}")))
            .collect()
    };
    let first = store
        .append_idempotent("t", 0, p, 0, &keyed("idem"))
        .unwrap();
    // Later values of the same keys supersede every record of the producer's batch.
    for i in 0..200 {
        store.append("t", 0, &keyed(&format!("plain{i}"))).unwrap();
    }
    let report = store.compact(Some("t")).unwrap();
    assert!(report.records_removed >= 3, "{report:?}");
    store.close().unwrap();
    drop(store);
    for s in snapshot_files(dir.path()) {
        let mut b = std::fs::read(&s).unwrap();
        b[3] ^= 0xFF;
        std::fs::write(&s, b).unwrap();
    }
    let store = common::open(dir.path(), &opts);
    assert_eq!(
        store
            .append_idempotent("t", 0, p, 0, &keyed("idem"))
            .unwrap(),
        first,
        "the producer's last batch survived compaction"
    );
}

/// One 46-byte entry of Kafka's producer snapshot.
fn kafka_entry(p: ProducerId, last_seq: i32, last_offset: i64, delta: i32, ts: i64) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(&p.id.to_be_bytes());
    e.extend_from_slice(&p.epoch.to_be_bytes());
    e.extend_from_slice(&last_seq.to_be_bytes());
    e.extend_from_slice(&last_offset.to_be_bytes());
    e.extend_from_slice(&delta.to_be_bytes());
    e.extend_from_slice(&ts.to_be_bytes());
    e.extend_from_slice(&0i32.to_be_bytes());
    e.extend_from_slice(&(-1i64).to_be_bytes());
    e
}

/// Sequences wrap from `i32::MAX` to 0 (Kafka's rule), on both engines. A producer starts at 0
/// through the API, so the state near `i32::MAX` is written as a snapshot by hand: Kafka's own
/// layout on the segmented engine, the store's `producer-snapshot` on the CommitLog engine.
#[test]
fn sequences_wrap_from_i32_max_to_zero() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let store = common::open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        let p = producer(store.as_ref(), 0);
        store.append("t", 0, &batch("plain", 3)).unwrap();
        let topic_id = store.topic_id("t").unwrap();
        store.close().unwrap();
        drop(store);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        // The producer's last batch: sequences MAX-1..=MAX at offsets 1..=2.
        let entry = kafka_entry(p, i32::MAX, 2, 1, now);
        match engine {
            EngineKind::Segmented => {
                let mut b = vec![0, 1, 0, 0, 0, 0];
                b.extend_from_slice(&1i32.to_be_bytes());
                b.extend_from_slice(&entry);
                let crc = crc32c::crc32c(&b[6..]);
                b[2..6].copy_from_slice(&crc.to_be_bytes());
                std::fs::write(dir.join("t-0").join(format!("{:020}.snapshot", 3)), b).unwrap();
            }
            _ => {
                let cl = duolog::CommitLogStore::open(dir, opts.clone()).unwrap();
                let position = cl.log_end_position();
                cl.close().unwrap();
                drop(cl);
                let mut b = b"DLPS".to_vec();
                b.extend_from_slice(&[0, 1, 0, 0]);
                b.extend_from_slice(&position.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes());
                b.extend_from_slice(&1u16.to_be_bytes());
                b.extend_from_slice(b"t");
                b.extend_from_slice(&topic_id.to_be_bytes());
                b.extend_from_slice(&0u32.to_be_bytes());
                b.extend_from_slice(&1u32.to_be_bytes());
                b.extend_from_slice(&entry);
                let crc = crc32c::crc32c(&b);
                b.extend_from_slice(&crc.to_be_bytes());
                std::fs::write(dir.join("producer-snapshot"), b).unwrap();
            }
        }
        let store = common::open(dir, &opts);
        let state = store.producer_state("t", 0).unwrap();
        assert_eq!(state.len(), 1, "{engine}");
        assert_eq!(
            (state[0].last_sequence, state[0].last_offset),
            (i32::MAX, 2)
        );
        // The retry of the batch that ended at i32::MAX is a duplicate.
        assert_eq!(
            store
                .append_idempotent("t", 0, p, i32::MAX - 1, &batch("w", 2))
                .unwrap(),
            ar(1, 2),
            "{engine}"
        );
        let past = store.append_idempotent("t", 0, p, i32::MAX, &batch("x", 1));
        assert!(
            matches!(past, Err(Error::OutOfOrderSequence { expected: 0, .. })),
            "{engine}: {past:?}"
        );
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 0, &batch("y", 2))
                .unwrap(),
            ar(3, 4)
        );
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 0, &batch("y", 2))
                .unwrap(),
            ar(3, 4)
        );
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 2, &batch("z", 1))
                .unwrap(),
            ar(5, 5)
        );
        // And after a crash, rebuilt from the log past the snapshot.
        store.abandon();
        drop(store);
        let store = common::open(dir, &opts);
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 2, &batch("z", 1))
                .unwrap(),
            ar(5, 5),
            "{engine}"
        );
    });
}

/// Segments are deleted only once a snapshot covers their producers: here the snapshots of the
/// rolls are gone (as after a crash before the seal wrote them), and `delete_before` removes
/// every segment holding the producer's batches; a crash later, its state must still be there.
#[test]
fn segment_deletion_first_snapshots_the_producers_of_the_deleted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::small_options(EngineKind::Segmented);
    let store = common::open(dir.path(), &opts);
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(store.as_ref(), 0);
    let body = vec![b'z'; 3000];
    let m: Vec<Message> = (0..2).map(|_| Message::new(body.clone())).collect();
    let mut last = ar(0, 0);
    for k in 0..60 {
        last = store.append_idempotent("t", 0, p, 2 * k, &m).unwrap();
    }
    // Plain records after the producer's last batch, so every segment it wrote is sealed.
    let plain: Vec<Message> = (0..2).map(|_| Message::new(body.clone())).collect();
    for _ in 0..30 {
        store.append("t", 0, &plain).unwrap();
    }
    store.abandon();
    drop(store);
    for s in snapshot_files(dir.path()) {
        if !s.ends_with(format!("{:020}.snapshot", 0)) {
            std::fs::remove_file(s).unwrap();
        }
    }
    let store = common::open(dir.path(), &opts);
    store.delete_before("t", 0, last.last_offset + 1).unwrap();
    store.abandon();
    drop(store);
    let store = common::open(dir.path(), &opts);
    assert_eq!(store.append_idempotent("t", 0, p, 118, &m).unwrap(), last);
}

/// A topic deleted and created again under its name starts with no producers, before and
/// after a reopen (the CommitLog snapshot names topics by id; segmented snapshots go with the
/// partition directory).
#[test]
fn a_topic_created_again_does_not_inherit_producers() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let store = common::open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        let p = producer(store.as_ref(), 0);
        store
            .append_idempotent("t", 0, p, 0, &batch("old", 2))
            .unwrap();
        store.close().unwrap();
        drop(store);
        let store = common::open(dir, &opts);
        store.delete_topic("t").unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        assert!(store.producer_state("t", 0).unwrap().is_empty(), "{engine}");
        store.append("t", 0, &batch("plain", 1)).unwrap();
        store.close().unwrap();
        drop(store);
        let store = common::open(dir, &opts);
        assert!(store.producer_state("t", 0).unwrap().is_empty(), "{engine}");
        // The old batch is no duplicate here: it is written, as the new topic's first batch
        // of this producer.
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 0, &batch("old", 2))
                .unwrap(),
            ar(1, 2),
            "{engine}"
        );
    });
}

/// A retry racing its original (two threads send every batch of a producer at the same time,
/// four producers at once): each batch is written once, and both senders get its offsets.
#[test]
fn a_retry_racing_its_original_is_written_once() {
    common::for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &common::small_options(engine)));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let mut threads = Vec::new();
        for n in 0..4 {
            let p = producer(store.as_ref(), 0);
            let barrier = Arc::new(std::sync::Barrier::new(2));
            for _ in 0..2 {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                threads.push(std::thread::spawn(move || {
                    (0..50)
                        .map(|k| {
                            barrier.wait();
                            store
                                .append_idempotent(
                                    "t",
                                    0,
                                    p,
                                    3 * k,
                                    &batch(&format!("p{n}b{k}"), 3),
                                )
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                }));
            }
        }
        let results: Vec<Vec<AppendResult>> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        for pair in results.chunks(2) {
            assert_eq!(
                pair[0], pair[1],
                "{engine}: both senders see the same offsets"
            );
        }
        let recs = common::read_all(store.as_ref(), "t", 0);
        assert_eq!(recs.len(), 4 * 50 * 3, "{engine}: every batch written once");
        for pair in results.chunks(2) {
            for r in &pair[0] {
                let first = &recs[r.base_offset as usize];
                assert!(
                    first.body().ends_with(b"-0"),
                    "{engine}: a batch starts at its base"
                );
            }
        }
    });
}

/// Retention deleting the log files that hold a producer's batches (by size here) keeps its
/// state, across a crash right after (both engines).
#[test]
fn retention_by_size_keeps_the_state_of_live_producers_across_a_crash() {
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let store = common::open(dir, &opts);
        let config = TopicConfig {
            retention_bytes: Some(100_000),
            ..TopicConfig::default()
        };
        store.create_topic("t", config).unwrap();
        let p = producer(store.as_ref(), 0);
        let first = store
            .append_idempotent("t", 0, p, 0, &batch("idem", 2))
            .unwrap();
        let body = vec![b'q'; 4000];
        for _ in 0..100 {
            store.append("t", 0, &[Message::new(body.clone())]).unwrap();
        }
        store.enforce_retention().unwrap();
        assert!(
            store.bounds("t", 0).unwrap().start > first.last_offset,
            "{engine}"
        );
        store.abandon();
        drop(store);
        let store = common::open(dir, &opts);
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 0, &batch("idem", 2))
                .unwrap(),
            first,
            "{engine}"
        );
    });
}
