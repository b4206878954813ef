//! The CommitLog engine's resident memory with default options does not grow with the partition
//! count: the warm-up of consume-queue files (pages faulted in ahead of the appender) is a few
//! pages per queue, not a megabyte. Before: every queue's allocated prefix was faulted in up to
//! 1 MiB ahead of its writer, so 1,024 partitions held about four times their written units
//! resident (1.1 GB at 1,024 partitions in issue 16's fan-out run).
//!
//! Its own test binary: it reads the process's own mappings from `/proc/self/smaps`.

mod common;

use common::memory::resident_of;
use duolog::{EngineKind, Message, StoreOptions, TopicConfig};

const PARTITIONS: u32 = 1024;
/// Messages per partition: 1,600 units of 20 bytes = 32,000 bytes of queue each.
const PER_PARTITION: u32 = 1600;
/// The documented warm window of a consume queue (ARCHITECTURE.md, "Memory"), plus the page
/// holding the write cursor and the one after it (a page is resident once written).
const WARM_ALLOWANCE: u64 = 16 * 1024 + 2 * 4096;

#[test]
fn consume_queues_of_1024_partitions_stay_resident_in_proportion_to_their_units() {
    let dir = tempfile::tempdir().unwrap();
    let store = duolog::open(
        dir.path(),
        StoreOptions {
            engine: Some(EngineKind::CommitLog),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    let msg = [Message::new(vec![b'm'; 8])];
    for i in 0..PARTITIONS * PER_PARTITION {
        store.append("t", i % PARTITIONS, &msg).unwrap();
    }
    // Let the allocation and warm-up threads finish what the last appends asked of them.
    store.sync().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let queues = resident_of("/consumequeue/");
    let written = u64::from(PARTITIONS) * u64::from(PER_PARTITION) * 20;
    let bound = written + u64::from(PARTITIONS) * WARM_ALLOWANCE;
    eprintln!(
        "consume queues: {} KiB resident, {} KiB of units",
        queues >> 10,
        written >> 10
    );
    assert!(
        queues <= bound,
        "consume queues hold {} KiB resident for {} KiB of units (bound {} KiB)",
        queues >> 10,
        written >> 10,
        bound >> 10
    );
    store.close().unwrap();
}
