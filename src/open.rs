//! Opening a store without naming its engine.

use std::path::Path;

use crate::catalog::Catalog;
use crate::commitlog::CommitLogStore;
use crate::error::{Error, Result};
use crate::options::StoreOptions;
use crate::segmented::SegmentedStore;
use crate::store::{EngineKind, LogStore};

/// The engine recorded in the store at `dir`, or `None` if there is no store there.
pub fn stored_engine(dir: impl AsRef<Path>, options: &StoreOptions) -> Result<Option<EngineKind>> {
    Ok(Catalog::load(options.fs.as_ref(), dir.as_ref())?.map(|c| c.engine))
}

/// Opens the store in `dir` with the engine that made it, or creates one with
/// `options.engine` (default: [`EngineKind::CommitLog`]).
///
/// ```
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store = duolog::open(dir.path(), duolog::StoreOptions::default())?;
/// assert_eq!(store.engine(), duolog::EngineKind::CommitLog);
/// # Ok(()) }
/// ```
pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Box<dyn LogStore>> {
    let dir = dir.as_ref();
    let engine = match (stored_engine(dir, &options)?, options.engine) {
        (Some(stored), Some(asked)) if stored != asked => {
            return Err(Error::InvalidArgument(format!(
                "{} holds a {stored} store, not {asked}",
                dir.display()
            )));
        }
        (Some(stored), _) => stored,
        (None, asked) => asked.unwrap_or_default(),
    };
    match engine {
        EngineKind::CommitLog => Ok(Box::new(CommitLogStore::open(dir, options)?)),
        EngineKind::Segmented => Ok(Box::new(SegmentedStore::open(dir, options)?)),
    }
}
