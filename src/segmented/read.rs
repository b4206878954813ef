//! Reads from a partition through the sparse offset index, time lookups through the time index,
//! and the repair of a segment's indexes when a lookup finds them wrong.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::batch::{self, BatchHeader};
use super::handles::HandleCache;
use super::index;
use super::partition::{Ctx, Partition};
use super::segment::{self, SegmentHandle, SegmentMeta};
use super::txnindex::{self, Aborted};
use crate::error::{Error, Result};
use crate::io::{self, OpenMode};
use crate::store::{
    Fetch, IsolationLevel, Key, Properties, PropertiesRef, PropertyEncoding, ReadLimits,
    ReadProgress, Record, RecordRef, Span, TaggedRead, Visitor, range_in, tag_matches,
};

/// Whether a read skips a whole batch: a control batch (markers are never returned), or a
/// transactional batch of an aborted transaction (`read_committed` only: `aborted` is empty
/// otherwise).
fn skipped(h: &BatchHeader, aborted: &Aborted) -> bool {
    h.is_control()
        || (h.is_transactional()
            && !aborted.is_empty()
            && aborted.contains(h.producer_id, h.base_offset as u64))
}

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
        Ok(self.fetch(ctx, offset, limits)?.records)
    }

    /// The offsets a read under `isolation` may return: `[start, bound)`, with the bound the
    /// end or (`read_committed`) the last stable offset. Out of range below the start or
    /// past the end.
    fn read_bounds(&self, offset: u64, isolation: IsolationLevel) -> Result<u64> {
        let (start, end, last_stable) = self.stable_bounds();
        if offset < start || offset > end {
            return Err(self.out_of_range(offset, start, end));
        }
        Ok(match isolation {
            IsolationLevel::ReadUncommitted => end,
            IsolationLevel::ReadCommitted => last_stable,
        })
    }

    /// [`LogStore::fetch`](crate::LogStore::fetch): rounds of [`read_once`](Self::read_once)
    /// until the limits are met, the bound is reached, or the scan bound of
    /// [`ReadLimits::tagged_scan`] is spent (skipped markers and aborted records count
    /// towards it, so a backlog of aborted data costs one call a bounded amount of work).
    /// `read_committed` collects, per round, the aborted transactions overlapping the segment
    /// the round reads (Kafka's `collectAbortedTxns` up to the end of the fetched data), so a
    /// small fetch reads one or two `.txnindex` files, not every later segment's.
    pub(crate) fn fetch(&self, ctx: &Ctx, offset: u64, limits: ReadLimits) -> Result<Fetch> {
        let mut f = Filling::new(None);
        let next_offset = self.fill(ctx, offset, limits, &mut f)?;
        Ok(Fetch {
            records: f.records,
            next_offset,
        })
    }

    /// [`LogStore::read_with`](crate::LogStore::read_with): [`fetch`](Self::fetch) with each
    /// record shown to `visit` as a view of the batch it was read in (the active segment's
    /// mapping, or a sealed segment's chunk) instead of made into a [`Record`]. A batch is
    /// checked whole (CRC and every record) before any of its records is shown. The partition's
    /// lock is taken only to find each round's segment, never while `visit` runs.
    pub(crate) fn read_with(
        &self,
        ctx: &Ctx,
        offset: u64,
        limits: ReadLimits,
        visit: &mut Visitor<'_>,
    ) -> Result<ReadProgress> {
        let mut f = Filling::new(Some(visit));
        let next_offset = self.fill(ctx, offset, limits, &mut f)?;
        Ok(ReadProgress {
            visited: f.visited,
            next_offset,
        })
    }

    /// The rounds of a fetch into `f`; returns the next offset to read.
    fn fill(&self, ctx: &Ctx, offset: u64, limits: ReadLimits, f: &mut Filling) -> Result<u64> {
        let bound = self.read_bounds(offset, limits.isolation)?;
        if offset >= bound || limits.max_messages == 0 {
            return Ok(offset);
        }
        let committed = limits.isolation == IsolationLevel::ReadCommitted;
        let mut aborted = Aborted::default();
        // Aborts are collected for `[.., covered)`; a round never reads past it.
        let mut covered = offset;
        let (scan_offsets, scan_bytes) = limits.tagged_scan();
        let mut at = offset;
        let mut repaired = false;
        while at < bound
            && !f.full
            && f.taken() < limits.max_messages
            && f.examined < scan_offsets
            && f.read < scan_bytes
        {
            let upper = match committed {
                true => {
                    if at >= covered {
                        covered = self.segment_end_from(at).min(bound);
                        aborted = self.collect_aborted(ctx, at, covered)?;
                    }
                    covered
                }
                false => bound,
            };
            let visited = f.visited;
            match self.read_once(ctx, at, upper, limits, &aborted, f) {
                Ok(next) if next > at => at = next,
                // Nothing left to examine (a segment's end raced the bound): done.
                Ok(_) => break,
                // A visiting read retries only a round that showed nothing: a retry would show
                // the round's records again (a fetch's are dropped with its error).
                Err(Error::Corrupted { .. }) if !repaired && f.visited == visited => {
                    // A garbled index sends the scan to a wrong position: rebuild and retry once.
                    self.repair_indexes_at(ctx, at)?;
                    repaired = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(at)
    }

    /// The end of the segment a read at `offset` reads (the first one ending past it: a read
    /// in a gap goes on to the next segment); `u64::MAX` past the last one.
    fn segment_end_from(&self, offset: u64) -> u64 {
        let st = self.state.lock();
        let i = st.segments.partition_point(|m| m.next_offset <= offset);
        st.segments.get(i).map_or(u64::MAX, |m| m.next_offset)
    }

    /// The aborted transactions overlapping `[offset, bound)`: the transaction indexes of the
    /// segments from `offset`'s on (an abort's marker follows its records), each read once,
    /// up to the first entry whose last stable offset reaches `bound` (see `txnindex`).
    ///
    /// An index found shorter than sampled was swapped for a cleaned segment's meanwhile: the
    /// collection starts over from a fresh sample (a few times; then what was read stands, each
    /// swap having kept every entry whose transaction still has records).
    pub(super) fn collect_aborted(&self, ctx: &Ctx, offset: u64, bound: u64) -> Result<Aborted> {
        let mut tries = 0;
        loop {
            tries += 1;
            if let Some(out) = self.collect_aborted_once(ctx, offset, bound, tries >= 4)? {
                return Ok(out);
            }
        }
    }

    /// One try of `collect_aborted`: `None` when an index was shorter than sampled (unless
    /// `last`).
    fn collect_aborted_once(
        &self,
        ctx: &Ctx,
        offset: u64,
        bound: u64,
        last: bool,
    ) -> Result<Option<Aborted>> {
        let indexes: Vec<(std::path::PathBuf, u64)> = {
            let st = self.state.lock();
            let i = st
                .segments
                .partition_point(|m| m.base <= offset)
                .saturating_sub(1);
            st.segments[i.min(st.segments.len())..]
                .iter()
                .filter(|m| m.txn_entries > 0)
                .map(|m| (self.txn_index_path(ctx, m), m.txn_entries))
                .collect()
        };
        let mut out = Aborted::default();
        for (path, count) in indexes {
            let entries = txnindex::read(ctx.fs.as_ref(), &path, count)?;
            let short = (entries.len() as u64) < count;
            for e in entries {
                if e.last_offset >= offset && e.first_offset < bound {
                    out.add(&e);
                }
                if e.last_stable >= bound {
                    return Ok(Some(out));
                }
            }
            if short && !last {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }

    /// Where segment `m`'s transaction index is now: its `.swap` name while the cleaner
    /// renames a cleaned segment into place, if that name is still there.
    pub(super) fn txn_index_path(&self, ctx: &Ctx, m: &SegmentMeta) -> std::path::PathBuf {
        let p = txnindex::path(&self.dir, m.base);
        if m.swapping {
            let swap = segment::with_suffix(&p, segment::SWAP_SUFFIX);
            if ctx.fs.exists(&swap).unwrap_or(false) {
                return swap;
            }
        }
        p
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
        // Past the bound (read_committed, past the last stable offset): nothing yet.
        let end = self.read_bounds(offset, limits.isolation)?.max(offset);
        let aborted = match limits.isolation {
            IsolationLevel::ReadCommitted if offset < end => {
                self.collect_aborted(ctx, offset, end)?
            }
            _ => Aborted::default(),
        };
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
            match self.read_tagged_once(ctx, at, end, tags, &aborted, &mut t) {
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
        aborted: &Aborted,
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
        let (_, indexed) = index::lookup_offset(&handle.offset_entries(), meta.base, offset);
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
            if skipped(&h, aborted) {
                next = next.max((h.last_offset() as u64 + 1).min(end));
                continue;
            }
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
                t.records.push(make_record(&b, 0, &b, &h, &rv, o));
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

    /// Reads from the segment holding `offset` (or the first after it) into `f`, up to
    /// `bound` and the limits, skipping markers and `aborted` transactions' batches; returns
    /// the offset the read got to: past every offset it examined, returned or skipped.
    fn read_once(
        &self,
        ctx: &Ctx,
        offset: u64,
        bound: u64,
        limits: ReadLimits,
        aborted: &Aborted,
        f: &mut Filling<'_, '_>,
    ) -> Result<u64> {
        // Find the segment holding `offset` (or the first after it, if the offset fell in a gap).
        let (meta, handle) = {
            let st = self.state.lock();
            // Retention may have removed the offset's segment since `read` checked the start;
            // the start moves under this lock, before the segment goes.
            let start = self.start.load(Ordering::Acquire);
            if offset < start {
                let end = self.end.load(Ordering::Acquire);
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
                return Ok(bound);
            };
            let handle = self.handle(ctx, &meta)?;
            (meta, handle)
        };
        let corrupt = |pos: u64, why: &str| Error::corrupted(&handle.log_path, pos, why.to_owned());
        let (indexed_offset, indexed) =
            index::lookup_offset(&handle.offset_entries(), meta.base, offset);
        let indexed_pos = u64::from(indexed);
        if indexed_pos >= meta.size && meta.size > 0 {
            return Err(corrupt(indexed_pos, "index points past the end of the log"));
        }
        // One read covers the skip from the indexed batch to `offset` and what is left of the
        // limits, sized by the segment's mean bytes per offset; the cursor reads on (doubling)
        // if the estimate falls short, so a fetch costs a few reads, not one per batch.
        let messages_left = (limits.max_messages - f.taken()) as u64;
        let bytes_left = limits.max_bytes.saturating_sub(f.bytes) as u64;
        let per_offset = meta
            .size
            .div_ceil(meta.next_offset.saturating_sub(meta.base).max(1))
            .max(1);
        let skip = offset.saturating_sub(indexed_offset);
        let want = skip
            .saturating_add(messages_left)
            .saturating_mul(per_offset)
            .min(
                skip.saturating_mul(per_offset)
                    .saturating_add(bytes_left.saturating_mul(2)),
            )
            .saturating_add(batch::HEADER_LEN as u64);
        let (scan_offsets, scan_bytes) = limits.tagged_scan();
        let mut cursor = BatchCursor::new(&ctx.cache, &handle, meta.size, indexed_pos, want);
        // Room for the records the estimate expects, so a large fetch does not grow its vector
        // by doubling (nor a small one reserve for the limit it will not reach).
        if f.visit.is_none() {
            f.records
                .reserve((want / per_offset).min(messages_left) as usize);
        }
        let mut views = Vec::new();
        let mut next = offset;
        let mut first = true;
        let mut prev_end: Option<u64> = None;
        loop {
            let (pos, h, range) = match cursor.next() {
                Ok(Some(b)) => b,
                Ok(None) => {
                    next = next.max(meta.next_offset);
                    break;
                }
                Err(CursorError::Io(e)) => return Err(Error::io(&handle.log_path, e)),
                Err(CursorError::Batch(pos, e)) => return Err(corrupt(pos, e.reason())),
            };
            // A correct index entry names a batch that starts at or before the target; anything
            // else means the index is wrong.
            if first && pos > 0 && h.base_offset as u64 > offset {
                return Err(corrupt(
                    pos,
                    "offset index names a batch past the target offset",
                ));
            }
            first = false;
            // The base offset lies outside the batch CRC (Kafka's format): one damaged there
            // would move the batch's records to other offsets. Batches follow each other
            // (compaction leaves gaps, never overlaps) and end by the segment's end offset.
            let batch_end = (h.last_offset() as u64).saturating_add(1);
            if h.base_offset < 0
                || prev_end.is_some_and(|e| (h.base_offset as u64) < e)
                || batch_end > meta.next_offset
            {
                return Err(corrupt(pos, "batch base offset out of sequence"));
            }
            prev_end = Some(batch_end);
            if batch_end <= offset {
                // Wholly before `offset`: passed over on its header alone.
                continue;
            }
            // Past the limits before this batch: the next round (or fetch) starts here.
            if f.taken() >= limits.max_messages || (f.taken() > 0 && f.bytes >= limits.max_bytes) {
                f.full = true;
                break;
            }
            // Records slice the chunk itself: no reference taken per batch.
            let at = range.start;
            let b = &cursor.buf[range];
            if skipped(&h, aborted) {
                decode_batch(b, &h, &mut views).map_err(|e| corrupt(pos, e.reason()))?;
                f.examined += h.record_count.max(1) as u64;
                next = next.max(batch_end.min(bound));
                // A backlog of skipped data ends the round at the scan bound (checked again
                // by `fetch`), not at the segment's end.
                if batch_end >= bound
                    || f.examined >= scan_offsets
                    || f.read + cursor.read >= scan_bytes
                {
                    break;
                }
                continue;
            }
            if let Some(visit) = f.visit.as_mut() {
                // Shown only once the whole batch is checked (a visit cannot be taken back):
                // its CRC and every record parsed, the first one's view kept (batches of one
                // appended message hold one record, parsed once); the rest are parsed again
                // as they are shown, which costs less than keeping their views.
                if crc32c::crc32c(&b[21..]) != h.crc {
                    return Err(corrupt(pos, "batch CRC-32C mismatch"));
                }
                let mut p = batch::HEADER_LEN;
                let mut first_view = None;
                for i in 0..h.record_count.max(0) {
                    let rv =
                        batch::parse_record(b, &mut p).map_err(|e| corrupt(pos, e.reason()))?;
                    if rv.offset_delta > h.last_offset_delta {
                        return Err(corrupt(
                            pos,
                            "record offset delta past the batch's last offset",
                        ));
                    }
                    if i == 0 {
                        first_view = Some((rv, p));
                    }
                }
                if p != b.len() {
                    return Err(corrupt(pos, "bytes after the last record"));
                }
                let mut p = batch::HEADER_LEN;
                for _ in 0..h.record_count.max(0) {
                    let rv = match first_view.take() {
                        Some((rv, after)) => {
                            p = after;
                            rv
                        }
                        None => {
                            batch::parse_record(b, &mut p).map_err(|e| corrupt(pos, e.reason()))?
                        }
                    };
                    let o = h.base_offset as u64 + rv.offset_delta as u64;
                    if o < offset {
                        continue;
                    }
                    if o >= bound {
                        f.read += cursor.read;
                        return Ok(bound);
                    }
                    let taken = f.records.len() + f.visited;
                    if taken >= limits.max_messages
                        || (taken > 0 && f.bytes + rv.len > limits.max_bytes)
                    {
                        f.full = true;
                        f.read += cursor.read;
                        return Ok(next);
                    }
                    f.examined += 1;
                    f.bytes += rv.len;
                    f.visited += 1;
                    next = o + 1;
                    if visit(&make_view(b, &h, &rv, o)).is_break() {
                        f.full = true;
                        f.read += cursor.read;
                        return Ok(next);
                    }
                }
                next = next.max(batch_end);
                if batch_end >= bound {
                    break;
                }
                continue;
            }
            // Checked and made into records in one pass (no list of record views in between:
            // its copies were a fifth of a read). The whole batch is checked, also past where
            // the limits stop taking records, and a damaged one takes back what it pushed: no
            // record of it is returned.
            if crc32c::crc32c(&b[21..]) != h.crc {
                return Err(corrupt(pos, "batch CRC-32C mismatch"));
            }
            let mark = f.records.len();
            let damaged = |records: &mut Vec<Record>, why: &str| {
                records.truncate(mark);
                corrupt(pos, why)
            };
            let mut stop = None;
            // `batch::records`, walked here so the parse is inlined into this loop.
            let mut p = batch::HEADER_LEN;
            for _ in 0..h.record_count.max(0) {
                let rv = match batch::parse_record(b, &mut p) {
                    Ok(rv) => rv,
                    Err(e) => return Err(damaged(&mut f.records, e.reason())),
                };
                if rv.offset_delta > h.last_offset_delta {
                    return Err(damaged(
                        &mut f.records,
                        "record offset delta past the batch's last offset",
                    ));
                }
                if stop.is_some() {
                    continue;
                }
                let o = h.base_offset as u64 + rv.offset_delta as u64;
                if o < offset {
                    continue;
                }
                if o >= bound {
                    // Every offset below the bound in this batch was examined.
                    stop = Some(bound);
                    continue;
                }
                if f.records.len() >= limits.max_messages
                    || (!f.records.is_empty() && f.bytes + rv.len > limits.max_bytes)
                {
                    f.full = true;
                    stop = Some(next);
                    continue;
                }
                f.examined += 1;
                f.bytes += rv.len;
                f.records.push(make_record(&cursor.buf, at, b, &h, &rv, o));
                next = o + 1;
            }
            if p != b.len() {
                return Err(damaged(&mut f.records, "bytes after the last record"));
            }
            if let Some(stop) = stop {
                f.read += cursor.read;
                return Ok(stop);
            }
            // Past the whole batch: compaction may have removed its last records.
            next = next.max(batch_end);
            if batch_end >= bound {
                break;
            }
        }
        f.read += cursor.read;
        Ok(next.min(bound))
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
            let (_, from_offset) = index::lookup_time(&handle.time_entries(), meta.base, ts);
            let (_, pos) = index::lookup_offset(&handle.offset_entries(), meta.base, from_offset);
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

/// A fetch's state across rounds: what it returns, and what it examined (offsets, bytes
/// read) against its scan bound.
struct Filling<'v, 'f> {
    /// What a fetch returns; empty when `visit` is set.
    records: Vec<Record>,
    /// A visiting read's visitor, shown each record instead of `records` getting it.
    visit: Option<&'v mut Visitor<'f>>,
    /// Records shown to `visit`.
    visited: usize,
    bytes: usize,
    full: bool,
    examined: u64,
    read: u64,
}

impl<'v, 'f> Filling<'v, 'f> {
    fn new(visit: Option<&'v mut Visitor<'f>>) -> Self {
        Filling {
            records: Vec::new(),
            visit,
            visited: 0,
            bytes: 0,
            full: false,
            examined: 0,
            read: 0,
        }
    }

    /// Records returned or visited so far.
    fn taken(&self) -> usize {
        self.records.len() + self.visited
    }
}

/// A tagged read's state across rounds: what it returned, what is left of its limits and of
/// its scan bound (offsets, bytes).
struct Tagged {
    records: Vec<Record>,
    messages: usize,
    bytes: usize,
    scan: (u64, u64),
    full: bool,
}

/// Why a [`BatchCursor`] stopped: the file failed, or the batch at a position is damaged.
enum CursorError {
    Io(std::io::Error),
    Batch(u64, batch::BatchError),
}

/// Whole batches of one segment's log, from a position up to the segment's size, read in
/// chunks of at most [`CHUNK`] bytes (the first sized by the caller's estimate; a batch larger
/// than a chunk is read whole), so walking a segment costs a read per chunk, not one per batch
/// header. Chunks stay small enough to sit in the CPU's cache between the read that fills one
/// and the decoding of its batches, and to come from the allocator's free lists rather than
/// fresh pages. Batches are handed out as ranges of the current chunk, which records share
/// (zero-copy). A segment not sealed yet is not read at all: its mapping's published bytes up
/// to the segment's size are the one chunk (unless the budget of mappings records may pin is
/// spent: then it is read in chunks like a sealed one).
struct BatchCursor<'a> {
    handle: &'a SegmentHandle,
    size: u64,
    /// Position of the next batch.
    pos: u64,
    /// Whether `buf` is the whole rest of the segment, sliced from its mapping.
    mapped: bool,
    /// The current chunk and the log position it starts at.
    buf: Bytes,
    buf_start: u64,
    next_len: u64,
    /// Bytes read so far.
    read: u64,
}

/// The bytes a [`BatchCursor`] reads at once (a single larger batch is read whole). Measured:
/// 64 KiB chunks decode about twice as fast as one read of a whole 1 MiB fetch, which leaves
/// the cache before it is decoded and faults fresh pages in.
const CHUNK: u64 = 64 << 10;

impl<'a> BatchCursor<'a> {
    fn new(
        cache: &HandleCache,
        handle: &'a SegmentHandle,
        size: u64,
        pos: u64,
        first_len: u64,
    ) -> Self {
        // A segment not sealed yet is mapped: its published bytes up to `size` are one
        // zero-copy span, so the walk makes no system call and copies nothing (issue 16: the
        // copies out of the mapping, and the fresh chunk pages they faulted in, were a third
        // of a sequential read's time).
        // Records slice it and keep the mapping alive while held: past the budget of such
        // pinned mappings (see `handles::LogPins`), the segment is read in copied chunks as a
        // sealed one is.
        let mapped = handle
            .mapped_log()
            .and_then(|w| cache.pin_log(w))
            .and_then(|p| p.published_bytes(pos as usize, size.saturating_sub(pos) as usize));
        BatchCursor {
            handle,
            size,
            pos,
            mapped: mapped.is_some(),
            buf: mapped.unwrap_or_default(),
            buf_start: pos,
            next_len: first_len.clamp(batch::HEADER_LEN as u64, CHUNK),
            read: 0,
        }
    }

    /// The next batch: its position, header (not yet checked against its CRC) and range in
    /// [`buf`](Self::buf); `None` at the segment's end.
    fn next(
        &mut self,
    ) -> std::result::Result<Option<(u64, BatchHeader, std::ops::Range<usize>)>, CursorError> {
        loop {
            let pos = self.pos;
            if pos >= self.size {
                return Ok(None);
            }
            let off = (pos - self.buf_start) as usize;
            let avail = self.buf.len().saturating_sub(off);
            let need = if avail >= batch::HEADER_LEN {
                let h = batch::parse_header(&self.buf[off..off + batch::HEADER_LEN])
                    .map_err(|e| CursorError::Batch(pos, e))?;
                let total = h.total_len() as u64;
                if pos + total > self.size {
                    return Err(CursorError::Batch(pos, batch::BatchError::Truncated));
                }
                if avail as u64 >= total {
                    self.pos += total;
                    if self.mapped {
                        // What the scan bound counts: the bytes walked (nothing is read).
                        self.read += total;
                    }
                    return Ok(Some((pos, h, off..off + total as usize)));
                }
                total
            } else {
                if pos + batch::HEADER_LEN as u64 > self.size {
                    return Err(CursorError::Batch(pos, batch::BatchError::Truncated));
                }
                batch::HEADER_LEN as u64
            };
            // Refill from the batch that did not fit.
            let len = self.next_len.max(need).min(self.size - pos);
            let mut buf = BytesMut::zeroed(len as usize);
            io::read_exact_at(self.handle.log.as_ref(), &mut buf, pos).map_err(CursorError::Io)?;
            self.read += len;
            self.buf = buf.freeze();
            self.buf_start = pos;
            self.next_len = CHUNK;
        }
    }
}

/// [`batch::check_batch`] that keeps what it decodes: the batch's CRC-32C, each record's
/// bounds and offset delta, and the record count, checked once; `views` gets the records.
fn decode_batch(
    b: &[u8],
    h: &BatchHeader,
    views: &mut Vec<batch::RecordView>,
) -> std::result::Result<(), batch::BatchError> {
    views.clear();
    if crc32c::crc32c(&b[21..]) != h.crc {
        return Err(batch::BatchError::Invalid("batch CRC-32C mismatch"));
    }
    for r in batch::records(b, h) {
        let r = r?;
        if r.offset_delta > h.last_offset_delta {
            return Err(batch::BatchError::Invalid(
                "record offset delta past the batch's last offset",
            ));
        }
        views.push(r);
    }
    if views.len() != h.record_count.max(0) as usize {
        return Err(batch::BatchError::Invalid(
            "record count does not match the records",
        ));
    }
    Ok(())
}

/// What [`make_view`] and [`make_record`] both take from the batch header and the record.
struct Shared<'a> {
    timestamp: i64,
    store_timestamp: i64,
    flags: u32,
    /// The value of the record's `TAGS` header, in `b`.
    tags: Option<&'a [u8]>,
}

#[inline(always)]
fn shared_fields<'a>(b: &'a [u8], h: &BatchHeader, rv: &batch::RecordView) -> Shared<'a> {
    let timestamp = h.base_timestamp + rv.timestamp_delta;
    let store_timestamp = if h.attributes & batch::ATTR_LOG_APPEND_TIME != 0 {
        h.max_timestamp
    } else {
        timestamp
    };
    let tags = match rv.header_count {
        0 => None,
        _ => batch::iter_headers(&b[rv.headers.clone()])
            .find(|(k, _)| *k == b"TAGS")
            .and_then(|(_, v)| v),
    };
    Shared {
        timestamp,
        store_timestamp,
        flags: (h.attributes & (batch::ATTR_TRANSACTIONAL | batch::ATTR_CONTROL)) as u32,
        tags,
    }
}

/// The record `rv` of batch `b` as a borrowed view: [`make_record`]'s fields, no reference
/// taken.
#[inline(always)]
fn make_view<'a>(
    b: &'a [u8],
    h: &BatchHeader,
    rv: &batch::RecordView,
    offset: u64,
) -> RecordRef<'a> {
    let Shared {
        timestamp,
        store_timestamp,
        flags,
        tags,
    } = shared_fields(b, h, rv);
    let headers = &b[rv.headers.clone()];
    RecordRef {
        offset,
        timestamp,
        store_timestamp,
        flags,
        size: rv.len as u32,
        tombstone: rv.value.is_none(),
        key: rv.key.clone().map(|k| &b[k]),
        body: rv.value.clone().map_or(&[][..], |v| &b[v]),
        tags,
        properties: PropertiesRef::new(headers, PropertyEncoding::KafkaHeaders),
    }
}

/// The record `rv` of batch `b`, which is `chunk[at..]`: its buffer is one reference to the
/// batch's bytes in `chunk`, its fields ranges of them.
/// Inlined so the record is built in the vector's slot rather than copied there.
#[inline(always)]
fn make_record(
    chunk: &Bytes,
    at: usize,
    b: &[u8],
    h: &BatchHeader,
    rv: &batch::RecordView,
    offset: u64,
) -> Record {
    let Shared {
        timestamp,
        store_timestamp,
        flags,
        tags,
    } = shared_fields(b, h, rv);
    Record {
        offset,
        timestamp,
        store_timestamp,
        flags,
        key: match &rv.key {
            Some(k) => Key::In(Span::of(k.clone())),
            None => Key::None,
        },
        body: match &rv.value {
            Some(v) => Span::of(v.clone()),
            None => Span::default(),
        },
        tags: tags.map(|v| Span::of(range_in(b, v))),
        properties: Properties::new(
            chunk.slice(at..at + b.len()),
            Span::of(rv.headers.clone()),
            PropertyEncoding::KafkaHeaders,
        ),
        size: rv.len as u32,
        tombstone: rv.value.is_none(),
    }
}
