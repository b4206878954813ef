//! A probe on the shared forwarding wrapper ([`Wrapped`]) for the transaction layer's tests: counts what a transaction costs
//! (syncs, durable waits, markers and how many run at once, transaction log records) and can
//! make a transactional append land and still report an error (a lost acknowledgement).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duolog::txn::TXN_LOG_TOPIC;
use duolog::{Error, LogStore};

use crate::common::wrap::{Hooks, Wrapped};
use parking_lot::{Condvar, Mutex};

/// What the probe saw since the last [`Probe::reset`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `LogStore::sync` calls.
    pub syncs: usize,
    /// `append_async` calls to the transaction log.
    pub txn_log_writes: usize,
    /// `write_marker` calls.
    pub markers: usize,
    /// The most `write_marker` calls in flight at once.
    pub markers_at_once: usize,
}

#[derive(Debug, Default)]
struct State {
    counts: Counts,
    markers_in_flight: usize,
    /// `write_marker` waits (up to `rendezvous_wait`) until this many are in flight, so calls
    /// made at once are seen at once however the threads are scheduled.
    rendezvous: usize,
    /// The next N transactional appends land and then fail with an I/O error.
    land_then_fail: usize,
    /// (review) After this many more transaction log writes, the next one fails unwritten.
    fail_txn_log_write_after: Option<usize>,
}

/// The probe's counters and injected faults, as hooks of the shared forwarding wrapper.
#[derive(Debug, Default)]
pub struct ProbeHooks {
    state: Mutex<State>,
    changed: Condvar,
}

/// A store wrapped with the probe.
pub type Probe = Wrapped<ProbeHooks>;

/// `inner` behind a fresh probe.
pub fn probe(inner: Arc<dyn LogStore>) -> Arc<Probe> {
    Wrapped::new(inner, ProbeHooks::default())
}

impl Wrapped<ProbeHooks> {
    pub fn counts(&self) -> Counts {
        self.hooks.state.lock().counts.clone()
    }

    pub fn reset(&self) {
        self.hooks.state.lock().counts = Counts::default();
    }

    /// Markers wait (at most a second each) for `n` of them to be in flight together.
    pub fn rendezvous_markers(&self, n: usize) {
        self.hooks.state.lock().rendezvous = n;
    }

    /// (review) After `skip` more transaction log writes, the next one fails (nothing written).
    pub fn fail_txn_log_write_after(&self, skip: usize) {
        self.hooks.state.lock().fail_txn_log_write_after = Some(skip);
    }

    /// The next `n` transactional appends are written, then reported as failed.
    pub fn land_then_fail(&self, n: usize) {
        self.hooks.state.lock().land_then_fail = n;
    }
}

impl Hooks for ProbeHooks {
    fn before_sync(&self) {
        self.state.lock().counts.syncs += 1;
    }

    fn before_append_async(&self, dir: &Path, topic: &str) -> duolog::Result<()> {
        if topic == TXN_LOG_TOPIC {
            let mut st = self.state.lock();
            st.counts.txn_log_writes += 1;
            match st.fail_txn_log_write_after {
                Some(0) => {
                    st.fail_txn_log_write_after = None;
                    return Err(Error::Io {
                        path: dir.to_path_buf(),
                        source: std::io::Error::other("injected: transaction log write failed"),
                    });
                }
                Some(n) => st.fail_txn_log_write_after = Some(n - 1),
                None => {}
            }
        }
        Ok(())
    }

    fn after_append_transactional(&self, dir: &Path) -> duolog::Result<()> {
        let mut st = self.state.lock();
        if st.land_then_fail > 0 {
            st.land_then_fail -= 1;
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other("injected: the batch landed, the reply was lost"),
            });
        }
        Ok(())
    }

    fn before_marker(&self) {
        let mut st = self.state.lock();
        st.counts.markers += 1;
        st.markers_in_flight += 1;
        st.counts.markers_at_once = st.counts.markers_at_once.max(st.markers_in_flight);
        self.changed.notify_all();
        let until = Instant::now() + Duration::from_secs(1);
        while st.markers_in_flight < st.rendezvous && st.counts.markers_at_once < st.rendezvous {
            if self.changed.wait_until(&mut st, until).timed_out() {
                break;
            }
        }
    }

    fn after_marker(&self) {
        self.state.lock().markers_in_flight -= 1;
    }
}
