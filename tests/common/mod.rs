//! Helpers shared by the integration tests: one list of engines, small files so rolling happens
//! constantly, and a way to run a behaviour on every engine, and a full read of a partition.
#![allow(dead_code)]

pub mod consumer;
pub mod half;
pub mod memory;
pub mod priority;
pub mod wrap;

use std::path::Path;
use std::time::{Duration, Instant};

use duolog::{
    CommitLogOptions, EngineKind, FlushPolicy, IndexOptions, LogStore, ReadLimits,
    SegmentedOptions, StoreOptions,
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

/// Every record of a partition, read in fetches of 100; a fetch below the end that makes no
/// progress fails the test.
pub fn read_all(store: &dyn LogStore, topic: &str, partition: u32) -> Vec<duolog::Record> {
    let b = store.bounds(topic, partition).unwrap();
    let mut out = Vec::new();
    let mut at = b.start;
    while at < b.end {
        let fetch = store
            .fetch(topic, partition, at, ReadLimits::messages(100))
            .unwrap();
        assert!(
            fetch.next_offset > at,
            "fetch at {at} below end {} made no progress",
            b.end
        );
        at = fetch.next_offset;
        out.extend(fetch.records);
    }
    out
}

/// The disks a behaviour runs on (STYLE.md: every behaviour on both backends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The real file system, in a fresh temporary directory.
    Real,
    /// A fresh `SimFs`, the store in a nested directory of it.
    Sim,
}

/// Runs `f` once per engine and backend, each time in a fresh directory, with
/// [`small_options`] for the engine pointed at that backend's file system; names the pair on
/// failure.
pub fn for_each_backend(f: impl Fn(&Path, StoreOptions)) {
    for engine in engines() {
        for backend in [Backend::Real, Backend::Sim] {
            eprintln!("engine: {engine}, backend: {backend:?}");
            match backend {
                Backend::Real => {
                    let dir = tempfile::tempdir().expect("tempdir");
                    f(dir.path(), small_options(engine));
                }
                Backend::Sim => {
                    let opts = StoreOptions {
                        fs: std::sync::Arc::new(duolog::io::SimFs::new()),
                        ..small_options(engine)
                    };
                    f(Path::new("/sim/store"), opts);
                }
            }
        }
    }
}

/// Polls `done` every 5 ms until it holds; fails with `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
