//! The aborted-transaction index of a CommitLog partition (Kafka's `.txnindex`, one file per
//! partition): `consumequeue/<topic>/<partition>/aborted.txnindex`, a sequence of Kafka's
//! 34-byte entries, in the order of their markers:
//!
//! ```text
//! version i16 = 0 | producerId i64 | firstOffset i64 | lastOffset i64 (the abort marker's
//! offset) | lastStableOffset i64 (the partition's LSO once the marker was written)
//! ```
//!
//! The file is derived data, like the consume queue: every entry is the image of one rollback
//! marker record in the log (whose properties carry the transaction's first offset and the LSO;
//! see `txn`), checked against that record at every open, and rebuilt from the markers when it
//! does not match. Entries are appended (unsynced) as the markers are dispatched and synced by
//! the next checkpoint before it moves the replay point past them; recovery drops the entries of
//! markers at or past its replay point and re-derives them from the replayed records.
//!
//! A `read_committed` fetch collects the entries overlapping its range once (Kafka's
//! `collectAbortedTxns`) and skips a transactional record only when its producer's entry covers
//! its offset. Entries wholly below the partition's start are dropped (the file rewritten) by
//! retention and `delete_before`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{self, FileSystem, OpenMode};

/// Name of the index file in a partition's consume-queue directory.
pub(crate) const TXN_INDEX_FILE: &str = "aborted.txnindex";
/// Bytes of one entry.
pub(crate) const ENTRY_LEN: usize = 34;
const ENTRY_VERSION: i16 = 0;

/// One aborted transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AbortedTxn {
    pub(crate) producer_id: i64,
    pub(crate) first_offset: u64,
    /// The abort marker's offset.
    pub(crate) last_offset: u64,
    /// The partition's last stable offset once the marker was written: no transaction aborted
    /// later has records below it (what lets a fetch stop collecting).
    pub(crate) last_stable_offset: u64,
}

impl AbortedTxn {
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[..2].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
        b[2..10].copy_from_slice(&self.producer_id.to_be_bytes());
        b[10..18].copy_from_slice(&(self.first_offset as i64).to_be_bytes());
        b[18..26].copy_from_slice(&(self.last_offset as i64).to_be_bytes());
        b[26..34].copy_from_slice(&(self.last_stable_offset as i64).to_be_bytes());
        b
    }

    /// Decodes an entry; `None` for a version other than 0 or impossible fields.
    pub(crate) fn decode(b: &[u8]) -> Option<AbortedTxn> {
        let b: &[u8; ENTRY_LEN] = b.try_into().ok()?;
        let i64_at = |p: usize| i64::from_be_bytes(b[p..p + 8].try_into().unwrap_or([0xFF; 8]));
        if i16::from_be_bytes([b[0], b[1]]) != ENTRY_VERSION {
            return None;
        }
        let (id, first, last, lso) = (i64_at(2), i64_at(10), i64_at(18), i64_at(26));
        if id < 0 || first < 0 || last <= first || lso < 0 || lso > last + 1 {
            return None;
        }
        Some(AbortedTxn {
            producer_id: id,
            first_offset: first as u64,
            last_offset: last as u64,
            last_stable_offset: lso as u64,
        })
    }
}

/// Decodes a whole index file: `None` if its length is not a multiple of an entry, an entry
/// does not decode, or the markers are not in increasing offset order.
pub(crate) fn decode_all(bytes: &[u8]) -> Option<Vec<AbortedTxn>> {
    if !bytes.len().is_multiple_of(ENTRY_LEN) {
        return None;
    }
    let entries = bytes
        .chunks_exact(ENTRY_LEN)
        .map(AbortedTxn::decode)
        .collect::<Option<Vec<_>>>()?;
    entries
        .windows(2)
        .all(|w| w[0].last_offset < w[1].last_offset)
        .then_some(entries)
}

/// The aborted transactions a fetch of `[from, bound)` must know, by producer id: their
/// `(first, last)` offset ranges.
#[derive(Debug, Default)]
pub(crate) struct Aborted {
    by_producer: HashMap<i64, Vec<(u64, u64)>>,
}

impl Aborted {
    pub(crate) fn is_empty(&self) -> bool {
        self.by_producer.is_empty()
    }

    /// Whether a transactional record of `producer_id` at `offset` belongs to one of them. A
    /// binary search: one producer's transactions never overlap and are collected in marker
    /// order, so its ranges ascend (no records × aborts scan for a lagging reader).
    pub(crate) fn covers(&self, producer_id: i64, offset: u64) -> bool {
        self.by_producer.get(&producer_id).is_some_and(|v| {
            let i = v.partition_point(|&(_, last)| last < offset);
            v.get(i).is_some_and(|&(first, _)| first <= offset)
        })
    }
}

/// A partition's index: its entries in memory, and how many of them the file holds.
#[derive(Debug)]
pub(crate) struct TxnIndex {
    path: PathBuf,
    entries: Vec<AbortedTxn>,
    /// Entries `..on_disk` are in the file (not necessarily synced).
    on_disk: usize,
    /// Whether the file exists.
    exists: bool,
    /// Bumped when the entries are replaced (a persist of the old ones does not count).
    generation: u64,
}

impl TxnIndex {
    /// The index of the partition whose consume queue is in `cq_dir`, read from its file; the
    /// second value is `false` when the file exists but does not decode (the caller rebuilds).
    pub(crate) fn load(fs: &dyn FileSystem, cq_dir: &Path) -> Result<(TxnIndex, bool)> {
        let path = cq_dir.join(TXN_INDEX_FILE);
        let mut index = TxnIndex {
            path,
            entries: Vec::new(),
            on_disk: 0,
            exists: false,
            generation: 0,
        };
        match fs.read_file(&index.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((index, true)),
            Err(e) => Err(Error::io(&index.path, e)),
            Ok(bytes) => {
                index.exists = true;
                match decode_all(&bytes) {
                    Some(entries) => {
                        index.on_disk = entries.len();
                        index.entries = entries;
                        Ok((index, true))
                    }
                    None => Ok((index, false)),
                }
            }
        }
    }

    /// An empty index for a new partition (no file yet).
    pub(crate) fn empty(cq_dir: &Path) -> TxnIndex {
        TxnIndex {
            path: cq_dir.join(TXN_INDEX_FILE),
            entries: Vec::new(),
            on_disk: 0,
            exists: false,
            generation: 0,
        }
    }

    pub(crate) fn entries(&self) -> &[AbortedTxn] {
        &self.entries
    }

    /// Adds the entry of an abort marker (in memory; the next checkpoint writes it).
    pub(crate) fn push(&mut self, e: AbortedTxn) {
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|l| l.last_offset < e.last_offset)
        );
        self.entries.push(e);
    }

    /// Replaces the entries (recovery, rebuilds, retention); the next checkpoint rewrites the
    /// file.
    pub(crate) fn replace(&mut self, entries: Vec<AbortedTxn>) {
        if entries != self.entries || self.on_disk != entries.len() {
            self.entries = entries;
            self.on_disk = 0;
            self.generation += 1;
        }
    }

    /// Drops the entries of transactions wholly below `start` (rewritten by the next persist).
    pub(crate) fn drop_below(&mut self, start: u64) {
        let n = self.entries.partition_point(|e| e.last_offset < start);
        if n > 0 {
            let kept = self.entries.split_off(n);
            self.replace(kept);
        }
    }

    /// The aborted transactions overlapping `[from, bound)` (Kafka's `collectAbortedTxns`):
    /// from the first whose marker is at or past `from`, stopping after the first whose LSO
    /// reaches `bound` (every transaction aborted after it starts at or past its LSO).
    pub(crate) fn collect(&self, from: u64, bound: u64) -> Aborted {
        let mut out = Aborted::default();
        let i = self.entries.partition_point(|e| e.last_offset < from);
        for e in &self.entries[i..] {
            if e.first_offset < bound {
                out.by_producer
                    .entry(e.producer_id)
                    .or_default()
                    .push((e.first_offset, e.last_offset));
            }
            if e.last_stable_offset >= bound {
                break;
            }
        }
        out
    }

    /// What [`persist`] must write for the file to hold every entry, taken under the lock
    /// (the I/O is done without it).
    pub(crate) fn pending(&self) -> Pending {
        let write = if self.on_disk == 0 && (self.exists || !self.entries.is_empty()) {
            // New, or replaced: the whole file, atomically (an index emptied by retention keeps
            // an empty file).
            Some(Write::Whole(
                self.entries.iter().flat_map(|e| e.encode()).collect(),
            ))
        } else if self.on_disk < self.entries.len() {
            Some(Write::Append(
                (self.on_disk * ENTRY_LEN) as u64,
                self.entries[self.on_disk..]
                    .iter()
                    .flat_map(|e| e.encode())
                    .collect(),
            ))
        } else {
            None
        };
        Pending {
            path: self.path.clone(),
            write,
            upto: self.entries.len(),
            generation: self.generation,
        }
    }

    /// Notes that `done` was written and synced.
    pub(crate) fn persisted(&mut self, done: &Pending) {
        if done.generation == self.generation {
            self.on_disk = done.upto;
            self.exists = true;
        }
    }
}

/// How an index file is brought up to date.
#[derive(Debug)]
pub(crate) enum Write {
    /// The whole file, written atomically.
    Whole(Vec<u8>),
    /// Entries appended at a byte position.
    Append(u64, Vec<u8>),
}

/// Entries to write to an index file (see [`TxnIndex::pending`]).
#[derive(Debug)]
pub(crate) struct Pending {
    path: PathBuf,
    write: Option<Write>,
    upto: usize,
    generation: u64,
}

/// Writes and syncs what `pending` names (no lock held: one writer at a time, the caller's).
pub(crate) fn persist(fs: &dyn FileSystem, pending: &Pending) -> Result<()> {
    let path = &pending.path;
    match &pending.write {
        None => Ok(()),
        Some(Write::Whole(bytes)) => {
            io::write_atomic(fs, path, bytes).map_err(|e| Error::io(path, e))
        }
        Some(Write::Append(at, bytes)) => {
            let file = fs
                .open_file(path, OpenMode::Existing)
                .map_err(|e| Error::io(path, e))?;
            file.write_all_at(bytes, *at)
                .map_err(|e| Error::io(path, e))?;
            file.sync_data().map_err(|e| Error::io(path, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: i64, first: u64, last: u64, lso: u64) -> AbortedTxn {
        AbortedTxn {
            producer_id: id,
            first_offset: first,
            last_offset: last,
            last_stable_offset: lso,
        }
    }

    #[test]
    fn entries_are_kafkas_34_bytes_and_damage_is_refused() {
        let e = t(7, 10, 15, 16);
        let b = e.encode();
        assert_eq!(b.len(), 34);
        assert_eq!(AbortedTxn::decode(&b), Some(e));
        let mut bad = b;
        bad[1] = 1;
        assert_eq!(AbortedTxn::decode(&bad), None, "version 1");
        let mut bytes: Vec<u8> = [t(1, 0, 3, 4), t(2, 1, 5, 6)]
            .iter()
            .flat_map(|e| e.encode())
            .collect();
        assert_eq!(decode_all(&bytes).map(|v| v.len()), Some(2));
        assert_eq!(decode_all(&bytes[..60]), None, "torn entry");
        bytes[18 + 7] = 9; // first marker at 9, after the second's
        assert_eq!(decode_all(&bytes), None, "out of order");
    }

    /// `covers` finds the range holding an offset among one producer's many aborts (a
    /// binary search), and nothing between or outside them.
    #[test]
    fn covers_finds_an_offset_among_many_aborts_of_one_producer() {
        let mut idx = TxnIndex::empty(Path::new("/x"));
        for k in 0..100u64 {
            idx.push(t(7, k * 10, k * 10 + 3, k * 10 + 4));
        }
        idx.push(t(8, 2000, 2001, 2002));
        let a = idx.collect(0, 10_000);
        assert!(a.covers(7, 0) && a.covers(7, 3) && a.covers(7, 503) && a.covers(7, 990));
        assert!(!a.covers(7, 4) && !a.covers(7, 509) && !a.covers(7, 994));
        assert!(!a.covers(7, 2000) && a.covers(8, 2000) && !a.covers(8, 1999));
        assert!(!a.covers(9, 0));
    }

    #[test]
    fn collect_stops_at_the_first_entry_whose_lso_reaches_the_bound() {
        let mut idx = TxnIndex::empty(Path::new("/x"));
        // p1 aborts [0, 2] while p2 is open from 1: LSO 1. p2 aborts [1, 4].
        idx.push(t(1, 0, 2, 1));
        idx.push(t(2, 1, 4, 5));
        idx.push(t(1, 6, 8, 9));
        let a = idx.collect(0, 3);
        assert!(a.covers(1, 0) && a.covers(2, 3));
        assert!(
            !a.covers(1, 6),
            "stopped at the entry whose LSO passed the bound"
        );
        let a = idx.collect(5, 100);
        assert!(!a.covers(1, 0) && a.covers(1, 7));
        idx.drop_below(3);
        assert_eq!(idx.entries().len(), 2);
    }
}
