//! [`Completion`]: the handle an async send returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::GroupCommit;
use crate::error::Result;
use crate::store::AppendResult;

/// The pending durability of an async append. The offsets are known at once; durability is
/// reached when the flush policy's next fsync covers the batch.
///
/// ```
/// # fn main() -> duolog::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let store = duolog::open(dir.path(), duolog::StoreOptions::default())?;
/// # store.create_topic("t", duolog::TopicConfig::default())?;
/// let completion = store.append_async("t", 0, &[duolog::Message::new("hi")])?;
/// assert_eq!(completion.offsets().base_offset, 0);
/// store.sync()?;
/// assert!(completion.wait()?.last_offset == 0);
/// # Ok(()) }
/// ```
pub struct Completion {
    result: AppendResult,
    pos: u64,
    gc: Arc<GroupCommit>,
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("result", &self.result)
            .field("durable", &self.is_durable())
            .finish()
    }
}

impl Completion {
    pub(crate) fn new(result: AppendResult, pos: u64, gc: Arc<GroupCommit>) -> Self {
        Completion { result, pos, gc }
    }

    /// The offsets assigned to the batch.
    pub fn offsets(&self) -> AppendResult {
        self.result
    }

    /// Whether the batch is durable now.
    pub fn is_durable(&self) -> bool {
        self.gc.durable() >= self.pos
    }

    /// Blocks until the batch is durable.
    pub fn wait(&self) -> Result<AppendResult> {
        self.gc.wait_durable(self.pos, None).map(|_| self.result)
    }

    /// Blocks until the batch is durable or `timeout` passes (`Ok(None)`).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<AppendResult>> {
        Ok(self
            .gc
            .wait_durable(self.pos, Some(timeout))?
            .then_some(self.result))
    }

    /// Calls `f` once the batch is durable (or the store fails or closes first), on the thread
    /// that made it durable: keep `f` short.
    pub fn on_durable<F>(self, f: F)
    where
        F: FnOnce(Result<AppendResult>) + Send + 'static,
    {
        let result = self.result;
        self.gc
            .on_durable(self.pos, Box::new(move |r| f(r.map(|()| result))));
    }
}
