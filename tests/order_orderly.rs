//! Orderly consumption end to end, on both engines: per-partition offset order with one call
//! at a time, in-place retry after a suspension, the dead-letter queue only when asked, a
//! panic as a suspension, fenced commits after a lease expires, disjoint leases between the
//! members of one coordinator, and a hand-over that waits for the call in flight.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duolog::consumer::{ConsumerRecord, GroupCoordinator, OffsetReset, TopicPartition, dlq_topic};
use duolog::order::{
    ConsumeOrderlyStatus, LeaseOptions, LeaseTable, ManualClock, OrderlyConfig, OrderlyConsumer,
    OrderlyContext,
};
use duolog::{Error, LogStore, Message, StoreOptions, TopicConfig};

use common::consumer::{committed, open, produce_with, topic_t, wait_until};
use common::{for_each_engine, read_all};

fn config(group: &str) -> OrderlyConfig {
    let mut c = OrderlyConfig {
        consume_threads: 4,
        commit_interval: Duration::from_millis(50),
        suspend_current_queue_time: Duration::from_millis(30),
        ..OrderlyConfig::new(group)
    };
    c.consumer.auto_offset_reset = OffsetReset::Earliest;
    c
}

fn produce(store: &dyn LogStore, topic: &str, partition: u32, n: usize) {
    produce_with(store, topic, partition, n, |i| {
        Message::new(format!("{partition}-{i}")).with_key(format!("k{}", i % 5))
    });
}

/// Per partition, every call: (offset, attempt, fencing token).
type Calls = BTreeMap<u32, Vec<(u64, u32, u64)>>;

/// Per partition: whether a call is running, and every (offset, attempt, token) handled.
#[derive(Default)]
struct Log {
    in_use: Mutex<HashMap<u32, bool>>,
    calls: Mutex<Calls>,
    overlaps: AtomicUsize,
}

impl Log {
    fn enter(&self, r: &ConsumerRecord, ctx: &OrderlyContext) {
        if std::mem::replace(
            self.in_use
                .lock()
                .unwrap()
                .entry(r.partition())
                .or_default(),
            true,
        ) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.calls
            .lock()
            .unwrap()
            .entry(r.partition())
            .or_default()
            .push((r.offset(), ctx.attempt, ctx.fencing_token));
    }
    fn leave(&self, r: &ConsumerRecord) {
        self.in_use.lock().unwrap().insert(r.partition(), false);
    }
    fn handled(&self, p: u32) -> Vec<u64> {
        let calls = self.calls.lock().unwrap();
        calls
            .get(&p)
            .map(|c| c.iter().map(|x| x.0).collect())
            .unwrap_or_default()
    }
}

#[test]
fn each_partition_is_handled_in_offset_order_one_call_at_a_time() {
    for_each_engine(|engine, dir| {
        let (_store, groups) = topic_t(engine, dir, 4, 300, produce);
        let log = Arc::new(Log::default());
        let l = Arc::clone(&log);
        let c = OrderlyConsumer::start(
            &groups,
            config("g"),
            &["t"],
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                l.enter(r, ctx);
                std::thread::yield_now();
                l.leave(r);
                ConsumeOrderlyStatus::Success
            },
        )
        .unwrap();
        wait_until("every record", || {
            (0..4).all(|p| log.handled(p).len() == 300)
        });
        c.close().unwrap();
        assert_eq!(log.overlaps.load(Ordering::SeqCst), 0);
        for p in 0..4 {
            assert_eq!(
                log.handled(p),
                (0..300).collect::<Vec<u64>>(),
                "partition {p}"
            );
            assert_eq!(committed(&groups, "g", "t", p), Some(300));
        }
    });
}

#[test]
fn a_failing_record_suspends_its_partition_and_is_retried_in_place() {
    for_each_engine(|engine, dir| {
        let (_store, groups) = topic_t(engine, dir, 1, 10, produce);
        let log = Arc::new(Log::default());
        let times = Arc::new(Mutex::new(Vec::new()));
        let (l, t) = (Arc::clone(&log), Arc::clone(&times));
        let c = OrderlyConsumer::start(
            &groups,
            config("g"),
            &["t"],
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                l.enter(r, ctx);
                l.leave(r);
                if r.offset() == 3 && ctx.attempt <= 2 {
                    t.lock().unwrap().push(Instant::now());
                    return ConsumeOrderlyStatus::SuspendCurrentQueueAMoment;
                }
                if r.offset() == 6 && ctx.attempt == 1 {
                    panic!("a panic counts as a suspension");
                }
                ConsumeOrderlyStatus::Success
            },
        )
        .unwrap();
        wait_until("every record", || log.handled(0).last() == Some(&9));
        c.close().unwrap();
        assert_eq!(log.handled(0), [0, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7, 8, 9]);
        let attempts: Vec<u32> = log.calls.lock().unwrap()[&0].iter().map(|c| c.1).collect();
        assert_eq!(attempts, [1, 1, 1, 1, 2, 3, 1, 1, 1, 2, 1, 1, 1]);
        let times = times.lock().unwrap();
        assert!(
            times[1] - times[0] >= Duration::from_millis(30),
            "suspended"
        );
        assert_eq!(committed(&groups, "g", "t", 0), Some(10));
    });
}

#[test]
fn past_the_maximum_a_record_goes_to_the_dead_letters_only_when_asked() {
    for_each_engine(|engine, dir| {
        let (store, groups) = topic_t(engine, dir, 1, 5, produce);
        // Without dead letters: a maximum changes nothing, the record is retried for ever.
        let calls = Arc::new(AtomicUsize::new(0));
        let n = Arc::clone(&calls);
        let cfg = OrderlyConfig {
            max_reconsume_times: Some(2),
            suspend_current_queue_time: Duration::from_millis(1),
            ..config("keep")
        };
        let c = OrderlyConsumer::start(
            &groups,
            cfg,
            &["t"],
            move |r: &ConsumerRecord, _: &OrderlyContext| {
                if r.offset() == 2 {
                    n.fetch_add(1, Ordering::SeqCst);
                    return ConsumeOrderlyStatus::SuspendCurrentQueueAMoment;
                }
                ConsumeOrderlyStatus::Success
            },
        )
        .unwrap();
        wait_until("many retries", || calls.load(Ordering::SeqCst) > 10);
        c.close().unwrap();
        assert_eq!(committed(&groups, "keep", "t", 0), Some(2), "never skipped");
        assert!(store.describe_topic(&dlq_topic("keep")).is_err());

        // With dead letters: 1 + 2 calls, then the DLQ, and the partition moves on.
        let log = Arc::new(Log::default());
        let l = Arc::clone(&log);
        let cfg = OrderlyConfig {
            max_reconsume_times: Some(2),
            dead_letter: true,
            suspend_current_queue_time: Duration::from_millis(1),
            ..config("dlq")
        };
        let c = OrderlyConsumer::start(
            &groups,
            cfg,
            &["t"],
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                l.enter(r, ctx);
                l.leave(r);
                if r.offset() == 2 {
                    return ConsumeOrderlyStatus::SuspendCurrentQueueAMoment;
                }
                ConsumeOrderlyStatus::Success
            },
        )
        .unwrap();
        wait_until("the end", || log.handled(0).last() == Some(&4));
        c.close().unwrap();
        assert_eq!(log.handled(0), [0, 1, 2, 2, 2, 3, 4]);
        let dead = read_all(&*store, &dlq_topic("dlq"), 0);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body(), b"0-2");
        assert_eq!(committed(&groups, "dlq", "t", 0), Some(5));
    });
}

#[test]
fn a_member_whose_lease_expired_cannot_commit_and_restarts_from_the_committed_offset() {
    for_each_engine(|engine, dir| {
        let (_store, groups) = topic_t(engine, dir, 1, 10, produce);
        let clock = Arc::new(ManualClock::default());
        let gates = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let log = Arc::new(Log::default());
        let (l, g) = (Arc::clone(&log), Arc::clone(&gates));
        let cfg = OrderlyConfig {
            commit_interval: Duration::from_secs(3600),
            lease: LeaseOptions {
                clock: clock.clone(),
                ..LeaseOptions::default()
            },
            ..config("g")
        };
        let c = OrderlyConsumer::start(
            &groups,
            cfg,
            &["t"],
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                l.enter(r, ctx);
                // The first holding stops inside offset 3's call, then inside offset 7's.
                for (at, gate) in [(3, &g[0]), (7, &g[1])] {
                    while r.offset() == at && ctx.attempt == 1 && !gate.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                l.leave(r);
                ConsumeOrderlyStatus::Success
            },
        )
        .unwrap();
        wait_until("inside offset 3", || log.handled(0).len() == 4);
        c.commit().unwrap();
        assert_eq!(committed(&groups, "g", "t", 0), Some(3));
        let first = c.leased()[&TopicPartition::new("t", 0)];
        gates[0].store(true, Ordering::SeqCst);
        wait_until("inside offset 7", || log.handled(0).len() == 8);
        // The renewals stall and the lease expires: offsets 3..7 were handled, but a commit
        // under the old token is fenced.
        c.stop_renewing();
        clock.advance(Duration::from_secs(61));
        let err = c.commit();
        assert!(
            matches!(err, Err(Error::LeaseLost { token, partition: 0, .. }) if token == first),
            "{err:?}"
        );
        assert_eq!(
            committed(&groups, "g", "t", 0),
            Some(3),
            "nothing committed"
        );
        assert!(c.leased().is_empty(), "no longer delivered");
        // The call in flight keeps the partition until it returns; then the member takes the
        // lease again (a new token) and restarts at the committed offset.
        std::thread::sleep(Duration::from_millis(50));
        assert!(c.leased().is_empty(), "not while the old call runs");
        gates[1].store(true, Ordering::SeqCst);
        wait_until("a new lease", || {
            c.leased()
                .get(&TopicPartition::new("t", 0))
                .is_some_and(|t| *t > first)
        });
        wait_until("every record", || log.handled(0).last() == Some(&9));
        c.close().unwrap();
        let calls = log.calls.lock().unwrap()[&0].clone();
        let firsts: Vec<u64> = calls.iter().filter(|c| c.2 == first).map(|c| c.0).collect();
        let seconds: Vec<u64> = calls.iter().filter(|c| c.2 > first).map(|c| c.0).collect();
        assert_eq!(firsts, (0..8).collect::<Vec<u64>>());
        assert_eq!(seconds, (3..10).collect::<Vec<u64>>());
        assert_eq!(committed(&groups, "g", "t", 0), Some(10));
        let leases = LeaseTable::of(&groups);
        assert!(
            leases.lease("g", &TopicPartition::new("t", 0)).is_none(),
            "released at close"
        );
    });
}

#[test]
fn two_orderly_consumers_of_one_coordinator_never_hold_one_partition() {
    for_each_engine(|engine, dir| {
        let (_store, groups) = topic_t(engine, dir, 8, 50, produce);
        let log = Arc::new(Log::default());
        let handler = |l: Arc<Log>| {
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                l.enter(r, ctx);
                std::thread::sleep(Duration::from_micros(200));
                l.leave(r);
                ConsumeOrderlyStatus::Success
            }
        };
        let a = OrderlyConsumer::start(&groups, config("g"), &["t"], handler(Arc::clone(&log)))
            .unwrap();
        wait_until("a leases all", || a.leased().len() == 8);
        let b = OrderlyConsumer::start(&groups, config("g"), &["t"], handler(Arc::clone(&log)))
            .unwrap();
        wait_until("b leases half", || {
            b.leased().len() == 4 && a.leased().len() == 4
        });
        let (la, lb) = (a.leased(), b.leased());
        assert!(la.keys().all(|tp| !lb.contains_key(tp)));
        let table = LeaseTable::of(&groups);
        for (tp, tok) in &lb {
            let lease = table.lease("g", tp).unwrap();
            assert_eq!((lease.holder.as_str(), lease.token), (b.member_id(), *tok));
        }
        wait_until("every record", || {
            (0..8).all(|p| log.handled(p).last() == Some(&49))
        });
        a.close().unwrap();
        b.close().unwrap();
        assert_eq!(log.overlaps.load(Ordering::SeqCst), 0);
        for p in 0..8 {
            let h = log.handled(p);
            // A moved partition restarts at its committed offset: repeats, never a gap.
            assert!(
                h.windows(2).all(|w| w[1] <= w[0] + 1),
                "partition {p}: {h:?}"
            );
            assert_eq!(committed(&groups, "g", "t", p), Some(50));
        }
    });
}

#[test]
fn a_moved_partition_waits_for_the_call_in_flight_and_resumes_after_it() {
    for_each_engine(|engine, dir| {
        let (_store, groups) = topic_t(engine, dir, 2, 20, produce);
        let log = Arc::new(Log::default());
        let release = Arc::new(AtomicBool::new(false));
        let (l, rel) = (Arc::clone(&log), Arc::clone(&release));
        let a = OrderlyConsumer::start(
            &groups,
            config("g"),
            &["t"],
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                l.enter(r, ctx);
                // Offset 10 of every partition blocks until released.
                while r.offset() == 10 && !rel.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                l.leave(r);
                ConsumeOrderlyStatus::Success
            },
        )
        .unwrap();
        wait_until("both blocked", || {
            (0..2).all(|p| log.handled(p).last() == Some(&10))
        });
        let l = Arc::clone(&log);
        let b = OrderlyConsumer::start(
            &groups,
            config("g"),
            &["t"],
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                l.enter(r, ctx);
                l.leave(r);
                ConsumeOrderlyStatus::Success
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            b.leased().is_empty(),
            "no lease while the old holder's call runs"
        );
        assert!((0..2).all(|p| log.handled(p).len() == 11));
        release.store(true, Ordering::SeqCst);
        wait_until("b takes one", || b.leased().len() == 1);
        wait_until("every record", || {
            (0..2).all(|p| log.handled(p).last() == Some(&19))
        });
        a.close().unwrap();
        b.close().unwrap();
        assert_eq!(log.overlaps.load(Ordering::SeqCst), 0);
        for p in 0..2 {
            assert_eq!(
                log.handled(p),
                (0..20).collect::<Vec<u64>>(),
                "no repeats: committed at revoke"
            );
        }
    });
}

#[test]
fn bad_orderly_options_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &StoreOptions::default());
    store.create_topic("t", TopicConfig::default()).unwrap();
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    let ok = |_: &ConsumerRecord, _: &OrderlyContext| ConsumeOrderlyStatus::Success;
    let bad = [
        OrderlyConfig {
            consume_threads: 0,
            ..config("g")
        },
        OrderlyConfig {
            pull_threshold_for_queue: 0,
            ..config("g")
        },
        OrderlyConfig {
            commit_interval: Duration::ZERO,
            ..config("g")
        },
        OrderlyConfig {
            suspend_current_queue_time: Duration::MAX,
            ..config("g")
        },
        OrderlyConfig {
            lease: LeaseOptions {
                renew_interval: Duration::ZERO,
                ..LeaseOptions::default()
            },
            ..config("g")
        },
        OrderlyConfig {
            lease: LeaseOptions {
                renew_interval: Duration::from_secs(60),
                ..LeaseOptions::default()
            },
            ..config("g")
        },
        OrderlyConfig {
            lease: LeaseOptions {
                expire_after: Duration::MAX,
                ..LeaseOptions::default()
            },
            ..config("g")
        },
        config(""),
    ];
    for cfg in bad {
        let what = format!("{cfg:?}");
        assert!(
            matches!(
                OrderlyConsumer::start(&groups, cfg, &["t"], ok),
                Err(Error::InvalidArgument(_))
            ),
            "{what}"
        );
    }
}

#[test]
fn a_lease_that_expires_during_the_last_call_is_given_up_and_taken_again_without_a_commit() {
    for_each_engine(|engine, dir| {
        let (_store, groups) = topic_t(engine, dir, 1, 1, produce);
        let clock = Arc::new(ManualClock::default());
        let gate = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Log::default());
        let (l, g) = (Arc::clone(&log), Arc::clone(&gate));
        let cfg = OrderlyConfig {
            // No periodic commit to stumble on the lost lease: the renewal must notice it.
            commit_interval: Duration::from_secs(3600),
            lease: LeaseOptions {
                renew_interval: Duration::from_millis(5),
                clock: clock.clone(),
                ..LeaseOptions::default()
            },
            ..config("g")
        };
        let c = OrderlyConsumer::start(
            &groups,
            cfg,
            &["t"],
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                l.enter(r, ctx);
                while !g.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                l.leave(r);
                ConsumeOrderlyStatus::Success
            },
        )
        .unwrap();
        wait_until("inside the only record", || log.handled(0).len() == 1);
        let first = c.leased()[&TopicPartition::new("t", 0)];
        // The lease expires inside the call. Nothing is left in the queue, so no later call
        // would notice: the renewal gives the lease up once the call has returned (its success
        // known), and the member takes it again and commits after the record.
        clock.advance(Duration::from_secs(61));
        std::thread::sleep(Duration::from_millis(30));
        gate.store(true, Ordering::SeqCst);
        wait_until("a new lease", || {
            c.leased()
                .get(&TopicPartition::new("t", 0))
                .is_some_and(|t| *t > first)
        });
        c.close().unwrap();
        assert_eq!(committed(&groups, "g", "t", 0), Some(1));
        assert_eq!(log.overlaps.load(Ordering::SeqCst), 0);
    });
}
