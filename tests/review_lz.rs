//! Review lz (a new segment's first index entries held in memory, `early_index.rs`): cases the
//! change's own tests do not reach.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::small_options;
use common::wrap::{FsCall, FsHooks, WrapFs};
use duolog::io::{MapMode, RealFs};
use duolog::segmented::batch;
use duolog::{
    EngineKind, Error, LogStore, Message, ReadLimits, SegmentedOptions, SegmentedStore,
    StoreOptions, TopicConfig,
};

fn opts() -> StoreOptions {
    small_options(EngineKind::Segmented)
}

fn segment_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("t-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Each batch's (end position, last offset) in `log`.
fn batch_ends(log: &Path) -> Vec<(usize, i64)> {
    let b = std::fs::read(log).unwrap();
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        let h = batch::check_batch(&b[pos..]).unwrap();
        pos += h.total_len();
        out.push((pos, h.last_offset()));
    }
    out
}

fn write_at(path: &Path, pos: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(pos)).unwrap();
    f.write_all(bytes).unwrap();
}

/// A clean close of a small active segment (its index entries in memory, no index files), then
/// one damaged byte in the header of a batch in the middle of it (the magic byte of batch 21).
/// Before this change the segment had index files and a clean open trusted it up to its last
/// index entry (`trust_tail`: `scan_tail` checks only the batches past that entry), so the
/// damage was found when read and nothing was dropped (as `segmented_recovery.rs`
/// `clean_shutdown_marker_skips_recovery_even_with_recovery_point_zero` pins for damage in the
/// timestamp). Now the clean open walks the batch headers from position 0 (`early_tail`),
/// stops at the unparsable header and truncates the log there, durably: 237 intact,
/// acknowledged records after the damaged batch are gone.
#[test]
fn clean_open_of_an_early_segment_does_not_truncate_at_mid_segment_header_damage() {
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        segmented: SegmentedOptions {
            segment_bytes: 1 << 20,
            ..opts().segmented
        },
        ..opts()
    };
    {
        let store = SegmentedStore::open(dir.path(), o.clone()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        for i in 0..100 {
            let batch: Vec<Message> = (0..3)
                .map(|j| Message::new(format!("m-{i}-{j}")).with_key(format!("k{i}")))
                .collect();
            store.append("t", 0, &batch).unwrap();
        }
        store.close().unwrap();
    }
    assert!(
        segment_files(dir.path(), "index").is_empty(),
        "the segment's entries were held in memory (no .index)"
    );
    let log = segment_files(dir.path(), "log").pop().unwrap();
    let len = std::fs::metadata(&log).unwrap().len();
    let ends = batch_ends(&log);
    assert_eq!(ends.len(), 100);
    // The magic byte (offset 16 of the header) of the batch holding offsets 63..=65.
    write_at(&log, ends[20].0 as u64 + 16, b"\x07");
    let s = SegmentedStore::open(dir.path(), o.clone()).unwrap();
    let end = s.bounds("t", 0).unwrap().end;
    let now = std::fs::metadata(&log).unwrap().len();
    assert_eq!(
        (end, now),
        (300, len),
        "a clean open dropped the records after a damaged batch header (log cut from {len} to \
         {now} bytes)"
    );
    // The damage is found when read, never returned.
    assert!(matches!(
        s.read("t", 0, 63, ReadLimits::default()),
        Err(Error::Corrupted { .. })
    ));
}

/// The same damage after a crash, below the recovery point: before this change the open
/// resumed validating at the offset index entry below the recovery point (`resume_state`), so
/// the durable, acknowledged records past the damaged header stayed (the recovery-point case
/// of `clean_shutdown_marker_skips_recovery_even_with_recovery_point_zero`). A segment whose
/// entries were in memory has no index to resume from: the open validates from position 0,
/// stops at the damaged header and truncates everything after it.
#[test]
fn unclean_open_of_an_early_segment_keeps_durable_records_past_header_damage() {
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        segmented: SegmentedOptions {
            segment_bytes: 1 << 20,
            ..opts().segmented
        },
        ..opts()
    };
    {
        let store = SegmentedStore::open(dir.path(), o.clone()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        for i in 0..100 {
            let batch: Vec<Message> = (0..3)
                .map(|j| Message::new(format!("m-{i}-{j}")).with_key(format!("k{i}")))
                .collect();
            store.append("t", 0, &batch).unwrap();
        }
        store.close().unwrap();
    }
    {
        // A clean open records its end (300) as the recovery point; then a crash.
        let s = SegmentedStore::open(dir.path(), o.clone()).unwrap();
        assert_eq!(s.bounds("t", 0).unwrap().end, 300);
        s.abandon();
    }
    assert!(segment_files(dir.path(), "index").is_empty());
    let log = segment_files(dir.path(), "log").pop().unwrap();
    let ends = batch_ends(&log);
    write_at(&log, ends[20].0 as u64 + 16, b"\x07");
    let s = SegmentedStore::open(dir.path(), o).unwrap();
    assert_eq!(
        s.bounds("t", 0).unwrap().end,
        300,
        "durable records below the recovery point were truncated"
    );
}

/// Fails the creation of an index file (`MapFile(CreateGrowable)`) while `armed`.
#[derive(Debug, Default)]
struct FailIndexCreate {
    armed: AtomicBool,
    failed: AtomicUsize,
    ext: &'static str,
}

impl FsHooks for FailIndexCreate {
    fn before(&self, call: FsCall, path: &Path) -> std::io::Result<()> {
        if let FsCall::MapFile(MapMode::CreateGrowable { .. }) = call
            && path.extension().is_some_and(|e| e == self.ext)
            && self.armed.load(Ordering::SeqCst)
        {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }
}

/// A full disk when an append creates the index files: the append fails with nothing written
/// and no file left, a later append works, and every record reads back, also after a clean
/// reopen and after a crash.
#[test]
fn a_failed_index_file_creation_fails_the_append_cleanly() {
    for ext in ["index", "timeindex"] {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Arc::new(FailIndexCreate {
            ext,
            ..FailIndexCreate::default()
        });
        let o = StoreOptions {
            fs: WrapFs::new(RealFs, Arc::clone(&hooks)),
            segmented: SegmentedOptions {
                segment_bytes: 1 << 20,
                // An offset entry per append.
                index_interval_bytes: 1,
                ..opts().segmented
            },
            ..opts()
        };
        let store = duolog::open(dir.path(), o.clone()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        let mut n = 0u64;
        let mut err = None;
        while n < 100 {
            hooks.armed.store(true, Ordering::SeqCst);
            match store.append("t", 0, &[Message::new(format!("m{n}"))]) {
                Ok(r) => {
                    assert_eq!(r.base_offset, n);
                    n += 1;
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        hooks.armed.store(false, Ordering::SeqCst);
        assert!(err.is_some(), "{ext}: no append created the index files");
        assert!(hooks.failed.load(Ordering::SeqCst) > 0);
        assert_eq!(
            store.bounds("t", 0).unwrap().end,
            n,
            "{ext}: nothing written"
        );
        assert!(segment_files(dir.path(), "index").is_empty(), "{ext}");
        assert!(segment_files(dir.path(), "timeindex").is_empty(), "{ext}");
        for _ in 0..40 {
            let r = store
                .append("t", 0, &[Message::new(format!("m{n}"))])
                .unwrap();
            assert_eq!(r.base_offset, n);
            n += 1;
        }
        assert_eq!(segment_files(dir.path(), "index").len(), 1, "{ext}");
        let check = |s: &dyn LogStore, what: &str| {
            for i in 0..n {
                let r = s
                    .read("t", 0, i, ReadLimits::messages(1))
                    .unwrap_or_else(|e| panic!("{ext} {what}: {i}: {e}"));
                assert_eq!(r[0].offset(), i, "{ext} {what}");
                assert_eq!(r[0].body(), format!("m{i}").as_bytes(), "{ext} {what}");
            }
            let rep = s.verify().unwrap();
            assert!(rep.is_ok(), "{ext} {what}: {:?}", rep.problems);
        };
        check(&*store, "live");
        store.close().unwrap();
        drop(store);
        let store = duolog::open(dir.path(), o.clone()).unwrap();
        check(&*store, "clean reopen");
        store.sync().unwrap();
        store.abandon();
        drop(store);
        let store = duolog::open(dir.path(), o.clone()).unwrap();
        check(&*store, "after a crash");
        store.close().unwrap();
    }
}

/// Appends to more partitions than the handle cache holds (every round evicts and reopens
/// handles, promotes entries to files, rolls and seals) while readers read by offset and by
/// time and `verify` runs: every read returns the record it asked for.
#[test]
fn reads_and_verify_race_promotion_eviction_and_rolls() {
    use std::time::{Duration, Instant};
    const PARTS: u32 = 12;
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        max_open_files: 2,
        segmented: SegmentedOptions {
            segment_bytes: 16 << 10,
            index_interval_bytes: 1,
            ..opts().segmented
        },
        ..opts()
    };
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), o.clone()).unwrap());
    store
        .create_topic("t", TopicConfig::with_partitions(PARTS))
        .unwrap();
    let ends: Arc<Vec<AtomicUsize>> = Arc::new((0..PARTS).map(|_| AtomicUsize::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..3u64 {
        let (store, ends, stop) = (Arc::clone(&store), Arc::clone(&ends), Arc::clone(&stop));
        readers.push(std::thread::spawn(move || {
            let mut x = r * 7919 + 1;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = (x % u64::from(PARTS)) as u32;
                let end = ends[p as usize].load(Ordering::SeqCst) as u64;
                if end == 0 {
                    continue;
                }
                let at = (x >> 8) % end;
                let recs = store
                    .read("t", p, at, ReadLimits::messages(3))
                    .unwrap_or_else(|e| panic!("read {p}@{at}: {e}"));
                assert!(!recs.is_empty(), "nothing at {p}@{at} below {end}");
                for rec in &recs {
                    assert_eq!(
                        rec.body(),
                        format!("p{p}-{}-{:0200}", rec.offset(), 0).as_bytes(),
                        "{p}@{at}"
                    );
                }
                assert_eq!(recs[0].offset(), at);
                let ts = recs[0].store_timestamp();
                let found = store
                    .offset_for_time("t", p, ts)
                    .unwrap_or_else(|e| panic!("time {p}@{at}: {e}"))
                    .expect("a record at that time");
                assert!(found <= at, "time of {p}@{at} found {found}");
                n += 1;
                if n.is_multiple_of(500) {
                    let rep = store.verify().unwrap();
                    assert!(rep.is_ok(), "{:?}", rep.problems);
                }
            }
            n
        }));
    }
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_secs(6) {
        for p in 0..PARTS {
            let off = ends[p as usize].load(Ordering::SeqCst);
            let r = store
                .append("t", p, &[Message::new(format!("p{p}-{off}-{:0200}", 0))])
                .unwrap();
            assert_eq!(r.base_offset, off as u64);
            ends[p as usize].store(off + 1, Ordering::SeqCst);
        }
        i += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!("{i} rounds, {reads} reads");
    let rep = store.verify().unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
    store.close().unwrap();
    drop(store);
    let store = duolog::open(dir.path(), o).unwrap();
    for p in 0..PARTS {
        let end = ends[p as usize].load(Ordering::SeqCst) as u64;
        assert_eq!(store.bounds("t", p).unwrap().end, end);
        for at in (0..end).step_by(7) {
            let r = store.read("t", p, at, ReadLimits::messages(1)).unwrap();
            assert_eq!(r[0].body(), format!("p{p}-{at}-{:0200}", 0).as_bytes());
        }
    }
    let rep = store.verify().unwrap();
    assert!(rep.is_ok(), "{:?}", rep.problems);
}
