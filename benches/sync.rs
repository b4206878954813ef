//! Durable appends under `FlushPolicy::Sync` (group commit) with 1, 4, 16 and 64 threads on 16
//! partitions, both engines, next to a bare `write` + `fdatasync` per message (one thread, one
//! file): messages/s from criterion, and p50/p99 append latency printed after each group.
//!
//! Run: `cargo bench --bench sync -- --warm-up-time 1 --measurement-time 3` (the times are
//! the command line's, so a short run is possible). `DUOLOG_BENCH_DIR` puts the files
//! elsewhere (e.g. a tmpfs, where a sync costs next to nothing and what is left is the group
//! commit's own CPU cost). Nothing here asserts a speed.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::{EngineKind, FlushPolicy, LogStore, Message, StoreOptions, TopicConfig};
use parking_lot::Mutex;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1))]
}

fn report(name: &str, latencies: &Mutex<Vec<Duration>>) {
    let mut l = std::mem::take(&mut *latencies.lock());
    if l.is_empty() {
        return;
    }
    l.sort_unstable();
    println!(
        "{name}: p50 {:?} p99 {:?} over {} appends",
        percentile(&l, 0.50),
        percentile(&l, 0.99),
        l.len()
    );
}

/// A temporary directory under `DUOLOG_BENCH_DIR`, or the target's temporary directory.
fn bench_dir() -> tempfile::TempDir {
    let parent = std::env::var_os("DUOLOG_BENCH_DIR").map_or_else(
        || env!("CARGO_TARGET_TMPDIR").into(),
        std::path::PathBuf::from,
    );
    tempfile::tempdir_in(parent).expect("tempdir")
}

fn sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync/100B");
    g.throughput(Throughput::Elements(1));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    {
        let dir = bench_dir();
        let mut f = std::fs::File::create(dir.path().join("bare")).expect("file");
        let body = [b's'; 100];
        let l = Arc::clone(&latencies);
        g.bench_function(BenchmarkId::new("write+fdatasync", 1), |b| {
            b.iter(|| {
                let t = Instant::now();
                f.write_all(&body).expect("write");
                f.sync_data().expect("fdatasync");
                l.lock().push(t.elapsed());
            })
        });
        report("write+fdatasync/1", &latencies);
    }
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let dir = bench_dir();
        let options = StoreOptions {
            engine: Some(engine),
            flush: FlushPolicy::Sync,
            ..StoreOptions::default()
        };
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), options).expect("open"));
        store
            .create_topic("bench", TopicConfig::with_partitions(16))
            .expect("topic");
        for p in 0..16 {
            store
                .append("bench", p, &[Message::new("warm")])
                .expect("append");
        }
        for threads in [1usize, 4, 16, 64] {
            let l = Arc::clone(&latencies);
            g.bench_with_input(
                BenchmarkId::new(engine.name(), threads),
                &threads,
                |b, &threads| {
                    b.iter_custom(|iters| {
                        let per = iters.div_ceil(threads as u64);
                        let start = Instant::now();
                        std::thread::scope(|scope| {
                            for t in 0..threads {
                                let (s, l) = (Arc::clone(&store), Arc::clone(&l));
                                scope.spawn(move || {
                                    let m = [Message::new(vec![b's'; 100])];
                                    let mut mine = Vec::with_capacity(per as usize);
                                    for _ in 0..per {
                                        let t0 = Instant::now();
                                        s.append("bench", t as u32 % 16, &m).expect("append");
                                        mine.push(t0.elapsed());
                                    }
                                    l.lock().extend(mine);
                                });
                            }
                        });
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per * threads as u64) as f64)
                    })
                },
            );
            report(&format!("{engine}/{threads}"), &latencies);
        }
    }
    g.finish();
}

criterion_group!(benches, sync);
criterion_main!(benches);
