//! A bounded cache of open segments, so that thousands of partitions do not mean thousands of
//! open files and mappings (Kafka's most common operational complaint). Least recently used
//! handles are dropped first; a reader or writer still holding one keeps it open until done.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::segment::SegmentHandle;

/// (partition id, segment base offset).
pub(crate) type Key = (u64, u64);

struct Entry {
    handle: Arc<SegmentHandle>,
    used: u64,
}

pub(crate) struct HandleCache {
    capacity: usize,
    inner: Mutex<(HashMap<Key, Entry>, u64)>,
}

impl HandleCache {
    pub(crate) fn new(capacity: usize) -> Self {
        HandleCache {
            capacity: capacity.max(1),
            inner: Mutex::new((HashMap::new(), 0)),
        }
    }

    pub(crate) fn get(&self, key: Key) -> Option<Arc<SegmentHandle>> {
        let mut g = self.inner.lock();
        let (map, clock) = &mut *g;
        *clock += 1;
        let e = map.get_mut(&key)?;
        e.used = *clock;
        Some(Arc::clone(&e.handle))
    }

    /// Inserts a handle, closing the least recently used one if the cache is full. Returns the
    /// handle now cached for `key` (another thread may have inserted one first).
    pub(crate) fn insert(&self, key: Key, handle: Arc<SegmentHandle>) -> Arc<SegmentHandle> {
        let evicted;
        let out;
        {
            let mut g = self.inner.lock();
            let (map, clock) = &mut *g;
            *clock += 1;
            if let Some(e) = map.get_mut(&key) {
                e.used = *clock;
                return Arc::clone(&e.handle);
            }
            evicted = if map.len() >= self.capacity {
                let victim = map.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| *k);
                victim.and_then(|k| map.remove(&k))
            } else {
                None
            };
            out = Arc::clone(&handle);
            map.insert(
                key,
                Entry {
                    handle,
                    used: *clock,
                },
            );
        }
        // Close outside the lock.
        drop(evicted);
        out
    }

    pub(crate) fn remove(&self, key: Key) {
        let e = self.inner.lock().0.remove(&key);
        drop(e);
    }

    /// Drops every cached handle.
    pub(crate) fn clear(&self) {
        let all = std::mem::take(&mut self.inner.lock().0);
        drop(all);
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().0.len()
    }
}
