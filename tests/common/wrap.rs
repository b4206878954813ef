//! A `LogStore` that forwards every call to a real store and lets a test watch or hold some of
//! them ([`Hooks`]): counting what a layer reads, gating an append. One wrapper, so a method
//! added to the trait is forwarded in one place.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use duolog::durability::{Completion, Wakeup};
use duolog::{
    AppendResult, CompactionReport, DiskUsage, EngineKind, KeyMatch, LogStore, Message,
    PartitionBounds, ReadLimits, Record, TopicConfig, VerifyReport,
};

/// What a test does around the calls it cares about; every method defaults to nothing.
pub trait Hooks: Send + Sync + fmt::Debug {
    /// Before a synchronous `append` reaches the store.
    fn before_append(&self, _topic: &str, _partition: u32, _messages: &[Message]) {}
    /// After `fetch` or `read` returned these records.
    fn after_read(&self, _topic: &str, _partition: u32, _records: &[Record]) {}
    /// Before `sync` reaches the store.
    fn before_sync(&self) {}
    /// Before `append_async` reaches the store; an error is returned instead (nothing written).
    fn before_append_async(&self, _dir: &Path, _topic: &str) -> duolog::Result<()> {
        Ok(())
    }
    /// After a transactional append landed; an error replaces its result (a lost reply).
    fn after_append_transactional(&self, _dir: &Path) -> duolog::Result<()> {
        Ok(())
    }
    /// Before `write_marker` reaches the store.
    fn before_marker(&self) {}
    /// After `write_marker` returned.
    fn after_marker(&self) {}
}

/// `inner` with `hooks` around some calls.
#[derive(Debug)]
pub struct Wrapped<H> {
    pub inner: Arc<dyn LogStore>,
    pub hooks: H,
}

impl<H> Wrapped<H> {
    pub fn new(inner: Arc<dyn LogStore>, hooks: H) -> Arc<Wrapped<H>> {
        Arc::new(Wrapped { inner, hooks })
    }
}

impl<H: Hooks> LogStore for Wrapped<H> {
    fn engine(&self) -> EngineKind {
        self.inner.engine()
    }
    fn dir(&self) -> &Path {
        self.inner.dir()
    }
    fn create_topic(&self, name: &str, config: TopicConfig) -> duolog::Result<()> {
        self.inner.create_topic(name, config)
    }
    fn describe_topic(&self, name: &str) -> duolog::Result<TopicConfig> {
        self.inner.describe_topic(name)
    }
    fn topic_id(&self, name: &str) -> duolog::Result<u64> {
        self.inner.topic_id(name)
    }
    fn alter_topic(&self, name: &str, config: TopicConfig) -> duolog::Result<()> {
        self.inner.alter_topic(name, config)
    }
    fn add_partitions(&self, name: &str, count: u32) -> duolog::Result<u32> {
        self.inner.add_partitions(name, count)
    }
    fn delete_topic(&self, name: &str) -> duolog::Result<()> {
        self.inner.delete_topic(name)
    }
    fn list_topics(&self, include_internal: bool) -> Vec<String> {
        self.inner.list_topics(include_internal)
    }
    fn allocate_producer_id(&self) -> duolog::Result<i64> {
        self.inner.allocate_producer_id()
    }
    fn append_idempotent(
        &self,
        topic: &str,
        partition: u32,
        producer: duolog::ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
        self.inner
            .append_idempotent(topic, partition, producer, base_sequence, messages)
    }
    fn producer_state(
        &self,
        topic: &str,
        partition: u32,
    ) -> duolog::Result<Vec<duolog::ProducerEntry>> {
        self.inner.producer_state(topic, partition)
    }
    fn append(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
        self.hooks.before_append(topic, partition, messages);
        self.inner.append(topic, partition, messages)
    }
    fn append_oneway(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
        self.inner.append_oneway(topic, partition, messages)
    }
    fn append_async(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> duolog::Result<Completion> {
        self.hooks.before_append_async(self.inner.dir(), topic)?;
        self.inner.append_async(topic, partition, messages)
    }
    fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        producer: duolog::ProducerId,
        base_sequence: i32,
        messages: &[duolog::Message],
    ) -> duolog::Result<AppendResult> {
        let r =
            self.inner
                .append_transactional(topic, partition, producer, base_sequence, messages)?;
        self.hooks.after_append_transactional(self.inner.dir())?;
        Ok(r)
    }
    fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: duolog::ProducerId,
        marker: duolog::TxnMarker,
        coordinator_epoch: i32,
    ) -> duolog::Result<Option<u64>> {
        self.hooks.before_marker();
        let r = self
            .inner
            .write_marker(topic, partition, producer, marker, coordinator_epoch);
        self.hooks.after_marker();
        r
    }
    fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> duolog::Result<duolog::Fetch> {
        let fetch = self.inner.fetch(topic, partition, offset, limits)?;
        self.hooks.after_read(topic, partition, &fetch.records);
        Ok(fetch)
    }
    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> duolog::Result<Vec<Record>> {
        let records = self.inner.read(topic, partition, offset, limits)?;
        self.hooks.after_read(topic, partition, &records);
        Ok(records)
    }
    fn bounds(&self, topic: &str, partition: u32) -> duolog::Result<PartitionBounds> {
        self.inner.bounds(topic, partition)
    }
    fn sync(&self) -> duolog::Result<()> {
        self.hooks.before_sync();
        self.inner.sync()
    }
    fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> duolog::Result<bool> {
        self.inner.wait_for(topic, partition, offset, timeout)
    }
    fn wait_for_any_with(
        &self,
        positions: &[(&str, u32, u64)],
        timeout: Duration,
        wakeup: &Wakeup,
    ) -> duolog::Result<bool> {
        self.inner.wait_for_any_with(positions, timeout, wakeup)
    }
    fn delete_before(&self, topic: &str, partition: u32, offset: u64) -> duolog::Result<u64> {
        self.inner.delete_before(topic, partition, offset)
    }
    fn find_by_key(
        &self,
        topic: &str,
        key: &str,
        time_range: (i64, i64),
        limit: usize,
    ) -> duolog::Result<Vec<KeyMatch>> {
        self.inner.find_by_key(topic, key, time_range, limit)
    }
    fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> duolog::Result<Option<u64>> {
        self.inner.offset_for_time(topic, partition, timestamp)
    }
    fn reindex(&self) -> duolog::Result<u64> {
        self.inner.reindex()
    }
    fn enforce_retention(&self) -> duolog::Result<usize> {
        self.inner.enforce_retention()
    }
    fn compact(&self, topic: Option<&str>) -> duolog::Result<CompactionReport> {
        self.inner.compact(topic)
    }
    fn partition_bytes(&self, topic: &str, partition: u32) -> duolog::Result<u64> {
        self.inner.partition_bytes(topic, partition)
    }
    fn disk_usage(&self) -> duolog::Result<DiskUsage> {
        self.inner.disk_usage()
    }
    fn verify(&self) -> duolog::Result<VerifyReport> {
        self.inner.verify()
    }
    fn close(&self) -> duolog::Result<()> {
        self.inner.close()
    }
    fn abandon(&self) {
        self.inner.abandon()
    }
}
