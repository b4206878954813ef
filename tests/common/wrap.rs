//! Wrappers that forward every call and let a test watch, hold or fail some of them, so a
//! method added to a trait is forwarded in one place:
//! - [`Wrapped`]: a `LogStore` around a real store ([`Hooks`]): counting what a layer reads,
//!   gating an append;
//! - [`WrapFs`]: a `FileSystem` around the real or the simulated disk ([`FsHooks`]), with its
//!   files and mappings: injecting faults, holding a sync, counting calls.

use std::any::Any;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use duolog::durability::{Completion, Wakeup};
use duolog::io::{DirEntry, FileSystem, MapMode, MappedStorage, OpenMode, StorageFile};
use duolog::{
    AppendResult, CompactionReport, DiskUsage, EngineKind, KeyMatch, LogStore, Message,
    PartitionBounds, ReadLimits, Record, TopicConfig, VerifyReport,
};

/// What a test does around the calls it cares about; every method defaults to nothing.
pub trait Hooks: Send + Sync + fmt::Debug {
    /// Before a synchronous `append` reaches the store.
    fn before_append(&self, _topic: &str, _partition: u32, _messages: &[Message]) {}
    /// After `fetch` or `read` returned these records.
    fn after_read(&self, _topic: &str, _partition: u32, _records: &[Record]) {}
    /// Before `sync` reaches the store.
    fn before_sync(&self) {}
    /// Before `append_async` reaches the store; an error is returned instead (nothing written).
    fn before_append_async(&self, _dir: &Path, _topic: &str) -> duolog::Result<()> {
        Ok(())
    }
    /// After a transactional append landed; an error replaces its result (a lost reply).
    fn after_append_transactional(&self, _dir: &Path) -> duolog::Result<()> {
        Ok(())
    }
    /// Before `write_marker` reaches the store.
    fn before_marker(&self) {}
    /// After `write_marker` returned.
    fn after_marker(&self) {}
}

/// `inner` with `hooks` around some calls.
#[derive(Debug)]
pub struct Wrapped<H> {
    pub inner: Arc<dyn LogStore>,
    pub hooks: H,
}

impl<H> Wrapped<H> {
    pub fn new(inner: Arc<dyn LogStore>, hooks: H) -> Arc<Wrapped<H>> {
        Arc::new(Wrapped { inner, hooks })
    }
}

impl<H: Hooks> LogStore for Wrapped<H> {
    fn engine(&self) -> EngineKind {
        self.inner.engine()
    }
    fn dir(&self) -> &Path {
        self.inner.dir()
    }
    fn create_topic(&self, name: &str, config: TopicConfig) -> duolog::Result<()> {
        self.inner.create_topic(name, config)
    }
    fn describe_topic(&self, name: &str) -> duolog::Result<TopicConfig> {
        self.inner.describe_topic(name)
    }
    fn topic_id(&self, name: &str) -> duolog::Result<u64> {
        self.inner.topic_id(name)
    }
    fn alter_topic(&self, name: &str, config: TopicConfig) -> duolog::Result<()> {
        self.inner.alter_topic(name, config)
    }
    fn add_partitions(&self, name: &str, count: u32) -> duolog::Result<u32> {
        self.inner.add_partitions(name, count)
    }
    fn delete_topic(&self, name: &str) -> duolog::Result<()> {
        self.inner.delete_topic(name)
    }
    fn list_topics(&self, include_internal: bool) -> Vec<String> {
        self.inner.list_topics(include_internal)
    }
    fn allocate_producer_id(&self) -> duolog::Result<i64> {
        self.inner.allocate_producer_id()
    }
    fn append_idempotent(
        &self,
        topic: &str,
        partition: u32,
        producer: duolog::ProducerId,
        base_sequence: i32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
        self.inner
            .append_idempotent(topic, partition, producer, base_sequence, messages)
    }
    fn producer_state(
        &self,
        topic: &str,
        partition: u32,
    ) -> duolog::Result<Vec<duolog::ProducerEntry>> {
        self.inner.producer_state(topic, partition)
    }
    fn append(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
        self.hooks.before_append(topic, partition, messages);
        self.inner.append(topic, partition, messages)
    }
    fn append_oneway(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> duolog::Result<AppendResult> {
        self.inner.append_oneway(topic, partition, messages)
    }
    fn append_async(
        &self,
        topic: &str,
        partition: u32,
        messages: &[Message],
    ) -> duolog::Result<Completion> {
        self.hooks.before_append_async(self.inner.dir(), topic)?;
        self.inner.append_async(topic, partition, messages)
    }
    fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        producer: duolog::ProducerId,
        base_sequence: i32,
        messages: &[duolog::Message],
    ) -> duolog::Result<AppendResult> {
        let r =
            self.inner
                .append_transactional(topic, partition, producer, base_sequence, messages)?;
        self.hooks.after_append_transactional(self.inner.dir())?;
        Ok(r)
    }
    fn write_marker(
        &self,
        topic: &str,
        partition: u32,
        producer: duolog::ProducerId,
        marker: duolog::TxnMarker,
        coordinator_epoch: i32,
    ) -> duolog::Result<Option<u64>> {
        self.hooks.before_marker();
        let r = self
            .inner
            .write_marker(topic, partition, producer, marker, coordinator_epoch);
        self.hooks.after_marker();
        r
    }
    fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> duolog::Result<duolog::Fetch> {
        let fetch = self.inner.fetch(topic, partition, offset, limits)?;
        self.hooks.after_read(topic, partition, &fetch.records);
        Ok(fetch)
    }
    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> duolog::Result<Vec<Record>> {
        let records = self.inner.read(topic, partition, offset, limits)?;
        self.hooks.after_read(topic, partition, &records);
        Ok(records)
    }
    fn bounds(&self, topic: &str, partition: u32) -> duolog::Result<PartitionBounds> {
        self.inner.bounds(topic, partition)
    }
    fn sync(&self) -> duolog::Result<()> {
        self.hooks.before_sync();
        self.inner.sync()
    }
    fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> duolog::Result<bool> {
        self.inner.wait_for(topic, partition, offset, timeout)
    }
    fn wait_for_any_with(
        &self,
        positions: &[(&str, u32, u64)],
        timeout: Duration,
        wakeup: &Wakeup,
    ) -> duolog::Result<bool> {
        self.inner.wait_for_any_with(positions, timeout, wakeup)
    }
    fn delete_before(&self, topic: &str, partition: u32, offset: u64) -> duolog::Result<u64> {
        self.inner.delete_before(topic, partition, offset)
    }
    fn find_by_key(
        &self,
        topic: &str,
        key: &str,
        time_range: (i64, i64),
        limit: usize,
    ) -> duolog::Result<Vec<KeyMatch>> {
        self.inner.find_by_key(topic, key, time_range, limit)
    }
    fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> duolog::Result<Option<u64>> {
        self.inner.offset_for_time(topic, partition, timestamp)
    }
    fn reindex(&self) -> duolog::Result<u64> {
        self.inner.reindex()
    }
    fn enforce_retention(&self) -> duolog::Result<usize> {
        self.inner.enforce_retention()
    }
    fn compact(&self, topic: Option<&str>) -> duolog::Result<CompactionReport> {
        self.inner.compact(topic)
    }
    fn partition_bytes(&self, topic: &str, partition: u32) -> duolog::Result<u64> {
        self.inner.partition_bytes(topic, partition)
    }
    fn disk_usage(&self) -> duolog::Result<DiskUsage> {
        self.inner.disk_usage()
    }
    fn verify(&self) -> duolog::Result<VerifyReport> {
        self.inner.verify()
    }
    fn close(&self) -> duolog::Result<()> {
        self.inner.close()
    }
    fn abandon(&self) {
        self.inner.abandon()
    }
}

/// A file-system call [`FsHooks`] sees (data syncs have [`FsHooks::sync`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsCall {
    CreateDirAll,
    ListDir,
    Exists,
    FileLen,
    ReadFile,
    WriteFileSynced,
    /// On its source path.
    Rename,
    RemoveFile,
    RemoveDir,
    SyncDir,
    MapFile(MapMode),
    OpenFile(OpenMode),
    LockFile,
    /// `MappedStorage::grow` of a mapped file.
    Grow,
    /// `StorageFile::allocate` of a positional file.
    Allocate,
}

/// What a test does around the file-system calls it cares about; every method defaults to
/// passing the call through.
pub trait FsHooks: Send + Sync + fmt::Debug {
    /// Before `call` on `path`: an error is returned instead of making the call (a fault).
    fn before(&self, _call: FsCall, _path: &Path) -> io::Result<()> {
        Ok(())
    }
    /// After `call` on `path` returned, whatever it returned.
    fn after(&self, _call: FsCall, _path: &Path) {}
    /// A data sync of `path` (`sync_data` of a positional file, `flush_range` of a mapped
    /// one): runs `sync` (or not) and returns what the caller gets.
    fn sync(&self, _path: &Path, sync: &mut dyn FnMut() -> io::Result<()>) -> io::Result<()> {
        sync()
    }
}

/// `inner` (the real disk or a `SimFs`) with `hooks` around its calls, its files' and its
/// mappings'.
#[derive(Debug)]
pub struct WrapFs<H> {
    pub inner: Arc<dyn FileSystem>,
    pub hooks: Arc<H>,
}

impl<H> WrapFs<H> {
    pub fn new(inner: impl FileSystem + 'static, hooks: Arc<H>) -> Arc<WrapFs<H>> {
        Arc::new(WrapFs {
            inner: Arc::new(inner),
            hooks,
        })
    }
}

impl<H: FsHooks> WrapFs<H> {
    fn call<T>(
        &self,
        call: FsCall,
        path: &Path,
        f: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        self.hooks.before(call, path)?;
        let r = f();
        self.hooks.after(call, path);
        r
    }
}

#[derive(Debug)]
struct WrapFile<H> {
    inner: Box<dyn StorageFile>,
    hooks: Arc<H>,
    path: PathBuf,
}

impl<H: FsHooks> StorageFile for WrapFile<H> {
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
        self.hooks.before(FsCall::Allocate, &self.path)?;
        let r = self.inner.allocate(len);
        self.hooks.after(FsCall::Allocate, &self.path);
        r
    }
    fn sync_data(&self) -> io::Result<()> {
        self.hooks.sync(&self.path, &mut || self.inner.sync_data())
    }
}

#[derive(Debug)]
struct WrapMap<H> {
    inner: Box<dyn MappedStorage>,
    hooks: Arc<H>,
    path: PathBuf,
}

impl<H: FsHooks> MappedStorage for WrapMap<H> {
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
        self.hooks.before(FsCall::Grow, &self.path)?;
        let r = self.inner.grow(upto);
        self.hooks.after(FsCall::Grow, &self.path);
        r
    }
    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.hooks
            .sync(&self.path, &mut || self.inner.flush_range(offset, len))
    }
    fn zero_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.inner.zero_range(offset, len)
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

impl<H: FsHooks + 'static> FileSystem for WrapFs<H> {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.call(FsCall::CreateDirAll, path, || {
            self.inner.create_dir_all(path)
        })
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.call(FsCall::ListDir, path, || self.inner.list_dir(path))
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.call(FsCall::Exists, path, || self.inner.exists(path))
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.call(FsCall::FileLen, path, || self.inner.file_len(path))
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.call(FsCall::ReadFile, path, || self.inner.read_file(path))
    }
    fn write_file_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.call(FsCall::WriteFileSynced, path, || {
            self.inner.write_file_synced(path, data)
        })
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.call(FsCall::Rename, from, || self.inner.rename(from, to))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.call(FsCall::RemoveFile, path, || self.inner.remove_file(path))
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.call(FsCall::RemoveDir, path, || self.inner.remove_dir(path))
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.call(FsCall::SyncDir, path, || self.inner.sync_dir(path))
    }
    fn map_file(&self, path: &Path, len: u64, mode: MapMode) -> io::Result<Box<dyn MappedStorage>> {
        let inner = self.call(FsCall::MapFile(mode), path, || {
            self.inner.map_file(path, len, mode)
        })?;
        Ok(Box::new(WrapMap {
            inner,
            hooks: Arc::clone(&self.hooks),
            path: path.to_owned(),
        }))
    }
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let inner = self.call(FsCall::OpenFile(mode), path, || {
            self.inner.open_file(path, mode)
        })?;
        Ok(Box::new(WrapFile {
            inner,
            hooks: Arc::clone(&self.hooks),
            path: path.to_owned(),
        }))
    }
    fn lock_file(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.call(FsCall::LockFile, path, || self.inner.lock_file(path))
    }
}
