//! The consumer side, as a layer over any [`LogStore`](crate::LogStore): it reads and writes
//! through the trait only and imports no engine.
//!
//! - [`GroupCoordinator`]: the consumer groups of one store — committed offsets, durable and
//!   atomic, in the internal compacted topic `__consumer_offsets` ([`OFFSETS_TOPIC`]), and the
//!   members of each group in this process with their partitions, assigned by a pluggable
//!   [`Assignor`] ([`Averagely`], [`Sticky`]) and moved "revoke, then assign".
//! - [`Consumer`]: the pull consumer after rdkafka's `BaseConsumer` (`subscribe`/`assign`,
//!   `poll` long-polling over every held partition, `commit`, `seek`, rebalance callbacks).
//! - [`PushConsumer`]: the push consumer after RocketMQ's `DefaultMQPushConsumer` (a handler
//!   on a bounded thread pool, per-partition process queues and back-pressure), with retries
//!   through `%RETRY%<group>` and dead letters in `%DLQ%<group>` ([`RetryPolicy`]).
//! - [`CompactedTable`]: the key → latest value view of a (compacted) topic.
//! - Message trace ([`Tracer`], [`TracedStore`]): optional produce and consume events in the
//!   internal topic `__trace` ([`TRACE_TOPIC`]), queried by message id or key.
//! - Message filters: RocketMQ's tag expressions ([`TagFilter`]) and SQL92 property
//!   expressions ([`SqlFilter`]).
//!
//! It owns the topics `__consumer_offsets`, each push consumer group's `%RETRY%<group>` and
//! `%DLQ%<group>`, and `__trace` when tracing is on, and no files; it may not reach into the
//! engines' files or types.

mod assignor;
mod group;
mod offsets;
mod pull;
mod push;
mod retry;
mod sql;
mod table;
mod tags;
mod trace;

pub use assignor::{Assignor, Averagely, MemberSubscription, Sticky, TopicPartition};
pub use group::GroupCoordinator;
pub(crate) use group::validate_group as validate_group_name;
pub use offsets::{CommitRecord, OFFSETS_SEGMENT_BYTES, OFFSETS_TOPIC, OffsetTable, TopicIds};
pub use pull::{
    Consumer, ConsumerConfig, ConsumerGroupMetadata, ConsumerRecord, OffsetReset, RebalanceListener,
};
pub use push::{ConsumeResult, MessageHandler, PushConfig, PushConsumer};
pub(crate) use retry::dead_letter_record;
pub use retry::{
    ORIGIN_MESSAGE_ID, ORIGIN_OFFSET, ORIGIN_PARTITION, RECONSUME_TIMES, RETRY_TOPIC, RetryPolicy,
    dlq_topic, retry_topic,
};
pub use sql::{FilterError, SqlFilter};
pub use table::CompactedTable;
pub use tags::TagFilter;
pub use trace::{
    MAX_EVENTS_PER_MESSAGE, MAX_KEYS_WORD, MAX_QUEUE_CAPACITY, MAX_TRACE_BODY_BYTES,
    MAX_TRACED_FIELD, TRACE_TOPIC, TraceConfig, TraceEvent, TraceKind, TraceQuery, TraceStats,
    TracedStore, Tracer, decode_events, encode_events, message_id, parse_message_id,
};
