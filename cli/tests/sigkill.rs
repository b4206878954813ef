//! A new user's crash test: `duolog produce --sync` fed a long stream and killed with SIGKILL at
//! a random moment; the store reopens and every acknowledged line is there, in order, intact.
//! `DUOLOG_KILL_ITERATIONS` raises the number of kills (default 3).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    complete_lines, exe, feed, kill_after, kill_group_consumer_and_check, kill_iterations,
    parse_acks, pseudo_random, run_to_end, seed, spawn_piped,
};
use duolog::{ReadLimits, StoreOptions};

#[test]
fn acknowledged_lines_survive_sigkill_commitlog() {
    kill_and_check("commitlog");
}

#[test]
fn acknowledged_lines_survive_sigkill_segmented() {
    kill_and_check("segmented");
}

fn kill_and_check(engine: &str) {
    let iterations = kill_iterations(3);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let mut acked_total: Vec<(u32, u64, String)> = Vec::new();
    let mut next_line = 0u64;
    let seed = seed();
    for iteration in 0..iterations {
        // A fresh store every few kills keeps soak runs from re-verifying an ever larger store.
        if iteration > 0 && iteration % 10 == 0 {
            std::fs::remove_dir_all(&store_dir).unwrap();
            acked_total.clear();
        }
        let mut child = spawn_piped(&[
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
        ]);
        let first = next_line;
        // Numbered lines until the child dies (broken pipe) or we stop.
        let (stop, writer) = feed(
            child.stdin.take().unwrap(),
            first,
            |n| format!("line-{n:09}-{}", "x".repeat((n % 50) as usize)),
            64,
            Duration::from_micros(200),
        );
        let delay = Duration::from_millis(100 + pseudo_random(seed + iteration as u64) % 400);
        let killer = kill_after(child.id(), delay);
        let acks = parse_acks(&complete_lines(child.stdout.take().unwrap()));
        killer.join().unwrap();
        let status = child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
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
        if acked_total.is_empty() && !store.list_topics(false).iter().any(|t| t == "lines") {
            // Killed before the producer created its topic (a slow start on a loaded machine):
            // nothing was acknowledged, so nothing is owed.
            assert!(store.verify().unwrap().is_ok());
            store.close().unwrap();
            continue;
        }
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

#[test]
fn compaction_survives_sigkill_commitlog() {
    kill_compaction_and_check("commitlog");
}

#[test]
fn compaction_survives_sigkill_segmented() {
    kill_compaction_and_check("segmented");
}

/// `duolog compact` killed with SIGKILL at a random moment: the store reopens with every
/// offset where it was, every key's latest value readable from the start, and every record
/// left the one that was appended at its offset; `verify` passes; a later `compact` finishes.
fn kill_compaction_and_check(engine: &str) {
    let iterations = kill_iterations(3);
    let exe = exe();
    let seed = seed();
    let keys = 500u64;
    for iteration in 0..iterations {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("store");
        let d = d.to_str().unwrap();
        let created = Command::new(exe)
            .args([
                "topic",
                "create",
                "--dir",
                d,
                "--engine",
                engine,
                "--topic",
                "kv",
                "--config",
                "cleanup.policy=compact",
                "--config",
                "segment.bytes=65536",
            ])
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        // 60,000 updates of 500 keys, every 7th a tombstone, one partition.
        let mut input = String::new();
        let mut model: Vec<(String, Option<String>)> = Vec::new();
        for n in 0..60_000u64 {
            let key = format!("k{:04}", pseudo_random(n) % keys);
            if n % 7 == 3 {
                input.push_str(&format!("{key}\t\n"));
                model.push((key, None));
            } else {
                let v = format!("v{n}");
                input.push_str(&format!("{key}\t{v}\n"));
                model.push((key, Some(v)));
            }
        }
        let mut producer = Command::new(exe)
            .args([
                "produce",
                "--dir",
                d,
                "--topic",
                "kv",
                "--partition",
                "0",
                "--keyed",
                "--tombstones",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        producer
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        assert!(producer.wait().unwrap().success());

        let mut child = Command::new(exe)
            .args(["compact", "--dir", d])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(
            pseudo_random(seed + iteration as u64) % 150,
        ));
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();

        let check = |ctx: &str| {
            let store = duolog::open(d, StoreOptions::default()).unwrap();
            let b = store.bounds("kv", 0).unwrap();
            assert_eq!(
                (b.start, b.end),
                (0, model.len() as u64),
                "{ctx}: offsets kept"
            );
            let mut latest = std::collections::HashMap::new();
            let mut at = 0;
            let mut last = None;
            while at < b.end {
                let recs = store.read("kv", 0, at, ReadLimits::messages(1000)).unwrap();
                assert!(!recs.is_empty(), "{ctx}: read at {at} below the end");
                for r in &recs {
                    let o = r.offset();
                    assert!(last.is_none_or(|l| o > l), "{ctx}: order");
                    last = Some(o);
                    let (key, value) = &model[o as usize];
                    assert_eq!(r.key(), Some(key.as_bytes()), "{ctx}: key at {o}");
                    assert_eq!(
                        r.value().map(|v| String::from_utf8(v.to_vec()).unwrap()),
                        *value,
                        "{ctx}: value at {o}"
                    );
                    latest.insert(key.clone(), o);
                }
                at = last.unwrap() + 1;
            }
            // Every key's latest record is there (tombstones are young: kept 24 h).
            let mut want = std::collections::HashMap::new();
            for (o, (key, _)) in model.iter().enumerate() {
                want.insert(key.clone(), o as u64);
            }
            assert_eq!(latest, want, "{ctx}: latest record of every key");
            let report = store.verify().unwrap();
            assert!(report.is_ok(), "{ctx}: {:?}", report.problems);
            store.close().unwrap();
        };
        check(&format!("{engine}: kill {iteration}"));
        let out = Command::new(exe)
            .args(["compact", "--dir", d])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        check(&format!("{engine}: compact after kill {iteration}"));
        eprintln!(
            "{engine}: kill {iteration}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
}

#[test]
fn group_consumer_killed_mid_stream_skips_nothing_commitlog() {
    kill_consumer_and_check("commitlog");
}

#[test]
fn group_consumer_killed_mid_stream_skips_nothing_segmented() {
    kill_consumer_and_check("segmented");
}

/// One complete line of a child's output (a line cut by the kill is dropped: its record was
/// not committed, so the next run prints it again).
/// `duolog consume --group g --follow` killed with SIGKILL mid-stream, several times, then
/// run to the end: every produced message is printed at least once across the runs, each
/// run prints every partition densely from where the group's commit was, and the committed
/// offsets after a kill never pass what was printed (commits follow the printing).
fn kill_consumer_and_check(engine: &str) {
    kill_group_consumer_and_check(engine, &["--tags", "TagA"], &["--filter", "TagA"], false);
}

#[test]
fn delayed_lines_survive_sigkill_during_delivery_commitlog() {
    kill_delivery_and_check("commitlog");
}

#[test]
fn delayed_lines_survive_sigkill_during_delivery_segmented() {
    kill_delivery_and_check("segmented");
}

/// `produce --delay 1s` of 30,000 lines, then `consume --group g --follow` (which runs the
/// delay layer) killed with SIGKILL while the layer delivers, several times, then run to the
/// end: reading the topic itself, every line is there exactly once (deliveries are
/// deduplicated across the crash), whatever the consumer printed.
fn kill_delivery_and_check(engine: &str) {
    let kills = kill_iterations(3);
    let exe = exe();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("store");
    let d = d.to_str().unwrap();
    let total = 30_000usize;
    let input: String = (0..total).map(|n| format!("d-{n:07}\n")).collect();
    let acks = run_to_end(
        &[
            "produce",
            "--dir",
            d,
            "--engine",
            engine,
            "--topic",
            "t",
            "--partitions",
            "2",
            "--delay",
            "1s",
        ],
        input,
    );
    assert_eq!(acks.len(), total);
    let seed = seed();
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
                "3s",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Killed once some lines came through: the layer is then delivering (rounds of at
        // most 10,000), or between a round's writes and its DONE.
        let kill_after = 1 + pseudo_random(seed + run as u64) % 8_000;
        let pid = child.id();
        let reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut n = 0u64;
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => n += 1,
                }
                if killing && n == kill_after {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
            n
        });
        let lines = reader.join().unwrap();
        let status = child.wait().unwrap();
        if !killing {
            assert!(status.success(), "{engine}: the last run ends by itself");
        }
        eprintln!("{engine}: run {run}: {lines} lines, killed: {killing}");
    }
    // Count by reading the topic, not the printed output.
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    for p in ["0", "1"] {
        let out = Command::new(exe)
            .args(["consume", "--dir", d, "--topic", "t", "--partition", p])
            .output()
            .unwrap();
        assert!(out.status.success());
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            *seen
                .entry(l.rsplit('\t').next().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(seen.len(), total, "{engine}: every line delivered");
    let dup: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(
        dup.is_empty(),
        "{engine}: delivered more than once: {dup:?}"
    );
    let out = Command::new(exe)
        .args(["delayed", "--dir", d])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "total\t0\n");
}
