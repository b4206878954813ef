//! Wake-ups for readers waiting on new data (`LogStore::wait_for` and `wait_for_any`), one
//! signal per partition.
//!
//! Each partition has its own signal, so an append wakes only the waiters of its partition:
//! a thousand long-polls parked on idle partitions cost an append nothing but one atomic load
//! of its own partition's waiter count. A wait over many partitions registers one [`Wakeup`] on
//! each of their signals (counted as a waiter there), so it sleeps once and any of them wakes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Waiters of one partition. Appenders pay one atomic load when nobody waits.
#[derive(Default)]
pub(crate) struct DataSignal {
    /// The wake-ups of multi-partition waits registered here; also the lock `cond` sleeps on.
    lock: Mutex<Vec<Wakeup>>,
    cond: Condvar,
    /// Single-partition waiters plus registered wake-ups.
    waiters: AtomicUsize,
}

const DATA: u8 = 1;
const USER: u8 = 2;

struct WakeupState {
    /// `DATA` and/or `USER` bits of wake-ups not yet consumed by a wait.
    pending: Mutex<u8>,
    cond: Condvar,
}

/// A wake-up a multi-partition wait sleeps on ([`LogStore::wait_for_any_with`]): data arriving
/// on any of the waited partitions wakes it, and so does [`Wakeup::wake`] from another thread —
/// which is how a consumer group interrupts a member's long poll when its assignment changes.
/// Cloning gives another handle to the same wake-up.
///
/// [`LogStore::wait_for_any_with`]: crate::LogStore::wait_for_any_with
///
/// ```
/// use std::time::Duration;
/// use duolog::{LogStore, StoreOptions, TopicConfig, Wakeup};
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = duolog::open(dir.path(), StoreOptions::default())?;
/// store.create_topic("t", TopicConfig::default())?;
/// let wakeup = Wakeup::new();
/// let other = wakeup.clone();
/// std::thread::spawn(move || other.wake());
/// // Returns when woken (no data: `false`), long before the hour is up.
/// let data = store.wait_for_any_with(&[("t", 0, 0)], Duration::from_secs(3600), &wakeup)?;
/// assert!(!data);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Wakeup {
    state: Arc<WakeupState>,
}

impl std::fmt::Debug for Wakeup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakeup")
            .field("pending", &*self.state.pending.lock())
            .finish()
    }
}

impl Default for Wakeup {
    fn default() -> Self {
        Wakeup::new()
    }
}

impl Wakeup {
    /// A wake-up with nothing pending.
    pub fn new() -> Self {
        Wakeup {
            state: Arc::new(WakeupState {
                pending: Mutex::new(0),
                cond: Condvar::new(),
            }),
        }
    }

    /// Ends the wait that sleeps on this wake-up now, or the next one if none does (the
    /// wake-up stays pending until a wait consumes it).
    pub fn wake(&self) {
        self.set(USER);
    }

    fn set(&self, bit: u8) {
        let mut p = self.state.pending.lock();
        *p |= bit;
        self.state.cond.notify_all();
    }

    fn same(&self, other: &Wakeup) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

/// Unregisters a wake-up from the signals it was registered on, however the wait ends.
struct Registration<'a> {
    signals: &'a [&'a DataSignal],
    wakeup: &'a Wakeup,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        for s in self.signals {
            let mut list = s.lock.lock();
            if let Some(i) = list.iter().position(|w| w.same(self.wakeup)) {
                list.swap_remove(i);
                s.waiters.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Waits until `ready()` holds, `deadline` passes (`None`: no deadline) or `wakeup` is woken by
/// [`Wakeup::wake`]; data arriving on any of `signals` wakes it to check `ready()` again.
/// Returns the last `ready()`. A user wake-up is consumed; one that was pending before the call
/// ends it at once.
pub(crate) fn wait_any(
    signals: &[&DataSignal],
    wakeup: &Wakeup,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> bool,
) -> bool {
    for s in signals {
        let mut list = s.lock.lock();
        list.push(wakeup.clone());
        s.waiters.fetch_add(1, Ordering::SeqCst);
    }
    let _registration = Registration { signals, wakeup };
    // Pairs with the fence in `notify`, as in `wait_until`: either the appender sees this
    // registration and sets `DATA` (under the wake-up's lock, so it cannot slip between the
    // check below and the sleep), or `ready()` sees its data.
    std::sync::atomic::fence(Ordering::SeqCst);
    let state = &wakeup.state;
    loop {
        if ready() {
            return true;
        }
        let mut p = state.pending.lock();
        loop {
            if *p & USER != 0 {
                *p = 0;
                drop(p);
                return ready();
            }
            if *p & DATA != 0 {
                *p &= !DATA;
                break;
            }
            match deadline {
                Some(d) => {
                    if state.cond.wait_until(&mut p, d).timed_out() {
                        drop(p);
                        return ready();
                    }
                }
                None => state.cond.wait(&mut p),
            }
        }
    }
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
            let list = self.lock.lock();
            self.cond.notify_all();
            for w in list.iter() {
                w.set(DATA);
            }
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

    #[test]
    fn a_wait_over_many_signals_wakes_on_any_and_unregisters() {
        let signals: Vec<Arc<DataSignal>> =
            (0..3).map(|_| Arc::new(DataSignal::default())).collect();
        let flag = Arc::new(AtomicBool::new(false));
        let wakeup = Wakeup::new();
        let t = {
            let (signals, flag, wakeup) = (signals.clone(), Arc::clone(&flag), wakeup.clone());
            std::thread::spawn(move || {
                let refs: Vec<&DataSignal> = signals.iter().map(|s| &**s).collect();
                wait_any(&refs, &wakeup, None, || flag.load(Ordering::SeqCst))
            })
        };
        while signals[2].waiting() == 0 {
            std::thread::yield_now();
        }
        // Data without readiness: the waiter checks and sleeps again.
        signals[0].notify();
        flag.store(true, Ordering::SeqCst);
        signals[2].notify();
        assert!(t.join().unwrap());
        assert!(signals.iter().all(|s| s.waiting() == 0));
        // A user wake-up pending before the wait ends it at once, and is consumed.
        wakeup.wake();
        let refs: Vec<&DataSignal> = signals.iter().map(|s| &**s).collect();
        assert!(!wait_any(&refs, &wakeup, None, || false));
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!wait_any(&refs, &wakeup, Some(soon), || false));
        assert!(Instant::now() >= soon);
    }
}
