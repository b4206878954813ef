//! Faults injected through the storage interface: a failed fsync poisons the store; a full disk
//! at a file roll fails the append cleanly, keeps everything readable, and appends work again
//! once space returns.

mod common;

use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::small_options;
use duolog::io::{DirEntry, FileSystem, MapMode, MappedStorage, OpenMode, RealFs, StorageFile};
use duolog::{EngineKind, Error, FlushPolicy, Message, ReadLimits, StoreOptions, TopicConfig};

#[derive(Debug, Default)]
struct Faults {
    fail_flush: AtomicBool,
    disk_full: AtomicBool,
}

#[derive(Debug)]
struct FaultyFs {
    real: RealFs,
    faults: Arc<Faults>,
}

#[derive(Debug)]
struct FaultyMapped {
    inner: Box<dyn MappedStorage>,
    faults: Arc<Faults>,
}

impl MappedStorage for FaultyMapped {
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
        if self.faults.disk_full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.grow(upto)
    }
    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        if self.faults.fail_flush.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.flush_range(offset, len)
    }
    fn zero_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.inner.zero_range(offset, len)
    }
}

/// A positional file whose data sync fails on demand.
#[derive(Debug)]
struct FaultyFile {
    inner: Box<dyn StorageFile>,
    faults: Arc<Faults>,
}

impl StorageFile for FaultyFile {
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
    fn sync_data(&self) -> io::Result<()> {
        if self.faults.fail_flush.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.sync_data()
    }
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28) // ENOSPC
}

impl FileSystem for FaultyFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.real.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.real.list_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.real.exists(path)
    }
    fn file_len(&self, path: &Path) -> io::Result<u64> {
        self.real.file_len(path)
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.real.read_file(path)
    }
    fn write_file_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if self.faults.disk_full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.real.write_file_synced(path, data)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.real.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.real.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.real.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.real.sync_dir(path)
    }
    fn map_file(&self, path: &Path, len: u64, mode: MapMode) -> io::Result<Box<dyn MappedStorage>> {
        if mode == MapMode::Create && self.faults.disk_full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        let inner = self.real.map_file(path, len, mode)?;
        Ok(Box::new(FaultyMapped {
            inner,
            faults: Arc::clone(&self.faults),
        }))
    }
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        if mode == OpenMode::CreateNew && self.faults.disk_full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        let inner = self.real.open_file(path, mode)?;
        Ok(Box::new(FaultyFile {
            inner,
            faults: Arc::clone(&self.faults),
        }))
    }
    fn lock_file(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.real.lock_file(path)
    }
}

fn faulty_options(engine: EngineKind, flush: FlushPolicy) -> (StoreOptions, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let fs = FaultyFs {
        real: RealFs,
        faults: Arc::clone(&faults),
    };
    let opts = StoreOptions {
        flush,
        fs: Arc::new(fs),
        ..small_options(engine)
    };
    (opts, faults)
}

#[test]
fn failed_fsync_poisons_the_store_until_reopened() {
    common::for_each_engine(|engine, dir| {
        let (opts, faults) = faulty_options(engine, FlushPolicy::Sync);
        let store = duolog::open(dir, opts.clone()).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        store.append("t", 0, &[Message::new("durable")]).unwrap();
        faults.fail_flush.store(true, Ordering::SeqCst);
        let err = store
            .append("t", 0, &[Message::new("not durable")])
            .unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "{err}");
        faults.fail_flush.store(false, Ordering::SeqCst);
        // No retry-and-pretend: the store stays poisoned although fsync works again.
        assert!(matches!(
            store.append("t", 0, &[Message::new("x")]),
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(store.sync(), Err(Error::Poisoned { .. })));
        // Reads still work.
        assert_eq!(
            store.read("t", 0, 0, ReadLimits::default()).unwrap()[0].body(),
            b"durable"
        );
        let _ = store.close();
        drop(store);
        let store = duolog::open(dir, opts).unwrap();
        assert_eq!(
            store.read("t", 0, 0, ReadLimits::messages(1)).unwrap()[0].body(),
            b"durable"
        );
        store
            .append("t", 0, &[Message::new("after reopen")])
            .unwrap();
    });
}

#[test]
fn async_completion_reports_a_failed_fsync() {
    common::for_each_engine(|engine, dir| {
        let (opts, faults) = faulty_options(engine, FlushPolicy::default());
        let store = duolog::open(dir, opts).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        faults.fail_flush.store(true, Ordering::SeqCst);
        let c = store.append_async("t", 0, &[Message::new("x")]).unwrap();
        assert!(matches!(c.wait(), Err(Error::Poisoned { .. })));
    });
}

#[test]
fn full_disk_at_a_roll_fails_cleanly_and_recovers_when_space_returns() {
    common::for_each_engine(|engine, dir| {
        let (opts, faults) = faulty_options(engine, FlushPolicy::Sync);
        let store = duolog::open(dir, opts).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        // A first record creates the first files while there is space.
        store
            .append("t", 0, &[Message::new(vec![b'f'; 1000]).with_key("0")])
            .unwrap();
        let mut acked = 1u64;
        faults.disk_full.store(true, Ordering::SeqCst);
        // Append until the 64 KiB log file is full and a new file is needed.
        let err = loop {
            match store.append(
                "t",
                0,
                &[Message::new(vec![b'f'; 1000]).with_key(format!("{acked}"))],
            ) {
                Ok(r) => {
                    assert_eq!(r.base_offset, acked);
                    acked += 1;
                }
                Err(e) => break e,
            }
            assert!(acked < 1000, "the disk never filled");
        };
        assert!(err.is_storage_full(), "{err}");
        // Nothing of the failed batch is visible; everything acknowledged reads back.
        assert_eq!(store.bounds("t", 0).unwrap().end, acked);
        assert_eq!(
            store
                .read("t", 0, 0, ReadLimits::messages(10_000))
                .unwrap()
                .len() as u64,
            acked
        );
        faults.disk_full.store(false, Ordering::SeqCst);
        assert_eq!(
            store
                .append("t", 0, &[Message::new("space again")])
                .unwrap()
                .base_offset,
            acked
        );
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
    });
}
