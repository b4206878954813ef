//! Appends to a partition: stamping the batch, rolling to a new segment, sealing the old one.
//!
//! A roll happens under the partition lock and does only what the next append needs: the new
//! segment's files are created and the old segment stops taking writes. Sealing the old one
//! (fsync of up to a whole segment of log, trimmed copies of its indexes) happens after the lock
//! is released, by the appender that rolled (Kafka flushes rolled segments in the background),
//! so other appenders and the group-commit leader never wait on it. Until it is sealed the old
//! segment is *pending*: `flush` syncs its log as well as the active one's, so a recovery point
//! never claims data that is not durable, and a crash before the seal leaves untrimmed indexes,
//! which the next open recognises (`segment::sealed_indexes`) and rebuilds.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::batch;
use super::partition::{ActiveAppend, Ctx, PartState, Partition, remove_segment_files};
use super::producers;
use super::segment::{self, SegmentHandle, SegmentMeta};
use super::txnindex::{self, AbortedTxn};
use crate::clock::duration_ms;
use crate::error::{Error, Result};
use crate::io::StorageFile;
use crate::producer_state::{BatchMeta, IdempotentBatch, Verdict};
use crate::store::{AppendResult, Message, ProducerId, TxnMarker};
use crate::topic_config::Effective;

/// What a batch is to the partition's producer state.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// A plain batch.
    Plain,
    /// An idempotent batch, transactional or not: checked and recorded.
    Idempotent {
        batch: IdempotentBatch,
        transactional: bool,
    },
    /// An end-transaction marker (a control batch): written only if the producer has a
    /// transaction open here.
    Marker {
        producer: ProducerId,
        marker: TxnMarker,
        coordinator_epoch: i32,
    },
}

/// What an append did.
pub(crate) struct Appended {
    pub(crate) result: AppendResult,
    /// Whether it wrote anything (not for a duplicate, nor for a marker with no open
    /// transaction).
    pub(crate) written: bool,
    /// A marker that wrote nothing recorded its newer epoch (fencing the older one here): the
    /// caller makes that durable with a producer snapshot.
    pub(crate) fenced: bool,
    rolled: bool,
    /// The transaction index an abort wrote to (to sync outside the partition lock).
    pub(crate) txn_index: Option<IndexWrite>,
}

/// A transaction index entry written but not synced yet.
pub(crate) struct IndexWrite {
    pub(crate) file: Box<dyn StorageFile>,
    pub(crate) path: std::path::PathBuf,
    /// The write created the file: its directory entry needs a sync too.
    pub(crate) created: bool,
}

impl Partition {
    /// Appends one encoded batch of `records` records, its CRC valid (base offset and max
    /// timestamp are stamped here; `messages` are those the key index indexes, none for a marker). `op` says
    /// how the producer state checks and records it: a retry of an idempotent batch already
    /// written returns that batch's offsets and writes nothing, as does a marker for a
    /// producer with no transaction open here.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append(
        &self,
        ctx: &Ctx,
        buf: &mut [u8],
        messages: &[Message],
        records: usize,
        now: i64,
        config: &Effective,
        op: Op,
    ) -> Result<Appended> {
        if matches!(op, Op::Idempotent { .. }) && !self.state.lock().has_snapshot {
            self.start_tracking_producers(ctx)?;
        }
        let appended = self.append_locked(ctx, buf, messages, records, now, config, op)?;
        if appended.rolled {
            // The batch is written and published whatever the seal does: a failure leaves the
            // old segment pending (its log is still synced by every flush) and is retried at
            // the next roll or the close; a failed sync has poisoned the store.
            let _ = self.seal_pending(ctx);
        }
        Ok(appended)
    }

    /// The part of an append under the partition lock.
    #[allow(clippy::too_many_arguments)]
    fn append_locked(
        &self,
        ctx: &Ctx,
        buf: &mut [u8],
        messages: &[Message],
        records: usize,
        now: i64,
        config: &Effective,
        op: Op,
    ) -> Result<Appended> {
        let mut st = self.state.lock();
        if ctx.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::UnknownTopic(self.topic.clone()));
        }
        let nothing = |result| Appended {
            result,
            written: false,
            fenced: false,
            rolled: false,
            txn_index: None,
        };
        match op {
            Op::Plain => {}
            Op::Idempotent {
                batch: b,
                transactional,
            } => {
                let verdict = st.producers.check(
                    &self.topic,
                    self.id,
                    b.producer,
                    b.first_seq,
                    b.last_seq,
                    transactional,
                    now,
                    ctx.producer_expiration,
                )?;
                if let Verdict::Duplicate(original) = verdict {
                    return Ok(nothing(original));
                }
            }
            Op::Marker { producer, .. } => {
                if !st.producers.check_marker(&self.topic, self.id, producer)? {
                    let fenced = st.producers.fence_epoch(producer, now);
                    return Ok(Appended {
                        fenced,
                        ..nothing(AppendResult {
                            base_offset: 0,
                            last_offset: 0,
                        })
                    });
                }
            }
        }
        if let Some(a) = &st.active {
            a.prefetch();
        }
        if let Some(m) = st.segments.last() {
            crate::io::prefetch(m as *const SegmentMeta as usize);
        }
        let now = now.max(st.last_timestamp);
        st.last_timestamp = now;
        if st.segments.is_empty() {
            // Files are created on the first append, so idle partitions cost nothing.
            let base = self.end.load(Ordering::Acquire);
            let map_len = segment::log_map_len(config.segment_bytes, buf.len() as u64);
            let h = self.create_segment(ctx, base, map_len)?;
            let mut meta = SegmentMeta::new(base);
            meta.map_len = map_len;
            meta.early = h.early_indexes();
            ctx.cache.insert((self.uid, base), Arc::new(h));
            st.segments.push(meta);
        }
        let handle = self.active_handle(ctx, &mut st)?;
        let active = st
            .segments
            .last()
            .ok_or_else(|| Error::corrupted(&self.dir, 0, "partition has no segment"))?;
        let base_offset = active.next_offset;
        let last_offset = base_offset + records as u64 - 1;
        // Every caller's batch comes from `batch::finish_batch`, its CRC valid: recomputed
        // only if the partition's clock moved the max timestamp.
        batch::restamp_checked(buf, base_offset as i64, now);
        let header =
            batch::parse_header(buf).map_err(|e| Error::InvalidArgument(e.reason().into()))?;
        // The key index must not be able to fail once the batch is in the log. A batch with
        // no keys does no key-index work at all (no reservation, no call per message).
        let mut keys = match &ctx.index {
            Some(index) if crate::index::batch_may_have_keys(messages) => {
                Some(index.reserve(crate::index::batch_keys(messages), now)?)
            }
            _ => None,
        };
        let o = &ctx.opts;
        let (segment_bytes, segment_ms) = (config.segment_bytes, config.segment_ms);
        // One time-index slot stays free for the entry the seal adds.
        let full_index = active.index_entries >= handle.offset_capacity()
            || active.time_entries + 1 >= handle.time_capacity();
        let roll = active.size > 0
            && (active.size + buf.len() as u64 > segment_bytes
                || (active.first_timestamp >= 0
                    && now.saturating_sub(active.first_timestamp) >= duration_ms(segment_ms))
                || full_index
                || last_offset - active.base > u64::from(u32::MAX));
        let (handle, rolled) = if roll {
            (self.roll(ctx, &mut st, handle, base_offset)?, true)
        } else {
            (handle, false)
        };
        let active = st
            .segments
            .last_mut()
            .ok_or_else(|| Error::corrupted(&self.dir, 0, "no segment"))?;
        let handle = if active.size + buf.len() as u64 > handle.log_capacity() {
            // A batch larger than the segment size, or a topic whose segment size grew: the
            // log gets a larger mapping (the old one stays valid for readers holding it).
            let h = self.remap_active(ctx, active, handle, segment_bytes, buf.len() as u64)?;
            st.active = Some(ActiveAppend::new(active.base, &h, active.size));
            h
        } else {
            handle
        };
        let active = st
            .segments
            .last_mut()
            .ok_or_else(|| Error::corrupted(&self.dir, 0, "no segment"))?;
        if active.map_len == 0 {
            active.map_len = handle.log_capacity();
        }
        handle.append(
            ctx.fs.as_ref(),
            active,
            buf,
            &header,
            o.index_interval_bytes,
        )?;
        let size = active.size;
        if let Some(a) = &mut st.active {
            a.pos = size;
        }
        // The active logs share what they keep mapped ahead of and behind their writers.
        let logs = ctx.cache.mapped_len();
        handle.share_release(segment::release_keep(logs));
        match &ctx.warmer {
            Some(warmer) => handle.warm_ahead(warmer, segment::warm_window(logs)),
            // Without a warm-up thread the appender releases the pages behind it itself.
            None => handle.release_behind(),
        }
        // Keys are indexed before the offsets are published (see the index checkpoint).
        if let Some(keys) = &mut keys {
            for (i, m) in messages.iter().enumerate() {
                keys.add(&self.topic, self.id, base_offset + i as u64, now, m)?;
            }
        }
        let mut txn_index = None;
        match op {
            Op::Plain => {}
            Op::Idempotent {
                batch: b,
                transactional,
            } => st.producers.record(
                b.producer,
                BatchMeta {
                    first_seq: b.first_seq,
                    last_seq: b.last_seq,
                    base_offset,
                    last_offset,
                    timestamp: now,
                },
                transactional,
            ),
            Op::Marker {
                producer,
                marker,
                coordinator_epoch,
            } => {
                let last_stable = st.producers.aborted_lso(producer.id, base_offset);
                let first =
                    st.producers
                        .complete_txn(producer, base_offset, coordinator_epoch, now);
                if let (Some(first), TxnMarker::Abort) = (first, marker) {
                    let e = AbortedTxn {
                        producer_id: producer.id,
                        first_offset: first,
                        last_offset: base_offset,
                        last_stable,
                    };
                    txn_index = Some(self.index_abort(ctx, &mut st, &e));
                }
            }
        }
        // Published even if the index failed: the marker is in the log (the store is
        // poisoned then, and the error returned).
        self.end.store(last_offset + 1, Ordering::Release);
        let txn_index = txn_index.transpose()?;
        Ok(Appended {
            result: AppendResult {
                base_offset,
                last_offset,
            },
            written: true,
            fenced: false,
            rolled,
            txn_index,
        })
    }

    /// Adds an abort whose marker was just appended to the active segment's transaction
    /// index (under the partition lock, before the marker's offset is published, so a
    /// `read_committed` reader that sees the marker sees its entry). The marker is in the log
    /// by now: an index that cannot take the entry poisons the store, whose reopen (unclean,
    /// the marker past the recovery point) rebuilds the index from the log.
    fn index_abort(&self, ctx: &Ctx, st: &mut PartState, e: &AbortedTxn) -> Result<IndexWrite> {
        let active = st
            .segments
            .last_mut()
            .ok_or_else(|| Error::corrupted(&self.dir, 0, "no segment"))?;
        match txnindex::append(
            ctx.fs.as_ref(),
            &self.dir,
            active.base,
            active.txn_entries,
            e,
        ) {
            Ok(file) => {
                let created = active.txn_entries == 0;
                active.txn_entries += 1;
                let base = active.base;
                st.txn_unsynced.push((base, created));
                Ok(IndexWrite {
                    file,
                    path: txnindex::path(&self.dir, active.base),
                    created,
                })
            }
            Err(err) => {
                ctx.gc.poison(format!(
                    "the transaction index of {}-{} could not record an abort: {err}",
                    self.topic, self.id
                ));
                Err(err)
            }
        }
    }

    /// Creates the files of a new segment at `base`. Leftovers of an earlier attempt that
    /// failed half-way are removed first (no segment of this partition starts at `base`: it is
    /// the partition's end), and a failed attempt removes what it created, so a failed roll
    /// never wedges the next one.
    fn create_segment(&self, ctx: &Ctx, base: u64, map_len: u64) -> Result<SegmentHandle> {
        let fs = ctx.fs.as_ref();
        remove_segment_files(fs, &self.dir, base)?;
        let handle = SegmentHandle::create(fs, &self.dir, base, ctx.opts.max_index_bytes, map_len)
            .inspect_err(|_| {
                // Best effort: if this fails too, the next attempt starts by removing them.
                let _ = remove_segment_files(fs, &self.dir, base);
            })?;
        // Set once the files exist (not before: a flush syncing the directory in between would
        // clear it without covering them), and before any batch is written to them: the flush
        // that first claims such a batch durable syncs the directory that names its file.
        self.dir_unsynced.store(true, Ordering::Release);
        Ok(handle)
    }

    /// Rolls to a new segment at `base` under the partition lock; the old active segment becomes
    /// pending (sealed later by [`Partition::seal_pending`]). Returns the new segment's handle.
    pub(super) fn roll(
        &self,
        ctx: &Ctx,
        st: &mut PartState,
        old: Arc<SegmentHandle>,
        base: u64,
    ) -> Result<Arc<SegmentHandle>> {
        if let Some(active) = st.segments.last_mut() {
            old.append_final_time_entry(active)?;
        }
        // The new log reserves what the old one did (its topic's segment size), so appends to it
        // need no larger mapping.
        let map_len = match st.segments.last().map_or(0, |m| m.map_len) {
            0 => segment::log_map_len(ctx.opts.segment_bytes, 0),
            n => n,
        };
        let new = self.create_segment(ctx, base, map_len)?;
        // The producer state now covers exactly the offsets below the new segment: Kafka's
        // snapshot at a roll. Copied here (no I/O), written by the seal path.
        if st.has_snapshot {
            st.producers
                .expire(crate::clock::now_ms(), ctx.producer_expiration);
            let entries = st.producers.snapshot();
            st.pending_snapshots.push((base, entries));
        }
        let old_base = st.segments.last().map_or(base, |m| m.base);
        st.pending.push((old_base, old));
        let mut meta = SegmentMeta::new(base);
        meta.map_len = map_len;
        meta.early = new.early_indexes();
        st.segments.push(meta);
        let new = ctx.cache.insert((self.uid, base), Arc::new(new));
        st.active = Some(ActiveAppend::new(base, &new, 0));
        Ok(new)
    }

    /// Maps the active segment's log again with room for `len` more bytes (at least the
    /// topic's `segment_bytes`), under the partition lock, and caches the new handle.
    fn remap_active(
        &self,
        ctx: &Ctx,
        active: &mut SegmentMeta,
        old: Arc<SegmentHandle>,
        segment_bytes: u64,
        len: u64,
    ) -> Result<Arc<SegmentHandle>> {
        let key = (self.uid, active.base);
        ctx.cache.remove(key);
        drop(old);
        active.map_len = segment::log_map_len(segment_bytes, active.size + len);
        let h = SegmentHandle::open(
            ctx.fs.as_ref(),
            &self.dir,
            active,
            ctx.opts.max_index_bytes,
            segment_bytes,
        )?;
        Ok(ctx.cache.insert(key, Arc::new(h)))
    }

    /// Seals every rolled segment still pending: log synced, indexes trimmed (outside the
    /// partition lock; sealers take turns on their own lock). A failure leaves the segment
    /// pending, to be retried by the next roll or the close; a failed sync has poisoned the
    /// store by then.
    pub(crate) fn seal_pending(&self, ctx: &Ctx) -> Result<()> {
        let _one = self.seal_lock.lock();
        loop {
            let next = {
                let mut st = self.state.lock();
                let PartState {
                    segments, pending, ..
                } = &mut *st;
                // Pending segments that retention removed meanwhile need no seal.
                pending.retain(|(base, _)| segments.iter().any(|m| m.base == *base));
                pending.first().and_then(|(base, h)| {
                    segments
                        .iter()
                        .find(|m| m.base == *base)
                        .map(|m| (m.clone(), Arc::clone(h)))
                })
            };
            let Some((meta, handle)) = next else {
                return self.write_pending_snapshots(ctx);
            };
            // A sealed segment is trusted by a reopen, its `.txnindex` with it.
            self.sync_txn_indexes(ctx)?;
            segment::seal(ctx.fs.as_ref(), &self.dir, &handle, &meta)?;
            let mut st = self.state.lock();
            if let Some(m) = st.segments.iter_mut().find(|m| m.base == meta.base) {
                m.sealed = true;
                // The seal wrote the index files.
                m.early = None;
                m.time_entries = segment::sealed_time_entries(
                    &handle.time_entries(),
                    meta.base,
                    meta.max_timestamp,
                    meta.next_offset,
                )
                .len() as u64
                    / super::index::TIME_ENTRY as u64;
            }
            st.pending.retain(|(b, _)| *b != meta.base);
            // The next opener maps the trimmed indexes.
            ctx.cache.remove((self.uid, meta.base));
        }
    }

    /// Writes the producer snapshots taken at rolls whose segments are all sealed (the caller
    /// holds the seal lock and found nothing pending). A snapshot that fails to be written is
    /// dropped: an older one and the log still rebuild the state.
    fn write_pending_snapshots(&self, ctx: &Ctx) -> Result<()> {
        let _writer = self.snapshot_lock.lock();
        let snapshots = {
            let mut st = self.state.lock();
            // Taken only when no segment below them is waiting for its seal.
            if !st.pending.is_empty() {
                return Ok(());
            }
            std::mem::take(&mut st.pending_snapshots)
        };
        if snapshots.is_empty() {
            return Ok(());
        }
        for (offset, entries) in &snapshots {
            producers::write(ctx.fs.as_ref(), &self.dir, *offset, entries)?;
        }
        let bases = self.segment_bases();
        producers::prune(ctx.fs.as_ref(), &self.dir, &bases)
    }
}
