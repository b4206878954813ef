//! Group commit and the background flusher.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::options::FlushPolicy;

/// What the engine gives the durability machinery.
pub(crate) trait FlushTarget: Send + Sync {
    /// Position up to which data has been written and published.
    fn written(&self) -> u64;
    /// Makes everything before `upto` durable.
    fn flush_to(&self, upto: u64) -> Result<()>;
}

/// Periodic work the flusher thread runs for the engine after each wake-up (checkpoints,
/// retention). Implementations keep their own timers.
pub(crate) trait BackgroundWork: Send + Sync {
    /// Called by the flusher thread; errors are the engine's to record.
    fn tick(&self);
}

/// The two periodic jobs of an engine's background work and when each last ran.
pub(crate) struct PeriodicJobs {
    last: parking_lot::Mutex<(Instant, Instant)>,
    checkpoint_every: Duration,
    retention_every: Duration,
}

impl PeriodicJobs {
    pub(crate) fn new(checkpoint_every: Duration, retention_every: Duration) -> Self {
        let now = Instant::now();
        PeriodicJobs {
            last: parking_lot::Mutex::new((now, now)),
            checkpoint_every,
            retention_every,
        }
    }

    /// Which jobs are due now, as (checkpoint, retention); marks them as run.
    pub(crate) fn due(&self) -> (bool, bool) {
        let now = Instant::now();
        let mut last = self.last.lock();
        let cp = now.duration_since(last.0) >= self.checkpoint_every;
        let ret = now.duration_since(last.1) >= self.retention_every;
        if cp {
            last.0 = now;
        }
        if ret {
            last.1 = now;
        }
        (cp, ret)
    }

    /// The shortest period, for the flusher's wake-ups.
    pub(crate) fn tick_every(&self) -> Duration {
        self.checkpoint_every.min(self.retention_every)
    }
}

type Callback = Box<dyn FnOnce(Result<()>) + Send>;

struct State {
    durable: u64,
    flushing: bool,
    /// The number of the flush in progress (or of the last one, when none is).
    flush_seq: u64,
    /// What the flush in progress covers: every position at or below it.
    flush_upto: u64,
    /// `sync_to` callers asleep, by flush number parity: `sleepers[n % 2]` wait for flush `n`
    /// (the one in progress, or the one after it). At most one entry per waiting thread, plus
    /// one per spurious wake-up until the next flush drains its list.
    sleepers: [Vec<Thread>; 2],
    poisoned: Option<String>,
    callbacks: Vec<(u64, Callback)>,
    waiters: usize,
    closed: bool,
    stop_flusher: bool,
}

/// Shared fsyncs: whoever needs a position durable either finds it so, waits for the flush in
/// progress, or leads the next flush, which covers everything written by then.
///
/// `sync_to` callers (appenders acknowledging a durable append) do not sleep on a condition
/// variable: they park, listed under the flush that will cover them (`State::sleepers`, by flush
/// number parity). When flush `n` ends its leader unparks every sleeper of `n` (they are all
/// durable now) and, if anyone waits for flush `n + 1`, one of them to lead it; the others of
/// `n + 1` sleep on until that flush covers them. So a waiter wakes once, when its position is
/// durable (or to lead), and no woken waiter re-takes a lock to find out: it reads
/// `durable_at`. (Parking is std's, safe code: a thread unparked before it parks does not
/// sleep.) Measured before (issue 16): the condition
/// variable's waiters woke one after another through its mutex, 2.4 context switches per
/// durable append at 64 threads, the scheduler on top of the profile.
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    /// `state.durable`, readable without the lock (written under it).
    durable_at: AtomicU64,
    /// Whether `state.poisoned` is set, readable without the lock (written under it).
    poisoned_at: AtomicBool,
    /// Woken when `durable` advances or the store is poisoned (`wait_durable`'s waiters).
    durable_changed: Condvar,
    /// Wakes the background flusher early.
    flusher_wake: Condvar,
    pending_messages: AtomicU64,
    pending_bytes: AtomicU64,
    policy: FlushPolicy,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    pub(crate) fn new(durable: u64, policy: FlushPolicy) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                durable,
                flushing: false,
                flush_seq: 0,
                flush_upto: durable,
                sleepers: [Vec::new(), Vec::new()],
                poisoned: None,
                callbacks: Vec::new(),
                waiters: 0,
                closed: false,
                stop_flusher: false,
            }),
            durable_at: AtomicU64::new(durable),
            poisoned_at: AtomicBool::new(false),
            durable_changed: Condvar::new(),
            flusher_wake: Condvar::new(),
            pending_messages: AtomicU64::new(0),
            pending_bytes: AtomicU64::new(0),
            policy,
        }
    }

    /// Durable position.
    pub(crate) fn durable(&self) -> u64 {
        self.durable_at.load(Ordering::Acquire)
    }

    /// Errors with `Poisoned` if an fsync failed earlier.
    pub(crate) fn check_writable(&self) -> Result<()> {
        // Every append asks: not a lock 64 appenders take in turn.
        if !self.poisoned_at.load(Ordering::Acquire) {
            return Ok(());
        }
        match &self.state.lock().poisoned {
            Some(reason) => Err(Error::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records an append for the `Every` thresholds; wakes the flusher when one is crossed.
    pub(crate) fn note_appended(&self, messages: u64, bytes: u64) {
        if let FlushPolicy::Every {
            messages: max_m,
            bytes: max_b,
            ..
        } = self.policy
        {
            let m = self.pending_messages.fetch_add(messages, Ordering::Relaxed) + messages;
            let b = self.pending_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
            if m >= max_m || b >= max_b {
                self.flusher_wake.notify_one();
            }
        }
    }

    /// Blocks until `pos` is durable, leading a flush if none is running.
    pub(crate) fn sync_to(&self, target: &dyn FlushTarget, pos: u64) -> Result<()> {
        loop {
            // A woken waiter usually ends here, without the lock.
            if self.poisoned_at.load(Ordering::Acquire) {
                return Err(self.poisoned_error());
            }
            if self.durable_at.load(Ordering::Acquire) >= pos {
                return Ok(());
            }
            let mut st = self.state.lock();
            if let Some(reason) = &st.poisoned {
                return Err(Error::Poisoned {
                    reason: reason.clone(),
                });
            }
            if st.durable >= pos {
                return Ok(());
            }
            if !st.flushing {
                self.lead(st, target);
                continue;
            }
            // A flush is running: sleep under it if it covers `pos`, else under the next one.
            let seq = if pos <= st.flush_upto {
                st.flush_seq
            } else {
                st.flush_seq + 1
            };
            st.sleepers[(seq % 2) as usize].push(std::thread::current());
            drop(st);
            std::thread::park();
        }
    }

    /// Runs one flush as its leader (called with the lock, `flushing` clear): covers
    /// everything written by now, then wakes the flush's sleepers, all at once, and one
    /// sleeper of the next flush to lead it.
    fn lead(&self, mut st: parking_lot::MutexGuard<'_, State>, target: &dyn FlushTarget) {
        st.flushing = true;
        st.flush_seq += 1;
        let seq = st.flush_seq;
        // `written` is an atomic load in both engines: cheap enough under the lock, and read
        // there so a waiter comparing its position with `flush_upto` sees what this flush covers.
        let upto = target.written();
        st.flush_upto = upto;
        drop(st);
        self.pending_messages.store(0, Ordering::Relaxed);
        self.pending_bytes.store(0, Ordering::Relaxed);
        // A flush that panics (a bug below, or a file system that panics) must not unwind past
        // here with `flushing` set: every later durable append would park for good. What it
        // made durable is unknown, so it poisons the store like a failed sync.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.flush_to(upto)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(Error::Poisoned {
                        reason: format!("a flush panicked: {what}"),
                    })
                });
        let mut st = self.state.lock();
        st.flushing = false;
        match outcome {
            Ok(()) => {
                st.durable = st.durable.max(upto);
                self.durable_at.store(st.durable, Ordering::Release);
            }
            Err(e) => {
                st.poisoned = Some(e.to_string());
                self.poisoned_at.store(true, Ordering::Release);
            }
        }
        let failed = st.poisoned.is_some();
        let mut wake = std::mem::take(&mut st.sleepers[(seq % 2) as usize]);
        let next = &mut st.sleepers[((seq + 1) % 2) as usize];
        // After a failure nobody leads again: every sleeper wakes to see the poison.
        if failed {
            wake.append(next);
        } else if let Some(leader) = next.pop() {
            wake.push(leader);
        }
        if st.waiters > 0 {
            self.durable_changed.notify_all();
        }
        let ready = take_ready(&mut st);
        let poisoned = st.poisoned.clone();
        drop(st);
        // Off the lock: a sleeper not parked yet keeps the token and does not sleep.
        for t in wake {
            t.unpark();
        }
        if !ready.is_empty() {
            fire(ready, poisoned);
        }
    }

    fn poisoned_error(&self) -> Error {
        Error::Poisoned {
            reason: self.state.lock().poisoned.clone().unwrap_or_default(),
        }
    }

    /// What a sync send waits for: under `FlushPolicy::Sync` the flush covering `pos`; under the
    /// other policies nothing (the page cache is their acknowledgement point).
    pub(crate) fn acknowledge(&self, target: &dyn FlushTarget, pos: u64) -> Result<()> {
        if self.policy == FlushPolicy::Sync {
            self.sync_to(target, pos)
        } else {
            Ok(())
        }
    }

    /// Flushes everything written so far.
    pub(crate) fn sync_all(&self, target: &dyn FlushTarget) -> Result<()> {
        self.sync_to(target, target.written())
    }

    /// Blocks until `pos` is durable (made so by someone else) or `timeout` passes.
    pub(crate) fn wait_durable(&self, pos: u64, timeout: Option<Duration>) -> Result<bool> {
        // No deadline for a timeout past what an `Instant` holds: wait as long as it takes.
        let deadline = timeout.and_then(crate::clock::deadline);
        let mut st = self.state.lock();
        st.waiters += 1;
        self.flusher_wake.notify_one();
        let outcome = loop {
            if let Some(reason) = &st.poisoned {
                break Err(Error::Poisoned {
                    reason: reason.clone(),
                });
            }
            if st.durable >= pos {
                break Ok(true);
            }
            if st.closed {
                break Err(Error::Closed);
            }
            match deadline {
                Some(d) => {
                    if self.durable_changed.wait_until(&mut st, d).timed_out() && st.durable < pos {
                        break Ok(false);
                    }
                }
                None => self.durable_changed.wait(&mut st),
            }
        };
        st.waiters -= 1;
        outcome
    }

    /// Marks the store poisoned: a flush failed and its pages may be gone.
    pub(crate) fn poison(&self, reason: String) {
        let mut st = self.state.lock();
        if st.poisoned.is_none() {
            st.poisoned = Some(reason);
        }
        self.poisoned_at.store(true, Ordering::Release);
        let ready = take_ready(&mut st);
        let poisoned = st.poisoned.clone();
        self.durable_changed.notify_all();
        let [mut wake, mut rest] = std::mem::take(&mut st.sleepers);
        wake.append(&mut rest);
        drop(st);
        for t in wake {
            t.unpark();
        }
        fire(ready, poisoned);
    }

    /// Runs `f` once `pos` is durable (at once if it already is).
    pub(crate) fn on_durable(&self, pos: u64, f: Callback) {
        let mut st = self.state.lock();
        if let Some(reason) = &st.poisoned {
            let err = Error::Poisoned {
                reason: reason.clone(),
            };
            drop(st);
            f(Err(err));
            return;
        }
        if st.durable >= pos {
            drop(st);
            f(Ok(()));
            return;
        }
        st.callbacks.push((pos, f));
        self.flusher_wake.notify_one();
    }

    /// Stops the flusher; pending callbacks get `Closed` unless a final flush covers them.
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        let pending = std::mem::take(&mut st.callbacks);
        self.flusher_wake.notify_all();
        self.durable_changed.notify_all();
        drop(st);
        for (_, cb) in pending {
            cb(Err(Error::Closed));
        }
    }

    /// Whether the background flusher has a reason to flush now under the policy.
    fn flush_due(&self, st: &State) -> bool {
        match self.policy {
            FlushPolicy::Sync => !st.callbacks.is_empty() || st.waiters > 0,
            FlushPolicy::Every {
                messages, bytes, ..
            } => {
                self.pending_messages.load(Ordering::Relaxed) >= messages
                    || self.pending_bytes.load(Ordering::Relaxed) >= bytes
            }
            FlushPolicy::Async { .. } => false,
        }
    }
}

fn take_ready(st: &mut State) -> Vec<(u64, Callback)> {
    if st.callbacks.is_empty() {
        return Vec::new();
    }
    if st.poisoned.is_some() {
        return std::mem::take(&mut st.callbacks);
    }
    let durable = st.durable;
    let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut st.callbacks)
        .into_iter()
        .partition(|(p, _)| *p <= durable);
    st.callbacks = keep;
    ready
}

fn fire(ready: Vec<(u64, Callback)>, poisoned: Option<String>) {
    for (_, cb) in ready {
        match &poisoned {
            Some(reason) => cb(Err(Error::Poisoned {
                reason: reason.clone(),
            })),
            None => cb(Ok(())),
        }
    }
}

/// The background thread that flushes under the policy and runs the engine's periodic work.
pub(crate) struct Flusher {
    handle: Option<JoinHandle<()>>,
    gc: Arc<GroupCommit>,
}

impl Flusher {
    /// Starts the thread. It holds only weak references, so it never keeps the engine alive.
    pub(crate) fn spawn(
        name: &str,
        gc: Arc<GroupCommit>,
        target: Weak<dyn FlushTarget>,
        work: Weak<dyn BackgroundWork>,
        tick_every: Duration,
    ) -> std::io::Result<Self> {
        let gc2 = Arc::clone(&gc);
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(gc2, target, work, tick_every))?;
        Ok(Flusher {
            handle: Some(handle),
            gc,
        })
    }

    /// Starts the flusher of an engine that is both the flush target and the periodic work.
    pub(crate) fn start<T: FlushTarget + BackgroundWork + 'static>(
        engine: &Arc<T>,
        gc: Arc<GroupCommit>,
        tick_every: Duration,
    ) -> std::io::Result<Self> {
        let target: Weak<dyn FlushTarget> = Arc::downgrade(engine) as Weak<dyn FlushTarget>;
        let work: Weak<dyn BackgroundWork> = Arc::downgrade(engine) as Weak<dyn BackgroundWork>;
        Flusher::spawn("duolog-flush", gc, target, work, tick_every)
    }

    /// Stops and joins the thread.
    pub(crate) fn stop(&mut self) {
        {
            let mut st = self.gc.state.lock();
            st.stop_flusher = true;
            self.gc.flusher_wake.notify_all();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    gc: Arc<GroupCommit>,
    target: Weak<dyn FlushTarget>,
    work: Weak<dyn BackgroundWork>,
    tick_every: Duration,
) {
    // `None`: never (an interval past what an `Instant` holds, such as `Duration::MAX`, is
    // "no timed flush", not a panic that would kill this thread and hang every completion).
    let interval = gc.policy.interval();
    let mut next_flush = crate::clock::deadline(interval);
    let mut next_tick = crate::clock::deadline(tick_every);
    let passed = |at: Option<Instant>, now: Instant| at.is_some_and(|t| now >= t);
    loop {
        {
            let mut st = gc.state.lock();
            loop {
                if st.closed || st.stop_flusher {
                    return;
                }
                let now = Instant::now();
                if gc.flush_due(&st) || passed(next_flush, now) || passed(next_tick, now) {
                    break;
                }
                match (next_flush, next_tick) {
                    (Some(f), Some(t)) => {
                        gc.flusher_wake.wait_until(&mut st, f.min(t));
                    }
                    (Some(until), None) | (None, Some(until)) => {
                        gc.flusher_wake.wait_until(&mut st, until);
                    }
                    (None, None) => gc.flusher_wake.wait(&mut st),
                }
            }
        }
        let now = Instant::now();
        let Some(t) = target.upgrade() else { return };
        if t.written() > gc.durable() {
            // An error poisons the store inside sync_all; appenders see it.
            let _ = gc.sync_all(t.as_ref());
        }
        drop(t);
        next_flush = now.checked_add(interval);
        if passed(next_tick, now) {
            let Some(w) = work.upgrade() else { return };
            w.tick();
            next_tick = crate::clock::deadline(tick_every);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A flush target whose flush number `k` returns only once the test released `k` flushes.
    #[derive(Default)]
    struct GatedTarget {
        written: AtomicU64,
        started: AtomicUsize,
        released: Mutex<usize>,
        gate: Condvar,
    }

    impl GatedTarget {
        fn release(&self) {
            *self.released.lock() += 1;
            self.gate.notify_all();
        }

        fn wait_started(&self, n: usize) {
            while self.started.load(Ordering::Acquire) < n {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    impl FlushTarget for GatedTarget {
        fn written(&self) -> u64 {
            self.written.load(Ordering::Acquire)
        }

        fn flush_to(&self, _upto: u64) -> Result<()> {
            let k = self.started.fetch_add(1, Ordering::AcqRel) + 1;
            let mut released = self.released.lock();
            while *released < k {
                self.gate.wait(&mut released);
            }
            Ok(())
        }
    }

    /// This thread's voluntary context switches so far (each sleep is one).
    #[cfg(target_os = "linux")]
    fn voluntary_switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    /// Waiters for the flush after the one in progress sleep through the end of the one in
    /// progress (one of them is woken to lead the next) and wake once, when durable: not
    /// woken by every flush and put back to sleep.
    #[cfg(target_os = "linux")]
    #[test]
    fn waiters_for_the_next_flush_sleep_once() {
        let gc = Arc::new(GroupCommit::new(0, FlushPolicy::Sync));
        let target = Arc::new(GatedTarget::default());
        target.written.store(1, Ordering::Release);
        let leader = {
            let (gc, target) = (Arc::clone(&gc), Arc::clone(&target));
            std::thread::spawn(move || gc.sync_to(target.as_ref(), 1))
        };
        target.wait_started(1);
        // Written after flush 1 took its end: these need flush 2.
        target.written.store(2, Ordering::Release);
        let followers: Vec<_> = (0..4)
            .map(|_| {
                let (gc, target) = (Arc::clone(&gc), Arc::clone(&target));
                let t = std::thread::spawn(move || {
                    let before = voluntary_switches();
                    gc.sync_to(target.as_ref(), 2).unwrap();
                    voluntary_switches() - before
                });
                // One at a time, so no follower sleeps on the lock itself.
                std::thread::sleep(Duration::from_millis(30));
                t
            })
            .collect();
        target.release();
        leader.join().unwrap().unwrap();
        target.wait_started(2);
        std::thread::sleep(Duration::from_millis(100));
        target.release();
        let mut sleeps: Vec<u64> = followers.into_iter().map(|t| t.join().unwrap()).collect();
        sleeps.sort_unstable();
        // The follower that led flush 2 also slept in it; the other three slept once each.
        assert!(
            sleeps[..3].iter().all(|&s| s <= 1),
            "sleeps per waiter: {sleeps:?}"
        );
        assert_eq!(gc.durable(), 2);
    }

    /// Every waiter of a flush returns when it ends, and a failed flush returns `Poisoned` to
    /// all of them, acknowledging nothing.
    #[test]
    fn a_failed_flush_wakes_every_waiter_with_poisoned() {
        struct Failing;
        impl FlushTarget for Failing {
            fn written(&self) -> u64 {
                5
            }
            fn flush_to(&self, _upto: u64) -> Result<()> {
                std::thread::sleep(Duration::from_millis(50));
                Err(Error::Io {
                    path: "x".into(),
                    source: std::io::Error::other("sync failed"),
                })
            }
        }
        let gc = Arc::new(GroupCommit::new(0, FlushPolicy::Sync));
        let threads: Vec<_> = (1..=5)
            .map(|pos| {
                let gc = Arc::clone(&gc);
                std::thread::spawn(move || gc.sync_to(&Failing, pos))
            })
            .collect();
        for t in threads {
            assert!(matches!(t.join().unwrap(), Err(Error::Poisoned { .. })));
        }
        assert_eq!(gc.durable(), 0);
    }

    /// Many threads each syncing their own positions all return, each durable on return.
    #[test]
    fn concurrent_syncs_all_return_durable() {
        let gc = Arc::new(GroupCommit::new(0, FlushPolicy::Sync));
        let target = Arc::new(AtomicTarget::default());
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (gc, target) = (Arc::clone(&gc), Arc::clone(&target));
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let pos = target.written.fetch_add(1, Ordering::AcqRel) + 1;
                        gc.sync_to(target.as_ref(), pos).unwrap();
                        assert!(target.flushed.load(Ordering::Acquire) >= pos);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gc.durable(), 16 * 200);
    }

    #[derive(Default)]
    struct AtomicTarget {
        written: AtomicU64,
        flushed: AtomicU64,
    }

    impl FlushTarget for AtomicTarget {
        fn written(&self) -> u64 {
            self.written.load(Ordering::Acquire)
        }
        fn flush_to(&self, upto: u64) -> Result<()> {
            std::thread::yield_now();
            self.flushed.fetch_max(upto, Ordering::AcqRel);
            Ok(())
        }
    }
}
