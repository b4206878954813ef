//! Kafka's known log-layer cases, in our words, on the segmented engine: reads from a gap,
//! recovery truncating garbage to exactly the previous batch, garbage in log and index, the
//! clean-shutdown marker, garbled and missing indexes, and the open-handle budget with 10,000
//! partitions.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::{read_all, small_options};
use duolog::segmented::batch::{self, ProducerInfo, RecordInput};
use duolog::{
    EngineKind, Error, LogStore, Message, ReadLimits, SegmentedOptions, SegmentedStore,
    StoreOptions, TopicConfig,
};

fn opts() -> StoreOptions {
    small_options(EngineKind::Segmented)
}

fn part_dir(dir: &Path) -> PathBuf {
    dir.join("t-0")
}

fn segment_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(part_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// A store with `n` batches of 3 records appended to `t`-0 (`m-<batch>-<record>`, key
/// `k<batch>`).
fn filled(dir: &Path, n: usize, o: &StoreOptions) -> SegmentedStore {
    let store = SegmentedStore::open(dir, o.clone()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..n {
        let batch: Vec<Message> = (0..3)
            .map(|j| Message::new(format!("m-{i}-{j}")).with_key(format!("k{i}")))
            .collect();
        store.append("t", 0, &batch).unwrap();
    }
    store
}

/// Appends `n` batches of 3 records, syncs, then stops as a crash would.
fn fill(dir: &Path, n: usize, o: &StoreOptions) {
    let store = filled(dir, n, o);
    store.sync().unwrap();
    store.abandon();
}

fn all(store: &dyn LogStore) -> Vec<(u64, String)> {
    let b = store.bounds("t", 0).unwrap();
    let mut out = Vec::new();
    let mut at = b.start;
    while at < b.end {
        let recs = store.read("t", 0, at, ReadLimits::messages(1000)).unwrap();
        assert!(!recs.is_empty(), "nothing at {at} below end {}", b.end);
        at = recs.last().unwrap().offset() + 1;
        out.extend(
            recs.iter()
                .map(|r| (r.offset(), String::from_utf8(r.body().to_vec()).unwrap())),
        );
    }
    out
}

/// Cuts the zeros after the last batch of an active segment's log that a crash left: its mapping
/// grows the file ahead of the data. The tests that damage a log's end model a file that ends
/// at its last batch (recovery of a zero tail: `tests/segmented_mapped_log.rs`).
fn cut_zero_tail(log: &Path) {
    let b = std::fs::read(log).unwrap();
    let mut pos = 0;
    while pos < b.len() {
        match batch::check_batch(&b[pos..]) {
            Ok(h) => pos += h.total_len(),
            Err(_) => break,
        }
    }
    assert!(
        b[pos..].iter().all(|&x| x == 0),
        "only zeros follow the batches"
    );
    OpenOptions::new()
        .write(true)
        .open(log)
        .unwrap()
        .set_len(pos as u64)
        .unwrap();
}

/// Batch boundaries of a log file.
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

fn append_to(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn recovery_truncates_garbage_to_exactly_the_previous_batch() {
    for seed in 1..=12u64 {
        let dir = tempfile::tempdir().unwrap();
        let o = StoreOptions {
            segmented: SegmentedOptions {
                segment_bytes: 1 << 20,
                ..opts().segmented
            },
            ..opts()
        };
        fill(dir.path(), 40, &o);
        let log = segment_files(dir.path(), "log").pop().unwrap();
        cut_zero_tail(&log);
        let ends = batch_ends(&log);
        let len = ends.last().unwrap().0;
        let cut = (noise(seed, 8).iter().map(|&b| b as usize).sum::<usize>() * 7919) % len;
        write_at(&log, cut as u64, &noise(seed * 31, len - cut));
        let store = SegmentedStore::open(dir.path(), o.clone()).unwrap();
        // The batches wholly before the cut survive; the one the cut hits and all after go.
        let survivors: Vec<_> = ends.iter().filter(|(end, _)| *end <= cut).collect();
        let expect_end = survivors.last().map_or(0, |(_, last)| *last as u64 + 1);
        assert_eq!(
            store.bounds("t", 0).unwrap().end,
            expect_end,
            "seed {seed} cut {cut}"
        );
        assert_eq!(
            std::fs::metadata(&log).unwrap().len() as usize,
            survivors.last().map_or(0, |(e, _)| *e)
        );
        assert_eq!(all(&store).len() as u64, expect_end);
        assert!(
            store.verify().unwrap().is_ok(),
            "{:?}",
            store.verify().unwrap().problems
        );
        // Appends continue at the recovered end.
        assert_eq!(
            store
                .append("t", 0, &[Message::new("next")])
                .unwrap()
                .base_offset,
            expect_end
        );
    }
}

#[test]
fn garbage_appended_to_log_and_index_leaves_every_record_intact() {
    let dir = tempfile::tempdir().unwrap();
    // Enough batches for more index entries than a segment holds in memory: the index file
    // exists.
    fill(dir.path(), 400, &opts());
    let log = segment_files(dir.path(), "log").pop().unwrap();
    let idx = segment_files(dir.path(), "index").pop().unwrap();
    append_to(&log, &noise(7, 333));
    append_to(&idx, &noise(8, 77));
    let store = SegmentedStore::open(dir.path(), opts()).unwrap();
    let recs = all(&store);
    assert_eq!(recs.len(), 1200);
    assert_eq!(recs[1199], (1199, "m-399-2".to_string()));
    assert!(
        store.verify().unwrap().is_ok(),
        "{:?}",
        store.verify().unwrap().problems
    );
}

#[test]
fn clean_shutdown_marker_skips_recovery_even_with_recovery_point_zero() {
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        segmented: SegmentedOptions {
            segment_bytes: 1 << 20,
            ..opts().segmented
        },
        ..opts()
    };
    fill(dir.path(), 100, &o);
    {
        let s = SegmentedStore::open(dir.path(), o.clone()).unwrap();
        s.close().unwrap();
    }
    std::fs::remove_file(dir.path().join("recovery-point-offset-checkpoint")).unwrap();
    // Damage a batch in the middle, well before the last index entry.
    let log = segment_files(dir.path(), "log").pop().unwrap();
    let ends = batch_ends(&log);
    write_at(&log, ends[20].0 as u64 + 30, b"XX");
    {
        let s = SegmentedStore::open(dir.path(), o.clone()).unwrap();
        assert_eq!(
            s.bounds("t", 0).unwrap().end,
            300,
            "a clean open validates nothing"
        );
        // The damage is found when read, never returned.
        assert!(matches!(
            s.read("t", 0, 63, ReadLimits::default()),
            Err(Error::Corrupted { .. })
        ));
        s.abandon();
    }
    // Without the marker (a crash), the recovery point that open wrote (300) covers the damage:
    // as in Kafka, data below the recovery point is durable and trusted at open, and the damage
    // is still found when read, never returned.
    {
        let s = SegmentedStore::open(dir.path(), o.clone()).unwrap();
        assert_eq!(s.bounds("t", 0).unwrap().end, 300);
        assert!(matches!(
            s.read("t", 0, 63, ReadLimits::default()),
            Err(Error::Corrupted { .. })
        ));
        s.abandon();
    }
    // Without a recovery point either, recovery validates from 0 and truncates at the damage.
    std::fs::remove_file(dir.path().join("recovery-point-offset-checkpoint")).unwrap();
    let s = SegmentedStore::open(dir.path(), o).unwrap();
    assert_eq!(s.bounds("t", 0).unwrap().end, ends[20].1 as u64 + 1);
}

#[test]
fn garbled_and_missing_indexes_are_rebuilt_and_every_offset_reads() {
    for damage in ["garble", "delete", "reverse"] {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 1500, &opts());
        {
            let s = SegmentedStore::open(dir.path(), opts()).unwrap();
            s.close().unwrap();
        }
        let indexes = segment_files(dir.path(), "index");
        assert!(indexes.len() > 2, "several segments");
        for idx in &indexes[..2] {
            let len = std::fs::metadata(idx).unwrap().len() as usize;
            match damage {
                "garble" => std::fs::write(idx, noise(len as u64, len)).unwrap(),
                "delete" => std::fs::remove_file(idx).unwrap(),
                _ => {
                    // Well-formed entries in a wrong order.
                    let b = std::fs::read(idx).unwrap();
                    let rev: Vec<u8> = b.chunks(8).rev().flatten().copied().collect();
                    std::fs::write(idx, rev).unwrap();
                }
            }
        }
        let s = SegmentedStore::open(dir.path(), opts()).unwrap();
        for offset in 0..4500u64 {
            let r = s
                .read("t", 0, offset, ReadLimits::messages(1))
                .unwrap_or_else(|e| panic!("{damage}: {offset}: {e}"));
            assert_eq!(r[0].offset(), offset, "{damage}");
            assert_eq!(
                r[0].body(),
                format!("m-{}-{}", offset / 3, offset % 3).as_bytes()
            );
        }
    }
}

#[test]
fn read_from_inside_a_gap_returns_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SegmentedStore::open(dir.path(), opts()).unwrap();
        s.create_topic("t", TopicConfig::default()).unwrap();
        s.close().unwrap();
    }
    // A log with offsets 0..=2 and 10..=12, as compaction leaves them.
    let mut log = Vec::new();
    for base in [0i64, 10] {
        let recs: Vec<RecordInput<'_>> = (0..3)
            .map(|_| RecordInput {
                timestamp: 1_700_000_000_000,
                key: Some(b"k"),
                value: Some(b"v"),
                headers: &[],
            })
            .collect();
        batch::encode_batch(&mut log, base, &recs, 0, ProducerInfo::NONE, None);
    }
    let p = part_dir(dir.path());
    // No index files: the open builds them from the log.
    std::fs::write(p.join("00000000000000000000.log"), &log).unwrap();
    let s = SegmentedStore::open(dir.path(), opts()).unwrap();
    assert_eq!(s.bounds("t", 0).unwrap().end, 13);
    let r = s.read("t", 0, 5, ReadLimits::default()).unwrap();
    assert_eq!(
        r.iter().map(|r| r.offset()).collect::<Vec<_>>(),
        vec![10, 11, 12]
    );
    let r = s.read("t", 0, 1, ReadLimits::default()).unwrap();
    assert_eq!(
        r.iter().map(|r| r.offset()).collect::<Vec<_>>(),
        vec![1, 2, 10, 11, 12]
    );
}

#[test]
fn segments_roll_and_retention_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.segmented.retention = None;
    o.segmented.retention_bytes = Some(200 * 1024);
    let s = SegmentedStore::open(dir.path(), o.clone()).unwrap();
    s.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..3000 {
        s.append(
            "t",
            0,
            &[Message::new(vec![b'r'; 300]).with_key(format!("{i}"))],
        )
        .unwrap();
    }
    let before = segment_files(dir.path(), "log").len();
    assert!(before > 10, "64 KiB segments rolled ({before})");
    // Sealed segments have trimmed indexes.
    let sealed_index = &segment_files(dir.path(), "index")[0];
    assert!(std::fs::metadata(sealed_index).unwrap().len() < 4096);
    let removed = s.enforce_retention().unwrap();
    assert!(removed > 0);
    let after = segment_files(dir.path(), "log").len();
    assert_eq!(after, before - removed);
    let b = s.bounds("t", 0).unwrap();
    assert!(b.start > 0 && b.end == 3000);
    let first_base: u64 = segment_files(dir.path(), "log")[0]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(b.start, first_base);
    assert!(matches!(
        s.read("t", 0, b.start - 1, ReadLimits::default()),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(all(&s).len() as u64, 3000 - b.start);
    drop(s);
    let s = SegmentedStore::open(dir.path(), o).unwrap();
    assert_eq!(s.bounds("t", 0).unwrap().start, b.start);
}

#[test]
fn retention_by_time_never_deletes_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.segmented.retention = Some(std::time::Duration::from_millis(1));
    let s = SegmentedStore::open(dir.path(), o).unwrap();
    s.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..1000 {
        s.append(
            "t",
            0,
            &[Message::new(vec![b'r'; 300]).with_key(format!("{i}"))],
        )
        .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    s.enforce_retention().unwrap();
    assert_eq!(segment_files(dir.path(), "log").len(), 1);
    let b = s.bounds("t", 0).unwrap();
    assert_eq!(b.end, 1000);
    assert_eq!(all(&s).len() as u64, b.end - b.start);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

#[test]
fn ten_thousand_partitions_stay_under_the_handle_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.max_open_files = 64;
    o.segmented.max_index_bytes = 1024;
    let fds_before = open_fds();
    let maps_before = mappings();
    let s = SegmentedStore::open(dir.path(), o.clone()).unwrap();
    s.create_topic("wide", TopicConfig::with_partitions(10_000))
        .unwrap();
    for round in 0..2 {
        for p in 0..10_000u32 {
            s.append_oneway("wide", p, &[Message::new(format!("{round}-{p}"))])
                .unwrap();
        }
    }
    s.sync().unwrap();
    for p in (0..10_000u32).step_by(97) {
        let r = s.read("wide", p, 0, ReadLimits::default()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].body(), format!("1-{p}").as_bytes());
    }
    // Sealed segments: at most `max_open_files`, a descriptor and two mappings each; segments
    // not sealed yet (here every one: the active ones): at most 8 × `max_open_files`, three
    // mappings and no descriptor each.
    assert!(s.open_segments() <= 64 * 9);
    let fds = open_fds().saturating_sub(fds_before);
    let maps = mappings().saturating_sub(maps_before);
    assert!(
        fds <= 64 * 3 + 16,
        "{fds} descriptors open for 10,000 partitions"
    );
    assert!(
        maps <= 64 * 2 + 64 * 8 * 3 + 64,
        "{maps} mappings for 10,000 partitions"
    );
    s.close().unwrap();
    drop(s);
    let s = SegmentedStore::open(dir.path(), o).unwrap();
    assert_eq!(s.bounds("wide", 9_999).unwrap().end, 2);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.segmented.segment_ms = std::time::Duration::from_millis(30);
    let s = SegmentedStore::open(dir.path(), o).unwrap();
    s.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..3 {
        s.append("t", 0, &[Message::new(format!("{i}"))]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(40));
    }
    // Each append after the age limit starts a new segment, named by its base offset.
    let bases: Vec<String> = segment_files(dir.path(), "log")
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        bases,
        [
            "00000000000000000000",
            "00000000000000000001",
            "00000000000000000002"
        ]
    );
    assert_eq!(all(&s).len(), 3);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// An unclean open resumes validating the active segment at the recovery point, rebuilding the
/// part below it from the offset index's (checked) entries; the indexes it ends with must be
/// exactly those a full scan from the segment's start writes.
#[test]
fn resumed_recovery_rebuilds_the_same_indexes_as_a_full_scan() {
    let src = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        segmented: SegmentedOptions {
            segment_bytes: 4 << 20,
            max_index_bytes: 64 << 10,
            ..opts().segmented
        },
        ..opts()
    };
    fill(src.path(), 2000, &o);
    {
        // This (unclean) open writes the recovery point 6000, in the middle of the segment;
        // then comes an unflushed tail, with a torn last batch, and a crash.
        let s = SegmentedStore::open(src.path(), o.clone()).unwrap();
        assert_eq!(s.bounds("t", 0).unwrap().end, 6000);
        for i in 0..500 {
            if i % 50 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            s.append("t", 0, &[Message::new(format!("tail-{i}"))])
                .unwrap();
        }
        s.abandon();
    }
    assert_eq!(
        segment_files(src.path(), "log").len(),
        1,
        "one active segment"
    );
    let log = segment_files(src.path(), "log").pop().unwrap();
    cut_zero_tail(&log);
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    let resumed = tempfile::tempdir().unwrap();
    let full = tempfile::tempdir().unwrap();
    copy_dir(src.path(), resumed.path());
    copy_dir(src.path(), full.path());
    std::fs::remove_file(full.path().join("recovery-point-offset-checkpoint")).unwrap();
    let mut records = Vec::new();
    for dir in [resumed.path(), full.path()] {
        let s = SegmentedStore::open(dir, o.clone()).unwrap();
        assert_eq!(
            s.bounds("t", 0).unwrap().end,
            6499,
            "the torn last batch is cut"
        );
        assert!(
            s.verify().unwrap().is_ok(),
            "{:?}",
            s.verify().unwrap().problems
        );
        let all: Vec<(u64, i64)> = read_all(&s, "t", 0)
            .iter()
            .map(|r| (r.offset(), r.store_timestamp()))
            .collect();
        records.push(all);
        assert_eq!(s.offset_for_time("t", 0, 0).unwrap(), Some(0));
        s.abandon();
    }
    assert_eq!(records[0], records[1]);
    for ext in ["index", "timeindex"] {
        let a = std::fs::read(segment_files(resumed.path(), ext).pop().unwrap()).unwrap();
        let b = std::fs::read(segment_files(full.path(), ext).pop().unwrap()).unwrap();
        assert!(a.iter().any(|&x| x != 0), "{ext} has entries");
        assert!(a == b, "{ext} differs between resumed and full recovery");
    }
}

/// `n` batches of 3 records in one segment, cleanly closed: its index entries are held in
/// memory, so it has no index files.
fn fill_closed(dir: &Path, n: usize, o: &StoreOptions) {
    filled(dir, n, o).close().unwrap();
}

/// [`opts`] with segments of 1 MiB.
fn one_segment() -> StoreOptions {
    StoreOptions {
        segmented: SegmentedOptions {
            segment_bytes: 1 << 20,
            ..opts().segmented
        },
        ..opts()
    }
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
    let o = one_segment();
    fill_closed(dir.path(), 100, &o);
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
    let o = one_segment();
    fill_closed(dir.path(), 100, &o);
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
