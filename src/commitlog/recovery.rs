//! Opening a CommitLog store: the clean path, which scans nothing, and crash recovery, whose work
//! is proportional to the log written since the last checkpoint.
//!
//! Unclean open (the `abort` marker is present):
//! 1. Replay starts at the checkpoint's `dispatch_flushed`: everything before it is durable in
//!    the log and in the consume queues.
//! 2. Each consume queue is cut back to its units for records before that position.
//! 3. Records from there on are validated (magic, lengths, body CRC, whole-record CRC, dense
//!    queue offsets) and dispatched again; the first invalid one is the end of the log.
//! 4. The commit log past the end is zeroed durably and later files are removed, so no stale
//!    record can ever reappear behind new data; the replayed range and the queues are flushed and
//!    a fresh checkpoint written before the store accepts appends.
//!
//! A crash during recovery leaves the inputs of the next recovery intact (the checkpoint only
//! moves forward after the replay is durable), so recovery is idempotent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use super::checkpoint::{self, Checkpoint};
use super::compacted;
use super::consume_queue::Unit;
use super::file_queue::FileQueue;
use super::record::{self, Checks, DecodeError, Decoded};
use super::txn_index::TxnIndex;
use super::{
    ABORT_FILE, AppendState, COMMITLOG_DIR, CommitLogStore, Inner, TopicState, start_flusher,
};
use crate::durability::{GroupCommit, PeriodicJobs};
use crate::error::{Error, Result};
use crate::options::StoreOptions;
use crate::store::EngineKind;

pub(super) fn open(dir: &Path, opts: StoreOptions) -> Result<CommitLogStore> {
    opts.validate(EngineKind::CommitLog)?;
    if opts.commitlog.file_size < 4096 {
        return Err(Error::InvalidArgument(
            "commitlog.file_size must be at least 4096 bytes".into(),
        ));
    }
    if opts.commitlog.consume_queue_units == 0 {
        return Err(Error::InvalidArgument(
            "commitlog.consume_queue_units must be positive".into(),
        ));
    }
    // Every file operation goes through the sync guard: a failed sync on any path (a queue
    // directory, the catalog, the key index) poisons the store, as on the segmented engine.
    let gc = Arc::new(GroupCommit::new(0, opts.flush));
    let fs = crate::durability::SyncGuardFs::wrap(Arc::clone(&opts.fs), Arc::clone(&gc));
    let mut opts = opts;
    opts.fs = Arc::clone(&fs);
    let opts_max_open_files = opts.max_open_files;
    let (lock, catalog) = crate::catalog::lock_and_load(fs.as_ref(), dir, EngineKind::CommitLog)?;
    let abort_path = dir.join(ABORT_FILE);
    let unclean = fs
        .exists(&abort_path)
        .map_err(|e| Error::io(&abort_path, e))?;
    let checkpoint = match Checkpoint::load(fs.as_ref(), dir) {
        Ok(cp) => cp,
        // A damaged checkpoint only costs a longer replay.
        Err(Error::Corrupted { .. }) => None,
        Err(e) => return Err(e),
    };
    let mut log = FileQueue::open(
        fs.as_ref(),
        &dir.join(COMMITLOG_DIR),
        opts.commitlog.file_size,
    )?;
    // Log files grow on demand, so a short last file is normal; one shorter than the data the
    // checkpoint counts as durable in it was cut from outside and is replayed whole below.
    if let Some(cp) = checkpoint {
        log.check_last_length(cp.log_flushed.max(cp.dispatch_flushed));
    }

    let jobs = PeriodicJobs::new(
        opts.commitlog.checkpoint_interval,
        opts.commitlog.retention_check_interval,
    );
    let warmer = if opts.commitlog.warm_files {
        Some(crate::io::Warmer::start("duolog-warm").map_err(|e| Error::io(dir, e))?)
    } else {
        None
    };
    let mut inner = Inner {
        dir: dir.to_owned(),
        fs: Arc::clone(&fs),
        gc,
        opts,
        log,
        topics: RwLock::new(HashMap::new()),
        admin: Mutex::new(()),
        queue_prep: parking_lot::RwLock::new(()),
        deleting: Mutex::new(catalog.deleting.clone()),
        next_topic_id: AtomicU64::new(catalog.next_topic_id),
        producer_ids: Mutex::new((catalog.producer_id_block_end, catalog.producer_id_block_end)),
        producer_flag_since: catalog.producer_flag_since,
        tracks_producers: AtomicBool::new(false),
        producer_sample: Mutex::new(Default::default()),
        append_lock: Mutex::new(AppendState {
            last_store_timestamp: 0,
            current: None,
        }),
        written: AtomicU64::new(0),
        flushed: AtomicU64::new(0),
        closed: AtomicBool::new(false),
        jobs,
        checkpoint_lock: Mutex::new(()),
        index: None,
        warmer,
        queue_cache: super::queue_cache::QueueCache::new(
            opts_max_open_files.saturating_mul(super::queue_cache::QUEUES_PER_OPEN_FILE),
        ),
        allocator: Default::default(),
        me: Default::default(),
        cleaner_lock: Mutex::new(()),
        retention_wants: AtomicU64::new(0),
        cleaner_wake: Default::default(),
    };
    let mut topics = HashMap::new();
    for (name, config, meta) in &catalog.topics {
        topics.insert(name.clone(), inner.open_topic(name, config, *meta)?);
    }
    // Start offsets raised by delete_before and retention.
    let persisted = checkpoint::load_start_offsets(fs.as_ref(), dir).unwrap_or_default();
    let persisted: HashMap<(String, u32), u64> =
        persisted.into_iter().map(|(t, p, o)| ((t, p), o)).collect();
    let broken = load_compaction(&inner, &mut topics)?;

    // A log file repaired at open makes the checkpoint's positions untrustworthy.
    let unclean = unclean || inner.log.repaired();
    let clean_end = match (unclean, checkpoint) {
        (false, Some(cp)) if is_clean_end(&mut inner, cp.log_flushed) => Some(cp.log_flushed),
        _ => None,
    };
    let log_min = inner.log.min_offset().unwrap_or(0);
    let (replay_from, end) = match clean_end {
        Some(end) => (end, end),
        None => {
            let mut from = checkpoint
                .map_or(log_min, |c| c.dispatch_flushed)
                .max(log_min);
            if inner.log.repaired()
                && let Some(last) = inner.log.last()
            {
                // The cut last file lost bytes the checkpoint counts as durable: replay it
                // whole, so a record cut by the truncation ends the log.
                from = from.min(last.start_offset());
            }
            // Never start past the files that exist.
            let last_end = inner
                .log
                .last()
                .map_or(0, |f| f.start_offset() + f.len() as u64);
            (from.min(last_end), u64::MAX)
        }
    };

    // Cut every consume queue back to units for records before the replay point.
    let after_crash = clean_end.is_none();
    let mut rebuild_txn_index = Vec::new();
    for t in topics.values_mut() {
        let name = t.name.clone();
        for (p, part) in t.partitions.iter_mut().enumerate() {
            // Units below `clean_end` were made durable (and checkpointed) before the pass that
            // set it committed; units below the persisted start belong to records retention
            // deleted (the start is persisted before their log files go). Either kind may point
            // into a log file that is gone, which the record check would take for a torn unit,
            // cutting the partition's end back below offsets it has given out.
            let trusted_below = part.clean_end().max(
                persisted
                    .get(&(name.clone(), p as u32))
                    .copied()
                    .unwrap_or(0),
            );
            let mut check = |offset: u64, unit: &Unit| {
                offset < trusted_below
                    || record_matches(&mut inner.log, unit, &name, p as u32, offset)
            };
            let part = Arc::get_mut(part)
                .ok_or_else(|| Error::InvalidArgument("queue shared during recovery".into()))?;
            let mut n = part
                .cq
                .recover(fs.as_ref(), replay_from, after_crash, &mut check)?;
            // The aborted-transaction index: the entries of markers before the replay point
            // (the replay adds the rest); one that does not decode is rebuilt once open.
            let opened = TxnIndex::open(Arc::clone(&fs), part.cq.dir(), n)?;
            if !opened.sound {
                rebuild_txn_index.push((name.clone(), p as u32));
            }
            *part.txn_index.get_mut() = opened.index;
            if part.cq.min_offset()?.is_none() {
                // Every queue file was below the compacted prefix and deleted: no unit at or
                // past `clean_end` was written (it would sit in a file not wholly below it).
                n = n.max(part.clean_end());
            }
            part.next_offset.store(n, Ordering::Relaxed);
        }
    }

    let (valid_end, replayed_ts) = if end == u64::MAX {
        replay(&mut inner, &topics, replay_from)?
    } else {
        (end, 0)
    };
    truncate_log(&mut inner, valid_end, replay_from, clean_end.is_none())?;
    inner.written = AtomicU64::new(valid_end);
    // Producer state: the snapshot, then the records past it (complete batches only: a torn
    // one ended the log above).
    let snapshot = super::producers::load(fs.as_ref(), dir);
    let (tracks, last_aborts) =
        super::producers::rebuild(&mut inner, &mut topics, snapshot, valid_end)?;
    inner.tracks_producers = AtomicBool::new(tracks);

    // Start offsets: persisted ones, the first queue file, and the first record still in the log.
    let log_min = inner.log.min_offset().unwrap_or(0);
    fall_back_or_fail(&inner, &topics, &persisted, broken, log_min)?;
    for t in topics.values() {
        for (p, part) in t.partitions.iter().enumerate() {
            let end = part.next_offset.load(Ordering::Relaxed);
            let persisted_start = persisted.get(&(t.name.clone(), p as u32)).copied();
            let start = if part.compacted().is_some() {
                clamp_compacted(fs.as_ref(), part, end)?;
                // The compacted prefix holds what its queue files and log files no longer do;
                // queue-served records whose log file is gone move the start past them.
                let start = persisted_start.unwrap_or(0).min(end);
                let lo = start.max(part.clean_end()).min(end);
                let x = part.cq.first_at_or_after(log_min, lo, end)?;
                if x > lo { x } else { start }
            } else {
                let mut start = part.cq.min_offset()?.unwrap_or(end).min(end);
                if let Some(s) = persisted_start {
                    start = start.max(s.min(end));
                }
                part.cq.first_at_or_after(log_min, start, end)?
            };
            part.end.store(end, Ordering::Relaxed);
            part.start.store(start, Ordering::Relaxed);
        }
    }
    let last_ts = checkpoint.map_or(0, |c| c.written_at_ms).max(replayed_ts);
    inner.append_lock.get_mut().last_store_timestamp = last_ts;
    // Recovered: the queues go under the store's bound on mappings, and past it are unmapped.
    for t in topics.values() {
        for part in &t.partitions {
            part.cq.enroll();
        }
    }
    *inner.topics.get_mut() = topics.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
    // A catalog from before the producer flag (version 3): recovery read the whole log the way
    // that build did; from the recovered end on, records are producers' by the flag only. The
    // position is durable (the catalog is written atomically) before anything is appended, so
    // every later open reads each record by the rule it was written under.
    if inner.producer_flag_since == u64::MAX {
        inner.producer_flag_since = valid_end;
        let topics = inner.topics.read().clone();
        inner.store_catalog(&topics)?;
    }
    // An interrupted topic deletion is finished before the store is used (its name is in no
    // loaded topic: a deletion in progress refuses a new topic of that name).
    inner.finish_deletions(&inner.topics.read().clone())?;

    let rebuild_index = match inner.opts.index.enabled {
        true => {
            let (index, rebuild) =
                crate::index::KeyIndex::open(Arc::clone(&fs), dir, inner.opts.index, !unclean)?;
            inner.index = Some(index);
            rebuild
        }
        false => false,
    };
    let often = inner.opts.flush.flushes_often();
    inner.log.set_small_pages(often);
    let inner = Arc::new(inner);
    let _ = inner.me.set(Arc::downgrade(&inner));
    // Index what the last run appended after its last index checkpoint.
    if rebuild_index && let Some(index) = &inner.index {
        index.clear()?;
    }
    inner.catch_up_index(rebuild_index)?;
    // Every aborted-transaction index checked against its markers (rebuilt from them when it
    // does not match), before the checkpoint below writes it.
    for t in inner.topics.read().values() {
        for (p, part) in t.partitions.iter().enumerate() {
            let key = (t.name.clone(), p as u32);
            let rebuild = rebuild_txn_index.contains(&key);
            let last_abort = last_aborts.get(&key).copied();
            inner.settle_txn_index(&t.name, p as u32, part, rebuild, last_abort)?;
        }
    }
    // Make the recovered state durable before anything new is acknowledged.
    inner.gc.sync_all(inner.as_ref())?;
    inner.write_checkpoint()?;
    // Start offsets above a partition's recovered end were clamped to it: persist that, so the
    // start never jumps ahead of records appended from here on.
    inner.store_start_offsets()?;
    fs.write_file_synced(&abort_path, b"")
        .map_err(|e| Error::io(&abort_path, e))?;
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    let flusher = start_flusher(&inner)?;
    let cleaner = if inner.opts.compaction.enabled {
        Some(super::cleaner::CleanerThread::start(&inner).map_err(|e| Error::io(dir, e))?)
    } else {
        None
    };
    let allocator =
        super::allocator::Allocator::start(&inner.allocator).map_err(|e| Error::io(dir, e))?;
    Ok(CommitLogStore {
        inner,
        flusher: Mutex::new(Some(flusher)),
        cleaner: Mutex::new(cleaner),
        allocator: Mutex::new(Some(allocator)),
        lock: Mutex::new(Some(lock)),
        shutdown: Mutex::new(None),
    })
}

/// A clean shutdown left the log ending exactly at `end`: it lies within the files and only
/// zeros (or a file boundary) follow it.
fn is_clean_end(inner: &mut Inner, end: u64) -> bool {
    let size = inner.log.file_size();
    let files = inner.log.files_mut();
    // A next file made ahead by the allocation thread and never written: the end lies in the
    // file before it (or at its start), and the empty file is removed with the log's tail.
    let n = files.len();
    let skip_empty = n >= 2 && end <= files[n - 1].start_offset() && {
        let Some(f) = Arc::get_mut(&mut files[n - 1]) else {
            return false;
        };
        matches!(
            record::decode(f.contents(), Checks::FULL),
            Err(DecodeError::Empty)
        )
    };
    let files = if skip_empty {
        &mut files[..n - 1]
    } else {
        &mut files[..]
    };
    let Some(last) = files.last_mut() else {
        return end == 0;
    };
    let last_end = last.start_offset() + size;
    if end == last_end {
        return true;
    }
    if end < last.start_offset() || end > last_end {
        return false;
    }
    let Some(file) = Arc::get_mut(last) else {
        return false;
    };
    let at = (end - file.start_offset()) as usize;
    // Past the allocated prefix the end is not where the log ends (a cut file): replay.
    file.contents()
        .get(at..)
        .is_some_and(|rest| matches!(record::decode(rest, Checks::FULL), Err(DecodeError::Empty)))
}

/// Whether `unit` points at a valid record of `topic`/`partition` with queue offset `offset`.
fn record_matches(
    log: &mut FileQueue,
    unit: &Unit,
    topic: &str,
    partition: u32,
    offset: u64,
) -> bool {
    let size = log.file_size();
    let Some(min) = log.min_offset() else {
        return false;
    };
    if unit.position < min {
        return false;
    }
    let idx = ((unit.position - min) / size) as usize;
    let Some(file) = log.files_mut().get_mut(idx).and_then(Arc::get_mut) else {
        return false;
    };
    let at = (unit.position - file.start_offset()) as usize;
    let Some(bytes) = file.contents().get(at..at + unit.size as usize) else {
        return false;
    };
    matches!(record::decode(bytes, Checks::FULL), Ok(Decoded::Message(d))
        if d.total_size == bytes.len() && d.topic == topic.as_bytes()
            && d.header.queue_id == partition as i32 && d.header.queue_offset == offset as i64)
}

/// Replays records from `from`; returns the position after the last valid one and the newest
/// store timestamp seen.
fn replay(
    inner: &mut Inner,
    topics: &HashMap<String, TopicState>,
    from: u64,
) -> Result<(u64, i64)> {
    let mut max_ts = 0i64;
    let end = replay_records(inner, topics, from, &mut max_ts)?;
    Ok((end, max_ts))
}

/// An idempotent batch whose last record the replay has not reached yet: its units wait here,
/// so a batch a power cut kept only the first records of is never dispatched.
struct OpenBatch {
    /// Position of its first record: the end of the log if the batch never completes.
    start: u64,
    part: Arc<super::PartitionState>,
    /// Its first offset.
    base: u64,
    units: Vec<(u64, Unit)>,
}

impl OpenBatch {
    fn dispatch(self) -> Result<()> {
        for (offset, unit) in &self.units {
            self.part.cq.put(*offset, unit)?;
        }
        Ok(())
    }
}

fn replay_records(
    inner: &mut Inner,
    topics: &HashMap<String, TopicState>,
    from: u64,
    max_ts: &mut i64,
) -> Result<u64> {
    let mut open: Option<OpenBatch> = None;
    let end = replay_walk(inner, topics, from, max_ts, &mut open)?;
    match open {
        // The log ends inside an idempotent batch: it ends before the batch instead (the
        // truncation zeroes its records), and its offsets are given out again.
        Some(b) => {
            b.part.next_offset.store(b.base, Ordering::Relaxed);
            Ok(b.start)
        }
        None => Ok(end),
    }
}

fn replay_walk(
    inner: &mut Inner,
    topics: &HashMap<String, TopicState>,
    from: u64,
    max_ts: &mut i64,
    open: &mut Option<OpenBatch>,
) -> Result<u64> {
    let size = inner.log.file_size();
    let mut pos = from;
    let files = inner.log.files_mut();
    'files: for f in files.iter_mut() {
        let start = f.start_offset();
        if start + size <= pos {
            continue;
        }
        let file = Arc::get_mut(f)
            .ok_or_else(|| Error::InvalidArgument("log shared during recovery".into()))?;
        let path = file.path().to_owned();
        let data = file.contents();
        let mut at = (pos - start) as usize;
        loop {
            if at >= data.len() {
                // A full-length file (an earlier build's, or one grown to its size) may end
                // with a record and no blank: the log goes on in the next file. A shorter file
                // was grown at least a blank past its last record before the record was
                // written, so reaching its end without a blank is the end of the log (a grown
                // length a crash lost, with the records written into it).
                if data.len() as u64 >= size {
                    pos = start + size;
                    continue 'files;
                }
                return Ok(start + at as u64);
            }
            match record::decode(&data[at..], Checks::FULL) {
                Ok(Decoded::Blank { size: blank }) => {
                    // The blank spans the rest of the file's logical size, allocated or not.
                    if (at + blank) as u64 != size {
                        // A blank record always closes its file; anything else is damage.
                        return Ok(start + at as u64);
                    }
                    pos = start + size;
                    continue 'files;
                }
                Ok(Decoded::Message(d)) => {
                    if d.header.physical_offset != (start + at as u64) as i64 {
                        return Ok(start + at as u64);
                    }
                    *max_ts = (*max_ts).max(d.header.store_timestamp);
                    {
                        let topic = std::str::from_utf8(d.topic)
                            .ok()
                            .and_then(|n| topics.get(n))
                            .filter(|t| start + at as u64 >= t.since);
                        // A deleted topic's record is skipped (the catalog names a topic before
                        // its first record is written, so no other record names an unknown one,
                        // and `since` tells an earlier topic of the same name's from its own).
                        let part = topic.map(|t| t.partitions.get(d.header.queue_id as usize));
                        let Some(part) = part.map(|p| p.ok_or(())) else {
                            at += d.total_size;
                            continue;
                        };
                        let Ok(part) = part else {
                            return Err(Error::corrupted(
                                &path,
                                at as u64,
                                "valid record of a topic or partition missing from the catalog",
                            ));
                        };
                        let expected = part.next_offset.load(Ordering::Relaxed);
                        if d.header.queue_offset < expected as i64
                            && d.header.queue_offset >= 0
                            && (d.header.queue_offset as u64) < part.clean_end()
                        {
                            // In the compacted prefix, whose queue files are gone: no unit.
                            at += d.total_size;
                            continue;
                        }
                        if d.header.queue_offset != expected as i64 {
                            return Err(Error::corrupted(
                                &path,
                                at as u64,
                                format!(
                                    "record has queue offset {} but its consume queue ends at {expected}",
                                    d.header.queue_offset
                                ),
                            ));
                        }
                        let tag_hash = record::unit_tag_hash(d.header.sys_flag, d.properties);
                        let unit = Unit {
                            position: start + at as u64,
                            size: d.total_size as u32,
                            tag_hash,
                        };
                        if record::transaction_type(d.header.sys_flag)
                            == record::SYSFLAG_TRANSACTION_ROLLBACK
                            && let Some((producer, txn)) = super::txn::parse_marker(d.properties)
                        {
                            part.txn_index
                                .lock()
                                .push(txn.aborted(producer.id, expected));
                        }
                        let batch = super::producers::parse_properties(
                            d.header.sys_flag,
                            d.properties,
                            start + (at as u64) < inner.producer_flag_since,
                        );
                        // A record that does not continue the open batch (only a failed
                        // append, never a crash, can leave one unfinished mid-log): the
                        // open batch's records are dispatched as any others.
                        if open
                            .as_ref()
                            .is_some_and(|b| batch.is_none() || !Arc::ptr_eq(&b.part, part))
                            && let Some(b) = open.take()
                        {
                            b.dispatch()?;
                        }
                        match batch {
                            Some(fields) => {
                                let b = open.get_or_insert_with(|| OpenBatch {
                                    start: start + at as u64,
                                    part: Arc::clone(part),
                                    base: expected,
                                    units: Vec::new(),
                                });
                                b.units.push((expected, unit));
                                if fields.last
                                    && let Some(b) = open.take()
                                {
                                    b.dispatch()?;
                                }
                            }
                            None => part.cq.put(expected, &unit)?,
                        }
                        part.next_offset.store(expected + 1, Ordering::Relaxed);
                    }
                    at += d.total_size;
                }
                Err(DecodeError::Empty | DecodeError::Truncated | DecodeError::Invalid(_)) => {
                    return Ok(start + at as u64);
                }
            }
        }
    }
    Ok(pos)
}

/// Makes `valid_end` the end of the log: after a crash, zeroes the rest of its file; removes
/// later files; positions every file's watermarks. Bytes from `durable_from` on are flushed later.
fn truncate_log(
    inner: &mut Inner,
    valid_end: u64,
    durable_from: u64,
    after_crash: bool,
) -> Result<()> {
    let fs = Arc::clone(&inner.fs);
    let size = inner.log.file_size();
    // The file that receives the next record: the one holding valid_end, unless valid_end sits
    // exactly on a file boundary.
    let keep_until = if valid_end.is_multiple_of(size) {
        valid_end
    } else {
        valid_end - valid_end % size + size
    };
    inner.log.remove_from(fs.as_ref(), keep_until)?;
    for f in inner.log.files_mut().iter_mut() {
        let file = Arc::get_mut(f)
            .ok_or_else(|| Error::InvalidArgument("log shared during recovery".into()))?;
        let start = file.start_offset();
        let end_in_file = (valid_end.saturating_sub(start)).min(size) as usize;
        let durable_in_file = (durable_from.saturating_sub(start)).min(size) as usize;
        if end_in_file < file.len() && after_crash {
            file.zero_from(end_in_file)
                .map_err(|e| Error::io(file.path(), e))?;
        }
        file.set_recovered_end(end_in_file, durable_in_file);
    }
    inner.flushed = AtomicU64::new(durable_from);
    Ok(())
}

/// Loads every partition's compacted prefix (see `compacted`). Returns the partitions whose
/// `state` is damaged (or whose files are shorter than it names), which open without one
/// until [`fall_back_or_fail`] decides.
fn load_compaction(
    inner: &Inner,
    topics: &mut HashMap<String, TopicState>,
) -> Result<Vec<(String, u32, Error)>> {
    let fs = inner.fs.as_ref();
    let root = inner.dir.join(compacted::COMPACTION_DIR);
    let listed = crate::io::list_dir_or_empty(fs, &root).map_err(|e| Error::io(&root, e))?;
    let mut broken = Vec::new();
    for entry in listed.iter().filter(|e| e.is_dir) {
        let Some(t) = topics.get_mut(&entry.name) else {
            continue;
        };
        for (p, part) in t.partitions.iter().enumerate() {
            let dir = compacted::partition_dir(&inner.dir, &t.name, p as u32);
            match compacted::load(fs, &dir) {
                Ok(c) => *part.compacted.write() = c.map(Arc::new),
                Err(e @ Error::Corrupted { .. }) => broken.push((t.name.clone(), p as u32, e)),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(broken)
}

/// A damaged compaction state falls back to no compaction when the consume queue and the log
/// still hold every record from the partition's start (nothing was deleted on the strength of
/// it yet: the compacted files are a redundant copy); otherwise the open fails with the
/// `Corrupted` error, since the compacted files are then the only copy of some records and
/// serving the partition without them would silently lose them.
fn fall_back_or_fail(
    inner: &Inner,
    topics: &HashMap<String, TopicState>,
    persisted: &HashMap<(String, u32), u64>,
    broken: Vec<(String, u32, Error)>,
    log_min: u64,
) -> Result<()> {
    let fs = inner.fs.as_ref();
    for (name, p, e) in broken {
        let Some(part) = topics.get(&name).and_then(|t| t.partitions.get(p as usize)) else {
            continue;
        };
        let start = persisted.get(&(name.clone(), p)).copied().unwrap_or(0);
        let end = part.next_offset.load(Ordering::Relaxed);
        let intact = match part.cq.min_offset()? {
            Some(m) if m <= start => {
                start == end || part.cq.unit(start)?.is_some_and(|u| u.position >= log_min)
            }
            _ => false,
        };
        if !intact {
            return Err(e);
        }
        let dir = compacted::partition_dir(&inner.dir, &name, p);
        compacted::remove_other_generations(fs, &dir, None)?;
        compacted::remove_state(fs, &dir)?;
    }
    Ok(())
}

/// A compacted prefix never reaches past the recovered end. It cannot, since only durable
/// records are cleaned; if damage to the log made it so anyway, the compacted records at or
/// past the end are dropped (their offsets will be given to new records): `clean_end` is
/// lowered to the end and persisted before anything is appended.
fn clamp_compacted(
    fs: &dyn crate::io::FileSystem,
    part: &super::PartitionState,
    end: u64,
) -> Result<()> {
    let Some(c) = part.compacted() else {
        return Ok(());
    };
    if c.state.clean_end <= end {
        return Ok(());
    }
    let mut state = c.state;
    state.clean_end = end;
    compacted::commit(fs, &c.dir, &state)?;
    *part.compacted.write() = Some(Arc::new(compacted::Compacted {
        dir: c.dir.clone(),
        state,
    }));
    Ok(())
}
