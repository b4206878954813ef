//! A new user's crash test: `duolog produce --sync` fed a long stream and killed with SIGKILL at
//! a random moment; the store reopens and every acknowledged line is there, in order, intact.
//! `DUOLOG_KILL_ITERATIONS` raises the number of kills (default 3).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use duolog::{ReadLimits, StoreOptions};

fn pseudo_random(seed: u64) -> u64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[test]
fn acknowledged_lines_survive_sigkill_commitlog() {
    kill_and_check("commitlog");
}

#[test]
fn acknowledged_lines_survive_sigkill_segmented() {
    kill_and_check("segmented");
}

fn kill_and_check(engine: &str) {
    let iterations: usize = std::env::var("DUOLOG_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let exe = env!("CARGO_BIN_EXE_duolog");
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut acked_total: Vec<(u32, u64, String)> = Vec::new();
    let mut next_line = 0u64;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for iteration in 0..iterations {
        // A fresh store every few kills keeps soak runs from re-verifying an ever larger store.
        if iteration > 0 && iteration % 10 == 0 {
            std::fs::remove_dir_all(&store_dir).unwrap();
            acked_total.clear();
        }
        let mut child = Command::new(exe)
            .args([
                "produce",
                "--dir",
                store_dir.to_str().unwrap(),
                "--engine",
                engine,
                "--topic",
                "lines",
                "--partitions",
                "3",
                "--sync",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let first = next_line;
        let stop2 = Arc::clone(&stop);
        // Writes numbered lines until the child dies (broken pipe) or we stop.
        let writer = std::thread::spawn(move || {
            let mut n = first;
            while !stop2.load(Ordering::Relaxed) {
                let line = format!("line-{n:09}-{}\n", "x".repeat((n % 50) as usize));
                if stdin.write_all(line.as_bytes()).is_err() {
                    break;
                }
                n += 1;
                if n.is_multiple_of(64) {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        let stdout = child.stdout.take().unwrap();
        let delay = Duration::from_millis(100 + pseudo_random(seed + iteration as u64) % 400);
        let killer_pid = child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = Command::new("kill")
                .args(["-9", &killer_pid.to_string()])
                .status();
        });
        let mut acks = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let (p, o) = line.split_once(' ').unwrap();
            acks.push((p.parse::<u32>().unwrap(), o.parse::<u64>().unwrap()));
        }
        killer.join().unwrap();
        let status = child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(!status.success(), "the producer was killed");
        // Acks come in input order: ack k is line first + k.
        for (k, (p, o)) in acks.iter().enumerate() {
            let n = first + k as u64;
            acked_total.push((
                *p,
                *o,
                format!("line-{n:09}-{}", "x".repeat((n % 50) as usize)),
            ));
        }
        next_line = first + acks.len() as u64 + 1_000_000;

        // Reopen (crash recovery); read every partition once, densely, then check every
        // acknowledged line against what is there.
        let store = duolog::open(&store_dir, StoreOptions::default()).unwrap();
        let mut stored: Vec<Vec<String>> = Vec::new();
        for p in 0..3 {
            let b = store.bounds("lines", p).unwrap();
            let mut lines = Vec::with_capacity((b.end - b.start) as usize);
            let mut at = b.start;
            while at < b.end {
                let recs = store
                    .read("lines", p, at, ReadLimits::messages(1000))
                    .unwrap();
                for (i, r) in recs.iter().enumerate() {
                    assert_eq!(r.offset(), at + i as u64, "offsets stay dense");
                    lines.push(String::from_utf8(r.body().to_vec()).unwrap());
                }
                at += recs.len() as u64;
            }
            stored.push(lines);
        }
        for (p, o, body) in &acked_total {
            let got = stored[*p as usize].get(*o as usize);
            assert_eq!(
                got,
                Some(body),
                "acknowledged {p}/{o} after kill {iteration}"
            );
        }
        assert!(store.verify().unwrap().is_ok());
        store.close().unwrap();
        eprintln!(
            "{engine}: kill {iteration}: {} acknowledged so far, all present",
            acked_total.len()
        );
    }
    assert!(!acked_total.is_empty());
}
