//! Rolling a segment, on the segmented engine: a power cut at every I/O step of the rolling
//! append (and of the seal that follows it), then reopen and a retention pass, loses nothing
//! acknowledged; a failed sync anywhere in the roll poisons the store; the roll never leaves a
//! half-created segment that wedges later appends; time rolls and retention follow the batches'
//! timestamps, not the time the store was opened.

mod common;

use std::sync::Arc;
use std::time::Duration;

use duolog::io::{CrashMode, Fault, SimFs};
use duolog::{
    EngineKind, Error, FlushPolicy, IndexOptions, LogStore, Message, SegmentedOptions,
    StoreOptions, TopicConfig,
};

fn options(sim: &SimFs) -> StoreOptions {
    StoreOptions {
        engine: Some(EngineKind::Segmented),
        fs: Arc::new(sim.clone()),
        flush: FlushPolicy::Sync,
        segmented: SegmentedOptions {
            segment_bytes: 4096,
            index_interval_bytes: 512,
            max_index_bytes: 4096,
            ..SegmentedOptions::default()
        },
        index: IndexOptions {
            enabled: true,
            slots: 101,
            max_entries: 1024,
        },
        ..StoreOptions::default()
    }
}

fn msg(n: usize) -> Message {
    let mut body = format!("record-{n}-").into_bytes();
    body.resize(500, b'x');
    Message::new(body).with_key(format!("k{n}"))
}

/// Appends until the next append must roll; returns how many records are in the first segment.
fn fill_first_segment(store: &dyn LogStore) -> usize {
    for n in 0..7 {
        store.append("t", 0, &[msg(n)]).unwrap();
    }
    7
}

/// A store whose first segment is full and whose recovery point is at its end (the open writes
/// recovery points), so the next append rolls and a crash recovers from the new segment.
fn store_ready_to_roll(sim: &SimFs) -> (Box<dyn LogStore>, usize) {
    let store = duolog::open("/s", options(sim)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let acked = fill_first_segment(store.as_ref());
    store.close().unwrap();
    drop(store);
    (duolog::open("/s", options(sim)).unwrap(), acked)
}

#[test]
fn power_cut_at_every_step_of_a_roll_keeps_every_acknowledged_record() {
    // Count the steps of the rolling append.
    let steps = roll_steps();
    assert!(steps > 3, "a roll takes several I/O steps ({steps})");
    let mut cases = 0;
    for k in 0..=steps + 2 {
        for (seed, mode) in CrashMode::ALL.iter().enumerate() {
            let sim = SimFs::new();
            let (store, acked) = store_ready_to_roll(&sim);
            sim.fail_after(k, Fault::Eio);
            let rolled = store.append("t", 0, &[msg(7)]).is_ok();
            store.abandon();
            drop(store);
            let crashed = sim.crash(*mode, seed as u64 * 31 + k);
            let ctx = format!("power cut at step {k} of the roll, {mode:?}");
            let store = duolog::open("/s", options(&crashed))
                .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            store.enforce_retention().unwrap();
            let b = store.bounds("t", 0).unwrap();
            let want = acked + usize::from(rolled);
            assert_eq!(b.start, 0, "{ctx}: retention deleted acknowledged records");
            assert!(b.end as usize >= want, "{ctx}: end {} < {want}", b.end);
            let recs = common::read_all(store.as_ref(), "t", 0);
            for (n, r) in recs.iter().enumerate().take(want) {
                assert_eq!(r.body(), &msg(n).body[..], "{ctx}: record {n}");
            }
            let report = store.verify().unwrap();
            assert!(report.is_ok(), "{ctx}: {:?}", report.problems);
            // Appends go on where the log ends, rolling again as needed.
            for n in b.end as usize..b.end as usize + 10 {
                store
                    .append("t", 0, &[msg(n)])
                    .unwrap_or_else(|e| panic!("{ctx}: append {n}: {e}"));
            }
            cases += 1;
        }
    }
    eprintln!("{cases} power cuts over {steps} I/O steps of a roll");
}

fn roll_steps() -> u64 {
    let sim = SimFs::new();
    let (store, _) = store_ready_to_roll(&sim);
    let before = sim.op_count();
    store.append("t", 0, &[msg(7)]).unwrap();
    sim.op_count() - before
}

#[test]
fn failed_sync_during_a_roll_poisons_the_store() {
    let sim = SimFs::new();
    let store = duolog::open("/s", options(&sim)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    fill_first_segment(store.as_ref());
    sim.fail_syncs(true);
    let r = store.append("t", 0, &[msg(7)]);
    assert!(
        r.is_err(),
        "the roll's sync failed, so the append cannot be durable"
    );
    // Linux reports a writeback error once: a later fsync that succeeds proves nothing.
    sim.clear_faults();
    match store.append("t", 0, &[msg(8)]) {
        Err(Error::Poisoned { .. }) => {}
        other => panic!("expected Poisoned after a failed roll sync ({r:?}), got {other:?}"),
    }
    match store.sync() {
        Err(Error::Poisoned { .. }) => {}
        other => panic!("sync after a failed roll sync: {other:?}"),
    }
}

#[test]
fn a_failed_roll_never_wedges_later_appends() {
    let steps = roll_steps();
    for k in 0..=steps {
        for fault in [Fault::Eio, Fault::NoSpace] {
            let sim = SimFs::new();
            let store = duolog::open("/s", options(&sim)).unwrap();
            store
                .create_topic("t", TopicConfig::with_partitions(1))
                .unwrap();
            fill_first_segment(store.as_ref());
            sim.fail_after(k, fault);
            let r = store.append("t", 0, &[msg(7)]);
            sim.clear_faults();
            let ctx = format!("{fault:?} at step {k} of {steps} ({r:?})");
            // The store either cleaned up after the failed roll or refuses writes: never a
            // half-created segment that makes every later roll fail.
            let mut next = 7 + usize::from(r.is_ok());
            let mut poisoned = false;
            for _ in 0..20 {
                match store.append("t", 0, &[msg(next)]) {
                    Ok(_) => next += 1,
                    Err(Error::Poisoned { .. }) => {
                        poisoned = true;
                        break;
                    }
                    Err(e) => panic!("{ctx}: later append failed: {e}"),
                }
            }
            store.abandon();
            drop(store);
            // A reopen of the same disk (no power cut) has every record written, then rolls on.
            let store =
                duolog::open("/s", options(&sim)).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            let end = store.bounds("t", 0).unwrap().end as usize;
            assert!(poisoned || end >= next, "{ctx}: end {end} < {next}");
            for n in end..end + 20 {
                store
                    .append("t", 0, &[msg(n)])
                    .unwrap_or_else(|e| panic!("{ctx}: append {n} after reopen: {e}"));
            }
            let report = store.verify().unwrap();
            assert!(report.is_ok(), "{ctx}: {:?}", report.problems);
        }
    }
}

fn real_options(segmented: SegmentedOptions) -> StoreOptions {
    StoreOptions {
        engine: Some(EngineKind::Segmented),
        segmented,
        index: IndexOptions {
            enabled: true,
            slots: 101,
            max_entries: 1024,
        },
        ..StoreOptions::default()
    }
}

fn log_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("t-0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log")
        })
        .count()
}

#[test]
fn segment_ms_counts_from_the_first_batch_not_from_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let o = real_options(SegmentedOptions {
        segment_ms: Duration::from_millis(400),
        ..SegmentedOptions::default()
    });
    let store = duolog::open(dir.path(), o.clone()).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    store.append("t", 0, &[msg(0)]).unwrap();
    store.close().unwrap();
    drop(store);
    std::thread::sleep(Duration::from_millis(450));
    // The segment's first batch is older than segment_ms: the next append rolls, although the
    // store was opened a moment ago.
    let store = duolog::open(dir.path(), o).unwrap();
    store.append("t", 0, &[msg(1)]).unwrap();
    assert_eq!(log_files(dir.path()), 2, "rolled by the first batch's age");
    store.append("t", 0, &[msg(2)]).unwrap();
    assert_eq!(log_files(dir.path()), 2, "the new segment is young");
}

#[test]
fn segment_ms_of_duration_max_never_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let o = real_options(SegmentedOptions {
        segment_ms: Duration::MAX,
        ..SegmentedOptions::default()
    });
    let store = duolog::open(dir.path(), o).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    for n in 0..100 {
        store.append("t", 0, &[msg(n)]).unwrap();
    }
    assert_eq!(log_files(dir.path()), 1);
}

#[test]
fn retention_expires_an_idle_active_segment_by_rolling_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = real_options(SegmentedOptions {
        retention: Some(Duration::from_millis(200)),
        ..SegmentedOptions::default()
    });
    let store = duolog::open(dir.path(), o).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    for n in 0..3 {
        store.append("t", 0, &[msg(n)]).unwrap();
    }
    assert_eq!(store.enforce_retention().unwrap(), 0, "nothing is old yet");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(store.enforce_retention().unwrap(), 1);
    let b = store.bounds("t", 0).unwrap();
    assert_eq!(
        (b.start, b.end),
        (3, 3),
        "the expired records are gone, offsets kept"
    );
    assert!(
        store
            .read("t", 0, 3, duolog::ReadLimits::default())
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.append("t", 0, &[msg(3)]).unwrap().base_offset, 3);
    assert_eq!(
        store
            .read("t", 0, 3, duolog::ReadLimits::default())
            .unwrap()[0]
            .body(),
        &msg(3).body[..]
    );
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn retention_of_duration_max_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = real_options(SegmentedOptions {
        segment_bytes: 4096,
        retention: Some(Duration::MAX),
        ..SegmentedOptions::default()
    });
    let store = duolog::open(dir.path(), o).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    for n in 0..40 {
        store.append("t", 0, &[msg(n)]).unwrap();
    }
    assert_eq!(store.enforce_retention().unwrap(), 0);
    assert_eq!(store.bounds("t", 0).unwrap().start, 0);
    assert_eq!(common::read_all(store.as_ref(), "t", 0).len(), 40);
}

#[test]
fn sealing_never_shrinks_an_index_file_someone_still_maps() {
    let dir = tempfile::tempdir().unwrap();
    let o = real_options(SegmentedOptions {
        segment_bytes: 40 << 10,
        // An offset entry per append: past the entries a segment holds in memory (32), its
        // index files are created.
        index_interval_bytes: 1,
        ..SegmentedOptions::default()
    });
    let store = duolog::open(dir.path(), o).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let path = dir.path().join("t-0/00000000000000000000.timeindex");
    let mut n = 0;
    while !path.exists() {
        assert!(n < 40, "no index file after {n} appends");
        store.append("t", 0, &[msg(n)]).unwrap();
        n += 1;
    }
    // Stands for a reader's mapping of the active segment's preallocated indexes.
    let held = std::fs::File::open(&path).unwrap();
    let preallocated = held.metadata().unwrap().len();
    while log_files(dir.path()) == 1 {
        assert!(n < 100, "no roll after {n} appends");
        store.append("t", 0, &[msg(n)]).unwrap();
        n += 1;
    }
    assert_eq!(log_files(dir.path()), 2, "rolled");
    // The seal runs off the append path.
    store.sync().unwrap();
    assert_eq!(
        held.metadata().unwrap().len(),
        preallocated,
        "the file a reader may still map keeps its length"
    );
    let sealed = std::fs::metadata(&path).unwrap().len();
    assert!(
        sealed < preallocated && sealed.is_multiple_of(12) && sealed > 0,
        "sealed index trimmed: {sealed}"
    );
}

#[test]
fn segment_bytes_past_i32_max_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let o = real_options(SegmentedOptions {
        segment_bytes: 3 << 30,
        ..SegmentedOptions::default()
    });
    match duolog::open(dir.path(), o) {
        Err(Error::InvalidArgument(why)) => assert!(why.contains("segment_bytes"), "{why}"),
        other => panic!("a 3 GiB segment (positions are u32, Kafka caps at i32::MAX): {other:?}"),
    }
}
