//! The delay layer against a model: random schedules (some past the wheel's window), cancels,
//! clock moves, pumps and reopens on both engines, with a 16-slot wheel and rounds of 3
//! entries. After every pump each message whose slot has come is delivered exactly once
//! unless cancelled, none before its slot, a cancelled one never; a cancel of a message not yet
//! due succeeds. Cases: `DUOLOG_DELAY_CASES` (default 12).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{engines, read_all, small_options};
use duolog::delay::{Clock, DELAY_ID, DelayHandle, DelayOptions, DelayQueue, ManualClock};
use duolog::{LogStore, Message, TopicConfig};
use proptest::prelude::*;

const T0: i64 = 1_700_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Schedule(i64),
    Cancel(usize),
    Advance(i64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop_oneof![0i64..20_000, 0i64..60_000, -5_000i64..0].prop_map(Op::Schedule),
        2 => any::<usize>().prop_map(Op::Cancel),
        4 => (0i64..4_000).prop_map(Op::Advance),
        1 => Just(Op::Reopen),
    ]
}

fn cases() -> u32 {
    std::env::var("DUOLOG_DELAY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

fn slot(ms: i64) -> i64 {
    ms.div_euclid(1000) * 1000 + if ms.rem_euclid(1000) != 0 { 1000 } else { 0 }
}

fn open_queue(store: &Arc<dyn LogStore>, clock: &Arc<ManualClock>) -> DelayQueue {
    DelayQueue::open(
        Arc::clone(store),
        DelayOptions {
            clock: clock.clone(),
            background: false,
            wheel_slots: 16,
            max_round: 3,
            ..DelayOptions::default()
        },
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]
    #[test]
    fn the_layer_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        for engine in engines() {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn LogStore> =
                Arc::from(duolog::open(dir.path(), small_options(engine)).unwrap());
            store.create_topic("t", TopicConfig::default()).unwrap();
            let clock = Arc::new(ManualClock::new(T0));
            let mut q = open_queue(&store, &clock);
            // id → (handle, cancelled, scheduled at)
            let mut model: BTreeMap<u64, (DelayHandle, bool, i64)> = BTreeMap::new();
            for op in &ops {
                let now = clock.now_ms();
                match op {
                    Op::Schedule(d) => {
                        let h = q.schedule("t", 0, Message::new("x"), now + d).unwrap();
                        model.insert(h.id, (h, false, now));
                    }
                    Op::Cancel(i) => {
                        if model.is_empty() { continue; }
                        let id = *model.keys().nth(i % model.len()).unwrap();
                        let (h, cancelled, _) = model[&id];
                        let result = q.cancel(h);
                        if result.is_ok() {
                            prop_assert!(!cancelled, "{engine}: cancelled twice: {h}");
                            model.get_mut(&id).unwrap().1 = true;
                        } else if !cancelled {
                            prop_assert!(slot(h.deliver_at_ms) <= now,
                                "{engine}: a cancel of {h} not yet due at {now} failed: {result:?}");
                        }
                    }
                    Op::Advance(ms) => clock.set(now + ms),
                    Op::Reopen => {
                        q.close().unwrap();
                        q = open_queue(&store, &clock);
                    }
                }
                q.pump().unwrap();
                let now = clock.now_ms();
                let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
                for r in read_all(&*store, "t", 0) {
                    let id: u64 = r.properties().get(DELAY_ID).unwrap().parse().unwrap();
                    *seen.entry(id).or_default() += 1;
                }
                for (id, (h, cancelled, at)) in &model {
                    let n = seen.get(id).copied().unwrap_or(0);
                    // A message scheduled already due may miss the slot being processed when
                    // it came: it then goes out at the next slot boundary.
                    let surely_by = slot(h.deliver_at_ms).max(slot(*at + 1));
                    if *cancelled {
                        prop_assert_eq!(n, 0, "{}: cancelled {} delivered", engine, h);
                    } else if surely_by <= now {
                        prop_assert_eq!(n, 1, "{}: {} due by {} delivered {} times", engine, h, now, n);
                    } else if slot(h.deliver_at_ms) <= now {
                        prop_assert!(n <= 1, "{}: {} delivered {} times", engine, h, n);
                    } else {
                        prop_assert_eq!(n, 0, "{}: {} delivered early at {}", engine, h, now);
                    }
                }
                prop_assert!(seen.keys().all(|id| model.contains_key(id)));
            }
        }
    }
}
