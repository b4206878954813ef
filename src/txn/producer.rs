//! [`TransactionalProducer`]: Kafka's transactional producer API over a
//! [`TransactionCoordinator`](super::TransactionCoordinator) — `begin`, `send` to any
//! partitions, `send_offsets` (Kafka's `sendOffsetsToTransaction`), `commit`, `abort`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::coordinator::Inner;
use crate::consumer::{ConsumerGroupMetadata, OFFSETS_TOPIC};
use crate::error::{Error, Result};
use crate::store::{AppendResult, Message, ProducerId, TxnMarker};

/// Settings of a [`TransactionalProducer`]; Kafka's names and defaults.
///
/// ```
/// use std::time::Duration;
/// use duolog::txn::TxnProducerConfig;
/// let config = TxnProducerConfig { transaction_timeout: Duration::from_secs(10), ..TxnProducerConfig::default() };
/// assert_eq!(config.retries, 3);
/// ```
#[derive(Clone, Debug)]
pub struct TxnProducerConfig {
    /// `transaction.timeout.ms`: a transaction open longer is aborted by the coordinator (and
    /// the producer fenced). At most the coordinator's `transaction_max_timeout`. Default: 60 s.
    pub transaction_timeout: Duration,
    /// How many times a send is retried after an I/O error, with the same sequence numbers (a
    /// batch that did land is recognised as a duplicate and not written twice). Default: 3.
    pub retries: u32,
}

impl Default for TxnProducerConfig {
    fn default() -> Self {
        TxnProducerConfig {
            transaction_timeout: Duration::from_secs(60),
            retries: 3,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    in_txn: bool,
    /// Partitions enrolled in the current transaction.
    enrolled: BTreeSet<(String, u32)>,
    /// Next sequence number per partition under this producer's epoch.
    sequences: HashMap<(String, u32), i32>,
    /// Partitions whose last send failed without knowing whether its batch landed: their next
    /// sequence is read back from the partition's producer state before the next send there.
    unsure: HashSet<(String, u32)>,
    /// A newer instance (or a timeout) took over: every later call fails.
    fenced: Option<Error>,
    /// A send failed in a way that leaves the transaction unusable: only `abort` is allowed.
    abortable: Option<String>,
}

/// A producer whose writes land atomically across partitions and topics (Kafka's transactional
/// `KafkaProducer`), made by
/// [`TransactionCoordinator::producer`](super::TransactionCoordinator::producer). A commit that
/// returned `Ok` is visible to `read_committed` readers in every partition, after any crash; a
/// transaction not committed before a crash is aborted at the next open. Calls on one producer
/// are serialised (it is `Sync`; share it or make one per thread with its own id).
///
/// ```
/// use std::sync::Arc;
/// use duolog::{IsolationLevel, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
/// use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("t", TopicConfig::default())?;
/// let coordinator = TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())?;
/// let producer = coordinator.producer("writer", TxnProducerConfig::default())?;
/// producer.begin()?;
/// producer.send("t", 0, &[Message::new("lost")])?;
/// producer.abort()?;
/// producer.begin()?;
/// producer.send("t", 0, &[Message::new("kept")])?;
/// producer.commit()?;
/// let committed = ReadLimits::default().with_isolation(IsolationLevel::ReadCommitted);
/// let bodies: Vec<_> = store.fetch("t", 0, 0, committed)?.records.iter().map(|r| r.body().to_vec()).collect();
/// assert_eq!(bodies, [b"kept".to_vec()]);
/// # Ok(()) }
/// ```
pub struct TransactionalProducer {
    coord: Arc<Inner>,
    transactional_id: String,
    producer: ProducerId,
    config: TxnProducerConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionalProducer")
            .field("transactional_id", &self.transactional_id)
            .field("producer", &self.producer)
            .finish()
    }
}

fn clone_error(e: &Error) -> Error {
    match e {
        Error::ProducerFenced {
            topic,
            partition,
            producer,
            current_epoch,
        } => Error::ProducerFenced {
            topic: topic.clone(),
            partition: *partition,
            producer: *producer,
            current_epoch: *current_epoch,
        },
        other => Error::InvalidArgument(other.to_string()),
    }
}

impl TransactionalProducer {
    pub(crate) fn new(
        coord: Arc<Inner>,
        transactional_id: String,
        producer: ProducerId,
        config: TxnProducerConfig,
    ) -> Self {
        TransactionalProducer {
            coord,
            transactional_id,
            producer,
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The transactional id.
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// The producer id and epoch this instance writes with (see
    /// [`TransactionCoordinator::producer`](super::TransactionCoordinator::producer) for an
    /// example).
    pub fn producer_id(&self) -> ProducerId {
        self.producer
    }

    fn invalid(&self, topic: &str, partition: u32, reason: impl Into<String>) -> Error {
        Error::InvalidTxnState {
            topic: topic.to_owned(),
            partition,
            producer: self.producer,
            reason: reason.into(),
        }
    }

    fn check_usable(&self, st: &State) -> Result<()> {
        if let Some(e) = &st.fenced {
            return Err(clone_error(e));
        }
        Ok(())
    }

    /// Remembers a fencing error: this instance is done.
    fn note(&self, st: &mut State, e: Error) -> Error {
        if matches!(e, Error::ProducerFenced { .. }) {
            st.fenced = Some(clone_error(&e));
        }
        e
    }

    /// Starts a transaction (Kafka's `beginTransaction`; local until the first send). A second
    /// `begin` before `commit` or `abort` is [`Error::InvalidTxnState`].
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{Error, LogStore, StoreOptions};
    /// # use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// let coordinator = TransactionCoordinator::open(store, TxnCoordinatorConfig::default())?;
    /// let producer = coordinator.producer("p", TxnProducerConfig::default())?;
    /// producer.begin()?;
    /// assert!(matches!(producer.begin(), Err(Error::InvalidTxnState { .. })));
    /// # Ok(()) }
    /// ```
    pub fn begin(&self) -> Result<()> {
        let mut st = self.state.lock();
        self.check_usable(&st)?;
        if st.in_txn {
            return Err(self.invalid("", 0, "a transaction is already in progress"));
        }
        st.in_txn = true;
        st.enrolled.clear();
        st.abortable = None;
        Ok(())
    }

    /// Runs `append` (the writes to `partitions`) under the coordinator's check that this
    /// instance and its transaction are still current, enrolling the partitions not enrolled
    /// yet (durably, all in one transaction log record; none written when all are) before
    /// anything is written to them. Checked at every send, not only the first to a partition:
    /// a timeout abort may have ended the transaction since (KIP-890's verification).
    fn verified<T>(
        &self,
        st: &mut State,
        partitions: &[(String, u32)],
        append: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<T> {
        // The partitions must exist before they are enrolled (an unknown one is the caller's
        // error, not something to mark at commit).
        for (topic, partition) in partitions {
            self.coord.store.bounds(topic, *partition)?;
        }
        // Only the transaction's first enrolment may begin it at the coordinator; later sends
        // must find it still open.
        let may_begin = st.enrolled.is_empty();
        let mut enrolled = false;
        let r = self.coord.append_verified(
            &self.transactional_id,
            self.producer,
            partitions,
            may_begin,
            || {
                enrolled = true;
                st.enrolled.extend(partitions.iter().cloned());
                append(st)
            },
        );
        match r {
            Err(e) if !enrolled => Err(self.note(st, e)),
            r => r,
        }
    }

    /// Appends through `append` with this partition's next sequence numbers, retrying I/O
    /// errors with the same numbers; advances the sequence on success.
    fn append_sequenced(
        &self,
        st: &mut State,
        topic: &str,
        partition: u32,
        count: usize,
        mut append: impl FnMut(i32) -> Result<AppendResult>,
    ) -> Result<AppendResult> {
        let tp = (topic.to_owned(), partition);
        if st.unsure.contains(&tp) {
            self.resync_sequence(st, &tp)?;
        }
        let base = st.sequences.get(&tp).copied().unwrap_or(0);
        let n = i32::try_from(count).map_err(|_| {
            Error::InvalidArgument(format!("a batch of {count} messages is too large"))
        })?;
        // A batch's sequence range may not pass i32::MAX; the one after a batch ending there
        // starts at 0.
        let last = base.checked_add(n - 1).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "a batch of {count} messages passes the sequence limit at {base}: send fewer"
            ))
        })?;
        let mut tries = 0;
        let result = loop {
            match append(base) {
                Err(Error::Io { .. }) if tries < self.config.retries => tries += 1,
                other => break other,
            }
        };
        match result {
            Ok(r) => {
                st.sequences
                    .insert(tp, if last == i32::MAX { 0 } else { last + 1 });
                Ok(r)
            }
            Err(e @ Error::ProducerFenced { .. }) => Err(self.note(st, e)),
            // Refused before anything was written: the transaction goes on.
            Err(
                e @ (Error::MessageTooLarge { .. }
                | Error::InvalidArgument(_)
                | Error::UnknownTopic(_)
                | Error::UnknownPartition { .. }),
            ) => Err(e),
            Err(e) => {
                // The batch may or may not be in the log, and the sequence is uncertain: the
                // transaction can only be aborted (Kafka's abortable error), and the next send
                // here learns the sequence from the partition (KIP-360: had it landed, the
                // same numbers again would be taken for a retry of it, other ones refused as
                // out of order, as the abort keeps the epoch).
                st.abortable = Some(e.to_string());
                st.unsure.insert(tp);
                Err(e)
            }
        }
    }

    /// Sets the partition's next sequence from what the partition holds of this producer (its
    /// last sequence under this epoch), once a send's outcome was unknown. Nothing of this
    /// epoch there: the sequence the producer had stays (the batch did not land).
    fn resync_sequence(&self, st: &mut State, tp: &(String, u32)) -> Result<()> {
        let entries = self.coord.store.producer_state(&tp.0, tp.1)?;
        if let Some(e) = entries.iter().find(|e| e.producer == self.producer) {
            let next = if e.last_sequence == i32::MAX {
                0
            } else {
                e.last_sequence + 1
            };
            st.sequences.insert(tp.clone(), next);
        }
        st.unsure.remove(tp);
        Ok(())
    }

    fn check_sending(&self, st: &State, topic: &str, partition: u32) -> Result<()> {
        self.check_usable(st)?;
        if !st.in_txn {
            return Err(self.invalid(topic, partition, "no transaction: call begin first"));
        }
        if let Some(reason) = &st.abortable {
            return Err(self.invalid(
                topic,
                partition,
                format!("an earlier send failed ({reason}): abort the transaction"),
            ));
        }
        Ok(())
    }

    /// Sends a batch to a partition inside the transaction: enrolls the partition at the
    /// coordinator first (durably: the coordinator always knows every partition that may hold
    /// the transaction's data, so a commit or abort reaches all of them), then appends it with
    /// the partition's next sequence numbers. Outside `begin`/`commit` it is
    /// [`Error::InvalidTxnState`]; once a newer instance fenced this one,
    /// [`Error::ProducerFenced`]. Invisible to `read_committed` readers until the commit.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{Error, LogStore, Message, StoreOptions, TopicConfig};
    /// # use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// let coordinator = TransactionCoordinator::open(store, TxnCoordinatorConfig::default())?;
    /// let producer = coordinator.producer("p", TxnProducerConfig::default())?;
    /// assert!(matches!(producer.send("t", 0, &[Message::new("x")]), Err(Error::InvalidTxnState { .. })));
    /// producer.begin()?;
    /// let r = producer.send("t", 0, &[Message::new("x"), Message::new("y")])?;
    /// assert_eq!((r.base_offset, r.last_offset), (0, 1));
    /// # Ok(()) }
    /// ```
    pub fn send(&self, topic: &str, partition: u32, messages: &[Message]) -> Result<AppendResult> {
        let mut st = self.state.lock();
        self.check_sending(&st, topic, partition)?;
        if messages.is_empty() {
            return Err(Error::InvalidArgument("an empty batch".into()));
        }
        let store = Arc::clone(&self.coord.store);
        let producer = self.producer;
        self.verified(&mut st, &[(topic.to_owned(), partition)], |st| {
            self.append_sequenced(st, topic, partition, messages.len(), |seq| {
                store.append_transactional(topic, partition, producer, seq, messages)
            })
        })
    }

    /// Sends batches to several partitions inside the transaction, as Kafka's producer sends
    /// what it accumulated: the partitions not enrolled yet are enrolled together, in one
    /// durable transaction log record (a transaction spread over N partitions costs one
    /// enrolment sync, not N), then each batch is appended in order with its partition's next
    /// sequence numbers. Returns each batch's offsets, in order. A partition may appear more
    /// than once (its batches follow each other). Checked before anything is written: no
    /// batches, an empty batch ([`Error::InvalidArgument`]), an unknown partition; the rest
    /// as [`send`](Self::send). An error once a batch of the call was written leaves the
    /// transaction abortable only (which of the call's batches landed is not known to the
    /// caller).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{IsolationLevel, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
    /// # use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("t", TopicConfig::with_partitions(2))?;
    /// let coordinator = TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())?;
    /// let producer = coordinator.producer("p", TxnProducerConfig::default())?;
    /// producer.begin()?;
    /// let a = [Message::new("a")];
    /// let b = [Message::new("b"), Message::new("c")];
    /// let sent = producer.send_all(&[("t", 0, &a[..]), ("t", 1, &b[..])])?;
    /// assert_eq!((sent[1].base_offset, sent[1].last_offset), (0, 1));
    /// producer.commit()?;
    /// let committed = ReadLimits::default().with_isolation(IsolationLevel::ReadCommitted);
    /// assert_eq!(store.fetch("t", 1, 0, committed)?.records.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn send_all(&self, batches: &[(&str, u32, &[Message])]) -> Result<Vec<AppendResult>> {
        let mut st = self.state.lock();
        let Some(&(topic, partition, _)) = batches.first() else {
            return Err(Error::InvalidArgument("no batches to send".into()));
        };
        self.check_sending(&st, topic, partition)?;
        if batches.iter().any(|(_, _, m)| m.is_empty()) {
            return Err(Error::InvalidArgument("an empty batch".into()));
        }
        let mut partitions: Vec<(String, u32)> =
            batches.iter().map(|&(t, p, _)| (t.to_owned(), p)).collect();
        partitions.sort();
        partitions.dedup();
        let store = Arc::clone(&self.coord.store);
        let producer = self.producer;
        self.verified(&mut st, &partitions, |st| {
            let mut out = Vec::with_capacity(batches.len());
            for &(topic, partition, messages) in batches {
                let r = self.append_sequenced(st, topic, partition, messages.len(), |seq| {
                    store.append_transactional(topic, partition, producer, seq, messages)
                });
                match r {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        if !out.is_empty() && st.abortable.is_none() {
                            st.abortable = Some(format!(
                                "a multi-partition send failed after {} of its batches: {e}",
                                out.len()
                            ));
                        }
                        return Err(e);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Adds a consumer group's offsets to the transaction (Kafka's `sendOffsetsToTransaction`):
    /// a transactional commit record of the group in `__consumer_offsets`, enrolled like any
    /// partition. The offsets apply when the transaction commits — in the store, and in the
    /// store's [`GroupCoordinator`](crate::consumer::GroupCoordinator) of this process (the
    /// one given in [`TxnCoordinatorConfig::groups`](super::TxnCoordinatorConfig::groups)) —
    /// and never if it aborts. Each offset is the next one to consume.
    ///
    /// `group` is the consumer's [`group_metadata`](crate::consumer::Consumer::group_metadata)
    /// (or the [`Consumer`](crate::consumer::Consumer) itself): a subscribed member's offsets
    /// are refused with [`Error::NotAssigned`] unless it holds every partition now (KIP-447:
    /// an evicted member cannot commit what another member reprocesses); the transaction can
    /// still be aborted. A bare group name (`&str`) is *unchecked*: for producers outside any
    /// group membership only.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// use duolog::consumer::GroupCoordinator;
    /// use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("in", TopicConfig::default())?;
    /// store.create_topic("out", TopicConfig::default())?;
    /// let groups = GroupCoordinator::new(Arc::clone(&store))?;
    /// let config = TxnCoordinatorConfig { groups: Some(groups.clone()), ..TxnCoordinatorConfig::default() };
    /// let coordinator = TransactionCoordinator::open(store, config)?;
    /// let producer = coordinator.producer("etl", TxnProducerConfig::default())?;
    /// producer.begin()?;
    /// producer.send("out", 0, &[Message::new("result")])?;
    /// producer.send_offsets("etl-group", &[("in", 0, 5)])?;
    /// assert!(groups.committed_offsets("etl-group").is_empty(), "not before the commit");
    /// producer.commit()?;
    /// assert_eq!(groups.committed_offsets("etl-group")["in"][&0], 5);
    /// # Ok(()) }
    /// ```
    pub fn send_offsets(
        &self,
        group: impl Into<ConsumerGroupMetadata>,
        offsets: &[(&str, u32, u64)],
    ) -> Result<()> {
        let meta: ConsumerGroupMetadata = group.into();
        let mut st = self.state.lock();
        self.check_sending(&st, OFFSETS_TOPIC, 0)?;
        crate::consumer::validate_group_name(meta.group())?;
        if offsets.is_empty() {
            return Ok(());
        }
        let groups = self.coord.groups()?;
        // One record per partition (the last offset given for it wins).
        let last: BTreeMap<(&str, u32), u64> =
            offsets.iter().map(|&(t, p, o)| ((t, p), o)).collect();
        let owned: Vec<(String, u32, u64)> = last
            .into_iter()
            .map(|((t, p), o)| (t.to_owned(), p, o))
            .collect();
        let store = Arc::clone(&self.coord.store);
        let producer = self.producer;
        self.verified(&mut st, &[(OFFSETS_TOPIC.to_owned(), 0)], |st| {
            self.append_sequenced(st, OFFSETS_TOPIC, 0, owned.len(), |seq| {
                groups.append_txn_offsets(&meta, &owned, producer.id, |messages| {
                    store.append_transactional(OFFSETS_TOPIC, 0, producer, seq, &messages)
                })
            })
        })?;
        Ok(())
    }

    fn end(&self, marker: TxnMarker) -> Result<()> {
        let mut st = self.state.lock();
        self.check_usable(&st)?;
        if !st.in_txn {
            return Err(self.invalid("", 0, "no transaction: call begin first"));
        }
        if marker == TxnMarker::Commit
            && let Some(reason) = &st.abortable
        {
            return Err(self.invalid(
                "",
                0,
                format!("an earlier send failed ({reason}): abort the transaction"),
            ));
        }
        if !st.enrolled.is_empty()
            && let Err(e) = self
                .coord
                .end_txn(&self.transactional_id, self.producer, marker)
        {
            return Err(self.note(&mut st, e));
        }
        st.in_txn = false;
        st.enrolled.clear();
        st.abortable = None;
        Ok(())
    }

    /// Commits the transaction (Kafka's `commitTransaction`): syncs the store so every record
    /// of it is durable, writes the commit decision durably to the transaction log, then a
    /// commit marker into every enrolled partition. Once it returns `Ok`, the transaction is
    /// visible to `read_committed` readers everywhere, after any crash too. On an error the
    /// outcome may be either (a decided commit is finished by a retry of `commit`, the
    /// coordinator's timeout thread or the next open); after [`Error::ProducerFenced`] it was
    /// aborted. See [`send`](Self::send) and the type's docs for examples.
    pub fn commit(&self) -> Result<()> {
        self.end(TxnMarker::Commit)
    }

    /// Aborts the transaction (Kafka's `abortTransaction`): abort markers in every enrolled
    /// partition; its records are never shown to `read_committed` readers, and offsets it sent
    /// never apply. See the type's docs for an example.
    pub fn abort(&self) -> Result<()> {
        self.end(TxnMarker::Abort)
    }

    /// Aborts the transaction in progress, if any (a producer dropped with one open does the
    /// same, ignoring errors). After [`Error::ProducerFenced`] there is nothing to abort: the
    /// newer instance or the timeout did.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{IsolationLevel, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
    /// # use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// let coordinator = TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())?;
    /// let producer = coordinator.producer("p", TxnProducerConfig::default())?;
    /// producer.begin()?;
    /// producer.send("t", 0, &[Message::new("x")])?;
    /// producer.close()?;
    /// let b = store.bounds("t", 0)?;
    /// assert_eq!(b.last_stable, b.end, "aborted: nothing holds the LSO");
    /// # Ok(()) }
    /// ```
    pub fn close(&self) -> Result<()> {
        let open = {
            let st = self.state.lock();
            st.in_txn && st.fenced.is_none()
        };
        match self.abort() {
            Err(Error::ProducerFenced { .. }) => Ok(()),
            Err(e) if open => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether a transaction is in progress (between `begin` and its `commit` or `abort`).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions};
    /// # use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// let coordinator = TransactionCoordinator::open(store, TxnCoordinatorConfig::default())?;
    /// let producer = coordinator.producer("p", TxnProducerConfig::default())?;
    /// producer.begin()?;
    /// assert!(producer.in_transaction());
    /// producer.abort()?;
    /// assert!(!producer.in_transaction());
    /// # Ok(()) }
    /// ```
    pub fn in_transaction(&self) -> bool {
        self.state.lock().in_txn
    }
}

impl Drop for TransactionalProducer {
    fn drop(&mut self) {
        if self.state.get_mut().in_txn {
            let _ = self.close();
        }
    }
}
