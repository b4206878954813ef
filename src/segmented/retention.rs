//! Retention of a partition's segments by time and size, and `delete_before`.

use std::sync::atomic::Ordering;

use super::partition::{Ctx, PartState, Partition, remove_segment_files};
use super::segment::SegmentMeta;
use crate::error::{Error, Result};

impl Partition {
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
}
