//! Retention: whole commit-log files are deleted by age or total size (never the file being
//! written); partition start offsets then move past records that are gone, and consume-queue
//! files wholly below a start offset are deleted. `delete_before` raises one partition's start.
//!
//! Per-topic retention on a shared log: a file is deleted by age once, for every topic whose
//! policy deletes, it is older than that topic's retention or holds none of that topic's live
//! records (below its start offset, which `delete_before` raises) — so a topic keeping its
//! records longer than the store's default keeps only the files they are in — and by size per
//! `commitlog.retention_bytes` (a bound on the whole log). A topic whose retention is shorter
//! than that, or that has a `retention.bytes`, loses its old records logically: its partitions'
//! start offsets rise past them (as `delete_before` does) and their queue files go.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Inner;
use super::record::{self, Checks, Decoded};
use crate::clock::{ms_before, now_ms};
use crate::error::{Error, Result};
use crate::store::ReadLimits;
use crate::store::delete_before_target;

impl Inner {
    /// Kafka's `offsetsForTimes` by store time, which never decreases along the log: a binary
    /// search over the partition's records.
    pub(crate) fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<u64>> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        let (mut lo, mut hi) = (
            part.start.load(Ordering::Acquire),
            part.end.load(Ordering::Acquire),
        );
        // The first record at or after an offset (compaction leaves gaps): its store time
        // decides, and the search skips to it.
        let first_from = |o: u64| -> Result<Option<crate::store::Record>> {
            match self.read(topic, partition, o, ReadLimits::messages(1)) {
                Ok(mut v) => Ok(v.pop()),
                Err(Error::OffsetOutOfRange { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match first_from(mid)? {
                Some(r) if r.store_timestamp() < timestamp => lo = r.offset() + 1,
                Some(_) => hi = mid,
                // Retention moved the start past `mid`: everything below it is gone.
                None => lo = mid + 1,
            }
        }
        Ok(first_from(lo)?.map(|r| r.offset()))
    }

    /// Removes key-index files whose records are all gone.
    pub(crate) fn trim_index(&self) -> Result<()> {
        if let (Some(index), Some(oldest)) = (&self.index, self.oldest_live_timestamp()?) {
            // Its only sync is the directory's after the unlinks.
            index
                .remove_older_than(oldest)
                .map_err(|e| self.sync_failed(e))?;
        }
        Ok(())
    }

    /// Store time of the first record of the file starting at `start`, if it has one.
    fn first_store_timestamp(&self, start: u64) -> Option<i64> {
        let file = self.log.find(start)?;
        let data = file.committed_bytes();
        match record::decode(data, Checks::FULL) {
            Ok(Decoded::Message(d)) => Some(d.header.store_timestamp),
            _ => None,
        }
    }

    /// Retention as `enforce_retention` asks for it: compact-only records in files about to go
    /// are cleaned first, on the caller's thread.
    pub(crate) fn enforce_retention(&self) -> Result<usize> {
        self.enforce_retention_with(true)
    }

    /// Retention; `run_cleaner` false (the flusher's periodic run) keeps the files holding
    /// uncleaned compact-only records and leaves their cleaning to the cleaner thread.
    pub(crate) fn enforce_retention_with(&self, run_cleaner: bool) -> Result<usize> {
        let opts = &self.opts.commitlog;
        let files = self.log.snapshot();
        let size = self.log.file_size();
        let written = self.written.load(Ordering::Acquire);
        // Candidates: every file wholly before the one being written.
        let sealed = files
            .iter()
            .take_while(|f| f.start_offset() + size <= written)
            .count()
            .min(files.len().saturating_sub(1));
        let mut delete = 0usize;
        let logical = self.enforce_topic_retention()?;
        let rules = self.age_rules()?;
        if !rules.is_empty() {
            // A file's newest record is no newer than the next file's first record. A file goes
            // once every rule lets it: it is past the rule's retention, or holds none of the
            // rule's live records.
            while delete < sealed {
                let next_start = files[delete].start_offset() + size;
                let Some(ts) = self.first_store_timestamp(next_start) else {
                    break;
                };
                if rules
                    .iter()
                    .all(|r| r.cutoff.is_some_and(|c| ts < c) || r.first_live >= next_start)
                {
                    delete += 1;
                } else {
                    break;
                }
            }
        }
        if let Some(max_bytes) = opts.retention_bytes {
            // Not counting a next file made ahead of the writer.
            let in_use = files
                .iter()
                .take_while(|f| f.start_offset() <= written)
                .count();
            let total = in_use as u64 * size;
            let over = total.saturating_sub(max_bytes);
            let by_size = over.div_ceil(size) as usize;
            delete = delete.max(by_size.min(sealed));
        }
        if delete == 0 {
            if logical {
                self.trim_index()?;
            }
            return Ok(0);
        }
        // Compact-only partitions must not lose records that are only in these files.
        let cut = files[delete].start_offset();
        let allowed = self.protect_compacted(cut, run_cleaner)?;
        delete = files
            .iter()
            .take(delete)
            .take_while(|f| f.start_offset() + size <= allowed)
            .count();
        if delete == 0 {
            if logical {
                self.trim_index()?;
            }
            return Ok(0);
        }
        let keep_from = files[delete].start_offset();
        drop(files);
        // Before any file goes: every queue unit of its records is made durable and put behind
        // the checkpoint (recovery could not rebuild one from a file that is gone), and the
        // starts move past them durably (recovery cannot check those units against the log,
        // and trusts the ones below the persisted start instead).
        self.snapshot_producers_durably()?;
        self.gc.sync_all(self)?;
        self.write_checkpoint()?;
        self.advance_starts_past(keep_from)?;
        // Only the files this run checked: by position, not by count, since a concurrent run
        // (the flusher's, another caller's) may have removed files from the front meanwhile.
        let removed = self
            .log
            .remove_front_while(self.fs.as_ref(), |f| f.start_offset() < keep_from)
            .map_err(|e| self.note_poison(e))?;
        self.trim_index()?;
        Ok(removed)
    }

    /// What keeps commit-log files from going by age: each topic whose policy deletes, with the
    /// time before which its retention lets records go and the position of its first live
    /// record in the log; with no such topic, the store's retention over the whole log. A topic
    /// of long (or unlimited) retention thus keeps only the files holding its live records —
    /// the delay layer's topics, whose starts the layer raises itself, do not pin the log.
    fn age_rules(&self) -> Result<Vec<AgeRule>> {
        let now = now_ms();
        let topics: Vec<_> = self.topics.read().values().cloned().collect();
        let mut rules = Vec::new();
        for t in topics.iter().filter(|t| t.effective.policy.deletes()) {
            let mut first_live = u64::MAX;
            for part in &t.partitions {
                // Below `clean_end` the records are in the compacted prefix, not the log.
                let from = part.start.load(Ordering::Acquire).max(part.clean_end());
                if from < part.end.load(Ordering::Acquire) {
                    // A live offset without its unit: keep everything rather than guess.
                    let position = part.cq.unit(from)?.map_or(0, |u| u.position);
                    first_live = first_live.min(position);
                }
            }
            rules.push(AgeRule {
                cutoff: t.effective.retention.map(|r| ms_before(now, r)),
                first_live,
            });
        }
        if rules.is_empty()
            && let Some(r) = self.opts.commitlog.retention
        {
            rules.push(AgeRule {
                cutoff: Some(ms_before(now, r)),
                first_live: 0,
            });
        }
        Ok(rules)
    }

    /// How old a commit-log file must be to go: the longest retention of the topics whose
    /// policy deletes (the store's when there are none); `None` keeps files.
    fn file_retention(&self) -> Option<std::time::Duration> {
        let topics = self.topics.read();
        let mut deleting = topics.values().filter(|t| t.effective.policy.deletes());
        match deleting.next() {
            None => self.opts.commitlog.retention,
            Some(first) => deleting.try_fold(first.effective.retention?, |longest, t| {
                Some(longest.max(t.effective.retention?))
            }),
        }
    }

    /// Raises the start of partitions of topics whose retention (by time, or by size per
    /// partition) is tighter than the files'; returns whether any start moved.
    fn enforce_topic_retention(&self) -> Result<bool> {
        let files_keep = self.file_retention();
        let now = now_ms();
        let topics: Vec<_> = self.topics.read().values().cloned().collect();
        let mut changed = false;
        let mut fenced = false;
        for t in &topics {
            let e = &t.effective;
            let by_time = e.retention.filter(|r| files_keep.is_none_or(|f| *r < f));
            if by_time.is_none() && e.retention_bytes.is_none() {
                continue;
            }
            for (p, part) in t.partitions.iter().enumerate() {
                let start = part.start.load(Ordering::Acquire);
                let end = part.end.load(Ordering::Acquire);
                let mut target = start;
                if let Some(r) = by_time {
                    let cutoff = ms_before(now, r);
                    target = self
                        .offset_for_time(&t.name, p as u32, cutoff)?
                        .unwrap_or(end);
                }
                if let Some(max) = e.retention_bytes {
                    // The queue serves offsets from `clean_end` on; below it the records are
                    // in the compacted prefix, and count too (as `partition_bytes` does).
                    let queue_from = start.max(part.clean_end()).min(end);
                    let by_queue = part.cq.first_keeping_bytes(queue_from, end, max)?;
                    let by_size = if by_queue > queue_from || queue_from == start {
                        by_queue
                    } else {
                        let left = max.saturating_sub(part.cq.bytes_between(queue_from, end)?);
                        self.first_compacted_keeping(part, start, queue_from, left)?
                    };
                    target = target.max(by_size);
                }
                if target > start {
                    let _admin = self.admin.lock();
                    if t.deleted.load(Ordering::Acquire) {
                        continue;
                    }
                    if !fenced {
                        // Recovery trusts the units below a persisted start unchecked: they
                        // must be durable and behind the checkpoint first (as for whole files).
                        self.gc.sync_all(self)?;
                        self.write_checkpoint()?;
                        fenced = true;
                    }
                    part.start.fetch_max(target, Ordering::AcqRel);
                    self.store_start_offsets()?;
                    part.cq
                        .remove_below(self.fs.as_ref(), target)
                        .map_err(|e| self.note_poison(e))?;
                    // Aborted transactions wholly below the start go (the next checkpoint
                    // rewrites the file).
                    part.txn_index.lock().drop_below(target);
                    changed = true;
                }
            }
        }
        Ok(changed)
    }

    /// Moves every partition's start past records before commit-log position `log_min` (their
    /// files are about to go), persists the starts, then deletes the queue files below them.
    fn advance_starts_past(&self, log_min: u64) -> Result<()> {
        let _admin = self.admin.lock();
        let topics: Vec<_> = self.topics.read().values().cloned().collect();
        let mut moved = Vec::new();
        for t in &topics {
            let deletes = self.rules(t).is_none_or(|r| r.deletes);
            for part in &t.partitions {
                let start = part.start.load(Ordering::Acquire);
                let end = part.end.load(Ordering::Acquire);
                // The queue serves offsets from `clean_end` on.
                let lo = start.max(part.clean_end()).min(end);
                let queue_start = part.cq.first_at_or_after(log_min, lo, end)?;
                let new_start = if queue_start > lo {
                    queue_start
                } else if lo > start && deletes {
                    // Compacted records keep their commit-log position: under `compact,delete`
                    // those whose log file is gone go with it, as Kafka deletes cleaned segments.
                    self.first_compacted_at_or_after(part, log_min, start, lo)?
                } else {
                    start
                };
                if new_start > start {
                    part.start.store(new_start, Ordering::Release);
                    moved.push((Arc::clone(part), new_start));
                }
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        // Persisted before any file goes (as `delete_before` does).
        self.store_start_offsets()?;
        for (part, start) in moved {
            part.cq
                .remove_below(self.fs.as_ref(), start)
                .map_err(|e| self.note_poison(e))?;
            part.txn_index.lock().drop_below(start);
        }
        Ok(())
    }

    pub(crate) fn delete_before(&self, topic: &str, partition: u32, offset: u64) -> Result<u64> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        let _admin = self.admin.lock();
        let start = part.start.load(Ordering::Acquire);
        let end = part.end.load(Ordering::Acquire);
        let Some(offset) = delete_before_target(topic, partition, offset, start, end)? else {
            return Ok(start);
        };
        // Recovery trusts the queue units below a persisted start without checking them
        // against the log (retention may have deleted their records): they must be durable
        // and behind the checkpoint before the start says so, as retention makes them.
        self.gc.sync_all(self)?;
        self.write_checkpoint()?;
        part.start.store(offset, Ordering::Release);
        // Persist before deleting files: after a crash the start must not fall back below
        // records whose queue files are gone.
        self.store_start_offsets()?;
        part.cq
            .remove_below(self.fs.as_ref(), offset)
            .map_err(|e| self.note_poison(e))?;
        part.txn_index.lock().drop_below(offset);
        drop(_admin);
        self.trim_index()?;
        Ok(offset)
    }
}

/// One topic's say on deleting commit-log files by age (see `Inner::age_rules`).
struct AgeRule {
    /// Records stored before this time may go (`None`: unlimited retention).
    cutoff: Option<i64>,
    /// Log position of the topic's first live record (`u64::MAX`: none in the log).
    first_live: u64,
}
