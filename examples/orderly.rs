//! Orderly consumption across rebalances, in one process: 4 members of a group over 8
//! partitions, keyed messages (a key always goes to one partition), members joining and
//! leaving while messages are produced. Checks that every key's messages were handled in the
//! order they were produced — a re-delivery after a hand-over may only restart from the
//! group's committed offset — and that every message was handled. Exits non-zero if not.
//!
//! `cargo run --release --example orderly [-- <dir>]`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duolog::consumer::{ConsumerRecord, GroupCoordinator, OffsetReset};
use duolog::order::{ConsumeOrderlyStatus, OrderlyConfig, OrderlyConsumer, OrderlyContext};
use duolog::{LogStore, Message, StoreOptions, TopicConfig, partition_for_key};

const PARTITIONS: u32 = 8;
const KEYS: u32 = 64;
const PER_KEY: u32 = 200;

/// Per key: the sequence numbers handled, with the fencing token of each call.
type Handled = Arc<Mutex<HashMap<u32, Vec<(u32, u64)>>>>;

fn main() -> duolog::Result<()> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let store: Arc<dyn LogStore> = Arc::from(duolog::open(&dir, StoreOptions::default())?);
    store.create_topic("orders", TopicConfig::with_partitions(PARTITIONS))?;
    let groups = GroupCoordinator::new(Arc::clone(&store))?;
    let handled: Handled = Arc::default();

    let start = |groups: &GroupCoordinator| {
        let mut config = OrderlyConfig {
            consume_threads: 4,
            commit_interval: Duration::from_millis(100),
            ..OrderlyConfig::new("shipping")
        };
        config.consumer.auto_offset_reset = OffsetReset::Earliest;
        let h = Arc::clone(&handled);
        OrderlyConsumer::start(
            groups,
            config,
            &["orders"],
            move |r: &ConsumerRecord, ctx: &OrderlyContext| {
                let body = String::from_utf8_lossy(r.record().body()).into_owned();
                let (key, seq) = body.split_once(':').expect("key:seq");
                let (key, seq) = (key.parse().expect("key"), seq.parse().expect("seq"));
                h.lock()
                    .expect("lock")
                    .entry(key)
                    .or_default()
                    .push((seq, ctx.fencing_token));
                ConsumeOrderlyStatus::Success
            },
        )
    };

    let mut members = vec![start(&groups)?, start(&groups)?];
    let began = Instant::now();
    for round in 0..PER_KEY {
        let mut batch: HashMap<u32, Vec<Message>> = HashMap::new();
        for key in 0..KEYS {
            let k = format!("customer-{key}");
            let p = partition_for_key(k.as_bytes(), PARTITIONS);
            batch
                .entry(p)
                .or_default()
                .push(Message::new(format!("{key}:{round}")).with_key(k));
        }
        for (p, msgs) in batch {
            store.append("orders", p, &msgs)?;
        }
        // Members join and leave mid-stream: every change moves partitions.
        match round {
            40 | 80 => members.push(start(&groups)?),
            120 => members.remove(0).close()?,
            150 => members.push(start(&groups)?),
            _ => {}
        }
        if round % 20 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    println!("{} members at the end", members.len());
    let total = u64::from(KEYS * PER_KEY);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: u64 = (0..PARTITIONS)
            .map(|p| {
                groups
                    .committed_offsets("shipping")
                    .get("orders")
                    .and_then(|t| t.get(&p))
                    .copied()
                    .unwrap_or(0)
            })
            .sum();
        if done == total {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("only {done} of {total} committed");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Every join and leave is a rebalance; read before the last members leave (the group's
    // membership is gone with them).
    let rebalances = groups.generation("shipping");
    for m in members {
        m.close()?;
    }
    let took = began.elapsed();

    // Per key: under one token the sequence goes up by one; a new token (a hand-over) may
    // restart lower (from the committed offset) but never skip ahead.
    let handled = handled.lock().expect("lock");
    let mut violations = 0;
    let mut redelivered = 0;
    for key in 0..KEYS {
        let calls = handled.get(&key).map(Vec::as_slice).unwrap_or_default();
        let mut max_seen: Option<u32> = None;
        for (i, &(seq, token)) in calls.iter().enumerate() {
            if let Some(&(prev, prev_token)) = i.checked_sub(1).map(|j| &calls[j]) {
                let in_order = if token == prev_token {
                    seq == prev + 1
                } else {
                    seq <= max_seen.map_or(0, |m| m + 1)
                };
                if !in_order {
                    violations += 1;
                    eprintln!("key {key}: {prev} (token {prev_token}) then {seq} (token {token})");
                }
                if seq <= prev {
                    redelivered += 1;
                }
            } else if seq != 0 {
                violations += 1;
                eprintln!("key {key}: started at {seq}");
            }
            max_seen = Some(max_seen.map_or(seq, |m| m.max(seq)));
        }
        if max_seen != Some(PER_KEY - 1) {
            violations += 1;
            eprintln!("key {key}: handled up to {max_seen:?} of {}", PER_KEY - 1);
        }
    }
    println!(
        "{total} messages, {KEYS} keys over {PARTITIONS} partitions, {rebalances} rebalances, {redelivered} restarts from a commit, in {took:?}"
    );
    drop(groups);
    store.close()?;
    if violations > 0 {
        eprintln!("per-key order violated {violations} times");
        std::process::exit(1);
    }
    println!("per-key order held across every rebalance");
    Ok(())
}
