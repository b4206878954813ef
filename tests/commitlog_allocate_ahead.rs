//! CommitLog engine: the next commit-log file and the next consume-queue file are made ahead of
//! the appender by a background thread, so the append that rolls does no file I/O; a next file
//! made ahead and never written is handled by recovery (it is all zeros) and by a clean open;
//! a failure on that thread poisons (a failed sync) or leaves the error to the append that needs
//! the file (a full disk).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duolog::io::{CrashMode, Fault, SimFs};
use duolog::{EngineKind, Error, FlushPolicy, LogStore, Message, ReadLimits, TopicConfig};

const DIR: &str = "/store";
const FILE: u64 = 64 * 1024;

fn options(sim: &SimFs) -> duolog::StoreOptions {
    let mut o = common::small_options(EngineKind::CommitLog);
    o.fs = Arc::new(sim.clone());
    o.flush = FlushPolicy::Async {
        interval: Duration::from_secs(3600),
    };
    o.commitlog.checkpoint_interval = Duration::from_secs(3600);
    o.commitlog.retention_check_interval = Duration::from_secs(3600);
    o.commitlog.retention = None;
    o.commitlog.file_size = FILE;
    o
}

fn open(sim: &SimFs) -> Box<dyn LogStore> {
    let store = duolog::open(Path::new(DIR), options(sim)).unwrap();
    if !store.list_topics(true).contains(&"t".to_owned()) {
        store.create_topic("t", TopicConfig::default()).unwrap();
    }
    store
}

fn files_under(sim: &SimFs, sub: &str) -> usize {
    let root = Path::new(DIR).join(sub);
    sim.files().iter().filter(|p| p.starts_with(&root)).count()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// 1000-byte records: about 62 fill a 64 KiB log file.
fn big() -> [Message; 1] {
    [Message::new(vec![b'x'; 1000])]
}

#[test]
fn the_append_that_rolls_the_log_does_no_file_io() {
    let sim = SimFs::new();
    let store = open(&sim);
    let mut n = 0u64;
    // Past half of the first log file: the next one is asked for.
    while n < 40 {
        store.append("t", 0, &big()).unwrap();
        n += 1;
    }
    wait_until("the next log file", || files_under(&sim, "commitlog") == 2);
    // (And the partition's next queue file, asked for at unit 32: the count of file operations
    // is the whole disk's, the allocation thread's included.)
    wait_until("the next queue file", || {
        files_under(&sim, "consumequeue") == 2
    });
    // Until the roll, and the rolling append itself, no file operation at all.
    let rolled = loop {
        let before = sim.op_count();
        store.append("t", 0, &big()).unwrap();
        n += 1;
        let ops = sim.op_count() - before;
        let log = store.bounds("t", 0).unwrap();
        assert_eq!(log.end, n);
        if ops > 0 {
            break false;
        }
        if n > 70 {
            break true;
        }
    };
    assert!(rolled, "an append did file I/O");
    assert_eq!(common::read_all(store.as_ref(), "t", 0).len() as u64, n);
}

#[test]
fn the_append_that_starts_a_queue_file_does_no_file_io() {
    let sim = SimFs::new();
    let store = open(&sim);
    // 64 units per queue file; the next file is asked for at 32.
    for _ in 0..40 {
        store.append("t", 0, &[Message::new("m")]).unwrap();
    }
    wait_until("the next queue file", || {
        files_under(&sim, "consumequeue") == 2
    });
    for i in 40..70 {
        let before = sim.op_count();
        store.append("t", 0, &[Message::new("m")]).unwrap();
        assert_eq!(sim.op_count(), before, "append {i} did file I/O");
    }
    assert_eq!(common::read_all(store.as_ref(), "t", 0).len(), 70);
}

#[test]
fn a_next_file_made_ahead_survives_crashes_and_clean_opens() {
    for mode in [
        CrashMode::DropUnsynced,
        CrashMode::PersistSubset,
        CrashMode::TearAtSector,
    ] {
        let sim = SimFs::new();
        let store = open(&sim);
        for _ in 0..40 {
            store.append("t", 0, &big()).unwrap();
        }
        store.sync().unwrap();
        wait_until("the next log file", || files_under(&sim, "commitlog") == 2);
        store.abandon();
        drop(store);
        let sim = sim.crash(mode, 7);
        let store = open(&sim);
        assert_eq!(store.bounds("t", 0).unwrap().end, 40, "{mode:?}");
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "{mode:?}: {:?}", report.problems);
        // Past the roll, twice over: the files stay contiguous.
        for _ in 0..100 {
            store.append("t", 0, &big()).unwrap();
        }
        store.close().unwrap();
        drop(store);
        // A clean open with a next file made ahead again.
        let store = open(&sim);
        assert_eq!(store.bounds("t", 0).unwrap().end, 140);
        store.append("t", 0, &big()).unwrap();
        let records = common::read_all(store.as_ref(), "t", 0);
        assert_eq!(records.len(), 141);
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "{mode:?}: {:?}", report.problems);
    }
}

#[test]
fn a_failed_sync_on_the_allocation_thread_poisons_the_store() {
    let sim = SimFs::new();
    let store = open(&sim);
    for _ in 0..20 {
        store.append("t", 0, &big()).unwrap();
    }
    store.sync().unwrap();
    sim.fail_syncs(true);
    // Past half the file: the allocation thread creates the next file, and its directory sync
    // fails (perhaps while these appends still run: then they see the poison).
    let mut early = None;
    for _ in 0..20 {
        if let Err(e) = store.append("t", 0, &big()) {
            early = Some(e);
            break;
        }
    }
    if let Some(e) = early {
        sim.fail_syncs(false);
        assert!(matches!(e, Error::Poisoned { .. }), "{e}");
        return;
    }
    // No flush and no roll of our own from here (a probe that flushed or rolled would poison
    // by itself): a small append only reports the store's state.
    // At most 20 probes: 40 + 20 units stay in the first queue file (64 units).
    let mut probes = 0;
    let probe = loop {
        std::thread::sleep(Duration::from_millis(50));
        probes += 1;
        let r = store.append("t", 0, &[Message::new("probe")]);
        if r.is_err() || probes == 20 {
            break r;
        }
    };
    sim.fail_syncs(false);
    assert!(matches!(probe, Err(Error::Poisoned { .. })), "{probe:?}");
}

#[test]
fn a_full_disk_on_the_allocation_thread_is_a_clean_error_for_the_append_that_rolls() {
    let sim = SimFs::new();
    let store = open(&sim);
    for _ in 0..20 {
        store.append("t", 0, &big()).unwrap();
    }
    sim.fail_after(0, Fault::NoSpace);
    let mut acked = 20u64;
    let err = loop {
        match store.append("t", 0, &big()) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 200, "never needed a new file");
    };
    assert!(err.is_storage_full(), "{err}");
    sim.clear_faults();
    store.append("t", 0, &big()).unwrap();
    assert_eq!(
        store
            .read("t", 0, 0, ReadLimits::messages(1000))
            .unwrap()
            .len() as u64,
        acked + 1
    );
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}
