//! Issue 16 (memory): the pages an active log keeps mapped behind its writer are shared across
//! the active logs (as the warm-up windows share theirs), so a store writing many partitions
//! holds a bounded amount resident behind its writers, not a fixed 1 MiB keep and 1 MiB release
//! step per log (up to 2 MiB each: 2 GiB at 1,024 partitions written past their first MiB).

mod common;

use std::time::Duration;

use common::memory::resident_of;
use duolog::{EngineKind, Message, StoreOptions, TopicConfig};

#[test]
fn many_active_logs_share_what_they_keep_mapped_behind_their_writers() {
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        engine: Some(EngineKind::Segmented),
        flush: duolog::FlushPolicy::Async {
            interval: Duration::from_secs(3600),
        },
        ..StoreOptions::default()
    };
    let s = duolog::open(dir.path(), o).unwrap();
    let partitions = 1024;
    s.create_topic("t", TopicConfig::with_partitions(partitions))
        .unwrap();
    // 96 KiB per partition, round-robin: 96 MiB of logs, none of them past the 1 MiB a
    // single log keeps behind its writer.
    let msg = [Message::new(vec![b'r'; 1024])];
    for _ in 0..96 {
        for p in 0..partitions {
            s.append("t", p, &msg).unwrap();
        }
    }
    // A flush releases behind every log it syncs, whatever the warm-up thread got to.
    s.sync().unwrap();
    let resident = resident_of(".log");
    assert!(
        resident < 64 << 20,
        "{} MiB of 96 MiB written stay resident in 1,024 active logs",
        resident >> 20
    );
    s.close().unwrap();
}
