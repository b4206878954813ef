//! Review of the half-message layer (branch review-h): each test fails on the code as
//! reviewed and shows one defect.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::half::{T0, background, bodies, manual, open_layer, orders_store};
use common::{for_each_engine, read_all, small_options};
use duolog::delay::ManualClock;
use duolog::io::{CrashMode, Fault, SimFs};
use duolog::txn::half::CHECK_MAX_TIME_TOPIC;
use duolog::txn::{HalfConfig, HalfId, HalfMessages, LocalTransactionState};
use duolog::{EngineKind, Error, LogStore, Message, Record, TopicConfig};

use LocalTransactionState::{Commit, Unknown};

/// A half message that fits the store's message limit but whose check copy (three more
/// properties) does not: every scan fails on it, so no half message behind it is ever
/// checked again. One user message stops the check-back of the whole store.
#[test]
fn a_half_message_near_the_size_limit_does_not_stop_the_check_back_of_the_others() {
    for_each_engine(|engine, dir| {
        let opts = duolog::StoreOptions {
            max_message_bytes: 2048,
            ..small_options(engine)
        };
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, opts).unwrap());
        store
            .create_topic("orders", TopicConfig::with_partitions(1))
            .unwrap();
        let checker = Arc::new(|r: &Record| match r.body().first() {
            Some(b'c') => Commit,
            _ => Unknown,
        });
        let (clock, txn) = open_layer(&store, manual, checker);
        const SCRATCH: &str = "scratch_topic_of_24_char";
        assert_eq!(SCRATCH.len(), duolog::txn::half::HALF_TOPIC.len());
        store
            .create_topic(SCRATCH, TopicConfig::with_partitions(1))
            .unwrap();
        // The largest `u…` body send_half accepts.
        let (mut lo, mut hi) = (1usize, 2048usize);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            let body = "u".repeat(mid);
            // Probe on a scratch topic named as long as the half topic: same encoded size.
            let probe = Message::new(body)
                .with_property("REAL_TOPIC", "orders")
                .with_property("REAL_QID", "0")
                .with_property("TRAN_MSG", "true")
                .with_property("__transactionId__", "0".repeat(32))
                .with_property("UNIQ_KEY", "0".repeat(32))
                .with_property("TRAN_BORN_MS", T0.to_string());
            match store.append(SCRATCH, 0, &[probe]) {
                Ok(_) => lo = mid,
                Err(Error::MessageTooLarge { .. }) => hi = mid,
                Err(e) => panic!("{e}"),
            }
        }
        let big = txn
            .send_half("orders", 0, Message::new("u".repeat(lo)))
            .unwrap();
        let behind = txn
            .send_half("orders", 0, Message::new("commit-me"))
            .unwrap();
        assert!(behind > big);
        clock.advance(Duration::from_secs(7));
        let mut scans = Vec::new();
        for _ in 0..3 {
            scans.push(txn.check_now().map(|r| r.committed));
            clock.advance(Duration::from_secs(31));
        }
        let committed: Vec<String> = read_all(&*store, "orders", 0)
            .iter()
            .map(|r| String::from_utf8(r.body().to_vec()).unwrap())
            .collect();
        assert_eq!(
            committed,
            vec!["commit-me".to_string()],
            "{engine}: the message behind the large one was never checked back; scans: {scans:?}"
        );
        txn.close().unwrap();
        store.close().unwrap();
    });
}

/// `close` and then `Drop` of the same layer unregister the store twice: the second time it
/// removes the registration of a layer opened in between, so a third layer opens on the
/// same store while the second lives (two check threads, two sets of claims: two commits of
/// one id can run at once).
#[test]
fn a_closed_then_dropped_layer_does_not_let_a_second_layer_onto_a_served_store() {
    for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        let clock = Arc::new(ManualClock::new(T0));
        let checker = || Arc::new(|_: &Record| Unknown);
        let a = HalfMessages::open(Arc::clone(&store), manual(&clock), checker()).unwrap();
        a.close().unwrap();
        let b = HalfMessages::open(Arc::clone(&store), manual(&clock), checker()).unwrap();
        drop(a);
        let c = HalfMessages::open(Arc::clone(&store), manual(&clock), checker());
        assert!(
            matches!(c, Err(Error::InvalidArgument(_))),
            "{engine}: a second live layer opened on a store `b` serves"
        );
        drop(c);
        b.close().unwrap();
        store.close().unwrap();
    });
}

fn sim_opts(engine: EngineKind, sim: &SimFs) -> duolog::StoreOptions {
    duolog::StoreOptions {
        fs: Arc::new(sim.clone()),
        flush: duolog::FlushPolicy::Async {
            interval: Duration::from_secs(3600),
        },
        ..small_options(engine)
    }
}

/// A commit whose real topic is gone is parked in TRANS_CHECK_MAX_TIME_TOPIC. The intent
/// still names the real topic, so a failure between the parked write and the done record
/// makes the retry (at open, or a retried `end`) look for the write in the real topic, not
/// find it, and park the message a second time.
#[test]
fn a_parked_commit_interrupted_by_a_power_cut_is_parked_once() {
    for engine in common::engines() {
        let setup = |sim: &SimFs| -> (Arc<dyn LogStore>, HalfMessages, HalfId) {
            let store: Arc<dyn LogStore> =
                Arc::from(duolog::open("/review-park", sim_opts(engine, sim)).unwrap());
            store
                .create_topic("gone", TopicConfig::with_partitions(1))
                .unwrap();
            let clock = Arc::new(ManualClock::new(T0));
            let txn = HalfMessages::open(
                Arc::clone(&store),
                manual(&clock),
                Arc::new(|_: &Record| Unknown),
            )
            .unwrap();
            let id = txn.send_half("gone", 0, Message::new("parked")).unwrap();
            store.delete_topic("gone").unwrap();
            store.sync().unwrap();
            (store, txn, id)
        };
        let steps = {
            let sim = SimFs::new();
            let (_store, txn, id) = setup(&sim);
            let before = sim.op_count();
            txn.end(id, Commit).unwrap();
            sim.op_count() - before
        };
        for k in 0..=steps {
            for (seed, mode) in CrashMode::ALL.iter().enumerate() {
                let sim = SimFs::new();
                let (store, txn, id) = setup(&sim);
                sim.fail_after(k, Fault::Eio);
                let _ = txn.end(id, Commit);
                store.abandon();
                drop(txn);
                drop(store);
                let crashed = sim.crash(*mode, seed as u64 * 7 + k);
                let ctx = format!("{engine}: failure at step {k} of {steps}, {mode:?}");
                let store: Arc<dyn LogStore> =
                    Arc::from(duolog::open("/review-park", sim_opts(engine, &crashed)).unwrap());
                let clock = Arc::new(ManualClock::new(T0));
                let txn = HalfMessages::open(
                    Arc::clone(&store),
                    manual(&clock),
                    Arc::new(|_: &Record| Unknown),
                )
                .unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
                txn.end(id, Commit)
                    .unwrap_or_else(|e| panic!("{ctx}: end again: {e}"));
                let parked = bodies(&*store, CHECK_MAX_TIME_TOPIC, 0);
                assert_eq!(parked, vec!["parked".to_string()], "{ctx}");
                txn.close().unwrap();
                store.close().unwrap();
            }
        }
    }
}

/// ARCHITECTURE.md: "a lost commit of `H` makes a scan look at some copies again (at most
/// one extra check each)". A power cut that loses the scan's committed position (it is
/// appended after the sync, under the flush policy) makes the next scan check the original
/// *and* its copy, each appending its own copy: two chains of copies, each checked at every
/// scan from then on until one reaches `max_checks`.
#[test]
fn a_lost_scan_position_costs_at_most_one_extra_check() {
    for engine in common::engines() {
        let sim = SimFs::new();
        let calls = Arc::new(AtomicU32::new(0));
        let checker = {
            let calls = Arc::clone(&calls);
            Arc::new(move |_: &Record| {
                calls.fetch_add(1, Ordering::SeqCst);
                Unknown
            })
        };
        let max_checks = 4;
        let config = |clock: &Arc<ManualClock>| HalfConfig {
            max_checks,
            ..manual(clock)
        };
        let store: Arc<dyn LogStore> =
            Arc::from(duolog::open("/review-fork", sim_opts(engine, &sim)).unwrap());
        store
            .create_topic("orders", TopicConfig::with_partitions(1))
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let txn = HalfMessages::open(Arc::clone(&store), config(&clock), checker.clone()).unwrap();
        txn.send_half("orders", 0, Message::new("u")).unwrap();
        store.sync().unwrap();
        clock.advance(Duration::from_secs(7));
        assert_eq!(txn.check_now().unwrap().unknown, 1);
        // Power cut: the copy was synced by the scan, its committed position was not.
        store.abandon();
        drop(txn);
        drop(store);
        let crashed = sim.crash(CrashMode::DropUnsynced, 1);
        let store: Arc<dyn LogStore> =
            Arc::from(duolog::open("/review-fork", sim_opts(engine, &crashed)).unwrap());
        let clock = Arc::new(ManualClock::new(T0 + 60_000));
        let txn = HalfMessages::open(Arc::clone(&store), config(&clock), checker.clone()).unwrap();
        for _ in 0..10 {
            txn.check_now().unwrap();
            clock.advance(Duration::from_secs(31));
        }
        assert_eq!(
            bodies(&*store, CHECK_MAX_TIME_TOPIC, 0),
            vec!["u".to_string()],
            "{engine}"
        );
        let total = calls.load(Ordering::SeqCst);
        assert!(
            total <= max_checks + 1,
            "{engine}: {total} checks of one half message with max_checks {max_checks}"
        );
        txn.close().unwrap();
        store.close().unwrap();
    }
}

/// `close` (and `Drop`) join the check thread, which only looks at the closed flag between
/// windows of 1,024 half messages: with a checker that takes 20 ms (a network call), closing
/// waits for a whole window of checks.
#[test]
fn close_does_not_wait_for_a_whole_window_of_checks() {
    for_each_engine(|engine, dir| {
        let store = orders_store(engine, dir, 1);
        let clock = Arc::new(ManualClock::new(T0));
        // Send with the layer in manual mode, then reopen it with the check thread.
        let quiet = HalfMessages::open(
            Arc::clone(&store),
            manual(&clock),
            Arc::new(|_: &Record| Unknown),
        )
        .unwrap();
        for i in 0..200 {
            quiet
                .send_half("orders", 0, Message::new(format!("u{i}")))
                .unwrap();
        }
        quiet.close().unwrap();
        drop(quiet);
        clock.advance(Duration::from_secs(7));
        let calls = Arc::new(AtomicU32::new(0));
        let checker = {
            let calls = Arc::clone(&calls);
            Arc::new(move |_: &Record| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                Unknown
            })
        };
        let txn = HalfMessages::open(Arc::clone(&store), background(&clock), checker).unwrap();
        while calls.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        txn.close().unwrap();
        let waited = t.elapsed();
        assert!(
            waited < Duration::from_secs(1),
            "{engine}: close waited {waited:?} for {} checks",
            calls.load(Ordering::SeqCst)
        );
        store.close().unwrap();
    });
}

/// The checker runs under the id's claim; a checker that settles the transaction itself by
/// calling `end` on the id it is asked about waits for its own claim for ever (and the check
/// thread, `close` and `Drop` with it).
#[test]
fn a_checker_that_ends_its_own_half_message_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LogStore> =
        Arc::from(duolog::open(dir.path(), small_options(EngineKind::CommitLog)).unwrap());
    store
        .create_topic("orders", TopicConfig::with_partitions(1))
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let slot: Arc<std::sync::OnceLock<Arc<HalfMessages>>> = Arc::new(std::sync::OnceLock::new());
    let checker = {
        let slot = Arc::clone(&slot);
        Arc::new(move |r: &Record| {
            let id = r
                .properties()
                .get("TRAN_PREPARED_QUEUE_OFFSET")
                .map_or(r.offset(), |s| s.parse().unwrap());
            let _ = slot.get().unwrap().end(HalfId(id), Commit);
            Commit
        })
    };
    let txn = Arc::new(HalfMessages::open(Arc::clone(&store), manual(&clock), checker).unwrap());
    let _ = slot.set(Arc::clone(&txn));
    txn.send_half("orders", 0, Message::new("x")).unwrap();
    clock.advance(Duration::from_secs(7));
    let (tx, rx) = std::sync::mpsc::channel();
    let t2 = Arc::clone(&txn);
    std::thread::spawn(move || {
        let _ = tx.send(t2.check_now().map(|r| r.committed));
    });
    let done = rx.recv_timeout(Duration::from_secs(5));
    assert!(done.is_ok(), "the check deadlocked");
}

/// The group `CID_RMQ_SYS_TRANS`'s committed (half, op) scan positions, as last written.
fn committed_positions(store: &dyn LogStore) -> (u64, u64) {
    use duolog::consumer::{CommitRecord, OFFSETS_TOPIC};
    use duolog::txn::half::{CHECK_GROUP, HALF_TOPIC, OP_TOPIC};
    let mut latest = None;
    for r in read_all(store, OFFSETS_TOPIC, 0) {
        if r.key() == Some(CHECK_GROUP.as_bytes()) {
            latest = r.value().map(|v| CommitRecord::decode(v).unwrap());
        }
    }
    let rec = latest.expect("no committed scan position");
    let get = |t: &str| {
        rec.offsets
            .get(t)
            .and_then(|p| p.get(&0))
            .copied()
            .unwrap_or(0)
    };
    (get(HALF_TOPIC), get(OP_TOPIC))
}

/// ARCHITECTURE.md: "`O` trails the scan by about one timeout plus one check interval of op
/// records". But a scan that stops at a message younger than the timeout keeps `O` where it
/// was for that window, and under steady traffic every scan ends that way: `O` never moves,
/// and every scan (and every open's recovery) re-reads the op topic from its first record.
#[test]
fn the_committed_op_offset_follows_the_scan_under_steady_traffic() {
    for_each_engine(|engine, dir| {
        let store = orders_store(engine, dir, 1);
        let (clock, txn) = open_layer(
            &store,
            |c| HalfConfig {
                check_interval: Duration::from_secs(1),
                ..manual(c)
            },
            Arc::new(|_: &Record| Commit),
        );
        // One transaction a second ended by its producer, one a second left to the check-back
        // (which commits it once it is 6 s old); a scan every second.
        for i in 0..120 {
            let id = txn
                .send_half("orders", 0, Message::new(format!("a{i}")))
                .unwrap();
            txn.end(id, Commit).unwrap();
            txn.send_half("orders", 0, Message::new(format!("b{i}")))
                .unwrap();
            clock.advance(Duration::from_secs(1));
            txn.check_now().unwrap();
        }
        let (h, o) = committed_positions(&*store);
        let op_end = store.bounds(duolog::txn::half::OP_TOPIC, 0).unwrap().end;
        assert!(h > 200, "{engine}: the scan moved on (H = {h})");
        assert!(
            o + 60 >= op_end,
            "{engine}: O = {o} trails the op topic's end {op_end} by more than ~7 s of op records"
        );
        txn.close().unwrap();
        store.close().unwrap();
    });
}

/// The contract: half messages retention deleted before the check-back reached them "are
/// reported, never silently lost". The count is only in the `CheckReport` `check_now`
/// returns; the check thread (the default) drops its reports, commits its position past the
/// deleted offsets, and nothing anywhere says they were lost.
#[test]
fn half_messages_lost_to_retention_are_reported_with_the_check_thread_too() {
    for_each_engine(|engine, dir| {
        let store = orders_store(engine, dir, 1);
        let (_clock, txn) = open_layer(
            &store,
            |c| HalfConfig {
                check_interval: Duration::from_millis(20),
                ..background(c)
            },
            Arc::new(|_: &Record| Unknown),
        );
        for i in 0..3 {
            txn.send_half("orders", 0, Message::new(format!("u{i}")))
                .unwrap();
        }
        store
            .delete_before(duolog::txn::half::HALF_TOPIC, 0, 3)
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Whatever the user can ask now: a scan's report, the close result.
        let report = txn.check_now().unwrap();
        let closed = txn.close();
        assert!(
            report.expired == 3 || closed.is_err(),
            "{engine}: 3 undecided half messages lost to retention and reported nowhere \
             (check_now: {report:?}, close: {closed:?})"
        );
        store.close().unwrap();
    });
}

/// A message its real topic will refuse (larger than the topic's `max_message_bytes`) is
/// accepted by `send_half`; the producer then runs its local transaction, commits, and only
/// `end` finds out, parking the message (`Discarded`): the local transaction is committed and
/// its message never delivered. The topic's limit is known at send time.
#[test]
fn a_message_its_real_topic_refuses_is_an_error_at_send_half() {
    for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        store
            .create_topic(
                "small",
                TopicConfig {
                    max_message_bytes: Some(256),
                    ..TopicConfig::with_partitions(1)
                },
            )
            .unwrap();
        let (_clock, txn) = open_layer(&store, manual, Arc::new(|_: &Record| Unknown));
        let sent = txn.send_half("small", 0, Message::new("x".repeat(1000)));
        let outcome = sent.as_ref().ok().map(|id| txn.end(*id, Commit));
        assert!(
            matches!(sent, Err(Error::MessageTooLarge { .. })),
            "{engine}: send_half {sent:?}, then end(Commit) {outcome:?}"
        );
        txn.close().unwrap();
        store.close().unwrap();
    });
}
