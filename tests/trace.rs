//! Message trace end to end, on both engines: produce through a `TracedStore`, consume with a
//! traced consumer, query the events back by message id and by key; batching, the bounded
//! queue, close, and trace bodies that do not decode.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::wrap::{Hooks, Wrapped};
use common::{for_each_engine, small_options};
use duolog::consumer::{
    Consumer, ConsumerConfig, GroupCoordinator, MAX_EVENTS_PER_MESSAGE, MAX_TRACED_FIELD,
    OffsetReset, TRACE_TOPIC, TraceConfig, TraceKind, TracedStore, Tracer, decode_events,
};
use duolog::{EngineKind, LogStore, Message, StoreOptions, TopicConfig};
use parking_lot::{Condvar, Mutex};

fn open(engine: EngineKind, dir: &Path) -> Arc<dyn LogStore> {
    Arc::from(common::open(dir, &small_options(engine)))
}

fn config(flush_interval: Duration) -> TraceConfig {
    TraceConfig {
        flush_interval,
        ..TraceConfig::default()
    }
}

/// Every event in the trace topic, per trace message.
fn trace_messages(store: &dyn LogStore) -> Vec<Vec<duolog::consumer::TraceEvent>> {
    common::read_all(store, TRACE_TOPIC, 0)
        .iter()
        .map(|r| decode_events(r.body()).unwrap())
        .collect()
}

#[test]
fn produced_and_consumed_events_are_found_by_id_and_by_key() {
    for_each_engine(|engine, dir| {
        let store = open(engine, dir);
        let tracer =
            Arc::new(Tracer::new(Arc::clone(&store), config(Duration::from_secs(60))).unwrap());
        let traced: Arc<dyn LogStore> =
            Arc::new(TracedStore::new(Arc::clone(&store), Arc::clone(&tracer)));
        traced
            .create_topic("or-ders", TopicConfig::with_partitions(2))
            .unwrap();
        let batch = [
            Message::new("a".repeat(100))
                .with_key("order-1")
                .with_tags("TagA"),
            Message::new("bb").with_key("order-2"),
        ];
        traced.append("or-ders", 1, &batch).unwrap();
        traced
            .append_async("or-ders", 0, &[Message::new("c").with_key("order-3")])
            .unwrap();
        traced
            .append_oneway("or-ders", 0, &[Message::new("d").with_key("order-1")])
            .unwrap();
        // A failed append has no offset: found by its key only.
        assert!(
            traced
                .append("or-ders", 9, &[Message::new("x").with_key("lost-1")])
                .is_err()
        );

        // The consumer's own commits go through the traced store, untraced.
        let groups = GroupCoordinator::new(Arc::clone(&traced)).unwrap();
        let consumer = Consumer::new(
            &groups,
            ConsumerConfig {
                auto_offset_reset: OffsetReset::Earliest,
                trace: Some(Arc::clone(&tracer)),
                ..ConsumerConfig::new("billing")
            },
        )
        .unwrap();
        consumer.subscribe(&["or-ders"]).unwrap();
        let mut polled = Vec::new();
        while polled.len() < 4 {
            polled.extend(consumer.poll(Duration::from_secs(5)).unwrap());
        }
        consumer.commit().unwrap();
        // What a push consumer reports after its handler.
        let handled = polled
            .iter()
            .find(|r| r.partition() == 1 && r.offset() == 0)
            .unwrap();
        assert!(tracer.consumed("billing", handled, 2, Duration::from_micros(1500), false));
        tracer.flush().unwrap();

        let by_id = Tracer::query(store.as_ref(), "or-ders-1-0").unwrap();
        assert_eq!(by_id.malformed, 0);
        let kinds: Vec<TraceKind> = by_id.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [TraceKind::Pub, TraceKind::SubBefore, TraceKind::SubAfter]
        );
        let (p, before, after) = (&by_id.events[0], &by_id.events[1], &by_id.events[2]);
        assert!(p.success);
        assert_eq!(
            (p.topic.as_str(), p.partition, p.offset),
            ("or-ders", 1, Some(0))
        );
        assert_eq!(
            (p.key.as_str(), p.tags.as_str(), p.body_length),
            ("order-1", "TagA", 100)
        );
        assert_eq!(p.group, "");
        assert_eq!(
            (before.group.as_str(), before.retries, before.offset),
            ("billing", 0, Some(0))
        );
        assert_eq!((after.group.as_str(), after.retries), ("billing", 2));
        assert_eq!((after.cost_us, after.success), (1500, false));
        assert!(p.timestamp_ms <= before.timestamp_ms && before.timestamp_ms <= after.timestamp_ms);

        // The key order-1 names two messages: both produced and both consumed.
        let by_key = Tracer::query(store.as_ref(), "order-1").unwrap();
        let mut ids: Vec<(TraceKind, String)> = by_key
            .events
            .iter()
            .map(|e| (e.kind, e.message_id().unwrap()))
            .collect();
        ids.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.name().cmp(b.0.name())));
        assert_eq!(
            ids,
            [
                (TraceKind::Pub, "or-ders-0-1".to_string()),
                (TraceKind::SubBefore, "or-ders-0-1".to_string()),
                (TraceKind::Pub, "or-ders-1-0".to_string()),
                (TraceKind::SubAfter, "or-ders-1-0".to_string()),
                (TraceKind::SubBefore, "or-ders-1-0".to_string()),
            ]
        );
        // append_async and append_oneway are traced as well.
        for id in ["or-ders-0-0", "or-ders-1-1"] {
            let q = Tracer::query(store.as_ref(), id).unwrap();
            assert_eq!(q.events.len(), 2, "{id}: {:?}", q.events);
            assert_eq!(q.events[0].kind, TraceKind::Pub);
        }
        let failed = Tracer::query(store.as_ref(), "lost-1").unwrap();
        assert_eq!(failed.events.len(), 1);
        assert!(!failed.events[0].success && failed.events[0].offset.is_none());
        assert_eq!(failed.events[0].partition, 9);
        // Nothing traced the commits to __consumer_offsets.
        assert!(
            trace_messages(store.as_ref())
                .iter()
                .flatten()
                .all(|e| e.topic == "or-ders")
        );
        assert_eq!(tracer.stats().dropped, 0);
        drop(consumer);
        drop(groups);
        traced.close().unwrap();
    });
}

#[test]
fn trace_messages_carry_at_most_twenty_events() {
    for_each_engine(|engine, dir| {
        let store = open(engine, dir);
        let tracer =
            Arc::new(Tracer::new(Arc::clone(&store), config(Duration::from_secs(3600))).unwrap());
        let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
        traced.create_topic("t", TopicConfig::default()).unwrap();
        for i in 0..95 {
            traced
                .append("t", 0, &[Message::new("x").with_key(format!("k{i}"))])
                .unwrap();
        }
        tracer.flush().unwrap();
        let messages = trace_messages(store.as_ref());
        let sizes: Vec<usize> = messages.iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 95, "{sizes:?}");
        assert!(
            sizes
                .iter()
                .all(|&n| (1..=MAX_EVENTS_PER_MESSAGE).contains(&n)),
            "{sizes:?}"
        );
        // With an hour's flush interval the writer writes only once 20 events are queued (or
        // more, if more arrived meanwhile), so at most 4 writes before the flush, each at
        // most one partial trace message: batches, not one message per event.
        assert_eq!(
            sizes.iter().max(),
            Some(&MAX_EVENTS_PER_MESSAGE),
            "{sizes:?}"
        );
        assert!(sizes.len() <= 9, "{sizes:?}");
        assert_eq!(tracer.stats().trace_messages, messages.len() as u64);
        for i in [0, 47, 94] {
            let q = Tracer::query(store.as_ref(), &format!("k{i}")).unwrap();
            assert_eq!(q.events.len(), 1);
            assert_eq!(q.events[0].offset, Some(i));
        }
        traced.close().unwrap();
    });
}

#[test]
fn close_writes_everything_queued_and_it_survives_a_reopen() {
    for_each_engine(|engine, dir| {
        let opts = small_options(engine);
        {
            let store = open(engine, dir);
            let tracer = Arc::new(
                Tracer::new(Arc::clone(&store), config(Duration::from_secs(3600))).unwrap(),
            );
            let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
            traced.create_topic("t", TopicConfig::default()).unwrap();
            for i in 0..7 {
                traced
                    .append("t", 0, &[Message::new("x").with_key(format!("k{i}"))])
                    .unwrap();
            }
            // Fewer than a trace message's worth, an hour's interval: nothing written yet.
            assert_eq!(store.bounds(TRACE_TOPIC, 0).unwrap().end, 0);
            traced.close().unwrap();
            assert_eq!(tracer.stats().written, 7);
            // Closed: later events are dropped and counted, never queued.
            assert!(!tracer.is_open());
            tracer.produced("t", 0, &[Message::new("late")], Some(7), Duration::ZERO);
            assert_eq!(tracer.stats().dropped, 1);
            assert!(matches!(tracer.flush(), Err(duolog::Error::Closed)));
        }
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, opts.clone()).unwrap());
        for i in 0..7 {
            let q = Tracer::query(store.as_ref(), &format!("t-0-{i}")).unwrap();
            assert_eq!(q.events.len(), 1, "t-0-{i}");
            assert_eq!(q.events[0].key, format!("k{i}"));
        }
        // Dropping a tracer writes what it queued too.
        let tracer =
            Arc::new(Tracer::new(Arc::clone(&store), config(Duration::from_secs(3600))).unwrap());
        let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
        traced
            .append("t", 0, &[Message::new("y").with_key("dropped-tracer")])
            .unwrap();
        drop(traced);
        drop(tracer);
        let q = Tracer::query(store.as_ref(), "dropped-tracer").unwrap();
        assert_eq!(q.events.len(), 1);
        store.close().unwrap();
    });
}

#[test]
fn keys_that_are_not_keys_words_are_found_too() {
    for_each_engine(|engine, dir| {
        let store = open(engine, dir);
        let tracer =
            Arc::new(Tracer::new(Arc::clone(&store), config(Duration::from_secs(3600))).unwrap());
        let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
        traced.create_topic("t", TopicConfig::default()).unwrap();
        let long = "L".repeat(2000);
        let keys: Vec<Vec<u8>> = vec![
            b"with space".to_vec(),
            vec![0xff, 0x00, 0x01],
            long.clone().into_bytes(),
            b"tab\tand\\back".to_vec(),
        ];
        for k in &keys {
            traced
                .append("t", 0, &[Message::new("x").with_key(k.clone())])
                .unwrap();
        }
        tracer.flush().unwrap();
        for (i, text) in ["with space", "ff0001", long.as_str(), "tab\tand\\back"]
            .into_iter()
            .enumerate()
        {
            let q = Tracer::query(store.as_ref(), text).unwrap();
            assert_eq!(q.events.len(), 1, "{text:.20}");
            assert_eq!(q.events[0].offset, Some(i as u64));
            assert_eq!(q.events[0].key, text);
        }
        // A key past MAX_TRACED_FIELD is not kept (the queue stays bounded in bytes): the
        // event is found by its id.
        let huge = "H".repeat(MAX_TRACED_FIELD + 1);
        let r = traced
            .append(
                "t",
                0,
                &[Message::new("x")
                    .with_key(huge.clone())
                    .with_tags(huge.clone())],
            )
            .unwrap();
        tracer.flush().unwrap();
        let q = Tracer::query(store.as_ref(), &format!("t-0-{}", r.base_offset)).unwrap();
        assert_eq!(q.events.len(), 1);
        assert_eq!(
            (q.events[0].key.as_str(), q.events[0].tags.as_str()),
            ("", "")
        );
        assert!(
            Tracer::query(store.as_ref(), &huge)
                .unwrap()
                .events
                .is_empty()
        );
        traced.close().unwrap();
    });
}

#[test]
fn malformed_trace_bodies_are_skipped_and_counted() {
    for_each_engine(|engine, dir| {
        let store = open(engine, dir);
        let tracer = Arc::new(Tracer::new(Arc::clone(&store), config(Duration::ZERO)).unwrap());
        let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
        traced.create_topic("t", TopicConfig::default()).unwrap();
        traced
            .append("t", 0, &[Message::new("x").with_key("k")])
            .unwrap();
        tracer.flush().unwrap();
        // Something other than a tracer wrote to the trace topic, under the same key.
        for junk in [
            &b"Pub\x01garbage\x02"[..],
            b"\xff\xfe",
            b"SubAfter\x01\x01\x01",
        ] {
            store
                .append(
                    TRACE_TOPIC,
                    0,
                    &[Message::new(junk.to_vec()).with_property("KEYS", "k t-0-0")],
                )
                .unwrap();
        }
        for q in ["k", "t-0-0"] {
            let found = Tracer::query(store.as_ref(), q).unwrap();
            assert_eq!(found.malformed, 3);
            assert_eq!(found.events.len(), 1);
            assert_eq!(found.events[0].kind, TraceKind::Pub);
        }
        traced.close().unwrap();
    });
}

/// A store whose appends to the trace topic wait at a gate: the trace writer stuck in a slow
/// append, as under a full disk or a long fsync.
#[derive(Debug)]
struct Gated {
    /// (writer is waiting at the gate, gate open)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gated {
    fn wait_until_stuck(&self) {
        let mut s = self.state.lock();
        while !s.0 {
            self.changed.wait(&mut s);
        }
    }
    fn open(&self) {
        self.state.lock().1 = true;
        self.changed.notify_all();
    }
}

impl Hooks for Gated {
    fn before_append(&self, topic: &str, _partition: u32, _messages: &[Message]) {
        if topic == TRACE_TOPIC {
            let mut s = self.state.lock();
            s.0 = true;
            self.changed.notify_all();
            while !s.1 {
                self.changed.wait(&mut s);
            }
        }
    }
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    for_each_engine(|engine, dir| {
        let store = open(engine, dir);
        let gated = Wrapped::new(
            Arc::clone(&store),
            Gated {
                state: Mutex::new((false, false)),
                changed: Condvar::new(),
            },
        );
        let capacity = 8;
        let tracer = Arc::new(
            Tracer::new(
                Arc::clone(&gated) as Arc<dyn LogStore>,
                TraceConfig {
                    queue_capacity: capacity,
                    flush_interval: Duration::ZERO,
                    ..TraceConfig::default()
                },
            )
            .unwrap(),
        );
        let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
        traced.create_topic("t", TopicConfig::default()).unwrap();
        // The first event is taken at once (zero interval) and its write sticks at the gate.
        traced.append("t", 0, &[Message::new("0")]).unwrap();
        gated.hooks.wait_until_stuck();
        // The queue takes `capacity` more; the appends after that still go through (the
        // test would hang here if recording blocked), their events dropped and counted.
        let batch: Vec<Message> = (0..capacity + 5)
            .map(|i| Message::new(format!("{i}")))
            .collect();
        for m in &batch {
            traced.append("t", 0, std::slice::from_ref(m)).unwrap();
        }
        // A batch whose first event finds the queue full drops all of its events.
        traced.append("t", 0, &batch[..3]).unwrap();
        let stats = tracer.stats();
        assert_eq!(stats.recorded, 1 + capacity as u64);
        assert_eq!(stats.dropped, 5 + 3);
        assert_eq!(
            store.bounds("t", 0).unwrap().end,
            1 + capacity as u64 + 5 + 3
        );
        gated.hooks.open();
        tracer.close().unwrap();
        let stats = tracer.stats();
        assert_eq!((stats.written, stats.lost), (1 + capacity as u64, 0));
        for offset in 0..=capacity as u64 {
            let q = Tracer::query(store.as_ref(), &format!("t-0-{offset}")).unwrap();
            assert_eq!(q.events.len(), 1, "t-0-{offset}");
        }
        let q = Tracer::query(store.as_ref(), &format!("t-0-{}", capacity + 1)).unwrap();
        assert!(q.events.is_empty());
        store.close().unwrap();
    });
}

#[test]
fn a_failed_trace_write_is_counted_and_reported_by_flush() {
    for_each_engine(|engine, dir| {
        let store = open(engine, dir);
        let tracer =
            Arc::new(Tracer::new(Arc::clone(&store), config(Duration::from_secs(3600))).unwrap());
        let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
        traced.create_topic("t", TopicConfig::default()).unwrap();
        traced.append("t", 0, &[Message::new("x")]).unwrap();
        // The trace topic vanished under the tracer: its write fails, the events are lost and
        // counted, and the flush says so (once).
        store.delete_topic(TRACE_TOPIC).unwrap();
        assert!(matches!(
            tracer.flush(),
            Err(duolog::Error::UnknownTopic(_))
        ));
        let stats = tracer.stats();
        assert_eq!((stats.lost, stats.write_errors, stats.written), (1, 1, 0));
        tracer.flush().unwrap();
        traced.close().unwrap();
    });
}

#[test]
fn bad_tracer_settings_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LogStore> =
        Arc::from(duolog::open(dir.path(), StoreOptions::default()).unwrap());
    for bad in [
        TraceConfig {
            queue_capacity: 0,
            ..TraceConfig::default()
        },
        TraceConfig {
            queue_capacity: usize::MAX,
            ..TraceConfig::default()
        },
        TraceConfig {
            partitions: 0,
            ..TraceConfig::default()
        },
        TraceConfig {
            topic: "bad topic".into(),
            ..TraceConfig::default()
        },
    ] {
        assert!(matches!(
            Tracer::new(Arc::clone(&store), bad),
            Err(duolog::Error::InvalidArgument(_))
        ));
    }
    // A trace topic with its own partitions is used as it is.
    store
        .create_topic("my-trace", TopicConfig::with_partitions(3))
        .unwrap();
    let tracer = Tracer::new(
        Arc::clone(&store),
        TraceConfig {
            topic: "my-trace".into(),
            ..TraceConfig::default()
        },
    )
    .unwrap();
    assert_eq!(tracer.topic(), "my-trace");
    assert_eq!(store.describe_topic("my-trace").unwrap().partitions, 3);
    assert!(
        Tracer::query(store.as_ref(), "x")
            .is_err_and(|e| matches!(e, duolog::Error::UnknownTopic(_)))
    );
    let q = Tracer::query_topic(store.as_ref(), "my-trace", "", 10);
    assert!(matches!(q, Err(duolog::Error::InvalidArgument(_))));
    tracer.close().unwrap();
    tracer.close().unwrap();
}

#[test]
fn trace_messages_too_large_for_the_store_are_written_in_smaller_pieces() {
    for_each_engine(|engine, dir| {
        // 64 KiB commit-log files, and a topic limit of 64 KiB for the segmented engine: a
        // full trace message of 20 events with 4 KiB tags does not fit in one record.
        let store = open(engine, dir);
        store
            .create_topic(
                TRACE_TOPIC,
                TopicConfig {
                    max_message_bytes: Some(60 * 1024),
                    ..TopicConfig::default()
                },
            )
            .unwrap();
        let tracer =
            Arc::new(Tracer::new(Arc::clone(&store), config(Duration::from_secs(3600))).unwrap());
        let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
        traced.create_topic("t", TopicConfig::default()).unwrap();
        let tags = "T".repeat(MAX_TRACED_FIELD);
        for i in 0..MAX_EVENTS_PER_MESSAGE {
            traced
                .append(
                    "t",
                    0,
                    &[Message::new("x")
                        .with_key(format!("k{i}"))
                        .with_tags(tags.clone())],
                )
                .unwrap();
        }
        tracer.flush().unwrap();
        let stats = tracer.stats();
        assert_eq!(
            (stats.written, stats.lost),
            (MAX_EVENTS_PER_MESSAGE as u64, 0),
            "{stats:?}"
        );
        for i in 0..MAX_EVENTS_PER_MESSAGE {
            let q = Tracer::query(store.as_ref(), &format!("k{i}")).unwrap();
            assert_eq!(q.events.len(), 1, "k{i}");
            assert_eq!(q.events[0].tags, tags);
        }
        traced.close().unwrap();
    });
}
