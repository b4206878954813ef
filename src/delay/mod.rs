//! The delay layer: messages delivered to their real topic after a delay or at a time, once,
//! never early, across crashes — RocketMQ 5's timer store (timer log + timer wheel +
//! checkpoint, RIP-43) as a layer over any [`LogStore`](crate::LogStore). It reads and writes
//! through the trait only and imports no engine.
//!
//! It owns four internal topics of the store (one partition each, never expired by time: the
//! layer deletes what it no longer needs with `delete_before`):
//! - `__delay_messages` ([`MESSAGES_TOPIC`]): every scheduled message as written, with its
//!   real topic, partition and due time as properties; a handle's id is its offset here.
//!   Cancels, and rolls of messages due past the wheel's window, are records here too.
//! - `__delay_timer_log` ([`TIMER_LOG_TOPIC`]): one small fixed entry per record of
//!   `__delay_messages`, in its order, each placing the record in a slot of the wheel and
//!   chaining it to the previous entry of the same slot. The wheel (in memory, bounded by
//!   [`DelayOptions::wheel_slots`]) is rebuilt from it at every open.
//! - `__delay_progress` ([`PROGRESS_TOPIC`], compacted): what has been delivered (the last slot
//!   processed, where the pending entries start) and the INTENT of the round in flight.
//! - `__delay_undeliverable` ([`UNDELIVERABLE_TOPIC`]): messages whose real topic or partition
//!   is gone (or refuses them) at delivery time, with the reason in `DELAY_UNDELIVERABLE`.
//!
//! It touches no file of the store and no other topic than these and the real topics it
//! delivers to. See ARCHITECTURE.md ("Delay layer") for the design and the exactly-once
//! argument, docs/format.md for the bytes.

mod codec;
mod queue;
mod wheel;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::durability::Wakeup;
use crate::error::Error;

pub use queue::{DelayQueue, LAYER_PROPERTIES};

/// The internal topic holding every scheduled message, cancel and roll.
pub const MESSAGES_TOPIC: &str = "__delay_messages";
/// The internal topic of timer-log entries.
pub const TIMER_LOG_TOPIC: &str = "__delay_timer_log";
/// The internal (compacted) topic of delivery progress records.
pub const PROGRESS_TOPIC: &str = "__delay_progress";
/// Where messages go whose real topic or partition cannot take them at delivery time.
pub const UNDELIVERABLE_TOPIC: &str = "__delay_undeliverable";

/// Property of a delivered message: the delivery time that was asked for (ms since the epoch).
pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
/// Property of a delivered message: when it was scheduled (ms since the epoch).
pub const TIMER_ENQUEUE_MS: &str = "TIMER_ENQUEUE_MS";
/// Property of a delivered message: when it was delivered (ms since the epoch).
pub const TIMER_DEQUEUE_MS: &str = "TIMER_DEQUEUE_MS";
/// Property of a delivered message: its [`DelayHandle::id`]. Unique per scheduled message, so
/// a reader can count deliveries; the layer itself uses it to deduplicate after a crash.
pub const DELAY_ID: &str = "DELAY_ID";
/// Property of a message in [`UNDELIVERABLE_TOPIC`]: why it could not be delivered.
pub const DELAY_UNDELIVERABLE: &str = "DELAY_UNDELIVERABLE";
/// Property of a message in [`MESSAGES_TOPIC`] (and [`UNDELIVERABLE_TOPIC`]): its real topic.
pub const DELAY_REAL_TOPIC: &str = "DELAY_REAL_TOPIC";
/// Property of a message in [`MESSAGES_TOPIC`] (and [`UNDELIVERABLE_TOPIC`]): its real
/// partition.
pub const DELAY_REAL_PARTITION: &str = "DELAY_REAL_PARTITION";

/// RocketMQ's 18 delay levels (`messageDelayLevel`), level 1 first:
/// `1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`.
pub const DELAY_LEVELS: [Duration; 18] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(3 * 60),
    Duration::from_secs(4 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(6 * 60),
    Duration::from_secs(7 * 60),
    Duration::from_secs(8 * 60),
    Duration::from_secs(9 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
];

/// The time the layer goes by. Tests use [`ManualClock`].
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Called once by [`DelayQueue::open`]: a clock whose time can jump (not the wall clock)
    /// wakes `wakeup` whenever it changes, so the layer's timer thread looks again at once.
    fn notify_changes(&self, wakeup: Wakeup) {
        let _ = wakeup;
    }
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::clock::now_ms()
    }
}

/// A clock that moves only when told: for tests and simulations. Every change wakes the timer
/// threads of the layers using it.
///
/// ```
/// use std::time::Duration;
/// use duolog::delay::{Clock, ManualClock};
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_ms(), 3_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<i64>,
    wakeups: Mutex<Vec<Wakeup>>,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock {
            now: Mutex::new(start_ms),
            wakeups: Mutex::new(Vec::new()),
        }
    }

    /// Sets the time.
    pub fn set(&self, ms: i64) {
        *self.now.lock() = ms;
        self.wake();
    }

    /// Moves the time forward (saturating).
    pub fn advance(&self, by: Duration) {
        {
            let mut now = self.now.lock();
            *now = now.saturating_add(crate::clock::duration_ms(by));
        }
        self.wake();
    }

    fn wake(&self) {
        for w in self.wakeups.lock().iter() {
            w.wake();
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now.lock()
    }

    fn notify_changes(&self, wakeup: Wakeup) {
        self.wakeups.lock().push(wakeup);
    }
}

/// Options of the delay layer, with documented defaults.
#[derive(Clone, Debug)]
pub struct DelayOptions {
    /// Width of a wheel slot: a slot holds the due times `[slot, slot + precision)`, and its
    /// messages go out at their exact due times (never early; late only by the timer's
    /// reaction). Coarser slots mean fewer slots to keep per window, finer ones shorter chains
    /// to walk per round.
    /// Default: 1 s. Allowed: 10 ms ..= 60 s.
    pub precision: Duration,
    /// Slots of the wheel. The window (precision × slots) is how far ahead a message is placed
    /// directly; later ones roll through it. Memory: about 32 B per slot. Default: 262,144
    /// (about 3 days at 1 s). Allowed: 16 ..= 16,777,216.
    pub wheel_slots: u32,
    /// The longest delay accepted. Default: 40 days. `Duration::MAX`: no limit.
    pub max_delay: Duration,
    /// The clock. Default: [`SystemClock`].
    pub clock: Arc<dyn Clock>,
    /// `true` (default): two named threads (`duolog-delay-enqueue`, `duolog-timer`) place
    /// scheduled messages and deliver them when due. `false`: only [`DelayQueue::pump`] does.
    pub background: bool,
    /// Most entries one delivery round takes (bounds its memory and what a crash leaves in
    /// doubt). Default: 10,000. At least 1.
    pub max_round: usize,
    /// Most bytes of scheduled messages (body, key, properties) one delivery round reads and
    /// holds: it stops taking entries once it has read this much, so it holds at most this
    /// plus the one message that crossed it (and the copies it writes). Default: 64 MiB.
    /// At least 1.
    pub max_round_bytes: usize,
    /// Most pending entries of the open slot kept in memory (about 100 B each), sorted by due
    /// time: the slot's chain is walked once when it opens and later rounds take from this
    /// list, so a slot of N entries costs about N timer-log reads, not one walk per round
    /// (the timer wakes at each distinct due millisecond). A slot with more pending entries
    /// is walked per round instead, but only once per 1/64 of the precision: its messages may
    /// then be up to precision/64 late. Default: 262,144 (about 26 MiB). 0: never kept.
    pub max_open_slot_entries: usize,
}

impl Default for DelayOptions {
    fn default() -> Self {
        DelayOptions {
            precision: Duration::from_secs(1),
            wheel_slots: 262_144,
            max_delay: Duration::from_secs(40 * 86_400),
            clock: Arc::new(SystemClock),
            background: true,
            max_round: 10_000,
            max_round_bytes: 64 << 20,
            max_open_slot_entries: 262_144,
        }
    }
}

impl DelayOptions {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        if self.precision < Duration::from_millis(10) || self.precision > Duration::from_secs(60) {
            return Err(Error::InvalidArgument(format!(
                "DelayOptions::precision must be between 10 ms and 60 s, not {:?}",
                self.precision
            )));
        }
        if !self.precision.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(Error::InvalidArgument(format!(
                "DelayOptions::precision must be whole milliseconds, not {:?}",
                self.precision
            )));
        }
        if !(16..=1 << 24).contains(&self.wheel_slots) {
            return Err(Error::InvalidArgument(format!(
                "DelayOptions::wheel_slots must be between 16 and 16777216, not {}",
                self.wheel_slots
            )));
        }
        if self.max_round == 0 || self.max_round > u32::MAX as usize {
            return Err(Error::InvalidArgument(
                "DelayOptions::max_round must be between 1 and 4294967295".into(),
            ));
        }
        if self.max_round_bytes == 0 {
            return Err(Error::InvalidArgument(
                "DelayOptions::max_round_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A scheduled message: its id (its offset in [`MESSAGES_TOPIC`]) and when it is due. Shown
/// as `id@ms`, and parsed back from that (for the CLI).
///
/// ```
/// use duolog::delay::DelayHandle;
/// let h = DelayHandle { id: 7, deliver_at_ms: 1_700_000_000_000 };
/// assert_eq!(h.to_string(), "7@1700000000000");
/// assert_eq!("7@1700000000000".parse::<DelayHandle>().unwrap(), h);
/// assert!("7".parse::<DelayHandle>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DelayHandle {
    /// The message's id (unique per store, never reused).
    pub id: u64,
    /// When it is due (ms since the epoch).
    pub deliver_at_ms: i64,
}

impl fmt::Display for DelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.deliver_at_ms)
    }
}

impl FromStr for DelayHandle {
    type Err = Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        let bad = || Error::InvalidArgument(format!("a delay handle is `id@ms`, not {s:?}"));
        let (id, at) = s.split_once('@').ok_or_else(bad)?;
        Ok(DelayHandle {
            id: id.trim().parse().map_err(|_| bad())?,
            deliver_at_ms: at.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// What a [`DelayQueue::pump`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PumpReport {
    /// Records of `__delay_messages` placed on the wheel (messages, rolls, cancels).
    pub enqueued: u64,
    /// Messages delivered to their real topic.
    pub delivered: u64,
    /// Messages due past the wheel's window, moved on through it.
    pub rolled: u64,
    /// Messages not delivered because they were cancelled.
    pub cancelled: u64,
    /// Messages sent to `__delay_undeliverable` (or lost to damage: see the error log).
    pub undeliverable: u64,
}

impl PumpReport {
    fn add(&mut self, o: &PumpReport) {
        self.enqueued += o.enqueued;
        self.delivered += o.delivered;
        self.rolled += o.rolled;
        self.cancelled += o.cancelled;
        self.undeliverable += o.undeliverable;
    }
}
