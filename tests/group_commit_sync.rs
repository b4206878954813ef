//! Group commit across partitions: the segmented engine's group flush syncs its dirty
//! partitions concurrently (their syncs overlap) when syncs are slow, and on the flushing
//! thread alone when they are cheap; when one partition's sync fails in such a
//! flush the store is poisoned and no append of that partition is acknowledged: after a power
//! cut that drops everything unsynced, every acknowledged append of every engine is there.

mod common;

use std::any::Any;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::small_options;
use duolog::io::{
    CrashMode, DirEntry, FileSystem, MapMode, MappedStorage, OpenMode, SimFs, StorageFile,
};
use duolog::{
    EngineKind, Error, FlushPolicy, LogStore, Message, ReadLimits, StoreOptions, TopicConfig,
};

const STORE: &str = "/store";
const PARTITIONS: u32 = 4;

/// What the probe does to the syncs of the segments' log files (`*.log`).
#[derive(Debug, Default)]
struct Probe {
    /// Hold each log sync until another is in flight too (or a second passes), and count
    /// the most in flight at once.
    gate: AtomicBool,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Make every log sync take a few milliseconds, as a disk's fdatasync may.
    slow: AtomicBool,
    /// Log syncs run on a group flush's helper threads.
    helper_syncs: AtomicUsize,
    /// The directory whose files' syncs fail with EIO.
    failing_dir: parking_lot::Mutex<Option<PathBuf>>,
}

impl Probe {
    fn sync(&self, path: &Path, inner: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        if self.failing_dir.lock().as_deref() == path.parent() {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        if path.extension() != Some("log".as_ref()) {
            return inner();
        }
        if std::thread::current().name() == Some("duolog-sync") {
            self.helper_syncs.fetch_add(1, Ordering::SeqCst);
        }
        if self.slow.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !self.gate.load(Ordering::SeqCst) {
            return inner();
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        // A serial flush never gets a second sync in flight: it waits out the second here.
        let until = Instant::now() + Duration::from_secs(1);
        while self.in_flight.load(Ordering::SeqCst) < 2 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = inner();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

#[derive(Debug)]
struct ProbeFs {
    inner: SimFs,
    probe: Arc<Probe>,
}

#[derive(Debug)]
struct ProbeMap {
    inner: Box<dyn MappedStorage>,
    probe: Arc<Probe>,
    path: PathBuf,
}

impl MappedStorage for ProbeMap {
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
        self.probe
            .sync(&self.path, || self.inner.flush_range(offset, len))
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

#[derive(Debug)]
struct ProbeFile {
    inner: Box<dyn StorageFile>,
    probe: Arc<Probe>,
    path: PathBuf,
}

impl StorageFile for ProbeFile {
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
        self.probe.sync(&self.path, || self.inner.sync_data())
    }
}

impl FileSystem for ProbeFs {
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
        self.inner.write_file_synced(path, data)
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
        self.inner.sync_dir(path)
    }
    fn map_file(&self, path: &Path, len: u64, mode: MapMode) -> io::Result<Box<dyn MappedStorage>> {
        Ok(Box::new(ProbeMap {
            inner: self.inner.map_file(path, len, mode)?,
            probe: Arc::clone(&self.probe),
            path: path.to_owned(),
        }))
    }
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(ProbeFile {
            inner: self.inner.open_file(path, mode)?,
            probe: Arc::clone(&self.probe),
            path: path.to_owned(),
        }))
    }
    fn lock_file(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.inner.lock_file(path)
    }
}

fn options(engine: EngineKind, sim: &SimFs, probe: &Arc<Probe>) -> StoreOptions {
    StoreOptions {
        flush: FlushPolicy::Sync,
        fs: Arc::new(ProbeFs {
            inner: sim.clone(),
            probe: Arc::clone(probe),
        }),
        ..small_options(engine)
    }
}

#[test]
fn a_segmented_group_flush_syncs_its_dirty_partitions_concurrently() {
    let sim = SimFs::new();
    let probe = Arc::new(Probe::default());
    let store = duolog::open(STORE, options(EngineKind::Segmented, &sim, &probe)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    // Durable appends one at a time teach the store that its syncs are slow.
    probe.slow.store(true, Ordering::SeqCst);
    for p in 0..PARTITIONS {
        store.append("t", p, &[Message::new("slow")]).unwrap();
    }
    // Not acknowledged yet: the partitions wait dirty for one flush.
    let pending: Vec<_> = (0..PARTITIONS)
        .map(|p| store.append_async("t", p, &[Message::new("m")]).unwrap())
        .collect();
    probe.gate.store(true, Ordering::SeqCst);
    store.sync().unwrap();
    probe.gate.store(false, Ordering::SeqCst);
    for c in &pending {
        assert!(c.is_durable());
    }
    assert!(
        probe.most_in_flight.load(Ordering::SeqCst) >= 2,
        "the {PARTITIONS} partitions' syncs never overlapped"
    );
}

#[test]
fn a_segmented_group_flush_of_cheap_syncs_runs_on_the_flushing_thread_alone() {
    let sim = SimFs::new();
    let probe = Arc::new(Probe::default());
    let store = duolog::open(STORE, options(EngineKind::Segmented, &sim, &probe)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    // The simulated disk syncs in microseconds.
    for p in 0..PARTITIONS {
        store.append("t", p, &[Message::new("fast")]).unwrap();
    }
    let pending: Vec<_> = (0..PARTITIONS)
        .map(|p| store.append_async("t", p, &[Message::new("m")]).unwrap())
        .collect();
    store.sync().unwrap();
    for c in &pending {
        assert!(c.is_durable());
    }
    assert_eq!(
        probe.helper_syncs.load(Ordering::SeqCst),
        0,
        "cheap syncs were handed to helper threads"
    );
}

/// Threads append durably to every partition while one partition's log syncs fail (syncs
/// slow, so a segmented flush of several partitions runs them concurrently): the store
/// turns `Poisoned`, nothing the failing partition appended since is acknowledged, and after a
/// power cut every acknowledged append of every partition reads back.
fn one_failed_partition_sync_acknowledges_nothing_unsynced(engine: EngineKind) {
    let sim = SimFs::new();
    let probe = Arc::new(Probe::default());
    let store: Arc<dyn LogStore> =
        Arc::from(duolog::open(STORE, options(engine, &sim, &probe)).unwrap());
    store
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    // Slow syncs, so the segmented engine's flushes run on helper threads.
    probe.slow.store(true, Ordering::SeqCst);
    for p in 0..PARTITIONS {
        store.append("t", p, &[Message::new("before")]).unwrap();
    }
    // The segmented engine's partition 1 (directory `t-1`); the CommitLog engine has one log,
    // so there every sync of it fails.
    let failing = match engine {
        EngineKind::Segmented => Path::new(STORE).join("t-1"),
        _ => Path::new(STORE).join("commitlog"),
    };
    *probe.failing_dir.lock() = Some(failing);
    let acked: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..PARTITIONS * 2)
            .map(|t| {
                let store = Arc::clone(&store);
                s.spawn(move || {
                    let p = t % PARTITIONS;
                    let mut acked = Vec::new();
                    for i in 0..50u32 {
                        let body = format!("{t}/{i}");
                        match store.append("t", p, &[Message::new(body.clone())]) {
                            Ok(r) => acked.push((p, r.base_offset, body)),
                            Err(Error::Poisoned { .. }) => break,
                            Err(e) => panic!("append: {e}"),
                        }
                    }
                    acked
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    if engine == EngineKind::Segmented {
        assert!(
            acked.iter().all(|(p, ..)| *p != 1),
            "an append to the partition whose sync failed was acknowledged"
        );
    }
    assert!(
        matches!(
            store.append("t", 0, &[Message::new("after")]),
            Err(Error::Poisoned { .. })
        ),
        "a failed sync poisons the store"
    );
    store.abandon();
    drop(store);
    let sim = sim.crash(CrashMode::DropUnsynced, 1);
    let store = duolog::open(STORE, options(engine, &sim, &Arc::default())).unwrap();
    for (p, offset, body) in &acked {
        let got = store
            .read("t", *p, *offset, ReadLimits::messages(1))
            .unwrap_or_else(|e| panic!("{engine}: acknowledged {body} at {p}/{offset}: {e}"));
        assert_eq!(
            got.first().map(|r| r.value()),
            Some(Some(body.as_bytes())),
            "{engine}: acknowledged {body} at {p}/{offset} was lost"
        );
    }
}

#[test]
fn a_failed_partition_sync_in_a_segmented_group_flush_acknowledges_nothing_unsynced() {
    one_failed_partition_sync_acknowledges_nothing_unsynced(EngineKind::Segmented);
}

#[test]
fn a_failed_sync_in_a_commitlog_group_flush_acknowledges_nothing_unsynced() {
    one_failed_partition_sync_acknowledges_nothing_unsynced(EngineKind::CommitLog);
}
