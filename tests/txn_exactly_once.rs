//! Exactly once end to end (issue 14, item 4): a consume-transform-produce loop
//! ([`duolog::txn::transform`]) cut by a power loss at every I/O step of one round, under every
//! crash mode of the simulated disk, on both engines. After the reopen (and the coordinator's
//! recovery) `out`, read committed, holds each input's output exactly once, in order, and the
//! group's committed offset is exactly where the outputs end; an acknowledged round is there;
//! and the loop, restarted, finishes the input with nothing lost or doubled.

mod common;

use std::sync::Arc;
use std::time::Duration;

use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
use duolog::io::{CrashMode, Fault, SimFs};
use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig, transform};
use duolog::{
    EngineKind, IsolationLevel, LogStore, Message, ReadLimits, StoreOptions, TopicConfig,
};

const PARTS: u32 = 2;
const INPUTS: u64 = 12;
const GROUP: &str = "eos";

fn opts(engine: EngineKind, sim: &SimFs) -> StoreOptions {
    StoreOptions {
        fs: Arc::new(sim.clone()),
        ..common::small_options(engine)
    }
}

/// The application: the store, its groups and transactions, one consumer of `in` and one
/// transactional producer.
struct App {
    store: Arc<dyn LogStore>,
    consumer: Consumer,
    producer: duolog::txn::TransactionalProducer,
    txns: TransactionCoordinator,
    groups: GroupCoordinator,
}

fn start(engine: EngineKind, sim: &SimFs) -> duolog::Result<App> {
    let store: Arc<dyn LogStore> = Arc::from(duolog::open("/s", opts(engine, sim))?);
    let groups = GroupCoordinator::new(Arc::clone(&store))?;
    let txns = TransactionCoordinator::open(
        Arc::clone(&store),
        TxnCoordinatorConfig {
            groups: Some(groups.clone()),
            ..TxnCoordinatorConfig::default()
        },
    )?;
    let consumer = Consumer::new(
        &groups,
        ConsumerConfig {
            isolation: IsolationLevel::ReadCommitted,
            enable_auto_commit: false,
            auto_offset_reset: OffsetReset::Earliest,
            max_poll_records: 4,
            ..ConsumerConfig::new(GROUP)
        },
    )?;
    consumer.assign(&[("in", 0), ("in", 1)])?;
    let producer = txns.producer("eos-app", TxnProducerConfig::default())?;
    Ok(App {
        store,
        consumer,
        producer,
        txns,
        groups,
    })
}

/// A store with the input, and two rounds of the loop done.
fn setup(engine: EngineKind, sim: &SimFs) -> App {
    {
        let store = duolog::open("/s", opts(engine, sim)).unwrap();
        store
            .create_topic("in", TopicConfig::with_partitions(PARTS))
            .unwrap();
        store
            .create_topic("out", TopicConfig::with_partitions(PARTS))
            .unwrap();
        for p in 0..PARTS {
            let batch: Vec<Message> = (0..INPUTS)
                .map(|i| Message::new(format!("in-{p}-{i}")))
                .collect();
            store.append("in", p, &batch).unwrap();
        }
        store.close().unwrap();
    }
    let app = start(engine, sim).unwrap();
    for _ in 0..2 {
        assert!(round(&app).unwrap() > 0);
    }
    app.store.sync().unwrap();
    app
}

fn round(app: &App) -> duolog::Result<usize> {
    transform(&app.consumer, &app.producer, Duration::ZERO, |r| {
        let body = String::from_utf8_lossy(r.record().body()).into_owned();
        vec![(
            "out".to_string(),
            r.partition(),
            Message::new(format!("out:{body}")),
        )]
    })
}

fn committed_out(store: &dyn LogStore, p: u32) -> Vec<String> {
    let b = store.bounds("out", p).unwrap();
    let limits = ReadLimits::messages(100).with_isolation(IsolationLevel::ReadCommitted);
    let mut at = b.start;
    let mut out = Vec::new();
    while at < b.last_stable {
        let f = store.fetch("out", p, at, limits).unwrap();
        assert!(f.next_offset > at, "a committed fetch stalled at {at}");
        out.extend(
            f.records
                .iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
        at = f.next_offset;
    }
    out
}

/// `out` holds exactly the outputs of the inputs below the group's committed offset, once
/// each and in order; returns those offsets.
fn check_exactly_once(app: &App, ctx: &str) -> Vec<u64> {
    let table = app.groups.committed_offsets(GROUP);
    let mut offsets = Vec::new();
    for p in 0..PARTS {
        let committed = table
            .get("in")
            .and_then(|t| t.get(&p))
            .copied()
            .unwrap_or(0);
        let want: Vec<String> = (0..committed).map(|i| format!("out:in-{p}-{i}")).collect();
        assert_eq!(
            committed_out(app.store.as_ref(), p),
            want,
            "{ctx}: partition {p}, committed offset {committed}"
        );
        let b = app.store.bounds("out", p).unwrap();
        assert_eq!(b.last_stable, b.end, "{ctx}: no transaction left hanging");
        offsets.push(committed);
    }
    offsets
}

#[test]
fn a_power_cut_at_every_step_of_the_loop_gives_each_output_exactly_once() {
    for engine in common::engines() {
        let steps = {
            let sim = SimFs::new();
            let app = setup(engine, &sim);
            let before = sim.op_count();
            round(&app).unwrap();
            sim.op_count() - before
        };
        assert!(steps > 0);
        let (mut acked, mut lost) = (0, 0);
        for k in 0..=steps + 6 {
            for (seed, mode) in CrashMode::ALL.iter().enumerate() {
                let ctx = format!("{engine}: cut at step {k} of {steps}, {mode:?}");
                let sim = SimFs::new();
                let app = setup(engine, &sim);
                let before: Vec<u64> = (0..PARTS)
                    .map(|p| app.consumer.position("in", p).unwrap())
                    .collect();
                sim.fail_after(k, Fault::Eio);
                let ok = round(&app).is_ok();
                let after: Vec<u64> = (0..PARTS)
                    .map(|p| app.consumer.position("in", p).unwrap())
                    .collect();
                app.store.abandon();
                drop(app);
                let crashed = sim.crash(*mode, seed as u64 * 131 + k);
                let app = start(engine, &crashed).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
                let offsets = check_exactly_once(&app, &ctx);
                if ok {
                    acked += 1;
                    assert_eq!(offsets, after, "{ctx}: an acknowledged round was lost");
                } else {
                    assert!(
                        offsets == before || offsets == after,
                        "{ctx}: offsets {offsets:?} neither {before:?} nor {after:?}"
                    );
                    lost += usize::from(offsets == before);
                }
                // The loop goes on from there and finishes the input exactly once.
                let mut rounds = 0;
                while round(&app).unwrap_or_else(|e| panic!("{ctx}: round after reopen: {e}")) > 0 {
                    rounds += 1;
                    assert!(rounds < 100, "{ctx}: the loop does not finish");
                }
                assert_eq!(check_exactly_once(&app, &ctx), vec![INPUTS; PARTS as usize]);
                app.txns.close().unwrap();
                app.store.close().unwrap();
            }
        }
        eprintln!(
            "{engine}: {steps} steps; {acked} acknowledged, {lost} rounds lost (not acknowledged)"
        );
        assert!(acked > 0 && lost > 0, "{engine}: both outcomes are seen");
    }
}
