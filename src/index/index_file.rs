//! One hash index file, in RocketMQ's IndexFile layout:
//!
//! ```text
//! header (40 bytes): beginTimestamp i64 | endTimestamp i64 | beginPosition i64 |
//!                    endPosition i64 | hashSlotCount i32 | indexCount i32
//! slots:   hashSlotCount × i32  — number of the newest entry in the slot (0: empty)
//! entries: maxEntries × 20 bytes — keyHash i32 | position i64 | timeDiff i32 | prevIndex i32
//! ```
//! `timeDiff` is signed seconds since `beginTimestamp`, which the first entry sets and nothing
//! moves afterwards (as RocketMQ's `putKey`): entries are written out of time order (partitions
//! append in parallel; a rebuild indexes one partition after another), and moving the anchor
//! under entries already written would shift their times. An entry older than the anchor has a
//! negative `timeDiff`. Entry 0 is never used by RocketMQ (it counts from 1); duolog keeps in its
//! `position` field the earliest store time indexed, the file's lower time bound for lookups (0:
//! unknown, as in files written before it existed). `prevIndex` chains entries of the same slot,
//! newest first. duolog stores a logical position in `position`: `partition << 44 | offset`, so
//! one index serves both engines.
//!
//! Entries carry no checksum: every hit is checked against the record it names.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::error::{Error, Result};
use crate::io::{FileSystem, MapMode, MappedWords};

const HEADER_WORDS: usize = 10;
const ENTRY_WORDS: usize = 5;
const BEGIN_TS: usize = 0;
const END_TS: usize = 2;
const BEGIN_POS: usize = 4;
const END_POS: usize = 6;
const SLOT_COUNT: usize = 8;
const INDEX_COUNT: usize = 9;

/// Bits of the offset in a packed position.
pub const OFFSET_BITS: u32 = 44;

/// Packs (partition, offset) into an entry's position.
pub fn pack(partition: u32, offset: u64) -> u64 {
    (u64::from(partition) << OFFSET_BITS) | (offset & ((1 << OFFSET_BITS) - 1))
}

/// Unpacks an entry's position.
pub fn unpack(position: u64) -> (u32, u64) {
    (
        (position >> OFFSET_BITS) as u32,
        position & ((1 << OFFSET_BITS) - 1),
    )
}

/// RocketMQ's key hash: `abs(String.hashCode())` of `topic#key` over UTF-16 units.
pub fn key_hash(topic: &str, key: &str) -> u32 {
    let mut h: i32 = 0;
    for unit in topic
        .encode_utf16()
        .chain("#".encode_utf16())
        .chain(key.encode_utf16())
    {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    if h == i32::MIN { 0 } else { h.unsigned_abs() }
}

/// A mapped index file.
#[derive(Debug)]
pub(crate) struct IndexFile {
    words: MappedWords,
    slots: u32,
    max_entries: u32,
    /// Entries promised to batches being written (in memory only: a reservation does not
    /// outlive the append that took it).
    reserved: AtomicU32,
    /// Set when the file leaves the index (retention, `reindex`): reservations still holding it
    /// write elsewhere.
    retired: AtomicBool,
}

/// Words of a file with these sizes.
fn words_for(slots: u32, max_entries: u32) -> usize {
    HEADER_WORDS + slots as usize + (max_entries as usize + 1) * ENTRY_WORDS
}

impl IndexFile {
    /// Creates a grow-on-demand file: the header and hash slots are allocated now (slots are
    /// written anywhere), the entries as they are added (they are appended in order), so an
    /// index with few keys takes little disk.
    pub(crate) fn create(
        fs: &dyn FileSystem,
        path: &Path,
        slots: u32,
        max_entries: u32,
    ) -> Result<IndexFile> {
        let initial = (HEADER_WORDS + slots as usize + ENTRY_WORDS) as u64 * 4;
        let words = MappedWords::map(
            fs,
            path,
            words_for(slots, max_entries),
            MapMode::CreateGrowable { initial },
        )
        .map_err(|e| Error::io(path, e))?;
        words.set(SLOT_COUNT, slots);
        words.set(INDEX_COUNT, 1);
        Ok(IndexFile {
            words,
            slots,
            max_entries,
            reserved: AtomicU32::new(0),
            retired: AtomicBool::new(false),
        })
    }

    /// Opens an existing file. Its slot count comes from its header; its capacity is
    /// `max_entries` (the option), or more if the file is longer (a file made with a larger
    /// option, or fully preallocated by an older version). Its length is only how much of it is
    /// allocated: at least the header and slots.
    pub(crate) fn open(fs: &dyn FileSystem, path: &Path, max_entries: u32) -> Result<IndexFile> {
        let len = fs.file_len(path).map_err(|e| Error::io(path, e))?;
        let have = (len / 4) as usize;
        if len % 4 != 0 || have < HEADER_WORDS {
            return Err(Error::corrupted(
                path,
                0,
                "index file has an impossible length",
            ));
        }
        let slots = MappedWords::map(fs, path, have, MapMode::OpenGrowable)
            .map_err(|e| Error::io(path, e))?
            .get(SLOT_COUNT);
        if slots == 0 {
            return Err(Error::corrupted(path, 32, "index header has no hash slots"));
        }
        if have < HEADER_WORDS + slots as usize {
            return Err(Error::corrupted(
                path,
                len,
                "index file is shorter than its header and hash slots",
            ));
        }
        let total = words_for(slots, max_entries).max(have);
        let room = total
            .checked_sub(HEADER_WORDS + slots as usize)
            .filter(|r| *r >= ENTRY_WORDS && r % ENTRY_WORDS == 0);
        let Some(room) = room else {
            return Err(Error::corrupted(
                path,
                32,
                "index header's slot count does not fit the file",
            ));
        };
        let words = MappedWords::map(fs, path, total, MapMode::OpenGrowable)
            .map_err(|e| Error::io(path, e))?;
        Ok(IndexFile {
            words,
            slots,
            max_entries: (room / ENTRY_WORDS - 1) as u32,
            reserved: AtomicU32::new(0),
            retired: AtomicBool::new(false),
        })
    }

    /// Allocates room for the next `keys` entries, so adding them cannot fail (or fault) for
    /// lack of disk once their batch is in the log. A full disk is an error here.
    pub(crate) fn ensure_room(&self, keys: usize) -> Result<()> {
        // Room already promised to other batches comes first: their entries land before these.
        let reserved = self.reserved.load(Ordering::Acquire) as usize;
        let last = (self.entries() as usize + reserved + keys).min(self.max_entries as usize);
        self.words
            .ensure_words(self.entry_word(last as u32) + ENTRY_WORDS)
            .map_err(|e| Error::io(self.path(), e))
    }

    pub(crate) fn path(&self) -> &Path {
        self.words.path()
    }

    /// Entries written (the header's count minus the unused entry 0), never past capacity.
    pub(crate) fn entries(&self) -> u32 {
        self.words
            .get(INDEX_COUNT)
            .saturating_sub(1)
            .min(self.max_entries)
    }

    /// Entries that still fit, less those reserved.
    pub(crate) fn room(&self) -> u32 {
        (self.max_entries - self.entries()).saturating_sub(self.reserved.load(Ordering::Acquire))
    }

    /// Promises `n` entries to a batch (the caller holds the writer lock and checked `room`).
    pub(crate) fn reserve(&self, n: u32) {
        self.reserved.fetch_add(n, Ordering::AcqRel);
    }

    /// Gives back `n` promised entries (used or abandoned).
    pub(crate) fn release(&self, n: u32) {
        self.reserved.fetch_sub(n, Ordering::AcqRel);
    }

    /// Whether a reservation holds entries of this file.
    pub(crate) fn is_reserved(&self) -> bool {
        self.reserved.load(Ordering::Acquire) > 0
    }

    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// (earliest, latest) store time indexed, in ms; the earliest is `i64::MIN` when unknown.
    pub(crate) fn time_range(&self) -> (i64, i64) {
        let earliest = self.words.get_u64(self.entry_word(0) + 1) as i64;
        (
            if earliest == 0 { i64::MIN } else { earliest },
            self.words.get_u64(END_TS) as i64,
        )
    }

    fn entry_word(&self, n: u32) -> usize {
        HEADER_WORDS + self.slots as usize + n as usize * ENTRY_WORDS
    }

    /// Adds an entry. The caller serialises writers and checks `room` (or holds a reservation).
    pub(crate) fn put(&self, hash: u32, position: u64, timestamp: i64) {
        let written = self.entries();
        let n = written + 1;
        let earliest_word = self.entry_word(0) + 1;
        // The time bounds widen before the entry is published, so a reader that skips the file
        // by its bounds never skips a published entry.
        if written == 0 {
            self.words.set_u64(BEGIN_TS, timestamp as u64);
            self.words.set_u64(BEGIN_POS, position);
            self.words.set_u64(earliest_word, timestamp as u64);
            self.words.set_u64(END_TS, timestamp as u64);
        } else {
            let (earliest, end) = self.time_range();
            // An unknown bound (a file from before the bound was kept) stays unknown.
            if timestamp < earliest {
                self.words.set_u64(earliest_word, timestamp as u64);
            }
            if timestamp > end {
                self.words.set_u64(END_TS, timestamp as u64);
            }
        }
        let begin = self.words.get_u64(BEGIN_TS) as i64;
        let slot = HEADER_WORDS + (hash % self.slots) as usize;
        let prev = self.words.get(slot);
        let w = self.entry_word(n);
        self.words.set(w, hash);
        self.words.set_u64(w + 1, position);
        self.words.set(w + 3, time_diff(timestamp, begin) as u32);
        self.words.set(w + 4, if prev < n { prev } else { 0 });
        // Publish: the slot points at the entry only after it is complete.
        self.words.set(slot, n);
        self.words.set(INDEX_COUNT, n + 1);
        self.words.set_u64(END_POS, position);
    }

    /// Positions of entries with `hash` whose time may lie in `[from_ms, to_ms]`, newest first.
    /// Walks at most `entries()` steps, and only backwards, so a damaged chain ends.
    pub(crate) fn lookup(
        &self,
        hash: u32,
        from_ms: i64,
        to_ms: i64,
        out: &mut Vec<u64>,
        limit: usize,
    ) {
        let count = self.entries();
        let begin = self.words.get_u64(BEGIN_TS) as i64;
        let mut n = self.words.get(HEADER_WORDS + (hash % self.slots) as usize);
        let mut steps = 0;
        while n > 0 && n <= count && steps <= count && out.len() < limit {
            let w = self.entry_word(n);
            if self.words.get(w) == hash
                && entry_may_match(begin, self.words.get(w + 3) as i32, from_ms, to_ms)
            {
                out.push(self.words.get_u64(w + 1));
            }
            let prev = self.words.get(w + 4);
            if prev >= n {
                break;
            }
            n = prev;
            steps += 1;
        }
    }

    pub(crate) fn flush(&self) -> Result<()> {
        self.words.flush().map_err(|e| Error::io(self.path(), e))
    }

    /// After an unclean shutdown: keeps the first `count` entries (durable at the last index
    /// checkpoint) and rebuilds from them everything `put` changes in place — the slot heads,
    /// the entry count, the time bounds — since a power cut may have kept any mix of those
    /// writes (a slot pointing at a torn entry, a garbage count or end time), which would hide
    /// durable entries from lookups. Entries past `count` are forgotten; the engine indexes
    /// their records again from the checkpoint. Time bounds come back at second precision,
    /// widened to whole seconds (a superset: lookups check every hit against its record).
    pub(crate) fn restore(&self, count: u32) -> Result<()> {
        let count = count.min(self.max_entries);
        for s in 0..self.slots as usize {
            self.words.set(HEADER_WORDS + s, 0);
        }
        let begin = self.words.get_u64(BEGIN_TS) as i64;
        let (mut earliest, mut latest) = (i64::MAX, i64::MIN);
        for n in 1..=count {
            let w = self.entry_word(n);
            let hash = self.words.get(w);
            self.words
                .set(HEADER_WORDS + (hash % self.slots) as usize, n);
            let diff = self.words.get(w + 3) as i32;
            let (lo, hi) = if diff == i32::MIN || diff == i32::MAX {
                (i64::MIN, i64::MAX)
            } else {
                let second = begin.saturating_add(i64::from(diff) * 1000);
                (second, second.saturating_add(999))
            };
            earliest = earliest.min(lo);
            latest = latest.max(hi);
        }
        let earliest_word = self.entry_word(0) + 1;
        if count == 0 {
            for w in [BEGIN_TS, END_TS, BEGIN_POS, END_POS, earliest_word] {
                self.words.set_u64(w, 0);
            }
        } else {
            // An unknown earliest bound is stored as 0, as in files that never kept one.
            let earliest = if earliest == i64::MIN {
                0
            } else {
                earliest.max(1)
            };
            self.words.set_u64(earliest_word, earliest as u64);
            self.words.set_u64(END_TS, latest as u64);
            let last = self.words.get_u64(self.entry_word(count) + 1);
            self.words.set_u64(END_POS, last);
        }
        self.words.set(INDEX_COUNT, count + 1);
        self.flush()
    }
}

/// An entry's `timeDiff`: whole seconds from `begin` down to `timestamp` (floor, so the entry's
/// second starts at or before its store time), saturated at the ends of `i32` (±68 years).
fn time_diff(timestamp: i64, begin: i64) -> i32 {
    let secs = timestamp.saturating_sub(begin).div_euclid(1000);
    i32::try_from(secs).unwrap_or(if secs < 0 { i32::MIN } else { i32::MAX })
}

/// Whether an entry of `diff` seconds after `begin` may hold a store time in `[from_ms, to_ms]`:
/// its store time lies within the second `begin + diff * 1000 ..+ 1000`. A saturated diff says
/// nothing about the time, so such an entry is a candidate whatever the range (the record
/// decides). Saturating arithmetic: every range a caller can pass is answered.
fn entry_may_match(begin: i64, diff: i32, from_ms: i64, to_ms: i64) -> bool {
    if diff == i32::MIN || diff == i32::MAX {
        return true;
    }
    let second = begin.saturating_add(i64::from(diff) * 1000);
    second <= to_ms && second.saturating_add(999) >= from_ms
}

/// RocketMQ's file name for an index created at `ms`: `yyyyMMddHHmmssSSS` (UTC here).
pub(crate) fn file_name(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}{millis:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_rocketmq_timestamps() {
        assert_eq!(file_name(0), "19700101000000000");
        assert_eq!(file_name(1_700_000_000_123), "20231114221320123");
        assert_eq!(file_name(951_782_400_000), "20000229000000000");
    }

    #[test]
    fn key_hash_is_java_hash_code_of_topic_and_key() {
        // "T#k".hashCode() = (84*31 + 35)*31 + 107
        assert_eq!(key_hash("T", "k"), ((84 * 31 + 35) * 31 + 107) as u32);
    }

    #[test]
    fn time_diffs_round_down_and_saturate() {
        assert_eq!(time_diff(2_500, 1_000), 1);
        assert_eq!(time_diff(999, 1_000), -1);
        assert_eq!(time_diff(-1_000, 1_000), -2);
        assert_eq!(time_diff(i64::MAX, 0), i32::MAX);
        assert_eq!(time_diff(i64::MIN, 0), i32::MIN);
        assert!(entry_may_match(1_000, 1, 2_500, 2_500));
        assert!(entry_may_match(1_000, -1, 999, 999));
        assert!(!entry_may_match(1_000, -1, 1_000, 5_000));
        assert!(entry_may_match(i64::MAX - 10, 0, i64::MIN, i64::MAX));
        assert!(!entry_may_match(0, 0, i64::MIN, -1));
        assert!(entry_may_match(0, i32::MAX, i64::MIN, i64::MIN));
    }

    #[test]
    fn packing() {
        assert_eq!(unpack(pack(65_535, 123_456_789)), (65_535, 123_456_789));
    }
}
