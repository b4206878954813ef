//! Review D of the delay layer and the CommitLog age rules: each test fails on 4c94ba8.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{for_each_engine, read_all, small_options};
use duolog::delay::{DelayHandle, DelayOptions, DelayQueue, ManualClock};
use duolog::{EngineKind, Error, LogStore, Message, StoreOptions, TopicConfig};

const T0: i64 = 1_700_000_000_000;

fn short() -> TopicConfig {
    TopicConfig {
        retention: Some(Duration::from_millis(1)),
        ..TopicConfig::with_partitions(1)
    }
}

fn fill(store: &dyn LogStore, topic: &str, n: usize) {
    let batch: Vec<Message> = (0..50).map(|_| Message::new(vec![b'f'; 1000])).collect();
    for _ in 0..n / 50 {
        store.append(topic, 0, &batch).unwrap();
    }
}

fn manual(clock: &Arc<ManualClock>) -> DelayOptions {
    DelayOptions {
        clock: clock.clone(),
        background: false,
        ..DelayOptions::default()
    }
}

/// A message past the wheel's window is rolled: re-appended to `__delay_messages` with a
/// `DELAY_ID` property it did not have when scheduled. A message the layer accepted at the
/// size limit then cannot be rolled: the round fails with MessageTooLarge on every retry and
/// the whole wheel is wedged (nothing else is ever delivered either).
#[test]

fn review_d_roll_of_a_message_at_the_size_limit_wedges_the_wheel() {
    for_each_engine(|engine, dir| {
        let opts = StoreOptions {
            max_message_bytes: 4096,
            ..small_options(engine)
        };
        let s: Arc<dyn LogStore> = Arc::from(duolog::open(dir, opts).unwrap());
        s.create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let q = DelayQueue::open(
            Arc::clone(&s),
            DelayOptions {
                precision: Duration::from_millis(10),
                wheel_slots: 16,
                ..manual(&clock)
            },
        )
        .unwrap();
        // The largest body the layer accepts, due past the 160 ms window.
        let mut n = 4096;
        loop {
            match q.schedule("t", 0, Message::new(vec![b'x'; n]), T0 + 1_000) {
                Ok(_) => break,
                Err(Error::MessageTooLarge { .. }) => n -= 1,
                Err(e) => panic!("{engine:?}: {e}"),
            }
        }
        q.schedule("t", 0, Message::new("small"), T0 + 500).unwrap();
        for _ in 0..150 {
            clock.advance(Duration::from_millis(10));
            if let Err(e) = q.pump() {
                panic!("{engine:?}: a round failed for good: {e}");
            }
        }
        assert_eq!(read_all(s.as_ref(), "t", 0).len(), 2, "{engine:?}");
        q.close().unwrap();
        s.close().unwrap();
    });
}

/// `commitlog.retention_bytes` (a bound on the whole shared log) deletes the files holding the
/// delay layer's pending timer-log entry: every later round fails with Corrupted ("a pending
/// entry is below the log start"), so messages scheduled afterwards are never delivered —
/// RocketMQ #10668 ("stuck dequeue after log truncation"), which the issue asks to do better on.
#[test]

fn review_d_commitlog_truncation_under_a_pending_entry_wedges_the_timer() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = small_options(EngineKind::CommitLog);
    opts.commitlog.retention_bytes = Some(128 * 1024);
    let s: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), opts).unwrap());
    s.create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let q = DelayQueue::open(Arc::clone(&s), manual(&clock)).unwrap();
    q.schedule("t", 0, Message::new("lost"), T0 + 60_000)
        .unwrap();
    q.pump().unwrap(); // placed: its entry is in the first commit-log file
    fill(s.as_ref(), "t", 600);
    assert!(s.enforce_retention().unwrap() > 0);
    // Scheduled after the truncation: must still arrive.
    q.schedule("t", 0, Message::new("later"), T0 + 120_000)
        .unwrap();
    clock.advance(Duration::from_secs(180));
    let pumped = q.pump();
    assert!(pumped.is_ok(), "the wheel is wedged: {pumped:?}");
    let bodies: Vec<Vec<u8>> = read_all(s.as_ref(), "t", 0)
        .iter()
        .map(|r| r.body().to_vec())
        .collect();
    assert!(bodies.contains(&b"later".to_vec()));
    q.close().unwrap();
    s.close().unwrap();
}

fn commitlog_with_short_retention(dir: &Path) -> Arc<dyn LogStore> {
    let mut opts = small_options(EngineKind::CommitLog);
    opts.commitlog.retention = Some(Duration::from_millis(1));
    Arc::from(duolog::open(dir, opts).unwrap())
}

/// After every delayed message is delivered (and the layer ran its own retention), the
/// layer's topics must pin nothing (ARCHITECTURE.md: "these topics keep only the shared
/// commit-log files that hold their live records ... so the log is still trimmed by age").
/// The timer log's last entry is kept forever ("it holds the enqueue cursor") and
/// `__delay_messages` is only trimmed every 64 rounds: the commit-log file holding them and
/// every later file are never deleted by age, so disk grows without bound.
/// Fixed: with nothing pending the layer deletes its whole timer log and every placed record,
/// the enqueue cursor kept in the compacted progress record instead.
#[test]
fn review_d_an_idle_delay_layer_pins_every_later_commit_log_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = commitlog_with_short_retention(dir.path());
    s.create_topic("t", short()).unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let q = DelayQueue::open(Arc::clone(&s), manual(&clock)).unwrap();
    // 70 rounds: the layer's own retention (every 64 rounds) has run.
    for i in 0..70 {
        q.schedule("t", 0, Message::new(format!("m{i}")), T0 + 1_000 * (i + 1))
            .unwrap();
    }
    for _ in 0..70 {
        clock.advance(Duration::from_secs(1));
        q.pump().unwrap();
    }
    assert_eq!(read_all(s.as_ref(), "t", 0).len(), 70);
    assert!(q.pending().unwrap().is_empty());
    // Many files of a topic with 1 ms retention after the layer's records.
    fill(s.as_ref(), "t", 600);
    std::thread::sleep(Duration::from_millis(20));
    let removed = s.enforce_retention().unwrap();
    assert!(
        removed > 0,
        "expired files are kept by the idle delay layer"
    );
    q.close().unwrap();
    s.close().unwrap();
}

/// `__delay_undeliverable` has unlimited retention and nothing ever deletes from it: one
/// message to a deleted topic pins the commit-log file it lands in and every file after it.
/// (The layer's other topics are trimmed to their ends here by hand, as if the layer trimmed
/// them perfectly: without the undeliverable record the same steps delete files.)
#[test]

fn review_d_one_undeliverable_message_pins_the_commit_log() {
    use duolog::delay::{MESSAGES_TOPIC, TIMER_LOG_TOPIC, UNDELIVERABLE_TOPIC};
    let dir = tempfile::tempdir().unwrap();
    let s = commitlog_with_short_retention(dir.path());
    s.create_topic("t", short()).unwrap();
    s.create_topic("gone", short()).unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let q = DelayQueue::open(Arc::clone(&s), manual(&clock)).unwrap();
    q.schedule("gone", 0, Message::new("x"), T0 + 1_000)
        .unwrap();
    q.pump().unwrap();
    s.delete_topic("gone").unwrap();
    clock.advance(Duration::from_secs(2));
    assert_eq!(q.pump().unwrap().undeliverable, 1);
    q.close().unwrap();
    assert_eq!(read_all(s.as_ref(), UNDELIVERABLE_TOPIC, 0).len(), 1);
    for t in [MESSAGES_TOPIC, TIMER_LOG_TOPIC] {
        let end = s.bounds(t, 0).unwrap().end;
        s.delete_before(t, 0, end).unwrap();
    }
    fill(s.as_ref(), "t", 600);
    std::thread::sleep(Duration::from_millis(20));
    let removed = s.enforce_retention().unwrap();
    assert!(
        removed > 0,
        "expired files are kept by __delay_undeliverable"
    );
    s.close().unwrap();
}

fn clock_now(clock: &Arc<ManualClock>) -> i64 {
    use duolog::delay::Clock;
    clock.now_ms()
}

/// `cancel` promises: "Succeeds only if the message will not be delivered". A message already
/// delivered, whose record the layer's retention trimmed, is cancelled "successfully" with a
/// handle of any future due time (the id check is skipped below the log start).
/// Fixed: a trimmed id is cancelled only if a rolled copy of it is pending on the wheel.
#[test]
fn review_d_cancel_of_a_delivered_message_is_an_error() {
    for_each_engine(|engine, dir| {
        let s: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        s.create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let q = DelayQueue::open(Arc::clone(&s), manual(&clock)).unwrap();
        let first = q.schedule("t", 0, Message::new("a"), T0 + 1_000).unwrap();
        for i in 0..70 {
            clock.advance(Duration::from_secs(1));
            q.schedule("t", 0, Message::new(format!("m{i}")), clock_now(&clock))
                .unwrap();
            q.pump().unwrap();
        }
        assert!(
            s.bounds(duolog::delay::MESSAGES_TOPIC, 0).unwrap().start > first.id,
            "{engine:?}: the layer trimmed the delivered record"
        );
        let delivered = read_all(s.as_ref(), "t", 0)
            .iter()
            .filter(|r| r.body() == b"a")
            .count();
        assert_eq!(delivered, 1);
        let forged = DelayHandle {
            id: first.id,
            deliver_at_ms: clock_now(&clock) + 3_600_000,
        };
        assert!(
            q.cancel(forged).is_err(),
            "{engine:?}: cancel of an already delivered message succeeded"
        );
        q.close().unwrap();
        s.close().unwrap();
    });
}

/// `close` (and `Drop`, and the CLI's `consume` exit) waits for the timer thread, whose
/// `work` loop runs rounds until nothing is due without looking at `closed`: with a backlog,
/// close blocks until the whole backlog is delivered (with a steady stream of due messages,
/// forever), holding the layer's lock all along (`cancel`/`pending` wait too).
#[test]

fn review_d_close_does_not_wait_for_the_whole_backlog() {
    for_each_engine(|engine, dir| {
        let s: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        s.create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let q = DelayQueue::open(
            Arc::clone(&s),
            DelayOptions {
                clock: clock.clone(),
                max_round: 2,
                ..DelayOptions::default()
            },
        )
        .unwrap();
        for i in 0..4_000 {
            q.schedule("t", 0, Message::new(format!("m{i}")), T0 + 1_000)
                .unwrap();
        }
        clock.advance(Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(100));
        let started = std::time::Instant::now();
        q.close().unwrap();
        let took = started.elapsed();
        let delivered = read_all(s.as_ref(), "t", 0).len();
        assert!(
            delivered < 4_000 && took < Duration::from_secs(1),
            "{engine:?}: close took {took:?} (delivered {delivered} of 4000 meanwhile)"
        );
        s.close().unwrap();
    });
}

/// The other side of the fix above: a message past the window rolls, its first record is
/// trimmed by the layer's retention, and a cancel of its handle still succeeds; it is never
/// delivered, and a second cancel is an error. Both engines.
#[test]
fn cancel_of_a_rolled_message_whose_first_record_was_trimmed_succeeds() {
    for_each_engine(|engine, dir| {
        let s: Arc<dyn LogStore> = Arc::from(duolog::open(dir, small_options(engine)).unwrap());
        s.create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let q = DelayQueue::open(
            Arc::clone(&s),
            DelayOptions {
                wheel_slots: 16,
                ..manual(&clock)
            },
        )
        .unwrap();
        // Due past the 15 s window: it rolls (about every 15 s).
        let far = q
            .schedule("t", 0, Message::new("far"), T0 + 100_000)
            .unwrap();
        for i in 0..40 {
            clock.advance(Duration::from_secs(1));
            q.schedule("t", 0, Message::new(format!("m{i}")), clock_now(&clock))
                .unwrap();
            q.pump().unwrap();
        }
        assert!(
            s.bounds(duolog::delay::MESSAGES_TOPIC, 0).unwrap().start > far.id,
            "{engine:?}: the first record of the rolled message was trimmed"
        );
        q.cancel(far).unwrap();
        assert!(q.cancel(far).is_err(), "{engine:?}: cancelled twice");
        clock.advance(Duration::from_secs(120));
        q.pump().unwrap();
        let bodies: Vec<Vec<u8>> = read_all(s.as_ref(), "t", 0)
            .iter()
            .map(|r| r.body().to_vec())
            .collect();
        assert_eq!(bodies.len(), 40, "{engine:?}");
        assert!(
            !bodies.contains(&b"far".to_vec()),
            "{engine:?}: cancelled, delivered"
        );
        q.close().unwrap();
        s.close().unwrap();
    });
}
