//! Group commit and the background flusher.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
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
    poisoned: Option<String>,
    callbacks: Vec<(u64, Callback)>,
    waiters: usize,
    closed: bool,
    stop_flusher: bool,
}

/// Shared fsyncs: whoever needs a position durable either finds it so, waits for the flush in
/// progress, or leads the next flush, which covers everything written by then.
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    /// Woken when `durable` advances or the store is poisoned.
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
                poisoned: None,
                callbacks: Vec::new(),
                waiters: 0,
                closed: false,
                stop_flusher: false,
            }),
            durable_changed: Condvar::new(),
            flusher_wake: Condvar::new(),
            pending_messages: AtomicU64::new(0),
            pending_bytes: AtomicU64::new(0),
            policy,
        }
    }

    /// Durable position.
    pub(crate) fn durable(&self) -> u64 {
        self.state.lock().durable
    }

    /// Errors with `Poisoned` if an fsync failed earlier.
    pub(crate) fn check_writable(&self) -> Result<()> {
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
        let mut st = self.state.lock();
        loop {
            if let Some(reason) = &st.poisoned {
                return Err(Error::Poisoned {
                    reason: reason.clone(),
                });
            }
            if st.durable >= pos {
                return Ok(());
            }
            if st.flushing {
                self.durable_changed.wait(&mut st);
                continue;
            }
            st.flushing = true;
            drop(st);
            let upto = target.written();
            self.pending_messages.store(0, Ordering::Relaxed);
            self.pending_bytes.store(0, Ordering::Relaxed);
            let outcome = target.flush_to(upto);
            st = self.state.lock();
            st.flushing = false;
            match outcome {
                Ok(()) => st.durable = st.durable.max(upto),
                Err(e) => st.poisoned = Some(e.to_string()),
            }
            let ready = take_ready(&mut st);
            self.durable_changed.notify_all();
            if !ready.is_empty() {
                let poisoned = st.poisoned.clone();
                drop(st);
                fire(ready, poisoned);
                st = self.state.lock();
            }
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
        let ready = take_ready(&mut st);
        let poisoned = st.poisoned.clone();
        self.durable_changed.notify_all();
        drop(st);
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
