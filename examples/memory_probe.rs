//! Peak memory of an engine as data grows, with default options: appends `GIB` GiB of
//! `SIZE`-byte messages, one per `append`, round-robin over `PARTITIONS` partitions, then reads
//! everything back once. Measure its peak RSS with `/usr/bin/time -f '%e s %M KB'`.
//! The store lives in a temporary directory removed at the end (check the free disk first).
//!
//! Run: `cargo run --release --example memory_probe -- [commitlog|segmented] [GIB [PARTITIONS [SIZE]]]`
//! (default: the CommitLog engine, 1 GiB, 1 partition, 1,000 bytes). Nothing here asserts
//! anything.

use std::time::Instant;

use duolog::{EngineKind, Message, ReadLimits, StoreOptions, TopicConfig};

/// `VmHWM` (peak resident) and `VmRSS` of this process, from `/proc/self/status`.
fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("?".to_owned(), |v| v.trim().to_owned())
    };
    let mut out = format!("peak {} now {}", field("VmHWM:"), field("VmRSS:"));
    // Resident kB by mapped file kind (commit log, consume queues, index, anonymous).
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut by_kind: std::collections::BTreeMap<String, u64> = Default::default();
    let mut kind = String::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let path = line.split_whitespace().nth(5).unwrap_or("[anon]");

            // CommitLog files by directory; segmented files by extension.
            kind = [
                "commitlog",
                "consumequeue",
                ".timeindex",
                ".index",
                ".log",
                "index",
            ]
            .iter()
            .find(|k| path.contains(*k))
            .map_or_else(|| "other".to_owned(), |k| (*k).to_owned());
        } else if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            *by_kind.entry(kind.clone()).or_default() += kb;
        }
    }
    for (k, kb) in by_kind {
        out += &format!(", {k} {kb} kB");
    }
    out
}

fn main() -> duolog::Result<()> {
    let engine = std::env::args()
        .skip(1)
        .find_map(|a| EngineKind::from_name(&a))
        .unwrap_or(EngineKind::CommitLog);
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let gib = args.first().copied().unwrap_or(1);
    let partitions = args.get(1).copied().unwrap_or(1).max(1) as u32;
    let size = args.get(2).copied().unwrap_or(1000).max(8) as usize;
    let dir = tempfile::tempdir().map_err(|e| duolog::Error::InvalidArgument(e.to_string()))?;
    let mut options = StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    };
    if std::env::var_os("PROBE_NO_WARM").is_some() {
        options.commitlog.warm_files = false;
    }
    let store = duolog::open(dir.path(), options)?;
    store.create_topic("t", TopicConfig::with_partitions(partitions))?;
    let n = (gib << 30) / size as u64;
    let t = Instant::now();
    let mut body = vec![b'm'; size];
    for i in 0..n {
        body[..8].copy_from_slice(&i.to_be_bytes());
        store.append(
            "t",
            (i % u64::from(partitions)) as u32,
            &[Message::new(body.clone())],
        )?;
        if std::env::var_os("PROBE_DEBUG").is_some() && i % 100_000 == 0 {
            eprintln!("{i}: {}", rss());
        }
    }
    store.sync()?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{engine}: appended {n} × {size} B ({gib} GiB) over {partitions} partitions in {secs:.1} s ({:.0} msg/s); {}",
        n as f64 / secs,
        rss()
    );
    let t = Instant::now();
    let mut read = 0u64;
    for p in 0..partitions {
        let mut next = 0;
        loop {
            let recs = store.read("t", p, next, ReadLimits::messages(8192))?;
            let Some(last) = recs.last() else { break };
            next = last.offset() + 1;
            read += recs.len() as u64;
        }
    }
    println!(
        "read {read} back in {:.1} s; {}",
        t.elapsed().as_secs_f64(),
        rss()
    );
    store.close()?;
    Ok(())
}
