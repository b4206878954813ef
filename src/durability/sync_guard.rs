//! [`SyncGuardFs`]: the storage interface as an engine sees it, with one rule added: a failed
//! sync poisons the store.
//!
//! Linux reports a writeback error to one `fsync` and then forgets it (the pages are marked
//! clean, their data may be gone), so a later `fsync` that succeeds proves nothing about the
//! writes the failed one covered ("fsyncgate"). Whatever the code path — a group-commit flush,
//! a segment seal, a roll's directory sync, a checkpoint or catalog write, the key index — a
//! failed sync therefore turns the store read-only until it is reopened, and recovery decides
//! what really reached the disk. Wrapping the file system once, at `open`, covers every path of
//! both engines, including ones added later.
//!
//! Every method is forwarded, including those with default bodies (a default here would
//! silently change the wrapped storage's behaviour, e.g. claim a growable file fully allocated).
//!
//! What counts as a sync: [`StorageFile::sync_data`], [`MappedStorage::flush_range`] and
//! [`MappedStorage::zero_range`] (durable by contract), [`FileSystem::sync_dir`], and the sync
//! step of [`FileSystem::write_file_synced`] (which this wrapper performs as create, write,
//! sync, so that a write refused for lack of space stays a plain, recoverable error).

use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::GroupCommit;
use crate::io::{DirEntry, FileSystem, MapMode, MappedStorage, OpenMode, StorageFile};

/// A [`FileSystem`] that poisons its store's [`GroupCommit`] when a sync fails.
#[derive(Debug)]
pub(crate) struct SyncGuardFs {
    inner: Arc<dyn FileSystem>,
    gc: Arc<GroupCommit>,
}

impl SyncGuardFs {
    pub(crate) fn wrap(inner: Arc<dyn FileSystem>, gc: Arc<GroupCommit>) -> Arc<dyn FileSystem> {
        Arc::new(SyncGuardFs { inner, gc })
    }
}

fn guard<T>(gc: &GroupCommit, what: &str, path: &Path, r: io::Result<T>) -> io::Result<T> {
    if let Err(e) = &r {
        gc.poison(format!("{what} of {} failed: {e}", path.display()));
    }
    r
}

impl FileSystem for SyncGuardFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.inner.list_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.inner.file_len(path)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_file(path)
    }
    fn write_file_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        // Done in steps, so that a failed write (a full disk: the old file is untouched, the
        // caller's temp file is not) is a plain error and only a failed sync poisons.
        crate::io::remove_if_exists(self.inner.as_ref(), path)?;
        let f = self.inner.open_file(path, OpenMode::CreateNew)?;
        f.write_all_at(data, 0)?;
        let r = f.sync_data();
        guard(&self.gc, "fdatasync", path, r)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let r = self.inner.sync_dir(path);
        guard(&self.gc, "a directory sync", path, r)
    }
    fn map_file(&self, path: &Path, len: u64, mode: MapMode) -> io::Result<Box<dyn MappedStorage>> {
        let inner = self.inner.map_file(path, len, mode)?;
        Ok(Box::new(GuardedMap {
            inner,
            gc: Arc::clone(&self.gc),
            path: path.to_owned(),
        }))
    }
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let inner = self.inner.open_file(path, mode)?;
        Ok(Box::new(GuardedFile {
            inner,
            gc: Arc::clone(&self.gc),
            path: path.to_owned(),
        }))
    }
    fn lock_file(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.inner.lock_file(path)
    }
}

#[derive(Debug)]
struct GuardedFile {
    inner: Box<dyn StorageFile>,
    gc: Arc<GroupCommit>,
    path: std::path::PathBuf,
}

impl StorageFile for GuardedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(data, offset)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        let r = self.inner.sync_data();
        guard(&self.gc, "fdatasync", &self.path, r)
    }
}

#[derive(Debug)]
struct GuardedMap {
    inner: Box<dyn MappedStorage>,
    gc: Arc<GroupCommit>,
    path: std::path::PathBuf,
}

impl MappedStorage for GuardedMap {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn base_ptr(&self) -> *mut u8 {
        self.inner.base_ptr()
    }
    fn allocated(&self) -> usize {
        self.inner.allocated()
    }
    fn grow(&self, upto: usize) -> io::Result<()> {
        self.inner.grow(upto)
    }
    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        let r = self.inner.flush_range(offset, len);
        guard(&self.gc, "msync", &self.path, r)
    }
    fn zero_range(&self, offset: usize, len: usize) -> io::Result<()> {
        let r = self.inner.zero_range(offset, len);
        guard(&self.gc, "a durable zeroing", &self.path, r)
    }
    fn prefault(&self, offset: usize, len: usize) -> io::Result<()> {
        self.inner.prefault(offset, len)
    }
    fn set_random_access(&self, offset: usize, len: usize, random: bool) -> io::Result<()> {
        self.inner.set_random_access(offset, len, random)
    }
    fn release(&self, offset: usize, len: usize) -> io::Result<()> {
        self.inner.release(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::SimFs;
    use crate::{Error, FlushPolicy};

    #[test]
    fn a_failed_sync_poisons_and_a_later_success_does_not_clear_it() {
        let sim = SimFs::new();
        let gc = Arc::new(GroupCommit::new(0, FlushPolicy::Sync));
        let fs = SyncGuardFs::wrap(Arc::new(sim.clone()), Arc::clone(&gc));
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs
            .open_file(Path::new("/d/f"), OpenMode::CreateNew)
            .unwrap();
        f.write_all_at(b"abc", 0).unwrap();
        assert!(gc.check_writable().is_ok(), "writes alone do not poison");
        sim.fail_syncs(true);
        assert!(f.sync_data().is_err());
        sim.clear_faults();
        f.sync_data().unwrap();
        assert!(matches!(gc.check_writable(), Err(Error::Poisoned { .. })));
    }
}
