//! The check-back of undecided half messages (RocketMQ's
//! `TransactionalMessageServiceImpl#check`), the recovery of interrupted commits at open, and
//! the committed scan offsets.
//!
//! A scan reads the half topic from its committed offset `H` in windows of [`HALF_WINDOW`]
//! records, up to the end it saw when it started (copies it appends wait for the next scan).
//! For each window it pulls the op topic from its committed offset `O` to its end,
//! [`OP_PULL`] records at a time, keeping only the op records of ids in the window: memory is
//! one window of half messages plus at most one op state per id in it, whatever the number of
//! pending half messages or op records. `O` moves past an op record once the scan has passed
//! every copy its half message can have (all lie below the half end the op record carries),
//! never past an intent without its done record (see [`op_floor`]). Only the latest record of
//! an id is acted on (see [`superseded`]).

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use super::half::{
    CHECK_GROUP, CHECK_IMMUNITY_TIME_IN_SECONDS, CheckReport, HALF_TOPIC, LocalTransactionState,
    OP_TOPIC, OpState, Outcome, Shared, TRAN_BORN_MS, TRAN_LAST_CHECK_RESULT,
    TRAN_PREPARED_QUEUE_OFFSET, TRANSACTION_CHECK_TIMES, UNIQ_KEY, corrupted, decode_op, is_closed,
    read_from,
};
use crate::consumer::{CommitRecord, OFFSETS_SEGMENT_BYTES, OFFSETS_TOPIC};
use crate::error::{Error, Result};
use crate::store::{CleanupPolicy, LogStore, Message, Record, TopicConfig};

/// Half messages read per window of a scan. Each window reads the op records from `O` on, so a
/// scan reads about (half messages scanned / `HALF_WINDOW`) × (op records written over about
/// one timeout plus one check interval); larger windows read fewer, at one window's memory.
pub const HALF_WINDOW: usize = 1024;
/// Op records read per pull (RocketMQ pulls 32).
pub const OP_PULL: usize = 32;

/// The id a half-topic record belongs to: its own offset for an original, the original's for
/// a copy.
fn effective_id(r: &Record) -> u64 {
    r.properties()
        .get(TRAN_PREPARED_QUEUE_OFFSET)
        .and_then(|s| s.parse().ok())
        .unwrap_or(r.offset())
}

fn prop<T: std::str::FromStr>(r: &Record, name: &str) -> Option<T> {
    r.properties().get(name)?.parse().ok()
}

/// A copy of half message `r` (id `id`) for the end of the half topic, with its check count
/// and the result of the last check.
fn copy_of(r: &Record, id: u64, count: u32, last: Option<&str>) -> Message {
    let mut m = r.to_message();
    m.properties.retain(|(k, _)| {
        k != TRANSACTION_CHECK_TIMES
            && k != TRAN_PREPARED_QUEUE_OFFSET
            && k != TRAN_LAST_CHECK_RESULT
    });
    m.properties
        .push((TRAN_PREPARED_QUEUE_OFFSET.into(), id.to_string()));
    m.properties
        .push((TRANSACTION_CHECK_TIMES.into(), count.to_string()));
    if let Some(last) = last {
        m.properties
            .push((TRAN_LAST_CHECK_RESULT.into(), last.to_owned()));
    }
    m
}

fn ensure_offsets_topic(store: &dyn LogStore) -> Result<()> {
    // The consumer groups' own configuration of the topic (consumer/offsets.rs).
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::Compact,
        segment_bytes: Some(OFFSETS_SEGMENT_BYTES),
        min_compaction_lag: Some(std::time::Duration::ZERO),
        ..TopicConfig::with_partitions(1)
    };
    match store.create_topic(OFFSETS_TOPIC, config) {
        Ok(()) | Err(Error::TopicExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The committed (half, op) scan offsets: group [`CHECK_GROUP`]'s latest commit record in
/// `__consumer_offsets` (compacted: about one record per group), or (0, 0). Offsets committed
/// for a half or op topic that was since deleted and created again do not apply.
pub(crate) fn load_committed(store: &dyn LogStore) -> Result<(u64, u64)> {
    ensure_offsets_topic(store)?;
    let mut latest: Option<CommitRecord> = None;
    let b = store.bounds(OFFSETS_TOPIC, 0)?;
    let mut at = b.start;
    while at < b.end {
        let records = read_from(store, OFFSETS_TOPIC, 0, at, 4096)?;
        let Some(last) = records.last() else { break };
        at = last.offset() + 1;
        for r in &records {
            if r.key() != Some(CHECK_GROUP.as_bytes()) {
                continue;
            }
            latest = match r.value() {
                None => None,
                Some(v) => Some(CommitRecord::decode(v).map_err(|e| {
                    corrupted(
                        store,
                        OFFSETS_TOPIC,
                        r.offset(),
                        &format!("{CHECK_GROUP}: {e}"),
                    )
                })?),
            };
        }
    }
    let Some(record) = latest else {
        return Ok((0, 0));
    };
    let get = |topic: &str| -> Result<u64> {
        let applies = record.topic_ids.get(topic).copied() == Some(store.topic_id(topic)?);
        Ok(record
            .offsets
            .get(topic)
            .and_then(|p| p.get(&0))
            .copied()
            .filter(|_| applies)
            .unwrap_or(0))
    };
    Ok((get(HALF_TOPIC)?, get(OP_TOPIC)?))
}

/// Commits the scan offsets as group [`CHECK_GROUP`]'s offsets, acknowledged under the flush
/// policy (one lost only makes a later scan look at some half messages again).
fn commit(s: &Shared, half: u64, op: u64) -> Result<()> {
    let store = &*s.store;
    // What the scan wrote first (the copies of the messages it passed, op records): a commit
    // that survives a power cut without the copy of a message it passed would lose that
    // message to the check-back for good.
    store.sync()?;
    let mut record = CommitRecord {
        commit_time_ms: crate::clock::now_ms().max(0) as u64,
        ..CommitRecord::default()
    };
    for (topic, offset) in [(HALF_TOPIC, half), (OP_TOPIC, op)] {
        record
            .offsets
            .entry(topic.to_owned())
            .or_default()
            .insert(0, offset);
        record
            .topic_ids
            .insert(topic.to_owned(), store.topic_id(topic)?);
    }
    let m = Message::new(record.encode()).with_key(CHECK_GROUP);
    store.append(OFFSETS_TOPIC, 0, &[m])?;
    *s.committed.lock() = (half, op);
    Ok(())
}

/// The op states of the ids in `ids`, from the op topic's offset `o` to its end.
fn op_states(s: &Shared, o: u64, ids: &HashSet<u64>) -> Result<HashMap<u64, OpState>> {
    let store = &*s.store;
    let end = store.bounds(OP_TOPIC, 0)?.end;
    let mut states: HashMap<u64, OpState> = HashMap::new();
    let mut at = o;
    while at < end {
        let records = read_from(store, OP_TOPIC, 0, at, OP_PULL)?;
        let Some(last) = records.last() else { break };
        at = last.offset() + 1;
        for r in &records {
            if r.offset() >= end {
                break;
            }
            let op = decode_op(store, r)?;
            if ids.contains(&op.id) {
                let id = op.id;
                if let Some(st) = OpState::fold(states.remove(&id), op) {
                    states.insert(id, st);
                }
            }
        }
    }
    Ok(states)
}

/// How far `O` may move from `o` with the scan at half offset `h`: past each op record whose
/// half end is at most `h` (every copy of its half message lies below that end, so no later
/// scan needs the record), up to the first that is not, and never past an intent whose done
/// record is not also passed (`open` finishes intents from `O` on). Reads only the records it
/// moves past, plus one pull.
fn op_floor(s: &Shared, o: u64, h: u64) -> Result<u64> {
    let store = &*s.store;
    let end = store.bounds(OP_TOPIC, 0)?.end;
    let mut open: HashSet<u64> = HashSet::new();
    let (mut at, mut new_o) = (o, o);
    'pull: while at < end {
        let records = read_from(store, OP_TOPIC, 0, at, OP_PULL)?;
        let Some(last) = records.last() else { break };
        at = last.offset() + 1;
        for r in &records {
            if r.offset() >= end {
                break 'pull;
            }
            let op = decode_op(store, r)?;
            if op.half_end > h {
                break 'pull;
            }
            if op.target.is_some() {
                open.insert(op.id);
            } else {
                open.remove(&op.id);
            }
            if open.is_empty() {
                new_o = r.offset() + 1;
            }
        }
    }
    Ok(new_o.max(o))
}

/// Whether a later record of `r`'s id is in the half topic (an original or copy the scan
/// reads again after a lost scan position, whose check was made and copied already): only
/// the latest record of an id is acted on, so a lost position costs at most one extra check
/// instead of a second chain of copies. Through the key index (copies keep `UNIQ_KEY`); a
/// store without one only sees later records in the same window (see `scan`).
fn superseded(s: &Shared, r: &Record, id: u64) -> Result<bool> {
    if !s.indexed {
        return Ok(false);
    }
    let Some(uniq) = r.properties().get(UNIQ_KEY) else {
        return Ok(false);
    };
    let hits = s
        .store
        .find_by_key(HALF_TOPIC, uniq, (i64::MIN, i64::MAX), 1)?;
    Ok(hits
        .iter()
        .any(|h| h.record.offset() > r.offset() && effective_id(&h.record) == id))
}

/// Finishes every commit or discard whose intent has no done record, from the committed op
/// offset on (every earlier intent was finished before the scan passed its half message).
pub(crate) fn recover(s: &Shared) -> Result<()> {
    let store = &*s.store;
    let b = store.bounds(OP_TOPIC, 0)?;
    let mut at = s.committed.lock().1.max(b.start);
    let mut open: HashMap<u64, super::half::Op> = HashMap::new();
    while at < b.end {
        let records = read_from(store, OP_TOPIC, 0, at, 1024)?;
        let Some(last) = records.last() else { break };
        at = last.offset() + 1;
        for r in &records {
            let op = decode_op(store, r)?;
            if op.target.is_some() {
                open.insert(op.id, op);
            } else {
                open.remove(&op.id);
            }
        }
    }
    let mut ids: Vec<u64> = open.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let _claim = s.claim(id);
        let Some(OpState::Intent(op)) = s.op_state(id)? else {
            continue;
        };
        let half = match read_original(s, id)? {
            Some(h) => h,
            // Retention took the original: the scan finishes it from a copy.
            None => continue,
        };
        s.complete(&half, &op, true)?;
    }
    Ok(())
}

fn read_original(s: &Shared, id: u64) -> Result<Option<Record>> {
    let r = read_from(&*s.store, HALF_TOPIC, 0, id, 1)?;
    Ok(r.into_iter().next().filter(|r| r.offset() == id))
}

/// One check-back scan: see the module docs.
pub(crate) fn scan(s: &Shared) -> Result<CheckReport> {
    let _one = s.scan_lock.lock();
    let mut report = CheckReport::default();
    let result = scan_locked(s, &mut report);
    // What was done is counted even when the scan stopped on an error.
    s.totals.lock().add(&report);
    result.map(|()| report)
}

fn scan_locked(s: &Shared, report: &mut CheckReport) -> Result<()> {
    let store = &*s.store;
    let now = s.now();
    let timeout = crate::clock::duration_ms(s.config.transaction_timeout);
    let max_checks = s.config.max_checks;
    let (committed_h, committed_o) = *s.committed.lock();
    let (mut h, mut o) = (committed_h, committed_o);
    let hb = store.bounds(HALF_TOPIC, 0)?;
    let ob = store.bounds(OP_TOPIC, 0)?;
    if h < hb.start {
        report.expired += hb.start - h;
        h = hb.start;
    }
    o = o.max(ob.start);
    let stop_at = hb.end;
    while h < stop_at && !is_closed(s) {
        let mut window = read_from(store, HALF_TOPIC, 0, h, HALF_WINDOW)?;
        window.retain(|r| r.offset() < stop_at);
        if let Some(first) = window.first() {
            // Retention deleted records ahead of the scan since it started.
            report.expired += first.offset().saturating_sub(h);
        }
        if window.is_empty() {
            break;
        }
        let ids: HashSet<u64> = window.iter().map(effective_id).collect();
        // The latest record of each id in the window: earlier ones are superseded.
        let latest: HashMap<u64, u64> = window
            .iter()
            .map(|r| (effective_id(r), r.offset()))
            .collect();
        let states = op_states(s, o, &ids)?;
        let mut stopped = false;
        for r in &window {
            // Checked between messages, not windows: `close` waits for one check at most.
            if is_closed(s) {
                stopped = true;
                break;
            }
            let id = effective_id(r);
            let state = states.get(&id);
            if latest.get(&id) == Some(&r.offset()) && !matches!(state, Some(OpState::Done(_))) {
                let born = prop::<i64>(r, TRAN_BORN_MS).unwrap_or(r.store_timestamp());
                let age = now.saturating_sub(born);
                let count: u32 = prop(r, TRANSACTION_CHECK_TIMES).unwrap_or(0);
                let immunity = prop::<i64>(r, CHECK_IMMUNITY_TIME_IN_SECONDS)
                    .map_or(timeout, |secs| secs.saturating_mul(1000).max(timeout));
                if state.is_none() && count < max_checks && age < timeout {
                    // Younger than the timeout: so is (about) everything after it.
                    stopped = true;
                    break;
                }
                if !superseded(s, r, id)? {
                    visit(s, r, id, age, count, immunity, report)?;
                }
            }
            h = r.offset() + 1;
        }
        let o_new = op_floor(s, o, h)?;
        if (h, o_new) != *s.committed.lock() {
            commit(s, h, o_new)?;
        }
        o = o_new;
        if stopped {
            break;
        }
    }
    if report.expired > 0 && (h, o) != *s.committed.lock() {
        commit(s, h, o)?;
    }
    Ok(())
}

/// One half message not known to be done, old enough to act on (or with an intent to finish):
/// under its claim, with its op state looked up again (an `end` may have just ended it). The
/// checker is called without the claim, so it may itself `end` the id (the result of the
/// check is then moot: the op state is looked up again under the claim afterwards).
fn visit(
    s: &Shared,
    r: &Record,
    id: u64,
    age: i64,
    count: u32,
    immunity: i64,
    report: &mut CheckReport,
) -> Result<()> {
    let claim = s.claim(id);
    if !claimed_and_undecided(s, r, id, report)? {
        return Ok(());
    }
    let last = r.properties().get(TRAN_LAST_CHECK_RESULT);
    if count >= s.config.max_checks {
        let reason = format!(
            "checked {count} times (max {}), last result {}",
            s.config.max_checks,
            last.unwrap_or("none")
        );
        discard(s, r, id, &reason, report)?;
        return Ok(());
    }
    if age < immunity {
        // Past the timeout but within its own immunity time: not checked yet; a copy (same
        // count) keeps it ahead of the scan.
        append_copy(s, r, id, copy_of(r, id, count, last), report)?;
        return Ok(());
    }
    drop(claim);
    let state = catch_unwind(AssertUnwindSafe(|| s.checker.check(r)));
    report.checked += 1;
    let _claim = s.claim(id);
    if !claimed_and_undecided(s, r, id, report)? {
        return Ok(());
    }
    let (state, label) = match state {
        Ok(st) => (st, st.name().to_owned()),
        Err(_) => (
            LocalTransactionState::Unknown,
            format!(
                "{} (the checker panicked)",
                LocalTransactionState::Unknown.name()
            ),
        ),
    };
    match state {
        LocalTransactionState::Commit => match s.end_claimed(id, r, state)? {
            super::half::EndOutcome::Discarded => report.discarded += 1,
            _ => report.committed += 1,
        },
        LocalTransactionState::Rollback => {
            s.end_claimed(id, r, state)?;
            report.rolled_back += 1;
        }
        LocalTransactionState::Unknown => {
            // The check is counted durably by the copy: a crash before it only repeats the
            // check.
            append_copy(s, r, id, copy_of(r, id, count + 1, Some(&label)), report)?;
            report.unknown += 1;
        }
    }
    Ok(())
}

/// With `id` claimed: `false` if the op log says it is done, or had an intent (finished now);
/// `true` if it is undecided.
fn claimed_and_undecided(
    s: &Shared,
    r: &Record,
    id: u64,
    report: &mut CheckReport,
) -> Result<bool> {
    match s.op_state(id)? {
        Some(OpState::Done(_)) => Ok(false),
        Some(OpState::Intent(op)) => {
            s.complete(r, &op, true)?;
            report.finished += 1;
            Ok(false)
        }
        None => Ok(true),
    }
}

/// Appends a check's copy of `r`; a copy the half topic refuses as too large (it carries three
/// more properties than the message as sent) is parked instead, so one message near the size
/// limit cannot stop the check-back of every message behind it.
fn append_copy(
    s: &Shared,
    r: &Record,
    id: u64,
    copy: Message,
    report: &mut CheckReport,
) -> Result<()> {
    match s.store.append(HALF_TOPIC, 0, &[copy]) {
        Ok(_) => Ok(()),
        Err(e @ Error::MessageTooLarge { .. }) => {
            let last = r.properties().get(TRAN_LAST_CHECK_RESULT).unwrap_or("none");
            let reason =
                format!("its check copy does not fit {HALF_TOPIC}: {e}; last result {last}");
            discard(s, r, id, &reason, report)
        }
        Err(e) => Err(e),
    }
}

fn discard(s: &Shared, r: &Record, id: u64, reason: &str, report: &mut CheckReport) -> Result<()> {
    let (_, dropped) = s.commit_or_discard(id, r, Outcome::Discard, reason)?;
    report.discarded += 1;
    if dropped {
        report.dropped += 1;
    }
    Ok(())
}

/// Undecided half messages from the committed scan offset on, at most `limit`, the latest
/// copy of each.
pub(crate) fn undecided(s: &Shared, limit: usize) -> Result<Vec<Record>> {
    let store = &*s.store;
    let (h, o) = *s.committed.lock();
    let end = store.bounds(HALF_TOPIC, 0)?.end;
    let mut out: Vec<Record> = Vec::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut at = h;
    while at < end && out.len() < limit {
        let window = read_from(store, HALF_TOPIC, 0, at, HALF_WINDOW)?;
        let Some(last) = window.last() else { break };
        at = last.offset() + 1;
        let ids: HashSet<u64> = window.iter().map(effective_id).collect();
        let states = op_states(s, o, &ids)?;
        for r in window {
            let id = effective_id(&r);
            if states.contains_key(&id) {
                continue;
            }
            match index.get(&id) {
                Some(&i) => out[i] = r,
                None if out.len() < limit => {
                    index.insert(id, out.len());
                    out.push(r);
                }
                None => {}
            }
        }
    }
    Ok(out)
}
