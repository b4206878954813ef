//! Exactly once end to end: the consume-transform-produce loop (Kafka's
//! `read_committed` consumer + transactional producer + `sendOffsetsToTransaction`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::producer::TransactionalProducer;
use crate::consumer::{Consumer, ConsumerRecord};
use crate::error::Result;
use crate::store::Message;

/// One round of the consume-transform-produce loop: polls `consumer` (for at most `timeout`),
/// turns each record into output messages with `f` (`(topic, partition, message)`), and in
/// one transaction of `producer` sends them and the consumer's new positions (as the
/// consumer's group offsets), then commits. Returns how many input records it processed (0
/// when the poll returned none: no transaction is made).
///
/// Either all of a round lands — outputs visible to `read_committed` readers and the group's
/// offsets past its inputs — or none of it: on any error the transaction is aborted (if it
/// still can be) and the consumer rewound to the round's first records, so the next round
/// processes them again; after a crash the group's committed offsets are where the outputs
/// end. A failed *commit* may have been decided all the same: then recover as after a crash —
/// a new producer for the same transactional id (which finishes or aborts the transaction)
/// and a new consumer (which starts at the group's committed offsets). The consumer should read `read_committed` (its inputs may be another transaction's
/// outputs) and not auto-commit (its offsets go through the transaction).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use duolog::{IsolationLevel, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
/// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator, OffsetReset};
/// use duolog::txn::{transform, TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("in", TopicConfig::default())?;
/// store.create_topic("out", TopicConfig::default())?;
/// store.append("in", 0, &[Message::new("a"), Message::new("b")])?;
/// let groups = GroupCoordinator::new(Arc::clone(&store))?;
/// let txns = TransactionCoordinator::open(
///     Arc::clone(&store),
///     TxnCoordinatorConfig { groups: Some(groups.clone()), ..TxnCoordinatorConfig::default() },
/// )?;
/// let consumer = Consumer::new(&groups, ConsumerConfig {
///     isolation: IsolationLevel::ReadCommitted,
///     enable_auto_commit: false,
///     auto_offset_reset: OffsetReset::Earliest,
///     ..ConsumerConfig::new("upper")
/// })?;
/// consumer.assign(&[("in", 0)])?;
/// let producer = txns.producer("upper-0", TxnProducerConfig::default())?;
/// let n = transform(&consumer, &producer, Duration::from_secs(1), |r| {
///     vec![("out".to_string(), 0, Message::new(r.record().body().to_ascii_uppercase()))]
/// })?;
/// assert_eq!(n, 2);
/// assert_eq!(groups.committed_offsets("upper")["in"][&0], 2);
/// let committed = ReadLimits::default().with_isolation(IsolationLevel::ReadCommitted);
/// assert_eq!(store.fetch("out", 0, 0, committed)?.records[1].body(), b"B");
/// # Ok(()) }
/// ```
pub fn transform(
    consumer: &Consumer,
    producer: &TransactionalProducer,
    timeout: Duration,
    mut f: impl FnMut(&ConsumerRecord) -> Vec<(String, u32, Message)>,
) -> Result<usize> {
    let records = consumer.poll(timeout)?;
    if records.is_empty() {
        return Ok(0);
    }
    // Where the round started in each partition (to rewind to), and where it ends.
    let mut first: BTreeMap<(String, u32), u64> = BTreeMap::new();
    for r in &records {
        first
            .entry((r.topic().to_owned(), r.partition()))
            .or_insert(r.offset());
    }
    let sent = (|| -> Result<()> {
        producer.begin()?;
        // Outputs grouped per partition, in input order: one send per partition.
        let mut out: BTreeMap<(String, u32), Vec<Message>> = BTreeMap::new();
        for r in &records {
            for (topic, partition, m) in f(r) {
                out.entry((topic, partition)).or_default().push(m);
            }
        }
        for ((topic, partition), messages) in &out {
            producer.send(topic, *partition, messages)?;
        }
        let mut positions = Vec::with_capacity(first.len());
        for (topic, partition) in first.keys() {
            positions.push((
                topic.as_str(),
                *partition,
                consumer.position(topic, *partition)?,
            ));
        }
        producer.send_offsets(consumer, &positions)
    })();
    if let Err(e) = sent {
        // Nothing is decided yet: abort, and read the round again.
        if producer.in_transaction() {
            let _ = producer.abort();
        }
        for ((topic, partition), offset) in &first {
            let _ = consumer.seek(topic, *partition, *offset);
        }
        return Err(e);
    }
    // A failed commit may still be decided (and finished later): the caller recovers as
    // after a crash (see above), never by reading the round again on its own.
    producer.commit()?;
    Ok(records.len())
}
