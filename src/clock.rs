//! Wall-clock time in milliseconds and overflow-free time arithmetic, shared by the engines,
//! the key index and the layers. Owns nothing else; touches no file.
//!
//! Every `Duration` a caller can pass (including `Duration::MAX`) must turn into a sane number
//! of milliseconds or a deadline without wrapping or panicking: these helpers saturate.

use std::time::{Duration, Instant};

/// Milliseconds since the Unix epoch (0 if the clock is before the epoch).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, duration_ms)
}

/// A duration in whole milliseconds, saturated at `i64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `now - age` in milliseconds, saturated at `i64::MIN` (an age longer than time itself
/// cuts off nothing).
pub(crate) fn ms_before(now: i64, age: Duration) -> i64 {
    now.saturating_sub(duration_ms(age))
}

/// `Instant::now() + timeout`, or `None` when that is past what an `Instant` can hold (wait
/// forever).
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_wrapping() {
        assert_eq!(duration_ms(Duration::MAX), i64::MAX);
        assert_eq!(ms_before(1_000, Duration::MAX), 1_000 - i64::MAX);
        assert!(ms_before(1_000, Duration::MAX) < 0);
        assert_eq!(ms_before(1_000, Duration::from_millis(10)), 990);
        assert!(deadline(Duration::MAX).is_none());
        assert!(deadline(Duration::from_secs(1)).is_some());
    }
}
