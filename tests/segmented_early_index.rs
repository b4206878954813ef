//! A segmented partition's first index entries are held in memory: a new partition's segment
//! has a log and no `.index` / `.timeindex` until its entries outgrow memory (32 of either),
//! it is sealed, or never. Lookups by offset and by time answer the same wherever the entries
//! are: before and after the files are created, after its handle is evicted and opened again,
//! after a clean reopen, and after a crash.

mod common;

use std::path::Path;
use std::time::Duration;

use duolog::{EngineKind, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};

/// Index files (`.index`, `.timeindex`) in a partition directory.
fn index_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".index") || n.ends_with(".timeindex"))
        .collect();
    names.sort();
    names
}

fn options(max_open_files: usize) -> StoreOptions {
    StoreOptions {
        engine: Some(EngineKind::Segmented),
        max_open_files,
        flush: duolog::FlushPolicy::Async {
            interval: Duration::from_secs(3600),
        },
        segmented: duolog::SegmentedOptions {
            // An entry per batch of 1 KiB: 32 batches fill the memory's share.
            index_interval_bytes: 1000,
            ..duolog::SegmentedOptions::default()
        },
        ..StoreOptions::default()
    }
}

/// Appends `n` records of about 1 KiB to `t`-`p`, each a millisecond apart in store time, and
/// returns their store timestamps.
fn append(store: &dyn LogStore, p: u32, n: usize, stamps: &mut Vec<i64>) {
    for _ in 0..n {
        let i = stamps.len();
        let r = store
            .append("t", p, &[Message::new(format!("{i:01024}").into_bytes())])
            .unwrap();
        assert_eq!(r.base_offset, i as u64);
        let rec = store
            .read("t", p, r.base_offset, ReadLimits::default())
            .unwrap();
        stamps.push(rec[0].store_timestamp());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Every offset reads back its own record, and every record's timestamp finds it (or an
/// earlier record of the same millisecond) by time.
fn check(store: &dyn LogStore, p: u32, stamps: &[i64], ctx: &str) {
    for (i, &ts) in stamps.iter().enumerate() {
        let r = store
            .read(
                "t",
                p,
                i as u64,
                ReadLimits {
                    max_messages: 1,
                    ..ReadLimits::default()
                },
            )
            .unwrap();
        assert_eq!(r.len(), 1, "{ctx}: offset {i}");
        assert_eq!(r[0].offset(), i as u64, "{ctx}");
        assert_eq!(r[0].body(), format!("{i:01024}").as_bytes(), "{ctx}");
        let first_of_ms = stamps.iter().position(|&t| t >= ts).unwrap() as u64;
        assert_eq!(
            store.offset_for_time("t", p, ts).unwrap(),
            Some(first_of_ms),
            "{ctx}: time {ts} (offset {i})"
        );
    }
    let last = *stamps.last().unwrap();
    assert_eq!(
        store.offset_for_time("t", p, last + 1).unwrap(),
        None,
        "{ctx}"
    );
}

#[test]
fn a_new_partition_has_no_index_files_until_its_entries_outgrow_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options(64)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let pdir = dir.path().join("t-0");
    let mut stamps = Vec::new();
    append(&*store, 0, 1, &mut stamps);
    store.sync().unwrap();
    assert_eq!(index_files(&pdir), Vec::<String>::new(), "after one record");
    append(&*store, 0, 20, &mut stamps);
    assert_eq!(index_files(&pdir), Vec::<String>::new(), "after 21 records");
    check(&*store, 0, &stamps, "in memory");
    append(&*store, 0, 40, &mut stamps);
    assert_eq!(
        index_files(&pdir),
        [
            "00000000000000000000.index",
            "00000000000000000000.timeindex"
        ],
        "after 61 records"
    );
    check(&*store, 0, &stamps, "in the files");
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    store.close().unwrap();
    let store = duolog::open(dir.path(), options(64)).unwrap();
    check(&*store, 0, &stamps, "reopened with files");
    store.close().unwrap();
}

#[test]
fn entries_in_memory_survive_eviction_a_clean_reopen_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    const PARTS: u32 = 40;
    // Fewer open files than partitions: every round evicts and reopens the handles.
    let store = duolog::open(dir.path(), options(16)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(PARTS))
        .unwrap();
    let mut stamps = vec![Vec::new(); PARTS as usize];
    for _ in 0..5 {
        for p in 0..PARTS {
            append(&*store, p, 2, &mut stamps[p as usize]);
        }
    }
    for p in 0..PARTS {
        check(&*store, p, &stamps[p as usize], "evicted");
        assert_eq!(
            index_files(&dir.path().join(format!("t-{p}"))),
            Vec::<String>::new()
        );
    }
    store.close().unwrap();
    drop(store);
    let store = duolog::open(dir.path(), options(16)).unwrap();
    for p in 0..PARTS {
        check(&*store, p, &stamps[p as usize], "clean reopen");
        assert_eq!(
            index_files(&dir.path().join(format!("t-{p}"))),
            Vec::<String>::new()
        );
    }
    // Partition 0 outgrows memory after the reopen: its files hold the entries found by the
    // open's scan and the new ones.
    append(&*store, 0, 40, &mut stamps[0]);
    assert_eq!(index_files(&dir.path().join("t-0")).len(), 2);
    check(&*store, 0, &stamps[0], "outgrown after a reopen");
    store.sync().unwrap();
    // A crash: nothing is written as a close would.
    store.abandon();
    drop(store);
    let store = duolog::open(dir.path(), options(16)).unwrap();
    for p in 0..PARTS {
        check(&*store, p, &stamps[p as usize], "after a crash");
    }
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    store.close().unwrap();
}
