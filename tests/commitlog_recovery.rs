//! CommitLog-engine recovery in the cases RocketMQ's own store tests cover, in our words:
//! a damaged last message with and without the abort marker, garbage past the end, lost
//! checkpoints and consume queues, and no stale record ever coming back behind new data.

mod common;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use common::small_options;
use duolog::{CommitLogStore, EngineKind, Error, LogStore, Message, ReadLimits, TopicConfig};

fn opts() -> duolog::StoreOptions {
    small_options(EngineKind::CommitLog)
}

/// Writes `n` messages and crashes (no clean close). No background checkpoint runs meanwhile:
/// the tests damage the last records and need them past the checkpoint, as after a real crash
/// they are (a checkpoint taken after them would make the open trust them, and the damage be
/// found only when read — the clean-shutdown case below).
fn fill(dir: &Path, n: usize) -> Vec<u64> {
    let mut options = opts();
    options.commitlog.checkpoint_interval = std::time::Duration::from_secs(3600);
    let store = CommitLogStore::open(dir, options).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(2))
        .unwrap();
    let mut positions = Vec::new();
    for i in 0..n {
        store
            .append(
                "t",
                (i % 2) as u32,
                &[Message::new(format!("message-{i:05}")).with_key(format!("k{i}"))],
            )
            .unwrap();
        positions.push(store.log_end_position());
    }
    store.sync().unwrap();
    store.abandon();
    positions
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Overwrites bytes at a commit-log position.
fn poke(dir: &Path, pos: u64, bytes: &[u8]) {
    let size = 64 * 1024;
    let path = dir
        .join("commitlog")
        .join(format!("{:020}", pos - pos % size));
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(pos % size)).unwrap();
    f.write_all(bytes).unwrap();
}

fn peek(dir: &Path, pos: u64, len: usize) -> Vec<u8> {
    let size = 64 * 1024;
    let path = dir
        .join("commitlog")
        .join(format!("{:020}", pos - pos % size));
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(pos % size)).unwrap();
    let mut b = vec![0; len];
    f.read_exact(&mut b).unwrap();
    b
}

fn bodies(store: &dyn LogStore, p: u32) -> Vec<String> {
    let b = store.bounds("t", p).unwrap();
    let mut out = Vec::new();
    let mut at = b.start;
    while at < b.end {
        let recs = store.read("t", p, at, ReadLimits::messages(500)).unwrap();
        at += recs.len() as u64;
        out.extend(
            recs.iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
    }
    out
}

#[test]
fn damaged_last_message_is_dropped_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let ends = fill(dir.path(), 2000);
    // Flip a byte in the body of the last record.
    let last_start = ends[ends.len() - 2];
    let b = peek(dir.path(), last_start + 90, 1);
    poke(dir.path(), last_start + 90, &[b[0] ^ 0xFF]);
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    assert_eq!(
        store.bounds("t", 1).unwrap().end,
        999,
        "the last message (partition 1) is gone"
    );
    assert_eq!(store.bounds("t", 0).unwrap().end, 1000);
    assert_eq!(store.log_end_position(), last_start);
    assert!(store.verify().unwrap().is_ok());
    // Damage to the last record (bit rot, or a torn write of an unsynced one) cuts the log back
    // to the consistent prefix before it; appends continue densely from there.
    assert_eq!(
        store
            .append("t", 1, &[Message::new("again")])
            .unwrap()
            .base_offset,
        999
    );
}

#[test]
fn damaged_last_message_after_a_clean_shutdown_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let ends = fill(dir.path(), 100);
    {
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        store.close().unwrap();
    }
    let last_start = ends[ends.len() - 2];
    let b = peek(dir.path(), last_start + 90, 1);
    poke(dir.path(), last_start + 90, &[b[0] ^ 0xFF]);
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    // A clean open scans nothing, so the damage is found when the record is read.
    let err = store.read("t", 1, 49, ReadLimits::default()).unwrap_err();
    assert!(matches!(err, Error::Corrupted { .. }), "{err}");
    assert_eq!(
        store
            .read("t", 1, 48, ReadLimits::messages(1))
            .unwrap()
            .len(),
        1
    );
    let report = store.verify().unwrap();
    assert!(!report.is_ok());
}

#[test]
fn garbage_past_the_end_is_erased_and_never_resurrects() {
    let dir = tempfile::tempdir().unwrap();
    let ends = fill(dir.path(), 50);
    let end = *ends.last().unwrap();
    // A stale but valid-looking copy of records: take the bytes of records 40..50 and write them
    // again right after the end, as an old run might have left them.
    let start40 = ends[39];
    let stale = peek(dir.path(), start40, (end - start40) as usize);
    poke(dir.path(), end, &stale);
    poke(dir.path(), end + stale.len() as u64, &[0xAB; 777]);
    {
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        assert_eq!(
            store.log_end_position(),
            end,
            "copies at the wrong position are not records"
        );
        assert_eq!(bodies(&store, 0).len(), 25);
        store.abandon();
    }
    assert!(
        peek(dir.path(), end, stale.len() + 777)
            .iter()
            .all(|&b| b == 0),
        "tail zeroed durably"
    );
}

#[test]
fn lost_middle_record_cuts_the_log_and_later_records_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let ends = fill(dir.path(), 60);
    // Record 50 torn (zeroed), 51.. intact: a torn write in the middle of the unflushed tail.
    let (s50, e50) = (ends[49], ends[50]);
    poke(dir.path(), s50, &vec![0u8; (e50 - s50) as usize]);
    {
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        assert_eq!(store.log_end_position(), s50);
        assert_eq!(store.bounds("t", 0).unwrap().end, 25);
        // New, shorter records take the space.
        for i in 0..3 {
            store
                .append("t", 0, &[Message::new(format!("new-{i}"))])
                .unwrap();
        }
        store.sync().unwrap();
        store.abandon();
    }
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    let b0 = bodies(&store, 0);
    assert_eq!(b0.len(), 28);
    assert_eq!(&b0[25..], ["new-0", "new-1", "new-2"]);
    assert_eq!(bodies(&store, 1).len(), 25, "records 51.. never come back");
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn missing_or_damaged_checkpoint_means_a_full_replay() {
    for damage in ["delete", "garble"] {
        let dir = tempfile::tempdir().unwrap();
        fill(dir.path(), 3000);
        let cp = dir.path().join("checkpoint");
        if damage == "delete" {
            std::fs::remove_file(&cp).unwrap();
        } else {
            std::fs::write(&cp, b"garbage garbage garbage garbage garbage").unwrap();
        }
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        assert_eq!(store.bounds("t", 0).unwrap().end, 1500, "{damage}");
        assert_eq!(store.bounds("t", 1).unwrap().end, 1500, "{damage}");
        assert!(store.verify().unwrap().is_ok());
    }
}

#[test]
fn consume_queues_are_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 1000);
    std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    assert_eq!(bodies(&store, 0).len(), 500);
    assert_eq!(bodies(&store, 1)[499], "message-00999");
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn recovery_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let ends = fill(dir.path(), 400);
    poke(dir.path(), ends[300] + 5, &[0x55; 3]);
    let mut seen = None;
    for _ in 0..3 {
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        let state = (
            store.log_end_position(),
            bodies(&store, 0),
            bodies(&store, 1),
        );
        if let Some(prev) = &seen {
            assert_eq!(prev, &state);
        }
        seen = Some(state);
        store.abandon();
    }
}

#[test]
fn retention_by_size_deletes_whole_old_files_and_moves_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.commitlog.retention_bytes = Some(256 * 1024);
    o.commitlog.retention = None;
    let store = CommitLogStore::open(dir.path(), o.clone()).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(2))
        .unwrap();
    for i in 0..4000 {
        store
            .append(
                "t",
                (i % 2) as u32,
                &[Message::new(vec![b'r'; 300]).with_key(format!("{i}"))],
            )
            .unwrap();
    }
    let before = log_files(dir.path()).len();
    let removed = store.enforce_retention().unwrap();
    assert!(removed > 0);
    // The allocation thread may have made the next file meanwhile.
    let after = log_files(dir.path()).len();
    assert!(after == before - removed || after == before - removed + 1);
    // Four files of data, and perhaps the next one made ahead of the writer.
    assert!(log_files(dir.path()).len() <= 5);
    for p in 0..2 {
        let b = store.bounds("t", p).unwrap();
        assert!(b.start > 0, "start moved past deleted records");
        let first = store
            .read("t", p, b.start, ReadLimits::messages(1))
            .unwrap();
        assert_eq!(first[0].offset(), b.start);
        assert!(matches!(
            store.read("t", p, b.start - 1, ReadLimits::default()),
            Err(Error::OffsetOutOfRange { .. })
        ));
    }
    assert!(
        store.verify().unwrap().is_ok(),
        "{:?}",
        store.verify().unwrap().problems
    );
    let starts: Vec<u64> = (0..2)
        .map(|p| store.bounds("t", p).unwrap().start)
        .collect();
    drop(store);
    let store = CommitLogStore::open(dir.path(), o).unwrap();
    assert_eq!(
        starts,
        (0..2)
            .map(|p| store.bounds("t", p).unwrap().start)
            .collect::<Vec<_>>()
    );
}

#[test]
fn retention_by_time_keeps_the_active_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.commitlog.retention = Some(std::time::Duration::from_millis(1));
    let store = CommitLogStore::open(dir.path(), o).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..2000 {
        store
            .append(
                "t",
                0,
                &[Message::new(vec![b'r'; 200]).with_key(format!("{i}"))],
            )
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    store.enforce_retention().unwrap();
    // The active file, and perhaps the next one made ahead of the writer.
    assert!(log_files(dir.path()).len() <= 2);
    let b = store.bounds("t", 0).unwrap();
    assert!(b.start > 0 && b.end == 2000);
    assert_eq!(
        store
            .read("t", 0, b.start, ReadLimits::default())
            .unwrap()
            .len() as u64,
        b.end - b.start
    );
}

#[test]
fn unexpected_files_and_wrong_engine_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 10);
    std::fs::write(dir.path().join("commitlog").join("junk"), b"x").unwrap();
    let err = CommitLogStore::open(dir.path(), opts()).unwrap_err();
    assert!(matches!(err, Error::Corrupted { .. }), "{err}");
    std::fs::remove_file(dir.path().join("commitlog").join("junk")).unwrap();
    std::fs::write(dir.path().join("meta"), b"not a catalog").unwrap();
    assert!(matches!(
        CommitLogStore::open(dir.path(), opts()),
        Err(Error::Corrupted { .. })
    ));
}
