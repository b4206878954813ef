//! Committed offsets across power cuts, on the simulated disk: a commit of several partitions is
//! one record, so after a power cut at any I/O step of it (and any damage mode) a group's
//! offsets are all the old ones or all the new ones, and a commit that was acknowledged is
//! there.

mod common;

use std::sync::Arc;

use common::small_options;
use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
use duolog::io::{CrashMode, Fault, SimFs};
use duolog::{EngineKind, LogStore, Message, TopicConfig};

const PARTITIONS: u32 = 4;

fn opts(engine: EngineKind, sim: &SimFs) -> duolog::StoreOptions {
    duolog::StoreOptions {
        fs: Arc::new(sim.clone()),
        ..small_options(engine)
    }
}

/// A store with a topic, `pad` big commits of another group, the old offsets (10 everywhere) committed for group `g` and some
/// other group's offsets, all durable.
fn setup(engine: EngineKind, sim: &SimFs, pad: usize) -> (Arc<dyn LogStore>, GroupCoordinator) {
    let store: Arc<dyn LogStore> = Arc::from(duolog::open("/s", opts(engine, sim)).unwrap());
    store
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    for p in 0..PARTITIONS {
        let batch: Vec<Message> = (0..30).map(|i| Message::new(format!("{i}"))).collect();
        store.append("t", p, &batch).unwrap();
    }
    // Offsets are committed for live topics only (the partitions are not checked).
    store.create_topic("big", TopicConfig::default()).unwrap();
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    // Padding: commits of about 6 KB each move the commit under test across a segment or log
    // file boundary (a roll inside the commit).
    for i in 0..pad as u64 {
        // Offsets that change each time: an unchanged table is not written again.
        let big: Vec<(&str, u32, u64)> = (0..2000).map(|p| ("big", p, (1 << 20) + i)).collect();
        groups.commit_offsets("padding", &big).unwrap();
    }
    groups.commit_offsets("other", &[("t", 0, 3)]).unwrap();
    // The group's table also holds 2,000 other partitions, so each of its commit records is
    // about 8 KB: big enough that one of the paddings makes the commit roll a file.
    let mut old: Vec<(&str, u32, u64)> = (0..PARTITIONS).map(|p| ("t", p, 10)).collect();
    old.extend((0..2000).map(|p| ("big", p, 1 << 20)));
    groups.commit_offsets("g", &old).unwrap();
    store.sync().unwrap();
    (store, groups)
}

/// The commit under test: a consumer's positions on every partition moved to 20.
fn commit_new(groups: &GroupCoordinator) -> duolog::Result<()> {
    let c = Consumer::new(
        groups,
        ConsumerConfig {
            enable_auto_commit: false,
            auto_offset_reset: OffsetReset::None,
            ..ConsumerConfig::new("g")
        },
    )?;
    let parts: Vec<(&str, u32)> = (0..PARTITIONS).map(|p| ("t", p)).collect();
    c.assign(&parts)?;
    for p in 0..PARTITIONS {
        c.seek("t", p, 20)?;
    }
    c.commit()
}

#[test]
fn a_power_cut_at_every_step_of_a_commit_leaves_all_old_or_all_new_offsets() {
    // Fourteen positions of the commit relative to file boundaries: some of them make the
    // commit roll a segment (segmented: pad 7) or a commit-log file.
    let pads: Vec<usize> = (0..14).collect();
    for (engine, pad) in common::engines()
        .into_iter()
        .flat_map(|e| pads.iter().map(move |&pad| (e, pad)))
    {
        let steps = {
            let sim = SimFs::new();
            let (_store, groups) = setup(engine, &sim, pad);
            let before = sim.op_count();
            commit_new(&groups).unwrap();
            sim.op_count() - before
        };
        assert!(steps >= 1, "{engine}: a commit does I/O");
        let (mut old, mut new, mut acked) = (0, 0, 0);
        // Past the measured count too: background threads may add I/O steps to a later run,
        // and the last cuts must fall after the commit finished (so both outcomes are seen).
        for k in 0..=steps + 8 {
            for (seed, mode) in CrashMode::ALL.iter().enumerate() {
                let sim = SimFs::new();
                let (store, groups) = setup(engine, &sim, pad);
                sim.fail_after(k, Fault::Eio);
                let committed = commit_new(&groups).is_ok();
                acked += usize::from(committed);
                store.abandon();
                drop(groups);
                drop(store);
                let crashed = sim.crash(*mode, seed as u64 * 31 + k);
                let ctx =
                    format!("{engine}, pad {pad}: power cut at step {k} of {steps}, {mode:?}");
                let store: Arc<dyn LogStore> = Arc::from(
                    duolog::open("/s", opts(engine, &crashed))
                        .unwrap_or_else(|e| panic!("{ctx}: reopen: {e}")),
                );
                let groups = GroupCoordinator::new(Arc::clone(&store))
                    .unwrap_or_else(|e| panic!("{ctx}: load offsets: {e}"));
                let table = groups.committed_offsets("g");
                let values: Vec<u64> = (0..PARTITIONS)
                    .map(|p| table.get("t").and_then(|t| t.get(&p)).copied().unwrap_or(0))
                    .collect();
                if values.iter().all(|&v| v == 20) {
                    new += 1;
                } else {
                    assert!(
                        values.iter().all(|&v| v == 10),
                        "{ctx}: a torn commit: {values:?}"
                    );
                    assert!(!committed, "{ctx}: an acknowledged commit was lost");
                    old += 1;
                }
                assert_eq!(groups.committed_offsets("other")["t"][&0], 3, "{ctx}");
                // The store goes on: a new commit lands and loads.
                let again: Vec<(&str, u32, u64)> = (0..PARTITIONS).map(|p| ("t", p, 25)).collect();
                groups.commit_offsets("g", &again).unwrap();
                drop(groups);
                let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
                assert_eq!(groups.committed_offsets("g")["t"][&3], 25, "{ctx}");
                drop(groups);
                store.close().unwrap();
            }
        }
        eprintln!("{engine}, pad {pad}: {steps} steps, {old} old, {new} new, {acked} acknowledged");
        assert!(old > 0 && new > 0, "{engine}: old {old}, new {new}");
    }
}
