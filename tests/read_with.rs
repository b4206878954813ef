//! `LogStore::read_with` (the borrowed, visiting read) against `read`/`fetch`, on both engines:
//! over random workloads (keys, tags, properties, tombstones, transactions committed, aborted
//! and left open, compaction, deletes) a visiting read sees exactly the records a fetch returns
//! and stops where it stops, under every isolation level and limit; a visitor can stop early,
//! and can call back into the store (append to the partition it reads) without deadlock.

mod common;

use std::ops::ControlFlow;

use duolog::{
    CleanupPolicy, EngineKind, Error, IsolationLevel, LogStore, Message, ProducerId, ReadLimits,
    TopicConfig, TxnMarker,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// `n` plain messages; `shape` picks key, tags, properties and tombstones per message.
    Append {
        n: usize,
        shape: u8,
    },
    /// `n` messages in producer `p`'s transaction (opened by its first batch).
    Txn {
        p: usize,
        n: usize,
        shape: u8,
    },
    /// Ends producer `p`'s transaction, if one is open.
    End {
        p: usize,
        commit: bool,
    },
    Compact,
    /// Deletes the records before `fraction`/8 of the way from the start to the end.
    DeleteBefore {
        fraction: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..40usize, any::<u8>()).prop_map(|(n, shape)| Op::Append { n, shape }),
        3 => (0..2usize, 1..6usize, any::<u8>()).prop_map(|(p, n, shape)| Op::Txn { p, n, shape }),
        2 => (0..2usize, any::<bool>()).prop_map(|(p, commit)| Op::End { p, commit }),
        1 => Just(Op::Compact),
        1 => (0..4u8).prop_map(|fraction| Op::DeleteBefore { fraction }),
    ]
}

/// Message `i` of a batch shaped by `shape`: keys from a small set (so compaction removes
/// some), hex-unfriendly binary keys (the CommitLog engine stores those hex-encoded), tags,
/// properties, tombstones and empty bodies.
fn message(i: usize, shape: u8) -> Message {
    let salt = (i as u8).wrapping_mul(31) ^ shape;
    let mut m = Message::new(vec![b'a' + salt % 26; (salt as usize * 7) % 300]);
    match salt % 5 {
        0 => {}
        1 => m = m.with_key(format!("key-{}", salt % 7)),
        2 => m = m.with_key(vec![0xff, salt % 3, 0, 0x80]),
        3 => m = Message::tombstone(format!("key-{}", salt % 7)),
        _ => m = m.with_key(format!("key-{}", salt % 7)).with_tags("TagA"),
    }
    if salt.is_multiple_of(3) {
        m = m
            .with_property("color", "red")
            .with_property("n", salt.to_string());
    }
    if salt % 4 == 1 {
        m = m.with_tags(format!("T{}", salt % 3));
    }
    m
}

/// A fresh store of `engine` with topic `t` (compacted, small files) after `ops`.
fn build(engine: EngineKind, dir: &std::path::Path, ops: &[Op]) -> Box<dyn LogStore> {
    let store = common::open(dir, &common::small_options(engine));
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::CompactDelete,
        segment_bytes: Some(4096),
        retention: Some(std::time::Duration::MAX),
        delete_retention: Some(std::time::Duration::from_millis(0)),
        min_compaction_lag: Some(std::time::Duration::from_millis(0)),
        ..TopicConfig::default()
    };
    store.create_topic("t", config).unwrap();
    let producers: Vec<ProducerId> = (0..2)
        .map(|_| ProducerId {
            id: store.allocate_producer_id().unwrap(),
            epoch: 0,
        })
        .collect();
    let mut sequence = [0i32; 2];
    let mut open = [false; 2];
    for op in ops {
        match *op {
            Op::Append { n, shape } => {
                let batch: Vec<Message> = (0..n).map(|i| message(i, shape)).collect();
                store.append("t", 0, &batch).unwrap();
            }
            Op::Txn { p, n, shape } => {
                let batch: Vec<Message> = (0..n).map(|i| message(i, shape)).collect();
                store
                    .append_transactional("t", 0, producers[p], sequence[p], &batch)
                    .unwrap();
                sequence[p] += n as i32;
                open[p] = true;
            }
            Op::End { p, commit } => {
                if open[p] {
                    let marker = if commit {
                        TxnMarker::Commit
                    } else {
                        TxnMarker::Abort
                    };
                    store.write_marker("t", 0, producers[p], marker, 0).unwrap();
                    open[p] = false;
                }
            }
            Op::Compact => {
                store.compact(Some("t")).unwrap();
            }
            Op::DeleteBefore { fraction } => {
                let b = store.bounds("t", 0).unwrap();
                let to = b.start + (b.end - b.start) * u64::from(fraction) / 8;
                store.delete_before("t", 0, to).unwrap();
            }
        }
    }
    store
}

/// One `read_with` call against one `fetch` call from the same offset: the same records (every
/// accessor), the same next offset, the same count.
fn same_call(store: &dyn LogStore, at: u64, limits: ReadLimits) -> u64 {
    let fetch = store.fetch("t", 0, at, limits).unwrap();
    let mut i = 0;
    let progress = store
        .read_with("t", 0, at, limits, &mut |r| {
            let expected = fetch.records.get(i).map(|e| e.view());
            assert_eq!(
                Some(*r),
                expected,
                "record {i} of a read at {at} {limits:?}"
            );
            assert_eq!(
                r.to_message(),
                fetch.records[i].to_message(),
                "message {i} at {at}"
            );
            i += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(progress.visited, fetch.records.len(), "at {at} {limits:?}");
    assert_eq!(
        progress.next_offset, fetch.next_offset,
        "at {at} {limits:?}"
    );
    progress.next_offset
}

/// Every limit and isolation level: drains the partition with both reads, call by call, and
/// checks an early stop and the errors past the end.
fn check_store(store: &dyn LogStore) {
    let b = store.bounds("t", 0).unwrap();
    let limit_sets = [
        ReadLimits::messages(1),
        ReadLimits::messages(7),
        ReadLimits::default(),
        ReadLimits {
            max_messages: 1000,
            max_bytes: 700,
            ..ReadLimits::default()
        },
        ReadLimits {
            max_messages: 50,
            max_bytes: 0,
            ..ReadLimits::default()
        },
        ReadLimits::messages(0),
    ];
    for isolation in [
        IsolationLevel::ReadUncommitted,
        IsolationLevel::ReadCommitted,
    ] {
        for limits in limit_sets {
            let limits = limits.with_isolation(isolation);
            let mut at = b.start;
            let mut calls = 0;
            loop {
                let next = same_call(store, at, limits);
                if next == at {
                    break;
                }
                at = next;
                calls += 1;
                assert!(calls < 100_000);
            }
            // Every offset in range, not only where a drain lands (some fall in gaps).
            for at in (b.start..=b.end).step_by(13) {
                same_call(store, at, limits);
            }
        }
        // Stopping early: at the third record the read returns, the next read starts after it.
        let limits = ReadLimits::default().with_isolation(isolation);
        let fetch = store.fetch("t", 0, b.start, limits).unwrap();
        if fetch.records.len() >= 3 {
            let mut seen = Vec::new();
            let p = store
                .read_with("t", 0, b.start, limits, &mut |r| {
                    seen.push(r.offset());
                    if seen.len() == 3 {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap();
            let expected: Vec<u64> = fetch.records[..3].iter().map(|r| r.offset()).collect();
            assert_eq!(seen, expected);
            assert_eq!((p.visited, p.next_offset), (3, expected[2] + 1));
        }
    }
    let visit_nothing =
        &mut |_: &duolog::RecordRef<'_>| -> ControlFlow<()> { panic!("nothing to visit") };
    for bad in [b.end + 1, u64::MAX] {
        let r = store.read_with("t", 0, bad, ReadLimits::default(), visit_nothing);
        assert!(matches!(r, Err(Error::OffsetOutOfRange { .. })), "{r:?}");
    }
    if b.start > 0 {
        let r = store.read_with("t", 0, b.start - 1, ReadLimits::default(), visit_nothing);
        assert!(matches!(r, Err(Error::OffsetOutOfRange { .. })), "{r:?}");
    }
    let visit = store.read_with("t", 1, 0, ReadLimits::default(), visit_nothing);
    let read = store.fetch("t", 1, 0, ReadLimits::default());
    assert_eq!(
        visit.unwrap_err().to_string(),
        read.unwrap_err().to_string()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn read_with_visits_what_fetch_returns_on_both_engines(
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        for engine in common::engines() {
            let dir = tempfile::tempdir().unwrap();
            let store = build(engine, dir.path(), &ops);
            check_store(store.as_ref());
            // Reopened (recovered state, sealed files read from disk).
            store.close().unwrap();
            drop(store);
            let store = common::open(dir.path(), &common::small_options(engine));
            check_store(store.as_ref());
        }
    }
}

/// A deleted topic (and an unknown one) is the same error for both reads.
#[test]
fn read_with_of_a_deleted_topic_is_the_error_read_gives() {
    common::for_each_engine(|engine, dir| {
        let store = common::open(dir, &common::small_options(engine));
        store.create_topic("gone", TopicConfig::default()).unwrap();
        store.append("gone", 0, &[Message::new("x")]).unwrap();
        store.delete_topic("gone").unwrap();
        for topic in ["gone", "never"] {
            let read = store.read(topic, 0, 0, ReadLimits::default()).unwrap_err();
            let visit = store
                .read_with(topic, 0, 0, ReadLimits::default(), &mut |_| {
                    ControlFlow::Continue(())
                })
                .unwrap_err();
            assert_eq!(visit.to_string(), read.to_string(), "{engine} {topic}");
        }
    });
}

/// The visitor runs with no store lock held: it appends to the very partition it reads (and
/// reads it) from inside the visit. The read sees what was there when it began, within its
/// limits; the appends land after.
#[test]
fn a_visitor_may_append_to_the_partition_it_reads() {
    common::for_each_engine(|engine, dir| {
        let store = common::open(dir, &common::small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let batch: Vec<Message> = (0..500).map(|i| Message::new(format!("{i}"))).collect();
        store.append("t", 0, &batch).unwrap();
        let s: &dyn LogStore = store.as_ref();
        let mut seen = 0;
        let p = s
            .read_with("t", 0, 0, ReadLimits::messages(300), &mut |r| {
                assert_eq!(r.body(), seen.to_string().as_bytes());
                seen += 1;
                s.append("t", 0, &[Message::new("appended inside")])
                    .unwrap();
                let inner = s.read("t", 0, r.offset(), ReadLimits::messages(1)).unwrap();
                assert_eq!(inner[0].offset(), r.offset());
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!((p.visited, p.next_offset), (300, 300), "{engine}");
        assert_eq!(s.bounds("t", 0).unwrap().end, 800, "{engine}");
        let last = s.read("t", 0, 799, ReadLimits::messages(1)).unwrap();
        assert_eq!(last[0].body(), b"appended inside");
    });
}

/// The cases the random workloads may or may not reach, built on purpose: a compacted prefix
/// with gaps (the CommitLog engine reads it through `fetch`'s own path), aborted and open
/// transactions among plain records, tombstones and binary keys, on both engines.
#[test]
fn read_with_matches_fetch_over_a_compacted_prefix_and_aborted_transactions() {
    let mut ops = Vec::new();
    for round in 0..6u8 {
        ops.push(Op::Append {
            n: 30,
            shape: round,
        });
        ops.push(Op::Txn {
            p: 0,
            n: 4,
            shape: round,
        });
        ops.push(Op::Append { n: 5, shape: 200 });
        ops.push(Op::End {
            p: 0,
            commit: round % 2 == 0,
        });
    }
    ops.push(Op::Compact);
    ops.push(Op::Append { n: 20, shape: 7 });
    ops.push(Op::Txn {
        p: 1,
        n: 3,
        shape: 9,
    });
    ops.push(Op::Append { n: 10, shape: 8 });
    common::for_each_engine(|engine, dir| {
        let store = build(engine, dir, &ops);
        let b = store.bounds("t", 0).unwrap();
        let all = store
            .fetch("t", 0, 0, ReadLimits::messages(100_000))
            .unwrap();
        let committed = store
            .fetch(
                "t",
                0,
                0,
                ReadLimits::messages(100_000).with_isolation(IsolationLevel::ReadCommitted),
            )
            .unwrap();
        // The workload did what it is for: compaction left gaps, aborted records are hidden
        // from read_committed, the open transaction holds the last stable offset back.
        assert!(
            (all.records.len() as u64) < b.end - b.start - 12,
            "{engine}: {} of {}",
            all.records.len(),
            b.end
        );
        assert!(committed.records.len() < all.records.len(), "{engine}");
        assert!(b.last_stable < b.end, "{engine}");
        check_store(store.as_ref());
    });
}

fn damaged_body(p: u32, n: u64) -> Vec<u8> {
    format!("p{p}-n{n}-{}", "z".repeat((n % 300) as usize)).into_bytes()
}

/// Damage the store did not see at open (a bit flipped, garbage written over the middle of any
/// file, on the simulated disk) never reaches a visitor: every record `read_with` shows is one
/// that was appended, and every failure is a clear `Corrupted` (or out-of-range) error, never
/// a panic.
#[test]
fn read_with_never_shows_a_damaged_record() {
    use duolog::io::{CrashMode, FileSystem, SimFs};
    for engine in common::engines() {
        let template = SimFs::new();
        let options = |sim: &SimFs| duolog::StoreOptions {
            fs: std::sync::Arc::new(sim.clone()),
            ..common::small_options(engine)
        };
        let store = duolog::open("/store", options(&template)).unwrap();
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        // Enough for several sealed segments per partition (64 KiB each), whose damage the
        // open does not scan for.
        for n in 0..2000u64 {
            let p = (n % 2) as u32;
            let m = Message::new(damaged_body(p, n / 2)).with_key(format!("k{}", n % 37));
            store.append("t", p, &[m]).unwrap();
        }
        store.close().unwrap();
        drop(store);
        let (mut shown, mut refused) = (0usize, 0usize);
        for file in template.files() {
            let len = template.read_file(&file).unwrap().len();
            for (i, at) in [len / 5, len / 3, len / 2, len * 2 / 3]
                .into_iter()
                .enumerate()
            {
                let sim = template.crash(CrashMode::DropUnsynced, 1);
                let mut bytes = sim.read_file(&file).unwrap();
                if i == 3 {
                    let end = (at + 64).min(bytes.len());
                    for b in &mut bytes[at..end] {
                        *b = b.wrapping_mul(31).wrapping_add(7);
                    }
                } else if let Some(b) = bytes.get_mut(at) {
                    *b ^= 0x10;
                }
                sim.write_file_synced(&file, &bytes).unwrap();
                let what = format!("{engine} {} at {at}", file.display());
                let Ok(store) = duolog::open("/store", options(&sim)) else {
                    refused += 1;
                    continue;
                };
                for p in 0..2u32 {
                    let Ok(b) = store.bounds("t", p) else {
                        continue;
                    };
                    let mut at = b.start;
                    while at < b.end {
                        // Within one call, offsets only go up: a round retried (after the
                        // indexes are repaired) must not show a record twice.
                        let mut last = None;
                        let r = store.read_with("t", p, at, ReadLimits::messages(50), &mut |r| {
                            assert!(last < Some(r.offset()), "{what}: {p}/{} twice", r.offset());
                            last = Some(r.offset());
                            assert_eq!(
                                r.body(),
                                &damaged_body(p, r.offset())[..],
                                "{what}: {p}/{}",
                                r.offset()
                            );
                            shown += 1;
                            ControlFlow::Continue(())
                        });
                        match r {
                            Ok(progress) if progress.next_offset > at => at = progress.next_offset,
                            Ok(progress) => panic!("{what}: no progress at {at}: {progress:?}"),
                            Err(Error::Corrupted { .. } | Error::OffsetOutOfRange { .. }) => {
                                at += 1
                            }
                            Err(e) => panic!("{what}: read_with {p}/{at}: {e}"),
                        }
                    }
                }
                let _ = store.close();
            }
        }
        eprintln!("{engine}: {shown} records shown, {refused} damaged stores refused at open");
    }
}
