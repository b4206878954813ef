//! The harness the CLI tests share: one run of the CLI with its input, a store directory, and
//! for the SIGKILL tests seeds, the number of kills, a child fed lines until it dies, a timed
//! `kill -9`, and the complete lines a killed child printed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The CLI under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_duolog")
}

/// Runs the CLI with `args`, feeding it `stdin`, and waits for it to exit.
pub fn duolog(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(exe())
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

/// A command's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh temporary directory (removed when dropped) and the path of a store inside it that
/// does not exist yet.
pub fn store_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("s").to_str().unwrap().to_owned();
    (dir, d)
}

/// xorshift: kill moments and keys that differ per seed but need no dependency.
pub fn pseudo_random(seed: u64) -> u64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A seed from the clock, so every run kills at other moments.
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// `DUOLOG_KILL_ITERATIONS` (soak runs raise it), else `default`.
pub fn kill_iterations(default: usize) -> usize {
    std::env::var("DUOLOG_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `duolog <args>` with stdin and stdout piped, stderr dropped.
pub fn spawn_piped(args: &[&str]) -> Child {
    Command::new(exe())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Sends `kill -9` to `pid` after `delay`, on its own thread.
pub fn kill_after(pid: u32, delay: Duration) -> JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    })
}

/// Writes `line(n)` and a newline for n = first, first + 1, … to `stdin` until the child stops
/// reading (a broken pipe) or the returned flag is set, pausing `pause` every `every` lines so
/// the child is killed mid-stream rather than after reading it all.
pub fn feed(
    mut stdin: ChildStdin,
    first: u64,
    line: impl Fn(u64) -> String + Send + 'static,
    every: u64,
    pause: Duration,
) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let writer = std::thread::spawn(move || {
        let mut n = first;
        while !stop2.load(Ordering::Relaxed) {
            if stdin
                .write_all(format!("{}\n", line(n)).as_bytes())
                .is_err()
            {
                break;
            }
            n += 1;
            if n.is_multiple_of(every) {
                std::thread::sleep(pause);
            }
        }
    });
    (stop, writer)
}

/// The lines a (possibly killed) child printed, without a torn last line.
pub fn complete_lines(stdout: impl Read) -> Vec<String> {
    let mut reader = BufReader::new(stdout);
    let mut lines = Vec::new();
    loop {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) if buf.ends_with(b"\n") => {
                buf.pop();
                lines.push(String::from_utf8(buf).unwrap());
            }
            Ok(_) => break,
        }
    }
    lines
}

/// Acknowledgements `partition offset` as a producer prints them.
pub fn parse_acks(lines: &[String]) -> Vec<(u32, u64)> {
    lines
        .iter()
        .map(|l| {
            let (p, o) = l.split_once(' ').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect()
}

/// Runs `duolog <args>` to the end on `input`, returns the complete lines it printed, and
/// fails the test if it failed.
pub fn run_to_end(args: &[&str], input: String) -> Vec<String> {
    let mut child = spawn_piped(args);
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let lines = complete_lines(child.stdout.take().unwrap());
    feeder.join().unwrap();
    assert!(child.wait().unwrap().success(), "duolog {args:?} failed");
    lines
}

/// `duolog consume --group g --follow <consume_flags>` killed with SIGKILL mid-stream, several times, then
/// run to the end: every produced message is printed at least once across the runs, each
/// run prints every partition densely from where the group's commit was, and the committed
/// offsets after a kill never pass what was printed (commits follow the printing).
///
/// The producer gets `produce_flags`; a `slow_reader` sleeps a millisecond every 20 lines, so
/// a consumer that commits on a timer commits between kills.
pub fn kill_group_consumer_and_check(
    engine: &str,
    produce_flags: &[&str],
    consume_flags: &[&str],
    slow_reader: bool,
) {
    let kills = kill_iterations(3);
    let exe = exe();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("store");
    let d = d.to_str().unwrap();
    let total = 60_000u64;
    let input: String = (0..total).map(|n| format!("m-{n:07}\n")).collect();
    let mut produce = vec![
        "produce",
        "--dir",
        d,
        "--engine",
        engine,
        "--topic",
        "t",
        "--partitions",
        "4",
    ];
    produce.extend_from_slice(produce_flags);
    let acks = run_to_end(&produce, input);
    assert_eq!(acks.len() as u64, total);
    // Where each produced line went.
    let mut produced: std::collections::HashMap<(u32, u64), String> = Default::default();
    for (n, ack) in acks.iter().enumerate() {
        let (p, o) = ack.split_once(' ').unwrap();
        produced.insert(
            (p.parse().unwrap(), o.parse().unwrap()),
            format!("m-{n:07}"),
        );
    }
    let seed = seed();
    let mut printed: std::collections::HashSet<(u32, u64)> = Default::default();
    // Per partition: the offset after the highest printed so far.
    let mut next_printed = [0u64; 4];
    let mut committed = [0u64; 4];
    for run in 0..=kills {
        let killing = run < kills;
        let mut child = Command::new(exe)
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
                "500ms",
            ])
            .args(consume_flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Kill after a random number of lines has come through the pipe (the child is then
        // blocked writing, or between printing and committing, or inside a commit).
        let kill_after = 1 + pseudo_random(seed + run as u64) % 12_000;
        let pid = child.id();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut lines = Vec::new();
            let mut killed = false;
            loop {
                let mut buf = Vec::new();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if buf.ends_with(b"\n") => {
                        buf.pop();
                        lines.push(String::from_utf8(buf).unwrap());
                    }
                    Ok(_) => break,
                }
                // A slow reader: the child blocks in its print, so its periodic commits
                // (every 200 ms) land between kills.
                if slow_reader && lines.len() % 20 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                if killing && !killed && lines.len() as u64 >= kill_after {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                    killed = true;
                }
            }
            lines
        });
        let lines = reader.join().unwrap();
        let status = child.wait().unwrap();
        if !killing {
            assert!(status.success(), "{engine}: the last run ends by itself");
        }
        // Each run starts every partition at the group's commit and prints densely.
        let mut first_in_run: [Option<u64>; 4] = [None; 4];
        let mut last_in_run: [Option<u64>; 4] = [None; 4];
        for l in &lines {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "{engine}: {l}");
            let (p, o): (u32, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
            assert_eq!(
                produced.get(&(p, o)),
                Some(&f[3].to_owned()),
                "{engine}: {l}"
            );
            let pi = p as usize;
            match last_in_run[pi] {
                None => {
                    assert_eq!(
                        o, committed[pi],
                        "{engine}: run {run} starts {p} at the commit"
                    );
                    first_in_run[pi] = Some(o);
                }
                Some(prev) => assert_eq!(o, prev + 1, "{engine}: run {run}: {p} densely"),
            }
            last_in_run[pi] = Some(o);
            next_printed[pi] = next_printed[pi].max(o + 1);
            printed.insert((p, o));
        }
        // The commit never passes what was printed.
        let groups = Command::new(exe)
            .args(["groups", "--dir", d, "--group", "g"])
            .output()
            .unwrap();
        assert!(groups.status.success());
        for row in String::from_utf8_lossy(&groups.stdout).lines() {
            let f: Vec<&str> = row.split('\t').collect();
            let p: usize = f[2].parse().unwrap();
            let c: u64 = f[3].parse().unwrap();
            assert!(c >= committed[p], "{engine}: commits only move forward");
            assert!(
                c <= next_printed[p],
                "{engine}: run {run}: partition {p} committed {c} past what was printed ({})",
                next_printed[p]
            );
            committed[p] = c;
        }
        eprintln!(
            "{engine}: run {run}: {} lines, killed: {killing}, committed {committed:?}",
            lines.len()
        );
    }
    let missing = produced.keys().filter(|k| !printed.contains(k)).count();
    assert_eq!(
        missing, 0,
        "{engine}: every produced message printed at least once"
    );
    let ends: u64 = committed.iter().sum();
    assert_eq!(ends, total, "{engine}: the last run committed everything");
}
