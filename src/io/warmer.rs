//! [`Warmer`]: a background thread that faults mapped files in ahead of their writer.
//!
//! The first store into a fresh page of a preallocated file costs the kernel a page-cache
//! allocation and a 4 KiB zero-fill; on the append path that was about a quarter of the time of
//! a small append. The writer notices when it comes within half a window of the warmed range
//! ([`MappedFile::wants_prefault`]) and hands the file here; this thread faults the next window
//! in with `MADV_POPULATE_WRITE`, which leaves the bytes untouched, so it never races the writer
//! on content. This module owns only the thread and its queue; it never reads or writes records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::MappedFile;

/// Files waiting to be warmed, with the window to warm each by, and files waiting for a
/// background flush. Weak: a queued request never keeps a mapping alive (an evicted or deleted
/// file is simply skipped), so the store's bound on mappings holds however far behind this
/// thread is. Each list holds a file at most once, so neither outgrows the mappings alive.
#[derive(Debug, Default)]
struct Queues {
    warm: Vec<(Weak<MappedFile>, usize)>,
    writeback: Vec<(Weak<MappedFile>, usize)>,
}

impl Queues {
    fn is_empty(&self) -> bool {
        self.warm.is_empty() && self.writeback.is_empty()
    }
}

/// Bytes one background flush step covers: the thread goes back to its warm-up requests
/// between steps, so a long flush delays a warm-up by one step's msync at most.
const WRITEBACK_STEP: usize = 1 << 20;

/// The warm-up thread of one store. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Warmer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queues>,
    stop: AtomicBool,
}

impl Warmer {
    /// Starts the thread (named `name`).
    pub fn start(name: &str) -> std::io::Result<Warmer> {
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(&s))?;
        Ok(Warmer {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for `file` to be faulted in up to `window` bytes past its write cursor. Cheap and
    /// non-blocking: a short queue push and a wake-up; repeated requests for one file coalesce.
    pub fn request(&self, file: &Arc<MappedFile>, window: usize) {
        {
            let mut q = self.shared.queue.lock();
            let weak = Arc::downgrade(file);
            if q.warm.iter().any(|(f, _)| Weak::ptr_eq(f, &weak)) {
                return;
            }
            let was_empty = q.is_empty();
            q.warm.push((weak, window));
            // Only the push that makes the queue non-empty wakes the thread: it takes the whole
            // queue before it parks again, so later pushes need no wake-up of their own (with
            // many partitions' small queue windows, requests are frequent and a wake-up is a
            // syscall on the appender's path).
            if !was_empty {
                return;
            }
        }
        self.wake();
    }

    /// Asks for `file`'s published bytes to be flushed (msync) on this thread, up to what is
    /// published now, releasing the flushed pages behind as any flush does
    /// (see [`MappedFile::release_flushed_behind`]): a writer that bounds its unflushed bytes
    /// hands the msync here instead of waiting on it. Cheap and non-blocking; repeated
    /// requests for one file coalesce. A failed flush is left to the next one (the store's
    /// sync guard has seen it), and the file's flushed mark stays where it was.
    pub fn request_writeback(&self, file: &Arc<MappedFile>) {
        {
            let mut q = self.shared.queue.lock();
            let weak = Arc::downgrade(file);
            let upto = file.committed();
            if let Some((_, t)) = q.writeback.iter_mut().find(|(f, _)| Weak::ptr_eq(f, &weak)) {
                *t = (*t).max(upto);
                return;
            }
            let was_empty = q.is_empty();
            q.writeback.push((weak, upto));
            if !was_empty {
                return;
            }
        }
        self.wake();
    }

    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared) {
    while !shared.stop.load(Ordering::Acquire) {
        let (warm, writeback) = {
            let mut q = shared.queue.lock();
            // Warm-ups all at once (they are short); one flush step per file and round.
            (std::mem::take(&mut q.warm), std::mem::take(&mut q.writeback))
        };
        if warm.is_empty() && writeback.is_empty() {
            std::thread::park();
            continue;
        }
        for (file, window) in warm {
            let Some(file) = file.upgrade() else {
                continue;
            };
            // Best effort: a failure (an old kernel without MADV_POPULATE_WRITE) only means the
            // writer takes the page faults itself, as it would without a warmer.
            let _ = file.prefault_ahead(window);
        }
        let mut again = Vec::new();
        for (weak, target) in writeback {
            let Some(file) = weak.upgrade() else {
                continue;
            };
            let step = file.flushed().saturating_add(WRITEBACK_STEP).min(target);
            // A failure stops this request: the sync guard has poisoned the store, and the
            // writer's own bound (it flushes itself past it) still holds.
            if file.flush(step).is_ok_and(|flushed| flushed < target) {
                again.push((weak, target));
            }
        }
        if !again.is_empty() {
            let mut q = shared.queue.lock();
            for (weak, target) in again {
                match q.writeback.iter_mut().find(|(f, _)| Weak::ptr_eq(f, &weak)) {
                    Some((_, t)) => *t = (*t).max(target),
                    None => q.writeback.push((weak, target)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{MapMode, RealFs};

    #[test]
    fn warming_leaves_the_bytes_alone_and_advances_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(
            MappedFile::map(&RealFs, &dir.path().join("f"), 0, 1 << 20, MapMode::Create).unwrap(),
        );
        file.append(&[b"hello"]).unwrap();
        file.commit_all();
        assert!(file.wants_prefault(5, 64 << 10));
        let warmer = Warmer::start("test-warm").unwrap();
        warmer.request(&file, 64 << 10);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while file.wants_prefault(5, 64 << 10) {
            assert!(std::time::Instant::now() < deadline, "warmer never ran");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(warmer);
        assert_eq!(file.read(0, 5), Some(&b"hello"[..]));
        assert!(!file.wants_prefault(5, 64 << 10));
        assert!(
            file.wants_prefault(40 << 10, 64 << 10),
            "half a window left"
        );
    }
}
