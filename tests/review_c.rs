//! Review C (consumer layer: push, retry, trace, delay-backed retries): failing tests for
//! defects found in review. Each is ignored until its fix lands.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use duolog::consumer::{
    ConsumeResult, ConsumerRecord, GroupCoordinator, OffsetReset, PushConfig, PushConsumer,
    RetryPolicy, TraceConfig, TraceKind, Tracer, dlq_topic, retry_topic,
};
use duolog::{LogStore, Message, StoreOptions, TopicConfig};

use common::{for_each_engine, read_all, small_options};

fn open(dir: &std::path::Path, opts: &StoreOptions) -> Arc<dyn LogStore> {
    Arc::from(duolog::open(dir, opts.clone()).expect("open"))
}

fn config(group: &str) -> PushConfig {
    let mut c = PushConfig {
        consume_threads: 2,
        commit_interval: Duration::from_millis(50),
        retry: RetryPolicy::Customized(vec![Duration::from_millis(50)]),
        ..PushConfig::new(group)
    };
    c.consumer.auto_offset_reset = OffsetReset::Earliest;
    c
}

fn committed(groups: &GroupCoordinator, group: &str, topic: &str, p: u32) -> Option<u64> {
    groups
        .committed_offsets(group)
        .get(topic)
        .and_then(|t| t.get(&p))
        .copied()
}

/// trace.rs module docs and ARCHITECTURE.md ("Message trace") say a push consumer reports each
/// handled message with `Tracer::consumed` (`SubAfter`: cost, success); push.rs never calls it,
/// so with `ConsumerConfig::trace` set a push consumer records `SubBefore` only.
#[test]
fn a_traced_push_consumer_records_sub_after_for_each_handled_record() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let tracer = Arc::new(Tracer::new(Arc::clone(&store), TraceConfig::default()).unwrap());
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let handled = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&handled);
        let handler = move |records: &[ConsumerRecord]| {
            h.fetch_add(records.len(), Ordering::SeqCst);
            ConsumeResult::Success
        };
        let mut cfg = config("g");
        cfg.consumer.trace = Some(Arc::clone(&tracer));
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        store.append("t", 0, &[Message::new("m")]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while handled.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "never handled");
            std::thread::sleep(Duration::from_millis(5));
        }
        push.shutdown().unwrap();
        tracer.close().unwrap();
        let found = Tracer::query(&*store, "t-0-0").unwrap();
        let kinds: Vec<TraceKind> = found.events.iter().map(|e| e.kind).collect();
        assert!(kinds.contains(&TraceKind::SubBefore), "{kinds:?}");
        assert!(
            kinds.contains(&TraceKind::SubAfter),
            "a handled record has no SubAfter event: {kinds:?}"
        );
    });
}

/// A failing record whose retry copy cannot be stored (the copy's retry properties push it
/// over `max_message_bytes`) is never sent back nor dead-lettered: `send_back` fails on every
/// attempt, the record is held and handed to the handler again every 5 s forever, and its
/// partition's committed offset never passes it (after `consume_concurrently_max_span` more
/// records the partition stops altogether). Nothing in the push consumer gives up on it.
#[test]
fn a_failed_record_too_large_to_copy_does_not_stall_its_partition_forever() {
    for_each_engine(|engine, dir| {
        let opts = StoreOptions {
            max_message_bytes: 2048,
            ..small_options(engine)
        };
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        store.create_topic("probe", TopicConfig::default()).unwrap();
        // The largest body the store takes as a plain message.
        let mut size = 0;
        for n in (1..2048).rev() {
            if store
                .append("probe", 0, &[Message::new(vec![b'x'; n])])
                .is_ok()
            {
                size = n;
                break;
            }
        }
        assert!(size > 0);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let handler = move |records: &[ConsumerRecord]| {
            if records.iter().any(|r| r.offset() == 0 && r.topic() == "t") {
                c.fetch_add(1, Ordering::SeqCst);
                return ConsumeResult::ReconsumeLater;
            }
            ConsumeResult::Success
        };
        let cfg = PushConfig {
            max_reconsume_times: 0,
            ..config("g")
        };
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        // Within a few bytes of the limit: its copy with the retry properties does not fit.
        // (A record so close to the limit that even its bare copy cannot be written under the
        // longer dead-letter topic name on the CommitLog engine still waits: a known limit.)
        store
            .append("t", 0, &[Message::new(vec![b'x'; size - 16])])
            .unwrap();
        store.append("t", 0, &[Message::new("after")]).unwrap();
        // Two send-back retry periods (5 s each) and some.
        std::thread::sleep(Duration::from_secs(12));
        push.shutdown().unwrap();
        let dlq = read_all(&*store, &dlq_topic("g"), 0);
        let retried = read_all(&*store, &retry_topic("g"), 0);
        assert!(
            committed(&groups, "g", "t", 0) == Some(2) || !dlq.is_empty() || !retried.is_empty(),
            "record t-0-0 handled {} times, never dead-lettered nor retried; committed offset \
             still {:?}",
            calls.load(Ordering::SeqCst),
            committed(&groups, "g", "t", 0)
        );
    });
}

/// `DelayQueue::shared` hands out the live queue of a store, or opens a new one. When the last
/// holder drops it, `close` (joining the layer's threads) runs *after* the weak reference is
/// already dead but *before* the directory leaves `SERVED`: a push consumer starting in that
/// window gets "a DelayQueue is already open on the store" and fails to start.
#[test]
fn push_consumers_of_two_groups_started_and_stopped_concurrently_always_start() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let groups = Arc::new(GroupCoordinator::new(Arc::clone(&store)).unwrap());
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|g| {
                let groups = Arc::clone(&groups);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || -> Result<(), String> {
                    let mut first = Ok(());
                    for i in 0..60 {
                        barrier.wait();
                        let handler = |_: &[ConsumerRecord]| ConsumeResult::Success;
                        match PushConsumer::start(&groups, config(g), &["t"], Arc::new(handler)) {
                            Ok(push) => {
                                if let Err(e) = push.shutdown() {
                                    first = first
                                        .and(Err(format!("group {g}, round {i}: shutdown: {e}")));
                                }
                            }
                            Err(e) => {
                                first = first
                                    .and(Err(format!("group {g}, round {i}: start failed: {e}")));
                            }
                        }
                    }
                    first
                })
            })
            .collect();
        let mut errors = Vec::new();
        for t in threads {
            if let Err(e) = t.join().unwrap() {
                errors.push(e);
            }
        }
        assert!(errors.is_empty(), "{errors:?}");
    });
}

/// `reconsume_times` reads `RECONSUME_TIME` from any record, not only from copies in
/// `%RETRY%<group>`: a message re-published to its topic from the DLQ (it keeps the property,
/// as every copy does) or any message carrying the property goes straight to `%DLQ%<group>` on
/// its first failure, with no retry. RocketMQ keeps the count in the stored message's
/// `reconsumeTimes`, which a new send resets to 0.
#[test]
fn a_republished_dead_letter_is_retried_again_on_failure() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        // Fails the first delivery only.
        let handler = move |_: &[ConsumerRecord]| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                ConsumeResult::ReconsumeLater
            } else {
                ConsumeResult::Success
            }
        };
        let push = PushConsumer::start(&groups, config("g"), &["t"], Arc::new(handler)).unwrap();
        // An operator re-sends a dead letter to its topic, properties and all.
        store
            .append(
                "t",
                0,
                &[Message::new("m")
                    .with_property("RETRY_TOPIC", "t")
                    .with_property("RECONSUME_TIME", "17")],
            )
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        push.shutdown().unwrap();
        assert!(
            store.bounds(&dlq_topic("g"), 0).is_err()
                || read_all(&*store, &dlq_topic("g"), 0).is_empty(),
            "its first failure sent it to the DLQ; handled {} times",
            calls.load(Ordering::SeqCst)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    });
}

/// `send_back` computes the copy's due time from the system clock (`clock::now_ms`) and hands
/// an absolute time to `DelayQueue::schedule`, whose queue measures time on its own
/// `DelayOptions::clock`. With a queue on another clock (a `ManualClock`, as the delay tests
/// use, given through `PushConfig::delay`) the back-off is not measured from "now" on that
/// clock: here the queue's clock is an hour behind, so advancing it by the 50 ms back-off (and
/// more) never delivers the retry. (`schedule_after` would measure on the queue's clock.)
#[test]
fn the_retry_back_off_is_measured_on_the_delay_queues_clock() {
    use duolog::delay::{DelayOptions, DelayQueue, ManualClock};
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let sys_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let clock = Arc::new(ManualClock::new(sys_now - 3_600_000));
        let queue = DelayQueue::open(
            Arc::clone(&store),
            DelayOptions {
                precision: Duration::from_millis(10),
                clock: Arc::clone(&clock) as Arc<dyn duolog::delay::Clock>,
                ..DelayOptions::default()
            },
        )
        .unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let handler = move |_: &[ConsumerRecord]| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                ConsumeResult::ReconsumeLater
            } else {
                ConsumeResult::Success
            }
        };
        let cfg = PushConfig {
            delay: Some(Arc::new(queue)),
            ..config("g")
        };
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        store.append("t", 0, &[Message::new("m")]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "never handled");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Well past the 50 ms back-off on the queue's clock.
        std::thread::sleep(Duration::from_millis(200));
        clock.advance(Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(5);
        while calls.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        push.shutdown().unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the retry was not delivered a minute after its 50 ms back-off on the queue's clock"
        );
    });
}

/// Back-pressure gives records back by `seek`: once a partition's process queue is full, every
/// resume (as soon as one record finishes) fetches `pull_batch` records, takes one and gives the
/// rest back — each record is read from the store and returned by `poll` up to `pull_batch`
/// times. With `ConsumerConfig::trace` each of those polls records a `SubBefore`, so a backlog
/// behind a slow handler writes about `pull_batch` delivery events per message (and fills the
/// tracer's queue, dropping real events).
#[test]
fn back_pressure_delivers_each_record_to_poll_about_once() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let n = 300u64;
        let batch: Vec<Message> = (0..n).map(|i| Message::new(format!("m{i}"))).collect();
        store.append("t", 0, &batch).unwrap();
        let tracer = Arc::new(
            Tracer::new(
                Arc::clone(&store),
                TraceConfig {
                    queue_capacity: 100_000,
                    ..TraceConfig::default()
                },
            )
            .unwrap(),
        );
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let handled = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&handled);
        let handler = move |records: &[ConsumerRecord]| {
            std::thread::sleep(Duration::from_millis(2));
            h.fetch_add(records.len(), Ordering::SeqCst);
            ConsumeResult::Success
        };
        // A threshold of two pull batches: a paused partition resumes once a whole batch fits.
        // (Smaller thresholds resume at half the queue free: a record is then read at most
        // pull_batch / (threshold / 2) times.)
        let mut cfg = PushConfig {
            pull_threshold_for_queue: 64,
            ..config("g")
        };
        cfg.consumer.trace = Some(Arc::clone(&tracer));
        let push = PushConsumer::start(&groups, cfg, &["t"], Arc::new(handler)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while (handled.load(Ordering::SeqCst) as u64) < n {
            assert!(Instant::now() < deadline, "not all handled");
            std::thread::sleep(Duration::from_millis(5));
        }
        push.shutdown().unwrap();
        tracer.close().unwrap();
        let stats = tracer.stats();
        // SubBefore at each poll that returned a record, SubAfter once per handled record.
        let deliveries = stats.recorded + stats.dropped - n;
        assert!(
            deliveries <= n + 32,
            "{n} records, {deliveries} SubBefore deliveries recorded by poll"
        );
    });
}
