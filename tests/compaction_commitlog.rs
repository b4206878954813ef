//! Log compaction on the CommitLog engine (compacted prefix per partition, RocketMQ 5's
//! compaction topic): against a model of what was appended,
//! - offsets and order never change, `bounds` stay, a reader from the start sees the latest
//!   value of every key and nothing that was never appended;
//! - a reader that keeps up with the head sees every record;
//! - tombstones go only after `delete_retention`;
//! - a power cut at every I/O step of a pass reopens with every acknowledged record or the
//!   one superseding it;
//! - retention that wants a commit-log file holding uncleaned compact-only records keeps them
//!   (cleans them first), while `compact,delete` records go;
//! - a tiny offset map needs several passes and gets there;
//! - damaged compaction files give an error or a clean fallback, never a panic or wrong data.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use duolog::io::{CrashMode, Fault, SimFs};
use duolog::{
    CleanupPolicy, CommitLogOptions, CompactionOptions, EngineKind, Error, FlushPolicy,
    IndexOptions, LogStore, Message, ReadLimits, StoreOptions, TopicConfig,
};

fn options() -> StoreOptions {
    StoreOptions {
        engine: Some(EngineKind::CommitLog),
        flush: FlushPolicy::Sync,
        commitlog: CommitLogOptions {
            file_size: 64 * 1024,
            consume_queue_units: 16,
            retention: None,
            checkpoint_interval: Duration::from_millis(100),
            ..CommitLogOptions::default()
        },
        index: IndexOptions {
            enabled: true,
            slots: 101,
            max_entries: 4096,
        },
        compaction: CompactionOptions {
            enabled: false,
            ..CompactionOptions::default()
        },
        ..StoreOptions::default()
    }
}

fn sim_options(sim: &SimFs) -> StoreOptions {
    StoreOptions {
        fs: Arc::new(sim.clone()),
        ..options()
    }
}

/// A compact-only topic whose records leave the head 1 ms after they are written.
fn compact_topic(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        cleanup_policy: CleanupPolicy::Compact,
        segment_ms: Some(Duration::from_millis(1)),
        delete_retention: Some(Duration::from_secs(3600)),
        ..TopicConfig::default()
    }
}

/// What was appended at each offset of one partition.
#[derive(Clone, Debug)]
struct Entry {
    key: Option<String>,
    body: Vec<u8>,
    tombstone: bool,
}

impl Entry {
    fn message(&self) -> Message {
        match (&self.key, self.tombstone) {
            (Some(k), true) => Message::tombstone(k.clone()),
            (Some(k), false) => Message::new(self.body.clone()).with_key(k.clone()),
            (None, _) => Message::new(self.body.clone()),
        }
    }
}

/// A small deterministic generator (the tests must replay the same workload after a crash).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` random entries: keys from `keys` distinct ones, a few tombstones, a few keyless.
fn workload(seed: u64, n: usize, keys: u64) -> Vec<Entry> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|i| {
            let roll = rng.below(20);
            let key = (roll != 0).then(|| format!("key-{}", rng.below(keys)));
            let tombstone = key.is_some() && roll == 1;
            let len = 10 + rng.below(300) as usize;
            let mut body = format!("v{i}-").into_bytes();
            body.resize(len, b'a' + (i % 26) as u8);
            Entry {
                key,
                body: if tombstone { Vec::new() } else { body },
                tombstone,
            }
        })
        .collect()
}

fn append_all(store: &dyn LogStore, topic: &str, p: u32, entries: &[Entry]) {
    for chunk in entries.chunks(7) {
        let msgs: Vec<Message> = chunk.iter().map(Entry::message).collect();
        store.append(topic, p, &msgs).unwrap();
    }
}

/// Latest offset of each key.
fn latest(model: &[Entry]) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for (o, e) in model.iter().enumerate() {
        if let Some(k) = &e.key {
            m.insert(k.clone(), o as u64);
        }
    }
    m
}

/// Every record of a partition, reading from the start.
fn read_all(store: &dyn LogStore, topic: &str, p: u32, ctx: &str) -> Vec<duolog::Record> {
    let b = store.bounds(topic, p).unwrap();
    let mut out: Vec<duolog::Record> = Vec::new();
    let mut at = b.start;
    while at < b.end {
        let batch = store
            .read(topic, p, at, ReadLimits::messages(13))
            .unwrap_or_else(|e| panic!("{ctx}: read at {at}: {e}"));
        assert!(
            !batch.is_empty(),
            "{ctx}: read at {at} < end {} empty",
            b.end
        );
        at = batch.last().unwrap().offset() + 1;
        out.extend(batch);
    }
    out
}

/// What every compaction guarantee says about a partition read from the start. With
/// `tombstones_may_go`, a latest record that is a tombstone may be missing. Returns the
/// records read.
fn check_model(
    store: &dyn LogStore,
    topic: &str,
    p: u32,
    model: &[Entry],
    tombstones_may_go: bool,
    ctx: &str,
) -> Vec<duolog::Record> {
    let b = store.bounds(topic, p).unwrap();
    assert_eq!(b.start, 0, "{ctx}: start moved");
    assert_eq!(b.end, model.len() as u64, "{ctx}: end");
    let recs = read_all(store, topic, p, ctx);
    let mut last: Option<u64> = None;
    for r in &recs {
        assert!(last.is_none_or(|l| r.offset() > l), "{ctx}: order");
        last = Some(r.offset());
        let e = &model[r.offset() as usize];
        assert_eq!(
            r.key(),
            e.key.as_deref().map(str::as_bytes),
            "{ctx}: key at {}",
            r.offset()
        );
        assert_eq!(r.body(), &e.body[..], "{ctx}: body at {}", r.offset());
        assert_eq!(
            r.is_tombstone(),
            e.tombstone,
            "{ctx}: tombstone at {}",
            r.offset()
        );
    }
    let present: std::collections::HashSet<u64> = recs.iter().map(|r| r.offset()).collect();
    for (k, &o) in &latest(model) {
        let may_go = tombstones_may_go && model[o as usize].tombstone;
        assert!(
            present.contains(&o) || may_go,
            "{ctx}: latest record of {k} (offset {o}) is gone"
        );
    }
    for (o, e) in model.iter().enumerate() {
        if e.key.is_none() {
            assert!(
                present.contains(&(o as u64)),
                "{ctx}: keyless record {o} removed"
            );
        }
    }
    recs
}

fn settle() {
    // Past the topics' 1 ms segment.ms, so everything written so far is out of the head.
    std::thread::sleep(Duration::from_millis(5));
}

#[test]
fn compaction_keeps_the_latest_value_of_every_key_against_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    store.create_topic("c", compact_topic(2)).unwrap();
    let mut models = [Vec::new(), Vec::new()];
    for round in 0..6u64 {
        for p in 0..2u32 {
            let more = workload(round * 10 + u64::from(p) + 7, 80, 25);
            append_all(store.as_ref(), "c", p, &more);
            models[p as usize].extend(more);
        }
        settle();
        let report = store.compact(Some("c")).unwrap();
        assert_eq!(report.partitions_cleaned, 2, "round {round}");
        if round > 0 {
            assert!(report.records_removed > 0, "round {round}: nothing removed");
        }
        for p in 0..2u32 {
            let model = &models[p as usize];
            let ctx = format!("round {round}, partition {p}");
            let recs = check_model(store.as_ref(), "c", p, model, false, &ctx);
            // Everything was cleanable: exactly the latest record of each key and the keyless.
            let want = latest(model).len() + model.iter().filter(|e| e.key.is_none()).count();
            assert_eq!(recs.len(), want, "{ctx}: superseded records left");
            // A read at any offset starts at the first kept record at or after it.
            for o in (0..model.len() as u64).step_by(7) {
                let got = store.read("c", p, o, ReadLimits::messages(1)).unwrap();
                let next = recs.iter().find(|r| r.offset() >= o).map(|r| r.offset());
                assert_eq!(got.first().map(|r| r.offset()), next, "{ctx}: read at {o}");
            }
            let bytes: u64 = recs.iter().map(|r| u64::from(r.stored_size())).sum();
            assert_eq!(
                store.partition_bytes("c", p).unwrap(),
                bytes,
                "{ctx}: bytes"
            );
            // Key lookups find the latest record of a key, never a removed one.
            let latest_of = latest(model);
            let (k, &o) = latest_of
                .iter()
                .find(|(_, o)| !model[**o as usize].tombstone)
                .unwrap();
            let found = store.find_by_key("c", k, (0, i64::MAX), 100).unwrap();
            assert!(found.iter().all(|m| m.partition != p
                || model[m.record.offset() as usize].key.as_deref() == Some(k.as_str())));
            assert!(
                found
                    .iter()
                    .any(|m| m.partition == p && m.record.offset() == o),
                "{ctx}: find_by_key {k}"
            );
            assert!(
                found
                    .iter()
                    .filter(|m| m.partition == p)
                    .all(|m| recs.iter().any(|r| r.offset() == m.record.offset())),
                "{ctx}: find_by_key returned a removed record"
            );
            // Time lookups land on a kept record.
            let ts = recs[recs.len() / 2].store_timestamp();
            let at = store.offset_for_time("c", p, ts).unwrap().unwrap();
            assert!(
                recs.iter().any(|r| r.offset() == at),
                "{ctx}: offset_for_time gave removed {at}"
            );
            assert!(
                recs.iter()
                    .find(|r| r.offset() == at)
                    .unwrap()
                    .store_timestamp()
                    >= ts
            );
        }
        let v = store.verify().unwrap();
        assert!(v.is_ok(), "round {round}: {:?}", v.problems);
    }
    // Reopened cleanly, and after a crash (the queue rebuilt past the checkpoint, the key
    // index caught up from its own): the same view.
    store.close().unwrap();
    drop(store);
    for crash in [false, true] {
        let store = duolog::open(dir.path(), options()).unwrap();
        for p in 0..2u32 {
            check_model(
                store.as_ref(),
                "c",
                p,
                &models[p as usize],
                false,
                &format!("reopen {crash}"),
            );
        }
        let v = store.verify().unwrap();
        assert!(v.is_ok(), "reopen (after crash: {crash}): {:?}", v.problems);
        // Appends go on at the end.
        let more = workload(99, 10, 25);
        append_all(store.as_ref(), "c", 0, &more);
        models[0].extend(more);
        if crash {
            store.close().unwrap();
        } else {
            store.abandon();
        }
    }
    let store = duolog::open(dir.path(), options()).unwrap();
    assert!(store.reindex().unwrap() > 0);
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "after reindex: {:?}", v.problems);
}

#[test]
fn a_reader_that_keeps_up_with_the_head_sees_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    // The head: the last 4 KiB of the commit log (segment.ms far away).
    let config = TopicConfig {
        segment_bytes: Some(4096),
        segment_ms: Some(Duration::from_secs(86_400)),
        ..compact_topic(1)
    };
    store.create_topic("c", config).unwrap();
    let mut model = Vec::new();
    let mut pos = 0u64;
    let mut removed = 0;
    for round in 0..60u64 {
        // Under 4 KiB per round: the keep-up reader's next record is still in the head.
        let more: Vec<Entry> = workload(round + 1, 6, 5)
            .into_iter()
            .map(|mut e| {
                e.body.truncate(200);
                e
            })
            .collect();
        append_all(store.as_ref(), "c", 0, &more);
        model.extend(more);
        removed += store.compact(Some("c")).unwrap().records_removed;
        let end = store.bounds("c", 0).unwrap().end;
        while pos < end {
            let got = store.read("c", 0, pos, ReadLimits::messages(4)).unwrap();
            for r in &got {
                assert_eq!(
                    r.offset(),
                    pos,
                    "round {round}: the keep-up reader skipped {pos}"
                );
                assert_eq!(r.body(), &model[pos as usize].body[..]);
                pos += 1;
            }
        }
    }
    assert!(
        removed > 0,
        "compaction never removed anything: the test proves nothing"
    );
    let from_start = read_all(store.as_ref(), "c", 0, "from start");
    assert!(from_start.len() < model.len());
    check_model(store.as_ref(), "c", 0, &model, false, "end");
}

// The tombstone's age is set against `delete_retention` by altering the retention, not by
// racing it: with a short retention, a first pass delayed past it (slow fsyncs under load)
// found the tombstone already expired.
#[test]
fn tombstones_go_only_after_delete_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    let config = TopicConfig {
        delete_retention: Some(Duration::from_secs(3600)),
        ..compact_topic(1)
    };
    store.create_topic("c", config.clone()).unwrap();
    store
        .append("c", 0, &[Message::new("v1").with_key("k1")])
        .unwrap();
    store.append("c", 0, &[Message::tombstone("k1")]).unwrap();
    store
        .append("c", 0, &[Message::new("v2").with_key("k2")])
        .unwrap();
    settle();
    let r = store.compact(None).unwrap();
    assert_eq!((r.records_removed, r.tombstones_removed), (1, 0));
    let recs = read_all(store.as_ref(), "c", 0, "young");
    assert_eq!(recs.iter().map(|r| r.offset()).collect::<Vec<_>>(), [1, 2]);
    assert!(
        recs[0].is_tombstone(),
        "a reader within delete_retention sees the delete"
    );
    // Nothing is dirty any more, but the tombstone expires: a later pass removes it.
    let expires = TopicConfig {
        delete_retention: Some(Duration::from_millis(1)),
        ..config
    };
    store.alter_topic("c", expires).unwrap();
    settle();
    let r = store.compact(None).unwrap();
    assert_eq!(r.tombstones_removed, 1);
    let recs = read_all(store.as_ref(), "c", 0, "expired");
    assert_eq!(recs.iter().map(|r| r.offset()).collect::<Vec<_>>(), [2]);
    // Offsets 0 and 1 read as the next record; bounds stay.
    assert_eq!(
        store.read("c", 0, 0, ReadLimits::messages(5)).unwrap()[0].offset(),
        2
    );
    let b = store.bounds("c", 0).unwrap();
    assert_eq!((b.start, b.end), (0, 3));
}

fn compaction_files(dir: &Path) -> Vec<PathBuf> {
    let d = dir.join("compaction").join("c").join("0");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&d)
        .map(|it| it.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The crash workload: a store with a compact topic whose queue files will go below the
/// compacted prefix, closed and reopened so the pass starts from a checkpoint.
fn crash_setup(sim: &SimFs) -> (Box<dyn LogStore>, Vec<Entry>) {
    let store = duolog::open("/s", sim_options(sim)).unwrap();
    store.create_topic("c", compact_topic(1)).unwrap();
    let model = workload(5, 70, 12);
    append_all(store.as_ref(), "c", 0, &model[..40]);
    settle();
    // A first generation exists, so the pass under test replaces one.
    store.compact(None).unwrap();
    append_all(store.as_ref(), "c", 0, &model[40..60]);
    store.close().unwrap();
    drop(store);
    // The last records are durable in the log but behind no checkpoint (the queue units of
    // a recovery replay them) when the pass starts.
    let opts = StoreOptions {
        commitlog: CommitLogOptions {
            checkpoint_interval: Duration::MAX,
            ..options().commitlog
        },
        ..sim_options(sim)
    };
    let store = duolog::open("/s", opts).unwrap();
    append_all(store.as_ref(), "c", 0, &model[60..]);
    settle();
    (store, model)
}

#[test]
fn a_power_cut_at_every_step_of_a_pass_loses_nothing_acknowledged() {
    let steps = {
        let sim = SimFs::new();
        let (store, _) = crash_setup(&sim);
        let before = sim.op_count();
        let r = store.compact(None).unwrap();
        assert!(r.records_removed > 0);
        sim.op_count() - before
    };
    assert!(steps > 8, "a pass takes several I/O steps ({steps})");
    let mut cases = 0;
    for k in 0..=steps + 1 {
        for (m, mode) in CrashMode::ALL.iter().enumerate() {
            let sim = SimFs::new();
            let (store, model) = crash_setup(&sim);
            sim.fail_after(k, Fault::Eio);
            let _ = store.compact(None);
            store.abandon();
            drop(store);
            let crashed = sim.crash(*mode, k * 7 + m as u64);
            let ctx = format!("power cut at step {k} of {steps}, {mode:?}");
            let store = duolog::open("/s", sim_options(&crashed))
                .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            check_model(store.as_ref(), "c", 0, &model, false, &ctx);
            let v = store.verify().unwrap();
            assert!(v.is_ok(), "{ctx}: {:?}", v.problems);
            // The next pass completes the work; appends go on.
            settle();
            store
                .compact(None)
                .unwrap_or_else(|e| panic!("{ctx}: compact after reopen: {e}"));
            let recs = check_model(store.as_ref(), "c", 0, &model, false, &ctx);
            let want = latest(&model).len() + model.iter().filter(|e| e.key.is_none()).count();
            assert_eq!(
                recs.len(),
                want,
                "{ctx}: second pass left superseded records"
            );
            store.append("c", 0, &[Message::new("after")]).unwrap();
            assert_eq!(store.bounds("c", 0).unwrap().end, model.len() as u64 + 1);
            cases += 1;
        }
    }
    eprintln!("{cases} power cuts over {steps} I/O steps of a pass");
}

#[test]
fn retention_keeps_compact_only_records_it_would_delete_and_drops_compact_delete_ones() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        commitlog: CommitLogOptions {
            retention: Some(Duration::from_millis(1)),
            ..options().commitlog
        },
        ..options()
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    // Inside the head for ever (1 GiB segment, a day of segment.ms): only retention's forced
    // pass can clean these.
    let head_forever = TopicConfig {
        segment_bytes: Some(1 << 30),
        segment_ms: Some(Duration::from_secs(86_400)),
        ..compact_topic(1)
    };
    store.create_topic("c", head_forever.clone()).unwrap();
    let cd = TopicConfig {
        cleanup_policy: CleanupPolicy::CompactDelete,
        retention: Some(Duration::from_millis(1)),
        ..head_forever
    };
    store.create_topic("cd", cd).unwrap();
    store
        .create_topic(
            "f",
            TopicConfig {
                retention: Some(Duration::from_millis(1)),
                ..TopicConfig::with_partitions(1)
            },
        )
        .unwrap();
    let model = workload(3, 60, 1_000_000);
    append_all(store.as_ref(), "c", 0, &model);
    append_all(store.as_ref(), "cd", 0, &model);
    let filler = Message::new(vec![b'f'; 2000]);
    for _ in 0..200 {
        store.append("f", 0, std::slice::from_ref(&filler)).unwrap();
    }
    let files_before = store.disk_usage().unwrap().files;
    std::thread::sleep(Duration::from_millis(20));
    let removed = store.enforce_retention().unwrap();
    assert!(removed >= 4, "retention removed {removed} files");
    assert!(store.disk_usage().unwrap().files < files_before);
    check_model(
        store.as_ref(),
        "c",
        0,
        &model,
        false,
        "compact-only after retention",
    );
    let b = store.bounds("cd", 0).unwrap();
    assert!(
        b.start > 0,
        "compact,delete records outlived their retention: {b:?}"
    );
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    store.close().unwrap();
    drop(store);
    let store = duolog::open(dir.path(), options()).unwrap();
    check_model(
        store.as_ref(),
        "c",
        0,
        &model,
        false,
        "compact-only after reopen",
    );
}

#[test]
fn background_retention_waits_for_the_cleaner_and_never_loses_compact_records() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        commitlog: CommitLogOptions {
            retention: Some(Duration::from_millis(1)),
            retention_check_interval: Duration::from_millis(10),
            ..options().commitlog
        },
        compaction: CompactionOptions {
            enabled: true,
            check_interval: Duration::from_millis(15),
            ..CompactionOptions::default()
        },
        ..options()
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    let head_forever = TopicConfig {
        segment_bytes: Some(1 << 30),
        segment_ms: Some(Duration::from_secs(86_400)),
        ..compact_topic(1)
    };
    store.create_topic("c", head_forever).unwrap();
    store
        .create_topic("f", TopicConfig::with_partitions(1))
        .unwrap();
    let model = workload(11, 60, 1_000_000);
    append_all(store.as_ref(), "c", 0, &model);
    let filler = Message::new(vec![b'f'; 2000]);
    let first_file = store.disk_usage().unwrap();
    for i in 0..300 {
        store.append("f", 0, std::slice::from_ref(&filler)).unwrap();
        if i % 50 == 0 {
            check_model(
                store.as_ref(),
                "c",
                0,
                &model,
                false,
                "while retention runs",
            );
        }
    }
    // Wait for the background jobs to have deleted the first log files.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        check_model(store.as_ref(), "c", 0, &model, false, "background");
        if store.bounds("f", 0).unwrap().start > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention never ran ({first_file:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    check_model(
        store.as_ref(),
        "c",
        0,
        &model,
        false,
        "after background retention",
    );
}

#[test]
fn a_tiny_offset_map_needs_several_passes_and_gets_there() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        compaction: CompactionOptions {
            enabled: false,
            // The smallest map: 42 slots, 37 keys per pass.
            offset_map_bytes: 1024,
            ..CompactionOptions::default()
        },
        ..options()
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    store.create_topic("c", compact_topic(1)).unwrap();
    let mut model = Vec::new();
    for round in 0..3 {
        for k in 0..120 {
            model.push(Entry {
                key: Some(format!("key-{k}")),
                body: format!("r{round}k{k}").into_bytes(),
                tombstone: false,
            });
        }
    }
    append_all(store.as_ref(), "c", 0, &model);
    settle();
    let mut passes = 0;
    loop {
        let r = store.compact(Some("c")).unwrap();
        if r.partitions_cleaned == 0 {
            break;
        }
        passes += 1;
        assert!(passes < 100, "passes never converge");
        check_model(
            store.as_ref(),
            "c",
            0,
            &model,
            false,
            &format!("pass {passes}"),
        );
    }
    assert!(
        passes >= 9,
        "a 37-key map covered 360 records in {passes} passes"
    );
    let recs = check_model(store.as_ref(), "c", 0, &model, false, "converged");
    assert_eq!(recs.len(), 120);
    assert!(recs.iter().all(|r| r.body().starts_with(b"r2")));
}

/// A store whose partition `c/0` has a compacted prefix; with `queue_units` small its queue
/// files below the prefix are deleted (the compacted files are then the only copy).
fn compacted_store(dir: &Path, queue_units: u32) -> (StoreOptions, Vec<Entry>) {
    let opts = StoreOptions {
        commitlog: CommitLogOptions {
            consume_queue_units: queue_units,
            ..options().commitlog
        },
        ..options()
    };
    let store = duolog::open(dir, opts.clone()).unwrap();
    store.create_topic("c", compact_topic(1)).unwrap();
    let model = workload(21, 120, 15);
    append_all(store.as_ref(), "c", 0, &model);
    settle();
    store.compact(None).unwrap();
    store.close().unwrap();
    (opts, model)
}

fn file_ending(dir: &Path, ext: &str) -> PathBuf {
    compaction_files(dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(ext))
        .unwrap_or_else(|| panic!("no {ext} file in {:?}", compaction_files(dir)))
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let at = at.min(b.len() - 1);
    b[at] ^= 0x40;
    std::fs::write(path, b).unwrap();
}

#[test]
fn a_damaged_state_is_an_error_when_the_compacted_files_are_the_only_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, _) = compacted_store(dir.path(), 16);
    flip(&file_ending(dir.path(), "state"), 20);
    match duolog::open(dir.path(), opts) {
        Err(Error::Corrupted { file, .. }) => assert!(file.ends_with("state"), "{file:?}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened on a damaged compaction state with its queue files gone"),
    }
}

#[test]
fn a_damaged_state_falls_back_to_the_uncompacted_log_when_it_is_all_still_there() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, model) = compacted_store(dir.path(), 300_000);
    flip(&file_ending(dir.path(), "state"), 20);
    let store = duolog::open(dir.path(), opts).unwrap();
    let recs = check_model(store.as_ref(), "c", 0, &model, false, "fallback");
    assert_eq!(recs.len(), model.len(), "the fallback serves the whole log");
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    assert!(
        !compaction_files(dir.path())
            .iter()
            .any(|p| p.ends_with("state"))
    );
}

#[test]
fn damaged_compacted_files_are_errors_not_panics() {
    for (what, ext) in [("data", ".log"), ("index", ".idx")] {
        for at in [0usize, 9, 30, 200, 5000] {
            let dir = tempfile::tempdir().unwrap();
            let (opts, _) = compacted_store(dir.path(), 16);
            flip(&file_ending(dir.path(), ext), at);
            let ctx = format!("{what} flipped at {at}");
            let store = match duolog::open(dir.path(), opts) {
                Ok(s) => s,
                Err(Error::Corrupted { .. }) => continue,
                Err(e) => panic!("{ctx}: {e}"),
            };
            let mut failed = false;
            let b = store.bounds("c", 0).unwrap();
            for o in b.start..b.end {
                match store.read("c", 0, o, ReadLimits::messages(3)) {
                    Ok(_) => {}
                    Err(Error::Corrupted { .. }) => failed = true,
                    Err(e) => panic!("{ctx}: read {o}: {e}"),
                }
            }
            let v = store.verify().unwrap();
            if failed {
                assert!(!v.is_ok(), "{ctx}: reads failed but verify saw nothing");
            }
            if what == "data" {
                // Every data byte is under a record's CRC.
                assert!(!v.is_ok(), "{ctx}: verify missed a damaged record");
                assert!(failed, "{ctx}: a damaged record was served");
            }
        }
        // A truncated file: open refuses it.
        let dir = tempfile::tempdir().unwrap();
        let (opts, _) = compacted_store(dir.path(), 16);
        let path = file_ending(dir.path(), ext);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        assert!(
            matches!(duolog::open(dir.path(), opts), Err(Error::Corrupted { .. })),
            "{what} truncated"
        );
    }
}

/// Five versions of 20 keys: once cleaned, 20 records are left.
fn five_versions_of_twenty_keys() -> Vec<Entry> {
    let mut model = Vec::new();
    for round in 0..5 {
        for k in 0..20 {
            model.push(Entry {
                key: Some(format!("key-{k}")),
                body: format!("r{round}k{k}").into_bytes(),
                tombstone: false,
            });
        }
    }
    model
}

// Every record is written while no cleaner runs, and the cleaner starts on a reopen: a
// background pass can then only see the finished partitions. Written with the cleaner running,
// a pass landing between two appends (as one does when fsyncs are slow under load) cleans the
// records so far and leaves a tail of a few records against 20 clean ones, under the ratio: it
// correctly stays uncleaned for good, and a wait for 20 records could never end.
#[test]
fn the_background_cleaner_cleans_partitions_past_the_dirty_ratio_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    store.create_topic("c", compact_topic(2)).unwrap();
    // Partition 0: cleaned, then one new version of a single key: dirty 1 record against 21,
    // under the ratio, so background passes leave it; `compact()` ignores the ratio.
    let mut under = five_versions_of_twenty_keys();
    append_all(store.as_ref(), "c", 0, &under);
    settle();
    store.compact(Some("c")).unwrap();
    assert_eq!(read_all(store.as_ref(), "c", 0, "cleaned").len(), 20);
    let one = Entry {
        key: Some("key-0".into()),
        body: b"newest".to_vec(),
        tombstone: false,
    };
    append_all(store.as_ref(), "c", 0, std::slice::from_ref(&one));
    under.push(one);
    // Partition 1: all 100 records dirty, past the ratio.
    let past = five_versions_of_twenty_keys();
    append_all(store.as_ref(), "c", 1, &past);
    settle();
    store.close().unwrap();

    let opts = StoreOptions {
        compaction: CompactionOptions {
            enabled: true,
            check_interval: Duration::from_millis(20),
            min_cleanable_dirty_ratio: 0.5,
            ..CompactionOptions::default()
        },
        ..options()
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    // Only a background pass cleans partition 1, and a pass looks at partition 0 first, with
    // every record above already there: once partition 1 is clean, partition 0 was judged.
    // The deadline only stops a hang; nothing here depends on when passes run.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while read_all(store.as_ref(), "c", 1, "wait").len() > 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the background cleaner never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    check_model(
        store.as_ref(),
        "c",
        1,
        &past,
        false,
        "cleaned in the background",
    );
    assert_eq!(
        read_all(store.as_ref(), "c", 0, "under the ratio").len(),
        21
    );
    let r = store.compact(Some("c")).unwrap();
    assert_eq!(r.records_removed, 1);
    let recs = check_model(store.as_ref(), "c", 0, &under, false, "after compact()");
    assert_eq!(recs.len(), 20);
    store.close().unwrap();
}

#[test]
fn io_bytes_per_sec_throttles_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let rate = 50_000u64;
    let opts = StoreOptions {
        compaction: CompactionOptions {
            enabled: false,
            io_bytes_per_sec: Some(rate),
            ..CompactionOptions::default()
        },
        ..options()
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    store.create_topic("c", compact_topic(1)).unwrap();
    let model = workload(8, 200, 10);
    append_all(store.as_ref(), "c", 0, &model);
    settle();
    let started = std::time::Instant::now();
    let r = store.compact(None).unwrap();
    let elapsed = started.elapsed();
    // The dirty section is read twice (offset map, then the copy).
    let floor = Duration::from_secs_f64(2.0 * r.bytes_before as f64 / rate as f64);
    assert!(r.bytes_before > 20_000, "too little data to measure: {r:?}");
    assert!(
        elapsed >= floor.mul_f64(0.9),
        "{elapsed:?} < {floor:?} for {r:?}"
    );
}

#[test]
fn reads_racing_passes_and_appends_never_fail_skip_or_come_back_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), options()).unwrap());
    store.create_topic("c", compact_topic(1)).unwrap();
    let model = Arc::new(parking_lot::Mutex::new(Vec::<Entry>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, model, stop) = (Arc::clone(&store), Arc::clone(&model), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut seed = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let more = workload(seed, 5, 8);
                seed += 1;
                let mut m = model.lock();
                append_all(store.as_ref(), "c", 0, &more);
                m.extend(more);
            }
        })
    };
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (store, model, stop) = (Arc::clone(&store), Arc::clone(&model), Arc::clone(&stop));
        let reads = Arc::clone(&reads);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut at = 0;
                let end = store.bounds("c", 0).unwrap().end;
                while at < end {
                    let got = store.read("c", 0, at, ReadLimits::messages(7)).unwrap();
                    assert!(!got.is_empty(), "read at {at} < {end} came back empty");
                    let m = model.lock();
                    for r in &got {
                        assert!(r.offset() >= at);
                        assert_eq!(r.body(), &m[r.offset() as usize].body[..]);
                    }
                    at = got.last().unwrap().offset() + 1;
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        })
    };
    // 40 passes, and on until the reader has raced one (a starved reader thread may not have
    // run at all by the 40th under load; the long deadline only stops a hang).
    let started = std::time::Instant::now();
    let mut passes = 0;
    while passes < 40 || reads.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the reader never ran"
        );
        settle();
        store.compact(None).unwrap();
        passes += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    reader.join().unwrap();
    assert!(reads.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let model = model.lock().clone();
    settle();
    store.compact(None).unwrap();
    check_model(store.as_ref(), "c", 0, &model, false, "after the race");
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
}

#[test]
fn a_deleted_topics_compacted_files_never_reach_a_new_topic_of_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    store.create_topic("c", compact_topic(1)).unwrap();
    append_all(store.as_ref(), "c", 0, &workload(4, 50, 5));
    settle();
    store.compact(None).unwrap();
    assert!(!compaction_files(dir.path()).is_empty());
    store.delete_topic("c").unwrap();
    assert!(compaction_files(dir.path()).is_empty());
    store.create_topic("c", compact_topic(1)).unwrap();
    let b = store.bounds("c", 0).unwrap();
    assert_eq!((b.start, b.end), (0, 0));
    store
        .append("c", 0, &[Message::new("fresh").with_key("k")])
        .unwrap();
    store.close().unwrap();
    drop(store);
    let store = duolog::open(dir.path(), options()).unwrap();
    let recs = read_all(store.as_ref(), "c", 0, "recreated");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].body(), b"fresh");
}

#[test]
fn a_clean_end_past_a_damaged_logs_recovered_end_is_lowered_and_new_records_win() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::CommitLogStore::open(dir.path(), options()).unwrap();
    store.create_topic("c", compact_topic(1)).unwrap();
    // 40 records; the last three have keys of their own, so the compacted prefix keeps them.
    let mut model = workload(13, 37, 6);
    for k in 0..3 {
        model.push(Entry {
            key: Some(format!("last-{k}")),
            body: format!("last {k}").into_bytes(),
            tombstone: false,
        });
    }
    append_all(&store, "c", 0, &model);
    settle();
    store.compact(None).unwrap();
    // Queue files of 16 units: 0 and 16 are gone, 32 (units 32..47) stays.
    let unit = store
        .consume_queue_unit("c", 0, 37)
        .unwrap()
        .expect("unit 37");
    let log_file = store.commitlog_files()[0].clone();
    store.close().unwrap();
    drop(store);
    // Damage: the log loses records 37.. (zeros), the checkpoint is gone and the store
    // looks crashed, so recovery replays the whole log and ends the partition at 37.
    let mut bytes = std::fs::read(&log_file).unwrap();
    bytes[unit.position as usize..].fill(0);
    std::fs::write(&log_file, bytes).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    std::fs::write(dir.path().join("abort"), b"").unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    let b = store.bounds("c", 0).unwrap();
    assert_eq!(b.end, 37, "recovered end");
    model.truncate(37);
    check_model(store.as_ref(), "c", 0, &model, false, "clamped");
    // Offset 37 goes to a new record, and reads (now and after a reopen) see it, not the
    // compacted record that once had that offset.
    store
        .append("c", 0, &[Message::new("new 37").with_key("n")])
        .unwrap();
    let mut store = store;
    for reopen in [false, true] {
        if reopen {
            store.close().unwrap();
            drop(store);
            store = duolog::open(dir.path(), options()).unwrap();
        }
        let got = store.read("c", 0, 37, ReadLimits::messages(5)).unwrap();
        assert_eq!(got.len(), 1, "reopened: {reopen}");
        assert_eq!(got[0].body(), b"new 37", "reopened: {reopen}");
        let v = store.verify().unwrap();
        assert!(v.is_ok(), "reopened: {reopen}: {:?}", v.problems);
    }
}

#[test]
fn retention_keeps_the_log_file_when_the_forced_pass_cannot_clean_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        commitlog: CommitLogOptions {
            retention: Some(Duration::from_millis(1)),
            ..options().commitlog
        },
        ..options()
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    store.create_topic("c", compact_topic(1)).unwrap();
    store
        .create_topic("f", TopicConfig::with_partitions(1))
        .unwrap();
    let first = workload(17, 30, 5);
    append_all(store.as_ref(), "c", 0, &first);
    settle();
    store.compact(None).unwrap();
    // From now on the head covers everything: only retention's forced pass would clean.
    let head_forever = TopicConfig {
        segment_bytes: Some(1 << 30),
        segment_ms: Some(Duration::from_secs(86_400)),
        ..compact_topic(1)
    };
    store.alter_topic("c", head_forever).unwrap();
    let second = workload(18, 30, 1_000_000);
    append_all(store.as_ref(), "c", 0, &second);
    // The forced pass must copy the damaged generation, and fails.
    flip(&file_ending(dir.path(), ".log"), 40);
    let filler = Message::new(vec![b'f'; 2000]);
    for _ in 0..200 {
        store.append("f", 0, std::slice::from_ref(&filler)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let files = store.disk_usage().unwrap().files;
    assert_eq!(
        store.enforce_retention().unwrap(),
        0,
        "the file of uncleaned records went"
    );
    assert_eq!(store.disk_usage().unwrap().files, files);
    // Every record the compacted files do not serve is still there.
    let b = store.bounds("c", 0).unwrap();
    assert_eq!((b.start, b.end), (0, 60));
    let got = store.read("c", 0, 30, ReadLimits::messages(100)).unwrap();
    assert_eq!(got.len(), 30);
    for (r, e) in got.iter().zip(&second) {
        assert_eq!(r.body(), &e.body[..]);
    }
}

#[test]
fn records_below_a_raised_start_leave_the_compacted_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(dir.path(), options()).unwrap();
    store.create_topic("c", compact_topic(1)).unwrap();
    // Distinct keys: compaction removes nothing, so only the start can.
    let model = workload(19, 60, 1_000_000);
    append_all(store.as_ref(), "c", 0, &model);
    settle();
    store.compact(None).unwrap();
    let before = store.partition_bytes("c", 0).unwrap();
    store.delete_before("c", 0, 25).unwrap();
    let recs = read_all(store.as_ref(), "c", 0, "raised start");
    assert_eq!(recs.first().map(|r| r.offset()), Some(25));
    assert_eq!(recs.len(), 35);
    let after = store.partition_bytes("c", 0).unwrap();
    let want: u64 = recs.iter().map(|r| u64::from(r.stored_size())).sum();
    assert_eq!(after, want);
    assert!(after < before);
    // The next pass drops them from the files too; a reopen agrees.
    append_all(store.as_ref(), "c", 0, &workload(20, 5, 1_000_000));
    settle();
    store.compact(None).unwrap();
    store.close().unwrap();
    drop(store);
    let store = duolog::open(dir.path(), options()).unwrap();
    assert_eq!(store.bounds("c", 0).unwrap().start, 25);
    assert!(matches!(
        store.read("c", 0, 10, ReadLimits::default()),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(read_all(store.as_ref(), "c", 0, "reopened").len(), 40);
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
}

/// A store whose first log files hold a compact-only topic's records, inside the head, and
/// are old enough for retention: `enforce_retention` must clean them before the files go.
fn retention_crash_setup(sim: &SimFs) -> (Box<dyn LogStore>, Vec<Entry>) {
    let opts = StoreOptions {
        commitlog: CommitLogOptions {
            retention: Some(Duration::from_millis(1)),
            ..options().commitlog
        },
        ..sim_options(sim)
    };
    let store = duolog::open("/s", opts.clone()).unwrap();
    let head_forever = TopicConfig {
        segment_bytes: Some(1 << 30),
        segment_ms: Some(Duration::from_secs(86_400)),
        ..compact_topic(1)
    };
    store.create_topic("c", head_forever).unwrap();
    store
        .create_topic("f", TopicConfig::with_partitions(1))
        .unwrap();
    let model = workload(23, 40, 8);
    append_all(store.as_ref(), "c", 0, &model);
    let filler: Vec<Message> = (0..10).map(|_| Message::new(vec![b'f'; 2000])).collect();
    for _ in 0..12 {
        store.append("f", 0, &filler).unwrap();
    }
    store.close().unwrap();
    drop(store);
    std::thread::sleep(Duration::from_millis(5));
    (duolog::open("/s", opts).unwrap(), model)
}

#[test]
fn a_power_cut_at_every_step_of_retention_with_a_forced_pass_loses_no_compact_record() {
    let steps = {
        let sim = SimFs::new();
        let (store, _) = retention_crash_setup(&sim);
        let before = sim.op_count();
        assert!(store.enforce_retention().unwrap() > 0);
        sim.op_count() - before
    };
    let mut cases = 0;
    for k in 0..=steps + 1 {
        for (m, mode) in CrashMode::ALL.iter().enumerate() {
            let sim = SimFs::new();
            let (store, model) = retention_crash_setup(&sim);
            sim.fail_after(k, Fault::Eio);
            let _ = store.enforce_retention();
            store.abandon();
            drop(store);
            let crashed = sim.crash(*mode, k * 11 + m as u64);
            let ctx = format!("power cut at step {k} of {steps} of retention, {mode:?}");
            let store = duolog::open("/s", sim_options(&crashed))
                .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            check_model(store.as_ref(), "c", 0, &model, false, &ctx);
            let v = store.verify().unwrap();
            assert!(v.is_ok(), "{ctx}: {:?}", v.problems);
            cases += 1;
        }
    }
    eprintln!("{cases} power cuts over {steps} I/O steps of retention");
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        n: usize,
        seed: u64,
    },
    Compact,
    Crash {
        mode: usize,
        seed: u64,
    },
    Reopen,
    /// Another topic's records: they roll commit-log files.
    Filler {
        n: usize,
    },
    /// Retention deletes every sealed file (retention of 1 ms).
    Retention,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        5 => (1usize..12, any::<u64>()).prop_map(|(n, seed)| Op::Append { n, seed }),
        3 => Just(Op::Compact),
        2 => (0..CrashMode::ALL.len(), any::<u64>()).prop_map(|(mode, seed)| Op::Crash { mode, seed }),
        1 => Just(Op::Reopen),
        2 => (1usize..20).prop_map(|n| Op::Filler { n }),
        2 => Just(Op::Retention),
    ]
}

fn run_ops(ops: &[Op]) {
    let opts = |sim: &SimFs| StoreOptions {
        commitlog: CommitLogOptions {
            retention: Some(Duration::from_millis(1)),
            retention_check_interval: Duration::MAX,
            ..options().commitlog
        },
        ..sim_options(sim)
    };
    let mut sim = SimFs::new();
    let mut store = duolog::open("/s", opts(&sim)).unwrap();
    store.create_topic("c", compact_topic(1)).unwrap();
    store
        .create_topic("f", TopicConfig::with_partitions(1))
        .unwrap();
    let filler = Message::new(vec![b'f'; 3000]);
    let mut model: Vec<Entry> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let ctx = format!("op {i} {op:?}");
        match *op {
            Op::Append { n, seed } => {
                let more = workload(seed, n, 6);
                append_all(store.as_ref(), "c", 0, &more);
                model.extend(more);
            }
            Op::Compact => {
                std::thread::sleep(Duration::from_millis(2));
                store.compact(None).unwrap_or_else(|e| panic!("{ctx}: {e}"));
            }
            Op::Crash { mode, seed } => {
                store.abandon();
                drop(store);
                let before = sim.files();
                sim = sim.crash(CrashMode::ALL[mode], seed);
                store = duolog::open("/s", opts(&sim)).unwrap_or_else(|e| {
                    panic!(
                        "{ctx}: reopen: {e}\nfiles before the crash: {before:#?}\nafter: {:#?}",
                        sim.files()
                    )
                });
            }
            Op::Reopen => {
                store.close().unwrap();
                drop(store);
                store = duolog::open("/s", opts(&sim)).unwrap();
            }
            Op::Filler { n } => {
                let batch = vec![filler.clone(); n];
                store.append("f", 0, &batch).unwrap();
            }
            Op::Retention => {
                std::thread::sleep(Duration::from_millis(2));
                store
                    .enforce_retention()
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            }
        }
        if std::env::var("DUOLOG_DEBUG_OPS").is_ok() {
            let files: Vec<_> = sim
                .files()
                .into_iter()
                .filter(|p| {
                    let s = p.to_string_lossy();
                    s.contains("commitlog/") || s.contains("consumequeue/f")
                })
                .collect();
            eprintln!(
                "{ctx}: c {:?} f {:?} {files:?}",
                store.bounds("c", 0).unwrap(),
                store.bounds("f", 0).unwrap()
            );
        }
        check_model(store.as_ref(), "c", 0, &model, false, &ctx);
    }
    let v = store.verify().unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
}

#[test]
fn random_appends_passes_and_crashes_against_a_model() {
    use proptest::prelude::*;
    let config = ProptestConfig {
        cases: std::env::var("DUOLOG_COMPACTION_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(op(), 1..30), |ops| {
        run_ops(&ops);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Found by the property test: another topic's queue units pointing into log files retention
/// deleted, records appended after the checkpoint, then a crash (the open failed with
/// `Corrupted`, "record has queue offset 16 but its consume queue ends at 0").
#[test]
fn retention_then_records_past_the_checkpoint_then_a_crash_reopens() {
    use Op::*;
    run_ops(&[
        Append {
            n: 7,
            seed: 1995831648263627273,
        },
        Append {
            n: 10,
            seed: 16816465024515644421,
        },
        Retention,
        Retention,
        Crash {
            mode: 2,
            seed: 11745884059681979574,
        },
        Filler { n: 16 },
        Append {
            n: 10,
            seed: 3530126219596352550,
        },
        Append {
            n: 6,
            seed: 14793786037530037863,
        },
        Reopen,
        Append {
            n: 11,
            seed: 17325894191205115586,
        },
        Retention,
        Retention,
        Retention,
        Append {
            n: 8,
            seed: 17138452385655084463,
        },
        Append {
            n: 9,
            seed: 7000467539552789469,
        },
        Compact,
        Retention,
        Append {
            n: 9,
            seed: 2882664738314510497,
        },
        Compact,
        Append {
            n: 9,
            seed: 14153487192792541362,
        },
        Filler { n: 17 },
        Append {
            n: 5,
            seed: 11403126892099682235,
        },
        Crash {
            mode: 6,
            seed: 13913493402670853225,
        },
    ]);
}

/// Not compaction proper, but the retention order it relies on: a partition whose records all
/// went with their log files (idle since), then a crash with a stale checkpoint, reopens with
/// its end where it was (not at its queue file's start, which would give out offsets again).
#[test]
fn an_idle_partition_whose_records_retention_deleted_keeps_its_end_after_a_crash() {
    let sim = SimFs::new();
    let opts = |sim: &SimFs| StoreOptions {
        commitlog: CommitLogOptions {
            retention: Some(Duration::from_millis(1)),
            checkpoint_interval: Duration::MAX,
            ..options().commitlog
        },
        ..sim_options(sim)
    };
    let store = duolog::open("/s", opts(&sim)).unwrap();
    store
        .create_topic("p", TopicConfig::with_partitions(1))
        .unwrap();
    store
        .create_topic("f", TopicConfig::with_partitions(1))
        .unwrap();
    for i in 0..5 {
        store
            .append("p", 0, &[Message::new(format!("p{i}"))])
            .unwrap();
    }
    let filler: Vec<Message> = (0..10).map(|_| Message::new(vec![b'f'; 2000])).collect();
    for _ in 0..12 {
        store.append("f", 0, &filler).unwrap();
    }
    std::thread::sleep(Duration::from_millis(5));
    assert!(store.enforce_retention().unwrap() > 0);
    let (p_end, f_end) = (
        store.bounds("p", 0).unwrap().end,
        store.bounds("f", 0).unwrap().end,
    );
    assert_eq!(store.bounds("p", 0).unwrap().start, 5);
    // More records after retention's checkpoint, so the recovery replays.
    store.append("f", 0, &filler).unwrap();
    store.abandon();
    drop(store);
    for mode in CrashMode::ALL {
        let crashed = sim.crash(mode, 7);
        let store = duolog::open("/s", opts(&crashed)).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(store.bounds("p", 0).unwrap().end, p_end, "{mode:?}");
        assert!(store.bounds("f", 0).unwrap().end >= f_end + 10, "{mode:?}");
        let r = store.append("p", 0, &[Message::new("next")]).unwrap();
        assert_eq!(r.base_offset, p_end, "{mode:?}: offsets given out again");
    }
}
