//! The cleaner of the CommitLog engine: log compaction by key, after RocketMQ 5's compaction
//! topic. The commit log is shared by every topic, so a partition is compacted into a prefix
//! of its own (`compacted`): a pass reads the partition's compacted generation and its dirty
//! section (consume queue → commit log), keeps the latest record of every key (Kafka's
//! `OffsetMap` rule) and the tombstones younger than `delete_retention`, writes a new
//! generation, syncs it, and commits it by writing `state`. Offsets below `clean_end` are then
//! served from the compacted files, and consume-queue files wholly below it are deleted.
//!
//! The head that is never cleaned (the CommitLog analog of Kafka's active segment): a record is
//! cleanable only when at least `segment_bytes` of commit log were written after it or it is
//! older than `segment_ms`, and it is older than `min_compaction_lag`. Both conditions are
//! monotone along a partition's offsets (positions and store times only grow), so the end of
//! the cleanable section is a binary search over consume-queue units.
//!
//! The cleaner never takes the append lock; only durable records are cleaned (the pass syncs
//! the log first), so `clean_end` never passes what recovery finds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::compacted::{self, Compacted, Meta, State, Writer};
use super::txn_index::{self, Aborted};
use super::{Inner, PartitionState, TopicState};
use crate::clock::{duration_ms, now_ms};
use crate::error::{Error, Result};
use crate::index::offset_map::OffsetMap;
use crate::store::CompactionReport;

/// What a topic's configuration says about cleaning it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    /// Time and size retention delete its records (`compact,delete`).
    pub(crate) deletes: bool,
    pub(crate) segment_bytes: u64,
    pub(crate) segment_ms: Duration,
    pub(crate) min_compaction_lag: Duration,
    pub(crate) delete_retention: Duration,
}

/// Why a pass runs, which decides what it may clean.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pass {
    /// Background: only when the dirty ratio reaches the threshold.
    Background { min_dirty_ratio: f64 },
    /// `compact()`: whatever is cleanable, whatever the ratio.
    Now,
    /// Retention wants the log files holding offsets below `until` gone: those records are
    /// cleaned even inside the head (they are about to disappear from the log).
    Force { until: u64 },
}

/// Sleeps to keep a pass's I/O at or below `io_bytes_per_sec`.
struct Throttle {
    rate: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn new(rate: Option<u64>) -> Self {
        Throttle {
            rate: rate.filter(|&r| r > 0),
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn account(&mut self, n: usize, inner: &Inner) -> Result<()> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        self.bytes += n as u64;
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        loop {
            inner.check_open()?;
            let elapsed = self.started.elapsed();
            if elapsed >= due {
                return Ok(());
            }
            std::thread::sleep((due - elapsed).min(Duration::from_millis(50)));
        }
    }
}

/// Whether opening generation `c` failed because a pass replaced it (and deleted its files)
/// after it was taken: the caller starts again from the current one.
pub(crate) fn replaced(part: &PartitionState, c: &Compacted, e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        && part
            .compacted()
            .is_none_or(|now| now.state.generation != c.state.generation)
}

/// Whether a record is one of an aborted transaction's.
fn is_aborted(aborted: &Aborted, meta: &Meta) -> bool {
    meta.txn_type == super::record::SYSFLAG_TRANSACTION_PREPARED
        && meta
            .producer_id
            .is_some_and(|id| aborted.covers(id, meta.offset))
}

/// The transactions a pass follows, to drop commit markers no record needs any more (Kafka
/// drops a marker once no record of its transaction is left and `delete.retention` has
/// passed, KIP-534). Without it a compacted topic written by transactions
/// (`__consumer_offsets` under exactly-once) grows by one marker per transaction for good.
/// A pass writes its records in offset order from the partition's start, and a transaction's
/// records all come before its marker, so one scan decides. Abort markers go by the same rule
/// (Kafka's): the records of an aborted transaction are removed by the pass that first cleans
/// them (never kept, so they never hold the marker), and once the marker goes its
/// aborted-index entry is dropped too (`dropped_aborts`, after the pass commits).
#[derive(Default)]
struct Markers {
    /// Producers whose transaction (the one after their last marker seen so far) has a record
    /// kept by this pass: its marker must stay.
    holding: std::collections::HashSet<i64>,
    /// Offsets of the abort markers this pass dropped, ascending.
    dropped_aborts: Vec<u64>,
}

impl Markers {
    /// Whether `meta` is a marker the pass drops: no record of its transaction kept, and
    /// older than the delete retention (as an expired tombstone).
    fn droppable(&self, meta: &Meta, now: i64, rules: &Rules) -> bool {
        super::record::is_marker(meta.txn_type)
            && meta
                .producer_id
                .is_some_and(|id| !self.holding.contains(&id))
            && now.saturating_sub(meta.store_timestamp) > duration_ms(rules.delete_retention)
    }

    /// Follows one record through the pass (`kept`: written to the new generation).
    fn note(&mut self, meta: &Meta, kept: bool) {
        let Some(id) = meta.producer_id else {
            return;
        };
        if super::record::is_marker(meta.txn_type) {
            self.holding.remove(&id);
        } else if kept && meta.txn_type == super::record::SYSFLAG_TRANSACTION_PREPARED {
            self.holding.insert(id);
        }
    }

    /// [`keep`], with the commit markers this pass drops removed.
    fn keep(
        &mut self,
        meta: &Meta,
        map: &OffsetMap,
        now: i64,
        rules: &Rules,
        r: &mut CompactionReport,
    ) -> bool {
        let kept = if self.droppable(meta, now, rules) {
            r.records_removed += 1;
            if meta.txn_type == super::record::SYSFLAG_TRANSACTION_ROLLBACK {
                self.dropped_aborts.push(meta.offset);
            }
            false
        } else {
            keep(meta, map, now, rules, r)
        };
        self.note(meta, kept);
        kept
    }
}

/// Whether a record survives a pass: not superseded by a later record of its key in the map,
/// and not a tombstone older than `delete_retention` when the pass started.
fn keep(meta: &Meta, map: &OffsetMap, now: i64, rules: &Rules, r: &mut CompactionReport) -> bool {
    if let Some(key) = &meta.key
        && map.get(key).is_some_and(|latest| latest > meta.offset)
    {
        r.records_removed += 1;
        if meta.tombstone {
            r.tombstones_removed += 1;
        }
        return false;
    }
    if meta.tombstone
        && now.saturating_sub(meta.store_timestamp) > duration_ms(rules.delete_retention)
    {
        r.records_removed += 1;
        r.tombstones_removed += 1;
        return false;
    }
    true
}

impl Inner {
    /// The largest record any file can hold: a bound on what a damaged length may claim.
    pub(crate) fn max_stored_record(&self) -> usize {
        self.log.file_size() as usize
    }

    /// The stored bytes of the record at `offset` (served by the consume queue), and its meta.
    fn raw_record(
        &self,
        topic: &str,
        partition: u32,
        part: &PartitionState,
        offset: u64,
    ) -> Result<(Bytes, Meta)> {
        let unit = part.cq.unit(offset)?.ok_or_else(|| {
            Error::corrupted(
                part.cq.dir(),
                offset * super::UNIT_SIZE,
                "consume-queue unit missing in the section being cleaned",
            )
        })?;
        let file = self.log.find(unit.position).ok_or_else(|| {
            Error::corrupted(
                part.cq.dir(),
                offset * super::UNIT_SIZE,
                format!("commit-log file of position {} is gone", unit.position),
            )
        })?;
        let at = unit.position - file.start_offset();
        let bytes = file
            .published_bytes(at as usize, unit.size as usize)
            .ok_or_else(|| Error::corrupted(file.path(), at, "unit points past the log"))?;
        let meta = compacted::describe(&bytes, topic)
            .map_err(|why| Error::corrupted(file.path(), at, why))?;
        if meta.offset != offset || meta.partition != partition as i32 {
            return Err(Error::corrupted(
                file.path(),
                at,
                "consume-queue unit points at another record",
            ));
        }
        Ok((bytes, meta))
    }

    /// Whether the record at `offset` is outside the head (see the module docs).
    fn cleanable(
        &self,
        t: &TopicState,
        partition: u32,
        part: &PartitionState,
        offset: u64,
        rules: &Rules,
        now: i64,
    ) -> Result<bool> {
        let (bytes, meta) = self.raw_record(&t.name, partition, part, offset)?;
        let written_after = self
            .written
            .load(Ordering::Acquire)
            .saturating_sub(meta.physical + bytes.len() as u64);
        let age = now.saturating_sub(meta.store_timestamp);
        let past_segment =
            written_after >= rules.segment_bytes || age >= duration_ms(rules.segment_ms);
        Ok(past_segment && age >= duration_ms(rules.min_compaction_lag))
    }

    /// First offset of `[lo, hi)` inside the head (`hi` if none is).
    fn head_start(
        &self,
        t: &TopicState,
        partition: u32,
        part: &PartitionState,
        (mut lo, mut hi): (u64, u64),
        rules: &Rules,
        now: i64,
    ) -> Result<u64> {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.cleanable(t, partition, part, mid, rules, now)? {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Sum of the record sizes of `[lo, hi)` from the consume queue.
    pub(crate) fn queue_bytes(&self, part: &PartitionState, lo: u64, hi: u64) -> Result<u64> {
        let mut n = 0;
        for o in lo..hi {
            n += part.cq.unit(o)?.map_or(0, |u| u64::from(u.size));
        }
        Ok(n)
    }

    /// Makes the log durable and writes a checkpoint; returns the commit-log position below
    /// which records (and their consume-queue units) are durable and behind that checkpoint.
    /// Passes clean only below it, so recovery never finds the log shorter than a `clean_end`,
    /// nor replays a record whose queue file a pass deleted.
    fn prepare_passes(&self) -> Result<u64> {
        self.gc.sync_all(self)?;
        let covered = self.written.load(Ordering::Acquire).min(self.gc.durable());
        self.write_checkpoint()?;
        Ok(covered)
    }

    /// One pass over one partition, cleaning only records before log position `covered`
    /// (see [`prepare_passes`](Self::prepare_passes)); the caller holds the cleaner lock.
    pub(crate) fn clean_partition(
        &self,
        t: &TopicState,
        partition: u32,
        rules: &Rules,
        (pass, covered): (Pass, u64),
        report: &mut CompactionReport,
    ) -> Result<()> {
        // Callers hold the cleaner lock, which `delete_topic` takes before it marks the topic
        // deleted: a topic listed before its deletion is passed over, so no pass writes into
        // the directories the deletion removed.
        if t.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        let part = t.partition(partition)?;
        let fs = self.fs.as_ref();
        let now = now_ms();
        let old = part.compacted();
        let old_state = old.as_ref().map_or(State::default(), |c| c.state);
        let start = part.start.load(Ordering::Acquire);
        let lo = old_state.clean_end.max(start);
        let end = part.end.load(Ordering::Acquire);
        let durable = part
            .cq
            .first_at_or_after(covered, lo.min(end), end)?
            .max(lo);
        let head = self.head_start(t, partition, part, (lo, durable), rules, now)?;
        let mut dirty_end = match pass {
            Pass::Force { until } => head.max(until.min(durable)),
            _ => head,
        };
        // Never at or past the last stable offset: an open transaction's records (and
        // everything after its first) wait until its marker decides them (Kafka's cleaner
        // stops at the first unstable offset). Every transaction with a record below it has
        // ended, so its abort (if it aborted) is in the index collected here.
        let lso = self.last_stable(part, end);
        dirty_end = dirty_end.min(lso.max(lo));
        // Every entry of the section (no cap: the pass must know them all).
        let (aborted, _) = txn_index::collect(&part.txn_index, lo, dirty_end, usize::MAX)?;
        let tombstones_due = old_state.tombstones > 0
            && now.saturating_sub(old_state.oldest_tombstone_ms)
                > duration_ms(rules.delete_retention);
        if dirty_end <= lo && !tombstones_due {
            return Ok(());
        }
        if let Pass::Background { min_dirty_ratio } = pass
            && !tombstones_due
        {
            let dirty = self.queue_bytes(part, lo, dirty_end)?;
            let total = old_state.data_len + dirty;
            if total == 0 || (dirty as f64) < min_dirty_ratio * total as f64 {
                return Ok(());
            }
        }
        let settings = &self.opts.compaction;
        let mut throttle = Throttle::new(settings.io_bytes_per_sec);
        // The latest offset of every key of the dirty section; a full map ends the pass there.
        let mut map = OffsetMap::new(settings.offset_map_bytes, dirty_end.saturating_sub(lo));
        for o in lo..dirty_end {
            self.check_open()?;
            let (bytes, meta) = self.raw_record(&t.name, partition, part, o)?;
            throttle.account(bytes.len(), self)?;
            // An aborted record never supersedes a committed one of its key.
            if is_aborted(&aborted, &meta) {
                continue;
            }
            if let Some(key) = &meta.key
                && !map.put(key, o)
            {
                dirty_end = o;
                break;
            }
        }
        let dir = compacted::partition_dir(&self.dir, &t.name, partition);
        let generation = old_state.generation + 1;
        let mut r = CompactionReport::default();
        let mut markers = Markers::default();
        let written = (|| {
            let mut w = Writer::create(fs, &dir, generation)?;
            if let Some(reader) = old
                .as_deref()
                .map(|c| c.open(fs, self.max_stored_record()))
                .transpose()?
                .flatten()
            {
                r.bytes_before += old_state.data_len;
                let mut scan = reader.scan_from(reader.seek(start)?);
                loop {
                    self.check_open()?;
                    let pos = scan.position();
                    let Some((chunk, range)) = scan.next_raw()? else {
                        break;
                    };
                    let rec = &chunk[range];
                    let meta = compacted::describe(rec, &t.name)
                        .and_then(|m| {
                            (m.partition == partition as i32)
                                .then_some(m)
                                .ok_or("record of another partition")
                        })
                        .map_err(|why| Error::corrupted(reader.data_path(), pos, why))?;
                    if meta.offset >= old_state.clean_end {
                        break;
                    }
                    throttle.account(rec.len(), self)?;
                    if meta.offset >= start && markers.keep(&meta, &map, now, rules, &mut r) {
                        let flushed = w.push(rec, &meta)?;
                        throttle.account(flushed, self)?;
                    }
                }
            }
            for o in lo..dirty_end {
                self.check_open()?;
                let (bytes, meta) = self.raw_record(&t.name, partition, part, o)?;
                r.bytes_before += bytes.len() as u64;
                throttle.account(bytes.len(), self)?;
                // Records of aborted transactions are removed (Kafka's cleaner discards
                // them); markers have no key and are kept unless `markers` drops them.
                if is_aborted(&aborted, &meta) {
                    r.records_removed += 1;
                    continue;
                }
                if markers.keep(&meta, &map, now, rules, &mut r) {
                    let flushed = w.push(&bytes, &meta)?;
                    throttle.account(flushed, self)?;
                }
            }
            w.finish(dirty_end.max(old_state.clean_end))
        })();
        let keep_generation = old.as_ref().map(|c| c.state.generation);
        let state = match written {
            Ok(s) => s,
            Err(e) => {
                let _ = compacted::remove_other_generations(fs, &dir, keep_generation);
                return Err(self.note_poison(e));
            }
        };
        // Once the pass commits, the dropped markers' index entries name nothing: record that
        // the index owes a rewrite first, so a crash before it makes the next open rebuild it.
        let index_path = part.txn_index.lock().path().to_owned();
        if !markers.dropped_aborts.is_empty()
            && let Err(e) = super::txn_index::mark_rewrite_owed(fs, &index_path)
        {
            let _ = compacted::remove_other_generations(fs, &dir, keep_generation);
            if e.is_storage_full() {
                return Err(e);
            }
            return Err(self.metadata_write_failed(e));
        }
        if let Err(e) = compacted::commit(fs, &dir, &state) {
            if e.is_storage_full() {
                // Only the temporary state could not be written: the old state holds.
                let _ = compacted::remove_other_generations(fs, &dir, keep_generation);
                return Err(e);
            }
            // The rename may or may not be durable: leave both generations to the next open.
            return Err(self.metadata_write_failed(e));
        }
        *part.compacted.write() = Some(Arc::new(Compacted {
            dir: dir.clone(),
            state,
        }));
        // The dropped abort markers' index entries go now the pass is committed (before it,
        // the aborted records were still in the log). A crash before this rewrite leaves
        // entries naming markers that are gone: the owed-rewrite file written above makes the
        // next open rebuild the index.
        if !markers.dropped_aborts.is_empty() {
            let dropped = &markers.dropped_aborts;
            // Off the index's lock: aborts arriving meanwhile do not wait for its syncs.
            txn_index::rewrite(&part.txn_index, |e| {
                dropped.binary_search(&e.last_offset).is_err()
            })
            .map_err(|e| self.metadata_write_failed(e))?;
            self.producer_snapshot_stale();
            // Left behind, it costs the next open a rebuild, nothing more.
            let _ = super::txn_index::clear_rewrite_owed(fs, &index_path);
        }
        r.partitions_cleaned = 1;
        r.bytes_after = state.data_len;
        report.add(&r);
        // Committed: the old generation and the queue files below `clean_end` are not needed.
        // A failure leaves files the next open (or pass) deletes; a failed sync has poisoned.
        let _ = compacted::remove_other_generations(fs, &dir, Some(state.generation));
        let _ = part.cq.remove_below(fs, state.clean_end);
        Ok(())
    }

    /// First compacted offset in `[from, upto)` whose record was at commit-log position
    /// `position` or later (positions grow with offsets); `upto` if none.
    pub(crate) fn first_compacted_at_or_after(
        &self,
        part: &PartitionState,
        position: u64,
        from: u64,
        upto: u64,
    ) -> Result<u64> {
        let Some((_, reader)) = self.open_compacted(part)? else {
            return Ok(upto);
        };
        let mut scan = reader.scan_from(reader.seek(from)?);
        loop {
            let pos = scan.position();
            let Some((chunk, range)) = scan.next_raw()? else {
                return Ok(upto);
            };
            let h = super::record::peek_queue_and_physical(&chunk[range]).ok_or_else(|| {
                Error::corrupted(reader.data_path(), pos, "compacted record too short")
            })?;
            let (offset, physical) = h;
            if offset >= upto {
                return Ok(upto);
            }
            if offset >= from && physical >= position {
                return Ok(offset);
            }
        }
    }

    /// Opens the partition's current compacted generation. A generation that a pass replaced
    /// (and deleted) between taking it and opening its files is retried with the new one.
    pub(crate) fn open_compacted(
        &self,
        part: &PartitionState,
    ) -> Result<Option<(Arc<Compacted>, compacted::Reader)>> {
        loop {
            let Some(c) = part.compacted() else {
                return Ok(None);
            };
            match c.open(self.fs.as_ref(), self.max_stored_record()) {
                Ok(r) => return Ok(r.map(|r| (c, r))),
                Err(e) if replaced(part, &c, &e) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Bytes of the compacted records at or after `from` (and below `clean_end`).
    pub(crate) fn compacted_bytes_from(&self, part: &PartitionState, from: u64) -> Result<u64> {
        let Some((c, reader)) = self.open_compacted(part)? else {
            return Ok(0);
        };
        let mut scan = reader.scan_from(reader.seek(from)?);
        let mut n = 0;
        loop {
            let pos = scan.position();
            let Some((chunk, range)) = scan.next_raw()? else {
                return Ok(n);
            };
            let len = range.len() as u64;
            let (offset, _) =
                super::record::peek_queue_and_physical(&chunk[range]).ok_or_else(|| {
                    Error::corrupted(reader.data_path(), pos, "compacted record too short")
                })?;
            if offset >= c.state.clean_end {
                return Ok(n);
            }
            if offset >= from {
                n += len;
            }
        }
    }

    /// First offset in `[from, upto)` from which the compacted records below `upto` add up to
    /// at most `max` bytes (`upto` if none fits; `from` if all do).
    pub(crate) fn first_compacted_keeping(
        &self,
        part: &PartitionState,
        from: u64,
        upto: u64,
        max: u64,
    ) -> Result<u64> {
        let Some((_, reader)) = self.open_compacted(part)? else {
            return Ok(from);
        };
        let scan_all = |f: &mut dyn FnMut(u64, u64) -> bool| -> Result<()> {
            let mut scan = reader.scan_from(reader.seek(from)?);
            loop {
                let pos = scan.position();
                let Some((chunk, range)) = scan.next_raw()? else {
                    return Ok(());
                };
                let len = range.len() as u64;
                let (offset, _) = super::record::peek_queue_and_physical(&chunk[range])
                    .ok_or_else(|| {
                        Error::corrupted(reader.data_path(), pos, "compacted record too short")
                    })?;
                if offset >= upto {
                    return Ok(());
                }
                if offset >= from && !f(offset, len) {
                    return Ok(());
                }
            }
        };
        let mut total = 0u64;
        scan_all(&mut |_, len| {
            total += len;
            true
        })?;
        let mut keep_from = upto;
        if total <= max {
            return Ok(from);
        }
        scan_all(&mut |offset, len| {
            if total <= max {
                keep_from = offset;
                return false;
            }
            total -= len;
            true
        })?;
        Ok(keep_from)
    }

    /// The topics that compact, with their rules.
    fn compacting_topics(&self, only: Option<&str>) -> Result<Vec<(Arc<TopicState>, Rules)>> {
        if let Some(name) = only {
            let t = self.topic(name)?;
            return Ok(self.rules(&t).map(|r| (t, r)).into_iter().collect());
        }
        let mut v: Vec<(Arc<TopicState>, Rules)> = self
            .topics
            .read()
            .values()
            .filter_map(|t| self.rules(t).map(|r| (Arc::clone(t), r)))
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(v)
    }

    /// `compact()`: every compacting partition (of one topic) with anything cleanable.
    pub(crate) fn compact(&self, topic: Option<&str>) -> Result<CompactionReport> {
        let mut report = CompactionReport::default();
        let topics = self.compacting_topics(topic)?;
        if topics.is_empty() {
            return Ok(report);
        }
        let _one = self.cleaner_lock.lock();
        let covered = self.prepare_passes()?;
        for (t, rules) in topics {
            for p in 0..t.partitions.len() as u32 {
                self.clean_partition(&t, p, &rules, (Pass::Now, covered), &mut report)?;
            }
        }
        Ok(report)
    }

    /// A background pass: first the partitions retention waits for, then every partition
    /// whose dirty ratio reached the threshold.
    pub(crate) fn background_clean(&self) -> Result<CompactionReport> {
        let mut report = CompactionReport::default();
        let wanted = self.retention_wants.swap(0, Ordering::AcqRel);
        if wanted > 0 {
            self.protect_compacted(wanted, true)?;
        }
        let ratio = self.opts.compaction.min_cleanable_dirty_ratio;
        let topics = self.compacting_topics(None)?;
        if topics.is_empty() {
            return Ok(report);
        }
        let _one = self.cleaner_lock.lock();
        let covered = self.prepare_passes()?;
        for (t, rules) in topics {
            for p in 0..t.partitions.len() as u32 {
                self.check_open()?;
                let pass = Pass::Background {
                    min_dirty_ratio: ratio,
                };
                // One partition's failure (damage) does not stop the others.
                if let Err(e @ (Error::Closed | Error::Poisoned { .. })) =
                    self.clean_partition(&t, p, &rules, (pass, covered), &mut report)
                {
                    return Err(e);
                }
            }
        }
        Ok(report)
    }

    /// Retention wants to delete the commit-log files before position `cut`. Every
    /// compact-only partition with consume-queue records there must have its `clean_end` past
    /// them first: with `run_cleaner` they are cleaned now (several passes if the offset map
    /// fills); whatever stays uncleaned keeps its file. Returns the position retention may
    /// delete up to. `compact,delete` partitions lose those records, as Kafka's would.
    pub(crate) fn protect_compacted(&self, cut: u64, run_cleaner: bool) -> Result<u64> {
        let size = self.log.file_size();
        let mut allowed = cut;
        let mut covered: Option<u64> = None;
        for (t, rules) in self.compacting_topics(None)? {
            if rules.deletes {
                continue;
            }
            for (p, part) in t.partitions.iter().enumerate() {
                let p = p as u32;
                let uncleaned = |part: &PartitionState| -> Result<(u64, u64)> {
                    let lo = part.clean_end().max(part.start.load(Ordering::Acquire));
                    let end = part.end.load(Ordering::Acquire);
                    Ok((lo, part.cq.first_at_or_after(cut, lo, end)?))
                };
                let (mut lo, need) = uncleaned(part)?;
                if need <= lo {
                    continue;
                }
                if run_cleaner {
                    let _one = self.cleaner_lock.lock();
                    let covered = match covered {
                        Some(c) => c,
                        None => *covered.insert(self.prepare_passes()?),
                    };
                    // A full offset map ends a pass early; go on while passes make progress.
                    while lo < need {
                        let mut r = CompactionReport::default();
                        let pass = (Pass::Force { until: need }, covered);
                        if self.clean_partition(&t, p, &rules, pass, &mut r).is_err() {
                            break;
                        }
                        let (now_lo, _) = uncleaned(part)?;
                        if now_lo <= lo {
                            break;
                        }
                        lo = now_lo;
                    }
                } else {
                    self.retention_wants.fetch_max(cut, Ordering::AcqRel);
                    self.cleaner_wake.notify();
                }
                let (lo, need) = uncleaned(part)?;
                if lo < need
                    && let Some(u) = part.cq.unit(lo)?
                {
                    // Keep the file of the first uncleaned record, and every later one.
                    allowed = allowed.min(u.position - u.position % size);
                }
            }
        }
        Ok(allowed)
    }
}

/// Wakes the cleaner thread early (retention is waiting for it) or stops it.
#[derive(Default)]
pub(crate) struct CleanerWake {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl CleanerWake {
    pub(crate) fn notify(&self) {
        self.state.lock().0 = true;
        self.cv.notify_all();
    }

    fn stop(&self) {
        self.state.lock().1 = true;
        self.cv.notify_all();
    }

    /// Waits up to `every` or until woken; `false` once stopped.
    fn wait(&self, every: Duration) -> bool {
        let mut s = self.state.lock();
        if !s.0 && !s.1 {
            match crate::clock::deadline(every) {
                Some(d) => {
                    let _ = self.cv.wait_until(&mut s, d);
                }
                None => self.cv.wait(&mut s),
            }
        }
        s.0 = false;
        !s.1
    }
}

/// The background cleaner thread (`duolog-cleaner`): a pass every `check_interval`.
pub(crate) struct CleanerThread {
    wake: Arc<CleanerWake>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl CleanerThread {
    pub(crate) fn start(inner: &Arc<Inner>) -> std::io::Result<CleanerThread> {
        let wake = Arc::clone(&inner.cleaner_wake);
        let every = inner.opts.compaction.check_interval;
        let weak = Arc::downgrade(inner);
        let w = Arc::clone(&wake);
        let handle = std::thread::Builder::new()
            .name("duolog-cleaner".into())
            .spawn(move || {
                while w.wait(every) {
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.check_open().is_err() {
                        return;
                    }
                    // Failures are retried on the next pass; a failed sync has poisoned.
                    let _ = inner.background_clean();
                }
            })?;
        Ok(CleanerThread {
            wake,
            handle: Some(handle),
        })
    }

    /// Stops the thread after its current pass (which sees the store closed and ends early).
    pub(crate) fn stop(&mut self) {
        self.wake.stop();
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

impl Inner {
    /// The cleaner's view of a topic's configuration: `None` when its policy does not compact.
    pub(crate) fn rules(&self, t: &TopicState) -> Option<Rules> {
        let e = &t.effective;
        e.policy.compacts().then_some(Rules {
            deletes: e.policy.deletes(),
            segment_bytes: e.segment_bytes,
            segment_ms: e.segment_ms,
            min_compaction_lag: e.min_compaction_lag,
            delete_retention: e.delete_retention,
        })
    }
}
