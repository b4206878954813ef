//! Transactions on the CommitLog engine (RocketMQ-flavoured on disk, Kafka's meaning).
//!
//! A transaction's records are ordinary dispatched records with sys flag
//! `TRANSACTION_PREPARED_TYPE` (0x4) and the idempotent producer properties (see `producers`).
//! A marker is one record with sys flag `TRANSACTION_COMMIT_TYPE` (0x8) or
//! `TRANSACTION_ROLLBACK_TYPE` (0xC), body = Kafka's end-transaction marker value (version i16
//! 0, coordinator epoch i32), and the properties `__PID`, `__EPOCH`, `__TXNFIRST` (the
//! transaction's first offset) and `__TXNLSO` (the partition's last stable offset once the
//! marker is written), the last two as 20 zero-padded decimal digits so the record's length is
//! known before the append lock fills them in. It is dispatched to the partition's consume queue
//! (it takes an offset) with the tag hash [`MARKER_TAG_HASH`](super::record::MARKER_TAG_HASH),
//! and no read ever returns it. An abort marker is also an entry of the partition's
//! aborted-transaction index (see `txn_index`), which can be rebuilt from the markers alone.

use std::sync::atomic::Ordering;

use super::record::{self, CRC_PROPERTY_LEN};
use super::txn_index::{AbortedTxn, Rewriter};
use super::{Inner, PartitionState};
use crate::error::Result;
use crate::producer_state::ProducerStates;
use crate::store::{PRODUCER_EPOCH_PROPERTY, PRODUCER_ID_PROPERTY, ProducerId, ReadLimits, Record};

/// A marker's property: the first offset of the transaction it ends.
pub(crate) const TXN_FIRST_PROPERTY: &str = "__TXNFIRST";
/// A marker's property: the partition's last stable offset once it is written.
pub(crate) const TXN_LSO_PROPERTY: &str = "__TXNLSO";
const DIGITS: usize = 20;

/// What a marker records of the transaction it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MarkerTxn {
    pub(crate) first_offset: u64,
    pub(crate) last_stable: u64,
}

impl MarkerTxn {
    /// The aborted-transaction index entry of an abort marker at `marker_offset`.
    pub(crate) fn aborted(&self, producer_id: i64, marker_offset: u64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset: self.first_offset,
            last_offset: marker_offset,
            last_stable_offset: self.last_stable,
        }
    }
}

/// Appends a marker's properties, the transaction fields as zeros (see
/// [`patch_marker_properties`]).
pub(crate) fn put_marker_properties(out: &mut Vec<u8>, producer: ProducerId) {
    record::put_property(
        out,
        PRODUCER_ID_PROPERTY.as_bytes(),
        producer.id.to_string().as_bytes(),
    );
    record::put_property(
        out,
        PRODUCER_EPOCH_PROPERTY.as_bytes(),
        producer.epoch.to_string().as_bytes(),
    );
    record::put_property(out, TXN_FIRST_PROPERTY.as_bytes(), &[b'0'; DIGITS]);
    record::put_property(out, TXN_LSO_PROPERTY.as_bytes(), &[b'0'; DIGITS]);
}

fn write_digits(out: &mut [u8], mut v: u64) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Fills in the transaction fields of an encoded (unstamped) marker record, whose properties
/// end with those of [`put_marker_properties`] and then the checksum property.
pub(crate) fn patch_marker_properties(rec: &mut [u8], txn: MarkerTxn) {
    let lso_end = rec.len() - CRC_PROPERTY_LEN - 1;
    let lso_start = lso_end - DIGITS;
    let first_end = lso_start - TXN_LSO_PROPERTY.len() - 2;
    let first_start = first_end - DIGITS;
    write_digits(&mut rec[lso_start..lso_end], txn.last_stable);
    write_digits(&mut rec[first_start..first_end], txn.first_offset);
}

/// A marker record's producer and transaction fields (`None` if they do not parse).
pub(crate) fn parse_marker(properties: &[u8]) -> Option<(ProducerId, MarkerTxn)> {
    let (mut id, mut epoch, mut first, mut lso) = (None, None, None, None);
    for (k, v) in record::iter_properties(properties) {
        match k {
            PRODUCER_ID_PROPERTY => id = v.parse::<i64>().ok(),
            PRODUCER_EPOCH_PROPERTY => epoch = v.parse::<i16>().ok(),
            TXN_FIRST_PROPERTY => first = v.parse::<u64>().ok(),
            TXN_LSO_PROPERTY => lso = v.parse::<u64>().ok(),
            _ => {}
        }
    }
    Some((
        ProducerId {
            id: id.filter(|&i| i >= 0)?,
            epoch: epoch.filter(|&e| e >= 0)?,
        },
        MarkerTxn {
            first_offset: first?,
            last_stable: lso?,
        },
    ))
}

/// Under the append lock: the fields of a marker `producer` would write at `marker_offset`, or
/// `None` when it has no transaction open on the partition (nothing is written). An epoch
/// older than the partition knows is `ProducerFenced`.
pub(crate) fn marker_fields(
    states: &ProducerStates,
    topic: &str,
    partition: u32,
    producer: ProducerId,
    marker_offset: u64,
) -> Result<Option<MarkerTxn>> {
    if !states.check_marker(topic, partition, producer)? {
        return Ok(None);
    }
    // One lookup, not a listing of every producer of the partition (a marker is written under
    // the append lock every other appender waits on).
    let Some(first_offset) = states.open_transaction(producer.id) else {
        return Ok(None);
    };
    Ok(Some(MarkerTxn {
        first_offset,
        last_stable: states.aborted_lso(producer.id, marker_offset),
    }))
}

/// A marker record's producer and transaction fields, if `r` is a marker that has them.
pub(crate) fn marker_of(r: &Record) -> Option<(ProducerId, MarkerTxn)> {
    if !record::is_marker(r.flags() as i32) {
        return None;
    }
    let p = r.properties();
    let field = |name: &str| p.get(name);
    Some((
        ProducerId {
            id: field(PRODUCER_ID_PROPERTY)?
                .parse()
                .ok()
                .filter(|&i: &i64| i >= 0)?,
            epoch: field(PRODUCER_EPOCH_PROPERTY)?
                .parse()
                .ok()
                .filter(|&e: &i16| e >= 0)?,
        },
        MarkerTxn {
            first_offset: field(TXN_FIRST_PROPERTY)?.parse().ok()?,
            last_stable: field(TXN_LSO_PROPERTY)?.parse().ok()?,
        },
    ))
}

impl Inner {
    /// At open, once the partition's bounds are known: checks the aborted-transaction index
    /// without reading every marker back. The file's entries were checked (checksums, order)
    /// when it was opened; the index must hold the entry of `last_abort` (the last abort
    /// marker the producer snapshot names: a deleted or cut file lacks it), and only the
    /// entries past it (the tail the snapshot did not see) are checked against their marker
    /// records. The index is rebuilt from the partition's markers (streamed into a new file)
    /// when `rebuild` (the file did not check out), when it lacks that entry, or when a tail
    /// entry does not match its marker. Entries below the start are dropped by the next
    /// checkpoint.
    pub(crate) fn settle_txn_index(
        &self,
        topic: &str,
        partition: u32,
        part: &PartitionState,
        rebuild: bool,
        last_abort: Option<u64>,
    ) -> Result<()> {
        let start = part.start.load(Ordering::Acquire);
        let end = part.end.load(Ordering::Acquire);
        let past_snapshot =
            |e: &AbortedTxn| e.last_offset >= start && last_abort.is_none_or(|m| e.last_offset > m);
        // A compaction pass committed without its index rewrite: entries may name gone markers.
        let (index_fs, index_path) = {
            let idx = part.txn_index.lock();
            (idx.fs(), idx.path().to_owned())
        };
        let owed = super::txn_index::rewrite_owed(index_fs.as_ref(), &index_path);
        let mut good = !rebuild && !owed;
        if good && let Some(m) = last_abort.filter(|&m| m >= start) {
            good = part.txn_index.lock().contains(m).unwrap_or(false);
        }
        let tail: Vec<AbortedTxn> = if good {
            let idx = part.txn_index.lock();
            // Every entry past the snapshot's last abort must be resident to be checked (more
            // than the resident bound since the last snapshot: rebuilt instead).
            let covered = idx.all_resident()
                || idx
                    .resident_entries()
                    .next()
                    .is_some_and(|e| !past_snapshot(e));
            good = covered;
            idx.resident_entries()
                .filter(|e| past_snapshot(e))
                .copied()
                .collect()
        } else {
            Vec::new()
        };
        for e in &tail {
            if !good {
                break;
            }
            let found = if e.last_offset < end {
                self.read_raw(
                    topic,
                    partition,
                    e.last_offset,
                    e.last_offset + 1,
                    ReadLimits::messages(1),
                )
                .ok()
                .and_then(|mut v| v.pop())
            } else {
                None
            };
            good = found.is_some_and(|r| {
                r.offset() == e.last_offset
                    && record::transaction_type(r.flags() as i32)
                        == record::SYSFLAG_TRANSACTION_ROLLBACK
                    && marker_of(&r).is_some_and(|(p, txn)| txn.aborted(p.id, r.offset()) == *e)
            });
        }
        if !good {
            let (fs, path) = {
                let idx = part.txn_index.lock();
                (idx.fs(), idx.path().to_owned())
            };
            let mut w = Rewriter::new(fs, &path)?;
            // A log that does not read (damage the reads report as `Corrupted`) keeps the
            // entries the index has: the store still opens, as it would without transactions.
            if self
                .for_each_abort(topic, partition, start, end, |e| w.push(&e))
                .is_ok()
            {
                w.install(&mut part.txn_index.lock())?;
                if owed {
                    super::txn_index::clear_rewrite_owed(index_fs.as_ref(), &index_path)?;
                }
            }
        }
        part.txn_index.lock().drop_below(start);
        Ok(())
    }

    /// Calls `f` with the aborted-transaction entry of every abort marker in `[start, end)`,
    /// in order (the log read in chunks).
    pub(super) fn for_each_abort(
        &self,
        topic: &str,
        partition: u32,
        start: u64,
        end: u64,
        mut f: impl FnMut(AbortedTxn) -> Result<()>,
    ) -> Result<()> {
        let mut at = start;
        while at < end {
            let records = self.read_raw(topic, partition, at, end, ReadLimits::messages(1024))?;
            let Some(last) = records.last() else {
                break;
            };
            at = last.offset() + 1;
            for r in &records {
                if record::transaction_type(r.flags() as i32)
                    == record::SYSFLAG_TRANSACTION_ROLLBACK
                    && let Some((p, txn)) = marker_of(r)
                {
                    f(txn.aborted(p.id, r.offset()))?;
                }
            }
        }
        Ok(())
    }

    /// The aborted-transaction entries of every abort marker in `[start, end)` (`verify`).
    pub(super) fn aborted_from_markers(
        &self,
        topic: &str,
        partition: u32,
        start: u64,
        end: u64,
    ) -> Result<Vec<AbortedTxn>> {
        let mut out = Vec::new();
        self.for_each_abort(topic, partition, start, end, |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    /// The partition's last stable offset with `end` its end as the caller read it (read
    /// before the producer state, so an LSO past `end` is clamped to it).
    pub(crate) fn last_stable(&self, part: &PartitionState, end: u64) -> u64 {
        let start = part.start.load(Ordering::Acquire).min(end);
        part.producers.lock().last_stable(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_properties_are_patched_in_place_and_parse_back() {
        let p = ProducerId { id: 42, epoch: 3 };
        let mut props = Vec::new();
        put_marker_properties(&mut props, p);
        let mut h = record::RecordHeader::local(1, 5);
        h.sys_flag = record::SYSFLAG_TRANSACTION_ROLLBACK;
        let mut rec = Vec::new();
        record::encode_unsealed(
            &mut rec,
            &h,
            &record::encode_marker_body(9),
            b"t",
            &props,
            true,
        );
        let txn = MarkerTxn {
            first_offset: 1234,
            last_stable: u64::MAX / 3,
        };
        patch_marker_properties(&mut rec, txn);
        record::stamp(&mut rec, 7, 0, 6, None);
        let Ok(record::Decoded::Message(d)) = record::decode(&rec, record::Checks::FULL) else {
            panic!("marker does not decode");
        };
        assert_eq!(parse_marker(d.properties), Some((p, txn)));
        assert!(record::is_marker(d.header.sys_flag));
        assert_eq!(record::decode_marker_body(d.body), Some(9));
    }
}
