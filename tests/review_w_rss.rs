//! Review (branch `review-w`): the active log's resident pages are said to stay in a bounded
//! window "whatever the data size or the flush interval" (segment.rs `LOG_RELEASE_KEEP`,
//! issue 16's memory target). The release watermark (`MappedFile::released`) only moves
//! forward, so pages behind it that a reader faults in again (a consumer catching up from the
//! start of the active segment: reads slice the active mapping) are never released: the RSS
//! then grows with the data read back, up to the whole active segment (1 GiB by default) per
//! partition.

mod common;

use std::time::Duration;

use common::memory::rss_bytes;
use duolog::{EngineKind, Message, ReadLimits, StoreOptions, TopicConfig};

#[test]
fn reading_back_an_active_segment_keeps_its_resident_pages_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let o = StoreOptions {
        engine: Some(EngineKind::Segmented),
        flush: duolog::FlushPolicy::Async {
            interval: Duration::from_secs(3600),
        },
        ..StoreOptions::default()
    };
    let s = duolog::open(dir.path(), o).unwrap();
    s.create_topic("t", TopicConfig::default()).unwrap();
    let body = vec![b'x'; 4096];
    for _ in 0..256 {
        s.append("t", 0, &[Message::new(body.clone())]).unwrap();
    }
    let n = (192 << 20) / body.len();
    for _ in 0..n {
        s.append("t", 0, &[Message::new(body.clone())]).unwrap();
    }
    s.sync().unwrap();
    let before = rss_bytes();
    // A consumer catching up from the start, holding one fetch at a time.
    let end = s.bounds("t", 0).unwrap().end;
    let mut at = 0;
    while at < end {
        let f = s.fetch("t", 0, at, ReadLimits::messages(256)).unwrap();
        assert!(f.next_offset > at);
        at = f.next_offset;
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "RSS grew by {} MiB reading back 193 MiB of the active segment",
        grown >> 20
    );
}
