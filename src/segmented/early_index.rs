//! The first index entries of a segment, held in memory until there are enough of them to be
//! worth two files.
//!
//! A segment this process creates (a partition's first append, a roll) or opens small after a
//! clean close starts with no `.index` or `.timeindex` file: its offset and time entries go to
//! an [`EarlyIndexes`] shared by the segment's meta and every handle opened for it. When either
//! holds [`EARLY_ENTRIES`] entries and the segment indexes another batch, the handle creates
//! both files, writes the entries into them and carries on there ([`SegmentHandle::append`]);
//! a seal writes them as it writes any sealed index. So a new partition costs two inodes (its
//! directory and its log) instead of four: ext4's inode allocator was most of the time of
//! creating 1,024 partitions (BENCHMARKS.md "Partition creation: index files with the first
//! entries"). The entries are derived data either way: an unclean open rebuilds an active
//! segment's indexes from its log, and a clean open of a segment without index files scans its
//! log (at most [`EARLY_ENTRIES`] index intervals and a batch) and keeps them here again.
//!
//! Owns: the in-memory entries and how readers see them ([`Entries`]). It does not touch a file;
//! the handle creates the index files, and the partition, under its lock, keeps the meta.
//!
//! [`SegmentHandle::append`]: super::segment::SegmentHandle::append

use std::ops::Deref;

use parking_lot::{RwLock, RwLockReadGuard};

use super::index::{OFFSET_ENTRY, TIME_ENTRY};

/// Entries an index holds in memory before its file is created: with the default
/// `index_interval_bytes` (4 KiB), the first 128 KiB or so of a segment.
pub(crate) const EARLY_ENTRIES: usize = 32;

/// A segment's offset and time entries while it has no index files. The time index may take
/// one entry past [`EARLY_ENTRIES`]: the final one a roll adds (`append_final_time_entry`).
#[derive(Debug, Default)]
pub(crate) struct EarlyIndexes {
    offset: RwLock<Vec<u8>>,
    time: RwLock<Vec<u8>>,
}

impl EarlyIndexes {
    /// The entries of a scanned segment, if both indexes are small enough to stay in memory.
    pub(crate) fn holding(offset: &[u8], time: &[u8]) -> Option<EarlyIndexes> {
        (offset.len() <= EARLY_ENTRIES * OFFSET_ENTRY && time.len() <= EARLY_ENTRIES * TIME_ENTRY)
            .then(|| EarlyIndexes {
                offset: RwLock::new(offset.to_vec()),
                time: RwLock::new(time.to_vec()),
            })
    }

    /// Whether either index is full: the next indexed batch creates the files.
    pub(crate) fn full(&self) -> bool {
        self.offset.read().len() >= EARLY_ENTRIES * OFFSET_ENTRY
            || self.time.read().len() >= EARLY_ENTRIES * TIME_ENTRY
    }

    pub(crate) fn push_offset(&self, entry: &[u8]) {
        self.offset.write().extend_from_slice(entry);
    }

    pub(crate) fn push_time(&self, entry: &[u8]) {
        self.time.write().extend_from_slice(entry);
    }

    pub(crate) fn offset(&self) -> Entries<'_> {
        Entries::Early(self.offset.read())
    }

    pub(crate) fn time(&self) -> Entries<'_> {
        Entries::Early(self.time.read())
    }
}

/// An index's entries as a reader sees them: the published bytes of its mapped file, or its
/// in-memory entries, read-locked for as long as this lives (appends to the same index wait,
/// so hold it for a lookup, not across I/O).
pub(crate) enum Entries<'a> {
    Mapped(&'a [u8]),
    Early(RwLockReadGuard<'a, Vec<u8>>),
}

impl Deref for Entries<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Entries::Mapped(b) => b,
            Entries::Early(g) => g,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_indexes_stay_in_memory() {
        let off = vec![1u8; EARLY_ENTRIES * OFFSET_ENTRY];
        let time = vec![1u8; EARLY_ENTRIES * TIME_ENTRY];
        let e = EarlyIndexes::holding(&off, &time).expect("fits");
        assert!(e.full());
        assert_eq!(e.offset().len(), off.len());
        assert!(
            EarlyIndexes::holding(&[off.as_slice(), &[1; OFFSET_ENTRY]].concat(), &[]).is_none()
        );
        assert!(
            EarlyIndexes::holding(&[], &[time.as_slice(), &[1; TIME_ENTRY]].concat()).is_none()
        );
        let e = EarlyIndexes::holding(&off[..OFFSET_ENTRY], &[]).expect("fits");
        assert!(!e.full());
        e.push_time(&[2; TIME_ENTRY]);
        assert_eq!(&*e.time(), &[2; TIME_ENTRY]);
    }
}
