//! The read path: consume-queue units → zero-copy slices of the mapped commit-log files.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::compacted::Compacted;
use super::consume_queue::Unit;
use super::record::{self, Checks, Decoded};
use super::{Inner, PartitionState};
use crate::error::{Error, Result};
use crate::store::{Properties, PropertyEncoding, ReadLimits, Record};

fn unhex(b: &[u8]) -> Option<Vec<u8>> {
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    b.chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

/// Builds a [`Record`] from the stored record at `range` of `span`, checking that it is the
/// record the consume queue said (topic, partition, offset). The record's fields are zero-copy
/// slices of `span`.
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

/// Builds a [`Record`] from the stored record at `range` of `span` with the offset its header
/// carries, checking its topic and partition.
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
    let slice = |part: &[u8]| span.slice_ref(part);
    let mut key = None;
    let mut tags = None;
    let mut tombstone = false;
    for (name, value) in record::iter_raw_properties(d.properties) {
        match name {
            b"__KEY" => key = Some(slice(value)),
            b"__KEYHEX" => {
                key = Some(Bytes::from(
                    unhex(value).ok_or_else(|| corrupt("bad hex key"))?,
                ))
            }
            b"TAGS" => tags = Some(slice(value)),
            b"__TOMBSTONE" => tombstone = true,
            _ => {}
        }
    }
    Ok(Record {
        offset: d.header.queue_offset as u64,
        timestamp: d.header.born_timestamp,
        store_timestamp: d.header.store_timestamp,
        flags: d.header.sys_flag as u32,
        key,
        body: slice(d.body),
        tags,
        properties: Properties::new(slice(d.properties), PropertyEncoding::RocketMq),
        size: d.total_size as u32,
        tombstone,
    })
}

/// Units reserved up front by a read; more are allocated only as they are returned.
const INITIAL_UNITS: usize = 64;

/// Why a read attempt gave up: the partition's compacted generation changed under it (a
/// consume-queue unit or log file it was about to use is gone because a pass moved `clean_end`
/// past it), so it starts again from the new generation.
struct Moved;

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

impl Inner {
    pub(crate) fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Vec<Record>> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        // A pass commits rarely; a read that raced one retries with the new generation.
        let mut tries = 0;
        loop {
            match self.read_attempt(topic, partition, part, offset, limits) {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(Moved)) if tries < 8 => tries += 1,
                Ok(Err(Moved)) => {
                    return Err(Error::corrupted(
                        part.cq.dir(),
                        offset * super::UNIT_SIZE,
                        "consume-queue unit missing above the compacted prefix",
                    ));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn read_attempt(
        &self,
        topic: &str,
        partition: u32,
        part: &PartitionState,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<std::result::Result<Vec<Record>, Moved>> {
        let compacted = part.compacted();
        let clean_end = compacted.as_ref().map_or(0, |c| c.state.clean_end);
        let start = part.start.load(Ordering::Acquire);
        let end = part.end.load(Ordering::Acquire);
        let out_of_range = || Error::OffsetOutOfRange {
            topic: topic.to_owned(),
            partition,
            offset,
            start: part.start.load(Ordering::Acquire),
            end: part.end.load(Ordering::Acquire),
        };
        if offset < start || offset > end {
            return Err(out_of_range());
        }
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
            )? {
                Ok(true) => {}
                Ok(false) => return Ok(Ok(out)),
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
        for o in at..at + n as u64 {
            let Some(unit) = part.cq.unit(o)? else {
                // Retention and `delete_before` raise the start before they unlink queue files:
                // a unit that vanished below the start as it is now was deleted under this read,
                // a normal race the caller recovers from by seeking; a pass deletes the queue
                // files below its `clean_end` after committing it, and the read starts again.
                // Anywhere else it is damage.
                if o < part.clean_end() {
                    return Ok(Err(Moved));
                }
                if o < part.start.load(Ordering::Acquire) {
                    return Err(out_of_range());
                }
                return Err(Error::corrupted(
                    part.cq.dir(),
                    o * super::UNIT_SIZE,
                    "missing consume-queue unit below the partition end",
                ));
            };
            let size = unit.size as usize;
            if !(units.is_empty() && first_free) && bytes + size > budget.bytes {
                break;
            }
            bytes += size;
            units.push(unit);
        }
        // Zero-copy: one `Bytes` over each mapped file the read touches (the units of a read are
        // mostly in one file), every record a slice of it.
        out.reserve(units.len());
        let mut i = 0;
        while i < units.len() {
            let u = units[i];
            let Some(file) = self.log.find(u.position) else {
                if u.position < self.log.min_offset().unwrap_or(0) {
                    if at + (i as u64) < part.clean_end() {
                        return Ok(Err(Moved));
                    }
                    // Retention removed the file after we read the bounds.
                    return Err(out_of_range());
                }
                return Err(Error::corrupted(
                    part.cq.dir(),
                    (at + i as u64) * super::UNIT_SIZE,
                    format!(
                        "consume-queue unit points at {} past the end of the log",
                        u.position
                    ),
                ));
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
            let span = file
                .published_bytes((lo - base) as usize, (hi - lo) as usize)
                .ok_or_else(|| {
                    Error::corrupted(
                        file.path(),
                        lo - base,
                        "consume-queue unit points past the end of the log",
                    )
                })?;
            for (k, u) in units[i..j].iter().enumerate() {
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
    /// within `budget`: the first kept record at or after `from` first. Returns whether the
    /// read may go on past `upto` (the budget was not exhausted here).
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
    ) -> Result<std::result::Result<bool, Moved>> {
        let reader = match c.open(self.fs.as_ref(), self.max_stored_record()) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Ok(true)),
            // A pass replaced this generation and deleted its files since the read took it.
            Err(e) if super::cleaner::replaced(part, c, &e) => return Ok(Err(Moved)),
            Err(e) => return Err(e),
        };
        let mut scan = reader.scan_from(reader.seek(from)?);
        loop {
            let pos = scan.position();
            let Some((chunk, range)) = scan.next_raw()? else {
                return Ok(Ok(true));
            };
            let locate = || (reader.data_path().to_owned(), pos);
            let r = decode_record(&chunk, range, topic, partition, &locate)?;
            if r.offset < from {
                continue;
            }
            if r.offset >= upto {
                return Ok(Ok(true));
            }
            if !budget.admits(out, r.size as usize) {
                return Ok(Ok(false));
            }
            budget.take(r.size as usize);
            out.push(r);
        }
    }
}
