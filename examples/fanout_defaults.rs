//! Fan-out with default options, as a new user gets it: 100-byte messages, one per `append`,
//! round-robin over N partitions (every partition written once before timing), async flush.
//! Prints messages/s and the ratio to the 1-partition rate, per engine.
//!
//! Run: `cargo run --release --example fanout_defaults [-- [commitlog|segmented] PARTITIONS...]`
//! (default: both engines, 1 1024 4096). Measure peak RSS of one engine at a time with
//! `/usr/bin/time -f '%e s %M KB'`.
//! Nothing here asserts a speed.

use std::time::Instant;

use duolog::{EngineKind, Message, StoreOptions, TopicConfig};

const APPENDS: u32 = 300_000;

fn run(engine: EngineKind, partitions: u32) -> duolog::Result<f64> {
    let dir = tempfile::tempdir().map_err(|e| duolog::Error::InvalidArgument(e.to_string()))?;
    let store = duolog::open(
        dir.path(),
        StoreOptions {
            engine: Some(engine),
            ..StoreOptions::default()
        },
    )?;
    store.create_topic("t", TopicConfig::with_partitions(partitions))?;
    let msg = [Message::new(vec![b'f'; 100])];
    for p in 0..partitions {
        store.append("t", p, &msg)?;
    }
    let t = Instant::now();
    for i in 0..APPENDS {
        store.append("t", i % partitions, &msg)?;
    }
    let rate = f64::from(APPENDS) / t.elapsed().as_secs_f64();
    store.close()?;
    Ok(rate)
}

fn main() -> duolog::Result<()> {
    let counts: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![1, 1024, 4096]
    } else {
        counts
    };
    let only = std::env::args().skip(1).find_map(|a| match a.as_str() {
        "commitlog" => Some(EngineKind::CommitLog),
        "segmented" => Some(EngineKind::Segmented),
        _ => None,
    });
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        if only.is_some_and(|o| o != engine) {
            continue;
        }
        let mut base = None;
        for &n in &counts {
            let rate = run(engine, n)?;
            let base = *base.get_or_insert(rate);
            println!(
                "{engine}\t{n} partitions\t{:.0} msg/s\t{:.0}% of 1 partition",
                rate,
                100.0 * rate / base
            );
        }
    }
    Ok(())
}
