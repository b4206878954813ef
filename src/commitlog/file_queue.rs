//! A directory of fixed-size mapped files named by the 20-digit offset of their first byte —
//! the shape shared by the commit log and every consume queue (RocketMQ's `MappedFileQueue`).
//! Every file has a fixed logical size (its mapping covers it, and offsets are `file start +
//! position`), but grows on demand: its length on disk is its allocated prefix (see
//! [`crate::io::MapMode`]), so disk use follows the data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::io::{self, FileSystem, MapMode, MappedFile};

/// Fixed-size files covering a contiguous range of a byte queue.
#[derive(Debug)]
pub(crate) struct FileQueue {
    dir: PathBuf,
    file_size: u64,
    files: RwLock<Vec<Arc<MappedFile>>>,
    /// The last file was shorter than the data a checkpoint may count as durable in it (see
    /// [`Self::repaired`]); never set by open itself, which finds every length up to the
    /// file size legal.
    repaired: bool,
    /// New files get [`MappedFile::small_pages_ahead`] (a writer that flushes often).
    small_pages: bool,
    /// Consume-queue files (`true`) or commit-log files: how they start, grow and release.
    /// Both grow on demand: a file's length is its allocated prefix, any length up to
    /// `file_size`.
    queue: bool,
    /// Serialises file creation between the appender and the allocation thread.
    create_lock: Mutex<()>,
    /// Start of the next file last asked of the allocation thread (deduplicates requests).
    requested_next: AtomicU64,
    /// Set for a consume queue (see [`Self::defer_first_dir_sync`]): the flag its owner keeps
    /// while the directory entry of the queue's first file is not yet durable.
    first_dir_sync: Option<Arc<AtomicBool>>,
}

/// Bytes a growable file is created with.
const GROWABLE_INITIAL: u64 = 4096;
/// Bytes a commit-log file is created with: a store holding one small message takes this
/// much of log file, not the 1 GiB file size (RocketMQ preallocates the whole file).
pub(crate) const LOG_GROW_INITIAL: u64 = 64 << 10;
/// Largest step by which a commit-log file grows (its allocation doubles from
/// [`LOG_GROW_INITIAL`] up to this step). The allocation thread grows the file once the writer
/// is within half a step of its allocated end, so the file's allocated end stays between half
/// a step and 1.5 steps ahead of the writer: far enough for the warm-up thread's 16 MiB window
/// and for a burst of appends to find blocks ready. Disk taken by the log is therefore its
/// data plus under 1.5 steps in the file being written (and in each file the writer has left,
/// whose length stays where it was when sealed), plus one step in a next file made ahead.
pub(crate) const LOG_GROW_STEP: usize = 16 << 20;

/// Published commit-log bytes kept mapped behind the writer's end; older pages leave the
/// process in [`LOG_RELEASE_STEP`]s (see [`MappedFile::release_written_behind`]). A tailing
/// reader within this distance reads pages still mapped; one further back maps them again from
/// the page cache (a minor fault per page, no I/O while they are cached).
pub(crate) const LOG_RELEASE_KEEP: usize = 2 << 20;
/// Granularity of commit-log releases: one `madvise` per MiB written.
pub(crate) const LOG_RELEASE_STEP: usize = 1 << 20;
/// The same for a consume queue (20 bytes a message, so 64 KiB is 3,276 messages): small,
/// since up to `max_open_files` queues are mapped at once and each keeps at most its
/// `keep + step` of written pages resident.
pub(crate) const QUEUE_RELEASE_KEEP: usize = 32 << 10;
/// Granularity of consume-queue releases.
pub(crate) const QUEUE_RELEASE_STEP: usize = 32 << 10;

/// The smallest size at least `len` that divides `start` (the one log file of a store whose
/// `commitlog.file_size` changed since it was written: its own size, unknown now, is one such),
/// or `None` if there is none (`start` below `len`, or 0 with no length). The search runs over
/// the quotients `start / size`, from the largest, and gives up past a million of them (a
/// file far smaller than its offset), taking `start` itself then.
fn single_file_size(start: u64, len: u64) -> Option<u64> {
    if len == 0 || start < len {
        return None;
    }
    let most = start / len;
    (most.saturating_sub(1 << 20).max(1)..=most)
        .rev()
        .find(|m| start.is_multiple_of(*m) && start / m >= len)
        .map(|m| start / m)
        .or(Some(start))
}

/// Makes `file` release its written pages behind its writer (and grow), as its queue kind
/// wants.
fn release_behind_writer(file: &MappedFile, queue: bool) {
    if queue {
        file.release_written_behind(QUEUE_RELEASE_KEEP, QUEUE_RELEASE_STEP);
    } else {
        file.release_written_behind(LOG_RELEASE_KEEP, LOG_RELEASE_STEP);
        file.set_max_grow_step(LOG_GROW_STEP);
    }
}

impl FileQueue {
    /// Opens the commit log (creating the directory) and maps every file. Files are named by
    /// offsets that are multiples of their size and contiguous. Each file's length is its
    /// allocated prefix: any length up to the file size is legal (a sealed file keeps the
    /// length it had; stores of earlier builds, whose files all have the full size, open
    /// unchanged); a longer file is an error, and so is an empty file before the last (an
    /// empty last file, the leftover of an interrupted create, is removed). The files say what
    /// their size is, whatever the option says now: the distance between two file names; with
    /// a single file, the option's size if the file fits it (name a multiple, length no more),
    /// else the file's own length (a full file of an earlier build).
    pub(crate) fn open(fs: &dyn FileSystem, dir: &Path, default_file_size: u64) -> Result<Self> {
        Self::open_with(fs, dir, default_file_size, None)
    }

    /// Opens a queue of grow-on-demand files (see [`crate::io::MapMode`]) of `unit`-byte
    /// records: a file's length is how much of it is allocated, so lengths differ. The files
    /// say what their size is, whatever the option says now: the distance between two file
    /// names; with a single file, the option's size or more if the file is already longer
    /// (rounded up to whole units, since an allocated length is a whole number of pages). So
    /// changing the option on an existing store neither refuses nor misreads it.
    pub(crate) fn open_growable(
        fs: &dyn FileSystem,
        dir: &Path,
        default_file_size: u64,
        unit: u64,
    ) -> Result<Self> {
        Self::open_with(fs, dir, default_file_size, Some(unit.max(1)))
    }

    /// A growable queue with no file yet in `dir`, a directory the caller has just created (and
    /// made durable): what [`Self::open_growable`] finds there, without listing it.
    pub(crate) fn new_growable(dir: &Path, default_file_size: u64) -> Self {
        FileQueue {
            dir: dir.to_owned(),
            file_size: default_file_size,
            files: RwLock::new(Vec::new()),
            repaired: false,
            small_pages: false,
            queue: true,
            create_lock: Mutex::new(()),
            requested_next: AtomicU64::new(u64::MAX),
            first_dir_sync: None,
        }
    }

    /// A queue of files already mapped and positioned (a consume queue mapped again).
    pub(crate) fn from_files(dir: &Path, file_size: u64, files: Vec<Arc<MappedFile>>) -> Self {
        for f in &files {
            release_behind_writer(f, true);
        }
        FileQueue {
            dir: dir.to_owned(),
            file_size,
            files: RwLock::new(files),
            repaired: false,
            small_pages: false,
            queue: true,
            create_lock: Mutex::new(()),
            requested_next: AtomicU64::new(u64::MAX),
            first_dir_sync: None,
        }
    }

    fn open_with(
        fs: &dyn FileSystem,
        dir: &Path,
        default_file_size: u64,
        growable_unit: Option<u64>,
    ) -> Result<Self> {
        let queue = growable_unit.is_some();
        // `consumequeue/`, `consumequeue/<topic>/` and `<partition>/` (or `commitlog/`): a
        // checkpoint trusts what the queue's files hold, so their directories must be durable.
        io::create_dir_durable(fs, dir).map_err(|e| Error::io(dir, e))?;
        let mut found = Vec::new();
        for entry in fs.list_dir(dir).map_err(|e| Error::io(dir, e))? {
            if entry.is_dir {
                continue;
            }
            match io::parse_offset_name(&entry.name) {
                Some(start) => {
                    let path = dir.join(&entry.name);
                    let len = fs.file_len(&path).map_err(|e| Error::io(&path, e))?;
                    found.push((start, len));
                }
                None if entry.name.ends_with(".tmp") => {}
                // A partition's aborted-transaction index lives beside its queue files.
                None if entry.name == super::txn_index::TXN_INDEX_FILE
                    || entry.name == super::txn_index::REWRITE_OWED_FILE => {}
                None => {
                    return Err(Error::corrupted(
                        dir.join(&entry.name),
                        0,
                        "unexpected file in a log directory",
                    ));
                }
            }
        }
        found.sort_unstable();
        let longest = found.iter().map(|&(_, len)| len).max().filter(|&l| l > 0);
        let spacing = found.windows(2).map(|w| w[1].0 - w[0].0).min();
        let file_size = match (growable_unit, spacing) {
            (_, Some(spacing)) => spacing,
            (Some(unit), None) => default_file_size.max(longest.unwrap_or(0).div_ceil(unit) * unit),
            (None, None) => match found.first() {
                None => default_file_size,
                // The log locates files by absolute offset (`pos - pos % size`): the size
                // must divide the file's name.
                Some(&(start, len))
                    if start.is_multiple_of(default_file_size) && len <= default_file_size =>
                {
                    default_file_size
                }
                // A full file of an earlier build (or of a larger option).
                Some(&(start, len)) if len > 0 && start.is_multiple_of(len) => len,
                // A grown file, the option changed since: any size at least its length that
                // divides its name serves one file (its records keep their offsets, the next
                // file goes at `start + size`); the smallest maps least.
                Some(&(start, len)) => single_file_size(start, len).ok_or_else(|| {
                    Error::corrupted(
                        dir.join(io::offset_name(start)),
                        len,
                        format!(
                            "cannot tell the log's file size: a file of {len} bytes named \
                             {start} fits no size, and commitlog.file_size is \
                             {default_file_size}"
                        ),
                    )
                })?,
            },
        };
        let mut files: Vec<Arc<MappedFile>> = Vec::with_capacity(found.len());
        for (i, &(start, len)) in found.iter().enumerate() {
            let path = dir.join(io::offset_name(start));
            if len > file_size {
                return Err(Error::corrupted(
                    &path,
                    len,
                    format!("file is {len} bytes, more than the file size {file_size}"),
                ));
            }
            if len == 0 && i + 1 == found.len() && (found.len() > 1 || !queue) {
                // Created, never allocated: the leftover of an interrupted create.
                fs.remove_file(&path).map_err(|e| Error::io(&path, e))?;
                fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
                continue;
            }
            if len == 0 && !queue {
                // Every log file before the last was written (a roll seals a file only after
                // writing it): an empty one lost its data.
                return Err(Error::corrupted(
                    &path,
                    0,
                    "log file before the last is empty",
                ));
            }
            // Growable queues locate files relative to the first one, so a size changed by the
            // option need not divide the names of files kept from before.
            if !queue && start % file_size != 0 {
                return Err(Error::corrupted(
                    &path,
                    0,
                    format!("file name is not a multiple of the file size {file_size}"),
                ));
            }
            if files
                .last()
                .is_some_and(|prev| prev.start_offset() + file_size != start)
            {
                return Err(Error::corrupted(&path, 0, "gap between log files"));
            }
            let file = MappedFile::map(fs, &path, start, file_size, MapMode::OpenGrowable)
                .map_err(|e| Error::io(&path, e))?;
            release_behind_writer(&file, queue);
            files.push(Arc::new(file));
        }
        Ok(FileQueue {
            dir: dir.to_owned(),
            file_size,
            files: RwLock::new(files),
            repaired: false,
            small_pages: false,
            queue,
            create_lock: Mutex::new(()),
            requested_next: AtomicU64::new(u64::MAX),
            first_dir_sync: None,
        })
    }

    /// Bytes the files take on disk (their allocated prefixes).
    pub(crate) fn allocated_bytes(&self) -> u64 {
        self.files.read().iter().map(|f| f.allocated() as u64).sum()
    }

    /// Whether the last file was found shorter than `durable` (a log position a checkpoint
    /// counts as durable) says it must be: cut by something other than the store, since a
    /// flush makes a grown length durable before it returns. The caller must then not trust
    /// positions recorded before. Remembered for [`Self::repaired`].
    pub(crate) fn check_last_length(&mut self, durable: u64) -> bool {
        let short = self.last().is_some_and(|f| {
            let start = f.start_offset();
            durable > start && (f.allocated() as u64) < (durable - start).min(self.file_size)
        });
        self.repaired |= short;
        short
    }

    /// Whether [`Self::check_last_length`] found the last file cut short.
    pub(crate) fn repaired(&self) -> bool {
        self.repaired
    }

    /// Makes sure `file` (of this queue) has its first `upto` bytes allocated, capped at the
    /// file size: the append path's synchronous fallback when the allocation thread has not
    /// grown the file far enough. A full disk is [`Error::StorageFull`] here, before anything
    /// is written, never a fault on a later store.
    pub(crate) fn reserve(&self, file: &MappedFile, upto: usize) -> Result<()> {
        file.ensure_allocated(upto.min(file.len()))
            .map_err(|e| Error::io(file.path(), e))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The file holding byte `offset`.
    pub(crate) fn find(&self, offset: u64) -> Option<Arc<MappedFile>> {
        let files = self.files.read();
        let first = files.first()?.start_offset();
        if offset < first {
            return None;
        }
        let idx = ((offset - first) / self.file_size) as usize;
        files.get(idx).cloned()
    }

    /// The last file.
    pub(crate) fn last(&self) -> Option<Arc<MappedFile>> {
        self.files.read().last().cloned()
    }

    /// All files, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<Arc<MappedFile>> {
        self.files.read().clone()
    }

    /// Number of files.
    pub(crate) fn len(&self) -> usize {
        self.files.read().len()
    }

    /// Offset of the first byte of the first file, if any.
    pub(crate) fn min_offset(&self) -> Option<u64> {
        self.files.read().first().map(|f| f.start_offset())
    }

    /// The file starting at `start`, created (see [`Self::create`]) unless it exists already,
    /// for instance made ahead by the allocation thread. If that thread is creating it right
    /// now, waits for it rather than racing it.
    pub(crate) fn create_if_missing(
        &self,
        fs: &dyn FileSystem,
        start: u64,
    ) -> Result<Arc<MappedFile>> {
        let _one = self.create_lock.lock();
        if let Some(f) = self.find(start).filter(|f| f.start_offset() == start) {
            return Ok(f);
        }
        // Only the file after the last keeps the queue contiguous: a request made before
        // retention removed `start` (the allocation thread's, late) must not recreate it.
        if let Some(last) = self.last()
            && start != last.start_offset() + self.file_size
        {
            return Err(Error::InvalidArgument(format!(
                "file {start} of {} is not the next one",
                self.dir.display()
            )));
        }
        self.create(fs, start)
    }

    /// Whether the next file after `start` should be asked of the allocation thread now (once
    /// per file): it does not exist and was not asked for yet.
    pub(crate) fn should_request_after(&self, start: u64) -> Option<u64> {
        let next = start + self.file_size;
        if self.requested_next.load(Ordering::Relaxed) == next || self.find(next).is_some() {
            return None;
        }
        (self.requested_next.swap(next, Ordering::Relaxed) != next).then_some(next)
    }

    /// Creates, preallocates and maps the file starting at `start`, and makes its directory
    /// entry durable. Callers other than recovery go through [`Self::create_if_missing`].
    ///
    /// A failure leaves no file behind: a file that cannot be removed again, or a failed
    /// directory sync, is [`Error::Poisoned`] (a failed sync proves nothing about what a later
    /// one persists, and a leftover file would make every later roll fail with "exists"); the
    /// engine turns the store poisoned on that error. Recovery removes the leftover at reopen.
    pub(crate) fn create(&self, fs: &dyn FileSystem, start: u64) -> Result<Arc<MappedFile>> {
        let path = self.dir.join(io::offset_name(start));
        let mode = MapMode::CreateGrowable {
            initial: if self.queue {
                GROWABLE_INITIAL
            } else {
                LOG_GROW_INITIAL
            },
        };
        let file = match MappedFile::map(fs, &path, start, self.file_size, mode) {
            Ok(f) => f,
            Err(e) => {
                // `map_file` removes what it created on failure; make sure of it, since a
                // leftover wedges the queue.
                if !matches!(fs.exists(&path), Ok(false))
                    && e.kind() != std::io::ErrorKind::AlreadyExists
                    && let Err(rm) = io::remove_if_exists(fs, &path)
                {
                    return Err(Error::Poisoned {
                        reason: format!(
                            "creating {} failed ({e}) and removing it failed too ({rm})",
                            path.display()
                        ),
                    });
                }
                return Err(Error::io(&path, e));
            }
        };
        let deferred = match &self.first_dir_sync {
            Some(pending) if self.files.read().is_empty() => {
                pending.store(true, Ordering::Release);
                true
            }
            _ => false,
        };
        let synced = if deferred {
            Ok(())
        } else {
            fs.sync_dir(&self.dir)
        };
        if let Err(e) = synced {
            drop(file);
            let removed = fs.remove_file(&path);
            return Err(Error::Poisoned {
                reason: format!(
                    "directory sync of {} failed after creating {}: {e}{}",
                    self.dir.display(),
                    path.display(),
                    match removed {
                        Ok(()) => String::new(),
                        Err(rm) => format!("; removing it failed too: {rm}"),
                    }
                ),
            });
        }
        if !deferred && let Some(pending) = &self.first_dir_sync {
            // That sync made the first file's entry durable too.
            pending.store(false, Ordering::Release);
        }
        if self.small_pages {
            file.small_pages_ahead();
        }
        release_behind_writer(&file, self.queue);
        let file = Arc::new(file);
        let mut files = self.files.write();
        if let Some(last) = files.last() {
            debug_assert_eq!(last.start_offset() + self.file_size, start);
        }
        files.push(Arc::clone(&file));
        Ok(file)
    }

    /// Creates the queue's first file without syncing the directory, setting `pending`
    /// instead; the owner syncs the directory before anything trusts the file to survive a
    /// crash (a consume queue: before a checkpoint covers its units, see
    /// `ConsumeQueue::flush`). Only the first file: losing it in a crash is the same as not
    /// having created it (the queue is rebuilt from the commit log past the checkpoint),
    /// whereas a later file lost in front of a surviving one would break the queue's
    /// contiguity. Every later file's creation syncs the directory as before. A partition's
    /// first append then costs no directory fsync (1,024 of them were most of the time to
    /// start writing 1,024 new partitions).
    pub(crate) fn defer_first_dir_sync(&mut self, pending: Arc<AtomicBool>) {
        self.first_dir_sync = Some(pending);
    }

    /// Whether files are written by a writer that flushes often: new files, and the last file
    /// from its write position on, then use small page-cache pages.
    pub(crate) fn set_small_pages(&mut self, on: bool) {
        self.small_pages = on;
        if on && let Some(last) = self.files.get_mut().last() {
            last.small_pages_ahead();
        }
    }

    /// Exclusive access to the files during recovery (before the queue is shared).
    pub(crate) fn files_mut(&mut self) -> &mut Vec<Arc<MappedFile>> {
        self.files.get_mut()
    }

    /// Unlinks the files starting at or after `start` (recovery: data past the valid end).
    pub(crate) fn remove_from(&mut self, fs: &dyn FileSystem, start: u64) -> Result<()> {
        let files = self.files.get_mut();
        let mut removed = false;
        while files.last().is_some_and(|f| f.start_offset() >= start) {
            if let Some(f) = files.pop() {
                fs.remove_file(f.path())
                    .map_err(|e| Error::io(f.path(), e))?;
                removed = true;
            }
        }
        if removed {
            fs.sync_dir(&self.dir)
                .map_err(|e| Error::io(&self.dir, e))?;
        }
        Ok(())
    }

    /// Unlinks the oldest files while `pred` holds for them, never the last file. Returns how
    /// many were removed. Readers holding an `Arc` keep their mapping until they drop it.
    pub(crate) fn remove_front_while(
        &self,
        fs: &dyn FileSystem,
        mut pred: impl FnMut(&MappedFile) -> bool,
    ) -> Result<usize> {
        let mut removed = 0;
        loop {
            let victim = {
                let files = self.files.read();
                match files.first() {
                    Some(f) if files.len() > 1 && pred(f) => Arc::clone(f),
                    _ => break,
                }
            };
            // Drop it from the list first so no new reader finds it, then unlink.
            self.files.write().retain(|f| !Arc::ptr_eq(f, &victim));
            fs.remove_file(victim.path())
                .map_err(|e| Error::io(victim.path(), e))?;
            removed += 1;
        }
        if removed > 0 {
            fs.sync_dir(&self.dir).map_err(|e| Error::Poisoned {
                reason: format!("directory sync of {} failed: {e}", self.dir.display()),
            })?;
        }
        Ok(removed)
    }
}
