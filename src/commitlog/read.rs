//! The read path: consume-queue units → zero-copy slices of the mapped commit-log files, or,
//! for records sparse in the log, copies of them (see [`SPARSE_FACTOR`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::compacted::Compacted;
use super::consume_queue::{UNIT_SIZE, Unit};
use super::record::{self, Checks, Decoded};
use super::txn_index::{self, Aborted};
use super::{Inner, PartitionState};
use crate::error::{Error, Result};
use crate::io::MappedFile;
use crate::store::{
    Fetch, IsolationLevel, Key, Properties, PropertiesRef, PropertyEncoding, ReadLimits,
    ReadProgress, Record, RecordRef, Span, TaggedRead, Visitor, range_in,
};

/// Decodes a key stored hex-encoded (`__KEYHEX`, a key that is not UTF-8): `None` if it is not hex.
pub(crate) fn unhex(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len() / 2);
    unhex_into(b, &mut out).then_some(out)
}

/// Decodes hex `b` into `out` (cleared first, its capacity kept): false if `b` is not hex.
fn unhex_into(b: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    if !b.len().is_multiple_of(2) {
        return false;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    for p in b.chunks(2) {
        let (Some(hi), Some(lo)) = (nib(p[0]), nib(p[1])) else {
            return false;
        };
        out.push((hi << 4) | lo);
    }
    true
}

/// Builds a [`Record`] from the stored record at `range` of `span`, checking that it is the
/// record the consume queue said (topic, partition, offset). The record's fields are zero-copy
/// slices of `span`.
// Inlined into the read loop so the record is built where it is pushed: returned through two
// `Result`s it was copied three times, a quarter of a sequential read's time.
#[inline(always)]
pub(crate) fn make_record(
    span: &Bytes,
    range: std::ops::Range<usize>,
    expect_topic: &str,
    expect_partition: u32,
    expect_offset: u64,
    locate: impl Fn() -> (std::path::PathBuf, u64),
) -> Result<Record> {
    let r = decode_record(span, range, expect_topic, expect_partition, &locate)?;
    if r.offset != expect_offset {
        let (file, pos) = locate();
        return Err(Error::corrupted(
            file,
            pos,
            "consume-queue unit points at another record",
        ));
    }
    Ok(r)
}

/// Where a stored record's key is: none, its bytes, or (a key that is not UTF-8) its bytes
/// hex-encoded in `__KEYHEX`.
enum KeyField<'a> {
    None,
    In(&'a [u8]),
    Hex(&'a [u8]),
}

/// The fields both kinds of read hand out, decoded in place from one stored record.
struct Fields<'a> {
    offset: u64,
    timestamp: i64,
    store_timestamp: i64,
    flags: u32,
    size: u32,
    tombstone: bool,
    key: KeyField<'a>,
    body: &'a [u8],
    tags: Option<&'a [u8]>,
    properties: &'a [u8],
}

/// Decodes the stored record `rec` (every check: its whole-record CRC), checking its topic and
/// partition.
#[inline(always)]
fn decode_fields<'a>(
    rec: &'a [u8],
    expect_topic: &str,
    expect_partition: u32,
    corrupt: &dyn Fn(&str) -> Error,
) -> Result<Fields<'a>> {
    let d = match record::decode(rec, Checks::FULL) {
        Ok(Decoded::Message(d)) => d,
        Ok(Decoded::Blank { .. }) => return Err(corrupt("consume queue points at a blank record")),
        Err(e) => return Err(corrupt(e.reason())),
    };
    if d.total_size != rec.len() {
        return Err(corrupt("record size differs from its consume-queue unit"));
    }
    if d.topic != expect_topic.as_bytes()
        || d.header.queue_id != expect_partition as i32
        || d.header.queue_offset < 0
    {
        return Err(corrupt("consume-queue unit points at another record"));
    }
    let mut key = KeyField::None;
    let mut tags = None;
    let mut tombstone = false;
    // The checksum property, checked by `decode`, ends the properties: only what precedes it
    // can name the key, the tags or a tombstone (for a plain record, nothing is scanned).
    let scanned = match d.has_record_crc {
        true => &d.properties[..d.properties.len() - record::CRC_PROPERTY_LEN],
        false => d.properties,
    };
    for (name, value) in record::iter_raw_properties(scanned) {
        match name {
            b"__KEY" => key = KeyField::In(value),
            b"__KEYHEX" => key = KeyField::Hex(value),
            b"TAGS" => tags = Some(value),
            b"__TOMBSTONE" => tombstone = true,
            _ => {}
        }
    }
    Ok(Fields {
        offset: d.header.queue_offset as u64,
        timestamp: d.header.born_timestamp,
        store_timestamp: d.header.store_timestamp,
        flags: d.header.sys_flag as u32,
        size: d.total_size as u32,
        tombstone,
        key,
        body: d.body,
        tags,
        properties: d.properties,
    })
}

/// Builds a [`Record`] from the stored record at `range` of `span` with the offset its header
/// carries, checking its topic and partition.
#[inline(always)]
pub(crate) fn decode_record(
    span: &Bytes,
    range: std::ops::Range<usize>,
    expect_topic: &str,
    expect_partition: u32,
    locate: &dyn Fn() -> (std::path::PathBuf, u64),
) -> Result<Record> {
    let corrupt = |why: &str| {
        let (file, pos) = locate();
        Error::corrupted(file, pos, why.to_owned())
    };
    let rec = &span[range.clone()];
    let f = decode_fields(rec, expect_topic, expect_partition, &corrupt)?;
    // One reference to the span per record: every field is a range of the record's bytes.
    let at = |part: &[u8]| Span::of(range_in(rec, part));
    let key = match f.key {
        KeyField::None => Key::None,
        KeyField::In(k) => Key::In(at(k)),
        KeyField::Hex(k) => Key::Owned(Box::new(Bytes::from(
            unhex(k).ok_or_else(|| corrupt("bad hex key"))?,
        ))),
    };
    Ok(Record {
        offset: f.offset,
        timestamp: f.timestamp,
        store_timestamp: f.store_timestamp,
        flags: f.flags,
        key,
        body: at(f.body),
        tags: f.tags.map(at),
        properties: Properties::new(
            span.slice(range),
            at(f.properties),
            PropertyEncoding::RocketMq,
        ),
        size: f.size,
        tombstone: f.tombstone,
    })
}

/// The stored record `rec` as a borrowed view, checked as [`decode_record`] checks it. A key
/// stored hex-encoded is decoded into `scratch` (the one case that writes anything).
#[inline(always)]
fn decode_view<'a>(
    rec: &'a [u8],
    scratch: &'a mut Vec<u8>,
    expect_topic: &str,
    expect_partition: u32,
    corrupt: &dyn Fn(&str) -> Error,
) -> Result<RecordRef<'a>> {
    let f = decode_fields(rec, expect_topic, expect_partition, corrupt)?;
    let key = match f.key {
        KeyField::None => None,
        KeyField::In(k) => Some(k),
        KeyField::Hex(k) => {
            // Into the one buffer the read reuses: no allocation per record once it is as
            // long as the longest key.
            if !unhex_into(k, scratch) {
                return Err(corrupt("bad hex key"));
            }
            Some(&scratch[..])
        }
    };
    Ok(RecordRef {
        offset: f.offset,
        timestamp: f.timestamp,
        store_timestamp: f.store_timestamp,
        flags: f.flags,
        size: f.size,
        tombstone: f.tombstone,
        key,
        body: f.body,
        tags: f.tags,
        properties: PropertiesRef::new(f.properties, PropertyEncoding::RocketMq),
    })
}

/// Units reserved up front by a read; more are allocated only as they are returned.
const INITIAL_UNITS: usize = 64;

/// Why a read attempt gave up: the partition's compacted generation changed under it (a
/// consume-queue unit or log file it was about to use is gone because a pass moved `clean_end`
/// past it), so it starts again from the new generation.
struct Moved;

/// How much more a read may examine (plain reads: no bound) and, for a tagged read, the tags
/// records must carry.
struct Scan<'a> {
    left: u64,
    bytes_left: u64,
    tags: Option<&'a [String]>,
    /// Read-committed tagged reads: the aborted transactions whose records are skipped.
    aborted: Option<&'a Aborted>,
}

impl Scan<'_> {
    fn unbounded(tags: Option<&[String]>) -> Scan<'_> {
        Scan {
            left: u64::MAX,
            bytes_left: u64::MAX,
            tags,
            aborted: None,
        }
    }
}

/// Whether `r` is a record of one of the `aborted` transactions: a prepared (transactional)
/// record whose producer's aborted range covers its offset.
pub(crate) fn is_aborted(aborted: &Aborted, r: &Record) -> bool {
    !aborted.is_empty() && is_aborted_view(aborted, &r.view())
}

/// [`is_aborted`] of a borrowed view.
fn is_aborted_view(aborted: &Aborted, r: &RecordRef<'_>) -> bool {
    if aborted.is_empty()
        || record::transaction_type(r.flags() as i32) != record::SYSFLAG_TRANSACTION_PREPARED
    {
        return false;
    }
    r.properties()
        .get(crate::store::PRODUCER_ID_PROPERTY)
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|id| aborted.covers(id, r.offset()))
}

/// A log file, and a zero-copy span of it with the span's log position.
type LogSpan = (Arc<MappedFile>, u64, Bytes);

/// What is left of a read's limits.
struct Budget {
    messages: usize,
    bytes: usize,
}

impl Budget {
    /// Whether a record of `size` bytes still fits (the first of a read always does).
    fn admits(&self, out: &[Record], size: usize) -> bool {
        self.messages > 0 && (out.is_empty() || size <= self.bytes)
    }

    fn take(&mut self, size: usize) {
        self.messages -= 1;
        self.bytes = self.bytes.saturating_sub(size);
    }
}

/// Records a visiting read takes from the consume queue (and, in the compacted prefix, holds
/// as owned records) per round: bounds the prefix's buffer and each unit-run lookup.
const VISIT_ROUND: u64 = 1024;

/// When a fetch's records are sparse in the shared log: the span of log covering a run of them
/// is more than `SPARSE_FACTOR` times their bytes plus [`SPARSE_SLACK`] (a quiet partition in a
/// busy store, under an eighth of the log's traffic). Such a run is copied out into one buffer
/// instead of handed out as slices of one mapped span across it: reading and touching each
/// record maps its page and the kernel's fault-around of up to 64 KiB about it, so the slices'
/// resident memory followed the span of log crossed, not the bytes returned (475 MB for a read
/// of 100,000 messages interleaved with 3.5 M others, issue 16's full re-run). A denser run is
/// sliced as before, its resident pages within `SPARSE_FACTOR` times the fetch's bytes.
const SPARSE_FACTOR: u64 = 8;

/// See [`SPARSE_FACTOR`].
const SPARSE_SLACK: u64 = 64 << 10;

/// How far (in log bytes) a read walking one mapped span goes between its calls to
/// `MappedFile::note_read`, so the pages it has passed leave behind it within the span.
const NOTE_EVERY: u64 = 1 << 20;

/// Where a read that walks the log record by record (a visit over one mapped span, the copies
/// of sparse records) next tells the log file how far it got: every [`NOTE_EVERY`] bytes of
/// log, through `MappedFile::note_read`, so the pages it has passed leave behind it.
#[derive(Default)]
struct ReadNotes {
    next: u64,
}

impl ReadNotes {
    /// The read is at log position `pos` of `file`.
    fn at(&mut self, file: &MappedFile, pos: u64) {
        if pos >= self.next {
            file.note_read((pos - file.start_offset()) as usize);
            self.next = pos + NOTE_EVERY;
        }
    }

    /// `unit`'s stored record in `file`, to be copied out: the read is noted here, every
    /// [`NOTE_EVERY`] bytes, not at each record.
    fn record<'f>(&mut self, file: &'f MappedFile, unit: &Unit) -> Result<&'f [u8]> {
        self.at(file, unit.position);
        let rel = unit.position - file.start_offset();
        file.read_unnoted(rel as usize, unit.size as usize)
            .ok_or_else(|| {
                Error::corrupted(
                    file.path(),
                    rel,
                    "consume-queue unit points past the end of the log",
                )
            })
    }
}

/// A visiting read's state, with `fetch`'s rules for what is shown, skipped and where it stops.
struct Visiting<'v, 'f> {
    visit: &'v mut Visitor<'f>,
    aborted: &'v Aborted,
    budget: Budget,
    /// What is left of the scan bound (`u64::MAX` unless aborted records may be skipped).
    scan_left: u64,
    scan_bytes: u64,
    visited: usize,
    /// The next offset to examine.
    at: u64,
    /// Where the read stopped before its bound: the next offset to read.
    stopped: Option<u64>,
}

impl Visiting<'_, '_> {
    /// Whether the read may examine another record.
    fn goes_on(&self) -> bool {
        self.stopped.is_none()
            && self.budget.messages > 0
            && self.scan_left > 0
            && self.scan_bytes > 0
    }

    /// Examines the record `r` (the next one at or after `at`): skips a marker or an aborted
    /// record, shows it to the visitor within the limits, or stops before it. Returns whether
    /// the read goes on.
    #[inline(always)]
    fn offer(&mut self, r: &RecordRef<'_>) -> bool {
        let size = r.size as usize;
        self.scan_left = self.scan_left.saturating_sub(1);
        self.scan_bytes = self.scan_bytes.saturating_sub(size as u64);
        if record::is_marker(r.flags as i32) || is_aborted_view(self.aborted, r) {
            self.at = r.offset + 1;
            return self.goes_on();
        }
        let first = self.visited == 0;
        if self.budget.messages == 0 || (!first && size > self.budget.bytes) {
            self.stopped = Some(r.offset);
            return false;
        }
        self.budget.take(size);
        self.visited += 1;
        self.at = r.offset + 1;
        if (self.visit)(r).is_break() {
            self.stopped = Some(self.at);
            return false;
        }
        self.goes_on()
    }
}

/// Runs a read attempt again while a compaction pass moves the partition's generation under it
/// (a pass commits rarely: eight tries, then the missing unit is damage).
fn retry_moved<T>(
    part: &PartitionState,
    offset: u64,
    mut attempt: impl FnMut() -> Result<std::result::Result<T, Moved>>,
) -> Result<T> {
    for _ in 0..=8 {
        if let Ok(v) = attempt()? {
            return Ok(v);
        }
    }
    Err(Error::corrupted(
        part.cq.dir(),
        offset * super::UNIT_SIZE,
        "consume-queue unit missing above the compacted prefix",
    ))
}

/// A read's `OffsetOutOfRange`, with the partition's bounds as they are now.
/// What a read from an offset may show: where it stops (the end, or under `read_committed` the
/// last stable offset, lowered to what the collected aborted transactions decide), the aborted
/// transactions below that, and how many records and bytes it may examine (bounded only when
/// it has aborted records to skip).
struct ReadPlan {
    bound: u64,
    aborted: Aborted,
    scan_left: u64,
    scan_bytes: u64,
}

impl Inner {
    /// The [`ReadPlan`] of a read of `part` from `offset` (out of range is an error), shared by
    /// [`Inner::fetch`] and [`Inner::read_with`] so both show the same records.
    fn plan_read(
        &self,
        topic: &str,
        partition: u32,
        part: &PartitionState,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<ReadPlan> {
        let (start, end) = (
            part.start.load(Ordering::Acquire),
            part.end.load(Ordering::Acquire),
        );
        if offset < start || offset > end {
            return Err(out_of_range(topic, partition, part, offset));
        }
        let committed = limits.isolation == IsolationLevel::ReadCommitted;
        let bound = if committed {
            self.last_stable(part, end)
        } else {
            end
        };
        // A bounded number of entries, read without the index's lock; the bound comes down to
        // what they decide when the cap stopped the collection (see `txn_index`).
        let (aborted, bound) = if committed && offset < bound {
            txn_index::collect(&part.txn_index, offset, bound, txn_index::COLLECT_ENTRIES)?
        } else {
            (Aborted::default(), bound)
        };
        let (scan_left, scan_bytes) = if aborted.is_empty() {
            (u64::MAX, u64::MAX)
        } else {
            limits.tagged_scan()
        };
        Ok(ReadPlan {
            bound,
            aborted,
            scan_left,
            scan_bytes,
        })
    }
}

fn out_of_range(topic: &str, partition: u32, part: &PartitionState, offset: u64) -> Error {
    Error::OffsetOutOfRange {
        topic: topic.to_owned(),
        partition,
        offset,
        start: part.start.load(Ordering::Acquire),
        end: part.end.load(Ordering::Acquire),
    }
}

impl Inner {
    pub(crate) fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Vec<Record>> {
        Ok(self.fetch(topic, partition, offset, limits)?.records)
    }

    /// Every record from `offset` below `upto` within `limits`' counts, markers and aborted
    /// records included (what the engine itself reads: index rebuilds, dumps).
    pub(crate) fn read_raw(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        upto: u64,
        limits: ReadLimits,
    ) -> Result<Vec<Record>> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        retry_moved(part, offset, || {
            self.read_attempt(topic, partition, part, offset, upto, limits)
        })
    }

    /// A read under `limits.isolation` that skips markers (and, read-committed, the records of
    /// aborted transactions) and keeps filling up to its limits past them, examining at most
    /// [`ReadLimits::tagged_scan`] offsets when it skips aborted records (markers are at most
    /// half of what it examines).
    pub(crate) fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Fetch> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        let ReadPlan {
            bound,
            aborted,
            mut scan_left,
            mut scan_bytes,
        } = self.plan_read(topic, partition, part, offset, limits)?;
        let mut budget = Budget {
            messages: limits.max_messages,
            bytes: limits.max_bytes,
        };
        let mut out = Vec::new();
        let mut at = offset;
        while at < bound && budget.messages > 0 && scan_left > 0 && scan_bytes > 0 {
            let chunk = ReadLimits {
                max_messages: (budget.messages as u64).min(scan_left).max(1) as usize,
                max_bytes: budget
                    .bytes
                    .min(scan_bytes.try_into().unwrap_or(usize::MAX)),
                isolation: limits.isolation,
            };
            let mut records = retry_moved(part, at, || {
                self.read_attempt(topic, partition, part, at, bound, chunk)
            })?;
            if records.is_empty() {
                // Nothing left below the bound (compaction removed the rest).
                at = bound;
                break;
            }
            // The usual first round: nothing to skip and everything within the limits it was
            // read under, so its vector is the answer (no record moved a second time).
            if out.is_empty()
                && records.len() <= budget.messages
                && records
                    .iter()
                    .all(|r| !record::is_marker(r.flags() as i32) && !is_aborted(&aborted, r))
            {
                let size: usize = records.iter().map(|r| r.size as usize).sum();
                if size <= budget.bytes || records.len() == 1 {
                    let taken = records.len() as u64;
                    scan_left = scan_left.saturating_sub(taken);
                    scan_bytes = scan_bytes.saturating_sub(size as u64);
                    budget.messages -= records.len();
                    budget.bytes = budget.bytes.saturating_sub(size);
                    at = records[records.len() - 1].offset() + 1;
                    out = std::mem::take(&mut records);
                    continue;
                }
            }
            for r in records {
                let size = r.size as usize;
                scan_left = scan_left.saturating_sub(1);
                scan_bytes = scan_bytes.saturating_sub(size as u64);
                if record::is_marker(r.flags() as i32) || is_aborted(&aborted, &r) {
                    at = r.offset() + 1;
                    continue;
                }
                if !budget.admits(&out, size) || budget.messages == 0 {
                    return Ok(Fetch {
                        records: out,
                        next_offset: r.offset(),
                    });
                }
                budget.take(size);
                at = r.offset() + 1;
                out.push(r);
            }
        }
        Ok(Fetch {
            records: out,
            next_offset: at,
        })
    }

    /// [`LogStore::read_with`](crate::LogStore::read_with): [`fetch`](Self::fetch)'s records
    /// shown to `visit` in place. Above the compacted prefix each record is decoded straight
    /// from the mapped log into a [`RecordRef`] (one file lookup per log file, not per record);
    /// the compacted prefix is read as `fetch` reads it, in rounds of at most
    /// [`VISIT_ROUND`] owned records. Only `Arc`s of the mapped files are held while `visit`
    /// runs, no lock.
    pub(crate) fn read_with(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        visit: &mut Visitor<'_>,
    ) -> Result<ReadProgress> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        // The bound, the aborted transactions and the scan bound exactly as `fetch` has them.
        let ReadPlan {
            bound,
            aborted,
            scan_left,
            scan_bytes,
        } = self.plan_read(topic, partition, part, offset, limits)?;
        let mut v = Visiting {
            visit,
            aborted: &aborted,
            budget: Budget {
                messages: limits.max_messages,
                bytes: limits.max_bytes,
            },
            scan_left,
            scan_bytes,
            visited: 0,
            at: offset,
            stopped: None,
        };
        while v.at < bound && v.goes_on() {
            if v.at < part.clean_end() {
                // Both at least 1: `goes_on` holds.
                let chunk = ReadLimits {
                    max_messages: (v.budget.messages as u64).min(v.scan_left).min(VISIT_ROUND)
                        as usize,
                    max_bytes: v
                        .budget
                        .bytes
                        .min(v.scan_bytes.try_into().unwrap_or(usize::MAX)),
                    isolation: limits.isolation,
                };
                let at = v.at;
                let records = retry_moved(part, at, || {
                    self.read_attempt(topic, partition, part, at, bound, chunk)
                })?;
                if records.is_empty() {
                    v.at = bound;
                    break;
                }
                for r in &records {
                    if !v.offer(&r.view()) {
                        break;
                    }
                }
                continue;
            }
            // Above the prefix every offset has its unit: the walk returns at the bound, where
            // the visitor or the limits stopped it, or where a pass moved the prefix's end past
            // it (then the loop reads on in the prefix).
            retry_moved(part, v.at, || {
                self.visit_units(topic, partition, part, bound, &mut v)
            })?;
        }
        Ok(ReadProgress {
            visited: v.visited,
            next_offset: v.stopped.unwrap_or(v.at),
        })
    }

    /// Walks the consume-queue units from `v.at` below `bound` (and the compacted prefix's
    /// end), decoding each record in place from the mapped log and offering it to `v`, until
    /// `v` stops or the units run out.
    fn visit_units(
        &self,
        topic: &str,
        partition: u32,
        part: &PartitionState,
        bound: u64,
        v: &mut Visiting<'_, '_>,
    ) -> Result<std::result::Result<(), Moved>> {
        let width = UNIT_SIZE as usize;
        // The log file the last record was in, as one zero-copy span from that record to the
        // file's published end: the next records of the file are slices of it.
        let mut span: Option<LogSpan> = None;
        let mut scratch = Vec::new();
        // A span is noted once when it is mapped: without these the pages of a long walk would
        // stay resident behind it.
        let mut notes = ReadNotes::default();
        while v.at < bound && v.goes_on() {
            let first = v.at;
            let out_of_range = || out_of_range(topic, partition, part, first);
            if first < part.clean_end() {
                return Ok(Ok(()));
            }
            let Some((queue_file, pos, run)) =
                part.cq.unit_run(first, (bound - first).min(VISIT_ROUND))?
            else {
                return self
                    .missing_unit(part, first, &out_of_range)
                    .map(|()| Err(Moved));
            };
            let Some(run_bytes) = queue_file.read(pos, run * width) else {
                return self
                    .missing_unit(part, first, &out_of_range)
                    .map(|()| Err(Moved));
            };
            for (k, b) in run_bytes.chunks_exact(width).enumerate() {
                let o = first + k as u64;
                let Some(unit) = Unit::decode(b) else {
                    return self
                        .missing_unit(part, o, &out_of_range)
                        .map(|()| Err(Moved));
                };
                let (file, lo, bytes) =
                    match self.span_covering(part, o, &unit, &mut span, &out_of_range)? {
                        Ok(s) => s,
                        Err(Moved) => return Ok(Err(Moved)),
                    };
                let from = (unit.position - lo) as usize;
                let corrupt = |why: &str| {
                    Error::corrupted(file.path(), unit.position - file.start_offset(), why)
                };
                let r = decode_view(
                    &bytes[from..from + unit.size as usize],
                    &mut scratch,
                    topic,
                    partition,
                    &corrupt,
                )?;
                if r.offset != o {
                    return Err(corrupt("consume-queue unit points at another record"));
                }
                notes.at(file, unit.position);
                if !v.offer(&r) {
                    return Ok(Ok(()));
                }
            }
        }
        Ok(Ok(()))
    }

    /// Every record (markers included) from `offset` below `upto` within `limits`' counts.
    #[allow(clippy::too_many_arguments)]
    fn read_attempt(
        &self,
        topic: &str,
        partition: u32,
        part: &PartitionState,
        offset: u64,
        upto: u64,
        limits: ReadLimits,
    ) -> Result<std::result::Result<Vec<Record>, Moved>> {
        let compacted = part.compacted();
        let clean_end = compacted.as_ref().map_or(0, |c| c.state.clean_end);
        let start = part.start.load(Ordering::Acquire);
        let end = part.end.load(Ordering::Acquire);
        let out_of_range = || out_of_range(topic, partition, part, offset);
        if offset < start || offset > end {
            return Err(out_of_range());
        }
        let end = end.min(upto);
        let mut budget = Budget {
            messages: limits.max_messages,
            bytes: limits.max_bytes,
        };
        let mut out = Vec::new();
        let mut at = offset;
        if let Some(c) = compacted.as_deref()
            && at < clean_end.min(end)
        {
            let upto = clean_end.min(end);
            match self.read_compacted(
                part,
                c,
                topic,
                partition,
                (at, upto),
                &mut budget,
                &mut out,
                &mut Scan::unbounded(None),
            )? {
                Ok(None) => {}
                Ok(Some(_)) => return Ok(Ok(out)),
                Err(Moved) => return Ok(Err(Moved)),
            }
            at = upto;
        }
        if at >= end || budget.messages == 0 {
            return Ok(Ok(out));
        }
        let n = (end - at).min(budget.messages as u64) as usize;
        // Grown as units are accepted, so the allocation follows what the read returns: `n` is
        // the whole backlog when the caller sets no message limit and only `max_bytes` stops it.
        let mut units: Vec<Unit> = Vec::with_capacity(n.min(INITIAL_UNITS));
        let mut bytes = 0usize;
        let first_free = out.is_empty();
        // Units straight from the queue's mapping, one file lookup per run of units (not per
        // unit).
        let stop = at + n as u64;
        let mut o = at;
        'units: while o < stop {
            let Some((queue_file, pos, run)) = part.cq.unit_run(o, stop - o)? else {
                return self
                    .missing_unit(part, o, &out_of_range)
                    .map(|()| Err(Moved));
            };
            let width = UNIT_SIZE as usize;
            let Some(run_bytes) = queue_file.read(pos, run * width) else {
                return self
                    .missing_unit(part, o, &out_of_range)
                    .map(|()| Err(Moved));
            };
            for b in run_bytes.chunks_exact(width) {
                let Some(unit) = Unit::decode(b) else {
                    return self
                        .missing_unit(part, o, &out_of_range)
                        .map(|()| Err(Moved));
                };
                let size = unit.size as usize;
                if !(units.is_empty() && first_free) && bytes + size > budget.bytes {
                    break 'units;
                }
                bytes += size;
                units.push(unit);
                o += 1;
            }
        }
        // Zero-copy: one `Bytes` over each mapped file the read touches (the units of a read are
        // mostly in one file), every record a slice of it — unless the run is sparse in the log
        // (`SPARSE_FACTOR`): then its records are copied into one buffer.
        out.reserve(units.len());
        let mut i = 0;
        while i < units.len() {
            let u = units[i];
            let file = match self.log_file(part, at + i as u64, &u, &out_of_range)? {
                Ok(file) => file,
                Err(Moved) => return Ok(Err(Moved)),
            };
            let base = file.start_offset();
            let file_end = base + file.len() as u64;
            // The run of units in this file, and the byte span covering them.
            let mut j = i;
            let (mut lo, mut hi) = (u.position, u.position);
            while j < units.len() && units[j].position >= base && units[j].position < file_end {
                lo = lo.min(units[j].position);
                hi = hi.max(units[j].position + units[j].size as u64);
                j += 1;
            }
            let run = &units[i..j];
            let payload: u64 = run.iter().map(|u| u64::from(u.size)).sum();
            if hi - lo
                > payload
                    .saturating_mul(SPARSE_FACTOR)
                    .saturating_add(SPARSE_SLACK)
            {
                // Sparse: copied out record by record into one buffer (which a held record then
                // keeps alive, as a chunk of a sealed segment does), the pages behind the read
                // released as it goes (`ReadNotes`).
                let mut buf = bytes::BytesMut::with_capacity(payload as usize);
                let mut notes = ReadNotes::default();
                for u in run {
                    buf.extend_from_slice(notes.record(&file, u)?);
                }
                let owned = buf.freeze();
                let mut from = 0;
                for (k, u) in run.iter().enumerate() {
                    let size = u.size as usize;
                    let pos = u.position;
                    let locate = || (file.path().to_owned(), pos - base);
                    out.push(make_record(
                        &owned,
                        from..from + size,
                        topic,
                        partition,
                        at + (i + k) as u64,
                        locate,
                    )?);
                    from += size;
                }
                i = j;
                continue;
            }
            let span = file
                .published_bytes((lo - base) as usize, (hi - lo) as usize)
                .ok_or_else(|| {
                    Error::corrupted(
                        file.path(),
                        lo - base,
                        "consume-queue unit points past the end of the log",
                    )
                })?;
            for (k, u) in run.iter().enumerate() {
                let from = (u.position - lo) as usize;
                let pos = u.position;
                let locate = || (file.path().to_owned(), pos - base);
                out.push(make_record(
                    &span,
                    from..from + u.size as usize,
                    topic,
                    partition,
                    at + (i + k) as u64,
                    locate,
                )?);
            }
            i = j;
        }
        Ok(Ok(out))
    }

    /// Reads records of the compacted generation `c` with offsets in `[from, upto)` into `out`
    /// within `budget` and `scan` (only records passing `scan.tags`, when set): the first kept
    /// record at or after `from` first. Returns `None` when the read may go on past `upto`,
    /// else the offset where it stopped (the next one to read).
    #[allow(clippy::too_many_arguments)]
    fn read_compacted(
        &self,
        part: &PartitionState,
        c: &Compacted,
        topic: &str,
        partition: u32,
        (from, upto): (u64, u64),
        budget: &mut Budget,
        out: &mut Vec<Record>,
        scan: &mut Scan<'_>,
    ) -> Result<std::result::Result<Option<u64>, Moved>> {
        let reader = match c.open(self.fs.as_ref(), self.max_stored_record()) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Ok(None)),
            // A pass replaced this generation and deleted its files since the read took it.
            Err(e) if super::cleaner::replaced(part, c, &e) => return Ok(Err(Moved)),
            Err(e) => return Err(e),
        };
        let mut scanner = reader.scan_from(reader.seek(from)?);
        loop {
            let pos = scanner.position();
            let Some((chunk, range)) = scanner.next_raw()? else {
                return Ok(Ok(None));
            };
            let locate = || (reader.data_path().to_owned(), pos);
            let r = decode_record(&chunk, range, topic, partition, &locate)?;
            if r.offset < from {
                continue;
            }
            if r.offset >= upto {
                return Ok(Ok(None));
            }
            if scan.left == 0 || scan.bytes_left == 0 {
                return Ok(Ok(Some(r.offset)));
            }
            scan.left -= 1;
            scan.bytes_left = scan.bytes_left.saturating_sub(u64::from(r.size));
            if let Some(tags) = scan.tags
                && !crate::store::tag_matches(tags, r.tags())
            {
                continue;
            }
            if scan.aborted.is_some_and(|a| is_aborted(a, &r)) {
                continue;
            }
            if !budget.admits(out, r.size as usize) {
                return Ok(Ok(Some(r.offset)));
            }
            budget.take(r.size as usize);
            let next = r.offset + 1;
            out.push(r);
            if budget.messages == 0 {
                return Ok(Ok(Some(next)));
            }
        }
    }

    pub(crate) fn read_tagged(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        tags: &[String],
    ) -> Result<TaggedRead> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        // Hashed once per call; a handful of tags, so a linear search beats a set.
        let hashes: Vec<i64> = tags.iter().map(|t| record::tag_hash(t)).collect();
        // Read-committed: nothing at or past the LSO, and no aborted record (markers never
        // match: their units carry a hash no tag has).
        let end = part.end.load(Ordering::Acquire);
        let (bound, aborted) = if limits.isolation == IsolationLevel::ReadCommitted {
            let bound = self.last_stable(part, end);
            if offset < bound {
                let (aborted, bound) =
                    txn_index::collect(&part.txn_index, offset, bound, txn_index::COLLECT_ENTRIES)?;
                (bound, aborted)
            } else {
                (bound, Aborted::default())
            }
        } else {
            (u64::MAX, Aborted::default())
        };
        retry_moved(part, offset, || {
            self.read_tagged_attempt(
                topic, partition, part, offset, limits, tags, &hashes, bound, &aborted,
            )
        })
    }

    /// One attempt of a tagged read: the compacted prefix (if the read starts in it) read and
    /// filtered, then the consume-queue units walked, their tag hashes compared, and only the
    /// records whose hash matches read from the commit log (and checked for their real tag).
    #[allow(clippy::too_many_arguments)]
    fn read_tagged_attempt(
        &self,
        topic: &str,
        partition: u32,
        part: &PartitionState,
        offset: u64,
        limits: ReadLimits,
        tags: &[String],
        hashes: &[i64],
        bound: u64,
        aborted: &Aborted,
    ) -> Result<std::result::Result<TaggedRead, Moved>> {
        let compacted = part.compacted();
        let clean_end = compacted.as_ref().map_or(0, |c| c.state.clean_end);
        let start = part.start.load(Ordering::Acquire);
        let end = part.end.load(Ordering::Acquire);
        let out_of_range = || out_of_range(topic, partition, part, offset);
        if offset < start || offset > end {
            return Err(out_of_range());
        }
        // Read-committed: the LSO (never past the end) bounds the read.
        let end = end.min(bound).max(offset);
        let mut budget = Budget {
            messages: limits.max_messages,
            bytes: limits.max_bytes,
        };
        let mut out = Vec::new();
        let done = |records, next_offset| {
            Ok(Ok(TaggedRead {
                records,
                next_offset,
            }))
        };
        if budget.messages == 0 {
            return done(out, offset);
        }
        let (left, bytes_left) = limits.tagged_scan();
        let mut scan = Scan {
            left,
            bytes_left,
            tags: Some(tags),
            aborted: Some(aborted),
        };
        let mut at = offset;
        if let Some(c) = compacted.as_deref()
            && at < clean_end.min(end)
        {
            let upto = clean_end.min(end);
            match self.read_compacted(
                part,
                c,
                topic,
                partition,
                (at, upto),
                &mut budget,
                &mut out,
                &mut scan,
            )? {
                Ok(None) => {}
                Ok(Some(next)) => return done(out, next),
                Err(Moved) => return Ok(Err(Moved)),
            }
            at = upto;
        }
        // The log file the last matching record was in, as one zero-copy span from that record
        // to the file's published end: later matches near the last one are slices of it.
        let mut span: Option<LogSpan> = None;
        // The log end of the last matching record: a match no further from it than
        // `SPARSE_FACTOR` times its own size is a slice of the span; one further on (a rare
        // tag) is copied out on its own, as a sparse fetch's records are (see `SPARSE_FACTOR`).
        let mut last_end: Option<u64> = None;
        let mut notes = ReadNotes::default();
        while at < end && scan.left > 0 {
            let Some((qfile, qpos, n)) = part.cq.unit_run(at, (end - at).min(scan.left))? else {
                return match self.missing_unit(part, at, &out_of_range) {
                    Err(e) => Err(e),
                    Ok(()) => Ok(Err(Moved)),
                };
            };
            let Some(units) = qfile.read(qpos, n * super::UNIT_SIZE as usize) else {
                return Err(Error::corrupted(
                    qfile.path(),
                    qpos as u64,
                    "consume-queue units vanished under a read",
                ));
            };
            for (k, raw) in units.chunks_exact(super::UNIT_SIZE as usize).enumerate() {
                // The hash is the unit's last 8 bytes: compared in place, nothing decoded or
                // allocated for a unit that does not match.
                let mut h = [0u8; 8];
                h.copy_from_slice(&raw[12..20]);
                if !hashes.contains(&i64::from_be_bytes(h)) {
                    continue;
                }
                let o = at + k as u64;
                let Some(unit) = Unit::decode(raw) else {
                    return match self.missing_unit(part, o, &out_of_range) {
                        Err(e) => Err(e),
                        Ok(()) => Ok(Err(Moved)),
                    };
                };
                let size = unit.size as usize;
                let near = last_end.is_some_and(|e| {
                    unit.position >= e && unit.position - e <= u64::from(unit.size) * SPARSE_FACTOR
                });
                last_end = Some(unit.position + u64::from(unit.size));
                let pos = unit.position;
                let r = if near {
                    let (file, lo, bytes) =
                        match self.span_covering(part, at, &unit, &mut span, &out_of_range)? {
                            Ok(s) => s,
                            Err(Moved) => return Ok(Err(Moved)),
                        };
                    let from = (unit.position - lo) as usize;
                    let base = file.start_offset();
                    let locate = || (file.path().to_owned(), pos - base);
                    make_record(bytes, from..from + size, topic, partition, o, locate)?
                } else {
                    // Far from the last match: copied out, the pages behind the read released
                    // as it goes (`ReadNotes`).
                    let file = match self.log_file(part, o, &unit, &out_of_range)? {
                        Ok(file) => file,
                        Err(Moved) => return Ok(Err(Moved)),
                    };
                    let owned = Bytes::copy_from_slice(notes.record(&file, &unit)?);
                    let base = file.start_offset();
                    let locate = || (file.path().to_owned(), pos - base);
                    make_record(&owned, 0..size, topic, partition, o, locate)?
                };
                // A hash collision: another tag with the same hash; or an aborted record.
                if !crate::store::tag_matches(tags, r.tags()) || is_aborted(aborted, &r) {
                    continue;
                }
                if !budget.admits(&out, size) {
                    return done(out, o);
                }
                budget.take(size);
                out.push(r);
                if budget.messages == 0 {
                    return done(out, o + 1);
                }
            }
            at += n as u64;
            scan.left -= n as u64;
        }
        done(out, at)
    }

    /// What a missing consume-queue unit at `o` means: `Ok(())` when a compaction pass moved
    /// the partition's generation under the read (start again), else an error. Retention and
    /// `delete_before` raise the start before they unlink queue files: a unit that vanished
    /// below the start as it is now was deleted under this read, a normal race the caller
    /// recovers from by seeking; a pass deletes the queue files below its `clean_end` after
    /// committing it, and the read starts again. Anywhere else it is damage.
    fn missing_unit(
        &self,
        part: &PartitionState,
        o: u64,
        out_of_range: &dyn Fn() -> Error,
    ) -> Result<()> {
        if o < part.clean_end() {
            return Ok(());
        }
        if o < part.start.load(Ordering::Acquire) {
            return Err(out_of_range());
        }
        Err(Error::corrupted(
            part.cq.dir(),
            o * super::UNIT_SIZE,
            "missing consume-queue unit below the partition end",
        ))
    }

    /// The log file holding the record of `unit` (queue offset `o`): `Moved` when a pass moved
    /// the generation under the read, out of range when retention removed the file after the
    /// bounds were read, damage when the unit points past the log.
    fn log_file(
        &self,
        part: &PartitionState,
        o: u64,
        unit: &Unit,
        out_of_range: &dyn Fn() -> Error,
    ) -> Result<std::result::Result<Arc<MappedFile>, Moved>> {
        if let Some(file) = self.log.find(unit.position) {
            return Ok(Ok(file));
        }
        if unit.position < self.log.min_offset().unwrap_or(0) {
            if o < part.clean_end() {
                return Ok(Err(Moved));
            }
            return Err(out_of_range());
        }
        Err(Error::corrupted(
            part.cq.dir(),
            o * super::UNIT_SIZE,
            format!(
                "consume-queue unit points at {} past the end of the log",
                unit.position
            ),
        ))
    }

    /// The bytes in `span` that hold `unit`'s record, mapping the log run that holds it into
    /// `span` when the current one does not: `Ok(Err(Moved))` when the record moved (the
    /// caller retries its read).
    fn span_covering<'s>(
        &self,
        part: &PartitionState,
        o: u64,
        unit: &Unit,
        span: &'s mut Option<LogSpan>,
        out_of_range: &dyn Fn() -> Error,
    ) -> Result<std::result::Result<&'s LogSpan, Moved>> {
        let covered = span.as_ref().is_some_and(|(_, lo, b)| {
            unit.position >= *lo && unit.position + u64::from(unit.size) <= lo + b.len() as u64
        });
        if !covered {
            match self.log_span(part, o, unit, out_of_range)? {
                Ok(s) => *span = Some(s),
                Err(Moved) => return Ok(Err(Moved)),
            }
        }
        Ok(span.as_ref().ok_or(Moved))
    }

    /// The log file holding `unit`'s record, and a zero-copy span of it from the record to the
    /// file's published end (with the span's log position).
    fn log_span(
        &self,
        part: &PartitionState,
        o: u64,
        unit: &Unit,
        out_of_range: &dyn Fn() -> Error,
    ) -> Result<std::result::Result<LogSpan, Moved>> {
        let file = match self.log_file(part, o, unit, out_of_range)? {
            Ok(file) => file,
            Err(Moved) => return Ok(Err(Moved)),
        };
        let base = file.start_offset();
        let from = (unit.position - base) as usize;
        let len = file.committed().saturating_sub(from);
        let bytes = file
            .published_bytes(from, len)
            .filter(|_| len >= unit.size as usize)
            .ok_or_else(|| {
                Error::corrupted(
                    file.path(),
                    unit.position - base,
                    "consume-queue unit points past the end of the log",
                )
            })?;
        Ok(Ok((file, unit.position, bytes)))
    }
}
