//! A partition's first consume-queue file is created without a directory sync of its own (the
//! sync comes with the next checkpoint, which trusts the file's units): whatever a power cut
//! keeps of it, every acknowledged record is there after a reopen, and a checkpoint written
//! after the file was made finds it on disk.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use duolog::io::{CrashMode, SimFs};
use duolog::{EngineKind, FlushPolicy, LogStore, Message, TopicConfig};

const DIR: &str = "/store";
const PARTITIONS: u32 = 4;
const MODES: [CrashMode; 3] = [
    CrashMode::DropUnsynced,
    CrashMode::PersistPrefix,
    CrashMode::PersistSubset,
];

fn open(sim: &SimFs) -> Box<dyn LogStore> {
    let mut o = common::small_options(EngineKind::CommitLog);
    o.fs = Arc::new(sim.clone());
    // Every append acknowledged durable; no checkpoint unless the test makes one (close).
    o.flush = FlushPolicy::Sync;
    o.commitlog.checkpoint_interval = Duration::from_secs(3600);
    duolog::open(Path::new(DIR), o).unwrap()
}

fn ends(store: &dyn LogStore) -> Vec<u64> {
    (0..PARTITIONS)
        .map(|p| store.bounds("t", p).unwrap().end)
        .collect()
}

fn append_everywhere(store: &dyn LogStore) {
    for p in 0..PARTITIONS {
        store
            .append("t", p, &[Message::new(vec![b'a' + p as u8; 10])])
            .unwrap();
    }
}

#[test]
fn first_queue_files_made_without_a_directory_sync_lose_no_acknowledged_record_in_a_crash() {
    for mode in MODES {
        for seed in 0..4 {
            let sim = SimFs::new();
            let store = open(&sim);
            store
                .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
                .unwrap();
            append_everywhere(store.as_ref());
            store.abandon();
            drop(store);
            let sim = sim.crash(mode, seed);
            let store = open(&sim);
            assert_eq!(ends(store.as_ref()), vec![1; 4], "{mode:?} seed {seed}");
            let report = store.verify().unwrap();
            assert!(report.is_ok(), "{mode:?}: {:?}", report.problems);
            append_everywhere(store.as_ref());
            assert_eq!(ends(store.as_ref()), vec![2; 4], "{mode:?} seed {seed}");
            store.close().unwrap();
        }
    }
}

#[test]
fn a_checkpoint_makes_the_first_queue_files_durable_before_it_trusts_them() {
    for mode in MODES {
        for seed in 0..4 {
            let sim = SimFs::new();
            let store = open(&sim);
            store
                .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
                .unwrap();
            append_everywhere(store.as_ref());
            // Close writes the checkpoint; nothing after it is synced, and the power goes.
            store.close().unwrap();
            drop(store);
            let sim = sim.crash(mode, seed);
            for p in 0..PARTITIONS {
                let dir = Path::new(DIR).join("consumequeue/t").join(p.to_string());
                assert!(
                    sim.files().iter().any(|f| f.starts_with(&dir)),
                    "{mode:?} seed {seed}: the queue file of partition {p} was lost"
                );
            }
            let store = open(&sim);
            assert_eq!(ends(store.as_ref()), vec![1; 4], "{mode:?} seed {seed}");
            let report = store.verify().unwrap();
            assert!(report.is_ok(), "{mode:?}: {:?}", report.problems);
            store.close().unwrap();
        }
    }
}
