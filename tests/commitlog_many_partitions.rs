//! 10,000 partitions with one message each, CommitLog engine, default options, under a soft
//! limit of 256 open files: every partition takes appends and reads (no `EMFILE`), and the
//! consume-queue and key-index files take little disk (they grow with their data).
//! A test binary of its own: lowering `RLIMIT_NOFILE` affects the whole process.
#![cfg(unix)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use duolog::{EngineKind, Message, ReadLimits, StoreOptions, TopicConfig};

const PARTITIONS: u32 = 10_000;

fn lower_open_file_limit(to: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = to.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Bytes of real blocks under `dir`, by top-level entry name.
fn allocated_under(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            allocated_under(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

#[test]
fn ten_thousand_partitions_take_little_disk_and_few_descriptors() {
    lower_open_file_limit(256);
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        engine: Some(EngineKind::CommitLog),
        ..StoreOptions::default()
    };
    let store = duolog::open(dir.path(), opts.clone()).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    for p in 0..PARTITIONS {
        store
            .append(
                "t",
                p,
                &[Message::new(format!("m{p}")).with_key(format!("k{p}"))],
            )
            .unwrap_or_else(|e| panic!("append to {p}: {e}"));
    }
    for p in 0..PARTITIONS {
        let r = store
            .read("t", p, 0, ReadLimits::default())
            .unwrap_or_else(|e| panic!("read {p}: {e}"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].body(), format!("m{p}").as_bytes());
    }
    store.sync().unwrap();
    let queues = allocated_under(&dir.path().join("consumequeue"));
    let index = allocated_under(&dir.path().join("index"));
    let usage = store.disk_usage().unwrap();
    eprintln!(
        "consume queues {} MiB, key index {} MiB, disk_usage {} MiB in {} files",
        queues >> 20,
        index >> 20,
        usage.bytes >> 20,
        usage.files
    );
    // Preallocated, the queues took 6 MB each (60 GB) and the key index 420 MB.
    assert!(queues < 100 << 20, "consume queues take {queues} bytes");
    assert!(index < 64 << 20, "the key index takes {index} bytes");
    store.close().unwrap();
    drop(store);
    // Reopen under the same limit: every partition still reads and appends.
    let store = duolog::open(dir.path(), opts).unwrap();
    for p in (0..PARTITIONS).step_by(7) {
        store.append("t", p, &[Message::new("again")]).unwrap();
        assert_eq!(
            store.read("t", p, 0, ReadLimits::default()).unwrap().len(),
            2
        );
    }
    assert!(store.verify().unwrap().is_ok());
}
