//! [`MappedFile`]: safe, concurrent access to a fixed-size mapped file.
//!
//! Threat model. The region is shared by one writer and many readers without a lock on the read
//! path. Soundness rests on three watermarks: bytes below `committed` are immutable and the only
//! ones readers can see; a writer only writes into a range it claimed by moving `cursor` on
//! with a compare-and-swap (so never below `committed`, and no two writers share a byte), and
//! `written` follows the claims in order once their bytes are in place; `committed` never passes
//! `written` and only grows while the file is shared. The
//! `&mut self` methods (recovery) run before the file is shared. Another *process* truncating the
//! file would turn reads into SIGBUS; the store's `LOCK` file keeps other processes out. The
//! engines shrink a mapped file only to its published length (the segmented engine's seal and
//! clean close cut an active log to its batches once nothing appends to it), so every byte
//! anyone reads stays inside the file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use bytes::Bytes;

use parking_lot::Mutex;

use super::{FileSystem, MapMode, MappedStorage};

/// Page size assumed for allocation steps (a multiple of every common page size's divisor).
const PAGE: usize = 4096;
/// Largest step by which [`MappedFile::ensure_allocated`] grows a file.
pub const MAX_GROW_STEP: usize = 1 << 20;
/// Written pages are released from the process in steps of at most this many bytes (see
/// [`MappedFile::release_written_behind`]).
pub const RELEASE_STEP: usize = 1 << 20;
/// [`MappedFile::prefault_ahead`] faults a window in at most this many bytes at a time.
const PREFAULT_CHUNK: usize = 1 << 20;

/// Starts loading the cache line holding `addr` (and its page's translation), without reading
/// it: a hint for a writer about to touch several separately allocated structures, so their
/// cache misses overlap instead of following one another. Any address will do: a prefetch never
/// faults and changes nothing, so a stale address costs only the hint.
#[inline(always)]
pub fn prefetch(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, part of every x86_64 target; a prefetch dereferences
    // nothing (an unmapped or invalid address is dropped by the CPU, never a fault).
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(addr as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// A published range of a [`MappedFile`], owning a reference to it: the backing of the zero-copy
/// [`Bytes`] that reads hand out.
struct PublishedRange {
    file: Arc<MappedFile>,
    pos: usize,
    len: usize,
}

impl AsRef<[u8]> for PublishedRange {
    fn as_ref(&self) -> &[u8] {
        // The range was published when it was made and `committed` never shrinks while the
        // file is shared (`self.file` shares it), so this read always finds it.
        self.file
            .read_unnoted(self.pos, self.len)
            .unwrap_or_default()
    }
}

/// A fixed-size mapped file with an append cursor, a published (readable) prefix and a flushed
/// (durable) prefix.
pub struct MappedFile {
    path: PathBuf,
    start_offset: u64,
    storage: Box<dyn MappedStorage>,
    ptr: *mut u8,
    len: usize,
    /// End of the bytes claimed by writers (see [`MappedFile::append`]).
    cursor: AtomicUsize,
    /// End of the bytes written: every claim below it has its bytes in place. What
    /// [`MappedFile::commit`] may publish. Equal to `cursor` between appends of the single
    /// writer the engines have per file (under their append lock), so an append takes one
    /// compare-and-swap and one store, not a mutex, and a publish reads one atomic.
    written: AtomicUsize,
    committed: AtomicUsize,
    flushed: AtomicUsize,
    /// End of the range already faulted in by [`MappedFile::prefault_ahead`].
    prefaulted: AtomicUsize,
    /// The allocated length at which growth ahead was last asked for.
    grow_requested: AtomicUsize,
    /// Largest step by which the file grows (0: [`MAX_GROW_STEP`]), see
    /// [`MappedFile::set_max_grow_step`].
    max_grow_step: AtomicUsize,
    /// The faulted-in plus the allocated end when warming was last asked for (see
    /// [`MappedFile::wants_prefault_once`]; both only grow, so the sum names the state).
    prefault_asked: AtomicUsize,
    /// Published bytes kept mapped behind the published end, see
    /// [`MappedFile::release_written_behind`].
    release_keep: AtomicUsize,
    /// End of the prefix whose pages were released from the process.
    released: AtomicUsize,
    /// Granularity of releases (0: [`RELEASE_STEP`]).
    release_step: AtomicUsize,
    /// Releases follow the published end (`committed`), not the flushed one: see
    /// [`MappedFile::release_written_behind`].
    release_written: AtomicBool,
    /// Start of the range readers may have mapped again below [`Self::released`]: what the
    /// next release behind a reader starts from (see [`MappedFile::release_written_behind`]).
    read_mark: AtomicUsize,
    /// Whether a request to warm this file waits in a [`super::Warmer`]'s queue (the O(1)
    /// deduplication of requests).
    pub(super) warm_queued: AtomicBool,
    /// Held by the thread inside [`MappedFile::prefault_ahead`] of this file: a second one
    /// waits, then faults in only what the first did not, instead of the same window again
    /// (the allocation thread, after growing the commit log, and the warm-up thread used to
    /// both do it).
    warming: Mutex<()>,
}

// SAFETY: the raw pointer refers to a shared mapping owned by `storage`, which is Send + Sync.
// All writes go into ranges claimed through the cursor, which no reader can see yet (see the
// module docs).
unsafe impl Send for MappedFile {}
// SAFETY: as above; readers only see the immutable prefix below `committed`.
unsafe impl Sync for MappedFile {}

impl fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("committed", &self.committed())
            .field("flushed", &self.flushed())
            .finish()
    }
}

impl MappedFile {
    /// Maps `path` (creating it preallocated when `mode` is [`MapMode::Create`]). The file's
    /// logical start offset in its queue is `start_offset`. All watermarks start at 0.
    pub fn map(
        fs: &dyn FileSystem,
        path: &Path,
        start_offset: u64,
        len: u64,
        mode: MapMode,
    ) -> io::Result<Self> {
        let storage = fs.map_file(path, len, mode)?;
        Ok(Self::with_storage(path, start_offset, storage))
    }

    /// A file over an already mapped `storage` (for [`Self::map`], and tests that wrap one).
    fn with_storage(path: &Path, start_offset: u64, storage: Box<dyn MappedStorage>) -> Self {
        let ptr = storage.base_ptr();
        let len = storage.len();
        MappedFile {
            path: path.to_owned(),
            start_offset,
            storage,
            ptr,
            len,
            cursor: AtomicUsize::new(0),
            written: AtomicUsize::new(0),
            committed: AtomicUsize::new(0),
            flushed: AtomicUsize::new(0),
            prefaulted: AtomicUsize::new(0),
            grow_requested: AtomicUsize::new(usize::MAX),
            max_grow_step: AtomicUsize::new(0),
            prefault_asked: AtomicUsize::new(usize::MAX),
            release_keep: AtomicUsize::new(0),
            released: AtomicUsize::new(0),
            release_step: AtomicUsize::new(0),
            release_written: AtomicBool::new(false),
            read_mark: AtomicUsize::new(0),
            warm_queued: AtomicBool::new(false),
            warming: Mutex::new(()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The logical offset of the file's first byte in its queue.
    pub fn start_offset(&self) -> u64 {
        self.start_offset
    }

    /// Addresses of this file's own state and of its mapped byte `pos`, for [`prefetch`]
    /// hints by a writer that keeps them between writes (read here, never dereferenced by it).
    pub fn prefetch_addrs(&self, pos: usize) -> [usize; 3] {
        [
            self as *const MappedFile as usize,
            &*self.storage as *const dyn MappedStorage as *const u8 as usize,
            self.ptr as usize + pos.min(self.len),
        ]
    }

    /// Length of the file: its capacity (of a growable file, the full length it may grow to).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes at the start of the file backed by allocated blocks (see [`MapMode`]); nothing
    /// past it is ever read or written.
    pub fn allocated(&self) -> usize {
        self.storage.allocated()
    }

    /// Sets the largest step by which a growable file grows (a page multiple, at least a page;
    /// default [`MAX_GROW_STEP`]): both how far [`Self::ensure_allocated`] allocates past what
    /// it is asked for and how early [`Self::wants_growth`] asks. A writer far faster than a
    /// consume queue's (the commit log's) takes larger steps, so the background thread grows
    /// the file, and the warm-up thread faults pages in, well ahead of it.
    pub fn set_max_grow_step(&self, step: usize) {
        self.max_grow_step
            .store(step.max(PAGE) / PAGE * PAGE, Ordering::Relaxed);
    }

    fn grow_step(&self, have: usize) -> usize {
        let max = match self.max_grow_step.load(Ordering::Relaxed) {
            0 => MAX_GROW_STEP,
            s => s,
        };
        have.clamp(PAGE, max)
    }

    /// Makes sure the first `upto` bytes are allocated, growing a growable file in steps that
    /// double its allocation (at least a page, at most [`MAX_GROW_STEP`] at a time, or the
    /// step set by [`Self::set_max_grow_step`]), so a writer pays one `fallocate` per step
    /// rather than one per record. A full disk is an error here; the bytes written later
    /// cannot fault.
    pub fn ensure_allocated(&self, upto: usize) -> io::Result<()> {
        let have = self.storage.allocated();
        if upto <= have {
            return Ok(());
        }
        if upto > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} bytes do not fit a file of {}", upto, self.len),
            ));
        }
        let step = self.grow_step(have);
        let target = upto
            .max(have + step)
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(self.len);
        self.storage.grow(target)
    }

    /// Whether the file has zero length.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// All allocated bytes of the file, for recovery scans. Needs exclusive access.
    pub fn contents(&mut self) -> &[u8] {
        let allocated = self.storage.allocated().min(self.len);
        // SAFETY: `ptr` is valid for the allocated prefix while `storage` lives; `&mut self`
        // means no writer or reader of this file exists right now.
        unsafe { std::slice::from_raw_parts(self.ptr, allocated) }
    }

    /// Sets cursor and committed to `end` (bytes before it are data, after it free) and the
    /// flushed mark to `durable` (bytes from there to `end` still need a flush). Used once
    /// recovery has found the end of valid data.
    pub fn set_recovered_end(&mut self, end: usize, durable: usize) {
        let end = end.min(self.storage.allocated()).min(self.len);
        *self.cursor.get_mut() = end;
        *self.written.get_mut() = end;
        *self.committed.get_mut() = end;
        *self.flushed.get_mut() = durable.min(end);
    }

    /// Durably zeroes everything from `pos` to the end of the file (erasing a torn tail).
    pub fn zero_from(&mut self, pos: usize) -> io::Result<()> {
        let allocated = self.storage.allocated().min(self.len);
        let pos = pos.min(allocated);
        self.storage.zero_range(pos, allocated - pos)
    }

    /// Bytes left after the write cursor.
    pub fn remaining(&self) -> usize {
        self.len - self.write_position()
    }

    /// The write cursor.
    pub fn write_position(&self) -> usize {
        self.cursor.load(Ordering::Acquire)
    }

    /// Appends `parts` back to back at the cursor. Returns the position of the first byte, or
    /// `None` (writing nothing) when they do not fit, in the file or in its allocated prefix
    /// (a growable file's writer calls [`Self::ensure_allocated`] first).
    pub fn append(&self, parts: &[&[u8]]) -> Option<usize> {
        self.append_inner(None, parts)
    }

    /// [`Self::append`], only if the cursor is at `pos`: `None` (writing nothing) otherwise, so
    /// a writer whose idea of the end differs from the mapping's cannot write over bytes
    /// already published.
    pub fn append_at(&self, pos: usize, parts: &[&[u8]]) -> Option<usize> {
        self.append_inner(Some(pos), parts)
    }

    fn append_inner(&self, expect: Option<usize>, parts: &[&[u8]]) -> Option<usize> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            // Claims nothing, so it must not move `written` either: an empty claim shares its
            // start with the next real one, and storing its end after that one's would move
            // the mark back (review rv2).
            let at = self.cursor.load(Ordering::Acquire);
            return expect.is_none_or(|pos| pos == at).then_some(at);
        }
        let room = self.storage.allocated().min(self.len);
        let mut start = self.cursor.load(Ordering::Acquire);
        // Claim `[start, start + total)`: after this CAS no other writer can claim a byte of
        // it, and no reader sees it (publishing stops at `written`, which is not past `start`).
        loop {
            if expect.is_some_and(|pos| pos != start) || total > room.saturating_sub(start) {
                return None;
            }
            match self.cursor.compare_exchange_weak(
                start,
                start + total,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => start = now,
            }
        }
        let mut at = start;
        for part in parts {
            // SAFETY: inside the allocated range this call claimed: no other writer can claim
            // it, no reader sees it until `written` (stored after the copy) passes it.
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), self.ptr.add(at), part.len()) };
            at += part.len();
        }
        self.written_after(start, at);
        Some(start)
    }

    /// Moves `written` from `start` to `end` once every earlier claim has its bytes in place.
    /// The engines have one writer per file, which never waits here; concurrent writers (a
    /// misuse the type still keeps sound) publish their claims in order.
    fn written_after(&self, start: usize, end: usize) {
        while self.written.load(Ordering::Acquire) != start {
            std::thread::yield_now();
        }
        self.written.store(end, Ordering::Release);
    }

    /// Asks for small (4 KiB) page-cache pages from the page holding the cursor to the end of the
    /// file, for a writer that flushes often: a flush then writes the few pages it changed, not
    /// a large folio around them (see [`MappedStorage::set_random_access`]). [`Self::seal`]
    /// undoes it. Best effort.
    pub fn small_pages_ahead(&self) {
        let cursor = self.write_position();
        let page = cursor - cursor % 4096;
        let _ = self.storage.set_random_access(page, self.len - page, true);
    }

    /// Moves the cursor to the end of the file: nothing more is written to it (the bytes left
    /// stay as they are, zero in a preallocated file; a growable file keeps its allocated
    /// length, and only that prefix is ever published).
    pub fn seal(&self) {
        let claimed = self.cursor.swap(self.len, Ordering::AcqRel);
        if claimed < self.len {
            self.written_after(claimed, self.len);
        }
        // Written in full: readers of cold pages want readahead again (undoes
        // `small_pages_ahead`).
        let _ = self.storage.set_random_access(0, self.len, false);
    }

    /// Publishes everything written so far up to `upto` to readers.
    pub fn commit(&self, upto: usize) {
        let cursor = self.publishable();
        self.committed
            .fetch_max(upto.min(cursor), Ordering::Release);
    }

    /// Publishes everything written so far.
    pub fn commit_all(&self) {
        let cursor = self.publishable();
        self.committed.fetch_max(cursor, Ordering::Release);
    }

    /// The written end, but never past the allocated prefix: a sealed growable file's cursor is
    /// its full length, and a reader must never reach bytes the file has no block for.
    fn publishable(&self) -> usize {
        let written = self.written.load(Ordering::Acquire);
        written.min(self.storage.allocated())
    }

    /// End of the readable prefix.
    pub fn committed(&self) -> usize {
        self.committed.load(Ordering::Acquire)
    }

    /// End of the durable prefix.
    pub fn flushed(&self) -> usize {
        self.flushed.load(Ordering::Acquire)
    }

    /// `len` readable bytes at `pos`, or `None` if any of them is not yet published.
    pub fn read(&self, pos: usize, len: usize) -> Option<&[u8]> {
        let bytes = self.read_unnoted(pos, len)?;
        self.note_read(pos);
        Some(bytes)
    }

    /// [`Self::read`] without releasing anything behind the reader (for the zero-copy
    /// [`Bytes`] a read handed out, which is touched again and again, and for a reader that
    /// calls [`Self::note_read`] itself every so often rather than at every record).
    pub(crate) fn read_unnoted(&self, pos: usize, len: usize) -> Option<&[u8]> {
        let end = pos.checked_add(len)?;
        if end > self.committed() {
            return None;
        }
        // SAFETY: `[pos, end)` lies below `committed <= len`, a prefix that is immutable while
        // the file is shared (see the module docs), and `storage` keeps the mapping alive.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(pos), len) })
    }

    /// `len` published bytes at `pos` as a zero-copy [`Bytes`] that keeps the mapping alive (so a
    /// record read from a file that retention has since deleted stays valid), or `None` if any
    /// of them is not yet published.
    pub fn published_bytes(self: &Arc<Self>, pos: usize, len: usize) -> Option<Bytes> {
        let end = pos.checked_add(len)?;
        if end > self.committed() {
            return None;
        }
        self.note_read(pos);
        Some(Bytes::from_owner(PublishedRange {
            file: Arc::clone(self),
            pos,
            len,
        }))
    }

    /// Whether the writer at `pos` is within half a `window` of the end of the range faulted in
    /// so far (and the file has room left to fault in): time to ask a [`super::Warmer`].
    pub fn wants_prefault(&self, pos: usize, window: usize) -> bool {
        let done = self.prefaulted.load(Ordering::Relaxed);
        done < self.storage.allocated().min(self.len) && pos + window / 2 >= done
    }

    /// [`Self::wants_prefault`], but true once per state of the file (its faulted-in and
    /// allocated ends), so a writer may ask on every write: it makes one request per window
    /// step, not one per write until the warm-up thread has caught up (each a queue lock and a
    /// scan of the queue). The writer's position is compared first, so most writes read no
    /// more than one counter of this file.
    pub fn wants_prefault_once(&self, pos: usize, window: usize) -> bool {
        let done = self.prefaulted.load(Ordering::Relaxed);
        if pos + window / 2 < done {
            return false;
        }
        let allocated = self.storage.allocated().min(self.len);
        if done >= allocated {
            return false;
        }
        let state = done.wrapping_add(allocated);
        self.prefault_asked.swap(state, Ordering::Relaxed) != state
    }

    /// Whether the writer at `pos` is within half a grow step of the allocated end of a file
    /// that can still grow: time to grow it ahead, off the writer's path. True once per
    /// allocated length, so a caller may ask on every write.
    pub fn wants_growth(&self, pos: usize) -> bool {
        let allocated = self.storage.allocated();
        if allocated >= self.len {
            return false;
        }
        let step = self.grow_step(allocated);
        if pos + step / 2 < allocated {
            return false;
        }
        self.grow_requested.swap(allocated, Ordering::Relaxed) != allocated
    }

    /// Grows the file by one step past its allocated length (see
    /// [`Self::ensure_allocated`]); for a background thread. Nothing for a sealed file (its
    /// writer left it: it keeps its length). The check is not in step with the writer, which an
    /// appender takes on every write and a grow must not hold across its I/O: a grow asked
    /// before a seal and running across it may still add its one step.
    pub fn grow_ahead(&self) -> io::Result<()> {
        let allocated = self.storage.allocated();
        if allocated >= self.len || self.write_position() >= self.len {
            return Ok(());
        }
        self.ensure_allocated(allocated + 1)
    }

    /// Faults in the pages from the write cursor up to `window` bytes past it (see
    /// [`MappedStorage::prefault`]). Runs on a background thread; the bytes do not change.
    /// One thread at a time per file: a call while another thread warms the file waits for it,
    /// then faults in what is left of its own window.
    pub fn prefault_ahead(&self, window: usize) -> io::Result<()> {
        // Waits for another warmer of this file (both are background threads), then faults in
        // only what that one did not: returning at once instead made the CommitLog appender
        // re-queue its request, and wake the warm-up thread, on every append until the other
        // warmer finished (review rv2).
        let _alone = self.warming.lock();
        self.prefault_ahead_alone(window)
    }

    fn prefault_ahead_alone(&self, window: usize) -> io::Result<()> {
        let cursor = self.write_position();
        let mut from = self.prefaulted.load(Ordering::Acquire).max(cursor);
        // Never past the allocated prefix: warming must not touch a page without a block.
        let to = (cursor + window)
            .min(self.storage.allocated())
            .min(self.len);
        // In chunks, each starting no earlier than the writer's page: a warm-up thread that
        // fell behind (descheduled on a busy machine) would otherwise fault in pages the writer
        // has passed, and after they were released behind it, keep them resident for good
        // (measured: a quarter of all data written stayed resident).
        while from < to {
            let writer = self.committed() / PAGE * PAGE;
            from = from.max(writer);
            if from >= to {
                break;
            }
            let end = (from + PREFAULT_CHUNK).min(to);
            let result = self.storage.prefault(from, end - from);
            // A release behind the writer that ran while this chunk was faulted in may have
            // come before the fault of some of its pages: release them again.
            let released = self.released.load(Ordering::Acquire);
            if released > from {
                let _ = self.storage.release(from, released.min(end) - from);
            }
            if let Err(e) = result {
                // Advanced even on failure: a kernel without the call should not be asked again.
                self.prefaulted.fetch_max(to, Ordering::AcqRel);
                return Err(e);
            }
            self.prefaulted.fetch_max(end, Ordering::AcqRel);
            from = end;
        }
        self.prefaulted.fetch_max(to, Ordering::AcqRel);
        Ok(())
    }

    /// The whole published prefix.
    pub fn committed_bytes(&self) -> &[u8] {
        let end = self.committed();
        self.read(0, end).unwrap_or(&[])
    }

    /// Makes the published prefix durable up to `upto`. Returns the new flushed position.
    pub fn flush(&self, upto: usize) -> io::Result<usize> {
        let target = upto.min(self.committed());
        let from = self.flushed();
        if target > from {
            self.storage.flush_range(from, target - from)?;
            self.flushed.fetch_max(target, Ordering::AcqRel);
            self.release_behind();
        }
        Ok(self.flushed())
    }

    /// [`Self::release_written_behind`] with the default step (`RELEASE_STEP`): for a writer
    /// that bounds its resident pages with no flush at all, so it never waits on an msync for
    /// that bound (the segmented engine's active log).
    pub fn release_published_behind(&self, keep: usize) {
        self.release_written_behind(keep.max(1), RELEASE_STEP);
    }

    /// [`Self::release_behind`], only once `slack` bytes or more could go: for a writer that
    /// leaves the releases to a background thread and steps in only when it lags that far.
    pub fn release_behind_past(&self, slack: usize) {
        let behind = self
            .release_target()
            .saturating_sub(self.released.load(Ordering::Acquire));
        if behind >= slack.max(1) {
            self.release_behind();
        }
    }

    /// From now on, the published pages more than `keep` bytes behind the published end are
    /// unmapped from the process in whole `step`s, whether flushed yet or not, each time
    /// [`Self::release_behind`] (or a flush) finds a step's worth to release: a writer then keeps
    /// resident only its last `keep + step` bytes, however much it writes. Unflushed pages are
    /// safe to release: on a shared file mapping the kernel moves the dirty bit of each
    /// page-table entry it removes to the page-cache page, which stays dirty until written
    /// back, and a flush of the range (msync) writes it as before. The bytes are immutable
    /// (below `committed`), so a reader racing the release maps the same page again.
    pub fn release_written_behind(&self, keep: usize, step: usize) {
        self.release_step.store(
            step.clamp(PAGE, RELEASE_STEP) / PAGE * PAGE,
            Ordering::Release,
        );
        self.release_keep.store(keep, Ordering::Release);
        self.release_written.store(true, Ordering::Release);
    }

    /// Changes the `keep` and `step` of a file [`Self::release_written_behind`] was asked for
    /// (nothing otherwise), for writers that share one budget of pages kept behind them and
    /// learn their share as it changes. Two loads when nothing changed, so a writer may call it
    /// on every write.
    pub fn share_release(&self, keep: usize, step: usize) {
        let step = step.clamp(PAGE, RELEASE_STEP) / PAGE * PAGE;
        if !self.release_written.load(Ordering::Relaxed)
            || (self.release_keep.load(Ordering::Relaxed) == keep
                && self.release_step.load(Ordering::Relaxed) == step)
        {
            return;
        }
        self.release_step.store(step, Ordering::Release);
        self.release_keep.store(keep, Ordering::Release);
    }

    /// For a file its writer has left for good (a full commit-log or consume-queue file):
    /// every written page leaves the process now, and from then on a reader's pages leave
    /// right behind it (no distance kept). Without this, each file the writer left would keep
    /// its last `keep + step` bytes resident for as long as it stays mapped, so memory would
    /// grow with the number of files written. One `madvise`, no I/O.
    pub fn release_left(&self) {
        self.release_keep.store(0, Ordering::Release);
        self.release_written.store(true, Ordering::Release);
        // The whole mapping: past the written end there is nothing the writer will add.
        let to = self.len;
        let from = self.released.fetch_max(to, Ordering::AcqRel);
        if to > from {
            let _ = self.storage.release(from, to - from);
        }
    }

    /// End of the prefix whose pages were released from the process (0 when none were).
    pub fn released(&self) -> usize {
        self.released.load(Ordering::Acquire)
    }

    /// Whether [`Self::release_behind`] would release a step now: two atomic loads, for a
    /// writer to ask after every append.
    pub fn wants_release(&self) -> bool {
        self.release_target() > self.released.load(Ordering::Relaxed)
    }

    fn release_target(&self) -> usize {
        if !self.release_written.load(Ordering::Relaxed) {
            // Not asked for.
            return 0;
        }
        let keep = self.release_keep.load(Ordering::Relaxed);
        let step = match self.release_step.load(Ordering::Relaxed) {
            0 => RELEASE_STEP,
            s => s,
        };
        self.committed().saturating_sub(keep) / step * step
    }

    /// Releases what [`Self::release_written_behind`] says may go now (nothing if it was not
    /// asked for). One `madvise`, no I/O; concurrent callers
    /// release disjoint ranges. Best effort: pages left mapped only cost memory.
    pub fn release_behind(&self) {
        let to = self.release_target();
        let from = self.released.load(Ordering::Acquire);
        if to > from
            && self
                .released
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let _ = self.storage.release(from, to - from);
        }
    }

    /// A reader is at `pos`: with [`Self::release_written_behind`] on, the pages it (and any
    /// reader before it) mapped again below the writer's released end leave the process once
    /// it is `keep` bytes past them, in whole steps, so reading a whole log back holds no more
    /// resident than writing it. A reader that moved back makes the next release start from
    /// its position. Releasing pages another reader is still on only costs it minor faults;
    /// the bytes are immutable, and bytes handed out keep their mapping. Called by
    /// [`Self::read`] and [`Self::published_bytes`] at the start of what they return; a reader
    /// walking a long span it took in one piece calls it as it goes, so the pages it has passed
    /// leave behind it within the span too.
    pub(crate) fn note_read(&self, pos: usize) {
        if !self.release_written.load(Ordering::Relaxed) {
            return;
        }
        let step = match self.release_step.load(Ordering::Relaxed) {
            0 => RELEASE_STEP,
            s => s,
        };
        let mark = self.read_mark.load(Ordering::Relaxed);
        if pos < mark {
            self.read_mark
                .fetch_min(pos / step * step, Ordering::AcqRel);
            return;
        }
        let keep = self.release_keep.load(Ordering::Relaxed);
        let to = (pos.saturating_sub(keep) / step * step).min(self.released());
        if to >= mark + step
            && self
                .read_mark
                .compare_exchange(mark, to, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.storage.release(mark, to - mark);
        }
    }
}

/// A mapped file accessed only as big-endian 32-bit words through atomics: for structures
/// updated in place while readers walk them (the key index's hash slots and chained entries).
/// Every access is atomic, so concurrent readers and the single writer never race.
///
/// Mapped with a `Growable` [`MapMode`], only the allocated prefix is touched: reads past it
/// see 0, and a store past it grows the file first ([`MappedWords::ensure_words`] does so
/// ahead of time, with an error the caller can act on).
pub struct MappedWords {
    path: PathBuf,
    storage: Box<dyn MappedStorage>,
    words: usize,
    /// A grow that failed inside [`MappedWords::set`] (which cannot return it): the store was
    /// dropped, and the next [`MappedWords::flush`] reports it.
    grow_failed: Mutex<Option<io::Error>>,
}

impl fmt::Debug for MappedWords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedWords")
            .field("path", &self.path)
            .field("words", &self.words)
            .finish()
    }
}

impl MappedWords {
    /// Maps `path` (created preallocated, or opened; or growable, see [`MapMode`]) of
    /// `words × 4` bytes.
    pub fn map(fs: &dyn FileSystem, path: &Path, words: usize, mode: MapMode) -> io::Result<Self> {
        let storage = fs.map_file(path, words as u64 * 4, mode)?;
        if storage.len() != words * 4
            || !(storage.base_ptr() as usize).is_multiple_of(std::mem::align_of::<AtomicU32>())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "mapping of unexpected size or alignment",
            ));
        }
        Ok(MappedWords {
            path: path.to_owned(),
            storage,
            words,
            grow_failed: Mutex::new(None),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Words backed by allocated blocks.
    pub fn allocated_words(&self) -> usize {
        (self.storage.allocated() / 4).min(self.words)
    }

    fn cells(&self) -> &[AtomicU32] {
        // The mapping lives as long as `storage`, is aligned for AtomicU32 (checked at map
        // time), and is only ever touched through these atomics; LOCK keeps other processes out.
        // Only the allocated prefix is exposed.
        // SAFETY: valid, aligned memory of `allocated_words()` u32s, accessed only atomically.
        unsafe {
            std::slice::from_raw_parts(
                self.storage.base_ptr() as *const AtomicU32,
                self.allocated_words(),
            )
        }
    }

    /// Makes sure the first `n` words are allocated, growing the file in steps that double
    /// its allocation (at most [`MAX_GROW_STEP`] at a time). A full disk is an error here.
    pub fn ensure_words(&self, n: usize) -> io::Result<()> {
        let have = self.storage.allocated();
        let upto = n.min(self.words) * 4;
        if upto <= have {
            return Ok(());
        }
        let step = have.clamp(PAGE, MAX_GROW_STEP);
        let target = upto
            .max(have + step)
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(self.words * 4);
        self.storage.grow(target)
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.words
    }

    /// Whether the file has no words.
    pub fn is_empty(&self) -> bool {
        self.words == 0
    }

    /// Word `i` (big-endian on disk), or 0 past the end or the allocated prefix.
    pub fn get(&self, i: usize) -> u32 {
        self.cells()
            .get(i)
            .map_or(0, |c| u32::from_be(c.load(Ordering::Acquire)))
    }

    /// Stores word `i` (big-endian on disk); ignored past the end. Past the allocated prefix
    /// the file grows first; if that fails the store is dropped and `flush` reports it.
    pub fn set(&self, i: usize, v: u32) {
        if i >= self.words {
            return;
        }
        if i >= self.allocated_words()
            && let Err(e) = self.ensure_words(i + 1)
        {
            self.grow_failed.lock().get_or_insert(e);
            return;
        }
        if let Some(c) = self.cells().get(i) {
            c.store(v.to_be(), Ordering::Release);
        }
    }

    /// Two words as a big-endian u64.
    pub fn get_u64(&self, i: usize) -> u64 {
        (u64::from(self.get(i)) << 32) | u64::from(self.get(i + 1))
    }

    /// Stores a big-endian u64 in two words.
    pub fn set_u64(&self, i: usize, v: u64) {
        self.set(i, (v >> 32) as u32);
        self.set(i + 1, v as u32);
    }

    /// Makes the whole (allocated) file durable; reports a grow that failed in `set`.
    pub fn flush(&self) -> io::Result<()> {
        if let Some(e) = self.grow_failed.lock().take() {
            return Err(e);
        }
        self.storage.flush_range(0, self.storage.allocated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{FileSystem, SimFs};
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;

    /// A mapping that counts the bytes asked to be faulted in, and whose first prefault waits
    /// until the test lets it go (so a second warmer can be made to overlap it).
    #[derive(Debug)]
    struct CountingStorage {
        inner: Box<dyn MappedStorage>,
        prefaulted: Arc<AtomicU64>,
        hold_first: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }

    impl MappedStorage for CountingStorage {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn base_ptr(&self) -> *mut u8 {
            self.inner.base_ptr()
        }
        fn allocated(&self) -> usize {
            self.inner.allocated()
        }
        fn grow(&self, upto: usize) -> io::Result<()> {
            self.inner.grow(upto)
        }
        fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
            self.inner.flush_range(offset, len)
        }
        fn zero_range(&self, offset: usize, len: usize) -> io::Result<()> {
            self.inner.zero_range(offset, len)
        }
        fn prefault(&self, _offset: usize, len: usize) -> io::Result<()> {
            self.prefaulted.fetch_add(len as u64, Ordering::SeqCst);
            let hold = self.hold_first.lock().take();
            if let Some((entered, release)) = hold {
                let _ = entered.send(());
                let _ = release.recv();
            }
            Ok(())
        }
    }

    fn sim_file(len: u64) -> Box<dyn MappedStorage> {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.map_file(Path::new("/d/f"), len, MapMode::Create)
            .unwrap()
    }

    #[test]
    fn two_threads_warming_one_file_at_once_fault_each_page_in_once() {
        // The allocation thread (after growing a file) and the warm-up thread both warm the
        // commit log's file; run at the same time they used to fault the same window in twice.
        let counted = Arc::new(AtomicU64::new(0));
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let storage = CountingStorage {
            inner: sim_file(4 << 20),
            prefaulted: Arc::clone(&counted),
            hold_first: Mutex::new(Some((entered_tx, release_rx))),
        };
        let file = Arc::new(MappedFile::with_storage(
            Path::new("/d/f"),
            0,
            Box::new(storage),
        ));
        let window = 1 << 20;
        let first = {
            let file = Arc::clone(&file);
            std::thread::spawn(move || file.prefault_ahead(window).unwrap())
        };
        // The first warmer is inside its fault-in of the window; the second waits for it.
        entered_rx.recv().unwrap();
        let second = {
            let file = Arc::clone(&file);
            std::thread::spawn(move || file.prefault_ahead(window).unwrap())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!second.is_finished(), "the second warmer did not wait");
        release_tx.send(()).unwrap();
        first.join().unwrap();
        second.join().unwrap();
        assert_eq!(counted.load(Ordering::SeqCst), window as u64);
        // The window is warmed: nothing more to fault in until the writer moves.
        file.prefault_ahead(window).unwrap();
        assert_eq!(counted.load(Ordering::SeqCst), window as u64);
    }

    /// Record `i` of the stress tests: its length (4 bytes, big-endian), then that many
    /// copies of `i as u8`; 5 to 300 bytes, so records straddle pages.
    fn record(i: u32) -> Vec<u8> {
        let n = 1 + (i as usize * 7919) % 296;
        let mut r = (n as u32).to_be_bytes().to_vec();
        r.resize(4 + n, i as u8);
        r
    }

    /// Checks that `bytes` is whole records, each intact; returns how many.
    fn check_records(bytes: &[u8]) -> u32 {
        let (mut pos, mut i) = (0, 0u32);
        while pos < bytes.len() {
            let want = record(i);
            assert!(
                bytes.len() - pos >= want.len(),
                "a published prefix ends inside record {i}"
            );
            assert_eq!(
                &bytes[pos..pos + want.len()],
                &want[..],
                "record {i} at {pos}"
            );
            pos += want.len();
            i += 1;
        }
        i
    }

    #[test]
    fn readers_racing_the_writer_see_only_whole_published_records() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(
            MappedFile::map(
                &crate::io::RealFs,
                &dir.path().join("f"),
                0,
                4 << 20,
                MapMode::Create,
            )
            .unwrap(),
        );
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (file, done) = (Arc::clone(&file), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while !done.load(Ordering::Acquire) {
                        let n = check_records(file.committed_bytes());
                        assert!(n >= seen, "the published prefix shrank");
                        seen = n;
                    }
                    seen
                })
            })
            .collect();
        let mut i = 0u32;
        loop {
            let r = record(i);
            let pos = file.write_position();
            // Written in two parts, as the engines write header and body.
            let Some(at) = file.append_at(pos, &[&r[..2], &r[2..]]) else {
                break;
            };
            assert_eq!(at, pos);
            // Publish in uneven steps, so readers also find written, unpublished bytes.
            if i % 3 != 1 {
                file.commit_all();
            }
            i += 1;
        }
        file.commit_all();
        done.store(true, Ordering::Release);
        for r in readers {
            assert!(r.join().unwrap() <= i);
        }
        assert_eq!(check_records(file.committed_bytes()), i);
        assert!(i > 20_000, "the file holds {i} records");
    }

    #[test]
    fn concurrent_appenders_never_share_a_byte_and_publish_only_whole_appends() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let file =
            Arc::new(MappedFile::map(&fs, Path::new("/d/f"), 0, 1 << 20, MapMode::Create).unwrap());
        let writers: Vec<_> = (0..4u8)
            .map(|w| {
                let file = Arc::clone(&file);
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for k in 0..2_000u32 {
                        // Writer `w`'s k-th append: 1 + k % 61 bytes of `w + 1`.
                        let len = 1 + (k % 61) as usize;
                        match file.append(&[&vec![w + 1; len]]) {
                            Some(at) => mine.push((at, len)),
                            None => break,
                        }
                        file.commit_all();
                        // The published prefix is never past a byte still being copied.
                        assert!(file.committed() <= file.write_position());
                    }
                    mine
                })
            })
            .collect();
        let mut all: Vec<(usize, usize, u8)> = Vec::new();
        for (w, t) in writers.into_iter().enumerate() {
            all.extend(
                t.join()
                    .unwrap()
                    .into_iter()
                    .map(|(at, len)| (at, len, w as u8 + 1)),
            );
        }
        all.sort_unstable();
        let bytes = file.committed_bytes();
        let mut end = 0;
        for (at, len, w) in all {
            assert_eq!(at, end, "appends left a gap or overlapped");
            assert!(
                bytes[at..at + len].iter().all(|&b| b == w),
                "append at {at} torn"
            );
            end = at + len;
        }
        assert_eq!(bytes.len(), end);
    }

    #[test]
    fn a_seal_racing_an_append_leaves_the_append_whole_or_refused() {
        for _ in 0..200 {
            let fs = SimFs::new();
            fs.create_dir_all(Path::new("/d")).unwrap();
            let file = Arc::new(
                MappedFile::map(&fs, Path::new("/d/f"), 0, 64 << 10, MapMode::Create).unwrap(),
            );
            let writer = {
                let file = Arc::clone(&file);
                std::thread::spawn(move || file.append(&[&[9u8; 1000]]))
            };
            file.seal();
            let appended = writer.join().unwrap();
            file.commit_all();
            assert_eq!(file.write_position(), file.len());
            assert_eq!(
                file.committed(),
                file.len(),
                "a sealed file publishes its length"
            );
            if let Some(at) = appended {
                assert_eq!(at, 0);
                assert!(file.read(0, 1000).unwrap().iter().all(|&b| b == 9));
            }
            assert!(file.append(&[b"x"]).is_none(), "appended past a seal");
        }
    }
}
