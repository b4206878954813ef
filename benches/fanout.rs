//! Fan-out: 100-byte messages round-robin over 1, 16, 256 and 1,024 partitions (4,096 too with
//! `DUOLOG_FANOUT_4096=1`), every peer on the same workload. The classic experiment: per-partition
//! files lose throughput as partitions grow, one shared commit log holds steady. Report each
//! figure as a ratio to the same peer's 1-partition figure.
//!
//! Run: `cargo bench --bench fanout`. Nothing here asserts a speed.

#[path = "common/peers.rs"]
mod peers;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::Message;

fn fanout(c: &mut Criterion) {
    let mut counts = vec![1u32, 16, 256, 1024];
    if std::env::var_os("DUOLOG_FANOUT_4096").is_some() {
        counts.push(4096);
    }
    let mut g = c.benchmark_group("fanout/100B");
    g.throughput(Throughput::Elements(1));
    let msg = [Message::new(vec![b'f'; 100])];
    for name in peers::PEERS {
        for &partitions in &counts {
            // Set up on first use, so a filtered run skips the peers it does not measure.
            let mut opened: Option<(tempfile::TempDir, Box<dyn peers::Peer>)> = None;
            let mut p = 0u32;
            g.bench_with_input(BenchmarkId::new(name, partitions), &partitions, |b, &n| {
                let (_, peer) = opened.get_or_insert_with(|| {
                    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
                    let peer = peers::open(name, dir.path(), n);
                    // Not measured: every partition's files exist before timing starts.
                    for p in 0..n {
                        peer.append(p, &msg);
                    }
                    (dir, peer)
                });
                b.iter(|| {
                    peer.append(p, &msg);
                    p = (p + 1) % n;
                })
            });
            if let Some((_, peer)) = &opened {
                peer.sync();
            }
        }
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
