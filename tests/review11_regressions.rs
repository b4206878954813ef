//! Regressions found reviewing issue 11 (topic configs, administration, compaction).

mod common;

use std::time::Duration;

use common::{for_each_engine, open, small_options};
use duolog::{LogStore, TopicConfig};

/// A config the API accepts (`Duration::MAX` for a time config, a byte count above
/// `i64::MAX`) must be persisted so that the store opens again: the catalog writes
/// `Duration::MAX` as `-1`, which only `retention.ms` reads back, and a number above
/// `i64::MAX`, which no config reads back, so the reopen failed with a corrupt catalog.
#[test]
fn accepted_topic_configs_survive_a_reopen() {
    let configs: Vec<(&str, TopicConfig)> = vec![
        (
            "segment_ms_max",
            TopicConfig {
                segment_ms: Some(Duration::MAX),
                ..TopicConfig::default()
            },
        ),
        (
            "lag_max",
            TopicConfig {
                min_compaction_lag: Some(Duration::MAX),
                ..TopicConfig::default()
            },
        ),
        (
            "delete_retention_max",
            TopicConfig {
                delete_retention: Some(Duration::MAX),
                ..TopicConfig::default()
            },
        ),
        (
            "retention_huge",
            TopicConfig {
                retention: Some(Duration::from_secs(u64::MAX / 2)),
                ..TopicConfig::default()
            },
        ),
        (
            "retention_bytes_huge",
            TopicConfig {
                retention_bytes: Some(u64::MAX - 1),
                ..TopicConfig::default()
            },
        ),
        (
            "max_message_huge",
            TopicConfig {
                max_message_bytes: Some(usize::MAX),
                ..TopicConfig::default()
            },
        ),
    ];
    for (name, config) in configs {
        for_each_engine(|engine, dir| {
            let opts = small_options(engine);
            {
                let store = open(dir, &opts);
                if store.create_topic(name, config.clone()).is_err() {
                    // Refusing the config is fine; accepting it and then not opening is not.
                    return;
                }
                store.close().unwrap();
            }
            let store = duolog::open(dir, opts.clone())
                .unwrap_or_else(|e| panic!("{name}: reopen after an accepted config: {e}"));
            assert!(store.describe_topic(name).is_ok());
        });
    }
}

/// Two retention runs at once on the CommitLog engine (two callers of `enforce_retention`, or
/// a caller and the flusher's periodic run). Each counts the files it may delete from its own
/// snapshot, then removes that many from the front of the log *as it is then*: after the
/// other run removed its files, that is files past the ones it checked, whose records no
/// partition start was moved past. Compaction widens the window to a whole forced cleaning
/// pass (the second run waits for the cleaner lock and then goes on with its stale count).
#[test]
fn concurrent_commitlog_retention_deletes_only_what_it_checked() {
    use duolog::{CleanupPolicy, EngineKind, Message, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let base = small_options(EngineKind::CommitLog);
    let file = base.commitlog.file_size;
    let opts = StoreOptions {
        commitlog: duolog::CommitLogOptions {
            retention_bytes: Some(3 * file),
            retention_check_interval: Duration::from_secs(3600),
            ..base.commitlog.clone()
        },
        compaction: duolog::CompactionOptions {
            enabled: false,
            io_bytes_per_sec: Some(400 << 10),
            ..base.compaction.clone()
        },
        ..base
    };
    let store = std::sync::Arc::new(duolog::open(dir.path(), opts).unwrap());
    store.create_topic("d", TopicConfig::default()).unwrap();
    store
        .create_topic(
            "c",
            TopicConfig {
                cleanup_policy: CleanupPolicy::Compact,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    let body = vec![b'x'; 1000];
    let put = |topic: &str, n: usize| {
        for i in 0..n {
            store
                .append(
                    topic,
                    0,
                    &[Message::new(body.clone()).with_key(format!("{topic}-{i}"))],
                )
                .unwrap();
        }
    };
    // ~2 files of "d", ~4 of "c" (uncleaned, compact only), ~8 of "d".
    put("d", 130);
    put("c", 260);
    put("d", 520);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let s = std::sync::Arc::clone(&store);
            std::thread::spawn(move || s.enforce_retention())
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    // Every record from each partition's start on is still readable.
    for topic in ["d", "c"] {
        let b = store.bounds(topic, 0).unwrap();
        let mut at = b.start;
        while at < b.end {
            let batch = store
                .read(topic, 0, at, duolog::ReadLimits::messages(100))
                .unwrap_or_else(|e| panic!("{topic}: read at {at} of {b:?}: {e}"));
            assert!(!batch.is_empty(), "{topic}: empty read at {at} of {b:?}");
            at = batch.last().unwrap().offset() + 1;
        }
    }
}

/// Segmented engine: a deletion interrupted after its commit point is finished by the next
/// open, but the `cleaner-offset-checkpoint` keeps the deleted topic's clean ends (only
/// `delete_topic` itself rewrote it, after the commit point). A new topic of the same name
/// then opens with the old clean end: its records below it count as cleaned, and a pass drops
/// an expired tombstone there while the older value it deletes stays — the key comes back.
#[test]
fn an_interrupted_deletion_leaves_no_clean_end_for_a_new_topic_of_the_name() {
    use duolog::io::{CrashMode, Fault, SimFs};
    use duolog::{CleanupPolicy, EngineKind, Message, StoreOptions};
    let compacted = |delete_retention: Duration| TopicConfig {
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: Some(1024),
        delete_retention: Some(delete_retention),
        ..TopicConfig::default()
    };
    let options = |sim: &SimFs| StoreOptions {
        fs: std::sync::Arc::new(sim.clone()),
        compaction: duolog::CompactionOptions {
            enabled: false,
            ..Default::default()
        },
        ..small_options(EngineKind::Segmented)
    };
    let setup = |sim: &SimFs| {
        let store = duolog::open("/s", options(sim)).unwrap();
        store
            .create_topic("t", compacted(Duration::from_secs(3600)))
            .unwrap();
        for i in 0..300 {
            store
                .append("t", 0, &[Message::new("old").with_key(format!("old-{}", i % 10))])
                .unwrap();
        }
        assert!(store.compact(Some("t")).unwrap().records_removed > 0);
        store.sync().unwrap();
        store
    };
    let steps = {
        let sim = SimFs::new();
        let store = setup(&sim);
        let before = sim.op_count();
        store.delete_topic("t").unwrap();
        sim.op_count() - before
    };
    let mut checked = 0;
    for k in 0..=steps {
        let sim = SimFs::new();
        let store = setup(&sim);
        sim.fail_after(k, Fault::Eio);
        let _ = store.delete_topic("t");
        store.abandon();
        drop(store);
        let sim = sim.crash(CrashMode::DropUnsynced, k);
        let store = duolog::open("/s", options(&sim)).unwrap();
        if store.describe_topic("t").is_ok() {
            continue;
        }
        checked += 1;
        store.create_topic("t", compacted(Duration::ZERO)).unwrap();
        let fill = |store: &dyn LogStore, from: usize, n: usize| {
            for i in from..from + n {
                store
                    .append("t", 0, &[Message::new("f").with_key(format!("f-{i}"))])
                    .unwrap();
            }
        };
        store
            .append(
                "t",
                0,
                &[Message::new("v1").with_key("k"), Message::tombstone("k")],
            )
            .unwrap();
        fill(store.as_ref(), 0, 100);
        store.close().unwrap();
        drop(store);
        let store = duolog::open("/s", options(&sim)).unwrap();
        fill(store.as_ref(), 100, 300);
        std::thread::sleep(Duration::from_millis(10));
        store.compact(Some("t")).unwrap();
        let all = common::read_all(store.as_ref(), "t", 0);
        let latest_k = all
            .iter()
            .filter(|r| r.key() == Some(&b"k"[..]))
            .last()
            .map(|r| r.is_tombstone());
        assert_ne!(
            latest_k,
            Some(false),
            "power cut at step {k} of {steps}: key k, deleted by a tombstone, came back"
        );
    }
    assert!(checked > 0);
}

/// `CompactedTable` keeps "one entry per live key" in memory, but each value it stored was a
/// zero-copy slice of what the read returned: on the CommitLog engine a slice of the mapped
/// commit-log file, which keeps the whole file mapped. A file retention deleted then stays on
/// disk (unlinked but mapped) for as long as the table holds a value from it: a long-lived
/// table pins the log files of every live value and retention frees no space.
#[cfg(target_os = "linux")]
#[test]
fn a_compacted_table_pins_no_deleted_log_file() {
    use duolog::{CleanupPolicy, CompactedTable, EngineKind, Message, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let base = small_options(EngineKind::CommitLog);
    let file = base.commitlog.file_size;
    let opts = StoreOptions {
        commitlog: duolog::CommitLogOptions {
            retention_bytes: Some(2 * file),
            retention_check_interval: Duration::from_secs(3600),
            ..base.commitlog.clone()
        },
        compaction: duolog::CompactionOptions {
            enabled: false,
            ..base.compaction.clone()
        },
        ..base
    };
    let store: std::sync::Arc<dyn LogStore> =
        std::sync::Arc::from(duolog::open(dir.path(), opts).unwrap());
    store
        .create_topic(
            "c",
            TopicConfig {
                cleanup_policy: CleanupPolicy::Compact,
                segment_bytes: Some(1024),
                ..TopicConfig::default()
            },
        )
        .unwrap();
    store.create_topic("d", TopicConfig::default()).unwrap();
    for i in 0..50 {
        store
            .append("c", 0, &[Message::new(vec![b'v'; 500]).with_key(format!("k{i}"))])
            .unwrap();
    }
    let table = CompactedTable::open(std::sync::Arc::clone(&store), "c").unwrap();
    assert_eq!(table.len().unwrap(), 50);
    for _ in 0..600 {
        store.append("d", 0, &[Message::new(vec![b'x'; 1000])]).unwrap();
    }
    store.compact(Some("c")).unwrap();
    assert!(store.enforce_retention().unwrap() > 0);
    let root = dir.path().canonicalize().unwrap();
    let pinned: Vec<String> = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(root.to_str().unwrap()) && l.ends_with("(deleted)"))
        .map(str::to_owned)
        .collect();
    assert!(
        pinned.is_empty(),
        "deleted log files still mapped by the table's values: {pinned:?}"
    );
    assert_eq!(table.len().unwrap(), 50);
}

/// CommitLog engine: `alter_topic` (and `add_partitions`) replace the topic's state with one
/// whose `deleted` flag is a new one, so an append that looked the topic up before the alter
/// (it is encoding its batch) never sees the flag `delete_topic` sets afterwards: it goes on
/// into the log after the deletion's fence and is acknowledged for a deleted topic, its units
/// written into the removed topic's queue directory.
#[test]
fn an_append_from_before_an_alter_does_not_outlive_a_deletion() {
    use duolog::{EngineKind, Message, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let base = small_options(EngineKind::CommitLog);
    let opts = StoreOptions {
        commitlog: duolog::CommitLogOptions {
            file_size: 64 << 20,
            ..base.commitlog.clone()
        },
        index: duolog::IndexOptions {
            enabled: false,
            ..base.index
        },
        ..base
    };
    let store = std::sync::Arc::new(duolog::open(dir.path(), opts).unwrap());
    let batch: Vec<Message> = (0..200_000).map(|i| Message::new(format!("{i}"))).collect();
    let mut raced = 0;
    for round in 0..10 {
        let name = format!("t{round}");
        store.create_topic(&name, TopicConfig::default()).unwrap();
        let appender = {
            let (s, b, n) = (std::sync::Arc::clone(&store), batch.clone(), name.clone());
            std::thread::spawn(move || s.append(&n, 0, &b))
        };
        std::thread::sleep(Duration::from_millis(2));
        let mut config = store.describe_topic(&name).unwrap();
        config.retention = Some(Duration::from_secs(3600));
        store.alter_topic(&name, config).unwrap();
        store.delete_topic(&name).unwrap();
        let deleted_before_append = !appender.is_finished();
        let appended = appender.join().unwrap();
        if deleted_before_append {
            raced += 1;
            assert!(
                matches!(appended, Err(duolog::Error::UnknownTopic(_))),
                "round {round}: an append still encoding when the topic was deleted was \
                 not refused as one of an unknown topic: {appended:?}"
            );
        }
        let left = dir.path().join("consumequeue").join(&name);
        assert!(
            !left.exists() || appended.is_ok() && !deleted_before_append,
            "round {round}: the deleted topic's queue directory came back"
        );
    }
    assert!(raced > 0, "the race was never set up");
    store.create_topic("after", TopicConfig::default()).unwrap();
    store.append("after", 0, &[Message::new("x")]).unwrap();
}

/// CommitLog engine: the allocation thread creates a partition's next consume-queue file
/// ahead of the appender. A job queued before `delete_topic` runs after it: it creates a file
/// in the directory the deletion is removing (the removal fails, "directory not empty"), or
/// in one already removed (its directory sync fails, which poisons the whole store).
#[test]
fn deleting_a_topic_under_appends_neither_fails_nor_poisons() {
    use duolog::{EngineKind, Message};
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        duolog::open(dir.path(), small_options(EngineKind::CommitLog)).unwrap(),
    );
    // A batch spanning many queue files queues many allocation jobs.
    let batch: Vec<Message> = (0..20_000).map(|i| Message::new(format!("{i}"))).collect();
    for round in 0..20 {
        let name = format!("t{round}");
        store.create_topic(&name, TopicConfig::default()).unwrap();
        let appender = {
            let (s, b, n) = (std::sync::Arc::clone(&store), batch.clone(), name.clone());
            std::thread::spawn(move || while s.append_oneway(&n, 0, &b).is_ok() {})
        };
        std::thread::sleep(Duration::from_millis(3));
        store
            .delete_topic(&name)
            .unwrap_or_else(|e| panic!("round {round}: delete_topic: {e}"));
        appender.join().unwrap();
        store.create_topic("other", TopicConfig::default()).ok();
        store
            .append("other", 0, &[Message::new("x")])
            .unwrap_or_else(|e| panic!("round {round}: the store after the deletion: {e}"));
    }
}

/// CommitLog engine, `compact,delete` topic with `retention.bytes`: `partition_bytes` (documented
/// as "what retention by size counts") includes the compacted prefix, but retention by size
/// only counted the consume queue's units, so the records compaction moved into the prefix
/// weighed nothing and the partition stayed over its `retention.bytes` for good.
#[test]
fn retention_bytes_counts_the_compacted_prefix() {
    use duolog::{CleanupPolicy, EngineKind, Message, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let base = small_options(EngineKind::CommitLog);
    let opts = StoreOptions {
        compaction: duolog::CompactionOptions {
            enabled: false,
            ..base.compaction.clone()
        },
        ..base
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    store
        .create_topic(
            "cd",
            TopicConfig {
                cleanup_policy: CleanupPolicy::CompactDelete,
                segment_bytes: Some(1024),
                retention_bytes: Some(4096),
                ..TopicConfig::default()
            },
        )
        .unwrap();
    store.create_topic("other", TopicConfig::default()).unwrap();
    for i in 0..200 {
        store
            .append("cd", 0, &[Message::new(vec![b'v'; 100]).with_key(format!("k{i}"))])
            .unwrap();
    }
    for _ in 0..20 {
        store.append("other", 0, &[Message::new(vec![b'x'; 200])]).unwrap();
    }
    store.compact(Some("cd")).unwrap();
    store.enforce_retention().unwrap();
    let bytes = store.partition_bytes("cd", 0).unwrap();
    assert!(
        bytes <= 4096,
        "partition_bytes {bytes} stays above retention.bytes 4096 after retention"
    );
}

/// CommitLog engine, per-topic `retention.bytes`: retention raises a partition's start and
/// persists it without first making the queue units below it durable and checkpointed (what
/// the whole-file path does). Recovery trusts units below a persisted start unchecked, so a
/// crash that leaves garbage there fails the reopen ("record has queue offset … but its
/// consume queue ends at …"), as `delete_before` did.
#[test]
fn per_topic_retention_then_a_garbage_extending_crash_reopens() {
    use duolog::io::{CrashMode, SimFs};
    use duolog::{EngineKind, FlushPolicy, Message, StoreOptions};
    let options = |sim: &SimFs| {
        let base = small_options(EngineKind::CommitLog);
        StoreOptions {
            fs: std::sync::Arc::new(sim.clone()),
            flush: FlushPolicy::Sync,
            commitlog: duolog::CommitLogOptions {
                retention_check_interval: Duration::from_secs(3600),
                ..base.commitlog.clone()
            },
            ..base
        }
    };
    let append = |store: &dyn LogStore, p: u32, n: usize, size: usize| {
        for i in 0..n {
            store
                .append("t", p, &[Message::new(vec![b'a' + (i % 26) as u8; size])])
                .unwrap();
        }
    };
    for seed in 0..48u64 {
        let sim = SimFs::new();
        let store = duolog::open("/s", options(&sim)).unwrap();
        store
            .create_topic(
                "t",
                TopicConfig {
                    retention_bytes: Some(2000),
                    ..TopicConfig::with_partitions(3)
                },
            )
            .unwrap();
        append(store.as_ref(), 0, 22, 400);
        append(store.as_ref(), 2, 7, 700);
        store.abandon();
        drop(store);
        let sim = sim.crash(CrashMode::DropUnsynced, seed);
        let store = duolog::open("/s", options(&sim)).unwrap();
        append(store.as_ref(), 1, 5, 52);
        append(store.as_ref(), 0, 1, 10);
        append(store.as_ref(), 1, 14, 700);
        store.enforce_retention().unwrap();
        assert!(store.bounds("t", 1).unwrap().start > 0);
        store.abandon();
        drop(store);
        let sim = sim.crash(CrashMode::ALL[6], seed);
        let store = duolog::open("/s", options(&sim))
            .unwrap_or_else(|e| panic!("seed {seed}: {:?} crash: reopen: {e}", CrashMode::ALL[6]));
        for p in 0..3 {
            common::read_all(store.as_ref(), "t", p);
        }
    }
}

/// `CompactedTable` over a topic that is deleted and created again: its positions are the old
/// topic's, so it passes over the new topic's records below them ("a lookup sees every record
/// appended before it started" no longer holds) and keeps serving the deleted topic's values.
#[test]
fn a_compacted_table_follows_a_topic_deleted_and_created_again() {
    use duolog::{CleanupPolicy, CompactedTable, Message};
    for_each_engine(|engine, dir| {
        let store: std::sync::Arc<dyn LogStore> =
            std::sync::Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        let config = TopicConfig {
            cleanup_policy: CleanupPolicy::Compact,
            ..TopicConfig::default()
        };
        store.create_topic("t", config.clone()).unwrap();
        for i in 0..5 {
            store
                .append("t", 0, &[Message::new("old").with_key(format!("old-{i}"))])
                .unwrap();
        }
        let table = CompactedTable::open(std::sync::Arc::clone(&store), "t").unwrap();
        assert_eq!(table.len().unwrap(), 5);
        store.delete_topic("t").unwrap();
        store.create_topic("t", config).unwrap();
        store
            .append("t", 0, &[Message::new("new").with_key("new")])
            .unwrap();
        let new = table.get(b"new");
        let old = table.get(b"old-0");
        assert!(
            new.is_err() || new.as_ref().unwrap().as_deref() == Some(&b"new"[..]),
            "{engine}: the new topic's record is not seen: {new:?}"
        );
        assert!(
            old.is_err() || old.as_ref().unwrap().is_none(),
            "{engine}: the deleted topic's value is still served: {old:?}"
        );
    });
}

/// CommitLog engine: `create_topic` records `since` (records of the name before it belong to a
/// deleted topic) as the in-memory write position, which may include an unsynced tail. After
/// a crash loses that tail, the log is shorter than `since`: the new topic's first records are
/// written below its own `since`, and the next recovery that replays them passes over them as
/// a deleted topic's — acknowledged, durable records lost.
#[test]
fn a_new_topics_records_survive_a_crash_that_cut_the_log_below_its_creation() {
    use duolog::io::{CrashMode, SimFs};
    use duolog::{EngineKind, FlushPolicy, Message, StoreOptions};
    let options = |sim: &SimFs, flush: FlushPolicy| {
        let base = small_options(EngineKind::CommitLog);
        StoreOptions {
            fs: std::sync::Arc::new(sim.clone()),
            flush,
            commitlog: duolog::CommitLogOptions {
                checkpoint_interval: Duration::from_secs(3600),
                retention_check_interval: Duration::from_secs(3600),
                ..base.commitlog.clone()
            },
            ..base
        }
    };
    let lazy = FlushPolicy::Async {
        interval: Duration::from_secs(3600),
    };
    let sim = SimFs::new();
    let store = duolog::open("/s", options(&sim, lazy)).unwrap();
    store.create_topic("x", TopicConfig::default()).unwrap();
    for _ in 0..100 {
        store.append("x", 0, &[Message::new(vec![b'x'; 500])]).unwrap();
    }
    // Created while the log has an unsynced tail.
    store.create_topic("t", TopicConfig::default()).unwrap();
    store.abandon();
    drop(store);
    let sim = sim.crash(CrashMode::DropUnsynced, 1);
    let store = duolog::open("/s", options(&sim, FlushPolicy::Sync)).unwrap();
    for i in 0..5 {
        store
            .append("t", 0, &[Message::new(format!("acknowledged {i}"))])
            .unwrap();
    }
    assert_eq!(store.bounds("t", 0).unwrap().end, 5);
    store.abandon();
    drop(store);
    let sim = sim.crash(CrashMode::DropUnsynced, 2);
    let store = duolog::open("/s", options(&sim, FlushPolicy::Sync)).unwrap();
    let records = common::read_all(store.as_ref(), "t", 0);
    assert_eq!(
        records.len(),
        5,
        "acknowledged records of the new topic lost after a crash"
    );
}
