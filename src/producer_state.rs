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
//! batch is recognised until it writes again, not one of its 5 last.

use std::collections::{HashMap, VecDeque};
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

/// What the partition knows of one producer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    epoch: i16,
    /// Oldest first, at most [`BATCHES_RETAINED`].
    batches: VecDeque<BatchMeta>,
    /// Kept for transactions (a later layer), written to snapshots: whether the producer is
    /// transactional, the epoch of the coordinator that last wrote a marker for it, and the
    /// first offset of its open transaction. Unused for now (false, 0 and `None`).
    transactional: bool,
    coordinator_epoch: i32,
    txn_first_offset: Option<u64>,
}

impl Entry {
    fn last(&self) -> Option<&BatchMeta> {
        self.batches.back()
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

/// One producer as a snapshot holds it (its last batch).
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
}

impl ProducerStates {
    /// Whether no producer is known.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops producers whose last batch is older than `expiration` before `now`.
    pub(crate) fn expire(&mut self, now: i64, expiration: Duration) {
        let horizon = ms_before(now, expiration);
        self.map
            .retain(|_, e| e.last().is_some_and(|b| b.timestamp >= horizon));
    }

    /// Checks a batch (already [`validate`]d) against the producer's state: a retry of one of
    /// its retained batches, a fenced epoch, a gap, or a new batch. Expired producers are
    /// dropped first.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check(
        &mut self,
        topic: &str,
        partition: u32,
        producer: ProducerId,
        first_seq: i32,
        last_seq: i32,
        now: i64,
        expiration: Duration,
    ) -> Result<Verdict> {
        let horizon = ms_before(now, expiration);
        if self
            .map
            .get(&producer.id)
            .is_some_and(|e| e.last().is_none_or(|b| b.timestamp < horizon))
        {
            self.map.remove(&producer.id);
        }
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
            Some(e) if producer.epoch > e.epoch => 0,
            Some(e) => {
                if let Some(b) = e
                    .batches
                    .iter()
                    .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
                {
                    return Ok(Verdict::Duplicate(AppendResult {
                        base_offset: b.base_offset,
                        last_offset: b.last_offset,
                    }));
                }
                e.last().map_or(0, |b| next_sequence(b.last_seq))
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

    /// Records a batch written (by an append, or found by a replay of the log): a newer epoch
    /// replaces the producer's batches, an older one (never written by a checked append) is
    /// ignored.
    pub(crate) fn record(&mut self, producer: ProducerId, batch: BatchMeta) {
        let e = self.map.entry(producer.id).or_insert_with(|| Entry {
            epoch: producer.epoch,
            batches: VecDeque::new(),
            transactional: false,
            coordinator_epoch: 0,
            txn_first_offset: None,
        });
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
    }

    /// The state as [`LogStore::producer_state`](crate::LogStore::producer_state) shows it,
    /// by producer id, without producers expired at `now`.
    pub(crate) fn entries(&self, now: i64, expiration: Duration) -> Vec<ProducerEntry> {
        let horizon = ms_before(now, expiration);
        let mut v: Vec<ProducerEntry> = self
            .map
            .iter()
            .filter_map(|(&id, e)| {
                let b = e.last().filter(|b| b.timestamp >= horizon)?;
                Some(ProducerEntry {
                    producer: ProducerId { id, epoch: e.epoch },
                    last_sequence: b.last_seq,
                    last_offset: b.last_offset,
                    last_timestamp: b.timestamp,
                    batches_retained: e.batches.len(),
                    open_transaction: None,
                    coordinator_epoch: -1,
                })
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
            .filter_map(|(&id, e)| {
                let b = e.last()?;
                Some(SnapshotEntry {
                    producer_id: id,
                    epoch: e.epoch,
                    last_seq: b.last_seq,
                    last_offset: b.last_offset,
                    offset_delta: (b.last_offset - b.base_offset) as i32,
                    timestamp: b.timestamp,
                    coordinator_epoch: e.coordinator_epoch,
                    // Only a transactional producer has an open transaction.
                    txn_first_offset: e
                        .txn_first_offset
                        .filter(|_| e.transactional)
                        .map_or(-1, |o| o as i64),
                })
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
            s.map.insert(
                e.producer_id,
                Entry {
                    epoch: e.epoch,
                    batches: VecDeque::from([BatchMeta {
                        first_seq: e.last_seq - delta,
                        last_seq: e.last_seq,
                        base_offset: e.last_offset - delta as u64,
                        last_offset: e.last_offset,
                        timestamp: e.timestamp,
                    }]),
                    transactional: e.txn_first_offset >= 0,
                    coordinator_epoch: e.coordinator_epoch,
                    txn_first_offset: u64::try_from(e.txn_first_offset).ok(),
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
/// batch that can exist: non-negative id, epoch, offsets and sequences, a delta inside both.
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
        if e.producer_id < 0
            || e.epoch < 0
            || e.last_seq < 0
            || last_offset < 0
            || e.offset_delta < 0
            || e.offset_delta > e.last_seq
            || i64::from(e.offset_delta) > last_offset
        {
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
        s.record(P, batch(0, 2, 10));
        s.record(P, batch(3, 3, 20));
        s.record(ProducerId { id: 9, epoch: 0 }, batch(0, 0, 30));
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
        s.record(P, end);
        let check = |s: &mut ProducerStates, first, last| {
            s.check("t", 0, P, first, last, 1_000, Duration::MAX)
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
        s.record(P, batch(0, 4, 103));
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
