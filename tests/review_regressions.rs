//! Regressions found by a cold review of the core-hardening change: each test failed on the
//! reviewed commit and passes since its fix. The comment above each test describes the defect
//! it caught; the test's name says the behaviour it now holds the engines to.

mod common;

use std::sync::Arc;

use duolog::io::{Fault, SimFs};
use duolog::{
    EngineKind, Error, FlushPolicy, IndexOptions, LogStore, Message, SegmentedOptions,
    StoreOptions, TopicConfig,
};

fn seg_options(sim: &SimFs) -> StoreOptions {
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

/// An append that returns an error (and leaves the store writable) must have had no effect:
/// a caller retries it. On the segmented engine, a full disk while sealing the rolled segment
/// (after the batch is already in the new segment and published) fails the append, yet its
/// record is in the log: the retry stores it twice.
#[test]
fn a_failed_seal_does_not_fail_an_append_already_in_the_log() {
    let mut found = Vec::new();
    for k in 0..40u64 {
        let sim = SimFs::new();
        let store = duolog::open("/s", seg_options(&sim)).unwrap();
        store
            .create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        for n in 0..7 {
            store.append("t", 0, &[msg(n)]).unwrap();
        }
        sim.fail_after(k, Fault::NoSpace);
        let r = store.append("t", 0, &[msg(7)]);
        sim.clear_faults();
        if let Err(e) = &r {
            if matches!(e, Error::Poisoned { .. }) {
                continue;
            }
            let end = store.bounds("t", 0).unwrap().end;
            if end != 7 {
                found.push(format!("step {k}: append failed ({e}) but end is {end}"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// Retention racing the seal of a rolled segment: the seal runs outside the partition lock and
/// rewrites the segment's index files by rename, so when retention removed the segment's files
/// in between, the seal brings `.index` / `.timeindex` files back for a segment that no longer
/// exists. Nothing ever removes them (open ignores index files without a log), so disk use grows
/// without bound.
#[test]
fn seal_racing_retention_leaves_no_orphan_index_files() {
    let sim = SimFs::new();
    let mut o = seg_options(&sim);
    o.flush = FlushPolicy::Async {
        interval: std::time::Duration::from_secs(3600),
    };
    o.index.enabled = false;
    o.segmented.retention_bytes = Some(1);
    let store: Arc<dyn LogStore> = Arc::from(duolog::open("/s", o).unwrap());
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let retention = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += store.enforce_retention().unwrap();
            }
            n
        })
    };
    for n in 0..200_000 {
        store.append("t", 0, &[msg(n)]).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let deleted = retention.join().unwrap();
    eprintln!("retention deleted {deleted} segments");
    store.close().unwrap();
    let files: Vec<String> = sim
        .files()
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with("/s/t-0/"))
        .collect();
    let orphans: Vec<&String> = files
        .iter()
        .filter(|p| p.ends_with(".index") || p.ends_with(".timeindex"))
        .filter(|p| {
            let stem = p.rsplit_once('.').unwrap().0;
            !files.contains(&format!("{stem}.log"))
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "{} orphan index files: {:?}",
        orphans.len(),
        &orphans[..orphans.len().min(6)]
    );
}

fn cl_options(sim: &SimFs) -> StoreOptions {
    StoreOptions {
        engine: Some(EngineKind::CommitLog),
        fs: Arc::new(sim.clone()),
        flush: FlushPolicy::Sync,
        commitlog: duolog::CommitLogOptions {
            file_size: 64 * 1024,
            consume_queue_units: 64,
            ..duolog::CommitLogOptions::default()
        },
        index: IndexOptions {
            enabled: true,
            slots: 101,
            max_entries: 1024,
        },
        ..StoreOptions::default()
    }
}

/// A `reindex` that fails after clearing the index (a full disk when its catch-up creates the
/// first index file) leaves the index empty, yet the next checkpoint (here: `close`, which
/// succeeds) records every partition end as indexed. After a clean reopen nothing triggers a
/// rebuild: every key is unfindable for good.
#[test]
fn keys_stay_findable_after_a_failed_reindex_and_a_clean_close() {
    let mut failures = Vec::new();
    for (k, engine) in
        (0..24u64).flat_map(|k| [(k, EngineKind::CommitLog), (k, EngineKind::Segmented)])
    {
        let opts = |sim: &SimFs| match engine {
            EngineKind::CommitLog => cl_options(sim),
            _ => seg_options(sim),
        };
        let sim = SimFs::new();
        let store = duolog::open("/s", opts(&sim)).unwrap();
        store
            .create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        for n in 0..60 {
            store.append("t", 0, &[msg(n)]).unwrap();
        }
        sim.fail_after(k, Fault::NoSpace);
        let r = store.reindex();
        sim.clear_faults();
        if store.close().is_err() {
            continue;
        }
        drop(store);
        let store = duolog::open("/s", opts(&sim)).unwrap();
        let missing: Vec<usize> = (0..60)
            .filter(|n| {
                store
                    .find_by_key("t", &format!("k{n}"), (0, i64::MAX), 10)
                    .unwrap()
                    .is_empty()
            })
            .collect();
        if !missing.is_empty() {
            failures.push(format!(
                "{engine:?}: NoSpace at step {k} of reindex ({:?}); after a clean close and reopen {} of 60 keys are not found, e.g. {:?}",
                r.map(|_| ()),
                missing.len(),
                &missing[..missing.len().min(5)]
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A failed directory sync while `reindex`'s catch-up rolls the key index is reported as
/// `Poisoned`, but the CommitLog engine never poisons the store (`catch_up_index` errors do not
/// go through `note_poison`): later appends succeed and `close` writes a clean shutdown.
#[test]
fn commitlog_failed_sync_in_reindex_poisons_the_store() {
    let mut failures = Vec::new();
    for k in 0..12u64 {
        let sim = SimFs::new();
        let store = duolog::open("/s", cl_options(&sim)).unwrap();
        store
            .create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        for n in 0..5 {
            store.append("t", 0, &[msg(n)]).unwrap();
        }
        sim.fail_after(k, Fault::Eio);
        let r = store.reindex();
        sim.clear_faults();
        if let Err(Error::Poisoned { reason }) = &r {
            let after = store.append("t", 0, &[msg(5)]);
            if after.is_ok() {
                failures.push(format!(
                    "EIO at step {k}: reindex said Poisoned ({reason}) but a later append succeeded and close gave {:?}",
                    store.close()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Issue 10 item 2: any failed sync, in any code path (the catalog included), poisons the
/// store. On the CommitLog engine a failed sync while `create_topic` writes the catalog (or
/// syncs the new queue directories) is returned as a plain error and the store carries on.
#[test]
fn commitlog_failed_sync_in_create_topic_poisons_the_store() {
    let sim = SimFs::new();
    let store = duolog::open("/s", cl_options(&sim)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    store.append("t", 0, &[msg(0)]).unwrap();
    sim.fail_syncs(true);
    let r = store.create_topic("u", TopicConfig::with_partitions(1));
    sim.clear_faults();
    assert!(r.is_err(), "create_topic with failing syncs succeeded");
    match store.append("t", 0, &[msg(1)]) {
        Err(Error::Poisoned { .. }) => {}
        other => panic!("create_topic's sync failed ({r:?}); expected Poisoned, got {other:?}"),
    }
}

/// A read that meets a batch with a bad CRC (bit rot in the log, not in an index) "repairs" the
/// segment's indexes: the rescan stops at the bad batch and `repair_indexes` copies the scan's
/// `max_timestamp` (and time entries) into the segment's metadata while keeping its size and
/// end. The segment's newest timestamp falls to that of the batches before the damage (-1
/// here), so `offset_for_time` no longer finds the intact records after it, which are still
/// readable.
#[test]
fn segmented_corrupt_batch_does_not_hide_later_records_from_offset_for_time() {
    let sim = SimFs::new();
    let mut o = seg_options(&sim);
    o.segmented.segment_bytes = 1 << 20;
    let store = duolog::open("/s", o).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    for n in 0..4 {
        store.append("t", 0, &[msg(n)]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    let last = store.read("t", 0, 3, Default::default()).unwrap()[0].store_timestamp();
    assert_eq!(store.offset_for_time("t", 0, last).unwrap(), Some(3));
    // Bit rot inside the first batch's records (past its 61-byte header).
    sim.flip_bit(
        std::path::Path::new("/s/t-0/00000000000000000000.log"),
        100,
        3,
    )
    .unwrap();
    assert!(store.read("t", 0, 0, Default::default()).is_err());
    assert_eq!(
        store.read("t", 0, 3, Default::default()).unwrap()[0].offset(),
        3,
        "record 3 is intact and readable"
    );
    assert_eq!(
        store.offset_for_time("t", 0, last).unwrap(),
        Some(3),
        "after a read hit the damaged batch 0, the time lookup of intact record 3 fails"
    );
}

/// A clean close does not flush the active segment's index mappings (indexes are "derived,
/// checked when used"), yet a clean open trusts them (`count_entries`), and the time index is
/// never checked when used. After a power cut that follows a clean close, the time index may
/// hold holes or garbage, and `offset_for_time` answers wrongly for records that are intact.
#[test]
fn segmented_time_lookups_survive_a_power_cut_after_a_clean_close() {
    use duolog::io::CrashMode;
    let sim = SimFs::new();
    let mut o = seg_options(&sim);
    o.flush = FlushPolicy::Sync;
    o.segmented.segment_bytes = 1 << 20;
    o.segmented.index_interval_bytes = 1;
    let store = duolog::open("/s", o).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let mut ts = Vec::new();
    for n in 0..120 {
        store.append("t", 0, &[msg(n)]).unwrap();
        ts.push(store.read("t", 0, n as u64, Default::default()).unwrap()[0].store_timestamp());
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    store.close().unwrap();
    drop(store);
    let mut wrong = Vec::new();
    for mode in [
        CrashMode::PersistSubset,
        CrashMode::ExtendWithGarbage,
        CrashMode::PersistPrefix,
    ] {
        for seed in 0..20u64 {
            let disk = sim.crash(mode, seed);
            let mut o = seg_options(&disk);
            o.segmented.segment_bytes = 1 << 20;
            o.segmented.index_interval_bytes = 1;
            let store = duolog::open("/s", o).unwrap();
            assert_eq!(store.bounds("t", 0).unwrap().end, 120, "{mode:?} {seed}");
            for (n, &t) in ts.iter().enumerate() {
                // The earliest offset whose store time is at or after t.
                let want = ts.iter().position(|&x| x >= t).map(|p| p as u64);
                let got = store.offset_for_time("t", 0, t).unwrap();
                if got != want {
                    wrong.push(format!(
                        "{mode:?} seed {seed}: offset_for_time(ts of {n}) = {got:?}, want {want:?}"
                    ));
                    break;
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong lookups: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(6)]
    );
}

/// A failed msync of the key index (here ENOSPC, which writeback can report just like EIO) in
/// the CommitLog checkpoint is treated as "a full disk while writing the temporary file"
/// (`metadata_write_failed`) and does not poison the store; the next checkpoint's msync
/// succeeds and claims the index pages the failed one may have lost (fsyncgate). The segmented
/// engine poisons on the same failure (SyncGuardFs).
#[test]
fn commitlog_failed_key_index_msync_in_checkpoint_poisons() {
    let sim = SimFs::new();
    let mut o = cl_options(&sim);
    o.commitlog.checkpoint_interval = std::time::Duration::from_millis(5);
    let store = duolog::open("/s", o).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    store.append("t", 0, &[msg(0)]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Every operation from now on fails; the first the background checkpoint does is the
    // key index's msync.
    sim.fail_after(0, Fault::NoSpace);
    std::thread::sleep(std::time::Duration::from_millis(100));
    sim.clear_faults();
    match store.append("t", 0, &[msg(1)]) {
        Err(Error::Poisoned { .. }) => {}
        other => panic!("checkpoint syncs failed for 100 ms; expected Poisoned, got {other:?}"),
    }
}

/// A file system that makes directory syncs slow on demand (a busy disk), to show who waits.
#[derive(Debug)]
struct SlowDirSync {
    inner: SimFs,
    slow: Arc<std::sync::atomic::AtomicBool>,
}

impl duolog::io::FileSystem for SlowDirSync {
    fn create_dir_all(&self, p: &std::path::Path) -> std::io::Result<()> {
        self.inner.create_dir_all(p)
    }
    fn list_dir(&self, p: &std::path::Path) -> std::io::Result<Vec<duolog::io::DirEntry>> {
        self.inner.list_dir(p)
    }
    fn exists(&self, p: &std::path::Path) -> std::io::Result<bool> {
        self.inner.exists(p)
    }
    fn file_len(&self, p: &std::path::Path) -> std::io::Result<u64> {
        self.inner.file_len(p)
    }
    fn read_file(&self, p: &std::path::Path) -> std::io::Result<Vec<u8>> {
        self.inner.read_file(p)
    }
    fn write_file_synced(&self, p: &std::path::Path, d: &[u8]) -> std::io::Result<()> {
        self.inner.write_file_synced(p, d)
    }
    fn rename(&self, a: &std::path::Path, b: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(a, b)
    }
    fn remove_file(&self, p: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_file(p)
    }
    fn remove_dir(&self, p: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_dir(p)
    }
    fn sync_dir(&self, p: &std::path::Path) -> std::io::Result<()> {
        if self.slow.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1000));
        }
        self.inner.sync_dir(p)
    }
    fn map_file(
        &self,
        p: &std::path::Path,
        len: u64,
        mode: duolog::io::MapMode,
    ) -> std::io::Result<Box<dyn duolog::io::MappedStorage>> {
        self.inner.map_file(p, len, mode)
    }
    fn open_file(
        &self,
        p: &std::path::Path,
        mode: duolog::io::OpenMode,
    ) -> std::io::Result<Box<dyn duolog::io::StorageFile>> {
        self.inner.open_file(p, mode)
    }
    fn lock_file(
        &self,
        p: &std::path::Path,
    ) -> std::io::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        self.inner.lock_file(p)
    }
}

/// Issue 10 item 17: on the CommitLog engine the store-wide append lock is held while a
/// partition's next consume-queue file is created (its directory fsync included), so an append
/// to another partition, which needs no file, waits for that disk I/O.
#[test]
fn commitlog_append_never_waits_for_another_partitions_queue_file_creation() {
    let sim = SimFs::new();
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut o = cl_options(&sim);
    o.fs = Arc::new(SlowDirSync {
        inner: sim.clone(),
        slow: Arc::clone(&slow),
    });
    o.flush = FlushPolicy::Async {
        interval: std::time::Duration::from_secs(3600),
    };
    o.index.enabled = false;
    let store: Arc<dyn LogStore> = Arc::from(duolog::open("/s", o).unwrap());
    store
        .create_topic("t", TopicConfig::with_partitions(2))
        .unwrap();
    // Partition 0's first queue file (64 units) is full; partition 1's has room.
    for n in 0..64 {
        store.append("t", 0, &[msg(n)]).unwrap();
    }
    store.append("t", 1, &[msg(0)]).unwrap();
    slow.store(true, std::sync::atomic::Ordering::SeqCst);
    let rolling = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || store.append("t", 0, &[msg(64)]).unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let t = std::time::Instant::now();
    store.append("t", 1, &[msg(1)]).unwrap();
    let waited = t.elapsed();
    rolling.join().unwrap();
    slow.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        waited < std::time::Duration::from_millis(300),
        "an append to partition 1 waited {waited:?} for partition 0's queue-file creation"
    );
}

/// The CommitLog's doc promises that the size of existing files wins over the option, "so
/// changing the option never misreads an old store". For the (growable) consume-queue files the
/// larger of the option and the files' spacing wins instead: a store whose partition has two
/// queue files of 64 units no longer opens once `consume_queue_units` is raised.
#[test]
fn commitlog_raising_consume_queue_units_keeps_an_existing_store_working() {
    let sim = SimFs::new();
    let store = duolog::open("/s", cl_options(&sim)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    for n in 0..100 {
        store.append("t", 0, &[msg(n)]).unwrap();
    }
    store.close().unwrap();
    drop(store);
    let mut o = cl_options(&sim);
    o.commitlog.consume_queue_units = 128;
    let store = duolog::open("/s", o).unwrap_or_else(|e| panic!("reopen with 128 units: {e}"));
    assert_eq!(common::read_all(store.as_ref(), "t", 0).len(), 100);
}

/// Lowering `consume_queue_units`: the only queue file's allocated length (4096, a page) wins
/// as the file size, which is not a multiple of the 20-byte unit; unit 204 would straddle two
/// files and every append from there on fails.
#[test]
fn commitlog_lowering_consume_queue_units_keeps_appends_working() {
    let sim = SimFs::new();
    let mut o = cl_options(&sim);
    o.commitlog.consume_queue_units = 1000;
    o.commitlog.file_size = 1 << 20;
    let store = duolog::open("/s", o).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    for n in 0..10 {
        store.append("t", 0, &[msg(n)]).unwrap();
    }
    store.close().unwrap();
    drop(store);
    let mut o = cl_options(&sim);
    o.commitlog.consume_queue_units = 64;
    o.commitlog.file_size = 1 << 20;
    let store = duolog::open("/s", o).unwrap();
    for n in 10..300 {
        store
            .append("t", 0, &[msg(n)])
            .unwrap_or_else(|e| panic!("append {n} after lowering consume_queue_units: {e}"));
    }
}

/// `read` documents an offset below the log start as `OffsetOutOfRange` (and the CommitLog
/// engine returns it when retention races a read). On the segmented engine, when retention
/// removes the segment holding the offset between `read`'s bounds check and its segment lookup,
/// `read_once` falls through to the next segment and returns records from a later offset, with
/// no error: the consumer silently skips.
#[test]
fn segmented_read_racing_retention_is_out_of_range_never_later_records() {
    let sim = SimFs::new();
    let mut o = seg_options(&sim);
    o.index.enabled = false;
    o.segmented.retention_bytes = Some(8192);
    let store: Arc<dyn LogStore> = Arc::from(duolog::open("/s", o).unwrap());
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 1_000_000 {
                store.append("t", 0, &[msg(n)]).unwrap();
                store.enforce_retention().unwrap();
                n += 1;
            }
        })
    };
    let mut skipped = Vec::new();
    while !writer.is_finished() {
        let b = store.bounds("t", 0).unwrap();
        if b.end == b.start {
            continue;
        }
        // Always ask for the oldest record: the one retention removes next.
        match store.read("t", 0, b.start, duolog::ReadLimits::messages(1)) {
            Ok(v) if v.first().is_some_and(|r| r.offset() != b.start) => {
                skipped.push(format!("asked {} got {}", b.start, v[0].offset()));
                break;
            }
            Ok(_) | Err(Error::OffsetOutOfRange { .. }) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        skipped.is_empty(),
        "read returned later records: {skipped:?}"
    );
}

/// `close` is where an `Async` store makes everything durable. When it fails (a full disk) the
/// store is marked closed anyway, and a retried `close` returns `Ok(())` at once without syncing
/// anything: the caller is told its data is safe, and a power cut then loses it.
#[test]
fn a_retried_close_after_a_failed_one_reports_the_failure() {
    use duolog::io::CrashMode;
    for engine in [EngineKind::Segmented, EngineKind::CommitLog] {
        let sim = SimFs::new();
        let mut o = match engine {
            EngineKind::CommitLog => cl_options(&sim),
            _ => seg_options(&sim),
        };
        o.flush = FlushPolicy::Async {
            interval: std::time::Duration::from_secs(3600),
        };
        let reopen_opts = o.clone();
        let store = duolog::open("/s", o).unwrap();
        store
            .create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        for n in 0..5 {
            store.append("t", 0, &[msg(n)]).unwrap();
        }
        sim.fail_after(0, Fault::NoSpace);
        let first = store.close();
        sim.clear_faults();
        assert!(first.is_err(), "{engine:?}: close on a full disk succeeded");
        let second = store.close();
        drop(store);
        if second.is_ok() {
            let disk = sim.crash(CrashMode::DropUnsynced, 0);
            let mut o = reopen_opts.clone();
            o.fs = Arc::new(disk.clone());
            let store = duolog::open("/s", o).unwrap();
            let end = store.bounds("t", 0).unwrap().end;
            assert_eq!(
                end, 5,
                "{engine:?}: close failed ({first:?}), the retry returned Ok, and a power cut then left {end} of 5 records"
            );
        }
    }
}

/// `ConsumeQueue::flush` walks the queue's files from the last one back and stops at the first
/// clean one, assuming only the last files can be dirty. An append that fails after its
/// planning step (here: more keys than an index file holds, refused by `reserve`) leaves a new,
/// empty last queue file; the checkpoint's flush then stops at it and never flushes the full
/// file before it, yet the checkpoint (and the clean shutdown) vouch for its units. After a
/// power cut the acknowledged (Sync, fsynced) records of that file are gone from the queue.
#[test]
fn commitlog_empty_last_queue_file_does_not_stop_the_checkpoint_flush() {
    use duolog::io::CrashMode;
    let sim = SimFs::new();
    let mut o = cl_options(&sim);
    o.index.max_entries = 4;
    o.commitlog.checkpoint_interval = std::time::Duration::from_secs(3600);
    let store = duolog::open("/s", o.clone()).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    // Exactly fills the first queue file (64 units).
    for n in 0..64 {
        store.append("t", 0, &[msg(n)]).unwrap();
    }
    // Plans (creates) the second queue file, then is refused: 5 keys > 4 entries per file.
    let big: Vec<Message> = (64..69).map(msg).collect();
    assert!(matches!(
        store.append("t", 0, &big),
        Err(Error::InvalidArgument(_))
    ));
    store.close().unwrap();
    drop(store);
    let disk = sim.crash(CrashMode::DropUnsynced, 0);
    o.fs = Arc::new(disk.clone());
    let store = duolog::open("/s", o).unwrap();
    let end = store.bounds("t", 0).unwrap().end;
    let read = common::read_all(store.as_ref(), "t", 0).len();
    assert_eq!(
        (end, read),
        (64, 64),
        "64 records acknowledged under Sync and a clean close; after a power cut the end is {end} and {read} are readable"
    );
}
