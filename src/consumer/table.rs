//! [`CompactedTable`]: the latest value of every key of a topic, as a map (Kafka Streams'
//! KTable over a compacted topic, in-process).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::store::{IsolationLevel, LogStore, ReadLimits};

/// Records read per fetch while catching up.
const FETCH: usize = 4096;

#[derive(Default)]
struct State {
    /// The id of the topic the map was built from (a topic deleted and created again under
    /// the same name has another: the map starts over).
    topic_id: Option<u64>,
    map: HashMap<Bytes, Bytes>,
    /// Next offset to read, per partition.
    positions: Vec<u64>,
    records_read: u64,
}

/// A key → latest value map materialised from a topic (normally a compacted one): every keyed
/// record sets its key's value, a tombstone removes the key, records without a key are passed
/// over. The table follows the topic as it grows: every lookup first reads what was appended
/// since the last one (a few atomic loads when nothing was), so a lookup sees every record
/// appended before it started — read-your-writes within the process. Opening reads the topic
/// from the start; on a compacted topic that is about one record per live key, which is what
/// makes a restart fast.
///
/// A topic deleted and created again under the same name (a new
/// [`topic_id`](crate::LogStore::topic_id)) starts the map over from the new topic's records.
///
/// The map lives in memory: one entry per live key (Kafka Streams keeps the same state in a
/// local store). Keys are compared as bytes. A key lives in one partition when producers
/// partition by key (as `partition_for_key` does); one written to several partitions takes the
/// value of the partition read last.
///
/// ```
/// use std::sync::Arc;
/// use duolog::{CleanupPolicy, CompactedTable, LogStore, Message, StoreOptions, TopicConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// let config = TopicConfig { cleanup_policy: CleanupPolicy::Compact, ..TopicConfig::default() };
/// store.create_topic("prices", config)?;
/// store.append("prices", 0, &[Message::new("10").with_key("apple")])?;
///
/// let table = CompactedTable::open(Arc::clone(&store), "prices")?;
/// assert_eq!(table.get(b"apple")?.as_deref(), Some(&b"10"[..]));
/// store.append("prices", 0, &[Message::new("12").with_key("apple"), Message::tombstone("pear")])?;
/// assert_eq!(table.get(b"apple")?.as_deref(), Some(&b"12"[..]));
/// store.append("prices", 0, &[Message::tombstone("apple")])?;
/// assert_eq!(table.get(b"apple")?, None);
/// # Ok(()) }
/// ```
pub struct CompactedTable {
    store: Arc<dyn LogStore>,
    topic: String,
    isolation: IsolationLevel,
    state: Mutex<State>,
}

impl std::fmt::Debug for CompactedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactedTable")
            .field("topic", &self.topic)
            .finish()
    }
}

impl CompactedTable {
    /// Builds the table from every record of `topic` now in the store (read uncommitted, as
    /// Kafka's default: see [`open_with_isolation`](Self::open_with_isolation)).
    pub fn open(store: Arc<dyn LogStore>, topic: &str) -> Result<CompactedTable> {
        Self::open_with_isolation(store, topic, IsolationLevel::ReadUncommitted)
    }

    /// [`open`](Self::open) under an isolation level: with
    /// [`ReadCommitted`](IsolationLevel::ReadCommitted) the table holds only records of
    /// committed transactions (and plain ones) below each partition's last stable offset, and
    /// takes a transaction's records when it commits.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use duolog::{CompactedTable, IsolationLevel, LogStore, Message, StoreOptions, TopicConfig};
    /// use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("prices", TopicConfig::default())?;
    /// let txns = TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())?;
    /// let producer = txns.producer("pricer", TxnProducerConfig::default())?;
    /// let table = CompactedTable::open_with_isolation(Arc::clone(&store), "prices", IsolationLevel::ReadCommitted)?;
    /// producer.begin()?;
    /// producer.send("prices", 0, &[Message::new("10").with_key("apple")])?;
    /// assert_eq!(table.get(b"apple")?, None, "not committed yet");
    /// producer.commit()?;
    /// assert_eq!(table.get(b"apple")?.as_deref(), Some(&b"10"[..]));
    /// # Ok(()) }
    /// ```
    pub fn open_with_isolation(
        store: Arc<dyn LogStore>,
        topic: &str,
        isolation: IsolationLevel,
    ) -> Result<CompactedTable> {
        store.describe_topic(topic)?;
        let table = CompactedTable {
            store,
            topic: topic.to_owned(),
            isolation,
            state: Mutex::new(State::default()),
        };
        table.refresh()?;
        Ok(table)
    }

    /// The topic the table follows.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Reads what was appended since the last refresh; returns how many records it applied.
    /// Lookups call it themselves.
    pub fn refresh(&self) -> Result<u64> {
        let mut st = self.state.lock();
        let id = self.store.topic_id(&self.topic)?;
        if st.topic_id != Some(id) {
            st.map.clear();
            st.positions.clear();
            st.topic_id = Some(id);
        }
        let partitions = self.store.describe_topic(&self.topic)?.partitions as usize;
        st.positions.resize(partitions, 0);
        let mut applied = 0;
        for p in 0..partitions {
            let bounds = self.store.bounds(&self.topic, p as u32)?;
            // Retention may have passed the position: go on from the start.
            let mut at = st.positions[p].max(bounds.start);
            let bound = match self.isolation {
                IsolationLevel::ReadCommitted => bounds.last_stable,
                IsolationLevel::ReadUncommitted => bounds.end,
            };
            let limits = ReadLimits::messages(FETCH).with_isolation(self.isolation);
            while at < bound {
                let fetch = match self.store.fetch(&self.topic, p as u32, at, limits) {
                    Ok(f) => f,
                    // Retention moved the start since `bounds`: start over from it.
                    Err(Error::OffsetOutOfRange { start, .. }) if start > at => {
                        at = start;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                // Past markers and skipped aborted records too.
                if fetch.next_offset <= at {
                    break;
                }
                at = fetch.next_offset;
                let records = fetch.records;
                for r in &records {
                    let Some(key) = r.key() else { continue };
                    match r.value() {
                        Some(_) => {
                            // Copied: a slice of the read would keep its whole buffer (a
                            // mapped log file, a compacted chunk) alive as long as the key.
                            st.map.insert(
                                Bytes::copy_from_slice(key),
                                Bytes::copy_from_slice(r.body()),
                            );
                        }
                        None => {
                            st.map.remove(key);
                        }
                    }
                }
                applied += records.len() as u64;
            }
            st.positions[p] = at;
        }
        st.records_read += applied;
        Ok(applied)
    }

    /// The latest value of `key`, or `None` if it has none or its latest record is a tombstone.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.refresh()?;
        Ok(self.state.lock().map.get(key).cloned())
    }

    /// Number of live keys.
    pub fn len(&self) -> Result<usize> {
        self.refresh()?;
        Ok(self.state.lock().map.len())
    }

    /// Whether no key has a value.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Every live key and its value, in no particular order (a copy: the table goes on
    /// following the topic).
    pub fn snapshot(&self) -> Result<Vec<(Bytes, Bytes)>> {
        self.refresh()?;
        let st = self.state.lock();
        Ok(st.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Records read since the table was opened (the cost of its catch-ups: after a restart on
    /// a compacted topic, about one per live key).
    pub fn records_read(&self) -> u64 {
        self.state.lock().records_read
    }
}
