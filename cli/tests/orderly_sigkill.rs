//! `duolog consume --orderly` killed with SIGKILL mid-stream, several times, then run to the
//! end: the orderly layer's durable state (offsets committed under leases) neither re-prints a
//! committed record nor skips one. `DUOLOG_KILL_ITERATIONS` raises the number of kills (default 3).

mod common;

use std::io::BufRead;
use std::io::BufReader;
use std::process::{Command, Stdio};

use common::{exe, kill_iterations, pseudo_random, run_to_end, seed};

#[test]
fn orderly_consumer_killed_mid_stream_skips_nothing_and_repeats_nothing_committed_commitlog() {
    kill_orderly_and_check("commitlog");
}

#[test]
fn orderly_consumer_killed_mid_stream_skips_nothing_and_repeats_nothing_committed_segmented() {
    kill_orderly_and_check("segmented");
}

/// `duolog consume --orderly --group g --follow` killed with SIGKILL mid-stream, several times, then
/// run to the end: every produced message is printed at least once across the runs, each
/// run prints every partition densely from where the group's commit was, and the committed
/// offsets after a kill never pass what was printed (commits follow the printing).
fn kill_orderly_and_check(engine: &str) {
    let kills = kill_iterations(3);
    let exe = exe();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("store");
    let d = d.to_str().unwrap();
    let total = 60_000u64;
    let input: String = (0..total).map(|n| format!("m-{n:07}\n")).collect();
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
            "4",
        ],
        input,
    );
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
                "--orderly",
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
                // A slow reader: the child blocks in its handler's print, so its periodic
                // commits (every 200 ms) land between kills.
                if lines.len() % 20 == 0 {
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
