//! Fan-out with default options: appends round-robin over more partitions than
//! `max_open_files` keep every active segment open (mapped, without a descriptor), so no
//! append reopens its segment, and descriptors and disk stay bounded. Its own test binary: it
//! counts the process's descriptors.

use std::path::Path;

use duolog::{EngineKind, LogStore, Message, SegmentedStore, StoreOptions, TopicConfig};

const PARTITIONS: u32 = 1024;

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

#[test]
fn round_robin_over_1024_partitions_keeps_every_active_segment_open_without_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        engine: Some(EngineKind::Segmented),
        ..StoreOptions::default()
    };
    let fds_before = open_fds();
    let s = SegmentedStore::open(dir.path(), options.clone()).unwrap();
    s.create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    let rounds = 40u32;
    for round in 0..rounds {
        for p in 0..PARTITIONS {
            s.append_oneway(
                "t",
                p,
                &[Message::new(format!(
                    "{round:03}-{p:04}-{}",
                    "d".repeat(90)
                ))],
            )
            .unwrap();
        }
    }
    s.sync().unwrap();
    let fds = open_fds().saturating_sub(fds_before);
    assert!(
        fds <= options.max_open_files,
        "{fds} descriptors for {PARTITIONS} active partitions"
    );
    // Every active segment is still cached: the next round reopens nothing.
    assert!(
        s.open_segments() >= PARTITIONS as usize,
        "{} segments open: appends past the cache reopen their segment",
        s.open_segments()
    );
    let disk = allocated_bytes(dir.path());
    let per_partition = disk / u64::from(PARTITIONS);
    eprintln!("{fds} descriptors, {disk} bytes allocated ({per_partition} per partition)");
    // 40 batches of ~160 bytes per partition, plus index pages and the key index: a few pages
    // each, nothing preallocated in proportion to the segment size.
    assert!(
        per_partition <= 96 * 1024,
        "{per_partition} bytes of disk per partition"
    );
    s.close().unwrap();
}
