//! The timer wheel: `slots` slots, each the head of one slot time's backward chain of
//! timer-log entries. In memory only, rebuilt from the timer log at open; its size is fixed by the
//! options (nothing per pending message; the open slot's pending entries are kept apart, in the
//! delivery state).

use std::collections::BTreeSet;

use super::codec::NO_ENTRY;

/// One slot: the due time it holds (valid only if it matches the time asked for, so a slot
/// reused by a later lap of the wheel reads as empty), its oldest and newest entry, and how
/// many entries (cancels among them) are pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) time: i64,
    pub(crate) first: u64,
    pub(crate) last: u64,
    pub(crate) count: u32,
    pub(crate) cancels: u32,
}

const EMPTY: Slot = Slot {
    time: i64::MIN,
    first: NO_ENTRY,
    last: NO_ENTRY,
    count: 0,
    cancels: 0,
};

#[derive(Debug)]
pub(crate) struct Wheel {
    precision: i64,
    slots: Vec<Slot>,
    /// Due times of the non-empty slots, to find the next due one without a sweep (at most
    /// `slots` entries).
    occupied: BTreeSet<i64>,
    /// (oldest entry, due time) of each non-empty slot: the scan start of a rebuild.
    by_first: BTreeSet<(u64, i64)>,
}

impl Wheel {
    pub(crate) fn new(precision_ms: i64, slots: u32) -> Wheel {
        Wheel {
            precision: precision_ms,
            slots: vec![EMPTY; slots as usize],
            occupied: BTreeSet::new(),
            by_first: BTreeSet::new(),
        }
    }

    fn index(&self, time: i64) -> usize {
        (time.div_euclid(self.precision)).rem_euclid(self.slots.len() as i64) as usize
    }

    /// The slot of `time`, if it holds anything.
    pub(crate) fn get(&self, time: i64) -> Option<Slot> {
        let s = self.slots[self.index(time)];
        (s.time == time && s.count > 0).then_some(s)
    }

    /// The newest entry of `time`'s slot (the `prev` of an entry added next), or `NO_ENTRY`.
    pub(crate) fn last(&self, time: i64) -> u64 {
        self.get(time).map_or(NO_ENTRY, |s| s.last)
    }

    /// Adds the entry at timer-log offset `entry` to `time`'s slot. The caller keeps every
    /// pending time within one lap of the wheel, so a valid slot is never overwritten.
    /// Returns `false` (adding nothing) if the slot holds another due time's entries.
    #[must_use]
    pub(crate) fn add(&mut self, time: i64, entry: u64, cancel: bool) -> bool {
        let i = self.index(time);
        let s = &mut self.slots[i];
        if s.time != time && s.count > 0 {
            return false;
        }
        if s.time != time || s.count == 0 {
            *s = Slot {
                time,
                first: entry,
                ..EMPTY
            };
            self.occupied.insert(time);
            self.by_first.insert((entry, time));
        }
        s.last = entry;
        s.count += 1;
        s.cancels += u32::from(cancel);
        true
    }

    /// `done` entries of `time`'s slot (`cancels` of them cancels), anywhere in its chain, are
    /// processed. The chain keeps them (it is walked from its newest entry, skipping what the
    /// caller knows is done) until the slot is empty; its oldest entry stays as it was (a
    /// lower scan start is only conservative).
    pub(crate) fn consume(&mut self, time: i64, done: u32, cancels: u32) {
        let i = self.index(time);
        let s = &mut self.slots[i];
        if s.time != time || s.count == 0 {
            return;
        }
        if done >= s.count {
            self.occupied.remove(&time);
            self.by_first.remove(&(s.first, time));
            *s = EMPTY;
        } else {
            s.count -= done;
            s.cancels = s.cancels.saturating_sub(cancels);
        }
    }

    /// The earliest due time with pending entries.
    pub(crate) fn next_due(&self) -> Option<i64> {
        self.occupied.first().copied()
    }

    /// Due times with pending entries, in order, from `from` on.
    pub(crate) fn due_from(&self, from: i64) -> impl Iterator<Item = i64> + '_ {
        self.occupied.range(from..).copied()
    }

    /// The earliest and latest due times with pending entries.
    pub(crate) fn span(&self) -> Option<(i64, i64)> {
        Some((*self.occupied.first()?, *self.occupied.last()?))
    }

    /// The timer-log offset of the oldest pending entry.
    pub(crate) fn oldest_entry(&self) -> Option<u64> {
        self.by_first.first().map(|(e, _)| *e)
    }

    /// Pending slots in due order.
    pub(crate) fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.occupied.iter().filter_map(|t| self.get(*t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn cases() -> u32 {
        std::env::var("DUOLOG_WHEEL_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64)
    }

    #[derive(Clone, Debug)]
    enum Op {
        Add(i64, bool),
        Consume(u32),
        Advance(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0i64..40, any::<bool>()).prop_map(|(d, c)| Op::Add(d, c)),
            2 => (1u32..4).prop_map(Op::Consume),
            1 => (1i64..10).prop_map(Op::Advance),
        ]
    }

    /// A slot of the model: entries added since it was last empty (oldest first) and which
    /// of them are still pending.
    #[derive(Default)]
    struct ModelSlot {
        added: Vec<(u64, bool)>,
        pending: Vec<bool>,
    }

    impl ModelSlot {
        fn count(&self) -> usize {
            self.pending.iter().filter(|p| **p).count()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]
        /// The wheel against a BTreeMap of due time → entries: times kept within one lap of a
        /// 64-slot wheel, entries consumed anywhere in a slot (oldest pending first here).
        #[test]
        fn wheel_matches_a_sorted_map(ops in proptest::collection::vec(op(), 1..200)) {
            let p = 10;
            let mut wheel = Wheel::new(p, 64);
            let mut model: BTreeMap<i64, ModelSlot> = BTreeMap::new();
            let mut floor = 0i64; // first slot open for new entries
            let mut next_entry = 0u64;
            for op in ops {
                match op {
                    Op::Add(d, cancel) => {
                        let t = floor + d * p;
                        let prev = wheel.last(t);
                        let expect = model.get(&t).and_then(|v| v.added.last()).map_or(NO_ENTRY, |e| e.0);
                        prop_assert_eq!(prev, expect);
                        prop_assert!(wheel.add(t, next_entry, cancel));
                        let slot = model.entry(t).or_default();
                        slot.added.push((next_entry, cancel));
                        slot.pending.push(true);
                        next_entry += 1;
                    }
                    Op::Consume(n) => {
                        if let Some((&t, v)) = model.iter_mut().next() {
                            prop_assert_eq!(wheel.next_due(), Some(t));
                            let (mut done, mut cancels) = (0u32, 0u32);
                            for (i, pending) in v.pending.iter_mut().enumerate() {
                                if *pending && done < n {
                                    *pending = false;
                                    done += 1;
                                    cancels += u32::from(v.added[i].1);
                                }
                            }
                            wheel.consume(t, done, cancels);
                            if v.count() == 0 { model.remove(&t); }
                            floor = floor.max(t + p);
                        }
                    }
                    Op::Advance(k) => {
                        let to = floor + k * p;
                        if model.keys().next().is_none_or(|&t| t >= to) { floor = to; }
                    }
                }
                prop_assert_eq!(wheel.next_due(), model.keys().next().copied());
                prop_assert_eq!(wheel.oldest_entry(), model.values().filter_map(|v| v.added.first()).map(|e| e.0).min());
                for (t, v) in &model {
                    let s = wheel.get(*t).expect("pending slot present");
                    prop_assert_eq!(s.count as usize, v.count());
                    let cancels = v.added.iter().zip(&v.pending).filter(|(e, p)| e.1 && **p).count();
                    prop_assert_eq!(s.cancels as usize, cancels);
                    prop_assert_eq!(s.last, v.added.last().unwrap().0);
                }
                let listed: Vec<i64> = wheel.slots().map(|s| s.time).collect();
                let expected: Vec<i64> = model.keys().copied().collect();
                prop_assert_eq!(listed, expected);
            }
        }
    }
}
