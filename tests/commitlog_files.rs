//! CommitLog engine files on the real disk: a cut commit-log file keeps its records and grows
//! again with real blocks (a sparse tail would be a SIGBUS on a full disk), and disk use
//! follows the data (commit-log, consume-queue and key-index files grow on demand).
#![cfg(unix)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use duolog::{EngineKind, Message, ReadLimits, TopicConfig};

fn blocks_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Log files grow on demand, so a short last file is legal and is not padded back to the file
/// size (whose zeros would be disk taken for no data). One cut below what the checkpoint counts
/// as durable is replayed whole: the records in what is left survive, and the store takes
/// appends again, growing the file with real blocks as it goes.
#[test]
fn a_cut_last_log_file_keeps_its_records_and_grows_again_with_real_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::small_options(EngineKind::CommitLog);
    let size = opts.commitlog.file_size;
    let store = duolog::open(dir.path(), opts.clone()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    // Into a second log file (the size of the full first one is the log's file size).
    for _ in 0..80 {
        store
            .append("t", 0, &[Message::new(vec![b'm'; 1000])])
            .unwrap();
    }
    store.close().unwrap();
    drop(store);
    let log = dir
        .path()
        .join("commitlog")
        .join(duolog::io::offset_name(size));
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(4096).unwrap();
    drop(f);
    let store = duolog::open(dir.path(), opts).unwrap();
    assert!(std::fs::metadata(&log).unwrap().len() <= size);
    // Records in the kept 4 KiB survive; the store takes appends again.
    let n = store.read("t", 0, 0, ReadLimits::default()).unwrap().len() as u64;
    assert_eq!(store.bounds("t", 0).unwrap().end, n);
    for _ in 0..20 {
        store
            .append("t", 0, &[Message::new(vec![b'a'; 1000])])
            .unwrap();
    }
    store.sync().unwrap();
    let len = std::fs::metadata(&log).unwrap().len();
    assert!(
        blocks_bytes(&log) >= len,
        "grown sparsely: {} of {len} bytes allocated",
        blocks_bytes(&log)
    );
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// Mappings of files under `dir` that this process holds now.
fn mappings_under(dir: &Path) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let dir = dir.to_string_lossy().into_owned();
    maps.lines().filter(|l| l.contains(dir.as_str())).count()
}

#[test]
fn consume_queue_mappings_are_bounded_by_max_open_files() {
    let dir = tempfile::tempdir().unwrap();
    // Up to 16 × max_open_files partitions keep their queues mapped (they hold no descriptor).
    let opts = duolog::StoreOptions {
        max_open_files: 2,
        ..common::small_options(EngineKind::CommitLog)
    };
    let partitions = 200;
    let store = duolog::open(dir.path(), opts.clone()).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(partitions))
        .unwrap();
    for round in 0..3 {
        for p in 0..partitions {
            store
                .append("t", p, &[Message::new(format!("{p}-{round}"))])
                .unwrap();
        }
    }
    for p in 0..partitions {
        let r = store.read("t", p, 0, ReadLimits::default()).unwrap();
        let bodies: Vec<_> = r.iter().map(|r| r.body().to_vec()).collect();
        let want: Vec<_> = (0..3)
            .map(|round| format!("{p}-{round}").into_bytes())
            .collect();
        assert_eq!(bodies, want, "partition {p}");
    }
    let queues = mappings_under(&dir.path().join("consumequeue"));
    assert!(
        queues <= 2 * 16 + 2,
        "{queues} consume-queue mappings with max_open_files 2 (bound: 32 partitions)"
    );
    // Durability and recovery see evicted queues too.
    store.sync().unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    store.close().unwrap();
    drop(store);
    let store = duolog::open(dir.path(), opts).unwrap();
    for p in 0..partitions {
        assert_eq!(store.bounds("t", p).unwrap().end, 3);
        store.append("t", p, &[Message::new("after")]).unwrap();
    }
    let queues = mappings_under(&dir.path().join("consumequeue"));
    assert!(
        queues <= 2 * 16 + 2,
        "{queues} consume-queue mappings after reopen (bound: 32 partitions)"
    );
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}
