//! Review of branch t2 (transaction layer: batched commit, transactional offsets order,
//! KIP-360 resync, CommitLog sys flag 0x1000): failing tests for the defects found.

mod common;
mod txn_probe;

use std::sync::Arc;
use std::time::Duration;

use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
use duolog::{
    CommitLogOptions, CommitLogStore, EngineKind, FlushPolicy, IsolationLevel, LogStore, Message,
    ProducerId, ReadLimits, StoreOptions, TopicConfig,
};

fn batch(tag: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::new(format!("{tag}-{i}"))).collect()
}

/// Bodies a `read_committed` reader sees in a partition.
fn committed(store: &dyn LogStore, topic: &str, p: u32) -> Vec<String> {
    let b = store.bounds(topic, p).unwrap();
    let mut at = b.start;
    let mut out = Vec::new();
    while at < b.last_stable {
        let limits = ReadLimits::messages(100).with_isolation(IsolationLevel::ReadCommitted);
        let f = store.fetch(topic, p, at, limits).unwrap();
        assert!(f.next_offset > at, "fetch at {at} stalled");
        out.extend(
            f.records
                .iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
        at = f.next_offset;
    }
    out
}

fn old_store_options() -> StoreOptions {
    StoreOptions {
        flush: FlushPolicy::Sync,
        commitlog: CommitLogOptions {
            // No checkpoint (no producer snapshot) before the crash: recovery reads the log.
            checkpoint_interval: Duration::from_secs(3600),
            ..common::small_options(EngineKind::CommitLog).commitlog
        },
        ..common::small_options(EngineKind::CommitLog)
    }
}

/// Rewrites the store's catalog (`meta`) as the version 3 a build before the producer flag
/// wrote: the same fields without `producer flag since` (bytes 24..32), CRC re-sealed.
fn downgrade_catalog_to_version_3(dir: &std::path::Path) {
    let path = dir.join("meta");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        bytes[4..6],
        4u16.to_be_bytes(),
        "this build writes version 4"
    );
    let mut v3 = bytes[..bytes.len() - 4].to_vec();
    v3.drain(24..32);
    v3[4..6].copy_from_slice(&3u16.to_be_bytes());
    let crc = crc32c::crc32c(&v3);
    v3.extend_from_slice(&crc.to_be_bytes());
    std::fs::write(&path, v3).unwrap();
}

/// Turns the records `offsets` of `t`/0 into what the engine wrote before branch t2 (main at
/// 550a429): the same bytes, without SYSFLAG bit 0x1000, the whole-record CRC re-sealed; and
/// the catalog into that build's (version 3: it had handed out producer ids).
fn strip_producer_flag(store: &CommitLogStore, opts: &StoreOptions, offsets: std::ops::Range<u64>) {
    let units: Vec<_> = offsets
        .map(|o| store.consume_queue_unit("t", 0, o).unwrap().unwrap())
        .collect();
    let files = store.commitlog_files();
    let dir = store.dir().to_owned();
    store.abandon();
    downgrade_catalog_to_version_3(&dir);
    let size = opts.commitlog.file_size;
    for u in &units {
        let file = &files[(u.position / size) as usize];
        let mut bytes = std::fs::read(file).unwrap();
        let at = (u.position % size) as usize;
        let rec = &mut bytes[at..at + u.size as usize];
        let flag = i32::from_be_bytes(rec[36..40].try_into().unwrap());
        assert_ne!(flag & 0x1000, 0, "t2 writes the bit");
        rec[36..40].copy_from_slice(&(flag & !0x1000).to_be_bytes());
        duolog::commitlog::record::fill_record_crc(rec);
        std::fs::write(file, bytes).unwrap();
    }
}

/// A CommitLog store written by the engine before t2 (idempotent/transactional records carry
/// `__PID`/`__EPOCH`/`__SEQ`/`__LAST` but no sys flag 0x1000) and crashed with a transaction
/// open is opened by t2: recovery and the producer replay only take flagged records as batches,
/// so the open transaction is unknown to the partition, the coordinator's abort marker writes
/// nothing ("no transaction open"), and the aborted records are shown to `read_committed`
/// readers forever. The contract asked to "keep reading old stores".
#[test]
fn commitlog_pre_flag_transaction_open_at_crash_stays_invisible_after_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let opts = old_store_options();
    {
        let store = Arc::new(CommitLogStore::open(dir.path(), opts.clone()).unwrap());
        store.create_topic("t", TopicConfig::default()).unwrap();
        let shared: Arc<dyn LogStore> = store.clone();
        let txns = TransactionCoordinator::open(shared, TxnCoordinatorConfig::default()).unwrap();
        let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
        p.begin().unwrap();
        p.send("t", 0, &batch("never-committed", 2)).unwrap();
        store.sync().unwrap();
        txns.close().unwrap();
        // The process dies with the transaction open.
        strip_producer_flag(&store, &opts, 0..2);
        drop(p);
    }
    let store: Arc<dyn LogStore> =
        Arc::new(CommitLogStore::open(dir.path(), opts.clone()).unwrap());
    // Before the coordinator runs, the open transaction should hold the LSO at 0.
    let lso_before = store.bounds("t", 0).unwrap().last_stable;
    let _txns =
        TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default()).unwrap();
    assert_eq!(
        (lso_before, committed(store.as_ref(), "t", 0)),
        (0, Vec::<String>::new()),
        "the open transaction did not hold the LSO, and its records, aborted at recovery, are \
         visible to read_committed"
    );
}

/// The same upgrade for a plain idempotent producer: a batch written before t2 (no flag),
/// crash, reopen with t2, the producer retries the batch (its acknowledgement was lost): it
/// must come back as a duplicate with its original offsets; t2 has forgotten the producer and
/// writes it a second time.
#[test]
fn commitlog_pre_flag_idempotent_batch_is_still_deduplicated_after_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let opts = old_store_options();
    let p;
    let first;
    {
        let store = CommitLogStore::open(dir.path(), opts.clone()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        p = ProducerId {
            id: store.allocate_producer_id().unwrap(),
            epoch: 0,
        };
        first = store
            .append_idempotent("t", 0, p, 0, &batch("once", 3))
            .unwrap();
        store.sync().unwrap();
        strip_producer_flag(&store, &opts, 0..3);
    }
    let store = CommitLogStore::open(dir.path(), opts).unwrap();
    let retry = store.append_idempotent("t", 0, p, 0, &batch("once", 3));
    assert_eq!(
        retry.ok(),
        Some(first),
        "a retry of a batch written before the upgrade"
    );
    assert_eq!(store.bounds("t", 0).unwrap().end, 3, "written twice");
}

/// `write_markers` spawns one thread per enrolled partition at every commit or abort: a
/// transaction over many partitions (or many producers committing at once) makes threads
/// without bound. The markers should be written by a bounded number of threads.
#[test]
fn a_commit_over_many_partitions_uses_a_bounded_number_of_marker_threads() {
    const PARTITIONS: u32 = 64;
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn LogStore> = Arc::from(common::open(
        dir.path(),
        &common::small_options(EngineKind::Segmented),
    ));
    inner
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    let probe = txn_probe::probe(inner);
    let store: Arc<dyn LogStore> = probe.clone();
    let txns = TransactionCoordinator::open(store, TxnCoordinatorConfig::default()).unwrap();
    let p = txns.producer("app", TxnProducerConfig::default()).unwrap();
    let batches: Vec<Vec<Message>> = (0..PARTITIONS)
        .map(|i| batch(&format!("m{i}"), 1))
        .collect();
    let all: Vec<(&str, u32, &[Message])> = (0..PARTITIONS)
        .map(|i| ("t", i, batches[i as usize].as_slice()))
        .collect();
    p.begin().unwrap();
    p.send_all(&all).unwrap();
    probe.reset();
    // Markers wait (up to 1 s each) for as many as can be in flight at once.
    probe.rendezvous_markers(PARTITIONS as usize);
    p.commit().unwrap();
    let c = probe.counts();
    assert_eq!(c.markers, PARTITIONS as usize);
    assert!(
        c.markers_at_once <= 16,
        "{} marker threads at once for one commit: {c:?}",
        c.markers_at_once
    );
}

/// Kafka's reason for `recordOffset` ("without preserving information of the commit record
/// offset, compaction of the __consumer_offsets topic itself may result in the wrong offset
/// commit being materialized") bites here: a transaction's offset record (its own key, per
/// partition) outlives, through compaction, the newer plain record that overrode it (the
/// group's key, superseded by later plain commits, which only *carry* the partition). On the
/// next load the old transactional offset is applied and the carried value never overrides it:
/// the committed offset goes backwards (7 instead of 9) after compaction and a reopen, so an
/// exactly-once consumer reprocesses and duplicates output. t2's docs claim the later write
/// wins "in the running process as after a reload".
#[test]
fn a_plain_commit_over_a_transactions_offset_survives_compaction_and_reload() {
    use duolog::consumer::{GroupCoordinator, OFFSETS_TOPIC};
    common::for_each_engine(|engine, dir| {
        let opts = common::small_options(engine);
        let in0 = |groups: &GroupCoordinator| {
            groups
                .committed_offsets("g")
                .get("in")
                .and_then(|p| p.get(&0))
                .copied()
        };
        {
            let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &opts));
            store.create_topic("in", TopicConfig::default()).unwrap();
            store.create_topic("out", TopicConfig::default()).unwrap();
            store
                .create_topic("wide", TopicConfig::with_partitions(1000))
                .unwrap();
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let config = TxnCoordinatorConfig {
                groups: Some(groups.clone()),
                ..TxnCoordinatorConfig::default()
            };
            let txns = TransactionCoordinator::open(Arc::clone(&store), config).unwrap();
            let p = txns.producer("etl", TxnProducerConfig::default()).unwrap();
            p.begin().unwrap();
            p.send("out", 0, &[Message::new("r")]).unwrap();
            p.send_offsets("g", &[("in", 0, 7)]).unwrap();
            p.commit().unwrap();
            assert_eq!(in0(&groups), Some(7));
            // A later plain commit of the same partition: the newest write.
            groups.commit_offsets("g", &[("in", 0, 9)]).unwrap();
            assert_eq!(in0(&groups), Some(9));
            // More plain commits of other partitions (the group's whole table each time,
            // `in`/0 carried), enough to roll the offsets topic's 64 KiB segments.
            for i in 1..=40u64 {
                let wide: Vec<(&str, u32, u64)> = (0..1000).map(|p| ("wide", p, i)).collect();
                groups.commit_offsets("g", &wide).unwrap();
            }
            assert_eq!(in0(&groups), Some(9));
            store.compact(Some(OFFSETS_TOPIC)).unwrap();
            txns.close().unwrap();
            drop(p);
            drop(txns);
            drop(groups);
            store.close().unwrap();
        }
        let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &opts));
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let config = TxnCoordinatorConfig {
            groups: Some(groups.clone()),
            ..TxnCoordinatorConfig::default()
        };
        let _txns = TransactionCoordinator::open(Arc::clone(&store), config).unwrap();
        assert_eq!(
            in0(&groups),
            Some(9),
            "{engine}: the committed offset went back to the older transactional one"
        );
    });
}

/// A commit whose markers are all durable but whose (unsynced) `CompleteCommit` write fails
/// (disk full, say) returns the error before the group coordinator is told: the committed
/// transaction's offsets stay pending in memory. The transaction IS committed (its output is
/// visible to `read_committed`), and a retry of `commit` finds `CompleteCommit` in memory and
/// returns `Ok` without applying them either: the running process reports the old offset, so
/// a consumer (re)starting from it reprocesses and duplicates the committed output.
/// (In `Inner::end` since before t2; t2 left it while reworking the same lines.)
#[test]
fn a_committed_transactions_offsets_apply_even_if_its_complete_record_fails() {
    use duolog::consumer::GroupCoordinator;
    common::for_each_engine(|engine, dir| {
        let inner: Arc<dyn LogStore> = Arc::from(common::open(dir, &common::small_options(engine)));
        inner.create_topic("in", TopicConfig::default()).unwrap();
        inner.create_topic("out", TopicConfig::default()).unwrap();
        let probe = txn_probe::probe(inner);
        let store: Arc<dyn LogStore> = probe.clone();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let config = TxnCoordinatorConfig {
            groups: Some(groups.clone()),
            ..TxnCoordinatorConfig::default()
        };
        let txns = TransactionCoordinator::open(Arc::clone(&store), config).unwrap();
        let p = txns.producer("etl", TxnProducerConfig::default()).unwrap();
        p.begin().unwrap();
        p.send("out", 0, &[Message::new("r")]).unwrap();
        p.send_offsets("g", &[("in", 0, 7)]).unwrap();
        // PrepareCommit goes through, CompleteCommit fails.
        probe.fail_txn_log_write_after(1);
        let first = p.commit();
        assert!(first.is_err(), "{first:?}");
        assert_eq!(committed(store.as_ref(), "out", 0), ["r"], "committed");
        let _ = p.commit();
        assert_eq!(
            groups
                .committed_offsets("g")
                .get("in")
                .and_then(|t| t.get(&0))
                .copied(),
            Some(7),
            "{engine}: the committed transaction's offset is not applied"
        );
    });
}

/// The upgrade point is precise on both sides: a store whose catalog predates the producer
/// flag (version 3) is opened once (the catalog becomes version 4 with the recovered end as
/// the point), then plain records whose own properties are named `__PID`/`__EPOCH`/`__SEQ`
/// (as a build before the names were reserved accepted; simulated by renaming same-length
/// names and re-sealing the CRC) are written past it and the process dies. They carry no flag,
/// so the next recovery keeps them as plain records (read by the old rule, they would be an
/// idempotent batch without its last record and cut).
#[test]
fn commitlog_unflagged_records_past_the_upgrade_point_are_plain() {
    let dir = tempfile::tempdir().unwrap();
    let opts = old_store_options();
    {
        let store = CommitLogStore::open(dir.path(), opts.clone()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        store.append("t", 0, &batch("before", 2)).unwrap();
        store.close().unwrap();
    }
    downgrade_catalog_to_version_3(dir.path());
    let store = CommitLogStore::open(dir.path(), opts.clone()).unwrap();
    let meta = std::fs::read(dir.path().join("meta")).unwrap();
    assert_eq!(
        meta[4..6],
        4u16.to_be_bytes(),
        "the open rewrote the catalog"
    );
    let m = Message::new("after")
        .with_property("__PIX", "1")
        .with_property("__EPOCX", "0")
        .with_property("__SEX", "4");
    store.append("t", 0, &[m.clone(), m]).unwrap();
    store.sync().unwrap();
    let units: Vec<_> = (2..4)
        .map(|o| store.consume_queue_unit("t", 0, o).unwrap().unwrap())
        .collect();
    let files = store.commitlog_files();
    store.abandon();
    drop(store);
    let size = opts.commitlog.file_size;
    for u in &units {
        let file = &files[(u.position / size) as usize];
        let mut bytes = std::fs::read(file).unwrap();
        let at = (u.position % size) as usize;
        let rec = &mut bytes[at..at + u.size as usize];
        for (from, to) in [
            (&b"__PIX"[..], &b"__PID"[..]),
            (b"__EPOCX", b"__EPOCH"),
            (b"__SEX", b"__SEQ"),
        ] {
            let i = rec.windows(from.len()).position(|w| w == from).unwrap();
            rec[i..i + to.len()].copy_from_slice(to);
        }
        duolog::commitlog::record::fill_record_crc(rec);
        std::fs::write(file, bytes).unwrap();
    }
    let store = CommitLogStore::open(dir.path(), opts).unwrap();
    assert_eq!(
        store.bounds("t", 0).unwrap().end,
        4,
        "plain records written past the upgrade point were taken for a producer's batch"
    );
}
