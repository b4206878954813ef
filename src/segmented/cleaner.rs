//! The log cleaner of one partition (Kafka's `Cleaner`): one pass dedupes the log by key and
//! swaps the cleaned segments in.
//!
//! A pass, as in Kafka:
//! 1. **Sections.** The *cleanable* part is the run of sealed segments from the log start that
//!    stops at the first segment that is active, pending (rolled, not sealed yet), still being
//!    swapped in, or holds a record newer than `min_compaction_lag`. Below the partition's clean
//!    end (`cleaner-offset-checkpoint`) it is *clean*; from there on it is *dirty*.
//! 2. **Offset map.** Key → latest offset over the dirty section, in an
//!    [`OffsetMap`] of at most `offset_map_bytes`. A full map ends the section at the offset it
//!    reached (the *dirty end*); the next pass goes on from there.
//! 3. **Recopy.** Every segment from the log start through the dirty end, in groups of adjacent
//!    segments whose logs add up to at most `segment_bytes` (and whose indexes and offset span
//!    fit), is recopied into `<first base>.log.cleaned` (+ indexes), dropping each record below
//!    the dirty end whose key the map holds at a higher offset, and each tombstone (key, null
//!    value) whose store time is more than `delete_retention` before the pass started. Records
//!    without a key are kept; records at or past the dirty end are kept. Batches keep their base
//!    and last offsets ([`batch::filter_batch`]); a batch left with no record disappears, except
//!    the group's last batch, kept empty, so a cleaned segment always ends at the last offset of
//!    the segments it replaces (what an open reads to finish an interrupted swap), and each
//!    idempotent producer's last batch, kept empty too, so its producer state can still be
//!    rebuilt from the log (Kafka's cleaner keeps it for the same reason).
//! 4. **Swap**, per group, under the partition's `seal_lock` (retention and `delete_before`
//!    take it too, so neither changes the segment list under a swap): `.cleaned` files synced,
//!    renamed to `.swap`, directory synced — the commit point; the partition's segment list
//!    takes the new segment (a brief hold of the state lock, no I/O under it); the replaced
//!    segments' files are deleted; the indexes and then the log are renamed to their final
//!    names, the directory synced after each step. Readers holding the old segments' handles
//!    keep reading the old files (open descriptors and mappings outlive the names), and a
//!    handle opened meanwhile opens each new file by its `.swap` name or, once renamed, its
//!    final one ([`SegmentMeta::swapping`]).
//!
//! An open (`load.rs`) deletes `.cleaned` files and finishes any `.swap` (Kafka's
//! `LogLoader`), so a crash anywhere leaves the old segments or the new one, never a mix.
//! The clean end moves only after every group of the pass is swapped in; the store persists it
//! after the pass.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::batch::{self, BatchHeader, HEADER_LEN};
use super::partition::{Ctx, Partition, remove_segment_files};
use super::segment::{self, CLEANED_SUFFIX, SWAP_SUFFIX, ScanResult, SegmentHandle, SegmentMeta};
use super::txnindex::{self, Aborted};
use crate::clock::ms_before;
use crate::error::{Error, Result};
use crate::index::offset_map::OffsetMap;
use crate::io::{self, FileSystem, OpenMode, StorageFile};
use crate::store::TxnMarker;

/// Bytes read or written per I/O by the cleaner (Kafka's `log.cleaner.io.buffer.size`, 512
/// KiB); a batch larger than this is read whole.
const IO_BUFFER: usize = 512 << 10;

/// What one pass over one partition needs to know.
#[derive(Clone, Debug)]
pub(crate) struct CleanConfig {
    /// A cleaned group's log stays at most this big (the topic's segment size).
    pub(crate) segment_bytes: u64,
    /// Segments holding records newer than this are not cleaned.
    pub(crate) min_compaction_lag: Duration,
    /// Tombstones older than this (by store time) when the pass starts are removed.
    pub(crate) delete_retention: Duration,
    /// Bound of the offset map.
    pub(crate) offset_map_bytes: usize,
    /// Read plus write rate of the pass (`None`: unthrottled).
    pub(crate) io_bytes_per_sec: Option<u64>,
    /// Clean only when dirty bytes / cleanable bytes reach this (`None`: anything dirty).
    pub(crate) min_dirty_ratio: Option<f64>,
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PassReport {
    pub(crate) records_removed: u64,
    pub(crate) tombstones_removed: u64,
    /// Log bytes of the replaced segments.
    pub(crate) bytes_before: u64,
    /// Log bytes of the segments that replaced them.
    pub(crate) bytes_after: u64,
}

/// The sections a pass works on.
struct Plan {
    /// The cleanable segments, log start first.
    segments: Vec<SegmentMeta>,
    first_dirty: u64,
    /// End of the cleanable section (the first offset a pass may not judge).
    uncleanable: u64,
}

/// Kafka's `Throttler`: sleeps so that bytes moved stay under the rate.
struct Throttle {
    rate: Option<u64>,
    began: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(rate: Option<u64>) -> Throttle {
        Throttle {
            rate: rate.filter(|&r| r > 0),
            began: Instant::now(),
            bytes: 0,
        }
    }

    fn moved(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            let elapsed = self.began.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
}

/// Reads a segment's batches in order through one buffer of [`IO_BUFFER`] bytes (larger only
/// for a larger batch), checking each one.
struct BatchReader<'a> {
    file: &'a dyn StorageFile,
    path: &'a Path,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    /// File position of `buf[0]`, and how many bytes of `buf` hold data.
    buf_at: u64,
    filled: usize,
}

impl<'a> BatchReader<'a> {
    fn new(handle: &'a SegmentHandle, size: u64) -> BatchReader<'a> {
        BatchReader {
            file: handle.log.as_ref(),
            path: &handle.log_path,
            size,
            pos: 0,
            buf: Vec::new(),
            buf_at: 0,
            filled: 0,
        }
    }

    /// Makes `[at, at + len)` available in the buffer; returns the bytes read from disk.
    fn ensure(&mut self, at: u64, len: usize) -> Result<u64> {
        if at >= self.buf_at && at + len as u64 <= self.buf_at + self.filled as u64 {
            return Ok(0);
        }
        let want = (len.max(IO_BUFFER) as u64).min(self.size - at) as usize;
        if want < len {
            return Err(Error::corrupted(
                self.path,
                at,
                "batch extends past the end of the segment",
            ));
        }
        self.buf.resize(want, 0);
        io::read_exact_at(self.file, &mut self.buf[..want], at)
            .map_err(|e| Error::io(self.path, e))?;
        self.buf_at = at;
        self.filled = want;
        Ok(want as u64)
    }

    /// The next batch, checked.
    fn next(&mut self) -> Result<Option<NextBatch<'_>>> {
        if self.pos >= self.size {
            return Ok(None);
        }
        let at = self.pos;
        let mut read = self.ensure(at, HEADER_LEN.min((self.size - at) as usize))?;
        let off = (at - self.buf_at) as usize;
        let header = batch::parse_header(&self.buf[off..self.filled])
            .map_err(|e| Error::corrupted(self.path, at, e.reason()))?;
        let total = header.total_len();
        read += self.ensure(at, total)?;
        let off = (at - self.buf_at) as usize;
        let bytes = &self.buf[off..off + total];
        let header =
            batch::check_batch(bytes).map_err(|e| Error::corrupted(self.path, at, e.reason()))?;
        self.pos = at + total as u64;
        Ok(Some(NextBatch {
            pos: at,
            header,
            bytes,
            read,
        }))
    }
}

/// A batch from [`BatchReader::next`].
struct NextBatch<'a> {
    /// Position in the segment's log.
    pos: u64,
    header: BatchHeader,
    bytes: &'a [u8],
    /// Bytes read from disk to get it (0 when it was in the buffer already).
    read: u64,
}

/// The time a batch's records were stored: the batch's append time under LogAppendTime (how
/// duolog writes), else the record's own timestamp.
fn store_timestamp(h: &BatchHeader, timestamp_delta: i64) -> i64 {
    if h.attributes & batch::ATTR_LOG_APPEND_TIME != 0 {
        h.max_timestamp
    } else {
        h.base_timestamp.wrapping_add(timestamp_delta)
    }
}

/// A segment's files with a suffix (`.cleaned`, `.swap`), log last: indexes, time index,
/// transaction index (present only when the segment holds an abort), log.
fn suffixed(dir: &Path, base: u64, suffix: &str) -> [(PathBuf, PathBuf); 4] {
    [
        segment::index_path(dir, base),
        segment::time_index_path(dir, base),
        txnindex::path(dir, base),
        segment::log_path(dir, base),
    ]
    .map(|p| (segment::with_suffix(&p, suffix), p))
}

/// Renames `from` to `to`; a missing `from` (a segment without a transaction index) is
/// nothing to rename, and `to` is removed then (no stale index of the old segment stays).
fn rename_optional(fs: &dyn FileSystem, from: &Path, to: &Path) -> Result<()> {
    if fs.exists(from).map_err(|e| Error::io(from, e))? {
        fs.rename(from, to).map_err(|e| Error::io(from, e))
    } else {
        io::remove_if_exists(fs, to)
            .map(|_| ())
            .map_err(|e| Error::io(to, e))
    }
}

fn remove_all(fs: &dyn FileSystem, paths: &[(PathBuf, PathBuf); 4]) -> Result<()> {
    for (p, _) in paths {
        io::remove_if_exists(fs, p).map_err(|e| Error::io(p, e))?;
    }
    Ok(())
}

fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

impl Partition {
    /// The cleanable and dirty sections now, or `None` when there is nothing to clean (or
    /// too little: under `min_dirty_ratio`).
    fn plan(&self, cfg: &CleanConfig, now: i64) -> Option<Plan> {
        let st = self.state.lock();
        let lag_cutoff = ms_before(now, cfg.min_compaction_lag);
        // Nothing at or past the last stable offset is cleaned (Kafka's first uncleanable
        // offset): an open transaction's records may still be aborted.
        let last_stable = st.producers.last_stable(
            self.start.load(Ordering::Acquire),
            self.end.load(Ordering::Acquire),
        );
        let n = st
            .segments
            .iter()
            .take_while(|m| {
                m.sealed
                    && !m.swapping
                    && m.max_timestamp <= lag_cutoff
                    && m.next_offset <= last_stable
            })
            .count()
            .min(st.segments.len().saturating_sub(1));
        let segments = st.segments[..n].to_vec();
        drop(st);
        let (first, last) = (segments.first()?, segments.last()?);
        let uncleanable = last.next_offset;
        let first_dirty = self.clean_end.load(Ordering::Acquire).max(first.base);
        if first_dirty >= uncleanable {
            // Nothing dirty, but a tombstone an earlier pass kept may have expired since: a
            // pass with an empty dirty section removes it (Kafka's delete-horizon cleaning).
            let due = self.tombstone_due.load(Ordering::Acquire);
            if due < ms_before(now, cfg.delete_retention) {
                return Some(Plan {
                    segments,
                    first_dirty: uncleanable,
                    uncleanable,
                });
            }
            return None;
        }
        if let Some(ratio) = cfg.min_dirty_ratio {
            let total: u64 = segments.iter().map(|m| m.size).sum();
            let dirty: u64 = segments
                .iter()
                .filter(|m| m.next_offset > first_dirty)
                .map(|m| m.size)
                .sum();
            if total == 0 || (dirty as f64) < ratio * total as f64 {
                return None;
            }
        }
        Some(Plan {
            segments,
            first_dirty,
            uncleanable,
        })
    }

    /// Dirty bytes / cleanable bytes (Kafka's dirty ratio); 0 when nothing is cleanable.
    pub(crate) fn dirty_ratio(&self, cfg: &CleanConfig, now: i64) -> f64 {
        let Some(plan) = self.plan(
            &CleanConfig {
                min_dirty_ratio: None,
                ..cfg.clone()
            },
            now,
        ) else {
            return 0.0;
        };
        let total: u64 = plan.segments.iter().map(|m| m.size).sum();
        let dirty: u64 = plan
            .segments
            .iter()
            .filter(|m| m.next_offset > plan.first_dirty)
            .map(|m| m.size)
            .sum();
        if total == 0 {
            0.0
        } else {
            dirty as f64 / total as f64
        }
    }

    /// Ends a pass early when the store closes or the topic is deleted.
    fn check_cleanable(&self, ctx: &Ctx) -> Result<()> {
        if ctx.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::UnknownTopic(self.topic.clone()));
        }
        Ok(())
    }

    /// The segment based at `base` and its handle, if it is still in the partition.
    fn live_segment(
        &self,
        ctx: &Ctx,
        base: u64,
    ) -> Result<Option<(SegmentMeta, Arc<SegmentHandle>)>> {
        let st = self.state.lock();
        match st.segments.binary_search_by_key(&base, |m| m.base) {
            Ok(i) => {
                let m = st.segments[i].clone();
                let h = self.handle(ctx, &m)?;
                Ok(Some((m, h)))
            }
            Err(_) => Ok(None),
        }
    }

    /// One cleaning pass (see the module docs). `Ok(None)`: nothing was cleaned (nothing
    /// dirty, under the ratio, or retention removed a segment the pass was reading).
    pub(crate) fn clean(
        &self,
        ctx: &Ctx,
        cfg: &CleanConfig,
        now: i64,
    ) -> Result<Option<PassReport>> {
        let _one = self.clean_lock.lock();
        let Some(plan) = self.plan(cfg, now) else {
            return Ok(None);
        };
        let mut throttle = Throttle::new(cfg.io_bytes_per_sec);
        // The aborted transactions of the cleanable section (all below the last stable
        // offset, so each one's abort is already indexed): their records are removed, and
        // never supersede a committed record of their key.
        let from = plan.segments.first().map_or(0, |m| m.base);
        let aborted = match self.collect_aborted(ctx, from, plan.uncleanable) {
            Ok(a) => a,
            // Retention moved the start meanwhile: the next pass plans again.
            Err(Error::OffsetOutOfRange { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some((map, dirty_end)) =
            self.build_offset_map(ctx, cfg, &plan, &aborted, &mut throttle)?
        else {
            return Ok(None);
        };
        let mut report = PassReport::default();
        let mut earliest_tombstone = i64::MAX;
        let tombstone_cutoff = ms_before(now, cfg.delete_retention);
        let to_clean: Vec<&SegmentMeta> = plan
            .segments
            .iter()
            .filter(|m| m.base < dirty_end)
            .collect();
        // Each idempotent producer's last batch stays, emptied if need be (Kafka's cleaner keeps
        // it too): a rebuild of the producer state from the log still finds it.
        let producer_lasts = self.producer_last_offsets();
        let holding = std::cell::RefCell::new(std::collections::HashSet::new());
        for group in group_segments(&to_clean, cfg.segment_bytes, ctx.opts.max_index_bytes) {
            let judge = Judge {
                map: &map,
                dirty_end,
                tombstone_cutoff,
                producer_lasts: &producer_lasts,
                aborted: &aborted,
                holding: &holding,
            };
            if !self.clean_group(
                ctx,
                &group,
                &judge,
                &mut throttle,
                &mut report,
                &mut earliest_tombstone,
            )? {
                // Retention took part of the log meanwhile: the clean end stays, the next pass
                // redoes the rest.
                return Ok(Some(report));
            }
        }
        self.clean_end.fetch_max(dirty_end, Ordering::AcqRel);
        self.tombstone_due
            .store(earliest_tombstone, Ordering::Release);
        Ok(Some(report))
    }

    /// Key → latest offset over the dirty section; returns the map and the dirty end (where a
    /// full map stopped it). `None` when a segment went away meanwhile.
    fn build_offset_map(
        &self,
        ctx: &Ctx,
        cfg: &CleanConfig,
        plan: &Plan,
        aborted: &Aborted,
        throttle: &mut Throttle,
    ) -> Result<Option<(OffsetMap, u64)>> {
        let mut map = OffsetMap::new(cfg.offset_map_bytes, plan.uncleanable - plan.first_dirty);
        for m in plan
            .segments
            .iter()
            .filter(|m| m.next_offset > plan.first_dirty)
        {
            let Some((_, handle)) = self.live_segment(ctx, m.base)? else {
                return Ok(None);
            };
            let mut reader = BatchReader::new(&handle, m.size);
            while let Some(NextBatch {
                header: h,
                bytes,
                read,
                ..
            }) = reader.next()?
            {
                self.check_cleanable(ctx)?;
                throttle.moved(read);
                if h.is_control()
                    || h.last_offset() < plan.first_dirty as i64
                    || is_aborted(&h, aborted)
                {
                    continue;
                }
                for r in batch::records(bytes, &h) {
                    let r = r.map_err(|e| Error::corrupted(&handle.log_path, 0, e.reason()))?;
                    let offset = h.base_offset as u64 + r.offset_delta as u64;
                    if offset < plan.first_dirty {
                        continue;
                    }
                    if let Some(key) = &r.key
                        && !map.put(&bytes[key.clone()], offset)
                    {
                        // Full: everything below `offset` is in the map.
                        return Ok(Some((map, offset)));
                    }
                }
            }
        }
        Ok(Some((map, plan.uncleanable)))
    }

    /// Recopies one group into a `.cleaned` segment and swaps it in. `false`: a segment of the
    /// group went away meanwhile (nothing changed).
    fn clean_group(
        &self,
        ctx: &Ctx,
        group: &[&SegmentMeta],
        judge: &Judge<'_>,
        throttle: &mut Throttle,
        report: &mut PassReport,
        earliest_tombstone: &mut i64,
    ) -> Result<bool> {
        let fs = ctx.fs.as_ref();
        let dir = &self.dir;
        let base = group[0].base;
        let cleaned = suffixed(dir, base, CLEANED_SUFFIX);
        remove_all(fs, &cleaned)?;
        let written = match self.recopy(ctx, group, judge, &cleaned, throttle) {
            Ok(Some(w)) => w,
            other => {
                let _ = remove_all(fs, &cleaned);
                return other.map(|_| false);
            }
        };
        let Recopied {
            meta,
            records_removed,
            tombstones_removed,
            earliest_tombstone: earliest,
        } = written;
        let before: u64 = group.iter().map(|m| m.size).sum();
        let after = meta.size;
        if !self.swap_in(ctx, group, meta)? {
            return Ok(false);
        }
        *earliest_tombstone = (*earliest_tombstone).min(earliest);
        report.records_removed += records_removed;
        report.tombstones_removed += tombstones_removed;
        report.bytes_before += before;
        report.bytes_after += after;
        Ok(true)
    }

    /// Writes the group's kept records into the `.cleaned` files, synced.
    fn recopy(
        &self,
        ctx: &Ctx,
        group: &[&SegmentMeta],
        judge: &Judge<'_>,
        cleaned: &[(PathBuf, PathBuf); 4],
        throttle: &mut Throttle,
    ) -> Result<Option<Recopied>> {
        let fs = ctx.fs.as_ref();
        let o = &ctx.opts;
        let base = group[0].base;
        let [
            (index_path, _),
            (time_path, _),
            (txn_path, _),
            (log_path, _),
        ] = cleaned;
        let out = fs
            .open_file(log_path, OpenMode::CreateNew)
            .map_err(|e| Error::io(log_path, e))?;
        let mut buf: Vec<u8> = Vec::with_capacity(IO_BUFFER);
        let mut flushed = 0u64;
        let mut scan = ScanResult::start(base);
        let mut removed = 0u64;
        let mut tombstones = 0u64;
        let mut earliest_tombstone = i64::MAX;
        // Offsets of the abort markers dropped (ascending): their `.txnindex` entries go.
        let mut dropped_aborts: Vec<u64> = Vec::new();
        for (k, m) in group.iter().enumerate() {
            let Some((_, handle)) = self.live_segment(ctx, m.base)? else {
                return Ok(None);
            };
            let mut reader = BatchReader::new(&handle, m.size);
            while let Some(NextBatch {
                pos,
                header: h,
                bytes,
                read,
            }) = reader.next()?
            {
                self.check_cleanable(ctx)?;
                throttle.moved(read);
                let last_of_group = k + 1 == group.len() && pos + h.total_len() as u64 >= m.size;
                let keep_empty = last_of_group
                    || (h.producer_id >= 0
                        && judge.producer_lasts.contains(&(h.last_offset() as u64)));
                let at = buf.len();
                let drop_marker = !keep_empty && judge.droppable_marker(bytes, &h);
                if drop_marker
                    && batch::end_txn_marker(bytes, &h).is_ok_and(|m| m.marker == TxnMarker::Abort)
                {
                    dropped_aborts.push(h.last_offset() as u64);
                }
                batch::filter_batch(
                    &mut buf,
                    bytes,
                    &h,
                    |r| match judge.verdict(bytes, &h, r) {
                        _ if drop_marker => {
                            removed += 1;
                            false
                        }
                        Verdict::Keep => {
                            if r.key.is_some() && r.value.is_none() {
                                earliest_tombstone =
                                    earliest_tombstone.min(store_timestamp(&h, r.timestamp_delta));
                            }
                            true
                        }
                        Verdict::Superseded => {
                            removed += 1;
                            tombstones += u64::from(r.key.is_some() && r.value.is_none());
                            false
                        }
                        Verdict::ExpiredTombstone => {
                            removed += 1;
                            tombstones += 1;
                            false
                        }
                        Verdict::Aborted => {
                            removed += 1;
                            false
                        }
                    },
                    keep_empty,
                )
                .map_err(|e| Error::corrupted(&handle.log_path, pos, e.reason()))?;
                judge.note_transactional(&h, buf.len() > at);
                if buf.len() > at {
                    let out_header = batch::parse_header(&buf[at..])
                        .map_err(|e| Error::corrupted(log_path, 0, e.reason()))?;
                    scan.add_batch(
                        flushed + at as u64,
                        &out_header,
                        base,
                        o.index_interval_bytes,
                        o.max_index_bytes,
                    );
                }
                if buf.len() >= IO_BUFFER {
                    out.write_all_at(&buf, flushed)
                        .map_err(|e| Error::io(log_path, e))?;
                    flushed += buf.len() as u64;
                    throttle.moved(buf.len() as u64);
                    buf.clear();
                }
            }
        }
        if !buf.is_empty() {
            out.write_all_at(&buf, flushed)
                .map_err(|e| Error::io(log_path, e))?;
            flushed += buf.len() as u64;
            throttle.moved(buf.len() as u64);
        }
        out.sync_data().map_err(|e| Error::io(log_path, e))?;
        drop(out);
        let last = group[group.len() - 1];
        let time = segment::sealed_time_entries(
            &scan.time_entries,
            base,
            scan.max_timestamp,
            scan.next_offset,
        );
        fs.write_file_synced(index_path, &scan.offset_entries)
            .map_err(|e| Error::io(index_path, e))?;
        fs.write_file_synced(time_path, &time)
            .map_err(|e| Error::io(time_path, e))?;
        // The cleaned segment's transaction index is the group's aborts, in order, but for
        // those whose marker this pass dropped (written with the segment: swapped in with it).
        let mut aborts = Vec::new();
        for m in group.iter().filter(|m| m.txn_entries > 0) {
            let path = self.txn_index_path(ctx, m);
            let entries = txnindex::read(fs, &path, m.txn_entries)?;
            // Under the clean lock nothing else shortens it: fewer entries is damage.
            if entries.len() as u64 != m.txn_entries {
                return Err(Error::corrupted(
                    &path,
                    0,
                    "transaction index shorter than known",
                ));
            }
            aborts.extend(
                entries
                    .into_iter()
                    .filter(|e| dropped_aborts.binary_search(&e.last_offset).is_err()),
            );
        }
        if !aborts.is_empty() {
            let bytes: Vec<u8> = aborts.iter().flat_map(txnindex::encode).collect();
            fs.write_file_synced(txn_path, &bytes)
                .map_err(|e| Error::io(txn_path, e))?;
        }
        let mut meta = SegmentMeta::new(base);
        meta.txn_entries = aborts.len() as u64;
        meta.size = flushed;
        // The group's last batch is kept, so this is also the cleaned log's end.
        meta.next_offset = last.next_offset;
        meta.max_timestamp = scan.max_timestamp;
        meta.index_entries = (scan.offset_entries.len() / super::index::OFFSET_ENTRY) as u64;
        meta.time_entries = (time.len() / super::index::TIME_ENTRY) as u64;
        meta.last_time_indexed = scan.last_time_indexed;
        meta.sealed = true;
        meta.swapping = true;
        Ok(Some(Recopied {
            meta,
            records_removed: removed,
            tombstones_removed: tombstones,
            earliest_tombstone,
        }))
    }

    /// Kafka's `replaceSegments` for one group (see the module docs for the steps and why each
    /// crash point is safe). `false`: the group is no longer in the partition as it was
    /// (retention), nothing replaced.
    fn swap_in(&self, ctx: &Ctx, group: &[&SegmentMeta], meta: SegmentMeta) -> Result<bool> {
        let fs = ctx.fs.as_ref();
        let dir = &self.dir;
        let base = meta.base;
        let cleaned = suffixed(dir, base, CLEANED_SUFFIX);
        let swap = suffixed(dir, base, SWAP_SUFFIX);
        // Retention and `delete_before` change the segment list only under this lock; appends
        // and seals never touch sealed segments.
        let _seal = self.seal_lock.lock();
        let unchanged = !self.deleted.load(Ordering::Acquire) && {
            let st = self.state.lock();
            st.segments
                .binary_search_by_key(&base, |m| m.base)
                .ok()
                .is_some_and(|i| {
                    group.iter().enumerate().all(|(k, g)| {
                        st.segments.get(i + k).is_some_and(|m| {
                            m.base == g.base && m.size == g.size && m.sealed && !m.swapping
                        })
                    })
                })
        };
        if !unchanged {
            remove_all(fs, &cleaned)?;
            return Ok(false);
        }
        // Indexes first, the log last: an open finishes a swap only when the log `.swap` is
        // there, and rebuilds the indexes then.
        for ((from, _), (to, _)) in cleaned.iter().zip(&swap) {
            rename_optional(fs, from, to)?;
        }
        sync_dir(fs, dir)?;
        // Committed: from here on an open finishes the swap. The segment list takes the new
        // segment at once, with nothing that can fail in between, so whatever fails later the
        // partition knows the segment is `swapping` (retention removes its `.swap` files with
        // it; passes stop before it) and never keeps a stale `.swap` it does not know of. Its
        // files are opened on first use, by either name.
        {
            let mut st = self.state.lock();
            let i = st
                .segments
                .binary_search_by_key(&base, |m| m.base)
                .map_err(|_| Error::corrupted(dir, base, "cleaned segment vanished"))?;
            st.segments.splice(i..i + group.len(), [meta]);
            for g in group {
                ctx.cache.remove((self.uid, g.base));
            }
        }
        for g in &group[1..] {
            remove_segment_files(fs, dir, g.base)?;
        }
        let [index, time, txn, log] = &swap;
        for (from, to) in [index, time] {
            fs.rename(from, to).map_err(|e| Error::io(from, e))?;
        }
        rename_optional(fs, &txn.0, &txn.1)?;
        sync_dir(fs, dir)?;
        fs.rename(&log.0, &log.1)
            .map_err(|e| Error::io(&log.0, e))?;
        sync_dir(fs, dir)?;
        let mut st = self.state.lock();
        if let Ok(i) = st.segments.binary_search_by_key(&base, |m| m.base) {
            st.segments[i].swapping = false;
        }
        // The next opener maps the files under their final names (a handle opened meanwhile
        // holds the same files, by their `.swap` names).
        ctx.cache.remove((self.uid, base));
        Ok(true)
    }
}

/// The background cleaner thread (`duolog-cleaner`, Kafka's `CleanerThread`): every
/// `check_interval` it runs the store's background pass. A thread of its own rather than a job
/// of the flusher: a pass reads and rewrites whole segments, and the flusher's group commits
/// must not wait behind it. It holds the store weakly, so it never keeps a dropped store alive.
pub(crate) struct CleanerThread {
    stop: Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl CleanerThread {
    pub(crate) fn start<T: Send + Sync + 'static>(
        target: std::sync::Weak<T>,
        every: Duration,
        pass: fn(&T),
    ) -> std::io::Result<CleanerThread> {
        let stop = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("duolog-cleaner".to_owned())
            .spawn(move || {
                loop {
                    {
                        let (lock, wake) = &*stop2;
                        let mut stopped = lock.lock();
                        if !*stopped {
                            match crate::clock::deadline(every) {
                                Some(d) => {
                                    wake.wait_until(&mut stopped, d);
                                }
                                None => wake.wait(&mut stopped),
                            }
                        }
                        if *stopped {
                            return;
                        }
                    }
                    let Some(t) = target.upgrade() else {
                        return;
                    };
                    pass(&t);
                }
            })?;
        Ok(CleanerThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops the thread, waiting for a pass in progress (which ends early once the store is
    /// marked closed).
    pub(crate) fn stop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for CleanerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a recopy produced.
struct Recopied {
    meta: SegmentMeta,
    records_removed: u64,
    tombstones_removed: u64,
    /// Store time of the oldest tombstone kept (`i64::MAX`: none).
    earliest_tombstone: i64,
}

enum Verdict {
    Keep,
    Superseded,
    ExpiredTombstone,
    /// A record of an aborted transaction (Kafka's cleaner removes them too).
    Aborted,
}

/// Whether `h` is a batch of an aborted transaction.
fn is_aborted(h: &BatchHeader, aborted: &Aborted) -> bool {
    h.is_transactional() && !h.is_control() && aborted.contains(h.producer_id, h.base_offset as u64)
}

/// Kafka's `shouldRetainRecord`.
struct Judge<'a> {
    map: &'a OffsetMap,
    dirty_end: u64,
    tombstone_cutoff: i64,
    /// Last offsets of each idempotent producer's last batch: those batches are kept.
    producer_lasts: &'a std::collections::HashSet<u64>,
    /// The aborted transactions of the cleanable section.
    aborted: &'a Aborted,
    /// Producers whose transaction (the one after their last marker seen so far) has a
    /// record kept by this pass: its marker must stay. The pass reads the log from its start
    /// in offset order, and a transaction's records all come before its marker.
    holding: &'a std::cell::RefCell<std::collections::HashSet<i64>>,
}

impl Judge<'_> {
    /// Whether a control batch is a marker the pass drops (Kafka drops a marker once no
    /// record of its transaction is left and `delete.retention` has passed, KIP-534): below
    /// the dirty end, older than the delete retention (its time is its append time), and no
    /// record of its transaction kept. Without it a compacted topic written by transactions
    /// (`__consumer_offsets` under exactly-once) grows by one marker per transaction for good.
    /// An abort marker goes by the same rule: its transaction's records are removed by the
    /// pass that first cleans them (never kept, so they never hold it), and its `.txnindex`
    /// entry goes with it.
    fn droppable_marker(&self, bytes: &[u8], h: &BatchHeader) -> bool {
        h.is_control()
            && h.producer_id >= 0
            && (h.last_offset() as u64) < self.dirty_end
            && h.max_timestamp < self.tombstone_cutoff
            && !self.holding.borrow().contains(&h.producer_id)
            && batch::end_txn_marker(bytes, h).is_ok()
    }

    /// Follows transactions through the pass: a transactional batch written to the cleaned
    /// log (even emptied, as a producer's last batch or a group's last is) holds its
    /// transaction's marker, so a replay from the log never finds a transaction without its
    /// end; a marker (kept or not) ends the transaction.
    fn note_transactional(&self, h: &BatchHeader, written: bool) {
        if h.producer_id < 0 {
            return;
        }
        let mut holding = self.holding.borrow_mut();
        if h.is_control() {
            holding.remove(&h.producer_id);
        } else if h.is_transactional() && written {
            holding.insert(h.producer_id);
        }
    }

    fn verdict(&self, bytes: &[u8], h: &BatchHeader, r: &batch::RecordView) -> Verdict {
        let offset = h.base_offset as u64 + r.offset_delta as u64;
        if is_aborted(h, self.aborted) {
            return Verdict::Aborted;
        }
        // Past the dirty end the map knows nothing; control records are not keyed data; a
        // record without a key cannot be judged (Kafka refuses them on compacted topics).
        if offset >= self.dirty_end || h.is_control() {
            return Verdict::Keep;
        }
        let Some(key) = &r.key else {
            return Verdict::Keep;
        };
        if self
            .map
            .get(&bytes[key.clone()])
            .is_some_and(|latest| offset < latest)
        {
            return Verdict::Superseded;
        }
        if r.value.is_none() && store_timestamp(h, r.timestamp_delta) < self.tombstone_cutoff {
            return Verdict::ExpiredTombstone;
        }
        Verdict::Keep
    }
}

/// Kafka's `groupSegmentsBySize`: adjacent segments while the group's logs add up to at most
/// `max_bytes`, its index entries fit `max_index_bytes`, and its offsets fit the indexes'
/// 32-bit relative offsets.
fn group_segments<'a>(
    segments: &[&'a SegmentMeta],
    max_bytes: u64,
    max_index_bytes: u64,
) -> Vec<Vec<&'a SegmentMeta>> {
    let mut groups: Vec<Vec<&SegmentMeta>> = Vec::new();
    let mut sums = (0u64, 0u64, 0u64);
    for &m in segments {
        if let Some(g) = groups.last_mut() {
            let size = sums.0 + m.size;
            let index = (sums.1 + m.index_entries) * super::index::OFFSET_ENTRY as u64;
            let time = (sums.2 + m.time_entries) * super::index::TIME_ENTRY as u64;
            if size <= max_bytes
                && index <= max_index_bytes
                && time <= max_index_bytes
                && m.next_offset.saturating_sub(1 + g[0].base) <= u64::from(u32::MAX)
            {
                g.push(m);
                sums = (size, sums.1 + m.index_entries, sums.2 + m.time_entries);
                continue;
            }
        }
        groups.push(vec![m]);
        sums = (m.size, m.index_entries, m.time_entries);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(base: u64, next: u64, size: u64) -> SegmentMeta {
        let mut m = SegmentMeta::new(base);
        m.next_offset = next;
        m.size = size;
        m.index_entries = 1;
        m.time_entries = 1;
        m
    }

    #[test]
    fn groups_stay_under_the_segment_size() {
        let ms = [
            meta(0, 10, 400),
            meta(10, 20, 500),
            meta(20, 30, 200),
            meta(30, 40, 900),
            meta(40, 50, 50),
        ];
        let refs: Vec<&SegmentMeta> = ms.iter().collect();
        let g = group_segments(&refs, 1000, 1 << 20);
        let bases: Vec<Vec<u64>> = g
            .iter()
            .map(|g| g.iter().map(|m| m.base).collect())
            .collect();
        assert_eq!(bases, vec![vec![0, 10], vec![20], vec![30, 40]]);
        // Index room bounds a group too.
        let g = group_segments(&refs, u64::MAX, 16);
        assert!(g.iter().all(|g| g.len() <= 2));
    }
}
