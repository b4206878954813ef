//! Globally ordered topics (`message.order=global`) on both engines: exactly one partition,
//! never widened by any caller of the store, persisted across a reopen.

mod common;

use common::{for_each_engine, open, small_options};
use duolog::{Error, Message, TopicConfig};

fn global(partitions: u32) -> TopicConfig {
    let mut c = TopicConfig::with_partitions(partitions);
    c.set("message.order", "global")
        .expect("message.order is a topic config");
    c
}

fn is_invalid(r: duolog::Result<impl std::fmt::Debug>, what: &str) -> String {
    match r {
        Err(Error::InvalidArgument(m)) => m,
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn a_global_topic_with_more_than_one_partition_is_refused_at_create() {
    for_each_engine(|engine, dir| {
        let store = open(dir, &small_options(engine));
        let m = is_invalid(store.create_topic("wide", global(3)), "create 3 partitions");
        assert!(m.contains("message.order"), "{m}");
        assert!(store.describe_topic("wide").is_err(), "nothing created");
        store.create_topic("one", global(1)).unwrap();
    });
}

#[test]
fn add_partitions_on_a_global_topic_is_refused_on_both_engines_across_reopen() {
    for_each_engine(|engine, dir| {
        let opts = small_options(engine);
        {
            let store = open(dir, &opts);
            store.create_topic("ledger", global(1)).unwrap();
            store.append("ledger", 0, &[Message::new("a")]).unwrap();
            let m = is_invalid(store.add_partitions("ledger", 1), "add_partitions");
            assert!(m.contains("ledger") && m.contains("global"), "{m}");
            assert_eq!(store.describe_topic("ledger").unwrap().partitions, 1);
            store.close().unwrap();
        }
        let store = open(dir, &opts);
        let config = store.describe_topic("ledger").unwrap();
        assert_eq!(config.partitions, 1);
        assert!(
            config
                .overrides()
                .contains(&("message.order", "global".to_owned())),
            "persisted: {:?}",
            config.overrides()
        );
        is_invalid(
            store.add_partitions("ledger", 4),
            "add_partitions after reopen",
        );
        assert!(store.append("ledger", 1, &[Message::new("b")]).is_err());
        assert_eq!(store.bounds("ledger", 0).unwrap().end, 1);
    });
}

#[test]
fn altering_a_wide_topic_to_global_is_refused_and_a_one_partition_topic_may_be() {
    for_each_engine(|engine, dir| {
        let opts = small_options(engine);
        {
            let store = open(dir, &opts);
            store
                .create_topic("wide", TopicConfig::with_partitions(2))
                .unwrap();
            let mut c = store.describe_topic("wide").unwrap();
            c.set("message.order", "global").unwrap();
            let m = is_invalid(store.alter_topic("wide", c), "alter wide to global");
            assert!(m.contains("exactly one partition"), "{m}");
            assert!(store.describe_topic("wide").unwrap().overrides().is_empty());

            store
                .create_topic("narrow", TopicConfig::default())
                .unwrap();
            let mut c = store.describe_topic("narrow").unwrap();
            c.set("message.order", "global").unwrap();
            store.alter_topic("narrow", c).unwrap();
            is_invalid(store.add_partitions("narrow", 1), "grow after alter");
            // Back to partition order: it may grow again.
            let mut c = store.describe_topic("narrow").unwrap();
            c.unset("message.order").unwrap();
            store.alter_topic("narrow", c).unwrap();
            store.close().unwrap();
        }
        let store = open(dir, &opts);
        assert_eq!(store.add_partitions("narrow", 1).unwrap(), 2);
    });
}

#[test]
fn message_order_values_are_checked_and_shown_by_describe() {
    let mut c = TopicConfig::default();
    let e = c.set("message.order", "total").unwrap_err().to_string();
    assert!(e.contains("message.order"), "{e}");
    let all = c.describe(&Default::default(), duolog::EngineKind::CommitLog);
    assert!(
        all.contains(&("message.order", "partition".to_owned(), false)),
        "{all:?}"
    );
    c.set("message.order", "global").unwrap();
    let all = c.describe(&Default::default(), duolog::EngineKind::Segmented);
    assert!(
        all.contains(&("message.order", "global".to_owned(), true)),
        "{all:?}"
    );
}
