//! A bounded cache of open segments, so that thousands of partitions do not mean thousands of
//! open files and mappings (Kafka's most common operational complaint). Two bounds, each its own
//! LRU: sealed segments (one descriptor and two mappings each) at most the store's
//! `max_open_files`; segments not sealed yet, whose log is mapped (three mappings, no
//! descriptor), at most [`MAPPED_PER_OPEN_FILE`] × `max_open_files` — so appends round-robin
//! over thousands of partitions keep their active segments open without running into the
//! descriptor limit. Least recently used handles are dropped first, and a reader or writer
//! still holding one keeps it open until done.
//!
//! Appends reach their active segment's handle through the partition (`PartState::active`, a
//! `Weak` used only while this cache holds the handle: whatever the cache lets go of is marked,
//! see `SegmentHandle::is_cached`). Every read looks a handle up here, so the cache is sharded
//! by key (each shard a mutex over a map and an intrusive LRU list: O(1) lookup, touch and
//! eviction), and handles are dropped (files closed, mappings unmapped) outside any shard lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

use super::segment::SegmentHandle;
use crate::io::MappedFile;

/// (partition id, segment base offset).
pub(crate) type Key = (u64, u64);

const SHARDS: usize = 16;
const NIL: usize = usize::MAX;

struct Node {
    key: Key,
    handle: Option<Arc<SegmentHandle>>,
    /// Towards the most recently used end.
    prev: usize,
    /// Towards the least recently used end.
    next: usize,
}

/// One shard: a map from key to slot, and the slots in a doubly linked recency list.
struct Shard {
    map: HashMap<Key, usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used.
    tail: usize,
    capacity: usize,
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard {
            map: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.nodes[h].prev = i,
        }
        self.head = i;
    }

    fn touch(&mut self, i: usize) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn get(&mut self, key: Key) -> Option<Arc<SegmentHandle>> {
        let i = *self.map.get(&key)?;
        self.touch(i);
        self.nodes[i].handle.clone()
    }

    fn take(&mut self, i: usize) -> Option<Arc<SegmentHandle>> {
        self.unlink(i);
        self.map.remove(&self.nodes[i].key);
        self.free.push(i);
        let h = self.nodes[i].handle.take();
        // Under the shard lock, before anyone can open and cache another handle of the segment:
        // a partition remembering this one as its active handle sees it is stale.
        if let Some(h) = &h {
            h.mark_uncached();
        }
        h
    }

    /// Inserts unless present; returns the cached handle and what was evicted.
    fn insert(
        &mut self,
        key: Key,
        handle: Arc<SegmentHandle>,
    ) -> (Arc<SegmentHandle>, Option<Arc<SegmentHandle>>) {
        if let Some(&i) = self.map.get(&key) {
            self.touch(i);
            if let Some(h) = &self.nodes[i].handle {
                return (Arc::clone(h), None);
            }
        }
        let evicted = if self.map.len() >= self.capacity && self.tail != NIL {
            let t = self.tail;
            self.take(t)
        } else {
            None
        };
        let node = Node {
            key,
            handle: Some(Arc::clone(&handle)),
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.map.insert(key, i);
        self.push_front(i);
        (handle, evicted)
    }

    fn remove(&mut self, key: Key) -> Option<Arc<SegmentHandle>> {
        let i = *self.map.get(&key)?;
        self.take(i)
    }
}

/// Segments not sealed yet kept open per `max_open_files`: their handles hold three mappings
/// and no descriptor, so 8 × 512 by default (12,288 mappings, well under the kernel's usual
/// 65,530).
pub(crate) const MAPPED_PER_OPEN_FILE: usize = 8;

pub(crate) struct HandleCache {
    /// Sealed segments (a descriptor each).
    shards: Vec<Mutex<Shard>>,
    /// Segments not sealed yet (mapped, no descriptor).
    mapped: Vec<Mutex<Shard>>,
    /// How many handles `mapped` holds (kept under the shard locks; read without them): the
    /// active logs the warm-up budget is shared by (see `segment::warm_window`).
    mapped_len: AtomicUsize,
    /// `mapped_len` when every mapped log was last given its release share: once the count
    /// doubles past it, the logs not appended to since (which learn their share only on
    /// append) are given the smaller share and release down to it, so idle logs do not keep
    /// the share of a time when fewer were active (`segment::release_keep`).
    shared_at: AtomicUsize,
    /// The active-log mappings records handed out may hold (see [`LogPins`]).
    pins: Arc<LogPins>,
}

/// Shards whose capacities add up to exactly `capacity` (at least one).
fn shards(capacity: usize) -> Vec<Mutex<Shard>> {
    let capacity = capacity.max(1);
    let n = SHARDS.min(capacity);
    (0..n)
        .map(|i| Mutex::new(Shard::new(capacity / n + usize::from(i < capacity % n))))
        .collect()
}

fn shard(shards: &[Mutex<Shard>], key: Key) -> &Mutex<Shard> {
    let h = key.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ key.1.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    &shards[((h >> 32) as usize) % shards.len()]
}

impl HandleCache {
    /// A cache of at most `capacity` sealed segments and `MAPPED_PER_OPEN_FILE × capacity`
    /// segments not sealed yet (each at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        HandleCache {
            shards: shards(capacity),
            mapped: shards(capacity.saturating_mul(MAPPED_PER_OPEN_FILE)),
            mapped_len: AtomicUsize::new(0),
            shared_at: AtomicUsize::new(0),
            pins: Arc::new(LogPins {
                budget: capacity.max(1),
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A pin of an active log's mapping for records to slice (zero-copy), or `None` when
    /// [`LogPins`]' budget is spent and the read must copy.
    pub(crate) fn pin_log(&self, log: &Arc<MappedFile>) -> Option<Arc<LogPin>> {
        LogPins::pin(&self.pins, log)
    }

    /// Active-log mappings records hold now (tests).
    #[cfg(test)]
    pub(crate) fn pinned_logs(&self) -> usize {
        self.pins.held.lock().len()
    }

    pub(crate) fn get(&self, key: Key) -> Option<Arc<SegmentHandle>> {
        // The active segments first: every append looks its segment up.
        if let Some(h) = shard(&self.mapped, key).lock().get(key) {
            return Some(h);
        }
        shard(&self.shards, key).lock().get(key)
    }

    /// Inserts a handle, closing the least recently used one of its shard if the shard is full.
    /// Returns the handle now cached for `key` (another thread may have inserted one first).
    pub(crate) fn insert(&self, key: Key, handle: Arc<SegmentHandle>) -> Arc<SegmentHandle> {
        let tier = if handle.is_mapped() {
            &self.mapped
        } else {
            &self.shards
        };
        let (out, evicted) = {
            let mut s = shard(tier, key).lock();
            let before = s.map.len();
            let r = s.insert(key, handle);
            if tier.as_ptr() == self.mapped.as_ptr() {
                self.count_mapped(before, s.map.len());
            }
            r
        };
        // Closed outside the lock.
        drop(evicted);
        self.reshare_if_doubled();
        out
    }

    /// Gives every mapped log the current release share once the mapped count has doubled
    /// since they last got it (amortised: one walk of the mapped tier per doubling), and lets
    /// the count fall back when it halves, so the next growth walks again. The walk holds
    /// each shard's lock only to clone its handles; the releases (an madvise each, no I/O)
    /// run outside the locks.
    fn reshare_if_doubled(&self) {
        let n = self.mapped_len();
        let at = self.shared_at.load(Ordering::Relaxed);
        if n < at / 2 {
            self.shared_at.store(n, Ordering::Relaxed);
            return;
        }
        if n < at.saturating_mul(2).max(2)
            || self
                .shared_at
                .compare_exchange(at, n, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let keep = super::segment::release_keep(n);
        let mut handles = Vec::with_capacity(n);
        for s in &self.mapped {
            handles.extend(s.lock().nodes.iter().filter_map(|n| n.handle.clone()));
        }
        for h in handles {
            h.share_release(keep);
            h.release_behind();
        }
    }

    pub(crate) fn remove(&self, key: Key) {
        let e = {
            let mut s = shard(&self.mapped, key).lock();
            let before = s.map.len();
            let e = s.remove(key);
            self.count_mapped(before, s.map.len());
            e
        };
        drop(e);
        let e = shard(&self.shards, key).lock().remove(key);
        drop(e);
    }

    /// Drops every cached handle.
    pub(crate) fn clear(&self) {
        for (i, s) in self.shards.iter().chain(&self.mapped).enumerate() {
            let all = {
                let mut s = s.lock();
                let cap = s.capacity;
                if i >= self.shards.len() {
                    self.count_mapped(s.map.len(), 0);
                }
                std::mem::replace(&mut *s, Shard::new(cap))
            };
            for h in all.nodes.iter().filter_map(|n| n.handle.as_ref()) {
                h.mark_uncached();
            }
            drop(all);
        }
    }

    /// Segments not sealed yet the cache holds (their logs mapped): a relaxed count.
    pub(crate) fn mapped_len(&self) -> usize {
        self.mapped_len.load(Ordering::Relaxed)
    }

    fn count_mapped(&self, before: usize, after: usize) {
        if after > before {
            self.mapped_len.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.mapped_len.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .chain(&self.mapped)
            .map(|s| s.lock().map.len())
            .sum()
    }
}

/// The active-log mappings that records handed out may keep alive. A record read from a
/// segment not sealed yet slices that segment's mapping (no copy), which keeps the mapping
/// alive as long as the application holds the record — past the handle's eviction from the
/// cache, and a re-read after it maps the log again. Without a bound an application holding
/// records across more active partitions than the cache holds would add one mapping per
/// re-read. So at most `budget` (the store's `max_open_files`) mappings are pinned by records
/// at a time, cached or not: a read from an active log pinned already slices it; one that would
/// pin another past the budget copies its bytes instead (as a sealed segment's are). Live
/// active-log mappings are therefore at most the cache's mapped tier
/// ([`MAPPED_PER_OPEN_FILE`] × `max_open_files`) plus `max_open_files`.
pub(crate) struct LogPins {
    budget: usize,
    /// Pinned mappings by address (stable: each pin holds its mapping).
    held: Mutex<HashMap<usize, Weak<LogPin>>>,
}

/// A mapping pinned by records: shared by every record read from it while any is held, the
/// pin is given back when the last one is dropped.
pub(crate) struct LogPin {
    pins: Arc<LogPins>,
    log: Arc<MappedFile>,
}

impl LogPin {
    /// `len` published bytes of the pinned log at `pos`, zero-copy, holding this pin.
    pub(crate) fn published_bytes(self: &Arc<Self>, pos: usize, len: usize) -> Option<Bytes> {
        let bytes = self.log.published_bytes(pos, len)?;
        Some(Bytes::from_owner(Pinned {
            bytes,
            _pin: Arc::clone(self),
        }))
    }
}

/// Bytes of a pinned log (what records slice).
struct Pinned {
    bytes: Bytes,
    _pin: Arc<LogPin>,
}

impl AsRef<[u8]> for Pinned {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl LogPins {
    fn pin(pins: &Arc<LogPins>, log: &Arc<MappedFile>) -> Option<Arc<LogPin>> {
        let key = Arc::as_ptr(log) as usize;
        let mut held = pins.held.lock();
        if let Some(p) = held.get(&key).and_then(Weak::upgrade) {
            return Some(p);
        }
        // A dead entry is one whose pin is being dropped (it removes itself): not counted.
        let live = held.len() - usize::from(held.contains_key(&key));
        if live >= pins.budget {
            return None;
        }
        let pin = Arc::new(LogPin {
            pins: Arc::clone(pins),
            log: Arc::clone(log),
        });
        held.insert(key, Arc::downgrade(&pin));
        Some(pin)
    }
}

impl Drop for LogPin {
    fn drop(&mut self) {
        let key = Arc::as_ptr(&self.log) as usize;
        let mut held = self.pins.held.lock();
        // Another pin of the same mapping may have replaced this one's dead entry meanwhile.
        if held
            .get(&key)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), self as *const LogPin))
        {
            held.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_evicts_least_recently_used_in_constant_time() {
        // The list logic on keys alone (handles need files; the shard never looks inside them).
        let mut s = Shard::new(3);
        let mut order = Vec::new();
        for k in 0..3u64 {
            s.map.insert((0, k), s.nodes.len());
            s.nodes.push(Node {
                key: (0, k),
                handle: None,
                prev: NIL,
                next: NIL,
            });
            let i = s.nodes.len() - 1;
            s.push_front(i);
        }
        s.touch(s.map[&(0, 0)]);
        let mut i = s.head;
        while i != NIL {
            order.push(s.nodes[i].key.1);
            i = s.nodes[i].next;
        }
        assert_eq!(order, vec![0, 2, 1]);
        let lru = s.tail;
        assert_eq!(s.nodes[lru].key, (0, 1));
        s.take(lru);
        assert_eq!(s.map.len(), 2);
        assert_eq!(s.nodes[s.tail].key, (0, 2));
    }

    #[test]
    fn capacities_add_up_to_the_bound() {
        for cap in [1, 5, 16, 17, 512, 1000] {
            let c = HandleCache::new(cap);
            let total: usize = c.shards.iter().map(|s| s.lock().capacity).sum();
            assert_eq!(total, cap);
            let mapped: usize = c.mapped.iter().map(|s| s.lock().capacity).sum();
            assert_eq!(mapped, cap * MAPPED_PER_OPEN_FILE);
        }
    }

    #[test]
    fn handles_the_cache_lets_go_of_are_marked_so_appends_stop_writing_through_them() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::io::RealFs;
        let open =
            |base: u64| Arc::new(SegmentHandle::create(&fs, dir.path(), base, 4096, 4096).unwrap());
        let mut shard = Shard::new(2);
        let (a, _) = shard.insert((0, 0), open(0));
        let (b, _) = shard.insert((0, 1), open(1));
        assert!(a.is_cached() && b.is_cached());
        // A third evicts the least recently used.
        let (c3, evicted) = shard.insert((0, 2), open(2));
        assert!(evicted.is_some_and(|e| Arc::ptr_eq(&e, &a)));
        assert!(!a.is_cached(), "an evicted handle still looks cached");
        assert!(b.is_cached() && c3.is_cached());
        shard.remove((0, 1));
        assert!(!b.is_cached(), "a removed handle still looks cached");
        let cache = HandleCache::new(4);
        let d = cache.insert((1, 0), open(10));
        assert!(d.is_cached());
        cache.clear();
        assert!(!d.is_cached(), "a cleared handle still looks cached");
    }

    #[test]
    fn the_count_of_mapped_handles_follows_inserts_evictions_removals_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::io::RealFs;
        let open =
            |base: u64| Arc::new(SegmentHandle::create(&fs, dir.path(), base, 4096, 4096).unwrap());
        // One open file: a mapped tier of MAPPED_PER_OPEN_FILE handles, in one shard.
        let cache = HandleCache::new(1);
        for k in 0..MAPPED_PER_OPEN_FILE as u64 + 3 {
            cache.insert((0, k), open(k));
        }
        // Full: the later inserts evicted as many as they added.
        assert_eq!(cache.mapped_len(), MAPPED_PER_OPEN_FILE);
        // Inserting a key already cached adds nothing.
        cache.insert((0, MAPPED_PER_OPEN_FILE as u64 + 2), open(99));
        assert_eq!(cache.mapped_len(), MAPPED_PER_OPEN_FILE);
        cache.remove((0, MAPPED_PER_OPEN_FILE as u64 + 2));
        assert_eq!(cache.mapped_len(), MAPPED_PER_OPEN_FILE - 1);
        cache.clear();
        assert_eq!(cache.mapped_len(), 0);
    }

    #[test]
    fn records_pin_at_most_max_open_files_active_logs_and_give_them_back_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let fs = crate::io::RealFs;
        let open =
            |base: u64| Arc::new(SegmentHandle::create(&fs, dir.path(), base, 4096, 4096).unwrap());
        // One open file: one pinned mapping.
        let cache = HandleCache::new(1);
        let (a, b) = (open(0), open(1));
        let (la, lb) = (a.mapped_log().unwrap(), b.mapped_log().unwrap());
        let held = cache.pin_log(la).unwrap().published_bytes(0, 0).unwrap();
        assert_eq!(cache.pinned_logs(), 1);
        // The mapping pinned already is sliced again without another pin.
        let again = cache.pin_log(la).unwrap().published_bytes(0, 0).unwrap();
        assert_eq!(cache.pinned_logs(), 1);
        // Another would pass the budget: that read copies.
        assert!(cache.pin_log(lb).is_none());
        drop(held);
        assert!(
            cache.pin_log(lb).is_none(),
            "a pin given back while still held"
        );
        drop(again);
        assert_eq!(cache.pinned_logs(), 0);
        let other = cache.pin_log(lb).unwrap().published_bytes(0, 0).unwrap();
        assert_eq!(cache.pinned_logs(), 1);
        drop(other);
        assert_eq!(cache.pinned_logs(), 0);
    }
}
