//! Async append throughput, every peer on the identical workload: message sizes 100 B, 1 KiB and
//! 4 KiB; batches of 1, 16 and 128 messages; 1 and 2 appending threads (each thread on its own
//! partition). Durable (sync) appends are `benches/sync.rs`.
//!
//! Run: `cargo bench --bench append`. Figures go to BENCHMARKS.md; nothing here asserts a speed.
//! `DUOLOG_APPEND_QUICK=1` keeps only batch 1 and 16 with one thread (for profiling runs).

#[path = "common/peers.rs"]
mod peers;

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::Message;

fn append(c: &mut Criterion) {
    let quick = std::env::var_os("DUOLOG_APPEND_QUICK").is_some();
    let batches: &[usize] = if quick { &[1, 16] } else { &[1, 16, 128] };
    let threads: &[usize] = if quick { &[1] } else { &[1, 2] };
    for (size, label) in [(100usize, "100B"), (1024, "1KiB"), (4096, "4KiB")] {
        let mut g = c.benchmark_group(format!("append/async/{label}"));
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(3));
        for name in peers::PEERS {
            for &t in threads {
                for &batch in batches {
                    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
                    let peer = peers::open(name, dir.path(), 2);
                    let msgs: Vec<Message> =
                        (0..batch).map(|_| Message::new(vec![b'a'; size])).collect();
                    g.throughput(Throughput::Elements(batch as u64));
                    g.bench_with_input(
                        BenchmarkId::new(format!("{name}/threads-{t}/batch"), batch),
                        &batch,
                        |b, _| {
                            b.iter_custom(|iters| {
                                // `iters` batches in total, spread over the threads; wall time,
                                // so the rate is the aggregate one.
                                let per = iters.div_ceil(t as u64);
                                let start = Instant::now();
                                std::thread::scope(|scope| {
                                    for p in 0..t {
                                        let (peer, msgs) = (&peer, &msgs);
                                        scope.spawn(move || {
                                            for _ in 0..per {
                                                peer.append(p as u32, msgs);
                                            }
                                        });
                                    }
                                });
                                start
                                    .elapsed()
                                    .mul_f64(iters as f64 / (per * t as u64) as f64)
                            })
                        },
                    );
                    drop(peer);
                }
            }
        }
        g.finish();
    }
}

criterion_group!(benches, append);
criterion_main!(benches);
