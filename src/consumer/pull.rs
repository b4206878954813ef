//! [`Consumer`]: the pull consumer, after rdkafka's `BaseConsumer` — synchronous, polled by
//! the caller's thread, no background thread of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::assignor::{Assignor, Sticky, TopicPartition};
use super::group::{CoordinatorInner, GroupCoordinator, validate_group};
use super::tags::TagFilter;
use crate::durability::Wakeup;
use crate::error::{Error, Result};
use crate::store::{IsolationLevel, ReadLimits, Record};

/// Where a partition with no usable committed offset starts (Kafka's `auto.offset.reset`).
///
/// ```
/// # use std::sync::Arc;
/// # use duolog::{Error, LogStore, Message, StoreOptions, TopicConfig};
/// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("t", TopicConfig::default())?;
/// store.append("t", 0, &[Message::new("a"), Message::new("b")])?;
/// let groups = GroupCoordinator::new(store)?;
/// // A group per policy: each has no committed offset yet.
/// let start = |reset: OffsetReset| -> duolog::Result<u64> {
///     let group = format!("{reset:?}");
///     let c = Consumer::new(&groups, ConsumerConfig { auto_offset_reset: reset, ..ConsumerConfig::new(group) })?;
///     c.assign(&[("t", 0)])?;
///     c.position("t", 0)
/// };
/// assert_eq!(start(OffsetReset::Earliest)?, 0);
/// assert_eq!(start(OffsetReset::Latest)?, 2);
/// assert!(matches!(start(OffsetReset::None), Err(Error::NoCommittedOffset { .. })));
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OffsetReset {
    /// At the log start: everything still in the partition.
    Earliest,
    /// At the log end: only what is appended from now on. Kafka's default.
    #[default]
    Latest,
    /// Nowhere: [`Error::NoCommittedOffset`] (no committed offset) or
    /// [`Error::OffsetOutOfRange`] (the position left the log).
    None,
}

/// A consumer's settings; Kafka's names and defaults.
///
/// ```
/// use std::time::Duration;
/// use duolog::consumer::{ConsumerConfig, OffsetReset};
/// let config = ConsumerConfig {
///     auto_offset_reset: OffsetReset::Earliest,
///     max_poll_records: 100,
///     ..ConsumerConfig::new("billing")
/// };
/// assert!(config.enable_auto_commit);
/// assert_eq!(config.auto_commit_interval, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// `group.id`: the group whose offsets it commits and whose partitions it shares.
    pub group: String,
    /// `client.id`: the prefix of the member id (`<client_id>-<n>`). Default: the group name.
    pub client_id: Option<String>,
    /// `auto.offset.reset`. Default: [`OffsetReset::Latest`].
    pub auto_offset_reset: OffsetReset,
    /// `enable.auto.commit`: commit positions every `auto_commit_interval` from `poll`, before
    /// revoking partitions, and at `close`/drop. Default: `true`.
    pub enable_auto_commit: bool,
    /// `auto.commit.interval.ms`. Default: 5 s.
    pub auto_commit_interval: Duration,
    /// `max.poll.records`: at most this many records per `poll`. Default: 500.
    pub max_poll_records: usize,
    /// `max.partition.fetch.bytes`: about this many bytes per partition per `poll` (one record
    /// is returned whatever its size). Default: 1 MiB.
    pub max_partition_fetch_bytes: usize,
    /// `max.poll.interval.ms`: a group member that has not called `poll` (or `commit`) for
    /// longer may be evicted from the group when another member needs its partitions; its
    /// next `poll` loses them uncommitted (its commits fail with [`Error::NotAssigned`]) and
    /// joins again. Time spent blocked inside `poll` counts as polling. Default: 300 s.
    pub max_poll_interval: Duration,
    /// `partition.assignment.strategy`; every member of a group must use the same one.
    /// Default: [`Sticky`].
    pub assignor: Arc<dyn Assignor>,
    /// A tag subscription (RocketMQ's `subExpression`, e.g. `TagA || TagB`): `poll` returns
    /// only records whose tag is one of its tags, read with
    /// [`read_tagged`](crate::LogStore::read_tagged) — on the CommitLog engine the others are
    /// skipped by the tag hash in the consume queue, never read. Skipped records still move the
    /// position (and so the committed offset) past them. `None` or [`TagFilter::All`]: every
    /// record. Default: `None`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset, TagFilter};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("t", TopicConfig::default())?;
    /// let batch = [("a", "TagA"), ("b", "TagB"), ("c", "TagC")].map(|(b, t)| Message::new(b).with_tags(t));
    /// store.append("t", 0, &batch)?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let config = ConsumerConfig {
    ///     auto_offset_reset: OffsetReset::Earliest,
    ///     tag_filter: Some(TagFilter::parse("TagA || TagC")),
    ///     ..ConsumerConfig::new("g")
    /// };
    /// let c = Consumer::new(&groups, config)?;
    /// c.assign(&[("t", 0)])?;
    /// let bodies: Vec<Vec<u8>> = c.poll(std::time::Duration::from_secs(1))?.iter().map(|r| r.record().body().to_vec()).collect();
    /// assert_eq!(bodies, [b"a".to_vec(), b"c".to_vec()]);
    /// assert_eq!(c.position("t", 0)?, 3);
    /// # Ok(()) }
    /// ```
    pub tag_filter: Option<TagFilter>,
    /// Message trace ([`Tracer`](super::Tracer)): when set, `poll` records a `SubBefore`
    /// event per record it returns (group, retries from the record's
    /// [`RECONSUME_TIMES`](super::RECONSUME_TIMES), or 0). A pull consumer learns
    /// nothing of how a record was handled, so it records no `SubAfter`. Default: `None`.
    pub trace: Option<Arc<super::Tracer>>,
    /// `isolation.level`: with [`IsolationLevel::ReadCommitted`], `poll` returns only records
    /// below each partition's last stable offset and never a record of an aborted
    /// transaction; transaction markers are never returned and never stall the position
    /// (it moves past them, and past skipped aborted records). Default:
    /// [`IsolationLevel::ReadUncommitted`], as Kafka.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{IsolationLevel, LogStore, Message, StoreOptions, TopicConfig};
    /// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
    /// use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("t", TopicConfig::default())?;
    /// let txns = TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())?;
    /// let producer = txns.producer("p", TxnProducerConfig::default())?;
    /// producer.begin()?;
    /// producer.send("t", 0, &[Message::new("aborted")])?;
    /// producer.abort()?;
    /// producer.begin()?;
    /// producer.send("t", 0, &[Message::new("committed")])?;
    /// producer.commit()?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let config = ConsumerConfig {
    ///     isolation: IsolationLevel::ReadCommitted,
    ///     auto_offset_reset: OffsetReset::Earliest,
    ///     ..ConsumerConfig::new("g")
    /// };
    /// let c = Consumer::new(&groups, config)?;
    /// c.assign(&[("t", 0)])?;
    /// let got = c.poll(std::time::Duration::from_secs(1))?;
    /// assert_eq!(got.len(), 1);
    /// assert_eq!(got[0].record().body(), b"committed");
    /// assert_eq!(c.position("t", 0)?, 4, "past both markers");
    /// # Ok(()) }
    /// ```
    pub isolation: IsolationLevel,
}

impl ConsumerConfig {
    /// Defaults, for `group` (see [`ConsumerConfig`] for an example).
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerConfig {
            group: group.into(),
            ..ConsumerConfig::default()
        }
    }
}

impl Default for ConsumerConfig {
    /// Every default, and an empty group name (which `Consumer::new` refuses: set one).
    fn default() -> Self {
        ConsumerConfig {
            group: String::new(),
            client_id: None,
            auto_offset_reset: OffsetReset::Latest,
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            max_poll_records: 500,
            max_partition_fetch_bytes: 1 << 20,
            max_poll_interval: Duration::from_secs(300),
            assignor: Arc::new(Sticky),
            tag_filter: None,
            trace: None,
            isolation: IsolationLevel::ReadUncommitted,
        }
    }
}

/// A record with the partition it came from, as [`Consumer::poll`] returns it.
///
/// ```
/// # use std::sync::Arc;
/// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
/// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("t", TopicConfig::with_partitions(2))?;
/// store.append("t", 1, &[Message::new("hello").with_key("k")])?;
/// let groups = GroupCoordinator::new(store)?;
/// let c = Consumer::new(&groups, ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::new("g") })?;
/// c.subscribe(&["t"])?;
/// let r = c.poll(std::time::Duration::from_secs(1))?.remove(0);
/// assert_eq!((r.topic(), r.partition(), r.offset()), ("t", 1, 0));
/// assert_eq!(r.record().key(), Some(&b"k"[..]));
/// assert_eq!(r.into_record().body(), b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    topic: Arc<str>,
    partition: u32,
    record: Record,
}

impl ConsumerRecord {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// The partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }
    /// The record's offset (its partition's next position after it is `offset() + 1`).
    pub fn offset(&self) -> u64 {
        self.record.offset()
    }
    /// The record itself.
    pub fn record(&self) -> &Record {
        &self.record
    }
    /// Takes the record out.
    pub fn into_record(self) -> Record {
        self.record
    }
}

/// Hooks into a group rebalance, called on the consumer's own thread from inside `poll`,
/// `commit` or `close` (rdkafka's `ConsumerContext::pre_rebalance` / `post_rebalance`). The
/// consumer is handed in, so a callback may `commit` or `seek`; `poll` inside one returns
/// nothing.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use duolog::consumer::{Consumer, RebalanceListener, TopicPartition};
///
/// #[derive(Default)]
/// struct Log(Mutex<Vec<String>>);
/// impl RebalanceListener for Log {
///     fn on_revoke(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
///         // Last chance to commit what was processed of them.
///         let _ = consumer.commit();
///         self.0.lock().unwrap().push(format!("revoke {partitions:?}"));
///     }
///     fn on_assign(&self, _: &Consumer, partitions: &[TopicPartition]) {
///         self.0.lock().unwrap().push(format!("assign {partitions:?}"));
///     }
/// }
/// ```
pub trait RebalanceListener: Send + Sync {
    /// Before `partitions` leave this member (rdkafka's `Rebalance::Revoke`). Positions are
    /// still there: a `commit` here commits them. Auto-commit, when enabled, runs after it.
    fn on_revoke(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        let _ = (consumer, partitions);
    }
    /// After `partitions` arrived (rdkafka's `Rebalance::Assign`); their positions are the
    /// committed offsets (or the reset) unless the callback seeks.
    fn on_assign(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        let _ = (consumer, partitions);
    }
}

/// A shared listener (the caller keeps a handle to inspect it).
impl<T: RebalanceListener + ?Sized> RebalanceListener for Arc<T> {
    fn on_revoke(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        (**self).on_revoke(consumer, partitions);
    }
    fn on_assign(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        (**self).on_assign(consumer, partitions);
    }
}

/// The listener of a consumer that has none.
struct NoListener;
impl RebalanceListener for NoListener {}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    Idle,
    Subscribed(BTreeSet<String>),
    Assigned,
}

struct State {
    mode: Mode,
    /// Held partitions → next offset to fetch (`None`: not resolved yet — the committed
    /// offset or the reset, at first use).
    positions: BTreeMap<TopicPartition, Option<u64>>,
    /// Held partitions `poll` does not fetch (rdkafka's `pause`); their positions stay.
    paused: BTreeSet<TopicPartition>,
    /// Where the fair rotation over partitions starts next.
    rotate: usize,
    last_auto_commit: Instant,
    closed: bool,
}

/// A pull consumer after rdkafka's `BaseConsumer`: [`subscribe`](Consumer::subscribe) to
/// topics as a member of its group (partitions assigned by the group's [`Assignor`] and moved
/// on rebalances) or [`assign`](Consumer::assign) partitions by hand, then
/// [`poll`](Consumer::poll). Positions start at the group's committed offsets (the *next*
/// offset to consume, as in Kafka), or per [`OffsetReset`]; commits are atomic over all
/// partitions and durable when they return.
///
/// Synchronous: the caller's thread does everything, callbacks included; `poll` long-polls on
/// the store's [`wait_for_any_with`](crate::LogStore::wait_for_any_with), never sleep-polls.
/// Delivery is at least once: records after the last commit are delivered again to whoever
/// holds the partition next. Dropping a consumer closes it (with a final auto-commit when that
/// is on); dropping one with auto-commit off is what a crash looks like to its group.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use duolog::{LogStore, Message, StoreOptions, TopicConfig};
/// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("orders", TopicConfig::with_partitions(2))?;
/// store.append("orders", 1, &[Message::new("o-1"), Message::new("o-2")])?;
///
/// let groups = GroupCoordinator::new(Arc::clone(&store))?;
/// let config = ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::new("billing") };
/// let consumer = Consumer::new(&groups, config)?;
/// consumer.subscribe(&["orders"])?;
/// let records = consumer.poll(Duration::from_secs(5))?;
/// assert_eq!(records.len(), 2);
/// consumer.commit()?;
/// assert_eq!(consumer.committed("orders", 1), Some(2)); // the next offset to consume
/// consumer.close()?;
/// # Ok(()) }
/// ```
pub struct Consumer {
    coord: Arc<CoordinatorInner>,
    config: ConsumerConfig,
    member_id: String,
    wakeup: Wakeup,
    listener: Box<dyn RebalanceListener>,
    state: Mutex<State>,
    /// Set while a rebalance callback runs: calls from inside it do not start another.
    in_rebalance: AtomicBool,
    /// Set by [`Consumer::wakeup`]: the poll blocked now (or the next one) returns early.
    interrupted: AtomicBool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.config.group)
            .field("member_id", &self.member_id)
            .finish()
    }
}

/// What one fetch found: records, or (when there are none) the positions to wait on.
type Fetched = (Vec<ConsumerRecord>, Vec<(TopicPartition, u64)>);

/// Clears the in-rebalance flag however the callback section ends.
struct RebalanceGuard<'a>(&'a AtomicBool);
impl Drop for RebalanceGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Consumer {
    /// A consumer of `config.group`, neither subscribed nor assigned yet.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions};
    /// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// let groups = GroupCoordinator::new(store)?;
    /// let consumer = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// assert!(consumer.member_id().starts_with("g-"));
    /// assert!(Consumer::new(&groups, ConsumerConfig::new("")).is_err());
    /// # Ok(()) }
    /// ```
    pub fn new(coordinator: &GroupCoordinator, config: ConsumerConfig) -> Result<Consumer> {
        Consumer::with_listener(coordinator, config, NoListener)
    }

    /// A consumer whose rebalances call `listener`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions, TopicConfig};
    /// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, RebalanceListener, TopicPartition};
    /// struct Print;
    /// impl RebalanceListener for Print {
    ///     fn on_assign(&self, _: &Consumer, parts: &[TopicPartition]) { println!("got {parts:?}") }
    /// }
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let consumer = Consumer::with_listener(&groups, ConsumerConfig::new("g"), Print)?;
    /// consumer.subscribe(&["t"])?;
    /// consumer.poll(std::time::Duration::ZERO)?; // prints "got [t-0]"
    /// # Ok(()) }
    /// ```
    pub fn with_listener(
        coordinator: &GroupCoordinator,
        config: ConsumerConfig,
        listener: impl RebalanceListener + 'static,
    ) -> Result<Consumer> {
        validate_group(&config.group)?;
        if config.max_poll_records == 0 {
            return Err(Error::InvalidArgument(
                "max_poll_records must be at least 1".into(),
            ));
        }
        let coord = Arc::clone(&coordinator.inner);
        let prefix = config.client_id.as_deref().unwrap_or(&config.group);
        let member_id = coord.new_member_id(prefix);
        Ok(Consumer {
            coord,
            config,
            member_id,
            wakeup: Wakeup::new(),
            listener: Box::new(listener),
            state: Mutex::new(State {
                mode: Mode::Idle,
                positions: BTreeMap::new(),
                paused: BTreeSet::new(),
                rotate: 0,
                last_auto_commit: Instant::now(),
                closed: false,
            }),
            in_rebalance: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
        })
    }

    /// The member id, unique in the process: `<client_id or group>-<n>`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// let groups = GroupCoordinator::new(store)?;
    /// let config = ConsumerConfig { client_id: Some("worker".into()), ..ConsumerConfig::new("g") };
    /// let c = Consumer::new(&groups, config)?;
    /// assert!(c.member_id().starts_with("worker-"));
    /// assert_eq!(c.group(), "g");
    /// # Ok(()) }
    /// ```
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Who this consumer is in its group, for a transaction's offsets
    /// ([`TransactionalProducer::send_offsets`](crate::txn::TransactionalProducer::send_offsets),
    /// Kafka's `groupMetadata()`): a subscribed member's offsets commit through a transaction
    /// only while it still holds their partitions (KIP-447's zombie fencing); a consumer with a
    /// manual assignment is no member and is not checked, as for its plain commits.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions, TopicConfig};
    /// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// c.subscribe(&["t"])?;
    /// let meta = c.group_metadata();
    /// assert_eq!((meta.group(), meta.member_id()), ("g", Some(c.member_id())));
    /// # Ok(()) }
    /// ```
    pub fn group_metadata(&self) -> ConsumerGroupMetadata {
        let member = matches!(self.state.lock().mode, Mode::Subscribed(_));
        ConsumerGroupMetadata {
            group: self.config.group.clone(),
            member_id: member.then(|| self.member_id.clone()),
        }
    }

    /// The group (see [`member_id`](Self::member_id) for an example).
    pub fn group(&self) -> &str {
        &self.config.group
    }

    fn check_open(&self) -> Result<()> {
        if self.state.lock().closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Joins the group with these topics (replacing an earlier subscription or manual
    /// assignment). Partitions arrive at the next `poll`; a topic created later, or one that
    /// gains partitions, is picked up by a later `poll`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, TopicPartition};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("t", TopicConfig::with_partitions(2))?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let a = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// a.subscribe(&["t"])?;
    /// a.poll(std::time::Duration::ZERO)?;
    /// assert_eq!(a.assignment().len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self, topics: &[&str]) -> Result<()> {
        self.check_open()?;
        let topics: BTreeSet<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let mut st = self.state.lock();
        if st.mode == Mode::Assigned {
            st.positions.clear();
            st.paused.clear();
        }
        st.mode = Mode::Subscribed(topics.clone());
        drop(st);
        self.coord.join(
            &self.config.group,
            &self.member_id,
            topics,
            &self.config.assignor,
            &self.wakeup,
            self.config.max_poll_interval,
        )
    }

    /// Reads these partitions without group management (Kafka's `assign`): no rebalancing,
    /// positions from the group's committed offsets. Replaces a subscription (leaving the
    /// group, after revoking what it held).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("t", TopicConfig::with_partitions(3))?;
    /// store.append("t", 2, &[Message::new("x")])?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let config = ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::new("g") };
    /// let c = Consumer::new(&groups, config)?;
    /// c.assign(&[("t", 2)])?;
    /// assert_eq!(c.poll(std::time::Duration::from_secs(1))?[0].partition(), 2);
    /// # Ok(()) }
    /// ```
    pub fn assign(&self, partitions: &[(&str, u32)]) -> Result<()> {
        self.check_open()?;
        for &(t, p) in partitions {
            self.coord.store.bounds(t, p)?;
        }
        self.unsubscribe()?;
        let mut st = self.state.lock();
        st.mode = Mode::Assigned;
        st.paused.clear();
        st.positions = partitions
            .iter()
            .map(|&(t, p)| (TopicPartition::new(t, p), None))
            .collect();
        Ok(())
    }

    /// Leaves the group (revoking what it holds, committing first with auto-commit) or drops
    /// a manual assignment.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// c.subscribe(&["t"])?;
    /// c.poll(std::time::Duration::ZERO)?;
    /// assert_eq!(groups.owners("g").len(), 1);
    /// c.unsubscribe()?;
    /// assert!(c.assignment().is_empty() && c.subscription().is_empty());
    /// assert!(groups.owners("g").is_empty());
    /// # Ok(()) }
    /// ```
    pub fn unsubscribe(&self) -> Result<()> {
        let mode = self.state.lock().mode.clone();
        let result = match mode {
            Mode::Subscribed(_) if !self.coord.is_member(&self.config.group, &self.member_id) => {
                // Evicted: nothing left to revoke or commit.
                Ok(())
            }
            Mode::Subscribed(_) => {
                let held: Vec<TopicPartition> =
                    self.state.lock().positions.keys().cloned().collect();
                let r = self.revoke(&held);
                self.coord.leave(&self.config.group, &self.member_id);
                r
            }
            Mode::Assigned | Mode::Idle => Ok(()),
        };
        let mut st = self.state.lock();
        st.mode = Mode::Idle;
        st.positions.clear();
        st.paused.clear();
        result
    }

    /// The partitions it holds now (see [`subscribe`](Self::subscribe) for an example).
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.state.lock().positions.keys().cloned().collect()
    }

    /// The subscribed topics (empty with a manual assignment).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// c.subscribe(&["b", "a"])?; // topics may be created later
    /// assert_eq!(c.subscription(), ["a", "b"]);
    /// # Ok(()) }
    /// ```
    pub fn subscription(&self) -> Vec<String> {
        match &self.state.lock().mode {
            Mode::Subscribed(t) => t.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Runs a rebalance callback with the in-rebalance flag set, unless one already runs.
    fn revoke(&self, parts: &[TopicPartition]) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        self.in_rebalance.store(true, Ordering::Release);
        let guard = RebalanceGuard(&self.in_rebalance);
        self.listener.on_revoke(self, parts);
        let committed = if self.config.enable_auto_commit {
            self.commit_held()
        } else {
            Ok(())
        };
        drop(guard);
        {
            let mut st = self.state.lock();
            for tp in parts {
                st.positions.remove(tp);
                st.paused.remove(tp);
            }
        }
        self.coord
            .release(&self.config.group, &self.member_id, parts);
        committed
    }

    /// Acts on the group's latest assignment: revokes what moved away, takes what arrived.
    fn sync_group(&self) -> Result<()> {
        if self.in_rebalance.load(Ordering::Acquire)
            || !matches!(self.state.lock().mode, Mode::Subscribed(_))
        {
            return Ok(());
        }
        let group = &self.config.group;
        if !self.coord.is_member(group, &self.member_id) {
            // Evicted: the partitions are someone else's already. Drop them uncommitted and
            // join again.
            let topics = {
                let mut st = self.state.lock();
                st.positions.clear();
                st.paused.clear();
                match &st.mode {
                    Mode::Subscribed(t) => t.clone(),
                    _ => BTreeSet::new(),
                }
            };
            self.coord.join(
                group,
                &self.member_id,
                topics,
                &self.config.assignor,
                &self.wakeup,
                self.config.max_poll_interval,
            )?;
        }
        self.coord.check_metadata(group);
        let revoked = self.coord.to_revoke(group, &self.member_id);
        let result = self.revoke(&revoked);
        let (mut claimed, expired) = self.coord.claim(group, &self.member_id);
        if !expired.is_empty() {
            for member in &expired {
                self.coord.evict(group, member);
            }
            claimed.extend(self.coord.claim(group, &self.member_id).0);
        }
        if !claimed.is_empty() {
            {
                let mut st = self.state.lock();
                for tp in &claimed {
                    st.positions.insert(tp.clone(), None);
                }
            }
            self.in_rebalance.store(true, Ordering::Release);
            let _guard = RebalanceGuard(&self.in_rebalance);
            self.listener.on_assign(self, &claimed);
        }
        result
    }

    /// Where a partition with no position starts: its committed offset if that is inside the
    /// log, else per `auto_offset_reset`.
    fn initial_position(&self, tp: &TopicPartition) -> Result<u64> {
        let committed = self
            .coord
            .offsets
            .latest(&self.config.group, &tp.topic, tp.partition);
        let b = self.coord.store.bounds(&tp.topic, tp.partition)?;
        match committed {
            Some(c) if (b.start..=b.end).contains(&c) => Ok(c),
            Some(c) => self.reset(tp, c, b.start, b.end),
            None => match self.config.auto_offset_reset {
                OffsetReset::Earliest => Ok(b.start),
                OffsetReset::Latest => Ok(b.end),
                OffsetReset::None => Err(Error::NoCommittedOffset {
                    group: self.config.group.clone(),
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                }),
            },
        }
    }

    /// A position outside `[start, end]` (retention passed it, or the log was cut back).
    fn reset(&self, tp: &TopicPartition, offset: u64, start: u64, end: u64) -> Result<u64> {
        match self.config.auto_offset_reset {
            OffsetReset::Earliest => Ok(start),
            OffsetReset::Latest => Ok(end),
            OffsetReset::None => Err(Error::OffsetOutOfRange {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset,
                start,
                end,
            }),
        }
    }

    fn resolve(&self, st: &mut State, tp: &TopicPartition) -> Result<u64> {
        if let Some(Some(p)) = st.positions.get(tp) {
            return Ok(*p);
        }
        let p = self.initial_position(tp)?;
        st.positions.insert(tp.clone(), Some(p));
        Ok(p)
    }

    /// Reads from the held partitions, fairly: the starting partition rotates, and each gets
    /// an equal share of `max_poll_records`. Returns the records and, when there are none,
    /// the positions to wait on.
    fn fetch(&self) -> Result<Fetched> {
        let mut st = self.state.lock();
        let parts: Vec<TopicPartition> = st
            .positions
            .keys()
            .filter(|tp| !st.paused.contains(*tp))
            .cloned()
            .collect();
        let n = parts.len();
        let mut out = Vec::new();
        let mut waits = Vec::new();
        if n == 0 {
            return Ok((out, waits));
        }
        let first = st.rotate % n;
        st.rotate = st.rotate.wrapping_add(1);
        let max = self.config.max_poll_records;
        let share = max.div_ceil(n).max(1);
        let subscribed = matches!(st.mode, Mode::Subscribed(_));
        for i in 0..n {
            let tp = &parts[(first + i) % n];
            let mut pos = match self.resolve(&mut st, tp) {
                Ok(p) => p,
                // A subscribed topic deleted: the next rebalance drops it.
                Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) if subscribed => {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let room = share.min(max - out.len());
            if room == 0 {
                break;
            }
            let limits = ReadLimits {
                max_messages: room,
                max_bytes: self.config.max_partition_fetch_bytes,
                isolation: self.config.isolation,
            };
            let tags = self.config.tag_filter.as_ref().and_then(TagFilter::tags);
            // At most one retry, after a reset of a position that left the log.
            let mut tries = 0;
            let (records, next) = loop {
                tries += 1;
                let store = &self.coord.store;
                let read = match tags {
                    // Past every offset the fetch examined: compaction's gaps, transaction
                    // markers and (read-committed) aborted records.
                    None => store
                        .fetch(&tp.topic, tp.partition, pos, limits)
                        .map(|f| (f.records, f.next_offset)),
                    Some(tags) => store
                        .read_tagged(&tp.topic, tp.partition, pos, limits, tags)
                        .map(|r| (r.records, r.next_offset)),
                };
                match read {
                    Ok(r) => break r,
                    Err(Error::OffsetOutOfRange { start, end, .. }) if tries == 1 => {
                        pos = self.reset(tp, pos, start, end)?;
                        st.positions.insert(tp.clone(), Some(pos));
                    }
                    Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) if subscribed => {
                        break (Vec::new(), pos);
                    }
                    Err(e) => return Err(e),
                }
            };
            if next > pos {
                // Past every record read, and with a tag filter past the skipped ones too.
                st.positions.insert(tp.clone(), Some(next));
            }
            match records.last() {
                Some(_) => {
                    let topic: Arc<str> = Arc::from(tp.topic.as_str());
                    out.extend(records.into_iter().map(|record| ConsumerRecord {
                        topic: Arc::clone(&topic),
                        partition: tp.partition,
                        record,
                    }));
                }
                // A filtered read that skipped records waits from past them (the wait returns
                // at once while unread records remain).
                None => {
                    let mut at = next.max(pos);
                    if self.config.isolation == IsolationLevel::ReadCommitted {
                        // Stopped at the last stable offset with records past it: waiting
                        // there would return at once, forever. Wait for the end to move (a
                        // marker is an append); if the LSO moved since the fetch, the end did
                        // too and the wait returns at once.
                        if let Ok(b) = self.coord.store.bounds(&tp.topic, tp.partition)
                            && b.last_stable <= at
                        {
                            at = at.max(b.end);
                        }
                    }
                    waits.push((tp.clone(), at));
                }
            }
        }
        Ok((out, waits))
    }

    /// Returns up to `max_poll_records` records from the held partitions, blocking at most
    /// `timeout` for some to arrive (returning early as soon as any held partition has one),
    /// or an empty vector. Group rebalances are acted on here: revocations (with their
    /// callback and auto-commit) first, then new partitions. Auto-commits when due.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::{Duration, Instant};
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("t", TopicConfig::with_partitions(4))?;
    /// let groups = GroupCoordinator::new(Arc::clone(&store))?;
    /// let consumer = Consumer::new(&groups, ConsumerConfig::new("g"))?; // starts at the end
    /// consumer.subscribe(&["t"])?;
    /// assert!(consumer.poll(Duration::from_millis(20))?.is_empty());
    /// let producer = std::thread::spawn(move || {
    ///     std::thread::sleep(Duration::from_millis(50));
    ///     store.append("t", 3, &[Message::new("late")]).unwrap();
    /// });
    /// let t = Instant::now();
    /// let records = consumer.poll(Duration::from_secs(30))?;
    /// assert_eq!(records[0].record().body(), b"late");
    /// assert!(t.elapsed() < Duration::from_secs(30));
    /// producer.join().unwrap();
    /// # Ok(()) }
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        self.check_open()?;
        if self.in_rebalance.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let group = &self.config.group;
        self.coord.set_polling(group, &self.member_id, true);
        let result = self.poll_inner(timeout);
        self.coord.set_polling(group, &self.member_id, false);
        result
    }

    fn poll_inner(&self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            self.sync_group()?;
            self.maybe_auto_commit()?;
            let (records, waits) = self.fetch()?;
            if !records.is_empty() {
                if let Some(tracer) = &self.config.trace {
                    for r in &records {
                        let retries = r
                            .record()
                            .properties()
                            .get(super::RECONSUME_TIMES)
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        tracer.delivered(&self.config.group, r, retries);
                    }
                }
                return Ok(records);
            }
            let remaining = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if remaining.is_zero() {
                return Ok(records);
            }
            let positions: Vec<(&str, u32, u64)> = waits
                .iter()
                .map(|(tp, pos)| (tp.topic.as_str(), tp.partition, *pos))
                .collect();
            match self
                .coord
                .store
                .wait_for_any_with(&positions, remaining, &self.wakeup)
            {
                Ok(_) => {}
                // A partition vanished between the fetch and the wait: fetch again.
                Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) => {}
                Err(e) => return Err(e),
            }
            // `wakeup` also wakes the wait, so a flag set at any time is seen here at the
            // latest after the next wait.
            if self.interrupted.swap(false, Ordering::AcqRel) {
                return Ok(Vec::new());
            }
        }
    }

    fn maybe_auto_commit(&self) -> Result<()> {
        if !self.config.enable_auto_commit {
            return Ok(());
        }
        let due = {
            let st = self.state.lock();
            st.last_auto_commit.elapsed() >= self.config.auto_commit_interval
        };
        if due {
            self.commit_held()?;
            self.state.lock().last_auto_commit = Instant::now();
        }
        Ok(())
    }

    /// Commits the positions of every held partition whose position is known.
    fn commit_held(&self) -> Result<()> {
        let (offsets, subscribed) = self.held_offsets();
        self.commit_list(&offsets, subscribed)
    }

    /// The known positions of the held partitions, and whether it is a group member.
    fn held_offsets(&self) -> (Vec<(String, u32, u64)>, bool) {
        let st = self.state.lock();
        let offsets = st
            .positions
            .iter()
            .filter_map(|(tp, p)| p.map(|p| (tp.topic.clone(), tp.partition, p)))
            .collect();
        (offsets, matches!(st.mode, Mode::Subscribed(_)))
    }

    /// A group member may commit only what it holds.
    fn check_held(&self, offsets: &[(String, u32, u64)], member: bool) -> Result<()> {
        if !member {
            return Ok(());
        }
        for (topic, partition, _) in offsets {
            let tp = TopicPartition::new(topic.as_str(), *partition);
            if !self.coord.holds(&self.config.group, &self.member_id, &tp) {
                return Err(self.not_assigned(&tp));
            }
        }
        Ok(())
    }

    /// Commits `offsets`; a group member only those it holds, checked under the group's
    /// commit lock (an eviction cannot take them between the check and the write).
    fn commit_list(&self, offsets: &[(String, u32, u64)], member: bool) -> Result<()> {
        self.coord
            .offsets
            .commit_checked(&self.config.group, offsets, || {
                self.check_held(offsets, member)
            })
    }

    /// Commits the current position of every held partition, atomically (all or none, across
    /// a crash too) and durably (fsync'ed before it returns), after acting on any pending
    /// rebalance — so a partition revoked meanwhile is not committed by its old owner.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// store.append("t", 0, &[Message::new("a"), Message::new("b")])?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let config = ConsumerConfig { enable_auto_commit: false, auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::new("g") };
    /// let c = Consumer::new(&groups, config)?;
    /// c.assign(&[("t", 0)])?;
    /// c.poll(std::time::Duration::from_secs(1))?;
    /// c.commit()?;
    /// assert_eq!(c.committed("t", 0), Some(2));
    /// # Ok(()) }
    /// ```
    pub fn commit(&self) -> Result<()> {
        self.check_open()?;
        self.sync_group()?;
        self.commit_held()
    }

    /// [`commit`](Self::commit) without waiting for the fsync (rdkafka's `CommitMode::Async`):
    /// returns once the commit record is appended, and `on_done` gets the outcome once it is
    /// durable (or failed), on the thread that made it durable — keep it short. That is the
    /// store's next flush under its [`FlushPolicy`](crate::FlushPolicy) (with `Async`, up to
    /// its interval; with no timed flush, the next `sync`, sync commit or close).
    /// [`committed`](Self::committed) shows the offsets from then on. Commits stay in order:
    /// a later commit's record supersedes this one's whatever completes first.
    ///
    /// ```
    /// # use std::sync::{mpsc, Arc};
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// store.append("t", 0, &[Message::new("a")])?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let config = ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::new("g") };
    /// let c = Consumer::new(&groups, config)?;
    /// c.assign(&[("t", 0)])?;
    /// c.poll(std::time::Duration::from_secs(1))?;
    /// let (tx, rx) = mpsc::channel();
    /// c.commit_async(move |result| tx.send(result.is_ok()).unwrap())?;
    /// assert!(rx.recv().unwrap());
    /// assert_eq!(c.committed("t", 0), Some(1));
    /// # Ok(()) }
    /// ```
    pub fn commit_async(&self, on_done: impl FnOnce(Result<()>) + Send + 'static) -> Result<()> {
        self.check_open()?;
        self.sync_group()?;
        let (offsets, member) = self.held_offsets();
        let group = &self.config.group;
        self.coord.offsets.commit_async_checked(
            group,
            &offsets,
            || self.check_held(&offsets, member),
            on_done,
        )
    }

    /// Commits these offsets (each the *next* offset to consume) atomically and durably.
    /// A group member may commit only partitions it holds ([`Error::NotAssigned`]); a
    /// consumer with a manual assignment may commit any.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::with_partitions(2))?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// c.assign(&[("t", 0), ("t", 1)])?;
    /// c.commit_offsets(&[("t", 0, 5), ("t", 1, 9)])?;
    /// assert_eq!((c.committed("t", 0), c.committed("t", 1)), (Some(5), Some(9)));
    /// # Ok(()) }
    /// ```
    pub fn commit_offsets(&self, offsets: &[(&str, u32, u64)]) -> Result<()> {
        self.check_open()?;
        self.sync_group()?;
        let subscribed = matches!(self.state.lock().mode, Mode::Subscribed(_));
        let owned: Vec<(String, u32, u64)> = offsets
            .iter()
            .map(|&(t, p, o)| (t.to_owned(), p, o))
            .collect();
        self.commit_list(&owned, subscribed)
    }

    /// The group's committed offset of a partition (the next offset to consume), if any —
    /// whoever committed it (see [`commit`](Self::commit) for an example).
    pub fn committed(&self, topic: &str, partition: u32) -> Option<u64> {
        self.coord
            .offsets
            .committed(&self.config.group, topic, partition)
    }

    /// The next offset `poll` fetches from a held partition (resolving a new partition's start
    /// from the committed offset or the reset policy).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// store.append("t", 0, &[Message::new("a"), Message::new("b")])?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig::new("g"))?; // latest
    /// c.assign(&[("t", 0)])?;
    /// assert_eq!(c.position("t", 0)?, 2);
    /// # Ok(()) }
    /// ```
    pub fn position(&self, topic: &str, partition: u32) -> Result<u64> {
        self.check_open()?;
        let tp = TopicPartition::new(topic, partition);
        let mut st = self.state.lock();
        if !st.positions.contains_key(&tp) {
            return Err(self.not_assigned(&tp));
        }
        self.resolve(&mut st, &tp)
    }

    fn not_assigned(&self, tp: &TopicPartition) -> Error {
        Error::NotAssigned {
            group: self.config.group.clone(),
            topic: tp.topic.clone(),
            partition: tp.partition,
        }
    }

    /// Moves a held partition's position: the next `poll` fetches from `offset`. An offset
    /// outside the log is reset per `auto_offset_reset` at that fetch.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// store.append("t", 0, &[Message::new("a"), Message::new("b")])?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// c.assign(&[("t", 0)])?;
    /// c.seek("t", 0, 1)?;
    /// assert_eq!(c.poll(std::time::Duration::from_secs(1))?[0].record().body(), b"b");
    /// # Ok(()) }
    /// ```
    pub fn seek(&self, topic: &str, partition: u32, offset: u64) -> Result<()> {
        self.check_open()?;
        let tp = TopicPartition::new(topic, partition);
        let mut st = self.state.lock();
        match st.positions.get_mut(&tp) {
            Some(p) => {
                *p = Some(offset);
                Ok(())
            }
            None => Err(self.not_assigned(&tp)),
        }
    }

    /// Moves a held partition's position to the first record stored at or after
    /// `timestamp_ms` (Kafka's `offsetsForTimes`), or to the end when there is none; returns
    /// the new position.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// store.append("t", 0, &[Message::new("old")])?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// c.assign(&[("t", 0)])?;
    /// assert_eq!(c.seek_to_time("t", 0, 0)?, 0);
    /// assert_eq!(c.seek_to_time("t", 0, i64::MAX)?, 1);
    /// # Ok(()) }
    /// ```
    pub fn seek_to_time(&self, topic: &str, partition: u32, timestamp_ms: i64) -> Result<u64> {
        self.check_open()?;
        let tp = TopicPartition::new(topic, partition);
        if !self.state.lock().positions.contains_key(&tp) {
            return Err(self.not_assigned(&tp));
        }
        let store = &self.coord.store;
        let offset = match store.offset_for_time(topic, partition, timestamp_ms)? {
            Some(o) => o,
            None => store.bounds(topic, partition)?.end,
        };
        self.seek(topic, partition, offset)?;
        Ok(offset)
    }

    /// Commits (with auto-commit), revokes and leaves the group. Later calls return
    /// [`Error::Closed`]; a second `close` does nothing. Dropping the consumer does the same,
    /// ignoring errors.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// c.subscribe(&["t"])?;
    /// c.close()?;
    /// assert!(c.poll(std::time::Duration::ZERO).is_err());
    /// # Ok(()) }
    /// ```
    pub fn close(&self) -> Result<()> {
        if self.state.lock().closed {
            return Ok(());
        }
        let mode = self.state.lock().mode.clone();
        let result = match mode {
            Mode::Subscribed(_) => self.unsubscribe(),
            Mode::Assigned if self.config.enable_auto_commit => self.commit_held(),
            _ => Ok(()),
        };
        let mut st = self.state.lock();
        st.closed = true;
        st.positions.clear();
        st.paused.clear();
        result
    }

    /// Stops fetching these held partitions (rdkafka's `pause`): `poll` neither reads them nor
    /// waits on them, and their positions stay where they are until
    /// [`resume`](Self::resume). Pausing a paused partition does nothing; a partition that is
    /// revoked (or a new `assign`/`subscribe`) forgets its pause. A partition not held is
    /// [`Error::NotAssigned`], and then nothing is paused.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset, TopicPartition};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("t", TopicConfig::with_partitions(2))?;
    /// store.append("t", 0, &[Message::new("a")])?;
    /// store.append("t", 1, &[Message::new("b")])?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..ConsumerConfig::new("g") })?;
    /// c.assign(&[("t", 0), ("t", 1)])?;
    /// c.pause(&[("t", 0)])?;
    /// assert_eq!(c.paused(), [TopicPartition::new("t", 0)]);
    /// let got = c.poll(Duration::from_secs(1))?;
    /// assert_eq!((got.len(), got[0].partition()), (1, 1));
    /// c.resume(&[("t", 0)])?;
    /// assert_eq!(c.poll(Duration::from_secs(1))?[0].partition(), 0);
    /// # Ok(()) }
    /// ```
    pub fn pause(&self, partitions: &[(&str, u32)]) -> Result<()> {
        self.check_open()?;
        let mut st = self.state.lock();
        let parts = self.held_list(&st, partitions)?;
        st.paused.extend(parts);
        Ok(())
    }

    /// Fetches these paused partitions again from their positions (see
    /// [`pause`](Self::pause) for an example). Resuming one that is not paused does nothing;
    /// one not held is [`Error::NotAssigned`]. Wakes a `poll` blocked now, so it fetches them
    /// at once.
    pub fn resume(&self, partitions: &[(&str, u32)]) -> Result<()> {
        self.check_open()?;
        let mut st = self.state.lock();
        let parts = self.held_list(&st, partitions)?;
        let mut any = false;
        for tp in &parts {
            any |= st.paused.remove(tp);
        }
        drop(st);
        if any {
            // A poll waiting on the other partitions would not see these before its timeout.
            self.wakeup.wake();
        }
        Ok(())
    }

    /// The paused partitions, sorted (see [`pause`](Self::pause) for an example).
    pub fn paused(&self) -> Vec<TopicPartition> {
        self.state.lock().paused.iter().cloned().collect()
    }

    /// Makes the `poll` blocked now, or the next one if none is, return at once with the
    /// records it has (maybe none) — Kafka's `wakeup`, without the exception. Callable from
    /// any thread; how a thread that owns no poll (a worker, a shutdown) gets a polling thread
    /// to look at the world again.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use std::time::{Duration, Instant};
    /// # use duolog::{LogStore, StoreOptions, TopicConfig};
    /// # use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let c = Consumer::new(&groups, ConsumerConfig::new("g"))?;
    /// c.assign(&[("t", 0)])?;
    /// c.wakeup();
    /// let t = Instant::now();
    /// assert!(c.poll(Duration::from_secs(60))?.is_empty());
    /// assert!(t.elapsed() < Duration::from_secs(60));
    /// # Ok(()) }
    /// ```
    pub fn wakeup(&self) {
        self.interrupted.store(true, Ordering::Release);
        self.wakeup.wake();
    }

    /// `partitions` as held `TopicPartition`s, or `NotAssigned` for the first one not held.
    fn held_list(&self, st: &State, partitions: &[(&str, u32)]) -> Result<Vec<TopicPartition>> {
        partitions
            .iter()
            .map(|&(t, p)| {
                let tp = TopicPartition::new(t, p);
                if st.positions.contains_key(&tp) {
                    Ok(tp)
                } else {
                    Err(self.not_assigned(&tp))
                }
            })
            .collect()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.close();
        // A failed close may have left the membership behind.
        self.coord.leave(&self.config.group, &self.member_id);
    }
}

/// A consumer's place in its group, as a transaction's offsets need it (Kafka's
/// `ConsumerGroupMetadata`, KIP-447): the group and, for a subscribed member, its member id.
/// Offsets sent with a member's metadata commit only while that member holds their partitions;
/// an evicted member (a zombie whose partitions went to another) gets
/// [`Error::NotAssigned`](crate::Error::NotAssigned). Made by [`Consumer::group_metadata`];
/// from a bare group name ([`unchecked`](Self::unchecked), or `&str` through `From`) nothing is
/// checked — only for producers that are no group member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerGroupMetadata {
    pub(crate) group: String,
    pub(crate) member_id: Option<String>,
}

impl ConsumerGroupMetadata {
    /// A group name alone: offsets sent with it are not checked against any member.
    ///
    /// ```
    /// use duolog::consumer::ConsumerGroupMetadata;
    /// let meta = ConsumerGroupMetadata::unchecked("g");
    /// assert_eq!((meta.group(), meta.member_id()), ("g", None));
    /// assert_eq!(ConsumerGroupMetadata::from("g"), meta);
    /// ```
    pub fn unchecked(group: impl Into<String>) -> Self {
        ConsumerGroupMetadata {
            group: group.into(),
            member_id: None,
        }
    }

    /// The group (see [`unchecked`](Self::unchecked)).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The member whose ownership is checked, if any (see [`unchecked`](Self::unchecked)).
    pub fn member_id(&self) -> Option<&str> {
        self.member_id.as_deref()
    }
}

impl From<&str> for ConsumerGroupMetadata {
    fn from(group: &str) -> Self {
        ConsumerGroupMetadata::unchecked(group)
    }
}

impl From<&String> for ConsumerGroupMetadata {
    fn from(group: &String) -> Self {
        ConsumerGroupMetadata::unchecked(group.as_str())
    }
}

impl From<&ConsumerGroupMetadata> for ConsumerGroupMetadata {
    fn from(meta: &ConsumerGroupMetadata) -> Self {
        meta.clone()
    }
}

impl From<&Consumer> for ConsumerGroupMetadata {
    fn from(consumer: &Consumer) -> Self {
        consumer.group_metadata()
    }
}
