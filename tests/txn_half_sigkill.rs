//! Half messages across SIGKILL: a child process (this test binary, re-run as a worker) sends
//! half messages and commits them, printing each id once `end` returned; it is killed at a
//! random moment, several times over one store. After a reopen (which finishes interrupted
//! commits) and a check-back that commits whatever is left, every message sent is in its real
//! topic exactly once, and every acknowledged commit is there.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::read_all;
use duolog::delay::ManualClock;
use duolog::txn::{HalfConfig, HalfMessages, LocalTransactionState};
use duolog::{EngineKind, LogStore, Message, Record, StoreOptions, TopicConfig};

const WORKER_ENV: &str = "DUOLOG_TXH_WORKER";

fn open(dir: &Path, engine: EngineKind) -> Arc<dyn LogStore> {
    let opts = StoreOptions {
        engine: Some(engine),
        ..StoreOptions::default()
    };
    Arc::from(duolog::open(dir, opts).unwrap())
}

fn commit_all(_: &Record) -> LocalTransactionState {
    LocalTransactionState::Commit
}

/// The child: sends and commits `<run>-<i>` until killed, printing `<i>` after each commit.
#[test]
fn worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let (engine, rest) = spec.split_once(':').unwrap();
    let (run, dir) = rest.split_once(':').unwrap();
    let store = open(Path::new(dir), EngineKind::from_name(engine).unwrap());
    if store.describe_topic("t").is_err() {
        store
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
    }
    let config = HalfConfig {
        background: false,
        ..HalfConfig::default()
    };
    let txn = HalfMessages::open(Arc::clone(&store), config, Arc::new(commit_all)).unwrap();
    let stdout = std::io::stdout();
    for i in 0u64.. {
        let id = txn
            .send_half("t", (i % 2) as u32, Message::new(format!("{run}-{i}")))
            .unwrap();
        txn.end(id, LocalTransactionState::Commit).unwrap();
        let mut out = stdout.lock();
        writeln!(out, "{i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn commits_survive_sigkill_exactly_once_commitlog() {
    kill_and_check(EngineKind::CommitLog);
}

#[test]
fn commits_survive_sigkill_exactly_once_segmented() {
    kill_and_check(EngineKind::Segmented);
}

fn kill_and_check(engine: EngineKind) {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut acked: Vec<String> = Vec::new();
    let runs = 4;
    for run in 0..runs {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "worker", "--nocapture", "--test-threads", "1"])
            .env(
                WORKER_ENV,
                format!("{engine}:{run}:{}", store_dir.to_str().unwrap()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(i) = line.trim().parse::<u64>() {
                    got.push(i);
                }
            }
            got
        });
        // Let it commit for a while (it must have started), then kill it mid-stream.
        let wait = 300 + (seed.wrapping_mul(run + 7) % 700);
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let got = reader.join().unwrap();
        acked.extend(got.iter().map(|i| format!("{run}-{i}")));
    }
    assert!(!acked.is_empty(), "the worker never committed anything");
    let store = open(&store_dir, engine);
    // Far in the future: every half message left undecided is old enough to be checked, and
    // the checker commits it.
    let clock = Arc::new(ManualClock::new(i64::MAX / 4));
    let config = HalfConfig {
        background: false,
        clock,
        ..HalfConfig::default()
    };
    let txn = HalfMessages::open(Arc::clone(&store), config, Arc::new(commit_all)).unwrap();
    txn.check_now().unwrap();
    assert!(txn.undecided(10).unwrap().is_empty());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for p in 0..2 {
        for r in read_all(&*store, "t", p) {
            *seen
                .entry(String::from_utf8(r.body().to_vec()).unwrap())
                .or_default() += 1;
        }
    }
    for a in &acked {
        assert_eq!(seen.get(a), Some(&1), "{engine}: acknowledged {a}");
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(dups.is_empty(), "{engine}: duplicates {dups:?}");
    eprintln!(
        "{engine}: {} acknowledged, {} committed in all",
        acked.len(),
        seen.len()
    );
    txn.close().unwrap();
    store.close().unwrap();
}
