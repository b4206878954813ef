//! RocketMQ's transactional (half) messages as a layer over any [`LogStore`]: a message is
//! stored first as a *half* message, invisible to the readers of its real topic; the producer
//! runs its local transaction and then commits (the message is written to its real topic) or
//! rolls back (it never is). Undecided half messages are checked back through a
//! [`TransactionChecker`] (see `half_check.rs`).
//!
//! The layer speaks only the trait and owns three internal topics (one partition each, the
//! store's retention) plus one record key of `__consumer_offsets`:
//! - [`HALF_TOPIC`]: every half message with its real topic and partition as properties, and
//!   the copies the check-back appends (each carrying its check count). A half message's id
//!   ([`HalfId`]) is its offset here.
//! - [`OP_TOPIC`]: the op log. A *done* record (tag `d`) ends a half message (commit, rollback
//!   or discard); an *intent* record (tag `i`) comes before a commit's or a discard's write, so
//!   a crash between that write and the done record is finished without writing twice.
//! - [`CHECK_MAX_TIME_TOPIC`]: half messages checked [`HalfConfig::max_checks`] times without a
//!   decision, with why.
//! - the committed scan offsets of the half and op topics, as consumer group
//!   [`CHECK_GROUP`]'s offsets in `__consumer_offsets`.
//!
//! It touches no file of the store and no topic other than these and the real topics it
//! commits to. See ARCHITECTURE.md ("Half messages") for the exactly-once argument and
//! docs/format.md for the records.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::delay::{Clock, SystemClock};
use crate::durability::{Wakeup, wait_any};
use crate::error::{Error, Result};
use crate::store::{LogStore, Message, ReadLimits, Record, TopicConfig};

/// The internal topic of half messages (RocketMQ's `RMQ_SYS_TRANS_HALF_TOPIC`).
pub const HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
/// The internal topic of op records (RocketMQ's `RMQ_SYS_TRANS_OP_HALF_TOPIC`).
pub const OP_TOPIC: &str = "RMQ_SYS_TRANS_OP_HALF_TOPIC";
/// Where half messages go that were checked too often without a decision (RocketMQ's
/// `TRANS_CHECK_MAX_TIME_TOPIC`).
pub const CHECK_MAX_TIME_TOPIC: &str = "TRANS_CHECK_MAX_TIME_TOPIC";
/// The consumer group whose committed offsets are the check-back's scan positions in the half
/// and op topics (RocketMQ's `CID_RMQ_SYS_TRANS`).
pub const CHECK_GROUP: &str = "CID_RMQ_SYS_TRANS";

/// Property of a half message: its real topic.
pub const REAL_TOPIC: &str = "REAL_TOPIC";
/// Property of a half message: its real partition (RocketMQ's queue id).
pub const REAL_QID: &str = "REAL_QID";
/// Property of a half message: `true` (RocketMQ's `TRAN_MSG`).
pub const TRAN_MSG: &str = "TRAN_MSG";
/// Property of a half message: its transaction id (RocketMQ's `__transactionId__`).
pub const TRANSACTION_ID: &str = "__transactionId__";
/// Property of a half message and of its committed message: the message's unique id,
/// assigned by the layer. The layer finds a commit it already wrote by it after a crash.
pub const UNIQ_KEY: &str = "UNIQ_KEY";
/// Property of a half message's copy: how many times it was checked.
pub const TRANSACTION_CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";
/// Property a producer may set on a message: seconds before its first check (at least the
/// [`HalfConfig::transaction_timeout`]).
pub const CHECK_IMMUNITY_TIME_IN_SECONDS: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";
/// Property of a half message's copy: the [`HalfId`] of the original.
pub const TRAN_PREPARED_QUEUE_OFFSET: &str = "TRAN_PREPARED_QUEUE_OFFSET";
/// Property of a half message: when it was sent, by the layer's clock (copies keep it).
pub const TRAN_BORN_MS: &str = "TRAN_BORN_MS";
/// Property of a copy (and of a discarded message): the result of the last check.
pub const TRAN_LAST_CHECK_RESULT: &str = "TRAN_LAST_CHECK_RESULT";
/// Property of a message in [`CHECK_MAX_TIME_TOPIC`]: why it was discarded.
pub const TRAN_DISCARD_REASON: &str = "TRAN_DISCARD_REASON";

/// Op-record property: `COMMIT`, `ROLLBACK` or `DISCARD`.
pub(crate) const OP_OUTCOME: &str = "TRAN_OP_OUTCOME";
/// Op-record property: the half topic's end when the record was written (every copy of the
/// half message is below it).
pub(crate) const OP_HALF_END: &str = "TRAN_OP_HALF_END";
/// Intent property: the topic the write goes to.
pub(crate) const OP_TARGET_TOPIC: &str = "TRAN_OP_TARGET_TOPIC";
/// Intent property: the partition the write goes to.
pub(crate) const OP_TARGET_QID: &str = "TRAN_OP_TARGET_QID";
/// Intent property: that partition's end before the write.
pub(crate) const OP_TARGET_END: &str = "TRAN_OP_TARGET_END";
/// Tag of a done op record (RocketMQ's `REMOVE_TAG`).
pub(crate) const DONE_TAG: &str = "d";
/// Tag of an intent op record.
pub(crate) const INTENT_TAG: &str = "i";

/// Properties the layer writes on half messages: a message sent as a half message may carry
/// none of them (`CHECK_IMMUNITY_TIME_IN_SECONDS` excepted, which the producer sets), and all
/// but `UNIQ_KEY` are removed from the committed message.
pub const LAYER_PROPERTIES: [&str; 10] = [
    REAL_TOPIC,
    REAL_QID,
    TRAN_MSG,
    TRANSACTION_ID,
    UNIQ_KEY,
    TRANSACTION_CHECK_TIMES,
    TRAN_PREPARED_QUEUE_OFFSET,
    TRAN_BORN_MS,
    TRAN_LAST_CHECK_RESULT,
    TRAN_DISCARD_REASON,
];

/// What a local transaction (or a check) says (RocketMQ's `LocalTransactionState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalTransactionState {
    /// `COMMIT_MESSAGE`: write the message to its real topic.
    Commit,
    /// `ROLLBACK_MESSAGE`: drop it.
    Rollback,
    /// `UNKNOW`: not decided yet; the check-back asks again later.
    Unknown,
}

impl LocalTransactionState {
    /// RocketMQ's name: `COMMIT_MESSAGE`, `ROLLBACK_MESSAGE`, `UNKNOW`.
    pub fn name(self) -> &'static str {
        match self {
            LocalTransactionState::Commit => "COMMIT_MESSAGE",
            LocalTransactionState::Rollback => "ROLLBACK_MESSAGE",
            LocalTransactionState::Unknown => "UNKNOW",
        }
    }
}

/// Answers the check-back for undecided half messages (RocketMQ's
/// `TransactionListener#checkLocalTransaction`). Called on the layer's check thread with the
/// half message as last stored (its [`TRANSACTION_CHECK_TIMES`] is the number of earlier
/// checks, its [`TRANSACTION_ID`] the transaction's id). A panic counts as
/// [`LocalTransactionState::Unknown`]. The layer holds nothing of the id across the call: a
/// checker may settle the transaction itself with [`HalfMessages::end`] (its answer then
/// changes nothing).
pub trait TransactionChecker: Send + Sync {
    /// The state of the half message's local transaction.
    fn check(&self, half: &Record) -> LocalTransactionState;
}

impl<F: Fn(&Record) -> LocalTransactionState + Send + Sync> TransactionChecker for F {
    fn check(&self, half: &Record) -> LocalTransactionState {
        self(half)
    }
}

/// A half message's id: its offset in [`HALF_TOPIC`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HalfId(pub u64);

impl fmt::Display for HalfId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "half message {}", self.0)
    }
}

/// How [`HalfMessages::end`] ended a half message. Ending one that is already ended is not
/// an error: it writes nothing and says how it ended (so a retry after a crash is harmless).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndOutcome {
    /// This call committed it: the message is in its real topic.
    Committed,
    /// This call rolled it back.
    RolledBack,
    /// It was committed before (or a commit a crash interrupted was finished by this call).
    AlreadyCommitted,
    /// It was rolled back before.
    AlreadyRolledBack,
    /// It was discarded before: moved to [`CHECK_MAX_TIME_TOPIC`] (checked too often, or its
    /// commit failed as for [`Discarded`](EndOutcome::Discarded)).
    AlreadyDiscarded,
    /// This call could not commit it — its real topic or partition is gone, or the topic
    /// refuses the message (too large for it) — so it was moved to [`CHECK_MAX_TIME_TOPIC`]
    /// with the reason in [`TRAN_DISCARD_REASON`] rather than left to fail at every check.
    Discarded,
}

/// Options of the half-message layer. Defaults are RocketMQ's broker's.
#[derive(Clone)]
pub struct HalfConfig {
    /// Time between check-back scans (`transactionCheckInterval`). Default: 30 s.
    pub check_interval: Duration,
    /// Age of a half message before its first check (`transactionTimeOut`), and the floor of a
    /// message's own [`CHECK_IMMUNITY_TIME_IN_SECONDS`]. Default: 6 s.
    pub transaction_timeout: Duration,
    /// Checks of one half message before it is discarded (`transactionCheckMax`). Default: 15.
    /// At least 1.
    pub max_checks: u32,
    /// `true` (default): a thread named `duolog-txn-check` scans every `check_interval`.
    /// `false`: only [`HalfMessages::check_now`] does.
    pub background: bool,
    /// The clock ages are measured by. Default: [`SystemClock`].
    pub clock: Arc<dyn Clock>,
}

impl Default for HalfConfig {
    fn default() -> Self {
        HalfConfig {
            check_interval: Duration::from_secs(30),
            transaction_timeout: Duration::from_secs(6),
            max_checks: 15,
            background: true,
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for HalfConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HalfConfig")
            .field("check_interval", &self.check_interval)
            .field("transaction_timeout", &self.transaction_timeout)
            .field("max_checks", &self.max_checks)
            .field("background", &self.background)
            .finish()
    }
}

/// What one check-back scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Checks made (checker calls).
    pub checked: u64,
    /// Half messages the checks committed.
    pub committed: u64,
    /// Half messages the checks rolled back.
    pub rolled_back: u64,
    /// Checks that answered [`LocalTransactionState::Unknown`] (or panicked).
    pub unknown: u64,
    /// Half messages moved to [`CHECK_MAX_TIME_TOPIC`] (or, too large even for that, ended
    /// with a DISCARD done record saying why: see [`dropped`](Self::dropped)).
    pub discarded: u64,
    /// Of the `discarded`, those too large to be parked in [`CHECK_MAX_TIME_TOPIC`] even
    /// without the layer's properties: only their op record (with the reason) remains.
    pub dropped: u64,
    /// Commits or discards a crash (or an error) had interrupted, finished by this scan.
    pub finished: u64,
    /// Half-topic offsets the scan had not reached that retention deleted: half messages
    /// (or their copies) never checked, reported here rather than lost silently.
    pub expired: u64,
}

impl CheckReport {
    pub(crate) fn add(&mut self, o: &CheckReport) {
        self.checked += o.checked;
        self.committed += o.committed;
        self.rolled_back += o.rolled_back;
        self.unknown += o.unknown;
        self.discarded += o.discarded;
        self.dropped += o.dropped;
        self.finished += o.finished;
        self.expired += o.expired;
    }
}

/// The outcome an op record names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Commit,
    Rollback,
    Discard,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Commit => "COMMIT",
            Outcome::Rollback => "ROLLBACK",
            Outcome::Discard => "DISCARD",
        }
    }

    fn from_name(s: &str) -> Option<Outcome> {
        match s {
            "COMMIT" => Some(Outcome::Commit),
            "ROLLBACK" => Some(Outcome::Rollback),
            "DISCARD" => Some(Outcome::Discard),
            _ => None,
        }
    }

    fn already(self) -> EndOutcome {
        match self {
            Outcome::Commit => EndOutcome::AlreadyCommitted,
            Outcome::Rollback => EndOutcome::AlreadyRolledBack,
            Outcome::Discard => EndOutcome::AlreadyDiscarded,
        }
    }
}

/// A decoded op record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) offset: u64,
    pub(crate) id: u64,
    pub(crate) outcome: Outcome,
    pub(crate) half_end: u64,
    /// `Some` for an intent: where the write goes and that partition's end before it.
    pub(crate) target: Option<Target>,
    /// An intent to discard: the reason the discarded copy carries.
    pub(crate) reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) end: u64,
}

/// What the op log says of one half message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpState {
    Done(Outcome),
    /// An intent without its done record: the write may or may not be there.
    Intent(Op),
}

impl OpState {
    /// Folds op records of one id, oldest first: a done record wins over any intent.
    pub(crate) fn fold(state: Option<OpState>, op: Op) -> Option<OpState> {
        match (state, op.target.is_some()) {
            (Some(OpState::Done(o)), _) => Some(OpState::Done(o)),
            (_, false) => Some(OpState::Done(op.outcome)),
            (_, true) => Some(OpState::Intent(op)),
        }
    }
}

pub(crate) fn corrupted(store: &dyn LogStore, topic: &str, offset: u64, reason: &str) -> Error {
    Error::corrupted(
        store.dir().join(format!("{topic}-0")),
        offset,
        format!("{topic} record at offset {offset}: {reason}"),
    )
}

fn prop_u64(r: &Record, name: &str) -> Option<u64> {
    r.properties().get(name)?.parse().ok()
}

/// Decodes an op record; anything malformed is corruption (only the layer writes here).
pub(crate) fn decode_op(store: &dyn LogStore, r: &Record) -> Result<Op> {
    let bad = |why: &str| corrupted(store, OP_TOPIC, r.offset(), why);
    let id: u64 = std::str::from_utf8(r.body())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("the body is not a half offset"))?;
    let outcome = r
        .properties()
        .get(OP_OUTCOME)
        .and_then(Outcome::from_name)
        .ok_or_else(|| bad("no outcome"))?;
    let half_end = prop_u64(r, OP_HALF_END).ok_or_else(|| bad("no half end"))?;
    let target = match r.tags() {
        Some(DONE_TAG) => None,
        Some(INTENT_TAG) => {
            let topic = r.properties().get(OP_TARGET_TOPIC);
            let partition = r
                .properties()
                .get(OP_TARGET_QID)
                .and_then(|s| s.parse().ok());
            let end = prop_u64(r, OP_TARGET_END);
            match (topic, partition, end) {
                (Some(topic), Some(partition), Some(end)) => Some(Target {
                    topic: topic.to_owned(),
                    partition,
                    end,
                }),
                _ => return Err(bad("an intent without its target")),
            }
        }
        _ => return Err(bad("neither a done nor an intent record")),
    };
    Ok(Op {
        offset: r.offset(),
        id,
        outcome,
        half_end,
        target,
        reason: r.properties().get(TRAN_DISCARD_REASON).map(str::to_owned),
    })
}

/// The records of one partition from `at`, at most `n`; an offset below the start reads from
/// the start.
pub(crate) fn read_from(
    store: &dyn LogStore,
    topic: &str,
    partition: u32,
    at: u64,
    n: usize,
) -> Result<Vec<Record>> {
    match store.read(topic, partition, at, ReadLimits::messages(n)) {
        Err(Error::OffsetOutOfRange { start, .. }) if at < start => {
            store.read(topic, partition, start, ReadLimits::messages(n))
        }
        other => other,
    }
}

/// The message a half message commits: itself in its real topic, without the layer's
/// properties but its `UNIQ_KEY`.
fn real_message(r: &Record) -> Message {
    let mut m = r.to_message();
    m.properties.retain(|(k, _)| {
        k == UNIQ_KEY
            || !(LAYER_PROPERTIES.contains(&k.as_str()) || k == CHECK_IMMUNITY_TIME_IN_SECONDS)
    });
    m
}

/// The copy of a half message moved to [`CHECK_MAX_TIME_TOPIC`]: everything it carried plus
/// why.
fn discard_message(r: &Record, reason: &str) -> Message {
    let mut m = r.to_message();
    m.properties.retain(|(k, _)| k != TRAN_DISCARD_REASON);
    m.properties
        .push((TRAN_DISCARD_REASON.into(), reason.to_owned()));
    m
}

/// The reason a bare parked message carries (the full one is in its done op record).
pub(crate) const BARE_REASON: &str = "too large: parked bare";

/// A parked message without the layer's bookkeeping (what a commit would write, plus
/// `REAL_TOPIC` / `REAL_QID` and a short reason), for a half message too large to park with
/// all its properties: smaller than the half message as sent, which the store took.
fn bare_message(r: &Record) -> Message {
    let mut m = real_message(r);
    for name in [REAL_TOPIC, REAL_QID] {
        if let Some(v) = r.properties().get(name) {
            m.properties.push((name.into(), v.to_owned()));
        }
    }
    m.properties
        .push((TRAN_DISCARD_REASON.into(), BARE_REASON.to_owned()));
    m
}

/// What a park wrote.
enum Parked {
    /// The message with all its properties and the reason.
    Whole,
    /// [`bare_message`]: the reason goes to the done record.
    Bare,
    /// Nothing (too large even bare): the reason goes to the done record.
    Dropped(String),
}

/// Stores served by a live layer in this process: two on one store would both check back.
static SERVED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Ids being ended or checked right now: one at a time per id, and no lock held across I/O
/// for the others.
#[derive(Default)]
struct Claims {
    ids: Mutex<HashSet<u64>>,
    freed: Condvar,
}

pub(crate) struct Claim<'a> {
    claims: &'a Claims,
    id: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claims.ids.lock().remove(&self.id);
        self.claims.freed.notify_all();
    }
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn LogStore>,
    pub(crate) config: HalfConfig,
    pub(crate) checker: Arc<dyn TransactionChecker>,
    claims: Claims,
    /// Whether the store has a key index (`find_by_key` on the op topic); without one, an
    /// id's op records are found by reading the op topic.
    pub(crate) indexed: bool,
    /// The committed scan offsets (half, op), as last written.
    pub(crate) committed: Mutex<(u64, u64)>,
    /// Held by one scan at a time.
    pub(crate) scan_lock: Mutex<()>,
    closed: AtomicBool,
    /// Whether this layer still holds its entry in [`SERVED`]: `close` and `Drop` both
    /// release it, and only the first may (the entry may be another layer's by then).
    registered: AtomicBool,
    /// Totals of every scan since open, the check thread's included ([`HalfMessages::stats`]).
    pub(crate) totals: Mutex<CheckReport>,
    /// Half messages the check thread's scans found deleted by retention, not yet reported by
    /// a [`HalfMessages::check_now`].
    unreported_expired: AtomicU64,
    wakeup: Wakeup,
    error: Mutex<Option<Error>>,
    dir: PathBuf,
}

/// RocketMQ's transactional messages over a store: see the [module docs](self).
///
/// ```
/// use std::sync::Arc;
/// use duolog::txn::half::{EndOutcome, HalfConfig, HalfMessages, LocalTransactionState};
/// use duolog::{LogStore, Message, ReadLimits, Record, StoreOptions, TopicConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("orders", TopicConfig::default())?;
/// let checker = Arc::new(|_: &Record| LocalTransactionState::Unknown);
/// let config = HalfConfig { background: false, ..HalfConfig::default() };
/// let txn = HalfMessages::open(Arc::clone(&store), config, checker)?;
/// let id = txn.send_half("orders", 0, Message::new("paid"))?;
/// assert!(store.read("orders", 0, 0, ReadLimits::default())?.is_empty(), "a half message is invisible");
/// assert_eq!(txn.end(id, LocalTransactionState::Commit)?, EndOutcome::Committed);
/// assert_eq!(store.read("orders", 0, 0, ReadLimits::default())?[0].body(), b"paid");
/// assert_eq!(txn.end(id, LocalTransactionState::Commit)?, EndOutcome::AlreadyCommitted);
/// txn.close()?;
/// # Ok(()) }
/// ```
pub struct HalfMessages {
    pub(crate) shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for HalfMessages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HalfMessages")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

fn ensure_topic(store: &dyn LogStore, name: &str) -> Result<()> {
    match store.create_topic(name, TopicConfig::with_partitions(1)) {
        Ok(()) | Err(Error::TopicExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A unique id for a half message (RocketMQ's `UNIQ_KEY`): wall time, process id and a
/// process-wide counter, in hex.
fn unique_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:016X}{:08X}{n:08X}", std::process::id())
}

impl Shared {
    pub(crate) fn now(&self) -> i64 {
        self.config.clock.now_ms()
    }

    /// Waits until no one else holds `id`, then holds it until the claim is dropped.
    pub(crate) fn claim(&self, id: u64) -> Claim<'_> {
        let mut ids = self.claims.ids.lock();
        while ids.contains(&id) {
            self.claims.freed.wait(&mut ids);
        }
        ids.insert(id);
        Claim {
            claims: &self.claims,
            id,
        }
    }

    /// What the op log says of `id`: through the key index (op records are keyed by the id),
    /// or by reading the whole op topic when the store has none.
    pub(crate) fn op_state(&self, id: u64) -> Result<Option<OpState>> {
        let store = &*self.store;
        let mut ops = Vec::new();
        if self.indexed {
            for hit in store.find_by_key(OP_TOPIC, &id.to_string(), (i64::MIN, i64::MAX), 64)? {
                let op = decode_op(store, &hit.record)?;
                if op.id == id {
                    ops.push(op);
                }
            }
        } else {
            let b = store.bounds(OP_TOPIC, 0)?;
            let mut at = b.start;
            while at < b.end {
                let records = read_from(store, OP_TOPIC, 0, at, 1024)?;
                let Some(last) = records.last() else { break };
                at = last.offset() + 1;
                for r in &records {
                    let op = decode_op(store, r)?;
                    if op.id == id {
                        ops.push(op);
                    }
                }
            }
        }
        ops.sort_by_key(|o| o.offset);
        Ok(ops.into_iter().fold(None, OpState::fold))
    }

    fn append_op(
        &self,
        id: u64,
        outcome: Outcome,
        intent: Option<(&Target, &str)>,
        done_reason: Option<&str>,
    ) -> Result<()> {
        let half_end = self.store.bounds(HALF_TOPIC, 0)?.end;
        let mut m = Message::new(id.to_string())
            .with_key(id.to_string())
            .with_property(OP_OUTCOME, outcome.name())
            .with_property(OP_HALF_END, half_end.to_string());
        match intent {
            None => {
                m = m.with_tags(DONE_TAG);
                if let Some(reason) = done_reason {
                    m = m.with_property(TRAN_DISCARD_REASON, reason);
                }
            }
            Some((t, reason)) => {
                m = m
                    .with_tags(INTENT_TAG)
                    .with_property(OP_TARGET_TOPIC, t.topic.clone())
                    .with_property(OP_TARGET_QID, t.partition.to_string())
                    .with_property(OP_TARGET_END, t.end.to_string());
                if !reason.is_empty() {
                    m = m.with_property(TRAN_DISCARD_REASON, reason);
                }
            }
        }
        self.store.append(OP_TOPIC, 0, &[m])?;
        Ok(())
    }

    /// Whether a record carrying `uniq` was written to the target at or after its recorded
    /// end: by the key index (`UNIQ_KEY` is indexed) or by reading the partition from there.
    fn written_since(&self, target: &Target, uniq: &str) -> Result<bool> {
        let store = &*self.store;
        if self.indexed {
            let hits = match store.find_by_key(&target.topic, uniq, (i64::MIN, i64::MAX), 16) {
                Ok(h) => h,
                Err(Error::UnknownTopic(_)) => return Ok(false),
                Err(e) => return Err(e),
            };
            return Ok(hits.iter().any(|h| {
                h.partition == target.partition
                    && h.record.offset() >= target.end
                    && h.record.properties().get(UNIQ_KEY) == Some(uniq)
            }));
        }
        let b = match store.bounds(&target.topic, target.partition) {
            Ok(b) => b,
            Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut at = target.end.max(b.start);
        while at < b.end {
            let records = read_from(store, &target.topic, target.partition, at, 1024)?;
            let Some(last) = records.last() else { break };
            at = last.offset() + 1;
            if records
                .iter()
                .any(|r| r.properties().get(UNIQ_KEY) == Some(uniq))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The second half of a commit or a discard whose intent is durable: the write unless it
    /// is found already made, a sync, then the done record. `redo`: a crash or an error may
    /// have come between the intent and the done record, so look for the write first.
    ///
    /// The intent's target says where the write goes: the real topic (a commit) or
    /// [`CHECK_MAX_TIME_TOPIC`] (a discard, or a parked commit). A commit the real topic
    /// refuses for good (gone, or the message too large for it) is parked instead, under a new
    /// intent naming the parking topic (durable before the write, so a retry looks there and
    /// parks once); its done record says DISCARD. A message too large to park whole is parked
    /// bare, and one too large even so is not written at all: its done record carries why.
    /// Returns the outcome recorded.
    pub(crate) fn complete(&self, half: &Record, intent: &Op, redo: bool) -> Result<Outcome> {
        Ok(self.complete_parked(half, intent, redo)?.0)
    }

    /// [`complete`](Self::complete), also saying whether a park dropped the message.
    pub(crate) fn complete_parked(
        &self,
        half: &Record,
        intent: &Op,
        redo: bool,
    ) -> Result<(Outcome, bool)> {
        let target = intent
            .target
            .as_ref()
            .ok_or_else(|| corrupted(&*self.store, OP_TOPIC, intent.offset, "not an intent"))?;
        let uniq = half.properties().get(UNIQ_KEY).ok_or_else(|| {
            corrupted(
                &*self.store,
                HALF_TOPIC,
                half.offset(),
                "a half message without UNIQ_KEY",
            )
        })?;
        let parks = target.topic == CHECK_MAX_TIME_TOPIC;
        let outcome = if parks {
            Outcome::Discard
        } else {
            intent.outcome
        };
        let reason = intent.reason.as_deref().unwrap_or("");
        let mut done_reason = None;
        let mut dropped = false;
        if !(redo && self.written_since(target, uniq)?) {
            if parks {
                match self.park(half, reason)? {
                    Parked::Whole => {}
                    Parked::Bare => done_reason = Some(format!("{reason} ({BARE_REASON})")),
                    Parked::Dropped(why) => {
                        done_reason = Some(format!("{reason} (not parked: {why})"));
                        dropped = true;
                    }
                }
            } else {
                match self
                    .store
                    .append(&target.topic, target.partition, &[real_message(half)])
                {
                    Ok(_) => {}
                    Err(
                        e @ (Error::UnknownTopic(_)
                        | Error::UnknownPartition { .. }
                        | Error::MessageTooLarge { .. }
                        | Error::InvalidArgument(_)),
                    ) => {
                        let reason = format!(
                            "the commit to {} partition {} failed: {e}",
                            target.topic, target.partition
                        );
                        let park = self.intend(intent.id, Outcome::Discard, None, &reason)?;
                        return self.complete_parked(half, &park, false);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // The write is durable before its done record can be: else a power cut could keep the
        // done record (another partition, another file) and lose the message.
        self.store.sync()?;
        self.append_op(intent.id, outcome, None, done_reason.as_deref())?;
        Ok((outcome, dropped))
    }

    /// Writes `half` to [`CHECK_MAX_TIME_TOPIC`] with `reason`: whole, else bare, else not
    /// at all (see [`complete`](Self::complete)).
    fn park(&self, half: &Record, reason: &str) -> Result<Parked> {
        let store = &*self.store;
        let e = match store.append(CHECK_MAX_TIME_TOPIC, 0, &[discard_message(half, reason)]) {
            Ok(_) => return Ok(Parked::Whole),
            Err(e @ Error::MessageTooLarge { .. }) => e,
            Err(e) => return Err(e),
        };
        match store.append(CHECK_MAX_TIME_TOPIC, 0, &[bare_message(half)]) {
            Ok(_) => Ok(Parked::Bare),
            Err(Error::MessageTooLarge { .. }) => Ok(Parked::Dropped(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Appends the intent of a commit (to the real topic of `real`) or of a discard (to
    /// [`CHECK_MAX_TIME_TOPIC`], `real` being `None`) of `id` and makes it durable.
    fn intend(
        &self,
        id: u64,
        outcome: Outcome,
        real: Option<(String, u32)>,
        reason: &str,
    ) -> Result<Op> {
        let (topic, partition) = real.unwrap_or((CHECK_MAX_TIME_TOPIC.to_owned(), 0));
        let end = match self.store.bounds(&topic, partition) {
            Ok(b) => b.end,
            // Gone: the write fails and parks the message (see `complete`).
            Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) => 0,
            Err(e) => return Err(e),
        };
        let target = Target {
            topic,
            partition,
            end,
        };
        self.append_op(id, outcome, Some((&target, reason)), None)?;
        // Durable before the write: a write that survives without its intent would be
        // written again by a retry.
        self.store.sync()?;
        Ok(Op {
            offset: 0,
            id,
            outcome,
            half_end: 0,
            target: Some(target),
            reason: Some(reason.to_owned()),
        })
    }

    /// Writes the intent of a commit (or discard) of `half` and makes it durable, then
    /// completes it; returns the outcome recorded and whether a park dropped the message. The
    /// caller holds the id's claim and saw no op record for it.
    pub(crate) fn commit_or_discard(
        &self,
        id: u64,
        half: &Record,
        outcome: Outcome,
        reason: &str,
    ) -> Result<(Outcome, bool)> {
        let real = match outcome {
            Outcome::Discard => None,
            _ => Some(real_target(&*self.store, half)?),
        };
        let intent = self.intend(id, outcome, real, reason)?;
        self.complete_parked(half, &intent, false)
    }

    /// Ends `id` (claimed by the caller) with `decision`, the half message being `half`.
    pub(crate) fn end_claimed(
        &self,
        id: u64,
        half: &Record,
        decision: LocalTransactionState,
    ) -> Result<EndOutcome> {
        match self.op_state(id)? {
            Some(OpState::Done(o)) => return Ok(o.already()),
            Some(OpState::Intent(op)) => {
                let done = self.complete(half, &op, true)?;
                let asked_commit = decision == LocalTransactionState::Commit;
                return Ok(match done {
                    Outcome::Commit if asked_commit => EndOutcome::Committed,
                    Outcome::Discard if op.outcome == Outcome::Commit => EndOutcome::Discarded,
                    o => o.already(),
                });
            }
            None => {}
        }
        match decision {
            LocalTransactionState::Commit => {
                match self.commit_or_discard(id, half, Outcome::Commit, "")?.0 {
                    Outcome::Commit => Ok(EndOutcome::Committed),
                    _ => Ok(EndOutcome::Discarded),
                }
            }
            LocalTransactionState::Rollback => {
                self.append_op(id, Outcome::Rollback, None, None)?;
                Ok(EndOutcome::RolledBack)
            }
            LocalTransactionState::Unknown => Err(Error::InvalidArgument(
                "end a half message with Commit or Rollback, not Unknown".into(),
            )),
        }
    }

    /// The original half message `id`.
    fn read_half(&self, id: u64) -> Result<Record> {
        let store = &*self.store;
        let unknown = || Error::InvalidArgument(format!("{} is not a half message", HalfId(id)));
        let b = store.bounds(HALF_TOPIC, 0)?;
        if id >= b.end {
            return Err(unknown());
        }
        if id < b.start {
            return Err(Error::InvalidArgument(format!(
                "{} is older than the half topic's retention",
                HalfId(id)
            )));
        }
        let r = store
            .read(HALF_TOPIC, 0, id, ReadLimits::messages(1))?
            .into_iter()
            .next()
            .filter(|r| r.offset() == id)
            .ok_or_else(unknown)?;
        // Copies are not ids: only an original (no TRAN_PREPARED_QUEUE_OFFSET) is.
        if r.properties().get(TRAN_PREPARED_QUEUE_OFFSET).is_some() {
            return Err(unknown());
        }
        Ok(r)
    }

    pub(crate) fn keep_error(&self, e: Error) {
        let mut slot = self.error.lock();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// The first error a background scan met (once), or `Closed` after `close`.
    fn take_error(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        match self.error.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Bytes of framing a property may take beyond its name and value, on either engine.
const PROPERTY_BOUND: usize = 10;
/// Bytes of framing a record may take beyond its contents, on either engine (the CommitLog's
/// header with IPv6 hosts, its checksum property and length fields are the larger).
const RECORD_BOUND: usize = 192;

/// An upper bound of the size either engine gives `m` in `topic` (what its
/// `max_message_bytes` is checked against): a message this bound admits is never refused as
/// too large; one within [`RECORD_BOUND`] bytes of the limit may be refused here though the
/// engine would take it.
fn size_bound(topic: &str, m: &Message) -> usize {
    let key = m
        .key
        .as_ref()
        .map_or(0, |k| 2 * k.len() + PROPERTY_BOUND + 8);
    let tags = m.tags.as_ref().map_or(0, |t| t.len() + PROPERTY_BOUND + 4);
    let props: usize = m
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + PROPERTY_BOUND)
        .sum();
    RECORD_BOUND + topic.len() + m.body.len() + key + tags + props
}

/// The real topic and partition a half message names.
fn real_target(store: &dyn LogStore, half: &Record) -> Result<(String, u32)> {
    let topic = half.properties().get(REAL_TOPIC);
    let qid = half.properties().get(REAL_QID).and_then(|q| q.parse().ok());
    match (topic, qid) {
        (Some(t), Some(q)) => Ok((t.to_owned(), q)),
        _ => Err(corrupted(
            store,
            HALF_TOPIC,
            half.offset(),
            "a half message without REAL_TOPIC / REAL_QID",
        )),
    }
}

impl HalfMessages {
    /// Opens the layer over `store`: creates its internal topics if missing, finishes every
    /// commit or discard a crash interrupted (an intent op record without its done record),
    /// and (with [`HalfConfig::background`]) starts the check thread. One per store in a
    /// process: a second open while the first is alive is [`Error::InvalidArgument`].
    pub fn open(
        store: Arc<dyn LogStore>,
        config: HalfConfig,
        checker: Arc<dyn TransactionChecker>,
    ) -> Result<HalfMessages> {
        if config.max_checks == 0 || config.check_interval.is_zero() {
            return Err(Error::InvalidArgument(
                "max_checks and check_interval must be at least 1".into(),
            ));
        }
        let dir = store.dir().to_path_buf();
        {
            let mut served = SERVED.lock();
            if served.contains(&dir) {
                return Err(Error::InvalidArgument(format!(
                    "a HalfMessages layer is already open on the store at {}",
                    dir.display()
                )));
            }
            served.push(dir.clone());
        }
        let layer = HalfMessages {
            shared: Arc::new(Shared {
                store: Arc::clone(&store),
                config,
                checker,
                claims: Claims::default(),
                indexed: false,
                committed: Mutex::new((0, 0)),
                scan_lock: Mutex::new(()),
                closed: AtomicBool::new(false),
                registered: AtomicBool::new(true),
                totals: Mutex::new(CheckReport::default()),
                unreported_expired: AtomicU64::new(0),
                wakeup: Wakeup::new(),
                error: Mutex::new(None),
                dir,
            }),
            thread: Mutex::new(None),
        };
        // From here on, `layer`'s drop releases the directory.
        let layer = Self::load(layer)?;
        crate::txn::half_check::recover(&layer.shared)?;
        if layer.shared.config.background {
            let s = Arc::clone(&layer.shared);
            let handle = std::thread::Builder::new()
                .name("duolog-txn-check".into())
                .spawn(move || check_loop(&s))
                .map_err(|e| Error::io(&layer.shared.dir, e))?;
            *layer.thread.lock() = Some(handle);
        }
        Ok(layer)
    }

    fn load(mut layer: HalfMessages) -> Result<HalfMessages> {
        let store = Arc::clone(&layer.shared.store);
        for name in [HALF_TOPIC, OP_TOPIC, CHECK_MAX_TIME_TOPIC] {
            ensure_topic(&*store, name)?;
        }
        let indexed = match store.find_by_key(OP_TOPIC, "probe", (0, 0), 1) {
            Ok(_) => true,
            Err(Error::InvalidArgument(_)) => false,
            Err(e) => return Err(e),
        };
        let committed = crate::txn::half_check::load_committed(&*store)?;
        let shared = Arc::get_mut(&mut layer.shared).expect("not shared yet");
        shared.indexed = indexed;
        *shared.committed.get_mut() = committed;
        Ok(layer)
    }

    /// Stores `message` as a half message for `topic`'s `partition`: durable as an
    /// [`append`](LogStore::append) is, invisible to that partition's readers until
    /// [`end`](Self::end) commits it. An unknown topic or partition, an internal topic, or a
    /// message carrying one of [`LAYER_PROPERTIES`] (or an unparsable
    /// [`CHECK_IMMUNITY_TIME_IN_SECONDS`]) is an error here, before anything is written; so
    /// is ([`Error::MessageTooLarge`]) a message larger than the real topic's own
    /// `max_message_bytes` would take once committed (an upper bound of the size on either
    /// engine: within about 200 bytes of the limit, a message may be refused here though the
    /// topic would take it).
    pub fn send_half(&self, topic: &str, partition: u32, message: Message) -> Result<HalfId> {
        let s = &*self.shared;
        s.take_error()?;
        let store = &*s.store;
        if crate::store::is_internal_topic(topic) {
            return Err(Error::InvalidArgument(format!(
                "{topic} is an internal topic: no half messages"
            )));
        }
        let config = store.describe_topic(topic)?;
        let partitions = config.partitions;
        if partition >= partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions,
            });
        }
        for (k, v) in &message.properties {
            if LAYER_PROPERTIES.contains(&k.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "property {k:?} is written by the half-message layer"
                )));
            }
            if k == CHECK_IMMUNITY_TIME_IN_SECONDS && v.parse::<u64>().is_err() {
                return Err(Error::InvalidArgument(format!(
                    "{CHECK_IMMUNITY_TIME_IN_SECONDS} must be a number of seconds, not {v:?}"
                )));
            }
        }
        let uniq = unique_key();
        // The commit writes the message with its UNIQ_KEY: a topic that would refuse it is
        // an error now, before the producer runs its local transaction, not a parked message
        // after it. (The topic following the store's limit takes it if the half topic does:
        // the committed message is the half message less the layer's properties.)
        if let Some(max) = config.max_message_bytes {
            let size = size_bound(topic, &message) + UNIQ_KEY.len() + uniq.len() + PROPERTY_BOUND;
            if size > max {
                return Err(Error::MessageTooLarge { size, max });
            }
        }
        let m = message
            .with_property(REAL_TOPIC, topic)
            .with_property(REAL_QID, partition.to_string())
            .with_property(TRAN_MSG, "true")
            .with_property(TRANSACTION_ID, uniq.clone())
            .with_property(UNIQ_KEY, uniq)
            .with_property(TRAN_BORN_MS, s.now().to_string());
        let appended = store.append(HALF_TOPIC, 0, &[m])?;
        Ok(HalfId(appended.base_offset))
    }

    /// Commits or rolls back half message `id` (RocketMQ's `endTransaction`). A commit writes
    /// the message to its real topic and partition (its key, tags, timestamp and properties,
    /// without the layer's bookkeeping but `UNIQ_KEY`), exactly once across crashes; both
    /// record the outcome in the op log. Returns when the real message is durable (commit) or
    /// the op record acknowledged (rollback).
    ///
    /// An id already ended is not an error: nothing is written and the outcome says how it
    /// ended ([`EndOutcome::AlreadyCommitted`] …); a commit a crash interrupted is finished.
    /// An id that is not a half message's (never returned by `send_half`, or a check's copy)
    /// or that retention deleted is [`Error::InvalidArgument`]; so is `Unknown`.
    pub fn end(&self, id: HalfId, decision: LocalTransactionState) -> Result<EndOutcome> {
        let s = &*self.shared;
        s.take_error()?;
        let half = s.read_half(id.0)?;
        let _claim = s.claim(id.0);
        s.end_claimed(id.0, &half, decision)
    }

    /// RocketMQ's `sendMessageInTransaction`: sends the half message, runs `local` with it,
    /// and ends it as `local` says. [`Unknown`](LocalTransactionState::Unknown) (or a panic in
    /// `local`, reported as `Unknown`) leaves it to the check-back. Returns the id and how it
    /// ended (`None`: left undecided).
    pub fn send_in_transaction(
        &self,
        topic: &str,
        partition: u32,
        message: Message,
        local: impl FnOnce(&Record) -> LocalTransactionState,
    ) -> Result<(HalfId, Option<EndOutcome>)> {
        let id = self.send_half(topic, partition, message)?;
        let half = self.shared.read_half(id.0)?;
        let state = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| local(&half)))
            .unwrap_or(LocalTransactionState::Unknown);
        if state == LocalTransactionState::Unknown {
            return Ok((id, None));
        }
        Ok((id, Some(self.end(id, state)?)))
    }

    /// Runs one check-back scan now (what the check thread does every `check_interval`).
    /// Its [`CheckReport::expired`] also counts the half messages the check thread's scans
    /// found deleted by retention since the last `check_now`, so none goes unreported.
    pub fn check_now(&self) -> Result<CheckReport> {
        let s = &*self.shared;
        s.take_error()?;
        let mut report = crate::txn::half_check::scan(s)?;
        report.expired += s.unreported_expired.swap(0, Ordering::SeqCst);
        Ok(report)
    }

    /// What every scan since open did, the check thread's and `check_now`'s, added up.
    pub fn stats(&self) -> CheckReport {
        *self.shared.totals.lock()
    }

    /// Half messages not decided yet, from the check-back's position on, at most `limit`
    /// (what `duolog half` lists): each the latest stored copy seen.
    pub fn undecided(&self, limit: usize) -> Result<Vec<Record>> {
        crate::txn::half_check::undecided(&self.shared, limit)
    }

    /// Stops the check thread (waiting for the checker call in progress, if any: the scan
    /// stops between messages) and returns the first error a background scan met, if any.
    /// The store stays open. Calling it again (or dropping the layer after it) does nothing.
    pub fn close(&self) -> Result<()> {
        let s = &*self.shared;
        s.closed.store(true, Ordering::SeqCst);
        s.wakeup.wake();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
        if s.registered.swap(false, Ordering::SeqCst) {
            SERVED.lock().retain(|d| *d != s.dir);
        }
        match s.error.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for HalfMessages {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn check_loop(s: &Shared) {
    let interval = s.config.check_interval;
    loop {
        wait_any(&[], &s.wakeup, crate::clock::deadline(interval), || {
            s.closed.load(Ordering::SeqCst)
        });
        if s.closed.load(Ordering::SeqCst) {
            return;
        }
        match crate::txn::half_check::scan(s) {
            // Nobody sees this report: its retention losses wait for the next `check_now`.
            Ok(r) => {
                s.unreported_expired.fetch_add(r.expired, Ordering::SeqCst);
            }
            Err(e) => s.keep_error(e),
        }
    }
}

pub(crate) fn is_closed(s: &Shared) -> bool {
    s.closed.load(Ordering::SeqCst)
}
