//! Log compaction on the segmented engine (Kafka's log cleaner), against a model of what was
//! appended: offsets and order never change, a reader from the start sees the latest value of
//! every key, a reader that keeps up with the head sees every record, tombstones go only after
//! `delete_retention`, a pass with a tiny offset map finishes over several passes, a power cut
//! at every step of a cleaning pass reopens to the old or the new segments with every
//! acknowledged record or the record superseding it, and cleaned segments stay Kafka
//! RecordBatch v2.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use duolog::io::{CrashMode, Fault, SimFs};
use duolog::segmented::batch;
use duolog::{
    CleanupPolicy, CompactionOptions, EngineKind, FlushPolicy, IndexOptions, LogStore, Message,
    ReadLimits, Record, SegmentedOptions, StoreOptions, TopicConfig,
};

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One appended record, as the test remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Appended {
    key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    value: Option<Vec<u8>>,
}

fn options(fs: Option<&SimFs>) -> StoreOptions {
    let mut o = StoreOptions {
        engine: Some(EngineKind::Segmented),
        flush: FlushPolicy::Sync,
        segmented: SegmentedOptions {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            max_index_bytes: 4096,
            ..SegmentedOptions::default()
        },
        index: IndexOptions {
            enabled: true,
            slots: 101,
            max_entries: 4096,
        },
        compaction: CompactionOptions {
            // The tests call `compact`; the background cleaner has its own test.
            enabled: false,
            ..CompactionOptions::default()
        },
        ..StoreOptions::default()
    };
    if let Some(sim) = fs {
        o.fs = Arc::new(sim.clone());
    }
    o
}

fn compacted_topic(segment_bytes: u64) -> TopicConfig {
    TopicConfig {
        partitions: 1,
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: Some(segment_bytes),
        ..TopicConfig::default()
    }
}

fn message(a: &Appended) -> Message {
    match (&a.key, &a.value) {
        (Some(k), None) => Message::tombstone(k.clone()),
        (k, v) => {
            let m = Message::new(v.clone().unwrap_or_default());
            match k {
                Some(k) => m.with_key(k.clone()),
                None => m,
            }
        }
    }
}

/// Random records: keys from `keys` (a few without a key), values of varied sizes, about one
/// in `tombstone_every` a tombstone.
fn random_records(rng: &mut Rng, n: usize, keys: u64, tombstone_every: u64) -> Vec<Appended> {
    (0..n)
        .map(|_| {
            let key = match rng.below(20) {
                0 => None,
                _ => Some(format!("key-{}", rng.below(keys)).into_bytes()),
            };
            let value = if key.is_some() && rng.below(tombstone_every) == 0 {
                None
            } else {
                let len = 10 + rng.below(120) as usize;
                let mut v = format!("v{}-", rng.next()).into_bytes();
                v.resize(len, b'a' + (rng.below(26) as u8));
                Some(v)
            };
            Appended { key, value }
        })
        .collect()
}

/// Appends `records` in batches of 1 to 4; returns them with their offsets.
fn append_all(
    store: &dyn LogStore,
    rng: &mut Rng,
    records: Vec<Appended>,
    log: &mut Vec<Appended>,
) {
    let mut i = 0;
    while i < records.len() {
        let n = (1 + rng.below(4) as usize).min(records.len() - i);
        let batch: Vec<Message> = records[i..i + n].iter().map(message).collect();
        let r = store.append("t", 0, &batch).unwrap();
        assert_eq!(r.base_offset as usize, log.len());
        log.extend_from_slice(&records[i..i + n]);
        i += n;
    }
}

/// Every record of the partition, fetches of `fetch` records; each read at an offset returns
/// records at or after it, and a read below the end that returns nothing means the rest was
/// compacted away.
fn read_everything(store: &dyn LogStore, fetch: usize) -> Vec<Record> {
    let b = store.bounds("t", 0).unwrap();
    let mut out: Vec<Record> = Vec::new();
    let mut at = b.start;
    while at < b.end {
        let recs = store.read("t", 0, at, ReadLimits::messages(fetch)).unwrap();
        let Some(last) = recs.last() else {
            break;
        };
        assert!(recs[0].offset() >= at, "read at {at} went back");
        at = last.offset() + 1;
        out.extend(recs);
    }
    out
}

/// Checks what the store holds against the log of appends: offsets strictly increasing, each
/// record exactly the one appended at its offset. Returns the offsets present.
fn check_records(records: &[Record], log: &[Appended], ctx: &str) -> Vec<u64> {
    let mut prev: Option<u64> = None;
    let mut offsets = Vec::new();
    for r in records {
        let o = r.offset();
        assert!(
            prev.is_none_or(|p| o > p),
            "{ctx}: offset {o} after {prev:?}"
        );
        prev = Some(o);
        let a = log
            .get(o as usize)
            .unwrap_or_else(|| panic!("{ctx}: offset {o} never appended"));
        assert_eq!(r.key(), a.key.as_deref(), "{ctx}: key at {o}");
        assert_eq!(
            r.is_tombstone(),
            a.value.is_none(),
            "{ctx}: tombstone at {o}"
        );
        if let Some(v) = &a.value {
            assert_eq!(r.body(), &v[..], "{ctx}: value at {o}");
        }
        offsets.push(o);
    }
    offsets
}

/// The offsets a complete cleaning of `[0, cleanable)` keeps (tombstones not expired): every
/// record without a key, every record whose key has no later record below `cleanable`, and
/// everything from `cleanable` on.
fn model_kept(log: &[Appended], cleanable: u64) -> Vec<u64> {
    let mut latest: HashMap<&[u8], u64> = HashMap::new();
    for (o, a) in log.iter().enumerate().take(cleanable as usize) {
        if let Some(k) = &a.key {
            latest.insert(k, o as u64);
        }
    }
    (0..log.len() as u64)
        .filter(|&o| {
            o >= cleanable
                || match &log[o as usize].key {
                    None => true,
                    Some(k) => latest[&k[..]] == o,
                }
        })
        .collect()
}

/// The latest record of each key below `end` must be present (a reader from the start sees
/// every key's latest value), unless it is a tombstone that may expire.
fn assert_latest_values_present(present: &[u64], log: &[Appended], ctx: &str) {
    let mut latest: BTreeMap<&[u8], u64> = BTreeMap::new();
    for (o, a) in log.iter().enumerate() {
        if let Some(k) = &a.key {
            latest.insert(k, o as u64);
        }
    }
    for (k, o) in latest {
        if log[o as usize].value.is_some() {
            assert!(
                present.binary_search(&o).is_ok(),
                "{ctx}: latest value of {:?} (offset {o}) is gone",
                String::from_utf8_lossy(k)
            );
        }
    }
}

/// Base offset of the active (last) segment, from the partition directory on a real disk.
fn active_base(dir: &Path) -> u64 {
    segment_bases(dir).into_iter().max().unwrap_or(0)
}

fn segment_bases(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir.join("t-0"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log").and_then(|s| s.parse().ok())
        })
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn compaction_keeps_offsets_order_and_the_latest_value_of_every_key() {
    for seed in 1..=4u64 {
        let dir = tempfile::tempdir().unwrap();
        let store = duolog::open(dir.path(), options(None)).unwrap();
        store.create_topic("t", compacted_topic(2048)).unwrap();
        let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15);
        let mut log = Vec::new();
        let mut removed_total = 0;
        for round in 0..5 {
            let n = 150 + rng.below(150) as usize;
            let records = random_records(&mut rng, n, 40, 8);
            append_all(store.as_ref(), &mut rng, records, &mut log);
            let before = store.bounds("t", 0).unwrap();
            let cleanable = active_base(dir.path());
            let report = store.compact(Some("t")).unwrap();
            let ctx = format!("seed {seed} round {round}");
            removed_total += report.records_removed;
            assert!(
                report.bytes_after <= report.bytes_before,
                "{ctx}: {report:?}"
            );
            let after = store.bounds("t", 0).unwrap();
            assert_eq!(
                (after.start, after.end),
                (before.start, before.end),
                "{ctx}: bounds changed"
            );
            for fetch in [1, 7, 1000] {
                let present = check_records(&read_everything(store.as_ref(), fetch), &log, &ctx);
                assert_eq!(present, model_kept(&log, cleanable), "{ctx}: fetch {fetch}");
                assert_latest_values_present(&present, &log, &ctx);
            }
            // A read at every offset returns the record there or, if it was compacted away,
            // the next one.
            let present = model_kept(&log, cleanable);
            for o in 0..log.len() as u64 {
                let got = store.read("t", 0, o, ReadLimits::messages(1)).unwrap();
                let want = present.iter().find(|&&p| p >= o);
                assert_eq!(
                    got.first().map(|r| r.offset()),
                    want.copied(),
                    "{ctx}: read {o}"
                );
            }
            let v = store.verify().unwrap();
            assert!(v.is_ok(), "{ctx}: {:?}", v.problems);
        }
        assert!(removed_total > 0, "seed {seed}: compaction removed nothing");
        // The same after a clean reopen and after an unclean one.
        store.close().unwrap();
        drop(store);
        for clean in [true, false] {
            if !clean {
                std::fs::remove_file(dir.path().join("recovery-point-offset-checkpoint")).unwrap();
            }
            let store = duolog::open(dir.path(), options(None)).unwrap();
            let present = check_records(&read_everything(store.as_ref(), 100), &log, "reopen");
            assert_latest_values_present(&present, &log, "reopen");
            let v = store.verify().unwrap();
            assert!(v.is_ok(), "reopen (clean: {clean}): {:?}", v.problems);
            store.abandon();
        }
    }
}

#[test]
fn a_tiny_offset_map_cleans_over_several_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(None);
    // 1 KiB: 42 slots, 37 keys a pass.
    o.compaction.offset_map_bytes = 1024;
    let store = duolog::open(dir.path(), o).unwrap();
    store.create_topic("t", compacted_topic(8192)).unwrap();
    let mut rng = Rng(77);
    let mut log = Vec::new();
    let records = random_records(&mut rng, 2000, 300, 1000);
    append_all(store.as_ref(), &mut rng, records, &mut log);
    let cleanable = active_base(dir.path());
    let want = model_kept(&log, cleanable);
    let first = store.compact(None).unwrap();
    assert_eq!(first.partitions_cleaned, 1);
    let present = check_records(&read_everything(store.as_ref(), 100), &log, "pass 1");
    assert!(
        present.len() > want.len(),
        "one pass with a 37-key map cannot dedupe 300 keys"
    );
    let mut passes = 1;
    while store.compact(None).unwrap().partitions_cleaned > 0 {
        passes += 1;
        assert!(passes < 200, "passes do not converge");
        let present = check_records(&read_everything(store.as_ref(), 100), &log, "pass");
        assert_latest_values_present(&present, &log, "pass");
    }
    assert!(passes >= 5, "{passes} passes");
    let present = check_records(&read_everything(store.as_ref(), 100), &log, "done");
    assert_eq!(present, want, "after {passes} passes");
}

// The tombstone's age is set against `delete_retention` by altering the retention, not by
// racing it: with a retention of 1.5 s, the 60 synced appends and two passes before the
// "still there" checks could take longer under load, and the tombstone was already expired.
#[test]
fn tombstones_go_only_after_delete_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options(None)).unwrap();
    let config = TopicConfig {
        delete_retention: Some(Duration::from_secs(3600)),
        ..compacted_topic(1024)
    };
    store.create_topic("t", config.clone()).unwrap();
    let mut log = Vec::new();
    let mut rng = Rng(5);
    let old = Appended {
        key: Some(b"gone".to_vec()),
        value: Some(b"old value".to_vec()),
    };
    let tomb = Appended {
        key: Some(b"gone".to_vec()),
        value: None,
    };
    append_all(store.as_ref(), &mut rng, vec![old, tomb], &mut log);
    // Filler that rolls the tombstone's segment, so it is cleanable.
    let filler = random_records(&mut rng, 60, 1_000_000, u64::MAX);
    append_all(store.as_ref(), &mut rng, filler, &mut log);
    assert!(active_base(dir.path()) > 1);
    let report = store.compact(None).unwrap();
    assert_eq!(report.tombstones_removed, 0);
    let r = store.read("t", 0, 0, ReadLimits::messages(1)).unwrap();
    assert_eq!(r[0].offset(), 1, "the old value went, the tombstone stays");
    assert!(r[0].is_tombstone());
    // Later passes within delete_retention keep it.
    store
        .append("t", 0, &[Message::new("x").with_key("other")])
        .unwrap();
    log.push(Appended {
        key: Some(b"other".to_vec()),
        value: Some(b"x".to_vec()),
    });
    store.compact(None).unwrap();
    assert!(store.read("t", 0, 0, ReadLimits::messages(1)).unwrap()[0].is_tombstone());
    let expires = TopicConfig {
        delete_retention: Some(Duration::from_millis(1)),
        ..config
    };
    store.alter_topic("t", expires).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let report = store.compact(None).unwrap();
    assert_eq!(report.tombstones_removed, 1, "{report:?}");
    let r = store.read("t", 0, 0, ReadLimits::messages(1)).unwrap();
    assert!(r[0].offset() > 1 && !r[0].is_tombstone());
    assert_eq!(store.bounds("t", 0).unwrap().start, 0, "bounds stay");
    check_records(&read_everything(store.as_ref(), 100), &log, "after expiry");
}

#[test]
fn readers_keep_up_and_read_consistently_while_the_cleaner_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(None);
    o.flush = FlushPolicy::Async {
        interval: Duration::from_millis(20),
    };
    // Few open handles: readers reopen segments while their files are swapped.
    o.max_open_files = 4;
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), o).unwrap());
    let config = TopicConfig {
        min_compaction_lag: Some(Duration::from_millis(1500)),
        ..compacted_topic(2048)
    };
    store.create_topic("t", config).unwrap();
    let mut rng = Rng(11);
    let mut first = Vec::new();
    let records = random_records(&mut rng, 600, 30, 10);
    append_all(store.as_ref(), &mut rng, records, &mut first);
    std::thread::sleep(Duration::from_millis(1600));
    let log = Arc::new(parking_lot::Mutex::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let removed = Arc::new(AtomicU64::new(0));
    let appender = {
        let (store, log, stop) = (Arc::clone(&store), Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut rng = Rng(12);
            while !stop.load(Ordering::Relaxed) {
                let recs = random_records(&mut rng, 1, 30, 10);
                let mut l = log.lock();
                let r = store.append("t", 0, &[message(&recs[0])]).unwrap();
                assert_eq!(r.base_offset as usize, l.len());
                l.push(recs[0].clone());
            }
        })
    };
    let compactor = {
        let (store, stop, removed) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&removed));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = store.compact(Some("t")).unwrap();
                removed.fetch_add(r.records_removed, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // The tail reader starts at the head and keeps up: it sees every offset.
    let seen = Arc::new(AtomicU64::new(0));
    let tail = {
        let (store, log, stop) = (Arc::clone(&store), Arc::clone(&log), Arc::clone(&stop));
        let seen = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut at = store.bounds("t", 0).unwrap().end;
            while !stop.load(Ordering::Relaxed) {
                let recs = store.read("t", 0, at, ReadLimits::messages(50)).unwrap();
                for r in &recs {
                    assert_eq!(r.offset(), at, "the tail reader missed a record");
                    let want = log.lock()[at as usize].clone();
                    assert_eq!(r.key(), want.key.as_deref());
                    at += 1;
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                if recs.is_empty() {
                    std::thread::yield_now();
                }
            }
        })
    };
    // Readers from the start, racing the swaps: for 1.2 s and until the tail reader has seen
    // records and a pass has removed some (a window alone can pass before a starved thread
    // runs at all under load; the long deadline only stops a hang).
    let mut rounds = 0;
    let started = std::time::Instant::now();
    let busy = || seen.load(Ordering::Relaxed) > 0 && removed.load(Ordering::Relaxed) > 0;
    while started.elapsed() < Duration::from_millis(1200) || !busy() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the tail reader or the compactor never ran"
        );
        let recs = read_everything(store.as_ref(), 1 + rounds % 13);
        let l = log.lock().clone();
        let present = check_records(&recs, &l, "concurrent reader");
        assert!(!present.is_empty());
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    appender.join().unwrap();
    compactor.join().unwrap();
    tail.join().unwrap();
    assert!(
        busy(),
        "the tail reader saw nothing or nothing was compacted"
    );
    let l = log.lock().clone();
    let present = check_records(&read_everything(store.as_ref(), 100), &l, "end");
    assert_latest_values_present(&present, &l, "end");
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
}

/// A store on the simulated disk with a compacted topic of several sealed segments full of
/// superseded records, closed and reopened (recovery points at the end). With `cleaned_once`,
/// those segments were cleaned once and more records came after, so the next pass merges small
/// cleaned segments into groups, some ending in segments whose every record is superseded.
fn sim_store_ready_to_clean(sim: &SimFs, cleaned_once: bool) -> (Box<dyn LogStore>, Vec<Appended>) {
    let store = duolog::open("/s", options(Some(sim))).unwrap();
    store.create_topic("t", compacted_topic(1024)).unwrap();
    let mut rng = Rng(99);
    let mut log = Vec::new();
    let mut records = random_records(&mut rng, 90, 12, 6);
    // A tombstone and a later value of its key, and a keyless record, for sure.
    records[3] = Appended {
        key: Some(b"key-1".to_vec()),
        value: None,
    };
    for (i, r) in records.iter_mut().enumerate() {
        if r.key.is_none() {
            r.key = Some(format!("key-{}", i % 12).into_bytes());
        }
    }
    records[4].key = None;
    records[4].value.get_or_insert_with(|| b"keyless".to_vec());
    append_all(store.as_ref(), &mut rng, records, &mut log);
    if cleaned_once {
        store.compact(None).unwrap();
        // A new value of every key: every cleaned segment but the one holding the keyless
        // record is left with nothing.
        let records: Vec<Appended> = (0..60)
            .map(|i| Appended {
                key: Some(format!("key-{}", i % 12).into_bytes()),
                value: Some(format!("new value {i}").into_bytes()),
            })
            .collect();
        append_all(store.as_ref(), &mut rng, records, &mut log);
    }
    store.close().unwrap();
    drop(store);
    (duolog::open("/s", options(Some(sim))).unwrap(), log)
}

fn log_bases(sim: &SimFs) -> Vec<u64> {
    let mut bases: Vec<u64> = sim
        .files()
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// A power cut at every step of the open that finishes an interrupted swap, then another open:
/// the same records as an uninterrupted recovery gives.
fn recovery_is_idempotent(crashed: &SimFs, log: &[Appended], ctx: &str) {
    let reference = {
        let disk = crashed.crash(CrashMode::DropUnsynced, 0);
        let store = duolog::open("/s", options(Some(&disk))).unwrap();
        let present = check_records(&read_everything(store.as_ref(), 50), log, ctx);
        store.abandon();
        present
    };
    let steps = {
        let disk = crashed.crash(CrashMode::DropUnsynced, 0);
        let store = duolog::open("/s", options(Some(&disk))).unwrap();
        store.abandon();
        disk.op_count()
    };
    for j in 0..steps {
        let mode = CrashMode::PersistPrefix;
        let disk = crashed.crash(CrashMode::DropUnsynced, 0);
        disk.fail_after(j, Fault::Eio);
        if let Ok(store) = duolog::open("/s", options(Some(&disk))) {
            store.abandon();
        }
        let again = disk.crash(mode, j);
        let ctx = format!("{ctx}, then a cut at step {j} of the recovery, {mode:?}");
        let store = duolog::open("/s", options(Some(&again)))
            .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
        let present = check_records(&read_everything(store.as_ref(), 50), log, &ctx);
        assert_eq!(present, reference, "{ctx}");
        let v = store.verify().unwrap();
        assert!(v.is_ok(), "{ctx}: {:?}", v.problems);
        store.abandon();
    }
}

fn leftover_swap_files(sim: &SimFs) -> Vec<PathBuf> {
    sim.files()
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.ends_with(".swap") || s.ends_with(".cleaned")
        })
        .collect()
}

#[test]
fn power_cut_at_every_step_of_a_cleaning_pass_keeps_old_or_new_segments() {
    crash_sweep(false);
}

#[test]
fn power_cut_at_every_step_of_a_pass_merging_cleaned_segments() {
    crash_sweep(true);
}

/// A power cut after each I/O step of one cleaning pass (several damage modes each), then a
/// reopen: each group of segments the pass replaces is there entirely as it was or only as its
/// replacement (by the segment files), bounds unchanged, every record the one appended at its
/// offset, every key's latest value present, `verify` clean, no `.cleaned`/`.swap` left; the next
/// pass then reaches exactly the fully cleaned state.
fn crash_sweep(cleaned_once: bool) {
    // The pass without a crash: its step count, and the segments before and after it.
    let (steps, old_bases, new_bases) = {
        let sim = SimFs::new();
        let (store, _) = sim_store_ready_to_clean(&sim, cleaned_once);
        let old = log_bases(&sim);
        let before = sim.op_count();
        let r = store.compact(None).unwrap();
        assert!(r.records_removed > 0 && r.partitions_cleaned == 1, "{r:?}");
        (sim.op_count() - before, old, log_bases(&sim))
    };
    assert!(steps > 10, "a pass takes several I/O steps ({steps})");
    assert!(
        !cleaned_once || new_bases.len() < old_bases.len(),
        "the pass merged segments"
    );
    // Each new segment replaces the old ones from its base to the next new base.
    let groups: Vec<Vec<u64>> = new_bases
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let next = new_bases.get(i + 1).copied().unwrap_or(u64::MAX);
            old_bases
                .iter()
                .copied()
                .filter(|&o| o >= b && o < next)
                .collect()
        })
        .collect();
    let mut states = std::collections::HashSet::new();
    for k in 0..=steps + 1 {
        for (seed, mode) in CrashMode::ALL.iter().enumerate() {
            let sim = SimFs::new();
            let (store, log) = sim_store_ready_to_clean(&sim, cleaned_once);
            let bounds = store.bounds("t", 0).unwrap();
            sim.fail_after(k, Fault::Eio);
            let _ = store.compact(None);
            store.abandon();
            drop(store);
            let crashed = sim.crash(*mode, seed as u64 * 7 + k);
            let ctx = format!("power cut at step {k} of {steps}, {mode:?}");
            if !leftover_swap_files(&crashed).is_empty() && seed == 1 {
                recovery_is_idempotent(&crashed, &log, &ctx);
            }
            let store = duolog::open("/s", options(Some(&crashed)))
                .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            assert!(
                leftover_swap_files(&crashed).is_empty(),
                "{ctx}: {:?}",
                leftover_swap_files(&crashed)
            );
            let bases = log_bases(&crashed);
            for g in &groups {
                let there: Vec<u64> = bases.iter().copied().filter(|b| g.contains(b)).collect();
                assert!(
                    there == *g || there == g[..1],
                    "{ctx}: group {g:?} reopened as {there:?}, neither old nor new"
                );
            }
            let b = store.bounds("t", 0).unwrap();
            assert_eq!(
                (b.start, b.end),
                (bounds.start, bounds.end),
                "{ctx}: bounds"
            );
            let present = check_records(&read_everything(store.as_ref(), 10), &log, &ctx);
            // Every acknowledged record is there or superseded by one that is.
            assert_latest_values_present(&present, &log, &ctx);
            let cleanable = *bases.last().unwrap();
            let cleaned = model_kept(&log, cleanable);
            for o in &cleaned {
                assert!(present.contains(o), "{ctx}: kept record {o} is gone");
            }
            states.insert(present.clone());
            let v = store.verify().unwrap();
            assert!(v.is_ok(), "{ctx}: {:?}", v.problems);
            // The next pass finishes the job.
            store.compact(None).unwrap();
            let present = check_records(&read_everything(store.as_ref(), 10), &log, &ctx);
            assert_eq!(present, cleaned, "{ctx}: after the next pass");
            store
                .append("t", 0, &[Message::new("after").with_key("z")])
                .unwrap();
        }
    }
    eprintln!(
        "{} distinct record sets over {steps} steps, groups {groups:?}",
        states.len()
    );
    assert!(states.len() >= 2, "both the old and the new set were seen");
}

#[test]
fn cleaned_segments_are_kafka_record_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options(None)).unwrap();
    store.create_topic("t", compacted_topic(4096)).unwrap();
    let mut rng = Rng(3);
    let mut log = Vec::new();
    let mut records = random_records(&mut rng, 400, 25, 7);
    for r in records.iter_mut().step_by(9) {
        r.key = None;
        r.value.get_or_insert_with(|| b"keyless".to_vec());
    }
    append_all(store.as_ref(), &mut rng, records, &mut log);
    let report = store.compact(None).unwrap();
    assert!(report.records_removed > 0);
    store.close().unwrap();
    drop(store);
    let mut next = 0i64;
    let mut decoded = 0;
    let mut empty_batches = 0;
    for base in segment_bases(dir.path()) {
        let bytes = std::fs::read(dir.path().join(format!("t-0/{base:020}.log"))).unwrap();
        let mut pos = 0;
        while pos < bytes.len() {
            let h = batch::check_batch(&bytes[pos..]).unwrap();
            assert!(
                h.base_offset >= next,
                "batch at {pos} of {base}: offsets go back"
            );
            assert_eq!(h.magic, 2);
            assert_ne!(h.attributes & batch::ATTR_LOG_APPEND_TIME, 0);
            let b = &bytes[pos..pos + h.total_len()];
            let mut prev_delta = -1;
            for r in batch::records(b, &h) {
                let r = r.unwrap();
                assert!(r.offset_delta > prev_delta && r.offset_delta <= h.last_offset_delta);
                prev_delta = r.offset_delta;
                let a = &log[(h.base_offset + i64::from(r.offset_delta)) as usize];
                assert_eq!(r.key.clone().map(|k| &b[k]), a.key.as_deref());
                assert_eq!(r.value.clone().map(|v| &b[v]), a.value.as_deref());
                decoded += 1;
            }
            empty_batches += usize::from(h.record_count == 0);
            next = h.last_offset() + 1;
            pos += h.total_len();
        }
    }
    assert_eq!(
        next as usize,
        log.len(),
        "the log still ends at the last offset"
    );
    let store = duolog::open(dir.path(), options(None)).unwrap();
    assert_eq!(decoded, read_everything(store.as_ref(), 100).len());
    eprintln!("{decoded} records, {empty_batches} empty batches");
    kafka_python_decodes(dir.path(), &read_everything(store.as_ref(), 1000));
}

/// When kafka-python is installed, its own decoder (`DefaultRecordBatch`) reads every cleaned
/// segment to the same offsets, keys and values the store returns.
fn kafka_python_decodes(dir: &Path, records: &[Record]) {
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
        for r in b:
            key = r.key.hex() if r.key is not None else "-"
            value = r.value.hex() if r.value is not None else "-"
            print(r.offset, key, value)
        pos += size
"#;
    let out = match std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
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
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let want: Vec<String> = records
        .iter()
        .map(|r| {
            let key = r.key().map_or("-".to_owned(), hex);
            let value = if r.is_tombstone() {
                "-".to_owned()
            } else {
                hex(r.body())
            };
            format!("{} {key} {value}", r.offset())
        })
        .collect();
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, want, "kafka-python reads the cleaned segments");
    eprintln!("kafka-python decoded {} records", got.len());
}

#[test]
fn damaged_cleaner_files_never_stop_an_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options(None)).unwrap();
    store.create_topic("t", compacted_topic(2048)).unwrap();
    let mut rng = Rng(8);
    let mut log = Vec::new();
    let records = random_records(&mut rng, 300, 20, 9);
    append_all(store.as_ref(), &mut rng, records, &mut log);
    store.compact(None).unwrap();
    let cleanable = active_base(dir.path());
    store.close().unwrap();
    drop(store);
    let part = dir.path().join("t-0");
    // A garbled checkpoint (clean again from the start), a half-written `.cleaned` recopy, a
    // stray index `.swap`, and a `.swap` log of garbage.
    std::fs::write(dir.path().join("cleaner-offset-checkpoint"), b"garbage").unwrap();
    std::fs::write(part.join(format!("{:020}.log.cleaned", 0)), b"partial").unwrap();
    std::fs::write(part.join(format!("{:020}.index.swap", 5)), [1u8; 8]).unwrap();
    let store = duolog::open(dir.path(), options(None)).unwrap();
    let present = check_records(&read_everything(store.as_ref(), 100), &log, "reopen");
    assert_eq!(present, model_kept(&log, cleanable));
    store.compact(None).unwrap();
    let present = check_records(&read_everything(store.as_ref(), 100), &log, "recompact");
    assert_eq!(present, model_kept(&log, cleanable));
    store.close().unwrap();
    drop(store);
    let leftovers: Vec<_> = std::fs::read_dir(&part)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".swap") || n.ends_with(".cleaned"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A `.swap` log of garbage over the first segment (no valid batch: no cleaned segment of
    // ours) is dropped, the segments staying.
    let bases = segment_bases(dir.path());
    std::fs::write(
        part.join(format!("{:020}.log.swap", bases[0])),
        vec![0xAB; 300],
    )
    .unwrap();
    let store = duolog::open(dir.path(), options(None)).unwrap();
    let present = check_records(&read_everything(store.as_ref(), 100), &log, "garbage swap");
    assert_eq!(present, model_kept(&log, cleanable), "garbage swap");
    store.close().unwrap();
    drop(store);
    // A `.swap` whose tail rotted: its valid prefix (here the second segment's own batches) is
    // swapped in, covering only itself, and nothing after it is lost.
    let second = std::fs::read(part.join(format!("{:020}.log", bases[1]))).unwrap();
    let mut rotten = second.clone();
    rotten.extend_from_slice(&[0x5A; 100]);
    std::fs::write(part.join(format!("{:020}.log.swap", bases[1])), rotten).unwrap();
    let store = duolog::open(dir.path(), options(None)).unwrap();
    let present = check_records(&read_everything(store.as_ref(), 100), &log, "rotten swap");
    assert_eq!(present, model_kept(&log, cleanable), "rotten swap");
    assert_eq!(
        std::fs::read(part.join(format!("{:020}.log", bases[1]))).unwrap(),
        second
    );
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
}

#[test]
fn offset_for_time_and_key_lookups_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options(None)).unwrap();
    store.create_topic("t", compacted_topic(1024)).unwrap();
    // Same key over and over: compaction leaves one record of many.
    for i in 0..50 {
        store
            .append("t", 0, &[Message::new(format!("v{i}")).with_key("same")])
            .unwrap();
    }
    store
        .append("t", 0, &[Message::new("tail").with_key("other")])
        .unwrap();
    let r = store.compact(None).unwrap();
    assert!(r.records_removed > 0, "{r:?}");
    let first = store.read("t", 0, 0, ReadLimits::messages(1)).unwrap();
    let first = &first[0];
    assert!(first.offset() > 0, "offset 0 was compacted away");
    // The first record at or after a time is a record that exists.
    let o = store.offset_for_time("t", 0, 0).unwrap().unwrap();
    assert_eq!(o, first.offset());
    let o = store.offset_for_time("t", 0, i64::MAX).unwrap();
    assert_eq!(o, None);
    let found = store.find_by_key("t", "same", (0, i64::MAX), 100).unwrap();
    assert!(found.iter().all(|m| m.record.offset() >= first.offset()));
    assert!(!found.is_empty());
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
}

#[test]
fn the_background_cleaner_compacts_dirty_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(None);
    o.compaction.enabled = true;
    o.compaction.check_interval = Duration::from_millis(50);
    let store = duolog::open(dir.path(), o).unwrap();
    store.create_topic("t", compacted_topic(1024)).unwrap();
    store
        .create_topic("plain", TopicConfig::with_partitions(1))
        .unwrap();
    for i in 0..200 {
        let m = Message::new(format!("value {i} .......................")).with_key("k");
        store.append("t", 0, std::slice::from_ref(&m)).unwrap();
        store.append("plain", 0, &[m]).unwrap();
    }
    // The delete-policy topic holds the same bytes uncleaned.
    let before = store.partition_bytes("plain", 0).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.partition_bytes("t", 0).unwrap() >= before / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no background cleaning"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let plain = common::read_all(store.as_ref(), "plain", 0);
    assert_eq!(plain.len(), 200, "a delete-policy topic is never compacted");
    store.close().unwrap();
}

#[test]
fn compact_delete_topics_get_retention_and_compaction_without_races() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(None);
    o.flush = FlushPolicy::Async {
        interval: Duration::from_millis(20),
    };
    o.max_open_files = 4;
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), o).unwrap());
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::CompactDelete,
        retention_bytes: Some(6 * 1024),
        ..compacted_topic(1024)
    };
    store.create_topic("t", config).unwrap();
    let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (removed, deleted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut threads = Vec::new();
    {
        let (store, log, stop) = (Arc::clone(&store), Arc::clone(&log), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(21);
            while !stop.load(Ordering::Relaxed) {
                let recs = random_records(&mut rng, 1, 25, 10);
                let mut l = log.lock();
                let r = store.append("t", 0, &[message(&recs[0])]).unwrap();
                assert_eq!(r.base_offset as usize, l.len());
                l.push(recs[0].clone());
            }
        }));
    }
    {
        let (store, stop, removed) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&removed));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let r = store.compact(None).unwrap();
                removed.fetch_add(r.records_removed, Ordering::Relaxed);
            }
        }));
    }
    {
        let (store, stop, deleted) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&deleted));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = store.enforce_retention().unwrap();
                deleted.fetch_add(n as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    // Readers from the start; retention may move the start under them. For 1.5 s and until
    // both compaction and retention have done something (a window alone can pass before a
    // starved thread runs at all under load; the long deadline only stops a hang).
    let started = std::time::Instant::now();
    let busy = || removed.load(Ordering::Relaxed) > 0 && deleted.load(Ordering::Relaxed) > 0;
    while started.elapsed() < Duration::from_millis(1500) || !busy() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the compactor or retention never ran"
        );
        let b = store.bounds("t", 0).unwrap();
        let mut at = b.start;
        while at < b.end {
            match store.read("t", 0, at, ReadLimits::messages(17)) {
                Ok(recs) => {
                    let Some(last) = recs.last() else { break };
                    check_records(&recs, &log.lock(), "reader");
                    at = last.offset() + 1;
                }
                Err(duolog::Error::OffsetOutOfRange { start, .. }) => at = start,
                Err(e) => panic!("read at {at}: {e}"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(removed.load(Ordering::Relaxed) > 0, "nothing compacted");
    assert!(
        deleted.load(Ordering::Relaxed) > 0,
        "nothing deleted by retention"
    );
    let l = log.lock().clone();
    let b = store.bounds("t", 0).unwrap();
    assert!(b.start > 0 && b.end as usize == l.len());
    let present = check_records(&read_everything(store.as_ref(), 100), &l, "end");
    // Every key's latest value above the start is there.
    let mut latest: HashMap<&[u8], u64> = HashMap::new();
    for (o, a) in l.iter().enumerate() {
        if let Some(k) = &a.key {
            latest.insert(k, o as u64);
        }
    }
    for (_, o) in latest {
        if o >= b.start && l[o as usize].value.is_some() {
            assert!(present.binary_search(&o).is_ok(), "latest at {o} is gone");
        }
    }
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    store.close().unwrap();
    drop(store);
    let store = duolog::open(dir.path(), options(None)).unwrap();
    let again = check_records(&read_everything(store.as_ref(), 100), &l, "reopen");
    assert_eq!(again, present);
}

#[test]
fn the_cleaner_keeps_to_its_io_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(None);
    let rate = 200 * 1024;
    o.compaction.io_bytes_per_sec = Some(rate);
    let store = duolog::open(dir.path(), o).unwrap();
    store.create_topic("t", compacted_topic(8192)).unwrap();
    let mut rng = Rng(31);
    let mut log = Vec::new();
    let records = random_records(&mut rng, 1500, 50, 100);
    append_all(store.as_ref(), &mut rng, records, &mut log);
    let began = std::time::Instant::now();
    let r = store.compact(None).unwrap();
    let took = began.elapsed().as_secs_f64();
    // At least what it read (every cleanable byte, twice: the map, then the recopy) over the
    // rate, less a margin.
    let floor = 2.0 * r.bytes_before as f64 / rate as f64 * 0.9;
    assert!(
        took >= floor,
        "{took:.2} s for {r:?} at {rate} B/s (floor {floor:.2} s)"
    );
    check_records(&read_everything(store.as_ref(), 100), &log, "throttled");
}

/// Random appends, syncs, compactions, clean reopens and power cuts of every kind on the
/// simulated disk (flushes only when asked): after every reopen the partition ends at or after
/// what was synced, every record is the one appended at its offset, every key's latest value
/// below the end is there, and `verify` is clean. `DUOLOG_CRASH_CASES` raises the number of
/// workloads (default 12).
#[test]
fn random_workloads_with_compaction_and_power_cuts() {
    let cases: u64 = std::env::var("DUOLOG_CRASH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for case in 0..cases {
        let mut rng = Rng(0xC0FF_EE00 + case * 7919);
        let mut sim = SimFs::new();
        let opts = |sim: &SimFs| StoreOptions {
            flush: FlushPolicy::Async {
                interval: Duration::from_secs(3600),
            },
            ..options(Some(sim))
        };
        let mut store = duolog::open("/data/s", opts(&sim)).unwrap();
        store.create_topic("t", compacted_topic(1024)).unwrap();
        let mut log: Vec<Appended> = Vec::new();
        let mut durable = 0usize;
        let mut compacted = 0;
        for step in 0..160 {
            let ctx = format!("case {case} step {step}");
            match rng.below(12) {
                0..=6 => {
                    let n = 1 + rng.below(3) as usize;
                    let recs = random_records(&mut rng, n, 15, 7);
                    append_all(store.as_ref(), &mut rng, recs, &mut log);
                }
                7 => {
                    store.sync().unwrap();
                    durable = log.len();
                }
                8 | 9 => {
                    compacted += store.compact(None).unwrap().records_removed;
                }
                reopen => {
                    store.abandon();
                    drop(store);
                    if reopen == 10 {
                        let mode = CrashMode::ALL[rng.below(7) as usize];
                        sim = sim.crash(mode, rng.next());
                    } else {
                        // A process crash: the page cache survives.
                        durable = log.len();
                    }
                    store = duolog::open("/data/s", opts(&sim))
                        .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                    let b = store.bounds("t", 0).unwrap();
                    assert!(
                        b.end as usize >= durable && b.end as usize <= log.len(),
                        "{ctx}: end {} (durable {durable}, appended {})",
                        b.end,
                        log.len()
                    );
                    log.truncate(b.end as usize);
                    durable = log.len();
                    let present = check_records(&read_everything(store.as_ref(), 9), &log, &ctx);
                    assert_latest_values_present(&present, &log, &ctx);
                    let v = store.verify().unwrap();
                    assert!(v.is_ok(), "{ctx}: {:?}", v.problems);
                }
            }
        }
        assert!(compacted > 0, "case {case}: nothing compacted");
        store.close().unwrap();
    }
}

#[test]
fn garbled_indexes_of_cleaned_segments_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options(None)).unwrap();
    store.create_topic("t", compacted_topic(4096)).unwrap();
    let mut rng = Rng(41);
    let mut log = Vec::new();
    let records = random_records(&mut rng, 600, 30, 9);
    append_all(store.as_ref(), &mut rng, records, &mut log);
    store.compact(None).unwrap();
    let records = random_records(&mut rng, 300, 30, 9);
    append_all(store.as_ref(), &mut rng, records, &mut log);
    store.compact(None).unwrap();
    let cleanable = active_base(dir.path());
    store.close().unwrap();
    drop(store);
    // Every sealed offset index: entries in order, plausible, and wrong.
    let bases = segment_bases(dir.path());
    for (i, base) in bases[..bases.len() - 1].iter().enumerate() {
        let p = dir.path().join(format!("t-0/{base:020}.index"));
        let n = (std::fs::metadata(&p).unwrap().len() / 8).max(2);
        let garbage: Vec<u8> = (0..n as u32)
            .flat_map(|k| {
                let mut e = (k * 3 + 1 + i as u32).to_be_bytes().to_vec();
                e.extend_from_slice(&(k * 97 + 13).to_be_bytes());
                e
            })
            .collect();
        std::fs::write(&p, garbage).unwrap();
    }
    let store = duolog::open(dir.path(), options(None)).unwrap();
    let present = model_kept(&log, cleanable);
    for o in 0..log.len() as u64 {
        let got = store.read("t", 0, o, ReadLimits::messages(1)).unwrap();
        let want = present.iter().find(|&&p| p >= o).copied();
        assert_eq!(got.first().map(|r| r.offset()), want, "read {o}");
    }
    let all = check_records(&read_everything(store.as_ref(), 13), &log, "repaired");
    assert_eq!(all, present);
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
}
