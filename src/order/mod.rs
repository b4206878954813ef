//! The ordering layer over any [`LogStore`](crate::LogStore): partition selection, global
//! order, orderly consumption and priority delivery.

mod global;
mod priority;
mod selector;

pub use global::create_global_topic;
pub use priority::{
    MAX_PRIORITY, PRIORITY_LEVELS, PRIORITY_PROPERTY, PriorityConfig, PriorityConsumer,
    PriorityProducer, create_priority_topic, message_priority, priority_band,
    priority_partition_range,
};
pub use selector::{ByKey, Explicit, OrderedProducer, PartitionSelector, RoundRobin};
