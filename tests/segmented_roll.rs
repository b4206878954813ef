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
