//! CommitLog engine files on the real disk: a truncated commit-log file is given back its
//! length with real blocks (a sparse tail would be a SIGBUS on a full disk), and disk use
//! follows the data (consume-queue and key-index files grow on demand).
#![cfg(unix)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use duolog::{EngineKind, LogStore, Message, ReadLimits, TopicConfig};

fn blocks_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_truncated_log_file_is_extended_with_real_blocks() {
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
    assert_eq!(std::fs::metadata(&log).unwrap().len(), size);
    assert!(
        blocks_bytes(&log) >= size,
        "extended sparsely: {} of {size} bytes allocated",
        blocks_bytes(&log)
    );
    // Records in the kept 4 KiB survive; the store takes appends again.
    let n = store.read("t", 0, 0, ReadLimits::default()).unwrap().len() as u64;
    assert_eq!(store.bounds("t", 0).unwrap().end, n);
    store.append("t", 0, &[Message::new("again")]).unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}
