//! Reads from a partition through the sparse offset index, time lookups through the time index,
//! and the repair of a segment's indexes when a lookup finds them wrong.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::batch::{self, BatchHeader};
use super::index;
use super::partition::{Ctx, Partition};
use super::segment;
use crate::error::{Error, Result};
use crate::io::{self, OpenMode};
use crate::store::{
    Properties, PropertyEncoding, ReadLimits, Record, TaggedRead, range_in, tag_matches,
};

impl Partition {
    /// [`repair_indexes`](Self::repair_indexes) of the segment holding `offset`, if any.
    fn repair_indexes_at(&self, ctx: &Ctx, offset: u64) -> Result<()> {
        let base = {
            let st = self.state.lock();
            let i = st
                .segments
                .partition_point(|m| m.base <= offset)
                .saturating_sub(1);
            st.segments.get(i).map(|m| m.base)
        };
        match base {
            Some(base) => self.repair_indexes(ctx, base),
            None => Ok(()),
        }
    }

    /// Rebuilds the indexes of segment `base` from its log (after a lookup found them wrong).
    /// If the log itself is damaged (its scan stops short), the indexes were not the problem:
    /// they are left alone and the segment is marked, so later reads report the damage without
    /// scanning again.
    fn repair_indexes(&self, ctx: &Ctx, base: u64) -> Result<()> {
        let mut st = self.state.lock();
        let Some(i) = st.segments.iter().position(|m| m.base == base) else {
            return Ok(());
        };
        let meta = st.segments[i].clone();
        // A segment the cleaner is renaming into place has fresh indexes of its own.
        if meta.log_damaged || meta.swapping {
            return Ok(());
        }
        let lp = segment::log_path(&self.dir, base);
        let log = ctx
            .fs
            .open_file(&lp, OpenMode::Existing)
            .map_err(|e| Error::io(&lp, e))?;
        let scan = segment::scan(
            log.as_ref(),
            base,
            meta.size,
            ctx.opts.index_interval_bytes,
            ctx.opts.max_index_bytes,
            0,
        );
        if scan.valid_size < meta.size {
            st.segments[i].log_damaged = true;
            return Ok(());
        }
        ctx.cache.remove((self.uid, base));
        segment::write_indexes(
            ctx.fs.as_ref(),
            &self.dir,
            base,
            &scan,
            meta.sealed,
            ctx.opts.max_index_bytes,
        )?;
        let m = &mut st.segments[i];
        let (size, next, max_ts) = (m.size, m.next_offset, m.max_timestamp);
        m.apply_scan(&scan);
        // Only the indexes were rebuilt: the log, its bounds and its newest time stay as they
        // were.
        m.size = size;
        m.next_offset = next;
        m.max_timestamp = max_ts.max(scan.max_timestamp);
        Ok(())
    }

    fn out_of_range(&self, offset: u64, start: u64, end: u64) -> Error {
        Error::OffsetOutOfRange {
            topic: self.topic.clone(),
            partition: self.id,
            offset,
            start,
            end,
        }
    }

    pub(crate) fn read(&self, ctx: &Ctx, offset: u64, limits: ReadLimits) -> Result<Vec<Record>> {
        let end = self.end.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Acquire);
        if offset < start || offset > end {
            return Err(self.out_of_range(offset, start, end));
        }
        if offset == end || limits.max_messages == 0 {
            return Ok(Vec::new());
        }
        let mut repaired = false;
        let mut offset = offset;
        loop {
            match self.read_once(ctx, offset, end, limits) {
                // Compaction leaves gaps: what was read held no record at or after `offset`
                // (batches emptied or ending in removed records, a segment's removed tail), so
                // the read goes on after it. Each round moves `offset` forward.
                Ok((records, next)) if records.is_empty() && next > offset && next < end => {
                    offset = next;
                }
                Ok((records, _)) => return Ok(records),
                Err(Error::Corrupted { .. }) if !repaired => {
                    // A garbled index sends the scan to a wrong position: rebuild and retry once.
                    self.repair_indexes_at(ctx, offset)?;
                    repaired = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`LogStore::read_tagged`](crate::LogStore::read_tagged): batches read as `read` reads
    /// them, each record's `TAGS` header checked in place, and only the matching records made
    /// into [`Record`]s.
    pub(crate) fn read_tagged(
        &self,
        ctx: &Ctx,
        offset: u64,
        limits: ReadLimits,
        tags: &[String],
    ) -> Result<TaggedRead> {
        let end = self.end.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Acquire);
        if offset < start || offset > end {
            return Err(self.out_of_range(offset, start, end));
        }
        let mut t = Tagged {
            records: Vec::new(),
            messages: limits.max_messages,
            bytes: limits.max_bytes,
            scan: limits.tagged_scan(),
            full: false,
        };
        let mut at = offset;
        let mut repaired = false;
        while at < end && t.messages > 0 && !t.full && t.scan.0 > 0 && t.scan.1 > 0 {
            match self.read_tagged_once(ctx, at, end, tags, &mut t) {
                Ok(next) if next > at => at = next,
                // Nothing left to examine (a segment's end raced the bound): done.
                Ok(_) => break,
                Err(Error::Corrupted { .. }) if !repaired && t.records.is_empty() => {
                    self.repair_indexes_at(ctx, at)?;
                    repaired = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(TaggedRead {
            records: t.records,
            next_offset: at,
        })
    }

    /// One round of a tagged read, from the segment holding `offset`: up to [`TAGGED_CHUNK`]
    /// bytes of whole batches read at once and filtered. Returns the offset it got to.
    fn read_tagged_once(
        &self,
        ctx: &Ctx,
        offset: u64,
        end: u64,
        tags: &[String],
        t: &mut Tagged,
    ) -> Result<u64> {
        let (meta, handle) = {
            let st = self.state.lock();
            let start = self.start.load(Ordering::Acquire);
            if offset < start {
                return Err(self.out_of_range(offset, start, end));
            }
            let mut i = st
                .segments
                .partition_point(|m| m.base <= offset)
                .saturating_sub(1);
            while i + 1 < st.segments.len() && st.segments[i].next_offset <= offset {
                i += 1;
            }
            let Some(meta) = st.segments.get(i).cloned() else {
                return Ok(end);
            };
            let handle = self.handle(ctx, &meta)?;
            (meta, handle)
        };
        let corrupt = |pos: u64, why: &str| Error::corrupted(&handle.log_path, pos, why.to_owned());
        let (_, indexed) = index::lookup_offset(handle.offset_entries(), meta.base, offset);
        let mut pos = u64::from(indexed);
        if pos >= meta.size && meta.size > 0 {
            return Err(corrupt(pos, "index points past the end of the log"));
        }
        let indexed_pos = pos;
        let first = loop {
            if pos >= meta.size {
                return Ok(meta.next_offset.min(end).max(offset));
            }
            let h = handle
                .header_at(pos, meta.size)
                .map_err(|e| corrupt(pos, e.reason()))?;
            if pos == indexed_pos && pos > 0 && h.base_offset as u64 > offset {
                return Err(corrupt(
                    pos,
                    "offset index names a batch past the target offset",
                ));
            }
            if h.last_offset() as u64 >= offset {
                break pos;
            }
            pos += h.total_len() as u64;
        };
        // Whole batches, within the scan bound and one chunk (at least one batch).
        let cap = t.scan.1.min(TAGGED_CHUNK);
        let mut span_end = first;
        let mut examined = 0u64;
        while span_end < meta.size {
            let h = handle
                .header_at(span_end, meta.size)
                .map_err(|e| corrupt(span_end, e.reason()))?;
            if span_end > first
                && (examined >= t.scan.0 || span_end - first + h.total_len() as u64 > cap)
            {
                break;
            }
            examined +=
                (h.last_offset() as u64 + 1).saturating_sub(offset.max(h.base_offset as u64));
            span_end += h.total_len() as u64;
            if h.last_offset() as u64 + 1 >= end {
                break;
            }
        }
        let mut buf = BytesMut::zeroed((span_end - first) as usize);
        io::read_exact_at(handle.log.as_ref(), &mut buf, first)
            .map_err(|e| Error::io(&handle.log_path, e))?;
        let buf = buf.freeze();
        t.scan.1 = t.scan.1.saturating_sub(buf.len() as u64);
        let mut at = 0usize;
        let mut next = offset;
        while at < buf.len() {
            let h = batch::check_batch(&buf[at..])
                .map_err(|e| corrupt(first + at as u64, e.reason()))?;
            let b = buf.slice(at..at + h.total_len());
            at += h.total_len();
            for rv in batch::records(&b, &h) {
                let rv = rv.map_err(|e| corrupt(first, e.reason()))?;
                let o = h.base_offset as u64 + rv.offset_delta as u64;
                if o < offset || o >= end {
                    continue;
                }
                if t.scan.0 == 0 {
                    return Ok(next);
                }
                t.scan.0 -= 1;
                let tag = batch::iter_headers(&b[rv.headers.clone()])
                    .find(|(k, _)| *k == b"TAGS")
                    .and_then(|(_, v)| v)
                    .and_then(|v| std::str::from_utf8(v).ok());
                if !tag_matches(tags, tag) {
                    next = o + 1;
                    continue;
                }
                if !t.records.is_empty() && rv.len > t.bytes {
                    t.full = true;
                    return Ok(o);
                }
                t.bytes = t.bytes.saturating_sub(rv.len);
                t.messages -= 1;
                t.records.push(make_record(&b, &h, &rv, o));
                next = o + 1;
                if t.messages == 0 {
                    return Ok(next);
                }
            }
            // Past the whole batch: compaction may have removed its last records.
            next = next.max(h.last_offset() as u64 + 1);
        }
        if span_end >= meta.size {
            next = next.max(meta.next_offset);
        }
        Ok(next.min(end))
    }

    /// Reads from the segment holding `offset`; returns the records and the offset the read
    /// got to (where a read that found nothing goes on).
    fn read_once(
        &self,
        ctx: &Ctx,
        offset: u64,
        end: u64,
        limits: ReadLimits,
    ) -> Result<(Vec<Record>, u64)> {
        // Find the segment holding `offset` (or the first after it, if the offset fell in a gap).
        let (meta, handle) = {
            let st = self.state.lock();
            // Retention may have removed the offset's segment since `read` checked the start;
            // the start moves under this lock, before the segment goes.
            let start = self.start.load(Ordering::Acquire);
            if offset < start {
                return Err(self.out_of_range(offset, start, end));
            }
            let mut i = st
                .segments
                .partition_point(|m| m.base <= offset)
                .saturating_sub(1);
            while i + 1 < st.segments.len() && st.segments[i].next_offset <= offset {
                i += 1;
            }
            let Some(meta) = st.segments.get(i).cloned() else {
                return Ok((Vec::new(), end));
            };
            let handle = self.handle(ctx, &meta)?;
            (meta, handle)
        };
        let corrupt = |pos: u64, why: &str| Error::corrupted(&handle.log_path, pos, why.to_owned());
        let (_, indexed) = index::lookup_offset(handle.offset_entries(), meta.base, offset);
        let mut pos = u64::from(indexed);
        if pos >= meta.size && meta.size > 0 {
            return Err(corrupt(pos, "index points past the end of the log"));
        }
        // Skip batches wholly before `offset`. A correct index entry names a batch that starts
        // at or before the target; anything else means the index is wrong.
        let indexed_pos = pos;
        let first = loop {
            if pos >= meta.size {
                return Ok((Vec::new(), meta.next_offset));
            }
            let h = handle
                .header_at(pos, meta.size)
                .map_err(|e| corrupt(pos, e.reason()))?;
            if pos == indexed_pos && pos > 0 && h.base_offset as u64 > offset {
                return Err(corrupt(
                    pos,
                    "offset index names a batch past the target offset",
                ));
            }
            if h.last_offset() as u64 >= offset {
                break pos;
            }
            pos += h.total_len() as u64;
        };
        // Decide the span to read: whole batches until the limits are met.
        let mut span_end = first;
        let mut records = 0u64;
        let mut scanned_to = offset;
        while span_end < meta.size {
            let h = handle
                .header_at(span_end, meta.size)
                .map_err(|e| corrupt(span_end, e.reason()))?;
            let useful =
                (h.last_offset() as u64 + 1).saturating_sub(offset.max(h.base_offset as u64));
            if span_end > first
                && (records >= limits.max_messages as u64
                    || span_end - first + h.total_len() as u64 > limits.max_bytes as u64)
            {
                break;
            }
            records += useful.min(h.record_count as u64);
            span_end += h.total_len() as u64;
            scanned_to = h.last_offset() as u64 + 1;
            if h.last_offset() as u64 + 1 >= end {
                break;
            }
        }
        let mut buf = BytesMut::zeroed((span_end - first) as usize);
        io::read_exact_at(handle.log.as_ref(), &mut buf, first)
            .map_err(|e| Error::io(&handle.log_path, e))?;
        let buf = buf.freeze();
        let mut out = Vec::with_capacity((records as usize).min(limits.max_messages));
        let mut at = 0usize;
        let mut bytes = 0usize;
        'batches: while at < buf.len() {
            let h = batch::check_batch(&buf[at..])
                .map_err(|e| corrupt(first + at as u64, e.reason()))?;
            let b = buf.slice(at..at + h.total_len());
            at += h.total_len();
            for rv in batch::records(&b, &h) {
                let rv = rv.map_err(|e| corrupt(first, e.reason()))?;
                let o = h.base_offset as u64 + rv.offset_delta as u64;
                if o < offset || o >= end {
                    continue;
                }
                if out.len() >= limits.max_messages
                    || (!out.is_empty() && bytes + rv.len > limits.max_bytes)
                {
                    break 'batches;
                }
                bytes += rv.len;
                out.push(make_record(&b, &h, &rv, o));
            }
        }
        if span_end >= meta.size {
            scanned_to = scanned_to.max(meta.next_offset);
        }
        Ok((out, scanned_to))
    }

    /// Kafka's `offsetsForTimes` by store time (the batches' LogAppendTime): the first segment
    /// whose newest timestamp reaches `ts`, its time index, then a scan of batch headers. The
    /// answer is the first record at or after the start in the first batch that reaches `ts`
    /// (with LogAppendTime every record of a batch has the batch's time); batches and segments
    /// that compaction emptied are passed over.
    pub(crate) fn offset_for_time(&self, ctx: &Ctx, ts: i64) -> Result<Option<u64>> {
        let start = self.start.load(Ordering::Acquire);
        let mut from_base: Option<u64> = None;
        loop {
            let (meta, handle) = {
                let st = self.state.lock();
                let Some(meta) = st
                    .segments
                    .iter()
                    .find(|m| {
                        m.max_timestamp >= ts
                            && m.next_offset > start
                            && from_base.is_none_or(|b| m.base > b)
                    })
                    .cloned()
                else {
                    return Ok(None);
                };
                let h = self.handle(ctx, &meta)?;
                (meta, h)
            };
            from_base = Some(meta.base);
            let corrupt =
                |pos: u64, why: &str| Error::corrupted(&handle.log_path, pos, why.to_owned());
            let (_, from_offset) = index::lookup_time(handle.time_entries(), meta.base, ts);
            let (_, pos) = index::lookup_offset(handle.offset_entries(), meta.base, from_offset);
            let mut pos = u64::from(pos);
            while pos < meta.size {
                let h = handle
                    .header_at(pos, meta.size)
                    .map_err(|e| corrupt(pos, e.reason()))?;
                if h.max_timestamp >= ts && h.last_offset() as u64 >= start {
                    if h.record_count as i64 == i64::from(h.last_offset_delta) + 1 {
                        // Every offset of the batch holds a record.
                        return Ok(Some((h.base_offset as u64).max(start)));
                    }
                    // Compacted: the first record the batch still holds at or after the start.
                    let mut buf = vec![0u8; h.total_len()];
                    io::read_exact_at(handle.log.as_ref(), &mut buf, pos)
                        .map_err(|e| Error::io(&handle.log_path, e))?;
                    let h = batch::check_batch(&buf).map_err(|e| corrupt(pos, e.reason()))?;
                    for rv in batch::records(&buf, &h) {
                        let rv = rv.map_err(|e| corrupt(pos, e.reason()))?;
                        let o = h.base_offset as u64 + rv.offset_delta as u64;
                        if o >= start {
                            return Ok(Some(o));
                        }
                    }
                }
                pos += h.total_len() as u64;
            }
        }
    }
}

/// Bytes of batches a tagged read reads at once.
const TAGGED_CHUNK: u64 = 4 << 20;

/// A tagged read's state across rounds: what it returned, what is left of its limits and of
/// its scan bound (offsets, bytes).
struct Tagged {
    records: Vec<Record>,
    messages: usize,
    bytes: usize,
    scan: (u64, u64),
    full: bool,
}

fn make_record(b: &Bytes, h: &BatchHeader, rv: &batch::RecordView, offset: u64) -> Record {
    let timestamp = h.base_timestamp + rv.timestamp_delta;
    let store_timestamp = if h.attributes & batch::ATTR_LOG_APPEND_TIME != 0 {
        h.max_timestamp
    } else {
        timestamp
    };
    let headers = &b[rv.headers.clone()];
    let tags = batch::iter_headers(headers)
        .find(|(k, _)| *k == b"TAGS")
        .and_then(|(_, v)| v)
        .map(|v| b.slice(range_in(b, v)));
    Record {
        offset,
        timestamp,
        store_timestamp,
        flags: (h.attributes & (batch::ATTR_TRANSACTIONAL | batch::ATTR_CONTROL)) as u32,
        key: rv.key.clone().map(|r| b.slice(r)),
        body: rv.value.clone().map(|r| b.slice(r)).unwrap_or_default(),
        tags,
        properties: Properties::new(b.slice(rv.headers.clone()), PropertyEncoding::KafkaHeaders),
        size: rv.len as u32,
        tombstone: rv.value.is_none(),
    }
}
