//! Appends reach their partition's active segment through a handle the partition remembers
//! (not a handle-cache lookup per append). When the cache lets go of that handle (evicted by
//! other partitions' segments, or a reader reopens the segment), appends must switch to the
//! handle the cache holds now: a record appended is readable at once, whatever handle a reader
//! gets, and everything survives a reopen.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use duolog::{
    EngineKind, LogStore, Message, ReadLimits, SegmentedStore, StoreOptions, TopicConfig,
};

const PARTITIONS: u32 = 40;
const ROUNDS: u32 = 60;

fn body(round: u32, p: u32) -> String {
    format!("{round:04}-{p:03}-{}", "x".repeat(80))
}

#[test]
fn appends_stay_readable_at_once_while_the_cache_evicts_active_segments_under_readers() {
    let dir = tempfile::tempdir().unwrap();
    // One open file: eight mapped segments for 40 partitions, so active segments are evicted
    // and reopened all the time.
    let options = StoreOptions {
        engine: Some(EngineKind::Segmented),
        max_open_files: 1,
        ..StoreOptions::default()
    };
    let s = Arc::new(SegmentedStore::open(dir.path(), options.clone()).unwrap());
    s.create_topic("t", TopicConfig::with_partitions(PARTITIONS))
        .unwrap();
    // A reader reading every partition's head over and over: it holds handles across the
    // evictions and reopens segments itself.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                for p in 0..PARTITIONS {
                    s.read("t", p, 0, ReadLimits::messages(4)).unwrap();
                }
            }
        })
    };
    for round in 0..ROUNDS {
        for p in 0..PARTITIONS {
            let r = s.append("t", p, &[Message::new(body(round, p))]).unwrap();
            assert_eq!(r.base_offset, u64::from(round));
            let got = s
                .read("t", p, r.base_offset, ReadLimits::messages(1))
                .unwrap();
            assert_eq!(got.len(), 1, "partition {p}: offset {round} not readable");
            assert_eq!(got[0].body(), body(round, p).as_bytes());
        }
    }
    stop.store(true, Ordering::Release);
    reader.join().unwrap();
    s.sync().unwrap();
    drop(s);
    let s = SegmentedStore::open(dir.path(), options).unwrap();
    for p in 0..PARTITIONS {
        let got = s
            .read("t", p, 0, ReadLimits::messages(ROUNDS as usize))
            .unwrap();
        let want: Vec<String> = (0..ROUNDS).map(|r| body(r, p)).collect();
        let have: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8(r.body().to_vec()).unwrap())
            .collect();
        assert_eq!(have, want, "partition {p} after reopen");
    }
}
