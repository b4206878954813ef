//! The push consumer end to end, on both engines: every record handled, commits held back by a
//! slow record, back-pressure bounds, rebalances under load that never give one partition's
//! records to two members at once, graceful shutdown committing exactly what was handled,
//! retries with a measured back-off ending in `%DLQ%<group>`, handler panics, bad config.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duolog::consumer::{
    ConsumeResult, Consumer, ConsumerConfig, ConsumerRecord, GroupCoordinator, MessageHandler,
    ORIGIN_MESSAGE_ID, OffsetReset, PushConfig, PushConsumer, RECONSUME_TIMES, RETRY_TOPIC,
    RetryPolicy, TopicPartition, dlq_topic, retry_topic,
};
use duolog::{Error, LogStore, Message, StoreOptions, TopicConfig};

use common::consumer::{committed, open, produce_with, topic_t, wait_until};
use common::{for_each_engine, read_all, small_options};

fn config(group: &str) -> PushConfig {
    let mut c = PushConfig {
        consume_threads: 4,
        commit_interval: Duration::from_millis(50),
        retry: RetryPolicy::Customized(vec![Duration::from_millis(50)]),
        ..PushConfig::new(group)
    };
    c.consumer.auto_offset_reset = OffsetReset::Earliest;
    c
}

fn produce(store: &dyn LogStore, topic: &str, partition: u32, n: usize) {
    produce_with(store, topic, partition, n, |i| {
        Message::new(format!("{topic}-{partition}-{i}"))
    });
}

type Seen = Arc<Mutex<BTreeSet<(String, u32, u64)>>>;

fn key(r: &ConsumerRecord) -> (String, u32, u64) {
    (r.topic().to_owned(), r.partition(), r.offset())
}

#[test]
fn every_record_is_handled_and_a_slow_record_holds_its_partitions_committed_offset() {
    for_each_engine(|engine, dir| {
        let (_store, groups) = topic_t(engine, dir, 2, 300, produce);
        let seen: Seen = Arc::default();
        let release = Arc::new(AtomicBool::new(false));
        let (s, rel) = (Arc::clone(&seen), Arc::clone(&release));
        let handler = move |records: &[ConsumerRecord]| {
            for r in records {
                if (r.partition(), r.offset()) == (0, 10) {
                    while !rel.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                s.lock().unwrap().insert(key(r));
            }
            ConsumeResult::Success
        };
        let push = PushConsumer::start(&groups, config("g"), &["t"], Arc::new(handler)).unwrap();
        wait_until("599 records handled", || seen.lock().unwrap().len() == 599);
        wait_until("partition 1 committed to its end", || {
            committed(&groups, "g", "t", 1) == Some(300)
        });
        // Several commit intervals later the slow record still holds partition 0 at it.
        std::thread::sleep(Duration::from_millis(300));
        let held_at = committed(&groups, "g", "t", 0);
        // Released before asserting: a failed assertion must not leave shutdown waiting for it.
        release.store(true, Ordering::Release);
        assert_eq!(held_at, Some(10));
        wait_until("partition 0 committed to its end", || {
            committed(&groups, "g", "t", 0) == Some(300)
        });
        push.shutdown().unwrap();
        let all: BTreeSet<_> = (0..2)
            .flat_map(|p| (0..300).map(move |o| ("t".to_owned(), p, o)))
            .collect();
        assert_eq!(*seen.lock().unwrap(), all);
    });
}

/// Concurrency per partition of the handler calls, and the offsets running together.
#[derive(Default)]
struct Concurrency {
    running: Mutex<HashMap<u32, BTreeSet<u64>>>,
    max_running: AtomicUsize,
    max_span: AtomicUsize,
}

impl Concurrency {
    fn enter(&self, r: &ConsumerRecord) {
        let mut running = self.running.lock().unwrap();
        let set = running.entry(r.partition()).or_default();
        set.insert(r.offset());
        self.max_running.fetch_max(set.len(), Ordering::SeqCst);
        let span = set.last().unwrap() - set.first().unwrap();
        self.max_span.fetch_max(span as usize, Ordering::SeqCst);
    }
    fn leave(&self, r: &ConsumerRecord) {
        let mut running = self.running.lock().unwrap();
        running.get_mut(&r.partition()).unwrap().remove(&r.offset());
    }
}

/// With 16 threads and every handler call slow, only `pull_threshold_for_queue` records of a
/// partition are ever in flight (its process queue, sampled, and the handler calls running at
/// once); with a slow first record, nothing more than `consume_concurrently_max_span` past it
/// is handled until it finishes.
#[test]
fn back_pressure_keeps_each_partition_within_its_thresholds() {
    for_each_engine(|engine, dir| {
        let (_store, groups) = topic_t(engine, dir, 2, 200, produce);

        // The count threshold.
        let conc = Arc::new(Concurrency::default());
        let handled = Arc::new(AtomicUsize::new(0));
        let (c, h) = (Arc::clone(&conc), Arc::clone(&handled));
        let handler = move |records: &[ConsumerRecord]| {
            for r in records {
                c.enter(r);
            }
            std::thread::sleep(Duration::from_millis(2));
            for r in records {
                c.leave(r);
            }
            h.fetch_add(records.len(), Ordering::SeqCst);
            ConsumeResult::Success
        };
        let cfg = PushConfig {
            consume_threads: 16,
            pull_threshold_for_queue: 5,
            ..config("count")
        };
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        let mut sampled_max = 0;
        wait_until("400 records handled", || {
            sampled_max = push
                .in_flight()
                .values()
                .copied()
                .fold(sampled_max, usize::max);
            handled.load(Ordering::SeqCst) == 400
        });
        push.shutdown().unwrap();
        assert!(sampled_max <= 5, "a process queue held {sampled_max} > 5");
        let running = conc.max_running.load(Ordering::SeqCst);
        assert!(
            running <= 5,
            "{running} handler calls of one partition at once"
        );
        assert!(
            running >= 2,
            "the pool ran only {running} at once: test too weak"
        );

        // The span threshold: offset 0 of partition 0 is slow.
        let release = Arc::new(AtomicBool::new(false));
        let max_while_stuck = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (rel, m, d) = (
            Arc::clone(&release),
            Arc::clone(&max_while_stuck),
            Arc::clone(&done),
        );
        let handler = move |records: &[ConsumerRecord]| {
            for r in records {
                if r.partition() == 0 {
                    if r.offset() == 0 {
                        while !rel.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    } else if !rel.load(Ordering::Acquire) {
                        m.fetch_max(r.offset() as usize, Ordering::SeqCst);
                    }
                }
                d.fetch_add(1, Ordering::SeqCst);
            }
            ConsumeResult::Success
        };
        let cfg = PushConfig {
            consume_concurrently_max_span: 7,
            ..config("span")
        };
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        // Partition 1 is not held back by partition 0.
        wait_until("partition 1 and 7 of partition 0 handled", || {
            done.load(Ordering::SeqCst) == 207
        });
        std::thread::sleep(Duration::from_millis(200));
        let (max, n) = (
            max_while_stuck.load(Ordering::SeqCst),
            done.load(Ordering::SeqCst),
        );
        let in_flight = push.in_flight()[&TopicPartition::new("t", 0)];
        // Released before asserting: a failed assertion must not leave shutdown waiting for it.
        release.store(true, Ordering::Release);
        assert_eq!((max, n), (7, 207));
        assert!(in_flight <= 8, "{in_flight} in flight");
        wait_until("everything handled", || done.load(Ordering::SeqCst) == 400);
        push.shutdown().unwrap();
    });
}

/// Who is handling each partition now: (member, calls running).
type Owners = Arc<Mutex<HashMap<u32, (usize, usize)>>>;

fn tracking_handler(
    member: usize,
    owners: Owners,
    violations: Arc<AtomicUsize>,
    seen: Seen,
) -> Arc<dyn MessageHandler> {
    Arc::new(move |records: &[ConsumerRecord]| {
        let p = records[0].partition();
        {
            let mut o = owners.lock().unwrap();
            let e = o.entry(p).or_insert((member, 0));
            if e.1 > 0 && e.0 != member {
                violations.fetch_add(1, Ordering::SeqCst);
            }
            *e = (member, e.1 + 1);
        }
        // Long enough for a new owner to start on the partition if a revoke did not wait.
        std::thread::sleep(Duration::from_millis(5));
        {
            let mut s = seen.lock().unwrap();
            for r in records {
                s.insert(key(r));
            }
        }
        owners.lock().unwrap().get_mut(&p).unwrap().1 -= 1;
        ConsumeResult::Success
    })
}

/// Three members join and leave while a producer appends: a partition's records are never
/// being handled by two members at once, and every record is handled.
#[test]
fn rebalancing_under_load_never_hands_a_partition_to_two_members_and_skips_nothing() {
    for_each_engine(|engine, dir| {
        let (store, groups) = topic_t(engine, dir, 6, 0, produce);
        let owners: Owners = Arc::default();
        let violations = Arc::new(AtomicUsize::new(0));
        let seen: Seen = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    for p in 0..6 {
                        store
                            .append("t", p, &[Message::new(format!("{p}-{n}"))])
                            .unwrap();
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let start = |member: usize| {
            let cfg = PushConfig {
                consume_batch_max: 3,
                ..config("g")
            };
            let h = tracking_handler(
                member,
                Arc::clone(&owners),
                Arc::clone(&violations),
                Arc::clone(&seen),
            );
            PushConsumer::start(&groups, cfg, &["t"], h).unwrap()
        };
        let a = start(0);
        std::thread::sleep(Duration::from_millis(100));
        let c = start(1);
        // A third member joins (taking partitions from both) and leaves, again and again.
        for round in 0..4 {
            std::thread::sleep(Duration::from_millis(100));
            let b = start(2 + round);
            std::thread::sleep(Duration::from_millis(100));
            b.shutdown().unwrap();
        }
        let b = start(9);
        std::thread::sleep(Duration::from_millis(100));
        drop(a);
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Release);
        producer.join().unwrap();
        let total: usize = (0..6)
            .map(|p| store.bounds("t", p).unwrap().end as usize)
            .sum();
        wait_until("every record handled", || {
            seen.lock().unwrap().len() == total
        });
        b.shutdown().unwrap();
        c.shutdown().unwrap();
        assert_eq!(violations.load(Ordering::SeqCst), 0);
        for p in 0..6 {
            let end = store.bounds("t", p).unwrap().end;
            assert_eq!(committed(&groups, "g", "t", p), Some(end));
        }
    });
}

/// Shutdown in the middle of a backlog: the committed offset of each partition is exactly one
/// past a gap-free prefix of handled records, and a consumer started again handles exactly
/// the rest — no record twice, none skipped.
#[test]
fn graceful_shutdown_commits_exactly_what_was_handled() {
    for_each_engine(|engine, dir| {
        let (_store, groups) = topic_t(engine, dir, 2, 400, produce);
        let counts: Arc<Mutex<BTreeMap<(u32, u64), usize>>> = Arc::default();
        let handler = |counts: Arc<Mutex<BTreeMap<(u32, u64), usize>>>| {
            Arc::new(move |records: &[ConsumerRecord]| {
                std::thread::sleep(Duration::from_millis(1));
                let mut c = counts.lock().unwrap();
                for r in records {
                    *c.entry((r.partition(), r.offset())).or_default() += 1;
                }
                ConsumeResult::Success
            })
        };
        let cfg = PushConfig {
            commit_interval: Duration::from_secs(3600),
            pull_threshold_for_queue: 50,
            ..config("g")
        };
        let push = PushConsumer::start(&groups, cfg.clone(), &["t"], handler(Arc::clone(&counts)))
            .unwrap();
        wait_until("100 handled", || counts.lock().unwrap().len() >= 100);
        push.shutdown().unwrap();
        let first: BTreeMap<(u32, u64), usize> = counts.lock().unwrap().clone();
        assert!(first.len() < 800, "shut down before the end");
        for p in 0..2 {
            let handled: Vec<u64> = first.keys().filter(|k| k.0 == p).map(|k| k.1).collect();
            let c = committed(&groups, "g", "t", p).unwrap_or(0);
            assert_eq!(handled, (0..c).collect::<Vec<_>>(), "partition {p}");
        }
        let push = PushConsumer::start(&groups, cfg, &["t"], handler(Arc::clone(&counts))).unwrap();
        wait_until("all 800 handled", || counts.lock().unwrap().len() == 800);
        push.shutdown().unwrap();
        let counts = counts.lock().unwrap();
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
        assert!(twice.is_empty(), "handled more than once: {twice:?}");
    });
}

/// A handler that always fails: the record is delivered 1 + `max_reconsume_times` times, each
/// retry after at least its back-off, then lands in `%DLQ%<group>` with its origin and count.
#[test]
fn an_always_failing_record_ends_in_the_dlq_after_exactly_max_reconsume_times_retries() {
    for_each_engine(|engine, dir| {
        let (store, groups) = topic_t(engine, dir, 1, 0, produce);
        let deliveries: Arc<Mutex<Vec<(Instant, String, u32)>>> = Arc::default();
        let d = Arc::clone(&deliveries);
        let handler = move |records: &[ConsumerRecord]| {
            for r in records {
                let times = r
                    .record()
                    .properties()
                    .get(RECONSUME_TIMES)
                    .map_or(0, |v| v.parse().unwrap());
                d.lock()
                    .unwrap()
                    .push((Instant::now(), r.topic().to_owned(), times));
            }
            ConsumeResult::ReconsumeLater
        };
        let delays = [50u64, 100, 150];
        let cfg = PushConfig {
            retry: RetryPolicy::Customized(
                delays.iter().map(|&ms| Duration::from_millis(ms)).collect(),
            ),
            max_reconsume_times: 4,
            ..config("g")
        };
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        store
            .append("t", 0, &[Message::new("m").with_key("k").with_tags("TagA")])
            .unwrap();
        let dlq = dlq_topic("g");
        wait_until("the DLQ record", || {
            store.bounds(&dlq, 0).is_ok_and(|b| b.end == 1)
        });
        std::thread::sleep(Duration::from_millis(400));
        push.shutdown().unwrap();

        let deliveries = deliveries.lock().unwrap();
        let counts: Vec<u32> = deliveries.iter().map(|d| d.2).collect();
        assert_eq!(counts, [0, 1, 2, 3, 4]);
        assert_eq!(deliveries[0].1, "t");
        assert!(deliveries[1..].iter().all(|d| d.1 == retry_topic("g")));
        // Each retry waited at least its back-off (50, 100, 150, then the last again), and
        // not absurdly longer. Due times are whole milliseconds of the delay layer's clock
        // (the send-back time truncated to the millisecond, plus the back-off), so measured
        // with `Instant` a retry may come up to 1 ms before the full back-off, never more.
        for (i, pair) in deliveries.windows(2).enumerate() {
            let gap = pair[1].0 - pair[0].0;
            let want = Duration::from_millis(delays[i.min(delays.len() - 1)]);
            assert!(
                gap + Duration::from_millis(1) >= want,
                "retry {i} after {gap:?} < {want:?}"
            );
            assert!(
                gap < want + Duration::from_secs(3),
                "retry {i} after {gap:?}"
            );
        }
        assert_eq!(store.bounds(&retry_topic("g"), 0).unwrap().end, 4);
        let dead = read_all(&*store, &dlq, 0);
        assert_eq!(dead.len(), 1);
        let props = dead[0].properties();
        assert_eq!(dead[0].body(), b"m");
        assert_eq!(dead[0].key(), Some(&b"k"[..]));
        assert_eq!(dead[0].tags(), Some("TagA"));
        assert_eq!(props.get(RETRY_TOPIC), Some("t"));
        assert_eq!(props.get(ORIGIN_MESSAGE_ID), Some("t-0-0"));
        assert_eq!(props.get(RECONSUME_TIMES), Some("5"));
        // Each property once, however many retries it went through.
        assert_eq!(
            props.iter().filter(|(k, _)| *k == RECONSUME_TIMES).count(),
            1
        );
        // Everything was committed past: the original, the four retries.
        assert_eq!(committed(&groups, "g", "t", 0), Some(1));
        assert_eq!(committed(&groups, "g", &retry_topic("g"), 0), Some(4));
    });
}

/// A handler that panics on some records does not kill the pool (one worker here): the
/// others are handled, and the panicked one is retried as a `ReconsumeLater` would be.
#[test]
fn a_handler_panic_is_a_reconsume_later_and_the_worker_survives() {
    for_each_engine(|engine, dir| {
        let (store, groups) = topic_t(engine, dir, 1, 20, produce);
        let seen: Seen = Arc::default();
        let s = Arc::clone(&seen);
        let handler = move |records: &[ConsumerRecord]| {
            for r in records {
                if r.topic() == "t" && r.offset() % 5 == 0 {
                    panic!("handler bug on {}", r.offset());
                }
                s.lock().unwrap().insert(key(r));
            }
            ConsumeResult::Success
        };
        let cfg = PushConfig {
            consume_threads: 1,
            ..config("g")
        };
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        // 16 first deliveries and the 4 retries of the panicked ones.
        wait_until("20 records handled", || seen.lock().unwrap().len() == 20);
        push.shutdown().unwrap();
        let retried: Vec<String> = read_all(&*store, &retry_topic("g"), 0)
            .iter()
            .map(|r| r.properties().get(ORIGIN_MESSAGE_ID).unwrap().to_owned())
            .collect();
        assert_eq!(retried, ["t-0-0", "t-0-5", "t-0-10", "t-0-15"]);
    });
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &StoreOptions::default());
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    let noop: Arc<dyn MessageHandler> = Arc::new(|_: &[ConsumerRecord]| ConsumeResult::Success);
    let base = config("g");
    let bad = [
        (
            "consume_threads",
            PushConfig {
                consume_threads: 0,
                ..base.clone()
            },
        ),
        (
            "consume_batch_max",
            PushConfig {
                consume_batch_max: 0,
                ..base.clone()
            },
        ),
        (
            "pull_batch",
            PushConfig {
                pull_batch: 0,
                ..base.clone()
            },
        ),
        (
            "pull_threshold_for_queue",
            PushConfig {
                pull_threshold_for_queue: 0,
                ..base.clone()
            },
        ),
        (
            "pull_threshold_size_for_queue",
            PushConfig {
                pull_threshold_size_for_queue: 0,
                ..base.clone()
            },
        ),
        (
            "consume_concurrently_max_span",
            PushConfig {
                consume_concurrently_max_span: 0,
                ..base.clone()
            },
        ),
        (
            "commit_interval",
            PushConfig {
                commit_interval: Duration::ZERO,
                ..base.clone()
            },
        ),
        (
            "delay",
            PushConfig {
                retry: RetryPolicy::Customized(Vec::new()),
                ..base.clone()
            },
        ),
        (
            "multiplier",
            PushConfig {
                retry: RetryPolicy::Exponential {
                    initial: Duration::from_secs(1),
                    multiplier: 0.5,
                    max: Duration::from_secs(2),
                },
                ..base.clone()
            },
        ),
        ("group", PushConfig::new("")),
        ("valid topic name", PushConfig::new("a group with spaces")),
        ("valid topic name", PushConfig::new("g".repeat(130))),
    ];
    for (word, cfg) in bad {
        match PushConsumer::start(&groups, cfg, &["t"], Arc::clone(&noop)) {
            Err(Error::InvalidArgument(msg)) => {
                assert!(msg.contains(word), "{msg:?} does not name {word}")
            }
            other => panic!("{word}: {other:?}"),
        }
    }
    // Nothing was left behind by the refusals.
    assert!(groups.owners("g").is_empty());
}

/// `pause`: a paused partition is neither fetched nor waited on, keeps its position, and is
/// fetched again after `resume`; a partition not held is `NotAssigned`.
#[test]
fn a_paused_partition_is_not_fetched_and_keeps_its_position() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        produce(&*store, "t", 0, 10);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let cfg = ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            // A share of 4 for each of the 2 partitions.
            max_poll_records: 8,
            ..ConsumerConfig::new("g")
        };
        let c = Consumer::new(&groups, cfg).unwrap();
        c.subscribe(&["t"]).unwrap();
        assert_eq!(c.poll(Duration::from_secs(5)).unwrap().len(), 4);
        c.pause(&[("t", 0)]).unwrap();
        assert!(matches!(
            c.pause(&[("t", 7)]),
            Err(Error::NotAssigned { partition: 7, .. })
        ));
        assert_eq!(c.paused(), [TopicPartition::new("t", 0)]);
        let t = Instant::now();
        assert!(c.poll(Duration::from_millis(100)).unwrap().is_empty());
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(c.position("t", 0).unwrap(), 4);
        // An append to the paused partition does not end a poll; one to the other does.
        store.append("t", 0, &[Message::new("x")]).unwrap();
        store.append("t", 1, &[Message::new("y")]).unwrap();
        let got = c.poll(Duration::from_secs(5)).unwrap();
        assert_eq!((got.len(), got[0].partition()), (1, 1));
        // A resume wakes a poll blocked on the other partitions.
        let c = Arc::new(c);
        let resumer = {
            let c = Arc::clone(&c);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                c.resume(&[("t", 0)]).unwrap();
            })
        };
        let t = Instant::now();
        let got = c.poll(Duration::from_secs(30)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(got[0].offset(), 4);
        resumer.join().unwrap();
        assert!(c.paused().is_empty());
    });
}

/// Power cuts (every crash mode of the simulated disk) taken while a third of the records fail:
/// on every disk image, each failed record below the group's committed offset has its copy in
/// `%RETRY%<group>` or scheduled in the delay layer — an offset is never committed past a record
/// whose retry could be lost.
#[test]
fn a_power_cut_never_loses_a_failed_record_below_the_committed_offset() {
    use duolog::consumer::ORIGIN_OFFSET;
    use duolog::io::{CrashMode, SimFs};
    for engine in common::engines() {
        let sim = SimFs::new();
        let opts = |sim: &SimFs| StoreOptions {
            fs: Arc::new(sim.clone()),
            ..small_options(engine)
        };
        let store: Arc<dyn LogStore> = Arc::from(duolog::open("/s", opts(&sim)).unwrap());
        store.create_topic("t", TopicConfig::default()).unwrap();
        produce(&*store, "t", 0, 300);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let handler = |records: &[ConsumerRecord]| {
            let fails = records
                .iter()
                .any(|r| r.topic() == "t" && r.offset() % 3 == 0);
            std::thread::sleep(Duration::from_micros(200));
            if fails {
                ConsumeResult::ReconsumeLater
            } else {
                ConsumeResult::Success
            }
        };
        let cfg = PushConfig {
            commit_interval: Duration::from_millis(20),
            retry: RetryPolicy::Customized(vec![Duration::from_millis(10)]),
            ..config("g")
        };
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        let mut images = Vec::new();
        let mut seed = 0u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        while committed(&groups, "g", "t", 0) != Some(300) {
            assert!(
                Instant::now() < deadline,
                "{engine}: never committed the end"
            );
            let mode = CrashMode::ALL[seed as usize % CrashMode::ALL.len()];
            images.push((mode, sim.crash(mode, seed)));
            seed += 1;
            std::thread::sleep(Duration::from_millis(3));
        }
        images.push((
            CrashMode::DropUnsynced,
            sim.crash(CrashMode::DropUnsynced, seed),
        ));
        push.shutdown().unwrap();
        drop(groups);
        store.close().unwrap();

        let mut passed_failures = 0;
        for (i, (mode, disk)) in images.iter().enumerate() {
            let ctx = format!("{engine}: image {i} ({mode:?})");
            let store: Arc<dyn LogStore> = Arc::from(
                duolog::open("/s", opts(disk)).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}")),
            );
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let c = committed(&groups, "g", "t", 0).unwrap_or(0);
            // A copy is in the retry topic, or still scheduled in the delay layer's topic.
            let mut copies = BTreeSet::new();
            for topic in [retry_topic("g").as_str(), duolog::delay::MESSAGES_TOPIC] {
                if store.bounds(topic, 0).is_ok() {
                    copies.extend(read_all(&*store, topic, 0).iter().filter_map(|r| {
                        r.properties()
                            .get(ORIGIN_OFFSET)
                            .and_then(|o| o.parse::<u64>().ok())
                    }));
                }
            }
            for o in (0..c).filter(|o| o % 3 == 0) {
                assert!(
                    copies.contains(&o),
                    "{ctx}: committed {c} past failed {o}, no copy"
                );
                passed_failures += 1;
            }
            drop(groups);
            store.close().unwrap();
        }
        eprintln!(
            "{engine}: {} images, {passed_failures} failed records checked",
            images.len()
        );
        assert!(
            passed_failures > 0,
            "{engine}: no image had a commit past a failure"
        );
    }
}

/// Retry copies written before the group ever committed its retry topic (a member that crashed
/// right after sending back) are delivered even with `auto_offset_reset` = latest: their
/// originals were committed past, so skipping them would lose them.
#[test]
fn retry_copies_from_before_the_first_commit_are_delivered_even_with_latest_reset() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let retry = retry_topic("g");
        store.create_topic(&retry, TopicConfig::default()).unwrap();
        let copy = Message::new("left by a crashed member")
            .with_property(RETRY_TOPIC, "t")
            .with_property(ORIGIN_MESSAGE_ID, "t-0-0")
            .with_property(RECONSUME_TIMES, "1");
        store.append(&retry, 0, &[copy]).unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let seen: Seen = Arc::default();
        let s = Arc::clone(&seen);
        let handler = move |records: &[ConsumerRecord]| {
            s.lock().unwrap().extend(records.iter().map(key));
            ConsumeResult::Success
        };
        let mut cfg = config("g");
        cfg.consumer.auto_offset_reset = OffsetReset::Latest;
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        wait_until("the retry copy handled", || {
            !seen.lock().unwrap().is_empty()
        });
        push.shutdown().unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            BTreeSet::from([(retry.clone(), 0, 0)])
        );
        assert_eq!(committed(&groups, "g", &retry, 0), Some(1));
    });
}

/// Durations past what an `Instant` or a millisecond count holds are taken as "never", not a
/// panic: no timed commit (shutdown still commits), a retry held for ever (its offset held).
#[test]
fn extreme_durations_mean_never_and_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &small_options(duolog::EngineKind::CommitLog));
    store.create_topic("t", TopicConfig::default()).unwrap();
    produce(&*store, "t", 0, 3);
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let handler = move |records: &[ConsumerRecord]| {
        c.fetch_add(records.len(), Ordering::SeqCst);
        if records[0].offset() == 1 {
            ConsumeResult::ReconsumeLater
        } else {
            ConsumeResult::Success
        }
    };
    let cfg = PushConfig {
        commit_interval: Duration::MAX,
        retry: RetryPolicy::Exponential {
            initial: Duration::MAX,
            multiplier: 2.0,
            max: Duration::MAX,
        },
        ..config("g")
    };
    let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
    // The copy waits in the delay layer (due in about 292 million years).
    wait_until("the copy scheduled", || {
        store
            .bounds(duolog::delay::MESSAGES_TOPIC, 0)
            .is_ok_and(|b| b.end == 1)
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(committed(&groups, "g", "t", 0), None, "no timed commit");
    push.shutdown().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the copy is held, not handled"
    );
    assert_eq!(committed(&groups, "g", "t", 0), Some(3));
    assert_eq!(committed(&groups, "g", &retry_topic("g"), 0), Some(0));
}
