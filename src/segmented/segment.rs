//! One segment: `<base>.log` (RecordBatch v2), `<base>.index` and `<base>.timeindex` (mapped).
//! What stays in memory for every segment is [`SegmentMeta`]; the open files live in a
//! [`SegmentHandle`], which the handle cache may close at any time.
//!
//! A segment not sealed yet (the active one, and one rolled but not sealed) has its log mapped
//! writable and growing ahead of the data (`MapMode::OpenGrowable`, real blocks allocated in
//! doubling steps of at most `io::MAX_GROW_STEP`), so an append is a copy into the page cache
//! with no system call, and the handle holds no file descriptor. Its file is longer than its
//! data until the seal (or a clean close) cuts it to its batches; recovery treats the zeros
//! past the last batch like any invalid tail. A sealed segment's log is read with positional
//! reads through one descriptor.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use super::batch::{self, BatchError, BatchHeader, HEADER_LEN};
use super::early_index::{EarlyIndexes, Entries};
use super::index::{self, OFFSET_ENTRY, TIME_ENTRY};
use crate::error::{Error, Result};
use crate::io::{self, FileSystem, MapMode, MappedFile, OpenMode, StorageFile};

/// File names of a segment.
pub(crate) fn log_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{}.log", io::offset_name(base)))
}
pub(crate) fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{}.index", io::offset_name(base)))
}
pub(crate) fn time_index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{}.timeindex", io::offset_name(base)))
}

/// The suffix of a cleaned segment's files while they are written (deleted by an open).
pub(crate) const CLEANED_SUFFIX: &str = "cleaned";
/// The suffix of a cleaned segment's files once they are complete: an open finishes the swap.
pub(crate) const SWAP_SUFFIX: &str = "swap";

/// `path` with `.suffix` appended (`00…0.log` → `00…0.log.swap`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".");
    p.push(suffix);
    PathBuf::from(p)
}

/// Opens `path`'s `.swap` twin if it is still there, else `path`: a segment swapped in by the
/// cleaner is reachable under one name or the other while its files are renamed into place,
/// and a final name only ever holds the new file once its `.swap` name is gone.
fn open_swapping<T>(path: &Path, swapping: bool, open: impl Fn(&Path) -> Result<T>) -> Result<T> {
    if swapping {
        match open(&with_suffix(path, SWAP_SUFFIX)) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
    }
    open(path)
}

/// What is known of a segment without opening it.
#[derive(Clone, Debug)]
pub(crate) struct SegmentMeta {
    pub(crate) base: u64,
    /// Bytes of valid log.
    pub(crate) size: u64,
    /// Offset after the last record (the next segment's base once sealed).
    pub(crate) next_offset: u64,
    /// Largest batch max timestamp (-1 when empty).
    pub(crate) max_timestamp: i64,
    /// Max timestamp of the segment's first batch, -1 when empty: `segment_ms` counts from it
    /// (Kafka's rolling-based timestamp), so a reopen does not restart the clock.
    pub(crate) first_timestamp: i64,
    /// Index entries written (active segment).
    pub(crate) index_entries: u64,
    pub(crate) time_entries: u64,
    /// Log bytes appended since the last offset-index entry.
    pub(crate) bytes_since_index: u64,
    /// Timestamp of the last time-index entry.
    pub(crate) last_time_indexed: i64,
    /// Sealed segments have trimmed, synced indexes and never change.
    pub(crate) sealed: bool,
    /// A read found the log itself damaged (not only its indexes): no more index repairs.
    pub(crate) log_damaged: bool,
    /// A cleaned segment whose files may still be named `.swap` (the cleaner is renaming them
    /// into place): opened by either name, never repaired.
    pub(crate) swapping: bool,
    /// Entries of the segment's `.txnindex` (0: no file): aborts whose marker it holds.
    pub(crate) txn_entries: u64,
    /// Bytes of address space the log of a segment not sealed yet is mapped with (0: not
    /// known yet). Every handle maps the same length, so all see one mapping of the file.
    pub(crate) map_len: u64,
    /// The index entries of a segment not sealed yet that has no index files (see
    /// `early_index`): shared with every handle opened for it, `None` once the files exist.
    pub(crate) early: Option<Arc<EarlyIndexes>>,
}

impl SegmentMeta {
    pub(crate) fn new(base: u64) -> Self {
        SegmentMeta {
            base,
            size: 0,
            next_offset: base,
            max_timestamp: -1,
            first_timestamp: -1,
            index_entries: 0,
            time_entries: 0,
            bytes_since_index: 0,
            last_time_indexed: -1,
            sealed: false,
            log_damaged: false,
            swapping: false,
            txn_entries: 0,
            map_len: 0,
            early: None,
        }
    }
}

impl SegmentMeta {
    /// Takes size, bounds and index state from a scan of the segment's log.
    pub(crate) fn apply_scan(&mut self, scan: &ScanResult) {
        self.size = scan.valid_size;
        self.next_offset = scan.next_offset;
        self.max_timestamp = scan.max_timestamp;
        self.index_entries = (scan.offset_entries.len() / OFFSET_ENTRY) as u64;
        self.time_entries = (scan.time_entries.len() / TIME_ENTRY) as u64;
        self.bytes_since_index = scan.bytes_since_index;
        self.last_time_indexed = scan.last_time_indexed;
    }
}

/// The open files of a segment.
#[derive(Debug)]
pub(crate) struct SegmentHandle {
    /// Reads of the log: positional reads of a sealed segment's file, or copies out of the
    /// writable mapping of one not sealed yet.
    pub(crate) log: Box<dyn StorageFile>,
    pub(crate) log_path: PathBuf,
    /// The segment's index files once they exist: set when the handle is opened on a segment
    /// that has them, or when an append through it creates them (see `early_index`).
    files: OnceLock<IndexFiles>,
    /// The segment's in-memory index entries while it has no index files.
    early: Option<Arc<EarlyIndexes>>,
    /// Capacities of the offset and time indexes in bytes: an active segment rolls before its
    /// entries would pass them, wherever they are held.
    capacities: (u64, u64),
    /// The log's writable mapping, for a segment not sealed yet: appends copy into it and a
    /// flush is an msync of what it wrote since the last one. `None` for a sealed segment.
    writer: Option<Arc<MappedFile>>,
    /// Set when the handle cache lets go of this handle (evicted, removed, cleared): a
    /// partition's remembered active handle (`PartState::active`, a `Weak`) is then no longer
    /// the one appends must write through, since another may be opened for the segment.
    uncached: AtomicBool,
}

/// One of a segment's two indexes.
#[derive(Clone, Copy, Debug)]
enum Index {
    Offset,
    Time,
}

/// A segment's mapped index files (`None`: an empty sealed index, which is not mapped).
#[derive(Debug)]
struct IndexFiles {
    offset: Option<MappedFile>,
    time: Option<MappedFile>,
}

/// Reads of a mapped log, through the `StorageFile` interface the readers use for every log:
/// only its published bytes (whole batches, below the segment's size) are ever seen.
#[derive(Debug)]
struct MappedLog(Arc<MappedFile>);

fn unsupported(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        format!("{what} on the mapped log of an active segment"),
    )
}

impl StorageFile for MappedLog {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let end = self.0.committed() as u64;
        if offset >= end {
            return Ok(0);
        }
        let n = (end - offset).min(buf.len() as u64) as usize;
        let src = self
            .0
            .read(offset as usize, n)
            .ok_or_else(|| unsupported("a read past the published bytes"))?;
        buf[..n].copy_from_slice(src);
        Ok(n)
    }

    fn write_all_at(&self, _data: &[u8], _offset: u64) -> std::io::Result<()> {
        Err(unsupported("a positional write"))
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.committed() as u64)
    }

    fn set_len(&self, _len: u64) -> std::io::Result<()> {
        Err(unsupported("a truncation"))
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.flush(self.0.committed()).map(|_| ())
    }
}

/// The address space a segment's log mapping reserves: at least `want` (the segment size its
/// topic rolls at) and the `len` bytes the file already has, in whole pages. Nothing of it is
/// allocated on disk until written (see `MappedFile::ensure_allocated`).
pub(crate) fn log_map_len(want: u64, len: u64) -> u64 {
    want.max(len).max(1).div_ceil(PAGE) * PAGE
}

const PAGE: u64 = 4096;

/// How far ahead of the writer the warm-up thread faults in an active log (never past its
/// allocated blocks, which stay in proportion to the data).
const LOG_WARM_WINDOW: usize = 256 << 10;

/// The warm-up budget the active logs share: each log's window ahead of its writer is this
/// divided by the active logs the handle cache maps, between [`MIN_WARM_WINDOW`] and
/// [`LOG_WARM_WINDOW`], so the pages faulted in ahead of writers stay about 16 MiB however many
/// partitions are written (the CommitLog engine's consume queues share a budget the same way).
/// Measured: 1,024 partitions written round-robin held 144 MB resident with 256 KiB each.
const WARM_BUDGET: usize = 16 << 20;
/// The smallest window: four pages, a few appends of 1 KiB ahead.
const MIN_WARM_WINDOW: usize = 16 << 10;

/// The warm-up window of each active log when `active_logs` are mapped (see [`WARM_BUDGET`]).
pub(crate) fn warm_window(active_logs: usize) -> usize {
    crate::io::window_share(WARM_BUDGET, active_logs, MIN_WARM_WINDOW, LOG_WARM_WINDOW)
}

/// Maps the log of a segment not sealed yet, writable, with its data (`size` bytes) published
/// and nothing assumed durable: bytes appended through an earlier (evicted) handle may still be
/// only in the page cache, so the first flush through this one covers them too.
fn map_log(
    fs: &dyn FileSystem,
    path: &Path,
    size: u64,
    map_len: u64,
    create: bool,
) -> Result<MappedFile> {
    let mode = if create {
        MapMode::CreateGrowable { initial: 0 }
    } else {
        MapMode::OpenGrowable
    };
    let mut f = MappedFile::map(fs, path, 0, map_len, mode).map_err(|e| Error::io(path, e))?;
    if (f.allocated() as u64) < size {
        return Err(Error::corrupted(
            path,
            f.allocated() as u64,
            "log shorter than its data",
        ));
    }
    f.set_recovered_end(size as usize, 0);
    // Pages behind the writer leave the process's resident set, flushed or not, so a
    // partition's RSS does not grow with its data and no append waits on an msync to bound it
    // (readers tailing it find the recent ones still mapped; dirty ones stay dirty in the page
    // cache for the next flush).
    f.release_published_behind(LOG_RELEASE_KEEP);
    Ok(f)
}

/// Published bytes of an active log kept mapped behind its published end, and the step its
/// pages are released in, when it is the only active log: together with [`LOG_WARM_WINDOW`] and
/// [`LOG_RELEASE_LAG`], the bound on an active log's resident pages whatever the data size or
/// the flush interval. With more active logs each keeps its share of [`RELEASE_BUDGET`].
const LOG_RELEASE_KEEP: usize = 1 << 20;

/// What the active logs keep mapped behind their writers, shared as [`WARM_BUDGET`] is: each
/// log keeps and releases in steps of this divided by the active logs, between
/// [`MIN_RELEASE_KEEP`] and [`LOG_RELEASE_KEEP`]. A log holds up to its keep plus a step
/// behind its writer, so the active logs together hold at most twice this (plus the minimum
/// per log past 1,024 of them). Measured: with a fixed 1 MiB keep and step per log, 1,024
/// partitions written 160 KiB each kept all 160 MiB resident. A log learns its share on its
/// own appends; the handle cache hands idle ones the smaller share as the count doubles.
const RELEASE_BUDGET: usize = 16 << 20;
/// The smallest keep and step: four pages, so a log releases at most one madvise per 16 KiB
/// it is written.
const MIN_RELEASE_KEEP: usize = 16 << 10;

/// The keep (and release step) of each active log when `active_logs` are mapped (see
/// [`RELEASE_BUDGET`]).
pub(crate) fn release_keep(active_logs: usize) -> usize {
    crate::io::window_share(
        RELEASE_BUDGET,
        active_logs,
        MIN_RELEASE_KEEP,
        LOG_RELEASE_KEEP,
    )
}

/// Bytes the releases behind an active log's writer may lag by before the appender makes them
/// itself instead of the warm-up thread: part of the bound on its resident pages.
const LOG_RELEASE_LAG: usize = 8 << 20;

fn map_index(
    fs: &dyn FileSystem,
    path: &Path,
    len: u64,
    used: u64,
    mode: MapMode,
) -> Result<Option<MappedFile>> {
    if len == 0 {
        return Ok(None);
    }
    let mut f = MappedFile::map(fs, path, 0, len, mode).map_err(|e| Error::io(path, e))?;
    // Nothing is assumed durable: entries written through an earlier (evicted) handle may still
    // be only in the page cache, so a flush through this one covers them too.
    f.set_recovered_end(used as usize, 0);
    Ok(Some(f))
}

/// Capacities of an active segment's indexes, in bytes: `max_index_bytes` rounded down to whole
/// entries.
fn index_capacities(max_index_bytes: u64) -> (u64, u64) {
    (
        max_index_bytes - max_index_bytes % OFFSET_ENTRY as u64,
        max_index_bytes - max_index_bytes % TIME_ENTRY as u64,
    )
}

/// Bytes an active segment's index file has allocated when created: none. The files grow a page
/// at a time, doubling, as entries arrive, so a partition's disk use follows its data (a
/// one-batch partition has one page of time index and no offset index, not 2 ×
/// `max_index_bytes` preallocated).
const INDEX_INITIAL_BYTES: u64 = 0;

impl SegmentHandle {
    /// Creates the log of a new, empty segment; its index entries are held in memory until
    /// there are enough to be worth their files (see `early_index`): the caller gives the meta
    /// [`Self::early_indexes`]. The log's directory entry is not synced here: the caller marks
    /// the partition's directory unsynced and the next flush syncs it before it claims anything
    /// in the new file durable (`Partition::sync_txn_indexes`), so a first append or a roll
    /// pays no directory fsync, under the partition lock or anywhere else.
    pub(crate) fn create(
        fs: &dyn FileSystem,
        dir: &Path,
        base: u64,
        max_index_bytes: u64,
        map_len: u64,
    ) -> Result<SegmentHandle> {
        let lp = log_path(dir, base);
        let writer = Arc::new(map_log(fs, &lp, 0, map_len, true)?);
        Ok(SegmentHandle {
            log: Box::new(MappedLog(Arc::clone(&writer))),
            log_path: lp,
            files: OnceLock::new(),
            early: Some(Arc::new(EarlyIndexes::default())),
            capacities: index_capacities(max_index_bytes),
            writer: Some(writer),
            uncached: AtomicBool::new(false),
        })
    }

    /// The in-memory index entries of a segment with no index files yet, for its meta.
    pub(crate) fn early_indexes(&self) -> Option<Arc<EarlyIndexes>> {
        match self.files.get() {
            Some(_) => None,
            None => self.early.clone(),
        }
    }

    /// Opens an existing segment whose indexes hold `meta`'s entry counts: a sealed segment's
    /// indexes at their length, an active one's at their full capacity (they grow as it fills).
    /// A segment not sealed yet has its log mapped with `meta.map_len` bytes of address space
    /// (or, when that is not known yet, `segment_bytes` or the file's length if longer).
    pub(crate) fn open(
        fs: &dyn FileSystem,
        dir: &Path,
        meta: &SegmentMeta,
        max_index_bytes: u64,
        segment_bytes: u64,
    ) -> Result<SegmentHandle> {
        let lp = log_path(dir, meta.base);
        let (log, writer): (Box<dyn StorageFile>, _) = if meta.sealed || meta.swapping {
            let log = open_swapping(&lp, meta.swapping, |p| {
                fs.open_file(p, OpenMode::Existing)
                    .map_err(|e| Error::io(p, e))
            })?;
            (log, None)
        } else {
            let map_len = match meta.map_len {
                0 => log_map_len(
                    segment_bytes,
                    fs.file_len(&lp).map_err(|e| Error::io(&lp, e))?,
                ),
                n => n,
            };
            let w = Arc::new(map_log(fs, &lp, meta.size, map_len, false)?);
            (Box::new(MappedLog(Arc::clone(&w))), Some(w))
        };
        let (ocap, tcap) = index_capacities(max_index_bytes);
        let handle = |files: OnceLock<IndexFiles>, early, capacities| SegmentHandle {
            log,
            log_path: lp,
            files,
            early,
            capacities,
            writer,
            uncached: AtomicBool::new(false),
        };
        // A segment not sealed yet whose entries are in memory has no index files to open.
        if let Some(early) = meta.early.as_ref().filter(|_| !meta.sealed) {
            return Ok(handle(
                OnceLock::new(),
                Some(Arc::clone(early)),
                (ocap, tcap),
            ));
        }
        let index = |path: &Path, cap: u64, used: u64| {
            open_swapping(path, meta.swapping, |p| {
                let len = fs.file_len(p).map_err(|e| Error::io(p, e))?;
                let (mode, len) = if meta.sealed {
                    (MapMode::Open, len)
                } else {
                    (MapMode::OpenGrowable, len.max(cap))
                };
                map_index(fs, p, len, used, mode)
            })
        };
        let offset = index(
            &index_path(dir, meta.base),
            ocap,
            meta.index_entries * OFFSET_ENTRY as u64,
        )?;
        let time = index(
            &time_index_path(dir, meta.base),
            tcap,
            meta.time_entries * TIME_ENTRY as u64,
        )?;
        let capacities = (
            offset.as_ref().map_or(0, |f| f.len() as u64),
            time.as_ref().map_or(0, |f| f.len() as u64),
        );
        Ok(handle(
            OnceLock::from(IndexFiles { offset, time }),
            None,
            capacities,
        ))
    }

    /// Asks `warmer` to fault in the log's next pages ahead of the writer when it nears the end
    /// of those already faulted in: the first store into a fresh page of the mapping (a page
    /// fault, a page-cache allocation and a zero-fill) then happens on the warm-up thread
    /// instead of inside an append. The same thread releases the pages behind the writer
    /// (see [`LOG_RELEASE_KEEP`]), an madvise the appender then does not pay: the requests
    /// come every half window, so it never lags by more than a window and a release step.
    pub(crate) fn warm_ahead(&self, warmer: &crate::io::Warmer, window: usize) {
        if let Some(w) = &self.writer
            && w.wants_prefault_once(w.committed(), window)
        {
            warmer.request(w, window);
        }
    }

    /// Releases the log's published pages more than [`LOG_RELEASE_KEEP`] behind the writer
    /// (flushed or not: an madvise once per release step, no I/O, nothing waits on the disk),
    /// for a writer with no warm-up thread to do it.
    pub(crate) fn release_behind(&self) {
        if let Some(w) = &self.writer {
            w.release_behind();
        }
    }

    /// Sets the log's keep and release step behind its writer to `keep` (its share of
    /// [`RELEASE_BUDGET`], see [`release_keep`]); two loads when it is unchanged.
    pub(crate) fn share_release(&self, keep: usize) {
        if let Some(w) = &self.writer {
            w.share_release(keep, keep);
        }
    }

    /// Records that the handle cache no longer holds this handle (see `uncached`).
    pub(crate) fn mark_uncached(&self) {
        self.uncached.store(true, Ordering::Release);
    }

    /// Whether the handle cache still holds this handle: only then is it the one handle of its
    /// segment that appends write through.
    pub(crate) fn is_cached(&self) -> bool {
        !self.uncached.load(Ordering::Acquire)
    }

    /// The log writer's addresses for prefetch hints (see [`MappedFile::prefetch_addrs`]), for
    /// a segment not sealed yet.
    pub(crate) fn prefetch_addrs(&self) -> Option<[usize; 3]> {
        self.writer.as_ref().map(|w| w.prefetch_addrs(0))
    }

    /// Whether the log is mapped (a segment not sealed yet): the handle holds no descriptor.
    pub(crate) fn is_mapped(&self) -> bool {
        self.writer.is_some()
    }

    /// The log's mapping, for a segment not sealed yet: readers slice its published bytes
    /// (zero-copy) instead of copying them out.
    pub(crate) fn mapped_log(&self) -> Option<&Arc<MappedFile>> {
        self.writer.as_ref()
    }

    /// Bytes of log the handle can take (its mapping's length); unbounded for a sealed one,
    /// which takes none.
    pub(crate) fn log_capacity(&self) -> u64 {
        self.writer.as_ref().map_or(u64::MAX, |w| w.len() as u64)
    }

    /// The offset index's entries (from its file, or from memory while it has none).
    pub(crate) fn offset_entries(&self) -> Entries<'_> {
        match (self.files.get(), &self.early) {
            (Some(f), _) => Entries::Mapped(f.offset.as_ref().map_or(&[], |f| f.committed_bytes())),
            (None, Some(early)) => early.offset(),
            (None, None) => Entries::Mapped(&[]),
        }
    }

    /// The time index's entries (from its file, or from memory while it has none).
    pub(crate) fn time_entries(&self) -> Entries<'_> {
        match (self.files.get(), &self.early) {
            (Some(f), _) => Entries::Mapped(f.time.as_ref().map_or(&[], |f| f.committed_bytes())),
            (None, Some(early)) => early.time(),
            (None, None) => Entries::Mapped(&[]),
        }
    }

    /// Capacity of the offset index in entries.
    pub(crate) fn offset_capacity(&self) -> u64 {
        self.capacities.0 / OFFSET_ENTRY as u64
    }

    pub(crate) fn time_capacity(&self) -> u64 {
        self.capacities.1 / TIME_ENTRY as u64
    }

    /// Creates the segment's index files with the entries held in memory so far (the next
    /// entries go to the files), for an append whose entries the memory would not take. On
    /// failure nothing is left behind and the entries stay in memory. The files' directory
    /// entries are not synced: like their contents, they matter only to a clean open, which
    /// finds them after a clean close, and an index missing then is rebuilt from the log.
    fn create_index_files(&self, fs: &dyn FileSystem, early: &EarlyIndexes) -> Result<()> {
        let dir = self.log_path.parent().unwrap_or(Path::new(""));
        let base = self
            .log_path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("");
        let paths = [
            dir.join(format!("{base}.index")),
            dir.join(format!("{base}.timeindex")),
        ];
        let create = |path: &Path, cap: u64, entries: &[u8]| -> Result<Option<MappedFile>> {
            let mode = MapMode::CreateGrowable {
                initial: INDEX_INITIAL_BYTES,
            };
            let Some(f) = map_index(fs, path, cap, 0, mode)? else {
                return Ok(None);
            };
            f.ensure_allocated(entries.len().min(f.len()))
                .map_err(|e| Error::io(path, e))?;
            if !entries.is_empty() && f.append(&[entries]).is_none() {
                return Err(Error::corrupted(
                    path,
                    0,
                    "index entries exceed the index size",
                ));
            }
            f.commit_all();
            Ok(Some(f))
        };
        let files = create(&paths[0], self.capacities.0, &early.offset()).and_then(|offset| {
            let time = create(&paths[1], self.capacities.1, &early.time())?;
            Ok(IndexFiles { offset, time })
        });
        match files {
            Ok(files) => {
                // Only the partition's appender (under its lock) creates them.
                let _ = self.files.set(files);
                Ok(())
            }
            Err(e) => {
                for p in &paths {
                    let _ = io::remove_if_exists(fs, p);
                }
                Err(e)
            }
        }
    }

    /// Appends a batch at `meta.size` and updates `meta` and the indexes.
    pub(crate) fn append(
        &self,
        fs: &dyn FileSystem,
        meta: &mut SegmentMeta,
        bytes: &[u8],
        h: &BatchHeader,
        interval: u64,
    ) -> Result<()> {
        let pos = meta.size;
        let indexed = meta.bytes_since_index >= interval || meta.size == 0;
        // Room for this batch's index entries is made before the batch is written (the index
        // files created once the memory holds enough, blocks allocated), so a full disk fails
        // the append cleanly instead of leaving the batch unindexed. Only an append that writes
        // entries asks: the others (23 in 24 at 100 B and the default interval) do not touch
        // the indexes at all, which at 1,024 partitions are cache misses (BENCHMARKS.md
        // "Segmented fan-out ... compact append path").
        if indexed {
            if let (None, Some(early)) = (self.files.get(), &self.early)
                && early.full()
            {
                self.create_index_files(fs, early)?;
                meta.early = None;
            }
            if let Some(files) = self.files.get() {
                for (idx, entries, unit) in [
                    (&files.offset, meta.index_entries, OFFSET_ENTRY),
                    (&files.time, meta.time_entries, TIME_ENTRY),
                ] {
                    if let Some(f) = idx {
                        let upto = ((entries as usize + 1) * unit).min(f.len());
                        f.ensure_allocated(upto)
                            .map_err(|e| Error::io(f.path(), e))?;
                    }
                }
            }
        }
        let Some(w) = &self.writer else {
            return Err(Error::corrupted(
                &self.log_path,
                pos,
                "append to a sealed segment",
            ));
        };
        let end = pos + bytes.len() as u64;
        if end > w.len() as u64 {
            return Err(Error::corrupted(
                &self.log_path,
                pos,
                "batch past the log's mapping",
            ));
        }
        // Blocks first (a full disk is an error here, not a SIGBUS on the copy), in steps that
        // double, so an append pays an allocation once per step.
        w.ensure_allocated(end as usize)
            .map_err(|e| Error::io(&self.log_path, e))?;
        // The position is checked before the copy: a mapping whose cursor is not the segment's
        // end (a bug elsewhere) fails the append without writing over published batches.
        if w.append_at(pos as usize, &[bytes]).is_none() {
            return Err(Error::corrupted(
                &self.log_path,
                pos,
                "the log's mapping is not at the segment's end",
            ));
        }
        // Published to readers of this handle; the partition publishes the offsets after.
        w.commit_all();
        // The warm-up thread releases the pages behind the writer (see `warm_ahead`); if it
        // lags by `LOG_RELEASE_LAG` (a starved thread), the appender does it itself.
        w.release_behind_past(LOG_RELEASE_LAG);
        // Blocks for the next appends are allocated half a step before they are needed, so the
        // warm-up thread can fault them in ahead of this writer. A failure here is reported by
        // the `ensure_allocated` of the append that needs the blocks.
        if w.wants_growth(end as usize) {
            let _ = w.grow_ahead();
        }
        if pos == 0 {
            meta.first_timestamp = h.max_timestamp;
        }
        if indexed {
            let rel = (h.last_offset() as u64 - meta.base) as u32;
            if meta.size > 0
                && self.push_entry(Index::Offset, &index::offset_entry(rel, pos as u32))
            {
                meta.index_entries += 1;
            }
            meta.bytes_since_index = 0;
            if h.max_timestamp > meta.last_time_indexed
                && self.push_entry(Index::Time, &index::time_entry(h.max_timestamp, rel))
            {
                meta.time_entries += 1;
                meta.last_time_indexed = h.max_timestamp;
            }
        }
        meta.bytes_since_index += bytes.len() as u64;
        meta.size += bytes.len() as u64;
        meta.next_offset = h.last_offset() as u64 + 1;
        meta.max_timestamp = meta.max_timestamp.max(h.max_timestamp);
        Ok(())
    }

    /// Appends the segment's newest timestamp to its time index if the last entry is older
    /// (Kafka does the same when a segment becomes inactive), so the time index of a rolled
    /// segment ends in its max timestamp even before the seal trims it. The writer keeps one
    /// slot free for it.
    pub(crate) fn append_final_time_entry(&self, meta: &mut SegmentMeta) -> Result<()> {
        if meta.max_timestamp <= meta.last_time_indexed || meta.next_offset <= meta.base {
            return Ok(());
        }
        let Ok(rel) = u32::try_from(meta.next_offset - 1 - meta.base) else {
            return Ok(());
        };
        // In memory (one entry past the early limit, see `EarlyIndexes`), or in the file.
        if let Some(Some(idx)) = self.files.get().map(|f| &f.time) {
            let upto = ((meta.time_entries as usize + 1) * TIME_ENTRY).min(idx.len());
            idx.ensure_allocated(upto)
                .map_err(|e| Error::io(idx.path(), e))?;
        }
        if self.push_entry(Index::Time, &index::time_entry(meta.max_timestamp, rel)) {
            meta.time_entries += 1;
            meta.last_time_indexed = meta.max_timestamp;
        }
        Ok(())
    }

    /// Adds an entry to the offset or time index, in its file or in memory; `false` if it has
    /// no room (a full file: the segment rolls before that, see `index_capacities`).
    fn push_entry(&self, which: Index, entry: &[u8]) -> bool {
        match (self.files.get(), &self.early) {
            (Some(files), _) => {
                let f = match which {
                    Index::Offset => &files.offset,
                    Index::Time => &files.time,
                };
                match f {
                    Some(f) if f.append(&[entry]).is_some() => {
                        f.commit_all();
                        true
                    }
                    _ => false,
                }
            }
            (None, Some(early)) => {
                match which {
                    Index::Offset => early.push_offset(entry),
                    Index::Time => early.push_time(entry),
                }
                true
            }
            (None, None) => false,
        }
    }

    /// Makes the index files' entries durable (msync). Only a clean close needs this: a clean
    /// open trusts the active segment's indexes, an unclean one rebuilds them. Entries held in
    /// memory have no file: the next open scans the (small) segment for them.
    pub(crate) fn sync_indexes(&self) -> Result<()> {
        let Some(files) = self.files.get() else {
            return Ok(());
        };
        for f in [&files.offset, &files.time].into_iter().flatten() {
            f.flush(f.committed()).map_err(|e| Error::io(f.path(), e))?;
        }
        Ok(())
    }

    /// Flushes the log data: msync of what the mapping wrote since its last flush (which, like
    /// fdatasync, also makes the grown length durable), or fdatasync of a sealed segment.
    pub(crate) fn sync(&self) -> Result<()> {
        self.log
            .sync_data()
            .map_err(|e| Error::io(&self.log_path, e))
    }

    /// Cuts the log file to its `size` bytes of batches (the zeros its mapping grew into go),
    /// durably when `durable` (a seal: a reopen trusts a sealed segment's length; a clean close
    /// does not need it, since an open that finds zeros after the last batch scans and cuts
    /// them). Only once nothing appends to the segment any more: the mapping stays valid below
    /// `size`, the only bytes anyone reads.
    pub(crate) fn trim_log(&self, fs: &dyn FileSystem, size: u64, durable: bool) -> Result<()> {
        if self.writer.is_none() {
            return Ok(());
        }
        let lp = &self.log_path;
        let f = fs
            .open_file(lp, OpenMode::Existing)
            .map_err(|e| Error::io(lp, e))?;
        if f.len().map_err(|e| Error::io(lp, e))? > size {
            f.set_len(size).map_err(|e| Error::io(lp, e))?;
        }
        // Synced even when the length already fits: an earlier cut (a clean close's) may not
        // be durable yet.
        if durable {
            f.sync_data().map_err(|e| Error::io(lp, e))?;
        }
        Ok(())
    }

    /// Reads the header of the batch at `pos`.
    pub(crate) fn header_at(
        &self,
        pos: u64,
        size: u64,
    ) -> std::result::Result<BatchHeader, BatchError> {
        read_header(self.log.as_ref(), pos, size)
    }
}

/// Reads and parses the header of the batch at `pos` of a log of `size` bytes; a header or batch
/// that does not fit in `size` is `Truncated`.
pub(crate) fn read_header(
    log: &dyn StorageFile,
    pos: u64,
    size: u64,
) -> std::result::Result<BatchHeader, BatchError> {
    if pos + HEADER_LEN as u64 > size {
        return Err(BatchError::Truncated);
    }
    let mut h = [0u8; HEADER_LEN];
    io::read_exact_at(log, &mut h, pos).map_err(|_| BatchError::Truncated)?;
    let header = batch::parse_header(&h)?;
    if pos + header.total_len() as u64 > size {
        return Err(BatchError::Truncated);
    }
    Ok(header)
}

/// The time-index entries of a segment being sealed: its entries plus, when the newest batch is
/// newer than the last entry, one for it (Kafka appends the same entry when a segment becomes
/// inactive), so the sealed index's last entry is the segment's newest timestamp, which
/// retention and a clean open read from it.
pub(crate) fn sealed_time_entries(
    entries: &[u8],
    base: u64,
    max_timestamp: i64,
    next_offset: u64,
) -> Vec<u8> {
    let mut out = entries[..entries.len() - entries.len() % TIME_ENTRY].to_vec();
    let last_ts = match out.len() {
        0 => -1,
        n => index::time_at(&out, n / TIME_ENTRY - 1).0,
    };
    if max_timestamp > last_ts
        && next_offset > base
        && let Ok(rel) = u32::try_from(next_offset - 1 - base)
    {
        out.extend_from_slice(&index::time_entry(max_timestamp, rel));
    }
    out
}

/// Seals a rolled segment: its log synced, then its indexes rewritten at their used length
/// (plus the final time entry) as new files renamed over the preallocated ones. The old files
/// are never shrunk in place: handles that still map them keep a valid mapping of the old
/// inode until they drop it.
pub(crate) fn seal(
    fs: &dyn FileSystem,
    dir: &Path,
    handle: &SegmentHandle,
    meta: &SegmentMeta,
) -> Result<()> {
    handle.sync()?;
    // The log is cut to its batches before its indexes say "sealed": a reopen trusts a sealed
    // segment's length as its size.
    handle.trim_log(fs, meta.size, true)?;
    let time = sealed_time_entries(
        &handle.time_entries(),
        meta.base,
        meta.max_timestamp,
        meta.next_offset,
    );
    for (path, entries) in [
        (index_path(dir, meta.base), &handle.offset_entries()[..]),
        (time_index_path(dir, meta.base), &time[..]),
    ] {
        io::write_atomic(fs, &path, entries).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// What a sealed segment's index files say, read once at open for a segment that is trusted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SealedIndexes {
    pub(crate) index_entries: u64,
    pub(crate) time_entries: u64,
    /// The time index's last entry: the segment's newest timestamp (-1 when empty).
    pub(crate) max_timestamp: i64,
}

/// The index files of a segment if they look sealed: each empty or ending in a non-zero entry
/// (an untrimmed index ends in the zeros of its allocated room, unless its last page is exactly
/// full — harmless, since the roll already wrote the final time entry) and a whole number of
/// entries long, the time index holding a positive last timestamp when the log is not empty.
/// `None` for a segment rolled but not sealed before a crash: it is validated like an
/// unflushed one, never trusted.
pub(crate) fn sealed_indexes(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    log_len: u64,
) -> Result<Option<SealedIndexes>> {
    // (entries, last entry); `None` when the length is not a whole number of entries.
    let tail = |path: &Path, unit: usize| -> Result<Option<(u64, Option<Vec<u8>>)>> {
        let len = fs.file_len(path).map_err(|e| Error::io(path, e))?;
        if len % unit as u64 != 0 {
            return Ok(None);
        }
        if len == 0 {
            return Ok(Some((0, None)));
        }
        let f = fs
            .open_file(path, OpenMode::Existing)
            .map_err(|e| Error::io(path, e))?;
        let mut b = vec![0u8; unit];
        io::read_exact_at(f.as_ref(), &mut b, len - unit as u64).map_err(|e| Error::io(path, e))?;
        Ok(Some((len / unit as u64, Some(b))))
    };
    let Some((index_entries, last)) = tail(&index_path(dir, base), OFFSET_ENTRY)? else {
        return Ok(None);
    };
    if last.is_some_and(|e| e.iter().all(|&b| b == 0)) {
        return Ok(None);
    }
    let Some((time_entries, last)) = tail(&time_index_path(dir, base), TIME_ENTRY)? else {
        return Ok(None);
    };
    let max_timestamp = last.map_or(-1, |e| index::time_at(&e, 0).0);
    let sealed = match time_entries {
        0 => log_len == 0,
        _ => max_timestamp > 0,
    };
    Ok(sealed.then_some(SealedIndexes {
        index_entries,
        time_entries,
        max_timestamp,
    }))
}

/// What a scan of a segment's log found.
#[derive(Debug)]
pub(crate) struct ScanResult {
    pub(crate) valid_size: u64,
    pub(crate) next_offset: u64,
    pub(crate) max_timestamp: i64,
    pub(crate) offset_entries: Vec<u8>,
    pub(crate) time_entries: Vec<u8>,
    pub(crate) bytes_since_index: u64,
    pub(crate) last_time_indexed: i64,
}

impl ScanResult {
    /// The state before the first batch of the segment based at `base`.
    pub(crate) fn start(base: u64) -> ScanResult {
        ScanResult {
            valid_size: 0,
            next_offset: base,
            max_timestamp: -1,
            offset_entries: Vec::new(),
            time_entries: Vec::new(),
            bytes_since_index: 0,
            last_time_indexed: -1,
        }
    }
}

/// Validates a segment's log from the start and rebuilds its index entries in memory. Stops at
/// the first batch that fails a check, overlaps the previous one, or runs past the file. Batches
/// whose last offset is below `trusted_below` (the recovery point) are only parsed, not read
/// and checksummed.
pub(crate) fn scan(
    log: &dyn StorageFile,
    base: u64,
    file_len: u64,
    interval: u64,
    max_index_bytes: u64,
    trusted_below: u64,
) -> ScanResult {
    scan_from(
        log,
        base,
        file_len,
        interval,
        max_index_bytes,
        trusted_below,
        ScanResult::start(base),
    )
}

/// Like [`scan`], but resumes from an earlier scan's state at `start.valid_size` (a batch
/// boundary), keeping its entries.
pub(crate) fn scan_from(
    log: &dyn StorageFile,
    base: u64,
    file_len: u64,
    interval: u64,
    max_index_bytes: u64,
    trusted_below: u64,
    start: ScanResult,
) -> ScanResult {
    let mut r = start;
    let mut buf = Vec::new();
    let mut pos = r.valid_size;
    let mut first = pos == 0;
    // A batch longer than the file is refused by `read_header`, so nothing is allocated by its
    // length.
    while let Ok(header) = read_header(log, pos, file_len) {
        let total = header.total_len() as u64;
        // A batch wholly below the recovery point was made durable before the point was
        // recorded: its header is enough to rebuild the indexes (Kafka trusts such data without
        // reading it at all). Reads still check every batch's CRC.
        // (Past the durable prefix a header would need offsets below the previous batch's to
        // pass as trusted, which the order check below rejects.)
        let trusted = header.base_offset >= 0
            && header.last_offset() >= header.base_offset
            && (header.last_offset() as u64) < trusted_below;
        if !trusted {
            buf.resize(total as usize, 0);
            if io::read_exact_at(log, &mut buf, pos).is_err() {
                break;
            }
            if batch::check_batch(&buf).is_err() {
                break;
            }
        }
        let base_offset = header.base_offset as u64;
        if base_offset < r.next_offset
            || (first && base_offset < base)
            || header.last_offset() as u64 - base > u64::from(u32::MAX)
        {
            break;
        }
        first = false;
        r.add_batch(pos, &header, base, interval, max_index_bytes);
        pos += total;
    }
    r
}

/// Validates a segment that has no index to resume from (its entries were held in memory, see
/// `early_index`) and rebuilds its entries, like [`scan`] with every batch checksummed and no
/// batch holding offsets from `limit` on (the partition's known end, or the next segment's
/// base: a base offset damaged upwards lies outside the batch CRC). A batch that fails while
/// the offsets reached are below `keep_below` (data known good: a clean shutdown's, or durable
/// below a crash's recovery point) does not end the scan: it goes on at the next whole,
/// checksummed batch after it that starts below `keep_below`, and the damaged bytes stay in the
/// log, reported as corrupt to whoever reads them, as they are in a segment whose open resumes
/// at an index entry past them. Otherwise the scan stops at the first bad batch, as [`scan`]
/// does.
pub(crate) fn scan_keeping(
    log: &dyn StorageFile,
    base: u64,
    file_len: u64,
    interval: u64,
    max_index_bytes: u64,
    keep_below: u64,
    limit: u64,
) -> ScanResult {
    let mut r = ScanResult::start(base);
    let mut buf = Vec::new();
    let mut pos = 0;
    let mut whole_at = |pos: u64, next: u64, below: u64| -> Option<BatchHeader> {
        read_header(log, pos, file_len).ok().filter(|h| {
            h.base_offset >= 0
                && h.base_offset as u64 >= next
                && h.last_offset() >= h.base_offset
                && (h.last_offset() as u64) < limit
                && (h.base_offset as u64) < below
                && h.last_offset() as u64 - base <= u64::from(u32::MAX)
                && {
                    buf.resize(h.total_len(), 0);
                    io::read_exact_at(log, &mut buf, pos).is_ok()
                        && batch::check_batch(&buf).is_ok()
                }
        })
    };
    loop {
        if let Some(h) = whole_at(pos, r.next_offset, u64::MAX) {
            r.add_batch(pos, &h, base, interval, max_index_bytes);
            pos = r.valid_size;
            continue;
        }
        if pos >= file_len || r.next_offset >= keep_below {
            return r;
        }
        // The next whole batch that starts in the known-good range.
        let next = r.next_offset;
        let Some((at, h)) =
            first_header_after(log, pos + 1, file_len, |at| whole_at(at, next, keep_below))
        else {
            return r;
        };
        // The damaged bytes count as written since the last entry.
        r.bytes_since_index += at - pos;
        r.add_batch(at, &h, base, interval, max_index_bytes);
        pos = r.valid_size;
    }
}

/// The first position from `from` on where a batch header parses and `take` accepts the batch
/// there, with what it returned. The log is read in chunks of 1 MiB; `take` runs only where a
/// header parses.
fn first_header_after(
    log: &dyn StorageFile,
    from: u64,
    file_len: u64,
    mut take: impl FnMut(u64) -> Option<BatchHeader>,
) -> Option<(u64, BatchHeader)> {
    const CHUNK: u64 = 1 << 20;
    let mut chunk = Vec::new();
    let mut at = from;
    while at + HEADER_LEN as u64 <= file_len {
        let n = (file_len - at).min(CHUNK + HEADER_LEN as u64) as usize;
        chunk.resize(n, 0);
        io::read_exact_at(log, &mut chunk, at).ok()?;
        for i in 0..=n - HEADER_LEN {
            if batch::parse_header(&chunk[i..i + HEADER_LEN]).is_ok()
                && let Some(h) = take(at + i as u64)
            {
                return Some((at + i as u64, h));
            }
        }
        at += (n - HEADER_LEN + 1) as u64;
    }
    None
}

impl ScanResult {
    /// Takes one valid batch at `pos` (the end of what was taken so far) into the state, with
    /// the writer's index rule: an offset entry once `interval` bytes were written since the
    /// last one, a time entry at the first batch and with each offset entry whose batch is
    /// newer, neither index past `max_index_bytes`. The cleaner builds a cleaned segment's
    /// indexes with it, so they are exactly what a scan of the cleaned log rebuilds.
    pub(crate) fn add_batch(
        &mut self,
        pos: u64,
        header: &BatchHeader,
        base: u64,
        interval: u64,
        max_index_bytes: u64,
    ) {
        let max_offset_entries = (max_index_bytes / OFFSET_ENTRY as u64) as usize;
        let max_time_entries = (max_index_bytes / TIME_ENTRY as u64) as usize;
        let r = self;
        let rel = (header.last_offset() as u64 - base) as u32;
        if (r.bytes_since_index >= interval)
            && pos > 0
            && r.offset_entries.len() / OFFSET_ENTRY < max_offset_entries
        {
            r.offset_entries
                .extend_from_slice(&index::offset_entry(rel, pos as u32));
            r.bytes_since_index = 0;
        }
        if (pos == 0 || r.bytes_since_index == 0)
            && header.max_timestamp > r.last_time_indexed
            && r.time_entries.len() / TIME_ENTRY < max_time_entries
        {
            r.time_entries
                .extend_from_slice(&index::time_entry(header.max_timestamp, rel));
            r.last_time_indexed = header.max_timestamp;
        }
        let total = header.total_len() as u64;
        r.bytes_since_index += total;
        r.max_timestamp = r.max_timestamp.max(header.max_timestamp);
        r.next_offset = header.last_offset() as u64 + 1;
        r.valid_size = pos + total;
    }
}

/// Where an unclean open can resume validating a segment whose log is durable below
/// `trusted_below` (the recovery point): the scan state just after the last offset-index entry
/// that points at a batch wholly below it, rebuilt without reading the log before it.
///
/// The index files are not flushed with the log, so after a crash their entries are only hints:
/// every entry kept is checked against the batch header it points at (positions and offsets
/// strictly increasing, the header's last offset equal to the entry's), and the first entry that
/// fails ends the trusted run. The time index is not read at all: its entries sit only at the
/// first batch and at offset-index points, so they are regenerated from the same headers by the
/// writer's rule. `None` when there is nothing to skip (then scan from the start).
pub(crate) fn resume_state(
    log: &dyn StorageFile,
    offset_index: &dyn StorageFile,
    base: u64,
    file_len: u64,
    max_index_bytes: u64,
    trusted_below: u64,
) -> Option<ScanResult> {
    let header_at = |pos: u64| -> Option<BatchHeader> {
        read_header(log, pos, file_len)
            .ok()
            .filter(|h| h.base_offset >= base as i64)
    };
    let first = header_at(0)?;
    let index_len = offset_index.len().ok()?;
    let max_offset_entries = max_index_bytes / OFFSET_ENTRY as u64;
    let max_time_entries = (max_index_bytes / TIME_ENTRY as u64) as usize;
    // The validated entries, each with the header it points at.
    let mut kept: Vec<(u32, u32, BatchHeader)> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut at = 0u64;
    'read: while at < index_len && (kept.len() as u64) < max_offset_entries {
        let n = (index_len - at).min(chunk.len() as u64) as usize;
        let n = n - n % OFFSET_ENTRY;
        if n == 0 {
            break;
        }
        io::read_exact_at(offset_index, &mut chunk[..n], at).ok()?;
        for i in 0..n / OFFSET_ENTRY {
            let (rel, pos) = index::offset_at(&chunk[..n], i);
            let (prev_rel, prev_pos) = kept.last().map_or((None, 0), |&(r, p, _)| (Some(r), p));
            if u64::from(pos) <= u64::from(prev_pos) || prev_rel.is_some_and(|p| rel <= p) {
                break 'read;
            }
            let Some(h) = header_at(u64::from(pos)) else {
                break 'read;
            };
            let last = h.last_offset();
            if last < h.base_offset
                || last as u64 != base + u64::from(rel)
                || last as u64 >= trusted_below
            {
                break 'read;
            }
            kept.push((rel, pos, h));
        }
        at += n as u64;
    }
    let &(rel_e, pos_e, ref h_e) = kept.last()?;
    // The time entries the writer made before batch E: at the first batch, then at each
    // offset-index point whose batch raised the newest timestamp.
    let mut time_entries = Vec::new();
    let mut last_time_indexed = -1i64;
    let first_rel = u32::try_from(first.last_offset() as u64 - base).ok()?;
    let points = std::iter::once((first_rel, &first))
        .chain(kept[..kept.len() - 1].iter().map(|(rel, _, h)| (*rel, h)));
    for (rel, h) in points {
        if h.max_timestamp > last_time_indexed && time_entries.len() / TIME_ENTRY < max_time_entries
        {
            time_entries.extend_from_slice(&index::time_entry(h.max_timestamp, rel));
            last_time_indexed = h.max_timestamp;
        }
    }
    let mut offset_entries = Vec::with_capacity(kept.len() * OFFSET_ENTRY);
    for (rel, pos, _) in &kept {
        offset_entries.extend_from_slice(&index::offset_entry(*rel, *pos));
    }
    debug_assert_eq!(u64::from(rel_e), h_e.last_offset() as u64 - base);
    Some(ScanResult {
        valid_size: u64::from(pos_e),
        next_offset: h_e.base_offset as u64,
        // Store times never go backwards in a duolog partition, so batch E's (read when the
        // scan resumes there) bounds everything before it.
        max_timestamp: last_time_indexed,
        offset_entries,
        time_entries,
        // Entry E was just added, as the writer had when it reached batch E.
        bytes_since_index: 0,
        last_time_indexed,
    })
}

/// Rewrites a segment's index files from scan results: sized to the entries when `sealed`, else
/// preallocated to `max_index_bytes`.
pub(crate) fn write_indexes(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    scan: &ScanResult,
    sealed: bool,
    max_index_bytes: u64,
) -> Result<()> {
    for (path, entries, unit) in [
        (
            index_path(dir, base),
            &scan.offset_entries,
            OFFSET_ENTRY as u64,
        ),
        (
            time_index_path(dir, base),
            &scan.time_entries,
            TIME_ENTRY as u64,
        ),
    ] {
        io::remove_if_exists(fs, &path).map_err(|e| Error::io(&path, e))?;
        if sealed {
            let sealed_time;
            let entries = if unit == TIME_ENTRY as u64 {
                sealed_time =
                    sealed_time_entries(entries, base, scan.max_timestamp, scan.next_offset);
                &sealed_time
            } else {
                entries
            };
            fs.write_file_synced(&path, entries)
                .map_err(|e| Error::io(&path, e))?;
        } else {
            let len = max_index_bytes - max_index_bytes % unit;
            let initial = entries.len() as u64;
            let f = MappedFile::map(fs, &path, 0, len, MapMode::CreateGrowable { initial })
                .map_err(|e| Error::io(&path, e))?;
            if !entries.is_empty() && f.append(&[entries]).is_none() {
                return Err(Error::corrupted(
                    &path,
                    0,
                    "index entries exceed the index size",
                ));
            }
            f.commit_all();
            f.flush(entries.len()).map_err(|e| Error::io(&path, e))?;
        }
    }
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_logs_share_a_bounded_warm_up_budget() {
        assert_eq!(warm_window(0), LOG_WARM_WINDOW);
        assert_eq!(warm_window(1), LOG_WARM_WINDOW);
        assert_eq!(warm_window(64), LOG_WARM_WINDOW);
        assert_eq!(warm_window(1024), MIN_WARM_WINDOW);
        assert_eq!(warm_window(100_000), MIN_WARM_WINDOW);
        // Past the point where every log has the whole window, the logs share the budget.
        for n in [64usize, 65, 100, 256, 1000, 1024] {
            assert!(n * warm_window(n) <= WARM_BUDGET, "{n} logs");
            assert_eq!(warm_window(n) % 4096, 0);
        }
    }

    #[test]
    fn active_logs_share_a_bounded_release_keep() {
        assert_eq!(release_keep(1), LOG_RELEASE_KEEP);
        assert_eq!(release_keep(16), LOG_RELEASE_KEEP);
        assert_eq!(release_keep(1024), MIN_RELEASE_KEEP);
        assert_eq!(release_keep(100_000), MIN_RELEASE_KEEP);
        for n in [16usize, 17, 100, 256, 1000, 1024] {
            assert!(n * release_keep(n) <= RELEASE_BUDGET, "{n} logs");
            assert_eq!(release_keep(n) % 4096, 0);
        }
    }
}
