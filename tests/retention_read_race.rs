//! Retention and `delete_before` racing a read: a reader whose offset was deleted under it gets
//! `OffsetOutOfRange` (a normal race a consumer recovers from by seeking), never `Corrupted`
//! (which consumers treat as fatal); real damage still reads as `Corrupted`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use duolog::io::SimFs;
use duolog::{EngineKind, Error, FlushPolicy, LogStore, Message, ReadLimits, TopicConfig};

fn options(sim: &SimFs) -> duolog::StoreOptions {
    let mut o = common::small_options(EngineKind::CommitLog);
    o.fs = Arc::new(sim.clone());
    o.index.enabled = false;
    o.flush = FlushPolicy::Async {
        interval: Duration::from_secs(3600),
    };
    o.commitlog.retention = None;
    o.commitlog.consume_queue_units = 16;
    o.commitlog.file_size = 4096;
    o
}

#[test]
fn delete_before_racing_a_reader_is_out_of_range_not_corrupted() {
    let sim = SimFs::new();
    let store = Arc::new(duolog::open(Path::new("/s"), options(&sim)).unwrap());
    store.create_topic("t", TopicConfig::default()).unwrap();
    let total = 40_000u64;
    let batch: Vec<Message> = (0..100).map(|_| Message::new("x")).collect();
    for _ in 0..total / 100 {
        store.append_oneway("t", 0, &batch).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = Arc::clone(&store);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut ok, mut out_of_range) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let start = store.bounds("t", 0).unwrap().start;
                match store.read("t", 0, start, ReadLimits::messages(64)) {
                    Ok(_) => ok += 1,
                    Err(Error::OffsetOutOfRange { .. }) => out_of_range += 1,
                    Err(e) => panic!("read at {start} while deleting: {e}"),
                }
            }
            (ok, out_of_range)
        })
    };
    // Delete one queue file's worth at a time, so the reader's offset keeps disappearing.
    let mut at = 0;
    while at < total - 100 {
        at += 16;
        store.delete_before("t", 0, at).unwrap();
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, oor) = reader.join().unwrap();
    eprintln!("reads: {ok} ok, {oor} out of range");
}

#[test]
fn retention_racing_a_reader_is_out_of_range_not_corrupted() {
    let sim = SimFs::new();
    let mut opts = options(&sim);
    opts.commitlog.retention_bytes = Some(3 * 4096);
    let store = Arc::new(duolog::open(Path::new("/s"), opts).unwrap());
    store.create_topic("t", TopicConfig::default()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let store = Arc::clone(&store);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut out_of_range = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let start = store.bounds("t", 0).unwrap().start;
                match store.read("t", 0, start, ReadLimits::messages(64)) {
                    Ok(_) => {}
                    Err(Error::OffsetOutOfRange { .. }) => out_of_range += 1,
                    Err(e) => panic!("read at {start} during retention: {e}"),
                }
            }
            out_of_range
        })
    };
    let batch: Vec<Message> = (0..20).map(|_| Message::new("x")).collect();
    for _ in 0..2000 {
        store.append_oneway("t", 0, &batch).unwrap();
        store.enforce_retention().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let oor = reader.join().unwrap();
    eprintln!("{oor} reads out of range");
    assert!(store.bounds("t", 0).unwrap().start > 0);
}

#[test]
fn damage_above_the_start_is_still_corrupted() {
    let sim = SimFs::new();
    let store = duolog::CommitLogStore::open("/s", options(&sim)).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..40 {
        store
            .append("t", 0, &[Message::new(format!("m{i}"))])
            .unwrap();
    }
    store.delete_before("t", 0, 10).unwrap();
    // A consume-queue unit whose size turns negative reads as missing.
    let q = Path::new("/s/consumequeue/t/0").join(duolog::io::offset_name(32 * 20));
    sim.flip_bit(&q, 20 + 8, 7).unwrap(); // unit 33: sign bit of its size
    assert!(matches!(
        store.read("t", 0, 33, ReadLimits::messages(1)),
        Err(Error::Corrupted { .. })
    ));
    // A flipped bit in a record's body fails its checksum.
    let unit = store.consume_queue_unit("t", 0, 20).unwrap().unwrap();
    let file = store
        .commitlog_files()
        .into_iter()
        .rev()
        .find(|f| {
            duolog::io::parse_offset_name(f.file_name().unwrap().to_str().unwrap()).unwrap()
                <= unit.position
        })
        .unwrap();
    let base = duolog::io::parse_offset_name(file.file_name().unwrap().to_str().unwrap()).unwrap();
    let last_byte = (unit.position - base) as usize + unit.size as usize - 1;
    sim.flip_bit(&file, last_byte - 20, 0).unwrap();
    assert!(matches!(
        store.read("t", 0, 20, ReadLimits::messages(1)),
        Err(Error::Corrupted { .. })
    ));
    // Below the start: out of range, as before.
    assert!(matches!(
        store.read("t", 0, 5, ReadLimits::messages(1)),
        Err(Error::OffsetOutOfRange { .. })
    ));
}
