//! Review E: failing tests for defects found in the idempotent producer engine support.

mod common;

use std::path::Path;
use std::time::Duration;

use duolog::{
    AppendResult, CommitLogOptions, EngineKind, FlushPolicy, LogStore, Message, ProducerId,
    StoreOptions, TopicConfig,
};

fn batch(tag: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::new(format!("{tag}-{i}"))).collect()
}

fn ar(base: u64, last: u64) -> AppendResult {
    AppendResult {
        base_offset: base,
        last_offset: last,
    }
}

fn ino(p: &Path) -> (u64, std::time::SystemTime) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.modified().unwrap())
}

/// an idle CommitLog store that once had an idempotent producer rewrites (temp file,
/// fsync, rename, directory fsync) its producer-snapshot at every checkpoint, forever.
#[test]
fn commitlog_idle_store_does_not_rewrite_its_producer_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::small_options(EngineKind::CommitLog);
    let store = common::open(dir.path(), &opts);
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 0,
    };
    store
        .append_idempotent("t", 0, p, 0, &batch("a", 2))
        .unwrap();
    store.sync().unwrap();
    // Let a few checkpoints write the state once.
    std::thread::sleep(Duration::from_millis(600));
    let path = dir.path().join("producer-snapshot");
    let before = ino(&path);
    // Idle: nothing appended, nothing changed.
    std::thread::sleep(Duration::from_millis(1000));
    let after = ino(&path);
    assert_eq!(before, after, "an idle store rewrote its producer snapshot");
}

/// plain stores behave exactly as before: a plain message with a user property named
/// `__SEQ` (or `__PID`, `__EPOCH`, `__LAST`) was accepted and read back before the change; the
/// segmented engine does not even use these names (its producer fields are in the batch
/// header), yet it now refuses them, and data written before the change hides them on read.
#[test]
fn plain_messages_keep_user_properties_named_like_the_commitlog_producer_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open(dir.path(), &common::small_options(EngineKind::Segmented));
    store.create_topic("t", TopicConfig::default()).unwrap();
    let m = Message::new("x").with_property("__SEQ", "7");
    store
        .append("t", 0, &[m])
        .expect("a plain property named __SEQ was accepted before");
    let r = common::read_all(store.as_ref(), "t", 0);
    assert_eq!(r[0].properties().iter().count(), 1);
}

/// a CommitLog store written before the change (user properties named `__PID`, `__EPOCH`,
/// `__SEQ` were accepted then) loses acknowledged, synced plain records at the first unclean
/// open after the upgrade: recovery takes them for an idempotent batch without its `__LAST`
/// record and cuts the log back before them. Simulated by renaming same-length property names
/// in the record bytes and re-sealing the record's CRC.
#[test]
fn commitlog_recovery_keeps_synced_plain_records_written_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        flush: FlushPolicy::Sync,
        commitlog: CommitLogOptions {
            checkpoint_interval: Duration::from_secs(3600),
            ..common::small_options(EngineKind::CommitLog).commitlog
        },
        ..common::small_options(EngineKind::CommitLog)
    };
    let store = duolog::CommitLogStore::open(dir.path(), opts.clone()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    store.append("t", 0, &batch("before", 2)).unwrap();
    let m = Message::new("old-record")
        .with_property("__PIX", "1")
        .with_property("__EPOCX", "0")
        .with_property("__SEX", "4");
    let r = store.append("t", 0, &[m.clone(), m]).unwrap();
    assert_eq!(r, ar(2, 3));
    store.sync().unwrap();
    let units: Vec<_> = (2..4)
        .map(|o| store.consume_queue_unit("t", 0, o).unwrap().unwrap())
        .collect();
    let files = store.commitlog_files();
    store.abandon();
    drop(store);
    let size = opts.commitlog.file_size;
    for u in &units {
        let file = &files[(u.position / size) as usize];
        let mut bytes = std::fs::read(file).unwrap();
        let at = (u.position % size) as usize;
        let rec = &mut bytes[at..at + u.size as usize];
        for (from, to) in [
            (&b"__PIX"[..], &b"__PID"[..]),
            (b"__EPOCX", b"__EPOCH"),
            (b"__SEX", b"__SEQ"),
        ] {
            let i = rec.windows(from.len()).position(|w| w == from).unwrap();
            rec[i..i + to.len()].copy_from_slice(to);
        }
        duolog::commitlog::record::fill_record_crc(rec);
        std::fs::write(file, bytes).unwrap();
    }
    let store = duolog::CommitLogStore::open(dir.path(), opts).unwrap();
    assert_eq!(
        store.bounds("t", 0).unwrap().end,
        4,
        "acknowledged, synced plain records were cut at recovery"
    );
}

/// The other side of (c): the CommitLog engine, which does use the names, still refuses them
/// in a message (an idempotent record would carry them twice), and keeps idempotent batches
/// working; the segmented engine shows every one of them as a user property.
#[test]
fn the_producer_property_names_are_reserved_on_the_commitlog_engine_only() {
    let names = ["__PID", "__EPOCH", "__SEQ", "__LAST"];
    for engine in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let store = common::open(dir.path(), &common::small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let mut m = Message::new("x");
        for n in names {
            m = m.with_property(n, "1");
        }
        let r = store.append("t", 0, &[m]);
        if engine == EngineKind::CommitLog {
            assert!(matches!(r, Err(duolog::Error::InvalidArgument(_))), "{r:?}");
        } else {
            r.unwrap();
            let got = common::read_all(store.as_ref(), "t", 0);
            let seen: Vec<String> = got[0]
                .properties()
                .iter()
                .map(|(k, _)| k.to_owned())
                .collect();
            assert_eq!(seen, names);
        }
        let p = ProducerId {
            id: store.allocate_producer_id().unwrap(),
            epoch: 0,
        };
        let first = store
            .append_idempotent("t", 0, p, 0, &batch("i", 2))
            .unwrap();
        assert_eq!(
            store
                .append_idempotent("t", 0, p, 0, &batch("i", 2))
                .unwrap(),
            first
        );
    }
}
