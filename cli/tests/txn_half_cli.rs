//! `duolog half`: the undecided half messages of a store.

use std::process::Command;
use std::sync::Arc;

use duolog::txn::{HalfConfig, HalfMessages, LocalTransactionState};
use duolog::{LogStore, Message, Record, StoreOptions, TopicConfig};

fn half(dir: &str) -> String {
    half_with(dir, &[])
}

fn half_with(dir: &str, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_duolog"))
        .args(["half", "--dir", dir])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn half_lists_the_undecided_half_messages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(&d, StoreOptions::default()).unwrap());
    store
        .create_topic("orders", TopicConfig::with_partitions(2))
        .unwrap();
    store.close().unwrap();
    drop(store);
    assert_eq!(half(d.to_str().unwrap()), "total\t0\n", "no layer yet");
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(&d, StoreOptions::default()).unwrap());
    let config = HalfConfig {
        background: false,
        ..HalfConfig::default()
    };
    let checker = Arc::new(|_: &Record| LocalTransactionState::Unknown);
    let txn = HalfMessages::open(Arc::clone(&store), config, checker).unwrap();
    let a = txn
        .send_half("orders", 1, Message::new("open").with_key("k1"))
        .unwrap();
    let b = txn.send_half("orders", 0, Message::new("done")).unwrap();
    txn.end(b, LocalTransactionState::Commit).unwrap();
    txn.close().unwrap();
    drop(txn);
    store.close().unwrap();
    drop(store);
    assert_eq!(
        half(d.to_str().unwrap()),
        format!("{}\torders\t1\t0\tk1\topen\ntotal\t1\n", a.0)
    );
}

#[test]
fn half_lists_at_most_limit_half_messages_and_says_it_cut_the_listing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(&d, StoreOptions::default()).unwrap());
    store
        .create_topic("orders", TopicConfig::with_partitions(1))
        .unwrap();
    let config = HalfConfig {
        background: false,
        ..HalfConfig::default()
    };
    let checker = Arc::new(|_: &Record| LocalTransactionState::Unknown);
    let txn = HalfMessages::open(Arc::clone(&store), config, checker).unwrap();
    let ids: Vec<_> = (0..3)
        .map(|i| {
            txn.send_half("orders", 0, Message::new(format!("m{i}")))
                .unwrap()
        })
        .collect();
    txn.close().unwrap();
    drop(txn);
    store.close().unwrap();
    drop(store);
    let d = d.to_str().unwrap();
    assert_eq!(
        half_with(d, &["--limit", "2"]),
        format!(
            "{}\torders\t0\t0\t\tm0\n{}\torders\t0\t0\t\tm1\ntruncated\t2\ntotal\t2\n",
            ids[0].0, ids[1].0
        )
    );
    assert!(
        half(d).ends_with("total\t3\n"),
        "the default limit lists all 3"
    );
}
