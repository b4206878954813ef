//! Review A: commit-log files that grow on demand.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use duolog::io::{FileSystem, SimFs};
use duolog::{EngineKind, FlushPolicy, Message, StoreOptions, TopicConfig};

const DIR: &str = "/store";

fn sim_options(sim: &SimFs, file_size: u64) -> StoreOptions {
    let mut o = common::small_options(EngineKind::CommitLog);
    o.fs = Arc::new(sim.clone());
    o.flush = FlushPolicy::Async {
        interval: Duration::from_secs(3600),
    };
    o.commitlog.checkpoint_interval = Duration::from_secs(3600);
    o.commitlog.retention_check_interval = Duration::from_secs(3600);
    o.commitlog.retention = None;
    o.commitlog.file_size = file_size;
    o.index.enabled = false;
    o
}

fn log_file(n: u64) -> std::path::PathBuf {
    Path::new(DIR)
        .join("commitlog")
        .join(duolog::io::offset_name(n))
}

/// Main's open rule: "the size of existing files wins over the option (so changing the option
/// never misreads an old store)". With grown files a store whose only log file (the others
/// removed by retention) is a partly grown one refuses to open once `commitlog.file_size`
/// changed: its length is no file size, and it does not divide the file's name. Every file
/// written by main had the full size, so main opened the same store.
#[test]
fn a_store_left_with_one_partly_grown_log_file_opens_after_the_file_size_option_changed() {
    let sim = SimFs::new();
    // Above the 16 MiB step, so the file made ahead is not made whole.
    let size = 48u64 << 20;
    let mut o = sim_options(&sim, size);
    o.commitlog.retention_bytes = Some(1);
    let store = duolog::open(DIR, o.clone()).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let body = vec![b'x'; 10_000];
    let mut n = 0u64;
    // The first file, and 10 MiB into the second.
    while n * 10_100 < size + (10 << 20) {
        store.append("t", 0, &[Message::new(body.clone())]).unwrap();
        n += 1;
    }
    // Let the allocation thread grow the second file ahead of the writer.
    std::thread::sleep(Duration::from_millis(500));
    store.sync().unwrap();
    assert!(
        store.enforce_retention().unwrap() >= 1,
        "retention removed no file"
    );
    let before = store.bounds("t", 0).unwrap();
    store.close().unwrap();
    drop(store);
    assert!(
        sim.file_len(&log_file(0)).is_err(),
        "first file still there"
    );
    let len = sim.file_len(&log_file(size)).unwrap();
    assert!(len < size, "second file has its full length {len}");
    // The same store, the option back at its default.
    let mut reopened = o.clone();
    reopened.commitlog.file_size = StoreOptions::default().commitlog.file_size;
    let store = match duolog::open(DIR, reopened) {
        Ok(s) => s,
        Err(e) => panic!("store of {n} records, one log file of {len} bytes, refused: {e}"),
    };
    // Retention (1 byte) left the partition empty at its end; the reopen keeps that, and the
    // log takes appends again, read back at the next offsets.
    assert_eq!(store.bounds("t", 0).unwrap(), before);
    let more: Vec<Message> = (0..3).map(|i| Message::new(format!("after {i}"))).collect();
    let r = store.append("t", 0, &more).unwrap();
    assert_eq!(r.base_offset, before.end);
    let records = common::read_all(store.as_ref(), "t", 0);
    let bodies: Vec<&[u8]> = records.iter().map(|r| r.body()).collect();
    assert_eq!(bodies, vec![&b"after 0"[..], b"after 1", b"after 2"]);
    store.close().unwrap();
}
