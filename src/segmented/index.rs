//! Kafka's sparse indexes of a segment. Pure lookups over the entries' bytes.
//!
//! `.index`: 8-byte entries (offset relative to the segment base u32, position u32), one per
//! `index_interval_bytes` of log; each maps a batch's last offset to the batch's position.
//! `.timeindex`: 12-byte entries (timestamp i64, relative offset u32), appended only when the
//! timestamp grows. Both big-endian; a zero-filled tail (preallocation) is not part of the index.

/// Bytes of an offset-index entry.
pub const OFFSET_ENTRY: usize = 8;
/// Bytes of a time-index entry.
pub const TIME_ENTRY: usize = 12;
/// Entries searched first, being where most lookups (tail reads) land: Kafka's "warm section".
const WARM_ENTRIES: usize = 1024;

/// Encodes an offset-index entry.
pub fn offset_entry(relative_offset: u32, position: u32) -> [u8; OFFSET_ENTRY] {
    let mut b = [0u8; OFFSET_ENTRY];
    b[..4].copy_from_slice(&relative_offset.to_be_bytes());
    b[4..].copy_from_slice(&position.to_be_bytes());
    b
}

/// Encodes a time-index entry.
pub fn time_entry(timestamp: i64, relative_offset: u32) -> [u8; TIME_ENTRY] {
    let mut b = [0u8; TIME_ENTRY];
    b[..8].copy_from_slice(&timestamp.to_be_bytes());
    b[8..].copy_from_slice(&relative_offset.to_be_bytes());
    b
}

/// The `i`-th offset-index entry.
pub fn offset_at(entries: &[u8], i: usize) -> (u32, u32) {
    let b = &entries[i * OFFSET_ENTRY..(i + 1) * OFFSET_ENTRY];
    (
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// The `i`-th time-index entry.
pub fn time_at(entries: &[u8], i: usize) -> (i64, u32) {
    let b = &entries[i * TIME_ENTRY..(i + 1) * TIME_ENTRY];
    let mut t = [0u8; 8];
    t.copy_from_slice(&b[..8]);
    (
        i64::from_be_bytes(t),
        u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
    )
}

/// Index of the last entry whose key is `<= target` in `[0, n)`, searching the warm tail first.
fn last_at_or_below(n: usize, target: i128, key: impl Fn(usize) -> i128) -> Option<usize> {
    if n == 0 || key(0) > target {
        return None;
    }
    let warm_start = n.saturating_sub(WARM_ENTRIES);
    let (mut lo, mut hi) = if key(warm_start) <= target {
        (warm_start, n - 1)
    } else {
        (0, warm_start)
    };
    // Invariant: key(lo) <= target; answer in [lo, hi].
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if key(mid) <= target {
            lo = mid
        } else {
            hi = mid - 1
        }
    }
    Some(lo)
}

/// Kafka's `OffsetIndex.lookup`: the entry with the largest offset `<= target`, as (absolute
/// offset, position); `(base, 0)` when the target is below the first entry.
pub fn lookup_offset(entries: &[u8], base: u64, target: u64) -> (u64, u32) {
    let n = entries.len() / OFFSET_ENTRY;
    let rel = i128::from(target) - i128::from(base);
    match last_at_or_below(n, rel, |i| i128::from(offset_at(entries, i).0)) {
        Some(i) => {
            let (o, p) = offset_at(entries, i);
            (base + u64::from(o), p)
        }
        None => (base, 0),
    }
}

/// Kafka's `TimeIndex.lookup`: the entry with the largest timestamp `<= target`, as (timestamp,
/// absolute offset); `(-1, base)` when the target is before the first entry.
pub fn lookup_time(entries: &[u8], base: u64, target: i64) -> (i64, u64) {
    let n = entries.len() / TIME_ENTRY;
    match last_at_or_below(n, i128::from(target), |i| i128::from(time_at(entries, i).0)) {
        Some(i) => {
            let (t, o) = time_at(entries, i);
            (t, base + u64::from(o))
        }
        None => (-1, base),
    }
}

/// Checks an offset index against its segment: entries strictly increasing in offset and
/// position, positions inside the log. Returns the first problem.
pub fn check_offset_index(entries: &[u8], log_size: u64) -> Result<(), String> {
    if !entries.len().is_multiple_of(OFFSET_ENTRY) {
        return Err(format!(
            "length {} is not a multiple of {OFFSET_ENTRY}",
            entries.len()
        ));
    }
    let mut prev: Option<(u32, u32)> = None;
    for i in 0..entries.len() / OFFSET_ENTRY {
        let (o, p) = offset_at(entries, i);
        if u64::from(p) >= log_size.max(1) {
            return Err(format!(
                "entry {i} points at position {p}, past the log's {log_size} bytes"
            ));
        }
        if let Some((po, pp)) = prev
            && (o <= po || p <= pp)
        {
            return Err(format!("entry {i} ({o}, {p}) does not follow ({po}, {pp})"));
        }
        prev = Some((o, p));
    }
    Ok(())
}

/// Checks a time index: timestamps and offsets never decrease.
pub fn check_time_index(entries: &[u8]) -> Result<(), String> {
    if !entries.len().is_multiple_of(TIME_ENTRY) {
        return Err(format!(
            "length {} is not a multiple of {TIME_ENTRY}",
            entries.len()
        ));
    }
    let mut prev: Option<(i64, u32)> = None;
    for i in 0..entries.len() / TIME_ENTRY {
        let (t, o) = time_at(entries, i);
        if let Some((pt, po)) = prev
            && (t <= pt || o < po)
        {
            return Err(format!("entry {i} ({t}, {o}) does not follow ({pt}, {po})"));
        }
        prev = Some((t, o));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(e: &[(u32, u32)]) -> Vec<u8> {
        e.iter().flat_map(|&(o, p)| offset_entry(o, p)).collect()
    }

    #[test]
    fn lookup_below_the_first_entry_is_the_segment_base() {
        let idx = offsets(&[(10, 4096), (20, 8192)]);
        assert_eq!(lookup_offset(&idx, 100, 105), (100, 0));
        assert_eq!(lookup_offset(&idx, 100, 110), (110, 4096));
        assert_eq!(lookup_offset(&idx, 100, 119), (110, 4096));
        assert_eq!(lookup_offset(&idx, 100, 1000), (120, 8192));
        assert_eq!(lookup_offset(&[], 100, 1000), (100, 0));
        assert_eq!(lookup_offset(&idx, 100, 50), (100, 0));
    }

    #[test]
    fn time_lookup_before_the_first_entry() {
        let idx: Vec<u8> = [(1000i64, 0u32), (2000, 5), (3000, 9)]
            .iter()
            .flat_map(|&(t, o)| time_entry(t, o))
            .collect();
        assert_eq!(lookup_time(&idx, 50, 999), (-1, 50));
        assert_eq!(lookup_time(&idx, 50, 1000), (1000, 50));
        assert_eq!(lookup_time(&idx, 50, 2500), (2000, 55));
        assert_eq!(lookup_time(&idx, 50, i64::MAX), (3000, 59));
    }

    #[test]
    fn warm_and_cold_sections_agree_with_a_linear_search() {
        let e: Vec<(u32, u32)> = (0..5000u32).map(|i| (i * 3 + 1, i * 100 + 7)).collect();
        let idx = offsets(&e);
        for target in (0..15_010u64).step_by(7) {
            let expect = e
                .iter()
                .rev()
                .find(|(o, _)| u64::from(*o) <= target)
                .map_or((0, 0), |&(o, p)| (u64::from(o), p));
            assert_eq!(lookup_offset(&idx, 0, target), expect, "{target}");
        }
    }

    #[test]
    fn garbled_indexes_are_detected() {
        assert!(check_offset_index(&offsets(&[(1, 0), (2, 10)]), 100).is_ok());
        assert!(check_offset_index(&offsets(&[(2, 0), (1, 10)]), 100).is_err());
        assert!(check_offset_index(&offsets(&[(1, 0), (2, 1000)]), 100).is_err());
        assert!(check_offset_index(&[1, 2, 3], 100).is_err());
        assert!(check_time_index(&[time_entry(5, 1), time_entry(4, 2)].concat()).is_err());
    }
}
