//! The wait/wake primitive under group commit: a thread sleeps on a 32-bit word until another
//! changes it and wakes it, with no lock to re-take on the way out.
//!
//! Why not a `Condvar`: a condition variable's waiters each re-acquire its mutex when woken, so
//! a flush that wakes 63 waiters wakes them one after another (each runs, unlocks, and only
//! then is the next one runnable). On a word, the flushing thread makes every waiter runnable
//! with one `futex(FUTEX_WAKE)` and each checks the durable position with an atomic load.
//!
//! On Linux this is the `futex` system call; elsewhere a short sleep stands in (correct, since
//! every caller re-checks its condition in a loop, only slower to react).

use std::sync::atomic::AtomicU32;

/// Sleeps while `word` holds `expected` (returns at once if it does not). May return early
/// (a signal, a spurious wake-up): callers re-check their condition and call again.
pub(crate) fn wait(word: &AtomicU32, expected: u32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `word` is a live, aligned 32-bit atomic for the whole call (borrowed), which
        // is all FUTEX_WAIT reads; a null timeout means no deadline, and the remaining
        // arguments are ignored by FUTEX_WAIT. The kernel only compares and sleeps.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        if word.load(std::sync::atomic::Ordering::Acquire) == expected {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

/// Wakes up to `count` threads sleeping in [`wait`] on `word` (change the word first, or a
/// thread about to sleep would miss the wake-up).
fn wake(word: &AtomicU32, count: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: FUTEX_WAKE only uses the address as a key to find sleepers; `word` is live
        // and aligned for the call.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                count,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (word, count);
    }
}

/// Wakes every thread sleeping on `word`, with one system call.
pub(crate) fn wake_all(word: &AtomicU32) {
    wake(word, i32::MAX);
}

/// Wakes at most one thread sleeping on `word`.
pub(crate) fn wake_one(word: &AtomicU32) {
    wake(word, 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[test]
    fn wait_returns_at_once_when_the_word_changed() {
        let w = AtomicU32::new(1);
        wait(&w, 0);
    }

    #[test]
    fn wake_all_releases_every_sleeper() {
        let w = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    while w.load(Ordering::Acquire) == 0 {
                        wait(&w, 0);
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20));
        w.store(1, Ordering::Release);
        wake_all(&w);
        for t in threads {
            t.join().unwrap();
        }
    }
}
