//! RocketMQ's transactional (half) messages over both engines: a commit is visible once, a
//! rollback never, a half message is invisible to its real topic's readers; the check-back
//! commits, rolls back, or asks again until `max_checks` and then discards with a reason;
//! immunity times; a panicking checker; reopening resumes the checks.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::half::{T0, background, bodies, manual, open_layer, orders_store};
use common::{for_each_engine, read_all, small_options, wait_for};
use duolog::delay::ManualClock;
use duolog::txn::half::{
    CHECK_IMMUNITY_TIME_IN_SECONDS, CHECK_MAX_TIME_TOPIC, HALF_TOPIC, OP_TOPIC, REAL_QID,
    REAL_TOPIC, TRAN_DISCARD_REASON, TRANSACTION_CHECK_TIMES, TRANSACTION_ID, UNIQ_KEY,
};
use duolog::txn::{
    EndOutcome, HalfConfig, HalfId, HalfMessages, LocalTransactionState, TransactionChecker,
};
use duolog::{EngineKind, Error, LogStore, Message, Record, TopicConfig};

use LocalTransactionState::{Commit, Rollback, Unknown};

/// The store every test here uses: `orders` with two partitions.
fn store(engine: EngineKind, dir: &Path) -> Arc<dyn LogStore> {
    orders_store(engine, dir, 2)
}

/// A checker answering by the message body's first letter (`c`, `r`, else unknown), counting
/// its calls and keeping the check counts it was shown.
#[derive(Default)]
struct ByBody {
    calls: AtomicU32,
    seen_counts: parking_lot::Mutex<Vec<u32>>,
}

impl TransactionChecker for ByBody {
    fn check(&self, half: &Record) -> LocalTransactionState {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let count = half
            .properties()
            .get(TRANSACTION_CHECK_TIMES)
            .map_or(0, |c| c.parse().unwrap());
        self.seen_counts.lock().push(count);
        match half.body().first() {
            Some(b'c') => Commit,
            Some(b'r') => Rollback,
            Some(b'p') => panic!("checker panics"),
            _ => Unknown,
        }
    }
}

#[test]
fn a_commit_is_visible_once_a_rollback_never_and_a_half_message_not_before() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let (clock, txn) = open_layer(&store, manual, Arc::new(ByBody::default()));
        let m = Message::new("paid")
            .with_key("order-1")
            .with_tags("TagA")
            .with_property("color", "red")
            .with_timestamp(T0 - 5);
        let a = txn.send_half("orders", 1, m).unwrap();
        let b = txn.send_half("orders", 1, Message::new("dropped")).unwrap();
        // Invisible to the real topic and its readers; the internal topics are not listed.
        assert_eq!(store.bounds("orders", 1).unwrap().end, 0);
        assert!(read_all(&*store, "orders", 1).is_empty());
        assert_eq!(store.list_topics(false), vec!["orders".to_string()]);
        assert!(store.list_topics(true).contains(&HALF_TOPIC.to_string()));

        assert_eq!(txn.end(a, Commit).unwrap(), EndOutcome::Committed);
        assert_eq!(txn.end(b, Rollback).unwrap(), EndOutcome::RolledBack);
        // Ending again writes nothing and says how it ended.
        assert_eq!(txn.end(a, Commit).unwrap(), EndOutcome::AlreadyCommitted);
        assert_eq!(txn.end(a, Rollback).unwrap(), EndOutcome::AlreadyCommitted);
        assert_eq!(txn.end(b, Commit).unwrap(), EndOutcome::AlreadyRolledBack);

        let real = read_all(&*store, "orders", 1);
        assert_eq!(real.len(), 1, "{real:?}");
        let r = &real[0];
        assert_eq!(r.body(), b"paid");
        assert_eq!(r.key(), Some(&b"order-1"[..]));
        assert_eq!(r.tags(), Some("TagA"));
        assert_eq!(r.timestamp(), T0 - 5);
        assert_eq!(r.properties().get("color"), Some("red"));
        assert!(r.properties().get(UNIQ_KEY).is_some());
        for gone in [
            REAL_TOPIC,
            REAL_QID,
            TRANSACTION_ID,
            TRANSACTION_CHECK_TIMES,
        ] {
            assert_eq!(
                r.properties().get(gone),
                None,
                "{gone} left on the real message"
            );
        }
        assert!(read_all(&*store, "orders", 0).is_empty());
        // Nothing left to check.
        clock.advance(Duration::from_secs(60));
        assert_eq!(txn.check_now().unwrap().checked, 0);
        assert!(txn.undecided(10).unwrap().is_empty());
        txn.close().unwrap();
        store.close().unwrap();
    });
}

#[test]
fn bad_input_is_a_clear_error_before_anything_is_written() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let (clock, txn) = open_layer(&store, manual, Arc::new(ByBody::default()));
        let m = || Message::new("x");
        assert!(matches!(
            txn.send_half("nope", 0, m()),
            Err(Error::UnknownTopic(_))
        ));
        assert!(matches!(
            txn.send_half("orders", 2, m()),
            Err(Error::UnknownPartition { .. })
        ));
        assert!(matches!(
            txn.send_half(HALF_TOPIC, 0, m()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            txn.send_half("orders", 0, m().with_property(REAL_TOPIC, "other")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            txn.send_half(
                "orders",
                0,
                m().with_property(CHECK_IMMUNITY_TIME_IN_SECONDS, "soon")
            ),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            store.bounds(HALF_TOPIC, 0).unwrap().end,
            0,
            "nothing written"
        );
        // Unknown ids, Unknown as a decision, and a check's copy are refused.
        assert!(matches!(
            txn.end(HalfId(7), Commit),
            Err(Error::InvalidArgument(_))
        ));
        let id = txn.send_half("orders", 0, m().with_tags("u")).unwrap();
        assert!(matches!(
            txn.end(id, Unknown),
            Err(Error::InvalidArgument(_))
        ));
        clock.advance(Duration::from_secs(7));
        assert_eq!(txn.check_now().unwrap().unknown, 1);
        let copy = HalfId(store.bounds(HALF_TOPIC, 0).unwrap().end - 1);
        assert_ne!(copy, id);
        assert!(matches!(
            txn.end(copy, Commit),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(txn.end(id, Commit).unwrap(), EndOutcome::Committed);
        // A second layer on the same store is refused while the first lives.
        assert!(matches!(
            HalfMessages::open(
                Arc::clone(&store),
                manual(&clock),
                Arc::new(ByBody::default())
            ),
            Err(Error::InvalidArgument(_))
        ));
        txn.close().unwrap();
        assert!(matches!(
            txn.send_half("orders", 0, m()),
            Err(Error::Closed)
        ));
        assert!(matches!(txn.end(id, Commit), Err(Error::Closed)));
    });
}

#[test]
fn the_check_back_commits_rolls_back_and_asks_again_after_the_timeout() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let checker = Arc::new(ByBody::default());
        let (clock, txn) = open_layer(&store, manual, checker.clone());
        for body in ["commit", "rollback", "unknown"] {
            txn.send_half("orders", 0, Message::new(body)).unwrap();
        }
        // Younger than the 6 s timeout: not checked.
        clock.advance(Duration::from_millis(5_999));
        assert_eq!(txn.check_now().unwrap().checked, 0);
        clock.advance(Duration::from_millis(1));
        let report = txn.check_now().unwrap();
        assert_eq!(
            (
                report.checked,
                report.committed,
                report.rolled_back,
                report.unknown
            ),
            (3, 1, 1, 1),
            "{report:?}"
        );
        assert_eq!(bodies(&*store, "orders", 0), ["commit"]);
        // The undecided one is asked again at the next scan, with its count.
        let report = txn.check_now().unwrap();
        assert_eq!((report.checked, report.unknown), (1, 1));
        assert_eq!(*checker.seen_counts.lock(), [0, 0, 0, 1]);
        let undecided = txn.undecided(10).unwrap();
        assert_eq!(undecided.len(), 1);
        assert_eq!(undecided[0].body(), b"unknown");
        assert_eq!(
            undecided[0].properties().get(TRANSACTION_CHECK_TIMES),
            Some("2")
        );
        assert_eq!(bodies(&*store, "orders", 0), ["commit"]);
        txn.close().unwrap();
    });
}

#[test]
fn a_message_unknown_max_checks_times_is_discarded_with_the_reason() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let checker = Arc::new(ByBody::default());
        let (clock, txn) = open_layer(
            &store,
            |c| HalfConfig {
                max_checks: 3,
                ..manual(c)
            },
            checker.clone(),
        );
        let id = txn
            .send_half("orders", 1, Message::new("unknown").with_key("k"))
            .unwrap();
        let mut discarded = 0;
        for _ in 0..6 {
            clock.advance(Duration::from_secs(30));
            discarded += txn.check_now().unwrap().discarded;
        }
        assert_eq!(discarded, 1);
        assert_eq!(
            checker.calls.load(Ordering::SeqCst),
            3,
            "checked max_checks times"
        );
        let parked = read_all(&*store, CHECK_MAX_TIME_TOPIC, 0);
        assert_eq!(parked.len(), 1);
        let p = parked[0].properties();
        assert_eq!(parked[0].body(), b"unknown");
        assert_eq!(p.get(TRANSACTION_CHECK_TIMES), Some("3"));
        assert_eq!(p.get(REAL_TOPIC), Some("orders"));
        assert_eq!(p.get(REAL_QID), Some("1"));
        let reason = p.get(TRAN_DISCARD_REASON).unwrap();
        assert!(
            reason.contains("checked 3 times") && reason.contains("UNKNOW"),
            "{reason}"
        );
        assert_eq!(txn.end(id, Commit).unwrap(), EndOutcome::AlreadyDiscarded);
        assert!(read_all(&*store, "orders", 1).is_empty());
        assert!(txn.undecided(10).unwrap().is_empty());
        txn.close().unwrap();
    });
}

#[test]
fn a_panicking_checker_counts_as_unknown() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let (clock, txn) = open_layer(&store, manual, Arc::new(ByBody::default()));
        txn.send_half("orders", 0, Message::new("panic")).unwrap();
        txn.send_half("orders", 0, Message::new("commit")).unwrap();
        clock.advance(Duration::from_secs(10));
        let report = txn.check_now().unwrap();
        assert_eq!((report.unknown, report.committed), (1, 1), "{report:?}");
        let left = txn.undecided(10).unwrap();
        assert_eq!(left.len(), 1);
        assert!(
            left[0]
                .properties()
                .get("TRAN_LAST_CHECK_RESULT")
                .unwrap()
                .contains("panicked")
        );
        txn.close().unwrap();
    });
}

#[test]
fn an_immunity_time_delays_the_first_check_and_has_the_timeout_as_floor() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let checker = Arc::new(ByBody::default());
        let (clock, txn) = open_layer(&store, manual, checker.clone());
        let immune = |body: &str, secs: &str| {
            Message::new(body.to_owned()).with_property(CHECK_IMMUNITY_TIME_IN_SECONDS, secs)
        };
        txn.send_half("orders", 0, immune("commit-late", "20"))
            .unwrap();
        // 1 s asked, the 6 s timeout is the floor.
        txn.send_half("orders", 0, immune("commit-floor", "1"))
            .unwrap();
        clock.advance(Duration::from_secs(5));
        assert_eq!(txn.check_now().unwrap().checked, 0);
        clock.advance(Duration::from_secs(2));
        assert_eq!(txn.check_now().unwrap().checked, 1);
        assert_eq!(bodies(&*store, "orders", 0), ["commit-floor"]);
        clock.advance(Duration::from_secs(10));
        assert_eq!(txn.check_now().unwrap().checked, 0, "still immune at 17 s");
        clock.advance(Duration::from_secs(4));
        assert_eq!(txn.check_now().unwrap().committed, 1);
        assert_eq!(
            bodies(&*store, "orders", 0),
            ["commit-floor", "commit-late"]
        );
        // Not counted as checks while immune.
        assert_eq!(*checker.seen_counts.lock(), [0, 0]);
        txn.close().unwrap();
    });
}

#[test]
fn a_reopen_resumes_the_checks_where_they_stopped() {
    for_each_engine(|engine, dir| {
        let clock = Arc::new(ManualClock::new(T0));
        let checker = Arc::new(ByBody::default());
        {
            let store = store(engine, dir);
            let txn =
                HalfMessages::open(Arc::clone(&store), manual(&clock), checker.clone()).unwrap();
            txn.send_half("orders", 0, Message::new("unknown")).unwrap();
            clock.advance(Duration::from_secs(7));
            assert_eq!(txn.check_now().unwrap().unknown, 1);
            txn.close().unwrap();
            drop(txn);
            store.close().unwrap();
        }
        let store = store(engine, dir);
        let txn = HalfMessages::open(Arc::clone(&store), manual(&clock), checker.clone()).unwrap();
        clock.advance(Duration::from_secs(30));
        assert_eq!(
            txn.check_now().unwrap().checked,
            1,
            "the original is not checked again"
        );
        assert_eq!(*checker.seen_counts.lock(), [0, 1]);
        txn.close().unwrap();
    });
}

#[test]
fn send_in_transaction_ends_as_the_local_transaction_says() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let (_clock, txn) = open_layer(&store, manual, Arc::new(ByBody::default()));
        let (_, out) = txn
            .send_in_transaction("orders", 0, Message::new("a"), |half| {
                assert!(half.properties().get(TRANSACTION_ID).is_some());
                Commit
            })
            .unwrap();
        assert_eq!(out, Some(EndOutcome::Committed));
        let (_, out) = txn
            .send_in_transaction("orders", 0, Message::new("b"), |_| Rollback)
            .unwrap();
        assert_eq!(out, Some(EndOutcome::RolledBack));
        let (id, out) = txn
            .send_in_transaction("orders", 0, Message::new("c"), |_| Unknown)
            .unwrap();
        assert_eq!(out, None);
        let (_, out) = txn
            .send_in_transaction("orders", 0, Message::new("d"), |_| panic!("local"))
            .unwrap();
        assert_eq!(out, None);
        assert_eq!(bodies(&*store, "orders", 0), ["a"]);
        assert_eq!(txn.undecided(10).unwrap().len(), 2);
        assert_eq!(txn.end(id, Commit).unwrap(), EndOutcome::Committed);
        assert_eq!(bodies(&*store, "orders", 0), ["a", "c"]);
        assert!(store.bounds(OP_TOPIC, 0).unwrap().end >= 3);
        txn.close().unwrap();
    });
}

#[test]
fn the_background_thread_checks_and_close_joins_it() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let (clock, txn) = open_layer(&store, background, Arc::new(ByBody::default()));
        txn.send_half("orders", 0, Message::new("commit")).unwrap();
        clock.advance(Duration::from_secs(6));
        wait_for(Duration::from_secs(20), "never checked", || {
            store.bounds("orders", 0).unwrap().end > 0
        });
        txn.close().unwrap();
        assert_eq!(bodies(&*store, "orders", 0), ["commit"]);
    });
}

#[test]
fn a_commit_whose_real_topic_is_gone_is_parked_with_the_reason() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let (clock, txn) = open_layer(&store, manual, Arc::new(ByBody::default()));
        for t in ["gone", "gone-too"] {
            store.create_topic(t, TopicConfig::default()).unwrap();
        }
        let by_user = txn.send_half("gone", 0, Message::new("x")).unwrap();
        txn.send_half("gone-too", 0, Message::new("commit"))
            .unwrap();
        store.delete_topic("gone").unwrap();
        store.delete_topic("gone-too").unwrap();
        assert_eq!(txn.end(by_user, Commit).unwrap(), EndOutcome::Discarded);
        assert_eq!(
            txn.end(by_user, Commit).unwrap(),
            EndOutcome::AlreadyDiscarded
        );
        clock.advance(Duration::from_secs(7));
        let report = txn.check_now().unwrap();
        assert_eq!((report.checked, report.discarded), (1, 1), "{report:?}");
        // Not wedged: nothing left to check.
        clock.advance(Duration::from_secs(60));
        assert_eq!(txn.check_now().unwrap(), Default::default());
        let parked = read_all(&*store, CHECK_MAX_TIME_TOPIC, 0);
        assert_eq!(parked.len(), 2);
        for (p, topic) in parked.iter().zip(["gone", "gone-too"]) {
            assert_eq!(p.properties().get(REAL_TOPIC), Some(topic));
            let reason = p.properties().get(TRAN_DISCARD_REASON).unwrap();
            assert!(
                reason.contains("commit to") && reason.contains(topic),
                "{reason}"
            );
        }
        txn.close().unwrap();
    });
}

#[test]
fn without_the_key_index_ends_and_checks_work_the_same() {
    for engine in common::engines() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = small_options(engine);
        opts.index.enabled = false;
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), opts).unwrap());
        store
            .create_topic("orders", TopicConfig::default())
            .unwrap();
        let (clock, txn) = open_layer(&store, manual, Arc::new(ByBody::default()));
        let a = txn.send_half("orders", 0, Message::new("a")).unwrap();
        let b = txn.send_half("orders", 0, Message::new("b")).unwrap();
        txn.send_half("orders", 0, Message::new("commit")).unwrap();
        assert_eq!(txn.end(a, Commit).unwrap(), EndOutcome::Committed);
        assert_eq!(txn.end(b, Rollback).unwrap(), EndOutcome::RolledBack);
        assert_eq!(txn.end(a, Rollback).unwrap(), EndOutcome::AlreadyCommitted);
        assert_eq!(txn.end(b, Commit).unwrap(), EndOutcome::AlreadyRolledBack);
        clock.advance(Duration::from_secs(7));
        assert_eq!(txn.check_now().unwrap().committed, 1);
        assert_eq!(bodies(&*store, "orders", 0), ["a", "commit"]);
        txn.close().unwrap();
    }
}

#[test]
fn half_messages_retention_deleted_before_the_scan_are_reported() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let (clock, txn) = open_layer(&store, manual, Arc::new(ByBody::default()));
        for _ in 0..3 {
            txn.send_half("orders", 0, Message::new("commit")).unwrap();
        }
        // What retention would do to a layer that did not run for longer than it.
        store.delete_before(HALF_TOPIC, 0, 2).unwrap();
        clock.advance(Duration::from_secs(7));
        let report = txn.check_now().unwrap();
        assert_eq!((report.expired, report.committed), (2, 1), "{report:?}");
        assert!(matches!(
            txn.end(HalfId(0), Commit),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(txn.check_now().unwrap().expired, 0, "reported once");
        txn.close().unwrap();
    });
}

/// `end` calls racing the check-back on the same half messages: each is committed once.
#[test]
fn ends_racing_the_check_back_commit_each_message_once() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let clock = Arc::new(ManualClock::new(T0));
        let txn = Arc::new(
            HalfMessages::open(
                Arc::clone(&store),
                manual(&clock),
                Arc::new(ByBody::default()),
            )
            .unwrap(),
        );
        let ids: Vec<HalfId> = (0..200)
            .map(|i| {
                txn.send_half("orders", 0, Message::new(format!("c{i}")))
                    .unwrap()
            })
            .collect();
        clock.advance(Duration::from_secs(7));
        let checker = {
            let txn = Arc::clone(&txn);
            std::thread::spawn(move || txn.check_now().unwrap())
        };
        let mut ended = 0;
        for id in ids.iter().rev() {
            match txn.end(*id, Commit).unwrap() {
                EndOutcome::Committed => ended += 1,
                EndOutcome::AlreadyCommitted => {}
                other => panic!("{other:?}"),
            }
        }
        let report = checker.join().unwrap();
        assert_eq!(ended + report.committed, 200, "{report:?}");
        let mut seen = bodies(&*store, "orders", 0);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 200);
        assert_eq!(store.bounds("orders", 0).unwrap().end, 200);
        txn.close().unwrap();
    });
}

/// More half messages than one scan window, most of them ended by the user between scans:
/// each scan checks every undecided one exactly once, whatever window it falls in.
#[test]
fn a_scan_over_many_windows_checks_each_undecided_message_once() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let checker = Arc::new(ByBody::default());
        let (clock, txn) = open_layer(&store, manual, checker.clone());
        let n = 2_500u32;
        let ids: Vec<HalfId> = (0..n)
            .map(|i| {
                txn.send_half("orders", i % 2, Message::new(format!("u{i}")))
                    .unwrap()
            })
            .collect();
        let mut undecided = n as u64;
        for (i, id) in ids.iter().enumerate() {
            match i % 3 {
                0 => txn.end(*id, Commit).unwrap(),
                1 => txn.end(*id, Rollback).unwrap(),
                _ => continue,
            };
            undecided -= 1;
        }
        for round in 1..=3u32 {
            clock.advance(Duration::from_secs(30));
            let report = txn.check_now().unwrap();
            assert_eq!(report.checked, undecided, "round {round}: {report:?}");
            assert_eq!(report.unknown, undecided);
            // Between scans, the user ends a few more (the newest copies stand for them).
            for id in ids.iter().skip(2).step_by(3).take(10 * round as usize) {
                let _ = txn.end(*id, Rollback).unwrap();
            }
            undecided = (n as u64 / 3) - 10 * u64::from(round);
        }
        let committed = read_all(&*store, "orders", 0).len() + read_all(&*store, "orders", 1).len();
        assert_eq!(committed, (n as usize).div_ceil(3));
        assert_eq!(txn.undecided(usize::MAX).unwrap().len() as u64, undecided);
        txn.close().unwrap();
    });
}

/// A half message its parking topic refuses even bare is not written anywhere: its DISCARD
/// done record says why, the report and `stats()` count it as dropped, and it is never
/// checked again.
#[test]
fn a_message_too_large_to_park_is_dropped_with_the_reason_in_its_done_record() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        // The layer keeps an existing parking topic: one that takes (almost) nothing.
        store
            .create_topic(
                CHECK_MAX_TIME_TOPIC,
                TopicConfig {
                    max_message_bytes: Some(64),
                    ..TopicConfig::with_partitions(1)
                },
            )
            .unwrap();
        let checker = Arc::new(ByBody::default());
        let (clock, txn) = open_layer(
            &store,
            |c| HalfConfig {
                max_checks: 1,
                ..manual(c)
            },
            checker.clone(),
        );
        let id = txn.send_half("orders", 0, Message::new("u")).unwrap();
        clock.advance(Duration::from_secs(7));
        assert_eq!(txn.check_now().unwrap().unknown, 1, "{engine}");
        clock.advance(Duration::from_secs(31));
        let report = txn.check_now().unwrap();
        assert_eq!((report.discarded, report.dropped), (1, 1), "{engine}");
        assert!(
            bodies(&*store, CHECK_MAX_TIME_TOPIC, 0).is_empty(),
            "{engine}"
        );
        let ops = read_all(&*store, OP_TOPIC, 0);
        let done = ops.last().unwrap();
        assert_eq!(done.tags(), Some("d"), "{engine}");
        let reason = done.properties().get(TRAN_DISCARD_REASON).unwrap();
        assert!(
            reason.starts_with("checked 1 times") && reason.contains("not parked"),
            "{engine}: {reason}"
        );
        assert_eq!(
            txn.end(id, Commit).unwrap(),
            EndOutcome::AlreadyDiscarded,
            "{engine}"
        );
        clock.advance(Duration::from_secs(31));
        assert_eq!(txn.check_now().unwrap().checked, 0, "{engine}");
        assert_eq!(checker.calls.load(Ordering::SeqCst), 1, "{engine}");
        let stats = txn.stats();
        assert_eq!(
            (stats.unknown, stats.discarded, stats.dropped),
            (1, 1, 1),
            "{engine}"
        );
        txn.close().unwrap();
        store.close().unwrap();
    });
}

/// `stats()` adds up the check thread's scans too (their reports have no other reader).
#[test]
fn stats_count_the_check_threads_scans() {
    for_each_engine(|engine, dir| {
        let store = store(engine, dir);
        let (clock, txn) = open_layer(&store, background, Arc::new(ByBody::default()));
        txn.send_half("orders", 0, Message::new("u")).unwrap();
        clock.advance(Duration::from_secs(7));
        wait_for(
            Duration::from_secs(10),
            &format!("{engine}: no scan counted"),
            || txn.stats().unknown > 0,
        );
        assert_eq!(txn.stats().checked, 1, "{engine}");
        txn.close().unwrap();
        store.close().unwrap();
    });
}
