//! Wake-ups for readers waiting on new data (`LogStore::wait_for`), one per partition.
//!
//! Each partition has its own signal, so an append wakes only the waiters of its partition:
//! a thousand long-polls parked on idle partitions cost an append nothing but one atomic load
//! of its own partition's waiter count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Waiters of one partition. Appenders pay one atomic load when nobody waits.
#[derive(Default)]
pub(crate) struct DataSignal {
    lock: Mutex<()>,
    cond: Condvar,
    waiters: AtomicUsize,
}

impl DataSignal {
    /// Wakes every waiter of this partition (cheap when there are none).
    pub(crate) fn notify(&self) {
        // Pairs with the fence in `wait_until`: either this load sees the waiter, or the waiter's
        // `ready()` sees the data published before this call (a store-load handshake). A waiter
        // seen here holds `lock` from before its `ready()` until it sleeps, so taking the lock
        // orders this wake-up after it.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock();
            self.cond.notify_all();
        }
    }

    /// Waits until `ready()` holds or `deadline` passes (`None`: no deadline); returns the last
    /// `ready()`.
    pub(crate) fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        let mut g = self.lock.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        let result = loop {
            if ready() {
                break true;
            }
            match deadline {
                Some(d) => {
                    if self.cond.wait_until(&mut g, d).timed_out() {
                        break ready();
                    }
                }
                None => self.cond.wait(&mut g),
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Whether anyone waits (for tests and stats).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn notify_wakes_the_waiter_and_no_deadline_waits_until_ready() {
        let s = Arc::new(DataSignal::default());
        let flag = Arc::new(AtomicBool::new(false));
        let t = {
            let (s, flag) = (Arc::clone(&s), Arc::clone(&flag));
            std::thread::spawn(move || s.wait_until(None, || flag.load(Ordering::SeqCst)))
        };
        while s.waiting() == 0 {
            std::thread::yield_now();
        }
        flag.store(true, Ordering::SeqCst);
        s.notify();
        assert!(t.join().unwrap());
        let past = Instant::now() - Duration::from_millis(1);
        assert!(!s.wait_until(Some(past), || false));
    }
}
