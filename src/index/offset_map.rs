//! The cleaner's bounded key → latest offset map (Kafka's `SkimpyOffsetMap`): one 24-byte slot
//! per key (a 128-bit hash of the key and the offset), open addressing with linear probing, in a
//! table whose size the caller fixes up front. It never grows: once it holds its maximum load
//! (90 % of its slots, Kafka's `log.cleaner.io.buffer.load.factor`) `put` of a new key refuses,
//! and the cleaner stops the pass there (the rest is cleaned by a later pass). Memory is the
//! table, whatever the number of keys in the log.
//!
//! Two distinct keys with the same 128-bit hash would make the older one's record look
//! superseded; with xxh3-128 the chance over a billion keys is about 10⁻²¹ (Kafka takes the
//! same risk with MD5).

use xxhash_rust::xxh3::xxh3_128;

/// Bytes of one slot: the key's 128-bit hash and its offset.
pub(crate) const SLOT_BYTES: usize = 24;
/// Share of the slots that may be filled (Kafka's default load factor).
const LOAD_FACTOR: f64 = 0.9;
/// Offset value of an empty slot (no record has this offset).
const EMPTY: u64 = u64::MAX;

/// A fixed-size key hash → offset map.
pub(crate) struct OffsetMap {
    /// `[hash_lo, hash_hi, offset]` per slot.
    slots: Vec<[u64; 3]>,
    len: usize,
    max_len: usize,
    /// Highest offset put since the last clear.
    latest: Option<u64>,
}

impl OffsetMap {
    /// A map of at most `bytes` bytes (at least one slot), sized down to what `expected_keys`
    /// need at the load factor, so a small log does not touch a large table.
    pub(crate) fn new(bytes: usize, expected_keys: u64) -> OffsetMap {
        let budget = (bytes / SLOT_BYTES).max(2);
        let wanted = ((expected_keys as f64 / LOAD_FACTOR).ceil() as usize).saturating_add(2);
        let slots = budget.min(wanted).max(2);
        OffsetMap {
            slots: vec![[0, 0, EMPTY]; slots],
            len: 0,
            max_len: ((slots as f64 * LOAD_FACTOR) as usize).clamp(1, slots - 1),
            latest: None,
        }
    }

    /// Bytes the table occupies.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.slots.len() * SLOT_BYTES
    }

    /// Keys held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether a new key would be refused.
    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.max_len
    }

    /// The highest offset put since the last clear.
    #[cfg(test)]
    pub(crate) fn latest_offset(&self) -> Option<u64> {
        self.latest
    }

    fn hash(key: &[u8]) -> (u64, u64) {
        let h = xxh3_128(key);
        (h as u64, (h >> 64) as u64)
    }

    fn find(&self, lo: u64, hi: u64) -> usize {
        let n = self.slots.len();
        let mut i = (lo ^ hi.rotate_left(17)) as usize % n;
        loop {
            let s = &self.slots[i];
            if s[2] == EMPTY || (s[0] == lo && s[1] == hi) {
                return i;
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
    }

    /// Records `offset` as the latest of `key`. Returns `false`, changing nothing, when the key
    /// is new and the map is full.
    pub(crate) fn put(&mut self, key: &[u8], offset: u64) -> bool {
        let (lo, hi) = Self::hash(key);
        let i = self.find(lo, hi);
        if self.slots[i][2] == EMPTY {
            if self.is_full() {
                return false;
            }
            self.len += 1;
        }
        self.slots[i] = [lo, hi, offset];
        self.latest = Some(self.latest.map_or(offset, |l| l.max(offset)));
        true
    }

    /// The latest offset recorded for `key`.
    pub(crate) fn get(&self, key: &[u8]) -> Option<u64> {
        let (lo, hi) = Self::hash(key);
        let s = &self.slots[self.find(lo, hi)];
        (s[2] != EMPTY).then_some(s[2])
    }

    /// Empties the map, keeping its table.
    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        self.slots.fill([0, 0, EMPTY]);
        self.len = 0;
        self.latest = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn latest_offset_per_key_against_a_model() {
        let mut m = OffsetMap::new(1 << 20, 1000);
        let mut model = HashMap::new();
        for i in 0..5000u64 {
            let key = format!("k{}", (i * 7919) % 997);
            assert!(m.put(key.as_bytes(), i));
            model.insert(key, i);
        }
        assert_eq!(m.len(), model.len());
        for (k, v) in &model {
            assert_eq!(m.get(k.as_bytes()), Some(*v));
        }
        assert_eq!(m.get(b"absent"), None);
        assert_eq!(m.latest_offset(), Some(4999));
    }

    #[test]
    fn a_full_map_refuses_new_keys_but_updates_old_ones() {
        let mut m = OffsetMap::new(10 * SLOT_BYTES, 1_000_000);
        let mut n = 0u64;
        while m.put(format!("k{n}").as_bytes(), n) {
            n += 1;
        }
        assert!(m.is_full());
        assert_eq!(m.len() as u64, n);
        assert!(n >= 1 && (n as usize) < 10);
        assert!(m.put(b"k0", 100), "an existing key still updates");
        assert_eq!(m.get(b"k0"), Some(100));
        m.clear();
        assert_eq!(m.len(), 0);
        assert_eq!(m.get(b"k0"), None);
    }

    #[test]
    fn the_table_is_sized_to_the_expected_keys_within_the_budget() {
        assert!(OffsetMap::new(128 << 20, 10).bytes() < 1024);
        assert_eq!(OffsetMap::new(240, u64::MAX).bytes(), 240);
    }
}
