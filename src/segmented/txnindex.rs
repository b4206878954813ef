//! Kafka's transaction index: `<20-digit base>.txnindex` next to a segment, one 34-byte entry
//! per aborted transaction whose abort marker lies in the segment, in marker order
//! (big-endian):
//!
//! ```text
//! version i16 = 0 | producerId i64 | firstOffset i64 | lastOffset i64 | lastStableOffset i64
//! ```
//!
//! `firstOffset` is the transaction's first offset (possibly in an earlier segment),
//! `lastOffset` its abort marker's offset, `lastStableOffset` the partition's last stable
//! offset once the abort was written (Kafka's `lastStableOffset(completedTxn)`: the first
//! offset of another producer's transaction still open, else the marker's offset + 1). A
//! `read_committed` fetch from offset `o` up to a bound `u` reads the indexes of the segments
//! from `o`'s on, collecting the entries that overlap `[o, u)`, and stops at the first entry
//! whose last stable offset reaches `u`: every transaction that began below `u` had ended by
//! then, so its abort (if any) came before (Kafka's `collectAbortedTxns`).
//!
//! The file exists only for segments with an abort (created by the first one), is written
//! with positional writes through a descriptor opened for the write and closed after it, and
//! read the same way: no descriptor is kept per segment. It is derived data: an entry is made
//! durable with its marker, an unclean open rebuilds the indexes of the segments it
//! validates, and an index that does not check out at open is rebuilt from the log.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{self, FileSystem, OpenMode, StorageFile};

/// Bytes of one entry.
pub(crate) const ENTRY_LEN: usize = 34;
const VERSION: i16 = 0;
pub(crate) const SUFFIX: &str = "txnindex";

/// `<dir>/<20-digit base>.txnindex`.
pub(crate) fn path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{}.{SUFFIX}", io::offset_name(base)))
}

/// One aborted transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AbortedTxn {
    pub(crate) producer_id: i64,
    pub(crate) first_offset: u64,
    /// The abort marker's offset.
    pub(crate) last_offset: u64,
    pub(crate) last_stable: u64,
}

/// The bytes of one entry.
pub(crate) fn encode(e: &AbortedTxn) -> [u8; ENTRY_LEN] {
    let mut b = [0u8; ENTRY_LEN];
    b[0..2].copy_from_slice(&VERSION.to_be_bytes());
    b[2..10].copy_from_slice(&e.producer_id.to_be_bytes());
    b[10..18].copy_from_slice(&(e.first_offset as i64).to_be_bytes());
    b[18..26].copy_from_slice(&(e.last_offset as i64).to_be_bytes());
    b[26..34].copy_from_slice(&(e.last_stable as i64).to_be_bytes());
    b
}

/// Decodes a whole index of the segment holding offsets `[base, next_offset)`, checking what
/// can be checked without the log: whole entries of version 0, non-negative ids, a first
/// offset before the marker (a transaction has a record before its marker), markers inside the segment and strictly increasing. (The
/// last stable offset may lie below the transaction's first offset: another producer's
/// transaction may have been open since before it; 0 means unknown, see `load`.)
pub(crate) fn decode(
    b: &[u8],
    base: u64,
    next_offset: u64,
) -> Result<Vec<AbortedTxn>, &'static str> {
    if !b.len().is_multiple_of(ENTRY_LEN) {
        return Err("length is not a whole number of entries");
    }
    let mut out: Vec<AbortedTxn> = Vec::with_capacity(b.len() / ENTRY_LEN);
    for c in b.chunks_exact(ENTRY_LEN) {
        let i64_at = |p: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&c[p..p + 8]);
            i64::from_be_bytes(a)
        };
        if i16::from_be_bytes([c[0], c[1]]) != VERSION {
            return Err("unsupported entry version");
        }
        let (id, first, last, lso) = (i64_at(2), i64_at(10), i64_at(18), i64_at(26));
        if id < 0 || first < 0 || last <= first || lso < 0 {
            return Err("entry describes an impossible transaction");
        }
        let e = AbortedTxn {
            producer_id: id,
            first_offset: first as u64,
            last_offset: last as u64,
            last_stable: lso as u64,
        };
        if e.last_offset < base || e.last_offset >= next_offset {
            return Err("abort marker outside the segment");
        }
        if out.last().is_some_and(|p| p.last_offset >= e.last_offset) {
            return Err("entries out of order");
        }
        out.push(e);
    }
    Ok(out)
}

/// Appends entry number `count` (0-based) to segment `base`'s index, creating the file for the
/// first one. Returns the open file: the caller syncs it (and, when `count` is 0, the
/// directory) to make the entry durable.
pub(crate) fn append(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    count: u64,
    e: &AbortedTxn,
) -> Result<Box<dyn StorageFile>> {
    let p = path(dir, base);
    let f = if count == 0 {
        // A leftover of a failed first write: nothing refers to it.
        io::remove_if_exists(fs, &p).map_err(|err| Error::io(&p, err))?;
        fs.open_file(&p, OpenMode::CreateNew)
    } else {
        fs.open_file(&p, OpenMode::Existing)
    }
    .map_err(|err| Error::io(&p, err))?;
    f.write_all_at(&encode(e), count * ENTRY_LEN as u64)
        .map_err(|err| Error::io(&p, err))?;
    Ok(f)
}

/// The first `count` entries of segment `base`'s index (read at `path`, which may be the
/// `.swap` name of a segment being swapped in), or as many whole entries as the file holds if
/// fewer: a fetch samples `count` under the partition lock and reads without it, and a
/// compaction swap may meanwhile put a cleaned segment's shorter index in place (the caller
/// compares the length to `count`). An index that vanished (its segment deleted meanwhile)
/// reads as empty.
pub(crate) fn read(fs: &dyn FileSystem, p: &Path, count: u64) -> Result<Vec<AbortedTxn>> {
    let f = match fs.open_file(p, OpenMode::Existing) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(p, e)),
    };
    let present = f.len().map_err(|e| Error::io(p, e))? / ENTRY_LEN as u64;
    let count = count.min(present);
    let mut buf = vec![0u8; count as usize * ENTRY_LEN];
    io::read_exact_at(f.as_ref(), &mut buf, 0).map_err(|e| Error::io(p, e))?;
    // Entries already checked (at open, or written by this process): decode without bounds.
    decode(&buf, 0, u64::MAX).map_err(|why| Error::corrupted(p, 0, why))
}

/// Replaces segment `base`'s index by `entries` (atomically; no file for none).
pub(crate) fn write_all(
    fs: &dyn FileSystem,
    dir: &Path,
    base: u64,
    entries: &[AbortedTxn],
) -> Result<()> {
    let p = path(dir, base);
    if entries.is_empty() {
        if io::remove_if_exists(fs, &p).map_err(|e| Error::io(&p, e))? {
            fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        }
        return Ok(());
    }
    let bytes: Vec<u8> = entries.iter().flat_map(encode).collect();
    io::write_atomic(fs, &p, &bytes).map_err(|e| Error::io(&p, e))
}

/// The aborted transactions a `read_committed` fetch must skip, by producer: each producer's
/// (first offset, marker offset) ranges in offset order (a producer's transactions never
/// overlap).
#[derive(Debug, Default)]
pub(crate) struct Aborted {
    by_producer: std::collections::HashMap<i64, Vec<(u64, u64)>>,
}

impl Aborted {
    pub(crate) fn add(&mut self, e: &AbortedTxn) {
        let v = self.by_producer.entry(e.producer_id).or_default();
        v.push((e.first_offset, e.last_offset));
        // Usually already in order (markers come in order); entries from several segments
        // are collected in segment order, so this stays cheap.
        if v.len() > 1 && v[v.len() - 2].0 > e.first_offset {
            v.sort_unstable();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_producer.is_empty()
    }

    /// Whether a transactional batch of `producer_id` starting at `base_offset` belongs to an
    /// aborted transaction (one lookup per batch, as Kafka's consumer does).
    pub(crate) fn contains(&self, producer_id: i64, base_offset: u64) -> bool {
        let Some(v) = self.by_producer.get(&producer_id) else {
            return false;
        };
        let i = v.partition_point(|&(first, _)| first <= base_offset);
        i > 0 && v[i - 1].1 >= base_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: i64, first: u64, last: u64, lso: u64) -> AbortedTxn {
        AbortedTxn {
            producer_id: id,
            first_offset: first,
            last_offset: last,
            last_stable: lso,
        }
    }

    #[test]
    fn entries_round_trip_in_kafkas_34_bytes() {
        let v = [e(7, 3, 10, 11), e(8, 5, 12, 13)];
        let bytes: Vec<u8> = v.iter().flat_map(encode).collect();
        assert_eq!(bytes.len(), 68);
        assert_eq!(&bytes[0..2], &[0, 0]);
        assert_eq!(&bytes[2..10], &7i64.to_be_bytes());
        assert_eq!(decode(&bytes, 10, 13).unwrap(), v);
    }

    #[test]
    fn a_fetch_reads_an_index_that_compaction_shortened_without_an_error() {
        // A fetch sampled (path, 3 entries) under the lock; compaction then swapped in a
        // cleaned segment whose index holds fewer: the read returns those it finds.
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::io::RealFs;
        write_all(&fs, dir.path(), 0, &[e(7, 3, 10, 11)]).unwrap();
        let got = read(&fs, &path(dir.path(), 0), 3).unwrap();
        assert_eq!(got, [e(7, 3, 10, 11)]);
    }

    #[test]
    fn damaged_indexes_are_refused() {
        let good = encode(&e(7, 3, 10, 11));
        assert!(decode(&good, 10, 11).is_ok());
        assert!(decode(&good[..33], 10, 11).is_err(), "torn entry");
        assert!(decode(&good, 11, 20).is_err(), "marker before the segment");
        assert!(decode(&good, 0, 10).is_err(), "marker past the segment");
        let twice: Vec<u8> = [good, good].concat();
        assert!(decode(&twice, 0, 20).is_err(), "not increasing");
        let mut bad = good;
        bad[1] = 1;
        assert!(decode(&bad, 0, 20).is_err(), "version");
        for bad in [e(7, 11, 10, 12), e(7, 10, 10, 11), e(-1, 3, 10, 11)] {
            assert!(decode(&encode(&bad), 0, 20).is_err(), "{bad:?}");
        }
        // Zeroes (a file extended but never written) are no entry.
        assert!(decode(&[0u8; 34], 0, 20).is_err());
    }

    #[test]
    fn aborted_ranges_are_found_per_producer_and_batch() {
        let mut a = Aborted::default();
        a.add(&e(1, 10, 20, 21));
        a.add(&e(2, 12, 22, 23));
        a.add(&e(1, 30, 40, 41));
        assert!(a.contains(1, 10) && a.contains(1, 19) && a.contains(1, 35));
        assert!(!a.contains(1, 9) && !a.contains(1, 25) && !a.contains(1, 41));
        assert!(a.contains(2, 12) && !a.contains(2, 10) && !a.contains(3, 15));
    }
}
