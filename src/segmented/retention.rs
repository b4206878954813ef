//! Retention of a partition's segments by time and size, and `delete_before`.
//!
//! Time retention compares a segment's newest timestamp (its last batch's, kept in memory and in
//! the sealed time index's last entry) with `now - retention`; a segment whose newest timestamp
//! is unknown (≤ 0) is never deleted by time. As in Kafka, the active segment expires too: when
//! every segment is past retention, the active one is rolled (an empty segment takes its place
//! at the partition's end) and deleted, so an idle partition does not keep old data — or pin the
//! key-index files its records are in — forever.

use std::sync::atomic::Ordering;

use super::partition::{Ctx, PartState, Partition, remove_segment_files};
use super::segment::{self, SegmentMeta};
use crate::clock::ms_before;
use crate::error::{Error, Result};
use crate::topic_config::Effective;

impl Partition {
    /// Deletes segments past retention; returns how many.
    pub(crate) fn enforce_retention(&self, ctx: &Ctx, now: i64, o: &Effective) -> Result<usize> {
        // A seal in progress renames index files into place: let it finish first, so it never
        // recreates the files of a segment removed here.
        let _seal = self.seal_lock.lock();
        let removed = {
            let mut st = self.state.lock();
            if self.deleted.load(Ordering::Acquire) {
                return Ok(0);
            }
            let sealed = st.segments.len().saturating_sub(1);
            let mut n = 0;
            if let Some(r) = o.retention {
                let cutoff = ms_before(now, r);
                let expired = |m: &SegmentMeta| m.max_timestamp > 0 && m.max_timestamp < cutoff;
                while n < sealed && expired(&st.segments[n]) {
                    n += 1;
                }
                let active = st
                    .segments
                    .last()
                    .filter(|m| m.size > 0 && expired(m))
                    .cloned();
                if let (true, Some(active)) = (n == sealed, active) {
                    let handle = self.handle(ctx, &active)?;
                    self.roll(ctx, &mut st, handle, active.next_offset)?;
                    n += 1;
                }
            }
            if let Some(max) = o.retention_bytes {
                let sealed = st.segments.len().saturating_sub(1);
                let mut total: u64 = st.segments[n..].iter().map(|m| m.size).sum();
                while n < sealed && total > max && total - st.segments[n].size >= max.min(total) {
                    total -= st.segments[n].size;
                    n += 1;
                    if total <= max {
                        break;
                    }
                }
            }
            self.drain_front(ctx, &mut st, n)
        };
        self.remove_files(ctx, &removed)?;
        Ok(removed.len())
    }

    /// Takes the first `n` segments out of the partition (under its lock) and raises the start;
    /// their files are removed by [`Partition::remove_files`] once the lock is released.
    fn drain_front(&self, ctx: &Ctx, st: &mut PartState, n: usize) -> Vec<SegmentMeta> {
        let removed: Vec<SegmentMeta> = st.segments.drain(..n).collect();
        if let Some(first) = st.segments.first() {
            self.start.fetch_max(first.base, Ordering::AcqRel);
        }
        for m in &removed {
            ctx.cache.remove((self.uid, m.base));
        }
        st.pending
            .retain(|(b, _)| removed.iter().all(|m| m.base != *b));
        removed
    }

    fn remove_files(&self, ctx: &Ctx, removed: &[SegmentMeta]) -> Result<()> {
        if removed.is_empty() {
            return Ok(());
        }
        // Live producers' state must not go with the segments that hold their batches: a
        // snapshot at the end (log synced first) covers every one of them before any goes.
        self.snapshot_producers_durably(ctx)?;
        for m in removed {
            remove_segment_files(ctx.fs.as_ref(), &self.dir, m.base)?;
            if m.swapping {
                // A cleaned segment not yet renamed into place: its `.swap` files go too, or
                // the next open would finish the swap and bring it back.
                for p in [
                    segment::log_path(&self.dir, m.base),
                    segment::index_path(&self.dir, m.base),
                    segment::time_index_path(&self.dir, m.base),
                ] {
                    let p = segment::with_suffix(&p, segment::SWAP_SUFFIX);
                    crate::io::remove_if_exists(ctx.fs.as_ref(), &p)
                        .map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        ctx.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        // Producer snapshots of the removed segments go with them (the newest one stays, so
        // live producers keep their state).
        super::producers::prune(ctx.fs.as_ref(), &self.dir, &self.segment_bases())
    }

    /// Raises the log start offset (already persisted by the caller) and deletes segments wholly
    /// below it.
    pub(crate) fn delete_below_start(&self, ctx: &Ctx) -> Result<()> {
        let start = self.start.load(Ordering::Acquire);
        let _seal = self.seal_lock.lock();
        let removed = {
            let mut st = self.state.lock();
            if self.deleted.load(Ordering::Acquire) {
                return Ok(());
            }
            let n = st.segments[..st.segments.len().saturating_sub(1)]
                .iter()
                .take_while(|m| m.next_offset <= start)
                .count();
            self.drain_front(ctx, &mut st, n)
        };
        self.remove_files(ctx, &removed)
    }
}
