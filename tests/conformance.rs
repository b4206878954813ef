//! The `LogStore` contract, written once against the trait and run on every engine, on the
//! real disk and on the simulated one (`SimFs`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{for_each_backend, for_each_engine, open, read_all, small_options};
use duolog::{Error, FlushPolicy, Message, ReadLimits, TopicConfig};

fn msg(i: usize) -> Message {
    Message::new(format!("body-{i}")).with_key(format!("key-{i}"))
}

#[test]
fn round_trip_of_every_message_field() {
    for_each_backend(|dir, base| {
        let store = open(dir, &base.clone());
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        let full = Message::new(vec![0u8, 1, 2, 255])
            .with_key("order-1001")
            .with_tags("TagA")
            .with_property("color", "red")
            .with_property("KEYS", "a b c")
            .with_property("ünïcode", "värde ✓")
            .with_timestamp(1_700_000_000_123);
        let empty = Message::new(Vec::new());
        let binary_key = Message::new("x").with_key(vec![0u8, 1, 2, 0xff, b'\n']);
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        store
            .append("t", 1, &[full.clone(), empty.clone(), binary_key.clone()])
            .unwrap();
        let recs = store.read("t", 1, 0, ReadLimits::default()).unwrap();
        assert_eq!(recs.len(), 3);
        let r = &recs[0];
        assert_eq!(r.offset(), 0);
        assert_eq!(r.body(), &[0u8, 1, 2, 255]);
        assert_eq!(r.key(), Some(&b"order-1001"[..]));
        assert_eq!(r.tags(), Some("TagA"));
        assert_eq!(r.timestamp(), 1_700_000_000_123);
        assert_eq!(
            r.properties().to_vec(),
            vec![
                ("color".to_string(), "red".to_string()),
                ("KEYS".to_string(), "a b c".to_string()),
                ("ünïcode".to_string(), "värde ✓".to_string())
            ]
        );
        assert_eq!(r.properties().get("color"), Some("red"));
        assert!(r.store_timestamp() >= before);
        assert_eq!(r.to_message(), full);
        assert_eq!(recs[1].body(), b"");
        assert_eq!(recs[1].key(), None);
        assert_eq!(recs[1].tags(), None);
        assert!(recs[1].properties().is_empty());
        assert!(recs[1].timestamp() >= before, "missing timestamp means now");
        assert_eq!(recs[2].key(), Some(&[0u8, 1, 2, 0xff, b'\n'][..]));
        // The other partition is untouched.
        assert!(
            store
                .read("t", 0, 0, ReadLimits::default())
                .unwrap()
                .is_empty()
        );
    });
}

#[test]
fn batches_get_dense_offsets_and_files_roll() {
    for_each_backend(|dir, base| {
        let store = open(dir, &base.clone());
        store
            .create_topic("t", TopicConfig::with_partitions(3))
            .unwrap();
        let mut expected = 0u64;
        let mut i = 0;
        // ~3 MB over 64 KiB files: many rolls.
        for round in 0..300 {
            let n = 1 + round % 17;
            let batch: Vec<Message> = (0..n)
                .map(|_| {
                    i += 1;
                    Message::new(vec![b'x'; 100 + (i * 37) % 900]).with_key(format!("{i}"))
                })
                .collect();
            let r = store.append("t", (round % 3) as u32, &batch).unwrap();
            if round % 3 == 0 {
                assert_eq!(r.base_offset, expected);
                assert_eq!(r.last_offset, expected + n as u64 - 1);
                expected += n as u64;
            }
        }
        for p in 0..3 {
            let recs = read_all(store.as_ref(), "t", p);
            for (k, r) in recs.iter().enumerate() {
                assert_eq!(r.offset(), k as u64, "partition {p}");
            }
        }
        assert_eq!(store.bounds("t", 0).unwrap().end, expected);
        assert!(
            store.disk_usage().unwrap().files > 10,
            "small files must have rolled"
        );
        assert!(
            store.verify().unwrap().is_ok(),
            "{:?}",
            store.verify().unwrap().problems
        );
    });
}

#[test]
fn bounds_track_durability() {
    for_each_backend(|dir, base| {
        let opts = duolog::StoreOptions {
            flush: FlushPolicy::Async {
                interval: Duration::from_secs(3600),
            },
            ..base.clone()
        };
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        assert_eq!(
            store.bounds("t", 0).unwrap(),
            duolog::PartitionBounds {
                start: 0,
                end: 0,
                durable_end: 0,
                last_stable: 0,
            }
        );
        store.append("t", 0, &[msg(0), msg(1)]).unwrap();
        let b = store.bounds("t", 0).unwrap();
        assert_eq!((b.start, b.end), (0, 2));
        assert_eq!(
            b.durable_end, 0,
            "an hour-long flush interval has not flushed yet"
        );
        store.sync().unwrap();
        assert_eq!(store.bounds("t", 0).unwrap().durable_end, 2);
    });
}

#[test]
fn sync_policy_acknowledges_only_durable_appends() {
    for_each_backend(|dir, base| {
        let opts = duolog::StoreOptions {
            flush: FlushPolicy::Sync,
            ..base.clone()
        };
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        for i in 0..20 {
            store.append("t", 0, &[msg(i)]).unwrap();
            let b = store.bounds("t", 0).unwrap();
            assert_eq!(b.durable_end, b.end);
        }
        // Oneway does not wait, but the data is readable at once.
        store.append_oneway("t", 0, &[msg(99)]).unwrap();
        assert_eq!(store.bounds("t", 0).unwrap().end, 21);
    });
}

#[test]
fn async_completion_fires_when_durable() {
    for_each_backend(|dir, base| {
        let store = open(dir, &base.clone());
        store.create_topic("t", TopicConfig::default()).unwrap();
        let c = store.append_async("t", 0, &[msg(0), msg(1)]).unwrap();
        assert_eq!(c.offsets().last_offset, 1);
        let (tx, rx) = std::sync::mpsc::channel();
        let c2 = store.append_async("t", 0, &[msg(2)]).unwrap();
        c2.on_durable(move |r| {
            tx.send(r.map(|a| a.base_offset).map_err(|e| e.to_string()))
                .unwrap()
        });
        // The 50 ms background flush makes both durable.
        assert_eq!(
            c.wait_timeout(Duration::from_secs(10))
                .unwrap()
                .map(|r| r.base_offset),
            Some(0)
        );
        assert!(c.is_durable());
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(2));
        assert!(store.bounds("t", 0).unwrap().durable_end >= 3);
    });
}

#[test]
fn read_limits() {
    for_each_backend(|dir, base| {
        let store = open(dir, &base.clone());
        store.create_topic("t", TopicConfig::default()).unwrap();
        let batch: Vec<Message> = (0..50)
            .map(|i| Message::new(vec![b'a'; 1000]).with_key(format!("{i}")))
            .collect();
        store.append("t", 0, &batch).unwrap();
        assert_eq!(
            store
                .read("t", 0, 0, ReadLimits::messages(7))
                .unwrap()
                .len(),
            7
        );
        let some = store
            .read(
                "t",
                0,
                10,
                ReadLimits {
                    max_messages: 100,
                    max_bytes: 5000,
                    ..ReadLimits::default()
                },
            )
            .unwrap();
        assert!(!some.is_empty() && some.len() < 6, "got {}", some.len());
        assert_eq!(some[0].offset(), 10);
        let total: usize = some.iter().map(|r| r.stored_size() as usize).sum();
        assert!(total <= 5000);
        // A record larger than max_bytes still comes back alone, so readers progress.
        let one = store
            .read(
                "t",
                0,
                20,
                ReadLimits {
                    max_messages: 100,
                    max_bytes: 1,
                    ..ReadLimits::default()
                },
            )
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].offset(), 20);
        assert_eq!(
            store.read("t", 0, 45, ReadLimits::default()).unwrap().len(),
            5
        );
    });
}

#[test]
fn empty_partition_and_out_of_range_offsets() {
    for_each_backend(|dir, base| {
        let store = open(dir, &base.clone());
        store.create_topic("t", TopicConfig::default()).unwrap();
        assert!(
            store
                .read("t", 0, 0, ReadLimits::default())
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            store.read("t", 0, 1, ReadLimits::default()),
            Err(Error::OffsetOutOfRange {
                offset: 1,
                start: 0,
                end: 0,
                ..
            })
        ));
        store.append("t", 0, &[msg(0)]).unwrap();
        assert!(
            store
                .read("t", 0, 1, ReadLimits::default())
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            store.read("t", 0, 2, ReadLimits::default()),
            Err(Error::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn bad_requests_are_clear_errors() {
    for_each_backend(|dir, base| {
        let store = open(dir, &base.clone());
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        assert!(
            matches!(store.append("nope", 0, &[msg(0)]), Err(Error::UnknownTopic(t)) if t == "nope")
        );
        assert!(matches!(
            store.read("nope", 0, 0, ReadLimits::default()),
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            store.bounds("nope", 0),
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            store.append("t", 2, &[msg(0)]),
            Err(Error::UnknownPartition {
                partition: 2,
                partitions: 2,
                ..
            })
        ));
        assert!(matches!(
            store.create_topic("t", TopicConfig::default()),
            Err(Error::TopicExists(_))
        ));
        for bad in ["", "a/b", "..", "sp ace", &"x".repeat(128)] {
            assert!(
                matches!(
                    store.create_topic(bad, TopicConfig::default()),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            store.create_topic("z", TopicConfig::with_partitions(0)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            store.append("t", 0, &[]),
            Err(Error::InvalidArgument(_))
        ));
        let huge = Message::new(vec![0u8; 5 << 20]);
        assert!(matches!(
            store.append("t", 0, &[huge]),
            Err(Error::MessageTooLarge { .. })
        ));
        let sep = Message::new("x").with_property("a\u{1}b", "c");
        assert!(matches!(
            store.append("t", 0, &[sep]),
            Err(Error::InvalidArgument(_))
        ));
        // Nothing of the failed appends is visible.
        assert_eq!(store.bounds("t", 0).unwrap().end, 0);
    });
}

#[test]
fn oversize_message_in_a_batch_rejects_the_whole_batch() {
    for_each_backend(|dir, base| {
        let opts = duolog::StoreOptions {
            max_message_bytes: 16 * 1024,
            ..base.clone()
        };
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        let batch = vec![msg(0), Message::new(vec![0u8; 20 * 1024]), msg(2)];
        assert!(matches!(
            store.append("t", 0, &batch),
            Err(Error::MessageTooLarge { .. })
        ));
        assert_eq!(store.bounds("t", 0).unwrap().end, 0);
    });
}

#[test]
fn reopen_preserves_everything() {
    for_each_backend(|dir, base| {
        let opts = base.clone();
        let mut expected: HashMap<(String, u32), Vec<Message>> = HashMap::new();
        {
            let store = open(dir, &opts);
            store
                .create_topic("a", TopicConfig::with_partitions(2))
                .unwrap();
            store
                .create_topic("%RETRY%g", TopicConfig::default())
                .unwrap();
            for i in 0..500 {
                let (t, p) = if i % 5 == 0 {
                    ("%RETRY%g", 0)
                } else {
                    ("a", (i % 2) as u32)
                };
                let m = msg(i)
                    .with_tags(format!("T{}", i % 3))
                    .with_timestamp(1_700_000_000_000 + i as i64);
                store.append(t, p, std::slice::from_ref(&m)).unwrap();
                expected.entry((t.to_string(), p)).or_default().push(m);
            }
            store.close().unwrap();
            assert!(matches!(
                store.append("a", 0, &[msg(0)]),
                Err(Error::Closed)
            ));
        }
        for round in 0..2 {
            let store = open(dir, &opts);
            assert_eq!(store.list_topics(false), vec!["a".to_string()]);
            assert_eq!(
                store.list_topics(true),
                vec!["%RETRY%g".to_string(), "a".to_string()]
            );
            assert_eq!(store.describe_topic("a").unwrap().partitions, 2);
            for ((t, p), msgs) in &expected {
                let got: Vec<Message> = read_all(store.as_ref(), t, *p)
                    .iter()
                    .map(|r| r.to_message())
                    .collect();
                assert_eq!(&got, msgs, "round {round} {t}/{p}");
                let b = store.bounds(t, *p).unwrap();
                assert_eq!(b.durable_end, b.end);
            }
            assert!(store.verify().unwrap().is_ok());
            if round == 1 {
                // Appends continue densely after a reopen.
                assert_eq!(
                    store.append("a", 0, &[msg(1)]).unwrap().base_offset,
                    expected[&("a".to_string(), 0)].len() as u64
                );
            }
        }
    });
}

#[test]
fn crash_without_close_recovers_every_synced_record() {
    for_each_backend(|dir, base| {
        let opts = base.clone();
        let store = open(dir, &opts);
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        for i in 0..300 {
            store.append("t", (i % 2) as u32, &[msg(i)]).unwrap();
        }
        store.sync().unwrap();
        for i in 300..320 {
            store.append_oneway("t", (i % 2) as u32, &[msg(i)]).unwrap();
        }
        store.abandon();
        drop(store);
        let store = open(dir, &opts);
        for p in 0..2 {
            let recs = read_all(store.as_ref(), "t", p);
            // Process crash: the page cache survives, so even unsynced records are there.
            assert_eq!(recs.len(), 160);
            for (k, r) in recs.iter().enumerate() {
                assert_eq!(r.body(), format!("body-{}", k * 2 + p as usize).as_bytes());
            }
        }
        assert!(
            store.verify().unwrap().is_ok(),
            "{:?}",
            store.verify().unwrap().problems
        );
        assert_eq!(store.append("t", 0, &[msg(0)]).unwrap().base_offset, 160);
    });
}

#[test]
fn wait_for_wakes_on_append_and_times_out_otherwise() {
    for_each_backend(|dir, base| {
        let store: Arc<dyn duolog::LogStore> = Arc::from(open(dir, &base.clone()));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let t0 = Instant::now();
        assert!(
            !store
                .wait_for("t", 0, 0, Duration::from_millis(100))
                .unwrap()
        );
        assert!(t0.elapsed() >= Duration::from_millis(100));
        let s2 = Arc::clone(&store);
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let ok = s2.wait_for("t", 0, 0, Duration::from_secs(30)).unwrap();
            (ok, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        store.append("t", 0, &[msg(0)]).unwrap();
        let (ok, waited) = waiter.join().unwrap();
        assert!(ok);
        assert!(waited < Duration::from_secs(10));
        // Data already there: returns at once.
        assert!(store.wait_for("t", 0, 0, Duration::from_secs(30)).unwrap());
        assert!(matches!(
            store.wait_for("x", 0, 0, Duration::ZERO),
            Err(Error::UnknownTopic(_))
        ));
    });
}

/// `wait_for_any` means the same on every engine: data already past any offset returns at once,
/// an append to any one of the partitions (of several topics) ends the wait, nothing times out,
/// a user `Wakeup` ends it without data, closing the store ends it with `Closed`.
#[test]
fn wait_for_any_wakes_on_any_partition_and_times_out_otherwise() {
    for_each_backend(|dir, base| {
        let store: Arc<dyn duolog::LogStore> = Arc::from(open(dir, &base.clone()));
        store
            .create_topic("a", TopicConfig::with_partitions(3))
            .unwrap();
        store.create_topic("b", TopicConfig::default()).unwrap();
        store.append("a", 1, &[msg(0), msg(1)]).unwrap();
        let t0 = Instant::now();
        let idle = [("a", 0, 0), ("a", 1, 2), ("a", 2, 0), ("b", 0, 0)];
        assert!(
            !store
                .wait_for_any(&idle, Duration::from_millis(100))
                .unwrap()
        );
        assert!(t0.elapsed() >= Duration::from_millis(100));
        assert!(!store.wait_for_any(&[], Duration::from_millis(30)).unwrap());
        assert!(t0.elapsed() >= Duration::from_millis(130));
        // Already there: at once.
        let t = Instant::now();
        assert!(
            store
                .wait_for_any(&[("a", 0, 0), ("a", 1, 1)], Duration::from_secs(30))
                .unwrap()
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        // Each partition in turn ends a wait over all four.
        for (i, &(topic, partition, _)) in idle.iter().enumerate() {
            let s2 = Arc::clone(&store);
            let waiter = std::thread::spawn(move || {
                let t = Instant::now();
                let ok = s2.wait_for_any(&idle, Duration::from_secs(30)).unwrap();
                (ok, t.elapsed())
            });
            std::thread::sleep(Duration::from_millis(30));
            store.append(topic, partition, &[msg(10 + i)]).unwrap();
            let (ok, waited) = waiter.join().unwrap();
            assert!(ok, "woken by {topic}-{partition}");
            assert!(waited < Duration::from_secs(10), "{topic}-{partition}");
        }
        // Every offset now has data before it; past the ends again nothing is ready.
        let ends: Vec<(String, u32, u64)> = idle
            .iter()
            .map(|&(t, p, _)| (t.to_owned(), p, store.bounds(t, p).unwrap().end))
            .collect();
        let past: Vec<(&str, u32, u64)> =
            ends.iter().map(|(t, p, e)| (t.as_str(), *p, *e)).collect();
        assert!(
            !store
                .wait_for_any(&past, Duration::from_millis(20))
                .unwrap()
        );
        // A user wake-up ends the wait without data.
        let wakeup = duolog::Wakeup::new();
        let (s2, w2, owned) = (Arc::clone(&store), wakeup.clone(), ends.clone());
        let waiter = std::thread::spawn(move || {
            let past: Vec<(&str, u32, u64)> =
                owned.iter().map(|(t, p, e)| (t.as_str(), *p, *e)).collect();
            let t = Instant::now();
            let ok = s2
                .wait_for_any_with(&past, Duration::from_secs(60), &w2)
                .unwrap();
            (ok, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(30));
        wakeup.wake();
        let (ok, waited) = waiter.join().unwrap();
        assert!(!ok && waited < Duration::from_secs(30));
        assert!(matches!(
            store.wait_for_any(&[("a", 0, 0), ("x", 0, 0)], Duration::ZERO),
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            store.wait_for_any(&[("a", 9, 0)], Duration::ZERO),
            Err(Error::UnknownPartition { .. })
        ));
        // Closing the store ends a wait without a deadline.
        let (s2, owned) = (Arc::clone(&store), ends.clone());
        let waiter = std::thread::spawn(move || {
            let past: Vec<(&str, u32, u64)> =
                owned.iter().map(|(t, p, e)| (t.as_str(), *p, *e)).collect();
            s2.wait_for_any(&past, Duration::MAX)
        });
        std::thread::sleep(Duration::from_millis(30));
        store.close().unwrap();
        assert!(matches!(waiter.join().unwrap(), Err(Error::Closed)));
    });
}

#[test]
fn delete_before_raises_the_start_and_survives_reopen() {
    for_each_backend(|dir, base| {
        let opts = base.clone();
        {
            let store = open(dir, &opts);
            store.create_topic("t", TopicConfig::default()).unwrap();
            for i in 0..1000 {
                store
                    .append(
                        "t",
                        0,
                        &[Message::new(vec![b'z'; 200]).with_key(format!("{i}"))],
                    )
                    .unwrap();
            }
            let files_before = store.disk_usage().unwrap().files;
            assert_eq!(store.delete_before("t", 0, 700).unwrap(), 700);
            assert_eq!(store.bounds("t", 0).unwrap().start, 700);
            assert!(matches!(
                store.read("t", 0, 699, ReadLimits::default()),
                Err(Error::OffsetOutOfRange { start: 700, .. })
            ));
            assert_eq!(
                store.read("t", 0, 700, ReadLimits::messages(1)).unwrap()[0].key(),
                Some(&b"700"[..])
            );
            assert_eq!(
                store.delete_before("t", 0, 10).unwrap(),
                700,
                "the start never moves back"
            );
            assert!(matches!(
                store.delete_before("t", 0, 1001),
                Err(Error::OffsetOutOfRange { .. })
            ));
            assert!(store.disk_usage().unwrap().files <= files_before);
        }
        let store = open(dir, &opts);
        assert_eq!(store.bounds("t", 0).unwrap().start, 700);
        assert_eq!(store.bounds("t", 0).unwrap().end, 1000);
        assert!(
            store.verify().unwrap().is_ok(),
            "{:?}",
            store.verify().unwrap().problems
        );
    });
}

/// Records are zero-copy views on the CommitLog engine: they must stay intact after the files
/// they came from are deleted and the store is closed.
#[test]
fn records_outlive_their_files_and_the_store() {
    for_each_backend(|dir, base| {
        let opts = base.clone();
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        for i in 0..1000 {
            store.append("t", 0, &[msg(i)]).unwrap();
        }
        let early = read_all(&*store, "t", 0);
        let files_before = store.disk_usage().unwrap().files;
        store.delete_before("t", 0, 900).unwrap();
        store.enforce_retention().unwrap();
        assert!(
            store.disk_usage().unwrap().files < files_before,
            "deleting 900 of 1000 records frees files"
        );
        store.close().unwrap();
        drop(store);
        assert_eq!(early.len(), 1000);
        for (i, r) in early.iter().enumerate() {
            assert_eq!(r.offset(), i as u64);
            assert_eq!(r.body(), format!("body-{i}").as_bytes());
            assert_eq!(r.key(), Some(format!("key-{i}").as_bytes()));
        }
    });
}

#[test]
fn second_opener_is_locked_out() {
    for_each_backend(|dir, base| {
        let opts = base.clone();
        let store = open(dir, &opts);
        assert!(matches!(
            duolog::open(dir, opts.clone()),
            Err(Error::Locked(_))
        ));
        drop(store);
        open(dir, &opts);
    });
}

#[test]
fn concurrent_appenders_keep_every_partition_ordered() {
    for_each_backend(|dir, base| {
        for policy in [
            FlushPolicy::Async {
                interval: Duration::from_millis(20),
            },
            FlushPolicy::Sync,
        ] {
            let sub = dir.join(format!("{policy:?}").replace([' ', '{', '}', ':'], "_"));
            let opts = duolog::StoreOptions {
                flush: policy,
                ..base.clone()
            };
            let store: Arc<dyn duolog::LogStore> = Arc::from(open(&sub, &opts));
            store
                .create_topic("t", TopicConfig::with_partitions(5))
                .unwrap();
            const THREADS: usize = 8;
            const PER_THREAD: usize = 250;
            let handles: Vec<_> = (0..THREADS)
                .map(|th| {
                    let s = Arc::clone(&store);
                    std::thread::spawn(move || {
                        for seq in 0..PER_THREAD {
                            // Partition 0 is shared by everyone; 1..=4 by pairs of threads.
                            let p = if seq % 2 == 0 { 0 } else { 1 + (th % 4) as u32 };
                            let m = Message::new(format!("{th}:{seq}"));
                            if seq % 7 == 0 {
                                s.append(
                                    "t",
                                    p,
                                    &[m.clone(), Message::new(format!("{th}:{seq}b"))],
                                )
                                .unwrap();
                            } else {
                                s.append("t", p, &[m]).unwrap();
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let mut total = 0;
            for p in 0..5 {
                let recs = read_all(store.as_ref(), "t", p);
                let mut last_seq: HashMap<usize, i64> = HashMap::new();
                for (k, r) in recs.iter().enumerate() {
                    assert_eq!(r.offset(), k as u64);
                    let s = std::str::from_utf8(r.body()).unwrap();
                    let (th, rest) = s.split_once(':').unwrap();
                    let seq: i64 = rest.trim_end_matches('b').parse().unwrap();
                    let prev = last_seq.insert(th.parse().unwrap(), seq).unwrap_or(-1);
                    assert!(
                        seq > prev || (seq == prev && rest.ends_with('b')),
                        "partition {p}: {s} after {prev}"
                    );
                }
                total += recs.len();
            }
            let batches = (0..PER_THREAD).filter(|s| s % 7 == 0).count();
            assert_eq!(total, THREADS * (PER_THREAD + batches));
            assert!(store.verify().unwrap().is_ok());
        }
    });
}

/// Regression: one batch spanning several consume-queue files used to leave a hole in the
/// queue's file list.
#[test]
fn one_batch_larger_than_several_files_of_every_kind() {
    for_each_backend(|dir, base| {
        let store = open(dir, &base.clone());
        store.create_topic("t", TopicConfig::default()).unwrap();
        store.append("t", 0, &[msg(0)]).unwrap();
        let batch: Vec<Message> = (1..=300).map(msg).collect();
        let r = store.append("t", 0, &batch).unwrap();
        assert_eq!((r.base_offset, r.last_offset), (1, 300));
        let recs = read_all(store.as_ref(), "t", 0);
        assert_eq!(recs.len(), 301);
        assert_eq!(recs[300].body(), b"body-300");
        assert!(store.verify().unwrap().is_ok());
    });
}

/// Regression: `Instant::now() + timeout` panicked for timeouts past what an `Instant` holds,
/// even when there was nothing to wait for.
#[test]
fn waits_of_duration_max_return_as_soon_as_the_data_is_there() {
    for_each_engine(|engine, dir| {
        let store: Arc<dyn duolog::LogStore> = Arc::from(open(dir, &small_options(engine)));
        store.create_topic("t", TopicConfig::default()).unwrap();
        let c = store.append_async("t", 0, &[msg(0)]).unwrap();
        assert_eq!(
            c.wait_timeout(Duration::MAX)
                .unwrap()
                .map(|r| r.base_offset),
            Some(0),
            "{engine}: made durable by the background flush"
        );
        assert_eq!(
            c.wait_timeout(Duration::MAX)
                .unwrap()
                .map(|r| r.base_offset),
            Some(0),
            "{engine}: already durable"
        );
        let t = Instant::now();
        assert!(
            store.wait_for("t", 0, 0, Duration::MAX).unwrap(),
            "{engine}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{engine}: at once");
        // Data that arrives later ends a wait without a deadline too.
        let s2 = Arc::clone(&store);
        let waiter = std::thread::spawn(move || s2.wait_for("t", 0, 1, Duration::MAX));
        std::thread::sleep(Duration::from_millis(20));
        store.append("t", 0, &[msg(1)]).unwrap();
        assert!(waiter.join().unwrap().unwrap(), "{engine}");
    });
}

/// Regression: the flusher computed its next wake-up as `Instant::now() + interval` and died
/// on an interval of `Duration::MAX`; completions then hung and checkpoints stopped. A
/// `Duration::MAX` interval is Kafka's default `flush.ms` ("no timed flush"): accepted.
#[test]
fn flush_intervals_of_duration_max_keep_the_flusher_alive() {
    for_each_engine(|engine, dir| {
        let opts = duolog::StoreOptions {
            flush: FlushPolicy::Every {
                messages: 1,
                bytes: u64::MAX,
                interval: Duration::MAX,
            },
            ..small_options(engine)
        };
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        for i in 0..3 {
            let c = store.append_async("t", 0, &[msg(i)]).unwrap();
            assert!(
                c.wait_timeout(Duration::from_secs(10)).unwrap().is_some(),
                "{engine}: the message threshold flushes, the flusher lives"
            );
        }
        store.close().unwrap();
        drop(store);

        let opts = duolog::StoreOptions {
            flush: FlushPolicy::Async {
                interval: Duration::MAX,
            },
            ..small_options(engine)
        };
        let store = open(dir, &opts);
        // No timed flush, but the flusher still runs the 100 ms checkpoints, which make the
        // data durable.
        let c = store.append_async("t", 0, &[msg(3)]).unwrap();
        assert!(
            c.wait_timeout(Duration::from_secs(10)).unwrap().is_some(),
            "{engine}: checkpoints go on"
        );
        let c = store.append_async("t", 0, &[msg(4)]).unwrap();
        store.sync().unwrap();
        assert!(c.is_durable(), "{engine}");
        store.close().unwrap();
    });
}

/// Options that would stop a thread, spin one, or divide by zero are refused at `open` with an
/// error naming the option; merely large ones are accepted.
#[test]
fn absurd_options_are_refused_at_open_naming_the_option() {
    for_each_engine(|engine, dir| {
        let base = small_options(engine);
        let refused: Vec<(&str, duolog::StoreOptions)> = vec![
            (
                "flush",
                duolog::StoreOptions {
                    flush: FlushPolicy::Async {
                        interval: Duration::ZERO,
                    },
                    ..base.clone()
                },
            ),
            (
                "flush",
                duolog::StoreOptions {
                    flush: FlushPolicy::Every {
                        messages: 0,
                        bytes: 1,
                        interval: Duration::from_secs(1),
                    },
                    ..base.clone()
                },
            ),
            (
                "flush",
                duolog::StoreOptions {
                    flush: FlushPolicy::Every {
                        messages: 1,
                        bytes: 1,
                        interval: Duration::ZERO,
                    },
                    ..base.clone()
                },
            ),
            (
                "checkpoint_interval",
                duolog::StoreOptions {
                    commitlog: duolog::CommitLogOptions {
                        checkpoint_interval: Duration::ZERO,
                        ..base.commitlog.clone()
                    },
                    segmented: duolog::SegmentedOptions {
                        checkpoint_interval: Duration::ZERO,
                        ..base.segmented.clone()
                    },
                    ..base.clone()
                },
            ),
            (
                "retention_check_interval",
                duolog::StoreOptions {
                    commitlog: duolog::CommitLogOptions {
                        retention_check_interval: Duration::ZERO,
                        ..base.commitlog.clone()
                    },
                    segmented: duolog::SegmentedOptions {
                        retention_check_interval: Duration::ZERO,
                        ..base.segmented.clone()
                    },
                    ..base.clone()
                },
            ),
            (
                "max_open_files",
                duolog::StoreOptions {
                    max_open_files: 0,
                    ..base.clone()
                },
            ),
            (
                "index.slots",
                duolog::StoreOptions {
                    index: duolog::IndexOptions {
                        slots: 0,
                        ..base.index
                    },
                    ..base.clone()
                },
            ),
            (
                "index.max_entries",
                duolog::StoreOptions {
                    index: duolog::IndexOptions {
                        max_entries: 0,
                        ..base.index
                    },
                    ..base.clone()
                },
            ),
            (
                "index.max_entries",
                duolog::StoreOptions {
                    index: duolog::IndexOptions {
                        max_entries: u32::MAX,
                        ..base.index
                    },
                    ..base.clone()
                },
            ),
            (
                "index.slots",
                duolog::StoreOptions {
                    index: duolog::IndexOptions {
                        slots: u32::MAX,
                        ..base.index
                    },
                    ..base.clone()
                },
            ),
        ];
        for (name, opts) in refused {
            match duolog::open(dir, opts.clone()) {
                Err(Error::InvalidArgument(m)) => {
                    assert!(m.contains(name), "{engine}: {m:?} names {name}")
                }
                Err(e) => panic!("{engine}: {name}: {e}"),
                Ok(_) => panic!("{engine}: {name} accepted: {opts:?}"),
            }
        }
        let commitlog = |o: duolog::CommitLogOptions| duolog::StoreOptions {
            commitlog: o,
            ..base.clone()
        };
        let engine_only: Vec<(&str, duolog::StoreOptions)> = match engine {
            duolog::EngineKind::CommitLog => vec![
                (
                    "commitlog.consume_queue_units",
                    commitlog(duolog::CommitLogOptions {
                        consume_queue_units: u32::MAX,
                        ..base.commitlog.clone()
                    }),
                ),
                (
                    "commitlog.consume_queue_units",
                    commitlog(duolog::CommitLogOptions {
                        consume_queue_units: 0,
                        ..base.commitlog.clone()
                    }),
                ),
                (
                    "commitlog.file_size",
                    commitlog(duolog::CommitLogOptions {
                        file_size: 1 << 31,
                        ..base.commitlog.clone()
                    }),
                ),
                (
                    "commitlog.file_size",
                    commitlog(duolog::CommitLogOptions {
                        file_size: 0,
                        ..base.commitlog.clone()
                    }),
                ),
            ],
            _ => vec![(
                "index_interval_bytes",
                duolog::StoreOptions {
                    segmented: duolog::SegmentedOptions {
                        index_interval_bytes: 0,
                        ..base.segmented.clone()
                    },
                    ..base.clone()
                },
            )],
        };
        for (name, opts) in engine_only {
            match duolog::open(dir, opts) {
                Err(Error::InvalidArgument(m)) => {
                    assert!(m.contains(name), "{engine}: {m:?} names {name}")
                }
                other => panic!("{engine}: {name}: {:?}", other.err()),
            }
        }
        // The disabled index's sizes do not matter; large durations are fine.
        let accepted = duolog::StoreOptions {
            index: duolog::IndexOptions {
                enabled: false,
                slots: 0,
                max_entries: 0,
            },
            commitlog: duolog::CommitLogOptions {
                checkpoint_interval: Duration::MAX,
                retention_check_interval: Duration::MAX,
                retention: Some(Duration::MAX),
                ..base.commitlog.clone()
            },
            segmented: duolog::SegmentedOptions {
                checkpoint_interval: Duration::MAX,
                retention_check_interval: Duration::MAX,
                retention: Some(Duration::MAX),
                ..base.segmented.clone()
            },
            ..base.clone()
        };
        let store = open(dir, &accepted);
        store.create_topic("t", TopicConfig::default()).unwrap();
        store.append("t", 0, &[msg(0)]).unwrap();
        store.close().unwrap();
    });
}

/// Regression: `retention: Some(Duration::MAX)` ("keep forever") wrapped to a cutoff in the
/// future and deleted every sealed file.
#[test]
fn retention_of_duration_max_deletes_nothing() {
    for_each_engine(|engine, dir| {
        let base = small_options(engine);
        let opts = duolog::StoreOptions {
            commitlog: duolog::CommitLogOptions {
                retention: Some(Duration::MAX),
                ..base.commitlog.clone()
            },
            segmented: duolog::SegmentedOptions {
                retention: Some(Duration::MAX),
                ..base.segmented.clone()
            },
            ..base
        };
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        for i in 0..40 {
            store
                .append(
                    "t",
                    0,
                    &[Message::new(vec![b'r'; 8000]).with_key(format!("{i}"))],
                )
                .unwrap();
        }
        assert!(
            store.disk_usage().unwrap().files > 3,
            "{engine}: files rolled"
        );
        assert_eq!(store.enforce_retention().unwrap(), 0, "{engine}");
        assert_eq!(store.bounds("t", 0).unwrap().start, 0, "{engine}");
        assert_eq!(read_all(store.as_ref(), "t", 0).len(), 40, "{engine}");
    });
}
