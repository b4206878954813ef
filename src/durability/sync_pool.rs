//! A persistent pool of sync threads for group flushes that sync several files at once.
//!
//! Why a pool: a flush of 16 dirty partitions on a fast disk lasts a few hundred µs, and
//! starting and joining up to 15 threads for each one cost more CPU than the syncs' own
//! submission on 2 cores (profiled, issue 16: `clone3` and thread start/exit were 26% of the
//! 64-thread group-commit cell's CPU samples). The pool's threads start lazily, the first time
//! a flush wants them, stay parked on a condition variable between flushes, and are stopped and
//! joined by [`SyncPool::stop`] (the store's close) or when the pool is dropped.
//!
//! One round at a time: the flushing thread publishes a [`Round`] (the jobs and a shared
//! cursor), wakes as many helpers as there are jobs beyond its own, takes jobs itself until
//! none is left, then waits until every helper that joined the round has left it. So when
//! [`SyncPool::run`] returns, every job has run (or the pool was busy and the caller ran them
//! all), and the first error of any of them is what it returns: the group commit then
//! acknowledges nothing of that flush.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// One flush's work: `count` jobs, `job(i)` for each `i` below it, taken in turn by whoever
/// is free (the flushing thread or a helper).
pub(crate) type Job = Box<dyn Fn(usize) -> Result<()> + Send + Sync>;

struct Round {
    job: Job,
    count: usize,
    next: AtomicUsize,
    first_error: Mutex<Option<Error>>,
}

impl Round {
    /// Runs jobs until none is left; a panicking job counts as a failed one.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.count {
                return;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| (self.job)(i))).unwrap_or_else(|_| {
                Err(Error::Poisoned {
                    reason: "a sync job panicked".into(),
                })
            });
            if let Err(e) = outcome {
                self.first_error.lock().get_or_insert(e);
            }
        }
    }

    fn has_work(&self) -> bool {
        self.next.load(Ordering::Relaxed) < self.count
    }
}

struct State {
    /// The round in progress, if any.
    round: Option<Arc<Round>>,
    /// Incremented per round, so a helper joins each round at most once.
    epoch: u64,
    /// Helpers inside the current round.
    busy: usize,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Helpers wait here for a round (or the stop).
    work: Condvar,
    /// The flushing thread waits here for the round's helpers to leave it.
    done: Condvar,
}

/// Up to `max_helpers` persistent threads that run group-flush jobs alongside the thread
/// that asks for them.
pub(crate) struct SyncPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Held through a round (the group commit runs one flush at a time; a caller that found it
    /// held would run its jobs itself).
    running: Mutex<()>,
    max_helpers: usize,
    name: &'static str,
}

impl std::fmt::Debug for SyncPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncPool")
            .field("max_helpers", &self.max_helpers)
            .field("threads", &self.threads.lock().len())
            .finish_non_exhaustive()
    }
}

impl SyncPool {
    /// A pool of at most `max_helpers` threads named `name`; none started yet.
    pub(crate) fn new(max_helpers: usize, name: &'static str) -> Self {
        SyncPool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    round: None,
                    epoch: 0,
                    busy: 0,
                    stop: false,
                }),
                work: Condvar::new(),
                done: Condvar::new(),
            }),
            threads: Mutex::new(Vec::new()),
            running: Mutex::new(()),
            max_helpers,
            name,
        }
    }

    /// Runs `job(i)` for every `i < count`, on this thread and up to `count - 1` helpers, and
    /// returns the first error once every job has run.
    pub(crate) fn run(&self, count: usize, job: Job) -> Result<()> {
        let round = Arc::new(Round {
            job,
            count,
            next: AtomicUsize::new(0),
            first_error: Mutex::new(None),
        });
        let wanted = count.saturating_sub(1).min(self.max_helpers);
        // One round at a time: the group commit runs one flush at a time, so this never waits
        // in practice; a caller that found a round in progress would run its jobs alone.
        let running = if wanted > 0 {
            self.running.try_lock()
        } else {
            None
        };
        let helpers = match &running {
            Some(_) => self.start_helpers(wanted),
            None => 0,
        };
        if helpers > 0 {
            let mut st = self.shared.state.lock();
            st.round = Some(Arc::clone(&round));
            st.epoch += 1;
            drop(st);
            // Each woken helper joins the round once; one woken after the jobs ran out leaves
            // at once.
            for _ in 0..wanted.min(helpers) {
                self.shared.work.notify_one();
            }
        }
        round.work();
        if helpers > 0 {
            let mut st = self.shared.state.lock();
            while st.busy > 0 {
                self.shared.done.wait(&mut st);
            }
            // No helper joins after this: they join only under the lock, while it is set.
            st.round = None;
        }
        drop(running);
        let first_error = round.first_error.lock().take();
        first_error.map_or(Ok(()), Err)
    }

    /// Starts helpers until `wanted` exist (or the pool is stopped, or a spawn fails);
    /// returns how many there are.
    fn start_helpers(&self, wanted: usize) -> usize {
        let mut threads = self.threads.lock();
        while threads.len() < wanted {
            if self.shared.state.lock().stop {
                break;
            }
            let shared = Arc::clone(&self.shared);
            match std::thread::Builder::new()
                .name(self.name.to_owned())
                .spawn(move || helper(&shared))
            {
                Ok(h) => threads.push(h),
                // No thread to spare: the ones there are (or the caller alone) do the work.
                Err(_) => break,
            }
        }
        threads.len()
    }

    /// How many helper threads are running.
    #[cfg(test)]
    pub(crate) fn threads(&self) -> usize {
        self.threads.lock().len()
    }

    /// Stops the helpers and joins them; later rounds run on the caller alone.
    pub(crate) fn stop(&self) {
        self.shared.state.lock().stop = true;
        self.shared.work.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            // A helper's panics are caught per job; nothing else in it panics.
            let _ = t.join();
        }
    }
}

impl Drop for SyncPool {
    fn drop(&mut self) {
        self.stop();
    }
}

fn helper(shared: &Shared) {
    let mut seen = 0u64;
    let mut st = shared.state.lock();
    loop {
        if st.stop {
            return;
        }
        let joined = match &st.round {
            Some(r) if st.epoch != seen && r.has_work() => Some(Arc::clone(r)),
            _ => None,
        };
        let Some(round) = joined else {
            shared.work.wait(&mut st);
            continue;
        };
        seen = st.epoch;
        st.busy += 1;
        drop(st);
        round.work();
        drop(round);
        st = shared.state.lock();
        st.busy -= 1;
        if st.busy == 0 {
            shared.done.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn slow_jobs(ran: Arc<Mutex<Vec<usize>>>) -> Job {
        Box::new(move |i| {
            std::thread::sleep(Duration::from_millis(2));
            ran.lock().push(i);
            Ok(())
        })
    }

    /// The jobs that ran, in order of index: each once means exactly `0..count`.
    fn ran_sorted(ran: &Mutex<Vec<usize>>) -> Vec<usize> {
        let mut v = ran.lock().clone();
        v.sort_unstable();
        v
    }

    #[test]
    fn every_job_of_a_round_runs_once_and_the_helpers_stay_bounded() {
        let pool = SyncPool::new(3, "duolog-sync-test");
        for _ in 0..20 {
            let ran = Arc::new(Mutex::new(Vec::new()));
            pool.run(10, slow_jobs(Arc::clone(&ran))).unwrap();
            assert_eq!(ran_sorted(&ran), (0..10).collect::<Vec<_>>());
        }
        assert_eq!(pool.threads(), 3);
        pool.stop();
        assert_eq!(pool.threads(), 0);
        // After the stop the caller runs everything alone.
        let ran = Arc::new(Mutex::new(Vec::new()));
        pool.run(5, slow_jobs(Arc::clone(&ran))).unwrap();
        assert_eq!(ran_sorted(&ran), (0..5).collect::<Vec<_>>());
        assert_eq!(pool.threads(), 0);
    }

    #[test]
    fn a_failed_or_panicking_job_on_a_helper_is_the_rounds_error() {
        let pool = SyncPool::new(4, "duolog-sync-test");
        let on_helper = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&on_helper);
        let r = pool.run(
            5,
            Box::new(move |_| {
                if std::thread::current().name() == Some("duolog-sync-test") {
                    flag.store(true, Ordering::SeqCst);
                    return Err(Error::Closed);
                }
                // The caller's own jobs wait for a helper to have failed one, so the round
                // surely has a helper's error to report.
                let until = std::time::Instant::now() + Duration::from_secs(10);
                while !flag.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            }),
        );
        assert!(on_helper.load(Ordering::SeqCst), "no helper ran a job");
        assert!(matches!(r, Err(Error::Closed)), "{r:?}");
        let r = pool.run(
            4,
            Box::new(|i| {
                std::thread::sleep(Duration::from_millis(2));
                assert!(i != 3, "job 3 panics");
                Ok(())
            }),
        );
        assert!(matches!(r, Err(Error::Poisoned { .. })), "{r:?}");
    }

    #[test]
    fn a_round_of_one_job_starts_no_helper() {
        let pool = SyncPool::new(4, "duolog-sync-test");
        pool.run(1, Box::new(|_| Ok(()))).unwrap();
        assert_eq!(pool.threads(), 0);
    }
}
