//! Review (branch `review-w`): the segmented engine's deferred directory sync of new segments.
//! `Partition::dir_unsynced` is cleared by whoever swaps it first, before that caller's
//! directory fsync has happened (or even before the files it stands for exist), so another
//! flush of the same partition can find it clear and claim a batch durable while the name of
//! the batch's segment file is not: after a power cut the acknowledged batch is gone.
//! Both tests run on the simulated disk, with a wrapper that holds one file-system call of one
//! named thread so the interleaving is deterministic.

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use common::wrap::{FsCall, FsHooks, WrapFs};
use duolog::io::{CrashMode, FileSystem, SimFs};
use duolog::{
    EngineKind, FlushPolicy, IndexOptions, LogStore, Message, ReadLimits, SegmentedOptions,
    StoreOptions, TopicConfig,
};

const STORE: &str = "/store";
const PART_DIR: &str = "/store/t-0";

/// Holds the first call of one kind, on a path ending in `suffix`, made by the thread named
/// `thread`, until released.
#[derive(Debug, Default)]
struct Hold {
    armed: Mutex<Option<(String, String)>>,
    held: AtomicBool,
    open: Mutex<bool>,
    cv: Condvar,
}

impl Hold {
    fn arm(&self, thread: &str, suffix: &str) {
        *self.open.lock().unwrap() = false;
        self.held.store(false, Ordering::SeqCst);
        *self.armed.lock().unwrap() = Some((thread.to_owned(), suffix.to_owned()));
    }

    fn pass(&self, path: &Path) {
        let hit = {
            let mut armed = self.armed.lock().unwrap();
            let name = std::thread::current().name().map(str::to_owned);
            let m = armed.as_ref().is_some_and(|(t, s)| {
                name.as_deref() == Some(t.as_str()) && path.to_string_lossy().ends_with(s.as_str())
            });
            if m {
                *armed = None;
            }
            m
        };
        if !hit {
            return;
        }
        self.held.store(true, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }

    fn wait_held(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        while !self.held.load(Ordering::SeqCst) {
            assert!(Instant::now() < until, "the call to hold never came");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn release(&self) {
        *self.armed.lock().unwrap() = None;
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

#[derive(Debug, Default)]
struct Holds {
    sync_dir: Hold,
    map_file: Hold,
    /// (The store writes its synced files through `open_file`.)
    open_file: Hold,
    /// Syncs of the partition directory so far.
    part_dir_syncs: AtomicUsize,
}

impl FsHooks for Holds {
    fn before(&self, call: FsCall, path: &Path) -> io::Result<()> {
        match call {
            FsCall::SyncDir => self.sync_dir.pass(path),
            FsCall::MapFile(_) => self.map_file.pass(path),
            FsCall::OpenFile(_) => self.open_file.pass(path),
            _ => {}
        }
        Ok(())
    }
    fn after(&self, call: FsCall, path: &Path) {
        if call == FsCall::SyncDir && path == Path::new(PART_DIR) {
            self.part_dir_syncs.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn options(fs: Arc<dyn FileSystem>, flush: FlushPolicy) -> StoreOptions {
    StoreOptions {
        engine: Some(EngineKind::Segmented),
        flush,
        fs,
        index: IndexOptions {
            enabled: false,
            ..IndexOptions::default()
        },
        segmented: SegmentedOptions {
            segment_bytes: 1024,
            index_interval_bytes: 256,
            max_index_bytes: 4096,
            ..SegmentedOptions::default()
        },
        ..StoreOptions::default()
    }
}

fn msg(tag: u8, len: usize) -> Message {
    Message::new(vec![tag; len])
}

/// Runs `f` on a thread named `name`.
fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .unwrap()
}

/// Appends `m` (then `sync`s unless the policy is `Sync`) on another thread; the offset if
/// that returned within two seconds (acknowledged), `None` if it is still waiting.
fn acknowledged_within(
    store: &Arc<dyn LogStore>,
    m: Message,
    sync: bool,
) -> (Option<u64>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let s = Arc::clone(store);
    let t = on_thread("appender-b", move || {
        let r = s.append("t", 0, &[m]).map(|r| r.base_offset);
        let r = r.and_then(|o| if sync { s.sync().map(|_| o) } else { Ok(o) });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(r) => (Some(r.expect("append B")), t),
        Err(_) => (None, t),
    }
}

/// After a power cut, the acknowledged batch at `offset` (a body of `tag` bytes) must be there.
fn assert_survives(after: SimFs, offset: u64, tag: u8) {
    let store = duolog::open(
        STORE,
        options(
            Arc::new(after),
            FlushPolicy::Async {
                interval: Duration::from_millis(50),
            },
        ),
    )
    .expect("reopen after the power cut");
    let b = store.bounds("t", 0).unwrap();
    assert!(
        b.end > offset,
        "acknowledged offset {offset} lost by a power cut: the partition ends at {} (its \
         segment's file name was never made durable)",
        b.end
    );
    let f = store
        .fetch("t", 0, offset, ReadLimits::messages(1))
        .unwrap();
    assert_eq!(f.records[0].offset(), offset);
    assert!(f.records[0].body().iter().all(|&b| b == tag));
}

/// A roll's seal swaps `dir_unsynced` to false and then syncs the directory; a flush of the
/// same partition in between sees it false, skips the directory sync and acknowledges a batch
/// of the new segment, whose file name is not durable until the seal's sync completes.
#[test]
fn a_flush_during_a_seals_directory_sync_does_not_ack_an_unnamed_segment() {
    let sim = SimFs::new();
    let holds = Arc::new(Holds::default());
    let fs = WrapFs::new(sim.clone(), Arc::clone(&holds));
    let store: Arc<dyn LogStore> =
        Arc::from(duolog::open(STORE, options(fs, FlushPolicy::Sync)).unwrap());
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    // Segment 0, durable (its directory synced by this flush).
    assert_eq!(
        store.append("t", 0, &[msg(b'0', 500)]).unwrap().base_offset,
        0
    );

    // A's append rolls: its seal swaps the flag and syncs the directory, held here.
    holds.sync_dir.arm("appender-a", PART_DIR);
    let s = Arc::clone(&store);
    let a = on_thread("appender-a", move || {
        let _ = s.append("t", 0, &[msg(b'A', 600)]);
    });
    holds.sync_dir.wait_held();

    // B lands in the new segment and is acknowledged (FlushPolicy::Sync) while the
    // directory naming that segment is still unsynced.
    let (acked, b) = acknowledged_within(&store, msg(b'B', 10), false);
    let Some(offset) = acked else {
        // B waits for the directory sync: release it and check the same thing after.
        holds.sync_dir.release();
        a.join().unwrap();
        b.join().unwrap();
        return;
    };
    store.abandon();
    let after = sim.crash(CrashMode::DropUnsynced, 0);
    holds.sync_dir.release();
    a.join().unwrap();
    b.join().unwrap();
    assert_survives(after, offset, b'B');
}

/// `create_segment` sets `dir_unsynced` before it creates the files: a flush already past its
/// log syncs can clear the flag and sync the directory between the two, so the directory sync
/// that consumed the flag predates the new segment's name, and the next flush, finding the flag
/// clear, acknowledges a batch of the new segment with its name never synced.
#[test]
fn a_flush_racing_a_roll_does_not_consume_the_directory_flag_before_the_files_exist() {
    let sim = SimFs::new();
    let holds = Arc::new(Holds::default());
    let fs = WrapFs::new(sim.clone(), Arc::clone(&holds));
    let store: Arc<dyn LogStore> = Arc::from(
        duolog::open(
            STORE,
            options(
                fs,
                FlushPolicy::Async {
                    interval: Duration::MAX,
                },
            ),
        )
        .unwrap(),
    );
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    assert_eq!(
        store.append("t", 0, &[msg(b'0', 500)]).unwrap().base_offset,
        0
    );
    store.sync().unwrap();
    // Unsynced data, so the next flush has work on this partition.
    assert_eq!(
        store.append("t", 0, &[msg(b'1', 100)]).unwrap().base_offset,
        1
    );

    // F: a flush that has read the partition's end and is in its log sync (held).
    sim.hold_mapped_flushes(true);
    let s = Arc::clone(&store);
    let f = on_thread("flusher-f", move || s.sync());
    let until = Instant::now() + Duration::from_secs(10);
    while sim.held_mapped_flushes() == 0 {
        assert!(Instant::now() < until, "F never reached its log sync");
        std::thread::sleep(Duration::from_millis(1));
    }

    // A: an append that rolls, held while it creates the new segment's log (the flag is set).
    holds.map_file.arm("appender-a", "00000000000000000002.log");
    let s = Arc::clone(&store);
    let a = on_thread("appender-a", move || {
        let _ = s.append("t", 0, &[msg(b'A', 400)]);
    });
    holds.map_file.wait_held();

    // F goes on past its directory step while A creates the new segment's files: before the
    // fix it swapped the flag A had set early and synced a directory not naming the new log
    // yet; with the flag set only once the files exist, F finds nothing to sync and finishes.
    let syncs = holds.part_dir_syncs.load(Ordering::SeqCst);
    sim.hold_mapped_flushes(false);
    // (F may also wait for the partition lock A holds while it creates the files: then it
    // does neither before A goes on, which is as good.)
    let until = Instant::now() + Duration::from_secs(2);
    while holds.part_dir_syncs.load(Ordering::SeqCst) == syncs
        && !f.is_finished()
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    // A goes on: the files are created, A's batch lands in them; its seal (whose index rename
    // would sync the directory) is held before that.
    holds.open_file.arm("appender-a", ".index.tmp");
    holds.map_file.release();
    holds.open_file.wait_held();
    f.join().unwrap().unwrap();

    // B lands in the new segment and is acknowledged by a flush.
    let (acked, b) = acknowledged_within(&store, msg(b'B', 10), true);
    let Some(offset) = acked else {
        holds.open_file.release();
        a.join().unwrap();
        b.join().unwrap();
        return;
    };
    store.abandon();
    let after = sim.crash(CrashMode::DropUnsynced, 0);
    holds.open_file.release();
    a.join().unwrap();
    b.join().unwrap();
    assert_survives(after, offset, b'B');
}

/// `delete_topic` takes the partition's directory lock so that no directory sync runs on a
/// partition directory being removed (the sync guard would take the missing directory for a
/// failed sync and poison the store). `write_marker` still syncs the directory of a
/// transaction index it created with `ctx.fs.sync_dir`, outside that lock and after its flush:
/// an abort marker racing the deletion of its topic poisons the whole store.
#[test]
fn an_abort_marker_racing_delete_topic_does_not_poison_the_store() {
    use duolog::{ProducerId, TxnMarker};
    let sim = SimFs::new();
    let holds = Arc::new(Holds::default());
    let fs = WrapFs::new(sim.clone(), Arc::clone(&holds));
    let store: Arc<dyn LogStore> = Arc::from(
        duolog::open(
            STORE,
            options(
                fs,
                FlushPolicy::Async {
                    interval: Duration::MAX,
                },
            ),
        )
        .unwrap(),
    );
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    store
        .create_topic("u", TopicConfig::with_partitions(1))
        .unwrap();
    let producer = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 0,
    };
    store
        .append_transactional("t", 0, producer, 0, &[msg(b'x', 10)])
        .unwrap();
    store.sync().unwrap();

    // The abort marker is written (its transaction index created) and its flush is held.
    sim.hold_mapped_flushes(true);
    let s = Arc::clone(&store);
    let m = on_thread("marker", move || {
        s.write_marker("t", 0, producer, TxnMarker::Abort, 0)
    });
    let until = Instant::now() + Duration::from_secs(10);
    while sim.held_mapped_flushes() == 0 {
        assert!(Instant::now() < until, "the marker's flush never came");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The topic is deleted meanwhile.
    let (tx, rx) = mpsc::channel();
    let s = Arc::clone(&store);
    let d = on_thread("deleter", move || {
        let _ = tx.send(s.delete_topic("t"));
    });
    let deleted = rx.recv_timeout(Duration::from_secs(5));
    sim.hold_mapped_flushes(false);
    let marker = m.join().unwrap();
    d.join().unwrap();
    let Ok(deleted) = deleted else {
        // delete_topic waited for the marker: nothing raced.
        return;
    };
    deleted.unwrap();
    eprintln!("write_marker returned {marker:?}");
    // Another topic must still take appends: nothing failed to sync.
    store
        .append("u", 0, &[msg(b'u', 10)])
        .expect("the store is poisoned by a marker racing delete_topic");
}
