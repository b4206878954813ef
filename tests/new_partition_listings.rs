//! A topic's new partitions are directories the store has just created: empty, so their open
//! lists nothing (issue 16: `strace -c` of creating 1,024 partitions counted 4,112
//! `getdents64` on the CommitLog engine, each new directory listed twice). Directories left by
//! an earlier attempt are still listed and reused. The segmented engine still lists a new
//! partition's directory: its change is on branch `cr`, with the lazy index files it came with
//! (ARCHITECTURE.md "Not built yet").

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::wrap::{FsCall, FsHooks, WrapFs};
use duolog::io::RealFs;
use duolog::{EngineKind, Message, StoreOptions, TopicConfig};

#[derive(Debug, Default)]
struct Listings(AtomicU64);

impl FsHooks for Listings {
    fn before(&self, call: FsCall, _path: &Path) -> std::io::Result<()> {
        if call == FsCall::ListDir {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

const PARTITIONS: u32 = 64;

fn creating_partitions_lists_no_new_directory(engine: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let listings = Arc::new(Listings::default());
    let store = duolog::open(
        dir.path(),
        StoreOptions {
            engine: Some(engine),
            fs: WrapFs::new(RealFs, Arc::clone(&listings)),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let before = listings.0.load(Ordering::Relaxed);
    store
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    store.add_partitions("t", 2 * PARTITIONS).unwrap();
    let n = listings.0.load(Ordering::Relaxed) - before;
    assert!(
        n <= 2,
        "{engine}: {n} directory listings to create {} partitions",
        2 * PARTITIONS
    );
    for p in 0..2 * PARTITIONS {
        store
            .append("t", p, &[Message::new(b"m".to_vec())])
            .unwrap();
    }
    store.close().unwrap();
    drop(store);
    let store = duolog::open(dir.path(), StoreOptions::default()).unwrap();
    for p in 0..2 * PARTITIONS {
        assert_eq!(store.bounds("t", p).unwrap().end, 1, "partition {p}");
    }
    store.close().unwrap();
}

#[test]
fn commitlog_lists_no_directory_it_just_created_for_a_partition() {
    creating_partitions_lists_no_new_directory(EngineKind::CommitLog);
}
