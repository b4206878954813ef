//! One hash index file, in RocketMQ's IndexFile layout:
//!
//! ```text
//! header (40 bytes): beginTimestamp i64 | endTimestamp i64 | beginPosition i64 |
//!                    endPosition i64 | hashSlotCount i32 | indexCount i32
//! slots:   hashSlotCount × i32  — number of the newest entry in the slot (0: empty)
//! entries: maxEntries × 20 bytes — keyHash i32 | position i64 | timeDiff i32 | prevIndex i32
//! ```
//! `timeDiff` is seconds since `beginTimestamp`; entry 0 is never used (RocketMQ counts from 1),
//! `prevIndex` chains entries of the same slot, newest first. duolog stores a logical position
//! in `position`: `partition << 44 | offset`, so one index serves both engines.
//!
//! Entries carry no checksum: every hit is checked against the record it names.

use std::path::Path;

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
        })
    }

    /// Allocates room for the next `keys` entries, so adding them cannot fail (or fault) for
    /// lack of disk once their batch is in the log. A full disk is an error here.
    pub(crate) fn ensure_room(&self, keys: usize) -> Result<()> {
        let last = (self.entries() as usize + keys).min(self.max_entries as usize);
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

    /// Entries that still fit.
    pub(crate) fn room(&self) -> u32 {
        self.max_entries - self.entries()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries() >= self.max_entries
    }

    pub(crate) fn time_range(&self) -> (i64, i64) {
        (
            self.words.get_u64(BEGIN_TS) as i64,
            self.words.get_u64(END_TS) as i64,
        )
    }

    fn entry_word(&self, n: u32) -> usize {
        HEADER_WORDS + self.slots as usize + n as usize * ENTRY_WORDS
    }

    /// Adds an entry. The caller serialises writers and checks `is_full` first.
    pub(crate) fn put(&self, hash: u32, position: u64, timestamp: i64) {
        let n = self.entries() + 1;
        if self.entries() == 0 {
            self.words.set_u64(BEGIN_TS, timestamp as u64);
            self.words.set_u64(BEGIN_POS, position);
        }
        let begin = self.words.get_u64(BEGIN_TS) as i64;
        let slot = HEADER_WORDS + (hash % self.slots) as usize;
        let prev = self.words.get(slot);
        let w = self.entry_word(n);
        self.words.set(w, hash);
        self.words.set_u64(w + 1, position);
        self.words
            .set(w + 3, ((timestamp - begin).max(0) / 1000) as u32);
        self.words.set(w + 4, if prev < n { prev } else { 0 });
        // Publish: the slot points at the entry only after it is complete.
        self.words.set(slot, n);
        self.words.set(INDEX_COUNT, n + 1);
        let (b, e) = self.time_range();
        if timestamp > e || e == 0 {
            self.words.set_u64(END_TS, timestamp as u64);
        }
        if timestamp < b {
            self.words.set_u64(BEGIN_TS, timestamp as u64);
        }
        self.words.set_u64(END_POS, position);
    }

    /// Positions of entries with `hash` whose time lies in `[from_s, to_s]` seconds since the
    /// epoch, newest first. Walks at most `entries()` steps, and only backwards, so a damaged
    /// chain ends.
    pub(crate) fn lookup(
        &self,
        hash: u32,
        from_ms: i64,
        to_ms: i64,
        out: &mut Vec<u64>,
        limit: usize,
    ) {
        let count = self.entries();
        let begin = self.time_range().0;
        let mut n = self.words.get(HEADER_WORDS + (hash % self.slots) as usize);
        let mut steps = 0;
        while n > 0 && n <= count && steps <= count && out.len() < limit {
            let w = self.entry_word(n);
            let t = begin + i64::from(self.words.get(w + 3)) * 1000;
            // Entries keep seconds: widen by one second on each side, the record decides.
            if self.words.get(w) == hash && t + 1000 >= from_ms && t <= to_ms + 1000 {
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
    fn packing() {
        assert_eq!(unpack(pack(65_535, 123_456_789)), (65_535, 123_456_789));
    }
}
