//! [`Warmer`]: a background thread that faults mapped files in ahead of their writer.
//!
//! The first store into a fresh page of a preallocated file costs the kernel a page-cache
//! allocation and a 4 KiB zero-fill; on the append path that was about a quarter of the time of
//! a small append. The writer notices when it comes within half a window of the warmed range
//! ([`MappedFile::wants_prefault`]) and hands the file here; this thread faults the next window
//! in with `MADV_POPULATE_WRITE`, which leaves the bytes untouched, so it never races the writer
//! on content, and releases the pages the file lets go behind the writer (an madvise, no I/O;
//! only for files that asked for it, see `MappedFile::release_written_behind`). This module owns
//! only the thread and its queue; it never reads or writes records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::MappedFile;

/// One file's warm-up window when `files` share a `budget` of pages faulted in ahead of their
/// writers: the budget divided among them, between `min` and `max`, in whole pages. Both
/// engines bound their warm-up memory with it (consume queues, active segment logs) whatever
/// the number of partitions.
pub(crate) fn window_share(budget: usize, files: usize, min: usize, max: usize) -> usize {
    let w = (budget / files.max(1)).clamp(min, max);
    w - w % 4096
}

/// Files waiting to be warmed, with the window to warm each by. Weak: a queued request never
/// keeps a mapping alive (an evicted or deleted file is simply skipped), so the store's bound on
/// mappings holds however far behind this thread is.
type Queue = Mutex<Vec<(Weak<MappedFile>, usize)>>;

/// Requests the queue holds at most: more files than a store keeps mapped and writes at once
/// (`max_open_files` consume queues and the commit log's files, 512 + a few by default). A
/// request past it is dropped (the writer faults its pages in itself).
const MAX_QUEUED: usize = 4096;

/// The warm-up thread of one store. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Warmer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Queue,
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
        // Deduplicated by the file's own flag (O(1), no scan of the queue under its mutex):
        // set here, cleared by the thread when it takes the request.
        if file.warm_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let mut q = self.shared.queue.lock();
            if q.len() >= MAX_QUEUED {
                // Best effort: the writer takes its own page faults; a later request retries.
                file.warm_queued.store(false, Ordering::Release);
                return;
            }
            q.push((Arc::downgrade(file), window));
            // Only the push that makes the queue non-empty wakes the thread: it takes the whole
            // queue before it parks again, so later pushes need no wake-up of their own (with
            // many partitions' small queue windows, requests are frequent and a wake-up is a
            // syscall on the appender's path).
            if q.len() > 1 {
                return;
            }
        }
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Requests waiting (for tests).
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.shared.queue.lock().len()
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
        let batch = std::mem::take(&mut *shared.queue.lock());
        if batch.is_empty() {
            std::thread::park();
            continue;
        }
        for (file, window) in batch {
            let Some(file) = file.upgrade() else {
                continue;
            };
            // Before warming: a request made while this one runs is queued again.
            file.warm_queued.store(false, Ordering::Release);
            // Best effort: a failure (an old kernel without MADV_POPULATE_WRITE) only means the
            // writer takes the page faults itself, as it would without a warmer.
            let _ = file.prefault_ahead(window);
            // The pages its owner lets go behind the writer (see
            // `MappedFile::release_written_behind`), off the writer's path too.
            file.release_behind();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{FileSystem, MapMode, RealFs};

    #[test]
    fn a_shared_release_keep_changes_only_files_that_release_behind_their_writer() {
        let dir = tempfile::tempdir().unwrap();
        let map = |name: &str| {
            MappedFile::map(&RealFs, &dir.path().join(name), 0, 1 << 20, MapMode::Create).unwrap()
        };
        let (releasing, other) = (map("a"), map("b"));
        releasing.release_written_behind(1 << 20, 1 << 20);
        for f in [&releasing, &other] {
            f.append(&[&[7u8; 256 << 10]]).unwrap();
            f.commit_all();
            // A writer among many: its share of the budget is 16 KiB kept, 16 KiB steps.
            f.share_release(16 << 10, 16 << 10);
            f.release_behind();
        }
        assert_eq!(releasing.released(), 240 << 10);
        // A file that never asked for releases is not made to release by a share.
        assert_eq!(other.released(), 0);
    }

    #[test]
    fn a_writer_asking_on_every_write_requests_warming_once_per_window_step() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(
            MappedFile::map(&RealFs, &dir.path().join("f"), 0, 1 << 20, MapMode::Create).unwrap(),
        );
        let window = 64 << 10;
        // Before any warming: one request, however many writes ask before the thread runs.
        assert!(file.wants_prefault_once(5, window));
        for pos in 6..1000 {
            assert!(
                !file.wants_prefault_once(pos, window),
                "asked again at {pos}"
            );
        }
        file.prefault_ahead(window).unwrap();
        // Warmed a window ahead: nothing to ask until the writer is half a window from its end,
        // then once more.
        assert!(!file.wants_prefault_once(1000, window));
        assert!(file.wants_prefault_once(40 << 10, window));
        assert!(!file.wants_prefault_once(41 << 10, window));
        // The plain check keeps answering on every call (the CommitLog's writers use it).
        assert!(file.wants_prefault(41 << 10, window));
    }

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

    #[test]
    fn requests_are_deduplicated_per_file_and_the_queue_is_bounded() {
        // A warmer whose thread never runs: requests only pile up.
        let warmer = Warmer {
            shared: Arc::new(Shared::default()),
            thread: None,
        };
        let fs = crate::io::SimFs::new();
        fs.create_dir_all(std::path::Path::new("/d")).unwrap();
        let files: Vec<Arc<MappedFile>> = (0..MAX_QUEUED + 100)
            .map(|i| {
                let path = std::path::PathBuf::from(format!("/d/{i}"));
                Arc::new(MappedFile::map(&fs, &path, 0, 4096, MapMode::Create).unwrap())
            })
            .collect();
        warmer.request(&files[0], 4096);
        warmer.request(&files[0], 4096);
        assert_eq!(warmer.queued(), 1, "one request per file");
        for f in &files {
            warmer.request(f, 4096);
        }
        assert_eq!(warmer.queued(), MAX_QUEUED);
    }
}
