//! The side-by-side engine comparison: runs the same mixed workload on every engine in a
//! temporary directory (or `--dir D`) and prints one column per engine.
//!
//! `cargo run --release --example compare [-- --dir D] [--full]`
//!
//! Workload per engine: async appends of 100-byte messages (throughput), durable appends under
//! `FlushPolicy::Sync` (p50/p99 latency), a full sequential read, files and bytes on disk, and
//! the time to reopen after a crash (no clean shutdown).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use duolog::{
    CommitLogOptions, EngineKind, FlushPolicy, Message, ReadLimits, StoreOptions, TopicConfig,
};

struct Settings {
    dir: Option<PathBuf>,
    messages: usize,
    sync_messages: usize,
}

fn settings() -> Settings {
    let mut s = Settings {
        dir: None,
        messages: 1_000_000,
        sync_messages: 2_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => s.dir = args.next().map(PathBuf::from),
            "--full" => {
                s.messages = 10_000_000;
                s.sync_messages = 20_000;
            }
            other => {
                eprintln!("unknown argument {other:?}; usage: compare [--dir D] [--full]");
                std::process::exit(2);
            }
        }
    }
    s
}

#[derive(Default)]
struct Row {
    append_rate: f64,
    sync_p50: Duration,
    sync_p99: Duration,
    sync_rate: f64,
    read_rate: f64,
    files: u64,
    bytes: u64,
    recovery: Duration,
}

fn options(engine: EngineKind, flush: FlushPolicy) -> StoreOptions {
    StoreOptions {
        engine: Some(engine),
        flush,
        commitlog: CommitLogOptions {
            file_size: 128 << 20,
            consume_queue_units: 300_000,
            ..CommitLogOptions::default()
        },
        ..StoreOptions::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn progress(engine: EngineKind, what: &str) {
    eprintln!("[{engine}] {what}");
}

fn run(engine: EngineKind, dir: &Path, s: &Settings) -> duolog::Result<Row> {
    let mut row = Row::default();
    let partitions = 8u32;
    {
        progress(engine, &format!("async append of {} x 100 B", s.messages));
        let store = duolog::open(dir, options(engine, FlushPolicy::default()))?;
        store.create_topic("bench", TopicConfig::with_partitions(partitions))?;
        let one = [Message::new(vec![b'm'; 100])];
        let start = Instant::now();
        let mut n = 0usize;
        let mut p = 0u32;
        while n < s.messages {
            store.append_oneway("bench", p, &one)?;
            n += 1;
            p = (p + 1) % partitions;
        }
        store.sync()?;
        row.append_rate = n as f64 / start.elapsed().as_secs_f64();

        progress(engine, "sequential read of everything");
        let start = Instant::now();
        let mut read = 0usize;
        for p in 0..partitions {
            let b = store.bounds("bench", p)?;
            let mut at = b.start;
            while at < b.end {
                let recs = store.read(
                    "bench",
                    p,
                    at,
                    ReadLimits {
                        max_messages: 4096,
                        max_bytes: 8 << 20,
                    },
                )?;
                at += recs.len() as u64;
                read += recs.len();
            }
        }
        row.read_rate = read as f64 / start.elapsed().as_secs_f64();
        let usage = store.disk_usage()?;
        row.files = usage.files;
        row.bytes = usage.bytes;
        store.close()?;
    }
    {
        progress(
            engine,
            &format!(
                "durable (Sync policy) append of {} messages",
                s.sync_messages
            ),
        );
        let store = duolog::open(dir, options(engine, FlushPolicy::Sync))?;
        let m = [Message::new(vec![b's'; 100])];
        let mut lat = Vec::with_capacity(s.sync_messages);
        let start = Instant::now();
        for i in 0..s.sync_messages {
            let t = Instant::now();
            store.append("bench", i as u32 % partitions, &m)?;
            lat.push(t.elapsed());
        }
        row.sync_rate = s.sync_messages as f64 / start.elapsed().as_secs_f64();
        lat.sort_unstable();
        row.sync_p50 = percentile(&lat, 0.50);
        row.sync_p99 = percentile(&lat, 0.99);
        // Leave without a clean shutdown, as a crash would.
        store.append_oneway("bench", 0, &m)?;
        store.abandon();
    }
    progress(engine, "reopen after a crash");
    let start = Instant::now();
    let store = duolog::open(dir, options(engine, FlushPolicy::default()))?;
    row.recovery = start.elapsed();
    store.close()?;
    Ok(row)
}

fn main() {
    let s = settings();
    let tmp;
    let base = match &s.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir().expect("temporary directory");
            tmp.path().to_owned()
        }
    };
    let engines = [EngineKind::CommitLog, EngineKind::Segmented];
    let mut rows = Vec::new();
    for engine in engines {
        let dir = base.join(engine.name());
        if dir.exists() {
            eprintln!("{} exists; give an empty --dir", dir.display());
            std::process::exit(2);
        }
        match run(engine, &dir, &s) {
            Ok(r) => rows.push((engine, r)),
            Err(e) => {
                eprintln!("[{engine}] failed: {e}");
                std::process::exit(1);
            }
        }
    }
    println!();
    print!("{:<34}", "");
    for (e, _) in &rows {
        print!("{:>16}", e.name());
    }
    println!();
    let line = |name: &str, f: &dyn Fn(&Row) -> String| {
        print!("{name:<34}");
        for (_, r) in &rows {
            print!("{:>16}", f(r));
        }
        println!();
    };
    line("append, async, 100 B (msg/s)", &|r| {
        format!("{:.0}", r.append_rate)
    });
    line("append, sync, 1 thread (msg/s)", &|r| {
        format!("{:.0}", r.sync_rate)
    });
    line("sync append latency p50", &|r| {
        format!("{:.1?}", r.sync_p50)
    });
    line("sync append latency p99", &|r| {
        format!("{:.1?}", r.sync_p99)
    });
    line("sequential read (msg/s)", &|r| {
        format!("{:.0}", r.read_rate)
    });
    line("files on disk", &|r| r.files.to_string());
    line("bytes on disk (allocated)", &|r| {
        format!("{:.1} MiB", r.bytes as f64 / (1 << 20) as f64)
    });
    line("reopen after crash", &|r| format!("{:.1?}", r.recovery));
    println!(
        "\n{} messages per engine; directory {}",
        s.messages,
        base.display()
    );
}
