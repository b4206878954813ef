//! Durability machinery shared by the engines: group commit, the background flusher that
//! implements a [`FlushPolicy`](crate::FlushPolicy), async-send completions, the wake-up
//! signal under `wait_for`, and the pool of sync threads a group flush of several files uses.
//!
//! Positions here are opaque, monotonically increasing numbers chosen by the engine (the
//! CommitLog engine uses physical log positions). This module never touches files itself: it
//! calls the engine's `FlushTarget`, and it never holds its lock across that call. The one
//! exception is `SyncGuardFs`, a pass-through wrapper of the engine's file system that poisons
//! the store when a sync fails.

mod completion;
mod data_signal;
mod group_commit;
mod sync_guard;
mod sync_pool;

pub use completion::Completion;
pub use data_signal::Wakeup;
pub(crate) use data_signal::{DataSignal, wait_any};
pub(crate) use group_commit::{BackgroundWork, FlushTarget, Flusher, GroupCommit, PeriodicJobs};
pub(crate) use sync_guard::SyncGuardFs;
pub(crate) use sync_pool::SyncPool;
