//! The CLI's transaction options: `consume --isolation` (default read-committed) and
//! `produce --transactional` output, on both engines.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use duolog::txn::{TransactionCoordinator, TxnCoordinatorConfig, TxnProducerConfig};
use duolog::{LogStore, Message, StoreOptions, TopicConfig};

fn run(args: &[&str], stdin: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_duolog"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A command that does not read its input (consume) may exit before the write: a broken
    // pipe then is not a failure of the command.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn bodies(out: &str) -> Vec<&str> {
    out.lines()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect()
}

#[test]
fn consume_shows_aborted_and_open_records_only_read_uncommitted() {
    for engine in ["commitlog", "segmented"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let d = d.to_str().unwrap();
        let (code, out) = run(
            &[
                "produce",
                "--dir",
                d,
                "--engine",
                engine,
                "--topic",
                "t",
                "--transactional",
                "--txn-size",
                "2",
            ],
            "a\nb\nc\n",
        );
        assert_eq!(code, 0);
        // Printed once committed: two transactions (the last one shorter), one partition.
        let offsets: Vec<&str> = out.lines().collect();
        assert_eq!(
            offsets,
            ["0 0", "0 1", "0 3"],
            "{engine}: markers take offsets"
        );
        {
            let store: Arc<dyn LogStore> =
                Arc::from(duolog::open(d, StoreOptions::default()).unwrap());
            let txns =
                TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())
                    .unwrap();
            let p = txns
                .producer("other", TxnProducerConfig::default())
                .unwrap();
            p.begin().unwrap();
            p.send("t", 0, &[Message::new("aborted")]).unwrap();
            p.abort().unwrap();
            p.begin().unwrap();
            p.send("t", 0, &[Message::new("open")]).unwrap();
            store.append("t", 0, &[Message::new("plain")]).unwrap();
            store.sync().unwrap();
            txns.close().unwrap();
            // A crash: the producer's drop finds the store gone and aborts nothing.
            store.abandon();
            drop(p);
        }
        let consume = |isolation: Option<&str>| {
            let mut args = vec!["consume", "--dir", d, "--topic", "t", "--partition", "0"];
            if let Some(i) = isolation {
                args.extend(["--isolation", i]);
            }
            let (code, out) = run(&args, "");
            assert_eq!(code, 0, "{engine}: {args:?}");
            out
        };
        // The uncommitted view first: the consume's coordinator then aborts "open".
        let all = consume(Some("read-uncommitted"));
        assert_eq!(
            bodies(&all),
            ["a", "b", "c", "aborted", "open", "plain"],
            "{engine}"
        );
        let committed = consume(None);
        assert_eq!(bodies(&committed), ["a", "b", "c", "plain"], "{engine}");
        assert_eq!(
            bodies(&consume(Some("read-committed"))),
            ["a", "b", "c", "plain"]
        );
        let (code, _) = run(
            &[
                "consume",
                "--dir",
                d,
                "--topic",
                "t",
                "--partition",
                "0",
                "--isolation",
                "dirty",
            ],
            "",
        );
        assert_eq!(code, 2, "a bad --isolation is a usage error");
        let (code, _) = run(
            &["produce", "--dir", d, "--topic", "t", "--txn-size", "2"],
            "x\n",
        );
        assert_eq!(code, 2, "--txn-size needs --transactional");
    }
}

#[test]
fn the_group_consumer_reads_committed_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    {
        let store: Arc<dyn LogStore> = Arc::from(duolog::open(d, StoreOptions::default()).unwrap());
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        let txns =
            TransactionCoordinator::open(Arc::clone(&store), TxnCoordinatorConfig::default())
                .unwrap();
        let p = txns.producer("p", TxnProducerConfig::default()).unwrap();
        p.begin().unwrap();
        p.send("t", 0, &[Message::new("gone")]).unwrap();
        p.send("t", 1, &[Message::new("gone")]).unwrap();
        p.abort().unwrap();
        p.begin().unwrap();
        p.send("t", 1, &[Message::new("kept")]).unwrap();
        p.commit().unwrap();
        drop(p);
        txns.close().unwrap();
        drop(txns);
        store.close().unwrap();
    }
    let (code, out) = run(&["consume", "--dir", d, "--topic", "t", "--group", "g"], "");
    assert_eq!(code, 0);
    assert_eq!(bodies(&out), ["kept"]);
}
