//! Appends 100-byte messages in a loop for profiling: `cargo run --release --example
//! profile_append -- [seconds] [batch] [commitlog|segmented] [partitions]`. With several
//! partitions the batches go round-robin over them; every partition gets one message before the
//! timed loop starts (which prints `timed loop starts` to stderr, for `perf record -D`).

use std::time::{Duration, Instant};

use duolog::{CommitLogOptions, EngineKind, Message, SegmentedOptions, StoreOptions, TopicConfig};

fn main() -> duolog::Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let batch: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let engine = match args.next().as_deref() {
        Some("segmented") => EngineKind::Segmented,
        _ => EngineKind::CommitLog,
    };
    let partitions: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let dir = tempfile::tempdir().map_err(|e| duolog::Error::InvalidArgument(e.to_string()))?;
    let opts = StoreOptions {
        engine: Some(engine),
        segmented: SegmentedOptions {
            segment_bytes: 256 << 20,
            max_index_bytes: 1 << 20,
            retention: None,
            ..SegmentedOptions::default()
        },
        commitlog: CommitLogOptions {
            file_size: 256 << 20,
            retention: None,
            ..CommitLogOptions::default()
        },
        max_open_files: 8192,
        ..StoreOptions::default()
    };
    let store = duolog::open(dir.path(), opts)?;
    store.create_topic("p", TopicConfig::with_partitions(partitions))?;
    let msgs: Vec<Message> = (0..batch).map(|_| Message::new(vec![b'm'; 100])).collect();
    for p in 0..partitions {
        store.append("p", p, &msgs[..1])?;
    }
    eprintln!("timed loop starts");
    let start = Instant::now();
    let mut n = 0u64;
    let mut p = 0u32;
    while start.elapsed() < Duration::from_secs(secs) {
        for _ in 0..1000 {
            store.append("p", p, &msgs)?;
            p = (p + 1) % partitions;
        }
        n += 1000 * batch as u64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!("{n} messages, {rate:.0} msg/s");
    Ok(())
}
