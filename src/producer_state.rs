//! Idempotent producers' state on one partition (Kafka's `ProducerStateManager` and
//! `ProducerAppendInfo`), shared by both engines, and the codec of Kafka's producer snapshot.
//! Pure: no I/O. The engines own where the state lives (under their append lock), when
//! snapshots are written and how the state is rebuilt from the log.
//!
//! Snapshot (Kafka's `ProducerSnapshot.json`, version 1, big-endian):
//! ```text
//! version i16 = 1 | crc u32: CRC-32C of every byte from offset 6 | entry count i32 |
//!   count × { producerId i64 | epoch i16 | lastSequence i32 | lastOffset i64 |
//!             offsetDelta i32 | timestamp i64 | coordinatorEpoch i32 |
//!             currentTxnFirstOffset i64 (-1: none) }            (46 bytes each)
//! ```
//! Like Kafka's, a snapshot keeps only the *last* batch of each producer (`offsetDelta` =
//! its last offset minus its base offset): after a reopen, only a retry of a producer's last
//! batch is recognised until it writes again, not one of its 5 last. A producer whose epoch a
//! marker bumped has no batch under its new epoch: its entry has Kafka's `NO_SEQUENCE`
//! (`lastSequence` −1, `lastOffset` −1, `offsetDelta` 0) and the marker's timestamp, so the
//! new epoch (which fences the old one) survives the snapshot.
//!
//! Transactions (Kafka's `ProducerAppendInfo` and `ProducerStateManager.ongoingTxns`): the
//! first transactional batch of a producer since its last marker opens its transaction on the
//! partition; [`ProducerStates::complete_txn`] ends it. The first offsets of open transactions
//! are kept ordered, so the last stable offset is the smallest of them, in O(log n).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use crate::clock::ms_before;
use crate::error::{Error, Result};
use crate::store::{AppendResult, ProducerEntry, ProducerId};

/// Batches of metadata kept per producer (Kafka's `NUM_BATCHES_TO_RETAIN`).
pub(crate) const BATCHES_RETAINED: usize = 5;

/// Bytes of one snapshot entry.
pub(crate) const SNAPSHOT_ENTRY_LEN: usize = 46;
/// Bytes of the snapshot header (version, CRC, entry count).
pub(crate) const SNAPSHOT_HEADER_LEN: usize = 10;
const SNAPSHOT_VERSION: i16 = 1;

/// One batch a producer appended to the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) base_offset: u64,
    pub(crate) last_offset: u64,
    /// Store time of the batch (ms since the epoch).
    pub(crate) timestamp: i64,
}

/// Kafka's `NO_SEQUENCE`: the last sequence of a producer with no batch under its epoch.
pub(crate) const NO_SEQUENCE: i32 = -1;

/// What the partition knows of one producer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    epoch: i16,
    /// Oldest first, at most [`BATCHES_RETAINED`]; empty after a marker bumped the epoch.
    batches: VecDeque<BatchMeta>,
    /// Store time of the producer's last batch or marker: what expiry looks at (a marker
    /// with a new epoch leaves no batch behind, yet the producer is alive).
    last_timestamp: i64,
    /// Whether the producer's batches under this epoch are transactional (a transactional
    /// batch into a run of plain ones is refused, as the trait documents).
    transactional: bool,
    /// Epoch of the coordinator that wrote the producer's last marker here (−1: none).
    coordinator_epoch: i32,
    /// First offset of the producer's open transaction on the partition.
    txn_first_offset: Option<u64>,
}

impl Entry {
    fn new(epoch: i16) -> Self {
        Entry {
            epoch,
            batches: VecDeque::new(),
            last_timestamp: -1,
            transactional: false,
            coordinator_epoch: -1,
            txn_first_offset: None,
        }
    }

    fn last(&self) -> Option<&BatchMeta> {
        self.batches.back()
    }

    fn expired(&self, horizon: i64) -> bool {
        self.txn_first_offset.is_none() && self.last_timestamp < horizon
    }
}

/// An idempotent batch as the engines check it: already [`validate`]d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdempotentBatch {
    pub(crate) producer: ProducerId,
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
}

/// The outcome of checking a batch against the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A new batch: write it, then [`ProducerStates::record`] it.
    Append,
    /// A retry of a batch already written: these are its offsets; write nothing.
    Duplicate(AppendResult),
}

/// One producer as a snapshot holds it (its last batch; `last_seq` = [`NO_SEQUENCE`],
/// `last_offset` = `u64::MAX` (−1 on disk) and `offset_delta` = 0 when it has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotEntry {
    pub(crate) producer_id: i64,
    pub(crate) epoch: i16,
    pub(crate) last_seq: i32,
    pub(crate) last_offset: u64,
    pub(crate) offset_delta: i32,
    pub(crate) timestamp: i64,
    pub(crate) coordinator_epoch: i32,
    pub(crate) txn_first_offset: i64,
}

/// The sequence number after `s` (Kafka wraps from `i32::MAX` to 0).
pub(crate) fn next_sequence(s: i32) -> i32 {
    if s == i32::MAX { 0 } else { s + 1 }
}

/// Checks a caller's idempotent batch of `count` messages and returns it as the engines check
/// it (what both engines' `append_idempotent` start with).
pub(crate) fn checked_batch(
    producer: ProducerId,
    base_sequence: i32,
    count: usize,
) -> Result<IdempotentBatch> {
    Ok(IdempotentBatch {
        producer,
        first_seq: base_sequence,
        last_seq: validate(producer, base_sequence, count)?,
    })
}

/// Checks a caller's idempotent batch and returns its last sequence number: id, epoch and
/// sequence non-negative, at least one message, and a sequence range that does not pass
/// `i32::MAX` (the next batch starts at 0 then).
fn validate(producer: ProducerId, base_sequence: i32, count: usize) -> Result<i32> {
    if producer.id < 0 || producer.epoch < 0 {
        return Err(Error::InvalidArgument(format!(
            "{producer}: producer id and epoch must not be negative"
        )));
    }
    if base_sequence < 0 {
        return Err(Error::InvalidArgument(format!(
            "base sequence {base_sequence} of {producer} must not be negative"
        )));
    }
    if count == 0 {
        return Err(Error::InvalidArgument("empty batch".into()));
    }
    i32::try_from(count - 1)
        .ok()
        .and_then(|d| base_sequence.checked_add(d))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "a batch of {count} messages from sequence {base_sequence} passes i32::MAX; \
                 end the batch at i32::MAX and start the next one at 0"
            ))
        })
}

/// Every idempotent producer of one partition.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProducerStates {
    map: HashMap<i64, Entry>,
    /// Open transactions: first offset → producer id (Kafka's `ongoingTxns`). Always the
    /// `txn_first_offset`s of `map`, so the last stable offset is its first key.
    open: BTreeMap<u64, i64>,
    /// Fences recorded by [`Self::fence_epoch`] (a counter), and how many of them a producer
    /// snapshot is known to hold. The epoch is recorded before its snapshot is written: if
    /// that write fails, a retry of the marker finds nothing newer, and without this it would
    /// be told the fence is durable when it is not.
    fences: u64,
    durable_fences: u64,
}

impl ProducerStates {
    /// Whether no producer is known.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops producers whose last batch or marker is older than `expiration` before `now`.
    /// A producer with an open transaction never expires: nothing else would end it, and the
    /// last stable offset would stay stuck.
    pub(crate) fn expire(&mut self, now: i64, expiration: Duration) {
        let horizon = ms_before(now, expiration);
        self.map.retain(|_, e| !e.expired(horizon));
    }

    /// Checks a batch (already [`validate`]d) against the producer's state: a retry of one of
    /// its retained batches, a fenced epoch, a transaction state that does not fit (a plain
    /// batch while the producer's transaction is open here, or a transactional one into a run
    /// of plain ones under the same epoch: [`Error::InvalidTxnState`]), a gap, or a new batch.
    /// Expired producers are dropped first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check(
        &mut self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        first_seq: i32,
        last_seq: i32,
        transactional: bool,
        now: i64,
        expiration: Duration,
    ) -> Result<Verdict> {
        let horizon = ms_before(now, expiration);
        if self
            .map
            .get(&producer.id)
            .is_some_and(|e| e.expired(horizon))
        {
            self.map.remove(&producer.id);
        }
        let invalid = |reason: &str| Error::InvalidTxnState {
            topic: topic.to_owned(),
            partition,
            producer,
            reason: reason.to_owned(),
        };
        let expected = match self.map.get(&producer.id) {
            None => 0,
            Some(e) if producer.epoch < e.epoch => {
                return Err(Error::ProducerFenced {
                    topic: topic.to_owned(),
                    partition,
                    producer,
                    current_epoch: e.epoch,
                });
            }
            Some(e) => {
                let same_epoch = producer.epoch == e.epoch;
                if same_epoch
                    && let Some(b) = e
                        .batches
                        .iter()
                        .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
                {
                    return Ok(Verdict::Duplicate(AppendResult {
                        base_offset: b.base_offset,
                        last_offset: b.last_offset,
                    }));
                }
                if !transactional && e.txn_first_offset.is_some() {
                    return Err(invalid(
                        "a non-transactional batch while the producer's transaction is open",
                    ));
                }
                if transactional && same_epoch && !e.transactional && e.last().is_some() {
                    return Err(invalid(
                        "a transactional batch after non-transactional ones under the same epoch",
                    ));
                }
                if same_epoch {
                    e.last().map_or(0, |b| next_sequence(b.last_seq))
                } else {
                    0
                }
            }
        };
        if first_seq != expected {
            return Err(Error::OutOfOrderSequence {
                topic: topic.to_owned(),
                partition,
                producer,
                expected,
                got: first_seq,
            });
        }
        Ok(Verdict::Append)
    }

    /// Checks a marker of `producer` against the state: an epoch older than the partition
    /// knows is [`Error::ProducerFenced`]; otherwise whether the producer has a transaction
    /// open here (none: the marker is not written).
    pub(crate) fn check_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
    ) -> Result<bool> {
        match self.map.get(&producer.id) {
            None => Ok(false),
            Some(e) if producer.epoch < e.epoch => Err(Error::ProducerFenced {
                topic: topic.to_owned(),
                partition,
                producer,
                current_epoch: e.epoch,
            }),
            Some(e) => Ok(e.txn_first_offset.is_some()),
        }
    }

    /// A marker of `producer` that ends nothing here (no transaction of it open): its epoch
    /// still fences older ones on this partition, as a written marker's would. Records it
    /// when newer than the partition knows (a producer it does not know counts from epoch 0);
    /// returns whether anything changed (the caller makes that durable with a snapshot).
    /// The new epoch's sequences restart at 0.
    ///
    /// Also true while an earlier fence on this partition is not known to be durable (its
    /// snapshot failed, or is still being written by another caller): the caller must write
    /// a snapshot before it may answer. It reports the snapshot with [`Self::fences_durable`].
    pub(crate) fn fence_epoch(&mut self, producer: ProducerId, timestamp: i64) -> bool {
        let newer = self
            .map
            .get(&producer.id)
            .map_or(producer.epoch > 0, |e| producer.epoch > e.epoch);
        if !newer {
            return self.durable_fences < self.fences;
        }
        self.fences += 1;
        let e = self
            .map
            .entry(producer.id)
            .or_insert_with(|| Entry::new(producer.epoch));
        debug_assert!(e.txn_first_offset.is_none(), "no transaction open");
        e.epoch = producer.epoch;
        e.batches.clear();
        e.transactional = false;
        e.last_timestamp = e.last_timestamp.max(timestamp);
        true
    }

    /// The fence counter to hand to [`Self::fences_durable`], read with the state a snapshot
    /// is sampled from (under the same lock).
    pub(crate) fn fence_generation(&self) -> u64 {
        self.fences
    }

    /// A snapshot sampled when [`Self::fence_generation`] was `generation` is durable: the
    /// fences up to there no longer need one.
    pub(crate) fn fences_durable(&mut self, generation: u64) {
        self.durable_fences = self.durable_fences.max(generation);
    }

    /// Applies a marker of `producer` written at `marker_offset` (by `write_marker`, or found
    /// by a replay of the log), as Kafka's `appendEndTxnMarker`: ends the producer's open
    /// transaction and returns its first offset (`None`: none was open), records the
    /// coordinator epoch and the marker's time, and a newer epoch replaces the producer's
    /// (fencing the older one; its sequences restart at 0). A marker of an older epoch (never
    /// written by a checked `write_marker`) is ignored.
    pub(crate) fn complete_txn(
        &mut self,
        producer: ProducerId,
        marker_offset: u64,
        coordinator_epoch: i32,
        timestamp: i64,
    ) -> Option<u64> {
        let e = self
            .map
            .entry(producer.id)
            .or_insert_with(|| Entry::new(producer.epoch));
        if producer.epoch < e.epoch {
            return None;
        }
        if producer.epoch > e.epoch {
            e.epoch = producer.epoch;
            e.batches.clear();
            e.transactional = false;
        }
        e.coordinator_epoch = coordinator_epoch;
        e.last_timestamp = e.last_timestamp.max(timestamp);
        let first = e.txn_first_offset.take()?;
        debug_assert!(first < marker_offset, "a marker follows its transaction");
        self.open.remove(&first);
        Some(first)
    }

    /// The last stable offset of a partition whose offsets are `[start, end)`: the first
    /// offset of its oldest open transaction, clamped to that range, or `end` with none open.
    pub(crate) fn last_stable(&self, start: u64, end: u64) -> u64 {
        self.open
            .keys()
            .next()
            .map_or(end, |&first| first.clamp(start, end))
    }

    /// The last stable offset recorded with an abort of `producer_id` whose marker is at
    /// `marker_offset` (Kafka's `lastStableOffset(completedTxn)`, written to each `.txnindex`
    /// entry): the first offset of the oldest transaction of another producer still open,
    /// else the offset after the marker.
    pub(crate) fn aborted_lso(&self, producer_id: i64, marker_offset: u64) -> u64 {
        self.open
            .iter()
            .find(|&(_, &id)| id != producer_id)
            .map_or(marker_offset + 1, |(&first, _)| first)
    }

    /// The first offset of `producer_id`'s transaction open on the partition, if one is (one
    /// map lookup: a marker needs it under the append lock).
    pub(crate) fn open_transaction(&self, producer_id: i64) -> Option<u64> {
        self.map.get(&producer_id).and_then(|e| e.txn_first_offset)
    }

    /// Whether any transaction is open on the partition.
    #[cfg(test)]
    pub(crate) fn has_open_txn(&self) -> bool {
        !self.open.is_empty()
    }

    /// Records a batch written (by an append, or found by a replay of the log): a newer epoch
    /// replaces the producer's batches, an older one (never written by a checked append) is
    /// ignored. The first transactional batch since the producer's last marker opens its
    /// transaction at the batch's base offset.
    pub(crate) fn record(&mut self, producer: ProducerId, batch: BatchMeta, transactional: bool) {
        let e = self
            .map
            .entry(producer.id)
            .or_insert_with(|| Entry::new(producer.epoch));
        if producer.epoch < e.epoch {
            return;
        }
        if producer.epoch > e.epoch {
            e.epoch = producer.epoch;
            e.batches.clear();
        }
        if e.batches.len() == BATCHES_RETAINED {
            e.batches.pop_front();
        }
        e.batches.push_back(batch);
        e.last_timestamp = e.last_timestamp.max(batch.timestamp);
        e.transactional = transactional;
        if transactional && e.txn_first_offset.is_none() {
            e.txn_first_offset = Some(batch.base_offset);
            self.open.insert(batch.base_offset, producer.id);
        }
    }

    /// The state as [`LogStore::producer_state`](crate::LogStore::producer_state) shows it,
    /// by producer id, without producers expired at `now`.
    pub(crate) fn entries(&self, now: i64, expiration: Duration) -> Vec<ProducerEntry> {
        let horizon = ms_before(now, expiration);
        let mut v: Vec<ProducerEntry> = self
            .map
            .iter()
            .filter(|(_, e)| !e.expired(horizon))
            .map(|(&id, e)| ProducerEntry {
                producer: ProducerId { id, epoch: e.epoch },
                last_sequence: e.last().map_or(NO_SEQUENCE, |b| b.last_seq),
                // No batch under the epoch: Kafka shows −1; the type is unsigned, so 0.
                last_offset: e.last().map_or(0, |b| b.last_offset),
                last_timestamp: e.last_timestamp,
                batches_retained: e.batches.len(),
                open_transaction: e.txn_first_offset,
                coordinator_epoch: e.coordinator_epoch,
            })
            .collect();
        v.sort_by_key(|e| e.producer.id);
        v
    }

    /// The last offset of each producer's last batch.
    pub(crate) fn last_offsets(&self) -> std::collections::HashSet<u64> {
        self.map
            .values()
            .filter_map(|e| e.last().map(|b| b.last_offset))
            .collect()
    }

    /// Each producer's last batch, by producer id: what a snapshot keeps.
    pub(crate) fn snapshot(&self) -> Vec<SnapshotEntry> {
        let mut v: Vec<SnapshotEntry> = self
            .map
            .iter()
            .map(|(&id, e)| {
                let (last_seq, last_offset, offset_delta) =
                    e.last().map_or((NO_SEQUENCE, u64::MAX, 0), |b| {
                        (
                            b.last_seq,
                            b.last_offset,
                            (b.last_offset - b.base_offset) as i32,
                        )
                    });
                SnapshotEntry {
                    producer_id: id,
                    epoch: e.epoch,
                    last_seq,
                    last_offset,
                    offset_delta,
                    timestamp: e.last_timestamp,
                    coordinator_epoch: e.coordinator_epoch,
                    txn_first_offset: e.txn_first_offset.map_or(-1, |o| o as i64),
                }
            })
            .collect();
        v.sort_by_key(|e| e.producer_id);
        v
    }

    /// The state a snapshot holds (entries already checked by [`decode_snapshot`]).
    pub(crate) fn from_snapshot(entries: &[SnapshotEntry]) -> Self {
        let mut s = ProducerStates::default();
        for e in entries {
            let delta = e.offset_delta.max(0);
            let batches = if e.last_seq == NO_SEQUENCE {
                VecDeque::new()
            } else {
                VecDeque::from([BatchMeta {
                    first_seq: e.last_seq - delta,
                    last_seq: e.last_seq,
                    base_offset: e.last_offset - delta as u64,
                    last_offset: e.last_offset,
                    timestamp: e.timestamp,
                }])
            };
            let txn_first_offset = u64::try_from(e.txn_first_offset).ok();
            if let Some(first) = txn_first_offset {
                s.open.insert(first, e.producer_id);
            }
            s.map.insert(
                e.producer_id,
                Entry {
                    epoch: e.epoch,
                    batches,
                    last_timestamp: e.timestamp,
                    // The snapshot does not say whether the last batch was transactional; a
                    // producer that ever had a marker or has a transaction open is taken as
                    // one (the lenient side: its next transactional batch is accepted).
                    transactional: txn_first_offset.is_some() || e.coordinator_epoch >= 0,
                    coordinator_epoch: e.coordinator_epoch,
                    txn_first_offset,
                },
            );
        }
        s
    }
}

/// Appends the 46-byte entries of `entries` (the body shared by both engines' snapshots).
pub(crate) fn put_entries(out: &mut Vec<u8>, entries: &[SnapshotEntry]) {
    for e in entries {
        out.extend_from_slice(&e.producer_id.to_be_bytes());
        out.extend_from_slice(&e.epoch.to_be_bytes());
        out.extend_from_slice(&e.last_seq.to_be_bytes());
        out.extend_from_slice(&(e.last_offset as i64).to_be_bytes());
        out.extend_from_slice(&e.offset_delta.to_be_bytes());
        out.extend_from_slice(&e.timestamp.to_be_bytes());
        out.extend_from_slice(&e.coordinator_epoch.to_be_bytes());
        out.extend_from_slice(&e.txn_first_offset.to_be_bytes());
    }
}

/// Reads `count` entries from `b` (exactly `count × 46` bytes), checking each one describes a
/// batch that can exist: non-negative id, epoch, offsets and sequences, a delta inside both,
/// or no batch at all (`NO_SEQUENCE`, last offset −1, delta 0, no open transaction); an open
/// transaction starts at or before the last batch.
pub(crate) fn get_entries(b: &[u8], count: usize) -> Result<Vec<SnapshotEntry>, &'static str> {
    if b.len() != count.saturating_mul(SNAPSHOT_ENTRY_LEN) {
        return Err("entry count does not match the length");
    }
    let mut v = Vec::with_capacity(count);
    for c in b.chunks_exact(SNAPSHOT_ENTRY_LEN) {
        let i64_at = |p: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&c[p..p + 8]);
            i64::from_be_bytes(a)
        };
        let i32_at = |p: usize| i32::from_be_bytes([c[p], c[p + 1], c[p + 2], c[p + 3]]);
        let e = SnapshotEntry {
            producer_id: i64_at(0),
            epoch: i16::from_be_bytes([c[8], c[9]]),
            last_seq: i32_at(10),
            last_offset: i64_at(14) as u64,
            offset_delta: i32_at(22),
            timestamp: i64_at(26),
            coordinator_epoch: i32_at(34),
            txn_first_offset: i64_at(38),
        };
        let last_offset = i64_at(14);
        let no_batch = e.last_seq == NO_SEQUENCE
            && last_offset == -1
            && e.offset_delta == 0
            && e.txn_first_offset == -1;
        let batch_ok = e.last_seq >= 0
            && last_offset >= 0
            && e.offset_delta >= 0
            && e.offset_delta <= e.last_seq
            && i64::from(e.offset_delta) <= last_offset
            && e.txn_first_offset >= -1
            && e.txn_first_offset <= last_offset;
        if e.producer_id < 0 || e.epoch < 0 || !(no_batch || batch_ok) {
            return Err("snapshot entry describes an impossible batch");
        }
        v.push(e);
    }
    Ok(v)
}

/// Encodes a Kafka producer snapshot.
pub(crate) fn encode_snapshot(entries: &[SnapshotEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + entries.len() * SNAPSHOT_ENTRY_LEN);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(entries.len() as i32).to_be_bytes());
    put_entries(&mut out, entries);
    let crc = crc32c::crc32c(&out[6..]);
    out[2..6].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes a Kafka producer snapshot; any damage is an error (the caller falls back to an
/// older snapshot or a replay of the log).
pub(crate) fn decode_snapshot(b: &[u8]) -> Result<Vec<SnapshotEntry>, &'static str> {
    if b.len() < SNAPSHOT_HEADER_LEN {
        return Err("snapshot shorter than its header");
    }
    if i16::from_be_bytes([b[0], b[1]]) != SNAPSHOT_VERSION {
        return Err("unsupported snapshot version");
    }
    if crc32c::crc32c(&b[6..]).to_be_bytes() != b[2..6] {
        return Err("snapshot CRC-32C mismatch");
    }
    let count = i32::from_be_bytes([b[6], b[7], b[8], b[9]]);
    let count = usize::try_from(count).map_err(|_| "negative entry count")?;
    get_entries(&b[SNAPSHOT_HEADER_LEN..], count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ProducerId = ProducerId { id: 7, epoch: 1 };

    fn batch(first: i32, last: i32, base: u64) -> BatchMeta {
        BatchMeta {
            first_seq: first,
            last_seq: last,
            base_offset: base,
            last_offset: base + (last - first) as u64,
            timestamp: 1_000,
        }
    }

    #[test]
    fn snapshot_round_trips_and_rejects_damage() {
        let mut s = ProducerStates::default();
        s.record(P, batch(0, 2, 10), false);
        s.record(P, batch(3, 3, 20), false);
        s.record(ProducerId { id: 9, epoch: 0 }, batch(0, 0, 30), false);
        let bytes = encode_snapshot(&s.snapshot());
        assert_eq!(bytes.len(), SNAPSHOT_HEADER_LEN + 2 * SNAPSHOT_ENTRY_LEN);
        let back = ProducerStates::from_snapshot(&decode_snapshot(&bytes).unwrap());
        // Only the last batch survives a snapshot.
        let e = back.entries(1_000, Duration::MAX);
        assert_eq!(
            (e[0].last_sequence, e[0].last_offset, e[0].batches_retained),
            (3, 20, 1)
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode_snapshot(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_snapshot(&[]).is_err());
    }

    /// Kafka wraps sequences from `i32::MAX` to 0: the batch after one ending at `i32::MAX`
    /// starts at 0, and a retry of the batch ending there is still a duplicate. (Through the
    /// store API a producer starts at 0, so this state is reached here directly; both engines
    /// check batches with this same code.)
    #[test]
    fn sequences_wrap_from_i32_max_to_zero() {
        let mut s = ProducerStates::default();
        let end = batch(i32::MAX - 2, i32::MAX, 100);
        s.record(P, end, false);
        let check = |s: &mut ProducerStates, first, last| {
            s.check("t", 0, P, first, last, false, 1_000, Duration::MAX)
        };
        assert_eq!(
            check(&mut s, i32::MAX - 2, i32::MAX).unwrap(),
            Verdict::Duplicate(AppendResult {
                base_offset: 100,
                last_offset: 102
            })
        );
        assert!(matches!(
            check(&mut s, i32::MAX, i32::MAX),
            Err(Error::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(check(&mut s, 0, 4).unwrap(), Verdict::Append);
        s.record(P, batch(0, 4, 103), false);
        assert!(matches!(
            check(&mut s, 6, 6),
            Err(Error::OutOfOrderSequence { expected: 5, .. })
        ));
        // Both batches are retained across the wrap.
        assert!(matches!(
            check(&mut s, i32::MAX - 2, i32::MAX),
            Ok(Verdict::Duplicate(_))
        ));
        assert!(matches!(check(&mut s, 0, 4), Ok(Verdict::Duplicate(_))));
    }

    const FOREVER: Duration = Duration::MAX;

    fn check(
        s: &mut ProducerStates,
        p: ProducerId,
        first: i32,
        last: i32,
        txn: bool,
    ) -> Result<Verdict> {
        s.check("t", 0, p, first, last, txn, 1_000, FOREVER)
    }

    #[test]
    fn a_transactional_batch_opens_a_transaction_that_holds_the_last_stable_offset() {
        let mut s = ProducerStates::default();
        let q = ProducerId { id: 9, epoch: 0 };
        assert_eq!(s.last_stable(0, 10), 10);
        s.record(P, batch(0, 1, 10), true);
        // The transaction's later batches leave its first offset alone.
        s.record(P, batch(2, 2, 14), true);
        s.record(q, batch(0, 0, 12), true);
        assert!(s.has_open_txn());
        assert_eq!(s.last_stable(0, 20), 10);
        // Clamped to the partition's offsets (retention may pass an open transaction).
        assert_eq!(s.last_stable(11, 20), 11);
        assert_eq!(s.last_stable(0, 5), 5);
        let e = s.entries(1_000, FOREVER);
        assert_eq!(e[0].open_transaction, Some(10));
        assert_eq!(e[1].open_transaction, Some(12));
        // What a marker looks up (without listing the producers).
        assert_eq!(s.open_transaction(P.id), Some(10));
        assert_eq!(s.open_transaction(q.id), Some(12));
        assert_eq!(s.open_transaction(77), None);
        // An abort of P records q's open transaction as its LSO; q's abort, the marker's next.
        assert_eq!(s.aborted_lso(P.id, 15), 12);
        assert_eq!(s.complete_txn(P, 15, 3, 1_000), Some(10));
        assert_eq!(s.last_stable(0, 20), 12);
        assert_eq!(s.aborted_lso(q.id, 16), 17);
        assert_eq!(s.complete_txn(q, 16, 3, 1_000), Some(12));
        assert_eq!(s.last_stable(0, 20), 20);
        assert!(!s.has_open_txn());
        let e = s.entries(1_000, FOREVER);
        assert_eq!((e[0].open_transaction, e[0].coordinator_epoch), (None, 3));
    }

    #[test]
    fn transaction_state_mismatches_are_invalid_txn_state() {
        let mut s = ProducerStates::default();
        s.record(P, batch(0, 1, 0), true);
        // A retried transactional batch is a duplicate; a plain one while open is refused.
        assert!(matches!(
            check(&mut s, P, 0, 1, true),
            Ok(Verdict::Duplicate(_))
        ));
        assert!(matches!(
            check(&mut s, P, 2, 2, false),
            Err(Error::InvalidTxnState { .. })
        ));
        assert_eq!(check(&mut s, P, 2, 2, true).unwrap(), Verdict::Append);
        // After the marker a plain batch is accepted, and a transactional one into that run of
        // plain ones is refused until a new epoch.
        s.complete_txn(P, 2, 0, 1_000);
        assert_eq!(check(&mut s, P, 2, 2, false).unwrap(), Verdict::Append);
        s.record(P, batch(2, 2, 3), false);
        assert!(matches!(
            check(&mut s, P, 3, 3, true),
            Err(Error::InvalidTxnState { .. })
        ));
        let next = ProducerId { id: P.id, epoch: 2 };
        assert_eq!(check(&mut s, next, 0, 0, true).unwrap(), Verdict::Append);
    }

    #[test]
    fn markers_are_fenced_by_older_epochs_and_a_newer_epoch_fences_the_old_one() {
        let mut s = ProducerStates::default();
        assert!(!s.check_marker("t", 0, P).unwrap(), "unknown producer");
        s.record(P, batch(0, 4, 0), true);
        assert!(s.check_marker("t", 0, P).unwrap());
        let old = ProducerId { id: P.id, epoch: 0 };
        assert!(matches!(
            s.check_marker("t", 0, old),
            Err(Error::ProducerFenced {
                current_epoch: 1,
                ..
            })
        ));
        // A same-epoch marker keeps the sequence going.
        assert_eq!(s.complete_txn(P, 5, 0, 1_000), Some(0));
        assert!(
            !s.check_marker("t", 0, P).unwrap(),
            "nothing open: no marker"
        );
        assert_eq!(s.complete_txn(P, 6, 0, 1_000), None);
        assert!(matches!(
            check(&mut s, P, 0, 0, true),
            Err(Error::OutOfOrderSequence { expected: 5, .. })
        ));
        s.record(P, batch(5, 5, 6), true);
        // A newer epoch aborts: batches cleared, the old epoch fenced, sequences from 0.
        let newer = ProducerId { id: P.id, epoch: 2 };
        assert_eq!(s.complete_txn(newer, 7, 1, 2_000), Some(6));
        assert!(matches!(
            check(&mut s, P, 6, 6, true),
            Err(Error::ProducerFenced {
                current_epoch: 2,
                ..
            })
        ));
        assert!(matches!(
            check(&mut s, newer, 1, 1, true),
            Err(Error::OutOfOrderSequence { expected: 0, .. })
        ));
        let e = &s.entries(2_000, FOREVER)[0];
        assert_eq!(
            (
                e.producer,
                e.last_sequence,
                e.batches_retained,
                e.last_timestamp
            ),
            (newer, NO_SEQUENCE, 0, 2_000)
        );
        // An older epoch's marker (never written by a checked call) changes nothing.
        assert_eq!(s.complete_txn(P, 8, 9, 3_000), None);
        assert_eq!(s.entries(3_000, FOREVER)[0].coordinator_epoch, 1);
    }

    #[test]
    fn a_producer_with_an_open_transaction_never_expires() {
        let mut s = ProducerStates::default();
        let q = ProducerId { id: 9, epoch: 0 };
        s.record(P, batch(0, 0, 0), true);
        s.record(q, batch(0, 0, 1), false);
        let expiration = Duration::from_millis(10);
        s.expire(1_000_000, expiration);
        assert_eq!(s.entries(1_000_000, expiration).len(), 1);
        assert_eq!(s.last_stable(0, 2), 0);
        // check() drops expired producers first: the open one is kept, with its sequence.
        assert!(matches!(
            s.check("t", 0, P, 5, 5, true, 1_000_000, expiration),
            Err(Error::OutOfOrderSequence { expected: 1, .. })
        ));
        // Once its marker is written it ages from the marker's time.
        s.complete_txn(P, 2, 0, 1_000_000);
        s.expire(1_000_005, expiration);
        assert_eq!(s.entries(1_000_005, expiration).len(), 1);
        s.expire(1_000_011, expiration);
        assert!(s.is_empty());
    }

    #[test]
    fn snapshots_keep_open_transactions_and_producers_without_a_batch() {
        let mut s = ProducerStates::default();
        let q = ProducerId { id: 9, epoch: 0 };
        let r = ProducerId { id: 11, epoch: 3 };
        s.record(P, batch(0, 2, 10), true);
        s.record(q, batch(0, 0, 13), true);
        s.complete_txn(q, 14, 4, 1_500);
        s.record(r, batch(0, 0, 15), true);
        // r's abort under a newer epoch leaves it with no batch.
        s.complete_txn(ProducerId { id: 11, epoch: 4 }, 16, 5, 1_600);
        let entries = s.snapshot();
        let bytes = encode_snapshot(&entries);
        let decoded = decode_snapshot(&bytes).unwrap();
        assert_eq!(decoded, entries);
        assert_eq!(
            (
                decoded[2].last_seq,
                decoded[2].last_offset as i64,
                decoded[2].offset_delta
            ),
            (NO_SEQUENCE, -1, 0)
        );
        let mut back = ProducerStates::from_snapshot(&decoded);
        assert_eq!(back.last_stable(0, 20), 10);
        assert_eq!(
            back.entries(2_000, FOREVER),
            s.entries(2_000, FOREVER)
                .into_iter()
                .map(|mut e| {
                    e.batches_retained = e.batches_retained.min(1);
                    e
                })
                .collect::<Vec<_>>()
        );
        // The restored transactions behave: P's continues, q may open another, r is fenced
        // below epoch 4 and starts again at 0.
        assert_eq!(check(&mut back, P, 3, 3, true).unwrap(), Verdict::Append);
        assert_eq!(check(&mut back, q, 1, 1, true).unwrap(), Verdict::Append);
        assert!(matches!(
            check(&mut back, r, 1, 1, true),
            Err(Error::ProducerFenced { .. })
        ));
        let r4 = ProducerId { id: 11, epoch: 4 };
        assert_eq!(check(&mut back, r4, 0, 0, true).unwrap(), Verdict::Append);
        assert_eq!(back.complete_txn(P, 17, 0, 2_000), Some(10));
        assert_eq!(back.last_stable(0, 20), 20);
    }

    #[test]
    fn snapshot_entries_that_cannot_exist_are_refused() {
        let good = SnapshotEntry {
            producer_id: 1,
            epoch: 0,
            last_seq: 4,
            last_offset: 20,
            offset_delta: 4,
            timestamp: 1,
            coordinator_epoch: -1,
            txn_first_offset: 16,
        };
        let none = SnapshotEntry {
            last_seq: NO_SEQUENCE,
            last_offset: u64::MAX,
            offset_delta: 0,
            txn_first_offset: -1,
            ..good
        };
        for ok in [good, none] {
            assert!(decode_snapshot(&encode_snapshot(&[ok])).is_ok(), "{ok:?}");
        }
        for bad in [
            SnapshotEntry {
                txn_first_offset: 21,
                ..good
            },
            SnapshotEntry {
                txn_first_offset: -2,
                ..good
            },
            SnapshotEntry {
                txn_first_offset: 3,
                ..none
            },
            SnapshotEntry {
                offset_delta: 1,
                ..none
            },
            SnapshotEntry {
                last_offset: 5,
                ..none
            },
            SnapshotEntry {
                last_seq: -2,
                ..none
            },
        ] {
            assert!(
                decode_snapshot(&encode_snapshot(&[bad])).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn validate_refuses_bad_input() {
        assert!(validate(ProducerId { id: -1, epoch: 0 }, 0, 1).is_err());
        assert!(validate(ProducerId { id: 1, epoch: -1 }, 0, 1).is_err());
        assert!(validate(P, -5, 1).is_err());
        assert!(validate(P, 0, 0).is_err());
        assert!(validate(P, i32::MAX, 2).is_err());
        assert_eq!(validate(P, i32::MAX, 1).unwrap(), i32::MAX);
    }
}
