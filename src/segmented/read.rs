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
use crate::store::{Properties, PropertyEncoding, ReadLimits, Record, range_in};

impl Partition {
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
        if meta.log_damaged {
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
        loop {
            match self.read_once(ctx, offset, end, limits) {
                Err(Error::Corrupted { .. }) if !repaired => {
                    // A garbled index sends the scan to a wrong position: rebuild and retry once.
                    let base = {
                        let st = self.state.lock();
                        let i = st
                            .segments
                            .partition_point(|m| m.base <= offset)
                            .saturating_sub(1);
                        st.segments.get(i).map(|m| m.base)
                    };
                    if let Some(base) = base {
                        self.repair_indexes(ctx, base)?;
                    }
                    repaired = true;
                }
                other => return other,
            }
        }
    }

    fn read_once(
        &self,
        ctx: &Ctx,
        offset: u64,
        end: u64,
        limits: ReadLimits,
    ) -> Result<Vec<Record>> {
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
                return Ok(Vec::new());
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
                return Ok(Vec::new());
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
        Ok(out)
    }

    /// Kafka's `offsetsForTimes` by store time (the batches' LogAppendTime): the first segment
    /// whose newest timestamp reaches `ts`, its time index, then a scan of batch headers.
    pub(crate) fn offset_for_time(&self, ctx: &Ctx, ts: i64) -> Result<Option<u64>> {
        let start = self.start.load(Ordering::Acquire);
        let (meta, handle) = {
            let st = self.state.lock();
            let Some(meta) = st
                .segments
                .iter()
                .find(|m| m.max_timestamp >= ts && m.next_offset > start)
                .cloned()
            else {
                return Ok(None);
            };
            let h = self.handle(ctx, &meta)?;
            (meta, h)
        };
        let (_, from_offset) = index::lookup_time(handle.time_entries(), meta.base, ts);
        let (_, pos) = index::lookup_offset(handle.offset_entries(), meta.base, from_offset);
        let mut pos = u64::from(pos);
        while pos < meta.size {
            let h = handle
                .header_at(pos, meta.size)
                .map_err(|e| Error::corrupted(&handle.log_path, pos, e.reason().to_owned()))?;
            if h.max_timestamp >= ts && h.last_offset() as u64 >= start {
                // With LogAppendTime every record of the batch has the batch's time.
                return Ok(Some((h.base_offset as u64).max(start)));
            }
            pos += h.total_len() as u64;
        }
        Ok(None)
    }
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
