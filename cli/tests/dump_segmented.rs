//! `duolog dump` of a segmented store's `.log` shows transactional and control batches as
//! kafka-dump-log does: producer id, epoch and sequences per batch and record, and markers as
//! `endTxnMarker: COMMIT coordinatorEpoch: N` (issue 14).

use std::process::Command;

use duolog::{
    EngineKind, LogStore, Message, ProducerId, SegmentedStore, StoreOptions, TopicConfig, TxnMarker,
};

#[test]
fn dump_of_a_segment_shows_control_batches_and_producers() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        engine: Some(EngineKind::Segmented),
        ..StoreOptions::default()
    };
    let store = SegmentedStore::open(dir.path(), opts).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let p = ProducerId {
        id: store.allocate_producer_id().unwrap(),
        epoch: 2,
    };
    store.append("t", 0, &[Message::new("plain")]).unwrap();
    store
        .append_transactional("t", 0, p, 0, &[Message::new("a"), Message::new("b")])
        .unwrap();
    store.write_marker("t", 0, p, TxnMarker::Commit, 7).unwrap();
    store
        .append_transactional("t", 0, p, 2, &[Message::new("c")])
        .unwrap();
    store.write_marker("t", 0, p, TxnMarker::Abort, 8).unwrap();
    store.close().unwrap();
    let log = dir.path().join("t-0").join(format!("{:020}.log", 0));
    let out = Command::new(env!("CARGO_BIN_EXE_duolog"))
        .args(["dump", log.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let batches: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("baseOffset"))
        .collect();
    assert_eq!(batches.len(), 5, "{text}");
    assert!(
        batches[0].contains("producerId: -1 producerEpoch: -1"),
        "{text}"
    );
    let pid = format!("producerId: {} producerEpoch: 2", p.id);
    assert!(
        batches[1].contains("baseSequence: 0 lastSequence: 1")
            && batches[1].contains(&pid)
            && batches[1].contains("isTransactional: true isControl: false"),
        "{text}"
    );
    assert!(
        batches[2].contains("baseSequence: -1")
            && batches[2].contains(&pid)
            && batches[2].contains("isTransactional: true isControl: true"),
        "{text}"
    );
    assert!(
        text.contains("| offset: 2 ") && text.contains("sequence: 1 key: null payload: b"),
        "{text}"
    );
    assert!(
        text.contains("| offset: 3 ")
            && text.contains("sequence: -1 endTxnMarker: COMMIT coordinatorEpoch: 7"),
        "{text}"
    );
    assert!(
        text.contains("| offset: 5 ")
            && text.contains("sequence: -1 endTxnMarker: ABORT coordinatorEpoch: 8"),
        "{text}"
    );
    let index = dir.path().join("t-0").join(format!("{:020}.txnindex", 0));
    let out = Command::new(env!("CARGO_BIN_EXE_duolog"))
        .args(["dump", index.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "version: 0 producerId: {} firstOffset: 4 lastOffset: 5 lastStableOffset: 6",
            p.id
        )),
        "{text}"
    );
}
