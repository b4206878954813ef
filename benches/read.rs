//! Read throughput, every peer on the same data: 200,000 × 100-byte messages in one partition,
//! read sequentially from the start in fetches of 1,000, single messages at random offsets, and
//! tail reads (append a batch of 16, then read those 16 back: only the read is timed). Every
//! peer checks each message's CRC as it reads.
//!
//! `read/sequential-defaults/100B` is the read as a new user meets it (issue 16): 1,000,000
//! messages appended one per call with DEFAULT `StoreOptions`, read back from the start in
//! fetches of at most 8,192 messages / 1 MiB, against raw framed records written the same way.
//! Its `commitlog-read_with` and `segmented-read_with` peers read the same data through
//! `LogStore::read_with` (the borrowed visitor) instead of `read`, in the same group so one run
//! gives both reads' ratios to raw.
//!
//! Run: `cargo bench --bench read`. Nothing here asserts a speed.

#[path = "common/peers.rs"]
mod peers;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::Message;

const MESSAGES: u64 = 200_000;

fn consume(body: &[u8]) {
    black_box(body.len());
}

fn reads(c: &mut Criterion) {
    // Filling five peers costs seconds: skip it when only the defaults group was asked for.
    let filters = filters();
    if !filters.is_empty() && filters.iter().all(|f| f.contains("sequential-defaults")) {
        return;
    }
    let filled: Vec<_> = peers::PEERS
        .iter()
        .map(|&name| {
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
            let peer = peers::open(name, dir.path(), 1);
            let batch: Vec<Message> = (0..100).map(|_| Message::new(vec![b'r'; 100])).collect();
            for _ in 0..MESSAGES / 100 {
                peer.append(0, &batch);
            }
            peer.sync();
            peer.publish();
            (name, dir, peer)
        })
        .collect();

    let mut seq = c.benchmark_group("read/sequential/100B");
    seq.warm_up_time(Duration::from_secs(1));
    seq.measurement_time(Duration::from_secs(3));
    seq.throughput(Throughput::Elements(1000));
    for (name, _, peer) in &filled {
        let mut at = 0u64;
        seq.bench_function(BenchmarkId::new(*name, "fetch-1000"), |b| {
            b.iter(|| {
                if at + 1000 > MESSAGES {
                    at = 0;
                }
                let n = peer.read(0, at, 1000, &mut consume);
                at += n as u64;
                n
            })
        });
    }
    seq.finish();

    let mut random = c.benchmark_group("read/random/100B");
    random.warm_up_time(Duration::from_secs(1));
    random.measurement_time(Duration::from_secs(3));
    random.throughput(Throughput::Elements(1));
    for (name, _, peer) in &filled {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        random.bench_function(BenchmarkId::new(*name, "single"), |b| {
            b.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                peer.read(0, x % MESSAGES, 1, &mut consume)
            })
        });
    }
    random.finish();

    let mut tail = c.benchmark_group("read/tail/100B");
    tail.warm_up_time(Duration::from_secs(1));
    tail.measurement_time(Duration::from_secs(3));
    tail.throughput(Throughput::Elements(16));
    let batch: Vec<Message> = (0..16).map(|_| Message::new(vec![b't'; 100])).collect();
    for (name, _, peer) in &filled {
        let mut end = MESSAGES;
        tail.bench_function(BenchmarkId::new(*name, "batch-16"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    peer.append(0, &batch);
                    peer.publish();
                    let start = Instant::now();
                    let n = peer.read(0, end, 16, &mut consume);
                    spent += start.elapsed();
                    assert_eq!(n, 16, "{name}: tail read returned {n} of 16");
                    end += 16;
                }
                spent
            })
        });
    }
    tail.finish();
}

/// Messages of the default-options sequential read.
const DEFAULT_MESSAGES: u64 = 1_000_000;

/// A store as a new user opens it: default options but the engine. `visiting` reads with
/// `read_with` (the borrowed visitor) instead of `read`.
struct Defaults {
    store: Box<dyn duolog::LogStore>,
    visiting: bool,
}

impl peers::Peer for Defaults {
    fn append(&self, partition: u32, batch: &[Message]) {
        self.store
            .append("bench", partition, batch)
            .expect("append");
    }
    fn sync(&self) {
        self.store.sync().expect("sync");
    }
    fn read(&self, partition: u32, offset: u64, max: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let limits = duolog::ReadLimits {
            max_messages: max,
            max_bytes: 1 << 20,
            ..duolog::ReadLimits::default()
        };
        if self.visiting {
            let p = self
                .store
                .read_with("bench", partition, offset, limits, &mut |r| {
                    each(r.body());
                    std::ops::ControlFlow::Continue(())
                })
                .expect("read_with");
            return p.visited;
        }
        let records = self
            .store
            .read("bench", partition, offset, limits)
            .expect("read");
        for r in &records {
            each(r.body());
        }
        records.len()
    }
}

fn sequential_defaults(c: &mut Criterion) {
    let mut group = c.benchmark_group("read/sequential-defaults/100B");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(8192));
    let msg = [Message::new(vec![b'r'; 100])];
    for name in [
        "commitlog",
        "segmented",
        "raw-per-partition",
        "commitlog-read_with",
        "segmented-read_with",
    ] {
        if !group_wanted(name) {
            continue;
        }
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let peer: Box<dyn peers::Peer> = match name {
            "raw-per-partition" => peers::open(name, dir.path(), 1),
            engine => {
                let options = duolog::StoreOptions {
                    engine: Some(match engine.starts_with("commitlog") {
                        true => duolog::EngineKind::CommitLog,
                        false => duolog::EngineKind::Segmented,
                    }),
                    ..duolog::StoreOptions::default()
                };
                let s = duolog::open(dir.path(), options).expect("open");
                s.create_topic("bench", duolog::TopicConfig::with_partitions(1))
                    .expect("topic");
                Box::new(Defaults {
                    store: s,
                    visiting: engine.ends_with("read_with"),
                })
            }
        };
        for _ in 0..DEFAULT_MESSAGES {
            peer.append(0, &msg);
        }
        peer.sync();
        peer.publish();
        let mut at = 0u64;
        group.bench_function(BenchmarkId::new(name, "fetch-8192"), |b| {
            b.iter(|| {
                let n = peer.read(0, at, 8192, &mut consume);
                at += n as u64;
                if at >= DEFAULT_MESSAGES {
                    at = 0;
                }
                n
            })
        });
    }
    group.finish();
}

/// Whether the command line's filter (if any) can select this peer of the defaults group, so a
/// run of another group does not fill a million messages per peer for nothing.
fn group_wanted(name: &str) -> bool {
    let filters = filters();
    filters.is_empty()
        || filters.iter().any(|f| {
            let full = format!("read/sequential-defaults/100B/{name}/fetch-8192");
            // A plain prefix, or a pattern naming the peer (`.../(segmented|raw-per-partition)`).
            full.contains(f.as_str()) || (f.contains("sequential-defaults") && f.contains(name))
        })
}

/// The benchmark filters on the command line (criterion's positional arguments; the values of
/// its options, such as `--measurement-time 3`, are not filters: "3" would match every peer).
fn filters() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a.starts_with('-') {
            if !a.contains('=') && OPTIONS_WITH_VALUES.contains(&a.as_str()) {
                args.next();
            }
        } else {
            out.push(a);
        }
    }
    out
}

/// Criterion's options that take a value as the next argument.
const OPTIONS_WITH_VALUES: &[&str] = &[
    "--warm-up-time",
    "--measurement-time",
    "--sample-size",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--save-baseline",
    "-s",
    "--baseline",
    "-b",
    "--baseline-lenient",
    "--load-baseline",
    "--profile-time",
    "--plotting-backend",
    "--output-format",
    "--color",
    "-c",
    "--format",
];

criterion_group!(benches, reads, sequential_defaults);
criterion_main!(benches);
