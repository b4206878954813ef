//! [`TransactionCoordinator`]: Kafka's transaction coordinator and transaction state manager
//! for one store — producer ids and epochs per transactional id, the durable transaction log
//! ([`TXN_LOG_TOPIC`]), the two-phase end of a transaction (a durable `Prepare*` decision, then
//! markers into every enrolled partition, then `Complete*`), recovery at open and the
//! background abort of transactions past their timeout.
//!
//! # What a commit costs
//!
//! Kafka batches a transaction's durable work; so does this coordinator. For a transaction
//! over N partitions (here N = 4, sent with one
//! [`send_all`](super::TransactionalProducer::send_all)):
//!
//! | step | durable writes |
//! |---|---|
//! | enrolment (`AddPartitionsToTxn`) | 1 transaction log record + 1 `sync` per send that adds partitions, all its new ones in the record; 0 for a send to enrolled ones |
//! | data | 1 `sync` (every record of the transaction durable before the decision) |
//! | `PrepareCommit` | 1 transaction log record + 1 `sync` |
//! | markers | N `write_marker` calls, up to 8 at once (`MARKER_THREADS`, this thread and scoped threads taking partitions from a shared queue): each is durable on return, so they share syncs — the CommitLog engine's group commit fsyncs its one file for all of them, the segmented engine fsyncs the N partition files in parallel |
//! | `CompleteCommit` | 1 transaction log record, **not** synced |
//!
//! So at most 3 `sync` calls and N marker writes, 8 at a time, per transaction sent in one
//! `send_all` (`tests/txn_commit_cost.rs` counts them); an abort skips the data sync and the
//! decision's sync. The trait was left as it is: `write_marker` stays durable on return, and
//! issuing the calls together is enough for the engines' own group commit.
//!
//! `CompleteCommit` need not be durable: recovery re-drives every `Prepare*` it finds (markers
//! sent again where the transaction is already ended write nothing), so losing it costs a few
//! marker checks at the next open. It must never be durable *before* the markers are, or a
//! recovery would take the transaction for finished while a partition lost its marker: the
//! markers are all durable (every call returned) before `CompleteCommit` is appended.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::log::{TXN_LOG_PARTITIONS, TXN_LOG_SEGMENT_BYTES, TXN_LOG_TOPIC, TxnLogEntry, TxnState};
use super::producer::{TransactionalProducer, TxnProducerConfig};
use crate::consumer::GroupCoordinator;
use crate::error::{Error, Result};
use crate::store::{
    CleanupPolicy, LogStore, Message, ProducerId, ReadLimits, TopicConfig, TxnMarker,
};

/// The coordinator epoch every marker carries. Kafka bumps it when another broker takes the
/// transaction log partition over; here one coordinator serves a store for its whole life.
pub(crate) const COORDINATOR_EPOCH: i32 = 0;

/// The most markers one end of a transaction writes at once (this thread and up to 7 scoped
/// threads): enough for their syncs to overlap, bounded however many partitions the
/// transaction spans.
pub(crate) const MARKER_THREADS: usize = 8;

/// Stores served by a live transaction coordinator in this process, by the address of the store
/// object: a guard (like [`GroupCoordinator`]'s) so two coordinators, which would hand out the
/// same producer epochs, cannot serve one store at once.
static SERVED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn store_key(store: &Arc<dyn LogStore>) -> usize {
    Arc::as_ptr(store).cast::<()>() as usize
}

/// Settings of a [`TransactionCoordinator`]; Kafka's names and defaults.
///
/// ```
/// use std::time::Duration;
/// use duolog::txn::TxnCoordinatorConfig;
/// let config = TxnCoordinatorConfig {
///     abort_timed_out_interval: Duration::from_millis(100),
///     ..TxnCoordinatorConfig::default()
/// };
/// assert_eq!(config.transaction_max_timeout, Duration::from_secs(15 * 60));
/// ```
#[derive(Clone, Debug)]
pub struct TxnCoordinatorConfig {
    /// `transaction.max.timeout.ms`: the longest timeout a producer may ask for. Default: 15 min.
    pub transaction_max_timeout: Duration,
    /// `transactional.id.expiration.ms`: a transactional id with no transaction in progress and
    /// no activity for this long is forgotten (a tombstone in the log). Default: 7 days.
    pub transactional_id_expiration: Duration,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how often the background
    /// thread looks for transactions past their timeout. Default: 10 s.
    pub abort_timed_out_interval: Duration,
    /// The store's group coordinator, if the application has one: offsets a transaction sends
    /// ([`TransactionalProducer::send_offsets`]) apply to it when the transaction commits. When
    /// `None`, the coordinator makes one at the first `send_offsets` (refused if another one
    /// already serves the store: pass that one here). Default: `None`.
    pub groups: Option<GroupCoordinator>,
}

impl Default for TxnCoordinatorConfig {
    fn default() -> Self {
        TxnCoordinatorConfig {
            transaction_max_timeout: Duration::from_secs(15 * 60),
            transactional_id_expiration: Duration::from_secs(7 * 24 * 3600),
            abort_timed_out_interval: Duration::from_secs(10),
            groups: None,
        }
    }
}

/// What the coordinator knows of one transactional id (the last log record it wrote for it).
#[derive(Clone, Debug)]
struct Meta {
    /// −1 until the id gets its first producer id.
    producer_id: i64,
    epoch: i16,
    state: TxnState,
    partitions: BTreeSet<(String, u32)>,
    timeout_ms: u32,
    txn_start_ms: i64,
    last_update_ms: i64,
    /// Dropped from the map by expiration: whoever still holds it looks the id up again.
    removed: bool,
}

impl Meta {
    fn new() -> Meta {
        Meta {
            producer_id: -1,
            epoch: 0,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            timeout_ms: 60_000,
            txn_start_ms: -1,
            last_update_ms: 0,
            removed: false,
        }
    }

    fn from_entry(e: TxnLogEntry) -> Meta {
        Meta {
            producer_id: e.producer_id,
            epoch: e.epoch,
            state: e.state,
            partitions: e.partitions,
            timeout_ms: e.timeout_ms,
            txn_start_ms: e.txn_start_ms,
            last_update_ms: e.last_update_ms,
            removed: false,
        }
    }

    fn producer(&self) -> ProducerId {
        ProducerId {
            id: self.producer_id,
            epoch: self.epoch,
        }
    }

    /// Bumps the epoch; `false` when it is exhausted (the caller moves to a new producer id).
    fn bump(&mut self) -> bool {
        match self.epoch.checked_add(1) {
            Some(e) => {
                self.epoch = e;
                true
            }
            None => false,
        }
    }
}

type Shared = Arc<Mutex<Meta>>;

pub(crate) struct Inner {
    pub(crate) store: Arc<dyn LogStore>,
    /// This coordinator's entry in `SERVED`, released when the last holder (the coordinator,
    /// its thread, its producers) is gone.
    key: usize,
    config: TxnCoordinatorConfig,
    /// Per transactional id; each id's operations are serialised by its own lock (held across
    /// its log writes and markers, as Kafka serialises a transactional id's requests). This map's
    /// lock is never held across I/O.
    txns: Mutex<HashMap<String, Shared>>,
    groups: Mutex<Option<GroupCoordinator>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The transaction coordinator of one store (Kafka's `TransactionCoordinator` with its
/// `TransactionStateManager`): hands every transactional id a producer id and epoch, keeps each
/// transaction's state durably in [`TXN_LOG_TOPIC`], and ends transactions in two phases — the
/// decision (`PrepareCommit`/`PrepareAbort`) durable in the log first, then an end marker
/// ([`LogStore::write_marker`]) into every enrolled partition, then `Complete*` — so a
/// transaction is visible in every partition or in none, after a crash at any point.
///
/// At open it reads the log and finishes what the last process left: `Prepare*` transactions
/// get their markers again (a marker where none is open writes nothing), `Ongoing` ones are
/// aborted (their producer died with the process: the store is single-process). A background
/// thread (`duolog-txn-timeout`) aborts transactions open longer than their timeout, with a
/// bumped epoch that fences their producer, so no last stable offset stays stuck.
///
/// One per store at a time in a process (a second is refused with
/// [`Error::InvalidArgument`] while this one or any of its producers lives); its thread stops on
/// [`close`](Self::close) or drop.
///
/// ```
/// use std::sync::Arc;
/// use duolog::{IsolationLevel, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
/// use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("orders", TopicConfig::with_partitions(2))?;
/// let coordinator = TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())?;
/// let producer = coordinator.producer("order-writer", TxnProducerConfig::default())?;
/// producer.begin()?;
/// producer.send("orders", 0, &[Message::new("a")])?;
/// producer.send("orders", 1, &[Message::new("b")])?;
/// let committed = ReadLimits::default().with_isolation(IsolationLevel::ReadCommitted);
/// assert!(store.fetch("orders", 0, 0, committed)?.records.is_empty(), "not yet");
/// producer.commit()?;
/// assert_eq!(store.fetch("orders", 1, 0, committed)?.records[0].body(), b"b");
/// coordinator.close()?;
/// # Ok(()) }
/// ```
pub struct TransactionCoordinator {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for TransactionCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionCoordinator")
            .field("dir", &self.inner.store.dir())
            .finish()
    }
}

impl TransactionCoordinator {
    /// Serves the transactions of `store`: creates [`TXN_LOG_TOPIC`] on first use, loads every
    /// transactional id's state from it, finishes or aborts what was in progress (see the type's
    /// docs) and starts the timeout thread. A timeout interval of zero is
    /// [`Error::InvalidArgument`].
    pub fn open(
        store: Arc<dyn LogStore>,
        config: TxnCoordinatorConfig,
    ) -> Result<TransactionCoordinator> {
        if config.abort_timed_out_interval.is_zero() || config.transaction_max_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "the timeout check interval and the maximum timeout must be positive".into(),
            ));
        }
        let key = store_key(&store);
        {
            let mut served = SERVED.lock();
            if served.contains(&key) {
                return Err(Error::InvalidArgument(format!(
                    "a TransactionCoordinator already serves the store at {}",
                    store.dir().display()
                )));
            }
            served.push(key);
        }
        let groups = config.groups.clone();
        // From here on, dropping `inner` releases the store's slot.
        let inner = Arc::new(Inner {
            store,
            key,
            config,
            txns: Mutex::new(HashMap::new()),
            groups: Mutex::new(groups),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        inner.recover()?;
        let worker = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("duolog-txn-timeout".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::io(inner.store.dir(), e))?;
        Ok(TransactionCoordinator {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// A transactional producer for `transactional_id` (Kafka's `initTransactions`): the id's
    /// producer id (allocated on its first use), with its epoch bumped — which fences every
    /// older instance of the same id (their sends, markers and commits fail with
    /// [`Error::ProducerFenced`]) — after finishing what the older instance left: a decided
    /// commit or abort is completed, an open transaction aborted. An id of 0 or more than 255
    /// bytes, or a timeout of zero or above `transaction_max_timeout`, is
    /// [`Error::InvalidArgument`].
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
    /// let old = coordinator.producer("app", TxnProducerConfig::default())?;
    /// let new = coordinator.producer("app", TxnProducerConfig::default())?;
    /// assert_eq!(new.producer_id().id, old.producer_id().id);
    /// assert!(new.producer_id().epoch > old.producer_id().epoch);
    /// old.begin()?;
    /// assert!(matches!(old.send("t", 0, &[Message::new("x")]), Err(Error::ProducerFenced { .. })));
    /// # Ok(()) }
    /// ```
    pub fn producer(
        &self,
        transactional_id: &str,
        config: TxnProducerConfig,
    ) -> Result<TransactionalProducer> {
        let timeout_ms = self.inner.check_timeout(config.transaction_timeout)?;
        let producer = self.inner.init(transactional_id, timeout_ms)?;
        Ok(TransactionalProducer::new(
            Arc::clone(&self.inner),
            transactional_id.to_owned(),
            producer,
            config,
        ))
    }

    /// The state of a transactional id as the coordinator knows it (Kafka's
    /// `DescribeTransactions`): producer, state and enrolled partitions, or `None` for an id it
    /// does not know (never used, or expired).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig, TxnState};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", TopicConfig::default())?;
    /// let coordinator = TransactionCoordinator::open(store, TxnCoordinatorConfig::default())?;
    /// let p = coordinator.producer("app", TxnProducerConfig::default())?;
    /// p.begin()?;
    /// p.send("t", 0, &[Message::new("x")])?;
    /// let entry = coordinator.describe("app").unwrap();
    /// assert_eq!(entry.state, TxnState::Ongoing);
    /// assert!(entry.partitions.contains(&("t".to_string(), 0)));
    /// assert!(coordinator.describe("nobody").is_none());
    /// # Ok(()) }
    /// ```
    pub fn describe(&self, transactional_id: &str) -> Option<TxnLogEntry> {
        let meta = self.inner.txns.lock().get(transactional_id).cloned()?;
        let m = meta.lock();
        (!m.removed && m.producer_id >= 0).then(|| entry_of(transactional_id, &m))
    }

    /// The group coordinator that offsets sent in transactions go to: the one given in
    /// [`TxnCoordinatorConfig::groups`], or else one made for the store now (or at the first
    /// `send_offsets`) — the store's only one while this coordinator lives, so take it from
    /// here.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions};
    /// # use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// let coordinator = TransactionCoordinator::open(store, TxnCoordinatorConfig::default())?;
    /// let groups = coordinator.groups()?;
    /// assert!(groups.groups().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn groups(&self) -> Result<GroupCoordinator> {
        self.inner.groups()
    }

    /// Runs one pass of the background work now: aborts transactions past their timeout,
    /// finishes decided ones whose markers failed, and forgets expired ids. For tests and tools
    /// (the background thread does the same every `abort_timed_out_interval`).
    pub fn check_timeouts(&self) -> Result<()> {
        self.inner.sweep()
    }

    /// Stops the timeout thread. Transactions in progress stay as they are: the next open
    /// finishes or aborts them. Later calls do nothing.
    pub fn close(&self) -> Result<()> {
        *self.inner.stop.lock() = true;
        self.inner.wake.notify_all();
        if let Some(t) = self.thread.lock().take() {
            t.join().map_err(|_| {
                Error::InvalidArgument("the transaction timeout thread panicked".into())
            })?;
        }
        Ok(())
    }
}

impl Drop for TransactionCoordinator {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        SERVED.lock().retain(|k| *k != self.key);
    }
}

fn entry_of(transactional_id: &str, m: &Meta) -> TxnLogEntry {
    TxnLogEntry {
        transactional_id: transactional_id.to_owned(),
        producer_id: m.producer_id,
        epoch: m.epoch,
        state: m.state,
        partitions: m.partitions.clone(),
        timeout_ms: m.timeout_ms,
        txn_start_ms: m.txn_start_ms,
        last_update_ms: m.last_update_ms,
    }
}

fn validate_id(transactional_id: &str) -> Result<()> {
    if transactional_id.is_empty() || transactional_id.len() > 255 {
        return Err(Error::InvalidArgument(format!(
            "a transactional id needs 1 to 255 bytes, not {}",
            transactional_id.len()
        )));
    }
    Ok(())
}

/// Creates [`TXN_LOG_TOPIC`] (compacted, small segments) unless it exists.
fn ensure_topic(store: &dyn LogStore) -> Result<()> {
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: Some(TXN_LOG_SEGMENT_BYTES),
        min_compaction_lag: Some(Duration::ZERO),
        ..TopicConfig::with_partitions(TXN_LOG_PARTITIONS)
    };
    match store.create_topic(TXN_LOG_TOPIC, config) {
        Ok(()) | Err(Error::TopicExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Inner {
    fn check_timeout(&self, timeout: Duration) -> Result<u32> {
        if timeout.is_zero() || timeout > self.config.transaction_max_timeout {
            return Err(Error::InvalidArgument(format!(
                "transaction timeout {timeout:?} is not within (0, {:?}] (transaction.max.timeout.ms)",
                self.config.transaction_max_timeout
            )));
        }
        u32::try_from(timeout.as_millis()).map_err(|_| {
            Error::InvalidArgument(format!("transaction timeout {timeout:?} is too long"))
        })
    }

    fn log_partition(&self, transactional_id: &str) -> u32 {
        crate::partition_for_key(transactional_id.as_bytes(), TXN_LOG_PARTITIONS)
    }

    fn fenced(&self, transactional_id: &str, producer: ProducerId, m: &Meta) -> Error {
        Error::ProducerFenced {
            topic: TXN_LOG_TOPIC.to_owned(),
            partition: self.log_partition(transactional_id),
            producer,
            current_epoch: if m.producer_id == producer.id {
                m.epoch
            } else {
                // Another producer id took the transactional id over (epoch exhausted, or the
                // id expired and came back): any epoch of the old id is fenced.
                i16::MAX
            },
        }
    }

    fn invalid(&self, transactional_id: &str, producer: ProducerId, reason: String) -> Error {
        Error::InvalidTxnState {
            topic: TXN_LOG_TOPIC.to_owned(),
            partition: self.log_partition(transactional_id),
            producer,
            reason,
        }
    }

    /// Writes the id's state to the log; with `durable`, returns once it is on disk.
    fn write(&self, transactional_id: &str, m: &mut Meta, durable: bool) -> Result<()> {
        m.last_update_ms = crate::clock::now_ms();
        let value = entry_of(transactional_id, m).encode();
        let message =
            Message::new(value).with_key(Bytes::copy_from_slice(transactional_id.as_bytes()));
        let p = self.log_partition(transactional_id);
        let completion = self.store.append_async(TXN_LOG_TOPIC, p, &[message])?;
        if durable {
            if !completion.is_durable() {
                self.store.sync()?;
            }
            completion.wait()?;
        }
        Ok(())
    }

    /// The shared state of an id, made if missing.
    fn meta(&self, transactional_id: &str) -> Shared {
        Arc::clone(
            self.txns
                .lock()
                .entry(transactional_id.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(Meta::new()))),
        )
    }

    fn existing(&self, transactional_id: &str, producer: ProducerId) -> Result<Shared> {
        self.txns
            .lock()
            .get(transactional_id)
            .cloned()
            .ok_or_else(|| {
                self.invalid(
                    transactional_id,
                    producer,
                    "the transactional id is unknown (expired?)".into(),
                )
            })
    }

    /// Ends the transaction in `m` with `marker`: the decision (durable for a commit, after
    /// syncing the store so every record of the transaction is durable before it), markers to
    /// every enrolled partition, then `Complete*`. With `bump`, the abort fences the producer
    /// first (a timeout, or a new instance). Resumes a decision already taken (markers failed,
    /// or recovery). The state stays `Prepare*` if a marker fails: a retry, the timeout thread
    /// or the next open finishes it.
    fn end(
        &self,
        transactional_id: &str,
        m: &mut Meta,
        marker: TxnMarker,
        bump: bool,
    ) -> Result<()> {
        let (prepare, complete) = match marker {
            TxnMarker::Commit => (TxnState::PrepareCommit, TxnState::CompleteCommit),
            TxnMarker::Abort => (TxnState::PrepareAbort, TxnState::CompleteAbort),
        };
        // The epoch is exhausted: the markers go out at the old epoch (ending what is open),
        // then the id moves to a new producer id (KIP-890 part 2), which fences the old
        // instance at every later call (`append_verified`, `end_txn`).
        let mut renew = false;
        if m.state != prepare {
            if marker == TxnMarker::Commit {
                // Every data record of the transaction durable before the decision that makes
                // it visible (the flush policy may not have flushed it yet).
                self.store.sync()?;
            } else if bump {
                renew = !m.bump();
            }
            let before = m.clone();
            m.state = prepare;
            // Only a commit's decision must be durable before its markers: an abort lost to a
            // crash is decided again at the next open (an `Ongoing` transaction is aborted).
            if let Err(e) = self.write(transactional_id, m, marker == TxnMarker::Commit) {
                // Not known durable: the state stays what it was (`Ongoing`), so no marker is
                // ever sent for a decision the log may not hold; a retry writes the decision
                // again. Had the record reached the log all the same, only a failed fsync can
                // have hidden it, and that poisons the store: nothing is written after it.
                *m = before;
                return Err(e);
            }
        }
        let producer = m.producer();
        self.write_markers(&m.partitions, producer, marker)?;
        // Every marker is durable: the transaction is ended whatever happens to the writes
        // below (a lost `Complete*` only makes the next open send the markers again), so its
        // offsets apply now. Were they applied after `Complete*` and that write failed, the
        // state in memory would already say complete and a retried commit would return `Ok`
        // with the committed offsets never applied. Applying twice (a retry after a failure
        // below) finds nothing pending the second time.
        if let Some(groups) = self.groups.lock().clone() {
            groups.complete_txn_offsets(producer.id, marker == TxnMarker::Commit);
        }
        if renew {
            m.producer_id = self.store.allocate_producer_id()?;
            m.epoch = 0;
        }
        m.state = complete;
        m.txn_start_ms = -1;
        // Not synced: if it is lost, recovery sends the markers again, which write nothing.
        self.write(transactional_id, m, false)?;
        Ok(())
    }

    /// Writes `marker` into every partition of `partitions`, up to [`MARKER_THREADS`] at once:
    /// that many workers (this thread and scoped `duolog-txn-marker` threads) take the
    /// partitions one by one from a shared queue, so their syncs overlap — the CommitLog
    /// engine's group commit makes the calls share its one file's fsyncs, the segmented engine
    /// syncs the partitions' files in parallel — and a commit waits for about
    /// `partitions / MARKER_THREADS` syncs, not one per partition, with a bounded number of
    /// threads however many partitions a transaction spans. `write_marker` is durable on
    /// return, so every marker is durable once this returns `Ok`: what `Complete*` needs before
    /// it may reach the log. A partition deleted since (`UnknownTopic`/`UnknownPartition`)
    /// holds nothing of the transaction and is skipped; the first other error is returned,
    /// after every call ended.
    fn write_markers(
        &self,
        partitions: &BTreeSet<(String, u32)>,
        producer: ProducerId,
        marker: TxnMarker,
    ) -> Result<()> {
        let one = |(topic, p): &(String, u32)| -> Result<()> {
            match self
                .store
                .write_marker(topic, *p, producer, marker, COORDINATOR_EPOCH)
            {
                Ok(_) | Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) => Ok(()),
                Err(e) => Err(e),
            }
        };
        let all: Vec<&(String, u32)> = partitions.iter().collect();
        if all.len() <= 1 {
            return all.first().map_or(Ok(()), |tp| one(tp));
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        // One worker: takes the next partition until none is left; keeps its first error
        // (every partition still gets its call: a marker written is never wasted).
        let work = || -> Result<()> {
            let mut result = Ok(());
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(tp) = all.get(i) else {
                    return result;
                };
                let r = one(tp);
                if result.is_ok() {
                    result = r;
                }
            }
        };
        std::thread::scope(|scope| {
            let helpers = all.len().min(MARKER_THREADS) - 1;
            let mut handles = Vec::with_capacity(helpers);
            for _ in 0..helpers {
                // No thread to be had: the workers there are take its share.
                if let Ok(h) = std::thread::Builder::new()
                    .name("duolog-txn-marker".into())
                    .spawn_scoped(scope, work)
                {
                    handles.push(h);
                }
            }
            let mut result = work();
            for h in handles {
                let r = h.join().unwrap_or_else(|_| {
                    Err(Error::InvalidArgument(
                        "a transaction marker thread panicked".into(),
                    ))
                });
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }

    /// Kafka's `InitProducerId` for a transactional id.
    fn init(&self, transactional_id: &str, timeout_ms: u32) -> Result<ProducerId> {
        validate_id(transactional_id)?;
        loop {
            let meta = self.meta(transactional_id);
            let mut m = meta.lock();
            if m.removed {
                continue;
            }
            let bumped = if m.producer_id < 0 {
                m.producer_id = self.store.allocate_producer_id()?;
                m.epoch = 0;
                true
            } else {
                match m.state {
                    TxnState::Ongoing => {
                        let before = m.epoch;
                        self.end(transactional_id, &mut m, TxnMarker::Abort, true)?;
                        m.epoch != before
                    }
                    TxnState::PrepareCommit => {
                        self.end(transactional_id, &mut m, TxnMarker::Commit, false)?;
                        false
                    }
                    TxnState::PrepareAbort => {
                        self.end(transactional_id, &mut m, TxnMarker::Abort, false)?;
                        false
                    }
                    _ => false,
                }
            };
            if !bumped && !m.bump() {
                // Epochs exhausted: a fresh producer id (Kafka does the same).
                m.producer_id = self.store.allocate_producer_id()?;
                m.epoch = 0;
            }
            m.state = TxnState::Empty;
            m.partitions.clear();
            m.timeout_ms = timeout_ms;
            m.txn_start_ms = -1;
            self.write(transactional_id, &mut m, true)?;
            return Ok(m.producer());
        }
    }

    /// Kafka's `AddPartitionsToTxn` and KIP-890's verification guard in one: under the id's
    /// lock, checks that `producer` is still the id's current instance and its transaction
    /// still open (a timeout abort or a newer instance fenced it: `ProducerFenced`), enrolls
    /// `partitions` durably (starting a transaction if `may_begin` and none is in progress),
    /// and runs `append` before the lock is released. So no append ever lands after the
    /// transaction it belongs to was ended by someone else (which would open a transaction on
    /// the partition that nobody ends), even on a partition the abort's marker found empty
    /// and so never told of the new epoch. The lock is held across `append` on purpose; only
    /// this id's other calls (and the timeout sweep of this id) wait for it.
    pub(crate) fn append_verified<T>(
        &self,
        transactional_id: &str,
        producer: ProducerId,
        partitions: &[(String, u32)],
        may_begin: bool,
        append: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let meta = self.existing(transactional_id, producer)?;
        let mut m = meta.lock();
        if m.removed || m.producer() != producer {
            return Err(self.fenced(transactional_id, producer, &m));
        }
        if !may_begin && m.state != TxnState::Ongoing {
            // The producer's transaction was ended behind its back (cannot happen without an
            // epoch bump, which is caught above; kept as a guard).
            return Err(self.invalid(
                transactional_id,
                producer,
                format!("the transaction was ended ({:?}): abort it", m.state),
            ));
        }
        self.add_partitions_locked(transactional_id, producer, &mut m, partitions)?;
        append()
    }

    /// [`append_verified`](Self::append_verified)'s enrolment, under the id's lock.
    fn add_partitions_locked(
        &self,
        transactional_id: &str,
        producer: ProducerId,
        m: &mut Meta,
        partitions: &[(String, u32)],
    ) -> Result<()> {
        let before = m.clone();
        match m.state {
            s if s.is_idle() => {
                m.state = TxnState::Ongoing;
                m.partitions.clear();
                m.txn_start_ms = crate::clock::now_ms();
            }
            TxnState::Ongoing => {}
            s => {
                return Err(self.invalid(
                    transactional_id,
                    producer,
                    format!("the transaction is ending ({s:?})"),
                ));
            }
        }
        let mut added = false;
        for p in partitions {
            added |= m.partitions.insert(p.clone());
        }
        if !added && before.state == TxnState::Ongoing {
            return Ok(());
        }
        if let Err(e) = self.write(transactional_id, m, true) {
            // Whether or not it reached the disk, nothing was written to the new partitions:
            // at worst a marker goes to a partition with nothing open (which writes nothing).
            *m = before;
            return Err(e);
        }
        Ok(())
    }

    /// Kafka's `EndTxn` from the producer.
    pub(crate) fn end_txn(
        &self,
        transactional_id: &str,
        producer: ProducerId,
        marker: TxnMarker,
    ) -> Result<()> {
        let meta = self.existing(transactional_id, producer)?;
        let mut m = meta.lock();
        if m.removed || m.producer() != producer {
            return Err(self.fenced(transactional_id, producer, &m));
        }
        match (m.state, marker) {
            (TxnState::Ongoing, _)
            | (TxnState::PrepareCommit, TxnMarker::Commit)
            | (TxnState::PrepareAbort, TxnMarker::Abort) => {
                self.end(transactional_id, &mut m, marker, false)
            }
            // A retry of an end that completed, or an empty transaction.
            (TxnState::CompleteCommit, TxnMarker::Commit)
            | (TxnState::CompleteAbort, TxnMarker::Abort)
            | (TxnState::Empty, _) => Ok(()),
            (s, marker) => Err(self.invalid(
                transactional_id,
                producer,
                format!("cannot {marker:?} a transaction in state {s:?}"),
            )),
        }
    }

    /// The group coordinator offsets of transactions go to, made on first need.
    pub(crate) fn groups(&self) -> Result<GroupCoordinator> {
        let mut g = self.groups.lock();
        if let Some(groups) = &*g {
            return Ok(groups.clone());
        }
        let groups = GroupCoordinator::new(Arc::clone(&self.store))?;
        *g = Some(groups.clone());
        Ok(groups)
    }

    /// Loads the log and finishes every transaction the last process left in progress.
    fn recover(&self) -> Result<()> {
        ensure_topic(self.store.as_ref())?;
        let mut found: HashMap<String, TxnLogEntry> = HashMap::new();
        for p in 0..self.store.describe_topic(TXN_LOG_TOPIC)?.partitions {
            let bounds = self.store.bounds(TXN_LOG_TOPIC, p)?;
            let mut at = bounds.start;
            while at < bounds.end {
                let fetch = match self
                    .store
                    .fetch(TXN_LOG_TOPIC, p, at, ReadLimits::messages(1024))
                {
                    Ok(f) => f,
                    Err(Error::OffsetOutOfRange { start, .. }) if start > at => {
                        at = start;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if fetch.next_offset <= at {
                    break;
                }
                at = fetch.next_offset;
                for r in &fetch.records {
                    let corrupted = |reason: &str| {
                        Error::corrupted(
                            self.store.dir().join(format!("{TXN_LOG_TOPIC}-{p}")),
                            r.offset(),
                            format!("transaction log record at offset {}: {reason}", r.offset()),
                        )
                    };
                    let Some(key) = r.key() else { continue };
                    let id = std::str::from_utf8(key)
                        .map_err(|_| corrupted("transactional id is not UTF-8"))?;
                    match r.value() {
                        None => {
                            found.remove(id);
                        }
                        Some(v) => {
                            let entry = TxnLogEntry::decode(v).map_err(|e| corrupted(&e))?;
                            if entry.transactional_id != id {
                                return Err(corrupted("key and value name different ids"));
                            }
                            found.insert(id.to_owned(), entry);
                        }
                    }
                }
            }
        }
        let mut txns = HashMap::with_capacity(found.len());
        for (id, entry) in found {
            let mut m = Meta::from_entry(entry);
            match m.state {
                // Its producer died with the last process: abort, fencing it.
                TxnState::Ongoing => self.end(&id, &mut m, TxnMarker::Abort, true)?,
                TxnState::PrepareCommit => self.end(&id, &mut m, TxnMarker::Commit, false)?,
                TxnState::PrepareAbort => self.end(&id, &mut m, TxnMarker::Abort, false)?,
                _ => {}
            }
            txns.insert(id, Arc::new(Mutex::new(m)));
        }
        *self.txns.lock() = txns;
        // A group coordinator made before this open loaded its offsets up to the last stable
        // offset the unfinished transactions held: let it read the rest now.
        if let Some(groups) = self.groups.lock().clone() {
            groups.reload_offsets()?;
        }
        Ok(())
    }

    /// One pass of the background work; the first error is returned after the pass.
    fn sweep(&self) -> Result<()> {
        let all: Vec<(String, Shared)> = self
            .txns
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        let mut first = Ok(());
        for (id, meta) in all {
            let mut m = meta.lock();
            if m.removed {
                continue;
            }
            let now = crate::clock::now_ms();
            let result = match m.state {
                TxnState::Ongoing
                    if now.saturating_sub(m.txn_start_ms) > i64::from(m.timeout_ms) =>
                {
                    // Kafka aborts a timed-out transaction with a bumped epoch: its producer's
                    // later sends and commit are fenced.
                    self.end(&id, &mut m, TxnMarker::Abort, true)
                }
                TxnState::PrepareCommit => self.end(&id, &mut m, TxnMarker::Commit, false),
                TxnState::PrepareAbort => self.end(&id, &mut m, TxnMarker::Abort, false),
                s if s.is_idle()
                    && m.last_update_ms
                        < crate::clock::ms_before(now, self.config.transactional_id_expiration) =>
                {
                    self.expire(&id, &meta, &mut m)
                }
                _ => Ok(()),
            };
            if first.is_ok() {
                first = result;
            }
        }
        first
    }

    /// Forgets an idle id: a tombstone in the log, then out of the map.
    fn expire(&self, transactional_id: &str, meta: &Shared, m: &mut Meta) -> Result<()> {
        let p = self.log_partition(transactional_id);
        self.store.append(
            TXN_LOG_TOPIC,
            p,
            &[Message::tombstone(Bytes::copy_from_slice(
                transactional_id.as_bytes(),
            ))],
        )?;
        m.removed = true;
        let mut txns = self.txns.lock();
        if txns
            .get(transactional_id)
            .is_some_and(|x| Arc::ptr_eq(x, meta))
        {
            txns.remove(transactional_id);
        }
        Ok(())
    }

    fn run(&self) {
        loop {
            {
                let mut stop = self.stop.lock();
                if *stop {
                    return;
                }
                self.wake
                    .wait_for(&mut stop, self.config.abort_timed_out_interval);
                if *stop {
                    return;
                }
            }
            // Errors (a poisoned store, a full disk) are retried at the next pass; the
            // application sees them on its own calls.
            let _ = self.sweep();
        }
    }
}
