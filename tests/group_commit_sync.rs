//! Group commit across partitions: the segmented engine's group flush syncs its dirty
//! partitions concurrently (their syncs overlap) when syncs are slow, and on the flushing
//! thread alone when they are cheap; when one partition's sync fails in such a
//! flush the store is poisoned and no append of that partition is acknowledged: after a power
//! cut that drops everything unsynced, every acknowledged append of every engine is there.

mod common;

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use common::small_options;
use common::wrap::{FsHooks, WrapFs};
use duolog::io::{CrashMode, SimFs};
use duolog::{
    EngineKind, Error, FlushPolicy, LogStore, Message, ReadLimits, StoreOptions, TopicConfig,
};

const STORE: &str = "/store";
const PARTITIONS: u32 = 4;

/// Held by the tests that start sync threads, so one counting the process's threads sees
/// only its own store's.
static SYNC_THREADS: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Threads of this process named `duolog-sync` (a segmented store's sync pool).
fn live_sync_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "duolog-sync")
        .count()
}

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
    /// The helper threads that ran them.
    helper_threads: parking_lot::Mutex<HashSet<ThreadId>>,
    /// Fail every log sync run on a helper thread with EIO.
    fail_on_helpers: AtomicBool,
    /// The directory whose files' syncs fail with EIO.
    failing_dir: parking_lot::Mutex<Option<PathBuf>>,
}

impl Probe {
    fn around_sync(
        &self,
        path: &Path,
        inner: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        if self.failing_dir.lock().as_deref() == path.parent() {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        if path.extension() != Some("log".as_ref()) {
            return inner();
        }
        if std::thread::current().name() == Some("duolog-sync") {
            self.helper_syncs.fetch_add(1, Ordering::SeqCst);
            self.helper_threads
                .lock()
                .insert(std::thread::current().id());
            if self.fail_on_helpers.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
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

impl FsHooks for Probe {
    fn sync(&self, path: &Path, sync: &mut dyn FnMut() -> io::Result<()>) -> io::Result<()> {
        self.around_sync(path, sync)
    }
}

fn options(engine: EngineKind, sim: &SimFs, probe: &Arc<Probe>) -> StoreOptions {
    StoreOptions {
        flush: FlushPolicy::Sync,
        fs: WrapFs::new(sim.clone(), Arc::clone(probe)),
        ..small_options(engine)
    }
}

#[test]
fn a_segmented_group_flush_syncs_its_dirty_partitions_concurrently() {
    let _serial = SYNC_THREADS.lock();
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
    let _serial = SYNC_THREADS.lock();
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

/// Opens a segmented store of `partitions` partitions whose log syncs are slow (so its group
/// flushes use the sync pool) and returns it with one durable append made per partition.
fn slow_segmented_store(sim: &SimFs, probe: &Arc<Probe>, partitions: u32) -> Box<dyn LogStore> {
    let store = duolog::open(STORE, options(EngineKind::Segmented, sim, probe)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(partitions))
        .unwrap();
    probe.slow.store(true, Ordering::SeqCst);
    // Durable appends one at a time teach the store that its syncs are slow.
    for p in 0..partitions {
        store.append("t", p, &[Message::new("slow")]).unwrap();
    }
    store
}

/// One group flush of every partition: an async append to each, then a sync.
fn flush_all_partitions(store: &dyn LogStore, partitions: u32) -> Result<(), Error> {
    let pending: Vec<_> = (0..partitions)
        .map(|p| store.append_async("t", p, &[Message::new("m")]).unwrap())
        .collect();
    store.sync()?;
    for c in &pending {
        assert!(c.is_durable());
    }
    Ok(())
}

#[test]
fn a_segmented_store_reuses_at_most_15_sync_threads_across_flushes_and_joins_them_on_close() {
    let _serial = SYNC_THREADS.lock();
    assert_eq!(live_sync_threads(), 0);
    let sim = SimFs::new();
    let probe = Arc::new(Probe::default());
    // More dirty partitions than a flush syncs at once (16: the flushing thread and 15 helpers).
    let partitions = 20;
    let store = slow_segmented_store(&sim, &probe, partitions);
    for _ in 0..5 {
        flush_all_partitions(store.as_ref(), partitions).unwrap();
    }
    let helpers = probe.helper_threads.lock().len();
    assert!(
        (1..=15).contains(&helpers),
        "5 flushes of {partitions} partitions ran on {helpers} distinct sync threads"
    );
    // The threads wait for the next flush rather than end with each one.
    let live = live_sync_threads();
    assert!(
        (1..=15).contains(&live),
        "{live} sync threads alive between flushes"
    );
    store.close().unwrap();
    assert_eq!(live_sync_threads(), 0, "sync threads outlived the close");

    // A store dropped without `close` joins its sync threads too.
    let sim = SimFs::new();
    let store = slow_segmented_store(&sim, &probe, partitions);
    flush_all_partitions(store.as_ref(), partitions).unwrap();
    assert!(live_sync_threads() > 0);
    drop(store);
    assert_eq!(live_sync_threads(), 0, "sync threads outlived the drop");
}

#[test]
fn a_sync_error_on_a_sync_thread_fails_the_flush_and_acknowledges_nothing_of_it() {
    let _serial = SYNC_THREADS.lock();
    let sim = SimFs::new();
    let probe = Arc::new(Probe::default());
    let partitions = 8;
    let store = slow_segmented_store(&sim, &probe, partitions);
    probe.fail_on_helpers.store(true, Ordering::SeqCst);
    let pending: Vec<_> = (0..partitions)
        .map(|p| store.append_async("t", p, &[Message::new("m")]).unwrap())
        .collect();
    let r = store.sync();
    assert!(
        probe.helper_syncs.load(Ordering::SeqCst) > 0,
        "no sync ran on a sync thread"
    );
    assert!(
        matches!(r, Err(Error::Poisoned { .. }) | Err(Error::Io { .. })),
        "{r:?}"
    );
    // Not even the partitions the flushing thread synced itself: the flush covered them all.
    for c in &pending {
        assert!(
            !c.is_durable(),
            "an append of the failed flush was acknowledged"
        );
        assert!(c.wait().is_err());
    }
    assert!(matches!(
        store.append("t", 0, &[Message::new("after")]),
        Err(Error::Poisoned { .. })
    ));
    store.abandon();
}
