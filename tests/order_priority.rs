//! Priority delivery (`duolog::order`, RIP-80): priorities 0–9 on a priority topic, a
//! consumer that drains higher priorities first while a backlog exists, the aging rule, and
//! commits — on both engines.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::for_each_engine;
use common::priority::{jobs_store, member};
use duolog::consumer::{ConsumerConfig, GroupCoordinator, OffsetReset};
use duolog::order::{
    PriorityConfig, PriorityConsumer, PriorityProducer, create_priority_topic, message_priority,
};
use duolog::{EngineKind, Error, LogStore, Message, TopicConfig};

fn consumer_config(max_poll_records: usize) -> ConsumerConfig {
    ConsumerConfig {
        auto_offset_reset: OffsetReset::Earliest,
        enable_auto_commit: false,
        max_poll_records,
        ..ConsumerConfig::new("workers")
    }
}

/// No aging: the drain order is strict whatever the machine's speed.
fn strict() -> PriorityConfig {
    PriorityConfig {
        max_starvation: Duration::MAX,
    }
}

/// Sends `per_priority` messages of every priority, interleaved (0, 1, … 9, 0, 1, …).
fn backlog_of_every_priority(store: &Arc<dyn LogStore>, per_priority: usize) {
    let producer = PriorityProducer::new(Arc::clone(store), "jobs").unwrap();
    for i in 0..per_priority {
        for p in 0..=9u8 {
            producer
                .send(&Message::new(format!("p{p}-{i}")), p)
                .unwrap();
        }
    }
}

/// Polls until `n` records came or `limit` passed; returns their priorities.
fn drain(c: &PriorityConsumer, n: usize, limit: Duration) -> Vec<u8> {
    let t = Instant::now();
    let mut got = Vec::new();
    while got.len() < n && t.elapsed() < limit {
        for r in c.poll(Duration::from_millis(200)).unwrap() {
            got.push(message_priority(r.record()).expect("a priority"));
        }
    }
    got
}

#[test]
fn with_a_backlog_of_every_priority_the_highest_come_first_then_the_lower() {
    for_each_engine(|engine, dir| {
        let store = jobs_store(engine, dir, 10);
        backlog_of_every_priority(&store, 20);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let c = member(&groups, consumer_config(7), strict());
        let got = drain(&c, 200, Duration::from_secs(20));
        assert_eq!(got.len(), 200);
        assert!(
            got[..20].iter().all(|p| *p == 9),
            "first 20: {:?}",
            &got[..20]
        );
        assert!(
            got.windows(2).all(|w| w[0] >= w[1]),
            "drained highest first: {got:?}"
        );
        assert!(c.poll(Duration::from_millis(50)).unwrap().is_empty());
    });
}

#[test]
fn two_partitions_make_two_bands_and_the_upper_band_is_drained_first() {
    for_each_engine(|engine, dir| {
        let store = jobs_store(engine, dir, 2);
        let producer = PriorityProducer::new(Arc::clone(&store), "jobs").unwrap();
        for i in 0..10 {
            for p in [0u8, 4, 5, 9] {
                let (partition, _) = producer
                    .send(&Message::new(format!("{i}")).with_key(format!("k{p}")), p)
                    .unwrap();
                assert_eq!(partition, u32::from(p >= 5));
            }
        }
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let c = PriorityConsumer::new(&groups, consumer_config(3), "jobs", strict()).unwrap();
        c.assign_all().unwrap();
        let got = drain(&c, 40, Duration::from_secs(20));
        assert_eq!(got.len(), 40);
        assert!(got[..20].iter().all(|p| *p >= 5), "{got:?}");
        assert!(got[20..].iter().all(|p| *p < 5), "{got:?}");
    });
}

#[test]
fn twenty_partitions_spread_a_priority_over_its_two_and_still_drain_it_first() {
    for_each_engine(|engine, dir| {
        let store = jobs_store(engine, dir, 20);
        backlog_of_every_priority(&store, 4);
        assert_eq!(
            store.bounds("jobs", 18).unwrap().end,
            2,
            "round robin in the band"
        );
        assert_eq!(store.bounds("jobs", 19).unwrap().end, 2);
        // A keyed message hashes within its priority's two partitions: its key's order holds.
        let producer = PriorityProducer::new(Arc::clone(&store), "jobs").unwrap();
        for i in 0..5 {
            let m = Message::new(format!("{i}")).with_key("order-1");
            let (p, _) = producer.send(&m, 7).unwrap();
            assert_eq!(p, 14 + duolog::partition_for_key(b"order-1", 2));
        }
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let c = PriorityConsumer::new(&groups, consumer_config(100), "jobs", strict()).unwrap();
        c.assign_all().unwrap();
        let got = drain(&c, 45, Duration::from_secs(20));
        assert_eq!(got.len(), 45);
        assert!(got.windows(2).all(|w| w[0] >= w[1]), "{got:?}");
    });
}

/// A backlog of priority 9 far larger than what the test consumes keeps a "flood" of high
/// priority in front of the consumer for the whole test.
fn flooded(engine: EngineKind, dir: &std::path::Path) -> Arc<dyn LogStore> {
    let store = jobs_store(engine, dir, 10);
    let producer = PriorityProducer::new(Arc::clone(&store), "jobs").unwrap();
    let flood: Vec<Message> = (0..3000).map(|i| Message::new(format!("hi-{i}"))).collect();
    producer.send_batch(&flood, 9).unwrap();
    producer
        .send_batch(&[Message::new("low-a"), Message::new("low-b")], 0)
        .unwrap();
    store
}

#[test]
fn the_aging_rule_serves_a_starved_low_priority_under_a_constant_high_priority_flood() {
    for_each_engine(|engine, dir| {
        let store = flooded(engine, dir);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let config = PriorityConfig {
            max_starvation: Duration::from_millis(200),
        };
        let c = PriorityConsumer::new(&groups, consumer_config(5), "jobs", config).unwrap();
        c.assign_all().unwrap();
        let t = Instant::now();
        let mut low_at = None;
        while t.elapsed() < Duration::from_secs(10) {
            let got = c.poll(Duration::from_millis(100)).unwrap();
            if got.iter().any(|r| message_priority(r.record()) == Some(0)) {
                // Served alone, as the one waiting longest.
                assert!(got.iter().all(|r| message_priority(r.record()) == Some(0)));
                low_at = Some(t.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(10)); // "processing"
        }
        let low_at = low_at.expect("the starved partition was served");
        assert!(
            low_at >= Duration::from_millis(200),
            "not before it starved: {low_at:?}"
        );
        let high_left =
            store.bounds("jobs", 9).unwrap().end - c.consumer().position("jobs", 9).unwrap();
        assert!(high_left > 1000, "the flood was still there: {high_left}");
    });
}

#[test]
fn without_aging_a_low_priority_waits_while_the_flood_lasts() {
    for_each_engine(|engine, dir| {
        let store = flooded(engine, dir);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let config = PriorityConfig {
            max_starvation: Duration::MAX,
        };
        let c = PriorityConsumer::new(&groups, consumer_config(5), "jobs", config).unwrap();
        c.assign_all().unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(500) {
            for r in c.poll(Duration::from_millis(100)).unwrap() {
                assert_eq!(message_priority(r.record()), Some(9));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

#[test]
fn commits_and_positions_work_as_for_the_pull_consumer() {
    for_each_engine(|engine, dir| {
        let store = jobs_store(engine, dir, 10);
        backlog_of_every_priority(&store, 3);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let mut seen = Vec::new();
        {
            let c = member(&groups, consumer_config(4), PriorityConfig::default());
            let got = drain(&c, 12, Duration::from_secs(20));
            assert!(got[..3].iter().all(|p| *p == 9));
            seen.extend(got);
            c.commit().unwrap();
            assert_eq!(c.consumer().committed("jobs", 9), Some(3));
            c.close().unwrap();
        }
        let c = member(&groups, consumer_config(4), PriorityConfig::default());
        seen.extend(drain(&c, 30 - seen.len(), Duration::from_secs(20)));
        let mut counts = [0; 10];
        for p in &seen {
            counts[usize::from(*p)] += 1;
        }
        assert_eq!(counts, [3; 10], "each record exactly once: {seen:?}");
        assert!(c.consumer().paused().is_empty(), "no pause left behind");
    });
}

#[test]
fn a_poll_without_backlog_waits_for_the_next_record_of_any_priority() {
    for_each_engine(|engine, dir| {
        let store = jobs_store(engine, dir, 10);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let c = PriorityConsumer::new(
            &groups,
            consumer_config(10),
            "jobs",
            PriorityConfig::default(),
        )
        .unwrap();
        c.assign_all().unwrap();
        assert!(c.poll(Duration::from_millis(20)).unwrap().is_empty());
        let s = Arc::clone(&store);
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            PriorityProducer::new(s, "jobs")
                .unwrap()
                .send(&Message::new("late"), 2)
                .unwrap();
        });
        let got = c.poll(Duration::from_secs(10)).unwrap();
        late.join().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(message_priority(got[0].record()), Some(2));
    });
}

#[test]
fn bad_priorities_counts_and_options_are_clear_errors() {
    for_each_engine(|engine, dir| {
        let store = jobs_store(engine, dir, 10);
        let producer = PriorityProducer::new(Arc::clone(&store), "jobs").unwrap();
        assert!(matches!(
            producer.send(&Message::new("x"), 10),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            producer.send_batch(&[Message::new("x")], 255),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            create_priority_topic(&*store, "odd", 15, TopicConfig::default()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            create_priority_topic(&*store, "none", 0, TopicConfig::default()),
            Err(Error::InvalidArgument(_))
        ));
        store
            .create_topic("odd", TopicConfig::with_partitions(12))
            .unwrap();
        assert!(matches!(
            PriorityProducer::new(Arc::clone(&store), "odd"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            PriorityProducer::new(Arc::clone(&store), "missing"),
            Err(Error::UnknownTopic(_))
        ));
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let zero = PriorityConfig {
            max_starvation: Duration::ZERO,
        };
        assert!(matches!(
            PriorityConsumer::new(&groups, consumer_config(1), "jobs", zero),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            PriorityConsumer::new(
                &groups,
                consumer_config(1),
                "missing",
                PriorityConfig::default()
            ),
            Err(Error::UnknownTopic(_))
        ));
        let end = (0..10)
            .map(|p| store.bounds("jobs", p).unwrap().end)
            .sum::<u64>();
        assert_eq!(end, 0, "nothing appended by a refused send");
    });
}

#[test]
fn two_members_of_a_group_share_the_bands_and_lose_nothing_across_the_rebalance() {
    for_each_engine(|engine, dir| {
        let store = jobs_store(engine, dir, 10);
        backlog_of_every_priority(&store, 10);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let a = member(&groups, consumer_config(5), strict());
        let mut seen = std::collections::BTreeSet::new();
        let first = a.poll(Duration::from_secs(5)).unwrap();
        assert!(
            first
                .iter()
                .all(|r| message_priority(r.record()) == Some(9))
        );
        seen.extend(first.iter().map(|r| r.record().body().to_vec()));
        a.commit().unwrap();
        let b = member(&groups, consumer_config(5), strict());
        let t = Instant::now();
        while seen.len() < 100 && t.elapsed() < Duration::from_secs(20) {
            for c in [&a, &b] {
                let got = c.poll(Duration::from_millis(50)).unwrap();
                let bands: std::collections::BTreeSet<u32> =
                    got.iter().map(|r| r.partition()).collect();
                assert!(bands.len() <= 1, "one band per poll: {bands:?}");
                seen.extend(got.iter().map(|r| r.record().body().to_vec()));
                c.commit().unwrap();
            }
        }
        assert_eq!(seen.len(), 100, "every record delivered");
        assert!(!a.consumer().assignment().is_empty() && !b.consumer().assignment().is_empty());
        a.close().unwrap();
        b.close().unwrap();
    });
}
