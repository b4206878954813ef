//! Lookups by key and by time on both engines: exact answers against a model on a large store
//! (hash slots shared by many keys, index files rolling), empty results, time-range edges,
//! rebuilds after a crash and on demand, and retention removing index files.
//! `DUOLOG_INDEX_MESSAGES` sets the store size (default 1,000,000 messages, 100,000 keys).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{for_each_engine, open, small_options};
use duolog::{EngineKind, IndexOptions, Message, StoreOptions, TopicConfig};

const ALL_TIME: (i64, i64) = (0, i64::MAX / 2);

fn offsets(m: &[duolog::KeyMatch]) -> BTreeSet<(u32, u64)> {
    m.iter().map(|k| (k.partition, k.record.offset())).collect()
}

#[test]
fn every_key_query_is_exact_on_a_large_store() {
    let messages: usize = std::env::var("DUOLOG_INDEX_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let keys = (messages / 10).max(1);
    for_each_engine(|engine, dir| {
        let opts = StoreOptions {
            // 4,093 slots for 100,000 keys: every slot is shared; 250,000 entries per file: rolls.
            index: IndexOptions {
                enabled: true,
                slots: 4093,
                max_entries: 250_000,
            },
            commitlog: duolog::CommitLogOptions {
                file_size: 64 << 20,
                ..small_options(engine).commitlog
            },
            segmented: duolog::SegmentedOptions {
                segment_bytes: 64 << 20,
                max_index_bytes: 1 << 20,
                ..small_options(engine).segmented
            },
            ..small_options(engine)
        };
        let store = open(dir, &opts);
        store
            .create_topic("orders", TopicConfig::with_partitions(4))
            .unwrap();
        store.create_topic("other", TopicConfig::default()).unwrap();
        let mut model: HashMap<String, BTreeSet<(u32, u64)>> = HashMap::new();
        let mut batch = Vec::with_capacity(100);
        let mut i = 0usize;
        while i < messages {
            let p = (i / 100 % 4) as u32;
            batch.clear();
            for j in 0..100.min(messages - i) {
                let n = i + j;
                let mut m = Message::new(format!("v{n}")).with_key(format!("key-{}", n % keys));
                if n.is_multiple_of(7) {
                    m = m.with_property("KEYS", format!("alt-{} shared", n % 1000));
                }
                batch.push(m);
            }
            let r = store.append_oneway("orders", p, &batch).unwrap();
            for (j, _) in batch.iter().enumerate() {
                let n = i + j;
                let at = (p, r.base_offset + j as u64);
                model
                    .entry(format!("key-{}", n % keys))
                    .or_default()
                    .insert(at);
                if n.is_multiple_of(7) {
                    model
                        .entry(format!("alt-{}", n % 1000))
                        .or_default()
                        .insert(at);
                }
            }
            i += batch.len();
        }
        // The same keys in another topic never leak into "orders" answers.
        store
            .append("other", 0, &[Message::new("x").with_key("key-1")])
            .unwrap();
        assert!(store.disk_usage().unwrap().files > 0);
        for (key, expected) in &model {
            let got = store
                .find_by_key("orders", key, ALL_TIME, usize::MAX)
                .unwrap();
            assert_eq!(&offsets(&got), expected, "{engine}: key {key}");
            assert!(got.iter().all(
                |m| m.record.store_timestamp() >= got.last().unwrap().record.store_timestamp()
            ));
        }
        let limited = store.find_by_key("orders", "key-1", ALL_TIME, 3).unwrap();
        assert_eq!(limited.len(), 3.min(model["key-1"].len()));
        assert_eq!(
            store
                .find_by_key("other", "key-1", ALL_TIME, 10)
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .find_by_key("orders", "no-such-key", ALL_TIME, 10)
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            store.find_by_key("nope", "k", ALL_TIME, 10),
            Err(duolog::Error::UnknownTopic(_))
        ));
    });
}

#[test]
fn time_range_edges_are_exact() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        for _ in 0..3 {
            store
                .append("t", 0, &[Message::new("a").with_key("k")])
                .unwrap();
            std::thread::sleep(Duration::from_millis(15));
        }
        let all = store.find_by_key("t", "k", ALL_TIME, 10).unwrap();
        assert_eq!(all.len(), 3);
        let ts: Vec<i64> = all
            .iter()
            .rev()
            .map(|m| m.record.store_timestamp())
            .collect();
        assert!(ts[0] < ts[1] && ts[1] < ts[2]);
        let got =
            |from: i64, to: i64| offsets(&store.find_by_key("t", "k", (from, to), 10).unwrap());
        assert_eq!(
            got(ts[1], ts[1]),
            BTreeSet::from([(0, 1)]),
            "{engine}: both edges inclusive"
        );
        assert_eq!(got(ts[0] + 1, ts[2] - 1), BTreeSet::from([(0, 1)]));
        assert_eq!(got(ts[2] + 1, i64::MAX / 2), BTreeSet::new());
        assert_eq!(got(0, ts[0] - 1), BTreeSet::new());
        assert_eq!(got(ts[2], ts[0]), BTreeSet::new(), "an empty range");
    });
}

#[test]
fn offset_for_time_is_kafkas_offsets_for_times() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        assert_eq!(
            store.offset_for_time("t", 0, 0).unwrap(),
            None,
            "empty partition"
        );
        let mut phase_start = Vec::new();
        for phase in 0..3 {
            let r = store
                .append(
                    "t",
                    0,
                    &(0..50)
                        .map(|i| Message::new(format!("{phase}-{i}")))
                        .collect::<Vec<_>>(),
                )
                .unwrap();
            let first = store
                .read("t", 0, r.base_offset, duolog::ReadLimits::messages(1))
                .unwrap();
            phase_start.push((r.base_offset, first[0].store_timestamp()));
            std::thread::sleep(Duration::from_millis(15));
        }
        assert_eq!(
            store.offset_for_time("t", 0, 0).unwrap(),
            Some(0),
            "{engine}: before everything"
        );
        for &(offset, ts) in &phase_start {
            assert_eq!(
                store.offset_for_time("t", 0, ts).unwrap(),
                Some(offset),
                "{engine}"
            );
        }
        // Between phases: the first record of the next phase.
        assert_eq!(
            store.offset_for_time("t", 0, phase_start[1].1 - 1).unwrap(),
            Some(phase_start[1].0)
        );
        let last = store
            .read("t", 0, 149, duolog::ReadLimits::messages(1))
            .unwrap()[0]
            .store_timestamp();
        assert_eq!(
            store.offset_for_time("t", 0, last + 1).unwrap(),
            None,
            "after everything"
        );
        assert_eq!(store.offset_for_time("t", 1, 0).unwrap(), None);
    });
}

#[test]
fn index_is_rebuilt_after_a_crash_and_on_demand() {
    for_each_engine(|engine, dir| {
        let opts = small_options(engine);
        {
            let store = open(dir, &opts);
            store.create_topic("t", TopicConfig::default()).unwrap();
            for i in 0..2000 {
                store
                    .append_oneway(
                        "t",
                        0,
                        &[Message::new("v").with_key(format!("k{}", i % 100))],
                    )
                    .unwrap();
            }
            // Crash before any index checkpoint covers these.
            store.abandon();
        }
        {
            let store = open(dir, &opts);
            assert_eq!(
                store.find_by_key("t", "k7", ALL_TIME, 1000).unwrap().len(),
                20,
                "{engine}"
            );
            assert!(
                store.verify().unwrap().is_ok(),
                "{:?}",
                store.verify().unwrap().problems
            );
        }
        // Damage: remove every index file; reopen rebuilds nothing (checkpoint says indexed)...
        let idx = dir.join("index");
        for e in std::fs::read_dir(&idx).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "checkpoint" {
                std::fs::remove_file(p).unwrap();
            }
        }
        let store = open(dir, &opts);
        assert!(
            store
                .find_by_key("t", "k7", ALL_TIME, 1000)
                .unwrap()
                .is_empty()
        );
        assert!(
            !store.verify().unwrap().is_ok(),
            "verify notices the missing index"
        );
        // ...and `reindex` brings it back.
        assert_eq!(store.reindex().unwrap(), 2000);
        assert_eq!(
            store.find_by_key("t", "k7", ALL_TIME, 1000).unwrap().len(),
            20
        );
        assert!(store.verify().unwrap().is_ok());
    });
}

#[test]
fn garbled_index_files_are_rebuilt_at_open() {
    for_each_engine(|engine, dir| {
        let opts = small_options(engine);
        {
            let store = open(dir, &opts);
            store.create_topic("t", TopicConfig::default()).unwrap();
            for i in 0..500 {
                store
                    .append_oneway(
                        "t",
                        0,
                        &[Message::new("v").with_key(format!("k{}", i % 50))],
                    )
                    .unwrap();
            }
        }
        for e in std::fs::read_dir(dir.join("index")).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "checkpoint" {
                std::fs::write(&p, b"garbage").unwrap();
            }
        }
        let store = open(dir, &opts);
        assert_eq!(
            store.find_by_key("t", "k3", ALL_TIME, 100).unwrap().len(),
            10,
            "{engine}"
        );
    });
}

#[test]
fn retention_removes_index_files_whose_records_are_gone() {
    for engine in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = small_options(engine);
        opts.index = IndexOptions {
            enabled: true,
            slots: 101,
            max_entries: 500,
        };
        opts.commitlog.retention_bytes = Some(256 * 1024);
        opts.commitlog.retention = None;
        opts.segmented.retention_bytes = Some(256 * 1024);
        opts.segmented.retention = None;
        let store = open(dir.path(), &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        let index_files = || std::fs::read_dir(dir.path().join("index")).unwrap().count() - 1;
        for i in 0..3000 {
            store
                .append_oneway(
                    "t",
                    0,
                    &[Message::new(vec![b'x'; 300]).with_key(format!("k{i}"))],
                )
                .unwrap();
            if i % 500 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let before = index_files();
        assert!(before >= 6, "{engine}: {before} index files");
        store.enforce_retention().unwrap();
        let start = store.bounds("t", 0).unwrap().start;
        assert!(
            start > 1000,
            "{engine}: retention moved the start to {start}"
        );
        let after = index_files();
        assert!(
            after < before,
            "{engine}: {after} index files of {before} left"
        );
        // What is left still answers for every live record.
        assert_eq!(
            store
                .find_by_key("t", &format!("k{}", start), ALL_TIME, 10)
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .find_by_key("t", "k0", ALL_TIME, 10)
                .unwrap()
                .is_empty()
        );
        assert!(
            store.verify().unwrap().is_ok(),
            "{:?}",
            store.verify().unwrap().problems
        );
    }
}

#[test]
fn disabled_index_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = small_options(EngineKind::CommitLog);
    opts.index.enabled = false;
    let store = open(dir.path(), &opts);
    store.create_topic("t", TopicConfig::default()).unwrap();
    assert!(matches!(
        store.find_by_key("t", "k", ALL_TIME, 1),
        Err(duolog::Error::InvalidArgument(_))
    ));
}

/// Regression: a key-index roll that failed (disk full) after its batch was already in the log
/// left unpublished records behind. The roll now happens before the batch is written.
#[test]
fn full_disk_at_an_index_roll_leaves_the_log_as_it_was() {
    for engine in common::engines() {
        let sim = duolog::io::SimFs::new();
        let mut opts = small_options(engine);
        opts.fs = std::sync::Arc::new(sim.clone());
        opts.index = IndexOptions {
            enabled: true,
            slots: 17,
            max_entries: 10,
        };
        let store = duolog::open("/store", opts.clone()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        let keyed = |i: usize| Message::new(format!("v{i}")).with_key(format!("k{i}"));
        for i in 0..10 {
            store.append("t", 0, &[keyed(i)]).unwrap();
        }
        // The next keyed append needs a new index file: make its creation fail.
        sim.fail_after(0, duolog::io::Fault::NoSpace);
        let err = store.append("t", 0, &[keyed(10)]).unwrap_err();
        assert!(err.is_storage_full(), "{engine}: {err}");
        sim.clear_faults();
        assert_eq!(
            store.bounds("t", 0).unwrap().end,
            10,
            "{engine}: the failed batch is not visible"
        );
        assert_eq!(store.append("t", 0, &[keyed(11)]).unwrap().base_offset, 10);
        assert!(
            store.verify().unwrap().is_ok(),
            "{engine}: {:?}",
            store.verify().unwrap().problems
        );
        store.abandon();
        drop(store);
        let store = duolog::open("/store", opts).unwrap();
        let recs = store
            .read("t", 0, 0, duolog::ReadLimits::default())
            .unwrap();
        assert_eq!(recs.len(), 11, "{engine}");
        assert_eq!(recs[10].body(), b"v11");
        assert_eq!(store.find_by_key("t", "k11", ALL_TIME, 5).unwrap().len(), 1);
    }
}

/// Regression: a rebuild indexes partition after partition, so store times arrive out of order;
/// lowering an index file's begin time under entries already written shifted their times, and
/// narrow ranges missed them. Partitions written newest-last, then reindexed: every record is
/// found at its exact store time.
#[test]
fn narrow_time_ranges_find_every_record_after_a_reindex_of_many_partitions() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store
            .create_topic("t", TopicConfig::with_partitions(3))
            .unwrap();
        // Partition 2 first, partition 0 last, more than a second apart: a rebuild meets them
        // newest first.
        for p in (0..3u32).rev() {
            for i in 0..3 {
                store
                    .append("t", p, &[Message::new("v").with_key(format!("k{p}-{i}"))])
                    .unwrap();
            }
            if p > 0 {
                std::thread::sleep(Duration::from_millis(1100));
            }
        }
        let check = |when: &str| {
            for p in 0..3u32 {
                for r in common::read_all(store.as_ref(), "t", p) {
                    let key = format!("k{p}-{}", r.offset());
                    let ts = r.store_timestamp();
                    let got = store.find_by_key("t", &key, (ts, ts), 10).unwrap();
                    assert_eq!(
                        offsets(&got),
                        BTreeSet::from([(p, r.offset())]),
                        "{engine} {when}: {key} at its exact store time {ts}"
                    );
                    assert!(
                        store
                            .find_by_key("t", &key, (ts + 1, ts + 1000), 10)
                            .unwrap()
                            .is_empty(),
                        "{engine} {when}: {key} after its time"
                    );
                }
            }
            let report = store.verify().unwrap();
            assert!(report.is_ok(), "{engine} {when}: {:?}", report.problems);
        };
        check("as written");
        assert_eq!(store.reindex().unwrap(), 9);
        check("after reindex");
        drop(store);
        // A rebuild at open (garbled index file) meets the same order.
        let idx = dir.join("index");
        for e in std::fs::read_dir(&idx).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "checkpoint" {
                std::fs::write(p, b"garbage").unwrap();
            }
        }
        let store = open(dir, &small_options(engine));
        let check_reopened = || {
            for p in 0..3u32 {
                for r in common::read_all(store.as_ref(), "t", p) {
                    let key = format!("k{p}-{}", r.offset());
                    let ts = r.store_timestamp();
                    assert_eq!(
                        store.find_by_key("t", &key, (ts, ts), 10).unwrap().len(),
                        1,
                        "{engine} after a rebuild at open: {key}"
                    );
                }
            }
        };
        check_reopened();
    });
}

/// Every time range a caller can pass is answered (empty or not), never a panic.
#[test]
fn any_time_range_is_answered_without_overflow() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        store
            .append("t", 0, &[Message::new("v").with_key("k")])
            .unwrap();
        let ts = store
            .read("t", 0, 0, duolog::ReadLimits::default())
            .unwrap()[0]
            .store_timestamp();
        let one = |from: i64, to: i64| {
            store
                .find_by_key("t", "k", (from, to), 10)
                .unwrap_or_else(|e| panic!("{engine}: ({from}, {to}): {e}"))
                .len()
        };
        assert_eq!(one(0, i64::MAX), 1, "{engine}");
        assert_eq!(one(i64::MIN, i64::MAX), 1, "{engine}");
        assert_eq!(one(i64::MIN, ts), 1, "{engine}");
        assert_eq!(one(ts, i64::MAX), 1, "{engine}");
        assert_eq!(one(i64::MAX, i64::MAX), 0, "{engine}");
        assert_eq!(one(i64::MAX - 500, i64::MAX), 0, "{engine}");
        assert_eq!(one(i64::MIN, i64::MIN), 0, "{engine}");
        assert_eq!(one(i64::MIN, i64::MIN + 500), 0, "{engine}");
        assert_eq!(one(-5_000, -1), 0, "{engine}: negative");
        assert_eq!(one(i64::MAX, i64::MIN), 0, "{engine}: reversed");
        assert_eq!(one(ts + 1, ts - 1), 0, "{engine}: reversed");
        assert_eq!(
            store
                .find_by_key("t", "k", (0, i64::MAX), usize::MAX)
                .unwrap()
                .len(),
            1
        );
    });
}
