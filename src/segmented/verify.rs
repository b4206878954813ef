//! `verify` for one partition: every batch's checks, offsets increasing, every index entry
//! against the log.

use std::sync::atomic::Ordering;

use super::batch;
use super::index::{self, OFFSET_ENTRY, TIME_ENTRY};
use super::partition::{Ctx, Partition};
use super::segment::{self, SegmentMeta};
use crate::error::{Error, Result};
use crate::io;

impl Partition {
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
