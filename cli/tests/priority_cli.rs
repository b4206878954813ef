//! `duolog produce --priority N` and `duolog consume --group G --priority`, as a user meets
//! them, on both engines.

mod common;

use std::process::Output;

use common::{duolog, store_dir, text};

fn produce(d: &str, engine: &str, priority: &str, lines: &str) -> Output {
    duolog(
        &[
            "produce",
            "--dir",
            d,
            "--engine",
            engine,
            "--topic",
            "jobs",
            "--priority",
            priority,
        ],
        lines,
    )
}

#[test]
fn produce_priority_creates_a_priority_topic_and_consume_priority_drains_highest_first() {
    for engine in ["commitlog", "segmented"] {
        let (_dir, d) = store_dir();
        let d = d.as_str();
        for p in ["1", "4", "9", "4", "1"] {
            let out = produce(d, engine, p, &format!("p{p}-a\np{p}-b\n"));
            assert!(out.status.success(), "{engine}: {}", text(&out.stderr));
            for line in text(&out.stdout).lines() {
                assert!(line.starts_with(&format!("{p} ")), "{engine}: {line}");
            }
        }
        let topics = duolog(&["topics", "--dir", d], "");
        assert!(
            text(&topics.stdout).contains("jobs\tpartitions=10"),
            "{engine}: {}",
            text(&topics.stdout)
        );
        let out = duolog(
            &[
                "consume",
                "--dir",
                d,
                "--topic",
                "jobs",
                "--group",
                "g",
                "--priority",
            ],
            "",
        );
        assert!(out.status.success(), "{engine}: {}", text(&out.stderr));
        let partitions: Vec<u32> = text(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            partitions,
            [9, 9, 4, 4, 4, 4, 1, 1, 1, 1],
            "{engine}: {}",
            text(&out.stdout)
        );
        // Committed: a second run prints nothing.
        let again = duolog(
            &[
                "consume",
                "--dir",
                d,
                "--topic",
                "jobs",
                "--group",
                "g",
                "--priority",
            ],
            "",
        );
        assert!(
            again.status.success() && again.stdout.is_empty(),
            "{}",
            text(&again.stdout)
        );
    }
}

#[test]
fn produce_priority_out_of_range_or_on_a_topic_of_the_wrong_shape_is_a_clear_error() {
    let (_dir, d) = store_dir();
    let d = d.as_str();
    for bad in ["10", "-1", "high"] {
        let out = produce(d, "commitlog", bad, "x\n");
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
        // (clap reads "-1" as an unknown flag: still a usage error, exit 2.)
        if bad != "-1" {
            assert!(
                text(&out.stderr).contains("--priority"),
                "{}",
                text(&out.stderr)
            );
        }
    }
    let out = duolog(
        &[
            "produce",
            "--dir",
            d,
            "--topic",
            "odd",
            "--partitions",
            "12",
            "--priority",
            "3",
        ],
        "x\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("multiple of 10"),
        "{}",
        text(&out.stderr)
    );
    let out = duolog(
        &[
            "produce",
            "--dir",
            d,
            "--topic",
            "t",
            "--priority",
            "3",
            "--partition",
            "0",
        ],
        "x\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn a_global_topic_is_created_shown_and_never_widened_from_the_cli() {
    let (_dir, d) = store_dir();
    let d = d.as_str();
    let create = |topic: &str, partitions: &str| {
        duolog(
            &[
                "topic",
                "create",
                "--dir",
                d,
                "--topic",
                topic,
                "--partitions",
                partitions,
                "--config",
                "message.order=global",
            ],
            "",
        )
    };
    let wide = create("wide", "2");
    assert_eq!(wide.status.code(), Some(1), "{}", text(&wide.stderr));
    assert!(
        text(&wide.stderr).contains("exactly one partition"),
        "{}",
        text(&wide.stderr)
    );
    assert!(create("ledger", "1").status.success());
    let topics = duolog(&["topics", "--dir", d], "");
    assert!(
        text(&topics.stdout).contains("ledger\tpartitions=1\tmessage.order=global"),
        "{}",
        text(&topics.stdout)
    );
    let grow = duolog(
        &[
            "topic",
            "add-partitions",
            "--dir",
            d,
            "--topic",
            "ledger",
            "--count",
            "1",
        ],
        "",
    );
    assert_eq!(grow.status.code(), Some(1), "{}", text(&grow.stderr));
    assert!(
        text(&grow.stderr).contains("globally ordered"),
        "{}",
        text(&grow.stderr)
    );
}
