//! Helpers shared by the integration tests: one list of engines, small files so rolling happens
//! constantly, and a way to run a behaviour on every engine.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use duolog::{
    CommitLogOptions, EngineKind, FlushPolicy, IndexOptions, LogStore, SegmentedOptions,
    StoreOptions,
};

/// Every engine the crate has; each conformance test runs on all of them.
pub fn engines() -> Vec<EngineKind> {
    vec![EngineKind::CommitLog, EngineKind::Segmented]
}

/// Options with tiny files so tests roll files all the time.
pub fn small_options(engine: EngineKind) -> StoreOptions {
    StoreOptions {
        engine: Some(engine),
        flush: FlushPolicy::Async {
            interval: Duration::from_millis(50),
        },
        commitlog: CommitLogOptions {
            file_size: 64 * 1024,
            consume_queue_units: 64,
            checkpoint_interval: Duration::from_millis(100),
            ..CommitLogOptions::default()
        },
        index: IndexOptions {
            enabled: true,
            slots: 1021,
            max_entries: 4096,
        },
        segmented: SegmentedOptions {
            segment_bytes: 64 * 1024,
            index_interval_bytes: 1024,
            max_index_bytes: 4096,
            checkpoint_interval: Duration::from_millis(100),
            ..SegmentedOptions::default()
        },
        ..StoreOptions::default()
    }
}

pub fn open(dir: &Path, opts: &StoreOptions) -> Box<dyn LogStore> {
    duolog::open(dir, opts.clone()).expect("open store")
}

/// Runs `f` once per engine, each in a fresh directory, naming the engine on failure.
pub fn for_each_engine(f: impl Fn(EngineKind, &Path)) {
    for engine in engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        eprintln!("engine: {engine}");
        f(engine, dir.path());
    }
}
