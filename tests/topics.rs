//! Topic administration and per-topic configuration, on both engines: configs persisted and
//! changed live, retention differing between topics of one store, partitions added, topics
//! deleted (atomic across a power cut at any step), tombstones round-tripping as "no value".

mod common;

use std::time::Duration;

use common::{for_each_backend, for_each_engine, open, read_all, small_options};
use duolog::io::{CrashMode, Fault, SimFs};
use duolog::{CleanupPolicy, EngineKind, Error, LogStore, Message, ReadLimits, TopicConfig};

fn msg(i: usize) -> Message {
    Message::new(format!("body-{i}")).with_key(format!("key-{i}"))
}

fn fill(store: &dyn LogStore, topic: &str, partition: u32, n: usize) {
    for i in 0..n {
        store.append(topic, partition, &[msg(i)]).unwrap();
    }
}

#[test]
fn configs_persist_and_change_on_a_live_store() {
    for_each_backend(|dir, opts| {
        let store = open(dir, &opts);
        let mut config = TopicConfig::with_partitions(2);
        config.set("cleanup.policy", "compact,delete").unwrap();
        config.set("retention.ms", "3600000").unwrap();
        config.set("max.message.bytes", "200").unwrap();
        store.create_topic("t", config.clone()).unwrap();
        assert_eq!(store.describe_topic("t").unwrap(), config);

        // max.message.bytes applies to this topic only.
        let big = Message::new(vec![b'x'; 300]);
        assert!(matches!(
            store.append("t", 0, std::slice::from_ref(&big)),
            Err(Error::MessageTooLarge { .. })
        ));
        store.create_topic("other", TopicConfig::default()).unwrap();
        store
            .append("other", 0, std::slice::from_ref(&big))
            .unwrap();

        // Altered live: the next append sees the new limit.
        config.max_message_bytes = Some(1000);
        config.cleanup_policy = CleanupPolicy::Compact;
        store.alter_topic("t", config.clone()).unwrap();
        store.append("t", 0, &[big]).unwrap();
        let mut wider = config.clone();
        wider.partitions = 3;
        assert!(matches!(
            store.alter_topic("t", wider),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            store.alter_topic("nope", config.clone()),
            Err(Error::UnknownTopic(_))
        ));
        let mut bad = config.clone();
        bad.segment_bytes = Some(10);
        let e = store.alter_topic("t", bad).unwrap_err().to_string();
        assert!(e.contains("segment.bytes"), "{e}");
        store.close().unwrap();
        drop(store);

        let store = open(dir, &opts);
        assert_eq!(store.describe_topic("t").unwrap(), config);
        assert_eq!(
            store.describe_topic("other").unwrap(),
            TopicConfig::default()
        );
        store.close().unwrap();
    });
}

#[test]
fn retention_differs_between_two_topics_of_one_store() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        let short = TopicConfig {
            retention: Some(Duration::from_millis(1)),
            ..TopicConfig::with_partitions(1)
        };
        let sized = TopicConfig {
            retention_bytes: Some(4096),
            segment_bytes: Some(4096),
            ..TopicConfig::with_partitions(1)
        };
        store.create_topic("short", short).unwrap();
        store.create_topic("sized", sized).unwrap();
        store
            .create_topic("kept", TopicConfig::with_partitions(1))
            .unwrap();
        for t in ["short", "sized", "kept"] {
            fill(store.as_ref(), t, 0, 400);
        }
        std::thread::sleep(Duration::from_millis(20));
        store.enforce_retention().unwrap();

        let short = store.bounds("short", 0).unwrap();
        assert_eq!(
            (short.start, short.end),
            (400, 400),
            "{engine}: short kept {short:?}"
        );
        let sized = store.bounds("sized", 0).unwrap();
        assert!(sized.start > 0, "{engine}: sized kept everything {sized:?}");
        let bytes = store.partition_bytes("sized", 0).unwrap();
        assert!(bytes <= 4096 + 1024, "{engine}: sized keeps {bytes} bytes");
        let kept = store.bounds("kept", 0).unwrap();
        assert_eq!((kept.start, kept.end), (0, 400), "{engine}");
        // What is left reads back, from the new starts on.
        let recs = read_all(store.as_ref(), "sized", 0);
        assert_eq!(recs.last().unwrap().body(), msg(399).body);
        assert_eq!(read_all(store.as_ref(), "kept", 0).len(), 400);
        store.close().unwrap();
    });
}

#[test]
fn added_partitions_are_usable_and_survive_a_reopen() {
    for_each_backend(|dir, opts| {
        let store = open(dir, &opts);
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        fill(store.as_ref(), "t", 1, 5);
        assert_eq!(store.add_partitions("t", 3).unwrap(), 5);
        assert_eq!(store.describe_topic("t").unwrap().partitions, 5);
        fill(store.as_ref(), "t", 4, 7);
        assert!(matches!(
            store.add_partitions("t", 0),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            store.add_partitions("t", 70_000),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            store.append("t", 5, &[msg(0)]),
            Err(Error::UnknownPartition { .. })
        ));
        store.close().unwrap();
        drop(store);
        let store = open(dir, &opts);
        assert_eq!(store.describe_topic("t").unwrap().partitions, 5);
        assert_eq!(read_all(store.as_ref(), "t", 1).len(), 5);
        assert_eq!(read_all(store.as_ref(), "t", 4).len(), 7);
        assert_eq!(store.bounds("t", 3).unwrap().end, 0);
        store.close().unwrap();
    });
}

#[test]
fn a_deleted_topic_is_gone_and_its_name_starts_afresh() {
    for_each_backend(|dir, opts| {
        let store = open(dir, &opts);
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        store
            .create_topic("keep", TopicConfig::with_partitions(1))
            .unwrap();
        fill(store.as_ref(), "t", 0, 300);
        fill(store.as_ref(), "keep", 0, 10);
        let old_id = store.topic_id("t").unwrap();
        store.delete_topic("t").unwrap();
        assert!(matches!(
            store.describe_topic("t"),
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            store.append("t", 0, &[msg(0)]),
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            store.delete_topic("t"),
            Err(Error::UnknownTopic(_))
        ));
        assert_eq!(store.list_topics(true), vec!["keep".to_owned()]);
        // The name is free again, and the new topic starts empty at offset 0.
        store
            .create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        assert_eq!(store.bounds("t", 0).unwrap().end, 0);
        let new_id = store.topic_id("t").unwrap();
        assert_ne!(new_id, old_id, "a new topic of the name has a new id");
        store.append("t", 0, &[Message::new("fresh")]).unwrap();
        store.abandon();
        drop(store);
        // After a crash the old topic's records are not replayed into the new one.
        let store = open(dir, &opts);
        let recs = read_all(store.as_ref(), "t", 0);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].body(), b"fresh");
        assert_eq!(store.topic_id("t").unwrap(), new_id, "ids survive a reopen");
        assert_eq!(read_all(store.as_ref(), "keep", 0).len(), 10);
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        store.close().unwrap();
    });
}

/// A power cut at every I/O step of `delete_topic` leaves the topic either there with every
/// record or gone, and a reopen finishes an interrupted deletion (no directory left behind).
#[test]
fn a_power_cut_at_every_step_of_a_deletion_leaves_the_topic_whole_or_gone() {
    for engine in common::engines() {
        let setup = |sim: &SimFs| {
            let opts = duolog::StoreOptions {
                fs: std::sync::Arc::new(sim.clone()),
                ..small_options(engine)
            };
            let store = duolog::open("/s", opts.clone()).unwrap();
            store
                .create_topic("t", TopicConfig::with_partitions(2))
                .unwrap();
            store
                .create_topic("keep", TopicConfig::with_partitions(1))
                .unwrap();
            fill(store.as_ref(), "t", 0, 200);
            fill(store.as_ref(), "t", 1, 3);
            fill(store.as_ref(), "keep", 0, 5);
            store.sync().unwrap();
            (store, opts)
        };
        let steps = {
            let sim = SimFs::new();
            let (store, _) = setup(&sim);
            let before = sim.op_count();
            store.delete_topic("t").unwrap();
            sim.op_count() - before
        };
        assert!(
            steps > 3,
            "{engine}: a deletion takes several steps ({steps})"
        );
        let (mut gone, mut whole) = (0, 0);
        for k in 0..=steps {
            for (seed, mode) in CrashMode::ALL.iter().enumerate() {
                let sim = SimFs::new();
                let (store, opts) = setup(&sim);
                sim.fail_after(k, Fault::Eio);
                let deleted = store.delete_topic("t").is_ok();
                store.abandon();
                drop(store);
                let crashed = sim.crash(*mode, seed as u64 * 17 + k);
                let ctx = format!("{engine}: power cut at step {k} of {steps}, {mode:?}");
                let opts = duolog::StoreOptions {
                    fs: std::sync::Arc::new(crashed.clone()),
                    ..opts
                };
                let store =
                    duolog::open("/s", opts).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                match store.describe_topic("t") {
                    Ok(_) => {
                        assert!(!deleted, "{ctx}: an acknowledged deletion came back");
                        assert_eq!(read_all(store.as_ref(), "t", 0).len(), 200, "{ctx}");
                        assert_eq!(read_all(store.as_ref(), "t", 1).len(), 3, "{ctx}");
                        whole += 1;
                    }
                    Err(Error::UnknownTopic(_)) => {
                        // Nothing of it is left on disk.
                        let leftovers: Vec<String> = ["/s", "/s/consumequeue"]
                            .iter()
                            .flat_map(|d| {
                                duolog::io::FileSystem::list_dir(&crashed, d.as_ref())
                                    .unwrap_or_default()
                            })
                            .map(|e| e.name)
                            .filter(|n| n == "t" || n.starts_with("t-"))
                            .collect();
                        assert!(leftovers.is_empty(), "{ctx}: left {leftovers:?}");
                        gone += 1;
                    }
                    Err(e) => panic!("{ctx}: {e}"),
                }
                assert_eq!(read_all(store.as_ref(), "keep", 0).len(), 5, "{ctx}");
                let report = store.verify().unwrap();
                assert!(report.is_ok(), "{ctx}: {:?}", report.problems);
                // The name can be used again, from offset 0.
                if store.describe_topic("t").is_err() {
                    store.create_topic("t", TopicConfig::default()).unwrap();
                    assert_eq!(store.bounds("t", 0).unwrap().end, 0, "{ctx}");
                }
                store.close().unwrap();
            }
        }
        assert!(
            gone > 0 && whole > 0,
            "{engine}: gone {gone}, whole {whole}"
        );
        eprintln!("{engine}: {steps} steps, {gone} gone, {whole} whole");
    }
}

#[test]
fn tombstones_round_trip_as_no_value() {
    for_each_backend(|dir, opts| {
        let store = open(dir, &opts);
        store.create_topic("t", TopicConfig::default()).unwrap();
        store
            .append(
                "t",
                0,
                &[
                    Message::new("").with_key("k"),
                    Message::tombstone("k").with_tags("TagA"),
                    Message::new("v").with_key("k"),
                ],
            )
            .unwrap();
        for bad in [
            Message {
                tombstone: true,
                ..Message::new("")
            },
            Message {
                tombstone: true,
                ..Message::new("body").with_key("k")
            },
        ] {
            assert!(matches!(
                store.append("t", 0, &[bad]),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            store.append(
                "t",
                0,
                &[Message::new("x").with_property("__TOMBSTONE", "1")]
            ),
            Err(Error::InvalidArgument(_))
        ));
        store.close().unwrap();
        drop(store);
        let store = open(dir, &opts);
        let r = store.read("t", 0, 0, ReadLimits::default()).unwrap();
        assert_eq!(r.len(), 3);
        assert!(!r[0].is_tombstone());
        assert_eq!(r[0].value(), Some(&b""[..]));
        assert!(r[1].is_tombstone());
        assert_eq!(r[1].value(), None);
        assert_eq!(r[1].key(), Some(&b"k"[..]));
        assert_eq!(r[1].tags(), Some("TagA"));
        assert!(r[1].properties().is_empty());
        assert_eq!(
            r[1].to_message(),
            Message::tombstone("k")
                .with_tags("TagA")
                .with_timestamp(r[1].timestamp())
        );
        assert_eq!(r[2].value(), Some(&b"v"[..]));
        store.close().unwrap();
    });
}

#[test]
/// A config value in the catalog that does not parse is a corruption error naming it, not a
/// panic (a v1 catalog, without configs, is covered by the catalog's unit test).
fn a_bad_config_value_in_the_catalog_is_a_clear_error() {
    for_each_engine(|engine, dir| {
        let opts = small_options(engine);
        let store = open(dir, &opts);
        let mut c = TopicConfig::default();
        c.set("retention.ms", "5").unwrap();
        store.create_topic("t", c).unwrap();
        store.close().unwrap();
        drop(store);
        let meta = dir.join("meta");
        let mut bytes = std::fs::read(&meta).unwrap();
        let at = bytes.windows(1).position(|w| w == b"5").unwrap();
        bytes[at] = b'x';
        let n = bytes.len();
        let crc = crc_of(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_be_bytes());
        std::fs::write(&meta, bytes).unwrap();
        let e = duolog::open(dir, opts).unwrap_err();
        assert!(matches!(e, Error::Corrupted { .. }), "{engine}: {e}");
        assert!(e.to_string().contains("retention.ms"), "{engine}: {e}");
    });
}

/// CRC-32C (Castagnoli), bitwise: the catalog's checksum, recomputed by the test.
fn crc_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Deleting topics while background checkpoints run (every millisecond) and the queue cache
/// evicts (a bound of 16 mapped queues): no checkpoint flushes a deleted topic's queue after
/// its files went (mapping it again by path would fail and poison the store).
#[test]
fn deleting_topics_under_constant_checkpoints_never_poisons() {
    for_each_engine(|engine, dir| {
        let mut opts = small_options(engine);
        opts.max_open_files = 1;
        opts.commitlog.checkpoint_interval = Duration::from_millis(1);
        opts.segmented.checkpoint_interval = Duration::from_millis(1);
        let store = open(dir, &opts);
        store.create_topic("keep", TopicConfig::default()).unwrap();
        for round in 0..60 {
            store
                .create_topic("t", TopicConfig::with_partitions(40))
                .unwrap_or_else(|e| panic!("{engine} round {round}: create: {e}"));
            for p in 0..40 {
                store.append("t", p, &[msg(p as usize)]).unwrap();
            }
            store
                .delete_topic("t")
                .unwrap_or_else(|e| panic!("{engine} round {round}: delete: {e}"));
            store
                .append("keep", 0, &[msg(round)])
                .unwrap_or_else(|e| panic!("{engine} round {round}: the store is unusable: {e}"));
        }
        store.close().unwrap();
    });
}

/// A topic deleted while the cleaner works on it: the deletion succeeds, `compact()` over
/// every topic is not failed by it, and no cleaner file is left where the topic was.
#[test]
fn deleting_a_topic_during_a_cleaning_pass_leaves_nothing_behind() {
    for_each_engine(|engine, dir| {
        let store: std::sync::Arc<dyn LogStore> =
            std::sync::Arc::from(open(dir, &small_options(engine)));
        let config = TopicConfig {
            cleanup_policy: CleanupPolicy::Compact,
            segment_bytes: Some(4096),
            ..TopicConfig::with_partitions(2)
        };
        store.create_topic("kv", config).unwrap();
        for i in 0..20_000usize {
            let m = Message::new(vec![b'v'; 64]).with_key(format!("k{}", i % 50));
            store.append("kv", (i % 2) as u32, &[m]).unwrap();
        }
        let cleaner = {
            let store = std::sync::Arc::clone(&store);
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| store.compact(None).map(|_| ()))
                    .collect::<Vec<_>>()
            })
        };
        std::thread::sleep(Duration::from_millis(3));
        store.delete_topic("kv").unwrap();
        for r in cleaner.join().unwrap() {
            assert!(
                matches!(r, Ok(()) | Err(Error::UnknownTopic(_))),
                "{engine}: {r:?}"
            );
        }
        let leftovers: Vec<String> = [dir.to_path_buf(), dir.join("compaction")]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten())
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n == "kv" || n.starts_with("kv-"))
            .collect();
        assert!(leftovers.is_empty(), "{engine}: left {leftovers:?}");
        store.compact(None).unwrap();
        store.create_topic("kv", TopicConfig::default()).unwrap();
        assert_eq!(store.bounds("kv", 0).unwrap().end, 0);
        store.close().unwrap();
    });
}

/// On the shared commit log, a topic of unlimited retention keeps only the files holding its
/// live records: once its start moved past them (as the delay layer moves its topics' starts),
/// the others' expired files go. Before, such a topic kept every file of the log forever.
#[test]
fn a_topic_of_unlimited_retention_keeps_only_the_files_of_its_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), &small_options(EngineKind::CommitLog));
    let forever = TopicConfig {
        retention: Some(Duration::MAX),
        ..TopicConfig::with_partitions(1)
    };
    let short = TopicConfig {
        retention: Some(Duration::from_millis(1)),
        ..TopicConfig::with_partitions(1)
    };
    store.create_topic("forever", forever).unwrap();
    store.create_topic("short", short).unwrap();
    fill(store.as_ref(), "forever", 0, 50);
    // Several 64 KiB files of the short topic after the forever topic's records.
    fill(store.as_ref(), "short", 0, 3000);
    std::thread::sleep(Duration::from_millis(20));
    // Its live records are in the first file: nothing goes.
    assert_eq!(store.enforce_retention().unwrap(), 0);
    assert_eq!(read_all(store.as_ref(), "forever", 0).len(), 50);

    store.delete_before("forever", 0, 50).unwrap();
    fill(store.as_ref(), "forever", 0, 1);
    let removed = store.enforce_retention().unwrap();
    assert!(removed > 0, "expired files of the short topic go");
    let f = store.bounds("forever", 0).unwrap();
    assert_eq!((f.start, f.end), (50, 51));
    assert_eq!(read_all(store.as_ref(), "forever", 0)[0].offset(), 50);
    store.close().unwrap();
}
