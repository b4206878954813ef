//! Resource bounds of the transaction engines (issue 14 leftovers): the CommitLog engine's
//! aborted-transaction index stays on disk, with only a bounded tail in memory, however many
//! transactions a partition aborted; and a damaged index file is rebuilt at open, not trusted.

mod common;

use std::path::Path;
use std::time::Duration;

use duolog::{
    CommitLogStore, EngineKind, FlushPolicy, IsolationLevel, LogStore, Message, ProducerId,
    ReadLimits, StoreOptions, TopicConfig, TxnMarker,
};

/// The documented bound on a partition's resident aborted-transaction entries (`txn_index`).
const RESIDENT_BOUND: usize = 1024;

fn opts() -> StoreOptions {
    StoreOptions {
        flush: FlushPolicy::Async {
            interval: Duration::from_secs(3600),
        },
        ..common::small_options(EngineKind::CommitLog)
    }
}

fn limits(isolation: IsolationLevel, n: usize) -> ReadLimits {
    ReadLimits {
        max_messages: n,
        max_bytes: 4 << 20,
        isolation,
    }
}

/// Bodies a reader sees under `isolation`, fetched from the start in fetches of `n`.
fn seen(store: &dyn LogStore, isolation: IsolationLevel, n: usize) -> Vec<String> {
    let b = store.bounds("t", 0).unwrap();
    let upto = match isolation {
        IsolationLevel::ReadCommitted => b.last_stable,
        IsolationLevel::ReadUncommitted => b.end,
    };
    let mut at = b.start;
    let mut out = Vec::new();
    while at < upto {
        let f = store.fetch("t", 0, at, limits(isolation, n)).unwrap();
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

/// `aborts` aborted transactions of two producers on partition 0, each between a committed
/// transaction and a plain record every tenth round. Returns the committed view.
fn many_aborts(store: &CommitLogStore, aborts: usize) -> Vec<String> {
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 0,
    };
    let q = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 0,
    };
    let mut expected = Vec::new();
    let (mut sp, mut sq) = (0, 0);
    for k in 0..aborts {
        store
            .append_transactional("t", 0, p, sp, &[Message::new(format!("a{k}"))])
            .unwrap();
        sp += 1;
        if k % 10 == 0 {
            store
                .append_transactional("t", 0, q, sq, &[Message::new(format!("c{k}"))])
                .unwrap();
            sq += 1;
            store.write_marker("t", 0, q, TxnMarker::Commit, 0).unwrap();
            expected.push(format!("c{k}"));
            store
                .append("t", 0, &[Message::new(format!("x{k}"))])
                .unwrap();
            expected.push(format!("x{k}"));
        }
        store.write_marker("t", 0, p, TxnMarker::Abort, 0).unwrap();
    }
    expected
}

/// 20,000 aborted transactions on one partition: the index's resident entries stay within the
/// documented bound (the file holds them all), read_committed sees exactly the committed
/// records, in small and large fetches, before and after a reopen (clean and unclean).
#[test]
fn the_commitlog_aborted_index_stays_bounded_in_memory_and_correct_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    let expected = many_aborts(&store, 20_000);
    assert!(
        store.txn_index_resident_entries("t", 0).unwrap() <= RESIDENT_BOUND,
        "resident entries after 20,000 aborts: {}",
        store.txn_index_resident_entries("t", 0).unwrap()
    );
    assert_eq!(seen(&store, IsolationLevel::ReadCommitted, 1000), expected);
    assert_eq!(seen(&store, IsolationLevel::ReadCommitted, 7), expected);
    assert_eq!(
        seen(&store, IsolationLevel::ReadUncommitted, 1000).len(),
        20_000 + expected.len()
    );
    assert!(store.txn_index_resident_entries("t", 0).unwrap() <= RESIDENT_BOUND);
    store.close().unwrap();

    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    assert!(store.txn_index_resident_entries("t", 0).unwrap() <= RESIDENT_BOUND);
    assert_eq!(seen(&store, IsolationLevel::ReadCommitted, 1000), expected);
    assert!(store.verify().unwrap().is_ok());
    // More aborts, then a crash: the replay re-derives the entries past the checkpoint.
    let p = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 0,
    };
    for k in 0..100 {
        store
            .append_transactional("t", 0, p, k, &[Message::new(format!("late{k}"))])
            .unwrap();
        store.write_marker("t", 0, p, TxnMarker::Abort, 0).unwrap();
    }
    store.abandon();
    drop(store);
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    assert!(store.txn_index_resident_entries("t", 0).unwrap() <= RESIDENT_BOUND);
    assert_eq!(seen(&store, IsolationLevel::ReadCommitted, 1000), expected);
    assert!(store.verify().unwrap().is_ok());
    store.close().unwrap();
}

fn index_file(dir: &Path) -> std::path::PathBuf {
    dir.join("consumequeue/t/0/aborted.txnindex")
}

/// A damaged `aborted.txnindex` (cut at an entry boundary, cut mid-entry, one byte flipped in
/// an entry long before the checkpoint) is not trusted at open: it is rebuilt from the abort
/// markers, reads are right and `verify` is clean.
#[test]
fn a_truncated_or_corrupt_commitlog_aborted_index_is_rebuilt_at_open() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 3] = [
        ("cut at an entry boundary", |f| {
            let b = std::fs::read(f).unwrap();
            // Whatever the entry size, the first half of the file ends on a boundary of
            // Kafka's 34-byte entries or of checksummed ones only by chance: keep a prefix
            // that is a whole number of entries of either layout, found by the file's size.
            let n = entries_in(&b);
            let entry = entry_len(&b);
            let header = b.len() - n * entry;
            std::fs::write(f, &b[..header + (n / 2) * entry]).unwrap();
        }),
        ("cut mid-entry", |f| {
            let b = std::fs::read(f).unwrap();
            std::fs::write(f, &b[..b.len() - 5]).unwrap();
        }),
        ("a byte flipped in an early entry", |f| {
            let mut b = std::fs::read(f).unwrap();
            let entry = entry_len(&b);
            let header = b.len() - entries_in(&b) * entry;
            // Entry 3's first offset: still a plausible transaction.
            b[header + entry * 3 + 17] ^= 1;
            std::fs::write(f, b).unwrap();
        }),
    ];
    for (what, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        let expected = many_aborts(&store, 300);
        store.close().unwrap();
        let original = std::fs::read(index_file(dir.path())).unwrap();
        damage(&index_file(dir.path()));
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        assert_eq!(
            seen(&store, IsolationLevel::ReadCommitted, 50),
            expected,
            "{what}"
        );
        assert!(store.verify().unwrap().is_ok(), "{what}");
        store.close().unwrap();
        assert_eq!(
            std::fs::read(index_file(dir.path())).unwrap(),
            original,
            "{what}: rebuilt"
        );
    }
}

/// Bytes of one entry: Kafka's 34, or 38 with a checksum (a file with a header).
fn entry_len(b: &[u8]) -> usize {
    if b.starts_with(b"DLTXNIX") { 38 } else { 34 }
}

fn entries_in(b: &[u8]) -> usize {
    if b.starts_with(b"DLTXNIX") {
        (b.len() - 8) / 38
    } else {
        b.len() / 34
    }
}
