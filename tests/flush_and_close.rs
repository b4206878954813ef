//! Flush policies and close on both engines: `FlushPolicy::Every` fires on bytes as well as on
//! messages, and `close` waits for appends in flight, so nothing acknowledged before or during a
//! close is lost to a power cut after it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use duolog::io::{CrashMode, SimFs};
use duolog::{EngineKind, FlushPolicy, LogStore, Message, StoreOptions, TopicConfig};

#[test]
fn every_policy_flushes_once_enough_bytes_pile_up() {
    common::for_each_engine(|engine, dir| {
        let mut o = StoreOptions {
            flush: FlushPolicy::Every {
                messages: u64::MAX,
                bytes: 16 * 1024,
                interval: Duration::from_secs(3600),
            },
            ..common::small_options(engine)
        };
        // The background flusher also flushes when it wakes for a checkpoint: keep it asleep.
        let hour = Duration::from_secs(3600);
        o.commitlog.checkpoint_interval = hour;
        o.commitlog.retention_check_interval = hour;
        o.segmented.checkpoint_interval = hour;
        o.segmented.retention_check_interval = hour;
        let store = common::open(dir, &o);
        store
            .create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let body = vec![b'x'; 1024];
        for _ in 0..40 {
            store
                .append_oneway("t", 0, &[Message::new(body.clone())])
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.bounds("t", 0).unwrap().durable_end == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            store.bounds("t", 0).unwrap().durable_end > 0,
            "{engine}: 40 KiB appended under Every {{ bytes: 16 KiB }} and nothing flushed"
        );
    });
}

/// Three threads append while another closes the store; then the power goes. Every append that
/// returned `Ok` (under `Sync`: durable; under `Async`: the close's flush covers it) is there.
fn close_races_appends(engine: EngineKind, sync: bool, runs: usize) {
    for run in 0..runs {
        let sim = SimFs::new();
        let o = StoreOptions {
            fs: Arc::new(sim.clone()),
            flush: if sync {
                FlushPolicy::Sync
            } else {
                FlushPolicy::Async {
                    interval: Duration::from_secs(3600),
                }
            },
            ..common::small_options(engine)
        };
        let store: Arc<dyn LogStore> = Arc::from(duolog::open("/s", o.clone()).unwrap());
        store
            .create_topic("t", TopicConfig::with_partitions(3))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..3u32)
            .map(|p| {
                let store = Arc::clone(&store);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut acked = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let body = format!("p{p}-{acked}");
                        match store.append("t", p, &[Message::new(body)]) {
                            Ok(r) => {
                                assert_eq!(r.base_offset, acked);
                                acked += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    acked
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(200 + (run as u64 * 37) % 800));
        store.close().unwrap();
        stop.store(true, Ordering::Relaxed);
        let acked: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        drop(store);
        let crashed = sim.crash(CrashMode::DropUnsynced, run as u64);
        let store = duolog::open(
            "/s",
            StoreOptions {
                fs: Arc::new(crashed),
                ..o
            },
        )
        .unwrap();
        for (p, &n) in acked.iter().enumerate() {
            let end = store.bounds("t", p as u32).unwrap().end;
            assert!(
                end >= n,
                "{engine} sync={sync} run {run}: partition {p} has {end} records, {n} were acknowledged"
            );
        }
    }
}

#[test]
fn close_waits_for_appends_in_flight_async() {
    for engine in common::engines() {
        close_races_appends(engine, false, 60);
    }
}

#[test]
fn close_waits_for_appends_in_flight_sync() {
    for engine in common::engines() {
        close_races_appends(engine, true, 60);
    }
}
