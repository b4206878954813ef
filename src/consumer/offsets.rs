//! Durable committed offsets of consumer groups, in the internal compacted topic
//! `__consumer_offsets`.
//!
//! One commit is one message: key = the group's name, value = the group's *whole* offset table
//! (every topic and partition it ever committed, the new offsets merged in). A single message
//! lands all or nothing on both engines (one CommitLog record with a whole-record CRC, one
//! RecordBatch with a CRC-32C), so a batch of partitions commits atomically; and because each
//! record supersedes every older record of its key, compaction keeps the topic at about one
//! record per group however many commits were made. The codec ([`encode_table`],
//! [`decode_table`]) is pure; the byte layout is drawn in docs/format.md.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::store::{CleanupPolicy, LogStore, Message, ReadLimits, TopicConfig};

/// The internal topic holding committed offsets (hidden from `list_topics(false)`).
///
/// ```
/// # use std::sync::Arc;
/// # use duolog::{CleanupPolicy, LogStore, StoreOptions};
/// use duolog::consumer::{GroupCoordinator, OFFSETS_SEGMENT_BYTES, OFFSETS_TOPIC};
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// let _groups = GroupCoordinator::new(Arc::clone(&store))?;
/// let config = store.describe_topic(OFFSETS_TOPIC)?;
/// assert_eq!(config.cleanup_policy, CleanupPolicy::Compact);
/// assert_eq!(config.segment_bytes, Some(OFFSETS_SEGMENT_BYTES));
/// assert!(store.list_topics(false).is_empty());
/// # Ok(()) }
/// ```
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// `segment.bytes` of [`OFFSETS_TOPIC`] (see there for an example): small, so the cleaner may clean all but the newest
/// 64 KiB and the topic stays bounded by the number of groups, not of commits.
pub const OFFSETS_SEGMENT_BYTES: u64 = 64 * 1024;

/// The first byte of a commit record's value.
const VERSION: u8 = 1;

/// Records read per fetch while loading.
const FETCH: usize = 4096;

/// A group's committed offsets: topic → partition → the next offset to consume.
///
/// ```
/// use duolog::consumer::OffsetTable;
/// let mut table = OffsetTable::new();
/// table.entry("orders".to_string()).or_default().insert(0, 42);
/// assert_eq!(table["orders"][&0], 42);
/// ```
pub type OffsetTable = BTreeMap<String, BTreeMap<u32, u64>>;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 varint of at most 10 bytes.
fn get_varint(buf: &[u8], at: &mut usize) -> std::result::Result<u64, &'static str> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let b = *buf.get(*at).ok_or("truncated varint")?;
        *at += 1;
        if i == 9 && b > 1 {
            return Err("varint overflows 64 bits");
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes")
}

/// Encodes a group's offset table as a commit record's value (see docs/format.md):
/// `version u8 = 1`, `commit_time_ms varint`, `topics varint`, then per topic (sorted)
/// `name_len varint, name, entries varint`, then per partition (ascending)
/// `partition_delta varint, offset varint`, and last a CRC-32C (big-endian u32) of every byte
/// before it.
///
/// ```
/// use duolog::consumer::{decode_table, encode_table, OffsetTable};
/// let mut table = OffsetTable::new();
/// table.entry("orders".into()).or_default().insert(3, 1_000);
/// let bytes = encode_table(&table, 1_700_000_000_000);
/// assert_eq!(decode_table(&bytes).unwrap(), (table, 1_700_000_000_000));
/// assert!(decode_table(&bytes[..bytes.len() - 1]).is_err());
/// ```
pub fn encode_table(table: &OffsetTable, commit_time_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + table.len() * 32);
    out.push(VERSION);
    put_varint(&mut out, commit_time_ms);
    put_varint(&mut out, table.len() as u64);
    for (topic, parts) in table {
        put_varint(&mut out, topic.len() as u64);
        out.extend_from_slice(topic.as_bytes());
        put_varint(&mut out, parts.len() as u64);
        let mut prev = 0u64;
        for (&p, &offset) in parts {
            put_varint(&mut out, u64::from(p) - prev);
            put_varint(&mut out, offset);
            prev = u64::from(p);
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes [`encode_table`]'s bytes into the table and its commit time. Never panics: anything
/// malformed (wrong version, bad checksum, truncated, trailing bytes, partitions out of order,
/// names that are not UTF-8) is an error naming the problem.
///
/// ```
/// use duolog::consumer::decode_table;
/// assert!(decode_table(b"garbage").unwrap_err().contains("checksum"));
/// ```
pub fn decode_table(bytes: &[u8]) -> std::result::Result<(OffsetTable, u64), String> {
    if bytes.len() < 5 {
        return Err(format!("{} bytes are too short for a commit", bytes.len()));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err("checksum mismatch".into());
    }
    if body[0] != VERSION {
        return Err(format!("unknown commit version {}", body[0]));
    }
    let mut at = 1;
    let time = get_varint(body, &mut at)?;
    let topics = get_varint(body, &mut at)?;
    let mut table = OffsetTable::new();
    for _ in 0..topics {
        let len = get_varint(body, &mut at)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|&e| e <= body.len())
            .ok_or("topic name past the end")?;
        let name = std::str::from_utf8(&body[at..end]).map_err(|_| "topic name is not UTF-8")?;
        at = end;
        let entries = get_varint(body, &mut at)?;
        let mut parts = BTreeMap::new();
        let mut prev: Option<u64> = None;
        for _ in 0..entries {
            let delta = get_varint(body, &mut at)?;
            let p = match prev {
                None => delta,
                Some(_) if delta == 0 => return Err("partitions not ascending".into()),
                Some(prev) => prev.checked_add(delta).ok_or("partition overflows")?,
            };
            let partition = u32::try_from(p).map_err(|_| "partition past u32")?;
            let offset = get_varint(body, &mut at)?;
            parts.insert(partition, offset);
            prev = Some(p);
        }
        if table.insert(name.to_owned(), parts).is_some() {
            return Err(format!("topic {name:?} listed twice"));
        }
    }
    if at != body.len() {
        return Err(format!("{} trailing bytes", body.len() - at));
    }
    Ok((table, time))
}

/// A table and the sequence number of the record that holds it.
#[derive(Default)]
struct Versioned {
    table: OffsetTable,
    seq: u64,
}

/// One group's offsets: what its newest record says (`written`, under the commit lock) and what
/// is known durable (`durable`, what `committed` reports). They differ only while a commit is
/// in flight. Two locks, so a completion callback (run on the thread that made a record
/// durable, maybe the flusher) never waits for a committer that may be waiting for that thread.
#[derive(Default)]
struct GroupOffsets {
    written: Mutex<Versioned>,
    durable: Mutex<Versioned>,
}

/// The committed offsets of every group of a store, loaded from and written to
/// [`OFFSETS_TOPIC`]. Commits of one group are serialised by the group's lock (a sync commit
/// holds it until its record is durable, an async one until it is appended); commits of
/// different groups run in parallel. Shared by every consumer of a
/// [`GroupCoordinator`](crate::consumer::GroupCoordinator).
pub(crate) struct OffsetStore {
    store: Arc<dyn LogStore>,
    groups: Mutex<HashMap<String, Arc<GroupOffsets>>>,
}

impl OffsetStore {
    /// Creates the offsets topic if it is missing and reads it once from its start.
    pub(crate) fn open(store: Arc<dyn LogStore>) -> Result<OffsetStore> {
        ensure_topic(store.as_ref())?;
        let mut tables: HashMap<String, OffsetTable> = HashMap::new();
        for p in 0..store.describe_topic(OFFSETS_TOPIC)?.partitions {
            let bounds = store.bounds(OFFSETS_TOPIC, p)?;
            let mut at = bounds.start;
            while at < bounds.end {
                let records = match store.read(OFFSETS_TOPIC, p, at, ReadLimits::messages(FETCH)) {
                    Ok(r) => r,
                    Err(Error::OffsetOutOfRange { start, .. }) if start > at => {
                        at = start;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let Some(last) = records.last() else { break };
                at = last.offset() + 1;
                for r in &records {
                    let Some(key) = r.key() else { continue };
                    let group = std::str::from_utf8(key).map_err(|_| {
                        corrupted(store.as_ref(), p, r.offset(), "group name is not UTF-8")
                    })?;
                    match r.value() {
                        None => {
                            tables.remove(group);
                        }
                        Some(v) => {
                            let (table, _) = decode_table(v)
                                .map_err(|e| corrupted(store.as_ref(), p, r.offset(), &e))?;
                            tables.insert(group.to_owned(), table);
                        }
                    }
                }
            }
        }
        let groups = tables
            .into_iter()
            .map(|(g, t)| {
                let offsets = GroupOffsets {
                    written: Mutex::new(Versioned {
                        table: t.clone(),
                        seq: 0,
                    }),
                    durable: Mutex::new(Versioned { table: t, seq: 0 }),
                };
                (g, Arc::new(offsets))
            })
            .collect();
        Ok(OffsetStore {
            store,
            groups: Mutex::new(groups),
        })
    }

    fn group(&self, group: &str) -> Arc<GroupOffsets> {
        Arc::clone(self.groups.lock().entry(group.to_owned()).or_default())
    }

    /// Runs `f` under the group's commit lock: no commit of the group is between its check
    /// and its append meanwhile.
    pub(crate) fn with_commit_lock<T>(&self, group: &str, f: impl FnOnce() -> T) -> T {
        let g = self.group(group);
        let _held = g.written.lock();
        f()
    }

    /// The group's durably committed offsets (a copy).
    pub(crate) fn table(&self, group: &str) -> OffsetTable {
        match self.groups.lock().get(group) {
            Some(g) => g.durable.lock().table.clone(),
            None => OffsetTable::new(),
        }
    }

    /// Every group with durably committed offsets, sorted.
    pub(crate) fn groups(&self) -> Vec<String> {
        let groups = self.groups.lock();
        let mut names: Vec<String> = groups
            .iter()
            .filter(|(_, g)| !g.durable.lock().table.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// The durably committed offset of one partition.
    pub(crate) fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let g = self.groups.lock().get(group).cloned()?;
        let d = g.durable.lock();
        d.table.get(topic).and_then(|p| p.get(&partition)).copied()
    }

    /// The offset of one partition in the group's newest commit record, durable or not yet
    /// (an async commit in flight). Where a new owner starts: a later commit of it is written
    /// after that record, so it can never move the offset back below an in-flight commit.
    pub(crate) fn latest(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let g = self.groups.lock().get(group).cloned()?;
        let w = g.written.lock();
        w.table.get(topic).and_then(|p| p.get(&partition)).copied()
    }

    /// Merges `offsets` into the group's table and writes the whole table as one message;
    /// returns once it is durable (flushing the store if the flush policy would not flush it
    /// soon). On error the durable table is unchanged.
    pub(crate) fn commit(&self, group: &str, offsets: &[(String, u32, u64)]) -> Result<()> {
        self.commit_checked(group, offsets, || Ok(()))
    }

    /// [`commit`](Self::commit), after `check` passed under the group's commit lock (what a
    /// member's ownership check needs: an eviction takes the same lock, so it cannot slip
    /// between the check and the write).
    pub(crate) fn commit_checked(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
        check: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let g = self.group(group);
        let mut w = g.written.lock();
        check()?;
        let (completion, table, seq) = match self.append(group, &mut w, offsets)? {
            Some(appended) => appended,
            None if g.durable.lock().seq == w.seq => return Ok(()),
            // Nothing new, but an async commit of this table is in flight: write it again and
            // wait (the flush that covers the new record covers the earlier one).
            None => {
                let table = w.table.clone();
                self.append_table(group, &mut w, table)?
            }
        };
        if !completion.is_durable() {
            // The policy's next flush may be far (`Async` flushes on its interval only, maybe
            // never): flush now rather than wait for it. Under `Sync` this joins the group
            // commit in progress.
            self.store.sync()?;
        }
        completion.wait()?;
        mark_durable(&g.durable, table, seq);
        Ok(())
    }

    /// Like [`commit_checked`](Self::commit_checked) but returns once the record is appended;
    /// `on_done` runs when it is durable (or failed), on the thread that made it durable.
    pub(crate) fn commit_async_checked(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
        check: impl FnOnce() -> Result<()>,
        on_done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        let g = self.group(group);
        let mut w = g.written.lock();
        check()?;
        let Some((completion, table, seq)) = self.append(group, &mut w, offsets)? else {
            drop(w);
            on_done(Ok(()));
            return Ok(());
        };
        drop(w);
        completion.on_durable(move |r| {
            if r.is_ok() {
                mark_durable(&g.durable, table, seq);
            }
            on_done(r.map(|_| ()));
        });
        Ok(())
    }

    /// Appends the newest table with `offsets` merged in, unless that changes nothing (`None`).
    fn append(
        &self,
        group: &str,
        w: &mut Versioned,
        offsets: &[(String, u32, u64)],
    ) -> Result<Option<(crate::Completion, OffsetTable, u64)>> {
        let mut next = w.table.clone();
        for (topic, p, offset) in offsets {
            next.entry(topic.clone()).or_default().insert(*p, *offset);
        }
        if next == w.table {
            return Ok(None);
        }
        self.append_table(group, w, next).map(Some)
    }

    fn append_table(
        &self,
        group: &str,
        w: &mut Versioned,
        table: OffsetTable,
    ) -> Result<(crate::Completion, OffsetTable, u64)> {
        let now = u64::try_from(crate::clock::now_ms()).unwrap_or(0);
        let message = Message::new(encode_table(&table, now))
            .with_key(Bytes::copy_from_slice(group.as_bytes()));
        // Always partition 0: one partition keeps loading a single read and the order of a
        // group's commits the order of its records.
        let completion = self.store.append_async(OFFSETS_TOPIC, 0, &[message])?;
        w.seq += 1;
        w.table = table.clone();
        Ok((completion, table, w.seq))
    }
}

/// Records that the table of record `seq` is durable (completions may report out of order).
fn mark_durable(durable: &Mutex<Versioned>, table: OffsetTable, seq: u64) {
    let mut d = durable.lock();
    if seq > d.seq {
        *d = Versioned { table, seq };
    }
}

fn corrupted(store: &dyn LogStore, partition: u32, offset: u64, reason: &str) -> Error {
    Error::corrupted(
        store.dir().join(format!("{OFFSETS_TOPIC}-{partition}")),
        offset,
        format!("commit record at offset {offset}: {reason}"),
    )
}

/// Creates [`OFFSETS_TOPIC`] (compacted, one partition, small segments) unless it exists.
fn ensure_topic(store: &dyn LogStore) -> Result<()> {
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: Some(OFFSETS_SEGMENT_BYTES),
        min_compaction_lag: Some(Duration::ZERO),
        ..TopicConfig::with_partitions(1)
    };
    match store.create_topic(OFFSETS_TOPIC, config) {
        Ok(()) | Err(Error::TopicExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(entries: &[(&str, u32, u64)]) -> OffsetTable {
        let mut t = OffsetTable::new();
        for (topic, p, o) in entries {
            t.entry((*topic).to_owned()).or_default().insert(*p, *o);
        }
        t
    }

    #[test]
    fn round_trips_and_names_damage() {
        let t = table(&[("a", 0, 5), ("a", 7, u64::MAX), ("b", u32::MAX, 0)]);
        let bytes = encode_table(&t, 42);
        assert_eq!(decode_table(&bytes).unwrap(), (t.clone(), 42));
        assert_eq!(
            decode_table(&encode_table(&OffsetTable::new(), 0))
                .unwrap()
                .0
                .len(),
            0
        );
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert!(decode_table(&bad).unwrap_err().contains("checksum"));
        assert!(decode_table(&[]).is_err());
        assert!(decode_table(&bytes[..bytes.len() - 1]).is_err());
    }

    /// The example of docs/format.md, byte for byte.
    #[test]
    fn the_documented_bytes() {
        let t = table(&[("orders", 0, 5), ("orders", 3, 300)]);
        let bytes = encode_table(&t, 0);
        let body = [
            0x01, 0x00, 0x01, 0x06, b'o', b'r', b'd', b'e', b'r', b's', 0x02, 0x00, 0x05, 0x03,
            0xac, 0x02,
        ];
        assert_eq!(&bytes[..16], &body);
        assert_eq!(&bytes[16..], &crc32c::crc32c(&body).to_be_bytes());
    }

    #[test]
    fn an_empty_topic_name_and_partition_zero_round_trip() {
        let t = table(&[("", 0, 0)]);
        assert_eq!(decode_table(&encode_table(&t, 0)).unwrap().0, t);
    }

    /// A value with a valid checksum but malformed contents is still an error.
    #[test]
    fn malformed_contents_behind_a_good_checksum_are_errors() {
        let seal = |mut b: Vec<u8>| {
            let crc = crc32c::crc32c(&b);
            b.extend_from_slice(&crc.to_be_bytes());
            b
        };
        // version 2
        assert!(decode_table(&seal(vec![2, 0, 0])).is_err());
        // one topic whose name runs past the end
        assert!(decode_table(&seal(vec![1, 0, 1, 50, b'a'])).is_err());
        // partitions not ascending: deltas 3 then 0
        assert!(decode_table(&seal(vec![1, 0, 1, 1, b'a', 2, 3, 1, 0, 1])).is_err());
        // trailing byte
        assert!(decode_table(&seal(vec![1, 0, 0, 9])).is_err());
        // partition past u32
        assert!(
            decode_table(&seal(vec![
                1, 0, 1, 1, b'a', 1, 0xff, 0xff, 0xff, 0xff, 0x7f, 0
            ]))
            .is_err()
        );
        // a varint of 11 bytes
        assert!(
            decode_table(&seal(vec![
                1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0
            ]))
            .is_err()
        );
        // invalid UTF-8
        assert!(decode_table(&seal(vec![1, 0, 1, 1, 0xff, 0])).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_table(&bytes);
            // And behind a valid checksum, where the parser itself is reached.
            let mut sealed = bytes.clone();
            let crc = crc32c::crc32c(&sealed);
            sealed.extend_from_slice(&crc.to_be_bytes());
            let _ = decode_table(&sealed);
        }

        #[test]
        fn every_table_round_trips(
            entries in proptest::collection::vec(("[a-z]{0,5}", any::<u32>(), any::<u64>()), 0..30),
            time in any::<u64>(),
        ) {
            let mut t = OffsetTable::new();
            for (topic, p, o) in entries {
                t.entry(topic).or_default().insert(p, o);
            }
            prop_assert_eq!(decode_table(&encode_table(&t, time)).unwrap(), (t, time));
        }
    }
}
