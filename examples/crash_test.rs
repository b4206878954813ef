//! Crash-testing a service built on duolog, on both engines: copy this file and replace the toy
//! service with yours.
//!
//! The service is a counter that keeps its state as messages: each `add(delta)` appends the
//! delta to the topic `counter` and is acknowledged once the append is durable
//! (`FlushPolicy::Sync`); on start it replays the topic to rebuild its total. Its promises:
//! 1. no acknowledged `add` is lost: the recovered total is at least the last acknowledged one;
//! 2. nothing is invented: the recovered history is a prefix of the adds attempted (at most the
//!    one `add` that was in flight at the crash beyond the acknowledged ones), offsets dense;
//! 3. it can carry on: a new `add` after recovery works and is durable.
//!
//! The disk is `duolog::io::SimFs`. Each case opens the service on an empty simulated disk, cuts
//! the power after some number of I/O operations (`fail_after`: from then on every operation
//! fails, as if the disk vanished), takes the disk as the power cut left it (`crash(mode, seed)`:
//! everything synced plus some of what was not, dropped, reordered or torn as the mode says),
//! restarts the service on it and checks the promises. First an exhaustive sweep (a power cut
//! after every I/O operation of one workload), then random workloads with proptest.
//!
//! Run: `cargo run --release --example crash_test [cases]` (default 64 random cases per engine).

use std::sync::Arc;

use duolog::io::{CrashMode, Fault, SimFs};
use duolog::{
    CommitLogOptions, EngineKind, FlushPolicy, IndexOptions, LogStore, Message, ReadLimits,
    SegmentedOptions, StoreOptions, TopicConfig,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const DIR: &str = "/srv/counter";
const TOPIC: &str = "counter";

/// Options for a store on the simulated disk. Every simulated file lives in memory (a mapped
/// one at its full length), so the files are small; small files also make rolls frequent,
/// which is where crash bugs hide.
fn options(engine: EngineKind, disk: &SimFs) -> StoreOptions {
    StoreOptions {
        engine: Some(engine),
        fs: Arc::new(disk.clone()),
        flush: FlushPolicy::Sync,
        // The smallest files each engine accepts: a 40-add workload rolls several times.
        commitlog: CommitLogOptions {
            file_size: 4 << 10,
            consume_queue_units: 16,
            ..CommitLogOptions::default()
        },
        segmented: SegmentedOptions {
            segment_bytes: 1 << 10,
            index_interval_bytes: 256,
            max_index_bytes: 1 << 10,
            ..SegmentedOptions::default()
        },
        index: IndexOptions {
            enabled: true,
            slots: 1021,
            max_entries: 4096,
        },
        ..StoreOptions::default()
    }
}

/// The toy service: a durable counter.
struct Counter {
    store: Box<dyn LogStore>,
    total: u64,
    /// Every delta in the topic, in offset order (what a restart replays).
    history: Vec<u64>,
}

impl Counter {
    /// Opens the store (creating the topic on first start) and replays the history.
    fn start(engine: EngineKind, disk: &SimFs) -> duolog::Result<Counter> {
        let store = duolog::open(DIR, options(engine, disk))?;
        if store.describe_topic(TOPIC).is_err() {
            store.create_topic(TOPIC, TopicConfig::with_partitions(1))?;
        }
        let mut history = Vec::new();
        let bounds = store.bounds(TOPIC, 0)?;
        let mut at = bounds.start;
        while at < bounds.end {
            for r in store.read(TOPIC, 0, at, ReadLimits::default())? {
                if r.offset() != at {
                    return Err(duolog::Error::InvalidArgument(format!(
                        "offset {} where {at} was expected",
                        r.offset()
                    )));
                }
                let delta = std::str::from_utf8(r.body())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| duolog::Error::InvalidArgument("not a delta".into()))?;
                history.push(delta);
                at += 1;
            }
        }
        let total = history.iter().sum();
        Ok(Counter {
            store,
            total,
            history,
        })
    }

    /// Adds `delta`; once this returns `Ok`, the new total is durable.
    fn add(&mut self, delta: u64) -> duolog::Result<u64> {
        self.store
            .append(TOPIC, 0, &[Message::new(delta.to_string())])?;
        self.total += delta;
        self.history.push(delta);
        Ok(self.total)
    }
}

/// One crash case: start on an empty disk, power cut after `cut` I/O operations while adding
/// `deltas`, damage `mode`/`seed`, restart, check the promises.
fn crash_case(
    engine: EngineKind,
    deltas: &[u64],
    cut: u64,
    mode: CrashMode,
    seed: u64,
) -> Result<(), TestCaseError> {
    let disk = SimFs::new();
    disk.fail_after(cut, Fault::Eio);
    // What the service acknowledged, and what it attempted (acknowledged plus the one in flight).
    let mut acknowledged: Vec<u64> = Vec::new();
    let mut attempted: Vec<u64> = Vec::new();
    if let Ok(mut counter) = Counter::start(engine, &disk) {
        for &d in deltas {
            attempted.push(d);
            if counter.add(d).is_err() {
                break; // the disk is gone: the service stops
            }
            acknowledged.push(d);
        }
        // The process dies: no flush, no clean shutdown.
        counter.store.abandon();
    }
    let disk = disk.crash(mode, seed);

    let ctx = format!("{engine}, cut after {cut} I/O operations, {mode:?} seed {seed}");
    let mut counter = Counter::start(engine, &disk)
        .map_err(|e| TestCaseError::fail(format!("{ctx}: restart failed: {e}")))?;
    // 1. Nothing acknowledged is lost.
    prop_assert!(
        counter.history.len() >= acknowledged.len(),
        "{}: {} adds acknowledged, {} recovered",
        ctx,
        acknowledged.len(),
        counter.history.len()
    );
    // 2. Nothing invented: a prefix of what was attempted.
    prop_assert!(
        attempted.starts_with(&counter.history),
        "{}: recovered {:?}, attempted {:?}",
        ctx,
        counter.history,
        attempted
    );
    prop_assert!(counter.total >= acknowledged.iter().sum::<u64>(), "{}", ctx);
    // 3. It carries on, durably.
    let before = counter.total;
    let after = counter
        .add(1)
        .map_err(|e| TestCaseError::fail(format!("{ctx}: add after restart: {e}")))?;
    prop_assert_eq!(after, before + 1);
    counter.store.abandon();
    let again = Counter::start(engine, &disk.crash(CrashMode::DropUnsynced, 0))
        .map_err(|e| TestCaseError::fail(format!("{ctx}: second restart: {e}")))?;
    prop_assert_eq!(again.total, after, "{}: add after restart lost", ctx);
    Ok(())
}

/// I/O operations of a whole run of `deltas`, from the empty disk on.
fn io_operations(engine: EngineKind, deltas: &[u64]) -> u64 {
    let disk = SimFs::new();
    let mut counter = Counter::start(engine, &disk).expect("start");
    for &d in deltas {
        counter.add(d).expect("add");
    }
    counter.store.abandon();
    disk.op_count()
}

fn main() {
    let cases: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        // A power cut after every I/O operation of one workload, every crash mode in turn.
        let deltas: Vec<u64> = (1..=40).collect();
        let total = io_operations(engine, &deltas);
        for cut in 0..=total {
            let mode = CrashMode::ALL[cut as usize % CrashMode::ALL.len()];
            if let Err(e) = crash_case(engine, &deltas, cut, mode, cut) {
                panic!("{e}");
            }
        }
        println!(
            "{engine}: power cut after each of {total} I/O operations: every acknowledged add \
             kept, history a prefix of the adds attempted, the counter carries on"
        );

        // Random workloads, random crash points, random damage.
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = (
            proptest::collection::vec(1u64..1_000_000, 1..60),
            0u64..400,
            0..CrashMode::ALL.len(),
            any::<u64>(),
        );
        let result = runner.run(&strategy, |(deltas, cut, mode, seed)| {
            crash_case(engine, &deltas, cut, CrashMode::ALL[mode], seed)
        });
        if let Err(e) = result {
            panic!("{engine}: {e}");
        }
        println!("{engine}: {cases} random workloads crashed at random points: 0 violations");
    }
}
