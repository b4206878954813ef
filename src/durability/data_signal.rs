//! Wake-ups for readers waiting on new data (`LogStore::wait_for`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// A generation counter bumped after appends; waiters re-check their condition on each bump.
/// Appenders pay one atomic load when nobody waits.
#[derive(Default)]
pub(crate) struct DataSignal {
    generation: Mutex<u64>,
    cond: Condvar,
    waiters: AtomicUsize,
}

impl DataSignal {
    /// Wakes every waiter (cheap when there are none).
    pub(crate) fn notify(&self) {
        // Pairs with the fence in `wait_until`: either this load sees the waiter, or the waiter's
        // `ready()` sees the data published before this call (a store-load handshake).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            *self.generation.lock() += 1;
            self.cond.notify_all();
        }
    }

    /// Waits until `ready()` holds or `deadline` passes (`None`: no deadline, as
    /// `clock::deadline` gives for timeouts too long for an `Instant`); returns the last
    /// `ready()`.
    pub(crate) fn wait_until(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        let mut g = self.generation.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        let result = loop {
            if ready() {
                break true;
            }
            match crate::clock::remaining(deadline) {
                None => break false,
                Some(None) => self.cond.wait(&mut g),
                Some(Some(left)) => {
                    self.cond.wait_for(&mut g, left);
                }
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}
