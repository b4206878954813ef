//! Transactions on the CommitLog engine specifically (issue 14): the records' RocketMQ sys
//! flags and marker layout, a torn transactional batch, the aborted-transaction index file
//! (`consumequeue/<topic>/<partition>/aborted.txnindex`) rebuilt when it is deleted or
//! damaged, and compaction next to aborted transactions. The behaviour both engines share is in
//! `txn_engine.rs`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use duolog::commitlog::record::{self, Checks, Decoded};
use duolog::{
    CommitLogStore, EngineKind, FlushPolicy, IsolationLevel, LogStore, Message, ProducerId,
    ReadLimits, StoreOptions, TopicConfig, TxnMarker,
};

const COMMITTED: ReadLimits = ReadLimits {
    max_messages: 1024,
    max_bytes: 4 << 20,
    isolation: IsolationLevel::ReadCommitted,
};

fn batch(tag: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::new(format!("{tag}-{i}"))).collect()
}

fn producer(store: &dyn LogStore) -> ProducerId {
    ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 0,
    }
}

fn ar(base: u64, last: u64) -> duolog::AppendResult {
    duolog::AppendResult {
        base_offset: base,
        last_offset: last,
    }
}

/// Bodies a read-committed reader sees, fetched from the start to the LSO.
fn committed(store: &dyn LogStore, topic: &str, partition: u32) -> Vec<String> {
    let b = store.bounds(topic, partition).unwrap();
    let mut at = b.start;
    let mut out = Vec::new();
    while at < b.last_stable {
        let f = store.fetch(topic, partition, at, COMMITTED).unwrap();
        assert!(f.next_offset > at, "no progress at {at}");
        out.extend(
            f.records
                .iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
        at = f.next_offset;
    }
    out
}

fn opts() -> StoreOptions {
    StoreOptions {
        flush: FlushPolicy::Async {
            interval: Duration::from_secs(3600),
        },
        ..common::small_options(EngineKind::CommitLog)
    }
}

/// The stored record of `offset`, decoded from the commit-log file its unit points at.
fn stored(
    store: &CommitLogStore,
    offset: u64,
    check: impl Fn(&duolog::commitlog::Unit, record::DecodedRecord<'_>),
) {
    let unit = store.consume_queue_unit("t", 0, offset).unwrap().unwrap();
    let size = opts().commitlog.file_size;
    let file = &store.commitlog_files()[(unit.position / size) as usize];
    let bytes = std::fs::read(file).unwrap();
    let at = (unit.position % size) as usize;
    let Ok(Decoded::Message(d)) = record::decode(&bytes[at..at + unit.size as usize], Checks::FULL)
    else {
        panic!("record {offset} does not decode");
    };
    check(&unit, d);
}

fn property<'a>(d: &record::DecodedRecord<'a>, name: &str) -> Option<&'a str> {
    record::iter_properties(d.properties)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[test]
fn markers_are_rocketmq_commit_and_rollback_records_with_kafkas_marker_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(&store);
    let q = producer(&store);
    store
        .append_transactional("t", 0, p, 0, &[Message::new("a").with_tags("T")])
        .unwrap();
    store
        .append_transactional("t", 0, q, 0, &batch("q", 1))
        .unwrap();
    assert_eq!(
        store.write_marker("t", 0, p, TxnMarker::Abort, 7).unwrap(),
        Some(2)
    );
    assert_eq!(
        store.write_marker("t", 0, q, TxnMarker::Commit, 8).unwrap(),
        Some(3)
    );
    store.append("t", 0, &batch("plain", 1)).unwrap();
    // The transaction's record: prepared type, producer properties, its own tag hash.
    stored(&store, 0, |unit, d| {
        assert_eq!(
            d.header.sys_flag & 0x0C,
            record::SYSFLAG_TRANSACTION_PREPARED
        );
        assert_eq!(property(&d, "__PID"), Some(p.id.to_string().as_str()));
        assert_eq!(property(&d, "__SEQ"), Some("0"));
        assert_eq!(unit.tag_hash, record::tag_hash("T"));
    });
    // The rollback marker: its own record, dispatched with the reserved tag hash.
    stored(&store, 2, |unit, d| {
        assert_eq!(
            d.header.sys_flag & 0x0C,
            record::SYSFLAG_TRANSACTION_ROLLBACK
        );
        assert_eq!(d.body, [0, 0, 0, 0, 0, 7], "version 0, coordinator epoch 7");
        assert_eq!(property(&d, "__PID"), Some(p.id.to_string().as_str()));
        assert_eq!(property(&d, "__EPOCH"), Some("0"));
        assert_eq!(property(&d, "__TXNFIRST"), Some("00000000000000000000"));
        // q's transaction (from 1) was still open: Kafka's LSO of the abort.
        assert_eq!(property(&d, "__TXNLSO"), Some("00000000000000000001"));
        assert_eq!(property(&d, "__SEQ"), None);
        assert_eq!(unit.tag_hash, record::MARKER_TAG_HASH);
    });
    stored(&store, 3, |unit, d| {
        assert_eq!(d.header.sys_flag & 0x0C, record::SYSFLAG_TRANSACTION_COMMIT);
        assert_eq!(record::decode_marker_body(d.body), Some(8));
        assert_eq!(unit.tag_hash, record::MARKER_TAG_HASH);
    });
    stored(&store, 4, |_, d| assert_eq!(d.header.sys_flag & 0x0C, 0));
    // Never returned, by any read.
    let all = store.read("t", 0, 0, ReadLimits::default()).unwrap();
    assert!(all.iter().all(|r| !record::is_marker(r.flags() as i32)));
    assert_eq!(all.len(), 3);
    assert_eq!(committed(&store, "t", 0), ["q-0", "plain-0"]);
}

/// As `commitlog_recovery_cuts_a_torn_idempotent_batch_back_to_its_first_record`, for a batch
/// of an open transaction: the power cut kept its first records; recovery cuts it whole, the
/// transaction stays open from its first (intact) batch, and the retry is written whole.
#[test]
fn a_torn_transactional_batch_is_cut_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(&store);
    store.append("t", 0, &batch("plain", 2)).unwrap();
    store
        .append_transactional("t", 0, p, 0, &batch("first", 2))
        .unwrap();
    store.sync().unwrap();
    let torn = batch("torn", 6);
    assert_eq!(
        store.append_transactional("t", 0, p, 2, &torn).unwrap(),
        ar(4, 9)
    );
    let unit = store.consume_queue_unit("t", 0, 7).unwrap().unwrap();
    let files = store.commitlog_files();
    store.abandon();
    drop(store);
    let size = opts().commitlog.file_size;
    let file = &files[(unit.position / size) as usize];
    let mut bytes = std::fs::read(file).unwrap();
    bytes[(unit.position % size) as usize..].fill(0);
    std::fs::write(file, bytes).unwrap();

    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    let b = store.bounds("t", 0).unwrap();
    assert_eq!(
        (b.end, b.last_stable),
        (4, 2),
        "the torn batch is gone whole"
    );
    let state = store.producer_state("t", 0).unwrap();
    assert_eq!(
        (state[0].last_sequence, state[0].open_transaction),
        (1, Some(2))
    );
    assert_eq!(
        store.append_transactional("t", 0, p, 2, &torn).unwrap(),
        ar(4, 9)
    );
    assert_eq!(
        store.write_marker("t", 0, p, TxnMarker::Commit, 0).unwrap(),
        Some(10)
    );
    let seen = committed(&store, "t", 0);
    assert_eq!(seen.len(), 10);
    assert_eq!(seen[4], "torn-0");
    assert!(store.verify().unwrap().is_ok());
}

/// A partition with aborted and committed transactions of two producers, closed cleanly.
/// Returns the committed bodies and the index file's path.
fn aborted_workload(dir: &Path) -> (Vec<String>, PathBuf) {
    let store = CommitLogStore::open(dir, opts()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(&store);
    let q = producer(&store);
    let (mut sp, mut sq) = (0, 0);
    for k in 0..20 {
        store
            .append_transactional("t", 0, p, sp, &batch(&format!("p{k}"), 3))
            .unwrap();
        sp += 3;
        store
            .append_transactional("t", 0, q, sq, &batch(&format!("q{k}"), 2))
            .unwrap();
        sq += 2;
        let (mp, mq) = if k % 3 == 0 {
            (TxnMarker::Commit, TxnMarker::Abort)
        } else {
            (TxnMarker::Abort, TxnMarker::Commit)
        };
        store.write_marker("t", 0, p, mp, 1).unwrap();
        store.write_marker("t", 0, q, mq, 1).unwrap();
        store.append("t", 0, &batch(&format!("x{k}"), 1)).unwrap();
    }
    let seen = committed(&store, "t", 0);
    assert_eq!(seen.len(), 7 * 3 + 13 * 2 + 20);
    store.close().unwrap();
    (seen, dir.join("consumequeue/t/0/aborted.txnindex"))
}

#[test]
fn the_aborted_index_is_rebuilt_after_deletion_or_damage() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage); 5] = [
        ("deleted", |f| std::fs::remove_file(f).unwrap()),
        ("emptied", |f| std::fs::write(f, b"").unwrap()),
        ("cut mid-entry", |f| {
            let b = std::fs::read(f).unwrap();
            std::fs::write(f, &b[..b.len() - 5]).unwrap();
        }),
        ("producer id flipped", |f| {
            let mut b = std::fs::read(f).unwrap();
            b[8 + 38 * 3 + 9] ^= 1;
            std::fs::write(f, b).unwrap();
        }),
        ("garbage", |f| {
            std::fs::write(f, vec![0xA5; 34 * 4]).unwrap()
        }),
    ];
    for (what, damage) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (seen, file) = aborted_workload(dir.path());
        let original = std::fs::read(&file).unwrap();
        assert_eq!(
            original.len(),
            8 + 38 * 20,
            "a header, then one checksummed 34-byte Kafka entry per abort"
        );
        damage(&file);
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        assert_eq!(committed(&store, "t", 0), seen, "{what}");
        assert!(store.verify().unwrap().is_ok(), "{what}");
        store.close().unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), original, "{what}: rebuilt");
    }
}

#[test]
fn retention_drops_aborted_transactions_below_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (seen, file) = aborted_workload(dir.path());
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    // Past the first ten rounds (each 3 + 1 + 2 + 1 + 1 = 8 offsets).
    store.delete_before("t", 0, 80).unwrap();
    store.close().unwrap();
    let entries = (std::fs::read(&file).unwrap().len() - 8) / 38;
    assert_eq!(entries, 10, "the aborts of the first ten rounds are gone");
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    let later: Vec<String> = seen
        .iter()
        .filter(|s| s[1..].split('-').next().unwrap().parse::<u32>().unwrap() >= 10)
        .cloned()
        .collect();
    assert_eq!(committed(&store, "t", 0), later);
}

/// Compaction next to transactions (Kafka's cleaner rules): nothing at or past the LSO is
/// cleaned; an aborted record neither survives nor supersedes the committed record of its key;
/// markers stay (no read returns them) and read_committed readers see the same before and after
/// a pass, and after a reopen.
#[test]
fn compaction_removes_aborted_records_and_stops_at_the_last_stable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        compaction: duolog::CompactionOptions {
            enabled: false,
            ..duolog::CompactionOptions::default()
        },
        ..opts()
    };
    let topic = TopicConfig {
        cleanup_policy: duolog::CleanupPolicy::Compact,
        segment_ms: Some(Duration::from_millis(1)),
        ..TopicConfig::default()
    };
    let keyed = |k: &str, v: &str| Message::new(v.to_string()).with_key(k.to_string());
    let store = CommitLogStore::open(dir.path(), opts.clone()).unwrap();
    store.create_topic("t", topic).unwrap();
    let (p, q, r) = (producer(&store), producer(&store), producer(&store));
    store
        .append_transactional("t", 0, p, 0, &[keyed("k1", "committed-1")])
        .unwrap();
    store.write_marker("t", 0, p, TxnMarker::Commit, 0).unwrap();
    store
        .append_transactional(
            "t",
            0,
            q,
            0,
            &[keyed("k1", "aborted-1"), keyed("k2", "aborted-2")],
        )
        .unwrap();
    store.write_marker("t", 0, q, TxnMarker::Abort, 0).unwrap();
    store.append("t", 0, &[keyed("k3", "plain-3")]).unwrap();
    // Open: the LSO stays at its first offset (6).
    store
        .append_transactional("t", 0, r, 0, &[keyed("k1", "open-1")])
        .unwrap();
    store.append("t", 0, &[keyed("k3", "plain-3b")]).unwrap();
    assert_eq!(store.bounds("t", 0).unwrap().last_stable, 6);
    let before = committed(&store, "t", 0);
    assert_eq!(before, ["committed-1", "plain-3"]);
    std::thread::sleep(Duration::from_millis(5));
    let report = store.compact(Some("t")).unwrap();
    assert_eq!(
        report.records_removed, 2,
        "the two aborted records: {report:?}"
    );
    assert_eq!(committed(&store, "t", 0), before);
    let all: Vec<String> = store
        .read("t", 0, 0, ReadLimits::default())
        .unwrap()
        .iter()
        .map(|r| String::from_utf8(r.body().to_vec()).unwrap())
        .collect();
    assert_eq!(
        all,
        ["committed-1", "plain-3", "open-1", "plain-3b"],
        "nothing at or past the LSO cleaned, no marker returned"
    );
    assert!(store.verify().unwrap().is_ok());
    // Once r commits, the next pass may clean up to the end: k1 and k3 keep their latest.
    store.write_marker("t", 0, r, TxnMarker::Commit, 0).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    store.compact(Some("t")).unwrap();
    assert_eq!(committed(&store, "t", 0), ["open-1", "plain-3b"]);
    store.close().unwrap();
    drop(store);
    let store = CommitLogStore::open(dir.path(), opts).unwrap();
    assert_eq!(committed(&store, "t", 0), ["open-1", "plain-3b"]);
    let b = store.bounds("t", 0).unwrap();
    assert_eq!((b.end, b.last_stable), (9, 9));
    assert!(store.verify().unwrap().is_ok());
}

/// Review-e (d): a checkpoint rewrote `producer-snapshot` every time, idle or not. Now one
/// that finds the log where the last snapshot left it writes nothing.
#[test]
fn an_idle_store_does_not_rewrite_its_producer_snapshot() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(&store);
    store
        .append_transactional("t", 0, p, 0, &batch("x", 2))
        .unwrap();
    store.sync().unwrap();
    // Checkpoints every 100 ms: the first after the sync writes the state.
    std::thread::sleep(Duration::from_millis(400));
    let file = dir.path().join("producer-snapshot");
    let inode = std::fs::metadata(&file).unwrap().ino();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        std::fs::metadata(&file).unwrap().ino(),
        inode,
        "rewritten while idle"
    );
    // A change is still written.
    store.write_marker("t", 0, p, TxnMarker::Commit, 0).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_ne!(std::fs::metadata(&file).unwrap().ino(), inode);
    store.close().unwrap();
    let store = CommitLogStore::open(dir.path(), opts()).unwrap();
    assert_eq!(
        store.producer_state("t", 0).unwrap()[0].open_transaction,
        None
    );
}

/// A power cut tore an abort marker (its `write_marker` never returned: the sync was cut
/// short): recovery ends the log before it, the transaction is open again (the LSO holds at its
/// first offset, its records invisible to read_committed) with no aborted-index entry, and the
/// coordinator's retry writes the marker at the same offset.
#[test]
fn a_torn_marker_leaves_its_transaction_open_until_the_marker_is_written_again() {
    for cut in [1usize, 30, 60] {
        let dir = tempfile::tempdir().unwrap();
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        let p = producer(&store);
        let q = producer(&store);
        store
            .append_transactional("t", 0, q, 0, &batch("q", 1))
            .unwrap();
        store.write_marker("t", 0, q, TxnMarker::Abort, 0).unwrap();
        store.append("t", 0, &batch("plain", 1)).unwrap();
        store
            .append_transactional("t", 0, p, 0, &batch("p", 2))
            .unwrap();
        assert_eq!(
            store.write_marker("t", 0, p, TxnMarker::Abort, 4).unwrap(),
            Some(5)
        );
        let unit = store.consume_queue_unit("t", 0, 5).unwrap().unwrap();
        let files = store.commitlog_files();
        store.abandon();
        drop(store);
        // Keep only the marker's first `cut` bytes.
        let size = opts().commitlog.file_size;
        let file = &files[(unit.position / size) as usize];
        let mut bytes = std::fs::read(file).unwrap();
        bytes[(unit.position % size) as usize + cut..].fill(0);
        std::fs::write(file, bytes).unwrap();

        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        let b = store.bounds("t", 0).unwrap();
        assert_eq!(
            (b.end, b.last_stable),
            (5, 3),
            "cut {cut}: p's transaction is open"
        );
        assert_eq!(committed(&store, "t", 0), ["plain-0"], "cut {cut}");
        let state = store.producer_state("t", 0).unwrap();
        let sp = state.iter().find(|e| e.producer == p).unwrap();
        assert_eq!(sp.open_transaction, Some(3));
        assert_eq!(
            store.write_marker("t", 0, p, TxnMarker::Abort, 4).unwrap(),
            Some(5),
            "cut {cut}"
        );
        store.append("t", 0, &batch("after", 1)).unwrap();
        assert_eq!(committed(&store, "t", 0), ["plain-0", "after-0"]);
        assert!(store.verify().unwrap().is_ok());
        store.close().unwrap();
        let index = dir.path().join("consumequeue/t/0/aborted.txnindex");
        assert_eq!(
            std::fs::read(&index).unwrap().len(),
            8 + 2 * 38,
            "cut {cut}"
        );
        let store = CommitLogStore::open(dir.path(), opts()).unwrap();
        assert_eq!(committed(&store, "t", 0), ["plain-0", "after-0"]);
    }
}

/// One entry of the model of a partition.
#[derive(Clone, Debug)]
enum Model {
    Plain(String),
    Txn(i64, String),
    Marker(i64, bool),
}

/// What read_committed shows of a partition whose log is `entries`: records below the first
/// offset of the oldest open transaction, without markers and aborted records.
fn model_committed(entries: &[Model]) -> Vec<String> {
    let mut open: std::collections::HashMap<i64, usize> = Default::default();
    let mut decided: Vec<Option<bool>> = vec![None; entries.len()];
    let mut members: std::collections::HashMap<i64, Vec<usize>> = Default::default();
    for (i, e) in entries.iter().enumerate() {
        match e {
            Model::Plain(_) => decided[i] = Some(true),
            Model::Txn(p, _) => {
                open.entry(*p).or_insert(i);
                members.entry(*p).or_default().push(i);
            }
            Model::Marker(p, commit) => {
                open.remove(p);
                for j in members.remove(p).unwrap_or_default() {
                    decided[j] = Some(*commit);
                }
            }
        }
    }
    let lso = open.values().copied().min().unwrap_or(entries.len());
    entries[..lso]
        .iter()
        .zip(&decided)
        .filter_map(|(e, d)| match (e, d) {
            (Model::Plain(b) | Model::Txn(_, b), Some(true)) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// Random transactional workloads over two partitions and three producers, then a power cut
/// (every crash mode of the simulated disk): after recovery each partition holds a prefix of
/// what was written that includes everything synced (a marker syncs the log up to it), and
/// read_committed shows exactly the model's committed view of that prefix — no aborted record,
/// nothing at or past an open transaction. Aborting the transactions left open then releases
/// the LSO.
#[test]
fn random_transactions_survive_power_cuts_with_exactly_the_committed_view() {
    use duolog::io::{CrashMode, SimFs};
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for (m, &mode) in CrashMode::ALL.iter().enumerate() {
        for seed in 0..4u64 {
            let sim = SimFs::new();
            let sim_opts = |sim: &SimFs| StoreOptions {
                fs: std::sync::Arc::new(sim.clone()),
                ..opts()
            };
            let store = duolog::open("/s", sim_opts(&sim)).unwrap();
            store
                .create_topic("t", TopicConfig::with_partitions(2))
                .unwrap();
            let producers: Vec<ProducerId> = (0..3).map(|_| producer(store.as_ref())).collect();
            let mut model: [Vec<Model>; 2] = [Vec::new(), Vec::new()];
            let mut synced = [0usize; 2];
            let mut seqs = [[0i32; 2]; 3];
            let mut open = [[false; 2]; 3];
            for step in 0..60 {
                let part = next(2) as usize;
                match next(10) {
                    0..=2 => {
                        let body = format!("plain-{step}");
                        store
                            .append("t", part as u32, &[Message::new(body.clone())])
                            .unwrap();
                        model[part].push(Model::Plain(body));
                    }
                    3..=6 => {
                        let k = next(3) as usize;
                        let n = 1 + next(3) as usize;
                        let msgs = batch(&format!("tx{step}-p{k}"), n);
                        store
                            .append_transactional(
                                "t",
                                part as u32,
                                producers[k],
                                seqs[k][part],
                                &msgs,
                            )
                            .unwrap();
                        seqs[k][part] += n as i32;
                        open[k][part] = true;
                        for i in 0..n {
                            model[part].push(Model::Txn(k as i64, format!("tx{step}-p{k}-{i}")));
                        }
                    }
                    7..=8 => {
                        let k = next(3) as usize;
                        let commit = next(2) == 0;
                        let marker = if commit {
                            TxnMarker::Commit
                        } else {
                            TxnMarker::Abort
                        };
                        let wrote = store
                            .write_marker("t", part as u32, producers[k], marker, 0)
                            .unwrap();
                        assert_eq!(wrote.is_some(), open[k][part]);
                        if open[k][part] {
                            model[part].push(Model::Marker(k as i64, commit));
                            open[k][part] = false;
                            synced = [model[0].len(), model[1].len()];
                        }
                    }
                    _ => {
                        store.sync().unwrap();
                        synced = [model[0].len(), model[1].len()];
                    }
                }
            }
            store.abandon();
            drop(store);
            let sim = sim.crash(mode, seed * 10 + m as u64);
            let store = duolog::open("/s", sim_opts(&sim)).unwrap();
            for part in 0..2usize {
                let ctx = format!("{mode:?} seed {seed} partition {part}");
                let end = store.bounds("t", part as u32).unwrap().end as usize;
                assert!(
                    end >= synced[part] && end <= model[part].len(),
                    "{ctx}: end {end}"
                );
                let prefix = &model[part][..end];
                assert_eq!(
                    committed(store.as_ref(), "t", part as u32),
                    model_committed(prefix),
                    "{ctx}"
                );
                // The coordinator aborts what was left open.
                let mut now: Vec<Model> = prefix.to_vec();
                for e in store.producer_state("t", part as u32).unwrap() {
                    if e.open_transaction.is_some() {
                        let k = producers
                            .iter()
                            .position(|p| p.id == e.producer.id)
                            .unwrap();
                        assert!(
                            store
                                .write_marker("t", part as u32, e.producer, TxnMarker::Abort, 1)
                                .unwrap()
                                .is_some()
                        );
                        now.push(Model::Marker(k as i64, false));
                    }
                }
                let b = store.bounds("t", part as u32).unwrap();
                assert_eq!(b.last_stable, b.end, "{ctx}");
                assert_eq!(
                    committed(store.as_ref(), "t", part as u32),
                    model_committed(&now),
                    "{ctx}"
                );
            }
            assert!(store.verify().unwrap().is_ok());
        }
    }
}

/// Found by crash_sim against the first version of the idle-snapshot fix: a power cut took
/// every record, so the producer snapshot on disk (written before the first idempotent batch)
/// names a position past the recovered end. The first checkpoint after the open must replace
/// it, even though the log has not moved since: otherwise, once later records pass that
/// position, a recovery replays from the middle of them and forgets their producer.
#[test]
fn a_snapshot_past_the_recovered_end_is_replaced_at_open() {
    use duolog::io::{CrashMode, SimFs};
    let sim = SimFs::new();
    let sim_opts = |sim: &SimFs| StoreOptions {
        fs: std::sync::Arc::new(sim.clone()),
        ..opts()
    };
    let store = duolog::open("/s", sim_opts(&sim)).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = producer(store.as_ref());
    store.sync().unwrap();
    store.append("t", 0, &batch("plain", 1)).unwrap();
    store
        .append_idempotent("t", 0, p, 0, &batch("x", 1))
        .unwrap();
    store.abandon();
    drop(store);
    let sim = sim.crash(CrashMode::DropUnsynced, 0);
    let store = duolog::open("/s", sim_opts(&sim)).unwrap();
    assert_eq!(store.bounds("t", 0).unwrap().end, 0, "the crash took both");
    let r = store
        .append_idempotent("t", 0, p, 0, &batch("longer-than-the-plain-record", 3))
        .unwrap();
    store.sync().unwrap();
    store.abandon();
    drop(store);
    let sim = sim.crash(CrashMode::DropUnsynced, 1);
    let store = duolog::open("/s", sim_opts(&sim)).unwrap();
    assert_eq!(
        store
            .append_idempotent("t", 0, p, 0, &batch("longer-than-the-plain-record", 3))
            .unwrap(),
        r,
        "the retry is a duplicate"
    );
}
