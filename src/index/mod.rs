//! The key index shared by both engines: "which records of topic T carry key K, stored between
//! times a and b?" (RocketMQ's IndexFile). This module owns `index/` under the store directory:
//! hash index files named by creation time, and `index/checkpoint`, the offset per partition below
//! which every record is indexed durably. It knows nothing of log formats: engines feed it
//! (topic, partition, offset, store time, keys) and answer its lookups by reading the records.
//!
//! Indexed per message: its key, each space-separated key of its `KEYS` property, and its unique
//! id (`UNIQ_KEY`). Lookups walk hash chains newest file first, only files whose time range
//! overlaps the query; hash collisions and stale entries are filtered by the engine, which checks
//! every candidate against the record it names.

mod index_file;
pub(crate) mod offset_map;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

pub use index_file::{key_hash, pack, unpack};

use self::index_file::IndexFile;
use crate::error::{Error, Result};
use crate::io::{self, FileSystem};
use crate::options::IndexOptions;
use crate::store::{Message, Record};

const DIR: &str = "index";
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_MAGIC: &[u8; 4] = b"DLIX";
/// Checkpoint entries naming an index file (with its entry count) instead of a partition start
/// with a character no topic name may hold.
const FILE_COUNT_PREFIX: &str = "\u{0}file:";

/// Entry counts of the index files at the last checkpoint, by file name (empty when the
/// checkpoint is missing, damaged, or from before counts were kept).
fn load_file_counts(fs: &dyn FileSystem, dir: &Path) -> HashMap<String, u32> {
    crate::offsets_file::load(fs, &dir.join(CHECKPOINT), CHECKPOINT_MAGIC)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(t, _, count)| {
            let name = t.strip_prefix(FILE_COUNT_PREFIX)?;
            Some((name.to_owned(), u32::try_from(count).ok()?))
        })
        .collect()
}

/// Whether a message may have keys to index: false for a message with no key and no `KEYS` or
/// `UNIQ_KEY` property, for which an engine skips the key index entirely (no reservation, no
/// per-message call). Two field checks for the common message without key or properties.
#[inline]
pub(crate) fn may_have_keys(m: &Message) -> bool {
    m.key.is_some()
        || (!m.properties.is_empty()
            && m.properties
                .iter()
                .any(|(k, _)| k == "KEYS" || k == "UNIQ_KEY"))
}

/// Whether any message of a batch may have keys (see [`may_have_keys`]).
#[inline]
pub(crate) fn batch_may_have_keys(messages: &[Message]) -> bool {
    messages.iter().any(may_have_keys)
}

/// How many index entries a batch needs.
pub(crate) fn batch_keys(messages: &[Message]) -> usize {
    #[cfg(test)]
    probe::count();
    messages.iter().map(|m| message_keys(m).count()).sum()
}

/// The keys a message is indexed under.
pub(crate) fn message_keys(m: &Message) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    let key = m.key.as_deref().map(key_text);
    let prop = |name: &str| {
        m.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let keys = prop("KEYS")
        .into_iter()
        .flat_map(|v| v.split(' '))
        .filter(|k| !k.is_empty())
        .map(std::borrow::Cow::Borrowed);
    let uniq = prop("UNIQ_KEY").map(std::borrow::Cow::Borrowed);
    key.into_iter().chain(keys).chain(uniq)
}

/// A key as text: itself if UTF-8, else lowercase hex (as the CommitLog engine stores it).
pub(crate) fn key_text(key: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(key) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => std::borrow::Cow::Owned(key.iter().map(|b| format!("{b:02x}")).collect()),
    }
}

/// Whether `record` carries `key` (as key, in KEYS, or as UNIQ_KEY).
pub(crate) fn record_has_key(record: &Record, key: &str) -> bool {
    record.key().is_some_and(|k| key_text(k) == key)
        || record
            .properties()
            .get("KEYS")
            .is_some_and(|v| v.split(' ').any(|k| k == key))
        || record.properties().get("UNIQ_KEY") == Some(key)
}

/// The index files of a store.
pub(crate) struct KeyIndex {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    opts: IndexOptions,
    /// Oldest first.
    files: RwLock<Vec<Arc<IndexFile>>>,
    writer: Mutex<()>,
    /// Cleared and not yet fully rebuilt (a `reindex` whose catch-up failed): no checkpoint may
    /// claim partitions indexed until a catch-up from scratch completes.
    incomplete: std::sync::atomic::AtomicBool,
}

impl KeyIndex {
    /// Opens `index/` under `store_dir`. Files that cannot be opened are derived data: they are
    /// deleted and `rebuild` is reported, so the caller indexes its whole log again.
    ///
    /// After an unclean shutdown (`clean` false) nothing written since the last checkpoint is
    /// trusted, because index files are updated in place and a power cut may keep any subset of
    /// those updates: each file is cut back to the entries the checkpoint counted and its slots,
    /// count and time bounds are rebuilt from them ([`IndexFile::restore`]); a file created
    /// after the checkpoint is deleted. The caller's catch-up from the checkpoint then indexes
    /// every record past it again. (RocketMQ deletes the index files written after its
    /// checkpoint and re-dispatches them from the log.) Without a checkpoint that counted the
    /// files, everything is rebuilt.
    pub(crate) fn open(
        fs: Arc<dyn FileSystem>,
        store_dir: &Path,
        opts: IndexOptions,
        clean: bool,
    ) -> Result<(KeyIndex, bool)> {
        let dir = store_dir.join(DIR);
        io::create_dir_durable(fs.as_ref(), &dir).map_err(|e| Error::io(&dir, e))?;
        let mut names: Vec<String> = io::list_dir_or_empty(fs.as_ref(), &dir)
            .map_err(|e| Error::io(&dir, e))?
            .into_iter()
            .filter(|e| {
                !e.is_dir && e.name.len() == 17 && e.name.bytes().all(|b| b.is_ascii_digit())
            })
            .map(|e| e.name)
            .collect();
        names.sort();
        let mut files = Vec::with_capacity(names.len());
        let counted = match clean {
            true => None,
            false => Some(load_file_counts(fs.as_ref(), &dir)),
        };
        let mut rebuild = matches!(&counted, Some(c) if c.is_empty() && !names.is_empty());
        for n in names {
            let p = dir.join(&n);
            let count = match &counted {
                None => None,
                Some(c) => match c.get(&n) {
                    Some(&count) => Some(count),
                    None => {
                        // Created after the checkpoint: everything in it is indexed again.
                        fs.remove_file(&p).map_err(|e| Error::io(&p, e))?;
                        continue;
                    }
                },
            };
            match IndexFile::open(fs.as_ref(), &p, opts.max_entries) {
                Ok(f) => {
                    if let Some(count) = count {
                        f.restore(count)?;
                    }
                    files.push(Arc::new(f));
                }
                Err(Error::Corrupted { .. }) => {
                    fs.remove_file(&p).map_err(|e| Error::io(&p, e))?;
                    rebuild = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((
            KeyIndex {
                dir,
                fs,
                opts,
                files: RwLock::new(files),
                writer: Mutex::new(()),
                incomplete: std::sync::atomic::AtomicBool::new(false),
            },
            rebuild,
        ))
    }

    /// Indexes one message stored at (partition, offset), rolling to a new file when the
    /// current one is full. For rebuilds and catch-up at open; appends go through `reserve`.
    pub(crate) fn add(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        store_timestamp: i64,
        m: &Message,
    ) -> Result<()> {
        // A reservation of no room writes each key to the current file.
        Reservation {
            index: self,
            file: None,
            left: 0,
        }
        .add(topic, partition, offset, store_timestamp, m)
    }

    /// Takes room for the next `keys` entries in one file, rolling to a new file now if the
    /// current one lacks it. Engines call it before writing a batch and index the batch through
    /// the returned reservation, so that indexing cannot fail for lack of space once the batch
    /// is in the log: the room stays promised to this batch (other partitions appending at the
    /// same time see it taken) until the reservation has used it or is dropped.
    pub(crate) fn reserve(&self, keys: usize, now: i64) -> Result<Reservation<'_>> {
        #[cfg(test)]
        probe::count();
        let mut reservation = Reservation {
            index: self,
            file: None,
            left: 0,
        };
        if keys == 0 {
            return Ok(reservation);
        }
        let Some(n) = u32::try_from(keys)
            .ok()
            .filter(|n| *n <= self.opts.max_entries)
        else {
            return Err(Error::InvalidArgument(format!(
                "a batch with {keys} keys does not fit an index file of {} entries",
                self.opts.max_entries
            )));
        };
        let _w = self.writer.lock();
        let current = self
            .files
            .read()
            .last()
            .filter(|f| f.room() >= n)
            .map(Arc::clone);
        let file = match current {
            Some(f) => f,
            None => self.roll(now)?,
        };
        // Index files grow on demand: allocate the entries' space now, not in `add`.
        file.ensure_room(keys)?;
        file.reserve(n);
        reservation.file = Some(file);
        reservation.left = n;
        Ok(reservation)
    }

    /// The file the next entry goes to, rolling if the current one is full, with the entry's
    /// room allocated: a full disk is this call's error, never an entry silently dropped by the
    /// mapping.
    fn writable(&self, now: i64) -> Result<Arc<IndexFile>> {
        let current = self
            .files
            .read()
            .last()
            .filter(|f| f.room() > 0)
            .map(Arc::clone);
        let file = match current {
            Some(f) => f,
            None => self.roll(now)?,
        };
        file.ensure_room(1)?;
        Ok(file)
    }

    /// Creates a new, empty current file.
    fn roll(&self, now: i64) -> Result<Arc<IndexFile>> {
        let mut ms = now.max(crate::clock::now_ms());
        let path = loop {
            let p = self.dir.join(index_file::file_name(ms));
            if !self.fs.exists(&p).map_err(|e| Error::io(&p, e))? {
                break p;
            }
            ms += 1;
        };
        let f = Arc::new(IndexFile::create(
            self.fs.as_ref(),
            &path,
            self.opts.slots,
            self.opts.max_entries,
        )?);
        if let Err(e) = self.fs.sync_dir(&self.dir) {
            // A failed sync poisons the store (the engine passes this on); the new file goes.
            drop(f);
            let _ = self.fs.remove_file(&path);
            return Err(Error::Poisoned {
                reason: format!("directory sync of {} failed: {e}", self.dir.display()),
            });
        }
        self.files.write().push(Arc::clone(&f));
        Ok(f)
    }

    /// Candidate (partition, offset) positions for `key`, newest first, without duplicates.
    pub(crate) fn candidates(
        &self,
        topic: &str,
        key: &str,
        from_ms: i64,
        to_ms: i64,
        limit: usize,
    ) -> Vec<(u32, u64)> {
        let hash = key_hash(topic, key);
        let files: Vec<Arc<IndexFile>> = self.files.read().clone();
        let mut raw = Vec::new();
        for f in files.iter().rev() {
            // Both bounds are exact store times (the earliest may be unknown: i64::MIN).
            let (b, e) = f.time_range();
            if f.entries() == 0 || e < from_ms || b > to_ms {
                continue;
            }
            // Collisions and stale entries are filtered later: gather generously.
            f.lookup(
                hash,
                from_ms,
                to_ms,
                &mut raw,
                limit.saturating_mul(8).max(64),
            );
        }
        let mut seen = std::collections::HashSet::new();
        raw.into_iter()
            .map(unpack)
            .filter(|p| seen.insert(*p))
            .collect()
    }

    /// Flushes every file.
    pub(crate) fn flush(&self) -> Result<()> {
        let files: Vec<Arc<IndexFile>> = self.files.read().clone();
        for f in files {
            f.flush()?;
        }
        Ok(())
    }

    /// Offsets below which each partition is durably indexed.
    pub(crate) fn load_checkpoint(&self) -> HashMap<(String, u32), u64> {
        crate::offsets_file::load(
            self.fs.as_ref(),
            &self.dir.join(CHECKPOINT),
            CHECKPOINT_MAGIC,
        )
        .unwrap_or_default()
        .into_iter()
        .filter(|(t, _, _)| !t.starts_with(FILE_COUNT_PREFIX))
        .map(|(t, p, o)| ((t, p), o))
        .collect()
    }

    /// Flushes the files, then records `ends` (sampled before the flush) as indexed, together
    /// with each file's entry count sampled after `ends` (so every entry of a record below an
    /// end is counted) — in one file, so an unclean open cuts the files back to exactly what
    /// this checkpoint vouches for and catches up from exactly its ends.
    pub(crate) fn checkpoint(&self, ends: &[(String, u32, u64)]) -> Result<()> {
        if self.incomplete.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let files: Vec<Arc<IndexFile>> = self.files.read().clone();
        let mut entries = ends.to_vec();
        for f in &files {
            if let Some(name) = f.path().file_name().and_then(|n| n.to_str()) {
                entries.push((
                    format!("{FILE_COUNT_PREFIX}{name}"),
                    0,
                    u64::from(f.entries()),
                ));
            }
        }
        self.flush()?;
        crate::offsets_file::store(
            self.fs.as_ref(),
            &self.dir.join(CHECKPOINT),
            CHECKPOINT_MAGIC,
            &entries,
        )
    }

    /// Deletes files whose newest entry is older than `oldest_live_ms` (their records are gone),
    /// never the file being written. Returns how many.
    pub(crate) fn remove_older_than(&self, oldest_live_ms: i64) -> Result<usize> {
        let _w = self.writer.lock();
        let mut files = self.files.write();
        let mut n = 0;
        // A file promised to a batch being written stays until that batch is indexed.
        while files.len() > 1 && files[0].time_range().1 < oldest_live_ms && !files[0].is_reserved()
        {
            let f = files.remove(0);
            f.retire();
            self.fs
                .remove_file(f.path())
                .map_err(|e| Error::io(f.path(), e))?;
            n += 1;
        }
        if n > 0 {
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| Error::io(&self.dir, e))?;
        }
        Ok(n)
    }

    /// Deletes every index file and the checkpoint (before a rebuild).
    pub(crate) fn clear(&self) -> Result<()> {
        let _w = self.writer.lock();
        // Until a catch-up from scratch completes (`complete`), no checkpoint is written, and
        // the old one goes first: a crash or a failed rebuild then finds no checkpoint and
        // indexes everything again, never trusting ends the emptied index does not cover.
        self.incomplete
            .store(true, std::sync::atomic::Ordering::Release);
        let cp = self.dir.join(CHECKPOINT);
        io::remove_if_exists(self.fs.as_ref(), &cp).map_err(|e| Error::io(&cp, e))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        let mut files = self.files.write();
        for f in files.drain(..) {
            f.retire();
            self.fs
                .remove_file(f.path())
                .map_err(|e| Error::io(f.path(), e))?;
        }
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))
    }

    /// A catch-up indexed every record of every partition: checkpoints may be written again.
    pub(crate) fn complete(&self) {
        self.incomplete
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// Number of index files.
    pub(crate) fn file_count(&self) -> usize {
        self.files.read().len()
    }

    /// Allocated bytes of the index files.
    pub(crate) fn bytes(&self) -> u64 {
        self.files
            .read()
            .iter()
            .map(|f| self.fs.file_len(f.path()).unwrap_or(0))
            .sum()
    }
}

/// Room in one index file promised to one batch by [`KeyIndex::reserve`]; the batch's keys are
/// indexed through it. Dropping it gives back whatever was not used (a batch that failed).
pub(crate) struct Reservation<'a> {
    index: &'a KeyIndex,
    file: Option<Arc<IndexFile>>,
    left: u32,
}

impl Reservation<'_> {
    /// Indexes one message of the batch stored at (partition, offset). Called by the engine
    /// before the offset is published, under the engine's lock for that partition. Writes into
    /// the reserved room; only if that file left the index meanwhile (`reindex` racing the
    /// append) or the batch has more keys than it reserved does it fall back to the current
    /// file, which may roll.
    pub(crate) fn add(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        store_timestamp: i64,
        m: &Message,
    ) -> Result<()> {
        #[cfg(test)]
        probe::count();
        let mut keys = message_keys(m).peekable();
        if keys.peek().is_none() {
            return Ok(());
        }
        let _w = self.index.writer.lock();
        for key in keys {
            let file = match &self.file {
                Some(f) if self.left > 0 && !f.is_retired() => {
                    // Used and released under the writer lock: `room` never counts it twice.
                    self.left -= 1;
                    f.release(1);
                    Arc::clone(f)
                }
                _ => self.index.writable(store_timestamp)?,
            };
            file.put(
                key_hash(topic, &key),
                pack(partition, offset),
                store_timestamp,
            );
        }
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            f.release(self.left);
        }
    }
}

/// Indexes the records of one partition from `from` to its end, reading them with `read`.
pub(crate) fn catch_up(
    index: &KeyIndex,
    topic: &str,
    partition: u32,
    from: u64,
    end: u64,
    read: &dyn Fn(u64) -> Result<Vec<Record>>,
) -> Result<u64> {
    let mut at = from;
    let mut n = 0;
    while at < end {
        let recs = read(at)?;
        if recs.is_empty() {
            break;
        }
        for r in &recs {
            index.add(
                topic,
                partition,
                r.offset(),
                r.store_timestamp(),
                &r.to_message(),
            )?;
            n += 1;
        }
        at = recs[recs.len() - 1].offset() + 1;
    }
    Ok(n)
}

/// The index, or the error for a store opened with the index disabled.
pub(crate) fn required(index: &Option<KeyIndex>) -> Result<&KeyIndex> {
    index.as_ref().ok_or_else(|| {
        Error::InvalidArgument("the key index is disabled (StoreOptions::index.enabled)".into())
    })
}

/// Reads one record of a partition; `None` when it is no longer (or not yet) readable.
pub(crate) type ReadOne<'a> = &'a dyn Fn(u32, u64) -> Result<Option<Record>>;

/// The engine-neutral lookup: candidates from the index, each checked against its record.
pub(crate) fn find(
    index: &KeyIndex,
    topic: &str,
    key: &str,
    (from_ms, to_ms): (i64, i64),
    limit: usize,
    read: ReadOne<'_>,
) -> Result<Vec<crate::store::KeyMatch>> {
    let mut out = Vec::new();
    if limit == 0 || from_ms > to_ms {
        return Ok(out);
    }
    for (partition, offset) in index.candidates(topic, key, from_ms, to_ms, limit) {
        let Some(record) = read(partition, offset)? else {
            continue;
        };
        let ts = record.store_timestamp();
        if ts >= from_ms && ts <= to_ms && record_has_key(&record, key) {
            out.push(crate::store::KeyMatch { partition, record });
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Checks that every keyed record of a partition is found through the index.
pub(crate) fn verify_partition(
    index: &KeyIndex,
    topic: &str,
    partition: u32,
    start: u64,
    end: u64,
    read: &dyn Fn(u64) -> Result<Vec<Record>>,
    problems: &mut Vec<String>,
) -> Result<u64> {
    let mut checked = 0;
    let mut at = start;
    while at < end {
        let recs = match read(at) {
            Ok(r) => r,
            Err(e) => {
                // The log check reports the damage itself; the index check stops here.
                problems.push(format!(
                    "key index: {topic}/{partition} unreadable at {at}: {e}"
                ));
                break;
            }
        };
        if recs.is_empty() {
            break;
        }
        for r in &recs {
            for key in message_keys(&r.to_message()) {
                checked += 1;
                let ts = r.store_timestamp();
                let found = index
                    .candidates(topic, &key, ts, ts, usize::MAX / 16)
                    .contains(&(partition, r.offset()));
                if !found {
                    problems.push(format!(
                        "key index: {topic}/{partition} offset {} key {key:?} is not indexed",
                        r.offset()
                    ));
                }
            }
        }
        at = recs[recs.len() - 1].offset() + 1;
    }
    Ok(checked)
}

/// Counts the key index's per-batch and per-message entry points on this thread, so a test can
/// see that an append of keyless messages does no key-index work at all.
#[cfg(test)]
pub(crate) mod probe {
    use std::cell::Cell;

    thread_local! {
        static CALLS: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn count() {
        CALLS.with(|c| c.set(c.get() + 1));
    }

    /// Calls on this thread so far.
    pub(crate) fn calls() -> u64 {
        CALLS.with(Cell::get)
    }
}
