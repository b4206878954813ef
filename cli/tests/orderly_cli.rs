//! `duolog consume --orderly` as a new user meets it: every partition printed in offset order,
//! the group's commit resumed by the next run, and a second orderly follower on the same
//! directory refused with a clear error (the store's `LOCK`: one process per store).

mod common;

use common::{duolog, text};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

fn ok(args: &[&str], stdin: &str) -> String {
    let out = duolog(args, stdin);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Partition → offsets printed, in printed order.
fn offsets(out: &str) -> BTreeMap<u32, Vec<u64>> {
    let mut m: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for line in out.lines() {
        let mut f = line.split('\t');
        let p = f.next().unwrap().parse().unwrap();
        let o = f.next().unwrap().parse().unwrap();
        m.entry(p).or_default().push(o);
    }
    m
}

fn setup(d: &str) {
    ok(
        &[
            "topic",
            "create",
            "--dir",
            d,
            "--topic",
            "t",
            "--partitions",
            "4",
        ],
        "",
    );
    for p in 0..4 {
        let input: String = (0..25).map(|i| format!("k{}\tv{p}-{i}\n", i % 3)).collect();
        let part = p.to_string();
        ok(
            &[
                "produce",
                "--dir",
                d,
                "--topic",
                "t",
                "--partition",
                &part,
                "--keyed",
            ],
            &input,
        );
    }
}

#[test]
fn orderly_consume_prints_every_partition_in_offset_order_and_resumes_from_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    setup(d);
    let args = [
        "consume",
        "--dir",
        d,
        "--topic",
        "t",
        "--group",
        "g",
        "--orderly",
    ];
    let out = ok(&args, "");
    let got = offsets(&out);
    assert_eq!(got.len(), 4, "{out}");
    for (p, o) in &got {
        assert_eq!(*o, (0..25).collect::<Vec<u64>>(), "partition {p}");
    }
    assert!(out.contains("0\t0\tk0\tv0-0\n"), "{out}");
    // Committed: a second run prints only what was produced since.
    ok(
        &[
            "produce",
            "--dir",
            d,
            "--topic",
            "t",
            "--partition",
            "2",
            "--keyed",
        ],
        "k9\tlate\n",
    );
    let out = ok(&args, "");
    assert_eq!(out, "2\t25\tk9\tlate\n");
}

#[test]
fn a_second_orderly_follower_on_the_same_directory_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    setup(d);
    let follow = [
        "consume",
        "--dir",
        d,
        "--topic",
        "t",
        "--group",
        "g",
        "--orderly",
        "--follow",
        "--idle-exit",
        "3s",
    ];
    let first = Command::new(env!("CARGO_BIN_EXE_duolog"))
        .args(follow)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let second = duolog(&follow, "");
    assert_eq!(second.status.code(), Some(1));
    let err = text(&second.stderr);
    assert!(err.contains("locked"), "{err}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(
        offsets(&text(&first.stdout))
            .values()
            .map(Vec::len)
            .sum::<usize>(),
        100
    );
}
