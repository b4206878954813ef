//! Issue 16's "append 500,000 × 1 KiB + sync" row, raw framed writes and the segmented engine
//! (default `StoreOptions`) in one process, alternating, best of `rounds`:
//! `cargo run --release --example append_1k_sync -- [messages] [rounds]`.

use std::io::Write;
use std::time::{Duration, Instant};

use duolog::{EngineKind, LogStore, Message, SegmentedStore, StoreOptions, TopicConfig};

fn raw(dir: &std::path::Path, n: usize, body: &[u8]) -> Duration {
    let start = Instant::now();
    let mut f = std::fs::File::create(dir.join("raw.log")).expect("create");
    let mut frame = Vec::with_capacity(body.len() + 4);
    for _ in 0..n {
        // One write per message, as an unbatched producer's log would do.
        frame.clear();
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        f.write_all(&frame).expect("write");
    }
    f.sync_data().expect("sync");
    start.elapsed()
}

fn segmented(dir: &std::path::Path, n: usize, body: &[u8]) -> Duration {
    let opts = StoreOptions {
        engine: Some(EngineKind::Segmented),
        ..StoreOptions::default()
    };
    let s = SegmentedStore::open(dir, opts).expect("open");
    s.create_topic("t", TopicConfig::default()).expect("topic");
    let msg = [Message::new(body.to_vec())];
    let start = Instant::now();
    for _ in 0..n {
        s.append("t", 0, &msg).expect("append");
    }
    s.sync().expect("sync");
    start.elapsed()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(500_000);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let body = vec![b'a'; 1024];
    let (mut best_raw, mut best_seg) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        let d = tempfile::tempdir().expect("tempdir");
        best_raw = best_raw.min(raw(d.path(), n, &body));
        let d = tempfile::tempdir().expect("tempdir");
        best_seg = best_seg.min(segmented(d.path(), n, &body));
    }
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{n} x 1 KiB + sync, best of {rounds}: raw {:.0}/s, segmented {:.0}/s, ratio {:.2}",
        rate(best_raw),
        rate(best_seg),
        rate(best_seg) / rate(best_raw)
    );
}
