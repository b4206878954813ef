//! [`PushConsumer`]: RocketMQ's `DefaultMQPushConsumer` in concurrent mode — a handler run on
//! a bounded pool of worker threads, fed by one pull thread that runs a [`Consumer`].
//!
//! What it owns: the pull thread (`duolog-consumer-<group>`), the workers
//! (`duolog-push-<group>-<n>`), one *process queue* per held partition, and the group's
//! commits while it runs (the inner consumer's auto-commit is off). Through
//! [`retry`](super::retry) it owns the group's `%RETRY%<group>` and `%DLQ%<group>` topics;
//! it subscribes to `%RETRY%<group>` along with the caller's topics.
//!
//! **Process queue.** Every record pulled and not yet finished (queued for a worker, inside
//! the handler, being sent back, or waiting to retry a failed send back) is in its partition's process
//! queue. The offset committed for a partition is the smallest offset in it, or the pull
//! position when it is empty: a slow record holds its partition's committed offset back while
//! later ones finish, as RocketMQ's `ProcessQueue` does. Back-pressure: a record is taken into
//! a process queue only while the queue holds fewer than `pull_threshold_for_queue` records
//! and `pull_threshold_size_for_queue` bytes and the record is at most
//! `consume_concurrently_max_span` past the smallest offset in it (an empty queue takes any
//! record); a record that does not fit is given back (the partition's position is moved back
//! to it) and the partition is paused ([`Consumer::pause`]) until a worker makes room. So a
//! queue never exceeds its thresholds, and the work queue holds at most the sum of them.
//!
//! **Rebalance.** A partition revoked from this member (inside the pull thread's `poll`) stops
//! being dispatched (queued records of it are dropped, not handled), the revoke waits until
//! no handler of it is running, commits its offset and only then lets the revoke complete —
//! so two members never handle one partition at once, and the next owner starts at the first
//! record this one did not finish.
//!
//! **Crash and shutdown.** [`PushConsumer::shutdown`] stops pulling, lets the workers finish
//! every record already dispatched, commits, and leaves the group: a consumer started again
//! resumes right after what was handled. After a crash the group resumes at its last commit
//! (every `commit_interval`): records finished since then are handled again, and so is a
//! failed record whose retry copy was written but whose offset was not yet committed (see
//! [`retry`](super::retry) for exactly what repeats). Nothing is skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::assignor::TopicPartition;
use super::group::{GroupCoordinator, validate_group};
use super::pull::{Consumer, ConsumerConfig, ConsumerRecord, RebalanceListener};
use super::retry::{
    RetryPolicy, ensure_topic, reconsume_times, retry_topic, send_back, validate_group_topics,
};
use crate::clock::{deadline, now_ms};
use crate::delay::DelayQueue;
use crate::error::{Error, Result};
use crate::store::LogStore;

/// What a handler says about the records it was given (RocketMQ's
/// `ConsumeConcurrentlyStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Handled: their offsets may be committed.
    Success,
    /// Not handled: each is sent back to `%RETRY%<group>` and delivered again after the
    /// back-off (to `%DLQ%<group>` after `max_reconsume_times` retries).
    ReconsumeLater,
}

/// The user's code: called on a worker thread with `1..=consume_batch_max` records of one
/// partition. A panic counts as [`ConsumeResult::ReconsumeLater`] (caught; the worker goes on).
/// Any `Fn(&[ConsumerRecord]) -> ConsumeResult + Send + Sync` is a handler.
///
/// A record delivered again after a failure comes from `%RETRY%<group>`: its
/// [`RETRY_TOPIC`](super::RETRY_TOPIC) property names the original topic,
/// [`ORIGIN_MESSAGE_ID`](super::ORIGIN_MESSAGE_ID) its first delivery (`topic-partition-offset`)
/// and [`RECONSUME_TIMES`](super::RECONSUME_TIMES) how many times it was sent back.
pub trait MessageHandler: Send + Sync {
    /// Handles the records; the result applies to all of them.
    fn handle(&self, records: &[ConsumerRecord]) -> ConsumeResult;
}

impl<F: Fn(&[ConsumerRecord]) -> ConsumeResult + Send + Sync> MessageHandler for F {
    fn handle(&self, records: &[ConsumerRecord]) -> ConsumeResult {
        self(records)
    }
}

/// A push consumer's settings; RocketMQ's names and defaults.
///
/// ```
/// use std::time::Duration;
/// use duolog::consumer::{PushConfig, RetryPolicy};
/// let config = PushConfig {
///     consume_threads: 4,
///     retry: RetryPolicy::exponential(),
///     ..PushConfig::new("billing")
/// };
/// assert_eq!(config.pull_threshold_for_queue, 1000);
/// assert_eq!(config.max_reconsume_times, 16);
/// assert_eq!(config.commit_interval, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// The group and the pull settings (`auto_offset_reset`, `tag_filter`, assignor…). Its
    /// `enable_auto_commit` and `max_poll_records` are ignored: the push consumer commits
    /// itself and pulls `pull_batch` records at a time.
    pub consumer: ConsumerConfig,
    /// Worker threads running the handler (`consumeThreadMin`), 1 to 1024. Default: 20.
    pub consume_threads: usize,
    /// At most this many records per handler call, all of one partition
    /// (`consumeMessageBatchMaxSize`). Default: 1.
    pub consume_batch_max: usize,
    /// Records per pull (`pullBatchSize`). Default: 32.
    pub pull_batch: usize,
    /// Records in a partition's process queue past which it is paused
    /// (`pullThresholdForQueue`). Default: 1000.
    pub pull_threshold_for_queue: usize,
    /// Bytes (stored size) in a partition's process queue past which it is paused
    /// (`pullThresholdSizeForQueue`). Default: 100 MiB.
    pub pull_threshold_size_for_queue: usize,
    /// A partition is paused while the distance from the smallest to the largest offset in
    /// its process queue would exceed this (`consumeConcurrentlyMaxSpan`). Default: 2000.
    pub consume_concurrently_max_span: u64,
    /// How often the offsets are committed (`persistConsumerOffsetInterval`); also at every
    /// revoke and at shutdown. Default: 5 s.
    pub commit_interval: Duration,
    /// The back-off between deliveries of a failed record. Default: RocketMQ's schedule.
    pub retry: RetryPolicy,
    /// Retries before a failed record goes to `%DLQ%<group>` (`maxReconsumeTimes`).
    /// Default: 16.
    pub max_reconsume_times: u32,
    /// The delay layer that holds a failed record's copy until its back-off has passed and
    /// then puts it in `%RETRY%<group>`. `None` (the default): the store's
    /// [`DelayQueue::shared`] queue. Give the application's own queue here if it opened one
    /// with [`DelayQueue::open`] (one queue serves a store).
    pub delay: Option<Arc<DelayQueue>>,
}

impl PushConfig {
    /// Defaults, for `group` (see [`PushConfig`] for an example).
    pub fn new(group: impl Into<String>) -> Self {
        PushConfig {
            consumer: ConsumerConfig::new(group),
            ..PushConfig::default()
        }
    }

    fn validate(&self) -> Result<()> {
        validate_group(&self.consumer.group)?;
        validate_group_topics(&self.consumer.group)?;
        let positive = [
            ("consume_threads", self.consume_threads as u64),
            ("consume_batch_max", self.consume_batch_max as u64),
            ("pull_batch", self.pull_batch as u64),
            (
                "pull_threshold_for_queue",
                self.pull_threshold_for_queue as u64,
            ),
            (
                "pull_threshold_size_for_queue",
                self.pull_threshold_size_for_queue as u64,
            ),
            (
                "consume_concurrently_max_span",
                self.consume_concurrently_max_span,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::InvalidArgument(format!(
                    "push consumer: {name} must be at least 1"
                )));
            }
        }
        if self.consume_threads > 1024 {
            return Err(Error::InvalidArgument(format!(
                "push consumer: consume_threads {} is more than 1024",
                self.consume_threads
            )));
        }
        if self.commit_interval.is_zero() {
            return Err(Error::InvalidArgument(
                "push consumer: commit_interval must be positive".into(),
            ));
        }
        self.retry.validate()
    }
}

impl Default for PushConfig {
    /// Every default, and an empty group name (which `start` refuses: set one).
    fn default() -> Self {
        PushConfig {
            consumer: ConsumerConfig::default(),
            consume_threads: 20,
            consume_batch_max: 1,
            pull_batch: 32,
            pull_threshold_for_queue: 1000,
            pull_threshold_size_for_queue: 100 << 20,
            consume_concurrently_max_span: 2000,
            commit_interval: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            max_reconsume_times: 16,
            delay: None,
        }
    }
}

/// How long a record whose send-back failed waits before it is handled again (RocketMQ's
/// `submitConsumeRequestLater`: 5 s).
const SEND_BACK_FAILED_DELAY_MS: i64 = 5_000;

/// The in-flight records of one held partition.
struct ProcessQueue {
    /// Tells this holding of the partition from a later one (revoked, then assigned again).
    epoch: u64,
    /// Offset → stored size of every record pulled and not finished.
    msgs: BTreeMap<u64, u64>,
    bytes: u64,
    /// Records inside a handler (or its send-back) now.
    handling: usize,
    /// Records waiting for their time: (not before ms, offset) → record.
    held: BTreeMap<(i64, u64), ConsumerRecord>,
    /// The record that did not fit last (offset, size): the partition is paused until it
    /// would.
    blocked: Option<(u64, u64)>,
    /// Whether the pull thread has paused the partition.
    paused: bool,
    /// Being revoked: its queued records are dropped, not handled.
    revoking: bool,
    /// The offset last committed by this member.
    committed: Option<u64>,
}

/// Thresholds of a process queue.
#[derive(Clone, Copy)]
struct Limits {
    records: usize,
    bytes: u64,
    span: u64,
    /// Free record slots a paused partition needs before it is fetched again: a whole pull
    /// batch (at most half the queue), so a resumed fetch is taken whole instead of one record
    /// kept and the rest read again at every resume.
    resume_room: usize,
}

impl ProcessQueue {
    /// Whether a record at `offset` of `size` bytes may join the queue now.
    fn fits(&self, limits: Limits, offset: u64, size: u64) -> bool {
        let Some((&first, _)) = self.msgs.first_key_value() else {
            return true;
        };
        self.msgs.len() < limits.records
            && self.bytes.saturating_add(size) <= limits.bytes
            && offset.saturating_sub(first) <= limits.span
    }

    /// Whether the partition should be fetched: the record that did not fit would now (or,
    /// with none, the next one after the last would).
    fn has_room(&self, limits: Limits) -> bool {
        let (offset, size) = self.blocked.unwrap_or_else(|| {
            let next = self.msgs.last_key_value().map_or(0, |(o, _)| o + 1);
            (next, 1)
        });
        let room = limits.records.saturating_sub(self.msgs.len());
        (self.msgs.is_empty() || room >= limits.resume_room) && self.fits(limits, offset, size)
    }

    fn remove(&mut self, offset: u64) {
        if let Some(size) = self.msgs.remove(&offset) {
            self.bytes -= size;
        }
    }
}

struct Task {
    tp: TopicPartition,
    epoch: u64,
    records: Vec<ConsumerRecord>,
}

#[derive(Default)]
struct PushState {
    queues: HashMap<TopicPartition, ProcessQueue>,
    work: VecDeque<Task>,
    next_epoch: u64,
    /// A record was sent back since the last commit: sync before committing past it.
    sent_back: bool,
    /// Workers exit once the work queue is empty.
    workers_stop: bool,
}

struct Shared {
    state: Mutex<PushState>,
    /// Signalled when a worker finishes (or drops) a task: what a revoke or shutdown waits on.
    changed: Condvar,
    /// Signalled once per queued task (and to all at stop): what idle workers wait on. Apart
    /// from `changed`, so a new task wakes one worker, not the whole pool.
    work_ready: Condvar,
    handler: Arc<dyn MessageHandler>,
    store: Arc<dyn LogStore>,
    group: String,
    retry: RetryPolicy,
    /// `%RETRY%<group>`: where a record's reconsume count is trusted.
    retry_topic: String,
    /// Schedules the copies of failed records.
    delay: Arc<DelayQueue>,
    /// Records a SubAfter event per handled record (`ConsumerConfig::trace`).
    tracer: Option<Arc<super::Tracer>>,
    max_reconsume_times: u32,
    batch_max: usize,
    /// The pool's size.
    workers: usize,
    limits: Limits,
    stop: AtomicBool,
}

impl Shared {
    /// The offset to commit for a partition: its smallest unfinished record, else the
    /// consumer's position.
    fn commit_offset(pq: &ProcessQueue, consumer: &Consumer, tp: &TopicPartition) -> Option<u64> {
        match pq.msgs.first_key_value() {
            Some((&o, _)) => Some(o),
            None => consumer.position(&tp.topic, tp.partition).ok(),
        }
    }

    /// Commits the offsets of `parts` (all held, if `None`) that moved since their last
    /// commit, atomically; syncs first if a record was sent back since, so no commit passes a
    /// failed record before its copy is durable.
    fn commit(&self, consumer: &Consumer, parts: Option<&[TopicPartition]>) -> Result<()> {
        let (offsets, sync) = {
            let mut st = self.state.lock();
            let mut offsets = Vec::new();
            for (tp, pq) in &st.queues {
                if parts.is_some_and(|p| !p.contains(tp)) {
                    continue;
                }
                if let Some(o) = Self::commit_offset(pq, consumer, tp)
                    && pq.committed != Some(o)
                {
                    offsets.push((tp.clone(), o));
                }
            }
            if offsets.is_empty() {
                return Ok(());
            }
            // Taken here, under the lock that also took the offsets: a record sent back later
            // sets it again for the next commit.
            (offsets, std::mem::take(&mut st.sent_back))
        };
        if sync && let Err(e) = self.store.sync() {
            self.state.lock().sent_back = true;
            return Err(e);
        }
        let list: Vec<(&str, u32, u64)> = offsets
            .iter()
            .map(|(tp, o)| (tp.topic.as_str(), tp.partition, *o))
            .collect();
        match consumer.commit_offsets(&list) {
            Ok(()) => {}
            // A partition was revoked by the rebalance this commit acted on first: its revoke
            // committed it, and the rest are committed next time (or by their own revokes).
            Err(Error::NotAssigned { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut st = self.state.lock();
        for (tp, o) in offsets {
            if let Some(pq) = st.queues.get_mut(&tp) {
                pq.committed = Some(o);
            }
        }
        Ok(())
    }

    /// Waits until no handler of `parts` runs (all of them, if `None`) and, with `drain`,
    /// until the work queue is empty too.
    fn wait_idle(&self, parts: Option<&[TopicPartition]>, drain: bool) {
        let mut st = self.state.lock();
        loop {
            let busy = st
                .queues
                .iter()
                .any(|(tp, pq)| pq.handling > 0 && parts.is_none_or(|p| p.contains(tp)));
            if !busy && (!drain || st.work.is_empty()) {
                return;
            }
            self.changed.wait(&mut st);
        }
    }
}

/// The revoke hook of the inner consumer: runs on the pull thread inside `poll`/`close`.
struct PushListener(Arc<Shared>);

impl RebalanceListener for PushListener {
    fn on_revoke(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        let shared = &self.0;
        {
            let mut st = shared.state.lock();
            for tp in partitions {
                if let Some(pq) = st.queues.get_mut(tp) {
                    pq.revoking = true;
                }
            }
        }
        shared.wait_idle(Some(partitions), false);
        // A failed commit leaves the group's older offset: the next owner handles more again
        // (at least once), never less.
        let _ = shared.commit(consumer, Some(partitions));
        let mut st = shared.state.lock();
        for tp in partitions {
            st.queues.remove(tp);
        }
    }
}

/// A push consumer (RocketMQ's `DefaultMQPushConsumer`, concurrent mode): a member of its
/// group that calls a [`MessageHandler`] on a pool of threads for every record of its
/// partitions, commits by itself, retries failures through `%RETRY%<group>` with the
/// [`RetryPolicy`]'s back-off and parks them in `%DLQ%<group>` after `max_reconsume_times`
/// retries. ARCHITECTURE.md ("Push consumer and retries") has the process queue, back-pressure and rebalances.
/// Dropping it shuts it down as [`shutdown`](PushConsumer::shutdown) does, ignoring errors.
///
/// ```
/// use std::sync::{Arc, mpsc};
/// use std::time::Duration;
/// use duolog::{LogStore, Message, StoreOptions, TopicConfig};
/// use duolog::consumer::{ConsumeResult, ConsumerRecord, GroupCoordinator, OffsetReset, PushConfig, PushConsumer};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("orders", TopicConfig::with_partitions(2))?;
/// let groups = GroupCoordinator::new(Arc::clone(&store))?;
///
/// let (tx, rx) = mpsc::channel();
/// let tx = std::sync::Mutex::new(tx);
/// let handler = move |records: &[ConsumerRecord]| {
///     for r in records {
///         tx.lock().unwrap().send(r.record().body().to_vec()).unwrap();
///     }
///     ConsumeResult::Success
/// };
/// let mut config = PushConfig { consume_threads: 2, ..PushConfig::new("billing") };
/// config.consumer.auto_offset_reset = OffsetReset::Earliest;
/// let push = PushConsumer::start(&groups, config, &["orders"], Arc::new(handler))?;
/// store.append("orders", 1, &[Message::new("o-1")])?;
/// assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), b"o-1");
/// push.shutdown()?;
/// assert_eq!(groups.committed_offsets("billing")["orders"][&1], 1);
/// # Ok(()) }
/// ```
pub struct PushConsumer {
    shared: Arc<Shared>,
    consumer: Arc<Consumer>,
    pull: Option<JoinHandle<Result<()>>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for PushConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConsumer")
            .field("group", &self.shared.group)
            .field("member_id", &self.consumer.member_id())
            .finish()
    }
}

impl PushConsumer {
    /// Joins `config.consumer.group` with `topics` and `%RETRY%<group>` (made with one
    /// partition if missing) and starts the pull thread and `consume_threads` workers.
    /// Records are handled from the group's committed offsets (or per `auto_offset_reset`).
    /// A config with a zero thread count, threshold, batch or interval, or a group whose
    /// retry topic name would be invalid, is [`Error::InvalidArgument`].
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions};
    /// use duolog::consumer::{ConsumeResult, ConsumerRecord, GroupCoordinator, PushConfig, PushConsumer};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// let groups = GroupCoordinator::new(store)?;
    /// let noop = Arc::new(|_: &[ConsumerRecord]| ConsumeResult::Success);
    /// let bad = PushConfig { consume_threads: 0, ..PushConfig::new("g") };
    /// assert!(PushConsumer::start(&groups, bad, &["t"], noop).is_err());
    /// # Ok(()) }
    /// ```
    pub fn start(
        coordinator: &GroupCoordinator,
        config: PushConfig,
        topics: &[&str],
        handler: Arc<dyn MessageHandler>,
    ) -> Result<PushConsumer> {
        config.validate()?;
        let store = Arc::clone(coordinator.store());
        let group = config.consumer.group.clone();
        let retry = retry_topic(&group);
        ensure_topic(&*store, &retry)?;
        // The retry topic is read from its start when the group never committed it, whatever
        // `auto_offset_reset` says (RocketMQ's `computePullFromWhere` does the same): copies
        // sent back by a member that crashed before its first commit of it are not skipped —
        // their originals are already committed past.
        let has_offset = coordinator
            .committed_offsets(&group)
            .get(&retry)
            .is_some_and(|t| t.contains_key(&0));
        if !has_offset {
            let start = store.bounds(&retry, 0)?.start;
            coordinator.commit_offsets(&group, &[(retry.as_str(), 0, start)])?;
        }
        let delay = match &config.delay {
            Some(d) if d.store_dir() != store.dir() => {
                return Err(Error::InvalidArgument(format!(
                    "push consumer: PushConfig::delay serves the store at {}, not this one at {}",
                    d.store_dir().display(),
                    store.dir().display()
                )));
            }
            Some(d) => Arc::clone(d),
            None => DelayQueue::shared(Arc::clone(&store))?,
        };
        let limits = Limits {
            records: config.pull_threshold_for_queue,
            bytes: config.pull_threshold_size_for_queue as u64,
            span: config.consume_concurrently_max_span,
            resume_room: config
                .pull_batch
                .min(config.pull_threshold_for_queue / 2)
                .max(1),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(PushState::default()),
            changed: Condvar::new(),
            work_ready: Condvar::new(),
            handler,
            store,
            group: group.clone(),
            retry: config.retry.clone(),
            retry_topic: retry.clone(),
            delay,
            tracer: config.consumer.trace.clone(),
            max_reconsume_times: config.max_reconsume_times,
            batch_max: config.consume_batch_max,
            workers: config.consume_threads,
            limits,
            stop: AtomicBool::new(false),
        });
        let consumer_config = ConsumerConfig {
            enable_auto_commit: false,
            max_poll_records: config.pull_batch,
            ..config.consumer.clone()
        };
        let consumer = Arc::new(Consumer::with_listener(
            coordinator,
            consumer_config,
            PushListener(Arc::clone(&shared)),
        )?);
        let mut subscription: Vec<&str> = topics.to_vec();
        subscription.push(&retry);
        consumer.subscribe(&subscription)?;

        let mut push = PushConsumer {
            shared: Arc::clone(&shared),
            consumer: Arc::clone(&consumer),
            pull: None,
            workers: Vec::with_capacity(config.consume_threads),
        };
        let spawn_error = |e: std::io::Error| Error::Io {
            path: shared.store.dir().to_path_buf(),
            source: e,
        };
        for n in 0..config.consume_threads {
            let (s, c) = (Arc::clone(&shared), Arc::clone(&consumer));
            let worker = std::thread::Builder::new()
                .name(format!("duolog-push-{group}-{n}"))
                .spawn(move || worker_loop(&s, &c))
                .map_err(spawn_error)?;
            push.workers.push(worker);
        }
        let (s, c) = (Arc::clone(&shared), Arc::clone(&consumer));
        let interval = config.commit_interval;
        push.pull = Some(
            std::thread::Builder::new()
                .name(format!("duolog-consumer-{group}"))
                .spawn(move || pull_loop(&s, &c, interval))
                .map_err(spawn_error)?,
        );
        Ok(push)
    }

    /// The member id of its inner consumer in the group (see
    /// [`GroupCoordinator::owners`]).
    pub fn member_id(&self) -> &str {
        self.consumer.member_id()
    }

    /// How many records each partition's process queue holds now — pulled and not finished:
    /// queued, being handled, or waiting to retry a failed send back (RocketMQ's `ProcessQueue` message
    /// count). Never more than `pull_threshold_for_queue`.
    pub fn in_flight(&self) -> BTreeMap<TopicPartition, usize> {
        let st = self.shared.state.lock();
        st.queues
            .iter()
            .map(|(tp, pq)| (tp.clone(), pq.msgs.len()))
            .collect()
    }

    /// Stops pulling, lets the workers finish every record already dispatched (records whose
    /// send back failed and waits to be tried again are left to the next owner), commits exactly up to the first
    /// unfinished record of each partition, and leaves the group. Returns the first error of
    /// the pull thread (a failed poll or commit stops it), or of the final commit.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        // No pull thread: already stopped, or `start` failed after spawning some workers.
        let result = match self.pull.take() {
            Some(pull) => {
                self.shared.stop.store(true, Ordering::Release);
                self.consumer.wakeup();
                pull.join().unwrap_or_else(|_| {
                    Err(Error::InvalidArgument(
                        "the push consumer's pull thread panicked".into(),
                    ))
                })
            }
            None => Ok(()),
        };
        {
            let mut st = self.shared.state.lock();
            st.workers_stop = true;
        }
        self.shared.work_ready.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        result
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The pull thread: polls, takes records into the process queues, dispatches them, pauses and
/// resumes partitions, commits on the interval; at stop, drains and commits.
fn pull_loop(shared: &Shared, consumer: &Consumer, interval: Duration) -> Result<()> {
    let result = pull_until_stopped(shared, consumer, interval);
    // Whatever stopped it: finish what was dispatched, commit it, leave the group.
    shared.wait_idle(None, true);
    let committed = shared.commit(consumer, None);
    let closed = consumer.close();
    result.and(committed).and(closed)
}

fn pull_until_stopped(shared: &Shared, consumer: &Consumer, interval: Duration) -> Result<()> {
    // `None`: an interval past what an `Instant` holds — commit at revokes and shutdown only.
    let mut next_commit = deadline(interval);
    while !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        // Held records become due once their millisecond has passed.
        let until_held = next_held_ms(shared).map(|due| {
            let ms = due.saturating_sub(now_ms()).saturating_add(1);
            Duration::from_millis(u64::try_from(ms).unwrap_or(0))
        });
        let timeout = next_commit
            .map_or(Duration::MAX, |at| at.saturating_duration_since(now))
            .min(until_held.unwrap_or(Duration::MAX));
        let records = consumer.poll(timeout)?;
        forget_lost_partitions(shared, consumer);
        take(shared, consumer, records)?;
        dispatch_due(shared);
        pause_or_resume(shared, consumer)?;
        if next_commit.is_some_and(|at| Instant::now() >= at) {
            shared.commit(consumer, None)?;
            next_commit = deadline(interval);
        }
    }
    Ok(())
}

/// The earliest time a held record becomes due.
fn next_held_ms(shared: &Shared) -> Option<i64> {
    let st = shared.state.lock();
    st.queues
        .values()
        .filter_map(|pq| pq.held.first_key_value().map(|((due, _), _)| *due))
        .min()
}

/// Drops the process queues of partitions the consumer no longer holds without a revoke (an
/// eviction after `max_poll_interval`: they belong to someone else already).
fn forget_lost_partitions(shared: &Shared, consumer: &Consumer) {
    let held: BTreeSet<TopicPartition> = consumer.assignment().into_iter().collect();
    let mut st = shared.state.lock();
    st.queues.retain(|tp, _| held.contains(tp));
}

/// Takes polled records into their process queues — queued for the workers in batches — and
/// gives back (seeks to) the first record of a partition
/// that does not fit.
fn take(shared: &Shared, consumer: &Consumer, records: Vec<ConsumerRecord>) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut given_back: Vec<(TopicPartition, u64)> = Vec::new();
    let mut ready: BTreeMap<TopicPartition, Vec<ConsumerRecord>> = BTreeMap::new();
    {
        let mut st = shared.state.lock();
        let PushState {
            queues, next_epoch, ..
        } = &mut *st;
        for record in records {
            let tp = TopicPartition::new(record.topic(), record.partition());
            if given_back.iter().any(|(t, _)| *t == tp) {
                continue;
            }
            let pq = queues.entry(tp.clone()).or_insert_with(|| {
                *next_epoch += 1;
                ProcessQueue {
                    epoch: *next_epoch,
                    msgs: BTreeMap::new(),
                    bytes: 0,
                    handling: 0,
                    held: BTreeMap::new(),
                    blocked: None,
                    paused: false,
                    revoking: false,
                    committed: None,
                }
            });
            let (offset, size) = (record.offset(), u64::from(record.record().stored_size()));
            if !pq.fits(shared.limits, offset, size) {
                pq.blocked = Some((offset, size));
                given_back.push((tp, offset));
                continue;
            }
            pq.blocked = None;
            pq.msgs.insert(offset, size);
            pq.bytes += size;
            ready.entry(tp).or_default().push(record);
        }
    }
    for (tp, offset) in &given_back {
        consumer.seek(&tp.topic, tp.partition, *offset)?;
    }
    enqueue(shared, ready);
    Ok(())
}

/// Queues records for the workers, `consume_batch_max` of one partition per task.
fn enqueue(shared: &Shared, ready: BTreeMap<TopicPartition, Vec<ConsumerRecord>>) {
    if ready.is_empty() {
        return;
    }
    let mut st = shared.state.lock();
    let queued = st.work.len();
    for (tp, records) in ready {
        let Some(epoch) = st.queues.get(&tp).map(|pq| pq.epoch) else {
            continue;
        };
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let batch: Vec<ConsumerRecord> = records.by_ref().take(shared.batch_max).collect();
            st.work.push_back(Task {
                tp: tp.clone(),
                epoch,
                records: batch,
            });
        }
    }
    let added = st.work.len() - queued;
    drop(st);
    for _ in 0..added.min(shared.workers) {
        shared.work_ready.notify_one();
    }
}

/// Queues the held records whose time has come.
fn dispatch_due(shared: &Shared) {
    let now = now_ms();
    let mut ready: BTreeMap<TopicPartition, Vec<ConsumerRecord>> = BTreeMap::new();
    {
        let mut st = shared.state.lock();
        for (tp, pq) in st.queues.iter_mut() {
            while let Some(entry) = pq.held.first_entry() {
                if entry.key().0 >= now {
                    break;
                }
                ready.entry(tp.clone()).or_default().push(entry.remove());
            }
        }
    }
    enqueue(shared, ready);
}

/// Pauses the partitions whose process queue is full and resumes those with room again.
fn pause_or_resume(shared: &Shared, consumer: &Consumer) -> Result<()> {
    let (mut pause, mut resume) = (Vec::new(), Vec::new());
    {
        let mut st = shared.state.lock();
        for (tp, pq) in st.queues.iter_mut() {
            let room = pq.has_room(shared.limits);
            if pq.paused == room {
                pq.paused = !room;
                if room {
                    resume.push(tp.clone());
                } else {
                    pause.push(tp.clone());
                }
            }
        }
    }
    let as_refs = |v: &[TopicPartition]| -> Vec<(String, u32)> {
        v.iter()
            .map(|tp| (tp.topic.clone(), tp.partition))
            .collect()
    };
    for (list, pausing) in [(as_refs(&pause), true), (as_refs(&resume), false)] {
        let refs: Vec<(&str, u32)> = list.iter().map(|(t, p)| (t.as_str(), *p)).collect();
        if refs.is_empty() {
            continue;
        }
        let r = if pausing {
            consumer.pause(&refs)
        } else {
            consumer.resume(&refs)
        };
        match r {
            // Revoked meanwhile: its process queue is gone with it.
            Ok(()) | Err(Error::NotAssigned { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A worker: takes tasks until told to stop and the queue is empty.
fn worker_loop(shared: &Shared, consumer: &Consumer) {
    loop {
        let task = {
            let mut st = shared.state.lock();
            loop {
                if let Some(task) = st.work.pop_front() {
                    let live = st
                        .queues
                        .get_mut(&task.tp)
                        .filter(|pq| pq.epoch == task.epoch && !pq.revoking);
                    match live {
                        Some(pq) => {
                            pq.handling += task.records.len();
                            break task;
                        }
                        // Revoked (or lost): its next owner handles it.
                        None => {
                            shared.changed.notify_all();
                            continue;
                        }
                    }
                }
                if st.workers_stop {
                    return;
                }
                shared.work_ready.wait(&mut st);
            }
        };
        run(shared, consumer, task);
    }
}

/// Runs the handler on one task, sends failures back, and finishes the records.
fn run(shared: &Shared, consumer: &Consumer, task: Task) {
    let started = std::time::Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| shared.handler.handle(&task.records)))
        .unwrap_or(ConsumeResult::ReconsumeLater);
    if let Some(tracer) = &shared.tracer {
        // SubAfter per record: the handler's cost (of the whole call) and its result.
        let cost = started.elapsed();
        for record in &task.records {
            let retries = reconsume_times(record, &shared.retry_topic);
            tracer.consumed(
                &shared.group,
                record,
                retries,
                cost,
                result == ConsumeResult::Success,
            );
        }
    }
    let mut again = Vec::new();
    let mut sent_back = false;
    if result == ConsumeResult::ReconsumeLater {
        for record in &task.records {
            match send_back(
                &*shared.store,
                &shared.delay,
                &shared.group,
                record,
                &shared.retry,
                shared.max_reconsume_times,
            ) {
                Ok(_) => sent_back = true,
                // Not sent back, so not finished: handled again here later.
                Err(_) => again.push(record.offset()),
            }
        }
    }
    let wake = {
        let mut st = shared.state.lock();
        st.sent_back |= sent_back;
        match st.queues.get_mut(&task.tp) {
            Some(pq) if pq.epoch == task.epoch => {
                pq.handling -= task.records.len();
                let retry_at = now_ms().saturating_add(SEND_BACK_FAILED_DELAY_MS);
                for record in task.records {
                    if again.contains(&record.offset()) {
                        pq.held.insert((retry_at, record.offset()), record);
                    } else {
                        pq.remove(record.offset());
                    }
                }
                (pq.paused && pq.has_room(shared.limits)) || !again.is_empty()
            }
            _ => false,
        }
    };
    shared.changed.notify_all();
    if wake {
        // The pull thread may be asleep on paused partitions or past the new held time.
        consumer.wakeup();
    }
}
