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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::segment::SegmentHandle;

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
        }
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
        out
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
}
