//! Durable committed offsets of consumer groups, in the internal compacted topic
//! `__consumer_offsets`.
//!
//! One commit is one message: key = the group's name, value = the group's *whole* offset table
//! (every topic and partition it ever committed, the new offsets merged in). A single message
//! lands all or nothing on both engines (one CommitLog record with a whole-record CRC, one
//! RecordBatch with a CRC-32C), so a batch of partitions commits atomically; and because each
//! record supersedes every older record of its key, compaction keeps the topic at about one
//! record per group however many commits were made. The codec ([`CommitRecord`]) is pure; the
//! byte layout is drawn in docs/format.md.
//!
//! Each topic's offsets carry the topic's id ([`LogStore::topic_id`]): offsets committed for a
//! topic that was deleted (and maybe created again under its name) no longer apply — they read
//! as "no commit" (Kafka deletes a deleted topic's offsets) and the next commit of the group
//! drops them, so a table stays bounded by the live topics it consumes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::store::{
    AppendResult, CleanupPolicy, IsolationLevel, LogStore, Message, ReadLimits, TopicConfig,
};

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

/// The first byte of a commit record's value when every entry is the record's own (version 1,
/// without topic ids, is still read).
const VERSION: u8 = 2;

/// The first byte of a commit record's value with carried entries (see [`CommitRecord::carried`]):
/// version 2's layout plus one flag byte per partition.
const VERSION_CARRIED: u8 = 3;

/// The first byte of the key of a transaction's offset record (one per group, topic and
/// partition, see [`txn_key`]). Never the first byte of a plain record's key, a group name in
/// UTF-8.
const TXN_KEY: u8 = 0xff;

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

/// The topic ids ([`LogStore::topic_id`]) an [`OffsetTable`]'s topics had when their offsets
/// were committed: topic → id. An offset applies to a topic only while the topic still has that
/// id, so a topic deleted and created again under its name never inherits the old offsets.
pub type TopicIds = BTreeMap<String, u64>;

/// One commit record's value: a group's whole offset table, the ids of its topics and the
/// commit time. The codec is pure; the layout is drawn in docs/format.md.
///
/// ```
/// use duolog::consumer::{CommitRecord, OffsetTable};
/// let mut record = CommitRecord { commit_time_ms: 1_700_000_000_000, ..CommitRecord::default() };
/// record.offsets.entry("orders".into()).or_default().insert(3, 1_000);
/// record.topic_ids.insert("orders".into(), 7);
/// let bytes = record.encode();
/// assert_eq!(CommitRecord::decode(&bytes).unwrap(), record);
/// assert!(CommitRecord::decode(&bytes[..bytes.len() - 1]).is_err());
/// assert!(CommitRecord::decode(b"garbage").unwrap_err().contains("checksum"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitRecord {
    /// Topic → partition → the next offset to consume.
    pub offsets: OffsetTable,
    /// The id of each topic of `offsets` (version-1 records carry none: empty).
    pub topic_ids: TopicIds,
    /// When the commit was made, in milliseconds since the Unix epoch.
    pub commit_time_ms: u64,
    /// The entries of `offsets` this record only carries over from the group's table (the
    /// record did not commit them): when loading, such an entry fills a partition no earlier
    /// record set but never overrides one. So a plain commit of some partitions written while
    /// a transaction's offsets for others were pending never erases them, wherever their
    /// marker lands (version 3; versions 1 and 2 carry none).
    pub carried: BTreeSet<(String, u32)>,
}

impl CommitRecord {
    /// Encodes the record (version 2): `version u8 = 2`, `commit_time_ms varint`,
    /// `topics varint`, then per topic (sorted) `name_len varint, name, topic_id varint,
    /// entries varint`, then per partition (ascending) `partition_delta varint, offset
    /// varint`, and last a CRC-32C (big-endian u32) of every byte before it. A topic without an
    /// id in `topic_ids` is written with id 0 (never a real id: ids start at 1).
    ///
    /// With carried entries it is version 3: the same with one byte after each partition's
    /// offset, 1 if the entry is carried, else 0.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.offsets.len() * 32);
        let version = if self.carried.is_empty() {
            VERSION
        } else {
            VERSION_CARRIED
        };
        out.push(version);
        put_varint(&mut out, self.commit_time_ms);
        put_varint(&mut out, self.offsets.len() as u64);
        for (topic, parts) in &self.offsets {
            put_varint(&mut out, topic.len() as u64);
            out.extend_from_slice(topic.as_bytes());
            put_varint(&mut out, self.topic_ids.get(topic).copied().unwrap_or(0));
            put_varint(&mut out, parts.len() as u64);
            let mut prev = 0u64;
            for (&p, &offset) in parts {
                put_varint(&mut out, u64::from(p) - prev);
                put_varint(&mut out, offset);
                if version == VERSION_CARRIED {
                    out.push(u8::from(self.carried.contains(&(topic.clone(), p))));
                }
                prev = u64::from(p);
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes [`encode`](Self::encode)'s bytes (versions 2 and 3), and version 1 (version 2
    /// without topic ids).
    /// Never panics: anything malformed (unknown version, bad checksum, truncated, trailing
    /// bytes, partitions out of order, names that are not UTF-8) is an error naming the problem.
    pub fn decode(bytes: &[u8]) -> std::result::Result<CommitRecord, String> {
        if bytes.len() < 5 {
            return Err(format!("{} bytes are too short for a commit", bytes.len()));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != stored {
            return Err("checksum mismatch".into());
        }
        let version = body[0];
        if !(1..=VERSION_CARRIED).contains(&version) {
            return Err(format!("unknown commit version {version}"));
        }
        let mut at = 1;
        let mut record = CommitRecord {
            commit_time_ms: get_varint(body, &mut at)?,
            ..CommitRecord::default()
        };
        let topics = get_varint(body, &mut at)?;
        for _ in 0..topics {
            let len = get_varint(body, &mut at)?;
            let end = usize::try_from(len)
                .ok()
                .and_then(|l| at.checked_add(l))
                .filter(|&e| e <= body.len())
                .ok_or("topic name past the end")?;
            let name =
                std::str::from_utf8(&body[at..end]).map_err(|_| "topic name is not UTF-8")?;
            at = end;
            if version >= 2 {
                let id = get_varint(body, &mut at)?;
                if id != 0 {
                    record.topic_ids.insert(name.to_owned(), id);
                }
            }
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
                if version == VERSION_CARRIED {
                    match body.get(at) {
                        Some(0) => {}
                        Some(1) => {
                            record.carried.insert((name.to_owned(), partition));
                        }
                        Some(_) => return Err("carried flag is neither 0 nor 1".into()),
                        None => return Err("truncated carried flag".into()),
                    }
                    at += 1;
                }
                parts.insert(partition, offset);
                prev = Some(p);
            }
            if record.offsets.insert(name.to_owned(), parts).is_some() {
                return Err(format!("topic {name:?} listed twice"));
            }
        }
        if at != body.len() {
            return Err(format!("{} trailing bytes", body.len() - at));
        }
        Ok(record)
    }
}

/// A table, its topics' ids and the order number of the record that holds them.
#[derive(Clone, Default)]
struct Versioned {
    table: OffsetTable,
    ids: TopicIds,
    seq: u64,
    /// Under the commit lock: the order number of the group's newest record, plain or
    /// transactional (records of one group are appended in this order, so a higher number is
    /// a later offset). Unused elsewhere.
    last_record: u64,
    /// Per partition, the offset in [`OFFSETS_TOPIC`] of the record that last set it (Kafka's
    /// `recordOffset`): a committed transaction's offset applies only over an older one (see
    /// [`apply_committed`]). A partition missing here was set by no record this process saw
    /// or loaded with one.
    set_at: SetAt,
}

/// Per (topic, partition), the offset of the record that last set it.
type SetAt = HashMap<(String, u32), u64>;

/// One offset a transaction sent for a group: topic, partition, offset, the topic's id, and the
/// offset of its record in [`OFFSETS_TOPIC`].
type TxnOffset = (String, u32, u64, u64, u64);

/// One group's offsets: what its newest record says (`written`, under the commit lock) and what
/// is known durable (`durable`, what `committed` reports). They differ only while a commit is
/// in flight. Two locks, so a completion callback (run on the thread that made a record
/// durable, maybe the flusher) never waits for a committer that may be waiting for that thread.
///
/// A transaction's offsets (see [`OffsetStore::append_txn`]) wait in `pending`, per producer,
/// until its transaction ends; on commit they are merged into both tables partition by
/// partition (Kafka's pending transactional offsets), so two transactions, or a transaction
/// and plain commits, of one group never erase each other's partitions.
#[derive(Default)]
struct GroupOffsets {
    written: Mutex<Versioned>,
    durable: Mutex<Versioned>,
    /// Producer id → the offsets its open transaction sent for the group.
    pending: Mutex<HashMap<i64, Vec<TxnOffset>>>,
}

/// The committed offsets of every group of a store, loaded from and written to
/// [`OFFSETS_TOPIC`]. Commits of one group are serialised by the group's lock (a sync commit
/// holds it until its record is durable, an async one until it is appended); commits of
/// different groups run in parallel. Shared by every consumer of a
/// [`GroupCoordinator`](crate::consumer::GroupCoordinator).
pub(crate) struct OffsetStore {
    store: Arc<dyn LogStore>,
    groups: Mutex<HashMap<String, Arc<GroupOffsets>>>,
    /// Where loading stopped, per partition, when a transaction still open in the log held the
    /// last stable offset below the end (`None`: loading read everything).
    cut_short: Mutex<Option<Vec<u64>>>,
}

impl OffsetStore {
    /// Creates the offsets topic if it is missing and reads it once from its start.
    pub(crate) fn open(store: Arc<dyn LogStore>) -> Result<OffsetStore> {
        ensure_topic(store.as_ref())?;
        let partitions = store.describe_topic(OFFSETS_TOPIC)?.partitions;
        let from = vec![0; partitions as usize];
        let (tables, mut set_ats, stopped) = load(store.as_ref(), &from)?;
        let cut_short = stopped.iter().any(|&(at, end)| at < end);
        let groups = tables
            .into_iter()
            .map(|(g, (table, ids))| {
                let mut v = versioned(store.as_ref(), table, ids, 0);
                v.set_at = set_ats.remove(&g).unwrap_or_default();
                let offsets = GroupOffsets {
                    written: Mutex::new(v.clone()),
                    durable: Mutex::new(v),
                    pending: Mutex::new(HashMap::new()),
                };
                (g, Arc::new(offsets))
            })
            .collect();
        Ok(OffsetStore {
            store,
            groups: Mutex::new(groups),
            cut_short: Mutex::new(cut_short.then(|| stopped.iter().map(|s| s.0).collect())),
        })
    }

    /// After the transaction coordinator finished the transactions a crash left open: reads
    /// the transactions' offsets that loading could not decide (past the last stable offset
    /// they held) and merges the committed ones in. Plain commits past that offset were
    /// applied at load already.
    pub(crate) fn reload(&self) -> Result<()> {
        let Some(from) = self.cut_short.lock().take() else {
            return Ok(());
        };
        let (tables, set_ats, stopped) = load_from(self.store.as_ref(), &from, Load::TxnOnly)?;
        if stopped.iter().any(|&(at, end)| at < end) {
            *self.cut_short.lock() = Some(stopped.iter().map(|s| s.0).collect());
        }
        for (group, (table, ids)) in tables {
            let set_at = set_ats.get(&group);
            let entries: Vec<TxnOffset> = table
                .into_iter()
                .flat_map(|(topic, parts)| {
                    let id = ids.get(&topic).copied().unwrap_or(0);
                    parts.into_iter().map(move |(p, o)| {
                        let at = set_at
                            .and_then(|s| s.get(&(topic.clone(), p)))
                            .copied()
                            .unwrap_or(0);
                        (topic.clone(), p, o, id, at)
                    })
                })
                .collect();
            apply_committed(&self.group(&group), &entries);
        }
        Ok(())
    }
}

/// Merges a committed transaction's offsets into a group's tables, partition by partition,
/// each only over an offset set by an older record: a plain commit written after the
/// transaction's offset record (before its marker) stays, as loading the log in order gives.
/// Kafka's rule, `OffsetMetadataManager.replayEndTransactionMarker`
/// (group-coordinator/src/main/java/org/apache/kafka/coordinator/group/OffsetMetadataManager.java):
/// "We always keep the most recent committed offset when we have a mix of transactional and
/// regular offset commits" — applied only if `recordOffset` is greater than the current one's.
fn apply_committed(g: &GroupOffsets, entries: &[TxnOffset]) {
    if entries.is_empty() {
        return;
    }
    let merge = |v: &mut Versioned| {
        for (topic, p, offset, id, at) in entries {
            if v.ids.get(topic) != Some(id) {
                // A topic new to the group, or a new one under an old name.
                v.table.remove(topic);
                v.set_at.retain(|(t, _), _| t != topic);
                v.ids.insert(topic.clone(), *id);
            }
            let key = (topic.clone(), *p);
            if v.set_at.get(&key).is_some_and(|&newer| newer > *at) {
                continue;
            }
            v.set_at.insert(key, *at);
            v.table
                .entry(topic.clone())
                .or_default()
                .insert(*p, *offset);
        }
    };
    let mut w = g.written.lock();
    merge(&mut w);
    w.last_record += 1;
    w.seq = w.last_record;
    // Durable already (the coordinator synced the store before deciding the commit). Merged
    // into the durable table as it stands, not as a copy of `written`, which may hold an
    // async commit still in flight.
    let mut d = g.durable.lock();
    merge(&mut d);
}

/// A loaded record as a group's table; version-1 records carry no ids: their topics are taken
/// as the ones living now.
fn versioned(store: &dyn LogStore, table: OffsetTable, ids: TopicIds, seq: u64) -> Versioned {
    let mut v = Versioned {
        table,
        ids,
        seq,
        last_record: seq,
        set_at: SetAt::new(),
    };
    for topic in v.table.keys() {
        if !v.ids.contains_key(topic)
            && let Ok(id) = store.topic_id(topic)
        {
            v.ids.insert(topic.clone(), id);
        }
    }
    v
}

/// What loading found: each group's table and topic ids, and per partition where the
/// transactions it could decide end (the last stable offset reached) and the end.
/// Also per group, the record offset that set each partition (see [`Versioned::set_at`]).
type Loaded = (
    HashMap<String, (OffsetTable, TopicIds)>,
    HashMap<String, SetAt>,
    Vec<(u64, u64)>,
);

/// Which records a load applies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Everything decided: below the last stable offset every plain record and every committed
    /// transaction's offsets, past it plain records only (a transaction left open by a crash
    /// must not hide the plain commits of every group made after it).
    All,
    /// Only transactions' offsets, below the last stable offset (the plain ones were applied).
    TxnOnly,
}

/// The key of a transaction's offset record: `0xff, group_len u8, group, partition u32 BE,
/// topic`. One key per group, topic and partition (Kafka's offset key), so compaction keeps
/// each partition's newest transactional offset and no transaction's record ever supersedes
/// another's partitions; plain records keep the group's name as key.
fn txn_key(group: &str, topic: &str, partition: u32) -> Bytes {
    let mut key = Vec::with_capacity(6 + group.len() + topic.len());
    key.push(TXN_KEY);
    // Group names are at most 255 bytes (`validate_group`).
    key.push(u8::try_from(group.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(group.as_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    Bytes::from(key)
}

/// The group a record's key names, and whether it is a transaction's offset record.
fn group_of(key: &[u8]) -> std::result::Result<(&str, bool), &'static str> {
    let (name, txn) = match key {
        [TXN_KEY, len, rest @ ..] => (
            rest.get(..usize::from(*len))
                .filter(|_| rest.len() >= usize::from(*len) + 4)
                .ok_or("transactional offset key too short")?,
            true,
        ),
        _ => (key, false),
    };
    let group = std::str::from_utf8(name).map_err(|_| "group name is not UTF-8")?;
    Ok((group, txn))
}

/// Merges one record into a group's table, partition by partition: an entry the record
/// committed always applies (it is newer), a carried one only where no record set the
/// partition yet.
fn merge_record(into: &mut (OffsetTable, TopicIds), record: CommitRecord) {
    let (table, ids) = into;
    for (topic, parts) in record.offsets {
        if let Some(&id) = record.topic_ids.get(&topic) {
            if ids.get(&topic).is_some_and(|&old| old != id) {
                table.remove(&topic);
            }
            ids.insert(topic.clone(), id);
        }
        let t = table.entry(topic.clone()).or_default();
        for (p, offset) in parts {
            if !t.contains_key(&p) || !record.carried.contains(&(topic.clone(), p)) {
                t.insert(p, offset);
            }
        }
    }
}

/// Reads the offsets topic from `from` (per partition), see [`Load::All`].
fn load(store: &dyn LogStore, from: &[u64]) -> Result<Loaded> {
    load_from(store, from, Load::All)
}

/// Reads the offsets topic from `from` (per partition): up to the last stable offset under
/// `read_committed` (offsets a transaction wrote apply only once it committed, never if it
/// aborted), then (with [`Load::All`]) on to the end under `read_uncommitted`, applying plain
/// records only.
fn load_from(store: &dyn LogStore, from: &[u64], mode: Load) -> Result<Loaded> {
    let mut tables: HashMap<String, (OffsetTable, TopicIds)> = HashMap::new();
    let mut set_ats: HashMap<String, SetAt> = HashMap::new();
    let mut stopped = Vec::with_capacity(from.len());
    for (p, &from) in (0u32..).zip(from) {
        let bounds = store.bounds(OFFSETS_TOPIC, p)?;
        let mut at = bounds.start.max(from);
        let mut stable = None;
        let passes: &[(IsolationLevel, u64)] = match mode {
            Load::All => &[
                (IsolationLevel::ReadCommitted, bounds.last_stable),
                (IsolationLevel::ReadUncommitted, bounds.end),
            ],
            Load::TxnOnly => &[(IsolationLevel::ReadCommitted, bounds.last_stable)],
        };
        for &(isolation, until) in passes {
            let limits = ReadLimits::messages(FETCH).with_isolation(isolation);
            let undecided = isolation == IsolationLevel::ReadUncommitted;
            while at < until {
                let fetch = match store.fetch(OFFSETS_TOPIC, p, at, limits) {
                    Ok(f) => f,
                    Err(Error::OffsetOutOfRange { start, .. }) if start > at => {
                        at = start;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if fetch.next_offset <= at {
                    break;
                }
                at = fetch.next_offset.min(until);
                for r in &fetch.records {
                    if r.offset() >= until {
                        break;
                    }
                    let Some(key) = r.key() else { continue };
                    let (group, txn) =
                        group_of(key).map_err(|e| corrupted(store, p, r.offset(), e))?;
                    // Past the last stable offset a transaction's record may still abort:
                    // left for `reload` once the coordinator decided it.
                    if (txn && undecided) || (!txn && mode == Load::TxnOnly) {
                        continue;
                    }
                    match r.value() {
                        None => {
                            tables.remove(group);
                            set_ats.remove(group);
                        }
                        Some(v) => {
                            let record = CommitRecord::decode(v)
                                .map_err(|e| corrupted(store, p, r.offset(), &e))?;
                            let set_at = set_ats.entry(group.to_owned()).or_default();
                            for (topic, parts) in &record.offsets {
                                for part in parts.keys() {
                                    let key = (topic.clone(), *part);
                                    if !record.carried.contains(&key) {
                                        set_at.insert(key, r.offset());
                                    }
                                }
                            }
                            merge_record(tables.entry(group.to_owned()).or_default(), record);
                        }
                    }
                }
            }
            stable.get_or_insert(at);
        }
        stopped.push((stable.unwrap_or(at), bounds.end));
    }
    Ok((tables, set_ats, stopped))
}

impl OffsetStore {
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

    /// Whether offsets committed for `topic` under `id` still apply: the topic lives and has
    /// that id (it was not deleted, nor deleted and created again).
    fn applies(&self, ids: &TopicIds, topic: &str) -> bool {
        ids.get(topic)
            .is_some_and(|&id| self.store.topic_id(topic).ok() == Some(id))
    }

    /// The group's durably committed offsets of live topics (a copy).
    pub(crate) fn table(&self, group: &str) -> OffsetTable {
        let Some(g) = self.groups.lock().get(group).cloned() else {
            return OffsetTable::new();
        };
        let d = g.durable.lock().clone();
        let mut table = d.table;
        table.retain(|topic, _| self.applies(&d.ids, topic));
        table
    }

    /// Every group with durably committed offsets, sorted.
    pub(crate) fn groups(&self) -> Vec<String> {
        let groups: Vec<(String, Arc<GroupOffsets>)> = self
            .groups
            .lock()
            .iter()
            .map(|(name, g)| (name.clone(), Arc::clone(g)))
            .collect();
        let mut names: Vec<String> = groups
            .into_iter()
            .filter(|(name, _)| !self.table(name).is_empty())
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names
    }

    /// The durably committed offset of one partition.
    pub(crate) fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let g = self.groups.lock().get(group).cloned()?;
        let d = g.durable.lock().clone();
        let offset = d
            .table
            .get(topic)
            .and_then(|p| p.get(&partition))
            .copied()?;
        self.applies(&d.ids, topic).then_some(offset)
    }

    /// The offset of one partition in the group's newest commit record, durable or not yet
    /// (an async commit in flight). Where a new owner starts: a later commit of it is written
    /// after that record, so it can never move the offset back below an in-flight commit.
    pub(crate) fn latest(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let g = self.groups.lock().get(group).cloned()?;
        let (offset, ids) = {
            let w = g.written.lock();
            let offset = w
                .table
                .get(topic)
                .and_then(|p| p.get(&partition))
                .copied()?;
            (offset, w.ids.clone())
        };
        self.applies(&ids, topic).then_some(offset)
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
        let (completion, next, seq) = match self.append(group, &mut w, offsets)? {
            Some(appended) => appended,
            None if g.durable.lock().seq == w.seq => return Ok(()),
            // Nothing new, but an async commit of this table is in flight: write it again and
            // wait (the flush that covers the new record covers the earlier one).
            None => {
                let same = w.clone();
                self.append_table(group, &mut w, same, offsets)?
            }
        };
        if !completion.is_durable() {
            // The policy's next flush may be far (`Async` flushes on its interval only, maybe
            // never): flush now rather than wait for it. Under `Sync` this joins the group
            // commit in progress.
            self.store.sync()?;
        }
        completion.wait()?;
        mark_durable(&g.durable, next, seq);
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
        let Some((completion, next, seq)) = self.append(group, &mut w, offsets)? else {
            drop(w);
            on_done(Ok(()));
            return Ok(());
        };
        drop(w);
        completion.on_durable(move |r| {
            if r.is_ok() {
                mark_durable(&g.durable, next, seq);
            }
            on_done(r.map(|_| ()));
        });
        Ok(())
    }

    /// Appends the newest table with `offsets` merged in, unless that changes nothing (`None`).
    /// A commit for a topic that does not exist is `UnknownTopic`. Offsets of topics deleted
    /// since (or deleted and created again) are dropped from the new table.
    fn append(
        &self,
        group: &str,
        w: &mut Versioned,
        offsets: &[(String, u32, u64)],
    ) -> Result<Option<(crate::Completion, Versioned, u64)>> {
        let next = self.merged(w, offsets)?;
        if next.table == w.table && next.ids == w.ids {
            return Ok(None);
        }
        self.append_table(group, w, next, offsets).map(Some)
    }

    /// The newest table with `offsets` merged in; offsets of topics deleted since (or deleted
    /// and created again) dropped. A topic that does not exist is `UnknownTopic`.
    fn merged(&self, w: &Versioned, offsets: &[(String, u32, u64)]) -> Result<Versioned> {
        let mut next = Versioned {
            table: w.table.clone(),
            ids: w.ids.clone(),
            seq: w.seq,
            last_record: w.last_record,
            set_at: w.set_at.clone(),
        };
        for (topic, p, offset) in offsets {
            let id = self.store.topic_id(topic)?;
            if next.ids.get(topic) != Some(&id) {
                // A new topic for the group, or a new one under an old name: the old
                // generation's partitions go.
                next.table.remove(topic);
                next.ids.insert(topic.clone(), id);
            }
            next.table
                .entry(topic.clone())
                .or_default()
                .insert(*p, *offset);
        }
        let stale: Vec<String> = next
            .table
            .keys()
            .filter(|topic| !self.applies(&next.ids, topic))
            .cloned()
            .collect();
        for topic in stale {
            next.table.remove(&topic);
            next.ids.remove(&topic);
        }
        next.ids.retain(|topic, _| next.table.contains_key(topic));
        Ok(next)
    }

    /// Writes a transaction's offsets for `group` through `append` (a transactional append of
    /// the producer `producer_id`): one record per partition, keyed by group, topic and
    /// partition ([`txn_key`]), each holding that partition's offset only. They apply, merged
    /// partition by partition, when [`complete_txn`](Self::complete_txn) reports the
    /// transaction committed. A topic that does not exist is `UnknownTopic`; `offsets` must not
    /// name a partition twice (the caller keeps the last). `check` runs first, under the
    /// group's commit lock.
    pub(crate) fn append_txn(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
        producer_id: i64,
        check: impl FnOnce() -> Result<()>,
        append: impl FnOnce(Vec<Message>) -> Result<AppendResult>,
    ) -> Result<AppendResult> {
        let g = self.group(group);
        // The commit lock: `check` (a member's ownership) holds until the records are
        // appended, as for a plain commit.
        let _held = g.written.lock();
        check()?;
        let now = u64::try_from(crate::clock::now_ms()).unwrap_or(0);
        let mut sent = Vec::with_capacity(offsets.len());
        let mut messages = Vec::with_capacity(offsets.len());
        for (topic, p, offset) in offsets {
            let id = self.store.topic_id(topic)?;
            let mut record = CommitRecord {
                commit_time_ms: now,
                ..CommitRecord::default()
            };
            record
                .offsets
                .entry(topic.clone())
                .or_default()
                .insert(*p, *offset);
            record.topic_ids.insert(topic.clone(), id);
            messages.push(Message::new(record.encode()).with_key(txn_key(group, topic, *p)));
            sent.push((topic.clone(), *p, *offset, id, 0));
        }
        let result = append(messages)?;
        // One record per partition, in order: the i-th at `base_offset + i`.
        for (i, entry) in (0u64..).zip(sent.iter_mut()) {
            entry.4 = result.base_offset + i;
        }
        let mut pending = g.pending.lock();
        let mine = pending.entry(producer_id).or_default();
        // A later offset of the same partition in one transaction replaces the earlier.
        mine.retain(|(t, p, ..)| !sent.iter().any(|(t2, p2, ..)| t == t2 && p == p2));
        mine.extend(sent);
        Ok(result)
    }

    /// The transaction of `producer_id` ended: on commit its offsets are merged into each
    /// group's tables partition by partition (durable: the coordinator synced the store before
    /// deciding the commit); on abort they are dropped.
    pub(crate) fn complete_txn(&self, producer_id: i64, commit: bool) {
        let groups: Vec<Arc<GroupOffsets>> = self.groups.lock().values().cloned().collect();
        for g in groups {
            let mine = g.pending.lock().remove(&producer_id);
            if let (true, Some(entries)) = (commit, mine) {
                apply_committed(&g, &entries);
            }
        }
    }

    /// Writes `next`, the group's whole table, as one plain record: the entries of `offsets`
    /// as committed by it; every other one as committed too, unless a transaction's offset
    /// record for its partition may still apply over it, then as carried
    /// ([`CommitRecord::carried`], see [`carried_entries`]).
    fn append_table(
        &self,
        group: &str,
        w: &mut Versioned,
        next: Versioned,
        offsets: &[(String, u32, u64)],
    ) -> Result<(crate::Completion, Versioned, u64)> {
        let now = u64::try_from(crate::clock::now_ms()).unwrap_or(0);
        let carried = {
            let g = self.group(group);
            let pending = g.pending.lock();
            // Loading could not yet decide the transactions a crash left open (`reload` has
            // not run): their offset records are known to no one here, so every entry not
            // committed now stays carried.
            let undecided = self.cut_short.lock().is_some();
            carried_entries(&next, offsets, &pending, undecided)
        };
        let record = CommitRecord {
            offsets: next.table,
            topic_ids: next.ids,
            commit_time_ms: now,
            carried,
        };
        let message =
            Message::new(record.encode()).with_key(Bytes::copy_from_slice(group.as_bytes()));
        // Always partition 0: one partition keeps loading a single read and the order of a
        // group's commits the order of its records.
        let completion = self.store.append_async(OFFSETS_TOPIC, 0, &[message])?;
        let at = completion.offsets().base_offset;
        w.last_record += 1;
        w.seq = w.last_record;
        w.table = record.offsets;
        w.ids = record.topic_ids;
        w.set_at = next.set_at;
        // Every entry written as committed is set by this record, as loading will find it.
        for (topic, parts) in &w.table {
            for &p in parts.keys() {
                let key = (topic.clone(), p);
                if !record.carried.contains(&key) {
                    w.set_at.insert(key, at);
                }
            }
        }
        Ok((completion, w.clone(), w.seq))
    }
}

/// The entries of `next` a plain record must write as *carried*: those it does not commit
/// (`offsets`) whose value may be older than a transaction's offset record for the partition
/// that is still to be decided — a pending one (of an open transaction) written after the
/// record that set the value (or the value's record is unknown), or any one while loading has
/// undecided transactions. Every other entry is written as committed, with the value it holds.
///
/// Why not carry every entry: compaction keeps a partition's newest *transactional* record
/// (its own key) but only the group's newest *plain* record. Were a value set by a plain commit
/// newer than a transaction's record only ever carried by the records after it, compaction
/// would drop the commit and a reload would apply the older transactional offset (a carried
/// entry never overrides). Written as committed, each later plain record overrides it again on
/// load, as the live table does. A carried entry stays only where the transaction's record is
/// the newer one: there it must win on load, and does.
fn carried_entries(
    next: &Versioned,
    offsets: &[(String, u32, u64)],
    pending: &HashMap<i64, Vec<TxnOffset>>,
    undecided: bool,
) -> BTreeSet<(String, u32)> {
    let pending_after = |topic: &str, p: u32, set_at: Option<u64>| {
        pending
            .values()
            .flatten()
            .any(|(t, tp, _, _, at)| t == topic && *tp == p && set_at.is_none_or(|s| s < *at))
    };
    next.table
        .iter()
        .flat_map(|(topic, parts)| parts.keys().map(move |&p| (topic.clone(), p)))
        .filter(|(topic, p)| !offsets.iter().any(|(t, p2, _)| t == topic && p2 == p))
        .filter(|key| undecided || pending_after(&key.0, key.1, next.set_at.get(key).copied()))
        .collect()
}

/// Records that the table of record `seq` is durable (completions may report out of order).
/// Partitions the durable table holds from a newer record than `written` does (a transaction
/// committed while this plain commit was in flight, see [`apply_committed`]) keep their value.
fn mark_durable(durable: &Mutex<Versioned>, written: Versioned, seq: u64) {
    let mut d = durable.lock();
    if seq > d.seq {
        let old = std::mem::replace(&mut *d, Versioned { seq, ..written });
        for ((topic, p), at) in old.set_at {
            if d.set_at.get(&(topic.clone(), p)).is_some_and(|&w| w >= at) {
                continue;
            }
            let Some(&offset) = old.table.get(&topic).and_then(|parts| parts.get(&p)) else {
                continue;
            };
            if let Some(&id) = old.ids.get(&topic) {
                if d.ids.get(&topic).is_some_and(|&new| new != id) {
                    // The topic was made again since: the old generation's offset is gone.
                    continue;
                }
                d.ids.insert(topic.clone(), id);
            }
            d.table.entry(topic.clone()).or_default().insert(p, offset);
            d.set_at.insert((topic, p), at);
        }
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

    fn record(entries: &[(&str, u32, u64)], time: u64) -> CommitRecord {
        let mut r = CommitRecord {
            commit_time_ms: time,
            ..CommitRecord::default()
        };
        for (n, (topic, p, o)) in entries.iter().enumerate() {
            r.offsets
                .entry((*topic).to_owned())
                .or_default()
                .insert(*p, *o);
            r.topic_ids.insert((*topic).to_owned(), n as u64 + 1);
        }
        r
    }

    #[test]
    fn round_trips_and_names_damage() {
        let r = record(&[("a", 0, 5), ("a", 7, u64::MAX), ("b", u32::MAX, 0)], 42);
        let bytes = r.encode();
        assert_eq!(CommitRecord::decode(&bytes).unwrap(), r);
        assert!(
            CommitRecord::decode(&CommitRecord::default().encode())
                .unwrap()
                .offsets
                .is_empty()
        );
        let mut bad = bytes.clone();
        bad[0] = 3;
        assert!(CommitRecord::decode(&bad).unwrap_err().contains("checksum"));
        assert!(CommitRecord::decode(&[]).is_err());
        assert!(CommitRecord::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// The example of docs/format.md, byte for byte.
    #[test]
    fn the_documented_bytes() {
        let mut r = record(&[("orders", 0, 5), ("orders", 3, 300)], 0);
        r.topic_ids.insert("orders".into(), 7);
        let bytes = r.encode();
        let body = [
            0x02, 0x00, 0x01, 0x06, b'o', b'r', b'd', b'e', b'r', b's', 0x07, 0x02, 0x00, 0x05,
            0x03, 0xac, 0x02,
        ];
        assert_eq!(&bytes[..17], &body);
        assert_eq!(&bytes[17..], &crc32c::crc32c(&body).to_be_bytes());
    }

    /// Version 1 (no topic ids), as the first consumer layer wrote it, still reads.
    #[test]
    fn version_one_records_still_read() {
        let body = vec![
            0x01, 0x00, 0x01, 0x06, b'o', b'r', b'd', b'e', b'r', b's', 0x02, 0x00, 0x05, 0x03,
            0xac, 0x02,
        ];
        let mut bytes = body.clone();
        bytes.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        let r = CommitRecord::decode(&bytes).unwrap();
        assert_eq!(r.offsets["orders"][&3], 300);
        assert!(r.topic_ids.is_empty());
    }

    /// A record with carried entries is version 3 and keeps which entries are carried.
    #[test]
    fn carried_entries_round_trip_as_version_three() {
        let mut r = record(&[("a", 0, 5), ("a", 2, 7)], 9);
        r.carried.insert(("a".into(), 2));
        let bytes = r.encode();
        assert_eq!(bytes[0], 3);
        assert_eq!(CommitRecord::decode(&bytes).unwrap(), r);
        assert!(CommitRecord::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// Loading merges partition by partition: a carried entry fills a missing partition but
    /// never overrides one an earlier record set (a transaction's committed offset).
    #[test]
    fn a_carried_entry_never_overrides_a_partition_already_set() {
        let mut table = (OffsetTable::new(), TopicIds::new());
        merge_record(&mut table, record(&[("a", 0, 10)], 1));
        let mut plain = record(&[("a", 0, 3), ("a", 1, 4)], 2);
        // One topic, one id (the helper numbers entries).
        plain.topic_ids.insert("a".into(), 1);
        plain.carried.insert(("a".into(), 0));
        merge_record(&mut table, plain);
        assert_eq!(table.0["a"], BTreeMap::from([(0, 10), (1, 4)]));
        merge_record(&mut table, record(&[("a", 0, 12)], 3));
        assert_eq!(table.0["a"][&0], 12);
    }

    /// A transaction's offset key names its group; a key too short for one is an error.
    #[test]
    fn transactional_keys_name_their_group() {
        let key = txn_key("g", "topic", 3);
        assert_eq!(group_of(&key).unwrap(), ("g", true));
        assert_eq!(group_of(b"plain").unwrap(), ("plain", false));
        assert!(group_of(&key[..4]).is_err());
        assert!(group_of(&[0xfe]).is_err());
    }

    #[test]
    fn an_empty_topic_name_and_partition_zero_round_trip() {
        let r = record(&[("", 0, 0)], 0);
        assert_eq!(CommitRecord::decode(&r.encode()).unwrap(), r);
    }

    /// A value with a valid checksum but malformed contents is still an error.
    #[test]
    fn malformed_contents_behind_a_good_checksum_are_errors() {
        let seal = |mut b: Vec<u8>| {
            let crc = crc32c::crc32c(&b);
            b.extend_from_slice(&crc.to_be_bytes());
            b
        };
        // version 4
        assert!(CommitRecord::decode(&seal(vec![4, 0, 0])).is_err());
        // version 3: a carried flag of 2
        assert!(CommitRecord::decode(&seal(vec![3, 0, 1, 1, b'a', 1, 1, 0, 5, 2])).is_err());
        // version 2: a topic whose id is missing
        assert!(CommitRecord::decode(&seal(vec![2, 0, 1, 1, b'a'])).is_err());
        // one topic whose name runs past the end
        assert!(CommitRecord::decode(&seal(vec![1, 0, 1, 50, b'a'])).is_err());
        // partitions not ascending: deltas 3 then 0
        assert!(CommitRecord::decode(&seal(vec![1, 0, 1, 1, b'a', 2, 3, 1, 0, 1])).is_err());
        // trailing byte
        assert!(CommitRecord::decode(&seal(vec![1, 0, 0, 9])).is_err());
        // partition past u32
        assert!(
            CommitRecord::decode(&seal(vec![
                1, 0, 1, 1, b'a', 1, 0xff, 0xff, 0xff, 0xff, 0x7f, 0
            ]))
            .is_err()
        );
        // a varint of 11 bytes
        assert!(
            CommitRecord::decode(&seal(vec![
                1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0
            ]))
            .is_err()
        );
        // invalid UTF-8
        assert!(CommitRecord::decode(&seal(vec![1, 0, 1, 1, 0xff, 0])).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CommitRecord::decode(&bytes);
            // And behind a valid checksum, where the parser itself is reached.
            let mut sealed = bytes.clone();
            let crc = crc32c::crc32c(&sealed);
            sealed.extend_from_slice(&crc.to_be_bytes());
            let _ = CommitRecord::decode(&sealed);
        }

        #[test]
        fn every_table_round_trips(
            entries in proptest::collection::vec(("[a-z]{0,5}", any::<u32>(), any::<u64>()), 0..30),
            time in any::<u64>(),
        ) {
            let mut r = CommitRecord { commit_time_ms: time, ..CommitRecord::default() };
            for (topic, p, o) in entries {
                r.offsets.entry(topic.clone()).or_default().insert(p, o);
                r.topic_ids.insert(topic, u64::from(p) + 1);
            }
            prop_assert_eq!(CommitRecord::decode(&r.encode()).unwrap(), r);
        }
    }
}
