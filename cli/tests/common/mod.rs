//! The harness the SIGKILL tests share: seeds, the number of kills, a child fed lines until it
//! dies, a timed `kill -9`, and the complete lines a killed child printed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The CLI under test.
pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_duolog")
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
