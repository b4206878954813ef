//! Consume queues: per-partition files of 20-byte units (commit-log position i64, size i32, tag
//! hash i64, big-endian) — RocketMQ's layout. Unit `n` (queue offset `n`) lives at byte `n × 20`
//! of the queue; files are named by that byte offset. A unit whose size is 0 is unwritten.
//!
//! The queue is derived data: every unit is checked against the record it points to when read
//! (topic, partition and queue offset must match), and recovery rebuilds units from the log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::{Mutex, RwLock};

use super::file_queue::FileQueue;
use super::queue_cache::{Evictable, QueueCache};
use crate::error::{Error, Result};
use crate::io::{self, FileSystem, MapMode, MappedFile};

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

/// Watermarks of one queue file while its queue is unmapped.
#[derive(Clone, Copy, Debug)]
struct Mark {
    start: u64,
    end: usize,
    flushed: usize,
}

/// One partition's consume queue. Its files are grow-on-demand (disk use follows the units
/// written) and mapped only while the partition is in the store's [`QueueCache`]; an evicted
/// queue keeps its files' watermarks and maps them again on its next use.
#[derive(Debug)]
pub(crate) struct ConsumeQueue {
    inner: Arc<CqInner>,
}

struct CqInner {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    file_size: u64,
    cache: Option<Arc<QueueCache>>,
    /// The mapped files, or `None` while evicted.
    files: RwLock<Option<Arc<FileQueue>>>,
    /// The files' watermarks while evicted.
    marks: Mutex<Vec<Mark>>,
    referenced: AtomicBool,
    /// The directory entry of the queue's first file is not durable yet (its creation skipped
    /// the directory sync, see [`FileQueue::defer_first_dir_sync`]); the next flush syncs it.
    /// Kept here, not in the mapped files, so it survives an eviction.
    dir_unsynced: Arc<AtomicBool>,
}

impl std::fmt::Debug for CqInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeQueue")
            .field("dir", &self.dir)
            .finish()
    }
}

impl Evictable for CqInner {
    fn try_evict(&self) -> Option<usize> {
        let mut files = self.files.try_write()?;
        let Some(fq) = files.as_ref() else {
            return Some(0);
        };
        // Anyone else holding the queue (an append, a flush) may be moving its watermarks.
        if Arc::strong_count(fq) != 1 {
            return None;
        }
        let marks: Vec<Mark> = fq
            .snapshot()
            .iter()
            .map(|f| Mark {
                start: f.start_offset(),
                end: f.committed(),
                flushed: f.flushed(),
            })
            .collect();
        let n = usize::from(!marks.is_empty());
        *self.marks.lock() = marks;
        *files = None;
        Some(n)
    }

    fn referenced(&self) -> &AtomicBool {
        &self.referenced
    }
}

impl ConsumeQueue {
    ///
    /// `fresh`: the caller has just created `dir` (durably), so it is empty and is not listed
    /// (a new topic of 1,024 partitions listed each new directory once).
    pub(crate) fn open(
        fs: &Arc<dyn FileSystem>,
        dir: &Path,
        units_per_file: u32,
        cache: Option<Arc<QueueCache>>,
        fresh: bool,
    ) -> Result<Self> {
        let file_size = u64::from(units_per_file) * UNIT_SIZE;
        let mut fq = match fresh {
            true => FileQueue::new_growable(dir, file_size),
            false => FileQueue::open_growable(fs.as_ref(), dir, file_size, UNIT_SIZE)?,
        };
        let dir_unsynced = Arc::new(AtomicBool::new(false));
        fq.defer_first_dir_sync(Arc::clone(&dir_unsynced));
        Ok(ConsumeQueue {
            inner: Arc::new(CqInner {
                fs: Arc::clone(fs),
                dir: dir.to_owned(),
                file_size: fq.file_size(),
                cache,
                files: RwLock::new(Some(Arc::new(fq))),
                marks: Mutex::new(Vec::new()),
                referenced: AtomicBool::new(true),
                dir_unsynced,
            }),
        })
    }

    /// Puts the queue under the store's bound on mappings (after recovery: a queue in the
    /// cache is shared and cannot be recovered).
    pub(crate) fn enroll(&self) {
        if let Some(cache) = &self.inner.cache {
            // One unit per partition (see `queue_cache`), once it has a file to map.
            let n = self
                .inner
                .files
                .read()
                .as_ref()
                .map_or(0, |fq| usize::from(fq.len() > 0));
            let weak: Weak<dyn Evictable> = Arc::downgrade(&self.inner) as Weak<dyn Evictable>;
            cache.enroll(weak, n);
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The mapped files, mapping them again if the queue was evicted. Holding the result keeps
    /// the queue mapped (writers hold it while they write).
    pub(crate) fn files(&self) -> Result<Arc<FileQueue>> {
        let inner = &self.inner;
        inner.referenced.store(true, Ordering::Relaxed);
        if let Some(fq) = &*inner.files.read() {
            return Ok(Arc::clone(fq));
        }
        let mut slot = inner.files.write();
        if let Some(fq) = &*slot {
            return Ok(Arc::clone(fq));
        }
        let marks = inner.marks.lock().clone();
        let mut files = Vec::with_capacity(marks.len());
        for m in &marks {
            let path = inner.dir.join(io::offset_name(m.start));
            let mut f = MappedFile::map(
                inner.fs.as_ref(),
                &path,
                m.start,
                inner.file_size,
                MapMode::OpenGrowable,
            )
            .map_err(|e| Error::io(&path, e))?;
            f.set_recovered_end(m.end, m.flushed);
            files.push(Arc::new(f));
        }
        let mut fq = FileQueue::from_files(&inner.dir, inner.file_size, files);
        fq.defer_first_dir_sync(Arc::clone(&inner.dir_unsynced));
        let fq = Arc::new(fq);
        *slot = Some(Arc::clone(&fq));
        drop(slot);
        self.enroll();
        Ok(fq)
    }

    /// Number of files and their allocated bytes, without mapping an evicted queue.
    pub(crate) fn disk_usage(&self) -> (u64, u64) {
        if let Some(fq) = &*self.inner.files.read() {
            return (fq.len() as u64, fq.allocated_bytes());
        }
        let marks = self.inner.marks.lock();
        let bytes = marks
            .iter()
            .map(|m| {
                let path = self.inner.dir.join(io::offset_name(m.start));
                self.inner.fs.file_len(&path).unwrap_or(0)
            })
            .sum();
        (marks.len() as u64, bytes)
    }

    /// Sum of the record sizes of units `from..to` (units not written count 0).
    pub(crate) fn bytes_between(&self, from: u64, to: u64) -> Result<u64> {
        let fq = self.files()?;
        let mut total = 0u64;
        let mut offset = from;
        while offset < to {
            let byte = offset * UNIT_SIZE;
            let Some(file) = fq.find(byte) else {
                // A gap in the files (below the start): skip to the next file.
                match fq.snapshot().iter().find(|f| f.start_offset() > byte) {
                    Some(f) => offset = f.start_offset().div_ceil(UNIT_SIZE),
                    None => break,
                }
                continue;
            };
            let first = (byte - file.start_offset()) as usize;
            let file_units = (fq.file_size() - (byte - file.start_offset())) / UNIT_SIZE;
            let published = (file.committed().saturating_sub(first) as u64) / UNIT_SIZE;
            let n = file_units.min(to - offset).min(published);
            if n == 0 {
                break;
            }
            if let Some(bytes) = file.read(first, (n * UNIT_SIZE) as usize) {
                total += bytes
                    .chunks_exact(UNIT_SIZE as usize)
                    .filter_map(Unit::decode)
                    .map(|u| u64::from(u.size))
                    .sum::<u64>();
            }
            offset += n;
        }
        Ok(total)
    }

    /// The first offset from which the records up to `to` take at most `max` bytes (Kafka's
    /// `retention.bytes` on one partition): `from` when they all fit.
    pub(crate) fn first_keeping_bytes(&self, from: u64, to: u64, max: u64) -> Result<u64> {
        let mut total = 0u64;
        let mut offset = to;
        while offset > from {
            let size = self.unit(offset - 1)?.map_or(0, |u| u64::from(u.size));
            if total + size > max {
                return Ok(offset);
            }
            total += size;
            offset -= 1;
        }
        Ok(from)
    }

    /// Unmaps the queue for good (its topic was deleted).
    pub(crate) fn forget(&self) {
        if let Some(n) = self.inner.try_evict()
            && let Some(cache) = &self.inner.cache
        {
            cache.forgot(n);
        }
    }

    /// Smallest queue offset the files cover.
    pub(crate) fn min_offset(&self) -> Result<Option<u64>> {
        Ok(self.files()?.min_offset().map(|b| b / UNIT_SIZE))
    }

    /// The unit at `offset`, if published.
    pub(crate) fn unit(&self, offset: u64) -> Result<Option<Unit>> {
        let byte = offset * UNIT_SIZE;
        let Some(file) = self.files()?.find(byte) else {
            return Ok(None);
        };
        let at = (byte - file.start_offset()) as usize;
        Ok(file.read(at, UNIT_SIZE as usize).and_then(Unit::decode))
    }

    /// The published units from `offset` on that lie in the queue file holding it, at most
    /// `max` of them: the file and the byte position of the first in it, and how many there
    /// are (at least one). `None` when the unit at `offset` is not published or its file is
    /// gone. One lookup for a whole run, so a scan over many units pays per file, not per unit.
    pub(crate) fn unit_run(
        &self,
        offset: u64,
        max: u64,
    ) -> Result<Option<(Arc<MappedFile>, usize, usize)>> {
        let byte = offset * UNIT_SIZE;
        let Some(file) = self.files()?.find(byte) else {
            return Ok(None);
        };
        let at = (byte - file.start_offset()) as usize;
        let published = file.committed().saturating_sub(at) as u64 / UNIT_SIZE;
        let n = published.min(max) as usize;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some((file, at, n)))
    }

    /// Writes the unit for `offset`, which must be the next one, creating its file if needed.
    /// Called during recovery; the append path plans files and space once per batch and uses
    /// [`put_into`](Self::put_into).
    pub(crate) fn put(&self, offset: u64, unit: &Unit) -> Result<()> {
        let fq = self.files()?;
        let byte = offset * UNIT_SIZE;
        self.ensure_file_for(&fq, byte)?;
        self.ensure_allocated(&fq, byte, byte + UNIT_SIZE)?;
        let file = self.file_for(&fq, byte)?;
        self.put_into(&file, offset, unit)?;
        file.commit_all();
        Ok(())
    }

    /// The existing file holding queue byte `byte`.
    pub(crate) fn file_for(&self, fq: &FileQueue, byte: u64) -> Result<Arc<MappedFile>> {
        #[cfg(test)]
        super::append::probe::count(&super::append::probe::QUEUE_FILE_LOOKUPS);
        fq.find(byte)
            .ok_or_else(|| Error::corrupted(self.dir(), byte, "consume-queue file is missing"))
    }

    /// The file holding queue bytes `[from, to)` whole, with them allocated, found with one
    /// walk of the files: what an append of a few units needs in the common case. `None` when
    /// no one existing file holds them all (the caller then plans with
    /// [`ensure_file_for`](Self::ensure_file_for) and [`ensure_allocated`](Self::ensure_allocated)).
    pub(crate) fn writable_file(
        &self,
        fq: &FileQueue,
        from: u64,
        to: u64,
    ) -> Result<Option<Arc<MappedFile>>> {
        #[cfg(test)]
        super::append::probe::count(&super::append::probe::QUEUE_FILE_LOOKUPS);
        let Some(file) = fq.find(from) else {
            return Ok(None);
        };
        let start = file.start_offset();
        if to > start + file.len() as u64 {
            return Ok(None);
        }
        file.ensure_allocated((to - start) as usize)
            .map_err(|e| Error::io(file.path(), e))?;
        Ok(Some(file))
    }

    /// Writes the unit for `offset` into `file` (which holds it, allocated) without publishing
    /// it. There is one writer: the append lock's holder, or recovery.
    pub(crate) fn put_into(&self, file: &MappedFile, offset: u64, unit: &Unit) -> Result<()> {
        let at = (offset * UNIT_SIZE - file.start_offset()) as usize;
        // One take of the file's cursor: the write happens only where the unit belongs.
        if file.append_at(at, &[&unit.encode()]).is_some() {
            return Ok(());
        }
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
        Err(Error::corrupted(
            file.path(),
            at as u64,
            "consume-queue unit past the file's allocated length",
        ))
    }

    /// Makes sure the file holding queue byte `byte` exists (creating the next file if needed),
    /// so that `put` cannot fail for lack of a file halfway through a batch.
    /// Every file up to the one holding `byte` is created, in order, so the queue's files stay
    /// contiguous even when one batch spans several of them.
    pub(crate) fn ensure_file_for(&self, fq: &FileQueue, byte: u64) -> Result<()> {
        #[cfg(test)]
        super::append::probe::count(&super::append::probe::QUEUE_FILE_LOOKUPS);
        let size = fq.file_size();
        while fq.find(byte).is_none() {
            let next = match fq.last() {
                Some(last) if last.start_offset() < byte => last.start_offset() + size,
                _ => byte - byte % size,
            };
            let before = fq.len();
            fq.create_if_missing(self.inner.fs.as_ref(), next)?;
            if let Some(cache) = &self.inner.cache
                && before == 0
                && fq.len() > 0
            {
                // The partition's first file: it now counts against the bound.
                cache.added(1);
            }
        }
        Ok(())
    }

    /// Allocates the bytes `[from, to)` of the queue in the files (which exist) holding them, so
    /// that writing the units cannot fail, or fault, halfway through a batch.
    pub(crate) fn ensure_allocated(&self, fq: &FileQueue, from: u64, to: u64) -> Result<()> {
        #[cfg(test)]
        super::append::probe::count(&super::append::probe::QUEUE_FILE_LOOKUPS);
        let mut at = from;
        while at < to {
            let file = self.file_for(fq, at)?;
            let file_end = file.start_offset() + file.len() as u64;
            let upto = (to.min(file_end) - file.start_offset()) as usize;
            file.ensure_allocated(upto)
                .map_err(|e| Error::io(file.path(), e))?;
            at = file_end;
        }
        Ok(())
    }

    /// Flushes every file's published units. Returns the first error.
    pub(crate) fn flush(&self) -> Result<()> {
        // First the directory entry of a first file created since the last flush: the
        // checkpoint this flush is for will trust the file's units.
        if self.inner.dir_unsynced.swap(false, Ordering::AcqRel) {
            match self.inner.fs.sync_dir(&self.inner.dir) {
                Ok(()) => {}
                // Removed with its topic by a deletion this flush raced: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.inner.dir_unsynced.store(true, Ordering::Release);
                    return Err(Error::io(&self.inner.dir, e));
                }
            }
        }
        if self.inner.files.read().is_none()
            && self.inner.marks.lock().iter().all(|m| m.flushed >= m.end)
        {
            // Evicted with everything durable: nothing to map again for.
            return Ok(());
        }
        // A file is only written while it is the last one, and flushing is a no-op for a file
        // whose published bytes are already flushed, so walking back until a clean file that
        // holds units is found covers everything written since the last flush. Empty files are
        // passed over: an append that failed after creating the next file leaves an empty,
        // "clean" last file in front of the dirty one it filled.
        for f in self.files()?.snapshot().iter().rev() {
            if f.committed() == 0 {
                // Nothing in it yet (made ahead by the allocation thread, or left by an append
                // that failed after creating it).
                continue;
            }
            if f.flushed() == f.committed() {
                break;
            }
            f.flush(f.len()).map_err(|e| Error::io(f.path(), e))?;
        }
        Ok(())
    }

    /// Recovery: finds the end of the units — the units for records before `log_end`, which
    /// the checkpoint guarantees durable — erases everything after it, and positions the writer.
    /// Returns the end offset. Runs before the queue is shared or enrolled.
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
        let inner = Arc::get_mut(&mut self.inner)
            .ok_or_else(|| Error::InvalidArgument("queue shared during recovery".into()))?;
        let fq = inner
            .files
            .get_mut()
            .as_mut()
            .and_then(Arc::get_mut)
            .ok_or_else(|| Error::InvalidArgument("queue shared during recovery".into()))?;
        recover_files(fq, fs, log_end, after_crash, check)
    }

    /// Unlinks files whose units all lie below `offset`. Returns how many.
    pub(crate) fn remove_below(&self, fs: &dyn FileSystem, offset: u64) -> Result<usize> {
        let fq = self.files()?;
        let size = fq.file_size();
        fq.remove_front_while(fs, |f: &MappedFile| {
            f.start_offset() + size <= offset * UNIT_SIZE
        })
    }

    /// First offset in `[lo, hi)` whose unit points at or after `position` (units' positions
    /// increase with the offset); `hi` if none.
    pub(crate) fn first_at_or_after(&self, position: u64, mut lo: u64, mut hi: u64) -> Result<u64> {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.unit(mid)? {
                Some(u) if u.position < position => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }
}

fn recover_files(
    files_queue: &mut FileQueue,
    fs: &dyn FileSystem,
    log_end: u64,
    after_crash: bool,
    check: &mut dyn FnMut(u64, &Unit) -> bool,
) -> Result<u64> {
    let file_size = files_queue.file_size();
    let unit_ok = |b: &[u8]| Unit::decode(b).is_some_and(|u| u.position < log_end);
    let files = files_queue.files_mut();
    let min_byte = files.first().map_or(0, |f| f.start_offset());
    let mut end_byte = min_byte;
    for f in files.iter_mut().rev() {
        let file = exclusive(f)?;
        // Only the allocated prefix of a growable file holds units.
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
            let Some(f) = files.get_mut(idx) else {
                break;
            };
            let file = exclusive(f)?;
            let at = (offset * UNIT_SIZE - file.start_offset()) as usize;
            let unit = file
                .contents()
                .get(at..at + UNIT_SIZE as usize)
                .and_then(Unit::decode);
            if unit.is_some_and(|u| u.position < log_end && check(offset, &u)) {
                break;
            }
            end_byte -= UNIT_SIZE;
        }
    }
    // Keep the file holding `end_byte`; drop the ones after it; erase its tail.
    let keep_start = end_byte - end_byte % file_size;
    files_queue.remove_from(fs, keep_start + file_size)?;
    let files = files_queue.files_mut();
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
