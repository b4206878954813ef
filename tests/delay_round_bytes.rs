//! A delivery round's byte budget (issue 13, contract item 5): `max_round` bounds a round by
//! entries, `DelayOptions::max_round_bytes` by the bytes of the messages it reads and holds. A
//! store wrapper counts the bytes read from `__delay_messages` between two progress records
//! (a round reads its messages before its INTENT).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{for_each_engine, read_all, small_options};
use duolog::delay::{DelayOptions, DelayQueue, MESSAGES_TOPIC, ManualClock, PROGRESS_TOPIC};
use duolog::durability::{Completion, Wakeup};
use duolog::{
    AppendResult, CompactionReport, DiskUsage, EngineKind, KeyMatch, LogStore, Message,
    PartitionBounds, ReadLimits, Record, TopicConfig, VerifyReport,
};
use parking_lot::Mutex;

const T0: i64 = 1_700_000_000_000;

/// What the layer counts against the budget: body, key and properties.
fn bytes_of(r: &Record) -> usize {
    r.body().len()
        + r.key().map_or(0, <[u8]>::len)
        + r.properties()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

#[derive(Debug)]
struct Counting {
    inner: Arc<dyn LogStore>,
    /// (bytes read from __delay_messages since the last progress record, largest such window)
    counts: Mutex<(usize, usize)>,
}

impl LogStore for Counting {
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
        if topic == PROGRESS_TOPIC {
            // A progress record ends a window: the round's planning reads are before its
            // INTENT.
            let mut c = self.counts.lock();
            c.1 = c.1.max(c.0);
            c.0 = 0;
        }
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
        self.inner.append_async(topic, partition, messages)
    }
    fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        producer: duolog::ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
        self.inner
            .append_transactional(topic, partition, producer, base_sequence, messages)
    }
    fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: duolog::ProducerId,
        marker: duolog::TxnMarker,
        coordinator_epoch: i32,
    ) -> duolog::Result<Option<u64>> {
        self.inner
            .write_marker(topic, partition, producer, marker, coordinator_epoch)
    }
    fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> duolog::Result<duolog::Fetch> {
        let fetch = self.inner.fetch(topic, partition, offset, limits)?;
        if topic == MESSAGES_TOPIC {
            let n: usize = fetch.records.iter().map(bytes_of).sum();
            self.counts.lock().0 += n;
        }
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
        if topic == MESSAGES_TOPIC {
            let n: usize = records.iter().map(bytes_of).sum();
            self.counts.lock().0 += n;
        }
        Ok(records)
    }
    fn bounds(&self, topic: &str, partition: u32) -> duolog::Result<PartitionBounds> {
        self.inner.bounds(topic, partition)
    }
    fn sync(&self) -> duolog::Result<()> {
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

/// Eight messages of 40 KiB due in one slot, a budget of 100 KiB: no round reads more than the
/// budget plus the one message that crosses it (before: one round read all 320 KiB), and all
/// eight arrive once, in due order, over several rounds.
#[test]
fn a_round_reads_at_most_its_byte_budget_of_large_messages() {
    for_each_engine(|engine, dir| {
        let inner: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        inner
            .create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let counting = Arc::new(Counting {
            inner: Arc::clone(&inner),
            counts: Mutex::new((0, 0)),
        });
        let store: Arc<dyn LogStore> = counting.clone();
        let clock = Arc::new(ManualClock::new(T0));
        let budget = 100 * 1024;
        let q = DelayQueue::open(
            Arc::clone(&store),
            DelayOptions {
                clock: clock.clone(),
                background: false,
                max_round_bytes: budget,
                ..DelayOptions::default()
            },
        )
        .unwrap();
        let big = 40 * 1024;
        for i in 0..8u8 {
            let m = Message::new(vec![b'a' + i; big]).with_key(format!("k{i}"));
            q.schedule("t", 0, m, T0 + 1_000 + i64::from(i)).unwrap();
        }
        q.pump().unwrap(); // placed (not due): enqueue reads are not a round's
        *counting.counts.lock() = (0, 0);
        clock.set(T0 + 2_000);
        let report = q.pump().unwrap();
        assert_eq!(report.delivered, 8, "{engine}");
        let largest = {
            let mut c = counting.counts.lock();
            c.1 = c.1.max(c.0);
            c.1
        };
        assert!(
            largest <= budget + big + 1024,
            "{engine}: a round read {largest} bytes, over {budget} + one message"
        );
        let got = read_all(&*inner, "t", 0);
        assert_eq!(got.len(), 8, "{engine}");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.body()[0], b'a' + i as u8, "{engine}: in due order");
        }
        q.close().unwrap();
    });
}

#[test]
fn a_zero_byte_budget_is_a_clear_error() {
    for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        let r = DelayQueue::open(
            store,
            DelayOptions {
                background: false,
                max_round_bytes: 0,
                ..DelayOptions::default()
            },
        );
        assert!(
            matches!(r, Err(duolog::Error::InvalidArgument(_))),
            "{engine}"
        );
    });
}
