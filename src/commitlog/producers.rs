//! Idempotent producers on the CommitLog engine.
//!
//! RocketMQ's record has no producer fields, so each record of an idempotent batch carries
//! reserved properties: `__PID` (producer id), `__EPOCH`, `__SEQ` (the record's own sequence
//! number), and the batch's last record `__LAST`. A batch of n messages is n contiguous records
//! (written under the append lock). Recovery dispatches a batch's records only once it has seen
//! its last one: a batch cut short by a power loss ends the log at its first record, so an
//! idempotent batch is all or nothing and a retry after the crash writes it whole.
//!
//! Producer snapshot: one store-level file, `producer-snapshot`, written (atomically) with the
//! checkpoint once the store has it. A store without the file has no idempotent record in its
//! log: the first idempotent append writes an empty snapshot at the log's end before it writes
//! anything, so an open of a store that never had an idempotent producer reads nothing more.
//! Layout:
//! ```text
//! "DLPS" | version u16 = 1 | reserved u16 | position u64 | partition count u32 |
//!   per partition: topic length u16 | topic | topic id u64 | partition u32 | entry count u32 |
//!                  entry count × 46-byte entries (Kafka's snapshot entry, `producer_state`)
//! CRC-32C u32 of everything before it
//! ```
//! It holds every partition's producers as of commit-log `position` (sampled under the append
//! lock, so at a batch boundary) and is written only once the log is durable up to `position`:
//! the state is sampled at one checkpoint and written at a later one that finds the log flushed
//! past it (at once when it already is, as at a clean close). Recovery starts from it (a
//! damaged one, one past the recovered end, or none means the first log file) and replays the
//! records after it; a partition's entries apply only to the topic with that id.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::record::{self, Checks, Decoded};
use super::{Inner, PartitionState, TopicState};
use crate::error::{Error, Result};
use crate::io;
use crate::producer_state::{self, BatchMeta, ProducerStates, SnapshotEntry};
use crate::store::{
    PRODUCER_EPOCH_PROPERTY, PRODUCER_ID_PROPERTY, PRODUCER_LAST_PROPERTY,
    PRODUCER_SEQUENCE_PROPERTY, ProducerId,
};

pub(crate) const SNAPSHOT_FILE: &str = "producer-snapshot";
const MAGIC: &[u8; 4] = b"DLPS";
/// Version 2 entries may have no batch (Kafka's `NO_SEQUENCE`: a producer whose epoch a marker
/// bumped) and carry open transactions; version 1 files (never with either) still read.
const VERSION: u16 = 2;
const VERSION_1: u16 = 1;

/// The producer fields of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordProducer {
    pub(crate) producer: ProducerId,
    pub(crate) sequence: i32,
    /// The batch's last record.
    pub(crate) last: bool,
}

/// Appends the producer properties of a batch's record.
pub(crate) fn put_properties(out: &mut Vec<u8>, r: RecordProducer) {
    record::put_property(
        out,
        PRODUCER_ID_PROPERTY.as_bytes(),
        r.producer.id.to_string().as_bytes(),
    );
    record::put_property(
        out,
        PRODUCER_EPOCH_PROPERTY.as_bytes(),
        r.producer.epoch.to_string().as_bytes(),
    );
    record::put_property(
        out,
        PRODUCER_SEQUENCE_PROPERTY.as_bytes(),
        r.sequence.to_string().as_bytes(),
    );
    if r.last {
        record::put_property(out, PRODUCER_LAST_PROPERTY.as_bytes(), b"1");
    }
}

/// The producer fields of a record's properties, if it belongs to an idempotent batch: its
/// sys flag carries [`record::SYSFLAG_PRODUCER_BATCH`] (a plain record's own properties of
/// these names, from before they were reserved, are not fields) and they parse. With
/// `before_flag` (the record lies below the catalog's `producer flag since`: written by a
/// build that had no flag, see `catalog.rs`), the properties alone decide, as that build read
/// them.
pub(crate) fn parse_properties(
    sys_flag: i32,
    raw: &[u8],
    before_flag: bool,
) -> Option<RecordProducer> {
    if sys_flag & record::SYSFLAG_PRODUCER_BATCH == 0 && !before_flag {
        return None;
    }
    let (mut id, mut epoch, mut seq, mut last) = (None, None, None, false);
    for (k, v) in record::iter_properties(raw) {
        match k {
            PRODUCER_ID_PROPERTY => id = v.parse::<i64>().ok(),
            PRODUCER_EPOCH_PROPERTY => epoch = v.parse::<i16>().ok(),
            PRODUCER_SEQUENCE_PROPERTY => seq = v.parse::<i32>().ok(),
            PRODUCER_LAST_PROPERTY => last = true,
            _ => {}
        }
    }
    Some(RecordProducer {
        producer: ProducerId {
            id: id.filter(|&i| i >= 0)?,
            epoch: epoch.filter(|&e| e >= 0)?,
        },
        sequence: seq.filter(|&s| s >= 0)?,
        last,
    })
}

/// One partition in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PartitionEntries {
    pub(crate) topic: String,
    pub(crate) topic_id: u64,
    pub(crate) partition: u32,
    /// Offset of the partition's last abort marker at the snapshot's position (version 2; `None`
    /// for none, and in version 1): recovery checks the aborted-transaction index still has
    /// its entry (a deleted or cut index file is rebuilt).
    pub(crate) last_abort: Option<u64>,
    pub(crate) entries: Vec<SnapshotEntry>,
}

/// A snapshot's content: the position it covers and each partition's entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) position: u64,
    pub(crate) partitions: Vec<PartitionEntries>,
}

impl Snapshot {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.position.to_be_bytes());
        out.extend_from_slice(&(self.partitions.len() as u32).to_be_bytes());
        for p in &self.partitions {
            out.extend_from_slice(&(p.topic.len() as u16).to_be_bytes());
            out.extend_from_slice(p.topic.as_bytes());
            out.extend_from_slice(&p.topic_id.to_be_bytes());
            out.extend_from_slice(&p.partition.to_be_bytes());
            out.extend_from_slice(&p.last_abort.map_or(-1, |o| o as i64).to_be_bytes());
            out.extend_from_slice(&(p.entries.len() as u32).to_be_bytes());
            producer_state::put_entries(&mut out, &p.entries);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub(crate) fn decode(b: &[u8]) -> std::result::Result<Snapshot, &'static str> {
        if b.len() < 24 {
            return Err("producer snapshot shorter than its header");
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err("producer snapshot checksum mismatch");
        }
        let version = u16::from_be_bytes([body[4], body[5]]);
        if &body[..4] != MAGIC || (version != VERSION && version != VERSION_1) {
            return Err("not a version 1 or 2 producer snapshot");
        }
        let mut at: usize = 8;
        let mut take = |n: usize| -> std::result::Result<&[u8], &'static str> {
            let s = body
                .get(at..at.checked_add(n).ok_or("length overflow")?)
                .ok_or("producer snapshot truncated")?;
            at += n;
            Ok(s)
        };
        let u64_of = |s: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_be_bytes(a)
        };
        let u32_of = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        let position = u64_of(take(8)?);
        let count = u32_of(take(4)?);
        let mut partitions = Vec::new();
        for _ in 0..count {
            let len = take(2)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let topic = std::str::from_utf8(take(len)?)
                .map_err(|_| "topic name is not UTF-8")?
                .to_owned();
            let topic_id = u64_of(take(8)?);
            let partition = u32_of(take(4)?);
            let last_abort = if version == VERSION_1 {
                None
            } else {
                match u64_of(take(8)?) as i64 {
                    -1 => None,
                    o if o >= 0 => Some(o as u64),
                    _ => return Err("negative last abort offset"),
                }
            };
            let n = u32_of(take(4)?) as usize;
            let bytes = take(n.saturating_mul(producer_state::SNAPSHOT_ENTRY_LEN))?;
            partitions.push(PartitionEntries {
                topic,
                topic_id,
                partition,
                last_abort,
                entries: producer_state::get_entries(bytes, n)?,
            });
        }
        if at != body.len() {
            return Err("trailing bytes in producer snapshot");
        }
        Ok(Snapshot {
            position,
            partitions,
        })
    }
}

/// What the store directory holds for a producer snapshot.
pub(crate) enum Stored {
    /// No file: the log holds no idempotent record (see the module docs).
    Absent,
    /// A file that does not decode (or cannot be read): the whole log is replayed.
    Damaged,
    Valid(Snapshot),
}

/// Reads the store's producer snapshot.
pub(crate) fn load(fs: &dyn io::FileSystem, dir: &Path) -> Stored {
    match fs.read_file(&dir.join(SNAPSHOT_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::Absent,
        Err(_) => Stored::Damaged,
        Ok(bytes) => Snapshot::decode(&bytes).map_or(Stored::Damaged, Stored::Valid),
    }
}

impl Inner {
    /// Every partition's producers as of the log's end, under the append lock (copies only).
    fn sample_producers(&self) -> Snapshot {
        let now = crate::clock::now_ms();
        let expiration = self.opts.producer_id_expiration;
        let _appends = self.append_lock.lock();
        let position = self.written.load(Ordering::Acquire);
        let mut partitions = Vec::new();
        for t in self.topics.read().values() {
            for (p, part) in t.partitions.iter().enumerate() {
                let mut ps = part.producers.lock();
                ps.expire(now, expiration);
                let last_abort = part.txn_index.lock().last_marker();
                if !ps.is_empty() || last_abort.is_some() {
                    partitions.push(PartitionEntries {
                        topic: t.name.clone(),
                        topic_id: t.id,
                        partition: p as u32,
                        last_abort,
                        entries: ps.snapshot(),
                    });
                }
            }
        }
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Snapshot {
            position,
            partitions,
        }
    }

    /// Before the store's first idempotent batch: writes an empty snapshot at the log's end, so
    /// that "no snapshot file" keeps meaning "no idempotent record in the log" (an open then
    /// replays nothing for producers). Once per store; not under the append lock.
    pub(super) fn start_tracking_producers(&self) -> Result<()> {
        let mut samples = self.producer_sample.lock();
        if self.tracks_producers.load(Ordering::Acquire) {
            return Ok(());
        }
        let snapshot = Snapshot {
            // Sampled under the append lock: a batch boundary.
            position: {
                let _appends = self.append_lock.lock();
                self.written.load(Ordering::Acquire)
            },
            partitions: Vec::new(),
        };
        self.write_producer_snapshot(&mut samples, &snapshot)?;
        self.tracks_producers.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes `snapshot` unless a newer one was written already (or one at its position that
    /// recorded a fence: a sample taken before the fence would lose it).
    fn write_producer_snapshot(&self, samples: &mut Samples, snapshot: &Snapshot) -> Result<()> {
        if snapshot.position < samples.written
            || samples.fenced_at.is_some_and(|f| snapshot.position <= f)
        {
            return Ok(());
        }
        self.store_producer_snapshot(samples, snapshot)
    }

    fn store_producer_snapshot(&self, samples: &mut Samples, snapshot: &Snapshot) -> Result<()> {
        let path = self.dir.join(SNAPSHOT_FILE);
        io::write_atomic(self.fs.as_ref(), &path, &snapshot.encode())
            .map_err(|e| self.metadata_write_failed(Error::io(&path, e)))?;
        samples.written = snapshot.position;
        samples.last_written = Some(snapshot.position);
        Ok(())
    }

    /// The producer-snapshot part of a checkpoint: samples the state now and writes the newest
    /// sample the durable log position `durable` covers (this one, or the one kept from an
    /// earlier checkpoint). Nothing to do while the store has no snapshot (no idempotent
    /// record in its log).
    pub(super) fn checkpoint_producers(&self, durable: u64) -> Result<()> {
        if !self.tracks_producers.load(Ordering::Acquire) {
            return Ok(());
        }
        // Every change of producer state comes with an append (batches, markers): a log that
        // has not moved since the last snapshot written, with no sample waiting, leaves
        // nothing to write (expiry alone is applied again at the next open). Checked without
        // the append lock, so an idle store neither samples nor rewrites the file.
        {
            let samples = self.producer_sample.lock();
            if samples.kept.is_none()
                && samples.last_written == Some(self.written.load(Ordering::Acquire))
            {
                return Ok(());
            }
        }
        let fresh = self.sample_producers();
        let mut samples = self.producer_sample.lock();
        let ready = if fresh.position <= durable {
            samples.kept = None;
            Some(fresh)
        } else {
            let older = samples.kept.take().filter(|s| s.position <= durable);
            samples.kept = Some(fresh);
            older
        };
        match ready {
            Some(snapshot) => self.write_producer_snapshot(&mut samples, &snapshot),
            None => Ok(()),
        }
    }

    /// After a marker that ended nothing recorded a newer epoch (see
    /// `ProducerStates::fence_epoch`): a snapshot of the state now, written durably before the
    /// marker call returns, so the fence survives a crash without a record in the log. Sampled
    /// under the snapshot lock, so no sample taken before the fence is written after it.
    ///
    /// `fenced` is the partition whose fence this makes durable: on success its fences up to
    /// the sample are recorded as durable, so a retry after a failure here writes again.
    pub(super) fn snapshot_after_fence(&self, fenced: &PartitionState) -> Result<()> {
        self.start_tracking_producers()?;
        let mut samples = self.producer_sample.lock();
        // Read before the sample, which then holds every fence counted here.
        let fences = fenced.producers.lock().fence_generation();
        let snapshot = self.sample_producers();
        self.gc.sync_all(self)?;
        self.store_producer_snapshot(&mut samples, &snapshot)?;
        samples.fenced_at = Some(snapshot.position);
        samples.kept = None;
        drop(samples);
        fenced.producers.lock().fences_durable(fences);
        Ok(())
    }

    /// The snapshot on disk may name an abort marker that is gone (compaction dropped it):
    /// the next checkpoint writes a fresh one even if the log has not moved, so an open does
    /// not take the missing entry for a cut index and rebuild it.
    pub(super) fn producer_snapshot_stale(&self) {
        self.producer_sample.lock().last_written = None;
    }

    /// Before retention deletes commit-log files: a snapshot of the state now, written once the
    /// log is durable up to it, so no producer's batches go with the files while only an older
    /// snapshot (a replay from which would miss them) is on disk.
    pub(super) fn snapshot_producers_durably(&self) -> Result<()> {
        if !self.tracks_producers.load(Ordering::Acquire) {
            return Ok(());
        }
        let snapshot = self.sample_producers();
        self.gc.sync_all(self)?;
        let mut samples = self.producer_sample.lock();
        self.write_producer_snapshot(&mut samples, &snapshot)
    }
}

/// The CommitLog engine's producer snapshots in flight (see `Inner::producer_sample`).
#[derive(Debug, Default)]
pub(crate) struct Samples {
    /// Sampled at a checkpoint, not yet covered by the durable log position.
    kept: Option<Snapshot>,
    /// Position of the last snapshot written by this run (0 at open).
    written: u64,
    /// The same, `None` until this run wrote one: the file found at open may name a position
    /// past the recovered end (its batches lost), so the first checkpoint always replaces it.
    last_written: Option<u64>,
    /// Position of the last snapshot written for a fence: samples at or before it may predate
    /// the fence and are not written.
    fenced_at: Option<u64>,
}

/// Each partition's last abort marker as a snapshot names it, by (topic, partition).
pub(super) type LastAborts = HashMap<(String, u32), u64>;

/// A batch whose records the rebuild has seen part of.
struct Partial {
    key: (String, u32),
    producer: ProducerId,
    first_seq: i32,
    base_offset: u64,
    /// Its records carry `TRANSACTION_PREPARED_TYPE`: it opens or continues a transaction.
    transactional: bool,
}

/// Rebuilds every partition's producer state at open: the snapshot, then the records from its
/// position to the recovered end `end`, then expiry. No snapshot means no idempotent record
/// (nothing to read); a damaged one, or one that claims batches past `end` (only damage to the
/// log can do that: a snapshot is written once the log is durable past it), means the whole
/// log; an empty one past `end` (written before the first idempotent batch, whose records the
/// crash took) means nothing to read. Returns whether the store keeps a snapshot, and the
/// last abort marker the snapshot names of each partition.
pub(super) fn rebuild(
    inner: &mut Inner,
    topics: &mut HashMap<String, TopicState>,
    stored: Stored,
    end: u64,
) -> Result<(bool, LastAborts)> {
    let log_min = inner.log.min_offset().unwrap_or(0);
    let mut last_aborts = HashMap::new();
    let snapshot = match stored {
        Stored::Absent => return Ok((false, last_aborts)),
        Stored::Damaged => None,
        Stored::Valid(s) if s.position > end && s.partitions.is_empty() => Some(Snapshot {
            position: end,
            partitions: Vec::new(),
        }),
        Stored::Valid(s) => Some(s).filter(|s| s.position <= end),
    };
    let mut from = log_min;
    if let Some(s) = snapshot {
        from = s.position.max(log_min);
        for e in &s.partitions {
            if let Some(part) = topics
                .get(&e.topic)
                .filter(|t| t.id == e.topic_id)
                .and_then(|t| t.partitions.get(e.partition as usize))
            {
                *part.producers.lock() = ProducerStates::from_snapshot(&e.entries);
                if let Some(o) = e.last_abort {
                    last_aborts.insert((e.topic.clone(), e.partition), o);
                }
            }
        }
    }
    let mut states: HashMap<(String, u32), ProducerStates> = HashMap::new();
    for t in topics.values() {
        for (p, part) in t.partitions.iter().enumerate() {
            states.insert(
                (t.name.clone(), p as u32),
                std::mem::take(&mut *part.producers.lock()),
            );
        }
    }
    replay(inner, topics, from, end, &mut states)?;
    let now = crate::clock::now_ms();
    for ((name, p), mut s) in states {
        s.expire(now, inner.opts.producer_id_expiration);
        if let Some(part) = topics.get(&name).and_then(|t| t.partitions.get(p as usize)) {
            *part.producers.lock() = s;
        }
    }
    Ok((true, last_aborts))
}

/// Applies the idempotent batches of the records between `from` and `end`.
fn replay(
    inner: &mut Inner,
    topics: &HashMap<String, TopicState>,
    from: u64,
    end: u64,
    states: &mut HashMap<(String, u32), ProducerStates>,
) -> Result<()> {
    let size = inner.log.file_size();
    let mut partial: Option<Partial> = None;
    for f in inner.log.files_mut().iter_mut() {
        let start = f.start_offset();
        if start + size <= from || start >= end {
            continue;
        }
        let file = Arc::get_mut(f)
            .ok_or_else(|| Error::InvalidArgument("log shared during recovery".into()))?;
        let data = file.contents();
        let mut at = from.saturating_sub(start) as usize;
        let stop = (end - start).min(data.len() as u64) as usize;
        while at < stop {
            // Everything before `end` was validated (or trusted) by the open.
            let Ok(Decoded::Message(d)) = record::decode(&data[at..stop], Checks::FULL) else {
                break;
            };
            let pos = start + at as u64;
            at += d.total_size;
            let marker = record::is_marker(d.header.sys_flag);
            let fields = parse_properties(
                d.header.sys_flag,
                d.properties,
                pos < inner.producer_flag_since,
            );
            if fields.is_none() && !marker {
                continue;
            }
            let Some(name) = std::str::from_utf8(d.topic)
                .ok()
                .filter(|n| topics.get(*n).is_some_and(|t| pos >= t.since))
            else {
                continue;
            };
            let key = (name.to_owned(), d.header.queue_id as u32);
            let offset = d.header.queue_offset as u64;
            if marker {
                // A marker ends its producer's transaction (and may bump its epoch).
                if let Some((producer, _)) = super::txn::parse_marker(d.properties)
                    && let Some(coordinator_epoch) = record::decode_marker_body(d.body)
                    && let Some(s) = states.get_mut(&key)
                {
                    s.complete_txn(
                        producer,
                        offset,
                        coordinator_epoch,
                        d.header.store_timestamp,
                    );
                }
                continue;
            }
            let Some(fields) = fields else {
                continue;
            };
            let continues = partial
                .as_ref()
                .is_some_and(|b| b.key == key && b.producer == fields.producer);
            if !continues {
                partial = Some(Partial {
                    key: key.clone(),
                    producer: fields.producer,
                    first_seq: fields.sequence,
                    base_offset: offset,
                    transactional: record::transaction_type(d.header.sys_flag)
                        == record::SYSFLAG_TRANSACTION_PREPARED,
                });
            }
            if fields.last
                && let Some(b) = partial.take()
                && let Some(s) = states.get_mut(&key)
            {
                s.record(
                    b.producer,
                    BatchMeta {
                        first_seq: b.first_seq,
                        last_seq: fields.sequence,
                        base_offset: b.base_offset,
                        last_offset: offset,
                        timestamp: d.header.store_timestamp,
                    },
                    b.transactional,
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_file_round_trips_and_rejects_damage() {
        let entry = SnapshotEntry {
            producer_id: 4,
            epoch: 2,
            last_seq: 9,
            last_offset: 30,
            offset_delta: 3,
            timestamp: 1_700_000_000_000,
            coordinator_epoch: 0,
            txn_first_offset: -1,
        };
        let s = Snapshot {
            position: 1 << 20,
            partitions: vec![
                PartitionEntries {
                    topic: "t".into(),
                    topic_id: 3,
                    partition: 1,
                    last_abort: Some(17),
                    entries: vec![entry],
                },
                PartitionEntries {
                    topic: "u".into(),
                    topic_id: 5,
                    partition: 0,
                    last_abort: None,
                    entries: vec![],
                },
            ],
        };
        let bytes = s.encode();
        assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Snapshot::decode(&bad).is_err(), "flip at {i} accepted");
            assert!(
                Snapshot::decode(&bytes[..i]).is_err(),
                "cut at {i} accepted"
            );
        }
    }

    /// A version 1 file (written before transactions: no last-abort field) still reads.
    #[test]
    fn snapshot_version_1_still_reads() {
        let entry = SnapshotEntry {
            producer_id: 4,
            epoch: 2,
            last_seq: 9,
            last_offset: 30,
            offset_delta: 3,
            timestamp: 1_700_000_000_000,
            coordinator_epoch: 0,
            txn_first_offset: -1,
        };
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC);
        v1.extend_from_slice(&1u16.to_be_bytes());
        v1.extend_from_slice(&[0, 0]);
        v1.extend_from_slice(&4096u64.to_be_bytes());
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&1u16.to_be_bytes());
        v1.extend_from_slice(b"t");
        v1.extend_from_slice(&3u64.to_be_bytes());
        v1.extend_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&1u32.to_be_bytes());
        producer_state::put_entries(&mut v1, &[entry]);
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        let s = Snapshot::decode(&v1).unwrap();
        assert_eq!(s.position, 4096);
        assert_eq!(
            s.partitions,
            [PartitionEntries {
                topic: "t".into(),
                topic_id: 3,
                partition: 1,
                last_abort: None,
                entries: vec![entry],
            }]
        );
        // What this version writes is version 2.
        assert_eq!(s.encode()[4..6], 2u16.to_be_bytes());
    }

    #[test]
    fn producer_properties_round_trip() {
        let r = RecordProducer {
            producer: ProducerId { id: 12, epoch: 3 },
            sequence: i32::MAX,
            last: true,
        };
        let mut out = Vec::new();
        put_properties(&mut out, r);
        let flag = record::SYSFLAG_PRODUCER_BATCH;
        assert_eq!(parse_properties(flag, &out, false), Some(r));
        assert_eq!(parse_properties(flag, b"", false), None);
        assert_eq!(
            parse_properties(0, &out, false),
            None,
            "a plain record's own properties"
        );
        // Below the catalog's `producer flag since`: the properties alone decide.
        assert_eq!(parse_properties(0, &out, true), Some(r));
        assert_eq!(parse_properties(0, b"", true), None);
    }
}
