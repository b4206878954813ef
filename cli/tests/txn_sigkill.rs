//! The user check for transactions: `duolog produce --transactional --txn-size 10`
//! over 4 partitions, killed with SIGKILL at random moments, 20 times per engine. After each
//! kill `duolog consume --isolation read-committed` shows every transaction wholly or not at
//! all, every acknowledged (printed) line, and no line twice. `DUOLOG_KILL_ITERATIONS`
//! changes the number of kills.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{
    complete_lines, exe, feed, kill_after, kill_iterations, parse_acks, pseudo_random, seed,
    spawn_piped,
};

const TXN_SIZE: u64 = 10;
const PARTITIONS: u32 = 4;

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
    let iterations = kill_iterations(20);
    let exe = exe();
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let d = store_dir.to_str().unwrap().to_owned();
    let seed = seed();
    // Every acknowledged line number.
    let mut acked: HashSet<u64> = HashSet::new();
    let mut next_line = 0u64;
    let mut kills_mid_transaction = 0;
    for iteration in 0..iterations {
        let mut child = spawn_piped(&[
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
        ]);
        let first = next_line;
        let (stop, writer) = feed(
            child.stdin.take().unwrap(),
            first,
            line,
            16,
            Duration::from_micros(300),
        );
        let delay = Duration::from_millis(150 + pseudo_random(seed + iteration as u64) % 600);
        let killer = kill_after(child.id(), delay);
        let acks = parse_acks(&complete_lines(child.stdout.take().unwrap())).len() as u64;
        killer.join().unwrap();
        let status = child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
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

#[test]
fn copy_is_exactly_once_after_sigkill_commitlog() {
    kill_copy_and_check("commitlog");
}

#[test]
fn copy_is_exactly_once_after_sigkill_segmented() {
    kill_copy_and_check("segmented");
}

/// Bodies of a partition that read-committed readers see, from its start.
fn committed_bodies(store: &dyn duolog::LogStore, topic: &str, p: u32) -> Vec<String> {
    let b = store.bounds(topic, p).unwrap();
    let limits =
        duolog::ReadLimits::messages(1000).with_isolation(duolog::IsolationLevel::ReadCommitted);
    let mut at = b.start;
    let mut out = Vec::new();
    while at < b.last_stable {
        let f = store.fetch(topic, p, at, limits).unwrap();
        assert!(f.next_offset > at);
        out.extend(
            f.records
                .iter()
                .map(|r| String::from_utf8(r.body().to_vec()).unwrap()),
        );
        at = f.next_offset;
    }
    out
}

/// The exactly-once loop as a process (`duolog copy`), killed with SIGKILL at random moments
/// and run again until it finishes: after every kill, `out` (read committed) holds exactly the
/// inputs below the group's committed offsets, once each and in order; at the end, all of them.
fn kill_copy_and_check(engine: &str) {
    let exe = exe();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("store");
    let d = d.to_str().unwrap().to_owned();
    let seed = seed();
    // Enough that a copy takes longer than the kill delay (a batched commit copies 4,000 in
    // well under 100 ms).
    let inputs = 40_000u64;
    let mut child = Command::new(exe)
        .args([
            "produce",
            "--dir",
            &d,
            "--engine",
            engine,
            "--topic",
            "in",
            "--partitions",
            "4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for n in 0..inputs {
            writeln!(stdin, "in-{n:06}").unwrap();
        }
    }
    assert!(child.wait().unwrap().success());
    let check = |ctx: &str| -> u64 {
        let store: Arc<dyn duolog::LogStore> =
            Arc::from(duolog::open(&d, duolog::StoreOptions::default()).unwrap());
        let groups = duolog::consumer::GroupCoordinator::new(Arc::clone(&store)).unwrap();
        let txns = duolog::txn::TransactionCoordinator::open(
            Arc::clone(&store),
            duolog::txn::TxnCoordinatorConfig {
                groups: Some(groups.clone()),
                ..duolog::txn::TxnCoordinatorConfig::default()
            },
        )
        .unwrap();
        let table = groups.committed_offsets("copier");
        let mut done = 0;
        for p in 0..PARTITIONS {
            let committed = table
                .get("in")
                .and_then(|t| t.get(&p))
                .copied()
                .unwrap_or(0);
            let input = committed_bodies(store.as_ref(), "in", p);
            let output = if store.describe_topic("out").is_ok() {
                committed_bodies(store.as_ref(), "out", p)
            } else {
                Vec::new()
            };
            assert_eq!(
                output,
                input[..committed as usize],
                "{ctx}: partition {p}, committed offset {committed}"
            );
            done += committed;
        }
        txns.close().unwrap();
        drop(txns);
        drop(groups);
        store.close().unwrap();
        done
    };
    let copy = || {
        Command::new(exe)
            .args([
                "copy", "--dir", &d, "--from", "in", "--to", "out", "--group", "copier", "--batch",
                "40",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut kills = 0;
    for iteration in 0..12 {
        let mut child = copy();
        let delay = Duration::from_millis(100 + pseudo_random(seed + iteration) % 400);
        let killer = kill_after(child.id(), delay);
        let status = child.wait().unwrap();
        killer.join().unwrap();
        kills += usize::from(!status.success());
        let done = check(&format!("{engine}: after kill {iteration}"));
        eprintln!("{engine}: kill {iteration}: {done} of {inputs} copied");
        if done == inputs {
            break;
        }
    }
    let out = copy().wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(check(&format!("{engine}: at the end")), inputs);
    assert!(kills > 0, "{engine}: some run was killed");
}
