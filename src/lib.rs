//! # duolog
//!
//! A durable, in-process message log with two storage designs behind one [`LogStore`] trait:
//!
//! - the **CommitLog engine** ([`CommitLogStore`]), after Apache RocketMQ: every message of every
//!   topic appended to one commit log of fixed-size mapped files, with per-partition consume
//!   queues of 20-byte units pointing into it;
//! - the **segmented engine** ([`SegmentedStore`]), after Apache Kafka: a directory of segments
//!   per partition, `.log` files of Kafka RecordBatch v2 with sparse `.index` and `.timeindex`.
//!
//! Everything is synchronous and embeddable: no server, no async runtime.
//!
//! ```
//! use duolog::{LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
//!
//! # fn main() -> duolog::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = duolog::open(dir.path(), StoreOptions::default())?;
//! store.create_topic("orders", TopicConfig::with_partitions(2))?;
//! store.append("orders", 0, &[Message::new("created").with_key("order-1").with_tags("TagA")])?;
//!
//! let records = store.read("orders", 0, 0, ReadLimits::default())?;
//! assert_eq!(records[0].body(), b"created");
//! assert_eq!(records[0].key(), Some(&b"order-1"[..]));
//! assert_eq!(records[0].tags(), Some("TagA"));
//! store.close()?;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

mod catalog;
mod clock;
pub mod commitlog;
pub mod consumer;
pub mod delay;
pub mod durability;
mod error;
mod index;
#[allow(unsafe_code)]
pub mod io;
mod offsets_file;
mod open;
mod options;
pub mod order;
mod partitioner;
mod producer_state;
pub mod segmented;
mod store;
mod topic_config;
pub mod txn;

pub use commitlog::CommitLogStore;
pub use consumer::CompactedTable;
pub use durability::{Completion, Wakeup};
pub use error::{Error, Result};
pub use open::{open, stored_engine};
pub use options::{
    CommitLogOptions, CompactionOptions, FlushPolicy, IndexOptions, SegmentedOptions, StoreOptions,
};
pub use partitioner::{murmur2, partition_for_key};
pub use segmented::SegmentedStore;
pub use store::{
    AppendResult, CleanupPolicy, CompactionReport, DiskUsage, EngineKind, KeyMatch, LogStore,
    Message, MessageOrder, PartitionBounds, Properties, PropertiesRef, ReadLimits, ReadProgress,
    Record, RecordRef, TAG_SCAN_FACTOR, TaggedRead, TopicConfig, VerifyReport, Visitor,
    is_internal_topic,
};
pub use store::{Fetch, IsolationLevel, ProducerEntry, ProducerId, TxnMarker};
pub use topic_config::TOPIC_CONFIG_NAMES;

/// The README's quickstart, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
