//! Partition leases of orderly consumption (RocketMQ's `RebalanceLockManager`, done with a
//! fencing token): within a group, one member at a time holds a partition's lease, which
//! expires unless renewed.
//!
//! What it owns: the [`LeaseTable`] of one [`GroupCoordinator`] (kept in the coordinator, so
//! every orderly consumer made from it shares it), the fencing-token counter, and one commit
//! guard per partition. It does no I/O and never holds its lock across a call out.
//!
//! **Tokens.** Every grant of a lease gets a fencing token larger than any token handed out
//! before in this process (one process-wide counter), so per (group, topic, partition) tokens
//! strictly increase and are never reused. They live in memory only: the store's `LOCK` file
//! means one process serves a store, and every lease dies with that process, so no token of a
//! dead process can reach a commit. So that tokens an application stored on the side (to
//! fence its own writes) keep increasing across a restart too, the counter starts at the wall
//! clock's microseconds: after a restart tokens are larger unless the wall clock stepped back
//! or the last process handed out more than one token per microsecond of its life.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::consumer::{GroupCoordinator, TopicPartition};
use crate::error::{Error, Result};

/// The longest `expire_after` accepted: a year. Past it a lease is as good as forever, and a
/// clock reading plus it could overflow.
pub const MAX_LEASE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The time leases are measured on: a monotonic reading since an arbitrary origin. The real
/// one is [`SystemLeaseClock`]; tests drive [`ManualClock`] to expire leases without sleeping.
/// Every orderly consumer of one coordinator must use the same clock.
pub trait LeaseClock: Send + Sync + fmt::Debug {
    /// Now, since the clock's origin; never goes back.
    fn now(&self) -> Duration;
}

/// Monotonic real time ([`Instant`]). The default.
#[derive(Debug)]
pub struct SystemLeaseClock {
    origin: Instant,
}

impl Default for SystemLeaseClock {
    fn default() -> Self {
        SystemLeaseClock {
            origin: Instant::now(),
        }
    }
}

impl LeaseClock for SystemLeaseClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to: leases expire when a test says so.
///
/// ```
/// use std::time::Duration;
/// use duolog::order::{LeaseClock, ManualClock};
/// let clock = ManualClock::default();
/// clock.advance(Duration::from_secs(61));
/// assert_eq!(clock.now(), Duration::from_secs(61));
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<Duration>,
}

impl ManualClock {
    /// Moves the clock forward by `by` (saturating).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock();
        *now = now.saturating_add(by);
    }
}

impl LeaseClock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.lock()
    }
}

/// How leases are kept: RocketMQ's timings by default.
///
/// ```
/// use std::time::Duration;
/// use duolog::order::LeaseOptions;
/// let o = LeaseOptions::default();
/// assert_eq!((o.renew_interval, o.expire_after), (Duration::from_secs(20), Duration::from_secs(60)));
/// assert!(LeaseOptions { renew_interval: Duration::from_secs(60), ..o.clone() }.validate().is_err());
/// assert!(LeaseOptions { expire_after: Duration::MAX, ..o }.validate().is_err());
/// ```
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    /// How often a holder renews its leases (RocketMQ's client re-locks every 20 s). Positive
    /// and shorter than `expire_after`. Default: 20 s.
    pub renew_interval: Duration,
    /// How long a lease lasts past its last grant or renewal (RocketMQ's broker lock TTL).
    /// Positive, at most [`MAX_LEASE`]. Default: 60 s.
    pub expire_after: Duration,
    /// What leases are measured on. Default: [`SystemLeaseClock`].
    pub clock: Arc<dyn LeaseClock>,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            renew_interval: Duration::from_secs(20),
            expire_after: Duration::from_secs(60),
            clock: Arc::new(SystemLeaseClock::default()),
        }
    }
}

impl LeaseOptions {
    /// [`Error::InvalidArgument`] for a zero interval, a renewal no sooner than the expiry, or
    /// an expiry past [`MAX_LEASE`].
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidArgument(format!("lease options: {why}")));
        if self.renew_interval.is_zero() || self.expire_after.is_zero() {
            return bad("renew_interval and expire_after must be positive".into());
        }
        if self.expire_after > MAX_LEASE {
            return bad(format!(
                "expire_after {:?} is longer than {MAX_LEASE:?}",
                self.expire_after
            ));
        }
        if self.renew_interval >= self.expire_after {
            return bad(format!(
                "renew_interval {:?} must be shorter than expire_after {:?}",
                self.renew_interval, self.expire_after
            ));
        }
        Ok(())
    }
}

/// A partition's lease as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The member holding it.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
    /// When it expires, on the lease clock.
    pub expires_at: Duration,
    /// Whether the holder's handler is running on the partition now (a lease is not taken
    /// over while it is, expired or not).
    pub in_call: bool,
}

/// Every token handed out in this process comes from here: strictly increasing, never reused.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

fn next_token() -> u64 {
    if NEXT_TOKEN.load(Ordering::Relaxed) == 0 {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        let _ = NEXT_TOKEN.compare_exchange(0, micros.max(1), Ordering::Relaxed, Ordering::Relaxed);
    }
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

type Key = (String, TopicPartition);

/// Below this many slots the table is never swept.
const PRUNE_AT: usize = 1024;

#[derive(Default)]
struct Slot {
    lease: Option<Lease>,
    /// Held across a fenced commit's check and write, and across a new holder's grant and its
    /// read of the committed offset: a new holder never reads the offset while an old
    /// holder's checked commit is still being written.
    guard: Arc<Mutex<()>>,
}

/// The leases of every group served by one [`GroupCoordinator`]: who holds each partition,
/// with which token, until when. Get it with [`LeaseTable::of`].
///
/// ```
/// # use std::sync::Arc;
/// # use duolog::{LogStore, StoreOptions};
/// use std::time::Duration;
/// use duolog::consumer::{GroupCoordinator, TopicPartition};
/// use duolog::order::{LeaseTable, ManualClock};
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// let leases = LeaseTable::of(&GroupCoordinator::new(store)?);
/// let (clock, ttl, tp) = (ManualClock::default(), Duration::from_secs(60), TopicPartition::new("t", 0));
/// let first = leases.try_acquire("g", &tp, "a", ttl, &clock).expect("free");
/// assert!(leases.try_acquire("g", &tp, "b", ttl, &clock).is_none(), "held");
/// clock.advance(Duration::from_secs(61));
/// let second = leases.try_acquire("g", &tp, "b", ttl, &clock).expect("expired");
/// assert!(second > first);
/// assert!(leases.check("g", &tp, "a", first, &clock).is_err(), "fenced");
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct LeaseTable {
    slots: Mutex<HashMap<Key, Slot>>,
    /// The slots left after the last sweep (see `prune`).
    swept: AtomicUsize,
}

impl fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseTable")
            .field("partitions", &self.slots.lock().len())
            .finish()
    }
}

fn key(group: &str, tp: &TopicPartition) -> Key {
    (group.to_owned(), tp.clone())
}

fn valid(lease: &Lease, member: &str, token: u64, now: Duration) -> bool {
    lease.holder == member && lease.token == token && now < lease.expires_at
}

impl LeaseTable {
    /// The coordinator's table, shared by every orderly consumer made from it.
    pub fn of(coordinator: &GroupCoordinator) -> Arc<LeaseTable> {
        coordinator.inner.extension::<LeaseTable>()
    }

    /// Grants `member` the lease on `tp` for `expire_after` if it is free, or expired, and no
    /// handler call of its holder is running; returns the new fencing token. Every grant has a
    /// new token, also to a member that holds the lease already (its old token is fenced):
    /// a holder that asks again has lost track of what it held, and a call still running
    /// under the old token must not share the partition with a new start.
    pub fn try_acquire(
        &self,
        group: &str,
        tp: &TopicPartition,
        member: &str,
        expire_after: Duration,
        clock: &dyn LeaseClock,
    ) -> Option<u64> {
        let now = clock.now();
        let mut slots = self.slots.lock();
        self.prune(&mut slots, now);
        let slot = slots.entry(key(group, tp)).or_default();
        if let Some(l) = &slot.lease
            && (l.in_call || (now < l.expires_at && l.holder != member))
        {
            return None;
        }
        let token = next_token();
        slot.lease = Some(Lease {
            holder: member.to_owned(),
            token,
            expires_at: now.saturating_add(expire_after),
            in_call: false,
        });
        Some(token)
    }

    /// Extends a lease still validly held with `token` by `expire_after` from now; `false` if
    /// it expired or passed on (an expired lease is not renewed: its holder acquires again,
    /// with a new token).
    pub fn renew(
        &self,
        group: &str,
        tp: &TopicPartition,
        member: &str,
        token: u64,
        expire_after: Duration,
        clock: &dyn LeaseClock,
    ) -> bool {
        self.with_valid_lease(group, tp, member, token, clock, |l, now| {
            l.expires_at = now.saturating_add(expire_after);
        })
    }

    /// Gives the lease up, if `member` still holds it with `token`. The partition's slot
    /// goes with it unless a commit guard is in use.
    pub fn release(&self, group: &str, tp: &TopicPartition, member: &str, token: u64) {
        let mut slots = self.slots.lock();
        let k = key(group, tp);
        if let Some(slot) = slots.get_mut(&k)
            && slot
                .lease
                .as_ref()
                .is_some_and(|l| l.holder == member && l.token == token)
        {
            slot.lease = None;
            if Arc::strong_count(&slot.guard) == 1 {
                slots.remove(&k);
            }
        }
    }

    /// Drops the slots nobody needs (no lease, or an expired one with no call running, and
    /// no commit guard in use) once the table has doubled since the last sweep: what a
    /// member that never released (it crashed, or its topic was deleted) left behind does
    /// not accumulate. Fencing does not need the slot: tokens only grow, process-wide.
    fn prune(&self, slots: &mut HashMap<Key, Slot>, now: Duration) {
        if slots.len() < PRUNE_AT.max(self.swept.load(Ordering::Relaxed).saturating_mul(2)) {
            return;
        }
        slots.retain(|_, s| {
            Arc::strong_count(&s.guard) > 1
                || s.lease
                    .as_ref()
                    .is_some_and(|l| l.in_call || now < l.expires_at)
        });
        self.swept.store(slots.len(), Ordering::Relaxed);
    }

    /// How many partitions have a slot now (held, expired or in use by a commit).
    pub fn len(&self) -> usize {
        self.slots.lock().len()
    }

    /// Whether no partition has a slot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `Ok` if `member` holds the lease on `tp` with `token` and it has not expired;
    /// [`Error::LeaseLost`] otherwise.
    pub fn check(
        &self,
        group: &str,
        tp: &TopicPartition,
        member: &str,
        token: u64,
        clock: &dyn LeaseClock,
    ) -> Result<()> {
        let now = clock.now();
        let slots = self.slots.lock();
        match slots.get(&key(group, tp)).and_then(|s| s.lease.as_ref()) {
            Some(l) if valid(l, member, token, now) => Ok(()),
            _ => Err(Error::LeaseLost {
                group: group.to_owned(),
                topic: tp.topic.clone(),
                partition: tp.partition,
                token,
            }),
        }
    }

    /// The lease on `tp` now, expired or not (`None`: never granted, or released).
    pub fn lease(&self, group: &str, tp: &TopicPartition) -> Option<Lease> {
        self.slots
            .lock()
            .get(&key(group, tp))
            .and_then(|s| s.lease.clone())
    }

    /// Marks the start of a handler call: `true` if the lease is valid (then it cannot be
    /// taken over until [`end_call`](Self::end_call), however long the call runs).
    pub(crate) fn begin_call(
        &self,
        group: &str,
        tp: &TopicPartition,
        member: &str,
        token: u64,
        clock: &dyn LeaseClock,
    ) -> bool {
        self.with_valid_lease(group, tp, member, token, clock, |l, _| l.in_call = true)
    }

    /// Applies `f` (with the clock's now) to the lease of `tp` in `group` if `member` holds it
    /// with `token` and it has not expired, under the table's lock; whether it did. What every
    /// holder's action checks first, in one place.
    fn with_valid_lease(
        &self,
        group: &str,
        tp: &TopicPartition,
        member: &str,
        token: u64,
        clock: &dyn LeaseClock,
        f: impl FnOnce(&mut Lease, Duration),
    ) -> bool {
        let now = clock.now();
        let mut slots = self.slots.lock();
        match slots
            .get_mut(&key(group, tp))
            .and_then(|s| s.lease.as_mut())
        {
            Some(l) if valid(l, member, token, now) => {
                f(l, now);
                true
            }
            _ => false,
        }
    }

    /// Marks the end of the call [`begin_call`](Self::begin_call) started.
    pub(crate) fn end_call(&self, group: &str, tp: &TopicPartition, member: &str, token: u64) {
        let mut slots = self.slots.lock();
        if let Some(l) = slots
            .get_mut(&key(group, tp))
            .and_then(|s| s.lease.as_mut())
            && l.holder == member
            && l.token == token
        {
            l.in_call = false;
        }
    }

    /// The partition's commit guard (see [`Slot::guard`]).
    pub(crate) fn guard(&self, group: &str, tp: &TopicPartition) -> Arc<Mutex<()>> {
        let mut slots = self.slots.lock();
        Arc::clone(&slots.entry(key(group, tp)).or_default().guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_strictly_increase_and_are_never_reused() {
        let a: Vec<u64> = (0..100).map(|_| next_token()).collect();
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn lease_options_refuse_zero_inverted_and_unbounded_times() {
        let ok = LeaseOptions::default();
        assert!(ok.validate().is_ok());
        for (renew, expire) in [
            (Duration::ZERO, Duration::from_secs(1)),
            (Duration::from_secs(1), Duration::ZERO),
            (Duration::from_secs(2), Duration::from_secs(2)),
            (Duration::from_secs(3), Duration::from_secs(2)),
            (Duration::from_secs(1), Duration::MAX),
            (Duration::MAX, Duration::MAX),
        ] {
            let o = LeaseOptions {
                renew_interval: renew,
                expire_after: expire,
                ..ok.clone()
            };
            assert!(
                matches!(o.validate(), Err(Error::InvalidArgument(_))),
                "{renew:?} {expire:?}"
            );
        }
    }

    /// `renew` and `begin_call` accept exactly the same leases: held by the member, with its
    /// token, not expired (one check, `with_valid_lease`).
    #[test]
    fn renew_and_begin_call_refuse_other_members_stale_tokens_and_expired_leases_alike() {
        let t = LeaseTable::default();
        let c = ManualClock::default();
        let tp = TopicPartition::new("t", 0);
        let ttl = Duration::from_secs(60);
        let tok = t.try_acquire("g", &tp, "a", ttl, &c).unwrap();
        for (member, token) in [("b", tok), ("a", tok + 1)] {
            assert!(
                !t.renew("g", &tp, member, token, ttl, &c),
                "{member} {token}"
            );
            assert!(
                !t.begin_call("g", &tp, member, token, &c),
                "{member} {token}"
            );
        }
        assert!(!t.renew("g", &TopicPartition::new("t", 1), "a", tok, ttl, &c));
        assert!(t.renew("g", &tp, "a", tok, ttl, &c));
        c.advance(ttl / 2);
        // The renewal moved the expiry: still valid past the first one's half-life.
        assert!(t.begin_call("g", &tp, "a", tok, &c));
        t.end_call("g", &tp, "a", tok);
        c.advance(ttl);
        assert!(!t.renew("g", &tp, "a", tok, ttl, &c));
        assert!(!t.begin_call("g", &tp, "a", tok, &c));
    }

    #[test]
    fn a_member_acquiring_its_own_lease_again_gets_a_new_token_never_during_its_call() {
        let t = LeaseTable::default();
        let c = ManualClock::default();
        let tp = TopicPartition::new("t", 0);
        let ttl = Duration::from_secs(60);
        let first = t.try_acquire("g", &tp, "a", ttl, &c).unwrap();
        assert!(t.begin_call("g", &tp, "a", first, &c));
        assert_eq!(
            t.try_acquire("g", &tp, "a", ttl, &c),
            None,
            "a call runs under the old token"
        );
        t.end_call("g", &tp, "a", first);
        let second = t.try_acquire("g", &tp, "a", ttl, &c).unwrap();
        assert!(second > first);
        assert!(
            t.check("g", &tp, "a", first, &c).is_err(),
            "old token fenced"
        );
        assert!(t.check("g", &tp, "a", second, &c).is_ok());
    }

    #[test]
    fn released_and_abandoned_leases_leave_no_slots_behind() {
        let t = LeaseTable::default();
        let c = ManualClock::default();
        let ttl = Duration::from_secs(1);
        for p in 0..10_000 {
            let tp = TopicPartition::new("t", p);
            let tok = t.try_acquire("g", &tp, "a", ttl, &c).unwrap();
            drop(t.guard("g", &tp));
            t.release("g", &tp, "a", tok);
        }
        assert_eq!(t.len(), 0, "released");
        // Never released (crashed members, deleted topics): swept once expired.
        for round in 0..20 {
            for p in 0..600 {
                let tp = TopicPartition::new(format!("u{round}"), p);
                t.try_acquire("g", &tp, "a", ttl, &c).unwrap();
            }
            c.advance(Duration::from_secs(2));
        }
        assert!(t.len() <= 2 * PRUNE_AT, "{} slots", t.len());
        // A slot whose commit guard is in use stays.
        let tp = TopicPartition::new("w", 0);
        let tok = t.try_acquire("g", &tp, "a", ttl, &c).unwrap();
        let guard = t.guard("g", &tp);
        t.release("g", &tp, "a", tok);
        let before = t.len();
        assert!(Arc::ptr_eq(&guard, &t.guard("g", &tp)), "same guard");
        assert_eq!(t.len(), before);
    }

    #[test]
    fn a_lease_in_call_is_not_taken_over_even_when_expired() {
        let t = LeaseTable::default();
        let c = ManualClock::default();
        let tp = TopicPartition::new("t", 0);
        let ttl = Duration::from_secs(1);
        let tok = t.try_acquire("g", &tp, "a", ttl, &c).unwrap();
        assert!(t.begin_call("g", &tp, "a", tok, &c));
        c.advance(Duration::from_secs(5));
        assert!(t.try_acquire("g", &tp, "b", ttl, &c).is_none());
        assert!(
            !t.renew("g", &tp, "a", tok, ttl, &c),
            "expired: not renewed"
        );
        t.end_call("g", &tp, "a", tok);
        let tok_b = t.try_acquire("g", &tp, "b", ttl, &c).unwrap();
        assert!(tok_b > tok);
        assert!(t.check("g", &tp, "a", tok, &c).is_err());
        assert!(t.check("g", &tp, "b", tok_b, &c).is_ok());
        // A stale release does nothing.
        t.release("g", &tp, "a", tok);
        assert_eq!(t.lease("g", &tp).unwrap().holder, "b");
    }
}
