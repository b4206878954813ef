//! The RocketMQ-style engine: every message of every topic appended to one commit log of
//! fixed-size mapped files; per-partition consume queues of 20-byte units point into it.
//!
//! Directory layout:
//! ```text
//! LOCK                              flock held while open
//! meta                              engine and topics (see `catalog`)
//! abort                             present while open: its presence at open means a crash
//! checkpoint                        flushed positions (see `checkpoint`)
//! log-start-offset-checkpoint       start offsets raised by delete_before / retention
//! commitlog/<20-digit offset>       fixed-size files of records (see `record`)
//! consumequeue/<topic>/<p>/<20-digit byte offset>   20-byte units (see `consume_queue`)
//! compaction/<topic>/<p>/{state, <gen>.log, <gen>.idx}  compacted prefix (see `compacted`)
//! ```
//! This module owns those files and nothing else; it reaches them only through
//! [`FileSystem`].

mod allocator;
mod append;
mod checkpoint;
mod cleaner;
mod compacted;
mod consume_queue;
mod file_queue;
mod producers;
mod queue_cache;
mod read;
pub mod record;
mod recovery;
mod retention;
mod txn;
mod txn_index;
mod verify;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

pub use consume_queue::{UNIT_SIZE, Unit};

use self::append::{Appended, Produce};
use self::consume_queue::ConsumeQueue;
use self::file_queue::FileQueue;
use crate::catalog::{Catalog, TopicMeta};
use crate::durability::{
    BackgroundWork, Completion, DataSignal, FlushTarget, Flusher, GroupCommit, PeriodicJobs,
};
use crate::error::{Error, Result};
use crate::io::FileSystem;
use crate::options::StoreOptions;
use crate::store::{
    AppendResult, CompactionReport, DiskUsage, EngineKind, Fetch, KeyMatch, LogStore, Message,
    PartitionBounds, ProducerEntry, ProducerId, ReadLimits, Record, TaggedRead, TopicConfig,
    TxnMarker, VerifyReport, listed_topics, validate_new_topic,
};
use crate::topic_config::Effective;

const COMMITLOG_DIR: &str = "commitlog";
const CONSUMEQUEUE_DIR: &str = "consumequeue";
const ABORT_FILE: &str = "abort";

/// One partition (RocketMQ: message queue).
pub(crate) struct PartitionState {
    cq: ConsumeQueue,
    /// Next offset to assign; only touched under the append lock.
    next_offset: AtomicU64,
    /// Published end: offsets below it are readable.
    end: AtomicU64,
    /// Log start offset.
    start: AtomicU64,
    /// Wakes `wait_for` callers of this partition only.
    signal: DataSignal,
    /// Offsets below this have consume-queue files already (set under the append lock): an
    /// append below it skips the lock-free file preparation, one load instead of a walk
    /// through the queue's structures (which at thousands of partitions are cache misses).
    queue_ready_until: AtomicU64,
    /// The compacted prefix (see `compacted`), `None` until a cleaner pass committed one.
    /// Replaced whole by a pass; readers take the `Arc` and read that generation.
    compacted: RwLock<Option<Arc<compacted::Compacted>>>,
    /// Idempotent producers' state; checked and updated under the append lock.
    producers: Mutex<crate::producer_state::ProducerStates>,
    /// Aborted transactions (see `txn_index`); entries added under the append lock, before the
    /// producer state ends their transaction.
    txn_index: Mutex<txn_index::TxnIndex>,
}

impl PartitionState {
    /// The current compacted generation.
    fn compacted(&self) -> Option<Arc<compacted::Compacted>> {
        self.compacted.read().clone()
    }

    /// Offsets below it are served from the compacted files; the consume queue serves the rest.
    fn clean_end(&self) -> u64 {
        self.compacted
            .read()
            .as_ref()
            .map_or(0, |c| c.state.clean_end)
    }
}

/// A topic and its partitions.
pub(crate) struct TopicState {
    name: String,
    config: TopicConfig,
    /// What appends, retention and the cleaner apply (the config over the store's options).
    effective: Effective,
    partitions: Vec<Arc<PartitionState>>,
    /// Set under the append lock when the topic is deleted: appends that found the topic
    /// before stop there. Shared by every state of the topic (`replace_topic`), so an append
    /// holding the state from before an alter sees it too.
    deleted: Arc<AtomicBool>,
    /// Set once another state took this one's place in the map (an alter, added partitions):
    /// an appender's cached state (see `append::topic_cached`) is then looked up again.
    replaced: AtomicBool,
    /// The commit-log position at the topic's creation: records of its name before it belong
    /// to a deleted topic of the same name (see `catalog`).
    since: u64,
    /// Unique in the store, never reused (see `catalog`).
    id: u64,
}

impl Inner {
    /// Wakes every `wait_for` caller (the store is closing).
    fn wake_all_waiters(&self) {
        for t in self.topics.read().values() {
            for p in &t.partitions {
                p.signal.notify();
            }
        }
    }
}

impl Inner {
    /// Swaps a topic's state for one with `config` and `added` partitions appended, the
    /// catalog first (the caller holds `admin`).
    fn replace_topic(
        &self,
        name: &str,
        old: &Arc<TopicState>,
        config: TopicConfig,
        added: Vec<Arc<PartitionState>>,
    ) -> Result<()> {
        let mut partitions = old.partitions.clone();
        partitions.extend(added);
        let new = Arc::new(TopicState {
            name: name.to_owned(),
            effective: config.effective(&self.opts, EngineKind::CommitLog),
            config,
            partitions,
            deleted: Arc::clone(&old.deleted),
            replaced: AtomicBool::new(false),
            since: old.since,
            id: old.id,
        });
        let mut topics = self.topics.read().clone();
        topics.insert(name.to_owned(), Arc::clone(&new));
        self.store_catalog(&topics)?;
        self.topics.write().insert(name.to_owned(), new);
        old.replaced.store(true, Ordering::Release);
        Ok(())
    }

    /// Stored bytes of the records from the partition's start to its end.
    fn partition_bytes(&self, topic: &str, partition: u32) -> Result<u64> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        let start = part.start.load(Ordering::Acquire);
        let end = part.end.load(Ordering::Acquire);
        // The compacted prefix's records, then the queue's from `clean_end` on.
        let (compacted, clean_end) = match part.compacted() {
            None => (0, 0),
            Some(c) if start == 0 => (c.state.data_len, c.state.clean_end),
            Some(c) => (self.compacted_bytes_from(part, start)?, c.state.clean_end),
        };
        Ok(compacted + part.cq.bytes_between(start.max(clean_end).min(end), end)?)
    }
}

impl TopicState {
    fn partition(&self, p: u32) -> Result<&PartitionState> {
        self.partitions
            .get(p as usize)
            .map(|p| &**p)
            .ok_or_else(|| Error::UnknownPartition {
                topic: self.name.clone(),
                partition: p,
                partitions: self.config.partitions,
            })
    }
}

struct AppendState {
    last_store_timestamp: i64,
    /// The commit-log file being written, cached to skip a lookup per append.
    current: Option<Arc<crate::io::MappedFile>>,
}

/// Shared state of an open CommitLog store.
pub(crate) struct Inner {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    opts: StoreOptions,
    log: FileQueue,
    topics: RwLock<HashMap<String, Arc<TopicState>>>,
    /// Serialises catalog and start-offset changes.
    admin: Mutex<()>,
    /// Held (shared) by whoever makes a partition's queue files ahead of its appends (the
    /// allocation thread, an appender's lock-free preparation), exclusively by a deletion
    /// removing queue directories: neither creates a file where the other is removing them.
    queue_prep: parking_lot::RwLock<()>,
    /// Topics whose deletion began but did not finish (kept in the catalog until it does).
    deleting: Mutex<Vec<(String, u32)>>,
    /// The id the next topic created gets (persisted in the catalog).
    next_topic_id: AtomicU64,
    /// (next producer id, end of the block reserved in the catalog).
    producer_ids: Mutex<(i64, i64)>,
    /// Where records start to be producers' by sys flag 0x1000 only (the catalog's
    /// `producer flag since`); below it, by their properties (written before the flag).
    producer_flag_since: u64,
    /// Whether the store has a producer snapshot (set before its first idempotent record is
    /// written): checkpoints then keep it current (see `producers`).
    tracks_producers: AtomicBool,
    /// The producer snapshots: the one sampled at the last checkpoint (written by the first
    /// checkpoint whose durable log position covers it) and the position of the last one
    /// written (never replaced by an older one). Held while one is written.
    producer_sample: Mutex<producers::Samples>,
    append_lock: Mutex<AppendState>,
    /// End of published commit-log data.
    written: AtomicU64,
    /// Position up to which `flush_to` has synced the log.
    flushed: AtomicU64,
    gc: Arc<GroupCommit>,
    closed: AtomicBool,
    jobs: PeriodicJobs,
    checkpoint_lock: Mutex<()>,
    /// The key index (None when disabled).
    index: Option<crate::index::KeyIndex>,
    /// Faults commit-log and consume-queue pages in ahead of the appender.
    warmer: Option<crate::io::Warmer>,
    /// The bound on mapped consume-queue files (`StoreOptions::max_open_files`).
    queue_cache: Arc<queue_cache::QueueCache>,
    /// Creates the next files ahead of the appender (see `allocator`).
    allocator: allocator::AllocatorHandle,
    /// This store, for jobs handed to other threads.
    me: std::sync::OnceLock<std::sync::Weak<Inner>>,
    /// One cleaner pass at a time (background, `compact()`, retention's forced passes).
    cleaner_lock: Mutex<()>,
    /// A commit-log position background retention wanted to delete up to but could not, for
    /// compact-only records not yet cleaned: the cleaner thread cleans them first (0: none).
    retention_wants: AtomicU64,
    /// Wakes the cleaner thread.
    cleaner_wake: Arc<cleaner::CleanerWake>,
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// A sync (or a write whose point is a sync: checkpoint, start offsets, key-index flush)
    /// failed: the store turns `Poisoned` until reopened, since the kernel may have dropped the
    /// pages it was meant to persist and a later sync that succeeds would prove nothing.
    fn sync_failed(&self, e: Error) -> Error {
        let reason = match e {
            Error::Poisoned { reason } => reason,
            other => other.to_string(),
        };
        self.gc.poison(reason.clone());
        Error::Poisoned { reason }
    }

    /// A metadata file written atomically (temporary file, fsync, rename, directory fsync) or
    /// the key index's checkpoint failed. A full disk is returned as it is: it can only come
    /// from writing the temporary file, which leaves the old file in place and drops no page
    /// the store relies on. Anything else may be a failed sync and poisons.
    fn metadata_write_failed(&self, e: Error) -> Error {
        if e.is_storage_full() {
            return e;
        }
        self.sync_failed(e)
    }

    /// Passes a `Poisoned` error of a lower layer (a file creation whose directory sync failed,
    /// a key-index roll) on to the whole store; other errors go through unchanged.
    fn note_poison(&self, e: Error) -> Error {
        if let Error::Poisoned { reason } = &e {
            self.gc.poison(reason.clone());
        }
        e
    }

    fn topic(&self, name: &str) -> Result<Arc<TopicState>> {
        #[cfg(test)]
        append::probe::count(&append::probe::TOPIC_LOOKUPS);
        self.topics
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(name.to_owned()))
    }

    /// Largest record: the configured limit, and a record plus a blank must fit in one file.
    fn max_record_len(&self, topic_limit: usize) -> usize {
        let file_limit = (self.log.file_size() as usize).saturating_sub(record::BLANK_LEN);
        topic_limit.min(file_limit)
    }

    fn cq_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.dir
            .join(CONSUMEQUEUE_DIR)
            .join(topic)
            .join(partition.to_string())
    }

    /// Opens (or creates) the consume queues of partitions `first..config.partitions`.
    fn open_partitions(
        &self,
        name: &str,
        config: &TopicConfig,
        first: u32,
    ) -> Result<Vec<Arc<PartitionState>>> {
        // The partitions' queue directories first, all at once: one fsync of the topic
        // directory for a new topic instead of one per partition (none for an existing one).
        let dirs: Vec<PathBuf> = (first..config.partitions)
            .map(|p| self.cq_dir(name, p))
            .collect();
        let topic_dir = self.dir.join(CONSUMEQUEUE_DIR).join(name);
        let created = crate::io::create_dirs_durable_reporting(self.fs.as_ref(), &dirs)
            .map_err(|e| Error::io(&topic_dir, e))?;
        let mut partitions = Vec::with_capacity(dirs.len());
        for (p, fresh) in (first..config.partitions).zip(created) {
            let cq = ConsumeQueue::open(
                &self.fs,
                &self.cq_dir(name, p),
                self.opts.commitlog.consume_queue_units,
                Some(Arc::clone(&self.queue_cache)),
                fresh,
            )?;
            partitions.push(Arc::new(PartitionState {
                cq,
                next_offset: AtomicU64::new(0),
                end: AtomicU64::new(0),
                start: AtomicU64::new(0),
                signal: DataSignal::default(),
                queue_ready_until: AtomicU64::new(0),
                compacted: RwLock::new(None),
                producers: Mutex::new(Default::default()),
                txn_index: Mutex::new(txn_index::TxnIndex::empty(
                    Arc::clone(&self.fs),
                    &self.cq_dir(name, p),
                )),
            }));
        }
        Ok(partitions)
    }

    fn open_topic(&self, name: &str, config: &TopicConfig, meta: TopicMeta) -> Result<TopicState> {
        Ok(TopicState {
            name: name.to_owned(),
            config: config.clone(),
            effective: config.effective(&self.opts, EngineKind::CommitLog),
            partitions: self.open_partitions(name, config, 0)?,
            deleted: Arc::new(AtomicBool::new(false)),
            replaced: AtomicBool::new(false),
            since: meta.since,
            id: meta.id,
        })
    }

    /// The catalog of `topics` plus the deletions not finished, written atomically.
    fn store_catalog(&self, topics: &HashMap<String, Arc<TopicState>>) -> Result<()> {
        let mut list: Vec<(String, TopicConfig, TopicMeta)> = topics
            .values()
            .map(|t| {
                let meta = TopicMeta {
                    since: t.since,
                    id: t.id,
                };
                (t.name.clone(), t.config.clone(), meta)
            })
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Catalog {
            engine: EngineKind::CommitLog,
            topics: list,
            next_topic_id: self.next_topic_id.load(Ordering::Acquire),
            producer_id_block_end: self.producer_ids.lock().1,
            producer_flag_since: self.producer_flag_since,
            deleting: self.deleting.lock().clone(),
        }
        .store(self.fs.as_ref(), &self.dir)
    }

    /// Removes compacted files left under `name` by an earlier topic of that name (a deletion
    /// that lost its files' removal), durably, so a new topic never finds them.
    fn remove_stale_compaction(&self, name: &str) -> Result<()> {
        let root = self.dir.join(compacted::COMPACTION_DIR);
        let dir = root.join(name);
        if self.fs.exists(&dir).unwrap_or(false) {
            crate::io::remove_tree(self.fs.as_ref(), &dir).map_err(|e| Error::io(&dir, e))?;
            self.fs.sync_dir(&root).map_err(|e| Error::io(&root, e))?;
        }
        Ok(())
    }

    /// Removes the consume queues of topics whose deletion is listed as unfinished, then drops
    /// the listing from the catalog (the caller holds `admin`, or is the open).
    pub(crate) fn finish_deletions(&self, topics: &HashMap<String, Arc<TopicState>>) -> Result<()> {
        let pending = self.deleting.lock().clone();
        if pending.is_empty() {
            return Ok(());
        }
        let cq_root = self.dir.join(CONSUMEQUEUE_DIR);
        let _no_queue_prep = self.queue_prep.write();
        for (name, _) in &pending {
            let dir = cq_root.join(name);
            crate::io::remove_tree(self.fs.as_ref(), &dir).map_err(|e| Error::io(&dir, e))?;
            // Its compacted prefixes too (a new topic of the name must not find them).
            let dir = self.dir.join(compacted::COMPACTION_DIR).join(name);
            crate::io::remove_tree(self.fs.as_ref(), &dir).map_err(|e| Error::io(&dir, e))?;
        }
        let compaction_root = self.dir.join(compacted::COMPACTION_DIR);
        if self.fs.exists(&compaction_root).unwrap_or(false) {
            self.fs
                .sync_dir(&compaction_root)
                .map_err(|e| Error::io(&compaction_root, e))?;
        }
        if self.fs.exists(&cq_root).unwrap_or(false) {
            self.fs
                .sync_dir(&cq_root)
                .map_err(|e| Error::io(&cq_root, e))?;
        }
        self.deleting.lock().clear();
        self.store_catalog(topics)
    }

    fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let _admin = self.admin.lock();
        // No pass is writing the topic's compacted files while they are removed.
        let _cleaner = self.cleaner_lock.lock();
        let t = self.topic(name)?;
        {
            // No append of the topic is halfway through once this is set.
            let _appends = self.append_lock.lock();
            t.deleted.store(true, Ordering::Release);
        }
        // Every record of the topic is durable and dispatched, and the checkpoint says so.
        let fenced = (|| {
            self.gc.sync_all(self)?;
            self.write_checkpoint()
        })();
        if let Err(e) = fenced {
            t.deleted.store(false, Ordering::Release);
            return Err(e);
        }
        // The commit point: a catalog without the topic, listing it as being deleted.
        self.deleting
            .lock()
            .push((name.to_owned(), t.config.partitions));
        let mut topics = self.topics.read().clone();
        topics.remove(name);
        if let Err(e) = self.store_catalog(&topics) {
            self.deleting.lock().retain(|(n, _)| n != name);
            t.deleted.store(false, Ordering::Release);
            return Err(e);
        }
        self.topics.write().remove(name);
        self.store_start_offsets()?;
        // Also waits for a checkpoint that sampled the topic before its removal: none flushes
        // its queues once their files go (a queue evicted meanwhile would be mapped again by
        // path, fail, and poison the store).
        self.write_checkpoint()?;
        for p in &t.partitions {
            p.signal.notify();
            p.cq.forget();
        }
        self.finish_deletions(&topics)
    }

    /// Persists the start offsets that are above a partition's first unit.
    fn store_start_offsets(&self) -> Result<()> {
        let topics = self.topics.read();
        let mut entries = Vec::new();
        for t in topics.values() {
            for (p, part) in t.partitions.iter().enumerate() {
                let s = part.start.load(Ordering::Acquire);
                if s > 0 {
                    entries.push((t.name.clone(), p as u32, s));
                }
            }
        }
        drop(topics);
        entries.sort();
        checkpoint::store_start_offsets(self.fs.as_ref(), &self.dir, &entries)
            .map_err(|e| self.metadata_write_failed(e))
    }

    /// Flushes every consume queue and writes the checkpoint.
    fn write_checkpoint(&self) -> Result<()> {
        let _one_writer = self.checkpoint_lock.lock();
        if let Some(index) = &self.index {
            index
                .checkpoint(&self.partition_ends())
                .map_err(|e| self.metadata_write_failed(e))?;
        }
        let dispatched = self.written.load(Ordering::Acquire);
        let topics: Vec<Arc<TopicState>> = self.topics.read().values().cloned().collect();
        for t in &topics {
            for part in &t.partitions {
                if let Err(e) = part.cq.flush() {
                    // The kernel may have dropped the pages this flush was for; a later flush
                    // succeeding would not bring them back, so no checkpoint may claim them.
                    return Err(self.sync_failed(e));
                }
                // The aborted-transaction entries of markers below `dispatched` (pushed before
                // the markers were published): recovery re-derives only those past the
                // checkpoint. Rewritten and synced without the index's lock (`write_out`, on the
                // allocation thread, also writes entries; `pending` and it agree under the lock
                // on who counts them).
                let pending = txn_index::pending(&part.txn_index)
                    .map_err(|e| self.metadata_write_failed(e))?;
                if let Err(e) = txn_index::persist(self.fs.as_ref(), &pending) {
                    part.txn_index.lock().unsynced(&pending);
                    return Err(self.metadata_write_failed(e));
                }
            }
        }
        let durable = self.gc.durable();
        self.checkpoint_producers(durable)?;
        let cp = checkpoint::Checkpoint {
            log_flushed: durable,
            dispatch_flushed: dispatched.min(durable),
            // Never behind a stamped store time, so store times stay monotonic across restarts.
            written_at_ms: crate::clock::now_ms().max(self.append_lock.lock().last_store_timestamp),
        };
        cp.store(self.fs.as_ref(), &self.dir)
            .map_err(|e| self.metadata_write_failed(e))
    }

    /// Every partition's end, sampled now.
    fn partition_ends(&self) -> Vec<(String, u32, u64)> {
        let topics = self.topics.read();
        let mut v = Vec::new();
        for t in topics.values() {
            for (p, part) in t.partitions.iter().enumerate() {
                v.push((t.name.clone(), p as u32, part.end.load(Ordering::Acquire)));
            }
        }
        v.sort();
        v
    }

    /// One record, or `None` when it is outside the partition's bounds.
    fn read_one(&self, topic: &str, partition: u32, offset: u64) -> Result<Option<Record>> {
        match self.read(topic, partition, offset, ReadLimits::messages(1)) {
            Ok(mut v) => Ok(v.pop().filter(|r| r.offset() == offset)),
            Err(Error::OffsetOutOfRange { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Indexes every partition from its index checkpoint (or its start, when `all`) to its end.
    fn catch_up_index(&self, all: bool) -> Result<u64> {
        let Some(index) = &self.index else {
            return Ok(0);
        };
        let done = if all {
            Default::default()
        } else {
            index.load_checkpoint()
        };
        let topics: Vec<Arc<TopicState>> = self.topics.read().values().cloned().collect();
        let mut n = 0;
        for t in topics {
            for (p, part) in t.partitions.iter().enumerate() {
                let start = part.start.load(Ordering::Acquire);
                let end = part.end.load(Ordering::Acquire);
                let from = done
                    .get(&(t.name.clone(), p as u32))
                    .copied()
                    .unwrap_or(0)
                    .clamp(start, end);
                let read = |o: u64| self.read(&t.name, p as u32, o, ReadLimits::messages(1000));
                n += crate::index::catch_up(index, &t.name, p as u32, from, end, &read)?;
            }
        }
        index.complete();
        Ok(n)
    }

    /// Oldest store time still readable in any partition (None if all are empty).
    fn oldest_live_timestamp(&self) -> Result<Option<i64>> {
        let topics: Vec<Arc<TopicState>> = self.topics.read().values().cloned().collect();
        let mut oldest: Option<i64> = None;
        for t in topics {
            for (p, part) in t.partitions.iter().enumerate() {
                let start = part.start.load(Ordering::Acquire);
                // The first record still readable (compaction may have removed `start`'s).
                let first = match self.read(&t.name, p as u32, start, ReadLimits::messages(1)) {
                    Ok(mut v) => v.pop(),
                    Err(Error::OffsetOutOfRange { .. }) => None,
                    Err(e) => return Err(e),
                };
                if let Some(r) = first {
                    oldest =
                        Some(oldest.map_or(r.store_timestamp(), |o| o.min(r.store_timestamp())));
                }
            }
        }
        Ok(oldest)
    }

    fn durable_end(&self, part: &PartitionState) -> Result<u64> {
        // The compacted prefix is durable; the queue serves (and may only hold units) from
        // `clean_end` on.
        let end = part.end.load(Ordering::Acquire);
        let start = part
            .start
            .load(Ordering::Acquire)
            .max(part.clean_end())
            .min(end);
        part.cq.first_at_or_after(self.gc.durable(), start, end)
    }
}

impl FlushTarget for Inner {
    fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    fn flush_to(&self, upto: u64) -> Result<()> {
        let size = self.log.file_size();
        let mut pos = self
            .flushed
            .load(Ordering::Acquire)
            .max(self.log.min_offset().unwrap_or(0));
        while pos < upto {
            let Some(file) = self.log.find(pos) else {
                break;
            };
            let upto_in_file = (upto - file.start_offset()).min(size) as usize;
            file.flush(upto_in_file)
                .map_err(|e| Error::io(file.path(), e))?;
            pos = file.start_offset() + size;
        }
        self.flushed.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }
}

impl BackgroundWork for Inner {
    fn tick(&self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let (do_cp, do_ret) = self.jobs.due();
        // Failures here are retried on the next tick; a failed flush has poisoned the store.
        if do_ret {
            let _ = self.enforce_retention_with(false);
        }
        if do_cp {
            let _ = self.write_checkpoint();
        }
    }
}

/// An open CommitLog-engine store.
///
/// ```
/// use duolog::{CommitLogStore, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = CommitLogStore::open(dir.path(), StoreOptions::default())?;
/// store.create_topic("orders", TopicConfig::with_partitions(4))?;
/// let r = store.append("orders", 2, &[Message::new("a"), Message::new("b")])?;
/// assert_eq!((r.base_offset, r.last_offset), (0, 1));
/// let records = store.read("orders", 2, 0, ReadLimits::default())?;
/// assert_eq!(records[1].body(), b"b");
/// # Ok(()) }
/// ```
pub struct CommitLogStore {
    inner: Arc<Inner>,
    flusher: Mutex<Option<Flusher>>,
    /// The background cleaner (`None` when compaction is disabled).
    cleaner: Mutex<Option<cleaner::CleanerThread>>,
    allocator: Mutex<Option<allocator::Allocator>>,
    /// The `LOCK` file's lock; released by `close` and `abandon`.
    lock: Mutex<Option<Box<dyn Any + Send + Sync>>>,
    /// How the store was shut down (`close`'s result, or abandoned): a second `close` reports
    /// it rather than claiming a durability it did not re-check.
    shutdown: Mutex<Option<std::result::Result<(), String>>>,
}

impl fmt::Debug for CommitLogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitLogStore")
            .field("dir", &self.inner.dir)
            .field("written", &self.inner.written.load(Ordering::Relaxed))
            .finish()
    }
}

impl CommitLogStore {
    /// Opens the CommitLog store in `dir`, creating it if empty, recovering it if it was not
    /// closed cleanly.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        recovery::open(dir.as_ref(), options)
    }

    /// How many aborted-transaction index entries of a partition are held in memory (a test
    /// hook: the rest stay in `aborted.txnindex`; see `txn_index`).
    #[doc(hidden)]
    pub fn txn_index_resident_entries(&self, topic: &str, partition: u32) -> Result<usize> {
        let t = self.inner.topic(topic)?;
        let part = t.partition(partition)?;
        Ok(part.txn_index.lock().resident())
    }

    /// The commit-log position after the last published record.
    pub fn log_end_position(&self) -> u64 {
        self.inner.written.load(Ordering::Acquire)
    }

    /// The durable commit-log position.
    pub fn durable_position(&self) -> u64 {
        self.inner.gc.durable()
    }

    /// Paths of the commit-log files, oldest first.
    pub fn commitlog_files(&self) -> Vec<PathBuf> {
        self.inner
            .log
            .snapshot()
            .iter()
            .map(|f| f.path().to_owned())
            .collect()
    }

    /// The consume-queue unit of a record.
    pub fn consume_queue_unit(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Option<Unit>> {
        let t = self.inner.topic(topic)?;
        let part = t.partition(partition)?;
        if offset >= part.end.load(Ordering::Acquire) {
            return Ok(None);
        }
        part.cq.unit(offset)
    }

    /// Stops the cleaner thread (its pass in progress sees the store closed and ends early).
    fn stop_cleaner(&self) {
        if let Some(mut c) = self.cleaner.lock().take() {
            c.stop();
        }
    }

    /// Stops the allocation thread (its queued jobs see the store closed and do nothing).
    fn stop_allocator(&self) {
        self.inner.allocator.close();
        if let Some(mut a) = self.allocator.lock().take() {
            a.join();
        }
    }

    fn finish(&self, result: AppendResult, end: u64, wait: bool) -> Result<AppendResult> {
        if wait {
            self.inner.gc.acknowledge(self.inner.as_ref(), end)?;
        }
        Ok(result)
    }
}

impl Drop for CommitLogStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl LogStore for CommitLogStore {
    fn engine(&self) -> EngineKind {
        EngineKind::CommitLog
    }

    fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn create_topic(&self, name: &str, config: TopicConfig) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        validate_new_topic(name, &config)?;
        let _admin = inner.admin.lock();
        if inner.topics.read().contains_key(name) {
            return Err(Error::TopicExists(name.to_owned()));
        }
        if inner.deleting.lock().iter().any(|(n, _)| n == name) {
            inner.finish_deletions(&inner.topics.read().clone())?;
        }
        inner.remove_stale_compaction(name)?;
        // Every record of an earlier topic of this name lies before the durable position now
        // (its deletion synced the log before committing). Not the write position: an
        // unsynced tail a crash may cut would leave `since` past the recovered log, and this
        // topic's first records below it, skipped by recovery as an earlier topic's.
        let since = inner
            .gc
            .durable()
            .min(inner.written.load(Ordering::Acquire));
        // Never reused, even when the catalog write below fails.
        let id = inner.next_topic_id.fetch_add(1, Ordering::AcqRel);
        let state = Arc::new(inner.open_topic(name, &config, TopicMeta { since, id })?);
        for part in &state.partitions {
            part.cq.enroll();
        }
        let mut topics = inner.topics.read().clone();
        topics.insert(name.to_owned(), Arc::clone(&state));
        inner.store_catalog(&topics)?;
        inner.topics.write().insert(name.to_owned(), state);
        Ok(())
    }

    fn describe_topic(&self, name: &str) -> Result<TopicConfig> {
        Ok(self.inner.topic(name)?.config.clone())
    }

    fn topic_id(&self, name: &str) -> Result<u64> {
        Ok(self.inner.topic(name)?.id)
    }

    fn alter_topic(&self, name: &str, config: TopicConfig) -> Result<()> {
        let inner = &self.inner;
        inner.check_open()?;
        let _admin = inner.admin.lock();
        let t = inner.topic(name)?;
        crate::store::validate_alter(name, &t.config, &config)?;
        inner.replace_topic(name, &t, config, Vec::new())
    }

    fn add_partitions(&self, name: &str, count: u32) -> Result<u32> {
        let inner = &self.inner;
        inner.check_open()?;
        let _admin = inner.admin.lock();
        let t = inner.topic(name)?;
        let config = crate::store::grown_config(name, &t.config, count)?;
        let added = inner.open_partitions(name, &config, t.config.partitions)?;
        for part in &added {
            part.cq.enroll();
        }
        let total = config.partitions;
        inner.replace_topic(name, &t, config, added)?;
        Ok(total)
    }

    fn delete_topic(&self, name: &str) -> Result<()> {
        self.inner.delete_topic(name)
    }

    fn list_topics(&self, include_internal: bool) -> Vec<String> {
        listed_topics(self.inner.topics.read().keys(), include_internal)
    }

    fn append(&self, topic: &str, partition: u32, messages: &[Message]) -> Result<AppendResult> {
        let (r, end) = self
            .inner
            .append_batch(topic, partition, messages, Produce::Plain)?
            .offsets()?;
        self.finish(r, end, true)
    }

    fn append_oneway(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> Result<AppendResult> {
        let (r, end) = self
            .inner
            .append_batch(topic, partition, messages, Produce::Plain)?
            .offsets()?;
        self.finish(r, end, false)
    }

    fn append_async(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> Result<Completion> {
        let (r, end) = self
            .inner
            .append_batch(topic, partition, messages, Produce::Plain)?
            .offsets()?;
        Ok(Completion::new(r, end, Arc::clone(&self.inner.gc)))
    }

    fn allocate_producer_id(&self) -> Result<i64> {
        let inner = &self.inner;
        inner.check_open()?;
        let _admin = inner.admin.lock();
        crate::catalog::allocate_producer_id(&inner.producer_ids, || {
            inner
                .store_catalog(&inner.topics.read().clone())
                .map_err(|e| inner.metadata_write_failed(e))
        })
    }

    fn append_idempotent(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> Result<AppendResult> {
        let idem = crate::producer_state::checked_batch(producer, base_sequence, messages.len())?;
        let (r, end) = self
            .inner
            .append_batch(topic, partition, messages, Produce::Idempotent(idem))?
            .offsets()?;
        self.finish(r, end, true)
    }

    fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> Result<AppendResult> {
        let idem = crate::producer_state::checked_batch(producer, base_sequence, messages.len())?;
        let (r, end) = self
            .inner
            .append_batch(topic, partition, messages, Produce::Transactional(idem))?
            .offsets()?;
        self.finish(r, end, true)
    }

    fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        marker: TxnMarker,
        coordinator_epoch: i32,
    ) -> Result<Option<u64>> {
        let inner = &self.inner;
        if producer.id < 0 || producer.epoch < 0 {
            return Err(Error::InvalidArgument(format!(
                "{producer}: producer id and epoch must not be negative"
            )));
        }
        // -1 is the producer state's "no marker yet": a negative epoch stored would change
        // the producer's meaning across a reopen (its last batch taken as non-transactional).
        if coordinator_epoch < 0 {
            return Err(Error::InvalidArgument(format!(
                "coordinator epoch {coordinator_epoch} must not be negative"
            )));
        }
        let body = record::encode_marker_body(coordinator_epoch);
        let kind = Produce::Marker {
            producer,
            marker,
            coordinator_epoch,
        };
        let message = Message::new(body.to_vec());
        match inner.append_batch(topic, partition, std::slice::from_ref(&message), kind)? {
            Appended::Written(r, end) => {
                // Durable on return, whatever the flush policy: the marker and every record of
                // its transaction before it.
                inner.gc.sync_to(inner.as_ref(), end)?;
                Ok(Some(r.base_offset))
            }
            Appended::Duplicate(_, end) | Appended::NoTransaction(end, false) => {
                // Nothing written, maybe because another caller has just written this marker
                // and not synced it yet: `Ok(None)` tells the coordinator the marker is there,
                // so wait for it to be durable, as a duplicate batch waits for its original.
                inner.gc.sync_to(inner.as_ref(), end)?;
                Ok(None)
            }
            Appended::NoTransaction(_, true) => {
                // Nothing open here, but the marker's newer epoch now fences the older one on
                // this partition: durable on return, through a producer snapshot (no record).
                let t = inner.topic(topic)?;
                inner.snapshot_after_fence(t.partition(partition)?)?;
                Ok(None)
            }
        }
    }

    fn fetch(&self, topic: &str, partition: u32, offset: u64, limits: ReadLimits) -> Result<Fetch> {
        self.inner.check_open()?;
        self.inner.fetch(topic, partition, offset, limits)
    }

    fn producer_state(&self, topic: &str, partition: u32) -> Result<Vec<ProducerEntry>> {
        let inner = &self.inner;
        inner.check_open()?;
        let t = inner.topic(topic)?;
        let part = t.partition(partition)?;
        let entries = part
            .producers
            .lock()
            .entries(crate::clock::now_ms(), inner.opts.producer_id_expiration);
        Ok(entries)
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Vec<Record>> {
        self.inner.check_open()?;
        self.inner.read(topic, partition, offset, limits)
    }

    fn read_with(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        visit: &mut crate::store::Visitor<'_>,
    ) -> Result<crate::store::ReadProgress> {
        self.inner.check_open()?;
        self.inner
            .read_with(topic, partition, offset, limits, visit)
    }

    fn read_tagged(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
        tags: &[String],
    ) -> Result<TaggedRead> {
        self.inner.check_open()?;
        self.inner
            .read_tagged(topic, partition, offset, limits, tags)
    }

    fn bounds(&self, topic: &str, partition: u32) -> Result<PartitionBounds> {
        self.inner.check_open()?;
        let t = self.inner.topic(topic)?;
        let part = t.partition(partition)?;
        let end = part.end.load(Ordering::Acquire);
        Ok(PartitionBounds {
            start: part.start.load(Ordering::Acquire),
            end,
            durable_end: self.inner.durable_end(part)?,
            last_stable: self.inner.last_stable(part, end),
        })
    }

    fn sync(&self) -> Result<()> {
        self.inner.check_open()?;
        self.inner.gc.sync_all(self.inner.as_ref())
    }

    fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<bool> {
        self.inner.check_open()?;
        let t = self.inner.topic(topic)?;
        let part = t.partition(partition)?;
        let deadline = crate::clock::deadline(timeout);
        let ready = part.signal.wait_until(deadline, || {
            part.end.load(Ordering::Acquire) > offset || self.inner.closed.load(Ordering::Acquire)
        });
        self.inner.check_open()?;
        Ok(ready)
    }

    fn wait_for_any_with(
        &self,
        positions: &[(&str, u32, u64)],
        timeout: Duration,
        wakeup: &crate::Wakeup,
    ) -> Result<bool> {
        self.inner.check_open()?;
        let topics = positions
            .iter()
            .map(|&(t, p, _)| {
                let t = self.inner.topic(t)?;
                t.partition(p)?;
                Ok(t)
            })
            .collect::<Result<Vec<_>>>()?;
        let parts: Vec<(&PartitionState, u64)> = topics
            .iter()
            .zip(positions)
            .map(|(t, &(_, p, offset))| (&*t.partitions[p as usize], offset))
            .collect();
        let signals: Vec<&DataSignal> = parts.iter().map(|(p, _)| &p.signal).collect();
        let deadline = crate::clock::deadline(timeout);
        let ready = crate::durability::wait_any(&signals, wakeup, deadline, || {
            self.inner.closed.load(Ordering::Acquire)
                || parts
                    .iter()
                    .any(|(p, offset)| p.end.load(Ordering::Acquire) > *offset)
        });
        self.inner.check_open()?;
        Ok(ready)
    }

    fn delete_before(&self, topic: &str, partition: u32, offset: u64) -> Result<u64> {
        self.inner.check_open()?;
        self.inner.delete_before(topic, partition, offset)
    }

    fn find_by_key(
        &self,
        topic: &str,
        key: &str,
        time_range: (i64, i64),
        limit: usize,
    ) -> Result<Vec<KeyMatch>> {
        let inner = &self.inner;
        inner.check_open()?;
        inner.topic(topic)?;
        let index = crate::index::required(&inner.index)?;
        let read = |p: u32, o: u64| inner.read_one(topic, p, o);
        crate::index::find(index, topic, key, time_range, limit, &read)
    }

    fn offset_for_time(&self, topic: &str, partition: u32, timestamp: i64) -> Result<Option<u64>> {
        self.inner.check_open()?;
        self.inner.offset_for_time(topic, partition, timestamp)
    }

    fn reindex(&self) -> Result<u64> {
        let inner = &self.inner;
        inner.check_open()?;
        let Some(index) = &inner.index else {
            return Ok(0);
        };
        index.clear().map_err(|e| inner.sync_failed(e))?;
        let n = inner.catch_up_index(true)?;
        inner.write_checkpoint()?;
        Ok(n)
    }

    fn enforce_retention(&self) -> Result<usize> {
        self.inner.check_open()?;
        self.inner.enforce_retention()
    }

    fn compact(&self, topic: Option<&str>) -> Result<CompactionReport> {
        self.inner.check_open()?;
        self.inner.compact(topic)
    }

    fn partition_bytes(&self, topic: &str, partition: u32) -> Result<u64> {
        self.inner.check_open()?;
        self.inner.partition_bytes(topic, partition)
    }

    fn disk_usage(&self) -> Result<DiskUsage> {
        self.inner.check_open()?;
        let mut usage = DiskUsage::default();
        let log = &self.inner.log;
        usage.files += log.len() as u64;
        usage.bytes += log.allocated_bytes();
        for t in self.inner.topics.read().values() {
            for p in &t.partitions {
                // Allocated bytes: queue files grow with their units.
                let (files, bytes) = p.cq.disk_usage();
                usage.files += files;
                usage.bytes += bytes;
                if let Some(c) = p.compacted() {
                    // `state`, and the generation's data and index files.
                    let (files, bytes) = c.disk_usage();
                    usage.files += files;
                    usage.bytes += bytes;
                }
            }
        }
        if let Some(index) = &self.inner.index {
            usage.files += index.file_count() as u64;
            usage.bytes += index.bytes();
        }
        Ok(usage)
    }

    fn verify(&self) -> Result<VerifyReport> {
        self.inner.check_open()?;
        self.inner.verify()
    }

    fn close(&self) -> Result<()> {
        let inner = &self.inner;
        let mut shutdown = self.shutdown.lock();
        if let Some(outcome) = &*shutdown {
            return crate::store::repeated_close(outcome);
        }
        // Under the append lock, so no append is halfway through when the store turns closed.
        let guard = inner.append_lock.lock();
        inner.closed.store(true, Ordering::Release);
        drop(guard);
        inner.wake_all_waiters();
        self.stop_cleaner();
        if let Some(mut f) = self.flusher.lock().take() {
            f.stop();
        }
        self.stop_allocator();
        let result = (|| {
            inner.gc.sync_all(inner.as_ref())?;
            inner.write_checkpoint()?;
            let abort = inner.dir.join(ABORT_FILE);
            crate::io::remove_if_exists(inner.fs.as_ref(), &abort)
                .map_err(|e| Error::io(&abort, e))?;
            inner
                .fs
                .sync_dir(&inner.dir)
                .map_err(|e| Error::io(&inner.dir, e))
        })();
        inner.gc.close();
        self.lock.lock().take();
        *shutdown = Some(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        result
    }

    fn abandon(&self) {
        let inner = &self.inner;
        let mut shutdown = self.shutdown.lock();
        if shutdown.is_some() {
            return;
        }
        *shutdown = Some(Err("the store was abandoned (a simulated crash)".into()));
        let guard = inner.append_lock.lock();
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        drop(guard);
        inner.wake_all_waiters();
        self.stop_cleaner();
        if let Some(mut f) = self.flusher.lock().take() {
            f.stop();
        }
        self.stop_allocator();
        inner.gc.close();
        self.lock.lock().take();
    }
}

/// Starts the background flusher for an opened store.
fn start_flusher(inner: &Arc<Inner>) -> Result<Flusher> {
    Flusher::start(inner, Arc::clone(&inner.gc), inner.jobs.tick_every())
        .map_err(|e| Error::io(&inner.dir, e))
}
