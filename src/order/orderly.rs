//! [`OrderlyConsumer`]: RocketMQ's `MessageListenerOrderly` with `ConsumeMessageOrderlyService`
//! — each held partition's records go to the handler strictly in offset order, one call at a
//! time, under a lease with a fencing token ([`lease`](super::lease)).
//!
//! What it owns: one pull thread (`duolog-consumer-<group>`) running a [`Consumer`] (its
//! membership, assignment and long poll), the workers (`duolog-orderly-<group>-<n>`), a renew
//! thread (`duolog-lease-<group>`), one bounded process queue per held partition, and the
//! commits of the partitions it holds while it runs.
//!
//! **Order.** A partition is on at most one worker at a time; the worker hands its head record
//! to the handler and only on `Success` moves to the next. `SuspendCurrentQueueAMoment` (or a
//! panic) suspends the partition for `suspend_current_queue_time` and the same record is
//! handled again in place: nothing behind it is handled first.
//!
//! **Leases and fencing.** A partition assigned to this member is delivered only once its lease
//! is granted (free, or expired with no handler call of its holder running); the member then
//! starts at the group's committed offset, read under the partition's commit guard. Offsets are
//! committed only after the lease is checked with its token under the same guard, so an old
//! holder's commit either lands before the new holder reads the offset or fails with
//! [`Error::LeaseLost`]. A member whose lease expired (its renewals stalled) stops delivering
//! the partition, drops what it had pulled, and acquires it again (a new token, from the
//! committed offset). A handler call that never returns keeps its partition's lease from
//! being taken over: within one process that is known, and waiting beats two handlers.
//!
//! **Rebalance.** A partition revoked from this member stops being delivered, the revoke waits
//! for the handler call in flight, commits, releases the lease, and only then lets the
//! partition go to its new owner.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::lease::{LeaseOptions, LeaseTable};
use crate::clock::deadline;
use crate::consumer::{
    Consumer, ConsumerConfig, ConsumerRecord, GroupCoordinator, ORIGIN_MESSAGE_ID, ORIGIN_OFFSET,
    ORIGIN_PARTITION, RECONSUME_TIMES, RETRY_TOPIC, RebalanceListener, TopicPartition,
    validate_group_name,
};
use crate::error::{Error, Result};

/// What an orderly handler says about a record (RocketMQ's `ConsumeOrderlyStatus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumeOrderlyStatus {
    /// Handled: the partition moves on to the next record.
    Success,
    /// Not handled: the partition waits `suspend_current_queue_time`, then the same record is
    /// handled again.
    SuspendCurrentQueueAMoment,
}

/// What a handler call knows besides the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderlyContext {
    /// The record's topic.
    pub topic: String,
    /// The record's partition.
    pub partition: u32,
    /// 1 on the first call for this record by this holder, then 2, 3… on each retry in place.
    pub attempt: u32,
    /// The fencing token of the lease this call runs under: larger for every new holding of
    /// the partition, so side effects stamped with it can refuse a stale holder's writes.
    pub fencing_token: u64,
}

/// The user's code: called with one record at a time, per partition in offset order. A panic
/// counts as [`ConsumeOrderlyStatus::SuspendCurrentQueueAMoment`] (caught). Any
/// `Fn(&ConsumerRecord, &OrderlyContext) -> ConsumeOrderlyStatus + Send + Sync` is a handler.
pub trait OrderlyHandler: Send + Sync {
    /// Handles one record.
    fn handle(&self, record: &ConsumerRecord, context: &OrderlyContext) -> ConsumeOrderlyStatus;
}

impl<F: Fn(&ConsumerRecord, &OrderlyContext) -> ConsumeOrderlyStatus + Send + Sync> OrderlyHandler
    for F
{
    fn handle(&self, record: &ConsumerRecord, context: &OrderlyContext) -> ConsumeOrderlyStatus {
        self(record, context)
    }
}

/// An orderly consumer's settings; RocketMQ's names and defaults.
///
/// ```
/// use std::time::Duration;
/// use duolog::order::OrderlyConfig;
/// let c = OrderlyConfig::new("billing");
/// assert_eq!(c.suspend_current_queue_time, Duration::from_secs(1));
/// assert_eq!(c.max_reconsume_times, None, "unlimited, as RocketMQ's orderly consumer");
/// assert!(!c.dead_letter);
/// ```
#[derive(Clone, Debug)]
pub struct OrderlyConfig {
    /// The group and the pull settings (`auto_offset_reset`, `tag_filter`, assignor…). Its
    /// `enable_auto_commit` and `max_poll_records` are ignored.
    pub consumer: ConsumerConfig,
    /// Worker threads (`consumeThreadMin`), 1 to 1024; a partition is on one at a time.
    /// Default: 20.
    pub consume_threads: usize,
    /// Records per pull (`pullBatchSize`). Default: 32.
    pub pull_batch: usize,
    /// Records pulled and not yet handled per partition past which it is paused
    /// (`pullThresholdForQueue`). Default: 1000.
    pub pull_threshold_for_queue: usize,
    /// How long a partition waits after a failed call (`suspendCurrentQueueTimeMillis`).
    /// Default: 1 s.
    pub suspend_current_queue_time: Duration,
    /// Failed calls of one record after the first before it may go to `%DLQ%<group>`
    /// (`maxReconsumeTimes`); `None`: never, retry forever. Default: `None` (RocketMQ's
    /// orderly default, `Integer.MAX_VALUE`).
    pub max_reconsume_times: Option<u32>,
    /// Whether a record past `max_reconsume_times` goes to `%DLQ%<group>` (and the partition
    /// moves on). Without it the record is retried in place for ever: order is never given
    /// up unless asked. Default: `false`.
    pub dead_letter: bool,
    /// How often offsets are committed; also at every revoke and at close. Default: 5 s.
    pub commit_interval: Duration,
    /// Lease renewal and expiry. Default: renew every 20 s, expire after 60 s.
    pub lease: LeaseOptions,
}

impl OrderlyConfig {
    /// Defaults, for `group` (see [`OrderlyConfig`] for an example).
    pub fn new(group: impl Into<String>) -> Self {
        OrderlyConfig {
            consumer: ConsumerConfig::new(group),
            consume_threads: 20,
            pull_batch: 32,
            pull_threshold_for_queue: 1000,
            suspend_current_queue_time: Duration::from_secs(1),
            max_reconsume_times: None,
            dead_letter: false,
            commit_interval: Duration::from_secs(5),
            lease: LeaseOptions::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        validate_group_name(&self.consumer.group)?;
        let bad = |why: &str| Err(Error::InvalidArgument(format!("orderly consumer: {why}")));
        if self.consume_threads == 0 || self.consume_threads > 1024 {
            return bad("consume_threads must be 1 to 1024");
        }
        if self.pull_batch == 0 || self.pull_threshold_for_queue == 0 {
            return bad("pull_batch and pull_threshold_for_queue must be at least 1");
        }
        if self.commit_interval.is_zero() {
            return bad("commit_interval must be positive");
        }
        if deadline(self.suspend_current_queue_time).is_none() {
            return bad("suspend_current_queue_time is too long");
        }
        self.lease.validate()
    }
}

/// One held partition's process queue.
#[derive(Default)]
struct PartQueue {
    /// The fencing token while the lease is held; `None` while waiting for it.
    token: Option<u64>,
    /// Where to start when the lease is granted and the group has no committed offset: the
    /// first record pulled (and dropped) before the lease.
    rewind: Option<u64>,
    records: VecDeque<ConsumerRecord>,
    /// On a worker now.
    busy: bool,
    suspended_until: Option<Instant>,
    /// Failed calls of the head record.
    failures: u32,
    /// The offset after the last record handled under this token (what a commit writes).
    next: Option<u64>,
    committed: Option<u64>,
    revoking: bool,
    paused: bool,
}

impl PartQueue {
    /// While leased: the first offset not yet queued nor handled under this token.
    fn resume_at(&self) -> Option<u64> {
        self.records
            .back()
            .map(|r| r.offset().saturating_add(1))
            .or(self.next)
    }

    /// Drops what was pulled and forgets the lease: the partition waits for a new one and then
    /// starts from the committed offset (or where this holding had got to, if none).
    fn lose(&mut self) {
        let start = self
            .records
            .front()
            .map(ConsumerRecord::offset)
            .or(self.next);
        self.rewind = start.or(self.rewind);
        self.token = None;
        self.records.clear();
        self.suspended_until = None;
        self.failures = 0;
    }
}

#[derive(Default)]
struct State {
    parts: BTreeMap<TopicPartition, PartQueue>,
    /// Where workers resume their round-robin scan.
    cursor: Option<TopicPartition>,
    stop_workers: bool,
}

struct Shared {
    state: Mutex<State>,
    /// A partition became ready (records, end of suspension, lease) or stop: idle workers.
    work_ready: Condvar,
    /// A handler call ended: what a revoke and close wait on.
    changed: Condvar,
    /// Stop: what the renew thread sleeps on between rounds.
    renew_wake: Condvar,
    handler: Arc<dyn OrderlyHandler>,
    coord: GroupCoordinator,
    leases: Arc<LeaseTable>,
    group: String,
    member: OnceLock<String>,
    config: OrderlyConfig,
    stop: AtomicBool,
    /// The pull thread ended (closed, or failed: `close` returns its error).
    pull_ended: AtomicBool,
    renewing: AtomicBool,
    /// The pull thread, to wake when a paused partition has room or a lease was lost.
    consumer: OnceLock<Arc<Consumer>>,
}

impl Shared {
    fn member(&self) -> &str {
        self.member.get().map_or("", String::as_str)
    }

    fn wake_pull(&self) {
        if let Some(c) = self.consumer.get() {
            c.wakeup();
        }
    }

    /// Commits `next` of the given partitions (every held one if `None`), each only if this
    /// member still holds its lease with its token, checked under the partition's commit
    /// guard, held until the write is durable. Partitions that fail the check are lost.
    fn commit(&self, only: Option<&[TopicPartition]>) -> Result<()> {
        let todo: Vec<(TopicPartition, u64, u64)> = {
            let st = self.state.lock();
            st.parts
                .iter()
                .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
                .filter_map(|(tp, pq)| match (pq.token, pq.next) {
                    (Some(tok), Some(n)) if pq.committed != Some(n) => Some((tp.clone(), tok, n)),
                    _ => None,
                })
                .collect()
        };
        if todo.is_empty() {
            return Ok(());
        }
        // Sorted (the BTreeMap's order): every committer takes guards in one order.
        let guards: Vec<_> = todo
            .iter()
            .map(|(tp, _, _)| self.leases.guard(&self.group, tp))
            .collect();
        let _held: Vec<_> = guards.iter().map(|g| g.lock()).collect();
        let clock = &*self.config.lease.clock;
        let mut offsets = Vec::new();
        let mut lost = Vec::new();
        for (tp, tok, n) in &todo {
            match self
                .leases
                .check(&self.group, tp, self.member(), *tok, clock)
            {
                Ok(()) => offsets.push((tp.topic.as_str(), tp.partition, *n)),
                Err(e) => lost.push((tp.clone(), *tok, e)),
            }
        }
        if !offsets.is_empty() {
            self.coord.commit_offsets(&self.group, &offsets)?;
        }
        let mut st = self.state.lock();
        for (tp, tok, n) in &todo {
            if let Some(pq) = st.parts.get_mut(tp)
                && pq.token == Some(*tok)
            {
                if lost.iter().any(|(l, _, _)| l == tp) {
                    pq.lose();
                } else {
                    pq.committed = Some(*n);
                }
            }
        }
        drop(st);
        match lost.into_iter().next() {
            Some((_, _, e)) => {
                self.wake_pull();
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Waits until no handler call of `parts` (of all, if `None`) is running.
    fn wait_idle(&self, parts: Option<&[TopicPartition]>) {
        let mut st = self.state.lock();
        while st
            .parts
            .iter()
            .any(|(tp, pq)| pq.busy && parts.is_none_or(|p| p.contains(tp)))
        {
            self.changed.wait(&mut st);
        }
    }

    fn release(&self, parts: &[(TopicPartition, u64)]) {
        for (tp, tok) in parts {
            self.leases.release(&self.group, tp, self.member(), *tok);
        }
    }
}

struct Listener(Arc<Shared>);

impl RebalanceListener for Listener {
    fn on_revoke(&self, _: &Consumer, partitions: &[TopicPartition]) {
        revoke(&self.0, partitions);
    }

    fn on_assign(&self, consumer: &Consumer, partitions: &[TopicPartition]) {
        // A partition may come back while its queue is still here: an evicted member (past
        // `max_poll_interval`) rejoins inside one `poll` and claims what it had, without a
        // revoke. Its queue keeps its lease, its token and the handler call in flight: a
        // fresh queue would let a second worker start on the partition during that call.
        // The consumer dropped the partition's position and pause on eviction, so it is
        // sought to where the queue goes on (the committed offset is behind it).
        let resume_at: Vec<(TopicPartition, u64)> = {
            let mut st = self.0.state.lock();
            partitions
                .iter()
                .filter_map(|tp| match st.parts.get_mut(tp) {
                    Some(pq) => {
                        pq.paused = false;
                        pq.token.and(pq.resume_at()).map(|at| (tp.clone(), at))
                    }
                    None => {
                        st.parts.insert(tp.clone(), PartQueue::default());
                        None
                    }
                })
                .collect()
        };
        for (tp, offset) in resume_at {
            // Only a partition revoked meanwhile can fail, and then it is not ours to read.
            let _ = consumer.seek(&tp.topic, tp.partition, offset);
        }
    }
}

/// Gives partitions up: no more calls, wait for the one in flight, commit, release the lease.
fn revoke(shared: &Shared, partitions: &[TopicPartition]) {
    {
        let mut st = shared.state.lock();
        for tp in partitions {
            if let Some(pq) = st.parts.get_mut(tp) {
                pq.revoking = true;
                pq.records.clear();
            }
        }
    }
    shared.wait_idle(Some(partitions));
    // A failed commit (a lost lease) leaves the offset where it was: the next owner
    // handles again from there. Nothing to report to: the partition goes either way.
    let _ = shared.commit(Some(partitions));
    let held: Vec<(TopicPartition, u64)> = {
        let mut st = shared.state.lock();
        partitions
            .iter()
            .filter_map(|tp| {
                st.parts
                    .remove(tp)
                    .and_then(|pq| pq.token.map(|t| (tp.clone(), t)))
            })
            .collect()
    };
    shared.release(&held);
}

/// An orderly push consumer: a member of its group whose held partitions' records go to the
/// handler one at a time per partition, in offset order, under a lease with a fencing token.
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use duolog::{LogStore, Message, StoreOptions, TopicConfig};
/// use duolog::consumer::{GroupCoordinator, OffsetReset};
/// use duolog::order::{ConsumeOrderlyStatus, OrderlyConfig, OrderlyConsumer};
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("orders", TopicConfig::with_partitions(2))?;
/// store.append("orders", 0, &[Message::new("created"), Message::new("paid")])?;
/// let groups = GroupCoordinator::new(store)?;
/// let mut config = OrderlyConfig::new("shipping");
/// config.consumer.auto_offset_reset = OffsetReset::Earliest;
/// let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// let consumer = OrderlyConsumer::start(&groups, config, &["orders"], move |r: &duolog::consumer::ConsumerRecord, _: &_| {
///     log.lock().unwrap().push(r.record().body().to_vec());
///     ConsumeOrderlyStatus::Success
/// })?;
/// while seen.lock().unwrap().len() < 2 { std::thread::sleep(Duration::from_millis(5)); }
/// consumer.close()?;
/// assert_eq!(*seen.lock().unwrap(), [b"created".to_vec(), b"paid".to_vec()]);
/// assert_eq!(groups.committed_offsets("shipping")["orders"][&0], 2);
/// # Ok(()) }
/// ```
pub struct OrderlyConsumer {
    shared: Arc<Shared>,
    consumer: Arc<Consumer>,
    pull: Option<JoinHandle<Result<()>>>,
    renew: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for OrderlyConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderlyConsumer")
            .field("group", &self.shared.group)
            .field("member", &self.shared.member())
            .finish()
    }
}

impl OrderlyConsumer {
    /// Joins the group, subscribes to `topics` and starts delivering to `handler`.
    pub fn start(
        coordinator: &GroupCoordinator,
        config: OrderlyConfig,
        topics: &[&str],
        handler: impl OrderlyHandler + 'static,
    ) -> Result<OrderlyConsumer> {
        config.validate()?;
        let group = config.consumer.group.clone();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work_ready: Condvar::new(),
            changed: Condvar::new(),
            renew_wake: Condvar::new(),
            handler: Arc::new(handler),
            coord: coordinator.clone(),
            leases: LeaseTable::of(coordinator),
            group: group.clone(),
            member: OnceLock::new(),
            config: config.clone(),
            stop: AtomicBool::new(false),
            pull_ended: AtomicBool::new(false),
            renewing: AtomicBool::new(true),
            consumer: OnceLock::new(),
        });
        let consumer_config = ConsumerConfig {
            enable_auto_commit: false,
            max_poll_records: config.pull_batch,
            ..config.consumer.clone()
        };
        let consumer = Arc::new(Consumer::with_listener(
            coordinator,
            consumer_config,
            Listener(Arc::clone(&shared)),
        )?);
        let _ = shared.member.set(consumer.member_id().to_owned());
        let _ = shared.consumer.set(Arc::clone(&consumer));
        consumer.subscribe(topics)?;
        let mut me = OrderlyConsumer {
            shared: Arc::clone(&shared),
            consumer: Arc::clone(&consumer),
            pull: None,
            renew: None,
            workers: Vec::new(),
        };
        let spawn_error = |e: std::io::Error| Error::Io {
            path: coordinator.store().dir().to_path_buf(),
            source: e,
        };
        for n in 0..config.consume_threads {
            let s = Arc::clone(&shared);
            me.workers.push(
                std::thread::Builder::new()
                    .name(format!("duolog-orderly-{group}-{n}"))
                    .spawn(move || worker_loop(&s))
                    .map_err(spawn_error)?,
            );
        }
        let s = Arc::clone(&shared);
        me.renew = Some(
            std::thread::Builder::new()
                .name(format!("duolog-lease-{group}"))
                .spawn(move || renew_loop(&s))
                .map_err(spawn_error)?,
        );
        let (s, c) = (Arc::clone(&shared), Arc::clone(&consumer));
        me.pull = Some(
            std::thread::Builder::new()
                .name(format!("duolog-consumer-{group}"))
                .spawn(move || pull_loop(&s, &c))
                .map_err(spawn_error)?,
        );
        Ok(me)
    }

    /// Its member id in the group (see [`GroupCoordinator::owners`]).
    pub fn member_id(&self) -> &str {
        self.consumer.member_id()
    }

    /// The partitions whose lease it holds now, with their fencing tokens.
    pub fn leased(&self) -> BTreeMap<TopicPartition, u64> {
        let st = self.shared.state.lock();
        st.parts
            .iter()
            .filter_map(|(tp, pq)| pq.token.map(|t| (tp.clone(), t)))
            .collect()
    }

    /// Commits now what it has handled of every partition it holds. [`Error::LeaseLost`] for
    /// a partition whose lease expired or passed on: that partition's offset is not written
    /// (the others are), and it is no longer delivered until its lease is granted again.
    /// [`Error::Closed`] once delivery has stopped (see [`is_running`](Self::is_running)).
    pub fn commit(&self) -> Result<()> {
        if !self.is_running() {
            return Err(Error::Closed);
        }
        self.shared.commit(None)
    }

    /// Whether it still delivers. `false` once its pull thread has stopped: on an error
    /// (the store failed, an `auto_offset_reset` of `None` met a partition with no committed
    /// offset…) it stops the workers, waits for the calls in flight, commits, releases its
    /// leases and leaves the group; [`close`](Self::close) then returns that error.
    pub fn is_running(&self) -> bool {
        !self.shared.pull_ended.load(Ordering::Acquire)
    }

    /// Stops renewing its leases, as a member whose process stalls would: they expire after
    /// `expire_after` and its commits then fail. For tests of fencing and take-over.
    #[doc(hidden)]
    pub fn stop_renewing(&self) {
        self.shared.renewing.store(false, Ordering::Release);
    }

    /// Stops pulling, lets the handler calls in flight finish, commits, releases its leases
    /// and leaves the group. Returns the first error of the pull thread or the final commit.
    pub fn close(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        let result = match self.pull.take() {
            Some(pull) => {
                self.shared.stop.store(true, Ordering::Release);
                self.shared.state.lock().stop_workers = true;
                self.shared.work_ready.notify_all();
                self.consumer.wakeup();
                pull.join().unwrap_or_else(|_| {
                    Err(Error::InvalidArgument(
                        "the orderly consumer's pull thread panicked".into(),
                    ))
                })
            }
            None => Ok(()),
        };
        self.shared.stop.store(true, Ordering::Release);
        self.shared.state.lock().stop_workers = true;
        self.shared.work_ready.notify_all();
        self.shared.renew_wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(r) = self.renew.take() {
            let _ = r.join();
        }
        result
    }
}

impl Drop for OrderlyConsumer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How often the pull thread retries a lease held by someone else.
const LEASE_RETRY: Duration = Duration::from_millis(20);

fn pull_loop(shared: &Shared, consumer: &Consumer) -> Result<()> {
    let result = pull_until_stopped(shared, consumer);
    // Stopped by close or by an error: no worker starts a call from here on, so once the
    // calls in flight end, the commit below is the last word and no call runs after the
    // leases are released.
    shared.pull_ended.store(true, Ordering::Release);
    shared.state.lock().stop_workers = true;
    shared.work_ready.notify_all();
    shared.wait_idle(None);
    let committed = shared.commit(None);
    let held: Vec<(TopicPartition, u64)> = {
        let mut st = shared.state.lock();
        let held = st
            .parts
            .iter()
            .filter_map(|(tp, pq)| pq.token.map(|t| (tp.clone(), t)))
            .collect();
        st.parts.clear();
        held
    };
    shared.release(&held);
    let closed = consumer.close();
    result.and(committed).and(closed)
}

fn pull_until_stopped(shared: &Shared, consumer: &Consumer) -> Result<()> {
    let mut next_commit = deadline(shared.config.commit_interval);
    while !shared.stop.load(Ordering::Acquire) {
        let waiting = shared
            .state
            .lock()
            .parts
            .values()
            .any(|pq| pq.token.is_none());
        let now = Instant::now();
        let mut timeout = next_commit.map_or(Duration::MAX, |at| at.saturating_duration_since(now));
        if waiting {
            timeout = timeout.min(LEASE_RETRY);
        }
        let records = consumer.poll(timeout)?;
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        // Partitions the group took without a revoke (an eviction after
        // `max_poll_interval`): given up like a revoke, or the lease, renewed here, would
        // keep their new owner waiting for ever.
        let assigned: std::collections::BTreeSet<TopicPartition> =
            consumer.assignment().into_iter().collect();
        let gone: Vec<TopicPartition> = {
            let st = shared.state.lock();
            st.parts
                .keys()
                .filter(|tp| !assigned.contains(*tp))
                .cloned()
                .collect()
        };
        if !gone.is_empty() {
            revoke(shared, &gone);
        }
        // Records first, leases second: a partition granted now is sought back to its start,
        // so nothing this poll returned for it before the grant may be kept.
        take(shared, consumer, records)?;
        acquire(shared, consumer)?;
        if next_commit.is_some_and(|at| Instant::now() >= at) {
            match shared.commit(None) {
                Ok(()) | Err(Error::LeaseLost { .. }) => {}
                Err(e) => return Err(e),
            }
            next_commit = deadline(shared.config.commit_interval);
        }
    }
    Ok(())
}

/// Ignores a partition revoked between the poll and the call.
fn held(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::NotAssigned { .. }) => Ok(()),
        r => r,
    }
}

/// Queues polled records of leased partitions with room; gives back the rest (seek to the
/// first not taken, pause the partition).
fn take(shared: &Shared, consumer: &Consumer, records: Vec<ConsumerRecord>) -> Result<()> {
    let mut give_back: BTreeMap<TopicPartition, u64> = BTreeMap::new();
    let mut pause: Vec<TopicPartition> = Vec::new();
    let mut added = false;
    {
        let mut st = shared.state.lock();
        for record in records {
            let tp = TopicPartition::new(record.topic(), record.partition());
            let Some(pq) = st.parts.get_mut(&tp) else {
                continue;
            };
            if pq.token.is_none() {
                pq.rewind = Some(
                    pq.rewind
                        .map_or(record.offset(), |r| r.min(record.offset())),
                );
                continue;
            }
            if give_back.contains_key(&tp) {
                continue;
            }
            // A leased queue only goes forward: a record already queued or handled under
            // this token (pulled again after a rejoin) is not handled a second time.
            if pq.resume_at().is_some_and(|at| record.offset() < at) {
                continue;
            }
            if pq.revoking || pq.records.len() >= shared.config.pull_threshold_for_queue {
                give_back.insert(tp, record.offset());
                continue;
            }
            pq.records.push_back(record);
            added = true;
        }
        for (tp, pq) in st.parts.iter_mut() {
            let full = pq.records.len() >= shared.config.pull_threshold_for_queue;
            if (pq.token.is_none() || full || give_back.contains_key(tp)) && !pq.paused {
                pq.paused = true;
                pause.push(tp.clone());
            }
        }
    }
    if added {
        shared.work_ready.notify_all();
    }
    for (tp, offset) in &give_back {
        held(consumer.seek(&tp.topic, tp.partition, *offset))?;
    }
    for tp in &pause {
        held(consumer.pause(&[(tp.topic.as_str(), tp.partition)]))?;
    }
    // Paused partitions that have their lease and room again are fetched again.
    let resume: Vec<TopicPartition> = {
        let mut st = shared.state.lock();
        st.parts
            .iter_mut()
            .filter(|(_, pq)| {
                pq.paused
                    && pq.token.is_some()
                    && pq.records.len() < shared.config.pull_threshold_for_queue.div_ceil(2).max(1)
            })
            .map(|(tp, pq)| {
                pq.paused = false;
                tp.clone()
            })
            .collect()
    };
    for tp in &resume {
        held(consumer.resume(&[(tp.topic.as_str(), tp.partition)]))?;
    }
    Ok(())
}

/// Tries to take the lease of every held partition waiting for one; on a grant, starts the
/// partition at the committed offset, read under its commit guard.
fn acquire(shared: &Shared, consumer: &Consumer) -> Result<()> {
    let waiting: Vec<TopicPartition> = {
        let st = shared.state.lock();
        st.parts
            .iter()
            .filter(|(_, pq)| pq.token.is_none() && !pq.revoking)
            .map(|(tp, _)| tp.clone())
            .collect()
    };
    let lease = &shared.config.lease;
    for tp in waiting {
        let guard = shared.leases.guard(&shared.group, &tp);
        let granted = {
            let _g = guard.lock();
            shared
                .leases
                .try_acquire(
                    &shared.group,
                    &tp,
                    shared.member(),
                    lease.expire_after,
                    &*lease.clock,
                )
                .map(|tok| {
                    let committed = shared
                        .coord
                        .committed_offsets(&shared.group)
                        .get(&tp.topic)
                        .and_then(|t| t.get(&tp.partition))
                        .copied();
                    (tok, committed)
                })
        };
        let Some((token, committed)) = granted else {
            continue;
        };
        let start = {
            let mut st = shared.state.lock();
            let Some(pq) = st.parts.get_mut(&tp) else {
                shared
                    .leases
                    .release(&shared.group, &tp, shared.member(), token);
                continue;
            };
            pq.token = Some(token);
            pq.records.clear();
            pq.failures = 0;
            pq.suspended_until = None;
            pq.committed = committed;
            let start = committed.or(pq.rewind);
            pq.next = start;
            pq.rewind = None;
            start
        };
        if let Some(offset) = start {
            held(consumer.seek(&tp.topic, tp.partition, offset))?;
        }
        let was_paused = {
            let mut st = shared.state.lock();
            st.parts
                .get_mut(&tp)
                .is_some_and(|pq| std::mem::replace(&mut pq.paused, false))
        };
        if was_paused {
            held(consumer.resume(&[(tp.topic.as_str(), tp.partition)]))?;
        }
    }
    Ok(())
}

/// Renews every held lease each `renew_interval`; a lease that could not be renewed is lost.
fn renew_loop(shared: &Shared) {
    let lease = &shared.config.lease;
    let mut st = shared.state.lock();
    let mut due = Instant::now() + lease.renew_interval;
    while !shared.stop.load(Ordering::Acquire) {
        // Woken early only at stop.
        let _ = shared.renew_wake.wait_until(&mut st, due);
        if Instant::now() < due || shared.stop.load(Ordering::Acquire) {
            continue;
        }
        // The next round is due in an interval whether or not this one renews: a passed
        // deadline kept while not renewing would make the wait return at once, a busy loop.
        due = Instant::now() + lease.renew_interval;
        if !shared.renewing.load(Ordering::Acquire) {
            continue;
        }
        let held: Vec<(TopicPartition, u64)> = st
            .parts
            .iter()
            .filter_map(|(tp, pq)| pq.token.map(|t| (tp.clone(), t)))
            .collect();
        drop(st);
        let mut lost = Vec::new();
        for (tp, tok) in held {
            if !shared.leases.renew(
                &shared.group,
                &tp,
                shared.member(),
                tok,
                lease.expire_after,
                &*lease.clock,
            ) {
                lost.push((tp, tok));
            }
        }
        st = shared.state.lock();
        let any = !lost.is_empty();
        for (tp, tok) in lost {
            // A partition inside a call is lost at the next round, after the call: then
            // its success is known and the next holding starts after it.
            if let Some(pq) = st.parts.get_mut(&tp)
                && pq.token == Some(tok)
                && !pq.busy
            {
                pq.lose();
            }
        }
        if any {
            shared.wake_pull();
        }
    }
}

/// The next partition a worker may take: leased, idle, not suspended, with records; scanned
/// round-robin from the last one taken. Or when the earliest suspension ends.
fn next_ready(st: &mut State, now: Instant) -> (Option<TopicPartition>, Option<Instant>) {
    let mut wake: Option<Instant> = None;
    let start = st.cursor.clone();
    let after = start
        .as_ref()
        .map(|c| {
            st.parts
                .range::<TopicPartition, _>((
                    std::ops::Bound::Excluded(c),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(tp, _)| tp.clone())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let order = after
        .into_iter()
        .chain(st.parts.keys().cloned().collect::<Vec<_>>());
    for tp in order {
        let pq = &st.parts[&tp];
        if pq.token.is_none() || pq.busy || pq.revoking || pq.records.is_empty() {
            continue;
        }
        if let Some(until) = pq.suspended_until
            && until > now
        {
            wake = Some(wake.map_or(until, |w| w.min(until)));
            continue;
        }
        st.cursor = Some(tp.clone());
        return (Some(tp), wake);
    }
    (None, wake)
}

fn worker_loop(shared: &Shared) {
    loop {
        let (tp, record, token, attempt) = {
            let mut st = shared.state.lock();
            loop {
                if st.stop_workers {
                    return;
                }
                let (found, wake) = next_ready(&mut st, Instant::now());
                if let Some(tp) = found {
                    let pq = st.parts.get_mut(&tp).expect("just found");
                    pq.busy = true;
                    let record = pq.records.front().cloned().expect("has records");
                    let token = pq.token.expect("leased");
                    let attempt = pq.failures.saturating_add(1);
                    break (tp, record, token, attempt);
                }
                match wake {
                    Some(at) => {
                        let _ = shared.work_ready.wait_until(&mut st, at);
                    }
                    None => shared.work_ready.wait(&mut st),
                }
            }
        };
        run(shared, tp, record, token, attempt);
    }
}

fn run(shared: &Shared, tp: TopicPartition, record: ConsumerRecord, token: u64, attempt: u32) {
    let lease = &shared.config.lease;
    let member = shared.member();
    let status = if shared
        .leases
        .begin_call(&shared.group, &tp, member, token, &*lease.clock)
    {
        let ctx = OrderlyContext {
            topic: tp.topic.clone(),
            partition: tp.partition,
            attempt,
            fencing_token: token,
        };
        let status = catch_unwind(AssertUnwindSafe(|| shared.handler.handle(&record, &ctx)))
            .unwrap_or(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment);
        shared.leases.end_call(&shared.group, &tp, member, token);
        Some(status)
    } else {
        None
    };
    // Past the maximum, and only if asked: the dead-letter topic, and the partition moves on.
    let status = match status {
        Some(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment)
            if shared.config.dead_letter
                && shared
                    .config
                    .max_reconsume_times
                    .is_some_and(|max| attempt.saturating_sub(1) >= max) =>
        {
            match dead_letter(shared, &record, attempt) {
                Ok(()) => Some(ConsumeOrderlyStatus::Success),
                Err(_) => status,
            }
        }
        s => s,
    };
    let wake_pull = {
        let mut st = shared.state.lock();
        let threshold = shared.config.pull_threshold_for_queue;
        let mut wake = false;
        if let Some(pq) = st.parts.get_mut(&tp) {
            pq.busy = false;
            if pq.token == Some(token) {
                match status {
                    None => {
                        pq.lose();
                        wake = true;
                    }
                    Some(ConsumeOrderlyStatus::Success) => {
                        if pq.records.front().map(ConsumerRecord::offset) == Some(record.offset()) {
                            pq.records.pop_front();
                        }
                        pq.next = Some(record.offset() + 1);
                        pq.failures = 0;
                        wake = pq.paused && pq.records.len() < threshold.div_ceil(2).max(1);
                    }
                    Some(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment) => {
                        pq.failures = pq.failures.saturating_add(1);
                        pq.suspended_until =
                            Instant::now().checked_add(shared.config.suspend_current_queue_time);
                    }
                }
            }
        }
        wake
    };
    // No worker to wake: this one goes back for the next ready partition itself (and waits
    // for the end of a suspension it just set).
    shared.changed.notify_all();
    if wake_pull {
        shared.wake_pull();
    }
}

/// Writes a record that failed past its maximum to `%DLQ%<group>`, with the consumer layer's
/// retry properties (its origin and how many times it was tried).
fn dead_letter(shared: &Shared, record: &ConsumerRecord, attempt: u32) -> Result<()> {
    let mut message = record.record().to_message();
    message.properties.extend([
        (RETRY_TOPIC.to_owned(), record.topic().to_owned()),
        (ORIGIN_PARTITION.to_owned(), record.partition().to_string()),
        (ORIGIN_OFFSET.to_owned(), record.offset().to_string()),
        (
            ORIGIN_MESSAGE_ID.to_owned(),
            format!(
                "{}-{}-{}",
                record.topic(),
                record.partition(),
                record.offset()
            ),
        ),
        (RECONSUME_TIMES.to_owned(), attempt.to_string()),
    ]);
    crate::consumer::dead_letter_record(&**shared.coord.store(), &shared.group, &message, record)
}
