//! `duolog dump` of a CommitLog store's commit-log file shows each record's transaction type
//! and producer fields, and markers as control records (issue 14).

use std::process::Command;

use duolog::{
    CommitLogOptions, CommitLogStore, LogStore, Message, ProducerId, StoreOptions, TopicConfig,
    TxnMarker,
};

#[test]
fn dump_of_a_commit_log_file_shows_transaction_types_and_producers() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        commitlog: CommitLogOptions {
            file_size: 64 * 1024,
            ..CommitLogOptions::default()
        },
        ..StoreOptions::default()
    };
    let store = CommitLogStore::open(dir.path(), opts).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 2,
    };
    store.append("t", 0, &[Message::new("plain")]).unwrap();
    store
        .append_transactional("t", 0, p, 0, &[Message::new("a"), Message::new("b")])
        .unwrap();
    store.write_marker("t", 0, p, TxnMarker::Abort, 5).unwrap();
    store
        .append_transactional("t", 0, p, 2, &[Message::new("c").with_key("k")])
        .unwrap();
    store.write_marker("t", 0, p, TxnMarker::Commit, 5).unwrap();
    store.close().unwrap();
    let file = dir.path().join("commitlog").join(format!("{:020}", 0));
    let out = Command::new(env!("CARGO_BIN_EXE_duolog"))
        .args(["dump", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("position:"))
        .collect();
    assert_eq!(lines.len(), 6, "{text}");
    let pid = format!("producerId: {} producerEpoch: 2", p.id);
    assert!(
        lines[0].contains("queueOffset: 0 sysFlag: 0 transactionType: NOT_TYPE producerId: -1"),
        "{text}"
    );
    assert!(
        lines[1].contains("transactionType: PREPARED_TYPE")
            && lines[1].contains(&pid)
            && lines[1].contains("sequence: 0 isControl: false"),
        "{text}"
    );
    assert!(lines[2].contains("sequence: 1"), "{text}");
    assert!(
        lines[3].contains("queueOffset: 3 sysFlag: 12 transactionType: ROLLBACK_TYPE")
            && lines[3].contains(&pid)
            && lines[3].contains("isControl: true")
            && lines[3].contains("endTxnMarker: ABORT coordinatorEpoch: 5 txnFirstOffset: 1"),
        "{text}"
    );
    assert!(
        lines[4].contains("sequence: 2") && lines[4].contains("key: k payload: c"),
        "{text}"
    );
    assert!(
        lines[5].contains("sysFlag: 8 transactionType: COMMIT_TYPE")
            && lines[5].contains("endTxnMarker: COMMIT coordinatorEpoch: 5 txnFirstOffset: 4"),
        "{text}"
    );
}
