//! The many-partitions promise, with default options: 10,000 partitions take descriptors,
//! mappings and disk in proportion to what is used, not to the partition count. Appends to and
//! reads from every partition succeed under the usual limit of 1,024 open files, and so do a
//! reopen, appends after it and `verify`. Before: `EMFILE`, and 6 MB of consume queue, 20 MiB of
//! segment indexes per partition plus a 420 MB key-index file, all preallocated.
//!
//! Its own test binary: it lowers `RLIMIT_NOFILE` for the whole process.

use std::path::Path;

use duolog::{EngineKind, Message, ReadLimits, StoreOptions, TopicConfig};

const PARTITIONS: u32 = 10_000;

fn set_nofile(limit: u64) {
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit reads the struct it is given.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Bytes of disk actually allocated under `dir` (blocks, not lengths).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            allocated_bytes(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

fn run(engine: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    };
    let store = duolog::open(dir.path(), options.clone()).unwrap();
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
            .unwrap_or_else(|e| panic!("{engine}: append to {p}: {e}"));
    }
    for p in 0..PARTITIONS {
        let r = store
            .read("t", p, 0, ReadLimits::default())
            .unwrap_or_else(|e| panic!("{engine}: read {p}: {e}"));
        assert_eq!(r[0].body(), format!("m{p}").as_bytes());
    }
    let fds = open_fds();
    store.sync().unwrap();
    let disk = allocated_bytes(dir.path());
    eprintln!(
        "{engine}: {PARTITIONS} partitions, one message each: {fds} descriptors open, {:.1} MiB allocated",
        disk as f64 / (1 << 20) as f64
    );
    assert!(
        fds <= options.max_open_files + 64,
        "{engine}: {fds} descriptors for {PARTITIONS} partitions"
    );
    // The key index grows with its entries: its header and hash slots (20 MiB by default).
    let index = allocated_bytes(&dir.path().join("index"));
    assert!(
        index < 64 << 20,
        "{engine}: the key index takes {index} bytes"
    );
    // Per partition: a few pages of files at most. The CommitLog engine's one commit-log file
    // (1 GiB, RocketMQ's fixed size) comes on top.
    let fixed = if engine == EngineKind::CommitLog {
        1 << 30
    } else {
        0
    };
    let per_partition = (disk.saturating_sub(fixed)) / u64::from(PARTITIONS);
    assert!(
        per_partition <= 64 * 1024,
        "{engine}: {per_partition} bytes of disk per one-message partition"
    );
    store.close().unwrap();
    drop(store);
    // A reopen stays within the limit too, and every partition still reads and appends.
    let store = duolog::open(dir.path(), options).unwrap();
    for p in (0..PARTITIONS).step_by(7) {
        assert_eq!(store.bounds("t", p).unwrap().end, 1);
        store.append("t", p, &[Message::new("again")]).unwrap();
        assert_eq!(
            store.read("t", p, 0, ReadLimits::default()).unwrap().len(),
            2
        );
    }
    for p in (0..PARTITIONS).step_by(97) {
        let hits = store
            .find_by_key("t", &format!("k{p}"), (0, i64::MAX), 10)
            .unwrap();
        assert_eq!(hits.len(), 1, "{engine}: key k{p}");
    }
    let report = store.verify().unwrap();
    let problems = &report.problems[..report.problems.len().min(5)];
    assert!(report.is_ok(), "{engine}: {problems:?}");
}

#[test]
fn ten_thousand_partitions_under_a_descriptor_limit_of_1024() {
    set_nofile(1024);
    for engine in [EngineKind::Segmented, EngineKind::CommitLog] {
        let t = std::time::Instant::now();
        run(engine);
        eprintln!("{engine}: {:.1} s", t.elapsed().as_secs_f64());
    }
}
