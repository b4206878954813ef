//! The bound on consume-queue mappings: a store-wide CLOCK cache (second-chance LRU) of the
//! partitions whose queue files are mapped, at most `16 × max_open_files` partitions at once. A
//! partition counts once whatever its number of files: the files of one partition are mapped and
//! unmapped together, so counting them would make one long queue (more files than the bound)
//! evict and map itself again on every use. A queue file holds 300,000 units by default, so a
//! partition is one or two files unless its consumers are far behind; mappings hold no
//! descriptor.
//!
//! A partition whose queue is evicted keeps only its files' watermarks; its next use maps the
//! files again. A queue is evicted only while nobody holds it (its `Arc` count is 1: the append
//! path, the checkpoint's flush and recovery hold it while they work), so a writer's watermarks
//! are never lost; readers that took a file keep their own mapping alive. Touching a queue is
//! one relaxed store; the lock is taken only to map, enroll or evict.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

/// Partitions whose queues stay mapped per unit of `StoreOptions::max_open_files`. A mapped
/// queue holds no descriptor, only a mapping (the kernel allows 65,530 by default), and
/// remapping on every append is what a too small bound costs: measured with 1,024 partitions
/// round-robin, a bound of 512 queues appended 13 K msg/s against 1.7 M with all mapped.
pub(crate) const QUEUES_PER_OPEN_FILE: usize = 16;

use parking_lot::Mutex;

/// Something the cache can evict.
pub(crate) trait Evictable: Send + Sync {
    /// Unmaps if unused; returns how much it counted (1, or 0 without files), or `None` if in
    /// use.
    fn try_evict(&self) -> Option<usize>;
    /// The second-chance bit: set on every use, cleared by the clock hand.
    fn referenced(&self) -> &AtomicBool;
}

struct Entry {
    queue: Weak<dyn Evictable>,
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    files: usize,
}

/// The store-wide cache of mapped consume queues.
pub(crate) struct QueueCache {
    capacity: usize,
    ring: Mutex<Ring>,
    /// `ring.files`, readable without the lock (the append path sizes its queue warm-up by it).
    mapped: AtomicUsize,
}

impl QueueCache {
    pub(crate) fn new(capacity: usize) -> Arc<QueueCache> {
        Arc::new(QueueCache {
            capacity: capacity.max(1),
            ring: Mutex::new(Ring::default()),
            mapped: AtomicUsize::new(0),
        })
    }

    /// Partitions whose queue files are mapped now (at most the capacity, give or take the
    /// ones in use when the bound was passed). A relaxed read: an estimate for sizing.
    pub(crate) fn mapped(&self) -> usize {
        self.mapped.load(Ordering::Relaxed)
    }

    /// Records a newly mapped queue (`files`: 1, or 0 while it has no file); then evicts others
    /// past the bound. The
    /// caller holds no queue lock (eviction takes other queues' locks).
    pub(crate) fn enroll(&self, queue: Weak<dyn Evictable>, files: usize) {
        let mut ring = self.ring.lock();
        ring.entries.push_back(Entry { queue });
        ring.files += files;
        self.evict_excess(&mut ring);
        self.mapped.store(ring.files, Ordering::Relaxed);
    }

    /// A mapped queue got its first file (`n` = 1); evicts others past the bound.
    pub(crate) fn added(&self, n: usize) {
        let mut ring = self.ring.lock();
        ring.files += n;
        self.evict_excess(&mut ring);
        self.mapped.store(ring.files, Ordering::Relaxed);
    }

    /// A queue unmapped for good (its topic was deleted) stops counting.
    pub(crate) fn forgot(&self, n: usize) {
        let mut ring = self.ring.lock();
        ring.files = ring.files.saturating_sub(n);
        self.mapped.store(ring.files, Ordering::Relaxed);
    }

    fn evict_excess(&self, ring: &mut Ring) {
        // Two sweeps at most: the first clears reference bits, the second finds victims.
        let mut budget = ring.entries.len() * 2 + 1;
        while ring.files > self.capacity && budget > 0 {
            budget -= 1;
            let Some(entry) = ring.entries.pop_front() else {
                break;
            };
            let Some(queue) = entry.queue.upgrade() else {
                // A dropped queue (its topic is gone with the store): its mappings went with it.
                continue;
            };
            if queue.referenced().swap(false, Ordering::Relaxed) {
                ring.entries.push_back(entry);
                continue;
            }
            match queue.try_evict() {
                Some(n) => ring.files = ring.files.saturating_sub(n),
                None => ring.entries.push_back(entry),
            }
        }
    }
}
