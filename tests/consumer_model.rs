//! Consumer groups against a model, on both engines: random members joining, leaving
//! (commit, then close), crashing (dropped without a commit), polling, committing (sync and
//! async) and records
//! being produced. Checked after every step: no partition is held by two members; every
//! record a member receives comes from a partition it holds; a group's committed offsets never
//! go backwards. At the end every record has been delivered at least once. A threaded test
//! checks exclusivity while members poll, join and leave concurrently.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duolog::consumer::{
    Assignor, Averagely, Consumer, ConsumerConfig, GroupCoordinator, OffsetReset,
    RebalanceListener, Sticky, TopicPartition,
};
use duolog::{EngineKind, LogStore, Message, TopicConfig};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Join,
    Leave(usize),
    Crash(usize),
    Poll(usize),
    Commit(usize),
    CommitAsync(usize),
    Produce(u32, usize),
    AddPartition,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Join),
        1 => any::<usize>().prop_map(Op::Leave),
        1 => any::<usize>().prop_map(Op::Crash),
        6 => any::<usize>().prop_map(Op::Poll),
        2 => any::<usize>().prop_map(Op::Commit),
        2 => any::<usize>().prop_map(Op::CommitAsync),
        3 => (0u32..8, 1usize..20).prop_map(|(p, n)| Op::Produce(p, n)),
        1 => Just(Op::AddPartition),
    ]
}

struct World {
    store: Arc<dyn LogStore>,
    groups: GroupCoordinator,
    assignor: Arc<dyn Assignor>,
    members: Vec<Consumer>,
    partitions: u32,
    produced: BTreeSet<(u32, u64)>,
    delivered: BTreeSet<(u32, u64)>,
    committed: BTreeMap<u32, u64>,
}

impl World {
    fn join(&mut self) {
        let c = Consumer::new(
            &self.groups,
            ConsumerConfig {
                enable_auto_commit: false,
                auto_offset_reset: OffsetReset::Earliest,
                max_poll_records: 7,
                assignor: Arc::clone(&self.assignor),
                ..ConsumerConfig::new("g")
            },
        )
        .unwrap();
        c.subscribe(&["t"]).unwrap();
        self.members.push(c);
    }

    fn poll(&mut self, i: usize) {
        let c = &self.members[i];
        let records = c.poll(Duration::ZERO).unwrap();
        let held: BTreeSet<TopicPartition> = c.assignment().into_iter().collect();
        for r in records {
            assert!(
                held.contains(&TopicPartition::new("t", r.partition())),
                "{} got a record of t-{} it does not hold",
                c.member_id(),
                r.partition()
            );
            self.delivered.insert((r.partition(), r.offset()));
        }
    }

    fn check(&mut self) {
        let mut seen = HashMap::new();
        for c in &self.members {
            for tp in c.assignment() {
                if let Some(other) = seen.insert(tp.clone(), c.member_id().to_owned()) {
                    panic!("{tp} held by {other} and {}", c.member_id());
                }
            }
        }
        let table = self.groups.committed_offsets("g");
        if let Some(t) = table.get("t") {
            for (&p, &o) in t {
                let before = self.committed.insert(p, o).unwrap_or(0);
                assert!(o >= before, "t-{p}: committed {before}, then {o}");
            }
        }
    }
}

fn run(engine: EngineKind, sticky: bool, ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LogStore> =
        Arc::from(common::open(dir.path(), &common::small_options(engine)));
    store
        .create_topic("t", TopicConfig::with_partitions(3))
        .unwrap();
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    let assignor: Arc<dyn Assignor> = if sticky {
        Arc::new(Sticky)
    } else {
        Arc::new(Averagely)
    };
    let mut w = World {
        store,
        groups,
        assignor,
        members: Vec::new(),
        partitions: 3,
        produced: BTreeSet::new(),
        delivered: BTreeSet::new(),
        committed: BTreeMap::new(),
    };
    for op in ops {
        match *op {
            Op::Join => w.join(),
            Op::Leave(i) if !w.members.is_empty() => {
                let c = w.members.remove(i % w.members.len());
                c.commit().unwrap();
                c.close().unwrap();
            }
            Op::Crash(i) if !w.members.is_empty() => {
                drop(w.members.remove(i % w.members.len()));
            }
            Op::Poll(i) if !w.members.is_empty() => {
                let i = i % w.members.len();
                w.poll(i);
            }
            Op::Commit(i) if !w.members.is_empty() => {
                w.members[i % w.members.len()].commit().unwrap();
            }
            Op::CommitAsync(i) if !w.members.is_empty() => {
                w.members[i % w.members.len()]
                    .commit_async(|r| r.unwrap())
                    .unwrap();
            }
            Op::Produce(p, n) => {
                let p = p % w.partitions;
                let batch: Vec<Message> = (0..n).map(|i| Message::new(format!("{i}"))).collect();
                let r = w.store.append("t", p, &batch).unwrap();
                w.produced
                    .extend((r.base_offset..=r.last_offset).map(|o| (p, o)));
            }
            Op::AddPartition if w.partitions < 8 => {
                w.partitions = w.store.add_partitions("t", 1).unwrap();
            }
            _ => {}
        }
        w.check();
    }
    // Everyone left polls (a newcomer if nobody is left) until everything has been delivered.
    if w.members.is_empty() {
        w.join();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.produced.is_subset(&w.delivered) && Instant::now() < deadline {
        for i in 0..w.members.len() {
            w.poll(i);
            w.check();
        }
    }
    let missing: Vec<_> = w.produced.difference(&w.delivered).take(5).collect();
    assert!(missing.is_empty(), "{engine}: never delivered: {missing:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn groups_behave_like_the_model(
        ops in proptest::collection::vec(op(), 1..60),
        sticky in any::<bool>(),
    ) {
        for engine in common::engines() {
            run(engine, sticky, &ops);
        }
    }
}

/// Records who holds each partition, from the rebalance callbacks: `on_assign` runs after a
/// partition was taken, `on_revoke` before it is given up, so two holders at once would show
/// as an assign of a partition someone else still holds.
#[derive(Default)]
struct Holders {
    held: Mutex<HashMap<TopicPartition, String>>,
    violation: AtomicBool,
}

impl RebalanceListener for Holders {
    fn on_assign(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        let mut held = self.held.lock().unwrap();
        for tp in partitions {
            if let Some(other) = held.insert(tp.clone(), consumer.member_id().to_owned()) {
                eprintln!(
                    "{tp} assigned to {} while {other} holds it",
                    consumer.member_id()
                );
                self.violation.store(true, Ordering::SeqCst);
            }
        }
    }
    fn on_revoke(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        consumer.commit().unwrap();
        let mut held = self.held.lock().unwrap();
        for tp in partitions {
            if held.remove(tp).as_deref() != Some(consumer.member_id()) {
                self.violation.store(true, Ordering::SeqCst);
            }
        }
    }
}

#[test]
fn concurrent_members_never_hold_a_partition_together_and_lose_nothing() {
    common::for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &common::small_options(engine)));
        store
            .create_topic("t", TopicConfig::with_partitions(6))
            .unwrap();
        let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let holders = Arc::new(Holders::default());
        let delivered = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    store
                        .append("t", (n % 6) as u32, &[Message::new(format!("{n}"))])
                        .unwrap();
                    n += 1;
                    if n.is_multiple_of(50) {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        };
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let (groups, holders, delivered) =
                    (groups.clone(), Arc::clone(&holders), Arc::clone(&delivered));
                std::thread::spawn(move || {
                    for round in 0..6u32 {
                        let c = Consumer::with_listener(
                            &groups,
                            ConsumerConfig {
                                enable_auto_commit: round.is_multiple_of(2),
                                auto_offset_reset: OffsetReset::Earliest,
                                ..ConsumerConfig::new("g")
                            },
                            Arc::clone(&holders),
                        )
                        .unwrap();
                        c.subscribe(&["t"]).unwrap();
                        let until = Instant::now() + Duration::from_millis(100 + 37 * w);
                        while Instant::now() < until {
                            for r in c.poll(Duration::from_millis(20)).unwrap() {
                                delivered
                                    .lock()
                                    .unwrap()
                                    .insert((r.partition(), r.offset()));
                            }
                        }
                        c.close().unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        producer.join().unwrap();
        assert!(
            !holders.violation.load(Ordering::SeqCst),
            "{engine}: a partition had two holders"
        );
        // A last member picks up the rest: nothing was lost.
        let c = Consumer::new(
            &groups,
            ConsumerConfig {
                auto_offset_reset: OffsetReset::Earliest,
                ..ConsumerConfig::new("g")
            },
        )
        .unwrap();
        c.subscribe(&["t"]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let total: u64 = (0..6).map(|p| store.bounds("t", p).unwrap().end).sum();
        while (delivered.lock().unwrap().len() as u64) < total && Instant::now() < deadline {
            for r in c.poll(Duration::from_millis(50)).unwrap() {
                delivered
                    .lock()
                    .unwrap()
                    .insert((r.partition(), r.offset()));
            }
        }
        assert_eq!(delivered.lock().unwrap().len() as u64, total, "{engine}");
    });
}
