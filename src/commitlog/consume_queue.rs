//! Consume queues: per-partition files of 20-byte units (commit-log position i64, size i32, tag
//! hash i64, big-endian) — RocketMQ's layout. Unit `n` (queue offset `n`) lives at byte `n × 20`
//! of the queue; files are named by that byte offset. A unit whose size is 0 is unwritten.
//!
//! The queue is derived data: every unit is checked against the record it points to when read
//! (topic, partition and queue offset must match), and recovery rebuilds units from the log.

use std::path::Path;
use std::sync::Arc;

use super::file_queue::FileQueue;
use crate::error::{Error, Result};
use crate::io::{FileSystem, MappedFile};

/// Size of one unit.
pub const UNIT_SIZE: u64 = 20;

/// One consume-queue unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Commit-log position of the record.
    pub position: u64,
    /// Record size.
    pub size: u32,
    /// Tag hash (Java `String.hashCode` of TAGS; 0 without tags).
    pub tag_hash: i64,
}

impl Unit {
    /// Encodes the unit.
    pub fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&(self.position as i64).to_be_bytes());
        b[8..12].copy_from_slice(&(self.size as i32).to_be_bytes());
        b[12..].copy_from_slice(&self.tag_hash.to_be_bytes());
        b
    }

    /// Decodes a unit; `None` for an unwritten (size 0) or impossible (negative) one.
    pub fn decode(b: &[u8]) -> Option<Unit> {
        let b: &[u8; 20] = b.get(..20)?.try_into().ok()?;
        let position = i64::from_be_bytes(b[..8].try_into().ok()?);
        let size = i32::from_be_bytes(b[8..12].try_into().ok()?);
        let tag_hash = i64::from_be_bytes(b[12..].try_into().ok()?);
        if size <= 0 || position < 0 {
            return None;
        }
        Some(Unit {
            position: position as u64,
            size: size as u32,
            tag_hash,
        })
    }
}

/// One partition's consume queue.
#[derive(Debug)]
pub(crate) struct ConsumeQueue {
    files: FileQueue,
}

impl ConsumeQueue {
    pub(crate) fn open(fs: &dyn FileSystem, dir: &Path, units_per_file: u32) -> Result<Self> {
        Ok(ConsumeQueue {
            files: FileQueue::open(fs, dir, u64::from(units_per_file) * UNIT_SIZE)?,
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        self.files.dir()
    }

    pub(crate) fn files(&self) -> &FileQueue {
        &self.files
    }

    /// Smallest queue offset the files cover.
    pub(crate) fn min_offset(&self) -> Option<u64> {
        self.files.min_offset().map(|b| b / UNIT_SIZE)
    }

    /// The unit at `offset`, if published.
    pub(crate) fn unit(&self, offset: u64) -> Option<Unit> {
        let byte = offset * UNIT_SIZE;
        let file = self.files.find(byte)?;
        let at = (byte - file.start_offset()) as usize;
        Unit::decode(file.read(at, UNIT_SIZE as usize)?)
    }

    /// Writes the unit for `offset`, which must be the next one, creating its file if needed.
    /// Called during recovery; the append path uses [`file_for`](Self::file_for) and
    /// [`put_into`](Self::put_into) to look the file up once per batch.
    pub(crate) fn put(&self, fs: &dyn FileSystem, offset: u64, unit: &Unit) -> Result<()> {
        let byte = offset * UNIT_SIZE;
        self.ensure_file_for(fs, byte)?;
        let file = self.file_for(byte)?;
        self.put_into(&file, offset, unit)?;
        file.commit_all();
        Ok(())
    }

    /// The existing file holding queue byte `byte`.
    pub(crate) fn file_for(&self, byte: u64) -> Result<Arc<MappedFile>> {
        self.files
            .find(byte)
            .ok_or_else(|| Error::corrupted(self.dir(), byte, "consume-queue file is missing"))
    }

    /// Writes the unit for `offset` into `file` (which holds it) without publishing it. There is
    /// one writer: the append lock's holder, or recovery.
    pub(crate) fn put_into(&self, file: &MappedFile, offset: u64, unit: &Unit) -> Result<()> {
        let at = (offset * UNIT_SIZE - file.start_offset()) as usize;
        let written = file.write_position();
        if written != at {
            return Err(Error::corrupted(
                file.path(),
                at as u64,
                format!(
                    "consume queue write at unit {offset} but the queue ends at byte {written}"
                ),
            ));
        }
        file.append(&[&unit.encode()]);
        Ok(())
    }

    /// Makes sure the file holding queue byte `byte` exists (creating the next file if needed),
    /// so that `put` cannot fail for lack of space halfway through a batch.
    /// Every file up to the one holding `byte` is created, in order, so the queue's files stay
    /// contiguous even when one batch spans several of them.
    pub(crate) fn ensure_file_for(&self, fs: &dyn FileSystem, byte: u64) -> Result<()> {
        let size = self.files.file_size();
        while self.files.find(byte).is_none() {
            let next = match self.files.last() {
                Some(last) if last.start_offset() < byte => last.start_offset() + size,
                _ => byte - byte % size,
            };
            self.files.create(fs, next)?;
        }
        Ok(())
    }

    /// Creates the file that will hold queue byte `byte` (the next file of the queue).
    pub(crate) fn create_file_for(
        &self,
        fs: &dyn FileSystem,
        byte: u64,
    ) -> Result<Arc<MappedFile>> {
        let size = self.files.file_size();
        self.files.create(fs, byte - byte % size)
    }

    /// Flushes every file's published units. Returns the first error.
    pub(crate) fn flush(&self) -> Result<()> {
        // A file is only written while it is the last one, and flushing is a no-op for a file
        // whose published bytes are already flushed, so walking back until a clean file is found
        // covers everything written since the last flush.
        for f in self.files.snapshot().iter().rev() {
            if f.flushed() == f.committed() {
                break;
            }
            f.flush(f.len()).map_err(|e| Error::io(f.path(), e))?;
        }
        Ok(())
    }

    /// Recovery: finds the end of the units — the units for records before `log_end`, which
    /// the checkpoint guarantees durable — erases everything after it, and positions the writer.
    /// Returns the end offset.
    ///
    /// After a crash, units past the durable prefix may be torn; a torn unit can look valid, so
    /// the candidate end found by binary search is walked back until its last unit `check`s out
    /// against the log (it names the record that carries the same queue offset), and the tail is
    /// zeroed durably. A clean open trusts the search and scans nothing else.
    pub(crate) fn recover(
        &mut self,
        fs: &dyn FileSystem,
        log_end: u64,
        after_crash: bool,
        check: &mut dyn FnMut(u64, &Unit) -> bool,
    ) -> Result<u64> {
        let file_size = self.files.file_size();
        let unit_ok = |b: &[u8]| Unit::decode(b).is_some_and(|u| u.position < log_end);
        let files = self.files.files_mut();
        let min_byte = files.first().map_or(0, |f| f.start_offset());
        let mut end_byte = min_byte;
        for f in files.iter_mut().rev() {
            let file = exclusive(f)?;
            let data = file.contents();
            let units = data.len() / UNIT_SIZE as usize;
            let (mut lo, mut hi) = (0usize, units);
            while lo < hi {
                let mid = (lo + hi) / 2;
                let at = mid * UNIT_SIZE as usize;
                if unit_ok(&data[at..at + UNIT_SIZE as usize]) {
                    lo = mid + 1
                } else {
                    hi = mid
                }
            }
            if lo > 0 {
                end_byte = file.start_offset() + lo as u64 * UNIT_SIZE;
                break;
            }
        }
        if after_crash {
            while end_byte > min_byte {
                let offset = end_byte / UNIT_SIZE - 1;
                let idx = ((offset * UNIT_SIZE - min_byte) / file_size) as usize;
                let file = exclusive(&mut files[idx])?;
                let at = (offset * UNIT_SIZE - file.start_offset()) as usize;
                let unit = Unit::decode(&file.contents()[at..at + UNIT_SIZE as usize]);
                if unit.is_some_and(|u| u.position < log_end && check(offset, &u)) {
                    break;
                }
                end_byte -= UNIT_SIZE;
            }
        }
        // Keep the file holding `end_byte`; drop the ones after it; erase its tail.
        let keep_start = end_byte - end_byte % file_size;
        self.files.remove_from(fs, keep_start + file_size)?;
        let files = self.files.files_mut();
        let n = files.len();
        for (i, f) in files.iter_mut().enumerate() {
            let file = exclusive(f)?;
            if i + 1 < n {
                let len = file.len();
                file.set_recovered_end(len, len);
                continue;
            }
            let pos = (end_byte - file.start_offset()) as usize;
            if after_crash {
                file.zero_from(pos).map_err(|e| Error::io(file.path(), e))?;
            }
            file.set_recovered_end(pos, pos);
        }
        Ok(end_byte / UNIT_SIZE)
    }

    /// Unlinks files whose units all lie below `offset`. Returns how many.
    pub(crate) fn remove_below(&self, fs: &dyn FileSystem, offset: u64) -> Result<usize> {
        let size = self.files.file_size();
        self.files.remove_front_while(fs, |f: &MappedFile| {
            f.start_offset() + size <= offset * UNIT_SIZE
        })
    }

    /// First offset in `[lo, hi)` whose unit points at or after `position` (units' positions
    /// increase with the offset); `hi` if none.
    pub(crate) fn first_at_or_after(&self, position: u64, mut lo: u64, mut hi: u64) -> u64 {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.unit(mid) {
                Some(u) if u.position < position => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }
}

fn exclusive(f: &mut Arc<MappedFile>) -> Result<&mut MappedFile> {
    Arc::get_mut(f).ok_or_else(|| Error::InvalidArgument("file shared during recovery".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_round_trip() {
        let u = Unit {
            position: 5659,
            size: 167,
            tag_hash: -178739394,
        };
        assert_eq!(Unit::decode(&u.encode()), Some(u));
        assert_eq!(Unit::decode(&[0u8; 20]), None);
        assert_eq!(Unit::decode(&[0u8; 19]), None);
    }
}
