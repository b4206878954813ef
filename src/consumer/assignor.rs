//! Partition assignment strategies for consumer groups: the pluggable [`Assignor`] trait and
//! two implementations, RocketMQ's [`Averagely`] and Kafka's [`Sticky`]. Pure: members and
//! partitions in, an assignment out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

impl TopicPartition {
    /// `topic`-`partition`.
    ///
    /// ```
    /// use duolog::consumer::TopicPartition;
    /// assert_eq!(TopicPartition::new("t", 3).to_string(), "t-3");
    /// ```
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// What an assignor knows of one member.
///
/// ```
/// use duolog::consumer::{MemberSubscription, TopicPartition};
/// let m = MemberSubscription {
///     member_id: "g-000001".into(),
///     topics: ["orders".to_string()].into(),
///     previous: [TopicPartition::new("orders", 0)].into(),
/// };
/// assert!(m.topics.contains("orders"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSubscription {
    /// The member's id (unique in the group; members are handed to the assignor sorted by it).
    pub member_id: String,
    /// The topics it subscribed to.
    pub topics: BTreeSet<String>,
    /// What it was assigned before this rebalance (empty for a new member).
    pub previous: BTreeSet<TopicPartition>,
}

/// A partition assignment strategy (Kafka's `partition.assignment.strategy`, RocketMQ's
/// `AllocateMessageQueueStrategy`). Given the members (sorted by id) and the partition count of
/// every subscribed topic, it returns each member's partitions, in `members`' order. Every
/// partition of a topic must go to exactly one member subscribed to it; the coordinator checks
/// this and refuses an assignment that breaks it.
///
/// ```
/// use std::collections::BTreeMap;
/// use duolog::consumer::{Assignor, MemberSubscription, TopicPartition};
///
/// /// Everything to the first member.
/// #[derive(Debug)]
/// struct Greedy;
/// impl Assignor for Greedy {
///     fn name(&self) -> &str { "greedy" }
///     fn assign(&self, members: &[MemberSubscription], topics: &BTreeMap<String, u32>)
///         -> Vec<Vec<TopicPartition>> {
///         let mut out = vec![Vec::new(); members.len()];
///         for (topic, &n) in topics {
///             if let Some(i) = members.iter().position(|m| m.topics.contains(topic)) {
///                 out[i].extend((0..n).map(|p| TopicPartition::new(topic.clone(), p)));
///             }
///         }
///         out
///     }
/// }
/// let m = MemberSubscription {
///     member_id: "a".into(),
///     topics: ["t".to_string()].into(),
///     previous: Default::default(),
/// };
/// let topics = BTreeMap::from([("t".to_string(), 2)]);
/// assert_eq!(Greedy.assign(&[m], &topics)[0].len(), 2);
/// ```
pub trait Assignor: Send + Sync + fmt::Debug {
    /// The strategy's name; every member of a group must use the same one.
    fn name(&self) -> &str;

    /// Assigns the partitions of `topics` (name → partition count) to `members`.
    fn assign(
        &self,
        members: &[MemberSubscription],
        topics: &BTreeMap<String, u32>,
    ) -> Vec<Vec<TopicPartition>>;
}

/// RocketMQ's `AllocateMessageQueueAveragely`, per topic: the topic's partitions (ascending)
/// and its subscribed members (sorted) are cut into contiguous blocks; the first
/// `partitions mod members` members get one partition more. It ignores previous assignments.
///
/// ```
/// use std::collections::BTreeMap;
/// use duolog::consumer::{Assignor, Averagely, MemberSubscription, TopicPartition};
/// let member = |id: &str| MemberSubscription {
///     member_id: id.into(),
///     topics: ["t".to_string()].into(),
///     previous: Default::default(),
/// };
/// let topics = BTreeMap::from([("t".to_string(), 5)]);
/// let out = Averagely.assign(&[member("a"), member("b")], &topics);
/// let parts = |v: &Vec<TopicPartition>| v.iter().map(|tp| tp.partition).collect::<Vec<_>>();
/// assert_eq!(parts(&out[0]), [0, 1, 2]);
/// assert_eq!(parts(&out[1]), [3, 4]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Averagely;

impl Assignor for Averagely {
    fn name(&self) -> &str {
        "averagely"
    }

    fn assign(
        &self,
        members: &[MemberSubscription],
        topics: &BTreeMap<String, u32>,
    ) -> Vec<Vec<TopicPartition>> {
        let mut out = vec![Vec::new(); members.len()];
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by(|&a, &b| members[a].member_id.cmp(&members[b].member_id));
        for (topic, &count) in topics {
            let subscribed: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&i| members[i].topics.contains(topic))
                .collect();
            let c = subscribed.len() as u64;
            if c == 0 {
                continue;
            }
            let q = u64::from(count);
            let (base, extra) = (q / c, q % c);
            let mut start = 0u64;
            for (index, &m) in subscribed.iter().enumerate() {
                let size = base + u64::from((index as u64) < extra);
                for p in start..start + size {
                    // `p < count`, a u32.
                    out[m].push(TopicPartition::new(topic.clone(), p as u32));
                }
                start += size;
            }
        }
        out
    }
}

/// Kafka's `StickyAssignor`: balance first — no member holds two or more partitions more than
/// another member that could take one of them (subscribed to its topic) — and then keeps as
/// many previous assignments as possible, so a rebalance moves few partitions.
///
/// ```
/// use std::collections::BTreeMap;
/// use duolog::consumer::{Assignor, MemberSubscription, Sticky, TopicPartition};
/// let member = |id: &str, prev: &[u32]| MemberSubscription {
///     member_id: id.into(),
///     topics: ["t".to_string()].into(),
///     previous: prev.iter().map(|&p| TopicPartition::new("t", p)).collect(),
/// };
/// let topics = BTreeMap::from([("t".to_string(), 4)]);
/// // `b` joins a group where `a` held everything: `a` keeps two of its four.
/// let out = Sticky.assign(&[member("a", &[0, 1, 2, 3]), member("b", &[])], &topics);
/// assert_eq!((out[0].len(), out[1].len()), (2, 2));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Sticky;

impl Assignor for Sticky {
    fn name(&self) -> &str {
        "sticky"
    }

    fn assign(
        &self,
        members: &[MemberSubscription],
        topics: &BTreeMap<String, u32>,
    ) -> Vec<Vec<TopicPartition>> {
        let n = members.len();
        let mut held: Vec<BTreeSet<TopicPartition>> = vec![BTreeSet::new(); n];
        let mut owner: BTreeMap<TopicPartition, usize> = BTreeMap::new();
        let eligible = |m: usize, tp: &TopicPartition| members[m].topics.contains(&tp.topic);
        let exists = |tp: &TopicPartition| topics.get(&tp.topic).is_some_and(|&c| tp.partition < c);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| members[a].member_id.cmp(&members[b].member_id));
        // Keep what each member held, if it still exists and the member still wants it (the
        // first claimant wins a partition two members say they held).
        for &m in &order {
            for tp in &members[m].previous {
                if exists(tp) && eligible(m, tp) && !owner.contains_key(tp) {
                    owner.insert(tp.clone(), m);
                    held[m].insert(tp.clone());
                }
            }
        }
        // Give each unowned partition to the eligible member holding the fewest.
        for (topic, &count) in topics {
            for p in 0..count {
                let tp = TopicPartition::new(topic.clone(), p);
                if owner.contains_key(&tp) {
                    continue;
                }
                let best = order
                    .iter()
                    .copied()
                    .filter(|&m| eligible(m, &tp))
                    .min_by_key(|&m| held[m].len());
                if let Some(m) = best {
                    owner.insert(tp.clone(), m);
                    held[m].insert(tp);
                }
            }
        }
        // Balance: move a partition from a member with two or more than an eligible lighter
        // one, preferring partitions the heavy member did not hold before. Each move lowers
        // the sum of squared counts, so this ends.
        loop {
            let mut moved = false;
            let mut by_load = order.clone();
            by_load.sort_by_key(|&m| std::cmp::Reverse(held[m].len()));
            'heavy: for &h in &by_load {
                let mut light = order.clone();
                light.sort_by_key(|&m| held[m].len());
                for &l in &light {
                    if held[h].len() < held[l].len() + 2 {
                        break;
                    }
                    let pick = {
                        let movable = || held[h].iter().filter(|tp| eligible(l, tp));
                        movable()
                            .find(|tp| !members[h].previous.contains(*tp))
                            .or_else(|| movable().next())
                            .cloned()
                    };
                    if let Some(tp) = pick {
                        held[h].remove(&tp);
                        held[l].insert(tp);
                        moved = true;
                        break 'heavy;
                    }
                }
            }
            if !moved {
                break;
            }
        }
        held.into_iter().map(|s| s.into_iter().collect()).collect()
    }
}

/// Checks an assignor's answer: one list per member, every partition of every topic some
/// member subscribes to assigned exactly once, only to members subscribed to its topic.
pub(crate) fn check_assignment(
    members: &[MemberSubscription],
    topics: &BTreeMap<String, u32>,
    assignment: &[Vec<TopicPartition>],
) -> Result<(), String> {
    if assignment.len() != members.len() {
        return Err(format!(
            "{} lists for {} members",
            assignment.len(),
            members.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for (m, parts) in members.iter().zip(assignment) {
        for tp in parts {
            if !m.topics.contains(&tp.topic) {
                return Err(format!(
                    "{tp} given to {}, not subscribed to it",
                    m.member_id
                ));
            }
            if topics.get(&tp.topic).is_none_or(|&c| tp.partition >= c) {
                return Err(format!("{tp} does not exist"));
            }
            if !seen.insert(tp.clone()) {
                return Err(format!("{tp} assigned twice"));
            }
        }
    }
    for (topic, &count) in topics {
        if members.iter().any(|m| m.topics.contains(topic)) {
            for p in 0..count {
                if !seen.contains(&TopicPartition::new(topic.clone(), p)) {
                    return Err(format!("{topic}-{p} left unassigned"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, topics: &[&str], prev: &[(&str, u32)]) -> MemberSubscription {
        MemberSubscription {
            member_id: id.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            previous: prev
                .iter()
                .map(|(t, p)| TopicPartition::new(*t, *p))
                .collect(),
        }
    }

    #[test]
    fn averagely_is_rocketmqs_contiguous_blocks() {
        let topics = BTreeMap::from([("t".to_string(), 8)]);
        let members = [
            member("c", &["t"], &[]),
            member("a", &["t"], &[]),
            member("b", &["t"], &[]),
        ];
        let out = Averagely.assign(&members, &topics);
        let parts = |i: usize| out[i].iter().map(|tp| tp.partition).collect::<Vec<_>>();
        // Sorted a, b, c: 3, 3, 2.
        assert_eq!(parts(1), [0, 1, 2]);
        assert_eq!(parts(2), [3, 4, 5]);
        assert_eq!(parts(0), [6, 7]);
        // More members than partitions: the last ones get nothing.
        let topics = BTreeMap::from([("t".to_string(), 2)]);
        let out = Averagely.assign(&members, &topics);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [0, 1, 1]);
    }

    #[test]
    fn sticky_keeps_what_it_can_and_balances() {
        let topics = BTreeMap::from([("t".to_string(), 6)]);
        let members = [
            member("a", &["t"], &[("t", 0), ("t", 1), ("t", 2)]),
            member("b", &["t"], &[("t", 3), ("t", 4), ("t", 5)]),
            member("c", &["t"], &[]),
        ];
        let out = Sticky.assign(&members, &topics);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2]);
        // Four of six stay where they were.
        let kept: usize = out
            .iter()
            .zip(&members)
            .map(|(o, m)| o.iter().filter(|tp| m.previous.contains(*tp)).count())
            .sum();
        assert_eq!(kept, 4);
    }

    fn arb_members() -> impl Strategy<Value = (Vec<MemberSubscription>, BTreeMap<String, u32>)> {
        let topics = proptest::collection::btree_map("[a-c]", 0u32..7, 1..3);
        topics.prop_flat_map(|topics| {
            let names: Vec<String> = topics.keys().cloned().collect();
            let member = (
                proptest::sample::subsequence(names.clone(), 0..=names.len()),
                proptest::collection::vec((proptest::sample::select(names.clone()), 0u32..8), 0..6),
            );
            proptest::collection::vec(member, 0..5).prop_map(move |ms| {
                let members = ms
                    .into_iter()
                    .enumerate()
                    .map(|(i, (subs, prev))| MemberSubscription {
                        member_id: format!("m{i}"),
                        topics: subs.into_iter().collect(),
                        previous: prev
                            .into_iter()
                            .map(|(t, p)| TopicPartition::new(t, p))
                            .collect(),
                    })
                    .collect();
                (members, topics.clone())
            })
        })
    }

    proptest! {
        #[test]
        fn both_assign_every_partition_exactly_once((members, topics) in arb_members()) {
            for a in [&Averagely as &dyn Assignor, &Sticky] {
                let out = a.assign(&members, &topics);
                prop_assert!(check_assignment(&members, &topics, &out).is_ok(),
                    "{}: {:?}", a.name(), check_assignment(&members, &topics, &out));
            }
            // Sticky's balance: no member holds 2+ more than one that could take a partition.
            let out = Sticky.assign(&members, &topics);
            for (h, hp) in out.iter().enumerate() {
                for (l, lp) in out.iter().enumerate() {
                    if hp.len() >= lp.len() + 2 {
                        prop_assert!(hp.iter().all(|tp| !members[l].topics.contains(&tp.topic)),
                            "{h} holds {} and {l} {}", hp.len(), lp.len());
                    }
                }
            }
        }
    }
}
