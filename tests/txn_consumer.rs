//! Consumers under both isolation levels (issue 14, item 3, through the consumer layer): the
//! pull consumer never returns an aborted record or one past the last stable offset under
//! `read_committed`, moves its position past markers (never stalls on one), wakes when a
//! commit releases records, and sees everything under the default `read_uncommitted`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
use duolog::{IsolationLevel, LogStore, Message, TopicConfig};

fn bodies(records: &[duolog::consumer::ConsumerRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.record().body().to_vec()).unwrap())
        .collect()
}

fn consumer(groups: &GroupCoordinator, group: &str, isolation: IsolationLevel) -> Consumer {
    let c = Consumer::new(
        groups,
        ConsumerConfig {
            isolation,
            auto_offset_reset: OffsetReset::Earliest,
            enable_auto_commit: false,
            ..ConsumerConfig::new(group)
        },
    )
    .unwrap();
    c.assign(&[("t", 0)]).unwrap();
    c
}

/// Polls until `n` records came or the partition has nothing more (an empty poll).
fn drain(c: &Consumer) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let got = c.poll(Duration::from_millis(50)).unwrap();
        if got.is_empty() {
            return out;
        }
        out.extend(bodies(&got));
    }
}

#[test]
fn read_committed_consumers_skip_aborted_records_and_stop_at_the_last_stable_offset() {
    common::for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &common::small_options(engine)));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let txns = TransactionCoordinator::open(
            Arc::clone(&store),
            TxnCoordinatorConfig {
                groups: Some(groups.clone()),
                ..TxnCoordinatorConfig::default()
            },
        )
        .unwrap();
        let p = txns.producer("p", TxnProducerConfig::default()).unwrap();
        store.append("t", 0, &[Message::new("plain-1")]).unwrap();
        p.begin().unwrap();
        p.send("t", 0, &[Message::new("aborted")]).unwrap();
        p.abort().unwrap();
        p.begin().unwrap();
        p.send("t", 0, &[Message::new("committed")]).unwrap();
        p.commit().unwrap();
        // An open transaction holds everything after it back, plain records too.
        p.begin().unwrap();
        p.send("t", 0, &[Message::new("open")]).unwrap();
        store.append("t", 0, &[Message::new("plain-2")]).unwrap();

        let rc = consumer(&groups, "rc", IsolationLevel::ReadCommitted);
        assert_eq!(drain(&rc), ["plain-1", "committed"]);
        let lso = store.bounds("t", 0).unwrap().last_stable;
        assert_eq!(
            rc.position("t", 0).unwrap(),
            lso,
            "past the markers, up to the LSO"
        );
        let ru = consumer(&groups, "ru", IsolationLevel::ReadUncommitted);
        assert_eq!(
            drain(&ru),
            ["plain-1", "aborted", "committed", "open", "plain-2"]
        );
        assert_eq!(
            ru.position("t", 0).unwrap(),
            store.bounds("t", 0).unwrap().end
        );
        // The default is read_uncommitted, as Kafka.
        assert_eq!(
            ConsumerConfig::new("x").isolation,
            IsolationLevel::ReadUncommitted
        );

        // A read_committed poll waiting at the LSO is woken by the commit (no busy loop, no
        // sleep to its timeout).
        let p2 = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            p.commit().unwrap();
            p
        });
        let t0 = Instant::now();
        let got = rc.poll(Duration::from_secs(20)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(10));
        let mut seen = bodies(&got);
        seen.extend(drain(&rc));
        assert_eq!(seen, ["open", "plain-2"]);
        assert_eq!(
            rc.position("t", 0).unwrap(),
            store.bounds("t", 0).unwrap().end
        );
        drop(p2.join().unwrap());
    });
}

/// The push consumer and the compacted table follow the isolation level too.
#[test]
fn push_consumers_and_tables_read_committed_see_only_committed_records() {
    use duolog::CompactedTable;
    use duolog::consumer::{ConsumeResult, PushConfig, PushConsumer};
    common::for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &common::small_options(engine)));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let txns = TransactionCoordinator::open(
            Arc::clone(&store),
            TxnCoordinatorConfig {
                groups: Some(groups.clone()),
                ..TxnCoordinatorConfig::default()
            },
        )
        .unwrap();
        let p = txns.producer("p", TxnProducerConfig::default()).unwrap();
        let table = CompactedTable::open_with_isolation(
            Arc::clone(&store),
            "t",
            IsolationLevel::ReadCommitted,
        )
        .unwrap();
        p.begin().unwrap();
        p.send("t", 0, &[Message::new("aborted").with_key("k")])
            .unwrap();
        p.abort().unwrap();
        p.begin().unwrap();
        p.send("t", 0, &[Message::new("committed").with_key("k")])
            .unwrap();
        p.commit().unwrap();
        p.begin().unwrap();
        p.send("t", 0, &[Message::new("open").with_key("k")])
            .unwrap();
        assert_eq!(table.get(b"k").unwrap().as_deref(), Some(&b"committed"[..]));
        let uncommitted = CompactedTable::open(Arc::clone(&store), "t").unwrap();
        assert_eq!(
            uncommitted.get(b"k").unwrap().as_deref(),
            Some(&b"open"[..])
        );

        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        let config = PushConfig {
            consumer: ConsumerConfig {
                isolation: IsolationLevel::ReadCommitted,
                auto_offset_reset: OffsetReset::Earliest,
                ..ConsumerConfig::new("push")
            },
            ..PushConfig::new("push")
        };
        let handler = move |records: &[duolog::consumer::ConsumerRecord]| {
            let mut s = seen2.lock();
            for r in records {
                s.push(String::from_utf8(r.record().body().to_vec()).unwrap());
            }
            ConsumeResult::Success
        };
        let push = PushConsumer::start(&groups, config, &["t"], Arc::new(handler)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.lock().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(*seen.lock(), ["committed"]);
        p.commit().unwrap();
        while seen.lock().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(*seen.lock(), ["committed", "open"]);
        assert_eq!(table.get(b"k").unwrap().as_deref(), Some(&b"open"[..]));
        push.shutdown().unwrap();
    });
}
