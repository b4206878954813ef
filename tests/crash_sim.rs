//! Crash safety on the simulated disk, both engines: random workloads with crashes of every kind
//! (property tests against a model), and an exhaustive sweep that cuts the power after each I/O
//! operation of a small workload. Invariants after every reopen:
//! a. every record acknowledged as durable is there, same bytes, same offset;
//! b. each partition is a prefix of what was appended: no gaps, reordering or duplicates;
//! c. nothing returned fails its checksum or was never appended;
//! d. derived files agree with the log (`verify`);
//! e. recovery is idempotent (crash again right away: same state);
//!    (retention runs after every reopen, so wrongly recovered timestamps delete data and fail a);
//! f. appends resume at the recovered end: acknowledged offsets are never reused;
//! g. tombstones come back as tombstones (no value), values as values;
//! h. a second topic deleted and created again between crashes holds only records of its
//!    latest generation (a deleted topic's records never reach its namesake), dense from 0;
//! i. a consumer group's committed offsets (the consumer layer's `__consumer_offsets`) are
//!    exactly those of its last acknowledged commit (a commit is durable when it returns), every
//!    partition of a commit together;
//! j. idempotent batches are all or nothing; after recovery the producer's batches the crash
//!    took are retried in order and written once each, and a retry of the last one that
//!    survived returns its original offsets and writes nothing (a batch that was not durable
//!    and lay wholly below a durable start offset may instead be forgotten and written anew:
//!    see `after_recovery`); producer ids handed out after a crash are above every id handed
//!    out before it;
//! k. transactions (topic `tx`, on engines that support them): a `read_committed` reader sees
//!    exactly the plain records and those of transactions whose commit marker is there, in
//!    order, up to the last stable offset (the first offset of the oldest transaction whose
//!    marker the crash took or that was never ended, else the end); never a record of an
//!    aborted transaction; a marker acknowledged is durable with everything before it; a
//!    transaction whose marker the crash took stays open (later markers end it); no
//!    transactional batch is torn; markers are never returned, by either isolation level.
//!
//! `DUOLOG_CRASH_CASES` raises the number of property-test cases (default 24 per engine) and
//! `DUOLOG_CRASH_SEEDS` the damage seeds per crash point of the sweep (default 2).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use duolog::consumer::GroupCoordinator;
use duolog::io::{CrashMode, Fault, SimFs};
use duolog::{
    EngineKind, FlushPolicy, IsolationLevel, LogStore, Message, ProducerId, ReadLimits,
    StoreOptions, TopicConfig, TxnMarker,
};
use proptest::prelude::*;

const PARTITIONS: u32 = 3;

/// Every store starts in a fresh nested directory: each directory the engine creates, up to
/// the store root, is pending in its parent until that parent is synced.
const STORE: &str = "/data/nested/store";

fn options(engine: EngineKind, sim: &SimFs, sync: bool) -> StoreOptions {
    StoreOptions {
        fs: Arc::new(sim.clone()),
        flush: if sync {
            FlushPolicy::Sync
        } else {
            FlushPolicy::Async {
                interval: Duration::from_secs(3600),
            }
        },
        ..common::small_options(engine)
    }
}

/// An idempotent batch the test sent: (first sequence, base offset, values).
type SentBatch = (i32, usize, Vec<Vec<u8>>);

/// What the test knows: everything appended per partition, how much of it is durable, and the
/// start offsets set by delete_before.
#[derive(Clone, Debug, Default)]
struct Model {
    /// Per partition, each record's value (`None`: a tombstone).
    appended: Vec<Vec<Option<Vec<u8>>>>,
    durable: Vec<usize>,
    /// `durable` as it was when the last crash struck (before recovery shrank the model).
    durable_at_crash: Vec<usize>,
    start: Vec<u64>,
    /// A start offset a failed `delete_before` may or may not have made durable.
    maybe_start: Vec<Option<u64>>,
    /// Generation of topic `x` (deleted and created again by `Op::Churn`), 0 before the first.
    churn: u32,
    /// Group `g`'s last acknowledged commit (every partition of `t`), if it made one.
    committed: Option<Vec<u64>>,
    /// Per partition, the idempotent batches sent: (first sequence, base offset, values).
    idem: Vec<Vec<SentBatch>>,
    /// The highest producer id handed out so far.
    highest_pid: i64,
    /// Whether the engine supports transactions (topic `tx` exists then).
    tx_supported: bool,
    /// Topic `tx` (one partition), each offset's entry.
    tx: Vec<TxEntry>,
    /// Entries of `tx` acknowledged as durable.
    tx_durable: usize,
    /// The transactional producer's batches still in the log: (first sequence, base, count).
    tx_batches: Vec<(i32, usize, usize)>,
    /// Transactions begun so far (their ids index nothing else: a counter).
    tx_count: usize,
}

/// One offset of topic `tx`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TxEntry {
    /// A record, of transaction `txn` or plain.
    Data { value: Vec<u8>, txn: Option<usize> },
    /// The marker ending transaction `txn`.
    Marker { txn: usize, commit: bool },
}

/// The transactional producer (the case's second id).
const TX_PRODUCER: ProducerId = ProducerId { id: 1, epoch: 0 };

impl Model {
    /// Transaction `txn`'s marker in the log: `Some(commit)`, or `None` while it is open.
    fn tx_outcome(&self, txn: usize) -> Option<bool> {
        self.tx.iter().find_map(|e| match e {
            TxEntry::Marker { txn: t, commit } if *t == txn => Some(*commit),
            _ => None,
        })
    }

    /// The open transaction (records in the log, no marker), if any.
    fn tx_open(&self) -> Option<usize> {
        self.tx.iter().find_map(|e| match e {
            TxEntry::Data { txn: Some(t), .. } if self.tx_outcome(*t).is_none() => Some(*t),
            _ => None,
        })
    }

    /// The next sequence of the transactional producer.
    fn tx_next_seq(&self) -> i32 {
        self.tx_batches
            .last()
            .map_or(0, |&(seq, _, n)| seq + n as i32)
    }
}

impl Model {
    fn new() -> Model {
        Model {
            appended: vec![Vec::new(); PARTITIONS as usize],
            durable: vec![0; PARTITIONS as usize],
            durable_at_crash: vec![0; PARTITIONS as usize],
            start: vec![0; PARTITIONS as usize],
            maybe_start: vec![None; PARTITIONS as usize],
            churn: 0,
            committed: None,
            idem: vec![Vec::new(); PARTITIONS as usize],
            highest_pid: -1,
            tx_supported: false,
            tx: Vec::new(),
            tx_durable: 0,
            tx_batches: Vec::new(),
            tx_count: 0,
        }
    }
}

fn body(p: u32, n: usize, size: usize) -> Vec<u8> {
    let mut b = format!("p{p}-n{n}-").into_bytes();
    b.resize(size.max(b.len()), b'a' + (n % 26) as u8);
    b
}

/// Checks a–d against the model and returns each partition's recovered end.
fn check(store: &dyn LogStore, model: &Model, ctx: &str) -> Vec<u64> {
    let mut ends = Vec::new();
    for p in 0..PARTITIONS {
        let b = store
            .bounds("t", p)
            .unwrap_or_else(|e| panic!("{ctx}: bounds: {e}"));
        let appended = &model.appended[p as usize];
        assert!(
            b.end as usize >= model.durable[p as usize],
            "{ctx}: partition {p} lost durable records: end {} < {}",
            b.end,
            model.durable[p as usize]
        );
        assert!(
            b.end as usize <= appended.len(),
            "{ctx}: partition {p} has records never appended: end {} > {}",
            b.end,
            appended.len()
        );
        let expected = model.start[p as usize].min(b.end);
        let maybe = model.maybe_start[p as usize].map(|s| s.min(b.end));
        assert!(
            b.start == expected || Some(b.start) == maybe,
            "{ctx}: partition {p} start {} (expected {expected} or {maybe:?})",
            b.start
        );
        let mut at = b.start;
        while at < b.end {
            let recs = store
                .read("t", p, at, ReadLimits::messages(500))
                .unwrap_or_else(|e| panic!("{ctx}: read {p}/{at}: {e}"));
            assert!(!recs.is_empty(), "{ctx}: nothing at {p}/{at}");
            for r in &recs {
                assert_eq!(r.offset(), at, "{ctx}: offsets dense");
                assert_eq!(
                    r.value(),
                    appended[at as usize].as_deref(),
                    "{ctx}: {p}/{at} bytes"
                );
                at += 1;
            }
        }
        ends.push(b.end);
    }
    if model.tx_supported {
        ends.push(check_txn(store, model, ctx));
    }
    check_churned(store, model, ctx);
    let report = store
        .verify()
        .unwrap_or_else(|e| panic!("{ctx}: verify: {e}"));
    assert!(report.is_ok(), "{ctx}: {:?}", report.problems);
    ends
}

/// Markers checked by `check_txn` after crashes, over all cases (the summary prints it, so a
/// run that never exercised transactions shows).
static TX_MARKERS_CHECKED: AtomicU64 = AtomicU64::new(0);

/// k: topic `tx` against the model; returns its recovered end.
fn check_txn(store: &dyn LogStore, model: &Model, ctx: &str) -> u64 {
    let b = store
        .bounds("tx", 0)
        .unwrap_or_else(|e| panic!("{ctx}: bounds of tx: {e}"));
    let end = b.end as usize;
    assert!(
        end >= model.tx_durable && end <= model.tx.len(),
        "{ctx}: k: tx end {end} outside [{}, {}]",
        model.tx_durable,
        model.tx.len()
    );
    let kept = Model {
        tx: model.tx[..end].to_vec(),
        ..Model::default()
    };
    let open_first = kept.tx.iter().position(
        |e| matches!(e, TxEntry::Data { txn: Some(t), .. } if kept.tx_outcome(*t).is_none()),
    );
    let lso = open_first.unwrap_or(end);
    let markers = kept
        .tx
        .iter()
        .filter(|e| matches!(e, TxEntry::Marker { .. }))
        .count();
    TX_MARKERS_CHECKED.fetch_add(markers as u64, Ordering::Relaxed);
    assert_eq!(b.last_stable as usize, lso, "{ctx}: k: last stable offset");
    let read = |isolation: IsolationLevel, bound: usize| {
        let limits = ReadLimits::messages(7).with_isolation(isolation);
        let mut at = 0u64;
        let mut out = Vec::new();
        while (at as usize) < bound {
            let f = store
                .fetch("tx", 0, at, limits)
                .unwrap_or_else(|e| panic!("{ctx}: fetch tx/{at}: {e}"));
            assert!(f.next_offset > at, "{ctx}: k: no progress at {at}");
            out.extend(f.records.iter().map(|r| (r.offset(), r.body().to_vec())));
            at = f.next_offset;
        }
        out
    };
    let want = |visible: &dyn Fn(Option<usize>) -> bool, bound: usize| -> Vec<(u64, Vec<u8>)> {
        kept.tx[..bound]
            .iter()
            .enumerate()
            .filter_map(|(o, e)| match e {
                TxEntry::Data { value, txn } if visible(*txn) => Some((o as u64, value.clone())),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        read(IsolationLevel::ReadCommitted, lso),
        want(&|t| t.is_none_or(|t| kept.tx_outcome(t) == Some(true)), lso),
        "{ctx}: k: read_committed"
    );
    assert_eq!(
        read(IsolationLevel::ReadUncommitted, end),
        want(&|_| true, end),
        "{ctx}: k: read_uncommitted (no marker returned)"
    );
    b.end
}

fn churn_body(generation: u32, n: usize) -> Vec<u8> {
    format!("x-g{generation}-n{n}").into_bytes()
}

/// h: topic `x` exists from its first generation on (creation is durable before it returns)
/// and holds records of its latest generation only, dense from 0.
fn check_churned(store: &dyn LogStore, model: &Model, ctx: &str) {
    if model.churn == 0 {
        return;
    }
    let b = store
        .bounds("x", 0)
        .unwrap_or_else(|e| panic!("{ctx}: topic x (generation {}): {e}", model.churn));
    assert_eq!(b.start, 0, "{ctx}: x starts at 0");
    let recs = store
        .read("x", 0, 0, ReadLimits::messages(10_000))
        .unwrap_or_else(|e| panic!("{ctx}: read x: {e}"));
    assert_eq!(recs.len() as u64, b.end, "{ctx}: x reads whole");
    for (n, r) in recs.iter().enumerate() {
        assert_eq!(r.offset(), n as u64, "{ctx}: x dense");
        assert_eq!(r.body(), &churn_body(model.churn, n)[..], "{ctx}: x/{n}");
    }
}

/// i: the group's offsets are those of its last acknowledged commit. Loading them is the consumer
/// layer's own recovery (it reads `__consumer_offsets` back through the trait).
fn check_committed(store: &Arc<dyn LogStore>, model: &Model, ctx: &str) {
    let Some(expected) = &model.committed else {
        return;
    };
    let groups = GroupCoordinator::new(Arc::clone(store))
        .unwrap_or_else(|e| panic!("{ctx}: load committed offsets: {e}"));
    let table = groups.committed_offsets("g");
    let got: Vec<Option<u64>> = (0..PARTITIONS)
        .map(|p| table.get("t").and_then(|t| t.get(&p)).copied())
        .collect();
    let want: Vec<Option<u64>> = expected.iter().map(|&o| Some(o)).collect();
    assert_eq!(got, want, "{ctx}: i: committed offsets");
}

/// Reopens after a crash, checks, checks idempotence (e), and shrinks the model to what is there.
fn recover(
    engine: EngineKind,
    sim: SimFs,
    sync: bool,
    model: &mut Model,
    ctx: &str,
) -> (SimFs, Arc<dyn LogStore>) {
    // A crash during recovery first: the power goes after a few I/O operations of the open.
    let cut = crc32fast::hash(ctx.as_bytes()) as u64 % 40;
    sim.fail_after(cut, Fault::Eio);
    if let Ok(s) = duolog::open(STORE, options(engine, &sim, sync)) {
        s.abandon();
    }
    let sim = sim.crash(CrashMode::PersistSubset, cut);
    let store = duolog::open(STORE, options(engine, &sim, sync))
        .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
    // Retention runs on whatever recovery trusted: a segment or file whose newest timestamp was
    // recovered wrong (e.g. from an untrimmed index) would be deleted here.
    store
        .enforce_retention()
        .unwrap_or_else(|e| panic!("{ctx}: retention after reopen: {e}"));
    let ends = check(store.as_ref(), model, ctx);
    let store: Arc<dyn LogStore> = Arc::from(store);
    check_committed(&store, model, ctx);
    // e: crash right after recovery; nothing may change.
    store.abandon();
    drop(store);
    let sim = sim.crash(CrashMode::DropUnsynced, 7);
    let store = duolog::open(STORE, options(engine, &sim, sync))
        .unwrap_or_else(|e| panic!("{ctx}: second reopen: {e}"));
    let again = check(store.as_ref(), model, &format!("{ctx} (second recovery)"));
    assert_eq!(ends, again, "{ctx}: recovery is idempotent");
    let store: Arc<dyn LogStore> = Arc::from(store);
    check_committed(&store, model, &format!("{ctx} (second recovery)"));
    model.durable_at_crash.clone_from(&model.durable);
    for (p, &end) in ends.iter().take(PARTITIONS as usize).enumerate() {
        model.appended[p].truncate(end as usize);
        model.durable[p] = end as usize;
        model.start[p] = store.bounds("t", p as u32).unwrap().start;
        model.maybe_start[p] = None;
    }
    if model.tx_supported {
        let end = ends[PARTITIONS as usize] as usize;
        model.tx.truncate(end);
        model.tx_durable = end;
        model.tx_batches.retain(|&(_, base, n)| {
            assert!(
                base >= end || base + n <= end,
                "{ctx}: k: transactional batch at {base} torn"
            );
            base < end
        });
    }
    (sim, store)
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        p: u32,
        n: usize,
        size: usize,
    },
    Tombstone {
        p: u32,
    },
    Churn {
        n: usize,
    },
    Sync,
    DeleteBefore {
        p: u32,
        fraction: u8,
    },
    /// Group `g` commits, for every partition of `t`, a position `fraction`% into what was
    /// appended (maybe past what is durable, as a consumer may have read it).
    Commit {
        fraction: u8,
    },
    Crash {
        mode: usize,
        seed: u64,
    },
    /// An idempotent batch of `n` messages, or (`retry`) the last one sent again.
    Idempotent {
        p: u32,
        n: usize,
        size: usize,
        retry: bool,
    },
    /// A transactional batch of `n` messages to `tx` (opening a transaction if none is).
    TxnAppend {
        n: usize,
        size: usize,
    },
    /// The open transaction's marker (nothing written when none is open).
    TxnEnd {
        commit: bool,
    },
    /// Plain records to `tx` (held back from read_committed by an open transaction).
    TxnPlain {
        n: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PARTITIONS, 1usize..8, 1usize..900).prop_map(|(p, n, size)| Op::Append { p, n, size }),
        1 => (0..PARTITIONS).prop_map(|p| Op::Tombstone { p }),
        1 => (0usize..20).prop_map(|n| Op::Churn { n }),
        2 => Just(Op::Sync),
        1 => (0..PARTITIONS, 0u8..=100).prop_map(|(p, fraction)| Op::DeleteBefore { p, fraction }),
        1 => (0u8..=100).prop_map(|fraction| Op::Commit { fraction }),
        2 => (0..CrashMode::ALL.len(), any::<u64>()).prop_map(|(mode, seed)| Op::Crash { mode, seed }),
        3 => (0..PARTITIONS, 1usize..8, 1usize..900, any::<bool>())
            .prop_map(|(p, n, size, retry)| Op::Idempotent { p, n, size, retry }),
        3 => (1usize..5, 1usize..400).prop_map(|(n, size)| Op::TxnAppend { n, size }),
        2 => any::<bool>().prop_map(|commit| Op::TxnEnd { commit }),
        1 => (1usize..4).prop_map(|n| Op::TxnPlain { n }),
    ]
}

/// The producer of the idempotent batches: one id for the whole case.
const PRODUCER: ProducerId = ProducerId { id: 0, epoch: 0 };

/// Appends an idempotent batch (its first sequence `seq`) and checks where it went.
fn send_idempotent(
    store: &dyn LogStore,
    model: &mut Model,
    sync: bool,
    p: u32,
    seq: i32,
    values: Vec<Vec<u8>>,
    ctx: &str,
) {
    let batch: Vec<Message> = values.iter().map(|v| Message::new(v.clone())).collect();
    let r = store
        .append_idempotent("t", p, PRODUCER, seq, &batch)
        .unwrap_or_else(|e| panic!("{ctx}: idempotent append at {seq}: {e}"));
    let base = model.appended[p as usize].len();
    assert_eq!(
        r.base_offset as usize, base,
        "{ctx}: f/j: a new batch goes at the end"
    );
    model.appended[p as usize].extend(values.iter().cloned().map(Some));
    model.idem[p as usize].push((seq, base, values));
    if sync {
        model.durable[p as usize] = model.appended[p as usize].len();
    }
}

/// j, after a recovery: no idempotent batch is torn; the ones the crash took are sent again
/// in order (each written once, at the end); a retry of the last one that survived is a
/// duplicate; a new producer id is above every earlier one.
///
/// A durable start offset can outlive records the crash took: `delete_before` past what was
/// synced, then a crash, recovers to an empty partition at that start (Kafka's
/// `truncateFullyAndStartAt`). A batch reaching past such an end is lost whole. One that lay
/// wholly below that start and was not yet durable may have survived (a `delete_before` that
/// deleted segments synced the log and snapshotted the producers first) or not; its records are
/// deleted either way, so its retry may be a duplicate at its old offsets or written anew at the
/// end, never both, never torn.
fn after_recovery(store: &dyn LogStore, model: &mut Model, sync: bool, ctx: &str) {
    let pid = store.allocate_producer_id().unwrap();
    assert!(
        pid > model.highest_pid,
        "{ctx}: j: producer id {pid} handed out again"
    );
    model.highest_pid = pid;
    for p in 0..PARTITIONS {
        let end = model.appended[p as usize].len();
        let emptied = end as u64 == model.start[p as usize];
        let durable = model.durable_at_crash[p as usize];
        let sent = std::mem::take(&mut model.idem[p as usize]);
        let (kept, lost): (Vec<_>, Vec<_>) = sent
            .into_iter()
            .partition(|(_, base, values)| *base < end && !(emptied && base + values.len() > end));
        if let Some((seq, base, values)) = kept.last() {
            assert!(
                base + values.len() <= end,
                "{ctx}: j: batch at {base} of partition {p} is torn"
            );
            let maybe_gone = emptied && base + values.len() > durable;
            let batch: Vec<Message> = values.iter().map(|v| Message::new(v.clone())).collect();
            let r = store
                .append_idempotent("t", p, PRODUCER, *seq, &batch)
                .unwrap_or_else(|e| panic!("{ctx}: j: retry of the last batch: {e}"));
            let now = store.bounds("t", p).unwrap().end as usize;
            if maybe_gone && r.base_offset as usize == end {
                // Forgotten with its records: written once, at the end.
                assert_eq!(now, end + values.len(), "{ctx}: j: written once");
                model.appended[p as usize].extend(values.iter().cloned().map(Some));
                if sync {
                    model.durable[p as usize] = now;
                }
                let resent = (*seq, end, values.clone());
                model.idem[p as usize] = vec![resent];
            } else {
                assert_eq!(
                    r.base_offset as usize, *base,
                    "{ctx}: j: retry returns its offsets"
                );
                assert_eq!(now, end, "{ctx}: j: nothing written");
                model.idem[p as usize] = kept;
            }
        }
        for (seq, _, values) in lost {
            send_idempotent(store, model, sync, p, seq, values, ctx);
        }
    }
}

fn run_case(engine: EngineKind, sync: bool, ops: &[Op]) {
    let mut sim = SimFs::new();
    let mut model = Model::new();
    let mut store: Arc<dyn LogStore> =
        Arc::from(duolog::open(STORE, options(engine, &sim, sync)).unwrap());
    store
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    // The case's producers (the first ids of a new store).
    model.highest_pid = store.allocate_producer_id().unwrap();
    assert_eq!(model.highest_pid, PRODUCER.id);
    model.highest_pid = store.allocate_producer_id().unwrap();
    assert_eq!(model.highest_pid, TX_PRODUCER.id);
    // Both engines support transactions: a marker with nothing open writes nothing. The probe
    // must succeed on each engine; taking its failure for "no transactions" would switch
    // invariant k off without a word.
    store.create_topic("tx", TopicConfig::default()).unwrap();
    let probe = store.write_marker("tx", 0, TX_PRODUCER, TxnMarker::Commit, 0);
    assert!(
        matches!(probe, Ok(None)),
        "{engine}: k must run on every engine, the transaction probe gave {probe:?}"
    );
    model.tx_supported = true;
    // The catalog must be durable before the first crash counts.
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Append { p, n, size } => {
                let base = model.appended[p as usize].len();
                let batch: Vec<Message> = (0..n)
                    .map(|k| Message::new(body(p, base + k, size)))
                    .collect();
                let r = store.append("t", p, &batch).unwrap();
                assert_eq!(
                    r.base_offset as usize, base,
                    "f: offsets continue at the end"
                );
                model.appended[p as usize].extend(batch.iter().map(|m| Some(m.body.to_vec())));
                if sync {
                    model.durable[p as usize] = model.appended[p as usize].len();
                }
            }
            Op::Tombstone { p } => {
                let base = model.appended[p as usize].len();
                let r = store
                    .append("t", p, &[Message::tombstone(format!("k{base}"))])
                    .unwrap();
                assert_eq!(r.base_offset as usize, base, "f: offsets continue");
                model.appended[p as usize].push(None);
                if sync {
                    model.durable[p as usize] = model.appended[p as usize].len();
                }
            }
            Op::Churn { n } => {
                if model.churn > 0 {
                    store.delete_topic("x").unwrap();
                }
                store.create_topic("x", TopicConfig::default()).unwrap();
                model.churn += 1;
                for k in 0..n {
                    store
                        .append("x", 0, &[Message::new(churn_body(model.churn, k))])
                        .unwrap();
                }
            }
            Op::Sync => {
                store.sync().unwrap();
                for p in 0..PARTITIONS as usize {
                    model.durable[p] = model.appended[p].len();
                }
                model.tx_durable = model.tx.len();
            }
            Op::DeleteBefore { p, fraction } => {
                let b = store.bounds("t", p).unwrap();
                let target = b.start + (b.end - b.start) * u64::from(fraction) / 100;
                let s = store.delete_before("t", p, target).unwrap();
                model.start[p as usize] = s;
            }
            Op::Commit { fraction } => {
                let positions: Vec<u64> = (0..PARTITIONS as usize)
                    .map(|p| (model.appended[p].len() * usize::from(fraction) / 100) as u64)
                    .collect();
                let offsets: Vec<(&str, u32, u64)> = (0..PARTITIONS)
                    .map(|p| ("t", p, positions[p as usize]))
                    .collect();
                // A coordinator for the commit only: a crash drops every handle on the store.
                let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
                groups.commit_offsets("g", &offsets).unwrap();
                model.committed = Some(positions);
            }
            Op::Crash { mode, seed } => {
                crash_counter(engine).fetch_add(1, Ordering::Relaxed);
                store.abandon();
                drop(store);
                sim = sim.crash(CrashMode::ALL[mode], seed);
                let ctx = format!(
                    "{engine} sync={sync} op {i} {:?} seed {seed}",
                    CrashMode::ALL[mode]
                );
                let (s2, st2) = recover(engine, sim, sync, &mut model, &ctx);
                sim = s2;
                store = st2;
                after_recovery(store.as_ref(), &mut model, sync, &ctx);
            }
            Op::TxnAppend { n, size } if model.tx_supported => {
                let base = model.tx.len();
                let txn = match model.tx_open() {
                    Some(t) => t,
                    None => {
                        model.tx_count += 1;
                        model.tx_count
                    }
                };
                let values: Vec<Vec<u8>> = (0..n).map(|k| body(9, base + k, size)).collect();
                let batch: Vec<Message> = values.iter().map(|v| Message::new(v.clone())).collect();
                let seq = model.tx_next_seq();
                let r = store
                    .append_transactional("tx", 0, TX_PRODUCER, seq, &batch)
                    .unwrap_or_else(|e| panic!("op {i}: transactional append: {e}"));
                assert_eq!(r.base_offset as usize, base, "op {i}: k: at the end");
                model.tx_batches.push((seq, base, n));
                model
                    .tx
                    .extend(values.into_iter().map(|value| TxEntry::Data {
                        value,
                        txn: Some(txn),
                    }));
                if sync {
                    model.tx_durable = model.tx.len();
                }
            }
            Op::TxnEnd { commit } if model.tx_supported => {
                let marker = if commit {
                    TxnMarker::Commit
                } else {
                    TxnMarker::Abort
                };
                let r = store
                    .write_marker("tx", 0, TX_PRODUCER, marker, 0)
                    .unwrap_or_else(|e| panic!("op {i}: marker: {e}"));
                match model.tx_open() {
                    Some(txn) => {
                        assert_eq!(r, Some(model.tx.len() as u64), "op {i}: k: marker offset");
                        model.tx.push(TxEntry::Marker { txn, commit });
                        // Durable on return, with everything before it.
                        model.tx_durable = model.tx.len();
                    }
                    None => assert_eq!(r, None, "op {i}: k: no open transaction"),
                }
            }
            Op::TxnPlain { n } if model.tx_supported => {
                let base = model.tx.len();
                let values: Vec<Vec<u8>> = (0..n).map(|k| body(8, base + k, 30)).collect();
                let batch: Vec<Message> = values.iter().map(|v| Message::new(v.clone())).collect();
                let r = store.append("tx", 0, &batch).unwrap();
                assert_eq!(r.base_offset as usize, base, "op {i}: k: at the end");
                model.tx.extend(
                    values
                        .into_iter()
                        .map(|value| TxEntry::Data { value, txn: None }),
                );
                if sync {
                    model.tx_durable = model.tx.len();
                }
            }
            Op::TxnAppend { .. } | Op::TxnEnd { .. } | Op::TxnPlain { .. } => {}
            Op::Idempotent { p, n, size, retry } => {
                let ctx = format!("{engine} sync={sync} op {i}");
                let last = model.idem[p as usize].last().cloned();
                match last {
                    Some((seq, base, values)) if retry => {
                        let batch: Vec<Message> =
                            values.iter().map(|v| Message::new(v.clone())).collect();
                        let end = store.bounds("t", p).unwrap().end;
                        let r = store
                            .append_idempotent("t", p, PRODUCER, seq, &batch)
                            .unwrap();
                        assert_eq!(
                            r.base_offset as usize, base,
                            "{ctx}: j: a retry is a duplicate"
                        );
                        assert_eq!(store.bounds("t", p).unwrap().end, end, "{ctx}: j");
                    }
                    _ => {
                        let seq = last.map_or(0, |(seq, _, v)| seq + v.len() as i32);
                        let base = model.appended[p as usize].len();
                        let values = (0..n).map(|k| body(p, base + k, size)).collect();
                        send_idempotent(store.as_ref(), &mut model, sync, p, seq, values, &ctx);
                    }
                }
            }
        }
    }
    store.abandon();
    drop(store);
    let sim = sim.crash(CrashMode::PersistSubset, 99);
    let ctx = format!("{engine} sync={sync} final crash");
    let (_, store) = recover(engine, sim, sync, &mut model, &ctx);
    after_recovery(store.as_ref(), &mut model, sync, &ctx);
}

fn cases() -> u32 {
    std::env::var("DUOLOG_CRASH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

static CRASHES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn crash_counter(engine: EngineKind) -> &'static AtomicU64 {
    &CRASHES[usize::from(engine == EngineKind::Segmented)]
}

/// Runs the random workloads for one engine and prints how many crashes were checked.
fn property(engine: EngineKind) {
    let config = ProptestConfig {
        cases: cases(),
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = (any::<bool>(), proptest::collection::vec(op(), 1..40));
    let result = runner.run(&strategy, |(sync, ops)| {
        run_case(engine, sync, &ops);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{engine}: {e}");
    }
    eprintln!(
        "{engine}: {} random workloads, {} crash cases, 0 violations ({} transaction markers \
         checked after crashes, both engines so far)",
        cases(),
        crash_counter(engine).load(Ordering::Relaxed),
        TX_MARKERS_CHECKED.load(Ordering::Relaxed)
    );
}

#[test]
fn random_workloads_survive_random_crashes_commitlog() {
    property(EngineKind::CommitLog);
}

#[test]
fn random_workloads_survive_random_crashes_segmented() {
    property(EngineKind::Segmented);
}

/// Cuts the power after each I/O operation of a small workload (k = 0..N), with several damage
/// seeds each, and checks every resulting disk. The countdown starts before the store is
/// opened in a fresh nested directory, so the cuts also land in the creation of the store,
/// its directories and its topic. Prints how many distinct crash states it saw.
fn sweep(engine: EngineKind) {
    let seeds: u64 = std::env::var("DUOLOG_CRASH_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // Count the workload's operations once.
    let total = {
        let sim = SimFs::new();
        let store = duolog::open(STORE, options(engine, &sim, true)).unwrap();
        store
            .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
            .unwrap();
        workload(store.as_ref(), &mut Model::new(), &sim);
        sim.op_count()
    };
    let mut states = HashSet::new();
    let mut cases = 0;
    for k in 0..=total {
        for seed in 0..seeds {
            let sim = SimFs::new();
            sim.fail_after(k, Fault::Eio);
            let mut model = Model::new();
            // Whether create_topic was acknowledged: then the topic must survive.
            let mut topic_acknowledged = false;
            if let Ok(store) = duolog::open(STORE, options(engine, &sim, true)) {
                if store
                    .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
                    .is_ok()
                {
                    topic_acknowledged = true;
                    workload(store.as_ref(), &mut model, &sim);
                }
                store.abandon();
            }
            let mode = CrashMode::ALL[((k + seed) % CrashMode::ALL.len() as u64) as usize];
            let crashed = sim.crash(mode, seed * 7919 + k);
            let mut fingerprint = Vec::new();
            for f in crashed.files() {
                fingerprint.push((
                    f.clone(),
                    duolog::io::FileSystem::read_file(&crashed, &f)
                        .map(|b| crc32fast::hash(&b))
                        .ok(),
                ));
            }
            states.insert(fingerprint);
            let ctx = format!("{engine} sweep k={k} seed={seed} {mode:?}");
            // The store (and the topic, unless acknowledged) may be gone or half-created: a
            // reopen must still work, and the topic may then be created again.
            let store = duolog::open(STORE, options(engine, &crashed, true))
                .unwrap_or_else(|e| panic!("{ctx}: reopen of a half-created store: {e}"));
            match store.create_topic("t", TopicConfig::with_partitions(PARTITIONS)) {
                Ok(()) => assert!(!topic_acknowledged, "{ctx}: acknowledged topic lost"),
                Err(duolog::Error::TopicExists(_)) => {}
                Err(e) => panic!("{ctx}: create_topic after reopen: {e}"),
            }
            store
                .close()
                .unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
            drop(store);
            recover(engine, crashed, true, &mut model, &ctx);
            cases += 1;
        }
    }
    eprintln!(
        "{engine}: {cases} crash cases over {total} I/O operations, {} distinct crash states",
        states.len()
    );
}

/// A store created in a fresh nested directory, a topic, one durable append per partition,
/// then a power cut of every kind, right away or after a clean close (which checkpoints the
/// derived files, so recovery trusts them): every acknowledged message must be there after
/// reopen. (The directories the engine created are durable only once their parents are synced.)
fn crash_after_first_durable_append_in_fresh_directory(engine: EngineKind) {
    for (i, &mode) in CrashMode::ALL.iter().enumerate() {
        for seed in 0..4u64 {
            let sim = SimFs::new();
            let store = duolog::open(STORE, options(engine, &sim, true)).unwrap();
            store
                .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
                .unwrap();
            let mut model = Model::new();
            for p in 0..PARTITIONS {
                let m = body(p, 0, 100);
                store.append("t", p, &[Message::new(m.clone())]).unwrap();
                model.appended[p as usize].push(Some(m));
                model.durable[p as usize] = 1;
            }
            let closed = seed % 2 == 1;
            if closed {
                store.close().unwrap();
            } else {
                store.abandon();
            }
            drop(store);
            let crashed = sim.crash(mode, seed * 31 + i as u64);
            let ctx = format!("{engine} fresh directory {mode:?} seed {seed} closed={closed}");
            let store = duolog::open(STORE, options(engine, &crashed, true))
                .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            check(store.as_ref(), &model, &ctx);
        }
    }
}

#[test]
fn fresh_nested_directory_keeps_acknowledged_messages_after_power_cut_commitlog() {
    crash_after_first_durable_append_in_fresh_directory(EngineKind::CommitLog);
}

#[test]
fn fresh_nested_directory_keeps_acknowledged_messages_after_power_cut_segmented() {
    crash_after_first_durable_append_in_fresh_directory(EngineKind::Segmented);
}

/// A small workload: appends over every partition, a delete_before, more appends. Stops at the
/// first error (the injected fault); what returned Ok is in the model.
fn workload(store: &dyn LogStore, model: &mut Model, _sim: &SimFs) {
    for round in 0..6 {
        for p in 0..PARTITIONS {
            let base = model.appended[p as usize].len();
            let batch: Vec<Message> = (0..2)
                .map(|k| Message::new(body(p, base + k, 200 + round * 150)))
                .collect();
            let ok = store.append("t", p, &batch).is_ok();
            // A failed append may still have reached the disk: it is appended, not durable.
            model.appended[p as usize].extend(batch.iter().map(|m| Some(m.body.to_vec())));
            if !ok {
                return;
            }
            model.durable[p as usize] = model.appended[p as usize].len();
        }
        if round == 3 {
            match store.delete_before("t", 1, 2) {
                Ok(s) => model.start[1] = s,
                Err(_) => {
                    model.maybe_start[1] = Some(2);
                    return;
                }
            }
        }
    }
}

#[test]
fn power_cut_after_every_io_operation_commitlog() {
    sweep(EngineKind::CommitLog);
}

#[test]
fn power_cut_after_every_io_operation_segmented() {
    sweep(EngineKind::Segmented);
}

/// Found by the property test during the issue-11 review (commitlog, sync): appends, a crash,
/// a tombstone among appends to another partition, `delete_before`, then a crash that extends
/// files with garbage — the reopen fails with `Corrupted`, "record has queue offset 6 but its
/// consume queue ends at 9".
#[test]
fn review11_delete_before_then_a_garbage_extending_crash_reopens() {
    use Op::*;
    run_case(
        EngineKind::CommitLog,
        true,
        &[
            Append {
                p: 0,
                n: 6,
                size: 865,
            },
            Append {
                p: 0,
                n: 4,
                size: 37,
            },
            Append {
                p: 0,
                n: 1,
                size: 2,
            },
            Append {
                p: 0,
                n: 4,
                size: 444,
            },
            Append {
                p: 0,
                n: 7,
                size: 253,
            },
            Append {
                p: 2,
                n: 1,
                size: 887,
            },
            Append {
                p: 2,
                n: 6,
                size: 618,
            },
            Crash {
                mode: 0,
                seed: 10046308078082252142,
            },
            Append {
                p: 1,
                n: 5,
                size: 52,
            },
            Tombstone { p: 0 },
            Append {
                p: 1,
                n: 7,
                size: 876,
            },
            Append {
                p: 1,
                n: 7,
                size: 550,
            },
            DeleteBefore { p: 1, fraction: 27 },
            Crash {
                mode: 6,
                seed: 15552665399750032201,
            },
        ],
    );
}

/// A power cut of every kind right after `create_topic` returned (nothing appended yet, so no
/// partition has a segment): the topic is there after the reopen, every partition reads empty
/// with bounds 0..0, takes appends, and keeps them across a second power cut.
fn crash_right_after_create_topic(engine: EngineKind) {
    for (i, &mode) in CrashMode::ALL.iter().enumerate() {
        for seed in 0..3u64 {
            let sim = SimFs::new();
            let store = duolog::open(STORE, options(engine, &sim, true)).unwrap();
            store
                .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
                .unwrap();
            store.abandon();
            drop(store);
            let crashed = sim.crash(mode, seed * 17 + i as u64);
            let ctx = format!("{engine} after create_topic {mode:?} seed {seed}");
            let store = duolog::open(STORE, options(engine, &crashed, true))
                .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            assert!(
                matches!(
                    store.create_topic("t", TopicConfig::with_partitions(PARTITIONS)),
                    Err(duolog::Error::TopicExists(_))
                ),
                "{ctx}: acknowledged topic lost"
            );
            let mut model = Model::new();
            check(store.as_ref(), &model, &ctx);
            for p in 0..PARTITIONS {
                let b = store.bounds("t", p).unwrap();
                assert_eq!((b.start, b.end), (0, 0), "{ctx}: partition {p}");
                let m = body(p, 0, 100);
                store.append("t", p, &[Message::new(m.clone())]).unwrap();
                model.appended[p as usize].push(Some(m));
                model.durable[p as usize] = 1;
            }
            store.abandon();
            drop(store);
            let crashed = crashed.crash(mode, seed * 31 + i as u64);
            let store = duolog::open(STORE, options(engine, &crashed, true))
                .unwrap_or_else(|e| panic!("{ctx}: second reopen: {e}"));
            check(store.as_ref(), &model, &format!("{ctx}, second crash"));
        }
    }
}

#[test]
fn topic_created_then_power_cut_reopens_empty_and_takes_appends_segmented() {
    crash_right_after_create_topic(EngineKind::Segmented);
}

#[test]
fn topic_created_then_power_cut_reopens_empty_and_takes_appends_commitlog() {
    crash_right_after_create_topic(EngineKind::CommitLog);
}
