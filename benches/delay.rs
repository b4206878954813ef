//! The delay layer, on both engines with default options: scheduling throughput (criterion),
//! then one run per engine of N messages due within the same minute while another thread keeps
//! appending to a second topic, printing delivery lateness p50/p99/max (the real topic's store
//! time minus the due time), delivery throughput and the process's RSS with N pending.
//!
//! N is `DUOLOG_DELAY_N` (default 100,000; the figure is 1,000,000), the spread of due
//! times `DUOLOG_DELAY_SPREAD_S` seconds (default 60).
//!
//! Run: `DUOLOG_DELAY_N=1000000 cargo bench --bench delay`. Nothing here asserts a speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::delay::{DelayOptions, DelayQueue, TIMER_DELIVER_MS};
use duolog::{EngineKind, LogStore, Message, ReadLimits, StoreOptions, TopicConfig};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn open(engine: EngineKind) -> (tempfile::TempDir, Arc<dyn LogStore>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let options = StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    };
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), options).expect("open"));
    store
        .create_topic("real", TopicConfig::with_partitions(4))
        .expect("topic");
    store
        .create_topic("load", TopicConfig::default())
        .expect("topic");
    (dir, store)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn schedule(c: &mut Criterion) {
    let per_iter = 10_000u64;
    let mut g = c.benchmark_group("delay/schedule");
    g.sample_size(10);
    g.throughput(Throughput::Elements(per_iter));
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let (_dir, store) = open(engine);
        let q = DelayQueue::open(
            Arc::clone(&store),
            DelayOptions {
                background: false,
                ..DelayOptions::default()
            },
        )
        .expect("delay");
        let body = vec![b'd'; 100];
        g.bench_function(BenchmarkId::new(engine.name(), per_iter), |b| {
            b.iter(|| {
                let at = now_ms() + 3_600_000;
                for i in 0..per_iter {
                    q.schedule(
                        "real",
                        (i % 4) as u32,
                        Message::new(body.clone()),
                        at + i as i64,
                    )
                    .expect("schedule");
                }
            })
        });
        q.close().expect("close");
    }
    g.finish();
}

/// N messages due within the same spread, a concurrent append load (50,000 messages/s of 100 B to
/// another topic), the layer's threads delivering: lateness, throughput, RSS.
fn lateness(_c: &mut Criterion) {
    let n = env("DUOLOG_DELAY_N", 100_000);
    let spread_ms = env("DUOLOG_DELAY_SPREAD_S", 60) as i64 * 1000;
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let (_dir, store) = open(engine);
        let rss_before = status_kib("VmRSS:");
        let q = DelayQueue::open(Arc::clone(&store), DelayOptions::default()).expect("delay");
        // Due times start after scheduling should be over (at 20,000/s at worst).
        let base = now_ms() + 5_000 + (n as i64 / 20);
        let body = vec![b'd'; 100];
        let t = Instant::now();
        for i in 0..n {
            let at = base + (i as i64 * spread_ms) / n as i64;
            q.schedule("real", (i % 4) as u32, Message::new(body.clone()), at)
                .expect("schedule");
        }
        let scheduling = t.elapsed();
        let late_start = now_ms() - base;
        // Wait until every message is placed, then read RSS with N pending.
        loop {
            let pending: u64 = q.pending().expect("pending").iter().map(|p| p.1).sum();
            if pending >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let rss_pending = status_kib("VmRSS:");
        let hwm_pending = status_kib("VmHWM:");
        // The concurrent append load, until every message is delivered.
        let stop = Arc::new(AtomicBool::new(false));
        let loaded = Arc::new(AtomicU64::new(0));
        let load = {
            let (s, stop, loaded) = (Arc::clone(&store), Arc::clone(&stop), Arc::clone(&loaded));
            std::thread::spawn(move || {
                let batch: Vec<Message> = (0..100).map(|_| Message::new(vec![b'l'; 100])).collect();
                // 50,000 messages/s of 100 B: a steady load, not a saturating one.
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    s.append("load", 0, &batch).expect("load");
                    let sent = loaded.fetch_add(100, Ordering::Relaxed) + 100;
                    let due = Duration::from_micros(sent * 20);
                    if let Some(ahead) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                }
            })
        };
        let delivered = |s: &dyn LogStore| -> u64 {
            (0..4)
                .map(|p| s.bounds("real", p).expect("bounds").end)
                .sum()
        };
        while delivered(&*store) < n {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        load.join().expect("load thread");
        let mut late: Vec<i64> = Vec::with_capacity(n as usize);
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for p in 0..4 {
            let mut at = 0;
            loop {
                let recs = store
                    .read("real", p, at, ReadLimits::messages(10_000))
                    .expect("read");
                let Some(l) = recs.last() else { break };
                at = l.offset() + 1;
                for r in &recs {
                    let due: i64 = r
                        .properties()
                        .get(TIMER_DELIVER_MS)
                        .unwrap()
                        .parse()
                        .unwrap();
                    late.push(r.store_timestamp() - due);
                    first = first.min(r.store_timestamp());
                    last = last.max(r.store_timestamp());
                }
            }
        }
        late.sort_unstable();
        let pct = |q: f64| late[((late.len() as f64 * q) as usize).min(late.len() - 1)];
        let span_s = ((last - first).max(1)) as f64 / 1000.0;
        println!(
            "{engine}: {n} due within {} s: scheduled in {scheduling:?} ({:.0}/s, the first due {} ms \
             later); lateness p50 {} ms, p99 {} ms, max {} ms, min {} ms; \
             delivered {:.0}/s over the spread; {} appends of load meanwhile; RSS {} MiB before, \
             {} MiB with {n} pending (high-water {} MiB)",
            spread_ms / 1000,
            n as f64 / scheduling.as_secs_f64(),
            -late_start,
            pct(0.5),
            pct(0.99),
            late[late.len() - 1],
            late[0],
            n as f64 / span_s,
            loaded.load(Ordering::Relaxed),
            rss_before / 1024,
            rss_pending / 1024,
            hwm_pending / 1024,
        );
        q.close().expect("close");
    }
}

criterion_group!(benches, schedule, lateness);
criterion_main!(benches);
