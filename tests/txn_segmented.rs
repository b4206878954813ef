//! Transactions on the segmented engine's disk (issue 14): Kafka's control batches, the
//! per-segment `.txnindex`, producer snapshots holding open transactions, retention and
//! compaction with transactions, and kafka-python reading every segment.

mod common;

use std::path::Path;
use std::time::Duration;

use duolog::segmented::batch;
use duolog::{
    CleanupPolicy, CompactionOptions, EngineKind, FlushPolicy, IsolationLevel, LogStore, Message,
    ProducerId, ReadLimits, SegmentedOptions, StoreOptions, TopicConfig, TxnMarker,
};

const COMMITTED: ReadLimits = ReadLimits {
    max_messages: 1024,
    max_bytes: 4 << 20,
    isolation: IsolationLevel::ReadCommitted,
};

fn options() -> StoreOptions {
    StoreOptions {
        engine: Some(EngineKind::Segmented),
        flush: FlushPolicy::Async {
            interval: Duration::from_millis(50),
        },
        segmented: SegmentedOptions {
            segment_bytes: 2048,
            index_interval_bytes: 256,
            max_index_bytes: 4096,
            ..SegmentedOptions::default()
        },
        compaction: CompactionOptions {
            enabled: false,
            ..CompactionOptions::default()
        },
        ..StoreOptions::default()
    }
}

fn batch_of(tag: &str, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message::new(format!("{tag}-{i}-{}", "x".repeat(40))))
        .collect()
}

fn producer(store: &dyn LogStore) -> ProducerId {
    ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 0,
    }
}

/// Bodies a `read_committed` reader sees, fetched from the start with the fetches' own
/// `next_offset`.
fn committed(store: &dyn LogStore) -> Vec<String> {
    let b = store.bounds("t", 0).unwrap();
    let mut at = b.start;
    let mut out = Vec::new();
    while at < b.last_stable {
        let f = store.fetch("t", 0, at, COMMITTED).unwrap();
        assert!(f.next_offset > at, "no progress at {at}");
        out.extend(
            f.records
                .iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
        at = f.next_offset;
    }
    out
}

fn files(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("t-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

/// Ten transactions of `p` over several segments, every other one aborted; returns the bodies
/// a committed reader must see.
fn aborts_across_segments(store: &dyn LogStore, p: ProducerId) -> Vec<String> {
    let mut want = Vec::new();
    for k in 0..10 {
        let msgs = batch_of(&format!("t{k}"), 8);
        store.append_transactional("t", 0, p, k * 8, &msgs).unwrap();
        let marker = if k % 2 == 0 {
            TxnMarker::Abort
        } else {
            want.extend(
                msgs.iter()
                    .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
            );
            TxnMarker::Commit
        };
        store.write_marker("t", 0, p, marker, 0).unwrap();
    }
    want
}

#[test]
fn transaction_indexes_hold_kafkas_entries_only_where_aborts_are() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(store.as_ref());
    let want = aborts_across_segments(store.as_ref(), p);
    assert_eq!(committed(store.as_ref()), want);
    store.close().unwrap();
    let logs = files(dir.path(), "log");
    let indexes = files(dir.path(), "txnindex");
    assert!(logs.len() > 3, "the test needs several segments");
    assert!(
        !indexes.is_empty() && indexes.len() < logs.len(),
        "{indexes:?}"
    );
    let mut entries = 0;
    for path in &indexes {
        let b = std::fs::read(path).unwrap();
        assert!(
            !b.is_empty() && b.len().is_multiple_of(34),
            "no empty or torn index"
        );
        for e in b.chunks(34) {
            assert_eq!(&e[0..2], &[0, 0], "version 0");
            assert_eq!(i64::from_be_bytes(e[2..10].try_into().unwrap()), p.id);
            let first = i64::from_be_bytes(e[10..18].try_into().unwrap());
            let last = i64::from_be_bytes(e[18..26].try_into().unwrap());
            let lso = i64::from_be_bytes(e[26..34].try_into().unwrap());
            // Each aborted transaction: 8 records, then its marker; nothing else open.
            assert_eq!((last - first, lso), (8, last + 1));
            entries += 1;
        }
    }
    assert_eq!(entries, 5);
}

#[test]
fn damaged_or_missing_transaction_indexes_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (p, want) = {
        let store = duolog::open(dir.path(), options()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        let p = producer(store.as_ref());
        let want = aborts_across_segments(store.as_ref(), p);
        store.close().unwrap();
        (p, want)
    };
    let indexes = files(dir.path(), "txnindex");
    let originals: Vec<Vec<u8>> = indexes.iter().map(|p| std::fs::read(p).unwrap()).collect();
    // Damaged after a clean shutdown: the open's check finds it and rebuilds it.
    for (k, path) in indexes.iter().enumerate() {
        let mut b = originals[k].clone();
        match k % 3 {
            0 => b.truncate(b.len() - 5),
            1 => b[20] ^= 0x7f,
            _ => b = vec![0xff; 34],
        }
        std::fs::write(path, b).unwrap();
    }
    {
        let store = duolog::open(dir.path(), options()).unwrap();
        assert_eq!(committed(store.as_ref()), want, "after damaged indexes");
        store.close().unwrap();
    }
    for (k, path) in indexes.iter().enumerate() {
        assert_eq!(
            std::fs::read(path).unwrap(),
            originals[k],
            "rebuilt as written"
        );
    }
    // Missing after a crash with no recovery point: every segment is validated, and each
    // one's index rebuilt from the log.
    {
        let store = duolog::open(dir.path(), options()).unwrap();
        store
            .append_transactional("t", 0, p, 80, &batch_of("late", 2))
            .unwrap();
        store.write_marker("t", 0, p, TxnMarker::Abort, 1).unwrap();
        store.abandon();
    }
    for path in files(dir.path(), "txnindex") {
        std::fs::remove_file(path).unwrap();
    }
    std::fs::remove_file(dir.path().join("recovery-point-offset-checkpoint")).unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    assert_eq!(committed(store.as_ref()), want, "after missing indexes");
    let rebuilt = files(dir.path(), "txnindex");
    assert!(indexes.iter().all(|p| rebuilt.contains(p)), "{rebuilt:?}");
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn the_producer_snapshot_holds_the_open_transaction_and_coordinator_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(store.as_ref());
    store.append("t", 0, &batch_of("plain", 3)).unwrap();
    store
        .append_transactional("t", 0, p, 0, &batch_of("a", 2))
        .unwrap();
    store.write_marker("t", 0, p, TxnMarker::Commit, 9).unwrap();
    store
        .append_transactional("t", 0, p, 2, &batch_of("b", 2))
        .unwrap();
    store.close().unwrap();
    drop(store);
    // Kafka's layout: 10-byte header, then 46-byte entries; coordinatorEpoch at 34 and
    // currentTxnFirstOffset at 38 within the entry.
    let snapshot = files(dir.path(), "snapshot").pop().unwrap();
    let b = std::fs::read(snapshot).unwrap();
    assert_eq!(b.len(), 10 + 46);
    let e = &b[10..];
    assert_eq!(i64::from_be_bytes(e[0..8].try_into().unwrap()), p.id);
    assert_eq!(i32::from_be_bytes(e[34..38].try_into().unwrap()), 9);
    assert_eq!(i64::from_be_bytes(e[38..46].try_into().unwrap()), 6);
    let store = duolog::open(dir.path(), options()).unwrap();
    let b = store.bounds("t", 0).unwrap();
    assert_eq!((b.last_stable, b.end), (6, 8));
    let state = store.producer_state("t", 0).unwrap();
    assert_eq!(
        (state[0].open_transaction, state[0].coordinator_epoch),
        (Some(6), 9)
    );
    // A fencing abort with a newer epoch leaves the producer without a batch under it; the
    // snapshot still holds it (Kafka's NO_SEQUENCE), so the old epoch stays fenced.
    let newer = ProducerId { id: p.id, epoch: 1 };
    store
        .write_marker("t", 0, newer, TxnMarker::Abort, 10)
        .unwrap();
    store.close().unwrap();
    drop(store);
    let store = duolog::open(dir.path(), options()).unwrap();
    assert!(matches!(
        store.append_transactional("t", 0, p, 4, &batch_of("zombie", 1)),
        Err(duolog::Error::ProducerFenced { .. })
    ));
    assert_eq!(committed(store.as_ref()).len(), 5);
}

#[test]
fn retention_deletes_transaction_indexes_with_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(store.as_ref());
    aborts_across_segments(store.as_ref(), p);
    let before = files(dir.path(), "txnindex");
    // Another producer's transaction stays open across the deletion: the LSO is clamped to
    // the new start only if it was below it.
    let q = producer(store.as_ref());
    let open_at = store
        .append_transactional("t", 0, q, 0, &batch_of("q", 1))
        .unwrap()
        .base_offset;
    let end = store.bounds("t", 0).unwrap().end;
    let start = store.delete_before("t", 0, end - 5).unwrap();
    assert_eq!(start, end - 5);
    let after = files(dir.path(), "txnindex");
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    for path in &after {
        let base: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        assert!(
            files(dir.path(), "log")
                .iter()
                .any(|l| l.file_stem() == path.file_stem()),
            "index {base} without its segment"
        );
    }
    let b = store.bounds("t", 0).unwrap();
    assert_eq!(b.last_stable, open_at.max(b.start));
    store.write_marker("t", 0, q, TxnMarker::Commit, 0).unwrap();
    let seen = committed(store.as_ref());
    for k in (0..10).step_by(2) {
        assert!(
            !seen.iter().any(|s| s.starts_with(&format!("t{k}-"))),
            "t{k} aborted"
        );
    }
    assert_eq!(seen.last().unwrap(), &format!("q-0-{}", "x".repeat(40)));
    store.close().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    assert_eq!(committed(store.as_ref()), seen);
}

#[test]
fn compaction_removes_aborted_records_and_stops_at_the_last_stable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    store
        .create_topic(
            "t",
            TopicConfig {
                partitions: 1,
                cleanup_policy: CleanupPolicy::Compact,
                segment_bytes: Some(1024),
                ..TopicConfig::default()
            },
        )
        .unwrap();
    let p = producer(store.as_ref());
    let q = producer(store.as_ref());
    let kv = |k: &str, v: &str| Message::new(v.to_string()).with_key(k.to_string());
    let pad = |i: usize| {
        kv(
            &format!("pad{}", i % 4),
            &format!("pad-{i}-{}", "y".repeat(60)),
        )
    };
    store.append("t", 0, &[kv("k", "committed")]).unwrap();
    // An aborted newer value of k must neither show nor supersede the committed one.
    store
        .append_transactional("t", 0, p, 0, &[kv("k", "aborted")])
        .unwrap();
    store.write_marker("t", 0, p, TxnMarker::Abort, 0).unwrap();
    for i in 0..40 {
        store.append("t", 0, &[pad(i)]).unwrap();
    }
    // q's transaction stays open: nothing from its first offset on is cleaned.
    let open = store
        .append_transactional("t", 0, q, 0, &[kv("k", "open")])
        .unwrap()
        .base_offset;
    for i in 40..80 {
        store.append("t", 0, &[pad(i)]).unwrap();
    }
    let uncommitted_before = store.read("t", 0, open, ReadLimits::default()).unwrap();
    let report = store.compact(Some("t")).unwrap();
    assert!(report.records_removed > 0, "{report:?}");
    let all: Vec<String> = common::read_all(store.as_ref(), "t", 0)
        .iter()
        .map(|r| String::from_utf8(r.body().to_vec()).unwrap())
        .collect();
    assert!(
        !all.contains(&"aborted".to_string()),
        "aborted records are removed"
    );
    assert!(all.contains(&"committed".to_string()));
    let after = store.read("t", 0, open, ReadLimits::default()).unwrap();
    assert_eq!(
        after, uncommitted_before,
        "nothing at or past the LSO is cleaned"
    );
    let seen = committed(store.as_ref());
    assert_eq!(seen[0], "committed");
    store.write_marker("t", 0, q, TxnMarker::Commit, 0).unwrap();
    store.compact(Some("t")).unwrap();
    let seen = committed(store.as_ref());
    assert!(
        !seen.contains(&"committed".to_string()),
        "superseded once q commits"
    );
    assert!(seen.contains(&"open".to_string()));
    store.close().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    assert_eq!(committed(store.as_ref()), seen);
    assert!(store.verify().unwrap().is_ok());
    drop(store);
    kafka_python_reads(dir.path());
}

#[test]
fn control_batches_are_kafkas_end_transaction_markers() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 3,
    };
    store
        .append_transactional("t", 0, p, 0, &batch_of("a", 2))
        .unwrap();
    store
        .write_marker("t", 0, p, TxnMarker::Commit, 17)
        .unwrap();
    store
        .append_transactional("t", 0, p, 2, &batch_of("b", 1))
        .unwrap();
    store.write_marker("t", 0, p, TxnMarker::Abort, 18).unwrap();
    store.close().unwrap();
    drop(store);
    let log = std::fs::read(&files(dir.path(), "log")[0]).unwrap();
    let mut pos = 0;
    let mut seen = Vec::new();
    while pos < log.len() {
        let h = batch::check_batch(&log[pos..]).unwrap();
        let b = &log[pos..pos + h.total_len()];
        assert_eq!((h.producer_id, h.producer_epoch), (p.id, 3));
        if h.is_control() {
            assert_eq!(h.attributes, 0x30);
            assert_eq!((h.base_sequence, h.record_count), (-1, 1));
            let r = batch::records(b, &h).next().unwrap().unwrap();
            let key = &b[r.key.clone().unwrap()];
            let value = &b[r.value.clone().unwrap()];
            seen.push((h.base_offset, key.to_vec(), value.to_vec()));
        } else {
            assert_eq!(h.attributes, 0x18, "transactional, LogAppendTime");
        }
        pos += h.total_len();
    }
    assert_eq!(
        seen,
        [
            (2, vec![0, 0, 0, 1], vec![0, 0, 0, 0, 0, 17]),
            (4, vec![0, 0, 0, 0], vec![0, 0, 0, 0, 0, 18]),
        ]
    );
    kafka_python_reads(dir.path());
}

/// When kafka-python is installed, its own decoder reads every segment of `t-0`: CRCs valid,
/// control batches seen as such with their marker type, data records where the store has them.
fn kafka_python_reads(dir: &Path) {
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
            if b.is_control_batch:
                print("control", r.offset, "commit" if r.commit else "abort", b.producer_id)
            else:
                print("data", r.offset, b.is_transactional)
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
    let text = String::from_utf8_lossy(&out.stdout);
    let controls = text.lines().filter(|l| l.starts_with("control")).count();
    assert!(controls > 0, "kafka-python saw no control batch:\n{text}");
    eprintln!("kafka-python decoded {} records", text.lines().count());
}
