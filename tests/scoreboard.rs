//! `examples/scoreboard` end to end under `--quick`: it prints every row and column of issue
//! 16's table (and the machine-limit and RSS tables), cleans up its directory, and refuses a
//! disk without room. Never checks a speed.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Builds the example with the profile this test was built with (a no-op when it is up to
/// date; `cargo test --test scoreboard` alone does not build examples) and returns its path.
fn example() -> PathBuf {
    let me = std::env::current_exe().expect("test executable");
    // <target>/<profile>/deps/scoreboard-<hash>
    let profile_dir = me.parent().and_then(|d| d.parent()).expect("profile dir");
    let target = profile_dir.parent().expect("target dir");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile name");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--example",
            "scoreboard",
            "--target-dir",
        ])
        .arg(target);
    match profile {
        "debug" => {}
        "release" => {
            cargo.arg("--release");
        }
        other => {
            cargo.args(["--profile", other]);
        }
    }
    let status = cargo.status().expect("run cargo");
    assert!(status.success(), "building the scoreboard example failed");
    profile_dir.join("examples").join("scoreboard")
}

fn run(args: &[&str]) -> Output {
    Command::new(example())
        .args(args)
        .output()
        .expect("run the scoreboard")
}

/// The markdown rows whose first cell starts with `label`.
fn rows<'a>(out: &'a str, label: &str) -> Vec<Vec<&'a str>> {
    out.lines()
        .filter(|l| l.starts_with(&format!("| {label}")))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect()
}

#[test]
fn quick_run_prints_every_row_and_column_and_removes_its_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let out = run(&["--dir", dir.to_str().expect("utf-8 path"), "--quick"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scoreboard failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Command: `cargo run --release --example scoreboard --"));
    assert!(stdout.contains("Date: 20"));

    let header = rows(&stdout, "workload");
    assert_eq!(header.len(), 1, "{stdout}");
    assert_eq!(
        header[0],
        [
            "workload",
            "raw framed `write()`",
            "`commitlog` crate",
            "CommitLog engine",
            "segmented engine",
            "CommitLog ÷ raw",
            "segmented ÷ raw",
            "segmented ÷ crate",
        ]
    );
    // Every row of issue 16's table, with the group-commit rows the contract adds; the count is
    // how many rows start so (three fan-out partition counts).
    let expected = [
        ("append 20,000 + final sync", 1),
        ("append 5,000 × 1 KiB + sync", 1),
        ("read 20,000 back, fetches of ≤ 8,192 / 1 MiB", 1),
        ("fan-out: 5,000 round-robin over", 3),
        ("fan-out ratio, 64 ÷ 1 partition", 1),
        ("partition creation, 64 partitions", 1),
        ("disk allocated after creating 64 partitions", 1),
        (
            "fan-out over 64 partitions with their creation inside the timed loop",
            1,
        ),
        ("durable append, 1 thread (msg/s)", 1),
        ("durable append, 1 thread (p50)", 1),
        ("group commit, 1 thread over 16 partitions", 1),
        ("group commit, 64 threads over 16 partitions", 1),
        ("group commit ratio, 64 ÷ 1 thread", 1),
        ("peak RSS, append 20,000 / fan-out 64 partitions", 1),
    ];
    for (label, n) in expected {
        let found = rows(&stdout, label);
        assert_eq!(found.len(), n, "row {label:?} in\n{stdout}");
        for r in found {
            assert_eq!(r.len(), 8, "row {label:?} has every column: {r:?}");
            // The four figure columns: measured everywhere except group commit on the
            // raw and crate peers, which have no group commit.
            let measured = if label.starts_with("group commit") {
                &r[3..5]
            } else {
                &r[1..5]
            };
            for cell in measured {
                assert!(
                    !cell.is_empty() && *cell != "—" && !cell.contains("NaN"),
                    "row {label:?} has a figure in every column: {r:?}"
                );
            }
        }
    }
    // Ratio columns are filled where the targets use them.
    let append = &rows(&stdout, "append 20,000 + final sync")[0];
    for cell in &append[5..8] {
        assert!(cell.ends_with('×'), "ratio column: {append:?}");
    }

    for limit in [
        "sequential write",
        "the same, until its fdatasync returns",
        "4 KiB write + fdatasync, p50",
        "memcpy",
        "sequential read of a page-cached file",
    ] {
        let r = rows(&stdout, limit);
        assert_eq!(r.len(), 1, "machine limit {limit:?} in\n{stdout}");
        assert!(!r[0][1].contains("NaN"), "{limit:?} measured: {:?}", r[0]);
    }
    for cell in [
        "append100",
        "append1k",
        "read",
        "fanout-1",
        "fanout-16",
        "fanout-64",
        "create",
        "create-fanout",
        "durable",
        "group-1",
        "group-64",
    ] {
        assert_eq!(
            rows(&stdout, &format!("{cell} |")).len(),
            1,
            "RSS of cell {cell} in\n{stdout}"
        );
    }
    assert!(!dir.exists(), "the run removes its directory");
}

#[test]
fn refuses_to_run_without_enough_free_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    let out = run(&[
        "--dir",
        dir.to_str().expect("utf-8 path"),
        "--require-free-gb",
        "1000000000",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to run") && stderr.contains("needs at least 1000000000 GB"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no table without a run");
}

#[test]
fn rejects_an_unknown_argument_with_its_usage() {
    let out = run(&["--dir", "/nonexistent-scoreboard", "--fast"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown argument \"--fast\"") && stderr.contains("usage: scoreboard"),
        "{stderr}"
    );
}
