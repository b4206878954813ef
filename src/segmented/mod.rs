//! The Kafka-style engine: one directory per partition, `<topic>-<partition>/`, of segments named
//! by their 20-digit base offset: `.log` (RecordBatch v2, byte for byte), `.index` (sparse
//! offset index) and `.timeindex`. Segments roll by size, age, full index or offset overflow;
//! retention deletes whole segments; the cleaner (`cleaner.rs`) compacts topics whose cleanup
//! policy says so; a bounded cache keeps the number of open files and mappings independent of
//! the number of partitions.
//!
//! Store directory:
//! ```text
//! LOCK, meta                         as for every engine
//! clean-shutdown                     written at clean close, removed at open
//! recovery-point-offset-checkpoint   per partition: offsets below are durable
//! log-start-offset-checkpoint        per partition: raised start offsets
//! cleaner-offset-checkpoint          per partition: the cleaner's clean end
//! txn-index-checkpoint               (topic, partition, base) of each segment with aborts
//! <topic>-<partition>/<20-digit base>.{log,index,timeindex}
//! <topic>-<partition>/<base>.*.{cleaned,swap}   a cleaner swap in progress
//! ```
//! Messages map onto Kafka records: key → key, body → value, tags → header `TAGS`, properties →
//! headers. Batches are written with timestamp type LogAppendTime (the batch's max timestamp is
//! the append time, as on a broker with `message.timestamp.type=LogAppendTime`); each record keeps
//! the producer's timestamp in its delta.
//!
//! This module owns those files and nothing else; it reaches them only through
//! [`FileSystem`](crate::io::FileSystem).

mod append;
pub mod batch;
mod cleaner;
mod early_index;
mod handles;
pub mod index;
mod load;
mod partition;
mod producers;
mod read;
mod retention;
mod segment;
mod txnindex;
mod verify;

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use self::cleaner::{CleanConfig, CleanerThread};
use self::handles::HandleCache;
use self::load::LoadSpec;
use self::partition::{Ctx, Partition};
use crate::catalog::{Catalog, TopicMeta};
use crate::clock::now_ms;
use crate::durability::{
    BackgroundWork, Completion, FlushTarget, Flusher, GroupCommit, PeriodicJobs, SyncGuardFs,
    SyncPool,
};
use crate::error::{Error, Result};
use crate::options::StoreOptions;
use crate::producer_state::IdempotentBatch;
use crate::store::{
    AppendResult, CompactionReport, DiskUsage, EngineKind, Fetch, KeyMatch, LogStore, Message,
    PartitionBounds, ProducerEntry, ProducerId, ReadLimits, Record, TaggedRead, TopicConfig,
    TxnMarker, VerifyReport, delete_before_target, listed_topics, validate_new_topic,
};
use crate::topic_config::Effective;

const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";
const RECOVERY_POINTS_FILE: &str = "recovery-point-offset-checkpoint";
const START_OFFSETS_FILE: &str = "log-start-offset-checkpoint";
const RECOVERY_MAGIC: &[u8; 4] = b"DLRP";
const START_MAGIC: &[u8; 4] = b"DLSO";
const CLEANER_FILE: &str = "cleaner-offset-checkpoint";
const CLEANER_MAGIC: &[u8; 4] = b"DLCO";
/// Which segments have aborts (a `.txnindex`): a reopen rebuilds one found missing, where an
/// absent file would otherwise read as "no abort here" and show aborted records.
const TXN_SEGMENTS_FILE: &str = "txn-index-checkpoint";
const TXN_SEGMENTS_MAGIC: &[u8; 4] = b"DLTX";

struct TopicLog {
    /// Unique in the store, never reused (see `catalog`).
    id: u64,
    config: TopicConfig,
    /// What appends, retention and the cleaner apply (the config over the store's options).
    effective: Effective,
    partitions: Vec<Arc<Partition>>,
}

pub(crate) struct Inner {
    dir: PathBuf,
    ctx: Ctx,
    /// The options the store was opened with (topic configs fall back on them).
    options: StoreOptions,
    topics: Topics,
    /// Serialises topic changes and the catalog writes that commit them.
    admin: Mutex<()>,
    /// Topics whose deletion began but did not finish (kept in the catalog until it does).
    deleting: Mutex<Vec<(String, u32)>>,
    /// The id the next topic created gets (persisted in the catalog).
    next_topic_id: AtomicU64,
    /// (next producer id, end of the block reserved in the catalog).
    producer_ids: Mutex<(i64, i64)>,
    next_uid: AtomicU64,
    /// Appends completed so far (a store-wide sequence for group commit).
    appended: AtomicU64,
    /// Partitions written since their last flush.
    dirty: Mutex<Vec<Arc<Partition>>>,
    /// What one partition's flush has been taking, in ns (a moving average): whether a group
    /// flush is worth helper threads (see `flush_partitions`).
    sync_cost_ns: AtomicU64,
    /// The threads a group flush hands partitions to (see `flush_partitions`).
    sync_pool: SyncPool,
    /// This store, for the sync pool's jobs (set once the store is in its `Arc`).
    me: std::sync::OnceLock<std::sync::Weak<Inner>>,
    gc: Arc<GroupCommit>,
    jobs: PeriodicJobs,
    checkpoint_lock: Mutex<()>,
    /// `txn-index-checkpoint` as the open read it, by partition (taken by each partition's
    /// load), and whether the file may exist (so an empty list removes it).
    txn_segments: Mutex<HashMap<(String, u32), Vec<u64>>>,
    txn_segments_file: AtomicBool,
}

#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static LAST_TOPIC: RefCell<Option<LastTopic>> = const { RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    /// Lookups of a topic by name in the store's map, by this thread (for tests).
    static TOPIC_LOOKUPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The topic map, and a generation that changes with every write to it (taken from one
/// process-wide counter, so no two stores, and no two states of one map, share a value).
struct Topics {
    map: RwLock<HashMap<String, Arc<TopicLog>>>,
    generation: AtomicU64,
}

/// Source of [`Topics::generation`] values.
static TOPICS_GENERATION: AtomicU64 = AtomicU64::new(1);

impl Topics {
    fn new() -> Topics {
        Topics {
            map: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(TOPICS_GENERATION.fetch_add(1, Ordering::Relaxed)),
        }
    }

    fn read(&self) -> parking_lot::RwLockReadGuard<'_, HashMap<String, Arc<TopicLog>>> {
        self.map.read()
    }

    /// The map for a change; the generation moves on when the guard drops, after the change
    /// and before the lock is released.
    fn write(&self) -> TopicsWrite<'_> {
        TopicsWrite {
            map: self.map.write(),
            generation: &self.generation,
        }
    }
}

struct TopicsWrite<'a> {
    map: parking_lot::RwLockWriteGuard<'a, HashMap<String, Arc<TopicLog>>>,
    generation: &'a AtomicU64,
}

impl std::ops::Deref for TopicsWrite<'_> {
    type Target = HashMap<String, Arc<TopicLog>>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl std::ops::DerefMut for TopicsWrite<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Drop for TopicsWrite<'_> {
    fn drop(&mut self) {
        // Runs before the `map` guard is dropped: the new generation is visible no later than
        // the unlocked map, so a lookup cached under the old one is never taken for current.
        self.generation.store(
            TOPICS_GENERATION.fetch_add(1, Ordering::Relaxed),
            Ordering::Release,
        );
    }
}

/// The topic this thread appended to last, with the generation of the topic map it was
/// looked up in: while the map's generation is unchanged, the name still names that topic, so
/// a stream of appends to one topic skips hashing the name and locking the map on each call
/// (about a tenth of a one-message append, profiled). Weak: the cache keeps no topic (and no
/// mapped file) alive after its deletion.
struct LastTopic {
    generation: u64,
    name: String,
    topic: std::sync::Weak<TopicLog>,
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if self.ctx.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn partition(&self, topic: &str, p: u32) -> Result<Arc<Partition>> {
        Ok(self.topic_partition(topic, p)?.1)
    }

    /// [`Self::topic`] through this thread's last-topic cache (the append path).
    fn topic_cached(&self, topic: &str) -> Result<Arc<TopicLog>> {
        let generation = self.topics.generation.load(Ordering::Acquire);
        let hit = LAST_TOPIC.with(|c| {
            let c = c.borrow();
            let last = c.as_ref()?;
            if last.generation != generation || last.name != topic {
                return None;
            }
            last.topic.upgrade()
        });
        if let Some(t) = hit {
            return Ok(t);
        }
        // Looked up after the generation was read: a change in between leaves the cache
        // under the old generation, which no longer matches.
        let t = self.topic(topic)?;
        LAST_TOPIC.with(|c| {
            let mut c = c.borrow_mut();
            match c.as_mut() {
                Some(last) => {
                    last.generation = generation;
                    last.name.clear();
                    last.name.push_str(topic);
                    last.topic = Arc::downgrade(&t);
                }
                None => {
                    *c = Some(LastTopic {
                        generation,
                        name: topic.to_owned(),
                        topic: Arc::downgrade(&t),
                    })
                }
            }
        });
        Ok(t)
    }

    fn topic(&self, topic: &str) -> Result<Arc<TopicLog>> {
        #[cfg(test)]
        TOPIC_LOOKUPS.with(|c| c.set(c.get() + 1));
        self.topics
            .read()
            .get(topic)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(topic.to_owned()))
    }

    fn topic_partition(&self, topic: &str, p: u32) -> Result<(Arc<TopicLog>, Arc<Partition>)> {
        let t = self.topic(topic)?;
        let part =
            t.partitions
                .get(p as usize)
                .cloned()
                .ok_or_else(|| Error::UnknownPartition {
                    topic: topic.to_owned(),
                    partition: p,
                    partitions: t.config.partitions,
                })?;
        Ok((t, part))
    }

    fn all_topics(&self) -> Vec<Arc<TopicLog>> {
        self.topics.read().values().cloned().collect()
    }

    /// The catalog of the topics now open plus the deletions not finished, written atomically.
    fn store_catalog(&self, topics: &HashMap<String, Arc<TopicLog>>) -> Result<()> {
        let mut list: Vec<(String, TopicConfig, TopicMeta)> = topics
            .iter()
            .map(|(n, t)| {
                let meta = TopicMeta { since: 0, id: t.id };
                (n.clone(), t.config.clone(), meta)
            })
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        Catalog {
            engine: EngineKind::Segmented,
            topics: list,
            next_topic_id: self.next_topic_id.load(Ordering::Acquire),
            producer_id_block_end: self.producer_ids.lock().1,
            producer_flag_since: 0,
            deleting: self.deleting.lock().clone(),
        }
        .store(self.ctx.fs.as_ref(), &self.dir)
    }

    /// Removes the directories of topics whose deletion is listed as unfinished, then drops the
    /// listing from the catalog (the caller holds `admin`).
    fn finish_deletions(&self, topics: &HashMap<String, Arc<TopicLog>>) -> Result<()> {
        let pending = self.deleting.lock().clone();
        if pending.is_empty() {
            return Ok(());
        }
        for (name, partitions) in &pending {
            for p in 0..*partitions {
                let dir = self.partition_dir(name, p);
                crate::io::remove_tree(self.ctx.fs.as_ref(), &dir)
                    .map_err(|e| Error::io(&dir, e))?;
            }
        }
        self.ctx
            .fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        // As `delete_topic` does: no recovery point, start offset or clean end of the deleted
        // topics may outlive them (a new topic of the name would open with them), whichever
        // step of the deletion was interrupted.
        self.write_checkpoint()?;
        self.store_offsets(START_OFFSETS_FILE, START_MAGIC, |p| {
            p.start.load(Ordering::Acquire)
        })?;
        self.store_offsets(CLEANER_FILE, CLEANER_MAGIC, |p| {
            p.clean_end.load(Ordering::Acquire)
        })?;
        self.deleting.lock().clear();
        self.store_catalog(topics)
    }

    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics
            .read()
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    fn partition_dir(&self, topic: &str, p: u32) -> PathBuf {
        self.dir.join(format!("{topic}-{p}"))
    }

    fn append_batch(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
        idem: Option<IdempotentBatch>,
        transactional: bool,
    ) -> Result<(AppendResult, u64)> {
        self.check_open()?;
        self.gc.check_writable()?;
        if messages.is_empty() {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        let t = self.topic_cached(topic)?;
        let p = t
            .partitions
            .get(partition as usize)
            .ok_or_else(|| Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: t.config.partitions,
            })?;
        let now = now_ms();
        let producer = idem.map_or(batch::ProducerInfo::NONE, |b| batch::ProducerInfo {
            id: b.producer.id,
            epoch: b.producer.epoch,
            base_sequence: b.first_seq,
        });
        let op = match idem {
            Some(batch) => append::Op::Idempotent {
                batch,
                transactional,
            },
            None => append::Op::Plain,
        };
        let attributes = match transactional {
            true => batch::ATTR_LOG_APPEND_TIME | batch::ATTR_TRANSACTIONAL,
            false => batch::ATTR_LOG_APPEND_TIME,
        };
        let (result, bytes, count) = SCRATCH.with(|s| {
            let buf = &mut s.borrow_mut().buf;
            buf.clear();
            encode(
                buf,
                messages,
                now,
                t.effective.max_message_bytes,
                producer,
                attributes,
            )?;
            let a = p.append(
                &self.ctx,
                buf,
                messages,
                messages.len(),
                now,
                &t.effective,
                op,
            )?;
            // A duplicate wrote nothing; it still goes through the steps below, so its
            // acknowledgement waits for a flush that covers the original batch.
            Ok::<_, Error>(match a.written {
                true => (a.result, buf.len() as u64, messages.len() as u64),
                false => (a.result, 0, 0),
            })
        })?;
        Ok((result, self.appended(p, count, bytes)))
    }

    /// The steps after an append: the partition marked dirty, the append counted (in this
    /// order, for group commit: see `flush_to`), waiters woken. Returns the append's sequence.
    fn appended(&self, p: &Arc<Partition>, count: u64, bytes: u64) -> u64 {
        if !p.dirty.swap(true, Ordering::AcqRel) {
            self.dirty.lock().push(Arc::clone(p));
        }
        let seq = self.appended.fetch_add(1, Ordering::AcqRel) + 1;
        p.signal.notify();
        self.gc.note_appended(count, bytes);
        seq
    }

    /// [`LogStore::write_marker`]: the control batch appended under the partition lock (if
    /// the producer has a transaction open there), then, outside it, the partition's logs
    /// synced (the active segment's and those of rolled segments not sealed yet, so a roll
    /// just before the marker loses nothing) and the abort's transaction index entry synced.
    fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        marker: TxnMarker,
        coordinator_epoch: i32,
    ) -> Result<Option<u64>> {
        self.check_open()?;
        self.gc.check_writable()?;
        let (t, p) = self.topic_partition(topic, partition)?;
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
        let now = now_ms();
        let m = batch::EndTxnMarker {
            marker,
            coordinator_epoch,
        };
        let op = append::Op::Marker {
            producer,
            marker,
            coordinator_epoch,
        };
        let (a, bytes) = SCRATCH.with(|s| {
            let buf = &mut s.borrow_mut().buf;
            buf.clear();
            batch::encode_end_txn_marker(buf, 0, producer.id, producer.epoch, m, now);
            let a = p.append(&self.ctx, buf, &[], 1, now, &t.effective, op)?;
            Ok::<_, Error>((a, buf.len() as u64))
        })?;
        if !a.written {
            // No transaction open: maybe another caller has just written this marker and not
            // synced it yet. `Ok(None)` tells the coordinator the marker is there, so make the
            // log durable up to here first (as a duplicate batch waits for its original).
            if a.fenced {
                // The marker's newer epoch fences the older one here: durable on return,
                // through a producer snapshot at the end (no record), which syncs the log.
                p.start_tracking_producers(&self.ctx)?;
                p.snapshot_producers_durably(&self.ctx)?;
            } else {
                p.flush(&self.ctx)?;
            }
            return Ok(None);
        }
        self.appended(&p, 1, bytes);
        p.flush(&self.ctx)?;
        if let Some(w) = a.txn_index {
            w.file.sync_data().map_err(|e| Error::io(&w.path, e))?;
            if w.created {
                // Through the partition's directory lock: a delete_topic racing this marker
                // removes the directory, which is not a failed sync (that would poison the store).
                p.sync_dir(&self.ctx)?;
            }
        }
        Ok(Some(a.result.base_offset))
    }

    fn store_offsets(
        &self,
        file: &str,
        magic: &[u8; 4],
        f: impl Fn(&Partition) -> u64,
    ) -> Result<()> {
        let mut entries: Vec<(String, u32, u64)> = self
            .all_partitions()
            .iter()
            .map(|p| (p.topic.clone(), p.id, f(p)))
            .collect();
        entries.sort();
        crate::offsets_file::store(self.ctx.fs.as_ref(), &self.dir.join(file), magic, &entries)
    }

    fn write_checkpoint(&self) -> Result<()> {
        let _one = self.checkpoint_lock.lock();
        if let Some(index) = &self.ctx.index {
            let mut ends: Vec<(String, u32, u64)> = self
                .all_partitions()
                .iter()
                .map(|p| (p.topic.clone(), p.id, p.end.load(Ordering::Acquire)))
                .collect();
            ends.sort();
            index.checkpoint(&ends)?;
        }
        self.store_offsets(RECOVERY_POINTS_FILE, RECOVERY_MAGIC, |p| {
            p.durable_end.load(Ordering::Acquire)
        })?;
        self.store_txn_segments()
    }

    /// Writes `txn-index-checkpoint`: the segments that have aborts (removed when none has).
    fn store_txn_segments(&self) -> Result<()> {
        let mut entries: Vec<(String, u32, u64)> = Vec::new();
        for p in self.all_partitions() {
            for base in p.txn_segment_bases() {
                entries.push((p.topic.clone(), p.id, base));
            }
        }
        let path = self.dir.join(TXN_SEGMENTS_FILE);
        let fs = self.ctx.fs.as_ref();
        if entries.is_empty() {
            if self.txn_segments_file.swap(false, Ordering::AcqRel) {
                crate::io::remove_if_exists(fs, &path).map_err(|e| Error::io(&path, e))?;
            }
            return Ok(());
        }
        entries.sort();
        self.txn_segments_file.store(true, Ordering::Release);
        crate::offsets_file::store(fs, &path, TXN_SEGMENTS_MAGIC, &entries)
    }

    fn enforce_retention(&self) -> Result<usize> {
        let now = now_ms();
        let mut n = 0;
        for t in self.all_topics() {
            for p in &t.partitions {
                n += p.enforce_retention(&self.ctx, now, &t.effective)?;
            }
        }
        if n > 0 {
            let _admin = self.admin.lock();
            self.store_offsets(START_OFFSETS_FILE, START_MAGIC, |p| {
                p.start.load(Ordering::Acquire)
            })?;
            drop(_admin);
            self.trim_index()?;
        }
        Ok(n)
    }
}

/// Encodes messages into one RecordBatch (base offset and append time stamped later).
fn encode(
    buf: &mut Vec<u8>,
    messages: &[Message],
    now: i64,
    max_message_bytes: usize,
    producer: batch::ProducerInfo,
    attributes: i16,
) -> Result<()> {
    let base_ts = messages[0].timestamp.unwrap_or(now);
    let start = batch::begin_batch(buf);
    for (i, m) in messages.iter().enumerate() {
        let ts = m.timestamp.unwrap_or(now);
        let tags = m
            .tags
            .as_deref()
            .map(|t| (&b"TAGS"[..], Some(t.as_bytes())));
        let headers = tags.into_iter().chain(
            m.properties
                .iter()
                .map(|(k, v)| (k.as_bytes(), Some(v.as_bytes()))),
        );
        crate::store::validate_properties(m, crate::EngineKind::Segmented)?;
        let before = buf.len();
        batch::put_record_parts(
            buf,
            ts - base_ts,
            i as i32,
            m.key.as_deref(),
            (!m.tombstone).then_some(&m.body[..]),
            headers,
        );
        let len = buf.len() - before;
        if len > max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: len,
                max: max_message_bytes,
            });
        }
    }
    let h = batch::BatchHeader {
        base_offset: 0,
        batch_length: 0,
        partition_leader_epoch: 0,
        magic: batch::MAGIC,
        crc: 0,
        attributes,
        last_offset_delta: messages.len() as i32 - 1,
        base_timestamp: base_ts,
        max_timestamp: now,
        producer_id: producer.id,
        producer_epoch: producer.epoch,
        base_sequence: producer.base_sequence,
        record_count: messages.len() as i32,
    };
    batch::finish_batch(buf, start, &h);
    Ok(())
}

impl FlushTarget for Inner {
    fn written(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    fn flush_to(&self, _upto: u64) -> Result<()> {
        // Every append counted at or below `upto` marked its partition dirty before it was
        // counted, and `upto` was read before this swap, so the swapped-out list covers it.
        let dirty = std::mem::take(&mut *self.dirty.lock());
        for p in &dirty {
            // Cleared before the sync: an append after this point marks it again.
            p.dirty.store(false, Ordering::Release);
        }
        self.flush_partitions(dirty)
    }
}

/// The most partitions one group flush syncs at once: the flushing thread and up to
/// `MAX_CONCURRENT_SYNCS - 1` threads of the store's sync pool (`Inner::sync_pool`, started
/// when a flush first wants them, joined on close), so a store never runs more sync threads
/// than this.
pub(crate) const MAX_CONCURRENT_SYNCS: usize = 16;

/// A partition flush taking less than this on average is not handed to the pool: a helper's
/// wake-up and the flushing thread's wait for it cost context switches a sync that cheap does
/// not repay. (Measured on tmpfs, 64 threads: helpers started per flush cut durable appends from
/// 604 K/s to 82 K/s; the pool on every flush is within the noise of the flushing thread alone,
/// so this estimate now matters little.)
const HELPERS_WORTH_NS: u64 = 50_000;

impl Inner {
    /// Flushes every partition of `parts` and returns the first error once all have been
    /// tried (the error has poisoned the store already, through `SyncGuardFs`; the caller
    /// then advances nothing). When a partition's flush has been taking `HELPERS_WORTH_NS` or
    /// more (`sync_cost_ns`, a moving average this updates), up to [`MAX_CONCURRENT_SYNCS`]
    /// run at once: this thread and the sync pool's. Concurrent syncs because, measured, a
    /// group of 16 dirty partitions synced one after the other cost 16 device flushes in a row,
    /// while ext4 and the block layer serve syncs in flight together.
    fn flush_partitions(&self, parts: Vec<Arc<Partition>>) -> Result<()> {
        let pooled =
            parts.len() > 1 && self.sync_cost_ns.load(Ordering::Relaxed) >= HELPERS_WORTH_NS;
        // The pool's jobs outlive this borrow of `self`, so they hold the store by `Arc`.
        if pooled && let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) {
            let count = parts.len();
            return self.sync_pool.run(
                count,
                Box::new(move |i| match parts.get(i) {
                    Some(p) => me.flush_one(p),
                    None => Ok(()),
                }),
            );
        }
        let mut first_error = None;
        for p in &parts {
            if let Err(e) = self.flush_one(p) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// One partition's flush, timed into `sync_cost_ns`.
    fn flush_one(&self, p: &Partition) -> Result<()> {
        let started = std::time::Instant::now();
        let r = p.flush(&self.ctx).map(|_| ());
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Racing updates may lose one sample: an estimate, not an account.
        let old = self.sync_cost_ns.load(Ordering::Relaxed);
        self.sync_cost_ns
            .store(old - old / 8 + took / 8, Ordering::Relaxed);
        r
    }
}

impl BackgroundWork for Inner {
    fn tick(&self) {
        if self.ctx.closed.load(Ordering::Acquire) {
            return;
        }
        let (cp, ret) = self.jobs.due();
        if ret {
            let _ = self.enforce_retention();
        }
        if cp {
            let _ = self.write_checkpoint();
        }
    }
}

/// An open segmented-engine store.
///
/// ```
/// use duolog::{LogStore, Message, ReadLimits, SegmentedStore, StoreOptions, TopicConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = SegmentedStore::open(dir.path(), StoreOptions::default())?;
/// store.create_topic("orders", TopicConfig::with_partitions(2))?;
/// store.append("orders", 1, &[Message::new("a").with_key("k")])?;
/// assert_eq!(store.read("orders", 1, 0, ReadLimits::default())?[0].key(), Some(&b"k"[..]));
/// # Ok(()) }
/// ```
pub struct SegmentedStore {
    inner: Arc<Inner>,
    flusher: Mutex<Option<Flusher>>,
    cleaner: Mutex<Option<CleanerThread>>,
    lock: Mutex<Option<Box<dyn Any + Send + Sync>>>,
    /// How the store was shut down (`close`'s result, or abandoned): a second `close` reports
    /// it rather than claiming a durability it did not re-check.
    shutdown: Mutex<Option<std::result::Result<(), String>>>,
}

impl fmt::Debug for SegmentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentedStore")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl SegmentedStore {
    /// Opens the segmented store in `dir`, creating it if empty; after an unclean shutdown,
    /// validates every segment from each partition's recovery point on.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let dir = dir.as_ref();
        options.validate(EngineKind::Segmented)?;
        let gc = Arc::new(GroupCommit::new(0, options.flush));
        let fs = SyncGuardFs::wrap(Arc::clone(&options.fs), Arc::clone(&gc));
        let (lock, catalog) =
            crate::catalog::lock_and_load(fs.as_ref(), dir, EngineKind::Segmented)?;
        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        let clean = fs.exists(&marker).map_err(|e| Error::io(&marker, e))?;
        // Damaged checkpoints only mean more recovery work (recovery point 0) or a lower start.
        let recovery: HashMap<(String, u32), u64> =
            crate::offsets_file::load(fs.as_ref(), &dir.join(RECOVERY_POINTS_FILE), RECOVERY_MAGIC)
                .unwrap_or_default()
                .into_iter()
                .map(|(t, p, o)| ((t, p), o))
                .collect();
        let starts: HashMap<(String, u32), u64> =
            crate::offsets_file::load(fs.as_ref(), &dir.join(START_OFFSETS_FILE), START_MAGIC)
                .unwrap_or_default()
                .into_iter()
                .map(|(t, p, o)| ((t, p), o))
                .collect();
        // A damaged cleaner checkpoint only means cleaning from the start again.
        let clean_ends: HashMap<(String, u32), u64> =
            crate::offsets_file::load(fs.as_ref(), &dir.join(CLEANER_FILE), CLEANER_MAGIC)
                .unwrap_or_default()
                .into_iter()
                .map(|(t, p, o)| ((t, p), o))
                .collect();
        // A damaged one only means a missing `.txnindex` goes unnoticed, as before it existed.
        let mut txn_segments: HashMap<(String, u32), Vec<u64>> = HashMap::new();
        for (t, p, base) in crate::offsets_file::load(
            fs.as_ref(),
            &dir.join(TXN_SEGMENTS_FILE),
            TXN_SEGMENTS_MAGIC,
        )
        .unwrap_or_default()
        {
            txn_segments.entry((t, p)).or_default().push(base);
        }
        let inner = Inner {
            dir: dir.to_owned(),
            ctx: Ctx {
                fs: Arc::clone(&fs),
                opts: options.segmented.clone(),
                cache: HandleCache::new(options.max_open_files),
                closed: AtomicBool::new(false),
                index: None,
                producer_expiration: options.producer_id_expiration,
                gc: Arc::clone(&gc),
                warmer: crate::io::Warmer::start("duolog-seg-warm").ok(),
            },
            options: options.clone(),
            topics: Topics::new(),
            admin: Mutex::new(()),
            deleting: Mutex::new(catalog.deleting.clone()),
            next_topic_id: AtomicU64::new(catalog.next_topic_id),
            producer_ids: Mutex::new((
                catalog.producer_id_block_end,
                catalog.producer_id_block_end,
            )),
            next_uid: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            dirty: Mutex::new(Vec::new()),
            sync_cost_ns: AtomicU64::new(0),
            sync_pool: SyncPool::new(MAX_CONCURRENT_SYNCS - 1, "duolog-sync"),
            me: std::sync::OnceLock::new(),
            gc,
            jobs: PeriodicJobs::new(
                options.segmented.checkpoint_interval,
                options.segmented.retention_check_interval,
            ),
            checkpoint_lock: Mutex::new(()),
            txn_segments_file: AtomicBool::new(!txn_segments.is_empty()),
            txn_segments: Mutex::new(txn_segments),
        };
        for (name, config, meta) in &catalog.topics {
            let t = inner.load_topic(name, config, meta.id, |p| {
                let key = (name.clone(), p);
                (
                    clean,
                    recovery.get(&key).copied().unwrap_or(0),
                    starts.get(&key).copied().unwrap_or(0),
                    clean_ends.get(&key).copied().unwrap_or(0),
                )
            })?;
            inner.topics.write().insert(name.clone(), Arc::new(t));
        }
        // An interrupted topic deletion is finished before the store is used (its name is in
        // no loaded topic: a deletion in progress refuses a new topic of that name).
        inner.finish_deletions(&inner.topics.read().clone())?;
        crate::io::remove_if_exists(fs.as_ref(), &marker).map_err(|e| Error::io(&marker, e))?;
        fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut inner = inner;
        let rebuild_index = match options.index.enabled {
            true => {
                let (index, rebuild) =
                    crate::index::KeyIndex::open(Arc::clone(&fs), dir, options.index, clean)?;
                if rebuild {
                    index.clear()?;
                }
                inner.ctx.index = Some(index);
                rebuild
            }
            false => false,
        };
        let inner = Arc::new(inner);
        let _ = inner.me.set(Arc::downgrade(&inner));
        inner.catch_up_index(rebuild_index)?;
        inner.write_checkpoint()?;
        // Start offsets above a partition's recovered end were clamped to it: persist that, so
        // the start never jumps ahead of records appended from here on.
        inner.store_offsets(START_OFFSETS_FILE, START_MAGIC, |p| {
            p.start.load(Ordering::Acquire)
        })?;
        let flusher = Flusher::start(&inner, Arc::clone(&inner.gc), inner.jobs.tick_every())
            .map_err(|e| Error::io(dir, e))?;
        let c = &options.compaction;
        let cleaner = match c.enabled && c.check_interval != Duration::MAX {
            true => Some(
                CleanerThread::start(
                    Arc::downgrade(&inner),
                    c.check_interval,
                    Inner::background_compaction,
                )
                .map_err(|e| Error::io(dir, e))?,
            ),
            false => None,
        };
        Ok(SegmentedStore {
            inner,
            flusher: Mutex::new(Some(flusher)),
            cleaner: Mutex::new(cleaner),
            lock: Mutex::new(Some(lock)),
            shutdown: Mutex::new(None),
        })
    }

    /// Number of segments currently open (files and mappings held).
    pub fn open_segments(&self) -> usize {
        self.inner.ctx.cache.len()
    }

    fn finish(&self, r: AppendResult, seq: u64, wait: bool) -> Result<AppendResult> {
        if wait {
            self.inner.gc.acknowledge(self.inner.as_ref(), seq)?;
        }
        Ok(r)
    }
}

impl Inner {
    fn read_one(&self, p: &Partition, offset: u64) -> Result<Option<Record>> {
        match p.read(&self.ctx, offset, ReadLimits::messages(1)) {
            Ok(mut v) => Ok(v.pop().filter(|r| r.offset() == offset)),
            Err(Error::OffsetOutOfRange { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn catch_up_index(&self, all: bool) -> Result<u64> {
        let Some(index) = &self.ctx.index else {
            return Ok(0);
        };
        let done = if all {
            Default::default()
        } else {
            index.load_checkpoint()
        };
        let mut n = 0;
        for p in self.all_partitions() {
            let (start, end) = (
                p.start.load(Ordering::Acquire),
                p.end.load(Ordering::Acquire),
            );
            let from = done
                .get(&(p.topic.clone(), p.id))
                .copied()
                .unwrap_or(0)
                .clamp(start, end);
            let read = |o: u64| p.read(&self.ctx, o, ReadLimits::messages(1000));
            n += crate::index::catch_up(index, &p.topic, p.id, from, end, &read)?;
        }
        index.complete();
        Ok(n)
    }

    /// What a pass over a partition of `t` applies.
    fn clean_config(&self, t: &TopicLog, min_dirty_ratio: Option<f64>) -> CleanConfig {
        let c = &self.options.compaction;
        CleanConfig {
            segment_bytes: t.effective.segment_bytes,
            min_compaction_lag: t.effective.min_compaction_lag,
            delete_retention: t.effective.delete_retention,
            offset_map_bytes: c.offset_map_bytes,
            io_bytes_per_sec: c.io_bytes_per_sec,
            min_dirty_ratio,
        }
    }

    /// Cleans the partitions of compacting topics (all, or `topic`'s): every one with anything
    /// dirty, or in the background (`background`) those whose dirty ratio reaches
    /// `min_cleanable_dirty_ratio`, dirtiest first (Kafka's choice of the log to clean). The
    /// clean ends are persisted once the passes are done.
    fn compact(&self, topic: Option<&str>, background: bool) -> Result<CompactionReport> {
        let now = now_ms();
        let ratio = background.then_some(self.options.compaction.min_cleanable_dirty_ratio);
        let topics: Vec<(String, Arc<TopicLog>)> = self
            .topics
            .read()
            .iter()
            .filter(|(n, t)| t.effective.policy.compacts() && topic.is_none_or(|x| x == *n))
            .map(|(n, t)| (n.clone(), Arc::clone(t)))
            .collect();
        let mut work: Vec<(f64, Arc<Partition>, CleanConfig)> = Vec::new();
        for (_, t) in &topics {
            let cfg = self.clean_config(t, ratio);
            for p in &t.partitions {
                let dirty = if background {
                    p.dirty_ratio(&cfg, now)
                } else {
                    0.0
                };
                work.push((dirty, Arc::clone(p), cfg.clone()));
            }
        }
        work.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut report = CompactionReport::default();
        let mut result = Ok(());
        for (_, p, cfg) in &work {
            match p.clean(&self.ctx, cfg, now) {
                Ok(Some(pass)) => report.add(&CompactionReport {
                    partitions_cleaned: 1,
                    records_removed: pass.records_removed,
                    tombstones_removed: pass.tombstones_removed,
                    bytes_before: pass.bytes_before,
                    bytes_after: pass.bytes_after,
                }),
                Ok(None) => {}
                // Its topic was deleted during the pass: nothing of it is left to clean.
                Err(Error::UnknownTopic(_)) if p.deleted.load(Ordering::Acquire) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if report.partitions_cleaned > 0 {
            self.store_clean_ends()?;
        }
        result.map(|()| report)
    }

    /// Writes `cleaner-offset-checkpoint`: each partition's clean end.
    fn store_clean_ends(&self) -> Result<()> {
        let _admin = self.admin.lock();
        self.store_offsets(CLEANER_FILE, CLEANER_MAGIC, |p| {
            p.clean_end.load(Ordering::Acquire)
        })
    }

    /// The background cleaner's pass; errors end it, and the next pass tries again.
    fn background_compaction(&self) {
        if self.ctx.closed.load(Ordering::Acquire) {
            return;
        }
        let _ = self.compact(None, true);
    }

    fn trim_index(&self) -> Result<()> {
        let Some(index) = &self.ctx.index else {
            return Ok(());
        };
        let mut oldest: Option<i64> = None;
        for p in self.all_partitions() {
            // The first record at or after the start (compaction may have removed the one at
            // the start itself).
            let first = match p.read(
                &self.ctx,
                p.start.load(Ordering::Acquire),
                ReadLimits::messages(1),
            ) {
                Ok(mut v) => v.pop(),
                Err(Error::OffsetOutOfRange { .. }) => None,
                Err(e) => return Err(e),
            };
            if let Some(r) = first {
                oldest = Some(oldest.map_or(r.store_timestamp(), |o| o.min(r.store_timestamp())));
            }
        }
        if let Some(oldest) = oldest {
            index.remove_older_than(oldest)?;
        }
        Ok(())
    }

    /// Loads (or creates) partitions `first..config.partitions` of a topic.
    fn load_partitions(
        &self,
        name: &str,
        config: &TopicConfig,
        first: u32,
        spec: impl Fn(u32) -> (bool, u64, u64, u64),
    ) -> Result<Vec<Arc<Partition>>> {
        // The partition directories first, all at once: one fsync of the store directory for
        // a new topic instead of one per partition (none for an existing one).
        let dirs: Vec<PathBuf> = (first..config.partitions)
            .map(|p| self.partition_dir(name, p))
            .collect();
        crate::io::create_dirs_durable(self.ctx.fs.as_ref(), &dirs)
            .map_err(|e| Error::io(&self.dir, e))?;
        let mut partitions = Vec::with_capacity(dirs.len());
        for p in first..config.partitions {
            let (clean, recovery_point, log_start, clean_end) = spec(p);
            let txn_segments = self
                .txn_segments
                .lock()
                .remove(&(name.to_owned(), p))
                .unwrap_or_default();
            let part = load::load(
                &self.ctx,
                LoadSpec {
                    uid: self.next_uid.fetch_add(1, Ordering::Relaxed),
                    topic: name,
                    id: p,
                    dir: self.partition_dir(name, p),
                    clean,
                    recovery_point,
                    log_start,
                    clean_end,
                    txn_segments,
                },
            )?;
            partitions.push(Arc::new(part));
        }
        Ok(partitions)
    }

    fn load_topic(
        &self,
        name: &str,
        config: &TopicConfig,
        id: u64,
        spec: impl Fn(u32) -> (bool, u64, u64, u64),
    ) -> Result<TopicLog> {
        Ok(TopicLog {
            id,
            config: config.clone(),
            effective: config.effective(&self.options, EngineKind::Segmented),
            partitions: self.load_partitions(name, config, 0, spec)?,
        })
    }

    fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let _admin = self.admin.lock();
        let t = self.topic(name)?;
        // The commit point: a catalog without the topic, listing it as being deleted.
        self.deleting
            .lock()
            .push((name.to_owned(), t.config.partitions));
        let mut topics = self.topics.read().clone();
        topics.remove(name);
        if let Err(e) = self.store_catalog(&topics) {
            self.deleting.lock().retain(|(n, _)| n != name);
            return Err(e);
        }
        self.topics.write().remove(name);
        self.dirty.lock().retain(|p| p.topic != name);
        for p in &t.partitions {
            p.delete(&self.ctx)?;
        }
        self.ctx
            .fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        // Recovery points and start offsets must not outlive the topic: a new topic of the same
        // name would inherit them.
        self.write_checkpoint()?;
        self.store_offsets(START_OFFSETS_FILE, START_MAGIC, |p| {
            p.start.load(Ordering::Acquire)
        })?;
        // A clean end must not outlive its topic either: a new topic of the same name would
        // take its records below it for cleaned, and drop expired tombstones there without the
        // older values they delete.
        self.store_offsets(CLEANER_FILE, CLEANER_MAGIC, |p| {
            p.clean_end.load(Ordering::Acquire)
        })?;
        self.deleting.lock().retain(|(n, _)| n != name);
        self.store_catalog(&topics)
    }
}

impl Drop for SegmentedStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl LogStore for SegmentedStore {
    fn engine(&self) -> EngineKind {
        EngineKind::Segmented
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
        // Leftover directories of a topic whose catalog entry never became durable are reused.
        // Never reused, even when the catalog write below fails.
        let id = inner.next_topic_id.fetch_add(1, Ordering::AcqRel);
        let t = Arc::new(inner.load_topic(name, &config, id, |_| (false, 0, 0, 0))?);
        let mut topics = inner.topics.read().clone();
        topics.insert(name.to_owned(), Arc::clone(&t));
        inner.store_catalog(&topics)?;
        inner.topics.write().insert(name.to_owned(), t);
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
        let altered = Arc::new(TopicLog {
            id: t.id,
            effective: config.effective(&inner.options, EngineKind::Segmented),
            config,
            partitions: t.partitions.clone(),
        });
        let mut topics = inner.topics.read().clone();
        topics.insert(name.to_owned(), Arc::clone(&altered));
        inner.store_catalog(&topics)?;
        inner.topics.write().insert(name.to_owned(), altered);
        Ok(())
    }

    fn add_partitions(&self, name: &str, count: u32) -> Result<u32> {
        let inner = &self.inner;
        inner.check_open()?;
        let _admin = inner.admin.lock();
        let t = inner.topic(name)?;
        let config = crate::store::grown_config(name, &t.config, count)?;
        // The new partitions' directories exist (and are empty: nothing can append to them
        // before the catalog names them) before the catalog commits them.
        let added =
            inner.load_partitions(name, &config, t.config.partitions, |_| (false, 0, 0, 0))?;
        let mut partitions = t.partitions.clone();
        partitions.extend(added);
        let grown = Arc::new(TopicLog {
            id: t.id,
            effective: t.effective.clone(),
            config,
            partitions,
        });
        let mut topics = inner.topics.read().clone();
        topics.insert(name.to_owned(), Arc::clone(&grown));
        inner.store_catalog(&topics)?;
        inner
            .topics
            .write()
            .insert(name.to_owned(), Arc::clone(&grown));
        Ok(grown.config.partitions)
    }

    fn delete_topic(&self, name: &str) -> Result<()> {
        self.inner.delete_topic(name)
    }

    fn list_topics(&self, include_internal: bool) -> Vec<String> {
        listed_topics(self.inner.topics.read().keys(), include_internal)
    }

    fn append(&self, topic: &str, partition: u32, messages: &[Message]) -> Result<AppendResult> {
        let (r, seq) = self
            .inner
            .append_batch(topic, partition, messages, None, false)?;
        self.finish(r, seq, true)
    }

    fn append_oneway(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> Result<AppendResult> {
        let (r, seq) = self
            .inner
            .append_batch(topic, partition, messages, None, false)?;
        self.finish(r, seq, false)
    }

    fn append_async(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> Result<Completion> {
        let (r, seq) = self
            .inner
            .append_batch(topic, partition, messages, None, false)?;
        Ok(Completion::new(r, seq, Arc::clone(&self.inner.gc)))
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Vec<Record>> {
        self.inner.check_open()?;
        self.inner
            .partition(topic, partition)?
            .read(&self.inner.ctx, offset, limits)
    }

    fn allocate_producer_id(&self) -> Result<i64> {
        let inner = &self.inner;
        inner.check_open()?;
        let _admin = inner.admin.lock();
        crate::catalog::allocate_producer_id(&inner.producer_ids, || {
            inner.store_catalog(&inner.topics.read().clone())
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
        let (r, seq) = self
            .inner
            .append_batch(topic, partition, messages, Some(idem), false)?;
        self.finish(r, seq, true)
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
        let (r, seq) = self
            .inner
            .append_batch(topic, partition, messages, Some(idem), true)?;
        self.finish(r, seq, true)
    }

    fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        marker: TxnMarker,
        coordinator_epoch: i32,
    ) -> Result<Option<u64>> {
        self.inner
            .write_marker(topic, partition, producer, marker, coordinator_epoch)
    }

    fn fetch(&self, topic: &str, partition: u32, offset: u64, limits: ReadLimits) -> Result<Fetch> {
        self.inner.check_open()?;
        self.inner
            .partition(topic, partition)?
            .fetch(&self.inner.ctx, offset, limits)
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
            .partition(topic, partition)?
            .read_with(&self.inner.ctx, offset, limits, visit)
    }

    fn producer_state(&self, topic: &str, partition: u32) -> Result<Vec<ProducerEntry>> {
        self.inner.check_open()?;
        let p = self.inner.partition(topic, partition)?;
        let st = p.state.lock();
        Ok(st
            .producers
            .entries(now_ms(), self.inner.ctx.producer_expiration))
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
            .partition(topic, partition)?
            .read_tagged(&self.inner.ctx, offset, limits, tags)
    }

    fn bounds(&self, topic: &str, partition: u32) -> Result<PartitionBounds> {
        self.inner.check_open()?;
        let p = self.inner.partition(topic, partition)?;
        let (start, end, last_stable) = p.stable_bounds();
        Ok(PartitionBounds {
            start,
            end,
            durable_end: p.durable_end.load(Ordering::Acquire).min(end),
            last_stable,
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
        let p = self.inner.partition(topic, partition)?;
        let deadline = crate::clock::deadline(timeout);
        let ready = p.signal.wait_until(deadline, || {
            p.end.load(Ordering::Acquire) > offset || self.inner.ctx.closed.load(Ordering::Acquire)
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
        let parts = positions
            .iter()
            .map(|&(t, p, offset)| Ok((self.inner.partition(t, p)?, offset)))
            .collect::<Result<Vec<_>>>()?;
        let signals: Vec<&crate::durability::DataSignal> =
            parts.iter().map(|(p, _)| &p.signal).collect();
        let deadline = crate::clock::deadline(timeout);
        let ready = crate::durability::wait_any(&signals, wakeup, deadline, || {
            self.inner.ctx.closed.load(Ordering::Acquire)
                || parts
                    .iter()
                    .any(|(p, offset)| p.end.load(Ordering::Acquire) > *offset)
        });
        self.inner.check_open()?;
        Ok(ready)
    }

    fn delete_before(&self, topic: &str, partition: u32, offset: u64) -> Result<u64> {
        let inner = &self.inner;
        inner.check_open()?;
        let p = inner.partition(topic, partition)?;
        let _admin = inner.admin.lock();
        let start = p.start.load(Ordering::Acquire);
        let end = p.end.load(Ordering::Acquire);
        let Some(offset) = delete_before_target(topic, partition, offset, start, end)? else {
            return Ok(start);
        };
        p.start.store(offset, Ordering::Release);
        // Persisted before any file goes, so a crash never lowers the start below missing data.
        inner.store_offsets(START_OFFSETS_FILE, START_MAGIC, |p| {
            p.start.load(Ordering::Acquire)
        })?;
        p.delete_below_start(&inner.ctx)?;
        drop(_admin);
        inner.trim_index()?;
        Ok(offset)
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
        if !inner.topics.read().contains_key(topic) {
            return Err(Error::UnknownTopic(topic.to_owned()));
        }
        let index = crate::index::required(&inner.ctx.index)?;
        let read = |p: u32, o: u64| match inner.partition(topic, p) {
            Ok(part) => inner.read_one(&part, o),
            Err(_) => Ok(None),
        };
        crate::index::find(index, topic, key, time_range, limit, &read)
    }

    fn offset_for_time(&self, topic: &str, partition: u32, timestamp: i64) -> Result<Option<u64>> {
        self.inner.check_open()?;
        self.inner
            .partition(topic, partition)?
            .offset_for_time(&self.inner.ctx, timestamp)
    }

    fn reindex(&self) -> Result<u64> {
        let inner = &self.inner;
        inner.check_open()?;
        let Some(index) = &inner.ctx.index else {
            return Ok(0);
        };
        index.clear()?;
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
        if let Some(t) = topic {
            self.inner.topic(t)?;
        }
        self.inner.compact(topic, false)
    }

    fn partition_bytes(&self, topic: &str, partition: u32) -> Result<u64> {
        self.inner.check_open()?;
        Ok(self.inner.partition(topic, partition)?.log_bytes())
    }

    fn disk_usage(&self) -> Result<DiskUsage> {
        self.inner.check_open()?;
        let mut u = DiskUsage::default();
        for p in self.inner.all_partitions() {
            let (f, b) = p.usage(&self.inner.ctx);
            u.files += f;
            u.bytes += b;
        }
        if let Some(index) = &self.inner.ctx.index {
            u.files += index.file_count() as u64;
            u.bytes += index.bytes();
        }
        Ok(u)
    }

    fn verify(&self) -> Result<VerifyReport> {
        self.inner.check_open()?;
        let mut report = VerifyReport::default();
        for p in self.inner.all_partitions() {
            let (batches, entries) = p.verify(&self.inner.ctx, &mut report.problems)?;
            report.records_checked += batches;
            report.derived_checked += entries;
            if let Some(index) = &self.inner.ctx.index {
                let (start, end) = (
                    p.start.load(Ordering::Acquire),
                    p.end.load(Ordering::Acquire),
                );
                let read = |o: u64| p.read(&self.inner.ctx, o, ReadLimits::messages(1000));
                report.derived_checked += crate::index::verify_partition(
                    index,
                    &p.topic,
                    p.id,
                    start,
                    end,
                    &read,
                    &mut report.problems,
                )?;
            }
        }
        Ok(report)
    }

    fn close(&self) -> Result<()> {
        let inner = &self.inner;
        let mut shutdown = self.shutdown.lock();
        if let Some(outcome) = &*shutdown {
            return crate::store::repeated_close(outcome);
        }
        inner.ctx.closed.store(true, Ordering::Release);
        // Appends in flight finish under their partition lock before `Partition::close` takes it.
        for p in inner.all_partitions() {
            p.signal.notify();
        }
        // A cleaning pass in progress sees `closed` and stops before its next swap; one in its
        // swap finishes it. Then nothing renames files behind the close.
        if let Some(mut c) = self.cleaner.lock().take() {
            c.stop();
        }
        for p in inner.all_partitions() {
            drop(p.clean_lock.lock());
        }
        if let Some(mut f) = self.flusher.lock().take() {
            f.stop();
        }
        let result = (|| {
            // Appends that passed their `closed` check finish under their partition lock: take
            // each lock once, so every byte they wrote is in the logs before the syncs below.
            let partitions = inner.all_partitions();
            for p in &partitions {
                drop(p.state.lock());
            }
            // The logs are all the durable state there is: indexes are derived, checked when
            // used and rebuilt when wrong, and sealed segments' indexes are synced by the seal.
            // Every partition with unsynced data is flushed, not only those marked dirty: an
            // append marks its partition after writing, possibly after this point.
            for p in &partitions {
                p.seal_pending(&inner.ctx)?;
                if p.has_unsynced() {
                    p.flush(&inner.ctx)?;
                }
                // The next open trusts the active segment's indexes after a clean shutdown.
                p.sync_active_indexes(&inner.ctx)?;
                // The next open starts from the producer state as it is now.
                p.write_producer_snapshot(&inner.ctx)?;
            }
            inner.gc.sync_all(inner.as_ref())?;
            inner.write_checkpoint()?;
            inner.store_offsets(START_OFFSETS_FILE, START_MAGIC, |p| {
                p.start.load(Ordering::Acquire)
            })?;
            let marker = inner.dir.join(CLEAN_SHUTDOWN_FILE);
            inner
                .ctx
                .fs
                .write_file_synced(&marker, b"")
                .map_err(|e| Error::io(&marker, e))?;
            inner
                .ctx
                .fs
                .sync_dir(&inner.dir)
                .map_err(|e| Error::io(&inner.dir, e))
        })();
        inner.gc.close();
        // After the last flush: no sync thread outlives the close.
        inner.sync_pool.stop();
        inner.ctx.cache.clear();
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
        if inner.ctx.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for p in inner.all_partitions() {
            p.signal.notify();
        }
        if let Some(mut c) = self.cleaner.lock().take() {
            c.stop();
        }
        if let Some(mut f) = self.flusher.lock().take() {
            f.stop();
        }
        inner.gc.close();
        inner.sync_pool.stop();
        inner.ctx.cache.clear();
        self.lock.lock().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{CrashMode, SimFs};
    use crate::options::FlushPolicy;
    use crate::store::IsolationLevel;

    /// A keyless append does no key-index work (the index is on by default); a keyed one is
    /// indexed and found by its key.
    #[test]
    fn a_keyless_append_skips_the_key_index_and_a_keyed_one_is_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            engine: Some(EngineKind::Segmented),
            ..StoreOptions::default()
        };
        let store = SegmentedStore::open(dir.path(), opts).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        let before = crate::index::probe::calls();
        for _ in 0..100 {
            store.append("t", 0, &[Message::new("body")]).unwrap();
        }
        assert_eq!(crate::index::probe::calls() - before, 0, "key-index calls");
        let keyed = Message::new("keyed").with_key("k1");
        let at = store.append("t", 0, &[keyed]).unwrap().base_offset;
        assert!(
            crate::index::probe::calls() > before,
            "the keyed append is indexed"
        );
        let found = store.find_by_key("t", "k1", (0, i64::MAX), 10).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].record.offset(), at);
        store.close().unwrap();
    }

    fn segmented_store(dir: &Path) -> SegmentedStore {
        let opts = StoreOptions {
            engine: Some(EngineKind::Segmented),
            ..StoreOptions::default()
        };
        SegmentedStore::open(dir, opts).unwrap()
    }

    fn topic_lookups() -> u64 {
        TOPIC_LOOKUPS.with(std::cell::Cell::get)
    }

    #[test]
    fn a_stream_of_appends_to_one_topic_looks_it_up_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = segmented_store(dir.path());
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        store.append("t", 0, &[Message::new("first")]).unwrap();
        let before = topic_lookups();
        for i in 0..100 {
            store.append("t", i % 2, &[Message::new("body")]).unwrap();
        }
        assert_eq!(topic_lookups() - before, 0, "map lookups for 100 appends");
        store.close().unwrap();
    }

    #[test]
    fn the_cached_topic_follows_alter_delete_recreate_and_another_store() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (segmented_store(da.path()), segmented_store(db.path()));
        for s in [&a, &b] {
            s.create_topic("t", TopicConfig::default()).unwrap();
        }
        // Alternating stores on one thread: each append lands in its own store.
        for _ in 0..3 {
            a.append("t", 0, &[Message::new("a")]).unwrap();
            b.append("t", 0, &[Message::new("b")]).unwrap();
        }
        assert_eq!(
            a.append("t", 0, &[Message::new("a")]).unwrap().base_offset,
            3
        );
        assert_eq!(
            b.append("t", 0, &[Message::new("b")]).unwrap().base_offset,
            3
        );
        // A config change applies to the very next append.
        let mut small = TopicConfig::default();
        small.set("max.message.bytes", "200").unwrap();
        a.alter_topic("t", small).unwrap();
        let too_big = a.append("t", 0, &[Message::new(vec![0u8; 500])]);
        assert!(
            matches!(too_big, Err(Error::MessageTooLarge { .. })),
            "{too_big:?}"
        );
        // A deleted topic is unknown at once; one created again under the name starts empty.
        a.delete_topic("t").unwrap();
        let gone = a.append("t", 0, &[Message::new("a")]);
        assert!(matches!(gone, Err(Error::UnknownTopic(_))), "{gone:?}");
        a.create_topic("t", TopicConfig::default()).unwrap();
        assert_eq!(
            a.append("t", 0, &[Message::new("a")]).unwrap().base_offset,
            0
        );
        assert_eq!(
            b.append("t", 0, &[Message::new("b")]).unwrap().base_offset,
            4
        );
        // A partition the topic does not have is an error, cached or not.
        let bad = b.append("t", 7, &[Message::new("b")]);
        assert!(
            matches!(bad, Err(Error::UnknownPartition { .. })),
            "{bad:?}"
        );
        a.close().unwrap();
        b.close().unwrap();
    }

    /// An abort's `.txnindex` entry is durable before anything can make a reopen trust the
    /// segment past its marker: here another appender's roll (which seals the segment and
    /// writes a producer snapshot past the marker), a flush and a checkpoint run between the
    /// marker's append and `write_marker`'s own syncs, then the power fails. Unless the seal
    /// and the flush sync the index, the reopen trusts the segment (no replay reaches the
    /// marker), its index is gone, and the aborted records read as committed.
    #[test]
    fn a_seal_and_a_flush_after_an_abort_make_its_txn_index_entry_durable() {
        let sim = SimFs::new();
        let mut opts = StoreOptions {
            engine: Some(EngineKind::Segmented),
            fs: Arc::new(sim.clone()),
            ..StoreOptions::default()
        };
        opts.flush = FlushPolicy::Async {
            interval: Duration::from_secs(3600),
        };
        opts.segmented.checkpoint_interval = Duration::from_secs(3600);
        opts.segmented.segment_bytes = 4096;
        opts.index.enabled = false;
        let store = SegmentedStore::open("/s", opts.clone()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        let producer = ProducerId {
            id: store.allocate_producer_id().unwrap(),
            epoch: 0,
        };
        store.append("t", 0, &[Message::new("plain")]).unwrap();
        store
            .append_transactional("t", 0, producer, 0, &[Message::new("aborted")])
            .unwrap();
        let inner = &store.inner;
        let (t, p) = inner.topic_partition("t", 0).unwrap();
        // `write_marker`'s append, without the syncs that follow it there.
        let now = now_ms();
        let mut buf = Vec::new();
        let m = batch::EndTxnMarker {
            marker: TxnMarker::Abort,
            coordinator_epoch: 0,
        };
        batch::encode_end_txn_marker(&mut buf, 0, producer.id, producer.epoch, m, now);
        let op = append::Op::Marker {
            producer,
            marker: TxnMarker::Abort,
            coordinator_epoch: 0,
        };
        let a = p
            .append(&inner.ctx, &mut buf, &[], 1, now, &t.effective, op)
            .unwrap();
        assert!(a.written);
        inner.appended(&p, 1, buf.len() as u64);
        // Another appender rolls the segment (and seals it), another caller flushes, a
        // checkpoint follows; then the power fails.
        store
            .append("t", 0, &[Message::new("x".repeat(5000))])
            .unwrap();
        p.flush(&inner.ctx).unwrap();
        inner.write_checkpoint().unwrap();
        let disk = sim.crash(CrashMode::DropUnsynced, 1);
        store.abandon();
        opts.fs = Arc::new(disk);
        let reopened = SegmentedStore::open("/s", opts).unwrap();
        let limits = ReadLimits::messages(100).with_isolation(IsolationLevel::ReadCommitted);
        let f = reopened.fetch("t", 0, 0, limits).unwrap();
        let bodies: Vec<usize> = f.records.iter().map(|r| r.body().len()).collect();
        assert_eq!(bodies, [5, 5000], "only the plain records");
        reopened.abandon();
    }
}
