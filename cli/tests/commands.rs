//! The CLI as a user meets it: round trip through produce/consume, clear one-line errors with a
//! non-zero exit, and `verify` failing loudly on a damaged store.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn duolog(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_duolog"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may exit before reading its input (a usage error): ignore a broken pipe.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

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
