//! [`DelayQueue`]: scheduling, the enqueue step (messages → timer log + wheel), delivery rounds
//! (due slots → real topics, with an INTENT/DONE pair around each), recovery and the two
//! background threads.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::codec::{EntryKind, NO_ENTRY, Phase, Progress, TimerEntry};
use super::wheel::Wheel;
use super::{
    Clock, DELAY_ID, DELAY_LEVELS, DELAY_REAL_PARTITION, DELAY_REAL_TOPIC, DELAY_UNDELIVERABLE,
    DelayHandle, DelayOptions, MESSAGES_TOPIC, PROGRESS_TOPIC, PumpReport, TIMER_DELIVER_MS,
    TIMER_DEQUEUE_MS, TIMER_ENQUEUE_MS, TIMER_LOG_TOPIC, UNDELIVERABLE_TOPIC,
};
use crate::durability::{Wakeup, wait_any};
use crate::error::{Error, Result};
use crate::store::{CleanupPolicy, LogStore, Message, ReadLimits, Record, TopicConfig};

/// Property of a cancel record in `__delay_messages`: the id of the message it cancels.
const DELAY_CANCEL: &str = "DELAY_CANCEL";
/// Property of a cancel re-appended because its message was not processed yet: how many times.
const DELAY_CANCEL_ROLLS: &str = "DELAY_CANCEL_ROLLS";
/// Property of a scheduled message's stored copy that holds the room its roll needs: a roll
/// replaces it with `DELAY_ID` (a shorter name, an id of at most 20 digits), so a message the
/// layer accepted can always be rolled (its copy never grows past the size it was accepted at).
const DELAY_ROLL_ROOM: &str = "DELAY_ROLL_ROOM";
/// The room: as many characters as the longest id.
const ROLL_ROOM: &str = "18446744073709551615";
/// Every property the layer writes; a scheduled message may not carry any of them (a copy of a
/// delivered message drops them before it is scheduled again).
pub const LAYER_PROPERTIES: [&str; 10] = [
    TIMER_DELIVER_MS,
    TIMER_ENQUEUE_MS,
    TIMER_DEQUEUE_MS,
    DELAY_ID,
    DELAY_UNDELIVERABLE,
    DELAY_REAL_TOPIC,
    DELAY_REAL_PARTITION,
    DELAY_CANCEL,
    DELAY_CANCEL_ROLLS,
    DELAY_ROLL_ROOM,
];
/// A cancel whose message never shows up (a handle forged or too old to check) stops being
/// re-appended after this many laps past its due time.
const MAX_CANCEL_ROLLS: u32 = 16;
/// Records of `__delay_messages` read per enqueue batch.
const ENQUEUE_BATCH: usize = 1024;
/// Messages per append when delivering.
const DELIVERY_BATCH: usize = 256;
/// Retention of the internal topics runs after this many rounds, and when the timer goes idle
/// after any.
const RETENTION_EVERY: u32 = 64;
/// While the timer stays idle, retention runs this often (void entries of records the wheel
/// ignores go too).
const REFRESH_AFTER_MS: i64 = 60_000;
/// Key of every progress record (the topic is compacted: the latest is the state).
const PROGRESS_KEY: &str = "progress";

/// Stores served by a live delay queue in this process, by directory: two queues on one store
/// would both deliver every message.
static SERVED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The queues handed out by [`DelayQueue::shared`], by store directory (dropped ones linger as
/// dead weak references until the next call).
static SHARED: Mutex<Vec<(PathBuf, std::sync::Weak<DelayQueue>)>> = Mutex::new(Vec::new());

/// A message a round writes: (its slot, its id, the message).
type Outgoing = (i64, u64, Message);

/// The open slot: one processed in part. A slot's entries go out in (effective due time,
/// timer-log offset) order as their exact due times pass, so what is done is a prefix in that
/// order, named by its last entry (the watermark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Partial {
    slot: i64,
    /// The watermark: entries at or before (due, offset) are done. `(i64::MIN, 0)`: none.
    due: i64,
    offset: u64,
    /// A format-1 store's cursor in this slot: entries above `above` and below `below` were
    /// processed (newest first, as format 1 did). `above == NO_ENTRY`: none.
    above: u64,
    below: u64,
}

impl Partial {
    fn new(slot: i64) -> Partial {
        Partial {
            slot,
            due: i64::MIN,
            offset: 0,
            above: NO_ENTRY,
            below: 0,
        }
    }
}

/// A ready entry of a slot: (effective due time, order key, timer-log offset, entry), ordered
/// by the first two (a round takes the smallest). The order key is the offset, or its
/// complement when redoing a format-1 round (which took a slot's newest entries first).
#[derive(Clone, Copy, Debug)]
struct Candidate(i64, u64, u64, TimerEntry);

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

/// The open slot's pending entries, by (effective due time, timer-log offset): its chain walked
/// once (the first round of the slot) and kept, so later rounds take the smallest ready ones
/// without walking it again; entries placed in the slot later are added by the enqueue step.
/// A cache only: the watermark in the progress records says what is done, and it is rebuilt
/// by a walk after an open (or whenever its count disagrees with the wheel's).
#[derive(Debug)]
struct OpenEntries {
    slot: i64,
    entries: BTreeMap<(i64, u64), TimerEntry>,
}

/// Walks of a slot too large for [`OpenEntries`] are at most this many per slot (plus one per
/// round of `max_round` entries): such a slot is walked again only once per this fraction of
/// the precision, so its messages may be up to `precision / OVER_CAP_WINDOWS` late.
const OVER_CAP_WINDOWS: i64 = 64;

/// What a round did to one slot: entries taken (cancels among them), entries lost under the
/// layer, the last taken (effective due time, offset).
struct SlotStep {
    slot: i64,
    taken: u32,
    cancels: u32,
    lost: u32,
    last: Option<(i64, u64)>,
}

/// Delivery state, changed only under [`Shared::state`].
struct State {
    wheel: Wheel,
    /// Next offset of `__delay_messages` to place.
    cursor: u64,
    /// The last slot processed completely.
    read_time: i64,
    /// The open slot, processed in part.
    partial: Option<Partial>,
    /// The earliest effective due time of a pending entry of an open slot that is not due
    /// yet, as the last round that found nothing to do saw it: when the timer looks again.
    next_ready: Option<i64>,
    /// The earliest effective due time among entries placed since the timer last looked.
    placed_min: Option<i64>,
    /// When the sleeping timer thread will look again (`None`: it is awake). The enqueue
    /// thread wakes it only for entries due before that: waking it for later ones would only
    /// make it walk the open slot again for nothing.
    timer_sleeps_until: Option<i64>,
    /// Ids of messages with a pending cancel (one u64 per pending cancel, not per message).
    pending_cancels: HashSet<u64>,
    /// The open slot's pending entries (at most `max_open_slot_entries`).
    open_entries: Option<OpenEntries>,
    /// A slot too large for `open_entries`: (slot, time before which it is not walked again).
    walk_gate: Option<(i64, i64)>,
    /// The INTENT of a round whose DONE is not written: the next round redoes it.
    intent: Option<Progress>,
    rounds_since_retention: u32,
    /// Wall time of the last idle retention (see `retain_idle`).
    last_retention_ms: i64,
}

struct Shared {
    store: Arc<dyn LogStore>,
    clock: Arc<dyn Clock>,
    precision: i64,
    slots: u32,
    max_delay_ms: Option<i64>,
    max_round: usize,
    max_round_bytes: usize,
    max_open_slot_entries: usize,
    dir: PathBuf,
    state: Mutex<State>,
    closed: AtomicBool,
    /// Wakes the timer thread (clock change, new entries, close).
    timer_wakeup: Wakeup,
    /// Ends the enqueue thread's long poll (close).
    enqueue_wakeup: Wakeup,
    /// The first error of a background thread, returned by the next call.
    error: Mutex<Option<Error>>,
}

/// Delayed and scheduled messages over a store: see the [module docs](super).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use duolog::delay::{DelayOptions, DelayQueue, ManualClock, TIMER_DELIVER_MS};
/// use duolog::{LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// store.create_topic("orders", TopicConfig::default())?;
/// let clock = Arc::new(ManualClock::new(1_700_000_000_000));
/// let options = DelayOptions { clock: clock.clone(), background: false, ..DelayOptions::default() };
/// let delay = DelayQueue::open(Arc::clone(&store), options)?;
/// let handle = delay.schedule_after("orders", 0, Message::new("pay now"), Duration::from_secs(30))?;
/// delay.pump()?;
/// assert!(store.read("orders", 0, 0, ReadLimits::default())?.is_empty(), "not yet due");
/// clock.advance(Duration::from_secs(30));
/// assert_eq!(delay.pump()?.delivered, 1);
/// let r = store.read("orders", 0, 0, ReadLimits::default())?;
/// assert_eq!(r[0].body(), b"pay now");
/// assert_eq!(r[0].properties().get(TIMER_DELIVER_MS), Some(handle.deliver_at_ms.to_string().as_str()));
/// delay.close()?;
/// # Ok(()) }
/// ```
pub struct DelayQueue {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for DelayQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayQueue")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

fn internal_config(cleanup_policy: CleanupPolicy) -> TopicConfig {
    TopicConfig {
        cleanup_policy,
        // Never by time or size: the layer deletes what it no longer needs.
        retention: Some(Duration::MAX),
        retention_bytes: Some(u64::MAX),
        min_compaction_lag: cleanup_policy.compacts().then_some(Duration::ZERO),
        ..TopicConfig::with_partitions(1)
    }
}

fn ensure_topic(store: &dyn LogStore, name: &str, policy: CleanupPolicy) -> Result<()> {
    // What could not be delivered is kept as long as the store keeps records (its default
    // retention): nothing deletes it otherwise, and kept forever it would pin the shared
    // commit log.
    let config = if name == UNDELIVERABLE_TOPIC {
        TopicConfig::with_partitions(1)
    } else {
        internal_config(policy)
    };
    match store.create_topic(name, config) {
        Ok(()) | Err(Error::TopicExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn corrupted(store: &dyn LogStore, topic: &str, offset: u64, reason: &str) -> Error {
    Error::corrupted(
        store.dir().join(format!("{topic}-0")),
        offset,
        format!("{topic} record at offset {offset}: {reason}"),
    )
}

/// Appends timer-log entries, which must land at `at`: the layer is the timer log's only
/// writer, and entry offsets are what the wheel's chains point at.
fn append_entries(store: &dyn LogStore, entries: &[TimerEntry], at: u64) -> Result<()> {
    let batch: Vec<Message> = entries
        .iter()
        .map(|e| Message::new(e.encode().to_vec()))
        .collect();
    let appended = store.append(TIMER_LOG_TOPIC, 0, &batch)?;
    if appended.base_offset != at {
        return Err(corrupted(
            store,
            TIMER_LOG_TOPIC,
            appended.base_offset,
            "entries landed at an unexpected offset (another writer?)",
        ));
    }
    Ok(())
}

/// One record at `offset`, or `None` if retention took it (below the log start).
fn read_one(store: &dyn LogStore, topic: &str, offset: u64) -> Result<Option<Record>> {
    match store.read(topic, 0, offset, ReadLimits::messages(1)) {
        Ok(mut r) if !r.is_empty() => Ok(Some(r.swap_remove(0))),
        Ok(_) => Ok(None),
        Err(Error::OffsetOutOfRange { start, .. }) if offset < start => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_entry(store: &dyn LogStore, offset: u64) -> Result<TimerEntry> {
    let r = read_one(store, TIMER_LOG_TOPIC, offset)?.ok_or_else(|| {
        corrupted(
            store,
            TIMER_LOG_TOPIC,
            offset,
            "a pending entry is below the log start",
        )
    })?;
    TimerEntry::decode(r.body()).map_err(|e| corrupted(store, TIMER_LOG_TOPIC, offset, e))
}

/// Timer-log entries read a block at a time while walking a chain backwards: a slot's entries
/// are often close together (messages scheduled together for the same time), so one read
/// serves many steps of the walk.
struct EntryBlock {
    first: u64,
    entries: Vec<TimerEntry>,
}

/// Entries read per block.
const ENTRY_BLOCK: u64 = 256;

impl EntryBlock {
    fn new() -> EntryBlock {
        EntryBlock {
            first: 0,
            entries: Vec::new(),
        }
    }

    /// The entry at `pos`, or `None` if it is below the timer log's start: something other
    /// than the layer (the shared log's size retention on the CommitLog engine) deleted it.
    fn get(&mut self, store: &dyn LogStore, pos: u64) -> Result<Option<TimerEntry>> {
        if let Some(e) = pos
            .checked_sub(self.first)
            .and_then(|i| self.entries.get(i as usize))
        {
            return Ok(Some(*e));
        }
        let start = store.bounds(TIMER_LOG_TOPIC, 0)?.start;
        if pos < start {
            return Ok(None);
        }
        let from = pos.saturating_sub(ENTRY_BLOCK - 1).max(start);
        // A read may stop short (at a segment's end): read on until `pos` is covered, rather
        // than fall back to reading entries one at a time.
        let mut records: Vec<Record> = Vec::new();
        let mut at = from;
        while at <= pos {
            let more = store.read(
                TIMER_LOG_TOPIC,
                0,
                at,
                ReadLimits::messages((pos - at + 1) as usize),
            )?;
            let Some(last) = more.last().map(Record::offset) else {
                break;
            };
            records.extend(more.into_iter().filter(|r| r.offset() <= pos));
            if last < at {
                break;
            }
            at = last + 1;
        }
        // Offsets of the timer log are dense (never compacted); anything else is damage.
        if records.len() as u64 != pos - from + 1
            || records.first().map(Record::offset) != Some(from)
        {
            return read_entry(store, pos).map(Some);
        }
        self.entries.clear();
        self.first = from;
        for r in &records {
            let e = TimerEntry::decode(r.body())
                .map_err(|e| corrupted(store, TIMER_LOG_TOPIC, r.offset(), e))?;
            self.entries.push(e);
        }
        Ok(Some(self.entries[(pos - from) as usize]))
    }
}

/// The bytes of a record the byte budget of a round counts: body, key and properties.
fn record_bytes(r: &Record) -> usize {
    r.body().len()
        + r.key().map_or(0, <[u8]>::len)
        + r.properties()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// The records of `__delay_messages` a round's plan names, read in plan order in runs of
/// consecutive offsets (a slot's messages were mostly scheduled together), until `budget`
/// bytes are read. Returns them (missing ones, below the log start, are absent) and how many
/// entries of the plan they cover: the plan is cut there (at least one entry), so a round
/// holds at most `budget` plus the record that crossed it.
fn read_planned(
    store: &dyn LogStore,
    planned: &[(i64, u64, TimerEntry)],
    budget: usize,
) -> Result<(std::collections::HashMap<u64, Record>, usize)> {
    let mut out = std::collections::HashMap::new();
    let mut bytes = 0usize;
    let mut i = 0;
    while i < planned.len() {
        let offset = |k: usize| planned[k].2.message_offset;
        let mut j = i + 1;
        while j < planned.len() && offset(j) == offset(j - 1) + 1 && j - i < 1024 {
            j += 1;
        }
        let (mut at, to) = (offset(i), offset(j - 1));
        // A read may stop short (its byte limit): go on until the run is covered.
        while at <= to && bytes < budget {
            let limits = ReadLimits {
                max_messages: (to - at + 1) as usize,
                max_bytes: (budget - bytes).min(ReadLimits::default().max_bytes),
                ..ReadLimits::default()
            };
            let records = match store.read(MESSAGES_TOPIC, 0, at, limits) {
                Ok(r) => r,
                Err(Error::OffsetOutOfRange { start, .. }) if at < start => {
                    // Retention took the head of the run: read on from the log start.
                    at = start;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(last) = records.last().map(Record::offset) else {
                at = to + 1;
                break;
            };
            for r in records {
                if r.offset() <= to {
                    bytes += record_bytes(&r);
                    out.insert(r.offset(), r);
                }
            }
            at = last + 1;
        }
        if bytes >= budget {
            // The entries of this run whose records were read (or are gone) stay in.
            let covered = (i..j).take_while(|&k| offset(k) < at).count();
            return Ok((out, (i + covered).max(1)));
        }
        i = j;
    }
    Ok((out, planned.len()))
}

fn prop_i64(r: &Record, name: &str) -> Option<i64> {
    r.properties().get(name)?.parse().ok()
}

/// The user's message back from its stored copy: the layer's properties removed.
fn user_message(r: &Record) -> Message {
    let mut m = r.to_message();
    m.properties
        .retain(|(k, _)| !LAYER_PROPERTIES.contains(&k.as_str()));
    m
}

impl Shared {
    /// The slot holding `ms`: `[slot, slot + precision)` (format 1 rounded up instead; its
    /// entries are due when their slot opens, which the rules below keep).
    fn slot_of(&self, ms: i64) -> i64 {
        ms.div_euclid(self.precision).saturating_mul(self.precision)
    }

    /// When an entry of slot `t` is due: its due time, within the slot (an entry placed in a
    /// later slot than its own is due when that slot opens; a message parked for a roll, at
    /// the slot's last millisecond).
    fn effective_due(&self, t: i64, e: &TimerEntry) -> i64 {
        e.deliver_ms.clamp(t, t.saturating_add(self.precision - 1))
    }

    /// Whether the entry at `pos` of slot `t` was processed already (before the open slot's
    /// watermark, or by a format-1 round).
    fn is_done(&self, st: &State, t: i64, pos: u64, e: &TimerEntry) -> bool {
        match st.partial {
            Some(p) if p.slot == t => {
                (self.effective_due(t, e), pos) <= (p.due, p.offset)
                    || (pos > p.above && pos < p.below)
            }
            _ => false,
        }
    }

    /// Whether a message due at `deliver_ms` may have been processed (delivered) already: its
    /// slot is before the first open one, or it is the open slot and the watermark reached its
    /// due time.
    fn may_be_processed(&self, st: &State, deliver_ms: i64) -> bool {
        let slot = self.slot_of(deliver_ms);
        slot < self.floor(st)
            || st.partial.is_some_and(|p| {
                p.slot == slot
                    && (deliver_ms <= p.due || (p.above != NO_ENTRY && deliver_ms <= p.slot))
            })
    }

    /// The first slot open to new entries: the open slot, else the one after the last slot
    /// processed.
    fn floor(&self, st: &State) -> i64 {
        match st.partial {
            Some(p) => p.slot,
            None => st.read_time.saturating_add(self.precision),
        }
    }

    /// Drops what is done from the kept open-slot entries (a prefix, up to the watermark),
    /// and the list itself once its slot is processed.
    fn prune_open_entries(&self, st: &mut State) {
        let partial = st.partial;
        let Some(o) = st.open_entries.as_mut() else {
            return;
        };
        match partial.filter(|p| p.slot == o.slot) {
            Some(p) => {
                while let Some(e) = o.entries.first_entry() {
                    if *e.key() > (p.due, p.offset) {
                        break;
                    }
                    e.remove();
                }
            }
            None if o.slot <= st.read_time => st.open_entries = None,
            None => {}
        }
    }

    /// Whether the kept entries of slot `t` are exactly its `count` pending ones (else they
    /// are dropped, and the caller walks the chain).
    fn open_entries_ready(&self, st: &mut State, t: i64, count: u32) -> bool {
        self.prune_open_entries(st);
        match &st.open_entries {
            Some(o) if o.slot == t && o.entries.len() == count as usize => true,
            Some(o) if o.slot == t => {
                st.open_entries = None;
                false
            }
            _ => false,
        }
    }

    /// The open slot is closed once it holds nothing and its time is over.
    fn settle_partial(&self, st: &mut State, now: i64) {
        if let Some(p) = st.partial
            && st.wheel.get(p.slot).is_none()
            && p.slot.saturating_add(self.precision - 1) <= now
        {
            st.read_time = st.read_time.max(p.slot);
            st.partial = None;
        }
    }

    /// When the timer should look again: the next entry of the open slot to become due, or
    /// the next slot after `now` with entries.
    fn next_wake(&self, st: &State, now: i64) -> Option<i64> {
        let later = st.wheel.due_from(now.saturating_add(1)).next();
        match (st.next_ready, later) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The slots a new entry may take, `(earliest, latest)`: every pending slot must stay
    /// within one lap of the wheel (`slots - 1` precisions), or two due times would share a
    /// slot. Measured from the pending slots themselves, not only from the floor: after a
    /// reopen the floor can be lower than when the pending entries were placed (the read time
    /// an idle timer moved on is not persisted), and placing from it alone could reach a lap
    /// past them.
    fn placement_range(&self, st: &State) -> (i64, i64) {
        let floor = self.floor(st);
        let lap = (i64::from(self.slots) - 1).saturating_mul(self.precision);
        let (lo, hi) = match st.wheel.span() {
            Some((lo, hi)) => (lo.min(floor), hi.max(floor)),
            None => (floor, floor),
        };
        (hi.saturating_sub(lap).max(floor), lo.saturating_add(lap))
    }

    fn take_error(&self) -> Result<()> {
        if let Some(e) = self.error.lock().take() {
            return Err(e);
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    // ---- enqueue -------------------------------------------------------------------------

    /// Places every record of `__delay_messages` past the cursor on the wheel: a timer-log
    /// entry each, appended only once the records are durable. Returns how many.
    fn enqueue(&self, st: &mut State) -> Result<u64> {
        self.finish_intent(st)?;
        let store = &*self.store;
        let mut placed = 0;
        loop {
            let bounds = store.bounds(MESSAGES_TOPIC, 0)?;
            if st.cursor >= bounds.end {
                return Ok(placed);
            }
            let from = st.cursor.max(bounds.start);
            let records =
                store.read(MESSAGES_TOPIC, 0, from, ReadLimits::messages(ENQUEUE_BATCH))?;
            let Some(last) = records.last() else {
                return Ok(placed);
            };
            let last_offset = last.offset();
            // No entry may outlive its message: on the segmented engine partitions are
            // independent, so a crash could keep the entry and lose the record. Nor the DONE
            // of the last round: a rebuild from its INTENT must not meet entries placed after
            // it (they could reach a lap of the wheel past the INTENT's read time).
            let progress = store.bounds(PROGRESS_TOPIC, 0)?;
            if store.bounds(MESSAGES_TOPIC, 0)?.durable_end <= last_offset
                || progress.durable_end < progress.end
            {
                store.sync()?;
            }
            let first_entry = store.bounds(TIMER_LOG_TOPIC, 0)?.end;
            let mut lasts: BTreeMap<i64, u64> = BTreeMap::new();
            let mut cancels_now: HashSet<u64> = HashSet::new();
            let mut entries = Vec::with_capacity(records.len());
            // One range for the batch: entries placed within it are within a lap of each
            // other too.
            let range = self.placement_range(st);
            for (at, r) in (first_entry..).zip(&records) {
                let e = self.entry_for(st, r, &cancels_now, at, &mut lasts, range);
                if e.kind == EntryKind::Cancel {
                    cancels_now.insert(e.id);
                }
                entries.push(e);
            }
            append_entries(store, &entries, first_entry)?;
            for (i, e) in entries.iter().enumerate() {
                let at = first_entry + i as u64;
                if e.kind == EntryKind::Void {
                    continue;
                }
                let cancel = e.kind == EntryKind::Cancel;
                if !st.wheel.add(e.slot_ms, at, cancel) {
                    // placement_range rules this out; never overwrite pending entries.
                    return Err(corrupted(
                        store,
                        TIMER_LOG_TOPIC,
                        at,
                        "entry placed a lap away from a pending slot",
                    ));
                }
                if cancel {
                    st.pending_cancels.insert(e.id);
                }
                let eff = self.effective_due(e.slot_ms, e);
                st.placed_min = Some(st.placed_min.map_or(eff, |m| m.min(eff)));
                if let Some(o) = st.open_entries.as_mut().filter(|o| o.slot == e.slot_ms) {
                    o.entries.insert((eff, at), *e);
                    if o.entries.len() > self.max_open_slot_entries {
                        st.open_entries = None;
                    }
                }
            }
            placed += entries.len() as u64;
            st.cursor = last_offset + 1;
        }
    }

    /// The timer-log entry for one record of `__delay_messages`, to be written at `at`.
    fn entry_for(
        &self,
        st: &State,
        r: &Record,
        cancels_now: &HashSet<u64>,
        at: u64,
        lasts: &mut BTreeMap<i64, u64>,
        range: (i64, i64),
    ) -> TimerEntry {
        let void = TimerEntry {
            kind: EntryKind::Void,
            slot_ms: 0,
            message_offset: r.offset(),
            prev: NO_ENTRY,
            deliver_ms: 0,
            id: r.offset(),
        };
        let Some(deliver_ms) = prop_i64(r, TIMER_DELIVER_MS) else {
            return void;
        };
        let (kind, id) = if let Some(target) = prop_i64(r, DELAY_CANCEL) {
            let target = target as u64;
            let rolled = r.properties().get(DELAY_CANCEL_ROLLS).is_some();
            // A first cancel is placed only if its message cannot have been processed yet
            // (its due slot is still ahead) and it is not cancelled already; `cancel` made the
            // same check under the same state.
            let taken = st.pending_cancels.contains(&target) || cancels_now.contains(&target);
            if !rolled && (taken || self.may_be_processed(st, deliver_ms)) {
                return void;
            }
            (EntryKind::Cancel, target)
        } else if r.properties().get(DELAY_REAL_TOPIC).is_some() {
            let id = prop_i64(r, DELAY_ID).map_or(r.offset(), |i| i as u64);
            (EntryKind::Message, id)
        } else {
            return void;
        };
        // Never before its due slot nor the floor; past the lap, parked at its end (a roll).
        let (earliest, latest) = range;
        let slot_ms = self.slot_of(deliver_ms).max(earliest).min(latest);
        // In the open slot, an entry must sort after the watermark (its offset is the newest):
        // one due before it goes out at the next round, not never.
        let deliver_ms = match st.partial {
            Some(p) if p.slot == slot_ms => deliver_ms.max(p.due),
            _ => deliver_ms,
        };
        let prev = lasts
            .get(&slot_ms)
            .copied()
            .unwrap_or_else(|| st.wheel.last(slot_ms));
        lasts.insert(slot_ms, at);
        TimerEntry {
            kind,
            slot_ms,
            message_offset: r.offset(),
            prev,
            deliver_ms,
            id,
        }
    }

    // ---- delivery rounds ------------------------------------------------------------------

    /// Places and delivers until nothing is due at `now`.
    fn work(&self, st: &mut State, now: i64) -> Result<PumpReport> {
        let mut report = PumpReport::default();
        while self.work_once(st, now, &mut report)? {}
        self.retain_idle(st)?;
        Ok(report)
    }

    /// Places what is new and runs one round; says whether a round ran (more may be due).
    /// Stops once the queue is closing: `close` never waits for a whole backlog.
    fn work_once(&self, st: &mut State, now: i64, report: &mut PumpReport) -> Result<bool> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(false);
        }
        report.enqueued += self.enqueue(st)?;
        match self.round(st, now, None)? {
            Some(r) => {
                report.add(&r);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Redoes the round of an INTENT whose DONE is missing (a crash, or an error after the
    /// INTENT), skipping what it already wrote.
    fn finish_intent(&self, st: &mut State) -> Result<()> {
        let Some(intent) = st.intent.clone() else {
            return Ok(());
        };
        self.round(st, intent.up_to, Some(intent))?;
        Ok(())
    }

    /// The DELAY_IDs (and rolled cancels) written to the INTENT's targets after their
    /// recorded ends.
    fn written_since(&self, intent: &Progress) -> Result<HashSet<(bool, u64)>> {
        let mut found = HashSet::new();
        for (topic, partition, end) in &intent.targets {
            let bounds = match self.store.bounds(topic, *partition) {
                Ok(b) => b,
                Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) => continue,
                Err(e) => return Err(e),
            };
            let mut at = (*end).max(bounds.start);
            while at < bounds.end {
                let records = self
                    .store
                    .read(topic, *partition, at, ReadLimits::messages(1024))?;
                let Some(last) = records.last() else { break };
                at = last.offset() + 1;
                for r in &records {
                    if let Some(id) = prop_i64(r, DELAY_ID) {
                        found.insert((false, id as u64));
                    } else if r.properties().get(DELAY_CANCEL_ROLLS).is_some()
                        && let Some(id) = prop_i64(r, DELAY_CANCEL)
                    {
                        found.insert((true, id as u64));
                    }
                }
            }
        }
        Ok(found)
    }

    /// One delivery round over the slots due at `now`, at most `max_round` entries (or exactly
    /// the round of `redo`). Returns `None` when nothing is due.
    fn round(
        &self,
        st: &mut State,
        now: i64,
        redo: Option<Progress>,
    ) -> Result<Option<PumpReport>> {
        let store = &*self.store;
        let budget = redo.as_ref().map_or(self.max_round, |p| p.count as usize);
        // A format-1 round took a slot's newest entries first: its redo does the same.
        let newest_first = redo.as_ref().is_some_and(|p| p.version == 1);
        self.settle_partial(st, now);
        // Plan: the open slots in order; in each, the entries due by `now` that are not done,
        // smallest (effective due time, offset) first — at most `budget` in all, so a slot's
        // entries go out at their exact due times, not at the slot's end.
        let mut planned: Vec<(i64, u64, TimerEntry)> = Vec::new();
        // Entries whose timer-log records were deleted under the layer (see `EntryBlock::get`).
        let mut lost: u64 = 0;
        let mut steps: Vec<SlotStep> = Vec::new();
        let mut next_ready: Option<i64> = None;
        let due: Vec<i64> = st
            .wheel
            .due_from(i64::MIN)
            .take_while(|t| *t <= now)
            .take(budget)
            .collect();
        let mut block = EntryBlock::new();
        for t in due {
            let room = budget - planned.len();
            if room == 0 {
                break;
            }
            let Some(slot) = st.wheel.get(t) else {
                continue;
            };
            // Entries in a format-1 order (a redone format-1 round, an open slot with a
            // format-1 cursor) are walked each time: the kept list has the format-2 order.
            let plain = !newest_first
                && st
                    .partial
                    .is_none_or(|p| p.slot != t || p.above == NO_ENTRY);
            let mut slot_lost = 0u32;
            let taken: Vec<Candidate> = if plain && self.open_entries_ready(st, t, slot.count) {
                let Some(o) = st.open_entries.as_ref() else {
                    unreachable!("open_entries_ready checked it")
                };
                let taken = o
                    .entries
                    .iter()
                    .take_while(|((eff, _), _)| *eff <= now)
                    .take(room)
                    .map(|(&(eff, at), e)| Candidate(eff, at, at, *e))
                    .collect();
                if let Some((&(eff, _), _)) = o.entries.range((now.saturating_add(1), 0)..).next() {
                    next_ready = Some(next_ready.map_or(eff, |n| n.min(eff)));
                }
                taken
            } else {
                if plain
                    && redo.is_none()
                    && let Some((gated, until)) = st.walk_gate
                    && gated == t
                    && now < until
                {
                    // Too large to keep, walked recently: not again before `until`.
                    next_ready = Some(next_ready.map_or(until, |n| n.min(until)));
                    break;
                }
                // The walk keeps the `room` smallest ready entries (memory bounded by the
                // round, whatever the slot holds) and stops once it has seen every pending
                // one; it keeps them all for later rounds if they are few enough.
                let keep = plain && (slot.count as usize) <= self.max_open_slot_entries;
                let mut all: BTreeMap<(i64, u64), TimerEntry> = BTreeMap::new();
                let mut ready: std::collections::BinaryHeap<Candidate> =
                    std::collections::BinaryHeap::new();
                let (mut pos, mut seen, mut ready_count) = (slot.last, 0u32, 0usize);
                let mut slot_next: Option<i64> = None;
                while pos != NO_ENTRY && seen < slot.count {
                    let Some(e) = block.get(store, pos)? else {
                        // The rest of the chain (older entries, lower offsets) was deleted
                        // under the layer: those messages are lost, counted, and the slot goes
                        // on — the wheel never wedges on it (RocketMQ #10668).
                        slot_lost = slot.count - seen;
                        break;
                    };
                    if e.slot_ms != t {
                        return Err(corrupted(
                            store,
                            TIMER_LOG_TOPIC,
                            pos,
                            "an entry chained into the wrong slot",
                        ));
                    }
                    let at = pos;
                    pos = e.prev;
                    if self.is_done(st, t, at, &e) {
                        continue;
                    }
                    seen += 1;
                    let eff = self.effective_due(t, &e);
                    if keep {
                        all.insert((eff, at), e);
                    }
                    if eff <= now {
                        let key = if newest_first { u64::MAX - at } else { at };
                        ready.push(Candidate(eff, key, at, e));
                        ready_count += 1;
                        if ready.len() > room {
                            ready.pop();
                        }
                    } else {
                        slot_next = Some(slot_next.map_or(eff, |n| n.min(eff)));
                    }
                }
                if slot_lost == 0 && seen < slot.count {
                    // The chain ended early (damage): what it does not reach is lost likewise.
                    slot_lost = slot.count - seen;
                }
                if let Some(n) = slot_next {
                    next_ready = Some(next_ready.map_or(n, |m| m.min(n)));
                }
                if keep && slot_lost == 0 {
                    st.open_entries = Some(OpenEntries {
                        slot: t,
                        entries: all,
                    });
                } else if plain
                    && redo.is_none()
                    && ready_count <= room
                    && let Some(n) = slot_next
                {
                    // Too many to keep: the next walk waits for the end of the window of the
                    // next entry due, so a slot is walked about OVER_CAP_WINDOWS times, not
                    // once per distinct due time.
                    let w = (self.precision / OVER_CAP_WINDOWS).max(1);
                    let until = n
                        .div_euclid(w)
                        .saturating_add(i64::from(n.rem_euclid(w) != 0))
                        .saturating_mul(w)
                        .min(t.saturating_add(self.precision - 1))
                        .max(n);
                    st.walk_gate = Some((t, until));
                }
                ready.into_sorted_vec()
            };
            let left = slot.count - slot_lost - taken.len() as u32;
            lost += u64::from(slot_lost);
            let n = taken.len();
            steps.push(SlotStep {
                slot: t,
                taken: n as u32,
                cancels: taken
                    .iter()
                    .filter(|c| c.3.kind == EntryKind::Cancel)
                    .count() as u32,
                lost: slot_lost,
                last: taken.last().map(|c| (c.0, c.2)),
            });
            planned.extend(taken.into_iter().map(|c| (t, c.2, c.3)));
            if left > 0 {
                break;
            }
            // A roll that is due by now ends the round here: placed again once this slot is
            // done, it lands in its own due slot, which the next round takes in order. Going
            // on past that slot first would make the roll a slot (or more) late.
            let rolls_due = planned.iter().rev().take(n).any(|(_, _, e)| {
                let due = self.slot_of(e.deliver_ms);
                due > t && due <= now
            });
            if rolls_due {
                break;
            }
        }
        if planned.is_empty() && lost > 0 {
            // Only entries deleted under the layer: nothing to deliver, the slots are done
            // (a reopen does not bring them back: they are below the timer log's start).
            self.advance(st, &steps, now, None);
            return Ok(Some(PumpReport {
                undeliverable: lost,
                ..PumpReport::default()
            }));
        }
        if planned.is_empty() {
            st.next_ready = next_ready;
            if redo.is_some() {
                st.intent = None;
            } else if st.partial.is_none() && st.wheel.next_due().is_none_or(|t| t > now) {
                // Nothing is due up to now: every slot before the current one is processed
                // (empty), so new entries may start at the current one (a message already
                // due then goes out at the next round, not a slot later). Not persisted: an
                // older read time is safe.
                let now_slot = self.slot_of(now);
                st.read_time = st.read_time.max(now_slot.saturating_sub(self.precision));
            }
            return Ok(None);
        }
        let up_to = now;
        // The byte budget may cut the plan (a prefix of it: the redo of an INTENT takes
        // exactly its count, so it is not cut again).
        let bytes = if redo.is_some() {
            usize::MAX
        } else {
            self.max_round_bytes
        };
        let (mut records, keep) = read_planned(store, &planned, bytes)?;
        if keep < planned.len() {
            // Ready entries are left: the next round must not wait for a walk gate.
            st.walk_gate = None;
            planned.truncate(keep);
            let last_slot = planned.last().map_or(i64::MIN, |p| p.0);
            steps.retain(|s| s.slot <= last_slot);
            if let Some(s) = steps.last_mut() {
                let in_slot: Vec<_> = planned.iter().filter(|p| p.0 == s.slot).collect();
                s.taken = in_slot.len() as u32;
                s.cancels = in_slot
                    .iter()
                    .filter(|p| p.2.kind == EntryKind::Cancel)
                    .count() as u32;
                s.last = in_slot.last().map(|p| (self.effective_due(p.0, &p.2), p.1));
            }
            lost = steps.iter().map(|s| u64::from(s.lost)).sum();
        }

        // Decide each entry. Cancels apply before deliveries: a message whose id has a
        // pending cancel anywhere on the wheel is dropped.
        let mut report = PumpReport {
            undeliverable: lost,
            ..PumpReport::default()
        };
        let mut cancelled_now: HashSet<u64> = HashSet::new();
        let mut out: BTreeMap<(String, u32), Vec<Outgoing>> = BTreeMap::new();
        let mut undeliverable: Vec<Outgoing> = Vec::new();
        let mut dropped_cancels: Vec<u64> = Vec::new();
        let dequeue_ms = self.clock.now_ms();
        // Whether each real partition exists, asked once per round, not once per message.
        let mut exists: BTreeMap<(String, u32), Option<&'static str>> = BTreeMap::new();
        for (t, _, e) in planned
            .iter()
            .filter(|(_, _, e)| e.kind == EntryKind::Message)
        {
            let Some(r) = records.remove(&e.message_offset) else {
                // Its record is gone (damage, or a deletion by hand): never wedge the wheel.
                report.undeliverable += 1;
                continue;
            };
            if self.slot_of(e.deliver_ms) > *t {
                let mut m = r.to_message();
                m.properties
                    .retain(|(k, _)| k != DELAY_ID && k != DELAY_ROLL_ROOM);
                m.properties.push((DELAY_ID.into(), e.id.to_string()));
                out.entry((MESSAGES_TOPIC.into(), 0))
                    .or_default()
                    .push((*t, e.id, m));
                report.rolled += 1;
                continue;
            }
            if st.pending_cancels.contains(&e.id) {
                cancelled_now.insert(e.id);
                report.cancelled += 1;
                continue;
            }
            let topic = r
                .properties()
                .get(DELAY_REAL_TOPIC)
                .unwrap_or("")
                .to_owned();
            let partition = prop_i64(&r, DELAY_REAL_PARTITION).unwrap_or(-1);
            let mut m = user_message(&r);
            m.properties.extend([
                // The time asked for: the entry's may have been raised to sort after the
                // watermark of the open slot it was placed in.
                (
                    TIMER_DELIVER_MS.into(),
                    prop_i64(&r, TIMER_DELIVER_MS)
                        .unwrap_or(e.deliver_ms)
                        .to_string(),
                ),
                (
                    TIMER_ENQUEUE_MS.into(),
                    prop_i64(&r, TIMER_ENQUEUE_MS)
                        .unwrap_or(r.timestamp())
                        .to_string(),
                ),
                (TIMER_DEQUEUE_MS.into(), dequeue_ms.to_string()),
                (DELAY_ID.into(), e.id.to_string()),
            ]);
            let Ok(p) = u32::try_from(partition) else {
                let reason = "the message names no partition";
                undeliverable.push((*t, e.id, undeliverable_copy(m, &topic, partition, reason)));
                continue;
            };
            let key = (topic, p);
            let missing = match exists.get(&key) {
                Some(known) => *known,
                None => {
                    let found = match store.bounds(&key.0, p) {
                        Ok(_) => None,
                        Err(Error::UnknownTopic(_)) => Some("topic deleted"),
                        Err(Error::UnknownPartition { .. }) => Some("partition gone"),
                        Err(e) => return Err(e),
                    };
                    exists.insert(key.clone(), found);
                    found
                }
            };
            match missing {
                None => out.entry(key).or_default().push((*t, e.id, m)),
                Some(reason) => {
                    undeliverable.push((*t, e.id, undeliverable_copy(m, &key.0, partition, reason)))
                }
            }
        }
        for (t, _, e) in planned
            .iter()
            .filter(|(_, _, e)| e.kind == EntryKind::Cancel)
        {
            let still_pending =
                st.pending_cancels.contains(&e.id) && !cancelled_now.contains(&e.id);
            let due = self.slot_of(e.deliver_ms) <= *t;
            let Some(r) = (if still_pending || !due {
                records.remove(&e.message_offset)
            } else {
                None
            }) else {
                dropped_cancels.push(e.id);
                continue;
            };
            let laps = prop_i64(&r, DELAY_CANCEL_ROLLS).unwrap_or(0) + i64::from(due);
            if due && laps > i64::from(MAX_CANCEL_ROLLS) {
                dropped_cancels.push(e.id);
                continue;
            }
            // Not due yet, or its message is still on the wheel (in a later slot or the
            // rest of a partial one): it goes round again so it meets its message.
            let mut m = r.to_message();
            m.properties.retain(|(k, _)| k != DELAY_CANCEL_ROLLS);
            m.properties
                .push((DELAY_CANCEL_ROLLS.into(), laps.to_string()));
            out.entry((MESSAGES_TOPIC.into(), 0))
                .or_default()
                .push((*t, e.id, m));
        }

        // (1) INTENT: every partition the round may write to, with its end before the round.
        let mut targets: Vec<(String, u32, u64)> = Vec::new();
        let mut keys: Vec<(String, u32)> = out.keys().cloned().collect();
        keys.push((MESSAGES_TOPIC.into(), 0));
        keys.push((UNDELIVERABLE_TOPIC.into(), 0));
        keys.sort();
        keys.dedup();
        for (topic, p) in keys {
            let earlier = redo.as_ref().and_then(|i| {
                i.targets
                    .iter()
                    .find(|(tp, pp, _)| *tp == topic && *pp == p)
                    .map(|x| x.2)
            });
            let end = match earlier {
                Some(end) => end,
                None => match store.bounds(&topic, p) {
                    Ok(b) => b.end,
                    Err(Error::UnknownTopic(_) | Error::UnknownPartition { .. }) => continue,
                    Err(e) => return Err(e),
                },
            };
            targets.push((topic, p, end));
        }
        if let Some(old) = &redo {
            // Targets of the first attempt that this plan does not write to any more keep
            // their ends, so a second crash still finds what the first attempt wrote.
            for t in &old.targets {
                if !targets.iter().any(|x| x.0 == t.0 && x.1 == t.1) {
                    targets.push(t.clone());
                }
            }
        }
        let intent = self.progress(st, Phase::Intent, 0, up_to, planned.len() as u32, targets);
        let skip = match &redo {
            Some(old) => self.written_since(old)?,
            None => HashSet::new(),
        };
        let mut intent = intent;
        intent.scan_start = self.scan_start(st)?;
        // The plan was made from timer-log entries the enqueue step may have appended since
        // the last sync — a rolled cancel among them. The timer log and the progress topic
        // are separate files on the segmented engine: one sync does not order them, so a
        // power cut could keep this INTENT and lose those entries, and the redo at open would
        // plan without them (the cancel missing: its message delivered; a delivery missing
        // from the plan: delivered again once re-placed). Hence no INTENT before the entries
        // it was planned from are durable.
        let tl = store.bounds(TIMER_LOG_TOPIC, 0)?;
        if tl.durable_end < tl.end {
            store.sync()?;
        }
        self.append_progress(&intent)?;
        store.sync()?;
        st.intent = Some(intent);

        // (2) The writes, grouped per partition, oldest first; what the first attempt of a
        // redone round wrote is skipped.
        for ((topic, p), msgs) in out {
            // Kept in plan order: by slot, then (effective due time, placement).
            let is_rolls = topic == MESSAGES_TOPIC;
            let msgs: Vec<Outgoing> = msgs
                .into_iter()
                .filter(|(_, id, m)| {
                    let cancel = m.properties.iter().any(|(k, _)| k == DELAY_CANCEL_ROLLS);
                    !skip.contains(&(cancel, *id))
                })
                .collect();
            for chunk in msgs.chunks(DELIVERY_BATCH) {
                let batch: Vec<Message> = chunk.iter().map(|x| x.2.clone()).collect();
                match store.append(&topic, p, &batch) {
                    Ok(_) => {}
                    Err(
                        Error::UnknownTopic(_)
                        | Error::UnknownPartition { .. }
                        | Error::MessageTooLarge { .. }
                        | Error::InvalidArgument(_),
                    ) if !is_rolls => {
                        // The topic changed under the round: one at a time, and what it
                        // refuses goes to the undeliverable topic.
                        for (t, id, m) in chunk {
                            if let Err(e) = store.append(&topic, p, std::slice::from_ref(m)) {
                                match e {
                                    Error::Io { .. }
                                    | Error::StorageFull { .. }
                                    | Error::Poisoned { .. }
                                    | Error::Closed
                                    | Error::Corrupted { .. } => return Err(e),
                                    other => undeliverable.push((
                                        *t,
                                        *id,
                                        undeliverable_copy(
                                            m.clone(),
                                            &topic,
                                            i64::from(p),
                                            &other.to_string(),
                                        ),
                                    )),
                                }
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if !is_rolls {
                report.delivered += msgs.len() as u64;
            }
        }
        let dead: Vec<Message> = undeliverable
            .into_iter()
            .filter(|(_, id, _)| !skip.contains(&(false, *id)))
            .map(|x| x.2)
            .collect();
        // Counted whether or not a first attempt already wrote them.
        for chunk in dead.chunks(DELIVERY_BATCH) {
            store.append(UNDELIVERABLE_TOPIC, 0, chunk)?;
        }
        report.undeliverable += dead.len() as u64;

        // (3) Durable, then DONE.
        store.sync()?;
        let legacy_end = if newest_first {
            Some(store.bounds(TIMER_LOG_TOPIC, 0)?.end)
        } else {
            None
        };
        self.advance(st, &steps, now, legacy_end);
        for id in cancelled_now.iter().chain(&dropped_cancels) {
            st.pending_cancels.remove(id);
        }
        let done = self.progress(st, Phase::Done, self.scan_start(st)?, up_to, 0, Vec::new());
        st.intent = None;
        // Not synced: if it is lost, the INTENT before it is redone and skips everything.
        self.append_progress(&done)?;
        st.rounds_since_retention += 1;
        if st.rounds_since_retention >= RETENTION_EVERY {
            st.rounds_since_retention = 0;
            self.retain(st)?;
        }
        Ok(Some(report))
    }

    /// Whether a message entry of `handle` (a roll: its first record was deleted) is on the
    /// wheel: one with its id and due time in a slot not processed. Reads the pending part of
    /// the timer log (45 B per pending entry), only for a cancel whose record is gone.
    fn rolled_copy_pending(&self, st: &State, handle: DelayHandle) -> Result<bool> {
        let store = &*self.store;
        let tl = store.bounds(TIMER_LOG_TOPIC, 0)?;
        let mut at = self.scan_start(st)?.max(tl.start);
        while at < tl.end {
            let records = store.read(TIMER_LOG_TOPIC, 0, at, ReadLimits::messages(4096))?;
            let Some(last) = records.last().map(Record::offset) else {
                break;
            };
            for r in &records {
                let e = TimerEntry::decode(r.body())
                    .map_err(|e| corrupted(store, TIMER_LOG_TOPIC, r.offset(), e))?;
                if e.kind == EntryKind::Message
                    && e.id == handle.id
                    && e.deliver_ms == handle.deliver_at_ms
                    && e.slot_ms > st.read_time
                {
                    return Ok(true);
                }
            }
            at = last + 1;
        }
        Ok(false)
    }

    /// The state after a round's slots were processed (in memory; the caller persists it).
    /// `legacy_end`: the timer log's end, when redoing a format-1 round.
    fn advance(&self, st: &mut State, steps: &[SlotStep], now: i64, legacy_end: Option<u64>) {
        for s in steps {
            st.wheel.consume(s.slot, s.taken + s.lost, s.cancels);
            let pending = st.wheel.get(s.slot).is_some();
            let over = s.slot.saturating_add(self.precision - 1) <= now;
            if !pending && over {
                st.read_time = st.read_time.max(s.slot);
                if st.partial.is_some_and(|p| p.slot <= s.slot) {
                    st.partial = None;
                }
            } else {
                // Entries left, or the slot's time is not over: it stays open, new entries
                // placed in it sort after the watermark.
                let mut p = st
                    .partial
                    .filter(|p| p.slot == s.slot)
                    .unwrap_or_else(|| Partial::new(s.slot));
                if let Some((due, offset)) = s.last {
                    if let Some(end) = legacy_end {
                        // A format-1 round redone newest first: what it took is the newest
                        // pending entries, down to `offset`: the format-1 bound extends.
                        p.above = p.above.min(offset.saturating_sub(1));
                        if p.below == 0 {
                            p.below = end;
                        }
                    } else {
                        p.due = due;
                        p.offset = offset;
                    }
                }
                st.partial = Some(p);
            }
        }
        self.prune_open_entries(st);
    }

    /// A progress record of the current state.
    fn progress(
        &self,
        st: &State,
        phase: Phase,
        scan_start: u64,
        up_to: i64,
        count: u32,
        targets: Vec<(String, u32, u64)>,
    ) -> Progress {
        let p = st.partial;
        Progress {
            phase,
            version: 2,
            read_time: st.read_time,
            scan_start,
            partial_slot: p.map_or(i64::MIN, |p| p.slot),
            partial_next: p.map_or(NO_ENTRY, |p| p.above),
            partial_due: p.map_or(i64::MIN, |p| p.due),
            partial_offset: p.map_or(0, |p| p.offset),
            partial_below: p.map_or(0, |p| p.below),
            cursor: st.cursor,
            up_to,
            count,
            targets,
        }
    }

    /// Retention when the timer goes idle after rounds (a burst is done), and once a minute
    /// while it stays idle: what the rounds made unneeded goes now rather than after
    /// `RETENTION_EVERY` more rounds that may never come (see `retain`).
    fn retain_idle(&self, st: &mut State) -> Result<()> {
        let wall = crate::clock::now_ms();
        let quiet_long = wall.saturating_sub(st.last_retention_ms) >= REFRESH_AFTER_MS;
        if (st.rounds_since_retention == 0 && !quiet_long) || st.intent.is_some() {
            return Ok(());
        }
        st.rounds_since_retention = 0;
        st.last_retention_ms = wall;
        self.retain(st)
    }

    /// Timer-log offset of the oldest pending entry (the end when none is).
    fn scan_start(&self, st: &State) -> Result<u64> {
        match st.wheel.oldest_entry() {
            Some(e) => Ok(e),
            None => Ok(self.store.bounds(TIMER_LOG_TOPIC, 0)?.end),
        }
    }

    fn append_progress(&self, p: &Progress) -> Result<()> {
        let m = Message::new(p.encode()).with_key(PROGRESS_KEY);
        self.store.append(PROGRESS_TOPIC, 0, &[m])?;
        Ok(())
    }

    /// Deletes the timer-log entries before the oldest pending one and the records of
    /// `__delay_messages` before its message. With nothing pending, the whole timer log and
    /// every placed record go: the enqueue cursor is then only in a progress record written
    /// first, so an idle layer keeps no record in the shared log but that compacted one.
    /// Deletes only after a sync, so the DONE (or the record) that made them unneeded is
    /// durable. Not while a round is in doubt (its redo reads the entries).
    fn retain(&self, st: &State) -> Result<()> {
        if st.intent.is_some() {
            return Ok(());
        }
        let store = &*self.store;
        let tl = store.bounds(TIMER_LOG_TOPIC, 0)?;
        let mb = store.bounds(MESSAGES_TOPIC, 0)?;
        let idle = st.wheel.oldest_entry().is_none();
        let (keep, messages_start) = if idle {
            (tl.end, st.cursor)
        } else {
            let keep = self.scan_start(st)?.max(tl.start);
            (keep, read_entry(store, keep)?.message_offset)
        };
        let messages_start = messages_start.min(mb.end);
        if keep <= tl.start && messages_start <= mb.start {
            return Ok(());
        }
        store.sync()?;
        if idle {
            // The entries up to the cursor are durable (the sync above) before a record says
            // they are placed; that record is durable before the entries go.
            let state = self.progress(st, Phase::Done, tl.end, st.read_time, 0, Vec::new());
            self.append_progress(&state)?;
            store.sync()?;
        }
        if keep > tl.start {
            store.delete_before(TIMER_LOG_TOPIC, 0, keep)?;
        }
        if messages_start > mb.start {
            store.delete_before(MESSAGES_TOPIC, 0, messages_start)?;
        }
        Ok(())
    }
}

fn undeliverable_copy(mut m: Message, topic: &str, partition: i64, reason: &str) -> Message {
    m.properties.extend([
        (DELAY_REAL_TOPIC.into(), topic.to_owned()),
        (DELAY_REAL_PARTITION.into(), partition.to_string()),
        (DELAY_UNDELIVERABLE.into(), reason.to_owned()),
    ]);
    m
}

/// The latest progress record, if any.
fn latest_progress(store: &dyn LogStore) -> Result<Option<Progress>> {
    let b = store.bounds(PROGRESS_TOPIC, 0)?;
    if b.end == 0 || b.end <= b.start {
        return Ok(None);
    }
    let Some(r) = read_one(store, PROGRESS_TOPIC, b.end - 1)? else {
        return Ok(None);
    };
    Progress::decode(r.body())
        .map(Some)
        .map_err(|e| corrupted(store, PROGRESS_TOPIC, b.end - 1, e))
}

impl DelayQueue {
    /// Opens the layer over `store`: creates its internal topics if missing, rebuilds the
    /// wheel from the timer log, redoes a round a crash interrupted, and (with
    /// [`DelayOptions::background`]) starts its threads. One per store in a process: a second
    /// open while the first is alive is [`Error::InvalidArgument`].
    pub fn open(store: Arc<dyn LogStore>, options: DelayOptions) -> Result<DelayQueue> {
        options.validate()?;
        let dir = store.dir().to_path_buf();
        {
            let mut served = SERVED.lock();
            if served.contains(&dir) {
                return Err(Error::InvalidArgument(format!(
                    "a DelayQueue is already open on the store at {}: share that one",
                    dir.display()
                )));
            }
            served.push(dir.clone());
        }
        let release = |e: Error| {
            SERVED.lock().retain(|d| *d != dir);
            e
        };
        let shared = Self::load(Arc::clone(&store), &options, dir.clone()).map_err(release)?;
        let shared = Arc::new(shared);
        options.clock.notify_changes(shared.timer_wakeup.clone());
        let queue = DelayQueue {
            shared,
            threads: Mutex::new(Vec::new()),
        };
        {
            let mut st = queue.shared.state.lock();
            // A round in doubt is redone before anything else moves.
            if let Err(e) = queue.shared.finish_intent(&mut st) {
                drop(st);
                let _ = queue.close();
                return Err(e);
            }
        }
        if options.background
            && let Err(e) = queue.start_threads()
        {
            let _ = queue.close();
            return Err(e);
        }
        Ok(queue)
    }

    fn load(store: Arc<dyn LogStore>, options: &DelayOptions, dir: PathBuf) -> Result<Shared> {
        for (name, policy) in [
            (MESSAGES_TOPIC, CleanupPolicy::Delete),
            (TIMER_LOG_TOPIC, CleanupPolicy::Delete),
            (PROGRESS_TOPIC, CleanupPolicy::Compact),
            (UNDELIVERABLE_TOPIC, CleanupPolicy::Delete),
        ] {
            ensure_topic(&*store, name, policy)?;
        }
        let precision = crate::clock::duration_ms(options.precision);
        let progress = latest_progress(&*store)?;
        let now = options.clock.now_ms();
        let tl = store.bounds(TIMER_LOG_TOPIC, 0)?;
        let (read_time, scan_start, partial, intent, cursor) = match progress {
            Some(p) => {
                let partial = (p.partial_slot != i64::MIN
                    && (p.version >= 2 || p.partial_next != NO_ENTRY))
                    .then_some(Partial {
                        slot: p.partial_slot,
                        due: p.partial_due,
                        offset: p.partial_offset,
                        above: p.partial_next,
                        // Format 1: every entry of the slot above its cursor was processed;
                        // the timer log's end now bounds them (later entries are new).
                        below: if p.partial_below == u64::MAX {
                            tl.end
                        } else {
                            p.partial_below
                        },
                    });
                let intent = (p.phase == Phase::Intent).then(|| p.clone());
                (p.read_time, p.scan_start, partial, intent, p.cursor)
            }
            None => {
                // A first open: nothing before the current slot is pending. Persisted at
                // once, or a reopen later would take its own "now" and skip what is due.
                let read_time = now.div_euclid(precision).saturating_mul(precision) - precision;
                let cursor = store.bounds(MESSAGES_TOPIC, 0)?.start;
                let first = Progress {
                    phase: Phase::Done,
                    version: 2,
                    read_time,
                    scan_start: 0,
                    partial_slot: i64::MIN,
                    partial_next: NO_ENTRY,
                    partial_due: i64::MIN,
                    partial_offset: 0,
                    partial_below: 0,
                    cursor,
                    up_to: read_time,
                    count: 0,
                    targets: Vec::new(),
                };
                store.append(
                    PROGRESS_TOPIC,
                    0,
                    &[Message::new(first.encode()).with_key(PROGRESS_KEY)],
                )?;
                store.sync()?;
                (read_time, 0, None, None, cursor)
            }
        };
        let mut st = State {
            wheel: Wheel::new(precision, options.wheel_slots),
            // The cursor is in the progress record (format 2) and in the timer log's last
            // entry: the larger wins (entries placed after the last progress record).
            cursor: store.bounds(MESSAGES_TOPIC, 0)?.start.max(cursor),
            read_time,
            partial,
            next_ready: None,
            placed_min: None,
            timer_sleeps_until: None,
            pending_cancels: HashSet::new(),
            open_entries: None,
            walk_gate: None,
            intent,
            rounds_since_retention: 0,
            last_retention_ms: crate::clock::now_ms(),
        };
        // Rebuild the wheel: every entry from the scan start on whose slot is not processed.
        if tl.end > tl.start {
            let last = read_entry(&*store, tl.end - 1)?;
            st.cursor = st.cursor.max(last.message_offset + 1);
        }
        let shared_precision = precision;
        let mut at = scan_start.max(tl.start);
        while at < tl.end {
            let records = store.read(TIMER_LOG_TOPIC, 0, at, ReadLimits::messages(4096))?;
            let Some(last) = records.last() else { break };
            let next = last.offset() + 1;
            for r in records {
                let e = TimerEntry::decode(r.body())
                    .map_err(|e| corrupted(&*store, TIMER_LOG_TOPIC, r.offset(), e))?;
                if e.kind == EntryKind::Void || e.slot_ms <= st.read_time {
                    continue;
                }
                let open_slot = st.partial.filter(|p| p.slot == e.slot_ms);
                if let Some(p) = open_slot {
                    let eff = e
                        .deliver_ms
                        .clamp(e.slot_ms, e.slot_ms.saturating_add(shared_precision - 1));
                    let pos = r.offset();
                    if (eff, pos) <= (p.due, p.offset) || (pos > p.above && pos < p.below) {
                        continue;
                    }
                } else if st.wheel.get(e.slot_ms).is_some_and(|s| s.last != e.prev) {
                    // (The open slot's chain runs through its done entries, which are not
                    // on the wheel: it is not checked.)
                    return Err(corrupted(
                        &*store,
                        TIMER_LOG_TOPIC,
                        r.offset(),
                        "entry does not chain to its slot's previous entry",
                    ));
                }
                let cancel = e.kind == EntryKind::Cancel;
                if !st.wheel.add(e.slot_ms, r.offset(), cancel) {
                    return Err(corrupted(
                        &*store,
                        TIMER_LOG_TOPIC,
                        r.offset(),
                        "entry a lap away from a pending slot",
                    ));
                }
                if cancel {
                    st.pending_cancels.insert(e.id);
                }
            }
            at = next;
        }
        let max_delay_ms = (options.max_delay != Duration::MAX)
            .then(|| crate::clock::duration_ms(options.max_delay));
        Ok(Shared {
            store,
            clock: Arc::clone(&options.clock),
            precision,
            slots: options.wheel_slots,
            max_delay_ms,
            max_round: options.max_round,
            max_round_bytes: options.max_round_bytes,
            max_open_slot_entries: options.max_open_slot_entries,
            dir,
            state: Mutex::new(st),
            closed: AtomicBool::new(false),
            timer_wakeup: Wakeup::new(),
            enqueue_wakeup: Wakeup::new(),
            error: Mutex::new(None),
        })
    }

    fn start_threads(&self) -> Result<()> {
        let mut threads = self.threads.lock();
        let s = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("duolog-delay-enqueue".into())
            .spawn(move || enqueue_loop(&s));
        threads.push(spawned.map_err(|e| Error::io(&self.shared.dir, e))?);
        let s = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("duolog-timer".into())
            .spawn(move || timer_loop(&s));
        threads.push(spawned.map_err(|e| Error::io(&self.shared.dir, e))?);
        Ok(())
    }

    /// Schedules `message` for `topic`/`partition` at `deliver_at_ms` (ms since the epoch; a
    /// time in the past delivers promptly). Returns once the message is stored (acknowledged
    /// under the store's flush policy). Errors: unknown topic or partition, a message the
    /// store or the topic refuses, a property name the layer reserves, a delay over
    /// [`DelayOptions::max_delay`].
    pub fn schedule(
        &self,
        topic: &str,
        partition: u32,
        message: Message,
        deliver_at_ms: i64,
    ) -> Result<DelayHandle> {
        let s = &self.shared;
        s.take_error()?;
        let now = s.clock.now_ms();
        if let Some(max) = s.max_delay_ms
            && deliver_at_ms.saturating_sub(now) > max
        {
            return Err(Error::InvalidArgument(format!(
                "delivery at {deliver_at_ms} is {} ms away, over DelayOptions::max_delay ({max} ms)",
                deliver_at_ms.saturating_sub(now)
            )));
        }
        self.check_message(topic, partition, &message)?;
        let mut stored = message;
        if stored.timestamp.is_none() {
            stored.timestamp = Some(now);
        }
        stored.properties.extend([
            (DELAY_REAL_TOPIC.into(), topic.to_owned()),
            (DELAY_REAL_PARTITION.into(), partition.to_string()),
            (TIMER_DELIVER_MS.into(), deliver_at_ms.to_string()),
            (TIMER_ENQUEUE_MS.into(), now.to_string()),
            (DELAY_ROLL_ROOM.into(), ROLL_ROOM.to_owned()),
        ]);
        let r = s.store.append(MESSAGES_TOPIC, 0, &[stored])?;
        Ok(DelayHandle {
            id: r.base_offset,
            deliver_at_ms,
        })
    }

    fn check_message(&self, topic: &str, partition: u32, m: &Message) -> Result<()> {
        let store = &*self.shared.store;
        // Internal `__…` topics belong to the layers that own them (the delay layer's own
        // among them); `%RETRY%<group>` is where the consumer layer's retries are delivered.
        if topic.starts_with("__") {
            return Err(Error::InvalidArgument(format!(
                "delayed messages go to user or retry topics, not the internal topic {topic:?}"
            )));
        }
        let config = store.describe_topic(topic)?;
        if partition >= config.partitions {
            return Err(Error::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: config.partitions,
            });
        }
        crate::store::validate_properties(m, store.engine())?;
        if let Some((name, _)) = m
            .properties
            .iter()
            .find(|(k, _)| LAYER_PROPERTIES.contains(&k.as_str()))
        {
            return Err(Error::InvalidArgument(format!(
                "property name {name:?} is reserved by the delay layer"
            )));
        }
        if let Some(max) = config.max_message_bytes {
            // What the delivered copy adds to the message: its four timer properties.
            let props: usize = m
                .properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum();
            let size = m.body.len()
                + m.key.as_ref().map_or(0, |k| k.len())
                + m.tags.as_ref().map_or(0, String::len)
                + props
                + 120;
            if size > max {
                return Err(Error::MessageTooLarge { size, max });
            }
        }
        Ok(())
    }

    /// Schedules `message` to be delivered `delay` from now.
    pub fn schedule_after(
        &self,
        topic: &str,
        partition: u32,
        message: Message,
        delay: Duration,
    ) -> Result<DelayHandle> {
        let s = &self.shared;
        if let Some(max) = s.max_delay_ms
            && crate::clock::duration_ms(delay) > max
        {
            return Err(Error::InvalidArgument(format!(
                "delay {delay:?} is over DelayOptions::max_delay ({max} ms)"
            )));
        }
        let at = s
            .clock
            .now_ms()
            .saturating_add(crate::clock::duration_ms(delay));
        self.schedule(topic, partition, message, at)
    }

    /// Schedules `message` at one of RocketMQ's delay levels, 1 ..= 18 ([`DELAY_LEVELS`]).
    pub fn schedule_level(
        &self,
        topic: &str,
        partition: u32,
        message: Message,
        level: u32,
    ) -> Result<DelayHandle> {
        let delay = level
            .checked_sub(1)
            .and_then(|i| DELAY_LEVELS.get(i as usize))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("delay level {level} is not in 1..=18"))
            })?;
        self.schedule_after(topic, partition, message, *delay)
    }

    /// Cancels a scheduled message (RocketMQ 5's recall). Succeeds only if the message will
    /// not be delivered; an error says why otherwise: unknown handle, already cancelled, or
    /// already due (delivered, or being delivered).
    pub fn cancel(&self, handle: DelayHandle) -> Result<()> {
        let s = &self.shared;
        s.take_error()?;
        let store = &*s.store;
        let mut st = s.state.lock();
        s.enqueue(&mut st)?;
        let mb = store.bounds(MESSAGES_TOPIC, 0)?;
        let unknown =
            || Error::InvalidArgument(format!("no scheduled message has handle {handle}"));
        if handle.id >= mb.end {
            return Err(unknown());
        }
        if handle.id >= mb.start {
            let r = read_one(store, MESSAGES_TOPIC, handle.id)?.ok_or_else(unknown)?;
            let first_schedule = r.properties().get(DELAY_REAL_TOPIC).is_some()
                && r.properties().get(DELAY_ID).is_none();
            if !first_schedule || prop_i64(&r, TIMER_DELIVER_MS) != Some(handle.deliver_at_ms) {
                return Err(unknown());
            }
        }
        if st.pending_cancels.contains(&handle.id) {
            return Err(Error::InvalidArgument(format!(
                "the message {handle} is already cancelled"
            )));
        }
        if s.may_be_processed(&st, handle.deliver_at_ms) {
            return Err(Error::InvalidArgument(format!(
                "the message {handle} is already due: delivered or being delivered"
            )));
        }
        if handle.id < mb.start && !s.rolled_copy_pending(&st, handle)? {
            // Its first record is gone: retention deletes a record once nothing pending needs
            // it, so the message was delivered (or cancelled) — unless it rolled, and then a
            // pending entry of it is on the wheel.
            return Err(Error::InvalidArgument(format!(
                "no pending message has handle {handle}: delivered already, or never scheduled"
            )));
        }
        let cancel = Message::new("").with_property(DELAY_CANCEL, handle.id.to_string());
        let cancel = cancel.with_property(TIMER_DELIVER_MS, handle.deliver_at_ms.to_string());
        store.append(MESSAGES_TOPIC, 0, &[cancel])?;
        s.enqueue(&mut st)?;
        if st.pending_cancels.contains(&handle.id) {
            s.timer_wakeup.wake();
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "the message {handle} could not be cancelled"
            )))
        }
    }

    /// Places everything scheduled and delivers everything due now, on this thread.
    pub fn pump(&self) -> Result<PumpReport> {
        let s = &self.shared;
        s.take_error()?;
        let mut st = s.state.lock();
        let now = s.clock.now_ms();
        s.work(&mut st, now)
    }

    /// Pending entries by due slot: (slot time in ms, messages due then). Placed entries
    /// only (a message scheduled a moment ago may not be placed yet); messages past the
    /// window show under the slot they roll at.
    pub fn pending(&self) -> Result<Vec<(i64, u64)>> {
        let s = &self.shared;
        s.take_error()?;
        let mut st = s.state.lock();
        s.enqueue(&mut st)?;
        Ok(st
            .wheel
            .slots()
            .filter(|slot| slot.count > slot.cancels)
            .map(|slot| (slot.time, u64::from(slot.count - slot.cancels)))
            .collect())
    }

    /// Pending messages of the delay layer of `store`, by due slot of `precision` — (slot time
    /// in ms, messages due in it) in order — read without opening the layer: nothing is
    /// written, placed or delivered (the CLI's `delayed`). It reads the latest progress
    /// record, the pending part of the timer log (twice: cancels, then messages) and the
    /// records of `__delay_messages` not placed yet. A message counts under its due time (a
    /// message past the window too); one with a cancel pending does not. A round in doubt
    /// (a crash between its INTENT and DONE) counts as not done. Empty if the store never
    /// scheduled a delayed message. Errors: `precision` outside 10 ms ..= 60 s.
    pub fn pending_in(store: &dyn LogStore, precision: Duration) -> Result<Vec<(i64, u64)>> {
        DelayOptions {
            precision,
            ..DelayOptions::default()
        }
        .validate()?;
        let p = crate::clock::duration_ms(precision);
        match store.bounds(MESSAGES_TOPIC, 0) {
            Ok(_) => {}
            Err(Error::UnknownTopic(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let tl = match store.bounds(TIMER_LOG_TOPIC, 0) {
            Ok(b) => Some(b),
            Err(Error::UnknownTopic(_)) => None,
            Err(e) => return Err(e),
        };
        let progress = match store.bounds(PROGRESS_TOPIC, 0) {
            Ok(_) => latest_progress(store)?,
            Err(Error::UnknownTopic(_)) => None,
            Err(e) => return Err(e),
        };
        let (read_time, scan_start, cursor) = progress
            .as_ref()
            .map_or((i64::MIN, 0, 0), |p| (p.read_time, p.scan_start, p.cursor));
        let partial = progress.as_ref().filter(|q| {
            q.partial_slot != i64::MIN && (q.version >= 2 || q.partial_next != NO_ENTRY)
        });
        let pending_entry = |pos: u64, e: &TimerEntry| -> bool {
            if e.kind == EntryKind::Void || e.slot_ms <= read_time {
                return false;
            }
            match partial {
                Some(q) if q.partial_slot == e.slot_ms => {
                    let eff = e
                        .deliver_ms
                        .clamp(e.slot_ms, e.slot_ms.saturating_add(p - 1));
                    let below = match (q.partial_below, tl) {
                        (u64::MAX, Some(b)) => b.end,
                        (below, _) => below,
                    };
                    !((eff, pos) <= (q.partial_due, q.partial_offset)
                        || (pos > q.partial_next && pos < below))
                }
                _ => true,
            }
        };
        let mut cancels: HashSet<u64> = HashSet::new();
        let mut by_slot: BTreeMap<i64, u64> = BTreeMap::new();
        let mb = store.bounds(MESSAGES_TOPIC, 0)?;
        let mut placed_to = mb.start.max(cursor);
        if let Some(tl) = tl
            && tl.end > tl.start
        {
            placed_to = placed_to.max(read_entry(store, tl.end - 1)?.message_offset + 1);
        }
        // Cancels first (placed and not), then the messages they do not cancel.
        for pass in [EntryKind::Cancel, EntryKind::Message] {
            if let Some(tl) = tl {
                let mut at = scan_start.max(tl.start);
                while at < tl.end {
                    let records = store.read(TIMER_LOG_TOPIC, 0, at, ReadLimits::messages(4096))?;
                    let Some(last) = records.last().map(Record::offset) else {
                        break;
                    };
                    for r in &records {
                        let e = TimerEntry::decode(r.body())
                            .map_err(|e| corrupted(store, TIMER_LOG_TOPIC, r.offset(), e))?;
                        if e.kind != pass || !pending_entry(r.offset(), &e) {
                            continue;
                        }
                        if pass == EntryKind::Cancel {
                            cancels.insert(e.id);
                        } else if !cancels.contains(&e.id) {
                            let slot = e.deliver_ms.div_euclid(p).saturating_mul(p);
                            *by_slot.entry(slot).or_default() += 1;
                        }
                    }
                    at = last + 1;
                }
            }
            let mut at = placed_to.max(mb.start);
            while at < mb.end {
                let records = store.read(MESSAGES_TOPIC, 0, at, ReadLimits::messages(1024))?;
                let Some(last) = records.last().map(Record::offset) else {
                    break;
                };
                for r in &records {
                    let Some(due) = prop_i64(r, TIMER_DELIVER_MS) else {
                        continue;
                    };
                    match prop_i64(r, DELAY_CANCEL) {
                        Some(id) if pass == EntryKind::Cancel => {
                            cancels.insert(id as u64);
                        }
                        None if pass == EntryKind::Message
                            && r.properties().get(DELAY_REAL_TOPIC).is_some() =>
                        {
                            let id = prop_i64(r, DELAY_ID).map_or(r.offset(), |i| i as u64);
                            if !cancels.contains(&id) {
                                let slot = due.div_euclid(p).saturating_mul(p);
                                *by_slot.entry(slot).or_default() += 1;
                            }
                        }
                        _ => {}
                    }
                }
                at = last + 1;
            }
        }
        Ok(by_slot.into_iter().collect())
    }

    /// The delay queue of `store` shared by every user in this process that asks for it (the
    /// push consumer's retries, for one): the live one if [`shared`](Self::shared) opened one
    /// for this store and it is still held, else a new one with default [`DelayOptions`]. A
    /// queue opened with [`open`](Self::open) is not shared: this is then the error `open`
    /// gives, so pass that queue where it is needed instead.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use duolog::delay::DelayQueue;
    /// use duolog::{LogStore, StoreOptions};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// let a = DelayQueue::shared(Arc::clone(&store))?;
    /// let b = DelayQueue::shared(Arc::clone(&store))?;
    /// assert!(Arc::ptr_eq(&a, &b));
    /// # Ok(()) }
    /// ```
    pub fn shared(store: Arc<dyn LogStore>) -> Result<Arc<DelayQueue>> {
        let dir = store.dir().to_path_buf();
        let mut shared = SHARED.lock();
        let mut closing = false;
        if let Some(i) = shared.iter().position(|(d, _)| *d == dir) {
            match shared[i].1.upgrade() {
                Some(q) => return Ok(q),
                // Its last holder let go: it may still be closing (threads joining).
                None => {
                    shared.swap_remove(i);
                    closing = true;
                }
            }
        }
        shared.retain(|(_, q)| q.strong_count() > 0);
        // A queue that is closing still serves the store until its close returns: wait for
        // it (bounded) rather than fail a start racing a stop.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let queue = loop {
            match DelayQueue::open(Arc::clone(&store), DelayOptions::default()) {
                Ok(q) => break Arc::new(q),
                Err(e)
                    if closing
                        && std::time::Instant::now() < deadline
                        && SERVED.lock().contains(&dir) =>
                {
                    drop(e);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        };
        shared.push((dir, Arc::downgrade(&queue)));
        Ok(queue)
    }

    /// The longest delay this queue accepts ([`DelayOptions::max_delay`]; `None`: no limit).
    pub fn max_delay(&self) -> Option<Duration> {
        self.shared
            .max_delay_ms
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
    }

    /// The directory of the store this queue serves.
    pub fn store_dir(&self) -> &std::path::Path {
        &self.shared.dir
    }

    /// Stops the threads and returns their first error, if any. Idempotent; dropping the
    /// queue closes it too.
    pub fn close(&self) -> Result<()> {
        let s = &self.shared;
        let first = !s.closed.swap(true, Ordering::SeqCst);
        s.timer_wakeup.wake();
        s.enqueue_wakeup.wake();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        if first {
            SERVED.lock().retain(|d| *d != s.dir);
        }
        match s.error.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for DelayQueue {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn keep_error(s: &Shared, e: Error) {
    let mut slot = s.error.lock();
    if slot.is_none() {
        *slot = Some(e);
    }
}

fn enqueue_loop(s: &Shared) {
    while !s.closed.load(Ordering::SeqCst) {
        let cursor = s.state.lock().cursor;
        let waited = s.store.wait_for_any_with(
            &[(MESSAGES_TOPIC, 0, cursor)],
            Duration::from_secs(1),
            &s.enqueue_wakeup,
        );
        if s.closed.load(Ordering::SeqCst) {
            return;
        }
        let result = waited.and_then(|data| {
            if data {
                let mut st = s.state.lock();
                s.enqueue(&mut st)?;
                let placed = st.placed_min.take();
                Ok(placed.is_some_and(|m| st.timer_sleeps_until.is_some_and(|w| m < w)))
            } else {
                Ok(false)
            }
        });
        match result {
            Ok(true) => s.timer_wakeup.wake(),
            Ok(false) => {}
            Err(e) => {
                let stop = matches!(e, Error::Closed | Error::Poisoned { .. });
                keep_error(s, e);
                if stop {
                    return;
                }
                sleep_on(&s.enqueue_wakeup, Duration::from_secs(1));
            }
        }
    }
}

fn timer_loop(s: &Shared) {
    while !s.closed.load(Ordering::SeqCst) {
        let next = {
            let mut st = s.state.lock();
            let now = s.clock.now_ms();
            st.timer_sleeps_until = None;
            st.placed_min = None;
            // One round per hold of the lock: `cancel`, `pending` and the enqueue thread get
            // their turn between the rounds of a backlog.
            match s.work_once(&mut st, now, &mut PumpReport::default()) {
                Ok(true) => continue,
                Ok(false) => match s.retain_idle(&mut st) {
                    Ok(()) => {
                        let next = s.next_wake(&st, now);
                        // Entries placed after this (by the enqueue thread) wake it if due
                        // earlier.
                        let until = next.map_or(now.saturating_add(1000), |t| {
                            t.min(now.saturating_add(1000))
                        });
                        st.timer_sleeps_until = Some(until);
                        next
                    }
                    Err(e) => {
                        drop(st);
                        keep_error(s, e);
                        sleep_on(&s.timer_wakeup, Duration::from_secs(1));
                        continue;
                    }
                },
                Err(e) => {
                    let stop = matches!(e, Error::Closed | Error::Poisoned { .. });
                    drop(st);
                    keep_error(s, e);
                    if stop {
                        return;
                    }
                    sleep_on(&s.timer_wakeup, Duration::from_secs(1));
                    continue;
                }
            }
        };
        if s.closed.load(Ordering::SeqCst) {
            return;
        }
        // Until the next due slot (the clock wakes us if it jumps), at most a second.
        let wait = next.map_or(1000, |t| (t - s.clock.now_ms()).clamp(0, 1000));
        if wait > 0 {
            sleep_on(&s.timer_wakeup, Duration::from_millis(wait as u64));
        }
    }
}

fn sleep_on(wakeup: &Wakeup, d: Duration) {
    wait_any(&[], wakeup, crate::clock::deadline(d), || false);
}
