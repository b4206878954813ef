//! The append path's cost of message trace, both engines, default `StoreOptions`: one 100-byte
//! message (with a key and a tag) per `append` call, on the bare store (`plain`) and through a
//! `TracedStore` (`traced`: a `Pub` event built and offered to the tracer's bounded queue per
//! message; the tracer's writer thread appends the trace messages to `__trace` meanwhile, in the
//! same store). The ratio traced / plain is the figure BENCHMARKS.md reports. When the writer
//! falls behind, the queue is full and events are dropped (counted, never blocking): the bench
//! prints the tracer's counters at the end so the figure can be read with them.
//!
//! Run: `cargo bench --bench trace`. Nothing here asserts a speed.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use duolog::consumer::{TraceConfig, TracedStore, Tracer};
use duolog::{EngineKind, LogStore, Message, StoreOptions, TopicConfig};

fn append_traced(c: &mut Criterion) {
    let mut group = c.benchmark_group("trace/append/100B");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let opts = StoreOptions {
            engine: Some(engine),
            ..StoreOptions::default()
        };
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), opts).expect("open"));
        store
            .create_topic("t", TopicConfig::default())
            .expect("topic");
        let tracer =
            Arc::new(Tracer::new(Arc::clone(&store), TraceConfig::default()).expect("tracer"));
        let traced = TracedStore::new(Arc::clone(&store), Arc::clone(&tracer));
        let message = [Message::new(vec![b'm'; 100])
            .with_key("order-1001")
            .with_tags("TagA")];
        group.bench_function(BenchmarkId::new(engine.name(), "plain"), |b| {
            b.iter(|| store.append("t", 0, &message).expect("append"))
        });
        group.bench_function(BenchmarkId::new(engine.name(), "traced"), |b| {
            b.iter(|| traced.append("t", 0, &message).expect("append"))
        });
        tracer.close().expect("close tracer");
        eprintln!("{engine}: tracer {:?}", tracer.stats());
        drop(traced);
        store.close().expect("close");
    }
    group.finish();
}

criterion_group!(benches, append_traced);
criterion_main!(benches);
