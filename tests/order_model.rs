//! Orderly consumption against a model, on both engines: random members joining, leaving and
//! crashing (renewals stopped, leases expired, dropped without a successful commit), every
//! lease expiring at once, and handlers failing at random. Leases run on a [`ManualClock`], so
//! expiry is an operation, not a sleep.
//!
//! Checked on every handler call and at the end:
//! - no two calls on one partition at once (an in-use flag per partition);
//! - under one fencing token a partition's offsets go on by one (or repeat after a failure);
//!   a new token starts at or above the group's committed offset and never past the highest
//!   offset handled + 1: so per-key order holds (keys map to partitions), re-deliveries are
//!   only restarts from the committed offset, nothing committed is handled again, and nothing
//!   is skipped;
//! - at the end every record was handled and the committed offsets are the partition ends.
//!
//! Cases: `PROPTEST_CASES` (default 6, each on both engines).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duolog::consumer::{ConsumerRecord, GroupCoordinator, OffsetReset};
use duolog::order::{
    ConsumeOrderlyStatus, LeaseOptions, ManualClock, OrderlyConfig, OrderlyConsumer, OrderlyContext,
};
use duolog::{EngineKind, Error, LogStore, Message, TopicConfig};
use proptest::prelude::*;

const PARTITIONS: u32 = 4;
const KEYS: u32 = 8;

#[derive(Clone, Debug)]
enum Op {
    Join,
    Leave(usize),
    Crash(usize),
    ExpireAll,
    Produce(u32),
    Settle(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Join),
        1 => any::<usize>().prop_map(Op::Leave),
        1 => any::<usize>().prop_map(Op::Crash),
        1 => Just(Op::ExpireAll),
        3 => (1u32..40).prop_map(Op::Produce),
        2 => (1u64..20).prop_map(Op::Settle),
    ]
}

#[derive(Default)]
struct PartitionView {
    in_use: bool,
    /// The last call: (offset, token, succeeded).
    last: Option<(u64, u64, bool)>,
    /// The highest offset handled successfully.
    max_done: Option<u64>,
    /// The last offset handled per key.
    per_key: HashMap<Vec<u8>, (u64, u64)>,
}

#[derive(Default)]
struct World {
    parts: Mutex<HashMap<u32, PartitionView>>,
    violations: Mutex<Vec<String>>,
    calls: AtomicU64,
}

impl World {
    fn violation(&self, v: String) {
        self.violations.lock().unwrap().push(v);
    }
}

fn handler(
    world: Arc<World>,
    groups: GroupCoordinator,
    fail_every: u64,
) -> impl Fn(&ConsumerRecord, &OrderlyContext) -> ConsumeOrderlyStatus + Send + Sync + 'static {
    move |r: &ConsumerRecord, ctx: &OrderlyContext| {
        let p = r.partition();
        let o = r.offset();
        let committed = groups
            .committed_offsets("g")
            .get("t")
            .and_then(|t| t.get(&p))
            .copied()
            .unwrap_or(0);
        let n = world.calls.fetch_add(1, Ordering::Relaxed);
        // Fails some first attempts, deterministically per record.
        let fail =
            fail_every > 0 && ctx.attempt == 1 && (o * 7 + u64::from(p)).is_multiple_of(fail_every);
        {
            let mut parts = world.parts.lock().unwrap();
            let v = parts.entry(p).or_default();
            if std::mem::replace(&mut v.in_use, true) {
                world.violation(format!("p{p}: two calls at once at offset {o}"));
            }
            if o < committed {
                world.violation(format!(
                    "p{p}: offset {o} re-handled below committed {committed}"
                ));
            }
            let limit = v.max_done.map_or(0, |m| m + 1);
            if o > limit {
                world.violation(format!("p{p}: offset {o} skips ahead of {limit}"));
            }
            if let Some((lo, lt, ok)) = v.last
                && lt == ctx.fencing_token
            {
                let expected = if ok { lo + 1 } else { lo };
                if o != expected {
                    world.violation(format!(
                        "p{p}: token {lt} went from {lo} (ok {ok}) to {o}, not {expected}"
                    ));
                }
            }
            let key = r.record().key().unwrap_or_default().to_vec();
            if let Some((ko, kt)) = v.per_key.get(&key)
                && *kt == ctx.fencing_token
                && *ko > o
            {
                world.violation(format!("p{p}: key {key:?} went back from {ko} to {o}"));
            }
        }
        if n.is_multiple_of(3) {
            std::thread::yield_now();
        }
        let mut parts = world.parts.lock().unwrap();
        let v = parts.entry(p).or_default();
        v.in_use = false;
        v.last = Some((o, ctx.fencing_token, !fail));
        if !fail {
            v.max_done = Some(v.max_done.map_or(o, |m| m.max(o)));
            let key = r.record().key().unwrap_or_default().to_vec();
            v.per_key.insert(key, (o, ctx.fencing_token));
            ConsumeOrderlyStatus::Success
        } else {
            ConsumeOrderlyStatus::SuspendCurrentQueueAMoment
        }
    }
}

fn run(engine: EngineKind, ops: &[Op], fail_every: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LogStore> =
        Arc::from(duolog::open(dir.path(), common::small_options(engine)).unwrap());
    store
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    let clock = Arc::new(ManualClock::default());
    let world = Arc::new(World::default());
    let config = || {
        let mut c = OrderlyConfig {
            consume_threads: 2,
            commit_interval: Duration::from_millis(5),
            suspend_current_queue_time: Duration::from_millis(1),
            lease: LeaseOptions {
                renew_interval: Duration::from_millis(5),
                expire_after: Duration::from_secs(60),
                clock: clock.clone(),
            },
            ..OrderlyConfig::new("g")
        };
        c.consumer.auto_offset_reset = OffsetReset::Earliest;
        c
    };
    let start = || {
        OrderlyConsumer::start(
            &groups,
            config(),
            &["t"],
            handler(Arc::clone(&world), groups.clone(), fail_every),
        )
        .unwrap()
    };
    let mut members: Vec<OrderlyConsumer> = Vec::new();
    let mut seq = 0u32;
    for op in ops {
        match op {
            Op::Join => members.push(start()),
            Op::Leave(i) if !members.is_empty() => {
                let m = members.remove(i % members.len());
                // After an expiry its final commit may be fenced: a clean error, and the next
                // owner restarts from the committed offset.
                match m.close() {
                    Ok(()) | Err(Error::LeaseLost { .. }) => {}
                    Err(e) => panic!("close: {e}"),
                }
            }
            Op::Crash(i) if !members.is_empty() => {
                let m = members.remove(i % members.len());
                m.stop_renewing();
                clock.advance(Duration::from_secs(61));
                // Its final commit is fenced: what it handled since its last commit is
                // handled again by the next owner.
                drop(m);
            }
            Op::ExpireAll => clock.advance(Duration::from_secs(61)),
            Op::Produce(n) => {
                for _ in 0..*n {
                    let key = seq % KEYS;
                    let msg = Message::new(format!("{seq}")).with_key(format!("k{key}"));
                    store.append("t", key % PARTITIONS, &[msg]).unwrap();
                    seq += 1;
                }
            }
            Op::Settle(ms) => std::thread::sleep(Duration::from_millis(*ms)),
            _ => {}
        }
    }
    if members.is_empty() {
        members.push(start());
    }
    let ends: Vec<u64> = (0..PARTITIONS)
        .map(|p| store.bounds("t", p).unwrap().end)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = {
            let parts = world.parts.lock().unwrap();
            (0..PARTITIONS).all(|p| {
                ends[p as usize] == 0
                    || parts
                        .get(&p)
                        .and_then(|v| v.max_done)
                        .is_some_and(|m| m + 1 == ends[p as usize])
            })
        };
        // Handled, and committed by the holders of the leases (a lease lost after the last
        // record means its partition is handled again from its committed offset first).
        let table = groups.committed_offsets("g");
        let committed = (0..PARTITIONS).all(|p| {
            ends[p as usize] == 0
                || table.get("t").and_then(|t| t.get(&p)) == Some(&ends[p as usize])
        });
        if done && committed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{engine}: not everything handled"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for m in members {
        m.close().unwrap();
    }
    let violations = world.violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "{engine}: {:?}",
        &violations[..violations.len().min(5)]
    );
    let committed = groups.committed_offsets("g");
    for p in 0..PARTITIONS {
        if ends[p as usize] > 0 {
            assert_eq!(
                committed["t"].get(&p),
                Some(&ends[p as usize]),
                "{engine}: p{p}"
            );
        }
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn orderly_groups_behave_like_the_model(
        ops in proptest::collection::vec(op(), 1..24),
        fail_every in prop_oneof![Just(0u64), 3u64..9],
    ) {
        for engine in common::engines() {
            run(engine, &ops, fail_every);
        }
    }
}
