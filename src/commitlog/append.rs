//! The append path: encode outside the lock, then stamp and copy inside it.
//!
//! Encoding (properties, CRC of the part that does not change when stamped) runs on the caller's
//! thread into thread-local buffers, so a steady stream of appends allocates nothing. The one
//! append lock covers only what must be serial: assigning queue offsets and the commit-log
//! position, stamping those plus the store time into the header, finishing the whole-record
//! checksum from the precomputed tail, and copying bytes into the mapped files. File creation for
//! a roll happens before anything of the batch is written, so a full disk leaves the log as it was.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::consume_queue::{UNIT_SIZE, Unit};
use super::file_queue::FileQueue;
use super::record::{self, BLANK_LEN, RecordHeader};
use super::{Inner, PartitionState, TopicState};
use crate::error::{Error, Result};
use crate::io::MappedFile;
use crate::producer_state::{BatchMeta, IdempotentBatch, Verdict};
use crate::store::{AppendResult, Message, ProducerId, TxnMarker};

/// How far ahead of the appender the warm-up thread faults in commit-log pages: at 1 GB/s of
/// appends that is 16 ms of head start, refreshed every 8 MiB.
const LOG_WARM_WINDOW: usize = 16 << 20;
/// What the warm-up thread may fault in ahead of all consume queues together: each mapped
/// queue's window is this divided among them, between [`QUEUE_WARM_MIN`] and
/// [`QUEUE_WARM_MAX`]. Every partition has its own queue and a queue's window stays resident
/// while it is mapped, so a fixed 1 MiB window was 1 GiB at 1,024 partitions; one busy partition
/// still gets the full 1 MiB (20 bytes a message: 52,428 messages of head start), so the
/// appender's store into a fresh queue page does not fault at high rates.
const QUEUE_WARM_BUDGET: usize = 16 << 20;
/// The largest window of one queue.
const QUEUE_WARM_MAX: usize = 1 << 20;
/// The smallest: the page after the one being written (asked for again half a window before).
/// Bounds the total at `QUEUE_WARM_MIN × 16 × max_open_files` (64 MiB by default, reached
/// only past 2,048 mapped queues).
const QUEUE_WARM_MIN: usize = 8 << 10;

/// The warm window of one consume queue when `mapped` queues are mapped (page multiples).
pub(crate) fn queue_warm_window(mapped: usize) -> usize {
    crate::io::window_share(QUEUE_WARM_BUDGET, mapped, QUEUE_WARM_MIN, QUEUE_WARM_MAX)
}

struct Item {
    start: usize,
    len: usize,
    tail: Option<crc32fast::Hasher>,
    tag_hash: i64,
}

#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
    props: Vec<u8>,
    items: Vec<Item>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    static LAST_TOPIC: RefCell<Option<LastTopic>> = const { RefCell::new(None) };
}

/// The topic this thread appended to last, so a stream of appends to one topic finds its state
/// without hashing the name into the store's map each call. Weak references: the cache keeps
/// neither the store nor the topic alive (a `Weak` keeps only the allocation, so no other store
/// can take `store`'s address while it is cached and the pointer comparison is exact).
struct LastTopic {
    store: Weak<Inner>,
    topic: Weak<TopicState>,
}

/// Whether a cached topic state is still the one the store's map holds.
fn still_current(t: &TopicState, name: &str) -> bool {
    t.name == name && !t.replaced.load(Ordering::Acquire) && !t.deleted.load(Ordering::Acquire)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What kind of records an append writes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Produce {
    /// Plain records.
    Plain,
    /// An idempotent producer's batch (`append_idempotent`).
    Idempotent(IdempotentBatch),
    /// A batch of a producer's transaction (`append_transactional`): sys flag
    /// `TRANSACTION_PREPARED_TYPE` and the producer properties.
    Transactional(IdempotentBatch),
    /// One end-transaction marker (`write_marker`); its message is the marker's body.
    Marker {
        producer: ProducerId,
        marker: TxnMarker,
        coordinator_epoch: i32,
    },
}

impl Produce {
    fn batch(&self) -> Option<IdempotentBatch> {
        match *self {
            Produce::Idempotent(b) | Produce::Transactional(b) => Some(b),
            _ => None,
        }
    }

    fn sys_flag(&self) -> i32 {
        match self {
            Produce::Plain | Produce::Idempotent(_) => 0,
            Produce::Transactional(_) => record::SYSFLAG_TRANSACTION_PREPARED,
            Produce::Marker {
                marker: TxnMarker::Commit,
                ..
            } => record::SYSFLAG_TRANSACTION_COMMIT,
            Produce::Marker {
                marker: TxnMarker::Abort,
                ..
            } => record::SYSFLAG_TRANSACTION_ROLLBACK,
        }
    }
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Appended {
    /// Wrote the records: their offsets, and the commit-log position after them.
    Written(AppendResult, u64),
    /// A retry of an idempotent batch already written: its offsets, and the published log end.
    Duplicate(AppendResult, u64),
    /// A marker for a producer with no transaction open on the partition: nothing written. The
    /// published log end: the producer's last marker (if another caller just wrote it) ends at
    /// or before it, so a caller waiting for it waits for that marker to be durable.
    /// Nothing written; `true` when the marker's newer epoch was recorded (fencing the older
    /// one here), which the caller makes durable with a producer snapshot.
    NoTransaction(u64, bool),
}

impl Appended {
    /// The offsets and the position to wait for (a marker that wrote nothing is an error).
    pub(crate) fn offsets(self) -> Result<(AppendResult, u64)> {
        match self {
            Appended::Written(r, end) | Appended::Duplicate(r, end) => Ok((r, end)),
            Appended::NoTransaction(..) => Err(Error::InvalidArgument(
                "no transaction open for this marker".into(),
            )),
        }
    }
}

/// Builds the property string of a message: user properties, then TAGS, then the key, then
/// the producer fields of an idempotent batch's record.
fn encode_properties(
    out: &mut Vec<u8>,
    m: &Message,
    producer: Option<super::producers::RecordProducer>,
    marker: Option<ProducerId>,
) -> Result<()> {
    out.clear();
    crate::store::validate_properties(m, crate::EngineKind::CommitLog)?;
    for (name, value) in &m.properties {
        record::put_property(out, name.as_bytes(), value.as_bytes());
    }
    if let Some(tags) = &m.tags {
        record::put_property(out, b"TAGS", tags.as_bytes());
    }
    if m.tombstone {
        record::put_property(out, crate::store::TOMBSTONE_PROPERTY.as_bytes(), b"1");
    }
    if let Some(key) = &m.key {
        if std::str::from_utf8(key).is_ok() && record::is_storable_property_text(key) {
            record::put_property(out, b"__KEY", key);
        } else {
            out.extend_from_slice(b"__KEYHEX\x01");
            for &b in key.iter() {
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            out.push(record::PROPERTY_SEPARATOR);
        }
    }
    if let Some(p) = producer {
        super::producers::put_properties(out, p);
    }
    if let Some(p) = marker {
        super::txn::put_marker_properties(out, p);
    }
    if out.len() + record::CRC_PROPERTY_LEN > i16::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "properties take {} bytes; at most 32,747 fit",
            out.len()
        )));
    }
    Ok(())
}

impl Inner {
    /// [`Inner::topic`] through this thread's one-entry cache (see [`LastTopic`]): a topic
    /// altered, given partitions or deleted since it was cached is looked up again.
    fn topic_cached(&self, name: &str) -> Result<Arc<TopicState>> {
        let Some(me) = self.me.get() else {
            return self.topic(name);
        };
        let hit = LAST_TOPIC.with(|c| {
            let c = c.borrow();
            let last = c.as_ref()?;
            if !Weak::ptr_eq(&last.store, me) {
                return None;
            }
            let t = last.topic.upgrade()?;
            still_current(&t, name).then_some(t)
        });
        if let Some(t) = hit {
            return Ok(t);
        }
        let t = self.topic(name)?;
        LAST_TOPIC.with(|c| {
            *c.borrow_mut() = Some(LastTopic {
                store: me.clone(),
                topic: Arc::downgrade(&t),
            });
        });
        Ok(t)
    }

    /// Asks the allocation thread for what the next appends will need, so the append lock
    /// finds it ready: the next commit-log file once the current one is half written, the
    /// partition's next consume-queue file once its current one is half full, and the next
    /// allocation step of the consume-queue file. Called outside the append lock; a job that
    /// fails leaves the work to the appender (a failed directory sync poisons the store).
    #[allow(clippy::too_many_arguments)]
    fn allocate_ahead(
        &self,
        t: &Arc<TopicState>,
        partition: u32,
        log_file: &Arc<MappedFile>,
        log_end: u64,
        cq: &FileQueue,
        cq_file: &Arc<MappedFile>,
        cq_end: u64,
    ) {
        let Some(me) = self.me.get() else {
            return;
        };
        let queue_window = queue_warm_window(self.queue_cache.mapped());
        let log_pos = (log_end - log_file.start_offset()) as usize;
        if log_file.wants_growth(log_pos) {
            let file = Arc::downgrade(log_file);
            let warm = self.warmer.is_some();
            self.allocator.submit(Box::new(move || {
                // Best effort: the appender grows the file itself if this fails.
                if let Some(f) = file.upgrade()
                    && f.grow_ahead().is_ok()
                    && warm
                {
                    let _ = f.prefault_ahead(LOG_WARM_WINDOW);
                }
            }));
        }
        let half = self.log.file_size() / 2;
        if log_end - log_file.start_offset() >= half
            && let Some(next) = self.log.should_request_after(log_file.start_offset())
        {
            let me = me.clone();
            self.allocator.submit(Box::new(move || {
                let Some(inner) = me.upgrade() else { return };
                if inner.check_open().is_err() {
                    return;
                }
                match inner.log.create_if_missing(inner.fs.as_ref(), next) {
                    // Grown a first step, and its first pages faulted in, here too: a first
                    // store into a fresh page of a new file can wait for a journal commit (tens
                    // of ms), measured at rolls. A failed grow is left to the appender.
                    Ok(f) => {
                        let step = super::file_queue::LOG_GROW_STEP.min(f.len());
                        let grown = f.ensure_allocated(step).is_ok();
                        if grown && inner.warmer.is_some() {
                            let _ = f.prefault_ahead(LOG_WARM_WINDOW);
                        }
                    }
                    Err(e) => {
                        inner.note_poison(e);
                    }
                }
            }));
        }
        let cq_pos = (cq_end - cq_file.start_offset()) as usize;
        if cq_pos >= cq_file.len() / 2
            && let Some(next) = cq.should_request_after(cq_file.start_offset())
        {
            let (me, t) = (me.clone(), Arc::clone(t));
            self.allocator.submit(Box::new(move || {
                let Some(inner) = me.upgrade() else { return };
                let Some(part) = t.partitions.get(partition as usize) else {
                    return;
                };
                if inner.check_open().is_err() {
                    return;
                }
                // Never while a deletion removes queue directories (it would fail, or this
                // job's directory sync would, poisoning the store), nor for a deleted topic.
                // Skipping is harmless: the appender creates the file.
                let Some(_prep) = inner.queue_prep.try_read() else {
                    return;
                };
                if t.deleted.load(Ordering::Acquire) {
                    return;
                }
                let made = part.cq.files().and_then(|fq| {
                    part.cq.ensure_file_for(&fq, next)?;
                    Ok(fq.find(next))
                });
                match made {
                    // As for the log: the appender's first store into the new file must not be
                    // the one that faults its page in.
                    Ok(Some(f)) if inner.warmer.is_some() => {
                        let _ = f.prefault_ahead(queue_window);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        inner.note_poison(e);
                    }
                }
            }));
        }
        if cq_file.wants_growth(cq_pos) {
            let file = Arc::downgrade(cq_file);
            let warm = self.warmer.is_some();
            self.allocator.submit(Box::new(move || {
                // Best effort: the appender grows the file itself if this fails.
                if let Some(f) = file.upgrade()
                    && f.grow_ahead().is_ok()
                    && warm
                {
                    let _ = f.prefault_ahead(queue_window);
                }
            }));
        }
    }

    /// Appends a batch; returns its offsets and the commit-log position after it. With `idem`,
    /// the batch is checked against its producer's state under the append lock: a retry of a
    /// batch already written returns that batch's offsets (and a position past it) and writes
    /// nothing.
    pub(crate) fn append_batch(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
        kind: Produce,
    ) -> Result<Appended> {
        let idem = kind.batch();
        self.check_open()?;
        self.gc.check_writable()?;
        if messages.is_empty() {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        let t = self.topic_cached(topic)?;
        let part = t.partition(partition)?;
        if !matches!(kind, Produce::Plain) && !self.tracks_producers.load(Ordering::Acquire) {
            self.start_tracking_producers()?;
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let Scratch { buf, props, items } = &mut *s;
            buf.clear();
            items.clear();
            // A marker is the engine's own control record: the topic's message size limit is
            // for producers' messages, and a marker refused by it would leave its transaction
            // open forever (only the commit-log file size bounds it).
            let max = match kind {
                Produce::Marker { .. } => self.max_record_len(usize::MAX),
                _ => self.max_record_len(t.effective.max_message_bytes),
            };
            let born_now = crate::clock::now_ms();
            // One clock read per batch: the born time of untimestamped messages and the store time.
            for (i, m) in messages.iter().enumerate() {
                let producer = idem.map(|b| super::producers::RecordProducer {
                    producer: b.producer,
                    // `validate` made sure the batch's range does not pass i32::MAX.
                    sequence: b.first_seq + i as i32,
                    last: i + 1 == messages.len(),
                });
                let marker = match kind {
                    Produce::Marker { producer, .. } => Some(producer),
                    _ => None,
                };
                encode_properties(props, m, producer, marker)?;
                let mut header =
                    RecordHeader::local(partition as i32, m.timestamp.unwrap_or(born_now));
                header.sys_flag = kind.sys_flag()
                    | if producer.is_some() {
                        record::SYSFLAG_PRODUCER_BATCH
                    } else {
                        0
                    };
                let len = record::encoded_len(
                    &header,
                    m.body.len(),
                    topic.len(),
                    props.len() + record::CRC_PROPERTY_LEN,
                );
                if len > max {
                    return Err(Error::MessageTooLarge { size: len, max });
                }
                let start = buf.len();
                record::encode_unsealed(buf, &header, &m.body, topic.as_bytes(), props, true);
                let tail = record::crc_of_stable_tail(&buf[start..]);
                let tag_hash = if matches!(kind, Produce::Marker { .. }) {
                    record::MARKER_TAG_HASH
                } else {
                    m.tags.as_deref().map_or(0, record::tag_hash)
                };
                items.push(Item {
                    start,
                    len,
                    tail,
                    tag_hash,
                });
            }
            let total_bytes = buf.len() as u64;
            let appended = self
                .append_locked(&t, part, partition, buf, items, born_now, messages, kind)
                .map_err(|e| self.note_poison(e))?;
            if !matches!(appended, Appended::Written(..)) {
                return Ok(appended);
            }
            part.signal.notify();
            self.gc.note_appended(items.len() as u64, total_bytes);
            Ok(appended)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn append_locked(
        &self,
        t: &Arc<TopicState>,
        part: &PartitionState,
        partition: u32,
        buf: &mut [u8],
        items: &[Item],
        now: i64,
        messages: &[Message],
        kind: Produce,
    ) -> Result<Appended> {
        let idem = kind.batch();
        let fs = self.fs.as_ref();
        let file_size = self.log.file_size();
        // Before the store-wide lock: make sure the files this batch will most likely need
        // exist — the partition's consume-queue file(s) for its next units, and the next
        // commit-log file if the batch would cross the current one's end. Usually the
        // allocation thread made them already and this only finds them; if it is making one
        // right now (a slow directory fsync), this appender waits for it here, not under the
        // lock every other appender needs. Positions may move before the lock is taken; the
        // planning step under the lock still creates whatever is missing by then, and reports
        // any error (this step is best effort; a failed sync has poisoned the store either way).
        let base = part.next_offset.load(Ordering::Acquire);
        // Never while a deletion removes queue directories, nor for a deleted topic (this
        // step's file creation there would fail the deletion, or fail its own directory sync
        // and poison the store). Skipped, the locked step does it.
        if base + items.len() as u64 > part.queue_ready_until.load(Ordering::Acquire)
            && let Some(_prep) = self.queue_prep.try_read()
            && !t.deleted.load(Ordering::Acquire)
            && let Ok(cq) = part.cq.files()
        {
            let last_byte = (base + items.len() as u64) * UNIT_SIZE - 1;
            let _ = part.cq.ensure_file_for(&cq, base * UNIT_SIZE);
            let _ = part.cq.ensure_file_for(&cq, last_byte);
        }
        {
            let pos = self.written.load(Ordering::Acquire);
            let bytes: u64 = items.iter().map(|i| (i.len + BLANK_LEN) as u64).sum();
            let file_end = pos - pos % file_size + file_size;
            // Only the file after an existing one: the queue of log files stays contiguous.
            if pos + bytes > file_end
                && self.log.find(pos).is_some()
                && self.log.find(file_end).is_none()
            {
                let _ = self.log.create_if_missing(fs, file_end);
            }
        }
        let mut st = self.append_lock.lock();
        self.check_open()?;
        if t.deleted.load(Ordering::Acquire) {
            return Err(Error::UnknownTopic(t.name.clone()));
        }
        if let Some(b) = idem {
            let verdict = part.producers.lock().check(
                &t.name,
                partition,
                b.producer,
                b.first_seq,
                b.last_seq,
                matches!(kind, Produce::Transactional(_)),
                now,
                self.opts.producer_id_expiration,
            )?;
            if let Verdict::Duplicate(original) = verdict {
                // The original's records end at or before the published end: a caller that
                // waits for this position waits for the original to be flushed.
                return Ok(Appended::Duplicate(
                    original,
                    self.written.load(Ordering::Acquire),
                ));
            }
        }
        // A marker ends the producer's open transaction: its first offset and the partition's
        // LSO once it ends go into the marker's fixed-width properties (what a rebuild of the
        // aborted-transaction index reads back).
        let marker = match kind {
            Produce::Marker {
                producer,
                marker,
                coordinator_epoch,
            } => {
                let marker_offset = part.next_offset.load(Ordering::Relaxed);
                let Some(txn) = super::txn::marker_fields(
                    &part.producers.lock(),
                    &t.name,
                    partition,
                    producer,
                    marker_offset,
                )?
                else {
                    let fenced = part.producers.lock().fence_epoch(producer, now);
                    return Ok(Appended::NoTransaction(
                        self.written.load(Ordering::Acquire),
                        fenced,
                    ));
                };
                let item = &items[0];
                super::txn::patch_marker_properties(
                    &mut buf[item.start..item.start + item.len],
                    txn,
                );
                Some((producer, marker, coordinator_epoch, txn))
            }
            _ => None,
        };

        // The file holding the write position (not simply the last file: a batch that failed
        // after its planning step may have left an empty file ahead).
        let pos = self.written.load(Ordering::Acquire);
        let mut file = match &st.current {
            Some(f) if f.start_offset() <= pos && pos < f.start_offset() + file_size => {
                Arc::clone(f)
            }
            _ => match self.log.find(pos) {
                Some(f) => f,
                None => self.log.create_if_missing(fs, pos - pos % file_size)?,
            },
        };
        // The write position in `file`, read once: each file's cursor is a mutex, and this
        // append (under the append lock) is its only writer.
        let mut at = file.write_position();
        // Plan: create every file the batch needs, and grow each far enough for its records
        // and the blank that may close it, before writing any of it.
        let base = part.next_offset.load(Ordering::Relaxed);
        {
            let mut remaining = file.len() - at;
            let mut next_start = file.start_offset() + file_size;
            let mut target = Arc::clone(&file);
            let mut upto = at;
            for item in items {
                if item.len + BLANK_LEN > remaining {
                    self.log.reserve(&target, upto + BLANK_LEN)?;
                    // Usually made ahead by the allocation thread: then only found here.
                    target = self.log.create_if_missing(fs, next_start)?;
                    upto = 0;
                    next_start += file_size;
                    remaining = file_size as usize;
                }
                remaining -= item.len;
                upto += item.len;
            }
            // Usually grown ahead by the allocation thread: then a check of one counter.
            self.log.reserve(&target, upto + BLANK_LEN)?;
        }
        let first_byte = base * UNIT_SIZE;
        let last_byte = (base + items.len() as u64) * UNIT_SIZE - 1;
        // Held to the end of the append: the queue stays mapped (the cache does not evict a
        // queue someone holds) and its watermarks are ours to move.
        let cq = part.cq.files()?;
        // Usually one file holds the batch's units: one walk of the queue's files finds it.
        let mut cq_file = match part.cq.writable_file(&cq, first_byte, last_byte + 1)? {
            Some(f) => {
                let ready = (f.start_offset() + cq.file_size()) / UNIT_SIZE;
                if part.queue_ready_until.load(Ordering::Relaxed) < ready {
                    part.queue_ready_until.store(ready, Ordering::Release);
                }
                f
            }
            None => {
                // The file of the first unit first: with no file yet, the last unit's would be
                // made.
                part.cq.ensure_file_for(&cq, first_byte)?;
                part.cq.ensure_file_for(&cq, last_byte)?;
                if let Some(last) = cq.last() {
                    let ready = (last.start_offset() + cq.file_size()) / UNIT_SIZE;
                    part.queue_ready_until.store(ready, Ordering::Release);
                }
                part.cq.ensure_allocated(&cq, first_byte, last_byte + 1)?;
                part.cq.file_for(&cq, first_byte)?
            }
        };

        // The key index must not be able to fail once the batch is in the log. A batch with
        // no keys does no key-index work at all (no reservation, no call per message).
        let mut keys = match &self.index {
            Some(index) if crate::index::batch_may_have_keys(messages) => {
                Some(index.reserve(crate::index::batch_keys(messages), now)?)
            }
            _ => None,
        };

        // Store times never go backwards, even if the clock does.
        let now = now.max(st.last_store_timestamp);
        st.last_store_timestamp = now;
        let mut offset = base;
        // Files the writer leaves in this batch (rare: a roll), released once the lock is off.
        let mut left: Vec<Arc<MappedFile>> = Vec::new();
        for item in items {
            let remaining = file.len() - at;
            if item.len + BLANK_LEN > remaining {
                if remaining > 0 {
                    file.append(&[&record::encode_blank(remaining)]);
                }
                file.seal();
                file.commit_all();
                left.push(Arc::clone(&file));
                let next = file.start_offset() + file_size;
                file = self.log.find(next).ok_or_else(|| {
                    Error::corrupted(self.log.dir(), next, "planned log file is missing")
                })?;
                at = file.write_position();
            }
            let rec = &mut buf[item.start..item.start + item.len];
            let physical = file.start_offset() + at as u64;
            record::stamp(rec, offset as i64, physical as i64, now, item.tail.as_ref());
            if file.append_at(at, &[rec]).is_none() {
                return Err(Error::corrupted(
                    file.path(),
                    physical,
                    "record does not fit where planned",
                ));
            }
            at += item.len;
            let byte = offset * UNIT_SIZE;
            if byte >= cq_file.start_offset() + cq_file.len() as u64 {
                cq_file.commit_all();
                left.push(Arc::clone(&cq_file));
                cq_file = part.cq.file_for(&cq, byte)?;
            }
            let unit = Unit {
                position: physical,
                size: item.len as u32,
                tag_hash: item.tag_hash,
            };
            part.cq.put_into(&cq_file, offset, &unit)?;
            offset += 1;
        }
        // Keys are indexed before the offsets are published, so an index checkpoint that read
        // a partition's end covers every key below it.
        if let Some(keys) = &mut keys {
            for (i, m) in messages.iter().enumerate() {
                keys.add(&t.name, partition, base + i as u64, now, m)?;
            }
        }
        if let Some(b) = idem {
            part.producers.lock().record(
                b.producer,
                BatchMeta {
                    first_seq: b.first_seq,
                    last_seq: b.last_seq,
                    base_offset: base,
                    last_offset: offset - 1,
                    timestamp: now,
                },
                matches!(kind, Produce::Transactional(_)),
            );
        }
        let mut txn_write_due = false;
        if let Some((producer, marker, coordinator_epoch, txn)) = marker {
            // The aborted-transaction index first: a reader that sees the transaction ended
            // (the LSO past it) finds its entry.
            if marker == TxnMarker::Abort {
                txn_write_due = part.txn_index.lock().push(txn.aborted(producer.id, base));
            }
            part.producers
                .lock()
                .complete_txn(producer, base, coordinator_epoch, now);
        }
        cq_file.commit_all();
        file.commit_all();
        let end = file.start_offset() + at as u64;
        part.next_offset.store(offset, Ordering::Relaxed);
        part.end.store(offset, Ordering::Release);
        self.written.store(end, Ordering::Release);
        // Two reference-count updates saved per append while the file stays the same.
        if !st.current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &file)) {
            st.current = Some(Arc::clone(&file));
        }
        drop(st);
        if txn_write_due && let Some(me) = self.me.get() {
            // The index's unwritten entries go to its file off the append lock, on the
            // allocation thread (see `txn_index::write_out`); a failure leaves them for the
            // checkpoint, which reports it.
            let (me, t) = (me.clone(), Arc::clone(t));
            self.allocator.submit(Box::new(move || {
                let Some(inner) = me.upgrade() else { return };
                if inner.check_open().is_err() {
                    return;
                }
                if let Some(part) = t.partitions.get(partition as usize) {
                    let _ = super::txn_index::write_out(&part.txn_index);
                }
            }));
        }
        self.allocate_ahead(t, partition, &file, end, &cq, &cq_file, offset * UNIT_SIZE);
        // Written pages leave the resident set a fixed distance behind the writer (flushed or
        // not: see `MappedFile::release_written_behind`), so memory does not grow with the data
        // appended. One `madvise` per step written, outside the append lock; no I/O.
        for f in &left {
            f.release_left();
        }
        if file.wants_release() {
            file.release_behind();
        }
        if cq_file.wants_release() {
            cq_file.release_behind();
        }
        if let Some(warmer) = &self.warmer {
            let log_pos = (end - file.start_offset()) as usize;
            if file.wants_prefault(log_pos, LOG_WARM_WINDOW) {
                warmer.request(&file, LOG_WARM_WINDOW);
            }
            let cq_pos = (offset * UNIT_SIZE - cq_file.start_offset()) as usize;
            let window = queue_warm_window(self.queue_cache.mapped());
            if cq_file.wants_prefault(cq_pos, window) {
                warmer.request(&cq_file, window);
            }
        }
        Ok(Appended::Written(
            AppendResult {
                base_offset: base,
                last_offset: offset - 1,
            },
            end,
        ))
    }
}

/// Counts, per thread, the lookups an append makes, so a test can see what one append pays.
#[cfg(test)]
pub(crate) mod probe {
    use std::cell::Cell;
    use std::thread::LocalKey;

    thread_local! {
        /// Lookups of a topic by name in the store's map.
        pub(crate) static TOPIC_LOOKUPS: Cell<u64> = const { Cell::new(0) };
        /// Walks of a consume queue's files to find (or make, or allocate) the one to write.
        pub(crate) static QUEUE_FILE_LOOKUPS: Cell<u64> = const { Cell::new(0) };
    }

    pub(crate) fn count(c: &'static LocalKey<Cell<u64>>) {
        c.with(|c| c.set(c.get() + 1));
    }

    pub(crate) fn get(c: &'static LocalKey<Cell<u64>>) -> u64 {
        c.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LogStore;
    use crate::{CommitLogStore, StoreOptions, TopicConfig};

    /// What an append of one message without keys costs in lookups, counted over `n` appends
    /// after a first one: (topic lookups, queue file lookups, key-index calls).
    fn lookups_per_append(n: u64, m: &Message) -> (u64, u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = CommitLogStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        store.append("t", 1, std::slice::from_ref(m)).unwrap();
        let before = (
            probe::get(&probe::TOPIC_LOOKUPS),
            probe::get(&probe::QUEUE_FILE_LOOKUPS),
            crate::index::probe::calls(),
        );
        for _ in 0..n {
            store
                .append_oneway("t", 1, std::slice::from_ref(m))
                .unwrap();
        }
        let after = (
            probe::get(&probe::TOPIC_LOOKUPS),
            probe::get(&probe::QUEUE_FILE_LOOKUPS),
            crate::index::probe::calls(),
        );
        let r = store.read("t", 1, 0, crate::ReadLimits::default()).unwrap();
        assert_eq!(r.len() as u64, n + 1);
        store.close().unwrap();
        (after.0 - before.0, after.1 - before.1, after.2 - before.2)
    }

    #[test]
    fn a_keyless_one_message_append_finds_its_topic_and_queue_file_once_and_skips_the_key_index() {
        let m = Message::new(b"body".to_vec());
        // The topic comes from this thread's cache (no map lookup); the queue file from one
        // walk of the queue's files per append; the key index is not called at all.
        assert_eq!(
            lookups_per_append(100, &m),
            (0, 100, 0),
            "(topic map lookups, queue file lookups, key-index calls) over 100 appends"
        );
    }

    #[test]
    fn the_cached_topic_follows_other_stores_added_partitions_and_a_recreated_topic() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = CommitLogStore::open(da.path(), StoreOptions::default()).unwrap();
        let b = CommitLogStore::open(db.path(), StoreOptions::default()).unwrap();
        a.create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        b.create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let m = [Message::new(b"m".to_vec())];
        // Same name, other store: each append lands in its own store.
        assert_eq!(a.append("t", 0, &m).unwrap().base_offset, 0);
        assert_eq!(b.append("t", 0, &m).unwrap().base_offset, 0);
        assert_eq!(a.append("t", 0, &m).unwrap().base_offset, 1);
        // Partitions added after the topic was cached are seen by the next append.
        assert!(matches!(
            a.append("t", 1, &m),
            Err(Error::UnknownPartition { .. })
        ));
        a.add_partitions("t", 1).unwrap();
        assert_eq!(a.append("t", 1, &m).unwrap().base_offset, 0);
        // A deleted topic is unknown; one created again under its name starts empty.
        a.delete_topic("t").unwrap();
        assert!(matches!(a.append("t", 0, &m), Err(Error::UnknownTopic(_))));
        a.create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        assert_eq!(a.append("t", 0, &m).unwrap().base_offset, 0);
        assert_eq!(b.append("t", 0, &m).unwrap().base_offset, 1);
        a.close().unwrap();
        b.close().unwrap();
    }

    #[test]
    fn a_keyed_append_still_indexes_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = CommitLogStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let plain = Message::new(b"x".to_vec());
        let keyed = Message::new(b"y".to_vec()).with_key(b"k1".to_vec());
        store
            .append("t", 0, &[plain.clone(), keyed, plain])
            .unwrap();
        let found = store.find_by_key("t", "k1", (0, i64::MAX), 10).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].record.offset(), 1);
        store.close().unwrap();
    }

    #[test]
    fn queue_warm_windows_share_a_budget_between_a_page_pair_and_a_mebibyte() {
        assert_eq!(queue_warm_window(0), QUEUE_WARM_MAX);
        assert_eq!(queue_warm_window(1), QUEUE_WARM_MAX);
        assert_eq!(queue_warm_window(16), QUEUE_WARM_MAX);
        assert_eq!(queue_warm_window(64), 256 << 10);
        assert_eq!(queue_warm_window(1024), 16 << 10);
        assert_eq!(queue_warm_window(10_000), QUEUE_WARM_MIN);
        assert_eq!(queue_warm_window(3000) % 4096, 0);
    }
}
