//! Reads 100-byte messages back in a loop for profiling (issue 16's sequential read):
//! `cargo run --release --example profile_read -- [commitlog|segmented|raw][-read_with] [messages] [rounds]`
//! (`raw`: the benches' raw framed peer, length + CRC-32 + body per message, read with one
//! `pread` per fetch — the baseline issue 16's ratios are taken against).
//! Appends `messages` (default 1,000,000) one per call with default `StoreOptions`, then reads
//! them from the start `rounds` times (default 10) in fetches of at most 8,192 messages / 1 MiB,
//! and prints the rate over the thread's CPU time (the machine is shared: wall time is noise).
//! `timed loop starts` goes to stderr before the read loop, for `perf record -D`. An engine name
//! ending in `-read_with` reads through `LogStore::read_with` (the borrowed visitor) instead;
//! one ending in `-random` reads `rounds` single messages at pseudo-random offsets instead
//! (`read/random` of the read bench: `ReadLimits::messages(1)`).

use std::time::Instant;

use duolog::{EngineKind, Message, ReadLimits, StoreOptions, TopicConfig};

#[path = "../benches/common/peers.rs"]
mod peers;

/// CPU time this thread has used.
fn thread_cpu() -> std::time::Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::time::Duration::from_nanos(ns)
}

fn main() -> duolog::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_default();
    let visiting = name.ends_with("-read_with");
    let random = name.ends_with("-random");
    let engine = match name
        .trim_end_matches("-read_with")
        .trim_end_matches("-random")
    {
        "segmented" => EngineKind::Segmented,
        _ => EngineKind::CommitLog,
    };
    let messages: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let dir = tempfile::tempdir().map_err(|e| duolog::Error::InvalidArgument(e.to_string()))?;
    if name == "raw" {
        raw(dir.path(), messages, rounds);
        return Ok(());
    }
    let opts = StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    };
    let store = duolog::open(dir.path(), opts)?;
    store.create_topic("bench", TopicConfig::with_partitions(1))?;
    let msg = [Message::new(vec![b'r'; 100])];
    for _ in 0..messages {
        store.append("bench", 0, &msg)?;
    }
    store.sync()?;
    let limits = ReadLimits {
        max_messages: 8192,
        max_bytes: 1 << 20,
        ..ReadLimits::default()
    };
    eprintln!("timed loop starts");
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let mut n = 0u64;
    let mut sum = 0usize;
    if random {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..rounds {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let records = store.read("bench", 0, x % messages, ReadLimits::messages(1))?;
            sum += records.iter().map(|r| r.body().len()).sum::<usize>();
            n += records.len() as u64;
        }
        report(n, sum, cpu, wall);
        return Ok(());
    }
    for _ in 0..rounds {
        let mut at = 0;
        while at < messages && visiting {
            let p = store.read_with("bench", 0, at, limits, &mut |r| {
                sum += r.body().len();
                std::ops::ControlFlow::Continue(())
            })?;
            at = p.next_offset;
            n += p.visited as u64;
        }
        while at < messages {
            let records = store.read("bench", 0, at, limits)?;
            for r in &records {
                sum += r.body().len();
            }
            at += records.len() as u64;
            n += records.len() as u64;
        }
    }
    report(n, sum, cpu, wall);
    Ok(())
}

/// The raw framed peer, written and read as the engines are.
fn raw(dir: &std::path::Path, messages: u64, rounds: u32) {
    let peer = peers::open("raw-per-partition", dir, 1);
    let msg = [Message::new(vec![b'r'; 100])];
    for _ in 0..messages {
        peer.append(0, &msg);
    }
    peer.sync();
    peer.publish();
    eprintln!("timed loop starts");
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let (mut n, mut sum) = (0u64, 0usize);
    for _ in 0..rounds {
        let mut at = 0;
        while at < messages {
            let got = peer.read(0, at, 8192, &mut |body| sum += body.len());
            at += got as u64;
            n += got as u64;
        }
    }
    report(n, sum, cpu, wall);
}

fn report(n: u64, sum: usize, cpu: std::time::Duration, wall: Instant) {
    let cpu = (thread_cpu() - cpu).as_secs_f64();
    let wall = wall.elapsed().as_secs_f64();
    println!(
        "{n} messages ({sum} body bytes): {:.2} M/s by thread CPU, {:.2} M/s by wall time",
        n as f64 / cpu / 1e6,
        n as f64 / wall / 1e6
    );
}
