//! Latency of single 100-byte appends with default options (1 GiB log files, 300,000-unit
//! queue files): `cargo run --release --example append_latency -- [appends] [partitions]`.
//! Prints percentiles and the slowest appends with their index, so stalls at file creation
//! (a log roll, a new consume-queue file) show up. Numbers are printed, never asserted.

use std::time::Instant;

use duolog::{EngineKind, Message, StoreOptions, TopicConfig};

fn main() -> duolog::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000_000);
    let partitions: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let dir = tempfile::tempdir().map_err(|e| duolog::Error::InvalidArgument(e.to_string()))?;
    let opts = StoreOptions {
        engine: Some(EngineKind::CommitLog),
        ..StoreOptions::default()
    };
    let store = duolog::open(dir.path(), opts)?;
    store.create_topic("t", TopicConfig::with_partitions(partitions))?;
    let msg = [Message::new(vec![b'm'; 100])];
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let p = i as u32 % partitions;
        let t = Instant::now();
        store.append_oneway("t", p, &msg)?;
        lat.push((t.elapsed().as_nanos() as u64, i));
    }
    let mut sorted: Vec<u64> = lat.iter().map(|l| l.0).collect();
    sorted.sort_unstable();
    let pct = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    println!(
        "{n} appends of 100 B over {partitions} partition(s): p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, p99.99 {:.1} µs, max {:.1} µs",
        pct(0.5) as f64 / 1e3,
        pct(0.99) as f64 / 1e3,
        pct(0.999) as f64 / 1e3,
        pct(0.9999) as f64 / 1e3,
        *sorted.last().unwrap_or(&0) as f64 / 1e3
    );
    lat.sort_unstable_by_key(|l| std::cmp::Reverse(l.0));
    let worst: Vec<String> = lat
        .iter()
        .take(5)
        .map(|(ns, i)| format!("#{i}: {:.1} µs", *ns as f64 / 1e3))
        .collect();
    println!("slowest: {}", worst.join(", "));
    Ok(())
}
