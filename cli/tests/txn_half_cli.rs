//! `duolog half`: the undecided half messages of a store.

use std::process::Command;
use std::sync::Arc;

use duolog::txn::{HalfConfig, HalfMessages, LocalTransactionState};
use duolog::{LogStore, Message, Record, StoreOptions, TopicConfig};

fn half(dir: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_duolog"))
        .args(["half", "--dir", dir])
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
