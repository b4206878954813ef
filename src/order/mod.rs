//! The ordering layer, over any [`LogStore`](crate::LogStore): it reads and writes through the
//! trait and the consumer layer only, and imports no engine.
//!
//! - Partition selection ([`OrderedProducer`] with a [`PartitionSelector`]: [`ByKey`],
//!   [`RoundRobin`], [`Explicit`] or any closure, RocketMQ's `MessageQueueSelector`): the
//!   records of one sharding key go to one partition, so they keep their order.
//! - Global order ([`create_global_topic`]): a topic with `message.order=global` has exactly one
//!   partition, and both engines refuse to widen it.
//! - Orderly consumption ([`OrderlyConsumer`], RocketMQ's `MessageListenerOrderly`): within a
//!   group one member at a time holds a partition's lease ([`LeaseTable`], with expiry and a
//!   fencing token, renewed in the background); a partition's records go to the handler
//!   strictly in offset order, one call at a time; a failing record suspends its partition and
//!   is retried in place; offsets are committed only under a valid lease
//!   ([`Error::LeaseLost`](crate::Error::LeaseLost) otherwise).
//! - Priority delivery ([`PriorityProducer`], [`PriorityConsumer`], RocketMQ RIP-80): a
//!   message's priority (0–9, [`PRIORITY_PROPERTY`]) picks a band of the topic's partitions;
//!   the consumer drains the highest band with a backlog first, with an aging rule so lower
//!   bands are never starved forever.
//!
//! It owns no files and no topics of its own (dead letters go to the consumer layer's
//! `%DLQ%<group>`); its leases live in memory, in the
//! [`GroupCoordinator`](crate::consumer::GroupCoordinator).

mod global;
mod lease;
mod orderly;
mod priority;
mod selector;

pub use global::create_global_topic;
pub use lease::{
    Lease, LeaseClock, LeaseOptions, LeaseTable, MAX_LEASE, ManualClock, SystemLeaseClock,
};
pub use orderly::{
    ConsumeOrderlyStatus, OrderlyConfig, OrderlyConsumer, OrderlyContext, OrderlyHandler,
};
pub use priority::{
    MAX_PRIORITY, PRIORITY_LEVELS, PRIORITY_PROPERTY, PriorityConfig, PriorityConsumer,
    PriorityProducer, create_priority_topic, message_priority, priority_band,
    priority_partition_range,
};
pub use selector::{ByKey, Explicit, OrderedProducer, PartitionSelector, RoundRobin};
