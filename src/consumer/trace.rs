//! Message trace, after RocketMQ's (`client/.../trace/`): optional events saying when a message
//! was produced (and stored, at which offset) and consumed (by which group, after how many
//! retries, at what cost, with what result), written in batches to an internal trace topic of
//! the same store and queried back by message id or key.
//!
//! - [`Tracer`] owns the trace topic ([`TRACE_TOPIC`], `__trace`, created if missing) and one
//!   background thread (`duolog-trace`). Events are queued in memory in a bounded queue
//!   (recording never blocks: a full queue drops the event and counts it, [`TraceStats`]) and
//!   written in trace messages of at most [`MAX_EVENTS_PER_MESSAGE`] events and about
//!   [`MAX_TRACE_BODY_BYTES`] bytes, as soon as a message's worth is queued or at the latest
//!   [`TraceConfig::flush_interval`] after the oldest queued event. [`Tracer::close`] (and
//!   drop) writes everything still queued.
//! - [`TracedStore`] wraps any [`LogStore`] and records a [`TraceKind::Pub`] event per message
//!   of every `append`, `append_async` and `append_oneway`: an application turns tracing on by
//!   wrapping its store, and pays nothing when it does not. A consumer traces what it polls
//!   when [`ConsumerConfig::trace`](super::ConsumerConfig::trace) is set; a push consumer
//!   reports each handled message with [`Tracer::consumed`].
//! - [`Tracer::query`] finds a message's events through the store's key index
//!   ([`LogStore::find_by_key`] on the trace topic).
//!
//! **Message id.** A message is named `<topic>-<partition>-<offset>` ([`message_id`]): unique in
//! a store, known as soon as the append returns, and parsed from the right ([`parse_message_id`]),
//! so topics holding `-` are fine. A failed append has no offset, hence no id: its `Pub` event is
//! found by the message's key only.
//!
//! **How queries find events.** Each trace message carries, in its `KEYS` property (which the key
//! index indexes word by word), the ids and the keys of the messages it traces. A key that cannot
//! be a `KEYS` word (it holds a space or a RocketMQ separator, or is longer than
//! [`MAX_KEYS_WORD`] bytes) is the trace message's own key instead, one such key per trace
//! message. The body layout is drawn in docs/format.md ("Trace records"); the codec
//! ([`encode_events`], [`decode_events`]) is pure.
//!
//! This module owns the trace topic and nothing else of the store; it reads and writes through
//! the [`LogStore`] trait only.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::pull::ConsumerRecord;
use crate::durability::{Completion, Wakeup};
use crate::error::{Error, Result};
use crate::store::{
    AppendResult, CompactionReport, DiskUsage, EngineKind, Fetch, KeyMatch, LogStore, Message,
    PartitionBounds, ProducerEntry, ProducerId, ReadLimits, ReadProgress, Record, TaggedRead,
    TopicConfig, TxnMarker, VerifyReport, Visitor,
};

/// The default trace topic (RocketMQ's `RMQ_SYS_TRACE_TOPIC`): internal, hidden from
/// `list_topics(false)`.
pub const TRACE_TOPIC: &str = "__trace";

/// At most this many events per trace message (RocketMQ's batch of 20 trace contexts).
pub const MAX_EVENTS_PER_MESSAGE: usize = 20;

/// A trace message's body stops growing past this many bytes (RocketMQ's 128,000); one event
/// larger than that (a huge key) is a trace message of its own.
pub const MAX_TRACE_BODY_BYTES: usize = 128_000;

/// The longest traced key that goes into a trace message's `KEYS` property (longer ones are the
/// trace message's own key), so the property stays far below the CommitLog format's 32 KiB of
/// properties: 20 × (id + word) ≈ 13 KiB at most.
pub const MAX_KEYS_WORD: usize = 512;

/// The longest key or tags an event keeps (longer ones are left out: the event is then found
/// by its message id only), so a full queue holds at most about `queue_capacity` × 8 KiB
/// whatever the traced messages carry.
pub const MAX_TRACED_FIELD: usize = 4096;

/// A traced key or tags as an event keeps it: the text, or empty when over
/// [`MAX_TRACED_FIELD`].
fn bounded(text: std::borrow::Cow<'_, str>) -> String {
    if text.len() > MAX_TRACED_FIELD {
        String::new()
    } else {
        text.into_owned()
    }
}

/// The text of a traced key (as the key index names it), bounded.
fn traced_key(key: Option<&[u8]>) -> String {
    key.map(|k| bounded(crate::index::key_text(k)))
        .unwrap_or_default()
}

/// The largest [`TraceConfig::queue_capacity`] (events).
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;

/// Between the fields of a trace record (RocketMQ's `TraceConstants.CONTENT_SPLITOR`).
const FIELD: char = '\u{1}';
/// At the end of each trace record (RocketMQ's `TraceConstants.FIELD_SPLITOR`).
const RECORD: char = '\u{2}';

/// What a trace event says happened (RocketMQ's trace types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TraceKind {
    /// Produced: the append returned (with `success`, the message was stored at its offset).
    Pub,
    /// Delivered to a consumer of a group (a pull consumer's `poll` returned it; a push
    /// consumer is about to run its handler).
    SubBefore,
    /// Handled by a consumer of a group, with the handler's cost and result.
    SubAfter,
}

impl TraceKind {
    /// RocketMQ's name: `Pub`, `SubBefore`, `SubAfter`.
    pub fn name(self) -> &'static str {
        match self {
            TraceKind::Pub => "Pub",
            TraceKind::SubBefore => "SubBefore",
            TraceKind::SubAfter => "SubAfter",
        }
    }

    /// Parses [`TraceKind::name`] back.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "Pub" => Some(TraceKind::Pub),
            "SubBefore" => Some(TraceKind::SubBefore),
            "SubAfter" => Some(TraceKind::SubAfter),
            _ => None,
        }
    }
}

impl std::fmt::Display for TraceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One trace event. Fields a kind does not carry are left at their defaults (and are not
/// encoded): `group` and `retries` belong to the consume kinds, `body_length` to `Pub`,
/// `cost_us` and `success` to `Pub` and `SubAfter` (a `SubBefore` is always a success).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// What happened.
    pub kind: TraceKind,
    /// When, in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The consumer group (empty for `Pub`).
    pub group: String,
    /// The traced message's topic.
    pub topic: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset; `None` only for a failed `Pub` (nothing was stored).
    pub offset: Option<u64>,
    /// Its tags (empty: none, or longer than [`MAX_TRACED_FIELD`]).
    pub tags: String,
    /// Its key as text (lowercase hex when the key is not UTF-8, as the key index names it);
    /// empty: no key, or one longer than [`MAX_TRACED_FIELD`] (not kept).
    pub key: String,
    /// `Pub`: the body length in bytes.
    pub body_length: u64,
    /// `Pub`: the append's duration; `SubAfter`: the handler's. Microseconds.
    pub cost_us: u64,
    /// `Pub`: the append succeeded; `SubAfter`: the handler succeeded.
    pub success: bool,
    /// Consume kinds: how often the message was consumed before (0 the first time).
    pub retries: u32,
}

impl TraceEvent {
    /// The traced message's id, `<topic>-<partition>-<offset>` (`None` for a failed `Pub`).
    pub fn message_id(&self) -> Option<String> {
        self.offset
            .map(|o| message_id(&self.topic, self.partition, o))
    }

    /// A consume event (`SubBefore` or `SubAfter`, success and no cost: set `cost_us` and
    /// `success` of a `SubAfter`) for `record` of `topic`/`partition`, consumed `retries` times
    /// before, by a consumer of `group`, stamped now: what a consumer that does not hold a
    /// [`ConsumerRecord`] (a push consumer naming a retried message by its original topic and
    /// offset, say) hands to [`Tracer::record`].
    ///
    /// ```
    /// # use duolog::{LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
    /// use duolog::consumer::{TraceEvent, TraceKind};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// # store.create_topic("t", TopicConfig::default())?;
    /// store.append("t", 0, &[Message::new("x").with_key("k")])?;
    /// let record = &store.read("t", 0, 0, ReadLimits::default())?[0];
    /// let mut e = TraceEvent::consume(TraceKind::SubAfter, "g", "t", 0, record, 1);
    /// e.cost_us = 250;
    /// e.success = false;
    /// assert_eq!(e.message_id().as_deref(), Some("t-0-0"));
    /// assert_eq!(e.key, "k");
    /// # Ok(()) }
    /// ```
    pub fn consume(
        kind: TraceKind,
        group: &str,
        topic: &str,
        partition: u32,
        record: &Record,
        retries: u32,
    ) -> TraceEvent {
        TraceEvent {
            kind,
            timestamp_ms: crate::clock::now_ms(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition,
            offset: Some(record.offset()),
            tags: bounded(record.tags().unwrap_or_default().into()),
            key: traced_key(record.key()),
            body_length: 0,
            cost_us: 0,
            success: true,
            retries,
        }
    }

    fn consumed(kind: TraceKind, group: &str, r: &ConsumerRecord, retries: u32) -> TraceEvent {
        TraceEvent::consume(kind, group, r.topic(), r.partition(), r.record(), retries)
    }
}

/// A message's id: `<topic>-<partition>-<offset>`.
///
/// ```
/// use duolog::consumer::{message_id, parse_message_id};
/// assert_eq!(message_id("order-events", 2, 41), "order-events-2-41");
/// assert_eq!(parse_message_id("order-events-2-41"), Some(("order-events", 2, 41)));
/// assert_eq!(parse_message_id("orders-x-41"), None);
/// ```
pub fn message_id(topic: &str, partition: u32, offset: u64) -> String {
    format!("{topic}-{partition}-{offset}")
}

/// Splits a message id into topic, partition and offset (from the right, so a topic may hold
/// `-`); `None` when it is not one.
pub fn parse_message_id(id: &str) -> Option<(&str, u32, u64)> {
    let (rest, offset) = id.rsplit_once('-')?;
    let (topic, partition) = rest.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if topic.is_empty() || !digits(partition) || !digits(offset) {
        return None;
    }
    Some((topic, partition.parse().ok()?, offset.parse().ok()?))
}

/// Text fields may hold anything a key may; the separators and the escape itself are escaped so
/// that a field never holds `\u{1}` or `\u{2}`.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            FIELD => out.push_str("\\1"),
            RECORD => out.push_str("\\2"),
            c => out.push(c),
        }
    }
}

fn unescape(s: &str) -> std::result::Result<String, &'static str> {
    if !s.contains('\\') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('1') => out.push(FIELD),
            Some('2') => out.push(RECORD),
            _ => return Err("bad escape"),
        }
    }
    Ok(out)
}

/// Appends one event as a trace record (fields per kind, docs/format.md "Trace records").
fn encode_event(out: &mut String, e: &TraceEvent) {
    use std::fmt::Write as _;
    let f = |out: &mut String| out.push(FIELD);
    out.push_str(e.kind.name());
    f(out);
    let _ = write!(out, "{}", e.timestamp_ms);
    f(out);
    escape_into(out, &e.group);
    f(out);
    escape_into(out, &e.topic);
    f(out);
    let _ = write!(out, "{}", e.partition);
    f(out);
    if let Some(o) = e.offset {
        let _ = write!(out, "{o}");
    }
    f(out);
    escape_into(out, &e.tags);
    f(out);
    escape_into(out, &e.key);
    match e.kind {
        TraceKind::Pub => {
            let _ = write!(
                out,
                "{FIELD}{}{FIELD}{}{FIELD}{}",
                e.body_length, e.cost_us, e.success
            );
        }
        TraceKind::SubBefore => {
            let _ = write!(out, "{FIELD}{}", e.retries);
        }
        TraceKind::SubAfter => {
            let _ = write!(
                out,
                "{FIELD}{}{FIELD}{}{FIELD}{}",
                e.retries, e.cost_us, e.success
            );
        }
    }
    out.push(RECORD);
}

/// Encodes events as one trace message body: each event's record, every record ended by
/// `\u{2}`, fields separated by `\u{1}`.
///
/// ```
/// use duolog::consumer::{decode_events, encode_events, TraceEvent, TraceKind};
/// let e = TraceEvent {
///     kind: TraceKind::Pub, timestamp_ms: 1_700_000_000_000, group: String::new(),
///     topic: "orders".into(), partition: 0, offset: Some(7), tags: "TagA".into(),
///     key: "order-1".into(), body_length: 100, cost_us: 35, success: true, retries: 0,
/// };
/// let body = encode_events(std::slice::from_ref(&e));
/// assert_eq!(body, "Pub\u{1}1700000000000\u{1}\u{1}orders\u{1}0\u{1}7\u{1}TagA\u{1}order-1\u{1}100\u{1}35\u{1}true\u{2}");
/// assert_eq!(decode_events(body.as_bytes())?, vec![e]);
/// # Ok::<(), duolog::Error>(())
/// ```
pub fn encode_events(events: &[TraceEvent]) -> String {
    let mut out = String::new();
    for e in events {
        encode_event(&mut out, e);
    }
    out
}

fn decode_record(rec: &str) -> std::result::Result<TraceEvent, &'static str> {
    let fields: Vec<&str> = rec.split(FIELD).collect();
    let kind = TraceKind::from_name(fields[0]).ok_or("unknown trace type")?;
    let expected = match kind {
        TraceKind::Pub => 11,
        TraceKind::SubBefore => 9,
        TraceKind::SubAfter => 11,
    };
    if fields.len() != expected {
        return Err("wrong number of fields for its type");
    }
    let num = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| "a number field is not a number")
    };
    let boolean = |s: &str| match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("a success field is neither true nor false"),
    };
    let offset = match fields[5] {
        "" if kind == TraceKind::Pub => None,
        s => Some(num(s)?),
    };
    let mut e = TraceEvent {
        kind,
        timestamp_ms: fields[1]
            .parse()
            .map_err(|_| "the timestamp is not a number")?,
        group: unescape(fields[2])?,
        topic: unescape(fields[3])?,
        partition: fields[4]
            .parse()
            .map_err(|_| "the partition is not a number")?,
        offset,
        tags: unescape(fields[6])?,
        key: unescape(fields[7])?,
        body_length: 0,
        cost_us: 0,
        success: true,
        retries: 0,
    };
    let retries = |s: &str| s.parse::<u32>().map_err(|_| "retries is not a number");
    match kind {
        TraceKind::Pub => {
            e.body_length = num(fields[8])?;
            e.cost_us = num(fields[9])?;
            e.success = boolean(fields[10])?;
            if e.success && e.offset.is_none() {
                return Err("a successful Pub without an offset");
            }
        }
        TraceKind::SubBefore => e.retries = retries(fields[8])?,
        TraceKind::SubAfter => {
            e.retries = retries(fields[8])?;
            e.cost_us = num(fields[9])?;
            e.success = boolean(fields[10])?;
        }
    }
    Ok(e)
}

/// Decodes a trace message body ([`encode_events`]'s layout). Anything else — not UTF-8, an
/// unterminated record, an unknown type, a wrong field count, a field that does not parse — is
/// [`Error::InvalidArgument`] naming the byte where the bad record starts; it never panics.
pub fn decode_events(body: &[u8]) -> Result<Vec<TraceEvent>> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Error::InvalidArgument(format!(
            "malformed trace body: not UTF-8 at byte {}",
            e.valid_up_to()
        ))
    })?;
    let mut events = Vec::new();
    let mut at = 0usize;
    let mut rest = text;
    while !rest.is_empty() {
        let Some(end) = rest.find(RECORD) else {
            return Err(Error::InvalidArgument(format!(
                "malformed trace body: record at byte {at} has no end marker"
            )));
        };
        let e = decode_record(&rest[..end]).map_err(|reason| {
            Error::InvalidArgument(format!(
                "malformed trace body: record at byte {at}: {reason}"
            ))
        })?;
        events.push(e);
        at += end + RECORD.len_utf8();
        rest = &rest[end + RECORD.len_utf8()..];
    }
    Ok(events)
}

/// Whether a traced key can be a word of a trace message's `KEYS` property.
fn keys_word(key: &str) -> bool {
    key.len() <= MAX_KEYS_WORD && !key.contains([' ', FIELD, RECORD])
}

/// [`batches`] without the ranges.
#[cfg(test)]
fn trace_messages(events: &[TraceEvent]) -> Vec<Message> {
    batches(events).into_iter().map(|(m, _)| m).collect()
}

/// Groups events into trace messages, each with the range of `events` it holds: at most
/// [`MAX_EVENTS_PER_MESSAGE`] events each, a body of about [`MAX_TRACE_BODY_BYTES`] at most,
/// `KEYS` = the ids and plain keys it traces, and a key that cannot be a `KEYS` word as the
/// message's own key (one per message).
fn batches(events: &[TraceEvent]) -> Vec<(Message, std::ops::Range<usize>)> {
    struct Building {
        body: String,
        first: usize,
        events: usize,
        words: Vec<String>,
        own_key: Option<String>,
    }
    impl Building {
        fn new(first: usize) -> Self {
            Building {
                body: String::new(),
                first,
                events: 0,
                words: Vec::new(),
                own_key: None,
            }
        }
        fn finish(self) -> (Message, std::ops::Range<usize>) {
            let range = self.first..self.first + self.events;
            let mut m = Message::new(self.body);
            if !self.words.is_empty() {
                m = m.with_property("KEYS", self.words.join(" "));
            }
            if let Some(k) = self.own_key {
                m = m.with_key(k);
            }
            (m, range)
        }
    }
    let mut out = Vec::new();
    let mut cur = Building::new(0);
    let mut record = String::new();
    for (i, e) in events.iter().enumerate() {
        record.clear();
        encode_event(&mut record, e);
        let odd_key = (!e.key.is_empty() && !keys_word(&e.key)).then_some(&e.key);
        let key_clash = odd_key.is_some_and(|k| cur.own_key.as_ref().is_some_and(|o| o != k));
        if cur.events > 0
            && (cur.events >= MAX_EVENTS_PER_MESSAGE
                || cur.body.len() + record.len() > MAX_TRACE_BODY_BYTES
                || key_clash)
        {
            out.push(std::mem::replace(&mut cur, Building::new(i)).finish());
        }
        cur.body.push_str(&record);
        cur.events += 1;
        let mut word = |w: String| {
            if !cur.words.contains(&w) {
                cur.words.push(w);
            }
        };
        if let Some(id) = e.message_id() {
            word(id);
        }
        match odd_key {
            Some(k) => cur.own_key = Some(k.clone()),
            None if !e.key.is_empty() => word(e.key.clone()),
            None => {}
        }
    }
    if cur.events > 0 {
        out.push(cur.finish());
    }
    out
}

/// A [`Tracer`]'s settings.
///
/// ```
/// use std::time::Duration;
/// use duolog::consumer::{TraceConfig, TRACE_TOPIC};
/// let config = TraceConfig { flush_interval: Duration::from_millis(200), ..TraceConfig::default() };
/// assert_eq!(config.topic, TRACE_TOPIC);
/// assert_eq!(config.queue_capacity, 2048);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// The trace topic (RocketMQ's `msgTraceTopicName`). Default: [`TRACE_TOPIC`].
    pub topic: String,
    /// Partitions of the trace topic when the tracer creates it (trace messages go round
    /// robin over the topic's partitions). Default: 1.
    pub partitions: u32,
    /// Events queued at most; an event recorded while the queue is full is dropped and
    /// counted ([`TraceStats::dropped`]). Default: 2048 (RocketMQ's `AsyncTraceDispatcher`
    /// queue); 1 to [`MAX_QUEUE_CAPACITY`].
    pub queue_capacity: usize,
    /// The longest an event waits in the queue before it is written when fewer than a trace
    /// message's worth are queued. Default: 1 s. RocketMQ waits 5 s to spare a network round
    /// trip to a broker; here a write is one local append, so a shorter wait costs at most one
    /// small append per second on a quiet store and makes a trace queryable sooner. A busy
    /// store fills trace messages and writes them at once whatever this is.
    pub flush_interval: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            topic: TRACE_TOPIC.to_owned(),
            partitions: 1,
            queue_capacity: 2048,
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// What a [`Tracer`] did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStats {
    /// Events accepted into the queue.
    pub recorded: u64,
    /// Events not recorded: the queue was full, or the tracer was closed.
    pub dropped: u64,
    /// Events written to the trace topic.
    pub written: u64,
    /// Trace messages appended.
    pub trace_messages: u64,
    /// Events lost because their trace message could not be appended.
    pub lost: u64,
    /// Appends of trace messages that failed.
    pub write_errors: u64,
}

#[derive(Default)]
struct Counters {
    recorded: AtomicU64,
    dropped: AtomicU64,
    written: AtomicU64,
    trace_messages: AtomicU64,
    lost: AtomicU64,
    write_errors: AtomicU64,
}

enum Command {
    Event(Box<TraceEvent>),
    /// Write everything queued before it; reply with the first write error since the last
    /// flush.
    Flush(mpsc::Sender<Result<()>>),
    /// As `Flush`, then stop.
    Close(mpsc::Sender<Result<()>>),
}

/// What [`Tracer::query`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceQuery {
    /// The events of the message id or key asked for, oldest first.
    pub events: Vec<TraceEvent>,
    /// Trace messages found whose body did not decode (skipped; something other than a
    /// tracer wrote to the trace topic).
    pub malformed: u64,
}

/// Records trace events and writes them, in batches, to the trace topic of a store (see the
/// module docs of `duolog::consumer`).
///
/// ```
/// use std::sync::Arc;
/// use duolog::{LogStore, Message, StoreOptions, TopicConfig};
/// use duolog::consumer::{TraceKind, TracedStore, Tracer, TraceConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// let tracer = Arc::new(Tracer::new(Arc::clone(&store), TraceConfig::default())?);
/// // Tracing on: the application appends through the wrapper.
/// let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
/// traced.create_topic("orders", TopicConfig::default())?;
/// traced.append("orders", 0, &[Message::new("created").with_key("order-1")])?;
/// tracer.flush()?;
///
/// let by_id = Tracer::query(store.as_ref(), "orders-0-0")?;
/// assert_eq!(by_id.events[0].kind, TraceKind::Pub);
/// assert!(by_id.events[0].success);
/// let by_key = Tracer::query(store.as_ref(), "order-1")?;
/// assert_eq!(by_key.events, by_id.events);
/// traced.close()?; // closes the tracer (writing what is queued), then the store
/// # Ok(()) }
/// ```
pub struct Tracer {
    topic: String,
    tx: SyncSender<Command>,
    counters: Arc<Counters>,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The outcome of the first close, for later ones.
    close_result: OnceLock<std::result::Result<(), String>>,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("topic", &self.topic)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Tracer {
    /// A tracer writing to `config.topic` of `store`, creating the topic (with
    /// `config.partitions` and the store's delete retention) if it is missing, and starting
    /// its writer thread.
    pub fn new(store: Arc<dyn LogStore>, config: TraceConfig) -> Result<Tracer> {
        // The queue's slots are allocated up front: a capacity is a promise of memory.
        if !(1..=MAX_QUEUE_CAPACITY).contains(&config.queue_capacity) || config.partitions == 0 {
            return Err(Error::InvalidArgument(format!(
                "a tracer needs a queue_capacity of 1 to {MAX_QUEUE_CAPACITY} (not {}) and at \
                 least 1 partition (not {})",
                config.queue_capacity, config.partitions
            )));
        }
        let partitions = match store.describe_topic(&config.topic) {
            Ok(c) => c.partitions,
            Err(Error::UnknownTopic(_)) => {
                match store.create_topic(
                    &config.topic,
                    TopicConfig::with_partitions(config.partitions),
                ) {
                    Ok(()) => config.partitions,
                    Err(Error::TopicExists(_)) => store.describe_topic(&config.topic)?.partitions,
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            store,
            topic: config.topic.clone(),
            partitions,
            next_partition: 0,
            counters: Arc::clone(&counters),
            first_error: None,
        };
        let interval = config.flush_interval;
        let thread = std::thread::Builder::new()
            .name("duolog-trace".into())
            .spawn(move || writer.run(rx, interval))
            .map_err(|e| Error::io(Path::new(&config.topic), e))?;
        Ok(Tracer {
            topic: config.topic,
            tx,
            counters,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            close_result: OnceLock::new(),
        })
    }

    /// The trace topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether events are still taken (the tracer is not closed).
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// Queues an event without ever blocking; returns `false` (and counts it as dropped) when
    /// the queue is full or the tracer closed.
    pub fn record(&self, event: TraceEvent) -> bool {
        if !self.is_open() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        // Counted before the send, so the writer never takes back an event not counted yet.
        self.counters.recorded.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Command::Event(Box::new(event))) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.recorded.fetch_sub(1, Ordering::Relaxed);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Records a `Pub` event per message of an append to `topic`/`partition` that took `cost`:
    /// `first_offset` is the offset of the first message, `None` when the append failed.
    /// [`TracedStore`] calls this.
    pub fn produced(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
        first_offset: Option<u64>,
        cost: Duration,
    ) {
        let now = crate::clock::now_ms();
        let cost_us = u64::try_from(cost.as_micros()).unwrap_or(u64::MAX);
        for (i, m) in messages.iter().enumerate() {
            let event = TraceEvent {
                kind: TraceKind::Pub,
                timestamp_ms: now,
                group: String::new(),
                topic: topic.to_owned(),
                partition,
                offset: first_offset.map(|o| o + i as u64),
                tags: bounded(m.tags.as_deref().unwrap_or_default().into()),
                key: traced_key(m.key.as_deref()),
                body_length: m.body.len() as u64,
                cost_us,
                success: first_offset.is_some(),
                retries: 0,
            };
            if !self.record(event) {
                // The queue is full: the rest would be dropped too; count them without trying.
                let rest = (messages.len() - i - 1) as u64;
                self.counters.dropped.fetch_add(rest, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Records a `SubBefore` event: `record` delivered to a consumer of `group`, consumed
    /// `retries` times before. A pull consumer with
    /// [`ConsumerConfig::trace`](super::ConsumerConfig::trace) calls this for every record
    /// `poll` returns (with the record's [`RECONSUME_TIMES`](super::RECONSUME_TIMES), or 0).
    pub fn delivered(&self, group: &str, record: &ConsumerRecord, retries: u32) -> bool {
        self.record(TraceEvent::consumed(
            TraceKind::SubBefore,
            group,
            record,
            retries,
        ))
    }

    /// Records a `SubAfter` event: a consumer of `group` handled `record` (consumed `retries`
    /// times before) in `cost`, successfully or not. For a push consumer, after its handler.
    pub fn consumed(
        &self,
        group: &str,
        record: &ConsumerRecord,
        retries: u32,
        cost: Duration,
        success: bool,
    ) -> bool {
        let mut e = TraceEvent::consumed(TraceKind::SubAfter, group, record, retries);
        e.cost_us = u64::try_from(cost.as_micros()).unwrap_or(u64::MAX);
        e.success = success;
        self.record(e)
    }

    /// Counters so far.
    pub fn stats(&self) -> TraceStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TraceStats {
            recorded: get(&c.recorded),
            dropped: get(&c.dropped),
            written: get(&c.written),
            trace_messages: get(&c.trace_messages),
            lost: get(&c.lost),
            write_errors: get(&c.write_errors),
        }
    }

    /// Writes every event queued before the call and waits for it; returns the first error of
    /// an append of trace messages since the previous flush (those events are counted in
    /// [`TraceStats::lost`]). Blocks while the queue is full. [`Error::Closed`] once closed.
    pub fn flush(&self) -> Result<()> {
        if !self.is_open() {
            return Err(Error::Closed);
        }
        let (reply, done) = mpsc::channel();
        self.tx
            .send(Command::Flush(reply))
            .map_err(|_| Error::Closed)?;
        done.recv().map_err(|_| Error::Closed)?
    }

    /// Stops taking events, writes everything queued and stops the writer thread; returns the
    /// first write error since the last flush. A second call returns the first one's outcome.
    /// Dropping the tracer closes it too.
    pub fn close(&self) -> Result<()> {
        let mut thread = self.thread.lock();
        if let Some(handle) = thread.take() {
            self.closed.store(true, Ordering::Release);
            let (reply, done) = mpsc::channel();
            let result = match self.tx.send(Command::Close(reply)) {
                Ok(()) => done.recv().unwrap_or(Err(Error::Closed)),
                Err(_) => Err(Error::Closed),
            };
            let joined = handle.join();
            let result = match (result, joined) {
                (Ok(()), Err(_)) => Err(Error::InvalidArgument(
                    "the trace writer thread panicked".into(),
                )),
                (r, _) => r,
            };
            let _ = self
                .close_result
                .set(result.as_ref().map(|_| ()).map_err(ToString::to_string));
            return result;
        }
        match self.close_result.get() {
            Some(Err(reason)) => Err(Error::InvalidArgument(format!(
                "an earlier close of this tracer failed: {reason}"
            ))),
            _ => Ok(()),
        }
    }

    /// The events of message id (`<topic>-<partition>-<offset>`) or key `id_or_key` in the
    /// default trace topic, oldest first, from at most 1,024 trace messages (the newest).
    /// Trace messages that do not decode are skipped and counted; an empty `id_or_key` is
    /// [`Error::InvalidArgument`].
    pub fn query(store: &dyn LogStore, id_or_key: &str) -> Result<TraceQuery> {
        Tracer::query_topic(store, TRACE_TOPIC, id_or_key, 1024)
    }

    /// [`query`](Self::query) in trace topic `topic`, from at most `max_messages` trace
    /// messages (the newest).
    pub fn query_topic(
        store: &dyn LogStore,
        topic: &str,
        id_or_key: &str,
        max_messages: usize,
    ) -> Result<TraceQuery> {
        // Every keyless event has the empty key: that is no query.
        if id_or_key.is_empty() {
            return Err(Error::InvalidArgument(
                "a trace query needs a message id or a non-empty key".into(),
            ));
        }
        let mut found = store.find_by_key(topic, id_or_key, (0, i64::MAX / 2), max_messages)?;
        // Newest first from the index; events are reported oldest first.
        found.reverse();
        let mut out = TraceQuery::default();
        for m in found {
            match decode_events(m.record.body()) {
                Ok(events) => out.events.extend(events.into_iter().filter(|e| {
                    e.key == id_or_key || e.message_id().as_deref() == Some(id_or_key)
                })),
                Err(_) => out.malformed += 1,
            }
        }
        out.events.sort_by_key(|e| e.timestamp_ms);
        Ok(out)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The writer thread's state.
struct Writer {
    store: Arc<dyn LogStore>,
    topic: String,
    partitions: u32,
    next_partition: u32,
    counters: Arc<Counters>,
    first_error: Option<Error>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Command>, interval: Duration) {
        let mut pending: Vec<TraceEvent> = Vec::new();
        // When the oldest pending event must be written (None: forever, or nothing pending).
        let mut due: Option<Instant> = None;
        loop {
            let command = if pending.is_empty() {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                match due {
                    Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                }
            };
            match command {
                Ok(Command::Event(e)) => {
                    if pending.is_empty() {
                        due = crate::clock::deadline(interval);
                    }
                    pending.push(*e);
                    if pending.len() >= MAX_EVENTS_PER_MESSAGE {
                        // Take what else is queued already, so a busy store writes full trace
                        // messages in one append.
                        while pending.len() < 64 * MAX_EVENTS_PER_MESSAGE {
                            match rx.try_recv() {
                                Ok(Command::Event(e)) => pending.push(*e),
                                Ok(other) => {
                                    self.write(&mut pending);
                                    if self.control(other) {
                                        self.refuse_late(&rx);
                                        return;
                                    }
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.write(&mut pending);
                    }
                }
                Ok(other) => {
                    self.write(&mut pending);
                    if self.control(other) {
                        self.refuse_late(&rx);
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.write(&mut pending),
                Err(RecvTimeoutError::Disconnected) => {
                    self.write(&mut pending);
                    return;
                }
            }
        }
    }

    /// Events that raced with `close` (queued after it): counted as dropped, not recorded.
    fn refuse_late(&self, rx: &Receiver<Command>) {
        while let Ok(command) = rx.try_recv() {
            if let Command::Event(_) = command {
                self.counters.recorded.fetch_sub(1, Ordering::Relaxed);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Answers a flush or close (everything before it is written); `true` to stop.
    fn control(&mut self, command: Command) -> bool {
        let result = match self.first_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        match command {
            Command::Flush(reply) => {
                let _ = reply.send(result);
                false
            }
            Command::Close(reply) => {
                let _ = reply.send(result);
                true
            }
            Command::Event(_) => false,
        }
    }

    fn write(&mut self, pending: &mut Vec<TraceEvent>) {
        if pending.is_empty() {
            return;
        }
        let (messages, ranges): (Vec<Message>, Vec<_>) = batches(pending).into_iter().unzip();
        let partition = self.next_partition % self.partitions;
        self.next_partition = self.next_partition.wrapping_add(1);
        match self.store.append(&self.topic, partition, &messages) {
            Ok(_) => self.wrote(pending.len(), messages.len()),
            // A trace message over the store's record limit (a small `max.message.bytes` or
            // commit-log file) fails the whole batch: write the messages one by one instead.
            Err(Error::MessageTooLarge { .. }) if pending.len() > 1 => {
                for (m, range) in messages.into_iter().zip(ranges) {
                    self.write_one(partition, m, &pending[range]);
                }
            }
            Err(e) => self.failed(pending.len(), e),
        }
        pending.clear();
    }

    /// Appends one trace message; one still too large is written event by event.
    fn write_one(&mut self, partition: u32, message: Message, events: &[TraceEvent]) {
        match self
            .store
            .append(&self.topic, partition, std::slice::from_ref(&message))
        {
            Ok(_) => self.wrote(events.len(), 1),
            Err(Error::MessageTooLarge { .. }) if events.len() > 1 => {
                for e in events {
                    let one = std::slice::from_ref(e);
                    for (m, _) in batches(one) {
                        self.write_one(partition, m, one);
                    }
                }
            }
            Err(e) => self.failed(events.len(), e),
        }
    }

    fn wrote(&self, events: usize, messages: usize) {
        let c = &self.counters;
        c.written.fetch_add(events as u64, Ordering::Relaxed);
        c.trace_messages
            .fetch_add(messages as u64, Ordering::Relaxed);
    }

    fn failed(&mut self, events: usize, error: Error) {
        let c = &self.counters;
        c.lost.fetch_add(events as u64, Ordering::Relaxed);
        c.write_errors.fetch_add(1, Ordering::Relaxed);
        self.first_error.get_or_insert(error);
    }
}

/// A [`LogStore`] that records a [`TraceKind::Pub`] event for every message appended through
/// it and does everything else by handing the call to the store it wraps. Appends to the trace
/// topic itself and to internal topics named `__…` (committed offsets, the layers' own) are not
/// traced. Closing it closes the tracer (writing what is queued), then the store.
///
/// See [`Tracer`] for an example.
pub struct TracedStore {
    inner: Arc<dyn LogStore>,
    tracer: Arc<Tracer>,
}

impl std::fmt::Debug for TracedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedStore")
            .field("inner", &self.inner)
            .field("tracer", &self.tracer)
            .finish()
    }
}

impl TracedStore {
    /// Wraps `inner`, recording appends on `tracer` (which should write to the same store).
    pub fn new(inner: Arc<dyn LogStore>, tracer: Arc<Tracer>) -> TracedStore {
        TracedStore { inner, tracer }
    }

    /// The tracer.
    pub fn tracer(&self) -> &Arc<Tracer> {
        &self.tracer
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn LogStore> {
        &self.inner
    }

    fn traced(&self, topic: &str) -> bool {
        self.tracer.is_open() && !topic.starts_with("__") && topic != self.tracer.topic()
    }

    fn append_traced<R>(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
        append: impl FnOnce() -> Result<R>,
        first: impl FnOnce(&R) -> u64,
    ) -> Result<R> {
        if !self.traced(topic) {
            return append();
        }
        let start = Instant::now();
        let result = append();
        let cost = start.elapsed();
        // An empty batch is refused by the store and traces nothing.
        if !messages.is_empty() {
            let offset = result.as_ref().ok().map(first);
            self.tracer
                .produced(topic, partition, messages, offset, cost);
        }
        result
    }
}

impl LogStore for TracedStore {
    fn engine(&self) -> EngineKind {
        self.inner.engine()
    }
    fn dir(&self) -> &Path {
        self.inner.dir()
    }
    fn create_topic(&self, name: &str, config: TopicConfig) -> Result<()> {
        self.inner.create_topic(name, config)
    }
    fn describe_topic(&self, name: &str) -> Result<TopicConfig> {
        self.inner.describe_topic(name)
    }
    fn topic_id(&self, name: &str) -> Result<u64> {
        self.inner.topic_id(name)
    }
    fn alter_topic(&self, name: &str, config: TopicConfig) -> Result<()> {
        self.inner.alter_topic(name, config)
    }
    fn add_partitions(&self, name: &str, count: u32) -> Result<u32> {
        self.inner.add_partitions(name, count)
    }
    fn delete_topic(&self, name: &str) -> Result<()> {
        self.inner.delete_topic(name)
    }
    fn list_topics(&self, include_internal: bool) -> Vec<String> {
        self.inner.list_topics(include_internal)
    }
    fn append(&self, topic: &str, partition: u32, messages: &[Message]) -> Result<AppendResult> {
        self.append_traced(
            topic,
            partition,
            messages,
            || self.inner.append(topic, partition, messages),
            |r| r.base_offset,
        )
    }
    fn append_oneway(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> Result<AppendResult> {
        self.append_traced(
            topic,
            partition,
            messages,
            || self.inner.append_oneway(topic, partition, messages),
            |r| r.base_offset,
        )
    }
    fn append_async(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> Result<Completion> {
        self.append_traced(
            topic,
            partition,
            messages,
            || self.inner.append_async(topic, partition, messages),
            |c| c.offsets().base_offset,
        )
    }
    fn allocate_producer_id(&self) -> Result<i64> {
        self.inner.allocate_producer_id()
    }
    fn append_idempotent(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> Result<AppendResult> {
        self.append_traced(
            topic,
            partition,
            messages,
            || {
                self.inner
                    .append_idempotent(topic, partition, producer, base_sequence, messages)
            },
            |r| r.base_offset,
        )
    }
    fn producer_state(&self, topic: &str, partition: u32) -> Result<Vec<ProducerEntry>> {
        self.inner.producer_state(topic, partition)
    }
    fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> Result<AppendResult> {
        self.append_traced(
            topic,
            partition,
            messages,
            || {
                self.inner
                    .append_transactional(topic, partition, producer, base_sequence, messages)
            },
            |r| r.base_offset,
        )
    }
    fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        marker: TxnMarker,
        coordinator_epoch: i32,
    ) -> Result<Option<u64>> {
        self.inner
            .write_marker(topic, partition, producer, marker, coordinator_epoch)
    }
    fn fetch(&self, topic: &str, partition: u32, offset: u64, limits: ReadLimits) -> Result<Fetch> {
        self.inner.fetch(topic, partition, offset, limits)
    }
    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Vec<Record>> {
        self.inner.read(topic, partition, offset, limits)
    }
    fn read_tagged(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        tags: &[String],
    ) -> Result<TaggedRead> {
        self.inner
            .read_tagged(topic, partition, offset, limits, tags)
    }
    fn read_with(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        visit: &mut Visitor<'_>,
    ) -> Result<ReadProgress> {
        self.inner
            .read_with(topic, partition, offset, limits, visit)
    }
    fn bounds(&self, topic: &str, partition: u32) -> Result<PartitionBounds> {
        self.inner.bounds(topic, partition)
    }
    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }
    fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<bool> {
        self.inner.wait_for(topic, partition, offset, timeout)
    }
    fn wait_for_any(&self, positions: &[(&str, u32, u64)], timeout: Duration) -> Result<bool> {
        self.inner.wait_for_any(positions, timeout)
    }
    fn wait_for_any_with(
        &self,
        positions: &[(&str, u32, u64)],
        timeout: Duration,
        wakeup: &Wakeup,
    ) -> Result<bool> {
        self.inner.wait_for_any_with(positions, timeout, wakeup)
    }
    fn delete_before(&self, topic: &str, partition: u32, offset: u64) -> Result<u64> {
        self.inner.delete_before(topic, partition, offset)
    }
    fn find_by_key(
        &self,
        topic: &str,
        key: &str,
        time_range: (i64, i64),
        limit: usize,
    ) -> Result<Vec<KeyMatch>> {
        self.inner.find_by_key(topic, key, time_range, limit)
    }
    fn offset_for_time(&self, topic: &str, partition: u32, timestamp: i64) -> Result<Option<u64>> {
        self.inner.offset_for_time(topic, partition, timestamp)
    }
    fn reindex(&self) -> Result<u64> {
        self.inner.reindex()
    }
    fn enforce_retention(&self) -> Result<usize> {
        self.inner.enforce_retention()
    }
    fn compact(&self, topic: Option<&str>) -> Result<CompactionReport> {
        self.inner.compact(topic)
    }
    fn partition_bytes(&self, topic: &str, partition: u32) -> Result<u64> {
        self.inner.partition_bytes(topic, partition)
    }
    fn disk_usage(&self) -> Result<DiskUsage> {
        self.inner.disk_usage()
    }
    fn verify(&self) -> Result<VerifyReport> {
        self.inner.verify()
    }
    /// Closes the tracer first (its queued events are written while the store is open), then
    /// the store; the store's error wins, else the tracer's.
    fn close(&self) -> Result<()> {
        let traced = self.tracer.close();
        self.inner.close()?;
        traced
    }
    /// A crash: the tracer's queued events are lost with the store (it is not flushed).
    fn abandon(&self) {
        self.inner.abandon();
        let _ = self.tracer.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(kind: TraceKind, key: &str, offset: Option<u64>) -> TraceEvent {
        TraceEvent {
            kind,
            timestamp_ms: 1_700_000_000_123,
            group: if kind == TraceKind::Pub {
                String::new()
            } else {
                "g\\1".into()
            },
            topic: "or-ders".into(),
            partition: 3,
            offset,
            tags: "TagA".into(),
            key: key.into(),
            body_length: if kind == TraceKind::Pub { 100 } else { 0 },
            cost_us: if kind == TraceKind::SubBefore { 0 } else { 77 },
            success: offset.is_some() || kind != TraceKind::Pub,
            retries: if kind == TraceKind::Pub { 0 } else { 2 },
        }
    }

    #[test]
    fn every_kind_round_trips_with_separators_in_its_text() {
        let events = vec![
            event(TraceKind::Pub, "k", Some(5)),
            event(TraceKind::Pub, "a\u{1}b\u{2}c\\d e", None),
            event(TraceKind::SubBefore, "", Some(0)),
            event(TraceKind::SubAfter, "\\2", Some(u64::MAX)),
        ];
        let body = encode_events(&events);
        assert_eq!(body.matches(RECORD).count(), events.len());
        assert_eq!(decode_events(body.as_bytes()).unwrap(), events);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let good = encode_events(&[event(TraceKind::Pub, "k", Some(1))]);
        for bad in [
            &good[..good.len() - 1],
            "Nope\u{1}1\u{2}",
            "Pub\u{1}1\u{2}",
            &good.replace("true", "yes"),
            &good.replace("100", "-1"),
            "SubBefore\u{1}x\u{1}g\u{1}t\u{1}0\u{1}1\u{1}\u{1}\u{1}0\u{2}",
            "Pub\u{1}1\u{1}\u{1}t\u{1}0\u{1}\u{1}\u{1}\u{1}1\u{1}1\u{1}true\u{2}",
            "SubBefore\u{1}1\u{1}g\\x\u{1}t\u{1}0\u{1}1\u{1}\u{1}\u{1}0\u{2}",
        ] {
            assert!(decode_events(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(decode_events(&[0xff, 2]).is_err());
        assert_eq!(decode_events(b"").unwrap(), vec![]);
    }

    #[test]
    fn message_ids_parse_from_the_right() {
        assert_eq!(parse_message_id("a-b-0-1"), Some(("a-b", 0, 1)));
        assert_eq!(parse_message_id("%RETRY%g-0-7"), Some(("%RETRY%g", 0, 7)));
        for bad in [
            "",
            "t-1",
            "-0-1",
            "t--1",
            "t-0-",
            "t-+1-2",
            "t-0-99999999999999999999",
        ] {
            assert_eq!(parse_message_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn trace_messages_hold_at_most_twenty_events_and_every_id_and_key() {
        let events: Vec<TraceEvent> = (0..45)
            .map(|i| event(TraceKind::Pub, &format!("k{}", i % 7), Some(i)))
            .collect();
        let messages = trace_messages(&events);
        assert_eq!(messages.len(), 3);
        let mut decoded = Vec::new();
        for m in &messages {
            let evs = decode_events(&m.body).unwrap();
            assert!(evs.len() <= MAX_EVENTS_PER_MESSAGE);
            let keys = &m.properties.iter().find(|(k, _)| k == "KEYS").unwrap().1;
            let words: Vec<&str> = keys.split(' ').collect();
            for e in &evs {
                assert!(words.contains(&e.message_id().unwrap().as_str()));
                assert!(words.contains(&e.key.as_str()));
            }
            assert!(m.key.is_none());
            decoded.extend(evs);
        }
        assert_eq!(decoded, events);
    }

    #[test]
    fn batches_cover_the_events_in_order() {
        let events: Vec<TraceEvent> = (0..45)
            .map(|i| {
                event(
                    TraceKind::SubAfter,
                    if i % 9 == 0 { "a b" } else { "k" },
                    Some(i),
                )
            })
            .collect();
        let mut next = 0;
        for (m, range) in batches(&events) {
            assert_eq!(range.start, next);
            assert_eq!(decode_events(&m.body).unwrap(), events[range.clone()]);
            next = range.end;
        }
        assert_eq!(next, events.len());
    }

    #[test]
    fn a_key_that_is_no_keys_word_is_the_trace_messages_own_key() {
        let long = "x".repeat(MAX_KEYS_WORD + 1);
        let events = vec![
            event(TraceKind::Pub, "has space", Some(0)),
            event(TraceKind::Pub, "has space", Some(1)),
            event(TraceKind::Pub, &long, Some(2)),
            event(TraceKind::Pub, "plain", Some(3)),
        ];
        let messages = trace_messages(&events);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].key.as_deref(), Some(&b"has space"[..]));
        assert_eq!(messages[1].key.as_deref(), Some(long.as_bytes()));
        let keys = &messages[1].properties[0].1;
        assert_eq!(keys, "or-ders-3-2 or-ders-3-3 plain");
    }

    #[test]
    fn a_body_stops_growing_at_the_byte_limit() {
        let big = "k".repeat(MAX_KEYS_WORD);
        let events: Vec<TraceEvent> = (0..20)
            .map(|i| {
                let mut e = event(TraceKind::Pub, &big, Some(i));
                e.tags = "t".repeat(30_000);
                e
            })
            .collect();
        let messages = trace_messages(&events);
        assert!(messages.len() >= 5);
        for m in &messages {
            assert!(m.body.len() <= MAX_TRACE_BODY_BYTES);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the bytes, decoding returns a value or an error, never a panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_events(&bytes);
        }

        /// Mutations of a valid body (the shapes a damaged record takes) never panic either,
        /// and an unchanged body decodes to its events.
        #[test]
        fn mutated_bodies_never_panic(
            key in "[ -~\u{1}\u{2}\\\\]{0,12}",
            offset in proptest::option::of(any::<u64>()),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let events = vec![
                event(TraceKind::Pub, &key, offset),
                event(TraceKind::SubAfter, &key, Some(offset.unwrap_or(0))),
            ];
            let body = encode_events(&events).into_bytes();
            prop_assert_eq!(decode_events(&body).unwrap(), events);
            let _ = decode_events(&body[..cut.index(body.len() + 1)]);
            let mut flipped = body.clone();
            let i = flip.index(flipped.len());
            flipped[i] = byte;
            let _ = decode_events(&flipped);
        }
    }
}
