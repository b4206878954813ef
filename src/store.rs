//! The [`LogStore`] trait and the types it speaks.
//!
//! This module owns the engine-neutral vocabulary: what a producer hands in ([`Message`]), what a
//! reader gets back ([`Record`]), topic configuration and partition bounds. It knows nothing of
//! files; engines implement the trait in `commitlog/` (and later `segmented/`).

use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

use crate::durability::{Completion, Wakeup};
use crate::error::Result;

/// Which storage design a store uses. Recorded in the store directory, so reopening needs no
/// engine argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EngineKind {
    /// RocketMQ-style: one shared CommitLog of fixed-size mapped files, per-partition
    /// ConsumeQueues of 20-byte entries pointing into it.
    #[default]
    CommitLog,
    /// Kafka-style: a directory of segments per partition (`.log` of RecordBatch v2, sparse
    /// `.index` and `.timeindex`).
    Segmented,
}

impl EngineKind {
    /// Short lowercase name, as used by the CLI (`commitlog`).
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::CommitLog => "commitlog",
            EngineKind::Segmented => "segmented",
        }
    }

    /// Parses [`EngineKind::name`] back.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "commitlog" => Some(EngineKind::CommitLog),
            "segmented" => Some(EngineKind::Segmented),
            _ => None,
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            EngineKind::CommitLog => 1,
            EngineKind::Segmented => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(EngineKind::CommitLog),
            2 => Some(EngineKind::Segmented),
            _ => None,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a producer appends: a body plus optional key, tags, properties and timestamp.
///
/// ```
/// use duolog::Message;
/// let m = Message::new("order created")
///     .with_key("order-1001")
///     .with_tags("TagA")
///     .with_property("color", "red")
///     .with_timestamp(1_700_000_000_000);
/// assert_eq!(m.body.as_ref(), b"order created");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The payload (Kafka: value).
    pub body: Bytes,
    /// Optional key (Kafka: record key). Indexed for lookups by key.
    pub key: Option<Bytes>,
    /// Optional tags (RocketMQ: TAGS), used by tag filters.
    pub tags: Option<String>,
    /// User properties (Kafka: headers), in the caller's order.
    pub properties: Vec<(String, String)>,
    /// Creation time in milliseconds since the Unix epoch; `None` means "now" at append.
    pub timestamp: Option<i64>,
    /// A delete marker for its key (Kafka: a record with a null value): no body, distinct from
    /// an empty one. Compaction keeps it for the topic's `delete.retention.ms`, then drops it
    /// with every older record of the key. Needs a key and an empty body.
    pub tombstone: bool,
}

impl Message {
    /// A message with this body and nothing else.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }

    /// A tombstone: a delete marker for `key` (Kafka: the key with a null value).
    ///
    /// ```
    /// use duolog::{LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("users", TopicConfig::default())?;
    /// store.append("users", 0, &[Message::new("").with_key("u1"), Message::tombstone("u1")])?;
    /// let r = store.read("users", 0, 0, ReadLimits::default())?;
    /// assert_eq!(r[0].value(), Some(&b""[..]));
    /// assert!(r[1].is_tombstone() && r[1].value().is_none());
    /// # Ok(()) }
    /// ```
    pub fn tombstone(key: impl Into<Bytes>) -> Self {
        Message {
            key: Some(key.into()),
            tombstone: true,
            ..Message::default()
        }
    }

    /// Sets the key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the tags.
    #[must_use]
    pub fn with_tags(mut self, tags: impl Into<String>) -> Self {
        self.tags = Some(tags.into());
        self
    }

    /// Adds a property.
    #[must_use]
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// Sets the creation timestamp (milliseconds since the Unix epoch).
    #[must_use]
    pub fn with_timestamp(mut self, millis: i64) -> Self {
        self.timestamp = Some(millis);
        self
    }
}

/// How a record's properties are laid out in the bytes it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PropertyEncoding {
    /// RocketMQ's `name\u{1}value\u{2}` pairs.
    RocketMq,
    /// Kafka record headers (varint-length key and value).
    KafkaHeaders,
}

/// Property names the engines use for fields of their own; hidden from [`Properties::iter`],
/// and refused in a message's properties (so no user can forge them).
pub(crate) const RESERVED_PROPERTIES: &[&str] =
    &["TAGS", "__KEY", "__KEYHEX", "__CRC32#", TOMBSTONE_PROPERTY];

/// The CommitLog engine's producer fields, reserved (refused and hidden) on that engine only:
/// the segmented engine keeps its producer fields in the batch header, so these names are
/// ordinary user properties there, as they were before idempotent producers existed. On the
/// CommitLog engine recovery reads them only from records whose sys flag carries
/// `SYSFLAG_PRODUCER_BATCH`, which a plain record never does (so plain records written before
/// the names were reserved keep them harmlessly).
pub(crate) const COMMITLOG_PRODUCER_PROPERTIES: &[&str] = &[
    PRODUCER_ID_PROPERTY,
    PRODUCER_EPOCH_PROPERTY,
    PRODUCER_SEQUENCE_PROPERTY,
    PRODUCER_LAST_PROPERTY,
];

/// Whether `name` is an engine field on an engine that stores properties as `encoding`.
fn is_reserved(name: &str, encoding: PropertyEncoding) -> bool {
    RESERVED_PROPERTIES.contains(&name)
        || (encoding == PropertyEncoding::RocketMq && COMMITLOG_PRODUCER_PROPERTIES.contains(&name))
}

/// CommitLog engine: the producer id of a record appended by
/// [`append_idempotent`](LogStore::append_idempotent) (RocketMQ's record has no producer
/// fields; Kafka's batch header carries them on the segmented engine).
pub(crate) const PRODUCER_ID_PROPERTY: &str = "__PID";
/// CommitLog engine: the producer epoch of such a record.
pub(crate) const PRODUCER_EPOCH_PROPERTY: &str = "__EPOCH";
/// CommitLog engine: the record's own sequence number.
pub(crate) const PRODUCER_SEQUENCE_PROPERTY: &str = "__SEQ";
/// CommitLog engine: marks the last record of an idempotent batch, so recovery can tell a
/// batch cut short by a power loss (and removes it whole).
pub(crate) const PRODUCER_LAST_PROPERTY: &str = "__LAST";

/// The property that marks a tombstone on the CommitLog engine (RocketMQ's format has no null
/// body).
pub(crate) const TOMBSTONE_PROPERTY: &str = "__TOMBSTONE";

/// Either property iterator, without boxing.
enum PropIter<A, B> {
    RocketMq(A),
    Kafka(B),
}

impl<'a, A: Iterator<Item = (&'a str, &'a str)>, B: Iterator<Item = (&'a str, &'a str)>> Iterator
    for PropIter<A, B>
{
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            PropIter::RocketMq(a) => a.next(),
            PropIter::Kafka(b) => b.next(),
        }
    }
}

/// A record's user properties, parsed lazily from the bytes they were stored as (no allocation
/// per property).
///
/// They hold the one buffer their [`Record`] shares with every other field of it (the record's
/// stored bytes, or its batch's), and the span of it the properties occupy: a record costs one
/// reference to its read's buffer, not one per field (issue 16: four reference-counted handles
/// per record were a fifth of a sequential read's time).
#[derive(Clone)]
pub struct Properties {
    buf: Bytes,
    span: Span,
    encoding: PropertyEncoding,
}

/// A range of a record's shared buffer, in bytes. `u32` halves: a record's buffer is one
/// stored record or batch, whose size its format bounds by an `i32`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// `range` of a buffer of at most `u32::MAX` bytes (the engines' record and batch sizes).
    #[inline(always)]
    pub(crate) fn of(range: std::ops::Range<usize>) -> Span {
        debug_assert!(range.end <= u32::MAX as usize && range.start <= range.end);
        Span {
            start: range.start as u32,
            end: range.end as u32,
        }
    }

    #[inline(always)]
    fn get(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.encoding == other.encoding && self.raw() == other.raw()
    }
}

impl Eq for Properties {}

/// A record's user properties as a borrowed view of their stored bytes: what
/// [`RecordRef::properties`] gives a [`read_with`](LogStore::read_with) visitor. Same accessors
/// as [`Properties`], nothing allocated.
#[derive(Clone, Copy)]
pub struct PropertiesRef<'a> {
    raw: &'a [u8],
    encoding: PropertyEncoding,
}

impl<'a> PropertiesRef<'a> {
    pub(crate) fn new(raw: &'a [u8], encoding: PropertyEncoding) -> Self {
        PropertiesRef { raw, encoding }
    }

    /// Every stored pair, reserved engine fields included.
    pub(crate) fn iter_all(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let raw = self.raw;
        match self.encoding {
            PropertyEncoding::RocketMq => {
                PropIter::RocketMq(crate::commitlog::record::iter_properties(raw))
            }
            PropertyEncoding::KafkaHeaders => PropIter::Kafka(
                crate::segmented::batch::iter_headers(raw).filter_map(|(k, v)| {
                    Some((
                        std::str::from_utf8(k).ok()?,
                        std::str::from_utf8(v.unwrap_or_default()).ok()?,
                    ))
                }),
            ),
        }
    }

    /// User properties in stored order (engine fields such as `TAGS` and the key are left out).
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let encoding = self.encoding;
        self.iter_all()
            .filter(move |(k, _)| !is_reserved(k, encoding))
    }

    /// The value of property `name`, if present.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter_all().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// Number of user properties.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// `true` when there are no user properties.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Collects the user properties into owned pairs.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

impl PartialEq for PropertiesRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.encoding == other.encoding && self.raw == other.raw
    }
}

impl Eq for PropertiesRef<'_> {}

impl fmt::Debug for PropertiesRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Properties {
    /// The same properties as a borrowed view.
    pub fn view(&self) -> PropertiesRef<'_> {
        PropertiesRef::new(self.raw(), self.encoding)
    }

    /// Properties occupying `span` of `buf` (the record's shared buffer).
    #[inline(always)]
    pub(crate) fn new(buf: Bytes, span: Span, encoding: PropertyEncoding) -> Self {
        Properties {
            buf,
            span,
            encoding,
        }
    }

    /// The properties' stored bytes.
    #[inline(always)]
    fn raw(&self) -> &[u8] {
        self.span.get(&self.buf)
    }

    /// User properties in stored order (engine fields such as `TAGS` and the key are left out:
    /// they have their own accessors on [`Record`]).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.view().iter()
    }

    /// The value of property `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.view().get(name)
    }

    /// Number of user properties.
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// `true` when there are no user properties.
    pub fn is_empty(&self) -> bool {
        self.view().is_empty()
    }

    /// Collects the user properties into owned pairs.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.view().to_vec()
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// What a reader gets back: the message as appended plus where and when it was stored.
///
/// Byte fields are slices of a shared buffer — on the CommitLog engine the mapped log file itself
/// (zero-copy), or one buffer per read for records that lie sparse in the shared log (a quiet
/// partition in a busy store); on the segmented engine the active segment's mapping or one
/// buffer per chunk of a sealed segment read — so a record costs no allocation of its own, and
/// one reference to that buffer (its fields are spans of it). A record keeps that buffer alive:
/// one held after retention deleted its file keeps the file's mapping (not its directory entry)
/// until dropped.
#[derive(Clone)]
pub struct Record {
    pub(crate) offset: u64,
    pub(crate) timestamp: i64,
    pub(crate) store_timestamp: i64,
    pub(crate) flags: u32,
    pub(crate) size: u32,
    pub(crate) tombstone: bool,
    pub(crate) key: Key,
    pub(crate) body: Span,
    pub(crate) tags: Option<Span>,
    /// The user properties, which also hold the buffer every span above is a range of.
    pub(crate) properties: Properties,
}

/// Where a record's key is: none, a span of its buffer, or (a CommitLog key stored hex-encoded)
/// decoded bytes of its own, boxed so the common cases keep the record small.
#[derive(Clone, Debug)]
pub(crate) enum Key {
    None,
    In(Span),
    Owned(Box<Bytes>),
}

impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
            && self.timestamp == other.timestamp
            && self.store_timestamp == other.store_timestamp
            && self.flags == other.flags
            && self.size == other.size
            && self.tombstone == other.tombstone
            && self.key() == other.key()
            && self.body() == other.body()
            && self.tags_raw() == other.tags_raw()
            && self.properties == other.properties
    }
}

impl Eq for Record {}

impl Record {
    /// The record's offset in its partition.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The message's creation timestamp (ms since epoch).
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
    /// When the store appended it (ms since epoch); non-decreasing within a partition.
    pub fn store_timestamp(&self) -> i64 {
        self.store_timestamp
    }
    /// Engine flags (RocketMQ sys flag); 0 for an ordinary message.
    pub fn flags(&self) -> u32 {
        self.flags
    }
    /// The key, if the message had one.
    pub fn key(&self) -> Option<&[u8]> {
        match &self.key {
            Key::None => None,
            Key::In(s) => Some(s.get(&self.properties.buf)),
            Key::Owned(b) => Some(b),
        }
    }
    /// The body.
    #[inline]
    pub fn body(&self) -> &[u8] {
        self.body.get(&self.properties.buf)
    }
    /// Whether the record is a tombstone (a delete marker for its key: Kafka's null value).
    pub fn is_tombstone(&self) -> bool {
        self.tombstone
    }
    /// The value in Kafka's terms: the body, or `None` for a tombstone.
    pub fn value(&self) -> Option<&[u8]> {
        (!self.tombstone).then(|| self.body())
    }
    /// The body as a cheaply clonable buffer.
    pub fn body_bytes(&self) -> Bytes {
        self.properties
            .buf
            .slice(self.body.start as usize..self.body.end as usize)
    }
    /// The tags' stored bytes, if any.
    fn tags_raw(&self) -> Option<&[u8]> {
        self.tags.map(|s| s.get(&self.properties.buf))
    }
    /// The tags, if the message had any.
    pub fn tags(&self) -> Option<&str> {
        self.tags_raw().and_then(|t| std::str::from_utf8(t).ok())
    }
    /// The user properties.
    pub fn properties(&self) -> &Properties {
        &self.properties
    }
    /// Size of the record as stored, in bytes (what read limits count).
    pub fn stored_size(&self) -> u32 {
        self.size
    }
    /// The record as a borrowed view: what a [`read_with`](LogStore::read_with) visitor sees.
    pub fn view(&self) -> RecordRef<'_> {
        RecordRef {
            offset: self.offset,
            timestamp: self.timestamp,
            store_timestamp: self.store_timestamp,
            flags: self.flags,
            size: self.size,
            tombstone: self.tombstone,
            key: self.key(),
            body: self.body(),
            tags: self.tags_raw(),
            properties: self.properties.view(),
        }
    }

    /// Turns the record back into the message that was appended.
    pub fn to_message(&self) -> Message {
        Message {
            body: self.body_bytes(),
            key: match &self.key {
                Key::None => None,
                Key::In(s) => Some(self.properties.buf.slice(s.start as usize..s.end as usize)),
                Key::Owned(b) => Some(Bytes::clone(b)),
            },
            tags: self.tags().map(str::to_owned),
            properties: self.properties.to_vec(),
            timestamp: Some(self.timestamp),
            tombstone: self.tombstone,
        }
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("store_timestamp", &self.store_timestamp)
            .field("key", &self.key().map(Bytes::copy_from_slice))
            .field("tags", &self.tags())
            .field("body_len", &self.body().len())
            .field("tombstone", &self.tombstone)
            .field("properties", &self.properties)
            .finish()
    }
}

/// One record as a [`read_with`](LogStore::read_with) visitor sees it: the accessors of
/// [`Record`], over bytes borrowed from the engine for the length of the visit (the mapped log
/// or a chunk the read holds), so the read builds no [`Record`], takes no reference count and
/// allocates nothing per record. Copy out what must outlive the visit
/// ([`to_message`](RecordRef::to_message), or the slices themselves).
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    pub(crate) offset: u64,
    pub(crate) timestamp: i64,
    pub(crate) store_timestamp: i64,
    pub(crate) flags: u32,
    pub(crate) size: u32,
    pub(crate) tombstone: bool,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) body: &'a [u8],
    pub(crate) tags: Option<&'a [u8]>,
    pub(crate) properties: PropertiesRef<'a>,
}

impl<'a> RecordRef<'a> {
    /// The record's offset in its partition.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// The message's creation timestamp (ms since epoch).
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
    /// When the store appended it (ms since epoch); non-decreasing within a partition.
    pub fn store_timestamp(&self) -> i64 {
        self.store_timestamp
    }
    /// Engine flags (RocketMQ sys flag); 0 for an ordinary message.
    pub fn flags(&self) -> u32 {
        self.flags
    }
    /// The key, if the message had one.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }
    /// The body.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
    /// Whether the record is a tombstone (a delete marker for its key: Kafka's null value).
    pub fn is_tombstone(&self) -> bool {
        self.tombstone
    }
    /// The value in Kafka's terms: the body, or `None` for a tombstone.
    pub fn value(&self) -> Option<&'a [u8]> {
        (!self.tombstone).then_some(self.body)
    }
    /// The tags, if the message had any.
    pub fn tags(&self) -> Option<&'a str> {
        self.tags.and_then(|t| std::str::from_utf8(t).ok())
    }
    /// The user properties.
    pub fn properties(&self) -> PropertiesRef<'a> {
        self.properties
    }
    /// Size of the record as stored, in bytes (what read limits count).
    pub fn stored_size(&self) -> u32 {
        self.size
    }
    /// Copies the record back into the message that was appended.
    pub fn to_message(&self) -> Message {
        Message {
            body: Bytes::copy_from_slice(self.body),
            key: self.key.map(Bytes::copy_from_slice),
            tags: self.tags().map(str::to_owned),
            properties: self.properties.to_vec(),
            timestamp: Some(self.timestamp),
            tombstone: self.tombstone,
        }
    }
}

impl PartialEq for RecordRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
            && self.timestamp == other.timestamp
            && self.store_timestamp == other.store_timestamp
            && self.flags == other.flags
            && self.size == other.size
            && self.tombstone == other.tombstone
            && self.key == other.key
            && self.body == other.body
            && self.tags == other.tags
            && self.properties == other.properties
    }
}

impl Eq for RecordRef<'_> {}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordRef")
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("store_timestamp", &self.store_timestamp)
            .field("key", &self.key.map(Bytes::copy_from_slice))
            .field("tags", &self.tags())
            .field("body_len", &self.body.len())
            .field("tombstone", &self.tombstone)
            .field("properties", &self.properties)
            .finish()
    }
}

/// What [`LogStore::read_with`] did: how many records it showed the visitor and where to read
/// next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadProgress {
    /// Records the visitor saw (the one that stopped the read included).
    pub visited: usize,
    /// The offset to read from next, as [`Fetch::next_offset`]: past every offset the call
    /// examined (markers and skipped aborted records included). When the visitor stopped the
    /// read, the offset after the record it stopped at.
    pub next_offset: u64,
}

/// The visitor of [`LogStore::read_with`]: called once per record in offset order;
/// [`ControlFlow::Break`] stops the read after that record.
pub type Visitor<'v> = dyn FnMut(&RecordRef<'_>) -> ControlFlow<()> + 'v;

/// [`LogStore::read_with`] over an owned [`Fetch`]: what the trait's default does.
pub(crate) fn visit_fetched(fetch: Fetch, visit: &mut Visitor<'_>) -> ReadProgress {
    let mut progress = ReadProgress {
        visited: 0,
        next_offset: fetch.next_offset,
    };
    for r in &fetch.records {
        progress.visited += 1;
        if visit(&r.view()).is_break() {
            progress.next_offset = r.offset() + 1;
            break;
        }
    }
    progress
}

/// What happens to a topic's old records (Kafka's `cleanup.policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CleanupPolicy {
    /// Retention by time and size deletes old records (`delete`). The default.
    #[default]
    Delete,
    /// Compaction keeps at least the latest record of every key, whatever its age (`compact`).
    Compact,
    /// Both: compacted, and records past retention deleted as well (`compact,delete`).
    CompactDelete,
}

impl CleanupPolicy {
    /// Whether the cleaner compacts the topic by key.
    pub fn compacts(self) -> bool {
        matches!(self, CleanupPolicy::Compact | CleanupPolicy::CompactDelete)
    }

    /// Whether retention by time and size applies.
    pub fn deletes(self) -> bool {
        matches!(self, CleanupPolicy::Delete | CleanupPolicy::CompactDelete)
    }

    /// Kafka's spelling: `delete`, `compact` or `compact,delete`.
    pub fn name(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
            CleanupPolicy::CompactDelete => "compact,delete",
        }
    }

    /// Parses Kafka's spelling (either order of `compact,delete`, spaces allowed).
    pub fn from_name(name: &str) -> Option<Self> {
        let mut compact = false;
        let mut delete = false;
        for part in name.split(',') {
            match part.trim() {
                "compact" => compact = true,
                "delete" => delete = true,
                _ => return None,
            }
        }
        match (compact, delete) {
            (true, true) => Some(CleanupPolicy::CompactDelete),
            (true, false) => Some(CleanupPolicy::Compact),
            (false, true) => Some(CleanupPolicy::Delete),
            (false, false) => None,
        }
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which order a topic promises its readers (`message.order`; RocketMQ's global versus
/// partition order).
///
/// - [`Partition`](MessageOrder::Partition) (`partition`, the default): records are ordered
///   within each partition only, so per-key order holds for keys routed to one partition.
/// - [`Global`](MessageOrder::Global) (`global`): one total order over the whole topic, which
///   a log can give only with exactly one partition. Both engines refuse to create such a
///   topic with more partitions, to add partitions to it, and to alter a wider topic to it.
///
/// ```
/// use duolog::{LogStore, MessageOrder, StoreOptions, TopicConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = duolog::open(dir.path(), StoreOptions::default())?;
/// let mut config = TopicConfig::default();
/// config.set("message.order", "global")?;
/// store.create_topic("ledger", config)?;
/// assert_eq!(store.describe_topic("ledger")?.message_order, MessageOrder::Global);
/// assert!(store.add_partitions("ledger", 1).is_err());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MessageOrder {
    /// Ordered within each partition (`partition`). The default.
    #[default]
    Partition,
    /// One order over the whole topic: exactly one partition, never widened (`global`).
    Global,
}

impl MessageOrder {
    /// The config value: `partition` or `global`.
    pub fn name(self) -> &'static str {
        match self {
            MessageOrder::Partition => "partition",
            MessageOrder::Global => "global",
        }
    }

    /// Parses [`MessageOrder::name`] back.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim() {
            "partition" => Some(MessageOrder::Partition),
            "global" => Some(MessageOrder::Global),
            _ => None,
        }
    }
}

impl fmt::Display for MessageOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A topic's configuration: its partition count, its cleanup policy, and overrides of the
/// store-wide options (`None` takes the store's value, from [`StoreOptions`](crate::StoreOptions)
/// at open). Kafka's names for each are accepted by [`TopicConfig::set`] and listed by
/// [`TopicConfig::overrides`].
///
/// ```
/// use std::time::Duration;
/// use duolog::{CleanupPolicy, TopicConfig};
///
/// let config = TopicConfig {
///     cleanup_policy: CleanupPolicy::Compact,
///     retention: Some(Duration::from_secs(3600)),
///     ..TopicConfig::with_partitions(3)
/// };
/// let mut same = TopicConfig::with_partitions(3);
/// same.set("cleanup.policy", "compact")?;
/// same.set("retention.ms", "3600000")?;
/// assert_eq!(config, same);
/// # Ok::<(), duolog::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    /// Number of partitions (RocketMQ: message queues). Default: 1.
    pub partitions: u32,
    /// `cleanup.policy`. Default: [`CleanupPolicy::Delete`].
    pub cleanup_policy: CleanupPolicy,
    /// `retention.ms`: records older than this are deleted (policies that delete).
    /// `Some(Duration::MAX)` keeps them forever (Kafka's `-1`).
    pub retention: Option<Duration>,
    /// `retention.bytes`: the oldest records of a partition larger than this are deleted
    /// (policies that delete). `Some(u64::MAX)` is unlimited (Kafka's `-1`).
    pub retention_bytes: Option<u64>,
    /// `segment.bytes`: segment size (segmented engine); on the CommitLog engine, the head of a
    /// compacted topic the cleaner leaves alone (see ARCHITECTURE.md).
    pub segment_bytes: Option<u64>,
    /// `segment.ms`: a segment older than this rolls (segmented engine); on the CommitLog
    /// engine, as `segment_bytes`, in time.
    pub segment_ms: Option<Duration>,
    /// `max.message.bytes`: the largest message the topic accepts.
    pub max_message_bytes: Option<usize>,
    /// `min.compaction.lag.ms`: records younger than this are never compacted.
    pub min_compaction_lag: Option<Duration>,
    /// `delete.retention.ms`: how long a tombstone outlives its write before compaction may
    /// remove it.
    pub delete_retention: Option<Duration>,
    /// `message.order`: partition order or global order (exactly one partition, which the
    /// engines refuse to widen). Default: [`MessageOrder::Partition`].
    pub message_order: MessageOrder,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig::with_partitions(1)
    }
}

impl TopicConfig {
    /// A topic with `partitions` partitions and no overrides.
    pub fn with_partitions(partitions: u32) -> Self {
        TopicConfig {
            partitions,
            cleanup_policy: CleanupPolicy::Delete,
            retention: None,
            retention_bytes: None,
            segment_bytes: None,
            segment_ms: None,
            max_message_bytes: None,
            min_compaction_lag: None,
            delete_retention: None,
            message_order: MessageOrder::Partition,
        }
    }
}

/// What a compaction pass did (see [`LogStore::compact`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Partitions cleaned.
    pub partitions_cleaned: u64,
    /// Records removed (superseded by a later record of their key, or expired tombstones).
    pub records_removed: u64,
    /// Of those, tombstones removed after their `delete.retention.ms`.
    pub tombstones_removed: u64,
    /// Stored bytes of the cleaned sections before the pass.
    pub bytes_before: u64,
    /// Stored bytes of the same sections after it.
    pub bytes_after: u64,
}

impl CompactionReport {
    /// Adds another report's counts to this one.
    pub fn add(&mut self, other: &CompactionReport) {
        self.partitions_cleaned += other.partitions_cleaned;
        self.records_removed += other.records_removed;
        self.tombstones_removed += other.tombstones_removed;
        self.bytes_before += other.bytes_before;
        self.bytes_after += other.bytes_after;
    }
}

/// Offsets bounding one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionBounds {
    /// First offset still readable (Kafka: log start offset).
    pub start: u64,
    /// Next offset to be assigned (Kafka: log end offset). `end - start` records are readable.
    pub end: u64,
    /// Every offset below this is durable on disk.
    pub durable_end: u64,
    /// Last stable offset (Kafka's LSO): the first offset of the oldest transaction still open
    /// on the partition, or `end` when none is. A
    /// [`ReadCommitted`](IsolationLevel::ReadCommitted) read never returns a record at or past
    /// it.
    pub last_stable: u64,
}

/// Which records a read may return (Kafka's `isolation.level`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IsolationLevel {
    /// Every record written, including those of open and aborted transactions (Kafka's default
    /// `read_uncommitted`).
    #[default]
    ReadUncommitted,
    /// Only records below the last stable offset, and never a record of an aborted transaction
    /// (`read_committed`).
    ReadCommitted,
}

/// How an end-transaction marker ends a producer's transaction on a partition (Kafka's control
/// record types `COMMIT` = 1 and `ABORT` = 0; RocketMQ's `TRANSACTION_COMMIT_TYPE` and
/// `TRANSACTION_ROLLBACK_TYPE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnMarker {
    /// The transaction's records become visible to `read_committed` readers.
    Commit,
    /// The transaction's records are never shown to `read_committed` readers.
    Abort,
}

/// What [`LogStore::fetch`] returns: records and where to read next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetch {
    /// The records, in offset order. Control records (transaction markers) are never among
    /// them; under [`ReadCommitted`](IsolationLevel::ReadCommitted) neither are records of
    /// aborted transactions nor any record at or past the last stable offset.
    pub records: Vec<Record>,
    /// The offset to fetch from next: past every offset the call examined, returned or
    /// skipped (markers, aborted records), so a reader storing it never stalls on a marker.
    /// Never past the partition end, nor (read-committed) past the last stable offset.
    pub next_offset: u64,
}

/// Limits on one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// At most this many records. Default: 1024.
    pub max_messages: usize,
    /// At most about this many stored bytes; the first record is returned even if it is larger,
    /// so a reader always makes progress (Kafka's fetch semantics). Default: 4 MiB.
    pub max_bytes: usize,
    /// Which records may be returned. Default: [`IsolationLevel::ReadUncommitted`], as Kafka.
    pub isolation: IsolationLevel,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_messages: 1024,
            max_bytes: 4 << 20,
            isolation: IsolationLevel::ReadUncommitted,
        }
    }
}

impl ReadLimits {
    /// At most `n` messages, default byte limit.
    pub fn messages(n: usize) -> Self {
        ReadLimits {
            max_messages: n,
            ..ReadLimits::default()
        }
    }

    /// These limits with isolation level `isolation`.
    #[must_use]
    pub fn with_isolation(mut self, isolation: IsolationLevel) -> Self {
        self.isolation = isolation;
        self
    }
}

/// How many records a [`read_tagged`](LogStore::read_tagged) call examines at most, per
/// message of its `max_messages` limit: a call examines at most `64 × max_messages` records
/// (and, where an engine must read records to examine them, about `64 × max_bytes` of them;
/// offsets that compaction removed cost nothing), so one call never walks a whole backlog of
/// records that do not match.
pub const TAG_SCAN_FACTOR: usize = 64;

impl ReadLimits {
    /// The scan bound of a tagged read under these limits: (offsets, bytes read to examine).
    pub(crate) fn tagged_scan(&self) -> (u64, u64) {
        let offsets = self.max_messages.saturating_mul(TAG_SCAN_FACTOR) as u64;
        let bytes = self.max_bytes.max(1).saturating_mul(TAG_SCAN_FACTOR) as u64;
        (offsets, bytes)
    }
}

/// Whether a record with tags `tag` passes a tag filter of `tags` (exact match of one).
pub(crate) fn tag_matches(tags: &[String], tag: Option<&str>) -> bool {
    tag.is_some_and(|t| tags.iter().any(|x| x == t))
}

/// What [`LogStore::read_tagged`] returns: the matching records and where to read next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaggedRead {
    /// The records whose tag is one of those asked for, in offset order.
    pub records: Vec<Record>,
    /// The offset to read from next: past every record the call examined, matching or not
    /// (a reader that stores it never sees a skipped record again). With no records and
    /// `next_offset` equal to the partition end, the reader is caught up.
    pub next_offset: u64,
}

/// Offsets assigned to an appended batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// Offset of the first message.
    pub base_offset: u64,
    /// Offset of the last message.
    pub last_offset: u64,
}

/// A producer's identity (Kafka's `producerId` / `producerEpoch`): ids come from
/// [`LogStore::allocate_producer_id`]; a producer that restarts under the same id bumps the
/// epoch, which fences appends of the older epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProducerId {
    /// The producer id (non-negative).
    pub id: i64,
    /// The producer epoch (non-negative).
    pub epoch: i16,
}

impl fmt::Display for ProducerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "producer {} epoch {}", self.id, self.epoch)
    }
}

/// What an engine remembers of one producer on one partition (see
/// [`LogStore::producer_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    /// The producer and its current epoch on this partition.
    pub producer: ProducerId,
    /// Sequence number of the producer's last record on this partition.
    pub last_sequence: i32,
    /// Offset of that record.
    pub last_offset: u64,
    /// Store time (ms since the epoch) of the producer's last batch on this partition.
    pub last_timestamp: i64,
    /// Batches whose duplicates are recognised (at most 5; 1 after a reopen that read the
    /// state from a snapshot, as in Kafka, whose snapshots keep only the last batch).
    pub batches_retained: usize,
    /// First offset of the producer's transaction open on this partition, if one is (Kafka's
    /// `currentTxnFirstOffset`).
    pub open_transaction: Option<u64>,
    /// Coordinator epoch of the last marker written for this producer here (−1: none).
    pub coordinator_epoch: i32,
}

/// A record found by key, with the partition it lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyMatch {
    /// The partition.
    pub partition: u32,
    /// The record.
    pub record: Record,
}

/// Files and bytes a store occupies on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Number of files.
    pub files: u64,
    /// Allocated length of those files in bytes (preallocated files count at full size).
    pub bytes: u64,
}

/// Outcome of [`LogStore::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records whose checksums were checked.
    pub records_checked: u64,
    /// Derived entries (consume-queue units, index entries) checked against the log.
    pub derived_checked: u64,
    /// Every problem found, one line each. Empty means the store is sound.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// `true` when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A durable, partitioned message log. Implemented by every engine; object safe, so
/// `Box<dyn LogStore>` lets an application switch engines with one line.
///
/// Send modes: [`append`](LogStore::append) is RocketMQ's *sync* send (returns once the batch is
/// acknowledged under the store's flush policy: fsync'ed under `FlushPolicy::Sync`, in the page
/// cache otherwise), [`append_oneway`](LogStore::append_oneway) never waits for a flush, and
/// [`append_async`](LogStore::append_async) returns a [`Completion`] that fires once the batch is
/// fsync'ed, whatever the policy.
pub trait LogStore: Send + Sync + fmt::Debug {
    /// Which engine this is.
    fn engine(&self) -> EngineKind;

    /// The store's directory.
    fn dir(&self) -> &Path;

    /// Creates a topic. Errors with [`Error::TopicExists`](crate::Error::TopicExists) if taken.
    fn create_topic(&self, name: &str, config: TopicConfig) -> Result<()>;

    /// The configuration of a topic.
    fn describe_topic(&self, name: &str) -> Result<TopicConfig>;

    /// The topic's id (Kafka's topic ID, KIP-516): unique in the store and never reused, so a
    /// topic deleted and created again under the same name has a new one. Readers that keep
    /// positions across calls (`CompactedTable`, consumers) use it to notice that.
    ///
    /// ```
    /// use duolog::{LogStore, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("t", TopicConfig::default())?;
    /// let first = store.topic_id("t")?;
    /// store.delete_topic("t")?;
    /// store.create_topic("t", TopicConfig::default())?;
    /// assert_ne!(store.topic_id("t")?, first);
    /// # Ok(()) }
    /// ```
    fn topic_id(&self, name: &str) -> Result<u64>;

    /// Replaces a topic's configuration on the live store: its cleanup policy and overrides
    /// take effect from the next append, retention pass and cleaning pass. `config.partitions`
    /// must equal the topic's (grow it with [`add_partitions`](LogStore::add_partitions)).
    /// Persisted atomically with the catalog.
    ///
    /// ```
    /// use std::time::Duration;
    /// use duolog::{LogStore, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("events", TopicConfig::with_partitions(2))?;
    /// let mut config = store.describe_topic("events")?;
    /// config.retention = Some(Duration::from_secs(3600));
    /// store.alter_topic("events", config.clone())?;
    /// assert_eq!(store.describe_topic("events")?, config);
    /// # Ok(()) }
    /// ```
    fn alter_topic(&self, name: &str, config: TopicConfig) -> Result<()>;

    /// Adds `count` partitions to a topic (partitions are never removed) and returns the new
    /// partition count. The new partitions start empty at offset 0.
    ///
    /// ```
    /// use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("events", TopicConfig::with_partitions(2))?;
    /// assert_eq!(store.add_partitions("events", 3)?, 5);
    /// store.append("events", 4, &[Message::new("x")])?;
    /// # Ok(()) }
    /// ```
    fn add_partitions(&self, name: &str, count: u32) -> Result<u32>;

    /// Deletes a topic and its files. Atomic across a crash: after a reopen the topic is
    /// either there with all its records or gone (a reopen finishes an interrupted deletion).
    /// On the CommitLog engine its records stay in the shared commit log, unreachable, until
    /// retention deletes their files.
    ///
    /// ```
    /// use duolog::{LogStore, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("scratch", TopicConfig::default())?;
    /// store.delete_topic("scratch")?;
    /// assert!(store.describe_topic("scratch").is_err());
    /// # Ok(()) }
    /// ```
    fn delete_topic(&self, name: &str) -> Result<()>;

    /// Names of user topics, sorted. Internal topics (starting with `__` or `%`) are left out
    /// unless `include_internal`.
    fn list_topics(&self, include_internal: bool) -> Vec<String>;

    /// Appends a batch to one partition, returning once it is acknowledged under the flush policy.
    fn append(&self, topic: &str, partition: u32, messages: &[Message]) -> Result<AppendResult>;

    /// Appends without waiting for any flush (RocketMQ's oneway send).
    fn append_oneway(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> Result<AppendResult>;

    /// Appends and returns a completion that fires once the batch is fsync'ed.
    fn append_async(&self, topic: &str, partition: u32, messages: &[Message])
    -> Result<Completion>;

    /// Reads records from `offset` on. `offset == end` gives an empty vector; an offset below
    /// the log start or above the end is [`Error::OffsetOutOfRange`](crate::Error::OffsetOutOfRange).
    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Vec<Record>>;

    /// Reads as [`fetch`](LogStore::fetch) does, showing each record to `visit` as a borrowed
    /// [`RecordRef`] instead of returning owned [`Record`]s: the same records in the same order
    /// under the same `limits` (isolation, markers hidden, aborted records skipped
    /// read-committed, compaction's gaps, the same errors for offsets out of range or unknown
    /// topics and partitions). `visit` returning [`ControlFlow::Break`] stops the read after
    /// that record. Returns how many records were visited and where to read next.
    ///
    /// Both engines read in place here: no [`Record`], no result vector, no reference count
    /// per record (on the CommitLog engine, records in a compacted topic's cleaned prefix are
    /// the exception: they are read as [`read`](LogStore::read) reads them, a bounded batch at
    /// a time). No lock of the store is held while `visit` runs, so it may call back into the
    /// store (append, read, even to the partition it is reading). An error (a corrupt record)
    /// may come after some records were visited; every record visited was checked whole first
    /// (on the segmented engine, its whole batch).
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use duolog::{LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("events", TopicConfig::default())?;
    /// let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("event {i}"))).collect();
    /// store.append("events", 0, &batch)?;
    ///
    /// // Sum the body lengths without keeping a record.
    /// let mut bytes = 0;
    /// let p = store.read_with("events", 0, 0, ReadLimits::default(), &mut |r| {
    ///     bytes += r.body().len();
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!((p.visited, p.next_offset, bytes), (10, 10, 70));
    ///
    /// // Stop at the first body ending in "3": the next read starts after it.
    /// let p = store.read_with("events", 0, 0, ReadLimits::default(), &mut |r| {
    ///     if r.body().ends_with(b"3") {
    ///         ControlFlow::Break(())
    ///     } else {
    ///         ControlFlow::Continue(())
    ///     }
    /// })?;
    /// assert_eq!((p.visited, p.next_offset), (4, 4));
    /// # Ok(()) }
    /// ```
    fn read_with(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        visit: &mut Visitor<'_>,
    ) -> Result<ReadProgress> {
        Ok(visit_fetched(
            self.fetch(topic, partition, offset, limits)?,
            visit,
        ))
    }

    /// Reads the records from `offset` on whose tag ([`Record::tags`]) equals one of `tags`
    /// (RocketMQ's tag subscription `TagA || TagB`; an empty `tags` matches nothing, an
    /// untagged record never matches), in offset order, within `limits` (which count only the
    /// records returned), and says where to read next: [`TaggedRead::next_offset`] is past
    /// every record examined, matching or not. One call examines at most
    /// [`TAG_SCAN_FACTOR`] × `max_messages` records, so it may return no records and a
    /// `next_offset` below the end: read on from there. Offsets out of range are errors as in
    /// [`read`](LogStore::read); `max_messages == 0` returns nothing and `next_offset ==
    /// offset`.
    ///
    /// The CommitLog engine compares the tag hash in each consume-queue unit and reads from the
    /// commit log only the records whose hash matches (then checks their real tag, so hash
    /// collisions never show); the segmented engine reads the batches and checks each record's
    /// `TAGS` header.
    ///
    /// ```
    /// use duolog::{LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("orders", TopicConfig::default())?;
    /// let tags = ["TagA", "TagB", "TagC", "TagA"];
    /// let batch: Vec<Message> = tags.iter().map(|t| Message::new(*t).with_tags(*t)).collect();
    /// store.append("orders", 0, &batch)?;
    /// store.append("orders", 0, &[Message::new("untagged")])?;
    ///
    /// let wanted = ["TagA".to_string(), "TagC".to_string()];
    /// let r = store.read_tagged("orders", 0, 0, ReadLimits::default(), &wanted)?;
    /// let offsets: Vec<u64> = r.records.iter().map(|r| r.offset()).collect();
    /// assert_eq!(offsets, [0, 2, 3]);
    /// // Past the untagged record too: caught up.
    /// assert_eq!(r.next_offset, 5);
    /// assert!(store.read_tagged("orders", 0, 5, ReadLimits::default(), &wanted)?.records.is_empty());
    /// # Ok(()) }
    /// ```
    fn read_tagged(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        tags: &[String],
    ) -> Result<TaggedRead> {
        read_tagged_by_reading(self, topic, partition, offset, limits, tags)
    }

    /// Start, end and durable end of a partition.
    fn bounds(&self, topic: &str, partition: u32) -> Result<PartitionBounds>;

    /// Makes everything appended so far durable.
    fn sync(&self) -> Result<()>;

    /// Blocks until the partition holds a record at `offset` (its end is past `offset`) or the
    /// timeout passes. Returns whether data is there. The primitive under long-poll consumers.
    fn wait_for(&self, topic: &str, partition: u32, offset: u64, timeout: Duration)
    -> Result<bool>;

    /// Blocks until any of the partitions holds a record at its offset (its end is past the
    /// offset given with it) or the timeout passes; returns whether one does. The primitive
    /// under a consumer polling many partitions: it sleeps once, registered on each
    /// partition's wake-up, and an append to any of them wakes it (no polling loop). An empty
    /// `positions` waits the whole timeout. Unknown topics or partitions are errors.
    ///
    /// ```
    /// use std::time::Duration;
    /// use duolog::{LogStore, Message, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("a", TopicConfig::with_partitions(2))?;
    /// store.create_topic("b", TopicConfig::default())?;
    /// store.append("b", 0, &[Message::new("x")])?;
    /// let waiting = [("a", 0, 0), ("a", 1, 0), ("b", 0, 0)];
    /// assert!(store.wait_for_any(&waiting, Duration::from_secs(10))?);
    /// assert!(!store.wait_for_any(&[("b", 0, 1)], Duration::from_millis(10))?);
    /// # Ok(()) }
    /// ```
    fn wait_for_any(&self, positions: &[(&str, u32, u64)], timeout: Duration) -> Result<bool> {
        self.wait_for_any_with(positions, timeout, &Wakeup::new())
    }

    /// [`wait_for_any`](LogStore::wait_for_any) that [`Wakeup::wake`] on `wakeup` also ends
    /// (returning whether data is there then): how a consumer group interrupts a member's long
    /// poll when its assignment changes. A wake-up given before the call ends it at once; the
    /// call consumes it.
    fn wait_for_any_with(
        &self,
        positions: &[(&str, u32, u64)],
        timeout: Duration,
        wakeup: &Wakeup,
    ) -> Result<bool>;

    /// Hands out a producer id for [`append_idempotent`](LogStore::append_idempotent), never
    /// the same one twice in this store, even across crashes: ids are reserved in blocks of
    /// 1,000 in the catalog (Kafka's `ProducerIdManager`), durably before one is returned.
    ///
    /// ```
    /// use duolog::{LogStore, StoreOptions};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// let a = store.allocate_producer_id()?;
    /// let b = store.allocate_producer_id()?;
    /// assert!(a >= 0 && b > a);
    /// # Ok(()) }
    /// ```
    fn allocate_producer_id(&self) -> Result<i64>;

    /// Appends a batch as Kafka's idempotent producer does: `base_sequence` is the sequence
    /// number of the first message (each message takes the next one; a batch's range must not
    /// pass `i32::MAX`, and the batch after one that ends there starts at 0). Under the
    /// partition's append lock:
    /// - a batch with the same producer, epoch and sequence range as one of the producer's
    ///   last 5 batches on this partition is a retry: it returns that batch's original offsets
    ///   and writes nothing;
    /// - otherwise `base_sequence` must follow the producer's last sequence on this partition
    ///   (0 for an unknown producer or a new epoch), else
    ///   [`Error::OutOfOrderSequence`](crate::Error::OutOfOrderSequence);
    /// - an epoch older than the one this partition knows for the id is
    ///   [`Error::ProducerFenced`](crate::Error::ProducerFenced).
    ///
    /// A batch is all or nothing across crashes on both engines, and the producer state
    /// survives them (snapshots plus a replay of the log past them), so a batch retried after
    /// a crash is still recognised. Acknowledged as [`append`](LogStore::append) is (a retry
    /// returns once the original is acknowledged). State of a producer that wrote nothing to
    /// the partition for [`StoreOptions::producer_id_expiration`](crate::StoreOptions) is
    /// forgotten.
    ///
    /// ```
    /// use duolog::{Error, LogStore, Message, ProducerId, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("orders", TopicConfig::default())?;
    /// let producer = ProducerId { id: store.allocate_producer_id()?, epoch: 0 };
    /// let batch = [Message::new("a"), Message::new("b")];
    /// let first = store.append_idempotent("orders", 0, producer, 0, &batch)?;
    /// // A retry (say the acknowledgement was lost) is not written again.
    /// assert_eq!(store.append_idempotent("orders", 0, producer, 0, &batch)?, first);
    /// assert_eq!(store.bounds("orders", 0)?.end, 2);
    /// // A gap in the sequence is refused.
    /// let gap = store.append_idempotent("orders", 0, producer, 5, &batch);
    /// assert!(matches!(gap, Err(Error::OutOfOrderSequence { expected: 2, got: 5, .. })));
    /// # Ok(()) }
    /// ```
    fn append_idempotent(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> Result<AppendResult>;

    /// What the partition remembers of each idempotent producer, by producer id (expired
    /// producers left out).
    ///
    /// ```
    /// use duolog::{LogStore, Message, ProducerId, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// store.create_topic("t", TopicConfig::default())?;
    /// let producer = ProducerId { id: store.allocate_producer_id()?, epoch: 3 };
    /// store.append_idempotent("t", 0, producer, 0, &[Message::new("x"), Message::new("y")])?;
    /// let state = store.producer_state("t", 0)?;
    /// assert_eq!(state[0].producer, producer);
    /// assert_eq!((state[0].last_sequence, state[0].last_offset), (1, 1));
    /// # Ok(()) }
    /// ```
    fn producer_state(&self, topic: &str, partition: u32) -> Result<Vec<ProducerEntry>>;

    /// Appends a batch to `producer`'s transaction on the partition (Kafka's transactional
    /// produce: the batch carries the transactional attribute). The first such batch since the
    /// producer's last marker here opens the transaction, and the partition's
    /// [`last_stable`](PartitionBounds::last_stable) offset stays at or below its first offset
    /// until [`write_marker`](LogStore::write_marker) ends it. Sequence, epoch and duplicate
    /// rules are those of [`append_idempotent`](LogStore::append_idempotent); a plain
    /// idempotent append while the producer's transaction is open here, or a transactional one
    /// into a batch sequence of non-transactional ones without a marker between, is
    /// [`Error::InvalidTxnState`](crate::Error::InvalidTxnState). The open transaction survives
    /// crashes (snapshots plus replay).
    fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> Result<AppendResult>;

    /// Ends `producer`'s open transaction on the partition with a control record (Kafka's
    /// end-transaction marker: a control batch with key `[0, type]` and value
    /// `[0, coordinator_epoch]` on the segmented engine; a record with RocketMQ's commit or
    /// rollback transaction type on the CommitLog engine). The marker takes one offset, which
    /// is returned; it is never returned by a read. An abort is recorded in the partition's
    /// aborted-transaction index so `read_committed` readers skip its records cheaply.
    ///
    /// With no transaction of this producer open on the partition no marker is written and
    /// `Ok(None)` is returned, so a coordinator may resend markers after a crash; a newer epoch
    /// is still recorded (durably, in the producer state), so the older epoch is fenced on the
    /// partition from then on. An epoch older than the partition knows is
    /// [`Error::ProducerFenced`](crate::Error::ProducerFenced); a marker is durable when this
    /// returns, whatever the store's flush policy.
    fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        marker: TxnMarker,
        coordinator_epoch: i32,
    ) -> Result<Option<u64>>;

    /// Reads from `offset` as [`read`](LogStore::read) does, under `limits.isolation`, and
    /// says where to read next (past markers and skipped aborted records). The primitive under
    /// consumers: a reader that stores [`Fetch::next_offset`] never stalls on a control record.
    fn fetch(&self, topic: &str, partition: u32, offset: u64, limits: ReadLimits) -> Result<Fetch>;

    /// Makes records before `offset` unreadable (Kafka DeleteRecords) and frees whole files
    /// where the engine can. Returns the new log start offset.
    fn delete_before(&self, topic: &str, partition: u32, offset: u64) -> Result<u64>;

    /// Records of `topic` that carry `key` (as their key, in their `KEYS` property, or as their
    /// `UNIQ_KEY`) and were stored within `time_range` (inclusive, ms since the epoch), newest
    /// first, at most `limit`. Hash collisions never show: every hit is checked against its record.
    fn find_by_key(
        &self,
        topic: &str,
        key: &str,
        time_range: (i64, i64),
        limit: usize,
    ) -> Result<Vec<KeyMatch>>;

    /// Kafka's `offsetsForTimes`: the earliest offset whose store timestamp is at or after
    /// `timestamp`, or `None` if there is none.
    fn offset_for_time(&self, topic: &str, partition: u32, timestamp: i64) -> Result<Option<u64>>;

    /// Drops the key index and builds it again from the log. Returns the records indexed.
    fn reindex(&self) -> Result<u64>;

    /// Applies retention now (normally done in the background) and returns how many files were
    /// deleted.
    fn enforce_retention(&self) -> Result<usize>;

    /// Runs the log cleaner now over every topic whose cleanup policy compacts (or only
    /// `topic`), cleaning every partition with anything cleanable whatever its dirty ratio, and
    /// reports what it removed. Offsets never change; order never changes; a reader from the
    /// start still sees the latest record of every key. The cleaner also runs in the
    /// background (see [`CompactionOptions`](crate::CompactionOptions)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use duolog::{CleanupPolicy, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
    /// # fn main() -> duolog::Result<()> {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = duolog::open(dir.path(), StoreOptions::default())?;
    /// // A small head (`segment.bytes`) so the cleaner has something it may clean.
    /// let config = TopicConfig {
    ///     cleanup_policy: CleanupPolicy::Compact,
    ///     segment_bytes: Some(1024),
    ///     ..TopicConfig::default()
    /// };
    /// store.create_topic("prices", config)?;
    /// for i in 0..100 {
    ///     let key = format!("item-{}", i % 5);
    ///     store.append("prices", 0, &[Message::new(format!("{i}")).with_key(key)])?;
    /// }
    /// let report = store.compact(Some("prices"))?;
    /// assert!(report.records_removed > 0);
    /// // Offsets are unchanged: the newest record is still at offset 99.
    /// let last = store.read("prices", 0, 99, ReadLimits::messages(1))?;
    /// assert_eq!(last[0].offset(), 99);
    /// # Ok(()) }
    /// ```
    fn compact(&self, topic: Option<&str>) -> Result<CompactionReport>;

    /// Stored bytes of a partition's records (Kafka's log size): what retention by size
    /// counts, and what compaction shrinks.
    fn partition_bytes(&self, topic: &str, partition: u32) -> Result<u64>;

    /// Files and bytes on disk.
    fn disk_usage(&self) -> Result<DiskUsage>;

    /// Checks every checksum and every derived file against the log.
    fn verify(&self) -> Result<VerifyReport>;

    /// Flushes everything, writes the checkpoint and marks the shutdown clean. Later calls other
    /// than `close` return [`Error::Closed`](crate::Error::Closed). Dropping the store closes it too.
    fn close(&self) -> Result<()>;

    /// Stops the store the way a process crash would: no flush, no checkpoint, and the marker
    /// that makes the next open run crash recovery stays. Written data stays in the page cache,
    /// as after a real process crash. For tests and tools; later calls return `Closed`.
    fn abandon(&self);
}

/// [`LogStore::read_tagged`] by reading every record and filtering: what an engine without
/// anything better (and the CommitLog engine's compacted prefix) does.
pub(crate) fn read_tagged_by_reading<S: LogStore + ?Sized>(
    store: &S,
    topic: &str,
    partition: u32,
    offset: u64,
    limits: ReadLimits,
    tags: &[String],
) -> Result<TaggedRead> {
    let (mut scan_left, mut scan_bytes) = limits.tagged_scan();
    let mut out = TaggedRead {
        records: Vec::new(),
        next_offset: offset,
    };
    let mut messages = limits.max_messages;
    let mut bytes = limits.max_bytes;
    // Every call checks the range, even one that reads nothing.
    let end = store.bounds(topic, partition)?.end;
    if messages == 0 {
        return Ok(out);
    }
    loop {
        let chunk = ReadLimits {
            max_messages: scan_left.min(1024) as usize,
            max_bytes: scan_bytes.min(1 << 20) as usize,
            isolation: limits.isolation,
        };
        let records = store.read(topic, partition, out.next_offset, chunk)?;
        let Some(last) = records.last() else {
            out.next_offset = out.next_offset.max(end);
            return Ok(out);
        };
        let last_offset = last.offset();
        for r in records {
            if tag_matches(tags, r.tags()) {
                let size = r.stored_size() as usize;
                if !out.records.is_empty() && size > bytes {
                    out.next_offset = r.offset();
                    return Ok(out);
                }
                bytes = bytes.saturating_sub(size);
                messages -= 1;
                out.next_offset = r.offset() + 1;
                out.records.push(r);
                if messages == 0 {
                    return Ok(out);
                }
            } else {
                scan_bytes = scan_bytes.saturating_sub(u64::from(r.stored_size()));
            }
            scan_left = scan_left.saturating_sub(1);
        }
        out.next_offset = last_offset + 1;
        if scan_left == 0 || scan_bytes == 0 || out.next_offset >= end {
            return Ok(out);
        }
    }
}

/// RocketMQ's system topics of transactional messages, kept under their RocketMQ names by
/// the half-message layer (`txn::half`) and internal like the `__`/`%` ones.
const ROCKETMQ_SYSTEM_TOPICS: [&str; 3] = [
    "RMQ_SYS_TRANS_HALF_TOPIC",
    "RMQ_SYS_TRANS_OP_HALF_TOPIC",
    "TRANS_CHECK_MAX_TIME_TOPIC",
];

/// `true` for the names of internal topics (`__…`, `%…`, and RocketMQ's transaction system
/// topics such as `RMQ_SYS_TRANS_HALF_TOPIC`), hidden from user listings.
pub fn is_internal_topic(name: &str) -> bool {
    name.starts_with("__") || name.starts_with('%') || ROCKETMQ_SYSTEM_TOPICS.contains(&name)
}

/// The same property rules on every engine (so switching engines changes no behaviour): names
/// non-empty and not reserved, and no name, value or tag holding one of RocketMQ's separators
/// (`\u{1}`, `\u{2}`). The one difference: the CommitLog engine's producer fields
/// ([`COMMITLOG_PRODUCER_PROPERTIES`]) are reserved on that engine only.
pub(crate) fn validate_properties(m: &Message, engine: EngineKind) -> Result<()> {
    let encoding = match engine {
        EngineKind::CommitLog => PropertyEncoding::RocketMq,
        EngineKind::Segmented => PropertyEncoding::KafkaHeaders,
    };
    let clean = |s: &str| !s.bytes().any(|b| b == 1 || b == 2);
    for (name, value) in &m.properties {
        if name.is_empty() || !clean(name) || !clean(value) {
            return Err(crate::Error::InvalidArgument(format!(
                "property {name:?} is empty or contains a \\u{{1}} or \\u{{2}} separator"
            )));
        }
        if is_reserved(name, encoding) {
            return Err(crate::Error::InvalidArgument(format!(
                "property name {name:?} is reserved"
            )));
        }
    }
    if m.tombstone && (m.key.is_none() || !m.body.is_empty()) {
        return Err(crate::Error::InvalidArgument(
            "a tombstone needs a key and an empty body".into(),
        ));
    }
    if m.tags.as_deref().is_some_and(|t| !clean(t)) {
        return Err(crate::Error::InvalidArgument(
            "tags contain a \\u{1} or \\u{2} separator".into(),
        ));
    }
    Ok(())
}

/// Checks a new topic: its name, and 1 to 65,536 partitions.
pub(crate) fn validate_new_topic(name: &str, config: &TopicConfig) -> Result<()> {
    validate_topic_name(name)?;
    config.validate()?;
    if config.partitions == 0 || config.partitions > 65_536 {
        return Err(crate::Error::InvalidArgument(format!(
            "a topic needs 1 to 65,536 partitions, not {}",
            config.partitions
        )));
    }
    Ok(())
}

/// The checks of `alter_topic` against the topic's current config: valid overrides, and the
/// partition count unchanged (it only grows, by `add_partitions`).
pub(crate) fn validate_alter(
    name: &str,
    current: &TopicConfig,
    config: &TopicConfig,
) -> Result<()> {
    config.validate()?;
    if config.partitions != current.partitions {
        return Err(crate::Error::InvalidArgument(format!(
            "alter_topic keeps the partition count ({} for {name}); add partitions with \
             add_partitions",
            current.partitions
        )));
    }
    Ok(())
}

/// The config of a topic grown by `count` partitions by `add_partitions`, checked.
pub(crate) fn grown_config(name: &str, current: &TopicConfig, count: u32) -> Result<TopicConfig> {
    if count == 0 {
        return Err(crate::Error::InvalidArgument(
            "add at least one partition".into(),
        ));
    }
    if current.message_order == MessageOrder::Global {
        return Err(crate::Error::InvalidArgument(format!(
            "topic {name} is globally ordered (message.order=global): it keeps exactly one \
             partition"
        )));
    }
    let mut config = current.clone();
    config.partitions = config.partitions.saturating_add(count);
    validate_new_topic(name, &config)?;
    Ok(config)
}

/// Topic names for `list_topics`: sorted, internal ones only when asked for.
pub(crate) fn listed_topics<'a>(
    names: impl Iterator<Item = &'a String>,
    include_internal: bool,
) -> Vec<String> {
    let mut v: Vec<String> = names
        .filter(|n| include_internal || !is_internal_topic(n))
        .cloned()
        .collect();
    v.sort();
    v
}

/// The checks of `delete_before` against a partition's bounds: past the end is an error; at or
/// below the start changes nothing (`Ok(None)`); otherwise the new start.
pub(crate) fn delete_before_target(
    topic: &str,
    partition: u32,
    offset: u64,
    start: u64,
    end: u64,
) -> Result<Option<u64>> {
    if offset > end {
        return Err(crate::Error::OffsetOutOfRange {
            topic: topic.to_owned(),
            partition,
            offset,
            start,
            end,
        });
    }
    Ok((offset > start).then_some(offset))
}

/// Checks a topic name: 1 to 127 bytes of `[A-Za-z0-9._%-]`, not `.` or `..`.
pub(crate) fn validate_topic_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%'));
    if name.is_empty() || name.len() > 127 || !ok_chars || name == "." || name == ".." {
        return Err(crate::Error::InvalidArgument(format!(
            "topic name {name:?} must be 1 to 127 characters of [A-Za-z0-9._%-]"
        )));
    }
    Ok(())
}

/// The byte range of `part` inside `whole`; `part` must be a sub-slice of `whole`.
pub(crate) fn range_in(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// What a second `close` returns: `Ok` only if the first one succeeded, else the first one's
/// failure (nothing was re-checked, so nothing may be claimed durable).
pub(crate) fn repeated_close(first: &std::result::Result<(), String>) -> crate::Result<()> {
    match first {
        Ok(()) => Ok(()),
        Err(reason) => Err(crate::Error::Poisoned {
            reason: format!(
                "an earlier close of this store failed ({reason}); reopen it to recover"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    /// The trait's default `read_tagged` (read and filter) means what the engines' own do.
    #[test]
    fn default_read_tagged_matches_the_engines() {
        for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
            let dir = tempfile::tempdir().unwrap();
            let opts = StoreOptions {
                engine: Some(engine),
                ..StoreOptions::default()
            };
            let store = crate::open(dir.path(), opts).unwrap();
            store.create_topic("t", TopicConfig::default()).unwrap();
            let batch: Vec<Message> = (0..3000)
                .map(|i| {
                    let m = Message::new(format!("{i}"));
                    match i % 5 {
                        0 => m,
                        1 => m.with_tags("Aa"),
                        2 => m.with_tags("BB"),
                        _ => m.with_tags("TagC"),
                    }
                })
                .collect();
            store.append("t", 0, &batch).unwrap();
            for tags in [
                vec!["Aa".to_string()],
                vec!["BB".into(), "TagC".into()],
                vec![],
            ] {
                for limits in [
                    ReadLimits::messages(1),
                    ReadLimits::messages(100),
                    ReadLimits {
                        max_messages: 1000,
                        max_bytes: 500,
                        ..ReadLimits::default()
                    },
                ] {
                    // Where a call stops may differ (the engines bound the scan in their own
                    // ways); what a reader gets in the end may not.
                    let drain = |default: bool| {
                        let (mut at, mut out, mut calls) = (0, Vec::new(), 0);
                        loop {
                            let r = if default {
                                read_tagged_by_reading(store.as_ref(), "t", 0, at, limits, &tags)
                            } else {
                                store.read_tagged("t", 0, at, limits, &tags)
                            }
                            .unwrap();
                            if r.records.is_empty() && r.next_offset == 3000 {
                                return out;
                            }
                            assert!(r.next_offset > at);
                            assert!(r.records.len() <= limits.max_messages);
                            at = r.next_offset;
                            out.extend(r.records);
                            calls += 1;
                            assert!(calls < 10_000);
                        }
                    };
                    assert_eq!(drain(true), drain(false), "{engine} {tags:?} {limits:?}");
                }
            }
            let past =
                read_tagged_by_reading(store.as_ref(), "t", 0, 3001, ReadLimits::default(), &[]);
            assert!(matches!(past, Err(crate::Error::OffsetOutOfRange { .. })));
        }
    }
}
