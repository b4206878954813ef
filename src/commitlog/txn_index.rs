//! The aborted-transaction index of a CommitLog partition (Kafka's `.txnindex`, one file per
//! partition): `consumequeue/<topic>/<partition>/aborted.txnindex`, an 8-byte header
//! (`DLTXNIX` and version 1) then one 38-byte entry per abort marker, in marker order: Kafka's
//! 34 bytes and their CRC-32C,
//!
//! ```text
//! version i16 = 0 | producerId i64 | firstOffset i64 | lastOffset i64 (the abort marker's
//! offset) | lastStableOffset i64 (the partition's LSO once the marker was written) | crc u32
//! ```
//!
//! The file is derived data, like the consume queue: every entry is the image of one rollback
//! marker record in the log (whose properties carry the transaction's first offset and the LSO;
//! see `txn`), and it is rebuilt from the markers when it does not check out at open.
//!
//! *Memory is bounded, whatever the number of aborts*: the file holds the entries; a partition
//! keeps in memory only its last [`RESIDENT_ENTRIES`] (the ones tailing readers need), of which
//! those not yet written are written (unsynced) as soon as they would be more than that.
//! Entries are appended as the markers are dispatched and synced by the next checkpoint before
//! it moves the replay point past them; recovery drops the entries of markers at or past its
//! replay point and re-derives them from the replayed records.
//!
//! A `read_committed` fetch collects the entries overlapping its range once (Kafka's
//! `collectAbortedTxns`): from the resident tail when it reaches back to the fetch's offset,
//! else by a binary search of the file then reads of [`CHUNK_ENTRIES`] entries forward, at most
//! [`COLLECT_ENTRIES`] of them per fetch (the fetch's bound is then lowered to what they
//! decide); no file lock is held while reading. Entries wholly below the partition's start are
//! ignored, and dropped (the file rewritten) by the next checkpoint after retention or
//! `delete_before` moved the start.
//!
//! A compaction pass that drops abort markers removes their entries only after it commits; a
//! crash in between would leave entries naming markers that are gone, which no open notices
//! (it checks the entries past the producer snapshot's last abort). So the pass first writes
//! [`REWRITE_OWED_FILE`] (8 bytes: `DLTXNRW` and version 1) and removes it once the index is
//! rewritten; an open that finds it rebuilds the index from the markers.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::io::{self, FileSystem, OpenMode, StorageFile};

/// Name of the file, next to the index, saying a rewrite of the index is owed (see the module
/// docs). Its contents only identify it: its presence is what counts.
pub(crate) const REWRITE_OWED_FILE: &str = "aborted.txnindex.owed";
const REWRITE_OWED_MAGIC: &[u8; 8] = b"DLTXNRW\x01";

/// The owed-rewrite file of the index at `index_path`.
pub(crate) fn rewrite_owed_path(index_path: &Path) -> PathBuf {
    index_path.with_file_name(REWRITE_OWED_FILE)
}

/// Records, durably, that the index at `index_path` must be rebuilt if no rewrite removes the
/// record first (before a pass that drops abort markers commits).
pub(crate) fn mark_rewrite_owed(fs: &dyn FileSystem, index_path: &Path) -> Result<()> {
    let p = rewrite_owed_path(index_path);
    io::write_atomic(fs, &p, REWRITE_OWED_MAGIC).map_err(|e| Error::io(&p, e))
}

/// Whether a rewrite of the index at `index_path` is owed (an unreadable answer counts as yes:
/// the rebuild it costs is always correct).
pub(crate) fn rewrite_owed(fs: &dyn FileSystem, index_path: &Path) -> bool {
    fs.exists(&rewrite_owed_path(index_path)).unwrap_or(true)
}

/// The owed rewrite is done: removes its record. The removal need not be durable (if it comes
/// back, an open rebuilds an index that is already right).
pub(crate) fn clear_rewrite_owed(fs: &dyn FileSystem, index_path: &Path) -> Result<()> {
    let p = rewrite_owed_path(index_path);
    io::remove_if_exists(fs, &p)
        .map(drop)
        .map_err(|e| Error::io(&p, e))
}

/// Name of the index file in a partition's consume-queue directory.
pub(crate) const TXN_INDEX_FILE: &str = "aborted.txnindex";
const TMP_SUFFIX: &str = ".tmp";
/// The file's header: magic and format version (1: checksummed entries; the unversioned
/// Kafka-only layout before it does not decode and is rebuilt).
pub(crate) const HEADER: &[u8; 8] = b"DLTXNIX\x01";
const HEADER_LEN: u64 = HEADER.len() as u64;
/// Bytes of Kafka's entry.
const KAFKA_ENTRY_LEN: usize = 34;
/// Bytes of one entry in the file: Kafka's and a CRC-32C of them.
pub(crate) const ENTRY_LEN: usize = KAFKA_ENTRY_LEN + 4;
const ENTRY_VERSION: i16 = 0;
/// Entries a partition keeps in memory at most (its most recent ones).
pub(crate) const RESIDENT_ENTRIES: usize = 1024;
/// Unwritten entries at which [`TxnIndex::push`] writes them itself (the background
/// [`write_out`] it asks for at [`RESIDENT_ENTRIES`] fell this far behind).
pub(crate) const MAX_UNWRITTEN: usize = 4 * RESIDENT_ENTRIES;
/// Entries a `read_committed` fetch collects at most (unless the ones it has decide nothing
/// past its offset: a transaction open across thousands of aborts).
pub(crate) const COLLECT_ENTRIES: usize = 4096;
/// Entries read from the file at a time.
pub(crate) const CHUNK_ENTRIES: usize = 256;

/// One aborted transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AbortedTxn {
    pub(crate) producer_id: i64,
    pub(crate) first_offset: u64,
    /// The abort marker's offset.
    pub(crate) last_offset: u64,
    /// The partition's last stable offset once the marker was written: no transaction aborted
    /// later has records below it (what lets a fetch stop collecting).
    pub(crate) last_stable_offset: u64,
}

impl AbortedTxn {
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[..2].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
        b[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        b[10..18].copy_from_slice(&(self.first_offset as i64).to_be_bytes());
        b[18..26].copy_from_slice(&(self.last_offset as i64).to_be_bytes());
        b[26..34].copy_from_slice(&(self.last_stable_offset as i64).to_be_bytes());
        let crc = crc32c::crc32c(&b[..KAFKA_ENTRY_LEN]);
        b[KAFKA_ENTRY_LEN..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes an entry; `None` for a bad checksum, a version other than 0 or impossible
    /// fields.
    pub(crate) fn decode(b: &[u8]) -> Option<AbortedTxn> {
        let b: &[u8; ENTRY_LEN] = b.try_into().ok()?;
        let crc = u32::from_be_bytes([b[34], b[35], b[36], b[37]]);
        if crc32c::crc32c(&b[..KAFKA_ENTRY_LEN]) != crc {
            return None;
        }
        let i64_at = |p: usize| i64::from_be_bytes(b[p..p + 8].try_into().unwrap_or([0xFF; 8]));
        if i16::from_be_bytes([b[0], b[1]]) != ENTRY_VERSION {
            return None;
        }
        let (id, first, last, lso) = (i64_at(2), i64_at(10), i64_at(18), i64_at(26));
        if id < 0 || first < 0 || last <= first || lso < 0 || lso > last + 1 {
            return None;
        }
        Some(AbortedTxn {
            producer_id: id,
            first_offset: first as u64,
            last_offset: last as u64,
            last_stable_offset: lso as u64,
        })
    }
}

/// Decodes a whole index file: `None` if the header is not version 1's, its length is not
/// the header and whole entries, an entry does not decode, or the markers are not in
/// increasing offset order. (Tests only: the store streams its files.)
#[cfg(test)]
pub(crate) fn decode_all(bytes: &[u8]) -> Option<Vec<AbortedTxn>> {
    let body = bytes.strip_prefix(HEADER.as_slice())?;
    if !body.len().is_multiple_of(ENTRY_LEN) {
        return None;
    }
    let entries = body
        .chunks_exact(ENTRY_LEN)
        .map(AbortedTxn::decode)
        .collect::<Option<Vec<_>>>()?;
    entries
        .windows(2)
        .all(|w| w[0].last_offset < w[1].last_offset)
        .then_some(entries)
}

/// The aborted transactions a fetch of `[from, bound)` must know, by producer id: their
/// `(first, last)` offset ranges.
#[derive(Debug, Default)]
pub(crate) struct Aborted {
    by_producer: HashMap<i64, Vec<(u64, u64)>>,
}

impl Aborted {
    pub(crate) fn is_empty(&self) -> bool {
        self.by_producer.is_empty()
    }

    fn add(&mut self, e: &AbortedTxn) {
        self.by_producer
            .entry(e.producer_id)
            .or_default()
            .push((e.first_offset, e.last_offset));
    }

    /// Whether a transactional record of `producer_id` at `offset` belongs to one of them. A
    /// binary search: one producer's transactions never overlap and are collected in marker
    /// order, so its ranges ascend (no records × aborts scan for a lagging reader).
    pub(crate) fn covers(&self, producer_id: i64, offset: u64) -> bool {
        self.by_producer.get(&producer_id).is_some_and(|v| {
            let i = v.partition_point(|&(_, last)| last < offset);
            v.get(i).is_some_and(|&(first, _)| first <= offset)
        })
    }
}

/// Collects entries in marker order for a fetch of `[from, bound)` (see [`collect`]).
struct Collector {
    from: u64,
    bound: u64,
    cap: usize,
    taken: usize,
    out: Aborted,
    done: bool,
}

impl Collector {
    /// Takes `e` (at or past `from` in marker order); `done` once nothing later can matter.
    fn take(&mut self, e: &AbortedTxn) {
        if e.last_offset < self.from || self.done {
            return;
        }
        if e.first_offset < self.bound {
            self.out.add(e);
        }
        self.taken += 1;
        if e.last_stable_offset >= self.bound {
            self.done = true;
        } else if self.taken >= self.cap && e.last_stable_offset > self.from {
            // Every transaction aborted after this one starts at or past its LSO: what was
            // collected decides every record below it.
            self.bound = e.last_stable_offset;
            self.done = true;
        }
    }
}

/// A partition's index: the file, and its most recent entries in memory.
pub(crate) struct TxnIndex {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    /// Entries in the file (written, synced or not).
    in_file: u64,
    /// The last entries (at most [`RESIDENT_ENTRIES`] plus any not yet written): a suffix of
    /// the file's entries followed by the `unwritten` ones.
    tail: VecDeque<AbortedTxn>,
    unwritten: usize,
    /// Whether the file exists.
    exists: bool,
    /// Written since the last sync (the next persist syncs the file, and its directory when
    /// `created`).
    dirty: bool,
    created: bool,
    /// Entries whose marker is below this are dead (retention moved the start past them).
    floor: u64,
    /// The floor the file was last rewritten for.
    floor_applied: u64,
    /// Bumped when the file is replaced (a reader that opened the old one retries).
    generation: u64,
    /// Entries a checkpoint may rely on (the first `claimed` of the file, synced or about to be
    /// by a checkpoint's persist): a rewrite must have them synced in its new file before the
    /// rename; the ones after may follow it unsynced (see [`rewrite`]).
    claimed: u64,
    /// Whether a push asked for a [`write_out`] that has not started yet: one job queued per
    /// index, however many aborts arrive before it runs.
    write_asked: bool,
    /// Held (without the index's lock) by the one [`rewrite`] of this index at a time: they
    /// share the temporary file.
    rewrite_gate: Arc<Mutex<()>>,
}

impl std::fmt::Debug for TxnIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxnIndex")
            .field("path", &self.path)
            .field("in_file", &self.in_file)
            .field("resident", &self.tail.len())
            .finish()
    }
}

/// What [`TxnIndex::open`] found in the file.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) index: TxnIndex,
    /// `false` when the file exists but does not check out (the caller rebuilds).
    pub(crate) sound: bool,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Reads entries `[at, at + n)` of an open index file, checking each.
fn read_entries(file: &dyn StorageFile, path: &Path, at: u64, n: usize) -> Result<Vec<AbortedTxn>> {
    let mut buf = vec![0u8; n * ENTRY_LEN];
    let pos = HEADER_LEN + at * ENTRY_LEN as u64;
    io::read_exact_at(file, &mut buf, pos).map_err(io_err(path))?;
    buf.chunks_exact(ENTRY_LEN)
        .enumerate()
        .map(|(i, c)| {
            AbortedTxn::decode(c).ok_or_else(|| {
                Error::corrupted(
                    path,
                    pos + (i * ENTRY_LEN) as u64,
                    "aborted-transaction entry does not check out",
                )
            })
        })
        .collect()
}

/// The first of entries `[0, n)` whose marker is at or past `offset` (`n` if none): a binary
/// search, one entry read per step.
fn search(file: &dyn StorageFile, path: &Path, n: u64, offset: u64) -> Result<u64> {
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let e = read_entries(file, path, mid, 1)?[0];
        if e.last_offset < offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Writes a new index file at `<path>.tmp` entry by entry (buffered), keeping its last
/// [`RESIDENT_ENTRIES`]; [`Rewriter::install`] syncs it and renames it over the index.
pub(crate) struct Rewriter {
    fs: Arc<dyn FileSystem>,
    tmp: PathBuf,
    file: Box<dyn StorageFile>,
    buf: Vec<u8>,
    written: u64,
    count: u64,
    tail: VecDeque<AbortedTxn>,
    last: Option<u64>,
}

impl Rewriter {
    pub(crate) fn new(fs: Arc<dyn FileSystem>, path: &Path) -> Result<Rewriter> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(TMP_SUFFIX);
        let tmp = PathBuf::from(tmp);
        io::remove_if_exists(fs.as_ref(), &tmp).map_err(io_err(&tmp))?;
        let file = fs
            .open_file(&tmp, OpenMode::CreateNew)
            .map_err(io_err(&tmp))?;
        Ok(Rewriter {
            fs,
            tmp,
            file,
            buf: HEADER.to_vec(),
            written: 0,
            count: 0,
            tail: VecDeque::new(),
            last: None,
        })
    }

    pub(crate) fn push(&mut self, e: &AbortedTxn) -> Result<()> {
        // Markers ascend; a repeated one (a source read twice) is written once.
        if self.last.is_some_and(|l| l >= e.last_offset) {
            return Ok(());
        }
        self.last = Some(e.last_offset);
        self.buf.extend_from_slice(&e.encode());
        self.count += 1;
        self.tail.push_back(*e);
        if self.tail.len() > RESIDENT_ENTRIES {
            self.tail.pop_front();
        }
        if self.buf.len() >= CHUNK_ENTRIES * ENTRY_LEN {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .write_all_at(&self.buf, self.written)
            .map_err(io_err(&self.tmp))?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and syncs the new file (it may be synced again after more
    /// pushes).
    fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync_data().map_err(io_err(&self.tmp))
    }

    /// Renames the new file over `index`'s and makes `index` describe it. No data is written
    /// here (a rename only): a rewrite off the lock calls it under the lock (its finish path
    /// first writes, unsynced, the entries pushed since its last sync). The
    /// directory sync making the rename durable is owed (`created`): the caller does it, and
    /// until it has, the next persist does it too.
    ///
    /// `synced`: how many of its entries are synced (the rest were written after its last
    /// sync: `index` stays dirty, the next persist syncs them).
    fn swap_in(self, index: &mut TxnIndex, synced: u64) -> Result<()> {
        drop(self.file);
        self.fs
            .rename(&self.tmp, &index.path)
            .map_err(io_err(&index.path))?;
        index.dirty = synced < self.count;
        index.claimed = synced;
        index.in_file = self.count;
        index.tail = self.tail;
        index.unwritten = 0;
        index.exists = true;
        index.created = true;
        index.generation += 1;
        Ok(())
    }

    /// Syncs the new file and renames it over `index`'s, which then holds exactly its
    /// entries (at open, or as the last resort of [`rewrite`]: every step under the caller's
    /// lock).
    pub(crate) fn install(mut self, index: &mut TxnIndex) -> Result<()> {
        self.sync()?;
        #[cfg(test)]
        probe::SYNCED_UNDER_LOCK.with(|c| c.set(c.get() + 1));
        let synced = self.count;
        self.swap_in(index, synced)?;
        if let Some(dir) = index.path.parent() {
            index.fs.sync_dir(dir).map_err(io_err(dir))?;
        }
        index.created = false;
        Ok(())
    }
}

/// Attempts [`rewrite`] makes off the lock before it finishes under the lock (each one that
/// fails found a new generation, or checkpoints claiming entries through [`CATCH_UP_ROUNDS`]).
const REWRITE_ATTEMPTS: usize = 2;
/// Times one attempt of [`rewrite`] copies and syncs the entries pushed since its last look
/// before it gives up (aborts arriving faster than it syncs).
const CATCH_UP_ROUNDS: usize = 8;

/// Copies every entry `keep` accepts into a new file that replaces the index's (retention's
/// floor, compaction's dropped markers), without holding the index's lock across the new
/// file's writes and syncs: an abort marker's push (under the store-wide append lock) never
/// waits for the disk. Under the lock: a snapshot of the entry count (and the resident tail),
/// then, once the new file holds every entry pushed meanwhile and is synced — or holds synced
/// every entry a checkpoint relies on (`claimed`) while the rest are resident: those are then
/// written after them unsynced and the index stays dirty, as they were in the old file — the
/// rename and the new state (a rename; the finish path's unsynced writes of the entries since). The directory sync follows off the lock; until
/// it is done the index owes it (`created`), so a checkpoint's persist does it before trusting
/// entries appended to the new file. One rewrite of an index at a time (`rewrite_gate`).
///
/// Crash-safe at every step: before the rename the old file is whole (and `.tmp` is ignored);
/// after it, either name's file holds every entry the checkpoints relied on, synced, and an
/// owed-rewrite record (compaction) is removed by the caller only once this returns, after the
/// directory sync.
pub(crate) fn rewrite(index: &Mutex<TxnIndex>, keep: impl Fn(&AbortedTxn) -> bool) -> Result<()> {
    let gate = Arc::clone(&index.lock().rewrite_gate);
    let _one_rewrite = gate.lock();
    for _ in 0..REWRITE_ATTEMPTS {
        if let Some(dir) = rewrite_off_lock(index, &keep)? {
            if let Some(dir) = dir {
                let fs = index.lock().fs();
                fs.sync_dir(&dir).map_err(io_err(&dir))?;
            }
            return Ok(());
        }
    }
    // Aborts kept arriving faster than the new file synced: finish under the lock.
    index.lock().rewrite(keep)
}

/// One attempt of [`rewrite`]: `None` when the index was replaced meanwhile or aborts kept
/// arriving; else the directory whose sync is owed.
fn rewrite_off_lock(
    index: &Mutex<TxnIndex>,
    keep: &impl Fn(&AbortedTxn) -> bool,
) -> Result<Option<Option<PathBuf>>> {
    let (fs, path, generation, mut copied) = {
        let idx = index.lock();
        (idx.fs(), idx.path.clone(), idx.generation, 0u64)
    };
    let mut w = Rewriter::new(Arc::clone(&fs), &path)?;
    let mut file: Option<Box<dyn StorageFile>> = None;
    for _ in 0..CATCH_UP_ROUNDS {
        // Entries `[copied, total)` are new to `w`: those resident are copied under the lock,
        // those only in the file (written out and trimmed meanwhile) read after it.
        let (resident, from_file) = {
            let mut idx = index.lock();
            if idx.generation != generation {
                return Ok(None);
            }
            let total = idx.in_file + idx.unwritten as u64;
            if total == copied {
                // `w` holds every entry and is synced: install it.
                let synced = w.count;
                w.swap_in(&mut idx, synced)?;
                return Ok(Some(path.parent().map(Path::to_path_buf)));
            }
            let first_resident = total - idx.tail.len() as u64;
            if copied >= idx.claimed {
                // Every entry a checkpoint relies on is synced in `w`; the ones pushed since
                // are relied on by nobody yet, like unsynced entries of the old file: written
                // (no sync) and installed now, the index left dirty for the next checkpoint's
                // persist to sync them. Those written out and trimmed from memory meanwhile
                // are read back from the old file (just written: the page cache). So aborts
                // arriving faster than a sync still let the rewrite finish, and no sync runs
                // under the lock; page-cache reads and writes of the entries since do.
                let synced = w.count;
                if first_resident > copied {
                    if file.is_none() {
                        file = Some(
                            fs.open_file(&path, OpenMode::Existing)
                                .map_err(io_err(&path))?,
                        );
                    }
                    let f = file.as_deref().expect("opened above");
                    visit_file(f, &path, copied..first_resident, |e| {
                        if keep(e) { w.push(e) } else { Ok(()) }
                    })?;
                }
                let skip = copied.saturating_sub(first_resident) as usize;
                for e in idx.tail.iter().skip(skip) {
                    if keep(e) {
                        w.push(e)?;
                    }
                }
                w.flush()?;
                w.swap_in(&mut idx, synced)?;
                return Ok(Some(path.parent().map(Path::to_path_buf)));
            }
            let skip = copied.saturating_sub(first_resident) as usize;
            let resident: Vec<AbortedTxn> = idx.tail.iter().skip(skip).copied().collect();
            let from_file = copied..first_resident.max(copied);
            copied = total;
            (resident, from_file)
        };
        if !from_file.is_empty() {
            if file.is_none() {
                let f = fs
                    .open_file(&path, OpenMode::Existing)
                    .map_err(io_err(&path))?;
                // Opened after the check above: replaced since, it is not the one counted.
                if index.lock().generation != generation {
                    return Ok(None);
                }
                file = Some(f);
            }
            let f = file.as_deref().expect("opened above");
            visit_file(f, &path, from_file, |e| {
                if keep(e) { w.push(e) } else { Ok(()) }
            })?;
        }
        for e in resident.iter().filter(|e| keep(e)) {
            w.push(e)?;
        }
        w.sync()?;
    }
    Ok(None)
}

/// Calls `visit` on the entries of `range` (entry numbers) of the index file `f`, read in
/// chunks (never all in memory).
fn visit_file(
    f: &dyn StorageFile,
    path: &Path,
    range: std::ops::Range<u64>,
    mut visit: impl FnMut(&AbortedTxn) -> Result<()>,
) -> Result<()> {
    let mut at = range.start;
    while at < range.end {
        let k = (range.end - at).min(CHUNK_ENTRIES as u64) as usize;
        for e in read_entries(f, path, at, k)? {
            visit(&e)?;
        }
        at += k as u64;
    }
    Ok(())
}

impl TxnIndex {
    /// An empty index for a new partition (no file yet).
    pub(crate) fn empty(fs: Arc<dyn FileSystem>, cq_dir: &Path) -> TxnIndex {
        TxnIndex {
            fs,
            path: cq_dir.join(TXN_INDEX_FILE),
            in_file: 0,
            tail: VecDeque::new(),
            unwritten: 0,
            exists: false,
            dirty: false,
            created: false,
            floor: 0,
            floor_applied: 0,
            generation: 0,
            claimed: 0,
            write_asked: false,
            rewrite_gate: Arc::new(Mutex::new(())),
        }
    }

    /// At recovery: the index of the partition whose consume queue is in `cq_dir`, keeping the
    /// file's entries of markers below `keep_below` (the replay re-derives the rest; the file
    /// is cut back to them). Every entry is checked (read in chunks, never all in memory); a
    /// file that does not check out is reported unsound, to be rebuilt.
    pub(crate) fn open(fs: Arc<dyn FileSystem>, cq_dir: &Path, keep_below: u64) -> Result<Opened> {
        let mut index = TxnIndex::empty(fs, cq_dir);
        let path = index.path.clone();
        let file = match index.fs.open_file(&path, OpenMode::Existing) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Opened { index, sound: true });
            }
            Err(e) => return Err(Error::io(&path, e)),
            Ok(f) => f,
        };
        index.exists = true;
        let len = file.len().map_err(io_err(&path))?;
        let mut header = [0u8; HEADER_LEN as usize];
        let sound_shape = len >= HEADER_LEN
            && (len - HEADER_LEN).is_multiple_of(ENTRY_LEN as u64)
            && io::read_exact_at(file.as_ref(), &mut header, 0).is_ok()
            && &header == HEADER;
        if !sound_shape {
            // Rebuilt whole; nothing is appended to it meanwhile.
            index.exists = false;
            return Ok(Opened {
                index,
                sound: false,
            });
        }
        let n = (len - HEADER_LEN) / ENTRY_LEN as u64;
        let mut at = 0u64;
        let mut kept = 0u64;
        let mut last: Option<u64> = None;
        while at < n {
            let k = (n - at).min(CHUNK_ENTRIES as u64) as usize;
            let Ok(chunk) = read_entries(file.as_ref(), &path, at, k) else {
                index.exists = false;
                index.tail.clear();
                return Ok(Opened {
                    index,
                    sound: false,
                });
            };
            for e in chunk {
                if last.is_some_and(|l| l >= e.last_offset) {
                    index.exists = false;
                    index.tail.clear();
                    return Ok(Opened {
                        index,
                        sound: false,
                    });
                }
                last = Some(e.last_offset);
                if e.last_offset < keep_below {
                    kept += 1;
                    index.tail.push_back(e);
                    if index.tail.len() > RESIDENT_ENTRIES {
                        index.tail.pop_front();
                    }
                }
            }
            at += k as u64;
        }
        if kept < n {
            // Entries of markers the replay re-derives: cut, so appends continue after the
            // kept ones.
            file.set_len(HEADER_LEN + kept * ENTRY_LEN as u64)
                .map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
        }
        index.in_file = kept;
        index.claimed = kept;
        Ok(Opened { index, sound: true })
    }

    /// Entries held in memory.
    pub(crate) fn resident(&self) -> usize {
        self.tail.len()
    }

    /// The last entry's marker offset.
    pub(crate) fn last_marker(&self) -> Option<u64> {
        self.tail.back().map(|e| e.last_offset)
    }

    /// The resident entries (the most recent ones).
    pub(crate) fn resident_entries(&self) -> impl Iterator<Item = &AbortedTxn> {
        self.tail.iter()
    }

    /// Whether every entry is resident (none only in the file).
    pub(crate) fn all_resident(&self) -> bool {
        (self.tail.len() - self.unwritten) as u64 == self.in_file
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn fs(&self) -> Arc<dyn FileSystem> {
        Arc::clone(&self.fs)
    }

    /// Adds the entry of an abort marker. No I/O: the caller holds the store's append lock.
    /// Returns whether the unwritten entries reached [`RESIDENT_ENTRIES`] and no write is asked
    /// for yet: the caller then runs
    /// [`write_out`] once it holds no lock (on a background thread), or the next checkpoint
    /// writes them. Should that fall behind until [`MAX_UNWRITTEN`] pile up, they are written
    /// here after all (unsynced), so memory stays bounded; a write that fails keeps them in
    /// memory for the checkpoint, which reports the error.
    pub(crate) fn push(&mut self, e: AbortedTxn) -> bool {
        debug_assert!(
            self.tail
                .back()
                .is_none_or(|l| l.last_offset < e.last_offset)
        );
        self.tail.push_back(e);
        self.unwritten += 1;
        if self.unwritten >= MAX_UNWRITTEN {
            let _ = self.write_unwritten();
        }
        self.trim();
        self.unwritten >= RESIDENT_ENTRIES && !std::mem::replace(&mut self.write_asked, true)
    }

    fn trim(&mut self) {
        while self.tail.len() > RESIDENT_ENTRIES.max(self.unwritten) {
            self.tail.pop_front();
        }
    }

    /// Writes the unwritten entries after the file's (no sync).
    fn write_unwritten(&mut self) -> Result<()> {
        if self.unwritten == 0 {
            return Ok(());
        }
        let path = self.path.clone();
        let file = if self.exists {
            self.fs
                .open_file(&path, OpenMode::Existing)
                .map_err(io_err(&path))?
        } else {
            // A leftover of a failed first write: nothing refers to it.
            io::remove_if_exists(self.fs.as_ref(), &path).map_err(io_err(&path))?;
            let f = self
                .fs
                .open_file(&path, OpenMode::CreateNew)
                .map_err(io_err(&path))?;
            f.write_all_at(HEADER, 0).map_err(io_err(&path))?;
            self.exists = true;
            self.created = true;
            f
        };
        let bytes: Vec<u8> = self
            .tail
            .iter()
            .skip(self.tail.len() - self.unwritten)
            .flat_map(|e| e.encode())
            .collect();
        file.write_all_at(&bytes, HEADER_LEN + self.in_file * ENTRY_LEN as u64)
            .map_err(io_err(&path))?;
        self.in_file += self.unwritten as u64;
        self.unwritten = 0;
        self.dirty = true;
        Ok(())
    }

    /// Notes that entries of markers below `start` are dead (the next persist rewrites the
    /// file without them).
    pub(crate) fn drop_below(&mut self, start: u64) {
        self.floor = self.floor.max(start);
    }

    /// Copies every entry `keep` accepts into a new file that replaces this one, every step
    /// under the caller's lock: the last resort of [`rewrite`] (the free function).
    fn rewrite(&mut self, keep: impl Fn(&AbortedTxn) -> bool) -> Result<()> {
        let mut w = Rewriter::new(Arc::clone(&self.fs), &self.path)?;
        self.for_each(|e| if keep(e) { w.push(e) } else { Ok(()) })?;
        w.install(self)
    }

    /// Every entry in order, the file's read in chunks.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&AbortedTxn) -> Result<()>) -> Result<()> {
        let resident_written = (self.tail.len() - self.unwritten) as u64;
        let only_file = self.in_file - resident_written;
        if only_file > 0 {
            let file = self
                .fs
                .open_file(&self.path, OpenMode::Existing)
                .map_err(io_err(&self.path))?;
            visit_file(file.as_ref(), &self.path, 0..only_file, &mut f)?;
        }
        for e in &self.tail {
            f(e)?;
        }
        Ok(())
    }

    /// Whether an entry's marker is at `offset` (a binary search of the file when it is not
    /// resident).
    pub(crate) fn contains(&self, offset: u64) -> Result<bool> {
        if self.tail.iter().any(|e| e.last_offset == offset) {
            return Ok(true);
        }
        let only_file = self.in_file - (self.tail.len() - self.unwritten) as u64;
        if only_file == 0 || !self.exists {
            return Ok(false);
        }
        let file = self
            .fs
            .open_file(&self.path, OpenMode::Existing)
            .map_err(io_err(&self.path))?;
        let i = search(file.as_ref(), &self.path, only_file, offset)?;
        Ok(
            i < only_file
                && read_entries(file.as_ref(), &self.path, i, 1)?[0].last_offset == offset,
        )
    }

    /// What the index must still do for the file to hold every entry durably, taken under the
    /// lock once [`pending`] rewrote the file if it had to: the entries are written (no sync)
    /// here; [`persist`] syncs without the lock.
    ///
    /// The file to sync is opened here, under the lock, and synced through that handle: a
    /// rewrite off the lock may rename its new file over the path before [`persist`] runs, and
    /// the entries written here are in the file opened now (until that rename is durable the
    /// old file is the one a crash keeps, so it must be synced, not the new one by path).
    fn pending_writes(&mut self) -> Result<Pending> {
        self.write_unwritten()?;
        // The persist of this checkpoint makes every entry in the file durable, and the
        // checkpoint relies on them from then on.
        self.claimed = self.in_file;
        let file = if self.dirty {
            Some(
                self.fs
                    .open_file(&self.path, OpenMode::Existing)
                    .map_err(io_err(&self.path))?,
            )
        } else {
            None
        };
        let out = Pending {
            path: self.path.clone(),
            file,
            sync_dir: self.created,
        };
        self.dirty = false;
        self.created = false;
        Ok(out)
    }

    /// A persist failed: sync again next time.
    pub(crate) fn unsynced(&mut self, p: &Pending) {
        self.dirty |= p.file.is_some();
        self.created |= p.sync_dir;
    }
}

/// A sync an index file owes (see [`pending`]): the file written (open: see
/// `TxnIndex::pending_writes`) and whether its directory's sync is owed. Held by one
/// checkpoint for one partition at a time, so at most one descriptor.
pub(crate) struct Pending {
    path: PathBuf,
    file: Option<Box<dyn StorageFile>>,
    sync_dir: bool,
}

/// What `index` must still do for its file to hold every entry durably (a checkpoint's, before
/// it moves the replay point): the file rewritten without the entries retention left dead
/// (off the lock, see [`rewrite`]), then the unwritten entries written under the lock;
/// [`persist`] syncs without it.
pub(crate) fn pending(index: &Mutex<TxnIndex>) -> Result<Pending> {
    let due = {
        let mut idx = index.lock();
        let floor = idx.floor;
        if floor <= idx.floor_applied {
            None
        } else if idx.tail.front().is_some_and(|e| e.last_offset < floor) || !idx.all_resident() {
            Some(floor)
        } else {
            // Nothing below it is left: no file to rewrite.
            idx.floor_applied = floor;
            None
        }
    };
    if let Some(floor) = due {
        rewrite(index, |e| e.last_offset >= floor)?;
        let mut idx = index.lock();
        idx.floor_applied = idx.floor_applied.max(floor);
    }
    index.lock().pending_writes()
}

/// Writes the unwritten entries of `index` after the file's, without holding its lock
/// across the write: an appender pushing an entry, or a reader collecting, never waits for it.
/// The entries and the file handle are taken under the lock; the file's entry count moves on
/// only if nobody wrote or replaced the file meanwhile (a checkpoint's [`pending`]
/// writing the same entries at the same place, or a rewrite, which includes them: then these
/// bytes, identical or in the replaced file, change nothing). No sync: the next checkpoint's.
/// The file's creation (once per partition: its header and the entries unwritten then) still
/// happens under the lock.
pub(crate) fn write_out(index: &Mutex<TxnIndex>) -> Result<()> {
    let (file, path, bytes, at, n, generation) = {
        let mut idx = index.lock();
        // Started: a push from now on may ask again.
        idx.write_asked = false;
        if idx.unwritten == 0 {
            return Ok(());
        }
        if !idx.exists {
            return idx.write_unwritten();
        }
        let path = idx.path.clone();
        let file = idx
            .fs
            .open_file(&path, OpenMode::Existing)
            .map_err(io_err(&path))?;
        let bytes: Vec<u8> = idx
            .tail
            .iter()
            .skip(idx.tail.len() - idx.unwritten)
            .flat_map(|e| e.encode())
            .collect();
        (
            file,
            path,
            bytes,
            idx.in_file,
            idx.unwritten,
            idx.generation,
        )
    };
    file.write_all_at(&bytes, HEADER_LEN + at * ENTRY_LEN as u64)
        .map_err(io_err(&path))?;
    let mut idx = index.lock();
    if idx.generation == generation && idx.in_file == at && idx.unwritten >= n {
        idx.in_file += n as u64;
        idx.unwritten -= n;
        idx.dirty = true;
        idx.trim();
    }
    Ok(())
}

/// Syncs what `pending` names (no lock held).
pub(crate) fn persist(fs: &dyn FileSystem, pending: &Pending) -> Result<()> {
    let path = &pending.path;
    if let Some(file) = &pending.file {
        file.sync_data().map_err(io_err(path))?;
    }
    if pending.sync_dir
        && let Some(dir) = path.parent()
    {
        fs.sync_dir(dir).map_err(io_err(dir))?;
    }
    Ok(())
}

/// The aborted transactions overlapping `[from, bound)` (Kafka's `collectAbortedTxns`): from
/// the first whose marker is at or past `from`, stopping after the first whose LSO reaches
/// `bound` (every transaction aborted after it starts at or past its LSO), or after `cap`
/// entries. Returns them and the bound they decide (`bound`, or lower when `cap` stopped the
/// collection). The lock is held only to copy the resident tail; the file is read without it.
pub(crate) fn collect(
    index: &Mutex<TxnIndex>,
    from: u64,
    bound: u64,
    cap: usize,
) -> Result<(Aborted, u64)> {
    for _ in 0..16 {
        let mut c = Collector {
            from,
            bound,
            cap,
            taken: 0,
            out: Aborted::default(),
            done: false,
        };
        let (tail, only_file, generation, fs, path) = {
            let idx = index.lock();
            let only_file = idx.in_file - (idx.tail.len() - idx.unwritten) as u64;
            if only_file == 0 || idx.tail.front().is_some_and(|e| e.last_offset < from) {
                // The resident tail reaches back to `from`: no file read.
                for e in &idx.tail {
                    c.take(e);
                }
                return Ok((c.out, c.bound));
            }
            (
                idx.tail.iter().copied().collect::<Vec<_>>(),
                only_file,
                idx.generation,
                Arc::clone(&idx.fs),
                idx.path.clone(),
            )
        };
        let file = fs
            .open_file(&path, OpenMode::Existing)
            .map_err(io_err(&path))?;
        if index.lock().generation != generation {
            continue; // Replaced meanwhile: start over on the new file.
        }
        let mut at = search(file.as_ref(), &path, only_file, from)?;
        while at < only_file && !c.done {
            let k = (only_file - at).min(CHUNK_ENTRIES as u64) as usize;
            for e in read_entries(file.as_ref(), &path, at, k)? {
                c.take(&e);
            }
            at += k as u64;
        }
        for e in &tail {
            c.take(e);
        }
        return Ok((c.out, c.bound));
    }
    Err(Error::InvalidArgument(
        "aborted-transaction index replaced during every attempt to read it".into(),
    ))
}

/// Counts, per thread, the rewrites that synced their new file under the index's lock (the
/// last resort of [`rewrite`], and recovery's install).
#[cfg(test)]
mod probe {
    use std::cell::Cell;

    thread_local! {
        pub(super) static SYNCED_UNDER_LOCK: Cell<u64> = const { Cell::new(0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The marker offsets of every entry of `idx`, in order.
    fn marker_offsets(idx: &Mutex<TxnIndex>) -> Vec<u64> {
        let mut all = Vec::new();
        idx.lock()
            .for_each(|e| {
                all.push(e.last_offset);
                Ok(())
            })
            .unwrap();
        all
    }

    fn t(id: i64, first: u64, last: u64, lso: u64) -> AbortedTxn {
        AbortedTxn {
            producer_id: id,
            first_offset: first,
            last_offset: last,
            last_stable_offset: lso,
        }
    }

    fn index(dir: &Path) -> Mutex<TxnIndex> {
        Mutex::new(TxnIndex::empty(Arc::new(io::RealFs), dir))
    }

    #[test]
    fn a_push_never_writes_the_file_and_write_out_writes_without_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let idx = index(dir.path());
        let path = idx.lock().path().to_owned();
        // The first write creates the file (under the lock, once).
        for k in 0..RESIDENT_ENTRIES as u64 - 1 {
            assert!(!idx.lock().push(t(7, k * 2, k * 2 + 1, k * 2 + 2)));
        }
        write_out(&idx).unwrap();
        assert!(path.exists());
        let len = std::fs::metadata(&path).unwrap().len();
        // A push under the append lock does no I/O, however many entries are unwritten: it
        // only says a write is due.
        let base = RESIDENT_ENTRIES as u64 - 1;
        let mut asked = 0;
        for k in base..base + RESIDENT_ENTRIES as u64 + 10 {
            asked += usize::from(idx.lock().push(t(7, k * 2, k * 2 + 1, k * 2 + 2)));
        }
        // Once until the write starts: one job queued, not one per abort past the mark.
        assert_eq!(asked, 1);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len,
            "a push wrote the file"
        );
        // What the appender hands to a background thread once it holds no lock.
        write_out(&idx).unwrap();
        let n = 2 * RESIDENT_ENTRIES as u64 + 9;
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEADER_LEN + n * ENTRY_LEN as u64
        );
        let mut seen = 0;
        idx.lock()
            .for_each(|e| {
                assert_eq!(e.last_offset, seen * 2 + 1);
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, n);
        assert!(idx.lock().resident() <= RESIDENT_ENTRIES);
    }

    #[test]
    fn entries_are_kafkas_34_bytes_and_a_checksum_and_damage_is_refused() {
        let e = t(7, 10, 15, 16);
        let b = e.encode();
        assert_eq!(b.len(), 38);
        assert_eq!(AbortedTxn::decode(&b), Some(e));
        let mut bad = b;
        bad[12] ^= 1;
        assert_eq!(AbortedTxn::decode(&bad), None, "checksum");
        let mut bytes: Vec<u8> = HEADER.to_vec();
        bytes.extend(
            [t(1, 0, 3, 4), t(2, 1, 5, 6)]
                .iter()
                .flat_map(|e| e.encode()),
        );
        assert_eq!(decode_all(&bytes).map(|v| v.len()), Some(2));
        assert_eq!(decode_all(&bytes[..60]), None, "torn entry");
        assert_eq!(decode_all(&bytes[8..]), None, "no header");
        let mut swapped: Vec<u8> = HEADER.to_vec();
        swapped.extend(
            [t(2, 1, 5, 6), t(1, 0, 3, 4)]
                .iter()
                .flat_map(|e| e.encode()),
        );
        assert_eq!(decode_all(&swapped), None, "out of order");
    }

    /// `covers` finds the range holding an offset among one producer's many aborts (a
    /// binary search), and nothing between or outside them.
    #[test]
    fn covers_finds_an_offset_among_many_aborts_of_one_producer() {
        let dir = tempfile::tempdir().unwrap();
        let idx = index(dir.path());
        for k in 0..3000u64 {
            if idx.lock().push(t(7, k * 10, k * 10 + 3, k * 10 + 4)) {
                write_out(&idx).unwrap();
            }
        }
        idx.lock().push(t(8, 40_000, 40_001, 40_002));
        assert!(idx.lock().resident() <= RESIDENT_ENTRIES);
        let (a, _) = collect(&idx, 0, 100_000, usize::MAX).unwrap();
        assert!(a.covers(7, 0) && a.covers(7, 3) && a.covers(7, 503) && a.covers(7, 990));
        assert!(!a.covers(7, 4) && !a.covers(7, 509) && !a.covers(7, 994));
        assert!(!a.covers(7, 40_000) && a.covers(8, 40_000) && !a.covers(8, 39_999));
        assert!(!a.covers(9, 0));
        // From the middle of the file: a binary search, then forward.
        let (a, _) = collect(&idx, 15_000, 100_000, usize::MAX).unwrap();
        assert!(a.covers(7, 15_001) && !a.covers(7, 14_991));
    }

    #[test]
    fn collect_stops_at_the_first_entry_whose_lso_reaches_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let idx = index(dir.path());
        // p1 aborts [0, 2] while p2 is open from 1: LSO 1. p2 aborts [1, 4].
        idx.lock().push(t(1, 0, 2, 1));
        idx.lock().push(t(2, 1, 4, 5));
        idx.lock().push(t(1, 6, 8, 9));
        let (a, b) = collect(&idx, 0, 3, usize::MAX).unwrap();
        assert_eq!(b, 3);
        assert!(a.covers(1, 0) && a.covers(2, 3));
        assert!(
            !a.covers(1, 6),
            "stopped at the entry whose LSO passed the bound"
        );
        let (a, _) = collect(&idx, 5, 100, usize::MAX).unwrap();
        assert!(!a.covers(1, 0) && a.covers(1, 7));
    }

    /// A capped collection lowers the bound to the LSO of its last entry: everything below
    /// it is decided by what was collected.
    #[test]
    fn a_capped_collection_lowers_the_bound_to_what_it_decides() {
        let dir = tempfile::tempdir().unwrap();
        let idx = index(dir.path());
        for k in 0..5000u64 {
            if idx.lock().push(t(7, k * 2, k * 2 + 1, k * 2 + 2)) {
                write_out(&idx).unwrap();
            }
        }
        let (a, b) = collect(&idx, 0, 10_000, 100).unwrap();
        assert_eq!(b, 200);
        assert!(a.covers(7, 198) && !a.covers(7, 200));
    }

    /// Entries past the resident bound are in the file; `pending` writes the rest, a reopen
    /// reads them back, and one below the replay point's cut is dropped from the file.
    #[test]
    fn the_file_holds_every_entry_and_a_reopen_keeps_those_below_the_replay_point() {
        let dir = tempfile::tempdir().unwrap();
        let idx = index(dir.path());
        for k in 0..2500u64 {
            if idx.lock().push(t(7, k * 2, k * 2 + 1, k * 2 + 2)) {
                write_out(&idx).unwrap();
            }
        }
        let p = pending(&idx).unwrap();
        persist(&io::RealFs, &p).unwrap();
        let bytes = std::fs::read(dir.path().join(TXN_INDEX_FILE)).unwrap();
        assert_eq!(decode_all(&bytes).unwrap().len(), 2500);
        let o = TxnIndex::open(Arc::new(io::RealFs), dir.path(), 3001).unwrap();
        assert!(o.sound);
        assert_eq!(o.index.in_file, 1500);
        assert_eq!(o.index.last_marker(), Some(2999));
        assert!(o.index.contains(1).unwrap() && !o.index.contains(2).unwrap());
        let bytes = std::fs::read(dir.path().join(TXN_INDEX_FILE)).unwrap();
        assert_eq!(decode_all(&bytes).unwrap().len(), 1500);
    }

    /// A rewrite off the lock keeps every entry pushed while it ran, resident or already
    /// written out and trimmed (a push never waits for it), and drops only what `keep` refuses.
    #[test]
    fn a_rewrite_keeps_the_entries_pushed_while_it_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Arc::new(index(dir.path()));
        for k in 0..3000u64 {
            if idx.lock().push(t(7, k * 2, k * 2 + 1, k * 2 + 2)) {
                write_out(&idx).unwrap();
            }
        }
        let pusher = {
            let idx = Arc::clone(&idx);
            std::thread::spawn(move || {
                for k in 3000..9000u64 {
                    if idx.lock().push(t(7, k * 2, k * 2 + 1, k * 2 + 2)) {
                        write_out(&idx).unwrap();
                    }
                }
            })
        };
        for floor in [1001u64, 2001, 4001] {
            idx.lock().drop_below(floor);
            let p = pending(&idx).unwrap();
            persist(&io::RealFs, &p).unwrap();
        }
        pusher.join().unwrap();
        let p = pending(&idx).unwrap();
        persist(&io::RealFs, &p).unwrap();
        let mut seen = Vec::new();
        idx.lock()
            .for_each(|e| {
                seen.push(e.last_offset);
                Ok(())
            })
            .unwrap();
        let first = seen[0];
        assert!(first >= 4001, "a dead entry survived: {first}");
        let want: Vec<u64> = (first / 2..9000).map(|k| k * 2 + 1).collect();
        assert_eq!(seen, want, "an entry pushed during a rewrite was lost");
        let bytes = std::fs::read(dir.path().join(TXN_INDEX_FILE)).unwrap();
        assert_eq!(decode_all(&bytes).unwrap().len(), want.len());
    }

    /// A checkpoint's `pending` writes an abort entry into the index file under the lock and
    /// syncs it by path off the lock. A rewrite off the lock that renames its new file over the
    /// index in between leaves the checkpoint syncing the NEW file (already synced) while the
    /// bytes it wrote sit unsynced in the OLD inode, and the rename is durable only after the
    /// rewrite's own directory sync. A power cut after the checkpoint (which trusts the entry)
    /// and before that directory sync keeps the old file without the entry. docs/format.md and
    /// `rewrite`'s docs claim "after [the rename] either name's file holds every entry the
    /// checkpoints relied on, synced". In the store today the one concurrent rewrite is
    /// compaction's, whose owed-rewrite file makes the next open rebuild the index from the
    /// log, which masks the loss; any other caller of `rewrite` would lose the entry.
    #[test]
    fn an_entry_a_checkpoint_synced_survives_a_crash_before_a_concurrent_rewrites_dir_sync() {
        use crate::io::{CrashMode, SimFs, create_dir_durable};
        let sim = SimFs::new();
        let dir = Path::new("/d");
        create_dir_durable(&sim, dir).unwrap();
        let idx = Mutex::new(TxnIndex::empty(Arc::new(sim.clone()), dir));
        let path = idx.lock().path().to_owned();
        for k in 0..3u64 {
            idx.lock().push(t(7, k * 2, k * 2 + 1, k * 2 + 2));
        }
        // A first checkpoint: three entries durable, the file's entry too.
        let p = pending(&idx).unwrap();
        persist(&sim, &p).unwrap();
        // An abort arrives; the next checkpoint writes it under the lock...
        idx.lock().push(t(7, 6, 7, 8));
        let p = idx.lock().pending_writes().unwrap();
        // ...a compaction's rewrite off the lock renames its (synced) file over the index...
        let owed_dir = rewrite_off_lock(&idx, &|_: &AbortedTxn| true).unwrap();
        assert!(owed_dir.is_some(), "the rewrite did not install");
        // ...and the checkpoint syncs what it wrote, then would record the entry as durable.
        persist(&sim, &p).unwrap();
        // Power cut before the rewrite's directory sync.
        let disk = sim.crash(CrashMode::DropUnsynced, 1);
        let bytes = disk.read_file(&path).unwrap();
        let got = decode_all(&bytes).unwrap();
        assert_eq!(
            got.len(),
            4,
            "the entry the checkpoint synced is gone after the crash: {got:?}"
        );
    }

    /// ARCHITECTURE.md: a rewrite "takes the lock only to count them and to rename, so an abort
    /// marker (pushed under the store-wide append lock) never waits for a disk sync". When aborts
    /// keep arriving while it copies (here: one per entry it copies, from `keep`, which runs off
    /// the lock), `rewrite` gives up after 2 x 8 rounds and rewrites, syncs the file and the
    /// directory under the index's lock: every abort push, and so every append of the store
    /// (the push is under the append lock), then waits for those syncs.
    #[test]
    fn a_rewrite_under_a_steady_stream_of_aborts_never_syncs_under_the_index_lock() {
        use std::cell::Cell;
        let dir = tempfile::tempdir().unwrap();
        let idx = index(dir.path());
        for k in 0..10u64 {
            idx.lock().push(t(7, k * 2, k * 2 + 1, k * 2 + 2));
        }
        // A checkpoint relies on the ten: the rewrite must sync them in its new file first.
        let p = pending(&idx).unwrap();
        persist(idx.lock().fs.as_ref(), &p).unwrap();
        let next = Cell::new(10u64);
        let under_lock = Cell::new(0u32);
        let synced_before = probe::SYNCED_UNDER_LOCK.with(Cell::get);
        rewrite(&idx, |_| {
            match idx.try_lock() {
                // An abort arrives (the append lock's holder pushes it) while the rewrite copies.
                Some(mut g) => {
                    let k = next.get();
                    next.set(k + 1);
                    g.push(t(7, k * 2, k * 2 + 1, k * 2 + 2));
                }
                // Only the rewrite itself can hold the lock here: it is copying under it.
                None => under_lock.set(under_lock.get() + 1),
            }
            true
        })
        .unwrap();
        assert_eq!(
            probe::SYNCED_UNDER_LOCK.with(Cell::get) - synced_before,
            0,
            "the rewrite synced under the index's lock after {} aborts arrived ({} copied under \
             it, unsynced)",
            next.get() - 10,
            under_lock.get()
        );
        // Every entry is there, the ones pushed during the rewrite included, in order.
        let all = marker_offsets(&idx);
        let want: Vec<u64> = (0..next.get()).map(|k| k * 2 + 1).collect();
        assert!(next.get() > 10, "no abort arrived during the rewrite");
        assert_eq!(all, want);
    }

    /// Review C. ARCHITECTURE.md ("Only checkpoints claiming entries through every round leave
    /// it that last resort") and docs/format.md (a rewrite "holds the index's lock only to count
    /// the entries and to rename"): with NO checkpoint claiming anything, aborts arriving at more
    /// than `RESIDENT_ENTRIES` per round (written out by `write_out`, as the allocation thread
    /// does, so they leave the resident tail) never let the finish path run (`first_resident <=
    /// copied` fails every round), and `rewrite` falls back to syncing the file and the
    /// directory under the index's lock, which every abort push (under the append lock) waits on.
    #[test]
    fn review_c_a_rewrite_under_fast_written_out_aborts_never_syncs_under_the_lock() {
        use std::cell::Cell;
        let dir = tempfile::tempdir().unwrap();
        let idx = index(dir.path());
        let n0 = 2000u64;
        for k in 0..n0 {
            if idx.lock().push(t(7, k * 2, k * 2 + 1, k * 2 + 2)) {
                write_out(&idx).unwrap();
            }
        }
        write_out(&idx).unwrap();
        assert_eq!(idx.lock().claimed, 0, "no checkpoint claims anything here");
        let next = Cell::new(n0);
        let synced_before = probe::SYNCED_UNDER_LOCK.with(Cell::get);
        rewrite(&idx, |_| {
            // One abort per entry copied (off the lock); written out when the push asks, as
            // the allocation thread does. Under the lock (the fallback) nothing arrives.
            let asked = match idx.try_lock() {
                Some(mut g) => {
                    let k = next.get();
                    next.set(k + 1);
                    g.push(t(7, k * 2, k * 2 + 1, k * 2 + 2))
                }
                None => false,
            };
            if asked {
                write_out(&idx).unwrap();
            }
            true
        })
        .unwrap();
        assert_eq!(
            probe::SYNCED_UNDER_LOCK.with(Cell::get) - synced_before,
            0,
            "the rewrite synced under the index's lock ({} aborts arrived, no checkpoint claimed)",
            next.get() - n0
        );
        // Every entry is there once, in order: those read back from the old file included.
        let all = marker_offsets(&idx);
        let want: Vec<u64> = (0..next.get()).map(|k| k * 2 + 1).collect();
        assert_eq!(all, want);
    }
}
