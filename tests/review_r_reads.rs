//! Review (branch review-r): read-path defects of the Record/Span change (issue 16).

mod common;

use common::memory::rss_bytes;
use duolog::{EngineKind, Message, ReadLimits, StoreOptions, TopicConfig};

/// Lines of /proc/self/maps (VMAs) mapping a `.log` file under `dir`.
fn log_mappings(dir: &std::path::Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let d = dir.to_str().unwrap();
    maps.lines()
        .filter(|l| l.contains(d) && (l.ends_with(".log") || l.ends_with(".log (deleted)")))
        .count()
}

/// `max_open_files` "bounds the files the store's caches keep open, whatever the number of
/// partitions" (8 × max_open_files active segments mapped). A segmented record read from an
/// active segment now slices that segment's mapping and pins it: a caller that keeps the
/// records it read (a consumer's buffer, a delay queue) keeps one mapping per partition — and
/// one more per re-read after each eviction — whatever the bound. Before the change such
/// records were heap copies and pinned nothing. Now records pin at most `max_open_files`
/// active-log mappings (cached or not); past that a read copies: the live log mappings are at
/// most the cache's plus `max_open_files`.
#[test]
fn held_records_do_not_pin_log_mappings_past_max_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        engine: Some(EngineKind::Segmented),
        max_open_files: 1,
        ..StoreOptions::default()
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    let parts = 32u32;
    store
        .create_topic(
            "t",
            TopicConfig {
                partitions: parts,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    for p in 0..parts {
        store
            .append("t", p, &[Message::new(vec![b'v'; 100])])
            .unwrap();
    }
    let limits = ReadLimits {
        max_messages: 1,
        ..ReadLimits::default()
    };
    // Baseline: the same reads, records dropped at once.
    for _ in 0..3 {
        for p in 0..parts {
            let r = store.read("t", p, 0, limits).unwrap();
            assert_eq!(r.len(), 1);
        }
    }
    let dropped = log_mappings(dir.path());
    let mut held = Vec::new();
    for _ in 0..3 {
        for p in 0..parts {
            held.extend(store.read("t", p, 0, limits).unwrap());
        }
    }
    let holding = log_mappings(dir.path());
    assert!(held.iter().all(|r| r.body() == &[b'v'; 100][..]));
    assert!(
        holding <= dropped + 1,
        "{} records held pin {holding} log mappings (cache bound: {dropped} with none held, \
         8 x max_open_files = 8, plus max_open_files = 1 pinned by records)",
        held.len()
    );
    drop(held);
    store.close().unwrap();
}

fn find_logs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            find_logs(&p, out);
        } else if p.extension().is_some_and(|x| x == "log") {
            out.push(p);
        }
    }
}

/// 200 one-record batches in one segment, cleanly closed; `damage` edits the log's bytes
/// (given the position of batch 100); then every fetch following `next_offset` from 0.
/// Returns the offsets handed out, or the first error.
fn read_all_after_damage(damage: impl FnOnce(&mut Vec<u8>, usize)) -> Result<Vec<u64>, String> {
    let dir = tempfile::tempdir().unwrap();
    let opts = || StoreOptions {
        engine: Some(EngineKind::Segmented),
        ..StoreOptions::default()
    };
    let store = duolog::open(dir.path(), opts()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..200u32 {
        store
            .append("t", 0, &[Message::new(vec![(i % 250) as u8 + 1; 100])])
            .unwrap();
    }
    store.close().unwrap();
    let mut logs = Vec::new();
    find_logs(dir.path(), &mut logs);
    let log = logs
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut bytes = std::fs::read(log).unwrap();
    // Walk to batch 100: base offset (8), batch length (4), then `length` bytes.
    let mut pos = 0usize;
    for _ in 0..100 {
        let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()) as usize;
        pos += 12 + len;
    }
    damage(&mut bytes, pos);
    std::fs::write(log, &bytes).unwrap();
    let store = duolog::open(dir.path(), opts()).unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    while at < 200 {
        let f = store
            .fetch(
                "t",
                0,
                at,
                ReadLimits {
                    max_messages: 1000,
                    max_bytes: 1 << 20,
                    ..ReadLimits::default()
                },
            )
            .map_err(|e| e.to_string())?;
        out.extend(f.records.iter().map(|r| r.offset()));
        if f.next_offset <= at {
            break;
        }
        at = f.next_offset;
    }
    let _ = store.close();
    Ok(out)
}

/// The batch base offset lies outside the batch CRC (Kafka's format), so the CRC check the
/// change keeps cannot catch a damaged one. A clean open trusts the active segment below its
/// last index entry, and the read takes the header's base offset as is: a base offset damaged
/// upwards makes the read treat the batch as past the bound and return `next_offset` = the
/// bound, so a consumer following `next_offset` silently skips every later record (100 of
/// 200 here) with no error. (Same logic before the change: `o >= bound` returned the bound.)
/// A batch whose base offset is not the previous batch's end (or lies past the segment's
/// next offset) is corruption.
#[test]
fn a_damaged_base_offset_never_skips_records_silently() {
    let r = read_all_after_damage(|b, pos| b[pos] ^= 0x55);
    if let Ok(offsets) = r {
        assert_eq!(
            offsets,
            (0..200).collect::<Vec<u64>>(),
            "reads following next_offset returned {} records and no error",
            offsets.len()
        );
    }
}

/// The same damage downwards (base offset 100 -> 49): the damaged batch's record is returned
/// under offset 49, which the fetch already returned with other bytes — a duplicate offset out
/// of order, no error.
#[test]
fn a_damaged_base_offset_never_returns_an_offset_twice() {
    let r = read_all_after_damage(|b, pos| b[pos + 7] ^= 0x55);
    if let Ok(offsets) = r {
        let sorted = offsets.windows(2).all(|w| w[0] < w[1]);
        assert!(
            sorted,
            "offsets returned out of order / twice: {:?}",
            &offsets[95..offsets.len().min(110)]
        );
    }
}

/// ARCHITECTURE: "Resident memory per active log is bounded whatever the data size ... a later
/// read maps it again" (published pages more than 1 MiB behind the writer are released, in
/// steps, from a watermark that only moves forward). A reader catching up through the active
/// segment — which reads now slice, zero-copy, from the writer's own mapping — faults every
/// page it reads back into that mapping, and nothing releases them again: RSS grows with the
/// data read (here ~192 MiB for 192 MiB read), not bounded by options.
#[test]
fn reading_an_active_log_keeps_rss_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        engine: Some(EngineKind::Segmented),
        ..StoreOptions::default()
    };
    let s = duolog::open(dir.path(), opts).unwrap();
    s.create_topic("t", TopicConfig::default()).unwrap();
    let body = vec![b'x'; 4096];
    let n = (192u64 << 20) / body.len() as u64;
    for _ in 0..n {
        s.append_oneway("t", 0, &[Message::new(body.clone())])
            .unwrap();
    }
    s.sync().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = rss_bytes();
    let mut at = 0;
    let mut got = 0u64;
    while at < n {
        let f = s.fetch("t", 0, at, ReadLimits::default()).unwrap();
        got += f.records.len() as u64;
        at = f.next_offset;
    }
    assert_eq!(got, n);
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "RSS grew by {} MiB reading 192 MiB of the active segment (records dropped)",
        grown >> 20
    );
    s.close().unwrap();
}
