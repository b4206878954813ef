//! `LogStore::read_tagged` and the consumer's tag filter, the same on every engine: exactly the
//! matching records, `next_offset` past everything examined, limits, the scan bound, untagged
//! records, hash collisions, compacted partitions and offsets out of range.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{for_each_backend, for_each_engine, open, read_all, small_options};
use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset, TagFilter};
use duolog::{
    CleanupPolicy, Error, LogStore, Message, ReadLimits, Record, TAG_SCAN_FACTOR, TaggedRead,
    TopicConfig,
};

fn tags(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The tag of message `i`: a mix of tags, untagged records and two colliding tags.
fn tag_of(i: usize) -> Option<&'static str> {
    match i % 7 {
        0 => Some("TagA"),
        1 | 2 => Some("TagB"),
        3 => None,
        // "Aa" and "BB" have the same Java hashCode (2112).
        4 => Some("Aa"),
        5 => Some("BB"),
        _ => Some("TagC"),
    }
}

fn fill(store: &dyn LogStore, topic: &str, n: usize) {
    let mut batch = Vec::new();
    for i in 0..n {
        let mut m = Message::new(format!("body-{i}-{}", "x".repeat(i % 50)));
        if let Some(t) = tag_of(i) {
            m = m.with_tags(t);
        }
        batch.push(m);
        if batch.len() == 13 {
            store.append(topic, 0, &batch).unwrap();
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.append(topic, 0, &batch).unwrap();
    }
}

/// Every matching record from `from` on, by repeated `read_tagged` calls, checking each call's
/// contract; also returns the number of calls.
fn read_tagged_all(
    store: &dyn LogStore,
    topic: &str,
    from: u64,
    limits: ReadLimits,
    wanted: &[String],
) -> (Vec<Record>, usize) {
    let end = store.bounds(topic, 0).unwrap().end;
    // The records there are (a compacted partition has gaps, which cost no scanning).
    let present = offsets(&read_all(store, topic, 0));
    let mut at = from;
    let mut out: Vec<Record> = Vec::new();
    let mut calls = 0;
    loop {
        let TaggedRead {
            records,
            next_offset,
        } = store.read_tagged(topic, 0, at, limits, wanted).unwrap();
        calls += 1;
        assert!(records.len() <= limits.max_messages);
        assert!(next_offset <= end, "next {next_offset} past end {end}");
        if at < end {
            assert!(next_offset > at, "no progress at {at}");
        } else {
            assert_eq!((records.len(), next_offset), (0, end), "at the end");
            return (out, calls);
        }
        let scanned =
            present.partition_point(|&o| o < next_offset) - present.partition_point(|&o| o < at);
        assert!(
            scanned <= limits.max_messages * TAG_SCAN_FACTOR,
            "examined {scanned} records in one call"
        );
        for r in &records {
            assert!(r.offset() >= at && r.offset() < next_offset);
            assert!(out.last().is_none_or(|l| l.offset() < r.offset()));
        }
        if let Some(last) = records.last()
            && records.len() == limits.max_messages
        {
            assert_eq!(
                next_offset,
                last.offset() + 1,
                "stops right after a full read"
            );
        }
        out.extend(records);
        at = next_offset;
    }
}

fn expected(store: &dyn LogStore, topic: &str, from: u64, wanted: &[String]) -> Vec<Record> {
    read_all(store, topic, 0)
        .into_iter()
        .filter(|r| r.offset() >= from && r.tags().is_some_and(|t| wanted.iter().any(|w| w == t)))
        .collect()
}

fn offsets(v: &[Record]) -> Vec<u64> {
    v.iter().map(Record::offset).collect()
}

#[test]
fn exactly_the_matching_records_in_order() {
    for_each_backend(|dir, base| {
        let store = open(dir, &base);
        store.create_topic("t", TopicConfig::default()).unwrap();
        fill(store.as_ref(), "t", 2000);
        for wanted in [
            tags(&["TagA"]),
            tags(&["TagB", "TagC"]),
            tags(&["Aa"]),
            tags(&["BB"]),
            tags(&["Nope"]),
            tags(&[]),
        ] {
            for limits in [
                ReadLimits::default(),
                ReadLimits::messages(1),
                ReadLimits::messages(7),
                ReadLimits {
                    max_messages: 1000,
                    max_bytes: 300,
                    ..ReadLimits::default()
                },
            ] {
                for from in [0, 1, 999] {
                    let (got, _) = read_tagged_all(store.as_ref(), "t", from, limits, &wanted);
                    let want = expected(store.as_ref(), "t", from, &wanted);
                    assert_eq!(
                        offsets(&got),
                        offsets(&want),
                        "{wanted:?} {limits:?} {from}"
                    );
                    assert_eq!(got, want);
                }
            }
        }
        assert!(store.verify().unwrap().is_ok());
    });
}

#[test]
fn hash_collisions_never_show() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        assert_eq!(java_hash("Aa"), java_hash("BB"));
        let batch: Vec<Message> = (0..300)
            .map(|i| Message::new(format!("{i}")).with_tags(if i % 3 == 0 { "Aa" } else { "BB" }))
            .collect();
        store.append("t", 0, &batch).unwrap();
        let r = store
            .read_tagged("t", 0, 0, ReadLimits::default(), &tags(&["Aa"]))
            .unwrap();
        assert_eq!(r.records.len(), 100);
        assert!(r.records.iter().all(|r| r.tags() == Some("Aa")));
        assert_eq!(r.next_offset, 300);
        // A full read stops right after its last record, even among colliding ones.
        let r = store
            .read_tagged("t", 0, 0, ReadLimits::messages(2), &tags(&["BB"]))
            .unwrap();
        assert_eq!(offsets(&r.records), [1, 2]);
        assert_eq!(r.next_offset, 3);
    });
}

fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
}

#[test]
fn next_offset_limits_and_the_scan_bound() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        // 500 untagged or other-tagged records, then three matching ones.
        let mut batch: Vec<Message> = (0..500)
            .map(|i| {
                let m = Message::new(format!("{i}"));
                if i % 2 == 0 { m } else { m.with_tags("Other") }
            })
            .collect();
        batch.extend((0..3).map(|i| Message::new(format!("m{i}")).with_tags("TagA")));
        store.append("t", 0, &batch).unwrap();
        let a = tags(&["TagA"]);

        // One message per call: at most 64 offsets examined.
        let r = store
            .read_tagged("t", 0, 0, ReadLimits::messages(1), &a)
            .unwrap();
        assert!(r.records.is_empty());
        assert_eq!(r.next_offset, TAG_SCAN_FACTOR as u64);

        // A bound larger than the backlog: the first match and right after it.
        let r = store
            .read_tagged("t", 0, 0, ReadLimits::messages(10), &a)
            .unwrap();
        assert_eq!(offsets(&r.records), [500, 501, 502]);
        assert_eq!(r.next_offset, 503);

        // The byte limit counts returned records; the first always comes back.
        let tiny = ReadLimits {
            max_messages: 10,
            max_bytes: 1,
            ..ReadLimits::default()
        };
        let r = store.read_tagged("t", 0, 400, tiny, &a).unwrap();
        assert_eq!(offsets(&r.records), [500]);
        assert_eq!(r.next_offset, 501);

        // Untagged records never match; nothing matches no tags.
        let r = store
            .read_tagged("t", 0, 0, ReadLimits::messages(1000), &[])
            .unwrap();
        assert!(r.records.is_empty());
        assert_eq!(r.next_offset, 503);

        // max_messages == 0: nothing, no progress.
        let r = store
            .read_tagged("t", 0, 7, ReadLimits::messages(0), &a)
            .unwrap();
        assert_eq!((r.records.len(), r.next_offset), (0, 7));

        // At the end: caught up.
        let r = store
            .read_tagged("t", 0, 503, ReadLimits::default(), &a)
            .unwrap();
        assert_eq!((r.records.len(), r.next_offset), (0, 503));
    });
}

#[test]
fn offsets_out_of_range_and_unknown_partitions_error_like_read() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        fill(store.as_ref(), "t", 1000);
        let a = tags(&["TagA"]);
        let past = store.read_tagged("t", 0, 1001, ReadLimits::default(), &a);
        assert!(matches!(
            past,
            Err(Error::OffsetOutOfRange {
                offset: 1001,
                end: 1000,
                ..
            })
        ));
        let start = store.delete_before("t", 0, 500).unwrap();
        let below = store.read_tagged("t", 0, start - 1, ReadLimits::default(), &a);
        assert!(
            matches!(below, Err(Error::OffsetOutOfRange { .. })),
            "{below:?}"
        );
        assert!(
            store
                .read("t", 0, start - 1, ReadLimits::default())
                .is_err()
        );
        let (got, _) = read_tagged_all(store.as_ref(), "t", start, ReadLimits::messages(5), &a);
        assert_eq!(
            offsets(&got),
            offsets(&expected(store.as_ref(), "t", start, &a))
        );
        assert!(matches!(
            store.read_tagged("t", 1, 0, ReadLimits::default(), &a),
            Err(Error::UnknownPartition { .. })
        ));
        assert!(matches!(
            store.read_tagged("nope", 0, 0, ReadLimits::default(), &a),
            Err(Error::UnknownTopic(_))
        ));
    });
}

#[test]
fn compacted_partitions_read_the_same() {
    for_each_backend(|dir, base| {
        let store = open(dir, &base);
        let config = TopicConfig {
            cleanup_policy: CleanupPolicy::Compact,
            segment_bytes: Some(4096),
            ..TopicConfig::default()
        };
        store.create_topic("c", config).unwrap();
        for i in 0..3000usize {
            let mut m = Message::new(format!("v{i}")).with_key(format!("k{}", i % 40));
            if let Some(t) = tag_of(i) {
                m = m.with_tags(t);
            }
            store.append("c", 0, &[m]).unwrap();
        }
        let report = store.compact(Some("c")).unwrap();
        assert!(report.records_removed > 0, "{report:?}");
        let all = read_all(store.as_ref(), "c", 0);
        assert!(all.len() < 3000);
        for wanted in [tags(&["TagA"]), tags(&["Aa", "TagC"]), tags(&["BB"])] {
            for limits in [ReadLimits::messages(3), ReadLimits::default()] {
                for from in [0, 1500, 2990] {
                    let (got, _) = read_tagged_all(store.as_ref(), "c", from, limits, &wanted);
                    assert_eq!(
                        offsets(&got),
                        offsets(&expected(store.as_ref(), "c", from, &wanted)),
                        "{wanted:?} {limits:?} {from}"
                    );
                }
            }
        }
    });
}

fn consumer(groups: &GroupCoordinator, group: &str, filter: &str) -> Consumer {
    let c = Consumer::new(
        groups,
        ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: false,
            max_poll_records: 50,
            tag_filter: Some(TagFilter::parse(filter)),
            ..ConsumerConfig::new(group)
        },
    )
    .unwrap();
    c.assign(&[("t", 0)]).unwrap();
    c
}

#[test]
fn the_consumer_filters_by_tag_and_commits_past_skipped_records() {
    for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        store.create_topic("t", TopicConfig::default()).unwrap();
        fill(store.as_ref(), "t", 5000);
        // The tail is all non-matching: the consumer must still reach the end.
        let tail: Vec<Message> = (0..200)
            .map(|_| Message::new("z").with_tags("TagZ"))
            .collect();
        store.append("t", 0, &tail).unwrap();
        let end = store.bounds("t", 0).unwrap().end;
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        for (g, filter) in ["TagA || TagC", "Aa", "*"].into_iter().enumerate() {
            let group = format!("g{g}");
            let f = TagFilter::parse(filter);
            let want: Vec<u64> = read_all(store.as_ref(), "t", 0)
                .iter()
                .filter(|r| f.matches(r.tags()))
                .map(Record::offset)
                .collect();
            let c = consumer(&groups, &group, filter);
            let mut got = Vec::new();
            while c.position("t", 0).unwrap() < end {
                for r in c.poll(Duration::from_millis(300)).unwrap() {
                    assert!(f.matches(r.record().tags()));
                    got.push(r.offset());
                }
            }
            assert_eq!(got, want, "{filter}");
            assert_eq!(c.position("t", 0).unwrap(), end);
            assert!(c.poll(Duration::from_millis(10)).unwrap().is_empty());
            c.commit().unwrap();
            assert_eq!(
                c.committed("t", 0),
                Some(end),
                "committed past the skipped tail"
            );
            drop(c);
            // The group's next member starts at the end: nothing again.
            let again = consumer(&groups, &group, filter);
            assert_eq!(again.position("t", 0).unwrap(), end);
            assert!(again.poll(Duration::from_millis(10)).unwrap().is_empty());
        }
        // A crash mid-way (no commit) redelivers from the committed offset, filtered.
        let c = consumer(&groups, "crash", "TagB");
        let first = c.poll(Duration::from_secs(5)).unwrap();
        assert!(!first.is_empty());
        let mid = c.position("t", 0).unwrap();
        c.commit().unwrap();
        let second = c.poll(Duration::from_secs(5)).unwrap();
        drop(c);
        let c = consumer(&groups, "crash", "TagB");
        assert_eq!(c.position("t", 0).unwrap(), mid);
        let again = c.poll(Duration::from_secs(5)).unwrap();
        assert_eq!(
            again.iter().map(|r| r.offset()).collect::<Vec<_>>(),
            second.iter().map(|r| r.offset()).collect::<Vec<_>>()
        );
    });
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn the_commitlog_engine_never_reads_skipped_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &small_options(duolog::EngineKind::CommitLog));
    store.create_topic("t", TopicConfig::default()).unwrap();
    let mut batch: Vec<Message> = (0..50)
        .map(|i| Message::new(format!("a-{i}")).with_tags("TagA"))
        .collect();
    batch.insert(20, Message::new("SKIPPED-RECORD-BODY").with_tags("TagB"));
    store.append("t", 0, &batch).unwrap();
    store.sync().unwrap();
    // Damage the TagB record's body in the log, under the live store (the mapping sees it).
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    let mut damaged = 0;
    for f in files {
        let mut bytes = std::fs::read(&f).unwrap();
        if let Some(at) = bytes.windows(19).position(|w| w == b"SKIPPED-RECORD-BODY") {
            bytes[at] ^= 0xff;
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            file.write_all_at(&bytes[at..at + 1], at as u64).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 1);
    assert!(matches!(
        store.read("t", 0, 0, ReadLimits::default()),
        Err(Error::Corrupted { .. })
    ));
    let r = store
        .read_tagged("t", 0, 0, ReadLimits::default(), &tags(&["TagA"]))
        .unwrap();
    assert_eq!(r.records.len(), 50);
    assert_eq!(r.next_offset, 51);
    assert!(matches!(
        store.read_tagged("t", 0, 0, ReadLimits::default(), &tags(&["TagB"])),
        Err(Error::Corrupted { .. })
    ));
}

#[test]
fn tagged_reads_race_appends_and_compaction() {
    for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        let config = TopicConfig {
            cleanup_policy: CleanupPolicy::Compact,
            segment_bytes: Some(4096),
            ..TopicConfig::default()
        };
        store.create_topic("c", config).unwrap();
        const N: usize = 6000;
        let writer = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..N {
                    let mut m = Message::new(format!("v{i}")).with_key(format!("k{}", i % 50));
                    if let Some(t) = tag_of(i) {
                        m = m.with_tags(t);
                    }
                    store.append("c", 0, &[m]).unwrap();
                    if i % 1000 == 999 {
                        store.compact(Some("c")).unwrap();
                    }
                }
            })
        };
        let wanted = tags(&["TagA", "Aa"]);
        let mut at = 0;
        let mut last: Option<u64> = None;
        let mut got = 0;
        loop {
            let done = writer.is_finished();
            let end = store.bounds("c", 0).unwrap().end;
            let r = store
                .read_tagged("c", 0, at, ReadLimits::messages(20), &wanted)
                .unwrap();
            for rec in &r.records {
                assert!(rec.offset() >= at && rec.offset() < r.next_offset);
                assert!(last.is_none_or(|l| l < rec.offset()));
                assert!(matches!(rec.tags(), Some("TagA" | "Aa")), "{rec:?}");
                last = Some(rec.offset());
                got += 1;
            }
            assert!(r.next_offset >= at);
            at = r.next_offset;
            if done && at >= end && r.records.is_empty() {
                break;
            }
        }
        writer.join().unwrap();
        assert_eq!(at, N as u64);
        assert!(got > 0);
    });
}
