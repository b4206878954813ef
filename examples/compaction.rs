//! Log compaction on both engines, with default store options, measured the way a user meets it:
//! 1. `--updates` updates (default 1,000,000) over `--keys` keys (default 10,000) of 100-byte
//!    values into a `compact` topic (`segment.bytes` = 8 MiB so the head the cleaner leaves alone
//!    is small), then one `compact()`: cleaner throughput (MB/s of the log it read), bytes before
//!    and after, and a `CompactedTable` rebuilt from the compacted topic, checked key by key;
//! 2. append throughput into another topic alone, and while the cleaner compacts the same amount
//!    of fresh updates on another thread;
//! 3. with `--memory-keys N` (e.g. 10000000), instead of 1 and 2: N distinct keys, then `compact()` while a thread
//!    samples the process's anonymous memory (the cleaner's offset map and buffers; mapped log
//!    pages are file-backed and not counted), reporting the peak above the level before.
//!
//! `cargo run --release --example compaction [-- --updates N] [--keys K] [--engine E]`
//! `cargo run --release --example compaction -- --memory-keys 10000000 --engine segmented`
//! (the memory run alone, one engine per process, so one engine's freed heap does not hide the
//! other's)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use duolog::{
    CleanupPolicy, CompactedTable, EngineKind, LogStore, Message, StoreOptions, TopicConfig,
};

struct Settings {
    updates: usize,
    keys: usize,
    memory_keys: Option<usize>,
    engines: Vec<EngineKind>,
}

fn settings() -> Settings {
    let mut s = Settings {
        updates: 1_000_000,
        keys: 10_000,
        memory_keys: None,
        engines: vec![EngineKind::CommitLog, EngineKind::Segmented],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--updates" => s.updates = num("--updates"),
            "--keys" => s.keys = num("--keys").max(1),
            "--memory-keys" => s.memory_keys = Some(num("--memory-keys")),
            "--engine" => {
                let name = args.next().unwrap_or_default();
                let engine = EngineKind::from_name(&name)
                    .unwrap_or_else(|| panic!("unknown engine {name:?}"));
                s.engines = vec![engine];
            }
            other => {
                eprintln!("unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    s
}

fn compact_config(partitions: u32) -> TopicConfig {
    TopicConfig {
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: Some(8 << 20),
        ..TopicConfig::with_partitions(partitions)
    }
}

fn open(engine: EngineKind, dir: &std::path::Path) -> Arc<dyn LogStore> {
    let options = StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    };
    Arc::from(duolog::open(dir, options).expect("open"))
}

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(100, b'v');
    v
}

/// Appends `updates` updates over `keys` keys, 100 per batch; returns the elapsed time.
fn write_updates(store: &dyn LogStore, topic: &str, updates: usize, keys: usize) -> Duration {
    let start = Instant::now();
    let mut batch = Vec::with_capacity(100);
    for i in 0..updates {
        batch.push(Message::new(value(i)).with_key(format!("key-{:08}", i % keys)));
        if batch.len() == 100 || i + 1 == updates {
            store.append(topic, 0, &batch).expect("append");
            batch.clear();
        }
    }
    start.elapsed()
}

fn rss_anon_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn run(engine: EngineKind, s: &Settings) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(engine, dir.path());
    store.create_topic("kv", compact_config(1)).expect("topic");
    let took = write_updates(store.as_ref(), "kv", s.updates, s.keys);
    let before = store.partition_bytes("kv", 0).expect("bytes");
    println!(
        "{engine}: wrote {} updates over {} keys in {:.2?} ({:.0} msg/s), {:.1} MB",
        s.updates,
        s.keys,
        took,
        s.updates as f64 / took.as_secs_f64(),
        mb(before)
    );
    let start = Instant::now();
    let report = store.compact(Some("kv")).expect("compact");
    let took = start.elapsed();
    let after = store.partition_bytes("kv", 0).expect("bytes");
    println!(
        "{engine}: compact() in {took:.2?}: {:.0} MB/s of log read; removed {} records; \
         partition {:.1} MB -> {:.1} MB ({:.1} % of before); report {:?}",
        mb(report.bytes_before) / took.as_secs_f64(),
        report.records_removed,
        mb(before),
        mb(after),
        100.0 * after as f64 / before.max(1) as f64,
        report
    );
    let disk = store.disk_usage().expect("usage");
    println!(
        "{engine}: store on disk: {} files, {:.1} MB allocated",
        disk.files,
        mb(disk.bytes)
    );
    let start = Instant::now();
    let table = CompactedTable::open(Arc::clone(&store), "kv").expect("table");
    let took = start.elapsed();
    let live = table.len().expect("len");
    println!(
        "{engine}: CompactedTable rebuilt in {took:.2?}: {live} keys from {} records read",
        table.records_read()
    );
    // Every key holds its latest value.
    for k in 0..s.keys.min(s.updates) {
        let last = k + (s.updates - 1 - k) / s.keys * s.keys;
        let got = table
            .get(format!("key-{k:08}").as_bytes())
            .expect("get")
            .expect("key present");
        assert_eq!(&got[..], &value(last)[..], "{engine}: key {k}");
    }
    println!("{engine}: every key reads its latest value");

    // Append throughput alone, then with the cleaner working on fresh updates.
    store
        .create_topic("events", TopicConfig::default())
        .expect("topic");
    let alone = append_rate(store.as_ref(), s.updates);
    write_updates(store.as_ref(), "kv", s.updates, s.keys);
    let cleaning = Arc::new(AtomicBool::new(true));
    let cleaned = Arc::new(AtomicU64::new(0));
    let cleaner = {
        let store = Arc::clone(&store);
        let cleaning = Arc::clone(&cleaning);
        let cleaned = Arc::clone(&cleaned);
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = store.compact(Some("kv")).expect("compact");
            cleaned.store(r.bytes_before, Ordering::Relaxed);
            cleaning.store(false, Ordering::Relaxed);
            start.elapsed()
        })
    };
    let during = append_rate(store.as_ref(), s.updates);
    let cleaner_took = cleaner.join().expect("cleaner");
    println!(
        "{engine}: appends alone {:.0} msg/s; during a concurrent compact() ({:.1} MB in \
         {cleaner_took:.2?}) {:.0} msg/s ({:.2}x)",
        alone,
        mb(cleaned.load(Ordering::Relaxed)),
        during,
        during / alone
    );
    drop(table);
    store.close().expect("close");
}

/// Appends `n` 100-byte messages to `events`, 100 per batch; returns messages per second.
fn append_rate(store: &dyn LogStore, n: usize) -> f64 {
    let batch: Vec<Message> = (0..100).map(|i| Message::new(value(i))).collect();
    let start = Instant::now();
    for _ in 0..n / 100 {
        store.append("events", 0, &batch).expect("append");
    }
    (n / 100 * 100) as f64 / start.elapsed().as_secs_f64()
}

fn memory(engine: EngineKind, keys: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(engine, dir.path());
    store.create_topic("kv", compact_config(1)).expect("topic");
    let took = write_updates(store.as_ref(), "kv", keys, keys);
    let base = rss_anon_kb().unwrap_or(0);
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kb) = rss_anon_kb() {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let start = Instant::now();
    let report = store.compact(Some("kv")).expect("compact");
    let cleaned_in = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    println!(
        "{engine}: {keys} distinct keys written in {took:.2?}; compact() in {cleaned_in:.2?} \
         cleaned {} partition(s), removed {}; anonymous memory peak {:.1} MB above the {:.1} MB \
         before (offset map budget: {} MB)",
        report.partitions_cleaned,
        report.records_removed,
        (peak.load(Ordering::Relaxed).saturating_sub(base)) as f64 / 1024.0,
        base as f64 / 1024.0,
        StoreOptions::default().compaction.offset_map_bytes >> 20
    );
    store.close().expect("close");
}

fn main() {
    let s = settings();
    for &engine in &s.engines {
        match s.memory_keys {
            Some(keys) => memory(engine, keys),
            None => run(engine, &s),
        }
    }
}
