//! Issue 16's scoreboard in one command: every row of the measurement table for four
//! columns (raw framed `write()`, the `commitlog` crate, the CommitLog engine, the segmented
//! engine), the ratios the targets use, group commit at 1 and 64 threads, peak RSS of
//! every cell, and the machine's own limits measured in the same run.
//!
//! `cargo run --release --example scoreboard -- --dir /tmp/x [--quick]`
//!
//! - Both engines run with `StoreOptions::default()` through the public `LogStore` trait (the
//!   durable rows choose `FlushPolicy::Sync`, nothing else); no row is tuned. The raw and crate
//!   peers are the benches' own (`benches/common/peers.rs`): one file / one crate log per
//!   partition, 256 MiB crate segments, and the crate's sync fdatasyncs its segment files.
//! - Every cell (one workload on one peer) runs in a child process — this program re-executing
//!   itself with the hidden `--cell` argument — so its peak RSS (`VmHWM`) is its own, and its
//!   directory is removed as soon as it ends.
//! - `--dir` must not exist yet or be empty; it is removed at the end. The run refuses to start
//!   with less than 10 GB free there (1 GB under `--quick`).
//! - `--quick` writes far fewer messages and uses 1 / 16 / 64 partitions instead of
//!   1 / 256 / 1,024 (same workloads, rows labelled with the sizes used) for a smoke run; its
//!   figures are not comparable with a full run's.
//!
//! Output: a markdown table on stdout ready to paste into BENCHMARKS.md, with the command line
//! and the date; progress goes to stderr. A full run took 3.8–5.5 minutes on the loaded 2-vCPU
//! machine, most of it creating and closing 1,024 partitions (directory and file syncs).
//! Nothing here asserts a speed.

#[path = "../benches/common/peers.rs"]
mod peers;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duolog::{EngineKind, FlushPolicy, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};
use peers::Peer;

/// The four columns, in the order.
const COLUMNS: [(&str, &str); 4] = [
    ("raw", "raw framed `write()`"),
    ("crate", "`commitlog` crate"),
    ("commitlog", "CommitLog engine"),
    ("segmented", "segmented engine"),
];

/// Threads of the group-commit rows, spread over this many partitions (as `benches/sync.rs`).
const GROUP_THREADS: [usize; 2] = [1, 64];
const GROUP_PARTITIONS: u32 = 16;

/// How much each workload writes.
#[derive(Clone, Copy)]
struct Sizes {
    append_100: usize,
    append_1k: usize,
    read: usize,
    fanout: usize,
    /// The fan-out partition counts (the 1 / 256 / 1,024 in a full run).
    fanout_partitions: [u32; 3],
    /// Partitions of the creation rows.
    create: u32,
    durable: usize,
    /// Appends of the 1-thread group-commit cell; the 64-thread cell makes this many per thread
    /// divided by 16 (at least 2 each).
    group: usize,
    /// Bytes of the machine's sequential write/read file.
    machine_file: usize,
    /// Samples of the 4 KiB write + fdatasync latency.
    fsync_samples: usize,
    /// Size of each memcpy buffer and how many copies are timed.
    memcpy_bytes: usize,
    memcpy_rounds: usize,
    /// Free space required before starting, in GB.
    free_gb: u64,
}

const FULL: Sizes = Sizes {
    append_100: 1_000_000,
    append_1k: 500_000,
    read: 1_000_000,
    fanout: 200_000,
    fanout_partitions: [1, 256, 1024],
    create: 1024,
    // Each durable append waits for the device (0.2–8 ms here), so these are kept small.
    durable: 1_000,
    group: 1_000,
    machine_file: 512 << 20,
    fsync_samples: 500,
    memcpy_bytes: 64 << 20,
    memcpy_rounds: 16,
    free_gb: 10,
};

const QUICK: Sizes = Sizes {
    append_100: 20_000,
    append_1k: 5_000,
    read: 20_000,
    fanout: 5_000,
    // Creating and closing 1,024 partitions is bound by directory and file syncs (tens of
    // seconds on a loaded disk), so the smoke run takes fewer; the rows are labelled with the
    // counts used.
    fanout_partitions: [1, 16, 64],
    create: 64,
    durable: 50,
    group: 64,
    machine_file: 8 << 20,
    fsync_samples: 50,
    memcpy_bytes: 4 << 20,
    memcpy_rounds: 4,
    free_gb: 1,
};

struct Args {
    dir: PathBuf,
    quick: bool,
    /// Hidden: run one cell (`workload` on `peer`) in this process and print its figures.
    cell: Option<(String, String)>,
    /// Hidden: the free space to require, in GB, instead of the default (lets a test see the
    /// refusal without filling a disk).
    free_gb: Option<u64>,
}

const USAGE: &str = "usage: scoreboard --dir DIR [--quick]";

fn args() -> Result<Args, String> {
    let mut dir = None;
    let mut quick = false;
    let mut cell = None;
    let mut free_gb = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(it.next().ok_or("--dir needs a directory")?)),
            "--quick" => quick = true,
            "--cell" => {
                let w = it.next().ok_or("--cell needs a workload")?;
                let p = it.next().ok_or("--cell needs a peer")?;
                cell = Some((w, p));
            }
            "--require-free-gb" => {
                let n = it.next().ok_or("--require-free-gb needs a number")?;
                free_gb = Some(n.parse().map_err(|_| format!("not a number: {n:?}"))?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        dir: dir.ok_or("--dir is required")?,
        quick,
        cell,
        free_gb,
    })
}

// ---------------------------------------------------------------------------------------------
// The peers

/// A duolog engine with default options behind the benches' `Peer` trait, through `LogStore`.
struct Engine(Box<dyn LogStore>);

impl Engine {
    fn open(dir: &Path, engine: EngineKind, partitions: u32, flush: FlushPolicy) -> Engine {
        let options = StoreOptions {
            engine: Some(engine),
            flush,
            ..StoreOptions::default()
        };
        let s = duolog::open(dir, options).expect("open the store");
        s.create_topic("bench", TopicConfig::with_partitions(partitions))
            .expect("create the topic");
        Engine(s)
    }
}

impl Peer for Engine {
    fn append(&self, partition: u32, batch: &[Message]) {
        self.0.append("bench", partition, batch).expect("append");
    }
    fn sync(&self) {
        self.0.sync().expect("sync");
    }
    fn read(&self, partition: u32, offset: u64, max: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let limits = ReadLimits {
            max_messages: max,
            max_bytes: 1 << 20,
            ..ReadLimits::default()
        };
        let records = self
            .0
            .read("bench", partition, offset, limits)
            .expect("read");
        for r in &records {
            each(r.body());
        }
        records.len()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // A clean close is part of every cell; an error here is a failed cell.
        self.0.close().expect("close");
    }
}

fn engine_kind(peer: &str) -> Option<EngineKind> {
    match peer {
        "commitlog" => Some(EngineKind::CommitLog),
        "segmented" => Some(EngineKind::Segmented),
        _ => None,
    }
}

/// Opens `peer` with `partitions` partitions; `durable` selects `FlushPolicy::Sync` for the
/// engines (the raw and crate peers are made durable by calling `sync` after each append).
fn open_peer(peer: &str, dir: &Path, partitions: u32, durable: bool) -> Box<dyn Peer> {
    std::fs::create_dir_all(dir).expect("cell directory");
    match (peer, engine_kind(peer)) {
        (_, Some(kind)) => {
            let flush = if durable {
                FlushPolicy::Sync
            } else {
                FlushPolicy::default()
            };
            Box::new(Engine::open(dir, kind, partitions, flush))
        }
        ("raw", None) => peers::open("raw-per-partition", dir, partitions),
        ("crate", None) => peers::open("commitlog-crate", dir, partitions),
        (other, None) => panic!("unknown peer {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The cells (run in a child process)

/// Figures one cell reports, by name.
type Figures = BTreeMap<String, f64>;

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Appends `n` messages of `size` bytes to partition 0, one per call, then syncs; returns the
/// time taken.
fn append_sync(peer: &dyn Peer, n: usize, size: usize) -> Duration {
    let one = [Message::new(vec![b'a'; size])];
    let t = Instant::now();
    for _ in 0..n {
        peer.append(0, &one);
    }
    peer.sync();
    t.elapsed()
}

/// Round-robin appends of 100-byte messages over `partitions`.
fn fan_out(peer: &dyn Peer, partitions: u32, n: usize) {
    let one = [Message::new(vec![b'f'; 100])];
    let mut p = 0;
    for _ in 0..n {
        peer.append(p, &one);
        p += 1;
        if p == partitions {
            p = 0;
        }
    }
}

/// Allocated bytes of every file under `dir` (preallocated space counts, holes do not).
fn allocated(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            allocated(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))]
}

/// Peak resident set of this process so far, in bytes (`VmHWM`).
fn peak_rss() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0)
}

fn run_cell(workload: &str, peer: &str, dir: &Path, s: Sizes) -> Figures {
    let mut f = Figures::new();
    let mut put = |k: &str, v: f64| {
        f.insert(k.to_owned(), v);
    };
    match workload {
        "append100" => {
            let p = open_peer(peer, dir, 1, false);
            put(
                "rate",
                rate(s.append_100, append_sync(&*p, s.append_100, 100)),
            );
        }
        "append1k" => {
            let p = open_peer(peer, dir, 1, false);
            put(
                "rate",
                rate(s.append_1k, append_sync(&*p, s.append_1k, 1024)),
            );
        }
        "read" => {
            let p = open_peer(peer, dir, 1, false);
            append_sync(&*p, s.read, 100);
            p.publish();
            let mut seen = 0usize;
            let t = Instant::now();
            loop {
                let n = p.read(0, seen as u64, 8192, &mut |b| {
                    std::hint::black_box(b);
                });
                if n == 0 {
                    break;
                }
                seen += n;
            }
            let d = t.elapsed();
            assert_eq!(seen, s.read, "{peer} read back a different count");
            put("rate", rate(seen, d));
        }
        "read_with" => {
            // The same read through the borrowed, visiting read (engines only: the raw and
            // crate peers' reads already hand out borrowed bodies).
            let kind = engine_kind(peer).expect("read_with runs on the engines");
            let e = Engine::open(dir, kind, 1, FlushPolicy::default());
            append_sync(&e, s.read, 100);
            let limits = ReadLimits {
                max_messages: 8192,
                max_bytes: 1 << 20,
                ..ReadLimits::default()
            };
            let mut seen = 0usize;
            let t = Instant::now();
            loop {
                let p =
                    e.0.read_with("bench", 0, seen as u64, limits, &mut |r| {
                        std::hint::black_box(r.body());
                        ControlFlow::Continue(())
                    })
                    .expect("read_with");
                if p.visited == 0 {
                    break;
                }
                seen += p.visited;
            }
            let d = t.elapsed();
            assert_eq!(seen, s.read, "{peer} read back a different count");
            put("rate", rate(seen, d));
        }
        "create" => {
            // What a user pays for `create` usable, durable partitions: open, create, one append
            // to each, sync.
            let t = Instant::now();
            let p = open_peer(peer, dir, s.create, false);
            fan_out(&*p, s.create, s.create as usize);
            p.sync();
            put("seconds", t.elapsed().as_secs_f64());
            put("disk", allocated(dir) as f64);
        }
        "create-fanout" => {
            let t = Instant::now();
            let p = open_peer(peer, dir, s.create, false);
            fan_out(&*p, s.create, s.fanout);
            put("rate", rate(s.fanout, t.elapsed()));
        }
        "durable" => {
            let p = open_peer(peer, dir, 1, true);
            let one = [Message::new(vec![b's'; 100])];
            let mut lat = Vec::with_capacity(s.durable);
            let t = Instant::now();
            for _ in 0..s.durable {
                let t0 = Instant::now();
                p.append(0, &one);
                if engine_kind(peer).is_none() {
                    p.sync();
                }
                lat.push(t0.elapsed());
            }
            put("rate", rate(s.durable, t.elapsed()));
            lat.sort_unstable();
            put("p50", percentile(&lat, 0.5).as_secs_f64());
        }
        "machine" => machine(dir, s, &mut put),
        w if w.starts_with("fanout-") => {
            let n: u32 = w["fanout-".len()..].parse().expect("partition count");
            let p = open_peer(peer, dir, n, false);
            // Every partition's files exist before timing starts.
            fan_out(&*p, n, n as usize);
            let t = Instant::now();
            fan_out(&*p, n, s.fanout);
            put("rate", rate(s.fanout, t.elapsed()));
        }
        w if w.starts_with("group-") => {
            let threads: usize = w["group-".len()..].parse().expect("thread count");
            let kind = engine_kind(peer).expect("group commit runs on the engines");
            let e = Engine::open(dir, kind, GROUP_PARTITIONS, FlushPolicy::Sync);
            for p in 0..GROUP_PARTITIONS {
                e.append(p, &[Message::new("warm")]);
            }
            let store = Arc::new(e);
            let per = if threads == 1 {
                s.group
            } else {
                (s.group / 16).max(2)
            };
            let t = Instant::now();
            std::thread::scope(|scope| {
                for i in 0..threads {
                    let store = Arc::clone(&store);
                    scope.spawn(move || {
                        let m = [Message::new(vec![b's'; 100])];
                        for _ in 0..per {
                            store.append(i as u32 % GROUP_PARTITIONS, &m);
                        }
                    });
                }
            });
            put("rate", rate(per * threads, t.elapsed()));
        }
        other => panic!("unknown workload {other}"),
    }
    put("rss", peak_rss());
    f
}

/// The machine's own limits: sequential write (buffered, then with the fdatasync), 4 KiB
/// write + fdatasync latency, memcpy, and a sequential read of a page-cached file.
fn machine(dir: &Path, s: Sizes, put: &mut dyn FnMut(&str, f64)) {
    std::fs::create_dir_all(dir).expect("cell directory");
    let path = dir.join("sequential");
    let chunk = vec![0x5au8; 1 << 20];
    {
        let mut f = std::fs::File::create(&path).expect("create");
        let t = Instant::now();
        let mut left = s.machine_file;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n]).expect("write");
            left -= n;
        }
        let buffered = t.elapsed();
        f.sync_data().expect("fdatasync");
        let synced = t.elapsed();
        put(
            "write_buffered",
            s.machine_file as f64 / buffered.as_secs_f64(),
        );
        put("write_synced", s.machine_file as f64 / synced.as_secs_f64());
    }
    {
        // The file was just written, so its pages are in the page cache.
        let mut f = std::fs::File::open(&path).expect("open");
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        let t = Instant::now();
        loop {
            let n = f.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            std::hint::black_box(&buf[..n]);
            total += n;
        }
        put("read_cached", total as f64 / t.elapsed().as_secs_f64());
    }
    std::fs::remove_file(&path).expect("remove");
    {
        let mut f = std::fs::File::create(dir.join("fsync")).expect("create");
        let block = [0xa5u8; 4096];
        let mut lat = Vec::with_capacity(s.fsync_samples);
        for _ in 0..s.fsync_samples {
            let t = Instant::now();
            f.write_all(&block).expect("write");
            f.sync_data().expect("fdatasync");
            lat.push(t.elapsed());
        }
        lat.sort_unstable();
        put("fsync_p50", percentile(&lat, 0.5).as_secs_f64());
    }
    {
        // Both buffers written before timing, so no page fault is timed.
        let from = vec![0x3cu8; s.memcpy_bytes];
        let mut to = vec![1u8; s.memcpy_bytes];
        to.copy_from_slice(&from);
        let t = Instant::now();
        for _ in 0..s.memcpy_rounds {
            to.copy_from_slice(std::hint::black_box(&from));
            std::hint::black_box(&mut to);
        }
        put(
            "memcpy",
            (s.memcpy_bytes * s.memcpy_rounds) as f64 / t.elapsed().as_secs_f64(),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: runs every cell in a child and prints the tables

/// Bytes free for an unprivileged user in the file system holding `dir`, from `df`.
fn free_bytes(dir: &Path) -> Result<u64, String> {
    let out = Command::new("df")
        .args(["-Pk"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run df to check free space: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("cannot read free space of {} from df", dir.display()))
}

fn run_child(workload: &str, peer: &str, dir: &Path, quick: bool) -> Result<Figures, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--cell", workload, peer, "--dir"]).arg(dir);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start the {workload}/{peer} cell: {e}"))?;
    // The cell's directory goes as soon as the cell ends, whatever happened.
    let _ = std::fs::remove_dir_all(dir);
    if !out.status.success() {
        return Err(format!("cell {workload}/{peer} failed: {}", out.status));
    }
    let mut f = Figures::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once('=')
            && let Ok(v) = v.parse()
        {
            f.insert(k.to_owned(), v);
        }
    }
    Ok(f)
}

/// Three significant digits with a k/M suffix: `6.55 M`, `665 k`, `46.8 k`.
fn count(v: f64) -> String {
    let (x, unit) = if v >= 1e6 {
        (v / 1e6, " M")
    } else if v >= 1e3 {
        (v / 1e3, " k")
    } else {
        (v, "")
    };
    let digits = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.digits$}{unit}")
}

fn ratio(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v < 0.1 {
        format!("{v:.3}×")
    } else {
        format!("{v:.2}×")
    }
}

fn duration(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.2} s")
    } else if secs >= 1e-3 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{:.0} µs", secs * 1e6)
    }
}

fn bytes(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1} GB", v / 1e9)
    } else {
        format!("{:.0} MB", v / 1e6)
    }
}

/// One table row: a label, a figure per column (None = not measured for that peer), and how
/// to print a figure.
struct Row {
    label: String,
    values: [Option<f64>; 4],
    show: fn(f64) -> String,
    /// Whether the ratio columns apply (engine ÷ raw, segmented ÷ crate).
    ratios: bool,
}

fn print_table(rows: &[Row]) {
    print!("| workload |");
    for (_, name) in COLUMNS {
        print!(" {name} |");
    }
    println!(" CommitLog ÷ raw | segmented ÷ raw | segmented ÷ crate |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        print!("| {} |", r.label);
        for v in r.values {
            print!(" {} |", v.map_or("—".into(), r.show));
        }
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if r.ratios && b > 0.0 => ratio(a / b),
            _ => "—".into(),
        };
        let [raw, krate, cl, seg] = r.values;
        println!(
            " {} | {} | {} |",
            div(cl, raw),
            div(seg, raw),
            div(seg, krate)
        );
    }
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let sizes = if a.quick { QUICK } else { FULL };
    if let Some((workload, peer)) = &a.cell {
        for (k, v) in run_cell(workload, peer, &a.dir, sizes) {
            println!("{k}={v}");
        }
        return ExitCode::SUCCESS;
    }
    match parent(&a, sizes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scoreboard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parent(a: &Args, s: Sizes) -> Result<(), String> {
    if a.dir.exists()
        && std::fs::read_dir(&a.dir)
            .map_err(|e| format!("{}: {e}", a.dir.display()))?
            .next()
            .is_some()
    {
        return Err(format!(
            "{} is not empty; give a new or empty --dir",
            a.dir.display()
        ));
    }
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let need = a.free_gb.unwrap_or(s.free_gb);
    let free = free_bytes(&a.dir)?;
    if free < need.saturating_mul(1_000_000_000) {
        let _ = std::fs::remove_dir(&a.dir);
        return Err(format!(
            "refusing to run: {:.1} GB free in {}, the run needs at least {need} GB",
            free as f64 / 1e9,
            a.dir.display()
        ));
    }
    let started = Instant::now();
    let mut results: BTreeMap<(String, String), Figures> = BTreeMap::new();
    let mut cells: Vec<(String, &str)> = vec![("machine".into(), "raw")];
    for w in ["append100", "append1k", "read"]
        .into_iter()
        .map(String::from)
        .chain(s.fanout_partitions.iter().map(|n| format!("fanout-{n}")))
        .chain(["create".into(), "create-fanout".into(), "durable".into()])
    {
        for (peer, _) in COLUMNS {
            cells.push((w.clone(), peer));
        }
    }
    for peer in ["commitlog", "segmented"] {
        cells.push(("read_with".into(), peer));
    }
    for t in GROUP_THREADS {
        for peer in ["commitlog", "segmented"] {
            cells.push((format!("group-{t}"), peer));
        }
    }
    for (i, (w, peer)) in cells.iter().enumerate() {
        eprintln!(
            "[{:>6.1}s] {}/{}: {w} on {peer}",
            started.elapsed().as_secs_f64(),
            i + 1,
            cells.len()
        );
        let dir = a.dir.join(format!("{w}-{peer}"));
        let f = run_child(w, peer, &dir, a.quick)?;
        results.insert((w.clone(), (*peer).to_owned()), f);
    }
    let _ = std::fs::remove_dir_all(&a.dir);
    let elapsed = started.elapsed();

    let get = |w: &str, peer: &str, k: &str| results.get(&(w.into(), peer.into()))?.get(k).copied();
    let per_peer = |w: &str, k: &str| COLUMNS.map(|(peer, _)| get(w, peer, k));
    let engines_only = |w: &str, k: &str| {
        let mut v = per_peer(w, k);
        v[0] = None;
        v[1] = None;
        v
    };
    let msgs = |v: f64| format!("{}/s", count(v));
    let mut rows = vec![
        Row {
            label: format!("append {} + final sync", thousands(s.append_100)),
            values: per_peer("append100", "rate"),
            show: msgs,
            ratios: true,
        },
        Row {
            label: format!("append {} × 1 KiB + sync", thousands(s.append_1k)),
            values: per_peer("append1k", "rate"),
            show: msgs,
            ratios: true,
        },
        Row {
            label: format!(
                "read {} back, fetches of ≤ 8,192 / 1 MiB",
                thousands(s.read)
            ),
            values: per_peer("read", "rate"),
            show: msgs,
            ratios: true,
        },
        Row {
            label: format!(
                "read {} back with `read_with` (borrowed visitor; raw and crate columns: their \
                 read above)",
                thousands(s.read)
            ),
            values: {
                let mut v = per_peer("read_with", "rate");
                v[0] = get("read", "raw", "rate");
                v[1] = get("read", "crate", "rate");
                v
            },
            show: msgs,
            ratios: true,
        },
    ];
    for n in s.fanout_partitions {
        rows.push(Row {
            label: format!(
                "fan-out: {} round-robin over {} partition{}",
                thousands(s.fanout),
                thousands(n as usize),
                if n == 1 { "" } else { "s" }
            ),
            values: per_peer(&format!("fanout-{n}"), "rate"),
            show: msgs,
            ratios: true,
        });
    }
    let [first, _, last] = s.fanout_partitions;
    let fan = |n: u32| per_peer(&format!("fanout-{n}"), "rate");
    let (lo, hi) = (fan(first), fan(last));
    rows.push(Row {
        label: format!(
            "fan-out ratio, {} ÷ {first} partition",
            thousands(last as usize)
        ),
        values: std::array::from_fn(|i| Some(hi[i]? / lo[i]?)),
        show: ratio,
        ratios: false,
    });
    rows.extend([
        Row {
            label: format!(
                "partition creation, {} partitions (open, create, one append each, sync)",
                thousands(s.create as usize)
            ),
            values: per_peer("create", "seconds"),
            show: duration,
            ratios: true,
        },
        Row {
            label: format!(
                "disk allocated after creating {} partitions",
                thousands(s.create as usize)
            ),
            values: per_peer("create", "disk"),
            show: bytes,
            ratios: true,
        },
        Row {
            label: format!(
                "fan-out over {} partitions with their creation inside the timed loop",
                thousands(s.create as usize)
            ),
            values: per_peer("create-fanout", "rate"),
            show: msgs,
            ratios: true,
        },
        Row {
            label: "durable append, 1 thread (msg/s)".into(),
            values: per_peer("durable", "rate"),
            show: msgs,
            ratios: true,
        },
        Row {
            label: "durable append, 1 thread (p50)".into(),
            values: per_peer("durable", "p50"),
            show: duration,
            ratios: true,
        },
    ]);
    for t in GROUP_THREADS {
        rows.push(Row {
            label: format!(
                "group commit, {t} thread{} over {GROUP_PARTITIONS} partitions",
                if t == 1 { "" } else { "s" }
            ),
            values: engines_only(&format!("group-{t}"), "rate"),
            show: msgs,
            ratios: false,
        });
    }
    let (g1, g64) = (
        engines_only("group-1", "rate"),
        engines_only("group-64", "rate"),
    );
    rows.push(Row {
        label: "group commit ratio, 64 ÷ 1 thread".into(),
        values: std::array::from_fn(|i| Some(g64[i]? / g1[i]?)),
        show: ratio,
        ratios: false,
    });
    let rss_append = per_peer("append100", "rss");
    let rss_fan = per_peer(&format!("fanout-{last}"), "rss");

    let args: Vec<String> = std::env::args().collect();
    println!(
        "Command: `cargo run --release --example scoreboard -- {}`  ",
        args[1..].join(" ")
    );
    println!("Date: {}  ", date());
    println!(
        "Default `StoreOptions` for both engines (the durable and group-commit rows choose \
         `FlushPolicy::Sync`); one message per `append` call; 100-byte messages unless said. \
         Ratios divide the figures as printed (for times, lower is better). Each cell ran in its \
         own process; {:.0} s in all.\n",
        elapsed.as_secs_f64()
    );
    print_table(&rows);
    print!(
        "| peak RSS, append {} / fan-out {} partitions |",
        thousands(s.append_100),
        thousands(last as usize)
    );
    for i in 0..4 {
        // Two figures per column, which the generic row cannot show.
        let a = rss_append[i].map_or("—".into(), bytes);
        let b = rss_fan[i].map_or("—".into(), bytes);
        print!(" {a} / {b} |");
    }
    println!(" — | — | — |");

    println!("\nThe machine's own limits, same run:\n");
    println!("| limit | measured |");
    println!("|---|---|");
    let m = |k: &str| get("machine", "raw", k).unwrap_or(f64::NAN);
    println!(
        "| sequential write, {} MiB in 1 MiB `write()`s, buffered | {:.0} MB/s |",
        s.machine_file >> 20,
        m("write_buffered") / 1e6
    );
    println!(
        "| the same, until its fdatasync returns | {:.0} MB/s |",
        m("write_synced") / 1e6
    );
    println!(
        "| 4 KiB write + fdatasync, p50 of {} | {} |",
        thousands(s.fsync_samples),
        duration(m("fsync_p50"))
    );
    println!(
        "| memcpy, {} MiB buffers | {:.1} GB/s |",
        s.memcpy_bytes >> 20,
        m("memcpy") / 1e9
    );
    println!(
        "| sequential read of a page-cached file, 1 MiB `read()`s | {:.0} MB/s |",
        m("read_cached") / 1e6
    );

    println!("\nPeak RSS of every cell (each its own process):\n");
    print!("| cell |");
    for (_, name) in COLUMNS {
        print!(" {name} |");
    }
    println!("\n|---|---|---|---|---|");
    let mut seen = Vec::new();
    for (w, _) in &cells {
        if w == "machine" || seen.contains(w) {
            continue;
        }
        seen.push(w.clone());
        print!("| {w} |");
        for (peer, _) in COLUMNS {
            print!(" {} |", get(w, peer, "rss").map_or("—".into(), bytes));
        }
        println!();
    }
    Ok(())
}

/// `1000000` → `1,000,000`.
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Today's UTC date and time from the clock, without a date library.
fn date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}
