//! The side-by-side engine comparison: runs the same mixed workload on every engine in a
//! temporary directory (or `--dir D`) and prints one column per engine.
//!
//! `cargo run --release --example compare [-- --dir D] [--full] [--svg PATH]`
//!
//! Workload per engine: async appends of 100-byte messages over 8 partitions (throughput and
//! sampled p50/p99 latency), durable appends under `FlushPolicy::Sync` (p50/p99 latency), a full
//! sequential read, files and bytes on disk, the time to reopen after a crash (no clean
//! shutdown), and fan-out: the same appends round-robin over 1, 16, 256 and 1,024 partitions
//! (4,096 too with `--full`), with the file descriptors the store holds open at each count. The
//! fan-out figures also go to an SVG chart (default `target/duolog-compare.svg`). The default
//! run takes well under a minute on 2 cores; `--full` writes ten times as much. Every engine
//! runs with `StoreOptions::default()`: what it prints is what a new user gets.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use duolog::{EngineKind, FlushPolicy, Message, ReadLimits, StoreOptions, TopicConfig};

struct Settings {
    dir: Option<PathBuf>,
    svg: PathBuf,
    messages: usize,
    sync_messages: usize,
    fanout_messages: usize,
    fanout_partitions: Vec<u32>,
}

fn settings() -> Settings {
    let mut s = Settings {
        dir: None,
        svg: PathBuf::from("target/duolog-compare.svg"),
        messages: 1_000_000,
        sync_messages: 2_000,
        fanout_messages: 300_000,
        fanout_partitions: vec![1, 16, 256, 1024],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => s.dir = args.next().map(PathBuf::from),
            "--svg" => {
                if let Some(p) = args.next() {
                    s.svg = PathBuf::from(p);
                }
            }
            "--full" => {
                s.messages = 10_000_000;
                s.sync_messages = 20_000;
                s.fanout_messages = 3_000_000;
                s.fanout_partitions = vec![1, 16, 256, 1024, 4096];
            }
            other => {
                eprintln!(
                    "unknown argument {other:?}; usage: compare [--dir D] [--full] [--svg PATH]"
                );
                std::process::exit(2);
            }
        }
    }
    s
}

#[derive(Default)]
struct Row {
    append_rate: f64,
    append_p50: Duration,
    append_p99: Duration,
    sync_p50: Duration,
    sync_p99: Duration,
    sync_rate: f64,
    read_rate: f64,
    files: u64,
    bytes: u64,
    recovery: Duration,
    /// (partitions, messages/s, file descriptors the store holds open).
    fanout: Vec<(u32, f64, usize)>,
}

/// What a new user gets: the default options, with only the engine (and, for the durable
/// phase, the flush policy) chosen. No row of the comparison is tuned.
fn options(engine: EngineKind, flush: FlushPolicy) -> StoreOptions {
    StoreOptions {
        engine: Some(engine),
        flush,
        ..StoreOptions::default()
    }
}

/// The fan-out phase runs with the same defaults (`max_open_files` 512 and all).
fn fanout_options(engine: EngineKind) -> StoreOptions {
    options(engine, FlushPolicy::default())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn progress(engine: EngineKind, started: Instant, what: &str) {
    eprintln!(
        "[{:>6.1}s] {engine}: {what}",
        started.elapsed().as_secs_f64()
    );
}

/// File descriptors this process holds open (`None` where `/proc/self/fd` does not exist).
fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Appends `messages` 100-byte messages round-robin over `partitions` partitions of a fresh
/// store; returns messages/s and the file descriptors the store holds open afterwards.
fn fanout(
    engine: EngineKind,
    dir: &Path,
    partitions: u32,
    messages: usize,
) -> duolog::Result<(f64, usize)> {
    let fds_before = open_fds().unwrap_or(0);
    let store = duolog::open(dir, fanout_options(engine))?;
    store.create_topic("fan", TopicConfig::with_partitions(partitions))?;
    let one = [Message::new(vec![b'f'; 100])];
    // Every partition's files exist before timing starts.
    for p in 0..partitions {
        store.append_oneway("fan", p, &one)?;
    }
    let start = Instant::now();
    let mut p = 0u32;
    for _ in 0..messages {
        store.append_oneway("fan", p, &one)?;
        p += 1;
        if p == partitions {
            p = 0;
        }
    }
    let rate = messages as f64 / start.elapsed().as_secs_f64();
    let fds = open_fds().unwrap_or(0).saturating_sub(fds_before);
    store.close()?;
    drop(store);
    // Free the space before the next count.
    std::fs::remove_dir_all(dir).map_err(|e| duolog::Error::InvalidArgument(e.to_string()))?;
    Ok((rate, fds))
}

fn run(engine: EngineKind, dir: &Path, s: &Settings, started: Instant) -> duolog::Result<Row> {
    let mut row = Row::default();
    let partitions = 8u32;
    {
        progress(
            engine,
            started,
            &format!(
                "async append of {} x 100 B over {partitions} partitions",
                s.messages
            ),
        );
        let store = duolog::open(dir, options(engine, FlushPolicy::default()))?;
        store.create_topic("bench", TopicConfig::with_partitions(partitions))?;
        let one = [Message::new(vec![b'm'; 100])];
        // Every 64th append is timed on its own (timing each would add two clock reads to a
        // sub-microsecond operation).
        let mut lat = Vec::with_capacity(s.messages / 64 + 1);
        let start = Instant::now();
        let mut p = 0u32;
        for n in 0..s.messages {
            if n % 64 == 0 {
                let t = Instant::now();
                store.append_oneway("bench", p, &one)?;
                lat.push(t.elapsed());
            } else {
                store.append_oneway("bench", p, &one)?;
            }
            p = (p + 1) % partitions;
            if (n + 1) % (s.messages / 4).max(1) == 0 {
                progress(
                    engine,
                    started,
                    &format!("  {}% appended", (n + 1) * 100 / s.messages),
                );
            }
        }
        store.sync()?;
        row.append_rate = s.messages as f64 / start.elapsed().as_secs_f64();
        lat.sort_unstable();
        row.append_p50 = percentile(&lat, 0.50);
        row.append_p99 = percentile(&lat, 0.99);

        progress(engine, started, "sequential read of everything");
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
                        ..ReadLimits::default()
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
            started,
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
    progress(engine, started, "reopen after a crash");
    let start = Instant::now();
    let store = duolog::open(dir, options(engine, FlushPolicy::default()))?;
    row.recovery = start.elapsed();
    store.close()?;
    drop(store);
    for &n in &s.fanout_partitions {
        progress(
            engine,
            started,
            &format!(
                "fan-out: {} appends round-robin over {n} partitions",
                s.fanout_messages
            ),
        );
        let (rate, fds) = fanout(
            engine,
            &dir.with_extension(format!("fanout-{n}")),
            n,
            s.fanout_messages,
        )?;
        row.fanout.push((n, rate, fds));
    }
    Ok(row)
}

/// The fan-out figures as an SVG line chart: messages/s (y, from 0) against partitions (x, log
/// scale), one line per engine.
fn svg(rows: &[(EngineKind, Row)]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 90.0, 160.0, 40.0, 60.0);
    let xs: Vec<f64> = rows[0].1.fanout.iter().map(|f| f.0 as f64).collect();
    let (xmin, xmax) = (
        xs.first().copied().unwrap_or(1.0).log2(),
        xs.last().copied().unwrap_or(2.0).log2().max(1.0),
    );
    let ymax = rows
        .iter()
        .flat_map(|(_, r)| r.fanout.iter().map(|f| f.1))
        .fold(1.0, f64::max)
        * 1.1;
    let x = |v: f64| left + (v.log2() - xmin) / (xmax - xmin) * (w - left - right);
    let y = |v: f64| h - bottom - v / ymax * (h - top - bottom);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">\
         Append throughput (100 B, async) against partition count</text>\n",
        w / 2.0
    );
    // Axes, ticks and grid.
    out += &format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for &v in &xs {
        out += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{v}</text>\n",
            x(v),
            h - bottom + 18.0
        );
    }
    out += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">partitions (log scale)</text>\n",
        (left + w - right) / 2.0,
        h - 16.0
    );
    for i in 0..=4 {
        let v = ymax / 1.1 * i as f64 / 4.0;
        out += &format!(
            "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.2} M/s</text>\n",
            y(v),
            w - right,
            y(v),
            left - 6.0,
            y(v) + 4.0,
            v / 1e6
        );
    }
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
    for (i, (engine, row)) in rows.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<String> = row
            .fanout
            .iter()
            .map(|f| format!("{:.1},{:.1}", x(f.0 as f64), y(f.1)))
            .collect();
        out += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        );
        for f in &row.fanout {
            out += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n",
                x(f.0 as f64),
                y(f.1)
            );
        }
        let ly = top + 20.0 + 20.0 * i as f64;
        out += &format!(
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" \
             stroke-width=\"2\"/>\n<text x=\"{}\" y=\"{}\">{}</text>\n",
            w - right + 12.0,
            w - right + 36.0,
            w - right + 42.0,
            ly + 4.0,
            engine.name()
        );
    }
    out + "</svg>\n"
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
    let started = Instant::now();
    for engine in engines {
        let dir = base.join(engine.name());
        if dir.exists() {
            eprintln!("{} exists; give an empty --dir", dir.display());
            std::process::exit(2);
        }
        match run(engine, &dir, &s, started) {
            Ok(r) => rows.push((engine, r)),
            Err(e) => {
                eprintln!("[{engine}] failed: {e}");
                std::process::exit(1);
            }
        }
    }
    println!();
    println!("every engine with StoreOptions::default() (no row is tuned)");
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
    line("async append latency p50", &|r| {
        format!("{:.1?}", r.append_p50)
    });
    line("async append latency p99", &|r| {
        format!("{:.1?}", r.append_p99)
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
    let at = |r: &Row, n: u32| r.fanout.iter().find(|f| f.0 == n).copied();
    for &n in &s.fanout_partitions {
        line(&format!("fan-out, {n} partitions (msg/s)"), &|r| {
            at(r, n).map_or("-".into(), |f| format!("{:.0}", f.1))
        });
    }
    line(
        "fan-out ratio, 256 vs 1 partition",
        &|r| match (at(r, 256), at(r, 1)) {
            (Some(a), Some(b)) => format!("{:.0}%", a.1 / b.1 * 100.0),
            _ => "-".into(),
        },
    );
    let most = s.fanout_partitions.last().copied().unwrap_or(1);
    line(&format!("files open at {most} partitions"), &|r| {
        at(r, most).map_or("-".into(), |f| f.2.to_string())
    });
    line("files open at 256 partitions", &|r| {
        at(r, 256).map_or("-".into(), |f| f.2.to_string())
    });
    println!(
        "\n{} messages per engine ({} per fan-out point); directory {}; {:.1}s in all",
        s.messages,
        s.fanout_messages,
        base.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(parent) = s.svg.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&s.svg, svg(&rows)) {
        Ok(()) => println!("fan-out chart: {}", s.svg.display()),
        Err(e) => eprintln!("could not write {}: {e}", s.svg.display()),
    }
}
