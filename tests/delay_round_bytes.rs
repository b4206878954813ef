//! A delivery round's byte budget (issue 13, contract item 5): `max_round` bounds a round by
//! entries, `DelayOptions::max_round_bytes` by the bytes of the messages it reads and holds. A
//! store wrapper counts the bytes read from `__delay_messages` between two progress records
//! (a round reads its messages before its INTENT).

mod common;

use std::sync::Arc;

use common::wrap::{Hooks, Wrapped};
use common::{for_each_engine, read_all, small_options};
use duolog::delay::{DelayOptions, DelayQueue, MESSAGES_TOPIC, ManualClock, PROGRESS_TOPIC};
use duolog::{LogStore, Message, Record, TopicConfig};
use parking_lot::Mutex;

const T0: i64 = 1_700_000_000_000;

/// What the layer counts against the budget: body, key and properties.
fn bytes_of(r: &Record) -> usize {
    r.body().len()
        + r.key().map_or(0, <[u8]>::len)
        + r.properties()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

#[derive(Debug)]
struct Counting {
    /// (bytes read from __delay_messages since the last progress record, largest such window)
    counts: Mutex<(usize, usize)>,
}

impl Hooks for Counting {
    fn before_append(&self, topic: &str, _partition: u32, _messages: &[Message]) {
        if topic == PROGRESS_TOPIC {
            // A progress record ends a window: the round's planning reads are before its
            // INTENT.
            let mut c = self.counts.lock();
            c.1 = c.1.max(c.0);
            c.0 = 0;
        }
    }
    fn after_read(&self, topic: &str, _partition: u32, records: &[Record]) {
        if topic == MESSAGES_TOPIC {
            let n: usize = records.iter().map(bytes_of).sum();
            self.counts.lock().0 += n;
        }
    }
}

/// Eight messages of 40 KiB due in one slot, a budget of 100 KiB: no round reads more than the
/// budget plus the one message that crosses it (before: one round read all 320 KiB), and all
/// eight arrive once, in due order, over several rounds.
#[test]
fn a_round_reads_at_most_its_byte_budget_of_large_messages() {
    for_each_engine(|engine, dir| {
        let inner: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        inner
            .create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let counting = Wrapped::new(
            Arc::clone(&inner),
            Counting {
                counts: Mutex::new((0, 0)),
            },
        );
        let store: Arc<dyn LogStore> = counting.clone();
        let clock = Arc::new(ManualClock::new(T0));
        let budget = 100 * 1024;
        let q = DelayQueue::open(
            Arc::clone(&store),
            DelayOptions {
                clock: clock.clone(),
                background: false,
                max_round_bytes: budget,
                ..DelayOptions::default()
            },
        )
        .unwrap();
        let big = 40 * 1024;
        for i in 0..8u8 {
            let m = Message::new(vec![b'a' + i; big]).with_key(format!("k{i}"));
            q.schedule("t", 0, m, T0 + 1_000 + i64::from(i)).unwrap();
        }
        q.pump().unwrap(); // placed (not due): enqueue reads are not a round's
        *counting.hooks.counts.lock() = (0, 0);
        clock.set(T0 + 2_000);
        let report = q.pump().unwrap();
        assert_eq!(report.delivered, 8, "{engine}");
        let largest = {
            let mut c = counting.hooks.counts.lock();
            c.1 = c.1.max(c.0);
            c.1
        };
        assert!(
            largest <= budget + big + 1024,
            "{engine}: a round read {largest} bytes, over {budget} + one message"
        );
        let got = read_all(&*inner, "t", 0);
        assert_eq!(got.len(), 8, "{engine}");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.body()[0], b'a' + i as u8, "{engine}: in due order");
        }
        q.close().unwrap();
    });
}

#[test]
fn a_zero_byte_budget_is_a_clear_error() {
    for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        let r = DelayQueue::open(
            store,
            DelayOptions {
                background: false,
                max_round_bytes: 0,
                ..DelayOptions::default()
            },
        );
        assert!(
            matches!(r, Err(duolog::Error::InvalidArgument(_))),
            "{engine}"
        );
    });
}
