//! Appends to a partition: stamping the batch, rolling to a new segment, sealing the old one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::batch;
use super::partition::{Ctx, Partition};
use super::segment::{self, SegmentHandle, SegmentMeta};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::store::{AppendResult, Message};

impl Partition {
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
}
