//! Review of the order layer: defects found cold, one test each (ignored until fixed).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duolog::consumer::{ConsumerRecord, GroupCoordinator, OffsetReset};
use duolog::order::{ConsumeOrderlyStatus, OrderlyConfig, OrderlyConsumer, OrderlyContext};
use duolog::{LogStore, Message, StoreOptions, TopicConfig};

use common::for_each_engine;

fn open(dir: &std::path::Path, opts: &StoreOptions) -> Arc<dyn LogStore> {
    Arc::from(duolog::open(dir, opts.clone()).expect("open"))
}

/// Per partition: whether a call runs now, and the (offset, token) of the last call.
#[derive(Default)]
struct Watch {
    in_use: Mutex<HashMap<u32, bool>>,
    last: Mutex<HashMap<u32, (u64, u64)>>,
    overlaps: AtomicUsize,
    out_of_order: AtomicUsize,
    calls: AtomicUsize,
}

impl Watch {
    fn call(&self, r: &ConsumerRecord, ctx: &OrderlyContext, hold: Duration) {
        let p = r.partition();
        if std::mem::replace(self.in_use.lock().unwrap().entry(p).or_default(), true) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        {
            let mut last = self.last.lock().unwrap();
            // Under one token a partition's offsets go on by one (handlers here never fail).
            if let Some(&(o, t)) = last.get(&p)
                && t == ctx.fencing_token
                && r.offset() != o + 1
            {
                self.out_of_order.fetch_add(1, Ordering::SeqCst);
            }
            last.insert(p, (r.offset(), ctx.fencing_token));
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(hold);
        self.in_use.lock().unwrap().insert(p, false);
    }
}

/// A member evicted by the group (`max_poll_interval` passed while its pull thread was outside
/// `poll`) that joins again and claims a partition it still has a process queue for, inside one
/// `poll`: `Listener::on_assign` replaces that queue with a fresh one (`busy = false`), and
/// `acquire` gets the member's still-valid lease back with the SAME token, so a second worker
/// starts on the partition while the first one's handler call is still running.
#[test]
fn an_evicted_member_that_claims_its_partitions_back_never_runs_two_calls_at_once() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &common::small_options(engine));
        store
            .create_topic("t", TopicConfig::with_partitions(8))
            .unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let watch = Arc::new(Watch::default());
        let config = || {
            let mut c = OrderlyConfig {
                consume_threads: 4,
                commit_interval: Duration::from_millis(1),
                ..OrderlyConfig::new("g")
            };
            c.consumer.auto_offset_reset = OffsetReset::Earliest;
            // Kafka allows a short max.poll.interval.ms: a member outside poll for longer may
            // be evicted by another member that wants its partitions.
            c.consumer.max_poll_interval = Duration::ZERO;
            c
        };
        let start = |w: &Arc<Watch>| {
            let w = Arc::clone(w);
            OrderlyConsumer::start(
                &groups,
                config(),
                &["t"],
                move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                    w.call(r, ctx, Duration::from_millis(2));
                    ConsumeOrderlyStatus::Success
                },
            )
            .unwrap()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for p in 0..8 {
                        store
                            .append("t", p, &[Message::new(format!("{i}"))])
                            .unwrap();
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_micros(500));
                }
            })
        };
        let mut members: Vec<OrderlyConsumer> = (0..4).map(|_| start(&watch)).collect();
        let until = Instant::now() + Duration::from_secs(10);
        let mut n = 0usize;
        while Instant::now() < until && watch.overlaps.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(150));
            // Churn: a member leaves, another joins (rebalances keep partitions moving).
            let m = members.remove(n % members.len());
            let _ = m.close();
            members.push(start(&watch));
            n += 1;
        }
        stop.store(true, Ordering::Relaxed);
        producer.join().unwrap();
        for m in members {
            let _ = m.close();
        }
        assert!(
            watch.calls.load(Ordering::SeqCst) > 0,
            "{engine}: nothing handled"
        );
        assert_eq!(
            (
                watch.overlaps.load(Ordering::SeqCst),
                watch.out_of_order.load(Ordering::SeqCst)
            ),
            (0, 0),
            "{engine}: (calls at once on one partition, out-of-order calls under one token)"
        );
    });
}

/// `PriorityConsumer::poll` fetches through the wrapped consumer, which records a `SubBefore`
/// trace event for every record it returns, then puts back (seeks over) the records of lower
/// bands: each put-back record is traced as delivered although the application never saw it,
/// and traced again when it is really delivered. `consume --group --priority --trace` does this.
#[test]
fn a_priority_consumer_traces_only_the_records_it_returns() {
    use duolog::consumer::{ConsumerConfig, TraceConfig, Tracer};
    use duolog::order::{
        PriorityConfig, PriorityConsumer, PriorityProducer, create_priority_topic,
    };
    for_each_engine(|engine, dir| {
        let store = open(dir, &common::small_options(engine));
        create_priority_topic(&*store, "jobs", 10, TopicConfig::default()).unwrap();
        let producer = PriorityProducer::new(Arc::clone(&store), "jobs").unwrap();
        for i in 0..5 {
            producer.send(&Message::new(format!("low {i}")), 1).unwrap();
            producer
                .send(&Message::new(format!("high {i}")), 8)
                .unwrap();
        }
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let tracer = Arc::new(Tracer::new(Arc::clone(&store), TraceConfig::default()).unwrap());
        let config = ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: false,
            trace: Some(Arc::clone(&tracer)),
            ..ConsumerConfig::new("workers")
        };
        let consumer =
            PriorityConsumer::new(&groups, config, "jobs", PriorityConfig::default()).unwrap();
        consumer.subscribe().unwrap();
        let mut returned = 0u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        while returned < 10 && Instant::now() < deadline {
            returned += consumer.poll(Duration::from_millis(200)).unwrap().len() as u64;
        }
        assert_eq!(returned, 10, "{engine}");
        consumer.close().unwrap();
        let recorded = tracer.stats().recorded;
        tracer.close().unwrap();
        assert_eq!(
            recorded, returned,
            "{engine}: trace events recorded for {returned} records returned"
        );
    });
}

/// CPU ticks (user + system) the thread of this process named `name` has used so far.
#[cfg(target_os = "linux")]
fn thread_cpu_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let utime: u64 = rest.get(11)?.parse().ok()?;
        let stime: u64 = rest.get(12)?.parse().ok()?;
        return Some(utime + stime);
    }
    None
}

/// `stop_renewing` used to leave the renew thread's deadline in the past: its wait returned
/// at once, round after round, a thread spinning on a core until close.
#[cfg(target_os = "linux")]
#[test]
fn a_member_that_stopped_renewing_leaves_its_renew_thread_asleep() {
    use duolog::order::LeaseOptions;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &StoreOptions::default());
    store.create_topic("t", TopicConfig::default()).unwrap();
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    let config = OrderlyConfig {
        consume_threads: 1,
        lease: LeaseOptions {
            renew_interval: Duration::from_millis(20),
            expire_after: Duration::from_secs(10),
            ..LeaseOptions::default()
        },
        // A group name of its own: the thread is found by its name, `duolog-lease-<group>`.
        ..OrderlyConfig::new("sr")
    };
    let consumer = OrderlyConsumer::start(&groups, config, &["t"], |_: &ConsumerRecord, _: &_| {
        ConsumeOrderlyStatus::Success
    })
    .unwrap();
    consumer.stop_renewing();
    // Past the first due round.
    std::thread::sleep(Duration::from_millis(100));
    let before = thread_cpu_ticks("duolog-lease-sr").expect("renew thread");
    std::thread::sleep(Duration::from_secs(1));
    let after = thread_cpu_ticks("duolog-lease-sr").expect("renew thread");
    consumer.close().unwrap();
    // A clock tick is 10 ms on Linux: an asleep thread uses none, a spinning one about one
    // per 10 ms it is on a core.
    assert!(
        after - before < 5,
        "the renew thread used {} ticks in 1 s while not renewing",
        after - before
    );
}

/// When the pull thread fails (here: `auto_offset_reset = None` meets a new partition with no
/// committed offset), it used to wait for the calls in flight, then release the leases while
/// the workers went on taking queued records: a call could run with its lease released (so
/// another member could take the partition during it), and the consumer looked alive.
#[test]
fn a_failed_pull_thread_stops_the_workers_before_it_releases_the_leases() {
    use duolog::order::LeaseTable;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &StoreOptions::default());
    store.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..200 {
        store
            .append("t", 0, &[Message::new(format!("{i}"))])
            .unwrap();
    }
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    groups.commit_offsets("pf", &[("t", 0, 0)]).unwrap();
    let leases = LeaseTable::of(&groups);
    let unleased = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut config = OrderlyConfig {
        consume_threads: 1,
        commit_interval: Duration::from_millis(20),
        ..OrderlyConfig::new("pf")
    };
    config.consumer.auto_offset_reset = OffsetReset::None;
    let consumer = {
        let (leases, unleased, calls) = (
            Arc::clone(&leases),
            Arc::clone(&unleased),
            Arc::clone(&calls),
        );
        OrderlyConsumer::start(
            &groups,
            config,
            &["t"],
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
                let tp = duolog::consumer::TopicPartition::new(r.topic(), r.partition());
                if !leases
                    .lease("pf", &tp)
                    .is_some_and(|l| l.token == ctx.fencing_token && l.in_call)
                {
                    unleased.fetch_add(1, Ordering::SeqCst);
                }
                ConsumeOrderlyStatus::Success
            },
        )
        .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while calls.load(Ordering::SeqCst) < 3 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    store.add_partitions("t", 1).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while consumer.is_running() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!consumer.is_running(), "the pull thread failed");
    assert!(
        matches!(consumer.commit(), Err(duolog::Error::Closed)),
        "delivery stopped"
    );
    let handled = calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        handled,
        "no call starts after the pull thread failed"
    );
    assert_eq!(
        unleased.load(Ordering::SeqCst),
        0,
        "calls without their lease"
    );
    assert!(
        matches!(
            consumer.close(),
            Err(duolog::Error::NoCommittedOffset { .. })
        ),
        "close returns the pull thread's error"
    );
}
