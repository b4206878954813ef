//! The user check for transactions: `duolog produce --transactional --txn-size 10`
//! over 4 partitions, killed with SIGKILL at random moments, 20 times per engine. After each
//! kill `duolog consume --isolation read-committed` shows every transaction wholly or not at
//! all, every acknowledged (printed) line, and no line twice. `DUOLOG_KILL_ITERATIONS`
//! changes the number of kills.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const TXN_SIZE: u64 = 10;
const PARTITIONS: u32 = 4;

fn pseudo_random(seed: u64) -> u64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[test]
fn transactions_are_all_or_nothing_after_sigkill_commitlog() {
    kill_and_check("commitlog");
}

#[test]
fn transactions_are_all_or_nothing_after_sigkill_segmented() {
    kill_and_check("segmented");
}

/// Line `n` (numbered across the whole test) is `k<n%7>\tline-<n>`: keyed, so the key
/// partitioner spreads every transaction over the partitions.
fn line(n: u64) -> String {
    format!("k{}\tline-{n:09}", n % 7)
}

fn kill_and_check(engine: &str) {
    let iterations: usize = std::env::var("DUOLOG_KILL_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let exe = env!("CARGO_BIN_EXE_duolog");
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let d = store_dir.to_str().unwrap().to_owned();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // Every acknowledged line number.
    let mut acked: HashSet<u64> = HashSet::new();
    let mut next_line = 0u64;
    let mut kills_mid_transaction = 0;
    for iteration in 0..iterations {
        let mut child = Command::new(exe)
            .args([
                "produce",
                "--dir",
                &d,
                "--engine",
                engine,
                "--topic",
                "lines",
                "--partitions",
                &PARTITIONS.to_string(),
                "--keyed",
                "--transactional",
                "--txn-size",
                &TXN_SIZE.to_string(),
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
                if n.is_multiple_of(16) {
                    std::thread::sleep(Duration::from_micros(300));
                }
            }
        });
        let delay = Duration::from_millis(150 + pseudo_random(seed + iteration as u64) % 600);
        let pid = child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        });
        let mut acks = 0u64;
        for l in BufReader::new(child.stdout.take().unwrap()).lines() {
            let Ok(l) = l else { break };
            let (p, o) = l.split_once(' ').unwrap();
            p.parse::<u32>().unwrap();
            o.parse::<u64>().unwrap();
            acks += 1;
        }
        killer.join().unwrap();
        let status = child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(!status.success(), "the producer was killed");
        assert_eq!(
            acks % TXN_SIZE,
            0,
            "lines are acknowledged a whole transaction at a time"
        );
        acked.extend(first..first + acks);
        // Line numbers of the next process start on a fresh transaction boundary.
        next_line = (first + acks + 1_000_000).next_multiple_of(TXN_SIZE);

        // What read-committed consumers see, per partition (opening the store as a consumer
        // also lets the transaction coordinator abort what the killed producer left open).
        let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
        for p in 0..PARTITIONS {
            let out = Command::new(exe)
                .args([
                    "consume",
                    "--dir",
                    &d,
                    "--topic",
                    "lines",
                    "--partition",
                    &p.to_string(),
                    "--isolation",
                    "read-committed",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "consume: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for l in String::from_utf8(out.stdout).unwrap().lines() {
                let body = l.rsplit('\t').next().unwrap();
                let n: u64 = body.strip_prefix("line-").unwrap().parse().unwrap();
                *seen.entry(n).or_default() += 1;
            }
        }
        if seen.len() as u64 > acked.len() as u64 {
            kills_mid_transaction += 1;
        }
        for (n, count) in &seen {
            assert_eq!(*count, 1, "kill {iteration}: line {n} seen {count} times");
        }
        for n in &acked {
            assert!(
                seen.contains_key(n),
                "kill {iteration}: acknowledged line {n} missing"
            );
        }
        // Whole transactions: every transaction (ten consecutive line numbers from a multiple
        // of ten) is all there or not at all.
        let mut per_txn: BTreeMap<u64, u64> = BTreeMap::new();
        for n in seen.keys() {
            *per_txn.entry(n / TXN_SIZE).or_default() += 1;
        }
        for (txn, count) in per_txn {
            assert_eq!(
                count, TXN_SIZE,
                "kill {iteration}: transaction {txn} is torn"
            );
        }
        eprintln!(
            "{engine}: kill {iteration}: {} acknowledged, {} visible",
            acked.len(),
            seen.len()
        );
    }
    assert!(!acked.is_empty(), "some transactions were acknowledged");
    eprintln!(
        "{engine}: {kills_mid_transaction} kills left a committed, unacknowledged transaction"
    );
}
