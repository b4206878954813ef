//! CommitLog engine: a failed sync in any code path (a log roll's or a consume-queue file's
//! directory sync, the checkpoint, the start-offset file) poisons the store until it is reopened,
//! and a failed roll never leaves a half-created file that wedges later appends.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use duolog::io::{Fault, SimFs};
use duolog::{
    EngineKind, Error, FlushPolicy, LogStore, Message, ReadLimits, StoreOptions, TopicConfig,
};

const DIR: &str = "/store";

/// Small files, and no background flush or checkpoint, so every sync a test sees is the one
/// its own call made.
fn options(sim: &SimFs) -> StoreOptions {
    let mut o = common::small_options(EngineKind::CommitLog);
    o.fs = Arc::new(sim.clone());
    o.flush = FlushPolicy::Async {
        interval: Duration::from_secs(3600),
    };
    o.commitlog.checkpoint_interval = Duration::from_secs(3600);
    o.commitlog.retention_check_interval = Duration::from_secs(3600);
    o.commitlog.retention = None;
    o
}

fn open(sim: &SimFs) -> Box<dyn LogStore> {
    let store = duolog::open(Path::new(DIR), options(sim)).unwrap();
    if !store.list_topics(true).contains(&"t".to_owned()) {
        store.create_topic("t", TopicConfig::default()).unwrap();
    }
    store
}

fn assert_poisoned<T: std::fmt::Debug>(r: duolog::Result<T>) {
    match r {
        Err(Error::Poisoned { .. }) => {}
        other => panic!("expected Poisoned, got {other:?}"),
    }
}

#[test]
fn failed_directory_sync_at_a_log_roll_poisons_the_store() {
    let sim = SimFs::new();
    let store = open(&sim);
    store.append("t", 0, &[Message::new("first")]).unwrap();
    // 1000-byte records fill a 64 KiB log file before 64 units fill a queue file. The next log
    // file is made either by the allocation thread (ahead, once the file is half full: its
    // failed directory sync poisons the store, and the next append fails) or by the append that
    // needs it (which fails itself); either way no append lands in the new file, whose
    // directory entry may not survive a power cut. (Watching the file count raced the
    // allocation thread: its file shows before its sync fails.)
    sim.fail_syncs(true);
    let mut acked = store.bounds("t", 0).unwrap().end;
    let r = loop {
        let r = store.append("t", 0, &[Message::new(vec![b'x'; 1000])]);
        if r.is_err() {
            break r;
        }
        acked += 1;
        assert!(
            (acked as usize) * 1000 < 64 * 1024,
            "append {acked} succeeded past the first log file's end"
        );
    };
    assert!(r.is_err(), "the roll's directory sync failed: {r:?}");
    sim.fail_syncs(false);
    assert_poisoned(store.append("t", 0, &[Message::new("after")]));
    assert_poisoned(store.sync());
    // What was acknowledged still reads.
    assert_eq!(common::read_all(store.as_ref(), "t", 0).len() as u64, acked);
    store.abandon();
    drop(store);
    let store = open(&sim);
    store
        .append("t", 0, &[Message::new("after reopen")])
        .unwrap();
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn failed_directory_sync_at_a_consume_queue_file_poisons_the_store() {
    let sim = SimFs::new();
    let store = open(&sim);
    store.append("t", 0, &[Message::new("first")]).unwrap();
    // Tiny records: 64 units fill a queue file long before the log file fills. The next queue
    // file is made either by the allocation thread ahead of need (at half the file) or by the
    // append whose unit is the first of the new file (offset 64); whichever makes it, its
    // failed directory sync poisons the store, so that append fails at the latest. (Watching
    // the file count instead raced the allocation thread: the file shows before it is synced.)
    sim.fail_syncs(true);
    let units_per_file = 64;
    let failed_at = loop {
        match store.append("t", 0, &[Message::new("x")]) {
            Ok(r) => assert!(
                r.base_offset < units_per_file,
                "offset {} needs the second queue file, whose directory sync failed",
                r.base_offset
            ),
            Err(e) => break (store.bounds("t", 0).unwrap().end, e),
        }
    };
    assert!(failed_at.0 <= units_per_file, "{failed_at:?}");
    sim.fail_syncs(false);
    assert_poisoned(store.append("t", 0, &[Message::new("after")]));
    store.abandon();
    drop(store);
    let store = open(&sim);
    store
        .append("t", 0, &[Message::new("after reopen")])
        .unwrap();
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn a_roll_whose_cleanup_also_fails_poisons_instead_of_wedging() {
    let sim = SimFs::new();
    let store = open(&sim);
    store.append("t", 0, &[Message::new("first")]).unwrap();
    // A new file is created (the first I/O from here on: appends themselves do none), then
    // its directory sync and the removal of the new file both fail: without poisoning, every
    // later append needing that file would fail with "…/commitlog/00000000000000065536 exists".
    // The file may be made by the append that rolls or, ahead of it, by the allocation thread.
    sim.fail_after(1, Fault::Eio);
    let mut r = Ok(());
    for _ in 0..100 {
        if let Err(e) = store.append("t", 0, &[Message::new(vec![b'x'; 1000])]) {
            r = Err(e);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(r.is_err(), "{r:?}");
    sim.clear_faults();
    for _ in 0..3 {
        assert_poisoned(store.append("t", 0, &[Message::new(vec![b'y'; 1000])]));
    }
    store.abandon();
    drop(store);
    let store = open(&sim);
    for _ in 0..100 {
        store
            .append("t", 0, &[Message::new(vec![b'z'; 1000])])
            .unwrap();
    }
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn failed_background_checkpoint_poisons_the_store() {
    let sim = SimFs::new();
    let mut opts = options(&sim);
    opts.commitlog.checkpoint_interval = Duration::from_millis(20);
    let store = duolog::open(Path::new(DIR), opts).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    store
        .append("t", 0, &[Message::new("a").with_key("k")])
        .unwrap();
    store.sync().unwrap();
    // Let a checkpoint flush the queues, so the next one fails only in its own writes (the key
    // index's flush, the checkpoint file).
    std::thread::sleep(Duration::from_millis(200));
    sim.fail_syncs(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    // Nothing is appended meanwhile (an append would leave a queue unit whose flush fails
    // first), and `sync` with nothing new to flush syncs nothing: it only reports the state.
    let r = loop {
        let r = store.sync();
        if r.is_err() || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    sim.fail_syncs(false);
    assert_poisoned(r);
    assert_poisoned(store.append("t", 0, &[Message::new("b")]));
}

#[test]
fn failed_sync_during_reindex_poisons_the_store() {
    let sim = SimFs::new();
    let store = open(&sim);
    store
        .append("t", 0, &[Message::new("a").with_key("k")])
        .unwrap();
    store.sync().unwrap();
    sim.fail_syncs(true);
    // reindex rebuilds the key index and writes the checkpoint.
    assert!(store.reindex().is_err());
    sim.fail_syncs(false);
    assert_poisoned(store.append("t", 0, &[Message::new("b")]));
}

#[test]
fn failed_start_offset_write_poisons_the_store() {
    let sim = SimFs::new();
    let store = open(&sim);
    for i in 0..10 {
        store
            .append("t", 0, &[Message::new(format!("m{i}"))])
            .unwrap();
    }
    store.sync().unwrap();
    sim.fail_syncs(true);
    assert!(store.delete_before("t", 0, 5).is_err());
    sim.fail_syncs(false);
    assert_poisoned(store.append("t", 0, &[Message::new("b")]));
    // Reads go on.
    assert!(
        !store
            .read("t", 0, 5, ReadLimits::default())
            .unwrap()
            .is_empty()
    );
}
