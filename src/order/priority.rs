//! Priority delivery (RocketMQ RIP-80): a message carries a priority 0–9 in the
//! [`PRIORITY_PROPERTY`] property, a priority topic maps priorities onto partitions, and a
//! [`PriorityConsumer`] drains higher priorities first while a backlog exists.
//!
//! **The mapping.** A priority topic has `P` partitions, `P` from 1 to 10 or a multiple of
//! 10. With `P ≤ 10`, priority `p` goes to partition `p × P / 10` (rounded down): ten
//! priorities in `P` bands, a higher partition holding higher priorities (`P = 10`: partition
//! `p`; `P = 2`: 0–4 on partition 0, 5–9 on partition 1). With `P = 10k`, priority `p` owns
//! the `k` partitions `p×k .. p×k+k`; a keyed message goes to the one its key hashes to
//! (Kafka's murmur2), so per-key order holds within a priority, and an unkeyed one round
//! robin. Growing the topic changes the mapping (as it moves keys, see the selector docs).
//!
//! **What priority promises** (RIP-80's non-goals are ours): it matters only while a backlog
//! exists. There is no absolute order: a message of priority 3 already delivered is not
//! recalled when one of priority 9 arrives, and records of one poll come from one band.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::selector::{OrderedProducer, PartitionSelector};
use crate::consumer::{
    Consumer, ConsumerConfig, ConsumerRecord, GroupCoordinator, RECONSUME_TIMES, TopicPartition,
    Tracer,
};
use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;
use crate::store::{LogStore, Message, Record, TopicConfig};

/// The property holding a message's priority, `0` to `9` in decimal (RIP-80 keeps it in the
/// message's system properties; JMS's range).
pub const PRIORITY_PROPERTY: &str = "PRIORITY";
/// The highest priority (JMS: 9). The lowest is 0.
pub const MAX_PRIORITY: u8 = 9;
/// How many priorities there are (0 to [`MAX_PRIORITY`]).
pub const PRIORITY_LEVELS: u32 = 10;

fn check_priority(priority: u8) -> Result<()> {
    if priority > MAX_PRIORITY {
        return Err(Error::InvalidArgument(format!(
            "a priority is 0 to {MAX_PRIORITY}, not {priority}"
        )));
    }
    Ok(())
}

fn check_partitions(partitions: u32) -> Result<()> {
    if partitions == 0
        || (partitions > PRIORITY_LEVELS && !partitions.is_multiple_of(PRIORITY_LEVELS))
    {
        return Err(Error::InvalidArgument(format!(
            "a priority topic has 1 to {PRIORITY_LEVELS} partitions or a multiple of \
             {PRIORITY_LEVELS}, not {partitions}"
        )));
    }
    Ok(())
}

/// The partitions priority `priority` maps onto in a priority topic of `partitions`
/// partitions (see the module docs). An out-of-range priority or a partition count that is
/// neither 1–10 nor a multiple of 10 is [`InvalidArgument`](Error::InvalidArgument).
///
/// ```
/// use duolog::order::priority_partition_range;
/// assert_eq!(priority_partition_range(9, 10)?, 9..10);
/// assert_eq!(priority_partition_range(4, 2)?, 0..1);
/// assert_eq!(priority_partition_range(5, 2)?, 1..2);
/// assert_eq!(priority_partition_range(3, 20)?, 6..8);
/// assert!(priority_partition_range(10, 10).is_err());
/// assert!(priority_partition_range(1, 15).is_err());
/// # Ok::<(), duolog::Error>(())
/// ```
pub fn priority_partition_range(priority: u8, partitions: u32) -> Result<Range<u32>> {
    check_priority(priority)?;
    check_partitions(partitions)?;
    let p = u32::from(priority);
    if partitions <= PRIORITY_LEVELS {
        let start = p * partitions / PRIORITY_LEVELS;
        Ok(start..start + 1)
    } else {
        let width = partitions / PRIORITY_LEVELS;
        Ok(p * width..p * width + width)
    }
}

/// The band of `partition` in a priority topic of `partitions` partitions: higher bands hold
/// higher priorities (with up to 10 partitions the partition itself, else
/// `partition / (partitions / 10)`). Defined for any count, so a consumer keeps ranking a
/// topic someone grew to an odd count.
///
/// ```
/// use duolog::order::priority_band;
/// assert_eq!(priority_band(7, 10), 7);
/// assert_eq!(priority_band(7, 20), 3);
/// ```
pub fn priority_band(partition: u32, partitions: u32) -> u32 {
    if partitions <= PRIORITY_LEVELS {
        partition
    } else {
        partition / (partitions / PRIORITY_LEVELS)
    }
}

/// The priority a record carries, if it has a valid one.
///
/// ```
/// use duolog::{LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
/// use duolog::order::{PRIORITY_PROPERTY, message_priority};
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = duolog::open(dir.path(), StoreOptions::default())?;
/// store.create_topic("t", TopicConfig::default())?;
/// store.append("t", 0, &[Message::new("x").with_property(PRIORITY_PROPERTY, "7")])?;
/// assert_eq!(message_priority(&store.read("t", 0, 0, ReadLimits::default())?[0]), Some(7));
/// # Ok(()) }
/// ```
pub fn message_priority(record: &Record) -> Option<u8> {
    parse_priority(record.properties().get(PRIORITY_PROPERTY)?)
}

fn parse_priority(value: &str) -> Option<u8> {
    value.parse::<u8>().ok().filter(|p| *p <= MAX_PRIORITY)
}

/// Creates `name` as a priority topic of `partitions` partitions (1 to 10, or a multiple of
/// 10; see the module docs for the mapping) with `config`'s other configs.
///
/// ```
/// use duolog::{LogStore, StoreOptions, TopicConfig};
/// use duolog::order::create_priority_topic;
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = duolog::open(dir.path(), StoreOptions::default())?;
/// create_priority_topic(&*store, "jobs", 10, TopicConfig::default())?;
/// assert!(create_priority_topic(&*store, "odd", 12, TopicConfig::default()).is_err());
/// # Ok(()) }
/// ```
pub fn create_priority_topic<S: LogStore + ?Sized>(
    store: &S,
    name: &str,
    partitions: u32,
    config: TopicConfig,
) -> Result<()> {
    check_partitions(partitions)?;
    store.create_topic(
        name,
        TopicConfig {
            partitions,
            ..config
        },
    )
}

/// Routes by the [`PRIORITY_PROPERTY`] of the message (see the module docs).
#[derive(Default)]
struct PrioritySelector {
    /// One round-robin counter per priority: a shared one would, with interleaved
    /// priorities, land every message of a priority on the same partition of its band.
    round_robin: [AtomicU64; PRIORITY_LEVELS as usize],
}

impl PartitionSelector for PrioritySelector {
    fn select(&self, message: &Message, _: &dyn Any, partitions: u32) -> Result<u32> {
        let value = message
            .properties
            .iter()
            .rev()
            .find(|(k, _)| k == PRIORITY_PROPERTY)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                Error::InvalidArgument(format!("the message has no {PRIORITY_PROPERTY}"))
            })?;
        let priority = parse_priority(value).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{PRIORITY_PROPERTY} is 0 to {MAX_PRIORITY}, not {value:?}"
            ))
        })?;
        let band = priority_partition_range(priority, partitions)?;
        let width = band.end - band.start;
        let within = match &message.key {
            Some(key) => partition_for_key(key, width),
            None => {
                let n = self.round_robin[usize::from(priority)].fetch_add(1, Ordering::Relaxed);
                (n % u64::from(width)) as u32
            }
        };
        Ok(band.start + within)
    }
}

/// Appends messages with a priority to a priority topic: sets [`PRIORITY_PROPERTY`] and picks
/// the partition of the priority's band (an [`OrderedProducer`] underneath, so the partition
/// count is cached and refreshed the same way).
///
/// ```
/// use std::sync::Arc;
/// use duolog::{LogStore, Message, StoreOptions, TopicConfig};
/// use duolog::order::{PriorityProducer, create_priority_topic};
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// create_priority_topic(&*store, "jobs", 10, TopicConfig::default())?;
/// let producer = PriorityProducer::new(store, "jobs")?;
/// assert_eq!(producer.send(&Message::new("urgent"), 9)?.0, 9);
/// assert!(producer.send(&Message::new("too urgent"), 10).is_err());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PriorityProducer {
    inner: OrderedProducer,
}

impl PriorityProducer {
    /// A producer for the priority topic `topic`; an unknown topic is
    /// [`UnknownTopic`](Error::UnknownTopic), a count that is neither 1–10 nor a multiple of 10
    /// [`InvalidArgument`](Error::InvalidArgument).
    pub fn new(store: Arc<dyn LogStore>, topic: impl Into<String>) -> Result<PriorityProducer> {
        let inner = OrderedProducer::new(store, topic, PrioritySelector::default())?;
        check_partitions(inner.partitions())?;
        Ok(PriorityProducer { inner })
    }

    /// Appends `message` with `priority` (0–9, else [`InvalidArgument`](Error::InvalidArgument)
    /// and nothing appended); returns (partition, offset). A [`PRIORITY_PROPERTY`] the message
    /// already had is replaced.
    pub fn send(&self, message: &Message, priority: u8) -> Result<(u32, u64)> {
        check_priority(priority)?;
        self.inner.send(&with_priority(message, priority))
    }

    /// Appends a batch, every message with `priority`; the messages of one partition in one
    /// append (see [`OrderedProducer::send_batch`]).
    pub fn send_batch(
        &self,
        messages: &[Message],
        priority: u8,
    ) -> Result<Vec<(u32, crate::store::AppendResult)>> {
        check_priority(priority)?;
        let batch: Vec<Message> = messages
            .iter()
            .map(|m| with_priority(m, priority))
            .collect();
        self.inner.send_batch(&batch)
    }
}

fn with_priority(message: &Message, priority: u8) -> Message {
    let mut m = message.clone();
    m.properties.retain(|(k, _)| k != PRIORITY_PROPERTY);
    m.properties
        .push((PRIORITY_PROPERTY.to_owned(), priority.to_string()));
    m
}

/// Options of a [`PriorityConsumer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriorityConfig {
    /// The aging rule: a held partition that has had a backlog and been passed over (no record
    /// of it delivered) for this long is served by the next poll whatever its priority — the
    /// one waiting longest first, alone. So under a constant flood of high priorities a lower
    /// one still gets a poll's worth of records at least once per `max_starvation`.
    /// `Duration::MAX` turns aging off (strict priority: a lower band waits as long as a
    /// higher one has a backlog). Zero is [`InvalidArgument`](Error::InvalidArgument) (it
    /// would be no priority at all: use a plain [`Consumer`]). Default: 10 s.
    pub max_starvation: Duration,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        PriorityConfig {
            max_starvation: Duration::from_secs(10),
        }
    }
}

impl PriorityConfig {
    fn validate(&self) -> Result<()> {
        if self.max_starvation.is_zero() {
            return Err(Error::InvalidArgument(
                "max_starvation must be positive (Duration::MAX: never age)".into(),
            ));
        }
        Ok(())
    }
}

/// A pull consumer of a priority topic that drains higher priorities first while a backlog
/// exists (RIP-80), with a documented aging rule against starvation
/// ([`PriorityConfig::max_starvation`]).
///
/// Each [`poll`](Self::poll) looks at the backlog of every held partition (its last stable
/// offset minus the consumer's position, from [`bounds`](LogStore::bounds)) and serves one
/// band: a starved partition if any (aging), else the highest band with a backlog; it pauses
/// the others for the fetch (it owns the wrapped consumer's pause state: every partition is
/// resumed when `poll` returns). With no backlog it waits on every held partition and returns
/// the highest band of what arrived, putting the rest back (a seek to where they started).
/// Positions, commits and rebalances are the wrapped [`Consumer`]'s ([`consumer`](Self::consumer)).
/// A [`ConsumerConfig::trace`] is kept by the priority consumer, not passed to the wrapped one:
/// a `SubBefore` event is recorded for each record [`poll`](Self::poll) returns, never for the
/// records of lower bands it fetched and put back.
/// Partitions of other topics the consumer holds rank below every priority.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use duolog::{LogStore, Message, StoreOptions, TopicConfig};
/// use duolog::consumer::{ConsumerConfig, GroupCoordinator, OffsetReset};
/// use duolog::order::{PriorityConfig, PriorityConsumer, PriorityProducer, create_priority_topic};
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// create_priority_topic(&*store, "jobs", 10, TopicConfig::default())?;
/// let producer = PriorityProducer::new(Arc::clone(&store), "jobs")?;
/// producer.send(&Message::new("later"), 1)?;
/// producer.send(&Message::new("now"), 8)?;
/// let groups = GroupCoordinator::new(store)?;
/// let config = ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::new("workers") };
/// let consumer = PriorityConsumer::new(&groups, config, "jobs", PriorityConfig::default())?;
/// consumer.subscribe()?;
/// assert_eq!(consumer.poll(Duration::from_secs(5))?[0].record().body(), b"now");
/// assert_eq!(consumer.poll(Duration::from_secs(5))?[0].record().body(), b"later");
/// consumer.commit()?;
/// # Ok(()) }
/// ```
pub struct PriorityConsumer {
    consumer: Consumer,
    store: Arc<dyn LogStore>,
    topic: String,
    config: PriorityConfig,
    /// The message trace, taken from the consumer's config: the wrapped consumer would trace
    /// every record it fetches, put-back ones included.
    trace: Option<Arc<Tracer>>,
    /// Since when each held partition with a backlog has been passed over.
    waiting: Mutex<HashMap<TopicPartition, Instant>>,
}

impl fmt::Debug for PriorityConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriorityConsumer")
            .field("topic", &self.topic)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one poll decided to fetch.
enum Serve {
    /// These partitions alone, at once.
    Only(Vec<TopicPartition>),
    /// Whatever arrives on any held partition, waiting for it.
    Any,
}

impl PriorityConsumer {
    /// A pull consumer of `groups` with `consumer` settings, consuming the priority topic
    /// `topic`. An unknown topic is [`UnknownTopic`](Error::UnknownTopic); bad options are
    /// [`InvalidArgument`](Error::InvalidArgument).
    pub fn new(
        groups: &GroupCoordinator,
        mut consumer: ConsumerConfig,
        topic: impl Into<String>,
        config: PriorityConfig,
    ) -> Result<PriorityConsumer> {
        config.validate()?;
        let topic = topic.into();
        let store = Arc::clone(groups.store());
        store.describe_topic(&topic)?;
        let trace = consumer.trace.take();
        Ok(PriorityConsumer {
            trace,
            consumer: Consumer::new(groups, consumer)?,
            store,
            topic,
            config,
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// The wrapped pull consumer: `position`, `seek`, `committed`, `commit_offsets`,
    /// `assignment`… (its `pause` state is this consumer's to manage).
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// Subscribes the consumer to the topic as a member of its group.
    pub fn subscribe(&self) -> Result<()> {
        self.consumer.subscribe(&[self.topic.as_str()])
    }

    /// Assigns the consumer every partition of the topic, outside group management.
    pub fn assign_all(&self) -> Result<()> {
        let n = self.store.describe_topic(&self.topic)?.partitions;
        let parts: Vec<(&str, u32)> = (0..n).map(|p| (self.topic.as_str(), p)).collect();
        self.consumer.assign(&parts)
    }

    /// Commits the positions of every held partition (the consumer's
    /// [`commit`](Consumer::commit)).
    pub fn commit(&self) -> Result<()> {
        self.consumer.commit()
    }

    /// Closes the consumer (committing if auto-commit is on).
    pub fn close(&self) -> Result<()> {
        self.consumer.close()
    }

    fn rank(&self, tp: &TopicPartition, partitions: u32) -> i64 {
        if tp.topic == self.topic {
            i64::from(priority_band(tp.partition, partitions))
        } else {
            -1
        }
    }

    /// Returns records of one band, at most `max_poll_records`, blocking at most `timeout`
    /// when no held partition has a backlog (see the type docs for which band).
    pub fn poll(&self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let result = self.poll_inner(timeout);
        // Leave no partition paused behind: the consumer is the caller's again between polls.
        let held: Vec<TopicPartition> = self.consumer.assignment();
        let parts: Vec<(&str, u32)> = held
            .iter()
            .map(|t| (t.topic.as_str(), t.partition))
            .collect();
        let resumed = self.consumer.resume(&parts);
        // The poll's own error first: it is the one that explains what went wrong.
        let records = result?;
        match resumed {
            Ok(()) | Err(Error::NotAssigned { .. }) => Ok(records),
            Err(e) => Err(e),
        }
    }

    fn poll_inner(&self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = crate::clock::deadline(timeout);
        let store = &*self.store;
        // Bands whose fetch returned nothing in this call (a filter skipped everything, or
        // records past the last stable offset): not chosen again until the call ends, so one
        // such band cannot hold the others up until the timeout.
        let mut stalled: HashSet<TopicPartition> = HashSet::new();
        loop {
            let partitions = store.describe_topic(&self.topic)?.partitions;
            let held = self.consumer.assignment();
            let serve = self.choose(store, &held, partitions, &stalled)?;
            let remaining = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            let (records, only) = match &serve {
                Serve::Only(parts) => {
                    let others: Vec<(&str, u32)> = held
                        .iter()
                        .filter(|t| !parts.contains(t))
                        .map(|t| (t.topic.as_str(), t.partition))
                        .collect();
                    let mine: Vec<(&str, u32)> = parts
                        .iter()
                        .map(|t| (t.topic.as_str(), t.partition))
                        .collect();
                    self.consumer.pause(&others)?;
                    self.consumer.resume(&mine)?;
                    (self.consumer.poll(Duration::ZERO)?, Some(parts))
                }
                Serve::Any => {
                    let all: Vec<(&str, u32)> = held
                        .iter()
                        .map(|t| (t.topic.as_str(), t.partition))
                        .collect();
                    self.consumer.resume(&all)?;
                    (self.consumer.poll(remaining)?, None)
                }
            };
            let keep_rank = match only {
                // A rebalance inside the poll may have added unpaused partitions: keep only
                // the chosen ones.
                Some(parts) => records
                    .iter()
                    .filter(|r| parts.contains(&tp_of(r)))
                    .map(|r| self.rank(&tp_of(r), partitions))
                    .max(),
                None => records
                    .iter()
                    .map(|r| self.rank(&tp_of(r), partitions))
                    .max(),
            };
            let joined_now = held.is_empty() && !records.is_empty();
            let (kept, put_back) = records.into_iter().partition::<Vec<_>, _>(|r| {
                let tp = tp_of(r);
                !joined_now
                    && Some(self.rank(&tp, partitions)) == keep_rank
                    && only.is_none_or(|parts| parts.contains(&tp))
            });
            self.put_back(&put_back)?;
            if !kept.is_empty() {
                let mut waiting = self.waiting.lock();
                for r in &kept {
                    // Served: its wait starts again from the next poll that passes it over.
                    waiting.remove(&tp_of(r));
                }
                drop(waiting);
                if let Some(tracer) = &self.trace {
                    let group = self.consumer.group();
                    for r in &kept {
                        let retries = r
                            .record()
                            .properties()
                            .get(RECONSUME_TIMES)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        tracer.delivered(group, r, retries);
                    }
                }
                return Ok(kept);
            }
            if let Serve::Only(parts) = serve
                && !joined_now
            {
                stalled.extend(parts);
            }
            if remaining.is_zero() {
                return Ok(Vec::new());
            }
        }
    }

    /// Which partitions to fetch: the starved one waiting longest, else the highest band
    /// with a backlog (not stalled), else any.
    fn choose(
        &self,
        store: &dyn LogStore,
        held: &[TopicPartition],
        partitions: u32,
        stalled: &HashSet<TopicPartition>,
    ) -> Result<Serve> {
        let now = Instant::now();
        let mut backlogged = Vec::new();
        for tp in held {
            let position = match self.consumer.position(&tp.topic, tp.partition) {
                Ok(p) => p,
                // Revoked, gone, or no offset to start from yet: the fetch will say.
                Err(_) => continue,
            };
            let bounds = match store.bounds(&tp.topic, tp.partition) {
                Ok(b) => b,
                Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) => continue,
                Err(e) => return Err(e),
            };
            if bounds.last_stable > position {
                backlogged.push(tp.clone());
            }
        }
        let mut waiting = self.waiting.lock();
        waiting.retain(|tp, _| backlogged.contains(tp));
        for tp in &backlogged {
            waiting.entry(tp.clone()).or_insert(now);
        }
        let candidates: Vec<&TopicPartition> = backlogged
            .iter()
            .filter(|t| !stalled.contains(*t))
            .collect();
        if candidates.is_empty() {
            return Ok(Serve::Any);
        }
        // Aging: `elapsed >= Duration::MAX` never holds, so MAX turns it off without overflow.
        let starved = candidates
            .iter()
            .filter_map(|tp| waiting.get(*tp).map(|since| (*since, *tp)))
            .filter(|(since, _)| {
                now.saturating_duration_since(*since) >= self.config.max_starvation
            })
            .min_by_key(|(since, tp)| (*since, -self.rank(tp, partitions)));
        if let Some((_, tp)) = starved {
            return Ok(Serve::Only(vec![tp.clone()]));
        }
        let mut bands: BTreeMap<i64, Vec<TopicPartition>> = BTreeMap::new();
        for tp in candidates {
            bands
                .entry(self.rank(tp, partitions))
                .or_default()
                .push(tp.clone());
        }
        Ok(bands
            .pop_last()
            .map_or(Serve::Any, |(_, parts)| Serve::Only(parts)))
    }

    /// Un-reads records fetched but not returned: each partition seeks back to the first of
    /// them, so the next poll fetches them again.
    fn put_back(&self, records: &[ConsumerRecord]) -> Result<()> {
        let mut first: HashMap<TopicPartition, u64> = HashMap::new();
        for r in records {
            let e = first.entry(tp_of(r)).or_insert(r.offset());
            *e = (*e).min(r.offset());
        }
        for (tp, offset) in first {
            match self.consumer.seek(&tp.topic, tp.partition, offset) {
                // Revoked meanwhile: its next owner starts from the committed offset.
                Ok(()) | Err(Error::NotAssigned { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn tp_of(r: &ConsumerRecord) -> TopicPartition {
    TopicPartition::new(r.topic(), r.partition())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_priority_maps_into_the_topic_and_higher_priorities_to_higher_bands() {
        for partitions in (1..=10).chain([20, 30, 100]) {
            let mut last_band = 0;
            for p in 0..=MAX_PRIORITY {
                let range = priority_partition_range(p, partitions).unwrap();
                assert!(
                    !range.is_empty() && range.end <= partitions,
                    "{p} of {partitions}"
                );
                let bands: Vec<u32> = range.map(|q| priority_band(q, partitions)).collect();
                assert!(
                    bands.windows(2).all(|w| w[0] == w[1]),
                    "one band per priority"
                );
                assert!(
                    bands[0] >= last_band,
                    "{p} of {partitions}: not below {last_band}"
                );
                last_band = bands[0];
            }
            assert_eq!(priority_partition_range(0, partitions).unwrap().start, 0);
            assert_eq!(
                priority_partition_range(9, partitions).unwrap().end,
                partitions
            );
        }
        for bad in [0, 11, 15, 99] {
            assert!(priority_partition_range(5, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_decimal_priorities_0_to_9_are_read_back() {
        assert_eq!(parse_priority("0"), Some(0));
        assert_eq!(parse_priority("9"), Some(9));
        for bad in ["10", "-1", "", "high", "255", "9.0"] {
            assert_eq!(parse_priority(bad), None, "{bad}");
        }
    }
}
