//! `verify` for one partition: every batch's checks, offsets increasing, every index entry
//! against the log.

use std::sync::atomic::Ordering;

use super::batch;
use super::index::{self, OFFSET_ENTRY, TIME_ENTRY};
use super::partition::{Ctx, Partition};
use super::segment;
use crate::error::{Error, Result};
use crate::io;

impl Partition {
    /// Every batch's checks, offsets increasing, and every index entry against the log.
    pub(crate) fn verify(&self, ctx: &Ctx, problems: &mut Vec<String>) -> Result<(u64, u64)> {
        let bases: Vec<u64> = self.state.lock().segments.iter().map(|m| m.base).collect();
        let mut batches = 0u64;
        let mut entries = 0u64;
        let mut prev_last: Option<u64> = None;
        // The partition end as of the newest segment looked at: the log is checked against it,
        // not against an end that appends moved on since.
        let mut end = None;
        for base in bases {
            // Each segment's meta and handle are taken together under the partition lock, as
            // the readers do: a handle of a segment not sealed yet is a writable mapping whose
            // write position is the meta's size, so one opened from a size copied earlier would
            // be stale, and once cached, the next append would write over published batches.
            let (m, h) = {
                let st = self.state.lock();
                let Ok(i) = st.segments.binary_search_by_key(&base, |m| m.base) else {
                    // Removed meanwhile (retention, `delete_before`, compaction's swap).
                    continue;
                };
                let m = st.segments[i].clone();
                let h = self.handle(ctx, &m)?;
                if i + 1 == st.segments.len() {
                    end = Some(self.end.load(Ordering::Acquire));
                }
                (m, h)
            };
            let m = &m;
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
            // Only the entries of the batches below `m.size`: appends after the lock was let go
            // add entries (through this handle) for batches this pass does not look at.
            let oi = h.offset_entries();
            let oi = &oi[..oi.len().min(m.index_entries as usize * OFFSET_ENTRY)];
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
            let ti = h.time_entries();
            let ti = &ti[..ti.len().min(m.time_entries as usize * TIME_ENTRY)];
            if let Err(e) = index::check_time_index(ti) {
                problems.push(format!(
                    "{}: {e}",
                    segment::time_index_path(&self.dir, m.base).display()
                ));
            }
            entries += (ti.len() / TIME_ENTRY) as u64;
        }
        if let (Some(p), Some(end)) = (prev_last, end)
            && p + 1 != end
        {
            problems.push(format!(
                "{}: log ends at {p} but the partition end is {end}",
                self.dir.display(),
            ));
        }
        Ok((batches, entries))
    }
}
