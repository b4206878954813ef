//! Globally ordered topics: one partition, one total order, never widened.
//!
//! The promise lives in the topic's `message.order` config, persisted in the catalog with
//! its other configs; the engines enforce it (`create_topic`, `alter_topic` and
//! `add_partitions` check it through the shared validators in `store.rs`), so no caller of
//! the store can widen such a topic either. This file only offers the helper that creates one.

use crate::error::Result;
use crate::store::{LogStore, MessageOrder, TopicConfig};

/// Creates `name` as a globally ordered topic (`message.order=global`): exactly one
/// partition, so every reader sees its records in the one order they were appended, and
/// [`add_partitions`](LogStore::add_partitions) on it is an error. `config` supplies the
/// other configs; its partition count must be 1 (or it is
/// [`InvalidArgument`](crate::Error::InvalidArgument)).
///
/// ```
/// use duolog::{LogStore, MessageOrder, StoreOptions, TopicConfig};
/// use duolog::order::create_global_topic;
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = duolog::open(dir.path(), StoreOptions::default())?;
/// create_global_topic(&*store, "ledger", TopicConfig::default())?;
/// let config = store.describe_topic("ledger")?;
/// assert_eq!((config.partitions, config.message_order), (1, MessageOrder::Global));
/// assert!(store.add_partitions("ledger", 1).is_err());
/// assert!(create_global_topic(&*store, "wide", TopicConfig::with_partitions(4)).is_err());
/// # Ok(()) }
/// ```
pub fn create_global_topic<S: LogStore + ?Sized>(
    store: &S,
    name: &str,
    config: TopicConfig,
) -> Result<()> {
    store.create_topic(
        name,
        TopicConfig {
            message_order: MessageOrder::Global,
            ..config
        },
    )
}
