//! Fan-out with default options, as a new user gets it: 100-byte messages, one per `append`,
//! round-robin over N partitions (every partition written once before timing), async flush.
//! Prints messages/s and the ratio to the 1-partition rate, per engine.
//!
//! Run: `cargo run --release --example fanout_defaults [-- [commitlog|segmented] PARTITIONS...]`
//! (default: both engines, 1 1024 4096). Measure peak RSS of one engine at a time with
//! `/usr/bin/time -f '%e s %M KB'`.
//! `appends=N` times N appends instead of 300,000 (a longer timed loop, so that a profile of the
//! run is mostly the loop rather than the partitions' creation and the close).
//! Nothing here asserts a speed.

use std::time::Instant;

use duolog::{EngineKind, Message, StoreOptions, TopicConfig};

const APPENDS: u32 = 300_000;

/// The calling thread's CPU time (user + system) in nanoseconds, from `/proc/thread-self/stat`
/// (clock-tick resolution; 0 where unavailable). On a shared machine the wall-clock rate
/// includes time the thread waited for a core; its CPU time per append does not.
fn thread_cpu_ns() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0;
    };
    // Fields after the command name (which may hold spaces), from field 3 on: utime is field
    // 14 and stime field 15, in clock ticks (100 per second on Linux).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() * 10_000_000
}

fn run(engine: EngineKind, partitions: u32, appends: u32) -> duolog::Result<(f64, f64)> {
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
    let cpu = thread_cpu_ns();
    for i in 0..appends {
        store.append("t", i % partitions, &msg)?;
    }
    let rate = f64::from(appends) / t.elapsed().as_secs_f64();
    let cpu_per_append = (thread_cpu_ns() - cpu) as f64 / f64::from(appends);
    store.close()?;
    Ok((rate, cpu_per_append))
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
    let appends = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("appends=").and_then(|n| n.parse().ok()))
        .unwrap_or(APPENDS);
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
            let (rate, cpu) = run(engine, n, appends)?;
            let base = *base.get_or_insert(rate);
            println!(
                "{engine}\t{n} partitions\t{:.0} msg/s\t{:.0}% of 1 partition\t{cpu:.0} ns CPU/append",
                rate,
                100.0 * rate / base
            );
        }
    }
    Ok(())
}
