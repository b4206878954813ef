//! Orderly consumption across power cuts, on the simulated disk: a power cut while an orderly
//! consumer is handling and committing loses no acknowledged commit, never leaves a commit past
//! what was handled, and the next member starts every partition exactly at its committed
//! offset and goes on in offset order to the end: nothing committed is handled again, nothing
//! is skipped.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::small_options;
use duolog::consumer::{ConsumerRecord, GroupCoordinator, OffsetReset};
use duolog::io::{CrashMode, SimFs};
use duolog::order::{ConsumeOrderlyStatus, OrderlyConfig, OrderlyConsumer, OrderlyContext};
use duolog::{EngineKind, LogStore, Message, TopicConfig};

const PARTITIONS: u32 = 4;
const PER_PARTITION: u64 = 300;

fn opts(engine: EngineKind, sim: &SimFs) -> duolog::StoreOptions {
    duolog::StoreOptions {
        fs: Arc::new(sim.clone()),
        ..small_options(engine)
    }
}

fn config() -> OrderlyConfig {
    let mut c = OrderlyConfig::new("g");
    c.consumer.auto_offset_reset = OffsetReset::Earliest;
    c.commit_interval = Duration::from_millis(20);
    c
}

/// (partition, offset) of every handler call, in call order.
type Handled = Arc<Mutex<Vec<(u32, u64)>>>;

fn start(groups: &GroupCoordinator, handled: &Handled, slow: bool) -> OrderlyConsumer {
    let log = Arc::clone(handled);
    OrderlyConsumer::start(
        groups,
        config(),
        &["t"],
        move |r: &ConsumerRecord, _: &OrderlyContext| {
            log.lock().unwrap().push((r.partition(), r.offset()));
            if slow {
                // Spread the handling over many commits, so the cut falls between them.
                std::thread::sleep(Duration::from_micros(300));
            }
            ConsumeOrderlyStatus::Success
        },
    )
    .unwrap()
}

fn committed(groups: &GroupCoordinator) -> BTreeMap<u32, u64> {
    let table = groups.committed_offsets("g");
    (0..PARTITIONS)
        .map(|p| {
            (
                p,
                table.get("t").and_then(|t| t.get(&p)).copied().unwrap_or(0),
            )
        })
        .collect()
}

/// Per partition, the offsets handled, in call order.
fn per_partition(handled: &[(u32, u64)]) -> BTreeMap<u32, Vec<u64>> {
    let mut out: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &(p, o) in handled {
        out.entry(p).or_default().push(o);
    }
    out
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_power_cut_during_orderly_consumption_resumes_every_partition_at_its_commit() {
    for engine in common::engines() {
        for (seed, mode) in CrashMode::ALL.iter().enumerate() {
            let ctx = format!("{engine}, {mode:?}");
            let sim = SimFs::new();
            let store: Arc<dyn LogStore> =
                Arc::from(duolog::open("/s", opts(engine, &sim)).unwrap());
            store
                .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
                .unwrap();
            for p in 0..PARTITIONS {
                let batch: Vec<Message> = (0..PER_PARTITION)
                    .map(|i| Message::new(format!("p{p}-{i}")).with_key(format!("k{}", i % 5)))
                    .collect();
                store.append("t", p, &batch).unwrap();
            }
            store.sync().unwrap();
            let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
            let handled: Handled = Arc::default();
            let consumer = start(&groups, &handled, true);
            // Cut the power part-way, with commits landing around it.
            let cut_after = 100 + (seed * 97) % 500;
            wait_until("the first run to handle some records", || {
                handled.lock().unwrap().len() >= cut_after
            });
            let acked = committed(&groups);
            let crashed = sim.crash(*mode, 17 + seed as u64);
            let first = handled.lock().unwrap().clone();
            consumer.stop_renewing();
            drop(consumer);
            store.abandon();
            drop(groups);
            drop(store);

            // The first run handled each partition densely in offset order from 0.
            let first = per_partition(&first);
            for (p, offsets) in &first {
                let want: Vec<u64> = (0..offsets.len() as u64).collect();
                assert_eq!(offsets, &want, "{ctx}: first run, partition {p}");
            }

            let store: Arc<dyn LogStore> = Arc::from(
                duolog::open("/s", opts(engine, &crashed))
                    .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}")),
            );
            let groups = GroupCoordinator::new(Arc::clone(&store))
                .unwrap_or_else(|e| panic!("{ctx}: load offsets: {e}"));
            let after = committed(&groups);
            for p in 0..PARTITIONS {
                let handled_to = first.get(&p).map_or(0, |o| o.len() as u64);
                assert!(
                    after[&p] >= acked[&p],
                    "{ctx}: partition {p}: acknowledged commit {} lost (now {})",
                    acked[&p],
                    after[&p]
                );
                assert!(
                    after[&p] <= handled_to,
                    "{ctx}: partition {p}: committed {} past what was handled ({handled_to})",
                    after[&p]
                );
            }

            let second: Handled = Arc::default();
            let consumer = start(&groups, &second, false);
            let total: u64 = (0..PARTITIONS).map(|p| PER_PARTITION - after[&p]).sum();
            wait_until("the second run to reach the end", || {
                second.lock().unwrap().len() as u64 >= total
            });
            consumer.close().unwrap();
            let second = per_partition(&second.lock().unwrap());
            for p in 0..PARTITIONS {
                let want: Vec<u64> = (after[&p]..PER_PARTITION).collect();
                assert_eq!(
                    second.get(&p).cloned().unwrap_or_default(),
                    want,
                    "{ctx}: second run, partition {p}: from the commit, densely, to the end"
                );
            }
            assert_eq!(
                committed(&groups),
                (0..PARTITIONS).map(|p| (p, PER_PARTITION)).collect(),
                "{ctx}"
            );
            drop(groups);
            store.close().unwrap();
            eprintln!("{ctx}: acked {acked:?}, recovered {after:?}");
        }
    }
}
