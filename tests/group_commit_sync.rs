//! Group commit across partitions: the segmented engine's group flush syncs its dirty
//! partitions concurrently (their syncs overlap) when syncs are slow, and on the flushing
//! thread alone when they are cheap; when one partition's sync fails in such a
//! flush the store is poisoned and no append of that partition is acknowledged: after a power
//! cut that drops everything unsynced, every acknowledged append of every engine is there.

mod common;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::small_options;
use common::wrap::{FsHooks, WrapFs};
use duolog::io::{CrashMode, SimFs};
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
