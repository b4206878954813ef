//! Review lz (a new segment's first index entries held in memory, `early_index.rs`): cases the
//! change's own tests do not reach.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::small_options;
use common::wrap::{FsCall, FsHooks, WrapFs};
use duolog::io::{MapMode, RealFs};
use duolog::{
    EngineKind, LogStore, Message, ReadLimits, SegmentedOptions, StoreOptions, TopicConfig,
};

fn opts() -> StoreOptions {
    small_options(EngineKind::Segmented)
}

/// How many files of partition `t-0` end in `.ext`.
fn files_named(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir.join("t-0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == ext)
        })
        .count()
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
        assert!(files_named(dir.path(), "index") == 0, "{ext}");
        assert!(files_named(dir.path(), "timeindex") == 0, "{ext}");
        for _ in 0..40 {
            let r = store
                .append("t", 0, &[Message::new(format!("m{n}"))])
                .unwrap();
            assert_eq!(r.base_offset, n);
            n += 1;
        }
        assert_eq!(files_named(dir.path(), "index"), 1, "{ext}");
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
