//! The segmented engine's active segment is written through a mapping that grows ahead of the
//! data (its file holds zeros past the last batch until a roll or a clean close trims it): what
//! recovery makes of such a zero-filled tail, on the real disk and on the simulated one.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::memory::rss_bytes;
use common::small_options;
use duolog::io::{CrashMode, SimFs};
use duolog::{
    EngineKind, LogStore, Message, ReadLimits, SegmentedStore, StoreOptions, TopicConfig,
};

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("t-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn bodies(store: &dyn LogStore) -> Vec<String> {
    let b = store.bounds("t", 0).unwrap();
    let mut out = Vec::new();
    let mut at = b.start;
    while at < b.end {
        let recs = store.read("t", 0, at, ReadLimits::messages(1000)).unwrap();
        assert!(!recs.is_empty(), "nothing at {at} below end {}", b.end);
        assert_eq!(recs[0].offset(), at, "a gap at {at}");
        at = recs.last().unwrap().offset() + 1;
        out.extend(
            recs.iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
    }
    out
}

/// A segment rolled before a crash may still have the zeros its mapping grew into past its last
/// batch (the seal trims them). Recovery must see a segment that ends exactly where the next one
/// starts as complete, trim the zeros, and keep every later segment.
#[test]
fn a_rolled_segment_with_a_zero_filled_tail_keeps_the_later_segments() {
    let dir = tempfile::tempdir().unwrap();
    let o = small_options(EngineKind::Segmented);
    let expected: Vec<String> = (0..600)
        .map(|i| format!("message {i:04} {}", "x".repeat(200)))
        .collect();
    {
        let s = SegmentedStore::open(dir.path(), o.clone()).unwrap();
        s.create_topic("t", TopicConfig::default()).unwrap();
        for m in &expected {
            s.append("t", 0, &[Message::new(m.clone())]).unwrap();
        }
        s.sync().unwrap();
        s.abandon();
    }
    let logs = files(dir.path(), "log");
    assert!(logs.len() >= 3, "the workload rolls: {logs:?}");
    // The first segment as a crash before its seal could leave it: zeros past its data, and
    // indexes that are not trimmed (here: gone), so recovery validates it.
    let mut f = OpenOptions::new().append(true).open(&logs[0]).unwrap();
    f.write_all(&vec![0u8; 40_000]).unwrap();
    drop(f);
    for ext in ["index", "timeindex"] {
        std::fs::remove_file(files(dir.path(), ext).remove(0)).unwrap();
    }
    let s = SegmentedStore::open(dir.path(), o).unwrap();
    let got = bodies(&s);
    assert_eq!(got.len(), expected.len(), "records after recovery");
    assert!(got == expected, "records changed by recovery");
    assert_eq!(files(dir.path(), "log").len(), logs.len());
    s.append("t", 0, &[Message::new("after")]).unwrap();
    assert_eq!(s.bounds("t", 0).unwrap().end, expected.len() as u64 + 1);
}

fn sim_options(sim: &SimFs) -> StoreOptions {
    StoreOptions {
        fs: Arc::new(sim.clone()),
        ..small_options(EngineKind::Segmented)
    }
}

/// A crash while the active segment's mapping has grown past its data (some of it written and
/// not synced, the rest never written): every synced record survives, nothing else but a prefix
/// of the unsynced ones comes back, and appends resume right after what recovery kept.
#[test]
fn crash_with_a_grown_but_unwritten_tail_keeps_every_synced_record() {
    let modes = [
        CrashMode::DropUnsynced,
        CrashMode::PersistPrefix,
        CrashMode::PersistSubset,
        CrashMode::TearAtByte,
        CrashMode::TearAtSector,
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        for seed in 0..4u64 {
            let sim = SimFs::new();
            let all: Vec<String> = (0..300)
                .map(|n| format!("m{n:04}-{}", "y".repeat(n % 97)))
                .collect();
            {
                let s = SegmentedStore::open("/s", sim_options(&sim)).unwrap();
                s.create_topic("t", TopicConfig::default()).unwrap();
                for m in &all[..200] {
                    s.append("t", 0, &[Message::new(m.clone())]).unwrap();
                }
                s.sync().unwrap();
                for m in &all[200..] {
                    s.append("t", 0, &[Message::new(m.clone())]).unwrap();
                }
                s.abandon();
            }
            let after = sim.crash(mode, seed * 31 + i as u64);
            let s = SegmentedStore::open("/s", sim_options(&after)).unwrap();
            let got = bodies(&s);
            let ctx = format!("{mode:?} seed {seed}");
            assert!(got.len() >= 200, "{ctx}: {} records survived", got.len());
            assert_eq!(got[..], all[..got.len()], "{ctx}");
            let r = s.append("t", 0, &[Message::new("next")]).unwrap();
            assert_eq!(r.base_offset, got.len() as u64, "{ctx}");
            assert!(s.verify().unwrap().is_ok(), "{ctx}");
        }
    }
}

/// A clean close leaves every segment's log exactly as long as its batches: no zeros for the
/// next open to scan past, and disk in proportion to the data.
#[test]
fn clean_close_trims_every_log_to_its_batches() {
    let dir = tempfile::tempdir().unwrap();
    let o = small_options(EngineKind::Segmented);
    let s = SegmentedStore::open(dir.path(), o.clone()).unwrap();
    s.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..500 {
        s.append("t", 0, &[Message::new(format!("{i}-{}", "z".repeat(150)))])
            .unwrap();
    }
    s.close().unwrap();
    drop(s);
    for log in files(dir.path(), "log") {
        let bytes = std::fs::read(&log).unwrap();
        let mut pos = 0;
        while pos < bytes.len() {
            let h = duolog::segmented::batch::check_batch(&bytes[pos..])
                .unwrap_or_else(|e| panic!("{log:?} at {pos} of {}: {e:?}", bytes.len()));
            pos += h.total_len();
        }
        assert_eq!(pos, bytes.len(), "{log:?}");
    }
    let s = SegmentedStore::open(dir.path(), o).unwrap();
    assert_eq!(bodies(&s).len(), 500);
}

/// An append never waits on an msync of its log. With every mapped flush held up (a very slow
/// disk), a flush of the partition in progress and 12 MiB appended past it (more than an append
/// used to let pile up unflushed before it msynced the log itself, under the partition lock),
/// every append returns; the held flushes then complete and the data is all there.
#[test]
fn appends_go_on_while_a_flush_of_their_partition_is_held_up() {
    use std::time::{Duration, Instant};
    let sim = SimFs::new();
    let mut o = sim_options(&sim);
    // No background flush of the store's own: the only flushes are the test's and the log's.
    o.flush = duolog::FlushPolicy::Async {
        interval: Duration::from_secs(3600),
    };
    o.index.enabled = false;
    o.segmented = duolog::SegmentedOptions {
        segment_bytes: 64 << 20,
        checkpoint_interval: Duration::from_secs(3600),
        ..duolog::SegmentedOptions::default()
    };
    let s = Arc::new(SegmentedStore::open("/s", o).unwrap());
    s.create_topic("t", TopicConfig::default()).unwrap();
    let body = vec![b'z'; 4096];
    s.append("t", 0, &[Message::new(body.clone())]).unwrap();
    sim.hold_mapped_flushes(true);
    let flusher = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || s.sync())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.held_mapped_flushes() == 0 {
        assert!(
            Instant::now() < deadline,
            "the flush never reached the disk"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let n = (12 << 20) / body.len();
    let (tx, rx) = std::sync::mpsc::channel();
    let appender = {
        let (s, body) = (Arc::clone(&s), body.clone());
        std::thread::spawn(move || {
            for _ in 0..n {
                s.append("t", 0, &[Message::new(body.clone())]).unwrap();
            }
            let _ = tx.send(());
        })
    };
    let finished = rx.recv_timeout(Duration::from_secs(30));
    sim.hold_mapped_flushes(false);
    appender.join().unwrap();
    flusher.join().unwrap().unwrap();
    assert!(
        finished.is_ok(),
        "an append waited on a flush of its log in progress"
    );
    s.sync().unwrap();
    assert_eq!(s.bounds("t", 0).unwrap().end, n as u64 + 1);
}

/// The active log's resident pages are bounded with no flush at all (a flush interval of an
/// hour): pages behind the writer leave the process unflushed, dirty in the page cache, and
/// the final sync still makes every record durable.
#[test]
fn an_active_log_stays_resident_in_a_bounded_window_without_any_flush() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        flush: duolog::FlushPolicy::Async {
            interval: Duration::from_secs(3600),
        },
        ..StoreOptions::default()
    };
    let s = SegmentedStore::open(dir.path(), o).unwrap();
    s.create_topic("t", TopicConfig::default()).unwrap();
    let body = vec![b'x'; 4096];
    for _ in 0..256 {
        s.append("t", 0, &[Message::new(body.clone())]).unwrap();
    }
    let before = rss_bytes();
    let n = (192 << 20) / body.len();
    for _ in 0..n {
        s.append("t", 0, &[Message::new(body.clone())]).unwrap();
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "RSS grew by {} MiB while appending 192 MiB unflushed",
        grown >> 20
    );
    s.sync().unwrap();
    drop(s);
    let s = SegmentedStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(s.bounds("t", 0).unwrap().end, n as u64 + 256);
}
