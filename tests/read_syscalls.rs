//! A sequential fetch reads whole byte ranges: its file operations grow with the bytes it
//! returns (a read per chunk), not with the batches or records in them (issue 16: no syscall
//! per batch). Counted on the simulated disk, whose every read is one counted operation.

use std::sync::Arc;

use duolog::io::SimFs;
use duolog::{EngineKind, Message, ReadLimits, StoreOptions, TopicConfig};

const MESSAGES: u64 = 4_000;

fn reads_per_fetch(engine: EngineKind) -> (u64, usize) {
    let fs = Arc::new(SimFs::new());
    let options = StoreOptions {
        engine: Some(engine),
        fs: fs.clone(),
        ..StoreOptions::default()
    };
    let store = duolog::open("/sim/store", options).expect("open");
    // Small segments (the CommitLog engine ignores this): the segmented data is then mostly in
    // sealed segments, read through positional reads the simulated disk counts. The active
    // segment's log is a mapping, whose reads are copies that no operation counts, so with all
    // the data in it the count could not show a read per batch.
    let config = TopicConfig {
        segment_bytes: Some(128 << 10),
        ..TopicConfig::with_partitions(1)
    };
    store.create_topic("t", config).expect("topic");
    // One message per append: one batch (segmented) or one entry (CommitLog) per record.
    let msg = [Message::new(vec![b'r'; 100])];
    for _ in 0..MESSAGES {
        store.append("t", 0, &msg).expect("append");
    }
    store.sync().expect("sync");
    // A first read opens the files the read path caches.
    store
        .read("t", 0, 0, ReadLimits::messages(1))
        .expect("warm read");
    let before = fs.op_count();
    let records = store
        .read(
            "t",
            0,
            0,
            ReadLimits {
                max_messages: MESSAGES as usize,
                max_bytes: 4 << 20,
                ..ReadLimits::default()
            },
        )
        .expect("read");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset(), i as u64);
        assert_eq!(r.body(), &[b'r'; 100][..]);
    }
    (fs.op_count() - before, records.len())
}

#[test]
fn a_segmented_fetch_of_thousands_of_batches_takes_a_few_reads() {
    let (ops, n) = reads_per_fetch(EngineKind::Segmented);
    assert_eq!(n, MESSAGES as usize);
    // ~700 KiB of batches, most in sealed 128 KiB segments, in 64 KiB chunks: a few reads and
    // opens per segment, never one per batch. At least one read was counted, so the count
    // covers the positional read path.
    assert!(
        (1..=32).contains(&ops),
        "{ops} file operations for one fetch of {n} batches"
    );
}

#[test]
fn a_commitlog_fetch_of_thousands_of_records_takes_a_few_reads() {
    let (ops, n) = reads_per_fetch(EngineKind::CommitLog);
    assert_eq!(n, MESSAGES as usize);
    assert!(
        ops <= 32,
        "{ops} file operations for one fetch of {n} records"
    );
}
