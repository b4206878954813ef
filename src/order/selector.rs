//! Producer-side partition selection (RocketMQ's `MessageQueueSelector`, Kafka's
//! partitioner) and a producer that appends through a selector.
//!
//! Per-key order holds because every message of a key goes to one partition, and a
//! partition is appended to in order. That holds only while the partition count stays the
//! same: growing a topic moves keys to other partitions (Kafka and RocketMQ both do), so a
//! key's later messages may be read before its earlier ones by consumers of different
//! partitions. Grow an ordered topic only when its consumers have drained it, or use a
//! globally ordered topic ([`create_global_topic`](super::create_global_topic)), which
//! cannot grow.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::partitioner::partition_for_key;
use crate::store::{AppendResult, LogStore, Message};

/// Picks the partition of a message among `partitions` (> 0) partitions, given an argument
/// the caller passes with the send (RocketMQ's `MessageQueueSelector.select(mqs, msg, arg)`).
///
/// Any closure `Fn(&Message, &dyn Any, u32) -> u32` is a selector. A partition at or past
/// `partitions` is refused by [`OrderedProducer`] with
/// [`InvalidArgument`](Error::InvalidArgument), never a panic.
///
/// ```
/// use std::any::Any;
/// use duolog::Message;
/// use duolog::order::PartitionSelector;
/// // RocketMQ's classic: the order id passed as the argument picks the queue.
/// let by_order_id = |_: &Message, arg: &dyn Any, n: u32| {
///     arg.downcast_ref::<u64>().map_or(0, |id| (id % u64::from(n)) as u32)
/// };
/// assert_eq!(by_order_id.select(&Message::new("x"), &1001u64, 4)?, 1);
/// # Ok::<(), duolog::Error>(())
/// ```
pub trait PartitionSelector: Send + Sync {
    /// The partition for `message`, in `0..partitions`.
    fn select(&self, message: &Message, arg: &dyn Any, partitions: u32) -> Result<u32>;
}

impl<F> PartitionSelector for F
where
    F: Fn(&Message, &dyn Any, u32) -> u32 + Send + Sync,
{
    fn select(&self, message: &Message, arg: &dyn Any, partitions: u32) -> Result<u32> {
        Ok(self(message, arg, partitions))
    }
}

/// By sharding key: Kafka's default partitioner, `(murmur2(key) & 0x7fffffff) % partitions`,
/// stable across processes, runs and machines. The key is the message's key, or, for a
/// message without one, the argument when it is a `String`, `&str`, `Vec<u8>`, `&[u8]`,
/// `u64` or `i64` (big-endian bytes). Neither is [`InvalidArgument`](Error::InvalidArgument).
///
/// ```
/// use duolog::{Message, partition_for_key};
/// use duolog::order::{ByKey, PartitionSelector};
/// let m = Message::new("paid").with_key("order-7");
/// assert_eq!(ByKey.select(&m, &(), 8)?, partition_for_key(b"order-7", 8));
/// assert_eq!(ByKey.select(&Message::new("paid"), &"order-7", 8)?, ByKey.select(&m, &(), 8)?);
/// assert!(ByKey.select(&Message::new("no key"), &(), 8).is_err());
/// # Ok::<(), duolog::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ByKey;

impl ByKey {
    fn key_of<'a>(message: &'a Message, arg: &'a dyn Any) -> Option<std::borrow::Cow<'a, [u8]>> {
        use std::borrow::Cow;
        if let Some(k) = &message.key {
            return Some(Cow::Borrowed(k.as_ref()));
        }
        if let Some(s) = arg.downcast_ref::<String>() {
            return Some(Cow::Borrowed(s.as_bytes()));
        }
        if let Some(s) = arg.downcast_ref::<&str>() {
            return Some(Cow::Borrowed(s.as_bytes()));
        }
        if let Some(b) = arg.downcast_ref::<Vec<u8>>() {
            return Some(Cow::Borrowed(b));
        }
        if let Some(b) = arg.downcast_ref::<&[u8]>() {
            return Some(Cow::Borrowed(b));
        }
        if let Some(n) = arg.downcast_ref::<u64>() {
            return Some(Cow::Owned(n.to_be_bytes().to_vec()));
        }
        if let Some(n) = arg.downcast_ref::<i64>() {
            return Some(Cow::Owned(n.to_be_bytes().to_vec()));
        }
        None
    }
}

impl PartitionSelector for ByKey {
    fn select(&self, message: &Message, arg: &dyn Any, partitions: u32) -> Result<u32> {
        let key = ByKey::key_of(message, arg).ok_or_else(|| {
            Error::InvalidArgument(
                "ByKey needs a message key or a sharding-key argument (String, &str, Vec<u8>, \
                 &[u8], u64 or i64)"
                    .into(),
            )
        })?;
        Ok(partition_for_key(&key, partitions.max(1)))
    }
}

/// Round robin over the partitions, with a lock-free counter shared by every thread sending
/// through it. Gives no per-key order: for load spreading only.
///
/// ```
/// use duolog::Message;
/// use duolog::order::{PartitionSelector, RoundRobin};
/// let rr = RoundRobin::default();
/// let m = Message::new("x");
/// let picks: Vec<u32> = (0..4).map(|_| rr.select(&m, &(), 3).unwrap()).collect();
/// assert_eq!(picks, [0, 1, 2, 0]);
/// ```
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicU64,
}

impl PartitionSelector for RoundRobin {
    fn select(&self, _: &Message, _: &dyn Any, partitions: u32) -> Result<u32> {
        // u64 so the counter never wraps in practice (a wrap would only skew one turn).
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ok((n % u64::from(partitions.max(1))) as u32)
    }
}

/// Always this partition (an out-of-range one is the producer's error, not a panic).
///
/// ```
/// use duolog::Message;
/// use duolog::order::{Explicit, PartitionSelector};
/// assert_eq!(Explicit(2).select(&Message::new("x"), &(), 4)?, 2);
/// # Ok::<(), duolog::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Explicit(pub u32);

impl PartitionSelector for Explicit {
    fn select(&self, _: &Message, _: &dyn Any, _: u32) -> Result<u32> {
        Ok(self.0)
    }
}

/// How long [`OrderedProducer`] trusts its cached partition count before reading it again
/// (Kafka's `metadata.max.age.ms`, shorter because a read is a map lookup here).
const METADATA_MAX_AGE: Duration = Duration::from_secs(1);

/// The cached partition count of the producer's topic and when it was read.
#[derive(Clone, Copy)]
struct Metadata {
    partitions: u32,
    read_at: Instant,
}

/// Appends to one topic through a [`PartitionSelector`]: RocketMQ's
/// `producer.send(msg, selector, arg)`, over any [`LogStore`].
///
/// The topic's partition count is cached and read again (with
/// [`describe_topic`](LogStore::describe_topic)) after at most a second, at once after an
/// append meets [`UnknownPartition`](Error::UnknownPartition) (the append is then retried
/// once on a fresh selection), when the selector picks a partition past the cached count,
/// and after [`add_partitions`](Self::add_partitions). Growing the topic moves keys (see the
/// module docs): per-key order holds within one partition count.
///
/// ```
/// use std::sync::Arc;
/// use duolog::{LogStore, Message, StoreOptions, TopicConfig, partition_for_key};
/// use duolog::order::{ByKey, OrderedProducer};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("orders", TopicConfig::with_partitions(4))?;
/// let producer = OrderedProducer::new(Arc::clone(&store), "orders", ByKey)?;
/// for step in ["created", "paid", "shipped"] {
///     let (partition, _offset) = producer.send(&Message::new(step).with_key("order-42"))?;
///     assert_eq!(partition, partition_for_key(b"order-42", 4));
/// }
/// # Ok(()) }
/// ```
pub struct OrderedProducer {
    store: Arc<dyn LogStore>,
    topic: String,
    selector: Box<dyn PartitionSelector>,
    metadata: Mutex<Metadata>,
}

impl fmt::Debug for OrderedProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderedProducer")
            .field("topic", &self.topic)
            .field("partitions", &self.metadata.lock().partitions)
            .finish_non_exhaustive()
    }
}

impl OrderedProducer {
    /// A producer for `topic` choosing partitions with `selector`. An unknown topic is
    /// [`UnknownTopic`](Error::UnknownTopic).
    pub fn new(
        store: Arc<dyn LogStore>,
        topic: impl Into<String>,
        selector: impl PartitionSelector + 'static,
    ) -> Result<OrderedProducer> {
        let topic = topic.into();
        let partitions = store.describe_topic(&topic)?.partitions;
        Ok(OrderedProducer {
            store,
            topic,
            selector: Box::new(selector),
            metadata: Mutex::new(Metadata {
                partitions,
                read_at: Instant::now(),
            }),
        })
    }

    /// The topic it appends to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition count as last read.
    pub fn partitions(&self) -> u32 {
        self.metadata.lock().partitions
    }

    /// Reads the topic's partition count again and returns it.
    pub fn refresh(&self) -> Result<u32> {
        // The store call is made without the lock held: a slow describe never blocks others.
        let partitions = self.store.describe_topic(&self.topic)?.partitions;
        *self.metadata.lock() = Metadata {
            partitions,
            read_at: Instant::now(),
        };
        Ok(partitions)
    }

    fn cached_partitions(&self) -> Result<u32> {
        let m = *self.metadata.lock();
        if m.read_at.elapsed() < METADATA_MAX_AGE {
            Ok(m.partitions)
        } else {
            self.refresh()
        }
    }

    /// Grows the topic by `count` partitions through the store and refreshes the cached count
    /// at once. Keys move (see the type docs). A globally ordered topic refuses.
    pub fn add_partitions(&self, count: u32) -> Result<u32> {
        let result = self.store.add_partitions(&self.topic, count);
        self.refresh()?;
        result
    }

    /// The partition the selector picks for `message` with `arg` under the current count,
    /// checked: one at or past the count (after a refresh, in case the topic grew) is
    /// [`InvalidArgument`](Error::InvalidArgument).
    pub fn partition_for(&self, message: &Message, arg: &dyn Any) -> Result<u32> {
        let partitions = self.cached_partitions()?;
        let p = self.selector.select(message, arg, partitions)?;
        if p < partitions {
            return Ok(p);
        }
        let fresh = self.refresh()?;
        let p = self.selector.select(message, arg, fresh)?;
        if p < fresh {
            return Ok(p);
        }
        Err(Error::InvalidArgument(format!(
            "the partition selector picked partition {p} of topic {}, which has {fresh}",
            self.topic
        )))
    }

    /// Appends `message` to the partition the selector picks (with no argument: `&()`), and
    /// returns (partition, offset) once acknowledged under the store's flush policy.
    pub fn send(&self, message: &Message) -> Result<(u32, u64)> {
        self.send_with(message, &())
    }

    /// As [`send`](Self::send), passing `arg` to the selector (RocketMQ's `arg`).
    pub fn send_with(&self, message: &Message, arg: &dyn Any) -> Result<(u32, u64)> {
        let sent = self.send_batch_with(std::slice::from_ref(message), arg)?;
        let (partition, result) = sent[0];
        Ok((partition, result.base_offset))
    }

    /// Appends a batch: each message goes to the partition the selector picks, and the
    /// messages of one partition are appended together, in the batch's order, with one
    /// append (atomic per partition), so messages of one key stay together and in order.
    /// Returns one (partition, offsets) per partition written, in partition order. A
    /// selection error appends nothing.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// use duolog::order::{ByKey, OrderedProducer};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("orders", TopicConfig::with_partitions(3))?;
    /// let producer = OrderedProducer::new(store, "orders", ByKey)?;
    /// let batch: Vec<Message> = (0..6)
    ///     .map(|i| Message::new(format!("step {i}")).with_key(format!("order-{}", i % 2)))
    ///     .collect();
    /// let written = producer.send_batch(&batch)?;
    /// let total: u64 = written.iter().map(|(_, r)| r.last_offset - r.base_offset + 1).sum();
    /// assert_eq!(total, 6);
    /// # Ok(()) }
    /// ```
    pub fn send_batch(&self, messages: &[Message]) -> Result<Vec<(u32, AppendResult)>> {
        self.send_batch_with(messages, &())
    }

    /// As [`send_batch`](Self::send_batch), passing `arg` to the selector for every message.
    pub fn send_batch_with(
        &self,
        messages: &[Message],
        arg: &dyn Any,
    ) -> Result<Vec<(u32, AppendResult)>> {
        if messages.is_empty() {
            return Err(Error::InvalidArgument("an empty batch".into()));
        }
        // One retry: the first UnknownPartition means the cached count was stale (the topic
        // was deleted and created smaller); a second is the caller's to see.
        let mut retried = false;
        loop {
            let mut groups: BTreeMap<u32, Vec<Message>> = BTreeMap::new();
            for m in messages {
                let p = self.partition_for(m, arg)?;
                groups.entry(p).or_default().push(m.clone());
            }
            let mut out = Vec::with_capacity(groups.len());
            let mut stale = false;
            for (p, batch) in &groups {
                match self.store.append(&self.topic, *p, batch) {
                    Ok(r) => out.push((*p, r)),
                    // Only when nothing was written yet may the whole batch be reselected:
                    // a partial retry would duplicate what was appended.
                    Err(Error::UnknownPartition { .. }) if out.is_empty() && !retried => {
                        stale = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !stale {
                return Ok(out);
            }
            retried = true;
            self.refresh()?;
        }
    }
}
