//! Half messages across power cuts on the simulated disk: a failure at every I/O step of a
//! pass of `end` calls (commit, rollback) and check-back scans (a commit, an unknown, a
//! discard), then a crash in every mode, a reopen, the same `end` calls retried and scans far
//! in the future. Every committed message is in its real topic exactly once, the rolled-back
//! one never, the discarded one exactly once in the discard topic.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{read_all, small_options};
use duolog::delay::ManualClock;
use duolog::io::{CrashMode, Fault, SimFs};
use duolog::txn::half::CHECK_MAX_TIME_TOPIC;
use duolog::txn::{HalfConfig, HalfId, HalfMessages, LocalTransactionState};
use duolog::{EngineKind, LogStore, Message, Record, TopicConfig};

const T0: i64 = 1_700_000_000_000;

fn dir(sync: bool) -> &'static str {
    if sync { "/txh-sync" } else { "/txh-async" }
}

fn opts(engine: EngineKind, sim: &SimFs, sync: bool) -> duolog::StoreOptions {
    duolog::StoreOptions {
        fs: Arc::new(sim.clone()),
        flush: if sync {
            duolog::FlushPolicy::Sync
        } else {
            duolog::FlushPolicy::Async {
                interval: Duration::from_secs(3600),
            }
        },
        ..small_options(engine)
    }
}

/// Commits `c…`, rolls back `r…`, anything else unknown.
fn checker(half: &Record) -> LocalTransactionState {
    match half.body().first() {
        Some(b'c') => LocalTransactionState::Commit,
        Some(b'r') => LocalTransactionState::Rollback,
        _ => LocalTransactionState::Unknown,
    }
}

fn layer(store: &Arc<dyn LogStore>, clock: &Arc<ManualClock>) -> duolog::Result<HalfMessages> {
    let config = HalfConfig {
        clock: clock.clone(),
        background: false,
        max_checks: 1,
        ..HalfConfig::default()
    };
    HalfMessages::open(Arc::clone(store), config, Arc::new(checker))
}

struct Setup {
    store: Arc<dyn LogStore>,
    clock: Arc<ManualClock>,
    txn: HalfMessages,
    ids: Vec<HalfId>,
}

/// Five durable half messages: `c0` and `c3` for the user to commit, `r1` to roll back, `c2`
/// left to the check-back (which commits it), `u4` never decided (discarded).
fn setup(engine: EngineKind, sim: &SimFs, sync: bool) -> Setup {
    let store: Arc<dyn LogStore> =
        Arc::from(duolog::open(dir(sync), opts(engine, sim, sync)).unwrap());
    store
        .create_topic("orders", TopicConfig::with_partitions(2))
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let txn = layer(&store, &clock).unwrap();
    let ids = ["c0", "r1", "c2", "c3", "u4"]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            txn.send_half("orders", (i % 2) as u32, Message::new(*b).with_key(*b))
                .unwrap()
        })
        .collect();
    store.sync().unwrap();
    Setup {
        store,
        clock,
        txn,
        ids,
    }
}

/// The user's decisions, in the order the pass makes them.
fn decisions(ids: &[HalfId]) -> [(HalfId, LocalTransactionState); 3] {
    [
        (ids[0], LocalTransactionState::Commit),
        (ids[1], LocalTransactionState::Rollback),
        (ids[3], LocalTransactionState::Commit),
    ]
}

fn pass(s: &Setup) -> duolog::Result<()> {
    for (id, d) in decisions(&s.ids) {
        s.txn.end(id, d)?;
    }
    s.clock.advance(Duration::from_secs(7));
    s.txn.check_now()?;
    s.clock.advance(Duration::from_secs(30));
    s.txn.check_now()?;
    Ok(())
}

#[test]
fn a_power_cut_at_every_step_of_end_and_check_back_commits_exactly_once() {
    sweep(true);
}

/// Under a background flush: the layer's own syncs are all that order its writes.
#[test]
fn a_power_cut_at_every_step_under_a_background_flush_commits_exactly_once() {
    sweep(false);
}

fn sweep(sync: bool) {
    for engine in common::engines() {
        let steps = {
            let sim = SimFs::new();
            let s = setup(engine, &sim, sync);
            let before = sim.op_count();
            pass(&s).unwrap();
            sim.op_count() - before
        };
        assert!(steps > 10, "{engine}: a pass does I/O ({steps})");
        let mut outcomes = (0, 0);
        for k in 0..=steps + 4 {
            for (seed, mode) in CrashMode::ALL.iter().enumerate() {
                let sim = SimFs::new();
                let s = setup(engine, &sim, sync);
                sim.fail_after(k, Fault::Eio);
                if pass(&s).is_ok() {
                    outcomes.1 += 1;
                } else {
                    outcomes.0 += 1;
                }
                s.store.abandon();
                let Setup {
                    store, txn, ids, ..
                } = s;
                drop(txn);
                drop(store);
                let crashed = sim.crash(*mode, seed as u64 * 31 + k);
                let ctx = format!("{engine}: power cut at step {k} of {steps}, {mode:?}");
                let store: Arc<dyn LogStore> = Arc::from(
                    duolog::open(dir(sync), opts(engine, &crashed, sync))
                        .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}")),
                );
                let clock = Arc::new(ManualClock::new(T0 + 3_600_000));
                let txn =
                    layer(&store, &clock).unwrap_or_else(|e| panic!("{ctx}: open the layer: {e}"));
                for (id, d) in decisions(&ids) {
                    txn.end(id, d)
                        .unwrap_or_else(|e| panic!("{ctx}: end {id} again: {e}"));
                }
                for _ in 0..3 {
                    txn.check_now()
                        .unwrap_or_else(|e| panic!("{ctx}: check after the crash: {e}"));
                    clock.advance(Duration::from_secs(60));
                }
                let mut seen: HashMap<String, usize> = HashMap::new();
                for p in 0..2 {
                    for r in read_all(&*store, "orders", p) {
                        let body = String::from_utf8(r.body().to_vec()).unwrap();
                        *seen.entry(body).or_default() += 1;
                    }
                }
                let want: HashMap<String, usize> = ["c0", "c2", "c3"]
                    .iter()
                    .map(|b| (b.to_string(), 1))
                    .collect();
                assert_eq!(seen, want, "{ctx}");
                let parked: Vec<Vec<u8>> = read_all(&*store, CHECK_MAX_TIME_TOPIC, 0)
                    .iter()
                    .map(|r| r.body().to_vec())
                    .collect();
                assert_eq!(parked, [b"u4".to_vec()], "{ctx}");
                assert!(txn.undecided(10).unwrap().is_empty(), "{ctx}");
                txn.close().unwrap();
                store.close().unwrap();
            }
        }
        eprintln!(
            "{engine}: {steps} steps, {} failed passes, {} finished",
            outcomes.0, outcomes.1
        );
        assert!(outcomes.0 > 0 && outcomes.1 > 0);
    }
}

/// A power cut that loses the scan's last committed position makes the next scan read again
/// half messages whose check was already copied, their copies more than a window later (the
/// copies of a whole window of other messages lie between): through the key index the scan
/// sees the later copy and passes the earlier record over, so each message is checked at most
/// once more than `max_checks`, and parked once.
#[test]
fn a_lost_scan_position_over_more_than_a_window_costs_at_most_one_extra_check_each() {
    const N: usize = 1100;
    let max_checks = 2;
    for engine in common::engines() {
        let sim = SimFs::new();
        let calls: Arc<parking_lot::Mutex<HashMap<String, u32>>> = Arc::default();
        let checker = {
            let calls = Arc::clone(&calls);
            Arc::new(move |r: &Record| {
                let body = String::from_utf8(r.body().to_vec()).unwrap();
                *calls.lock().entry(body).or_default() += 1;
                LocalTransactionState::Unknown
            })
        };
        let config = |clock: &Arc<ManualClock>| HalfConfig {
            clock: clock.clone(),
            background: false,
            max_checks,
            ..HalfConfig::default()
        };
        let store: Arc<dyn LogStore> =
            Arc::from(duolog::open("/txh-fork", opts(engine, &sim, false)).unwrap());
        store
            .create_topic("orders", TopicConfig::with_partitions(1))
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let txn = HalfMessages::open(Arc::clone(&store), config(&clock), checker.clone()).unwrap();
        for i in 0..N {
            txn.send_half("orders", 0, Message::new(format!("u{i}")))
                .unwrap();
        }
        store.sync().unwrap();
        clock.advance(Duration::from_secs(7));
        assert_eq!(txn.check_now().unwrap().unknown, N as u64, "{engine}");
        // Power cut: the copies were synced, the last committed position was not.
        store.abandon();
        drop(txn);
        drop(store);
        let crashed = sim.crash(CrashMode::DropUnsynced, 3);
        let store: Arc<dyn LogStore> =
            Arc::from(duolog::open("/txh-fork", opts(engine, &crashed, false)).unwrap());
        let clock = Arc::new(ManualClock::new(T0 + 60_000));
        let txn = HalfMessages::open(Arc::clone(&store), config(&clock), checker.clone()).unwrap();
        for _ in 0..4 {
            txn.check_now().unwrap();
            clock.advance(Duration::from_secs(31));
        }
        let parked = read_all(&*store, CHECK_MAX_TIME_TOPIC, 0);
        assert_eq!(parked.len(), N, "{engine}: each message parked once");
        let calls = calls.lock();
        assert_eq!(calls.len(), N, "{engine}");
        let over: Vec<_> = calls.iter().filter(|(_, n)| **n > max_checks + 1).collect();
        assert!(over.is_empty(), "{engine}: checked too often: {over:?}");
        txn.close().unwrap();
        store.close().unwrap();
    }
}
