//! The CLI as a user meets it: round trip through produce/consume, clear one-line errors with a
//! non-zero exit, and `verify` failing loudly on a damaged store.

mod common;

use common::{duolog, text};
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn produce_then_consume_round_trips_lines_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    let out = duolog(
        &[
            "produce",
            "--dir",
            d,
            "--topic",
            "t",
            "--partition",
            "0",
            "--sync",
        ],
        "alpha\nbeta\n\ngamma\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0 0\n0 1\n0 2\n0 3\n");
    let out = duolog(
        &[
            "produce",
            "--dir",
            d,
            "--topic",
            "t",
            "--keyed",
            "--partition",
            "0",
        ],
        "k1\tv1\nno-tab\n",
    );
    assert!(out.status.success());
    let out = duolog(
        &["consume", "--dir", d, "--topic", "t", "--partition", "0"],
        "",
    );
    assert_eq!(
        text(&out.stdout),
        "0\t\talpha\n1\t\tbeta\n2\t\t\n3\t\tgamma\n4\tk1\tv1\n5\t\tno-tab\n"
    );
    let out = duolog(
        &[
            "consume",
            "--dir",
            d,
            "--topic",
            "t",
            "--partition",
            "0",
            "--from",
            "4",
            "--max",
            "1",
        ],
        "",
    );
    assert_eq!(text(&out.stdout), "4\tk1\tv1\n");
    let out = duolog(&["verify", "--dir", d], "");
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("ok"));
    let out = duolog(&["topics", "--dir", d], "");
    assert_eq!(text(&out.stdout), "t\tpartitions=1\n");
    let out = duolog(&["stats", "--dir", d], "");
    assert!(
        text(&out.stdout).contains("partition\tt\t0\tstart=0\tend=6\tdurable=6\toffsets=6\tbytes="),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn bad_input_is_one_clear_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    duolog(&["produce", "--dir", d, "--topic", "t"], "x\n");
    let cases: &[(&[&str], &str)] = &[
        (
            &["consume", "--dir", d, "--topic", "nope", "--partition", "0"],
            "unknown topic",
        ),
        (
            &["consume", "--dir", d, "--topic", "t", "--partition", "9"],
            "partition 9 does not exist",
        ),
        (
            &[
                "consume",
                "--dir",
                d,
                "--topic",
                "t",
                "--partition",
                "0",
                "--from",
                "99",
            ],
            "out of range",
        ),
        (
            &[
                "consume",
                "--dir",
                "/nonexistent/x",
                "--topic",
                "t",
                "--partition",
                "0",
            ],
            "no duolog store",
        ),
        (
            &["consume", "--dir", d, "--topic", "t", "--partition", "x"],
            "needs a number",
        ),
        (
            &["produce", "--dir", d, "--topic", "t", "--engine", "mysql"],
            "unknown engine",
        ),
        (&["frobnicate"], "unknown command"),
    ];
    for (args, expect) in cases {
        let out = duolog(args, "");
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
    }
}

#[test]
fn verify_fails_on_a_damaged_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let lines: String = (0..100).map(|i| format!("line {i}\n")).collect();
    duolog(
        &[
            "produce",
            "--dir",
            d.to_str().unwrap(),
            "--topic",
            "t",
            "--sync",
        ],
        &lines,
    );
    // Flip a byte inside the 50th record's body (records here are about 130 bytes).
    use std::io::{Read, Seek, SeekFrom};
    let log = d.join("commitlog").join(format!("{:020}", 0));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log)
        .unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(50 * 130)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(50 * 130)).unwrap();
    f.write_all(&[b[0] ^ 0x20]).unwrap();
    let out = duolog(&["verify", "--dir", d.to_str().unwrap()], "");
    assert!(!out.status.success());
    assert!(
        text(&out.stdout).contains("problem:"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains("problem(s) found"));
}

#[test]
fn segmented_engine_and_dump() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    let out = duolog(
        &[
            "produce",
            "--dir",
            d,
            "--engine",
            "segmented",
            "--topic",
            "t",
            "--keyed",
            "--sync",
        ],
        "k1\tv1\nk2\tv2\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = duolog(
        &["consume", "--dir", d, "--topic", "t", "--partition", "0"],
        "",
    );
    let body = text(&out.stdout);
    assert!(body.contains("k1\tv1") && body.contains("k2\tv2"), "{body}");
    let out = duolog(&["stats", "--dir", d], "");
    assert!(text(&out.stdout).starts_with("engine\tsegmented"));
    // The wrong engine for an existing store is a clear error.
    let out = duolog(
        &[
            "produce",
            "--dir",
            d,
            "--engine",
            "commitlog",
            "--topic",
            "t",
        ],
        "x\n",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("segmented store"),
        "{}",
        text(&out.stderr)
    );
    let log = dir.path().join("s/t-0/00000000000000000000.log");
    let out = duolog(&["dump", log.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dumped = text(&out.stdout);
    assert!(
        dumped.contains("baseOffset: 0 lastOffset: 1 count: 2"),
        "{dumped}"
    );
    assert!(
        dumped.contains("| offset: 1 ") && dumped.contains("key: k2 payload: v2"),
        "{dumped}"
    );
    // A segment's index files exist once it holds more index entries than it keeps in memory
    // (32, an entry per 4 KiB of log by default): 40 batches of 5 KB more, one per
    // transaction.
    let many: String = (0..40).map(|i| format!("{i:05000}\n")).collect();
    let out = duolog(
        &[
            "produce",
            "--dir",
            d,
            "--topic",
            "t",
            "--partition",
            "0",
            "--transactional",
            "--txn-size",
            "1",
        ],
        &many,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let idx = dir.path().join("s/t-0/00000000000000000000.timeindex");
    let out = duolog(&["dump", idx.to_str().unwrap()], "");
    assert!(
        text(&out.stdout).contains("timestamp: "),
        "{}",
        text(&out.stdout)
    );
    let out = duolog(&["dump", "/nonexistent.log"], "");
    assert!(!out.status.success());
}

#[test]
fn query_offset_for_time_and_reindex() {
    for engine in ["commitlog", "segmented"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let d = d.to_str().unwrap();
        let out = duolog(
            &[
                "produce",
                "--dir",
                d,
                "--engine",
                engine,
                "--topic",
                "t",
                "--keyed",
                "--partition",
                "0",
            ],
            "a\t1\nb\t2\na\t3\n",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = duolog(&["query", "--dir", d, "--topic", "t", "--key", "a"], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let lines: Vec<String> = text(&out.stdout)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                format!("{} {} {}", f[0], f[1], f[3])
            })
            .collect();
        assert_eq!(lines, ["0 2 3", "0 0 1"], "{engine}: newest first");
        let out = duolog(
            &[
                "offset-for-time",
                "--dir",
                d,
                "--topic",
                "t",
                "--partition",
                "0",
                "--time",
                "0",
            ],
            "",
        );
        assert_eq!(text(&out.stdout), "0\n");
        let out = duolog(
            &[
                "offset-for-time",
                "--dir",
                d,
                "--topic",
                "t",
                "--partition",
                "0",
                "--time",
                "99999999999999",
            ],
            "",
        );
        assert_eq!(text(&out.stdout), "none\n");
        let out = duolog(&["reindex", "--dir", d], "");
        assert_eq!(text(&out.stdout), "indexed 3 records\n", "{engine}");
        let out = duolog(
            &[
                "query", "--dir", d, "--topic", "t", "--key", "b", "--max", "5",
            ],
            "",
        );
        assert_eq!(text(&out.stdout).lines().count(), 1);
    }
}

/// A real full disk, as far as this machine allows: the producer runs under `ulimit -f` (with
/// SIGXFSZ ignored, so the limit turns into EFBIG errors). The store reports "storage full",
/// keeps every acknowledged line, and takes appends again once the limit is gone.
#[test]
fn file_size_limit_is_storage_full_and_nothing_acknowledged_is_lost() {
    for engine in ["commitlog", "segmented"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let d = d.to_str().unwrap();
        // The segmented engine grows files as it writes: start with a small store and hit the
        // limit while appending. The CommitLog engine preallocates 1 GiB log files: under the
        // limit it cannot create its first one.
        let before = if engine == "segmented" { "a\nb\n" } else { "" };
        let out = duolog(
            &[
                "produce",
                "--dir",
                d,
                "--engine",
                engine,
                "--topic",
                "t",
                "--partition",
                "0",
                "--sync",
            ],
            before,
        );
        assert!(out.status.success());
        let skip = before.lines().count();
        let lines: String = (0..20_000)
            .map(|i| format!("line-{i:06}-{}\n", "x".repeat(200)))
            .collect();
        let script = format!(
            "trap '' XFSZ; ulimit -f 2048; exec {} produce --dir {d} --topic t --partition 0 --sync",
            env!("CARGO_BIN_EXE_duolog")
        );
        let mut child = Command::new("bash")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Feed stdin from a thread, so the child's output never fills its pipe while we write.
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(lines.as_bytes());
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        let acked = text(&out.stdout).lines().count();
        assert!(
            !out.status.success(),
            "{engine}: the limit must stop the producer"
        );
        assert!(
            text(&out.stderr).contains("storage full"),
            "{engine}: {}",
            text(&out.stderr)
        );
        assert!(acked < 20_000);
        // Everything acknowledged is there; appends work again without the limit.
        let out = duolog(
            &["consume", "--dir", d, "--topic", "t", "--partition", "0"],
            "",
        );
        let got: Vec<String> = text(&out.stdout)
            .lines()
            .map(|l| l.rsplit('\t').next().unwrap().to_string())
            .collect();
        assert!(
            got.len() >= skip + acked,
            "{engine}: {} lines for {acked} acknowledged",
            got.len()
        );
        for (i, line) in got.iter().skip(skip).take(acked).enumerate() {
            assert_eq!(line, &format!("line-{i:06}-{}", "x".repeat(200)));
        }
        let out = duolog(
            &[
                "produce",
                "--dir",
                d,
                "--topic",
                "t",
                "--partition",
                "0",
                "--sync",
            ],
            "after\n",
        );
        assert!(out.status.success(), "{engine}: {}", text(&out.stderr));
        let out = duolog(&["verify", "--dir", d], "");
        assert!(out.status.success(), "{engine}: {}", text(&out.stdout));
    }
}

/// A reader that stops early (`duolog stats … | head -1`) ends the command quietly: no panic,
/// no error, whatever the command was printing.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // A line per partition: far more output than a pipe buffers (64 KiB), so writes go on
    // after the reader is gone.
    let out = duolog(
        &[
            "produce",
            "--dir",
            d,
            "--topic",
            "t",
            "--partitions",
            "3000",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = format!(
        "set -o pipefail; {} stats --dir {d} | head -1 >/dev/null",
        env!("CARGO_BIN_EXE_duolog")
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
}

#[test]
fn topic_administration_configs_and_tombstones() {
    for engine in ["commitlog", "segmented"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let d = d.to_str().unwrap();
        let ok = |args: &[&str], stdin: &str| {
            let out = duolog(args, stdin);
            assert!(
                out.status.success(),
                "{engine}: {args:?}: {}",
                text(&out.stderr)
            );
            text(&out.stdout)
        };
        ok(
            &[
                "topic",
                "create",
                "--dir",
                d,
                "--engine",
                engine,
                "--topic",
                "kv",
                "--partitions",
                "2",
                "--config",
                "cleanup.policy=compact",
                "--config",
                "retention.ms=-1",
            ],
            "",
        );
        ok(&["topic", "create", "--dir", d, "--topic", "plain"], "");
        assert_eq!(
            ok(&["topics", "--dir", d], ""),
            "kv\tpartitions=2\tcleanup.policy=compact\tretention.ms=-1\nplain\tpartitions=1\n"
        );
        ok(
            &[
                "topic",
                "alter",
                "--dir",
                d,
                "--topic",
                "kv",
                "--config",
                "delete.retention.ms=1000",
                "--delete-config",
                "retention.ms",
            ],
            "",
        );
        let all = ok(&["topics", "--dir", d, "--all"], "");
        assert!(
            all.contains("kv\tpartitions=2\tcleanup.policy=compact*"),
            "{all}"
        );
        assert!(all.contains("\tdelete.retention.ms=1000*"), "{all}");
        assert!(
            all.contains("\tretention.ms=-1\t"),
            "{engine}: compact deletes nothing: {all}"
        );
        assert!(
            all.contains("plain\tpartitions=1\tcleanup.policy=delete\t"),
            "{all}"
        );
        assert_eq!(
            ok(
                &[
                    "topic",
                    "add-partitions",
                    "--dir",
                    d,
                    "--topic",
                    "kv",
                    "--count",
                    "2"
                ],
                ""
            ),
            "kv has 4 partitions\n"
        );
        // Tombstones only with --tombstones: `key<TAB>` is otherwise an empty value.
        ok(
            &[
                "produce",
                "--dir",
                d,
                "--topic",
                "kv",
                "--partition",
                "3",
                "--keyed",
            ],
            "a\t1\nb\t\n",
        );
        ok(
            &[
                "produce",
                "--dir",
                d,
                "--topic",
                "kv",
                "--partition",
                "3",
                "--keyed",
                "--tombstones",
            ],
            "a\t\n",
        );
        assert_eq!(
            ok(
                &["consume", "--dir", d, "--topic", "kv", "--partition", "3"],
                ""
            ),
            "0\ta\t1\n1\tb\t\n2\ta\tnull\n"
        );
        let report = ok(&["compact", "--dir", d, "--topic", "kv"], "");
        assert!(report.starts_with("cleaned "), "{report}");
        ok(&["topic", "delete", "--dir", d, "--topic", "plain"], "");
        assert_eq!(
            ok(&["topics", "--dir", d], ""),
            "kv\tpartitions=4\tcleanup.policy=compact\tdelete.retention.ms=1000\n"
        );
        for (args, want) in [
            (
                vec![
                    "topic",
                    "create",
                    "--dir",
                    d,
                    "--topic",
                    "x",
                    "--config",
                    "retention.hours=1",
                ],
                "retention.hours",
            ),
            (
                vec![
                    "topic", "create", "--dir", d, "--topic", "x", "--config", "noequals",
                ],
                "NAME=VALUE",
            ),
            (
                vec![
                    "topic",
                    "alter",
                    "--dir",
                    d,
                    "--topic",
                    "nope",
                    "--config",
                    "retention.ms=1",
                ],
                "nope",
            ),
            (
                vec!["topic", "delete", "--dir", d, "--topic", "plain"],
                "plain",
            ),
            (vec!["topic", "explode", "--dir", d], "explode"),
            (
                vec!["produce", "--dir", d, "--topic", "kv", "--tombstones"],
                "--keyed",
            ),
        ] {
            let out = duolog(&args, "");
            assert!(!out.status.success(), "{args:?}");
            let err = text(&out.stderr);
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}

fn ok(args: &[&str], stdin: &str) -> String {
    let out = duolog(args, stdin);
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The new user's script from issue 12: 10,000 tagged lines, `consume --group g --filter
/// TagA` twice (the second run prints nothing new), `groups` shows zero lag.
#[test]
fn group_consumption_with_a_tag_filter_commits_what_it_printed() {
    for engine in ["commitlog", "segmented"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let d = d.to_str().unwrap();
        let lines = |tag: &str| -> String { (0..5_000).map(|i| format!("{tag}-{i}\n")).collect() };
        for tag in ["TagA", "TagB"] {
            let acks = ok(
                &[
                    "produce",
                    "--dir",
                    d,
                    "--engine",
                    engine,
                    "--topic",
                    "t",
                    "--partitions",
                    "4",
                    "--tags",
                    tag,
                ],
                &lines(tag),
            );
            assert_eq!(acks.lines().count(), 5_000, "{engine}");
        }
        let consume = |group: &str, filter: &str| {
            ok(
                &[
                    "consume", "--dir", d, "--group", group, "--topic", "t", "--filter", filter,
                ],
                "",
            )
        };
        let first = consume("g", "TagA");
        let mut bodies: Vec<String> = first
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                assert_eq!(f.len(), 4, "{engine}: {l}");
                assert!(f[0].parse::<u32>().unwrap() < 4 && f[1].parse::<u64>().is_ok());
                assert_eq!(f[2], "", "no key");
                f[3].to_owned()
            })
            .collect();
        bodies.sort();
        let mut want: Vec<String> = (0..5_000).map(|i| format!("TagA-{i}")).collect();
        want.sort();
        assert_eq!(bodies, want, "{engine}: every TagA line once, nothing else");
        assert_eq!(
            consume("g", "TagA"),
            "",
            "{engine}: the second run prints nothing new"
        );
        // Filtered-out records were committed past too: zero lag on every partition.
        let groups = ok(&["groups", "--dir", d], "");
        let rows: Vec<Vec<String>> = groups
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect();
        assert_eq!(rows.len(), 4, "{engine}: {groups}");
        let mut total = 0;
        for (p, row) in rows.iter().enumerate() {
            assert_eq!(row[..3], ["g", "t", &p.to_string()], "{engine}: {groups}");
            assert_eq!(row[3], row[4], "{engine}: committed = end: {groups}");
            assert_eq!(row[5], "0", "{engine}: {groups}");
            total += row[4].parse::<u64>().unwrap();
        }
        assert_eq!(total, 10_000);
        // Another group with both tags gets everything; a third with `*` too, and then
        // `groups --group` shows just it.
        assert_eq!(consume("both", "TagA || TagB").lines().count(), 10_000);
        assert_eq!(consume("all", "*").lines().count(), 10_000);
        let listed = ok(&["groups", "--dir", d], "");
        assert_eq!(listed.lines().count(), 12, "{listed}");
        assert!(listed.starts_with("all\t"), "sorted by group: {listed}");
        let only = ok(&["groups", "--dir", d, "--group", "both"], "");
        assert_eq!(only.lines().count(), 4);
        assert!(only.lines().all(|l| l.starts_with("both\t")), "{only}");
        // New records: the group picks up exactly those.
        ok(
            &["produce", "--dir", d, "--topic", "t", "--tags", "TagA"],
            "late\n",
        );
        let lag: u64 = ok(&["groups", "--dir", d, "--group", "g"], "")
            .lines()
            .map(|l| l.rsplit('\t').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(lag, 1, "{engine}");
        let late = consume("g", "TagA");
        assert!(
            late.ends_with("\t\tlate\n") && late.lines().count() == 1,
            "{late}"
        );
    }
}

#[test]
fn sql_filters_on_properties_and_tags() {
    for engine in ["commitlog", "segmented"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let d = d.to_str().unwrap();
        for (color, size, tag) in [
            ("red", "1", "TagA"),
            ("blue", "5", "TagA"),
            ("blue", "9", "TagB"),
        ] {
            let stdin: String = (0..10)
                .map(|i| format!("k{i}\t{color}-{size}-{i}\n"))
                .collect();
            ok(
                &[
                    "produce",
                    "--dir",
                    d,
                    "--engine",
                    engine,
                    "--topic",
                    "t",
                    "--partitions",
                    "3",
                    "--keyed",
                    "--tags",
                    tag,
                    "--property",
                    &format!("color={color}"),
                    "--property",
                    &format!("size={size}"),
                ],
                &stdin,
            );
        }
        let sql = |group: &str, expr: &str| -> Vec<String> {
            let out = ok(
                &[
                    "consume", "--dir", d, "--group", group, "--topic", "t", "--sql", expr,
                ],
                "",
            );
            let mut bodies: Vec<String> = out
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split('\t').collect();
                    assert!(f[2].starts_with('k'), "the key is printed: {l}");
                    f[3].to_owned()
                })
                .collect();
            bodies.sort();
            bodies
        };
        let blue = sql("g1", "color = 'blue' AND size > 6");
        assert_eq!(blue.len(), 10, "{engine}: {blue:?}");
        assert!(blue.iter().all(|b| b.starts_with("blue-9-")), "{blue:?}");
        let tagged = sql("g2", "TAGS = 'TagA' AND size BETWEEN 2 AND 6");
        assert_eq!(tagged.len(), 10, "{engine}: {tagged:?}");
        assert!(
            tagged.iter().all(|b| b.starts_with("blue-5-")),
            "{tagged:?}"
        );
        assert!(sql("g3", "missing IS NOT NULL").is_empty());
        assert!(
            sql("g2", "TAGS = 'TagA'").is_empty(),
            "g2 committed past all"
        );
    }
}

#[test]
fn bad_group_consume_arguments_are_usage_errors_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    ok(&["produce", "--dir", d, "--topic", "t"], "x\n");
    let cases: &[(&[&str], &[&str])] = &[
        (
            &[
                "consume",
                "--dir",
                d,
                "--group",
                "g",
                "--topic",
                "t",
                "--sql",
                "a > AND b",
            ],
            &["--sql", "column 5"],
        ),
        (
            &[
                "consume", "--dir", d, "--group", "g", "--topic", "t", "--sql", "a = 'x",
            ],
            &["--sql", "column"],
        ),
        (
            &[
                "consume", "--dir", d, "--group", "g", "--topic", "t", "--filter", "A", "--sql",
                "a = 1",
            ],
            &["--filter", "--sql"],
        ),
        (
            &[
                "consume",
                "--dir",
                d,
                "--topic",
                "t",
                "--partition",
                "0",
                "--follow",
            ],
            &["--follow", "--partition"],
        ),
        (
            &[
                "consume",
                "--dir",
                d,
                "--group",
                "g",
                "--topic",
                "t",
                "--follow",
                "--idle-exit",
                "2 minutes",
            ],
            &["--idle-exit", "500ms"],
        ),
        (
            &[
                "consume",
                "--dir",
                d,
                "--group",
                "g",
                "--topic",
                "t",
                "--partition",
                "0",
            ],
            &["--partition", "--group"],
        ),
        (
            &[
                "produce",
                "--dir",
                d,
                "--topic",
                "t",
                "--property",
                "novalue",
            ],
            &["--property", "NAME=VALUE"],
        ),
        (
            &["consume", "--dir", d, "--group", "g", "--topci", "t"],
            &["--topci"],
        ),
    ];
    for (args, expect) in cases {
        let out = duolog(args, "");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        for e in *expect {
            assert!(err.contains(e), "{args:?}: {e}: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
    // Store errors stay exit 1.
    let out = duolog(
        &["consume", "--dir", d, "--group", "g", "--topic", "nope"],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown topic"),
        "{}",
        text(&out.stderr)
    );
    let out = duolog(&["groups", "--dir", "/nonexistent/x"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no duolog store"));
}

/// `--follow` prints what is there, waits for more until nothing new arrived for
/// `--idle-exit`, and exits; what was produced after it exits is what the next run prints.
/// While it runs, it holds the store (a store is single-process): a producer in another
/// process is refused clearly, never silently lost.
#[test]
fn follow_exits_after_the_idle_time_and_resumes_from_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    ok(
        &["produce", "--dir", d, "--topic", "t", "--partitions", "2"],
        "a\nb\nc\n",
    );
    let follow = [
        "consume",
        "--dir",
        d,
        "--group",
        "g",
        "--topic",
        "t",
        "--follow",
        "--idle-exit",
        "300ms",
    ];
    let start = std::time::Instant::now();
    let out = ok(&follow, "");
    let took = start.elapsed();
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        took >= std::time::Duration::from_millis(300) && took < std::time::Duration::from_secs(10),
        "{took:?}"
    );
    // A producer while a follower holds the store.
    let exe = env!("CARGO_BIN_EXE_duolog");
    let child = Command::new(exe)
        .args([
            "consume",
            "--dir",
            d,
            "--group",
            "g",
            "--topic",
            "t",
            "--follow",
            "--idle-exit",
            "3s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let refused = duolog(&["produce", "--dir", d, "--topic", "t"], "during\n");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("locked"),
        "{}",
        text(&refused.stderr)
    );
    let follower = child.wait_with_output().unwrap();
    assert!(follower.status.success());
    assert_eq!(text(&follower.stdout), "", "nothing new");
    // Produced between runs: the next run picks up exactly those.
    ok(&["produce", "--dir", d, "--topic", "t"], "d\ne\n");
    let out = ok(&follow, "");
    let bodies: Vec<&str> = out
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    let mut sorted = bodies.clone();
    sorted.sort();
    assert_eq!(sorted, ["d", "e"], "{out}");
    // --max stops early and commits only what it printed.
    ok(
        &["produce", "--dir", d, "--topic", "t", "--partition", "0"],
        "f\ng\nh\n",
    );
    let one = ok(
        &[
            "consume", "--dir", d, "--group", "g", "--topic", "t", "--max", "1",
        ],
        "",
    );
    assert!(one.ends_with("\tf\n") && one.lines().count() == 1, "{one}");
    let rest = ok(&["consume", "--dir", d, "--group", "g", "--topic", "t"], "");
    assert_eq!(
        rest.lines()
            .map(|l| l.rsplit('\t').next().unwrap())
            .collect::<Vec<_>>(),
        ["g", "h"]
    );
}

#[test]
fn help_for_every_command_and_shell_completions() {
    for cmd in [
        &["produce"][..],
        &["consume"],
        &["topic"],
        &["topic", "create"],
        &["topic", "alter"],
        &["topic", "delete"],
        &["topic", "add-partitions"],
        &["topics"],
        &["groups"],
        &["compact"],
        &["stats"],
        &["verify"],
        &["query"],
        &["offset-for-time"],
        &["reindex"],
        &["dump"],
        &["completions"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = duolog(&args, "");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = text(&out.stdout);
        assert!(
            help.contains(&format!("Usage: duolog {}", cmd.join(" "))),
            "{args:?}: {help}"
        );
    }
    let help = ok(&["consume", "--help"], "");
    for flag in [
        "--group",
        "--filter",
        "--sql",
        "--follow",
        "--idle-exit",
        "--partition",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    let top = ok(&["--help"], "");
    assert!(
        top.contains("groups") && top.contains("completions"),
        "{top}"
    );
    let script = ok(&["completions", "bash"], "");
    assert!(
        script.contains("_duolog()") && script.contains("complete "),
        "{script}"
    );
    assert!(script.contains("--idle-exit") && script.contains("add-partitions"));
    let zsh = ok(&["completions", "zsh"], "");
    assert!(zsh.contains("#compdef duolog"));
    let out = duolog(&["completions", "tcsh"], "");
    assert_eq!(out.status.code(), Some(2));
    // No command at all: the help, as a usage error.
    let out = duolog(&[], "");
    assert_eq!(out.status.code(), Some(2));
}

/// Message trace as a user tries it: `produce --trace`, `consume --group --trace`, then
/// `trace --id` and `trace --key` print the produced and consumed events; bad ids are usage
/// errors naming the flag; a store without trace says so.
#[test]
fn trace_shows_what_produce_and_consume_did() {
    for engine in ["commitlog", "segmented"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let d = d.to_str().unwrap();
        let args = [
            "produce",
            "--dir",
            d,
            "--engine",
            engine,
            "--topic",
            "or-ders",
            "--partitions",
            "2",
            "--keyed",
            "--tags",
            "TagA",
            "--trace",
        ];
        let produced = ok(&args, "k1\thello\nk2\tworld\nk1\tagain\n");
        let lines: Vec<&str> = produced.lines().collect();
        assert_eq!(lines.len(), 3);
        // k1's messages: the first and the third line, same partition (by key).
        let (p, first) = lines[0].split_once(' ').unwrap();
        let id = format!("or-ders-{p}-{first}");
        let out = ok(&["trace", "--dir", d, "--id", &id], "");
        let events: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(events.len(), 1, "{out}");
        let e = &events[0];
        assert_eq!(
            e[1..],
            [
                "Pub",
                id.as_str(),
                "-",
                "k1",
                "TagA",
                "5",
                e[7],
                "true",
                "-"
            ]
        );
        assert!(e[0].parse::<i64>().unwrap() > 0 && e[7].parse::<u64>().is_ok());

        let consumed = ok(
            &[
                "consume", "--dir", d, "--topic", "or-ders", "--group", "g", "--trace",
            ],
            "",
        );
        assert_eq!(consumed.lines().count(), 3);
        let out = ok(&["trace", "--dir", d, "--id", &id], "");
        let kinds: Vec<&str> = out.lines().map(|l| l.split('\t').nth(1).unwrap()).collect();
        assert_eq!(kinds, ["Pub", "SubBefore"], "{out}");
        let sub: Vec<&str> = out.lines().nth(1).unwrap().split('\t').collect();
        assert_eq!(
            sub[1..],
            [
                "SubBefore",
                id.as_str(),
                "g",
                "k1",
                "TagA",
                "-",
                "-",
                "-",
                "0"
            ]
        );
        let by_key = ok(&["trace", "--dir", d, "--key", "k1"], "");
        assert_eq!(by_key.lines().count(), 4, "{by_key}");
        assert_eq!(ok(&["trace", "--dir", d, "--key", "nobody"], ""), "");
        // Runs without --trace add nothing.
        ok(
            &["produce", "--dir", d, "--topic", "or-ders", "--keyed"],
            "k1\tuntraced\n",
        );
        assert_eq!(
            ok(&["trace", "--dir", d, "--key", "k1"], "")
                .lines()
                .count(),
            4
        );

        let out = duolog(&["trace", "--dir", d, "--id", "no-id"], "");
        assert_eq!(out.status.code(), Some(2));
        assert!(text(&out.stderr).contains("--id"), "{}", text(&out.stderr));
        let out = duolog(&["trace", "--dir", d], "");
        assert_eq!(out.status.code(), Some(2));
        let out = duolog(&["trace", "--dir", d, "--id", &id, "--key", "k1"], "");
        assert_eq!(out.status.code(), Some(2));
        let out = duolog(
            &[
                "consume",
                "--dir",
                d,
                "--topic",
                "or-ders",
                "--partition",
                "0",
                "--trace",
            ],
            "",
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(ok(&["trace", "--help"], "").contains("Usage: duolog trace"));
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    ok(&["produce", "--dir", d, "--topic", "t"], "x\n");
    let out = duolog(&["trace", "--dir", d, "--key", "x"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no message trace"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn produce_with_a_delay_is_consumed_once_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    let lines: String = (0..1000).map(|i| format!("line-{i}\n")).collect();
    let produced = std::time::Instant::now();
    let out = duolog(
        &[
            "produce",
            "--dir",
            d,
            "--topic",
            "t",
            "--partitions",
            "2",
            "--delay",
            "3s",
        ],
        &lines,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let handles = text(&out.stdout);
    assert_eq!(handles.lines().count(), 1000);
    assert!(handles.lines().all(|l| l.contains('@')), "{handles}");
    let out = duolog(&["delayed", "--dir", d], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with("total\t1000\n"),
        "{}",
        text(&out.stdout)
    );
    // Nothing is in the topic yet.
    let out = duolog(
        &["consume", "--dir", d, "--topic", "t", "--partition", "0"],
        "",
    );
    assert_eq!(text(&out.stdout), "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_duolog"))
        .args([
            "consume",
            "--dir",
            d,
            "--topic",
            "t",
            "--group",
            "g",
            "--follow",
            "--idle-exit",
            "8s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line_at = None;
    let mut got = Vec::new();
    let stdout = child.stdout.take().unwrap();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        first_line_at.get_or_insert_with(|| produced.elapsed());
        got.push(line.unwrap().rsplit('\t').next().unwrap().to_owned());
    }
    assert!(child.wait().unwrap().success());
    let first = first_line_at.expect("delivered");
    assert!(
        first >= std::time::Duration::from_millis(2_900),
        "early: {first:?}"
    );
    got.sort();
    let mut want: Vec<String> = (0..1000).map(|i| format!("line-{i}")).collect();
    want.sort();
    assert_eq!(got, want, "each line once");
    let out = duolog(&["delayed", "--dir", d], "");
    assert_eq!(text(&out.stdout), "total\t0\n");
}

#[test]
fn produce_deliver_at_a_past_time_is_delivered_at_once_and_bad_delays_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    let out = duolog(
        &["produce", "--dir", d, "--topic", "t", "--deliver-at", "0"],
        "past\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0 0@0\n");
    let out = duolog(
        &[
            "consume",
            "--dir",
            d,
            "--topic",
            "t",
            "--group",
            "g",
            "--follow",
            "--idle-exit",
            "2s",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0\t0\t\tpast\n");
    for bad in [
        &["--delay", "41d"][..],
        &["--delay", "soon"][..],
        &["--delay", "1s", "--deliver-at", "5"][..],
    ] {
        let mut args = vec!["produce", "--dir", d, "--topic", "t"];
        args.extend_from_slice(bad);
        let out = duolog(&args, "x\n");
        assert!(!out.status.success(), "{bad:?}");
        let err = text(&out.stderr);
        assert!(err.contains("error:"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `delayed` only reads: it places nothing in the timer log, delivers nothing (not even a
/// message already due) and writes no progress record; it counts what is scheduled, placed or
/// not, under its due time. (It used to open the delay layer, which placed every scheduled
/// record: 2 timer-log entries here.)
#[test]
fn delayed_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    for args in [["--deliver-at", "0"], ["--delay", "1h"]] {
        let mut a = vec!["produce", "--dir", d, "--topic", "t"];
        a.extend(args);
        let out = duolog(&a, "x\n");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    for _ in 0..2 {
        let out = duolog(&["delayed", "--dir", d], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let shown = text(&out.stdout);
        assert!(shown.starts_with("1970-01-01T00:00:00Z\t1\n"), "{shown}");
        assert!(shown.ends_with("total\t2\n"), "{shown}");
    }
    for topic in ["__delay_timer_log", "t"] {
        let out = duolog(
            &["consume", "--dir", d, "--topic", topic, "--partition", "0"],
            "",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "", "{topic}: written by `delayed`");
    }
}

/// Segmented partitions have no segment before their first record: `topics`, `verify` and
/// `stats` work on a topic none of whose partitions was written, before and after a record.
#[test]
fn segmented_partitions_never_written_list_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s");
    let d = d.to_str().unwrap();
    ok(
        &[
            "topic",
            "create",
            "--dir",
            d,
            "--engine",
            "segmented",
            "--topic",
            "lazy",
            "--partitions",
            "4",
        ],
        "",
    );
    assert_eq!(ok(&["topics", "--dir", d], ""), "lazy\tpartitions=4\n");
    let out = duolog(&["verify", "--dir", d], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    ok(&["stats", "--dir", d], "");
    ok(
        &["produce", "--dir", d, "--topic", "lazy", "--sync"],
        "one\n",
    );
    let out = duolog(&["verify", "--dir", d], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut lines = 0;
    for p in ["0", "1", "2", "3"] {
        let out = duolog(
            &["consume", "--dir", d, "--topic", "lazy", "--partition", p],
            "",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        lines += text(&out.stdout).lines().count();
    }
    assert_eq!(lines, 1);
}
