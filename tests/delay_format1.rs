//! Stores written by format 1 of the delay layer (progress records `DLP1`, slots rounded up,
//! a split slot walked newest entry first) open under format 2 without losing or
//! duplicating a message: a partial slot, and a round in doubt whose redo must take the same
//! entries the first attempt took. The format-1 bytes are written by hand here.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{for_each_engine, read_all, small_options};
use duolog::delay::{
    DELAY_ID, DELAY_REAL_PARTITION, DELAY_REAL_TOPIC, DelayOptions, DelayQueue, MESSAGES_TOPIC,
    ManualClock, PROGRESS_TOPIC, TIMER_DELIVER_MS, TIMER_ENQUEUE_MS, TIMER_LOG_TOPIC,
    UNDELIVERABLE_TOPIC,
};
use duolog::{LogStore, Message, TopicConfig};

const T0: i64 = 1_700_000_000_000;
/// Format 1's slot of the five messages (due 1.1 s ..= 1.9 s, rounded up).
const SLOT: i64 = T0 + 2_000;

fn options(clock: &Arc<ManualClock>) -> DelayOptions {
    DelayOptions {
        clock: clock.clone(),
        background: false,
        ..DelayOptions::default()
    }
}

fn entry(offset: u64, prev: u64, due: i64) -> Vec<u8> {
    let mut b = b"DLT1".to_vec();
    b.push(0);
    b.extend_from_slice(&SLOT.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&prev.to_be_bytes());
    b.extend_from_slice(&due.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b
}

/// A format-1 progress record.
fn progress_v1(
    phase: u8,
    partial_next: Option<u64>,
    count: u32,
    targets: &[(&str, u64)],
) -> Vec<u8> {
    let mut b = b"DLP1".to_vec();
    b.push(phase);
    b.extend_from_slice(&(T0 + 1_000).to_be_bytes()); // read_time
    b.extend_from_slice(&0u64.to_be_bytes()); // scan_start
    b.extend_from_slice(&partial_next.map_or(i64::MIN, |_| SLOT).to_be_bytes());
    b.extend_from_slice(&partial_next.unwrap_or(u64::MAX).to_be_bytes());
    b.extend_from_slice(&SLOT.to_be_bytes()); // up_to
    b.extend_from_slice(&count.to_be_bytes());
    b.extend_from_slice(&(targets.len() as u32).to_be_bytes());
    for (topic, end) in targets {
        b.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&end.to_be_bytes());
    }
    b
}

/// Five messages (ids 0..5, due 1.1 s .. 1.9 s) placed in one format-1 slot, and the
/// deliveries format 1 already made of `delivered` ids.
fn format1_store(store: &Arc<dyn LogStore>, delivered: &[u64]) {
    store
        .create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    // Creates the layer's topics (and a format-2 first record, which the later one hides).
    DelayQueue::open(Arc::clone(store), options(&clock))
        .unwrap()
        .close()
        .unwrap();
    let due = |i: u64| T0 + 1_100 + 200 * i as i64;
    let mut prev = u64::MAX;
    for i in 0..5u64 {
        let m = Message::new(format!("m{i}"))
            .with_property(DELAY_REAL_TOPIC, "t")
            .with_property(DELAY_REAL_PARTITION, "0")
            .with_property(TIMER_DELIVER_MS, due(i).to_string())
            .with_property(TIMER_ENQUEUE_MS, T0.to_string());
        assert_eq!(
            store.append(MESSAGES_TOPIC, 0, &[m]).unwrap().base_offset,
            i
        );
        store
            .append(TIMER_LOG_TOPIC, 0, &[Message::new(entry(i, prev, due(i)))])
            .unwrap();
        prev = i;
    }
    for id in delivered {
        let m = Message::new(format!("m{id}")).with_property(DELAY_ID, id.to_string());
        store.append("t", 0, &[m]).unwrap();
    }
}

fn deliveries(store: &dyn LogStore) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    for r in read_all(store, "t", 0) {
        let id: u64 = r.properties().get(DELAY_ID).unwrap().parse().unwrap();
        *seen.entry(id).or_default() += 1;
    }
    seen
}

fn reopen_and_pump(store: &Arc<dyn LogStore>) {
    let clock = Arc::new(ManualClock::new(T0 + 5_000));
    let q = DelayQueue::open(Arc::clone(store), options(&clock)).unwrap();
    q.pump().unwrap();
    assert!(q.pending().unwrap().is_empty());
    q.close().unwrap();
}

/// Format 1 processed the slot's two newest entries (ids 4 and 3) and recorded the partial
/// slot with the newest entry left (2): the other three arrive, those two not again.
#[test]
fn a_format_1_partial_slot_is_finished_once() {
    for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        format1_store(&store, &[4, 3]);
        let done = progress_v1(2, Some(2), 0, &[]);
        store
            .append(
                PROGRESS_TOPIC,
                0,
                &[Message::new(done).with_key("progress")],
            )
            .unwrap();
        reopen_and_pump(&store);
        let seen = deliveries(&*store);
        assert_eq!(seen.len(), 5, "{engine}: {seen:?}");
        assert!(seen.values().all(|&n| n == 1), "{engine}: {seen:?}");
    });
}

/// A format-1 round of two entries in doubt (its INTENT the latest record), whose first
/// attempt wrote the newest entry's delivery (id 4) before the crash: the redo takes the same
/// two entries (4 and 3, newest first as format 1 did), skips 4, and the rest follow once.
#[test]
fn a_format_1_round_in_doubt_is_redone_with_its_own_entries() {
    for_each_engine(|engine, dir| {
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        format1_store(&store, &[]);
        let intent = progress_v1(
            1,
            None,
            2,
            &[("t", 0), (MESSAGES_TOPIC, 5), (UNDELIVERABLE_TOPIC, 0)],
        );
        store
            .append(
                PROGRESS_TOPIC,
                0,
                &[Message::new(intent).with_key("progress")],
            )
            .unwrap();
        let m = Message::new("m4").with_property(DELAY_ID, "4");
        store.append("t", 0, &[m]).unwrap();
        reopen_and_pump(&store);
        let seen = deliveries(&*store);
        assert_eq!(seen.len(), 5, "{engine}: {seen:?}");
        assert!(seen.values().all(|&n| n == 1), "{engine}: {seen:?}");
    });
}
