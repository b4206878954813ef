//! Producer-side partition selection (`duolog::order`): by key, round robin, explicit and a
//! user selector, through an `OrderedProducer`, on both engines.

mod common;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use common::{for_each_engine, read_all, small_options};
use duolog::order::{ByKey, Explicit, OrderedProducer, RoundRobin, create_global_topic};
use duolog::{Error, LogStore, Message, TopicConfig, partition_for_key};

fn open(dir: &std::path::Path, engine: duolog::EngineKind) -> Arc<dyn LogStore> {
    Arc::from(duolog::open(dir, small_options(engine)).unwrap())
}

/// (key, body) of every record of every partition.
fn by_partition(store: &dyn LogStore, topic: &str) -> BTreeMap<u32, Vec<(String, String)>> {
    let n = store.describe_topic(topic).unwrap().partitions;
    (0..n)
        .map(|p| {
            let recs = read_all(store, topic, p)
                .iter()
                .map(|r| {
                    (
                        String::from_utf8_lossy(r.key().unwrap_or_default()).into_owned(),
                        String::from_utf8_lossy(r.body()).into_owned(),
                    )
                })
                .collect();
            (p, recs)
        })
        .collect()
}

#[test]
fn every_message_of_a_key_goes_to_its_murmur2_partition_in_send_order() {
    for_each_engine(|engine, dir| {
        let store = open(dir, engine);
        store
            .create_topic("orders", TopicConfig::with_partitions(4))
            .unwrap();
        let producer = OrderedProducer::new(Arc::clone(&store), "orders", ByKey).unwrap();
        for step in 0..20 {
            for key in 0..5 {
                let m = Message::new(format!("{step}")).with_key(format!("order-{key}"));
                let (p, _) = producer.send(&m).unwrap();
                assert_eq!(p, partition_for_key(format!("order-{key}").as_bytes(), 4));
            }
        }
        for (p, recs) in by_partition(&*store, "orders") {
            let mut next: BTreeMap<String, u32> = BTreeMap::new();
            for (key, body) in recs {
                assert_eq!(partition_for_key(key.as_bytes(), 4), p, "{key} strayed");
                let n = next.entry(key.clone()).or_default();
                assert_eq!(body, n.to_string(), "{key} out of order");
                *n += 1;
            }
        }
    });
}

#[test]
fn a_sharding_key_argument_routes_a_message_without_a_key() {
    for_each_engine(|engine, dir| {
        let store = open(dir, engine);
        store
            .create_topic("t", TopicConfig::with_partitions(8))
            .unwrap();
        let producer = OrderedProducer::new(Arc::clone(&store), "t", ByKey).unwrap();
        let (p, _) = producer
            .send_with(&Message::new("x"), &"order-9".to_owned())
            .unwrap();
        assert_eq!(p, partition_for_key(b"order-9", 8));
        let e = producer.send(&Message::new("no key")).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let total: u64 = (0..8).map(|p| store.bounds("t", p).unwrap().end).sum();
        assert_eq!(total, 1, "the refused message was not appended");
    });
}

#[test]
fn round_robin_from_many_threads_spreads_exactly_evenly() {
    for_each_engine(|engine, dir| {
        let store = open(dir, engine);
        store
            .create_topic("t", TopicConfig::with_partitions(4))
            .unwrap();
        let producer =
            Arc::new(OrderedProducer::new(Arc::clone(&store), "t", RoundRobin::default()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let producer = Arc::clone(&producer);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        producer.send(&Message::new(format!("{i}"))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for p in 0..4 {
            assert_eq!(store.bounds("t", p).unwrap().end, 50, "partition {p}");
        }
    });
}

#[test]
fn a_selector_picking_a_partition_past_the_count_is_an_error_not_a_panic() {
    for_each_engine(|engine, dir| {
        let store = open(dir, engine);
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        let explicit = OrderedProducer::new(Arc::clone(&store), "t", Explicit(2)).unwrap();
        let e = explicit.send(&Message::new("x")).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("partition 2")),
            "{e:?}"
        );
        let closure = |_: &Message, _: &dyn Any, n: u32| n + 7;
        let wild = OrderedProducer::new(Arc::clone(&store), "t", closure).unwrap();
        assert!(matches!(
            wild.send_batch(&[Message::new("a"), Message::new("b")]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            wild.send_batch(&[]),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            store.bounds("t", 0).unwrap().end + store.bounds("t", 1).unwrap().end,
            0
        );
        let ok = OrderedProducer::new(Arc::clone(&store), "t", Explicit(1)).unwrap();
        assert_eq!(ok.send(&Message::new("x")).unwrap(), (1, 0));
        assert!(matches!(
            OrderedProducer::new(store, "missing", ByKey),
            Err(Error::UnknownTopic(_))
        ));
    });
}

#[test]
fn a_user_selector_gets_the_argument_like_rocketmq_message_queue_selector() {
    for_each_engine(|engine, dir| {
        let store = open(dir, engine);
        store
            .create_topic("t", TopicConfig::with_partitions(3))
            .unwrap();
        let by_order_id = |_: &Message, arg: &dyn Any, n: u32| {
            arg.downcast_ref::<u64>()
                .map_or(0, |id| (id % u64::from(n)) as u32)
        };
        let producer = OrderedProducer::new(Arc::clone(&store), "t", by_order_id).unwrap();
        for id in [10u64, 11, 12, 13] {
            let (p, _) = producer
                .send_with(&Message::new(id.to_string()), &id)
                .unwrap();
            assert_eq!(u64::from(p), id % 3);
        }
    });
}

#[test]
fn a_batch_keeps_each_partition_s_messages_together_and_in_order() {
    for_each_engine(|engine, dir| {
        let store = open(dir, engine);
        store
            .create_topic("t", TopicConfig::with_partitions(3))
            .unwrap();
        let producer = OrderedProducer::new(Arc::clone(&store), "t", ByKey).unwrap();
        store.append("t", 0, &[Message::new("before")]).unwrap();
        let batch: Vec<Message> = (0..30)
            .map(|i| Message::new(format!("{}", i / 6)).with_key(format!("k{}", i % 6)))
            .collect();
        let written = producer.send_batch(&batch).unwrap();
        let mut counts: BTreeMap<u32, u64> = BTreeMap::new();
        for m in &batch {
            *counts
                .entry(partition_for_key(m.key.as_ref().unwrap(), 3))
                .or_default() += 1;
        }
        assert_eq!(written.len(), counts.len());
        for (p, r) in &written {
            // One append per partition: one contiguous run of offsets.
            assert_eq!(
                r.last_offset - r.base_offset + 1,
                counts[p],
                "partition {p}"
            );
        }
        for (_, recs) in by_partition(&*store, "t") {
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            for (key, body) in recs.into_iter().filter(|(k, _)| !k.is_empty()) {
                if let Some(prev) = last.insert(key.clone(), body.clone()) {
                    assert!(prev < body, "{key}: {prev} then {body}");
                }
            }
        }
    });
}

#[test]
fn the_cached_partition_count_follows_a_topic_grown_elsewhere() {
    for_each_engine(|engine, dir| {
        let store = open(dir, engine);
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        let explicit = |_: &Message, arg: &dyn Any, _: u32| *arg.downcast_ref::<u32>().unwrap();
        let producer = OrderedProducer::new(Arc::clone(&store), "t", explicit).unwrap();
        // Grown by another handle: the selector's pick past the cached count re-reads it.
        store.add_partitions("t", 1).unwrap();
        assert_eq!(
            producer.send_with(&Message::new("x"), &2u32).unwrap(),
            (2, 0)
        );
        assert_eq!(producer.partitions(), 3);

        // Grown through the producer: keys move to the new count at once.
        let keyed = OrderedProducer::new(Arc::clone(&store), "t", ByKey).unwrap();
        assert_eq!(keyed.add_partitions(5).unwrap(), 8);
        assert_eq!(keyed.partitions(), 8);
        let (p, _) = keyed.send(&Message::new("x").with_key("k")).unwrap();
        assert_eq!(p, partition_for_key(b"k", 8));
    });
}

#[test]
fn an_unknown_partition_after_the_topic_shrank_reselects_once_and_appends_once() {
    for_each_engine(|engine, dir| {
        let store = open(dir, engine);
        store
            .create_topic("t", TopicConfig::with_partitions(4))
            .unwrap();
        let producer = OrderedProducer::new(Arc::clone(&store), "t", ByKey).unwrap();
        let key = (0..)
            .map(|i| format!("key-{i}"))
            .find(|k| partition_for_key(k.as_bytes(), 4) >= 2)
            .unwrap();
        store.delete_topic("t").unwrap();
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        let (p, offset) = producer
            .send(&Message::new("x").with_key(key.clone()))
            .unwrap();
        assert_eq!((p, offset), (partition_for_key(key.as_bytes(), 2), 0));
        assert_eq!(producer.partitions(), 2);
        let total: u64 = (0..2).map(|p| store.bounds("t", p).unwrap().end).sum();
        assert_eq!(total, 1);
    });
}

#[test]
fn a_globally_ordered_topic_cannot_be_widened_through_the_producer() {
    for_each_engine(|engine, dir| {
        let store = open(dir, engine);
        create_global_topic(&*store, "ledger", TopicConfig::default()).unwrap();
        assert!(create_global_topic(&*store, "wide", TopicConfig::with_partitions(2)).is_err());
        let producer = OrderedProducer::new(Arc::clone(&store), "ledger", ByKey).unwrap();
        assert!(matches!(
            producer.add_partitions(1),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(producer.partitions(), 1);
        for i in 0..10 {
            let (p, off) = producer
                .send(&Message::new("x").with_key(format!("k{i}")))
                .unwrap();
            assert_eq!((p, off), (0, i));
        }
    });
}
