//! A forwarding [`LogStore`] for the transaction layer's tests: counts what a transaction costs
//! (syncs, durable waits, markers and how many run at once, transaction log records) and can
//! make a transactional append land and still report an error (a lost acknowledgement).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duolog::durability::{Completion, Wakeup};
use duolog::txn::TXN_LOG_TOPIC;
use duolog::{
    AppendResult, CompactionReport, DiskUsage, EngineKind, Error, Fetch, KeyMatch, LogStore,
    Message, PartitionBounds, ProducerEntry, ProducerId, ReadLimits, Record, TopicConfig,
    TxnMarker, VerifyReport,
};
use parking_lot::{Condvar, Mutex};

/// What the probe saw since the last [`Probe::reset`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `LogStore::sync` calls.
    pub syncs: usize,
    /// `append_async` calls to the transaction log.
    pub txn_log_writes: usize,
    /// `write_marker` calls.
    pub markers: usize,
    /// The most `write_marker` calls in flight at once.
    pub markers_at_once: usize,
}

#[derive(Debug, Default)]
struct State {
    counts: Counts,
    markers_in_flight: usize,
    /// `write_marker` waits (up to `rendezvous_wait`) until this many are in flight, so calls
    /// made at once are seen at once however the threads are scheduled.
    rendezvous: usize,
    /// The next N transactional appends land and then fail with an I/O error.
    land_then_fail: usize,
    /// (review) After this many more transaction log writes, the next one fails unwritten.
    fail_txn_log_write_after: Option<usize>,
}

#[derive(Debug)]
pub struct Probe {
    pub inner: Arc<dyn LogStore>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Probe {
    pub fn new(inner: Arc<dyn LogStore>) -> Arc<Probe> {
        Arc::new(Probe {
            inner,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    pub fn counts(&self) -> Counts {
        self.state.lock().counts.clone()
    }

    pub fn reset(&self) {
        self.state.lock().counts = Counts::default();
    }

    /// Markers wait (at most a second each) for `n` of them to be in flight together.
    pub fn rendezvous_markers(&self, n: usize) {
        self.state.lock().rendezvous = n;
    }

    /// (review) After `skip` more transaction log writes, the next one fails (nothing written).
    pub fn fail_txn_log_write_after(&self, skip: usize) {
        self.state.lock().fail_txn_log_write_after = Some(skip);
    }

    /// The next `n` transactional appends are written, then reported as failed.
    pub fn land_then_fail(&self, n: usize) {
        self.state.lock().land_then_fail = n;
    }
}

impl LogStore for Probe {
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
        producer: ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
        self.inner
            .append_idempotent(topic, partition, producer, base_sequence, messages)
    }
    fn producer_state(&self, topic: &str, partition: u32) -> duolog::Result<Vec<ProducerEntry>> {
        self.inner.producer_state(topic, partition)
    }
    fn append(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
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
        if topic == TXN_LOG_TOPIC {
            let mut st = self.state.lock();
            st.counts.txn_log_writes += 1;
            match st.fail_txn_log_write_after {
                Some(0) => {
                    st.fail_txn_log_write_after = None;
                    return Err(Error::Io {
                        path: self.inner.dir().to_path_buf(),
                        source: std::io::Error::other("injected: transaction log write failed"),
                    });
                }
                Some(n) => st.fail_txn_log_write_after = Some(n - 1),
                None => {}
            }
        }
        self.inner.append_async(topic, partition, messages)
    }
    fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
        let r =
            self.inner
                .append_transactional(topic, partition, producer, base_sequence, messages)?;
        let mut st = self.state.lock();
        if st.land_then_fail > 0 {
            st.land_then_fail -= 1;
            return Err(Error::Io {
                path: self.inner.dir().to_path_buf(),
                source: std::io::Error::other("injected: the batch landed, the reply was lost"),
            });
        }
        Ok(r)
    }
    fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        marker: TxnMarker,
        coordinator_epoch: i32,
    ) -> duolog::Result<Option<u64>> {
        {
            let mut st = self.state.lock();
            st.counts.markers += 1;
            st.markers_in_flight += 1;
            st.counts.markers_at_once = st.counts.markers_at_once.max(st.markers_in_flight);
            self.changed.notify_all();
            let until = Instant::now() + Duration::from_secs(1);
            while st.markers_in_flight < st.rendezvous && st.counts.markers_at_once < st.rendezvous
            {
                if self.changed.wait_until(&mut st, until).timed_out() {
                    break;
                }
            }
        }
        let r = self
            .inner
            .write_marker(topic, partition, producer, marker, coordinator_epoch);
        self.state.lock().markers_in_flight -= 1;
        r
    }
    fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> duolog::Result<Fetch> {
        self.inner.fetch(topic, partition, offset, limits)
    }
    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> duolog::Result<Vec<Record>> {
        self.inner.read(topic, partition, offset, limits)
    }
    fn bounds(&self, topic: &str, partition: u32) -> duolog::Result<PartitionBounds> {
        self.inner.bounds(topic, partition)
    }
    fn sync(&self) -> duolog::Result<()> {
        self.state.lock().counts.syncs += 1;
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
