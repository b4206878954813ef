//! Long-poll waiters on idle partitions cost appends to other partitions nothing: `wait_for`
//! wake-ups are per partition. Measured by the process's context switches (its own test binary,
//! so no other test's threads count): a shared wake-up would switch to every parked waiter on
//! every append.

mod common;

use std::sync::Arc;
use std::time::Duration;

use duolog::{LogStore, Message, TopicConfig};

fn context_switches() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct, RUSAGE_SELF covers every thread of the process.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0);
    u.ru_nvcsw + u.ru_nivcsw
}

#[test]
fn appends_do_not_wake_waiters_of_other_partitions() {
    const WAITERS: u32 = 200;
    const APPENDS: usize = 1_000;
    common::for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &common::small_options(engine)));
        store
            .create_topic("t", TopicConfig::with_partitions(WAITERS + 1))
            .unwrap();
        let waiters: Vec<_> = (1..=WAITERS)
            .map(|p| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || store.wait_for("t", p, 0, Duration::from_secs(60)))
            })
            .collect();
        // Let every waiter park.
        std::thread::sleep(Duration::from_millis(500));
        let before = context_switches();
        for n in 0..APPENDS {
            store
                .append_oneway("t", 0, &[Message::new(format!("m{n}"))])
                .unwrap();
        }
        let switches = context_switches() - before;
        // Wake the waiters: one record each.
        for p in 1..=WAITERS {
            store
                .append_oneway("t", p, &[Message::new("wake")])
                .unwrap();
        }
        for w in waiters {
            assert!(
                w.join().unwrap().unwrap(),
                "{engine}: waiter woken by its own data"
            );
        }
        eprintln!(
            "{engine}: {switches} context switches over {APPENDS} appends with {WAITERS} idle waiters"
        );
        assert!(
            switches < (APPENDS as i64) * i64::from(WAITERS) / 20,
            "{engine}: {switches} context switches: appends wake idle waiters"
        );
    });
}

/// The same for waits over many partitions (`wait_for_any`): 100 waiters, each over 4 idle
/// partitions, cost appends to another partition no wake-ups; an append to one of a waiter's
/// partitions ends its wait.
#[test]
fn appends_do_not_wake_multi_partition_waiters_of_other_partitions() {
    const WAITERS: u32 = 100;
    const APPENDS: usize = 1_000;
    common::for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(common::open(dir, &common::small_options(engine)));
        store
            .create_topic("t", TopicConfig::with_partitions(4 * WAITERS + 1))
            .unwrap();
        let waiters: Vec<_> = (0..WAITERS)
            .map(|w| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let positions: Vec<(&str, u32, u64)> =
                        (1..=4).map(|i| ("t", 4 * w + i, 0)).collect();
                    store.wait_for_any(&positions, Duration::from_secs(60))
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let before = context_switches();
        for n in 0..APPENDS {
            store
                .append_oneway("t", 0, &[Message::new(format!("m{n}"))])
                .unwrap();
        }
        let switches = context_switches() - before;
        for w in 0..WAITERS {
            store
                .append_oneway("t", 4 * w + 1 + w % 4, &[Message::new("wake")])
                .unwrap();
        }
        for w in waiters {
            assert!(w.join().unwrap().unwrap(), "{engine}: woken by its data");
        }
        eprintln!(
            "{engine}: {switches} context switches over {APPENDS} appends with {WAITERS} idle multi-partition waiters"
        );
        assert!(
            switches < (APPENDS as i64) * i64::from(WAITERS) / 20,
            "{engine}: {switches} context switches: idle waiters are being woken"
        );
    });
}
