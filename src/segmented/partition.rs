//! One partition of the segmented engine: its directory of segments, appends with rolling,
//! reads through the sparse index, load and crash recovery, retention and `delete_before`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;

use super::batch::{self, BatchHeader};
use super::handles::HandleCache;
use super::index::{self, OFFSET_ENTRY, TIME_ENTRY};
use super::segment::{self, SegmentHandle, SegmentMeta};
use crate::error::{Error, Result};
use crate::io::{self, FileSystem, OpenMode};
use crate::options::SegmentedOptions;
use crate::store::{
    AppendResult, Message, Properties, PropertyEncoding, ReadLimits, Record, range_in,
};

/// What partitions share: the file system, the options and the handle cache.
pub(crate) struct Ctx {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) opts: SegmentedOptions,
    pub(crate) cache: HandleCache,
    /// Set when the store closes; appends check it under the partition lock.
    pub(crate) closed: AtomicBool,
    /// The key index (None when disabled).
    pub(crate) index: Option<crate::index::KeyIndex>,
}

struct PartState {
    /// Oldest first; the last one is active (being appended to).
    segments: Vec<SegmentMeta>,
    last_timestamp: i64,
}

pub(crate) struct Partition {
    pub(crate) uid: u64,
    pub(crate) topic: String,
    pub(crate) id: u32,
    pub(crate) dir: PathBuf,
    state: Mutex<PartState>,
    pub(crate) end: AtomicU64,
    pub(crate) start: AtomicU64,
    pub(crate) durable_end: AtomicU64,
    pub(crate) dirty: AtomicBool,
}

use crate::clock::now_ms;

impl Partition {
    fn handle(&self, ctx: &Ctx, meta: &SegmentMeta) -> Result<Arc<SegmentHandle>> {
        let key = (self.uid, meta.base);
        if let Some(h) = ctx.cache.get(key) {
            return Ok(h);
        }
        let h = SegmentHandle::open(ctx.fs.as_ref(), &self.dir, meta)?;
        Ok(ctx.cache.insert(key, Arc::new(h)))
    }

    /// Appends one encoded batch (base offset and max timestamp are stamped here).
    pub(crate) fn append(
        &self,
        ctx: &Ctx,
        buf: &mut [u8],
        messages: &[Message],
        now: i64,
    ) -> Result<AppendResult> {
        let records = messages.len();
        let mut st = self.state.lock();
        if ctx.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let now = now.max(st.last_timestamp);
        st.last_timestamp = now;
        if st.segments.is_empty() {
            // Files are created on the first append, so idle partitions cost nothing.
            let base = self.end.load(Ordering::Acquire);
            let h =
                SegmentHandle::create(ctx.fs.as_ref(), &self.dir, base, ctx.opts.max_index_bytes)?;
            ctx.cache.insert((self.uid, base), Arc::new(h));
            st.segments.push(SegmentMeta::new(base, now_ms()));
        }
        let active = st
            .segments
            .last()
            .ok_or_else(|| Error::corrupted(&self.dir, 0, "partition has no segment"))?;
        let base_offset = active.next_offset;
        let last_offset = base_offset + records as u64 - 1;
        batch::restamp(buf, base_offset as i64, now);
        let header =
            batch::parse_header(buf).map_err(|e| Error::InvalidArgument(e.reason().into()))?;
        let o = &ctx.opts;
        // The key index must not be able to fail once the batch is in the log.
        if let Some(index) = &ctx.index {
            index.reserve(crate::index::batch_keys(messages), now)?;
        }
        let handle = self.handle(ctx, active)?;
        let full_index = active.index_entries >= handle.offset_capacity()
            || active.time_entries >= handle.time_capacity();
        let roll = active.size > 0
            && (active.size + buf.len() as u64 > o.segment_bytes
                || now_ms() - active.created_ms >= o.segment_ms.as_millis() as i64
                || full_index
                || last_offset - active.base > u64::from(u32::MAX));
        let handle = if roll {
            let fs = ctx.fs.as_ref();
            let new = SegmentHandle::create(fs, &self.dir, base_offset, o.max_index_bytes)?;
            let active = st
                .segments
                .last_mut()
                .ok_or_else(|| Error::corrupted(&self.dir, 0, "no segment"))?;
            segment::seal(fs, &self.dir, &handle, active)?;
            // The next opener maps the trimmed indexes.
            ctx.cache.remove((self.uid, active.base));
            st.segments.push(SegmentMeta::new(base_offset, now_ms()));
            ctx.cache.insert((self.uid, base_offset), Arc::new(new))
        } else {
            handle
        };
        let active = st
            .segments
            .last_mut()
            .ok_or_else(|| Error::corrupted(&self.dir, 0, "no segment"))?;
        handle.append(active, buf, &header, o.index_interval_bytes)?;
        // Keys are indexed before the offsets are published (see the index checkpoint).
        if let Some(index) = &ctx.index {
            for (i, m) in messages.iter().enumerate() {
                index.add(&self.topic, self.id, base_offset + i as u64, now, m)?;
            }
        }
        self.end.store(last_offset + 1, Ordering::Release);
        Ok(AppendResult {
            base_offset,
            last_offset,
        })
    }

    /// Makes the active segment's data durable; returns the offset now durable.
    pub(crate) fn flush(&self, ctx: &Ctx) -> Result<u64> {
        let (end, handle) = {
            let st = self.state.lock();
            let end = self.end.load(Ordering::Acquire);
            let Some(active) = st.segments.last() else {
                return Ok(end);
            };
            (end, self.handle(ctx, active)?)
        };
        handle.sync()?;
        self.durable_end.fetch_max(end, Ordering::AcqRel);
        Ok(end)
    }

    /// Rebuilds the indexes of segment `base` from its log (after a lookup found them wrong).
    fn repair_indexes(&self, ctx: &Ctx, base: u64) -> Result<()> {
        let mut st = self.state.lock();
        let Some(i) = st.segments.iter().position(|m| m.base == base) else {
            return Ok(());
        };
        let meta = st.segments[i].clone();
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
        let (size, next) = (m.size, m.next_offset);
        m.apply_scan(&scan);
        // Only the indexes were rebuilt: the log and its bounds stay as they were.
        m.size = size;
        m.next_offset = next;
        Ok(())
    }

    pub(crate) fn read(&self, ctx: &Ctx, offset: u64, limits: ReadLimits) -> Result<Vec<Record>> {
        let end = self.end.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Acquire);
        if offset < start || offset > end {
            return Err(Error::OffsetOutOfRange {
                topic: self.topic.clone(),
                partition: self.id,
                offset,
                start,
                end,
            });
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
    }
}

/// How to load a partition.
pub(crate) struct LoadSpec<'a> {
    pub(crate) uid: u64,
    pub(crate) topic: &'a str,
    pub(crate) id: u32,
    pub(crate) dir: PathBuf,
    /// The last shutdown was clean: trust the files.
    pub(crate) clean: bool,
    /// Everything before this offset is known durable (unclean opens recover from its segment).
    pub(crate) recovery_point: u64,
    pub(crate) log_start: u64,
}

fn list_segments(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for e in io::list_dir_or_empty(fs, dir).map_err(|e| Error::io(dir, e))? {
        let name = e.name.as_str();
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
        match (io::parse_offset_name(stem), ext) {
            (Some(base), "log") => bases.push(base),
            (Some(_), "index" | "timeindex") => {}
            (_, "tmp") => {
                let p = dir.join(name);
                fs.remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
            _ => {
                return Err(Error::corrupted(
                    dir.join(name),
                    0,
                    "unexpected file in a partition directory",
                ));
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Entries in a preallocated index file: its non-zero prefix, found by binary search with
/// positional reads (entries are never all zero). Also returns the last entry.
fn count_entries(fs: &dyn FileSystem, path: &Path, unit: usize) -> Result<(u64, Option<Vec<u8>>)> {
    let len = fs.file_len(path).map_err(|e| Error::io(path, e))?;
    let f = fs
        .open_file(path, OpenMode::Existing)
        .map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; unit];
    let mut present = |k: u64| -> Result<bool> {
        io::read_exact_at(f.as_ref(), &mut buf, k * unit as u64).map_err(|e| Error::io(path, e))?;
        Ok(buf.iter().any(|&b| b != 0))
    };
    let (mut lo, mut hi) = (0u64, len / unit as u64);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if present(mid)? {
            lo = mid + 1
        } else {
            hi = mid
        }
    }
    if lo == 0 {
        return Ok((0, None));
    }
    let mut last = vec![0u8; unit];
    io::read_exact_at(f.as_ref(), &mut last, (lo - 1) * unit as u64)
        .map_err(|e| Error::io(path, e))?;
    Ok((lo, Some(last)))
}

fn read_tail_entry(fs: &dyn FileSystem, path: &Path, unit: usize) -> Result<Option<Vec<u8>>> {
    let len = fs.file_len(path).map_err(|e| Error::io(path, e))?;
    if len < unit as u64 {
        return Ok(None);
    }
    let f = fs
        .open_file(path, OpenMode::Existing)
        .map_err(|e| Error::io(path, e))?;
    let mut b = vec![0u8; unit];
    io::read_exact_at(f.as_ref(), &mut b, len - len % unit as u64 - unit as u64)
        .map_err(|e| Error::io(path, e))?;
    Ok(Some(b))
}

fn remove_segment_files(fs: &dyn FileSystem, dir: &Path, base: u64) -> Result<()> {
    for p in [
        segment::log_path(dir, base),
        segment::index_path(dir, base),
        segment::time_index_path(dir, base),
    ] {
        io::remove_if_exists(fs, &p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// Opens a partition directory: trusts segments before the recovery point (a clean shutdown
/// trusts all), validates the others batch by batch, truncates at the first invalid batch,
/// removes the segments after it, and rebuilds the indexes of everything it validated.
pub(crate) fn load(ctx: &Ctx, spec: LoadSpec<'_>) -> Result<Partition> {
    let fs = ctx.fs.as_ref();
    let dir = &spec.dir;
    let o = &ctx.opts;
    io::create_dir_durable(fs, dir).map_err(|e| Error::io(dir, e))?;
    let mut bases = list_segments(fs, dir)?;
    let now = now_ms();
    // The first segment that must be validated.
    let recover_from = if spec.clean {
        bases.len()
    } else {
        bases
            .partition_point(|&b| b <= spec.recovery_point)
            .saturating_sub(1)
    };
    let mut metas: Vec<SegmentMeta> = Vec::with_capacity(bases.len());
    let mut i = 0;
    while i < bases.len() {
        let base = bases[i];
        let last = i + 1 == bases.len();
        let lp = segment::log_path(dir, base);
        let size = fs.file_len(&lp).map_err(|e| Error::io(&lp, e))?;
        let oi = segment::index_path(dir, base);
        let ti = segment::time_index_path(dir, base);
        let have_indexes = fs.exists(&oi).map_err(|e| Error::io(&oi, e))?
            && fs.exists(&ti).map_err(|e| Error::io(&ti, e))?;
        let mut meta = SegmentMeta::new(base, now);
        meta.size = size;
        let validate = i >= recover_from || !have_indexes || last;
        if validate {
            let log = fs
                .open_file(&lp, OpenMode::Existing)
                .map_err(|e| Error::io(&lp, e))?;
            let trust_tail = spec.clean && have_indexes && last;
            let scan = if trust_tail {
                None
            } else {
                let trusted_below = if spec.clean { 0 } else { spec.recovery_point };
                // After a crash, skip the part of the segment below the recovery point using
                // its offset index as (checked) hints; otherwise validate from the start.
                let resume = if trusted_below > base && have_indexes {
                    fs.open_file(&oi, OpenMode::Existing).ok().and_then(|idx| {
                        segment::resume_state(
                            log.as_ref(),
                            idx.as_ref(),
                            base,
                            size,
                            o.max_index_bytes,
                            trusted_below,
                        )
                    })
                } else {
                    None
                };
                Some(segment::scan_from(
                    log.as_ref(),
                    base,
                    size,
                    o.index_interval_bytes,
                    o.max_index_bytes,
                    trusted_below,
                    resume.unwrap_or_else(|| segment::ScanResult::start(base)),
                ))
            };
            match scan {
                Some(scan) => {
                    if scan.valid_size < size {
                        // Truncate the first invalid batch and everything after it.
                        log.set_len(scan.valid_size)
                            .map_err(|e| Error::io(&lp, e))?;
                        log.sync_data().map_err(|e| Error::io(&lp, e))?;
                        for &later in &bases[i + 1..] {
                            remove_segment_files(fs, dir, later)?;
                        }
                        fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
                        bases.truncate(i + 1);
                    } else if !spec.clean && scan.next_offset > spec.recovery_point {
                        // What was validated past the recovery point may exist only in the page
                        // cache (a process crash); the recovery point written at open will claim
                        // it, and the next unclean open trusts what it claims.
                        log.sync_data().map_err(|e| Error::io(&lp, e))?;
                    }
                    let sealed = i + 1 < bases.len();
                    segment::write_indexes(fs, dir, base, &scan, sealed, o.max_index_bytes)?;
                    meta.apply_scan(&scan);
                    if sealed {
                        meta.next_offset = bases[i + 1].max(scan.next_offset);
                    }
                    meta.sealed = sealed;
                }
                None => {
                    // Clean shutdown, active segment: count the (preallocated) indexes' entries
                    // with a binary search and scan only past the last offset-index entry.
                    let (o_count, o_last) = count_entries(fs, &oi, OFFSET_ENTRY)?;
                    let (t_count, t_last) = count_entries(fs, &ti, TIME_ENTRY)?;
                    let from = o_last.map_or(0, |e| u64::from(index::offset_at(&e, 0).1));
                    match scan_tail(log.as_ref(), base, from, size) {
                        Some((next, max_ts)) => {
                            let last_ts = t_last.map_or(-1, |e| index::time_at(&e, 0).0);
                            meta.next_offset = next;
                            meta.max_timestamp = max_ts.max(last_ts);
                            meta.index_entries = o_count;
                            meta.time_entries = t_count;
                            meta.bytes_since_index = size - from;
                            meta.last_time_indexed = last_ts;
                        }
                        None => {
                            // The tail does not parse after a "clean" shutdown: recover it.
                            let scan = segment::scan(
                                log.as_ref(),
                                base,
                                size,
                                o.index_interval_bytes,
                                o.max_index_bytes,
                                0,
                            );
                            if scan.valid_size < size {
                                log.set_len(scan.valid_size)
                                    .map_err(|e| Error::io(&lp, e))?;
                                log.sync_data().map_err(|e| Error::io(&lp, e))?;
                            }
                            segment::write_indexes(fs, dir, base, &scan, false, o.max_index_bytes)?;
                            meta.apply_scan(&scan);
                        }
                    }
                    meta.sealed = false;
                }
            }
        } else {
            // Trusted sealed segment: its indexes were trimmed and synced when it was sealed.
            meta.next_offset = bases[i + 1];
            meta.index_entries =
                fs.file_len(&oi).map_err(|e| Error::io(&oi, e))? / OFFSET_ENTRY as u64;
            meta.time_entries =
                fs.file_len(&ti).map_err(|e| Error::io(&ti, e))? / TIME_ENTRY as u64;
            meta.max_timestamp = match read_tail_entry(fs, &ti, TIME_ENTRY)? {
                Some(b) => index::time_at(&b, 0).0,
                None => -1,
            };
            meta.sealed = true;
        }
        metas.push(meta);
        i += 1;
    }
    let end = metas.last().map_or(spec.log_start, |m| m.next_offset);
    let first_base = metas.first().map_or(0, |m| m.base);
    let start = spec.log_start.max(first_base).min(end);
    let last_timestamp = metas.iter().map(|m| m.max_timestamp).max().unwrap_or(-1);
    Ok(Partition {
        uid: spec.uid,
        topic: spec.topic.to_owned(),
        id: spec.id,
        dir: spec.dir,
        state: Mutex::new(PartState {
            segments: metas,
            last_timestamp,
        }),
        end: AtomicU64::new(end),
        start: AtomicU64::new(start),
        durable_end: AtomicU64::new(end),
        dirty: AtomicBool::new(false),
    })
}

/// Scans batch headers from `from` to `size`: the next offset and newest max timestamp, or
/// `None` if a batch does not check out.
fn scan_tail(
    log: &dyn crate::io::StorageFile,
    base: u64,
    from: u64,
    size: u64,
) -> Option<(u64, i64)> {
    let mut pos = from;
    let mut next = base;
    let mut max_ts = -1;
    let mut buf = Vec::new();
    while pos < size {
        let total = segment::read_header(log, pos, size).ok()?.total_len() as u64;
        buf.resize(total as usize, 0);
        io::read_exact_at(log, &mut buf, pos).ok()?;
        let header = batch::check_batch(&buf).ok()?;
        next = header.last_offset() as u64 + 1;
        max_ts = max_ts.max(header.max_timestamp);
        pos += total;
    }
    if from > 0 && next == base {
        return None;
    }
    Some((next, max_ts))
}

impl Partition {
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

    /// Deletes sealed segments past retention; returns how many.
    pub(crate) fn enforce_retention(&self, ctx: &Ctx, now: i64) -> Result<usize> {
        let o = &ctx.opts;
        let mut st = self.state.lock();
        let sealed = st.segments.len().saturating_sub(1);
        let mut n = 0;
        if let Some(r) = o.retention {
            let cutoff = now - r.as_millis() as i64;
            while n < sealed && st.segments[n].max_timestamp < cutoff {
                n += 1;
            }
        }
        if let Some(max) = o.retention_bytes {
            let mut total: u64 = st.segments.iter().map(|m| m.size).sum();
            for m in &st.segments[..n] {
                total -= m.size;
            }
            while n < sealed && total > max && total - st.segments[n].size >= max.min(total) {
                total -= st.segments[n].size;
                n += 1;
                if total <= max {
                    break;
                }
            }
        }
        if n == 0 {
            return Ok(0);
        }
        self.remove_front(ctx, &mut st, n)?;
        Ok(n)
    }

    fn remove_front(&self, ctx: &Ctx, st: &mut PartState, n: usize) -> Result<()> {
        let removed: Vec<SegmentMeta> = st.segments.drain(..n).collect();
        let new_first = st.segments.first().map_or(0, |m| m.base);
        self.start.fetch_max(new_first, Ordering::AcqRel);
        for m in removed {
            ctx.cache.remove((self.uid, m.base));
            remove_segment_files(ctx.fs.as_ref(), &self.dir, m.base)?;
        }
        ctx.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))
    }

    /// Raises the log start offset (already persisted by the caller) and deletes segments wholly
    /// below it.
    pub(crate) fn delete_below_start(&self, ctx: &Ctx) -> Result<()> {
        let start = self.start.load(Ordering::Acquire);
        let mut st = self.state.lock();
        let n = st.segments[..st.segments.len().saturating_sub(1)]
            .iter()
            .take_while(|m| m.next_offset <= start)
            .count();
        if n > 0 {
            let keep = start;
            self.remove_front(ctx, &mut st, n)?;
            self.start.store(
                keep.max(self.start.load(Ordering::Acquire)),
                Ordering::Release,
            );
        }
        Ok(())
    }

    /// Segment files and their sizes, for `disk_usage`.
    pub(crate) fn usage(&self, ctx: &Ctx) -> (u64, u64) {
        let st = self.state.lock();
        let mut files = 0;
        let mut bytes = 0;
        for m in &st.segments {
            for p in [
                segment::log_path(&self.dir, m.base),
                segment::index_path(&self.dir, m.base),
                segment::time_index_path(&self.dir, m.base),
            ] {
                if let Ok(len) = ctx.fs.file_len(&p) {
                    files += 1;
                    bytes += len;
                }
            }
        }
        (files, bytes)
    }

    /// Every batch's checks, offsets increasing, and every index entry against the log.
    pub(crate) fn verify(&self, ctx: &Ctx, problems: &mut Vec<String>) -> Result<(u64, u64)> {
        let metas: Vec<SegmentMeta> = self.state.lock().segments.clone();
        let mut batches = 0u64;
        let mut entries = 0u64;
        let mut prev_last: Option<u64> = None;
        for m in &metas {
            let h = self.handle(ctx, m)?;
            let mut pos = 0u64;
            let mut starts = std::collections::HashMap::new();
            let mut buf = Vec::new();
            while pos < m.size {
                let header = match h.header_at(pos, m.size) {
                    Ok(x) => x,
                    Err(e) => {
                        problems.push(format!(
                            "{}: position {pos}: {}",
                            h.log_path.display(),
                            e.reason()
                        ));
                        break;
                    }
                };
                buf.resize(header.total_len(), 0);
                io::read_exact_at(h.log.as_ref(), &mut buf, pos)
                    .map_err(|e| Error::io(&h.log_path, e))?;
                if let Err(e) = batch::check_batch(&buf) {
                    problems.push(format!(
                        "{}: batch at {pos}: {}",
                        h.log_path.display(),
                        e.reason()
                    ));
                    break;
                }
                if prev_last.is_some_and(|p| header.base_offset as u64 <= p) {
                    problems.push(format!(
                        "{}: batch at {pos} does not follow offset {prev_last:?}",
                        h.log_path.display()
                    ));
                }
                prev_last = Some(header.last_offset() as u64);
                starts.insert(pos, header.last_offset() as u64);
                batches += 1;
                pos += header.total_len() as u64;
            }
            let oi = h.offset_entries();
            if let Err(e) = index::check_offset_index(oi, m.size) {
                problems.push(format!(
                    "{}: {e}",
                    segment::index_path(&self.dir, m.base).display()
                ));
            }
            for k in 0..oi.len() / OFFSET_ENTRY {
                let (rel, p) = index::offset_at(oi, k);
                entries += 1;
                if starts.get(&u64::from(p)) != Some(&(m.base + u64::from(rel))) {
                    problems.push(format!(
                        "{}: entry {k} ({rel}, {p}) does not name a batch",
                        segment::index_path(&self.dir, m.base).display()
                    ));
                }
            }
            if let Err(e) = index::check_time_index(h.time_entries()) {
                problems.push(format!(
                    "{}: {e}",
                    segment::time_index_path(&self.dir, m.base).display()
                ));
            }
            entries += (h.time_entries().len() / TIME_ENTRY) as u64;
        }
        if prev_last.is_some_and(|p| p + 1 != self.end.load(Ordering::Acquire)) {
            problems.push(format!(
                "{}: log ends at {prev_last:?} but the partition end is {}",
                self.dir.display(),
                self.end.load(Ordering::Acquire)
            ));
        }
        Ok((batches, entries))
    }
}
