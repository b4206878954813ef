//! The allocation thread (RocketMQ's `AllocateMappedFileService`): creates the next commit-log
//! file and the next consume-queue file of a partition, and grows queue files, ahead of the
//! appender, so that the append lock only ever finds a ready file instead of waiting for
//! `fallocate`, a directory fsync and `madvise`. A job that fails leaves nothing behind: the
//! appender that needs the file then creates it itself and gets the error (a failed directory
//! sync has poisoned the store by then). This module owns the thread and its queue only.

use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

/// Work for the thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The submitting side, kept by the engine.
#[derive(Default)]
pub(crate) struct AllocatorHandle {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
}

impl AllocatorHandle {
    /// Queues `job`; dropped silently once the thread is stopped.
    pub(crate) fn submit(&self, job: Job) {
        if let Some(tx) = &*self.tx.lock() {
            let _ = tx.send(job);
        }
    }

    /// Closes the queue: the thread finishes the jobs already queued and exits.
    pub(crate) fn close(&self) {
        self.tx.lock().take();
    }
}

/// The thread; dropping it (after [`AllocatorHandle::close`]) joins it.
pub(crate) struct Allocator {
    thread: Option<JoinHandle<()>>,
}

impl Allocator {
    /// Starts the thread (`duolog-allocate`) and connects `handle` to it.
    pub(crate) fn start(handle: &AllocatorHandle) -> std::io::Result<Allocator> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("duolog-allocate".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
        *handle.tx.lock() = Some(tx);
        Ok(Allocator {
            thread: Some(thread),
        })
    }

    /// Joins the thread; the handle must be closed first.
    pub(crate) fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
