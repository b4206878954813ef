//! Consumer groups end to end, on both engines: committed offsets that survive a restart,
//! `auto_offset_reset` (no offset, and a position retention passed), long polls over many
//! partitions, rebalances (join, leave, crash, new partitions) that never hand a partition to
//! two members, the `__consumer_offsets` topic staying bounded, and a second process refused.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{for_each_engine, small_options};
use duolog::consumer::{
    Averagely, Consumer, ConsumerConfig, ConsumerRecord, GroupCoordinator, OFFSETS_TOPIC,
    OffsetReset, RebalanceListener, Sticky, TopicPartition,
};
use duolog::{Error, LogStore, Message, StoreOptions, TopicConfig};

fn open(dir: &std::path::Path, opts: &StoreOptions) -> Arc<dyn LogStore> {
    Arc::from(duolog::open(dir, opts.clone()).expect("open store"))
}

fn config(group: &str, reset: OffsetReset) -> ConsumerConfig {
    ConsumerConfig {
        auto_offset_reset: reset,
        enable_auto_commit: false,
        ..ConsumerConfig::new(group)
    }
}

/// Appends `n` messages `<topic>-<partition>-<i>` to each partition.
fn produce(store: &dyn LogStore, topic: &str, partitions: u32, n: usize) {
    for p in 0..partitions {
        let start = store.bounds(topic, p).unwrap().end as usize;
        let batch: Vec<Message> = (start..start + n)
            .map(|i| Message::new(format!("{topic}-{p}-{i}")))
            .collect();
        store.append(topic, p, &batch).unwrap();
    }
}

/// Polls until `n` records arrived (or 10 s passed).
fn drain(c: &Consumer, n: usize) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        out.extend(c.poll(Duration::from_millis(200)).unwrap());
    }
    out
}

fn keys(records: &[ConsumerRecord]) -> BTreeSet<(String, u32, u64)> {
    records
        .iter()
        .map(|r| (r.topic().to_owned(), r.partition(), r.offset()))
        .collect()
}

#[test]
fn committed_offsets_survive_a_restart_and_consumption_resumes_there() {
    for_each_engine(|engine, dir| {
        let opts = small_options(engine);
        let store = open(dir, &opts);
        store
            .create_topic("t", TopicConfig::with_partitions(3))
            .unwrap();
        produce(store.as_ref(), "t", 3, 40);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let c = Consumer::new(
            &groups,
            ConsumerConfig {
                max_poll_records: 50,
                ..config("g", OffsetReset::Earliest)
            },
        )
        .unwrap();
        c.subscribe(&["t"]).unwrap();
        let first = c.poll(Duration::from_secs(5)).unwrap();
        assert_eq!(first.len(), 50, "{engine}: max_poll_records");
        // Fair: every partition got a share.
        let parts: BTreeSet<u32> = first.iter().map(|r| r.partition()).collect();
        assert_eq!(parts.len(), 3, "{engine}: {parts:?}");
        c.commit().unwrap();
        let positions: Vec<u64> = (0..3).map(|p| c.position("t", p).unwrap()).collect();
        for p in 0..3 {
            assert_eq!(c.committed("t", p), Some(positions[p as usize]));
        }
        // Consumed but not committed: delivered again after the restart.
        let uncommitted = c.poll(Duration::from_secs(5)).unwrap();
        assert!(!uncommitted.is_empty());
        drop(c);
        drop(groups);
        store.close().unwrap();
        drop(store);

        let store = open(dir, &opts);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        assert_eq!(groups.committed_offsets("g")["t"].len(), 3);
        let c = Consumer::new(&groups, config("g", OffsetReset::Latest)).unwrap();
        c.subscribe(&["t"]).unwrap();
        let rest = drain(&c, 120 - 50);
        assert_eq!(rest.len(), 70, "{engine}");
        let mut all = keys(&first);
        all.extend(keys(&rest));
        assert_eq!(all.len(), 120, "{engine}: every record exactly once");
        assert!(keys(&uncommitted).is_subset(&keys(&rest)));
        c.commit().unwrap();
        assert!(c.poll(Duration::from_millis(50)).unwrap().is_empty());
        c.close().unwrap();
        assert!(matches!(c.poll(Duration::ZERO), Err(Error::Closed)));
        // The offsets topic is internal: not in user listings.
        assert_eq!(store.list_topics(false), vec!["t".to_owned()]);
        assert!(store.list_topics(true).contains(&OFFSETS_TOPIC.to_owned()));
    });
}

#[test]
fn auto_offset_reset_earliest_latest_none() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        produce(store.as_ref(), "t", 1, 10);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let earliest = Consumer::new(&groups, config("e", OffsetReset::Earliest)).unwrap();
        earliest.assign(&[("t", 0)]).unwrap();
        assert_eq!(earliest.position("t", 0).unwrap(), 0, "{engine}");
        assert_eq!(drain(&earliest, 10).len(), 10);
        let latest = Consumer::new(&groups, config("l", OffsetReset::Latest)).unwrap();
        latest.assign(&[("t", 0)]).unwrap();
        assert!(latest.poll(Duration::from_millis(20)).unwrap().is_empty());
        assert_eq!(latest.position("t", 0).unwrap(), 10);
        let none = Consumer::new(&groups, config("n", OffsetReset::None)).unwrap();
        none.assign(&[("t", 0)]).unwrap();
        assert!(matches!(
            none.poll(Duration::ZERO),
            Err(Error::NoCommittedOffset { partition: 0, .. })
        ));
        // With a committed offset, every policy starts there.
        groups.commit_offsets("n", &[("t", 0, 7)]).unwrap();
        let none = Consumer::new(&groups, config("n", OffsetReset::None)).unwrap();
        none.assign(&[("t", 0)]).unwrap();
        let got = drain(&none, 3);
        assert_eq!(got.first().map(|r| r.offset()), Some(7), "{engine}");
        // A seek to a timestamp.
        none.seek_to_time("t", 0, 0).unwrap();
        assert_eq!(none.poll(Duration::from_secs(1)).unwrap()[0].offset(), 0);
        assert!(matches!(
            none.seek("t", 5, 0),
            Err(Error::NotAssigned { partition: 5, .. })
        ));
    });
}

#[test]
fn a_position_below_the_log_start_resets_per_policy_instead_of_failing() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        produce(store.as_ref(), "t", 1, 30);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        for g in ["e", "l", "n"] {
            groups.commit_offsets(g, &[("t", 0, 5)]).unwrap();
        }
        // Retention (here: DeleteRecords) passes the committed offset.
        assert_eq!(store.delete_before("t", 0, 20).unwrap(), 20);
        let e = Consumer::new(&groups, config("e", OffsetReset::Earliest)).unwrap();
        e.assign(&[("t", 0)]).unwrap();
        let got = drain(&e, 10);
        assert_eq!(got.first().map(|r| r.offset()), Some(20), "{engine}");
        let l = Consumer::new(&groups, config("l", OffsetReset::Latest)).unwrap();
        l.assign(&[("t", 0)]).unwrap();
        assert_eq!(l.position("t", 0).unwrap(), 30);
        let n = Consumer::new(&groups, config("n", OffsetReset::None)).unwrap();
        n.assign(&[("t", 0)]).unwrap();
        assert!(matches!(
            n.poll(Duration::ZERO),
            Err(Error::OffsetOutOfRange {
                offset: 5,
                start: 20,
                ..
            })
        ));
        // A position that retention passes while the consumer holds it resets too.
        e.seek("t", 0, 25).unwrap();
        store.delete_before("t", 0, 28).unwrap();
        let got = drain(&e, 2);
        assert_eq!(got.first().map(|r| r.offset()), Some(28), "{engine}");
    });
}

/// The same with real retention by time: the committed offset's records expire, and the
/// group resumes at the new log start (earliest) instead of failing.
#[test]
fn a_committed_offset_that_retention_passed_resets_to_the_new_start() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        let short = TopicConfig {
            retention: Some(Duration::from_millis(1)),
            ..TopicConfig::default()
        };
        store.create_topic("t", short).unwrap();
        // 4 KB records: 30 of them fill more than one 64 KiB file or segment, so the oldest
        // can expire whole.
        for _ in 0..30 {
            store
                .append("t", 0, &[Message::new(vec![b'x'; 4096])])
                .unwrap();
        }
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        groups.commit_offsets("g", &[("t", 0, 5)]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        store.enforce_retention().unwrap();
        let start = store.bounds("t", 0).unwrap().start;
        assert!(start > 5, "{engine}: retention moved the start to {start}");
        produce(store.as_ref(), "t", 1, 3);
        let c = Consumer::new(&groups, config("g", OffsetReset::Earliest)).unwrap();
        c.subscribe(&["t"]).unwrap();
        let got = drain(&c, 3);
        assert_eq!(got.first().map(|r| r.offset()), Some(start), "{engine}");
        c.commit().unwrap();
        assert_eq!(c.committed("t", 0), Some(33));
    });
}

#[test]
fn poll_returns_as_soon_as_any_held_partition_has_data_and_waits_the_timeout_otherwise() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store
            .create_topic("a", TopicConfig::with_partitions(4))
            .unwrap();
        store.create_topic("b", TopicConfig::default()).unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let c = Consumer::new(&groups, config("g", OffsetReset::Latest)).unwrap();
        c.subscribe(&["a", "b"]).unwrap();
        let t = Instant::now();
        assert!(c.poll(Duration::from_millis(300)).unwrap().is_empty());
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
            "{engine}: {waited:?}"
        );
        assert_eq!(c.assignment().len(), 5);
        for (topic, p) in [("a", 2), ("b", 0), ("a", 0)] {
            let s = Arc::clone(&store);
            let producer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                s.append(topic, p, &[Message::new("late")]).unwrap();
            });
            let t = Instant::now();
            let got = c.poll(Duration::from_secs(30)).unwrap();
            let waited = t.elapsed();
            producer.join().unwrap();
            assert_eq!(got.len(), 1, "{engine}");
            assert_eq!((got[0].topic(), got[0].partition()), (topic, p));
            assert!(waited < Duration::from_secs(10), "{engine}: {waited:?}");
        }
    });
}

#[derive(Default)]
struct Events {
    log: Mutex<Vec<String>>,
    /// Commit inside `on_revoke`, as rdkafka users do in `pre_rebalance`.
    commit_on_revoke: bool,
}

impl RebalanceListener for Events {
    fn on_revoke(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        if self.commit_on_revoke {
            consumer.commit().unwrap();
        }
        self.log.lock().unwrap().push(format!(
            "{} revoke {}",
            consumer.member_id(),
            partitions.len()
        ));
    }
    fn on_assign(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        self.log.lock().unwrap().push(format!(
            "{} assign {}",
            consumer.member_id(),
            partitions.len()
        ));
    }
}

/// No partition is held by two members at once.
fn assert_exclusive(groups: &GroupCoordinator, group: &str, members: &[&Consumer]) {
    let mut seen = BTreeMap::new();
    for c in members {
        for tp in c.assignment() {
            if let Some(other) = seen.insert(tp.clone(), c.member_id().to_owned()) {
                panic!("{tp} held by {other} and {}", c.member_id());
            }
        }
    }
    let mut owners = BTreeSet::new();
    for parts in groups.owners(group).values() {
        for tp in parts {
            assert!(owners.insert(tp.clone()), "{tp} owned twice");
        }
    }
}

#[test]
fn a_joining_member_gets_partitions_only_after_their_owner_revoked_them() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store
            .create_topic("t", TopicConfig::with_partitions(4))
            .unwrap();
        produce(store.as_ref(), "t", 4, 10);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let events = Arc::new(Events {
            commit_on_revoke: true,
            ..Events::default()
        });
        let a = Consumer::with_listener(
            &groups,
            config("g", OffsetReset::Earliest),
            Arc::clone(&events),
        )
        .unwrap();
        a.subscribe(&["t"]).unwrap();
        let got = drain(&a, 40);
        assert_eq!(got.len(), 40, "{engine}");
        assert_eq!(a.assignment().len(), 4);
        let b =
            Consumer::with_listener(&groups, config("g", OffsetReset::None), Arc::clone(&events))
                .unwrap();
        b.subscribe(&["t"]).unwrap();
        // `a` has not polled since: `b` waits for the revocation and gets nothing yet.
        assert!(b.poll(Duration::from_millis(50)).unwrap().is_empty());
        assert!(b.assignment().is_empty());
        assert_exclusive(&groups, "g", &[&a, &b]);
        // `a`'s next poll revokes two (its callback commits them) and `b` takes them over,
        // starting at `a`'s committed offsets (its policy `None` would fail otherwise).
        assert!(a.poll(Duration::from_millis(10)).unwrap().is_empty());
        assert_eq!(a.assignment().len(), 2);
        assert!(b.poll(Duration::from_millis(10)).unwrap().is_empty());
        assert_eq!(b.assignment().len(), 2);
        assert_exclusive(&groups, "g", &[&a, &b]);
        let log = events.log.lock().unwrap().clone();
        let revoke = log.iter().position(|e| e.contains("revoke 2")).unwrap();
        let assign_b = log
            .iter()
            .position(|e| e.starts_with(b.member_id()) && e.contains("assign 2"))
            .unwrap();
        assert!(revoke < assign_b, "{engine}: {log:?}");
        // New records go to whichever member holds their partition.
        produce(store.as_ref(), "t", 4, 1);
        let mut seen = keys(&drain(&a, 2));
        seen.extend(keys(&drain(&b, 2)));
        assert_eq!(seen.len(), 4, "{engine}");
    });
}

/// A member that crashes (dropped without committing) hands its partitions to the others,
/// who resume at its last committed offset: the records after it are delivered again.
#[test]
fn a_crashed_member_is_redelivered_from_its_last_commit() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        produce(store.as_ref(), "t", 2, 20);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let cfg = ConsumerConfig {
            assignor: Arc::new(Averagely),
            max_poll_records: 10,
            ..config("g", OffsetReset::Earliest)
        };
        let a = Consumer::new(&groups, cfg.clone()).unwrap();
        let b = Consumer::new(&groups, cfg).unwrap();
        a.subscribe(&["t"]).unwrap();
        b.subscribe(&["t"]).unwrap();
        a.poll(Duration::ZERO).unwrap();
        // `b` reads 20, commits after 10, then crashes.
        let first = b.poll(Duration::ZERO).unwrap();
        assert_eq!((a.assignment().len(), b.assignment().len()), (1, 1));
        let b_part = b.assignment()[0].partition;
        assert_eq!(first.len(), 10);
        assert_eq!(first[0].offset(), 0);
        b.commit().unwrap();
        assert_eq!(drain(&b, 10).len(), 10);
        drop(b);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && got.len() < 30 {
            got.extend(a.poll(Duration::from_millis(100)).unwrap());
        }
        let from_b: Vec<u64> = got
            .iter()
            .filter(|r| r.partition() == b_part)
            .map(|r| r.offset())
            .collect();
        assert_eq!(from_b, (10..20).collect::<Vec<_>>(), "{engine}");
        assert_eq!(a.assignment().len(), 2);
    });
}

#[test]
fn members_leaving_and_a_topic_gaining_partitions_rebalance_the_group() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let cfg = ConsumerConfig {
            assignor: Arc::new(Sticky),
            ..ConsumerConfig::new("g")
        };
        let a = Consumer::new(&groups, cfg.clone()).unwrap();
        let b = Consumer::new(&groups, cfg.clone()).unwrap();
        a.subscribe(&["t"]).unwrap();
        b.subscribe(&["t"]).unwrap();
        for _ in 0..2 {
            a.poll(Duration::ZERO).unwrap();
            b.poll(Duration::ZERO).unwrap();
        }
        assert_eq!((a.assignment().len(), b.assignment().len()), (1, 1));
        let gen_before = groups.generation("g");
        assert_eq!(store.add_partitions("t", 4).unwrap(), 6);
        for _ in 0..2 {
            a.poll(Duration::ZERO).unwrap();
            b.poll(Duration::ZERO).unwrap();
        }
        assert!(groups.generation("g") > gen_before);
        assert_eq!(
            (a.assignment().len(), b.assignment().len()),
            (3, 3),
            "{engine}"
        );
        assert_exclusive(&groups, "g", &[&a, &b]);
        b.close().unwrap();
        a.poll(Duration::ZERO).unwrap();
        assert_eq!(a.assignment().len(), 6);
        // A member with another assignor cannot join.
        let c = Consumer::new(
            &groups,
            ConsumerConfig {
                assignor: Arc::new(Averagely),
                ..ConsumerConfig::new("g")
            },
        )
        .unwrap();
        assert!(matches!(
            c.subscribe(&["t"]),
            Err(Error::InvalidArgument(_))
        ));
        // A member may commit only what it holds.
        let d = Consumer::new(&groups, cfg).unwrap();
        d.subscribe(&["t"]).unwrap();
        d.poll(Duration::ZERO).unwrap();
        assert!(matches!(
            d.commit_offsets(&[("t", 0, 1)]),
            Err(Error::NotAssigned { .. })
        ));
    });
}

/// A member that stops polling for longer than its `max_poll_interval` is evicted when another
/// member needs its partitions: they move (resuming at its last commit), its late commits are
/// refused, and its next poll joins the group again.
#[test]
fn a_member_that_stops_polling_is_evicted_and_its_late_commits_refused() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        produce(store.as_ref(), "t", 2, 10);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let cfg = ConsumerConfig {
            max_poll_interval: Duration::from_secs(1),
            ..config("g", OffsetReset::Earliest)
        };
        let a = Consumer::new(&groups, cfg.clone()).unwrap();
        a.subscribe(&["t"]).unwrap();
        assert_eq!(drain(&a, 20).len(), 20);
        a.commit_offsets(&[("t", 0, 4), ("t", 1, 6)]).unwrap();
        let b = Consumer::new(&groups, cfg).unwrap();
        b.subscribe(&["t"]).unwrap();
        // `a` is alive (it polled recently): `b` waits.
        assert!(b.poll(Duration::ZERO).unwrap().is_empty());
        assert!(b.assignment().is_empty(), "{engine}");
        std::thread::sleep(Duration::from_millis(1100));
        // Now `a` is past its interval: `b` takes its partition and resumes at `a`'s commit.
        let got = drain(&b, 1);
        assert!(!b.assignment().is_empty(), "{engine}");
        let tp = &b.assignment()[0];
        let expect = if tp.partition == 0 { 4 } else { 6 };
        assert_eq!(got[0].offset(), expect, "{engine}");
        assert!(matches!(
            a.commit_offsets(&[(tp.topic.as_str(), tp.partition, 999)]),
            Err(Error::NotAssigned { .. })
        ));
        assert_eq!(groups.committed_offsets("g")["t"][&tp.partition], expect);
        // `a` joins again and the group settles with one partition each.
        for _ in 0..3 {
            a.poll(Duration::ZERO).unwrap();
            b.poll(Duration::ZERO).unwrap();
        }
        assert_eq!(
            (a.assignment().len(), b.assignment().len()),
            (1, 1),
            "{engine}"
        );
        assert_exclusive(&groups, "g", &[&a, &b]);
    });
}

/// Auto-commit: positions are committed from `poll` once the interval has passed, and at
/// `close` (or drop) — what was returned by a poll counts as consumed.
#[test]
fn auto_commit_commits_from_poll_after_the_interval_and_at_close() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        store.create_topic("t", TopicConfig::default()).unwrap();
        produce(store.as_ref(), "t", 1, 10);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let c = Consumer::new(
            &groups,
            ConsumerConfig {
                enable_auto_commit: true,
                auto_commit_interval: Duration::from_secs(1),
                max_poll_records: 4,
                ..config("g", OffsetReset::Earliest)
            },
        )
        .unwrap();
        c.subscribe(&["t"]).unwrap();
        assert_eq!(c.poll(Duration::from_secs(1)).unwrap().len(), 4);
        assert_eq!(c.poll(Duration::from_secs(1)).unwrap().len(), 4);
        assert_eq!(c.committed("t", 0), None, "{engine}: not due yet");
        std::thread::sleep(Duration::from_millis(1100));
        // Due: this poll commits what the earlier ones returned, then fetches.
        assert_eq!(c.poll(Duration::from_secs(1)).unwrap().len(), 2);
        assert_eq!(c.committed("t", 0), Some(8), "{engine}");
        drop(c);
        assert_eq!(
            groups.committed_offsets("g")["t"][&0],
            10,
            "{engine}: at drop"
        );
    });
}

/// A compacted partition has offset gaps: positions follow the last record returned (+ 1), so
/// a consumer passes over them and ends at the partition's end with the latest value of every
/// key.
#[test]
fn a_consumer_passes_over_the_gaps_of_a_compacted_partition() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        let compacted = TopicConfig {
            cleanup_policy: duolog::CleanupPolicy::Compact,
            segment_bytes: Some(1024),
            ..TopicConfig::default()
        };
        store.create_topic("c", compacted).unwrap();
        for i in 0..300 {
            store
                .append(
                    "c",
                    0,
                    &[Message::new(format!("{i}")).with_key(format!("k{}", i % 7))],
                )
                .unwrap();
        }
        let report = store.compact(Some("c")).unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let c = Consumer::new(&groups, config("g", OffsetReset::Earliest)).unwrap();
        c.assign(&[("c", 0)]).unwrap();
        let mut got = Vec::new();
        loop {
            let batch = c.poll(Duration::from_millis(50)).unwrap();
            if batch.is_empty() {
                break;
            }
            got.extend(batch);
        }
        eprintln!("{engine}: {} of 300 records after compaction", got.len());
        let offsets: Vec<u64> = got.iter().map(|r| r.offset()).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{engine}");
        assert_eq!(c.position("c", 0).unwrap(), 300, "{engine}");
        if report.records_removed > 0 {
            assert!(got.len() < 300, "{engine}: gaps after compaction");
        }
        let mut latest = BTreeMap::new();
        for r in &got {
            latest.insert(
                r.record().key().unwrap().to_vec(),
                r.record().body().to_vec(),
            );
        }
        for k in 0..7 {
            let last = (0..300).filter(|i| i % 7 == k).max().unwrap();
            assert_eq!(
                latest[format!("k{k}").as_bytes()],
                format!("{last}").into_bytes(),
                "{engine}"
            );
        }
        c.commit().unwrap();
        assert_eq!(c.committed("c", 0), Some(300));
    });
}

/// A sync commit returns once durable under every flush policy — even one that never flushes
/// on its own — and async commits complete in order, superseded by later ones, all durable
/// once a later sync commit returned.
#[test]
fn commits_are_durable_under_every_flush_policy_and_async_commits_complete() {
    let policies = [
        duolog::FlushPolicy::Async {
            interval: Duration::MAX,
        },
        duolog::FlushPolicy::Sync,
        duolog::FlushPolicy::Every {
            messages: 1_000_000,
            bytes: u64::MAX,
            interval: Duration::MAX,
        },
    ];
    for policy in policies {
        for_each_engine(|engine, dir| {
            let opts = StoreOptions {
                flush: policy,
                ..small_options(engine)
            };
            let store = open(dir, &opts);
            store
                .create_topic("t", TopicConfig::with_partitions(2))
                .unwrap();
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let c = Consumer::new(&groups, config("g", OffsetReset::Earliest)).unwrap();
            c.assign(&[("t", 0), ("t", 1)]).unwrap();
            let t = Instant::now();
            c.commit_offsets(&[("t", 0, 1), ("t", 1, 1)]).unwrap();
            assert!(t.elapsed() < Duration::from_secs(5), "{engine} {policy:?}");
            assert!(store.bounds(OFFSETS_TOPIC, 0).unwrap().durable_end >= 1);
            let (tx, rx) = std::sync::mpsc::channel();
            for i in 2..6u64 {
                c.seek("t", 0, i).unwrap();
                let tx = tx.clone();
                c.commit_async(move |r| tx.send((i, r.is_ok())).unwrap())
                    .unwrap();
            }
            c.seek("t", 1, 9).unwrap();
            c.commit().unwrap();
            let mut done: Vec<(u64, bool)> = (0..4).map(|_| rx.recv().unwrap()).collect();
            done.sort();
            assert_eq!(
                done,
                [(2, true), (3, true), (4, true), (5, true)],
                "{engine}"
            );
            assert_eq!(
                (c.committed("t", 0), c.committed("t", 1)),
                (Some(5), Some(9))
            );
            drop(c);
            drop(groups);
            store.abandon();
            drop(store);
            // Durable: there after a crash.
            let store = open(dir, &opts);
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let table = groups.committed_offsets("g");
            assert_eq!(
                (table["t"][&0], table["t"][&1]),
                (5, 9),
                "{engine} {policy:?}"
            );
        });
    }
}

/// A partition's next owner starts at the old owner's newest commit even while that commit is
/// still in flight (async, not yet durable): starting at the older durable offset and
/// committing from there would move the group's offset backwards.
#[test]
fn a_new_owner_starts_after_an_async_commit_still_in_flight() {
    for_each_engine(|engine, dir| {
        let opts = StoreOptions {
            flush: duolog::FlushPolicy::Async {
                interval: Duration::MAX,
            },
            ..small_options(engine)
        };
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        produce(store.as_ref(), "t", 1, 20);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let a = Consumer::new(&groups, config("g", OffsetReset::Earliest)).unwrap();
        a.subscribe(&["t"]).unwrap();
        assert_eq!(drain(&a, 20).len(), 20);
        let (tx, rx) = std::sync::mpsc::channel();
        a.commit_async(move |r| tx.send(r.is_ok()).unwrap())
            .unwrap();
        assert_eq!(a.committed("t", 0), None, "{engine}: not durable yet");
        a.close().unwrap();
        let b = Consumer::new(&groups, config("g", OffsetReset::Earliest)).unwrap();
        b.subscribe(&["t"]).unwrap();
        produce(store.as_ref(), "t", 1, 5);
        let got = drain(&b, 5);
        assert_eq!(got.first().map(|r| r.offset()), Some(20), "{engine}");
        b.commit().unwrap();
        assert!(rx.recv().unwrap());
        assert_eq!(b.committed("t", 0), Some(25));
    });
}

/// 10,000 commits of one group leave about one record per group in `__consumer_offsets` once
/// the cleaner has run: its size is bounded by compaction, not by the number of commits.
/// (Needs the cleaner: `LogStore::compact` lands on `main` with the compaction work.)
#[test]
fn the_offsets_topic_stays_bounded_after_ten_thousand_commits() {
    for_each_engine(|engine, dir| {
        let opts = StoreOptions {
            flush: duolog::FlushPolicy::Async {
                interval: Duration::from_millis(1),
            },
            ..small_options(engine)
        };
        let store = open(dir, &opts);
        store
            .create_topic("t", TopicConfig::with_partitions(8))
            .unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let c = Consumer::new(&groups, config("g", OffsetReset::Earliest)).unwrap();
        let parts: Vec<(&str, u32)> = (0..8).map(|p| ("t", p)).collect();
        c.assign(&parts).unwrap();
        for i in 0..10_000u64 {
            let offsets: Vec<(&str, u32, u64)> = (0..8).map(|p| ("t", p, i + 1)).collect();
            c.commit_offsets(&offsets).unwrap();
        }
        let before = store.partition_bytes(OFFSETS_TOPIC, 0).unwrap();
        store.compact(Some(OFFSETS_TOPIC)).unwrap();
        let after = store.partition_bytes(OFFSETS_TOPIC, 0).unwrap();
        eprintln!("{engine}: {before} bytes before compaction, {after} after");
        assert!(
            after <= 4 * duolog::consumer::OFFSETS_SEGMENT_BYTES,
            "{engine}: {after} bytes after compacting 10,000 commits (before: {before})"
        );
        drop(c);
        drop(groups);
        // Loading reads what is left, and the last commit is there.
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        assert_eq!(groups.committed_offsets("g")["t"][&7], 10_000);
    });
}

#[test]
fn a_garbage_commit_record_is_a_clear_error_not_a_panic() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        drop(GroupCoordinator::new(Arc::clone(&store)).unwrap());
        store
            .append(
                OFFSETS_TOPIC,
                0,
                &[Message::new(&b"\x01garbage"[..]).with_key("g")],
            )
            .unwrap();
        match GroupCoordinator::new(Arc::clone(&store)) {
            Err(Error::Corrupted { reason, .. }) => assert!(reason.contains("offset 0")),
            other => panic!("{engine}: {other:?}"),
        }
        // The coordinator that failed to open released its claim on the store: a second try
        // reads the record again (not "already served").
        assert!(matches!(
            GroupCoordinator::new(Arc::clone(&store)),
            Err(Error::Corrupted { .. })
        ));
    });
}

/// The store is single-process: a second process (here, this test binary run again) cannot
/// open a directory a live store holds, and is told why (`Error::Locked`), so two processes
/// can never both think they own a group's partitions. In-process, a second coordinator of a
/// store is refused too (`InvalidArgument`: share the first).
#[test]
fn a_second_process_is_refused_with_a_clear_error() {
    if let Ok(dir) = std::env::var("DUOLOG_SECOND_PROCESS_DIR") {
        match duolog::open(&dir, StoreOptions::default()) {
            Err(e @ Error::Locked(_)) => {
                println!("REFUSED: {e}");
                return;
            }
            other => panic!("the second process opened the store: {other:?}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &StoreOptions::default());
    store.create_topic("t", TopicConfig::default()).unwrap();
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    assert!(matches!(
        GroupCoordinator::new(Arc::clone(&store)),
        Err(Error::InvalidArgument(_))
    ));
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_second_process_is_refused_with_a_clear_error",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DUOLOG_SECOND_PROCESS_DIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    assert!(
        stdout.contains("REFUSED: store directory") && stdout.contains("is locked"),
        "{stdout}"
    );
    drop(groups);
    // Once the coordinator is gone, a new one may serve the store.
    assert!(GroupCoordinator::new(store).is_ok());
}

/// A topic deleted and created again under its name starts from nothing: the group's old
/// offsets (committed against the deleted topic's id) neither apply to the new topic — before,
/// a consumer silently started the new topic at the old offset, skipping its first records —
/// nor survive a restart, and the next commit drops them from the group's table.
#[test]
fn offsets_of_a_deleted_topic_never_apply_to_a_new_topic_of_the_same_name() {
    for_each_engine(|engine, dir| {
        let opts = small_options(engine);
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        store.create_topic("other", TopicConfig::default()).unwrap();
        produce(store.as_ref(), "t", 1, 50);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        groups
            .commit_offsets("g", &[("t", 0, 40), ("other", 0, 0)])
            .unwrap();
        store.delete_topic("t").unwrap();
        assert!(
            !groups.committed_offsets("g").contains_key("t"),
            "{engine}: a deleted topic's offsets are gone"
        );
        store.create_topic("t", TopicConfig::default()).unwrap();
        produce(store.as_ref(), "t", 1, 45);
        assert_eq!(groups.committed_offsets("g").get("t"), None, "{engine}");

        let c = Consumer::new(&groups, config("g", OffsetReset::Earliest)).unwrap();
        c.assign(&[("t", 0)]).unwrap();
        let first = drain(&c, 45);
        assert_eq!(
            first.len(),
            45,
            "{engine}: the new topic is read from its start"
        );
        assert_eq!(first[0].offset(), 0, "{engine}");
        drop(c);

        // The commit of another topic rewrites the table without the dead generation.
        groups.commit_offsets("g", &[("other", 0, 0)]).unwrap();
        drop(groups);
        store.close().unwrap();
        drop(store);
        let store = open(dir, &opts);
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        assert_eq!(
            groups.committed_offsets("g").keys().collect::<Vec<_>>(),
            ["other"],
            "{engine}: after a restart too"
        );
        groups.commit_offsets("g", &[("t", 0, 7)]).unwrap();
        assert_eq!(groups.committed_offsets("g")["t"][&0], 7, "{engine}");
        assert!(matches!(
            groups.commit_offsets("g", &[("missing", 0, 1)]),
            Err(Error::UnknownTopic(_))
        ));
    });
}
