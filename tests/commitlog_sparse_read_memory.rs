//! A partition whose records are sparse in the commit log (a quiet topic in a busy store) is
//! read back without mapping the log between its records: resident memory stays within the
//! documented release bound, not in proportion to the span of log the read crosses. Before: a
//! fetch sliced one span of the mapped log covering all its records and told the file where it
//! was only at the span's start, so every record's page the read or its caller touched (and the
//! kernel's fault-around of up to 64 KiB about it) stayed mapped until a later read released
//! it — 475 MB in the delay bench's read of 100,000 delivered messages interleaved with 3.5 M
//! messages of load (BENCHMARKS.md, "Full re-run after issue 16 (session 12)").
//!
//! Its own test binary: it reads the process's own mappings from `/proc/self/smaps`.

mod common;

use std::ops::ControlFlow;

use common::memory::resident_in;
use duolog::{EngineKind, LogStore, Message, ReadLimits, Record, StoreOptions, TopicConfig};

/// Quiet records, each after 32 KiB of the busy topic's messages.
const QUIET: u64 = 3_000;

/// Every quiet record in one read.
fn all_quiet() -> ReadLimits {
    ReadLimits {
        max_messages: QUIET as usize,
        max_bytes: 16 << 20,
        ..ReadLimits::default()
    }
}

fn sparse_store(dir: &std::path::Path) -> Box<dyn LogStore> {
    let store = duolog::open(
        dir,
        StoreOptions {
            engine: Some(EngineKind::CommitLog),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    store.create_topic("busy", TopicConfig::default()).unwrap();
    store.create_topic("quiet", TopicConfig::default()).unwrap();
    let busy: Vec<Message> = (0..32).map(|_| Message::new(vec![b'b'; 1000])).collect();
    for i in 0..QUIET {
        store.append("busy", 0, &busy).unwrap();
        let mut body = vec![b'q'; 100];
        body[..8].copy_from_slice(&i.to_be_bytes());
        store
            .append("quiet", 0, &[Message::new(body).with_tags("q")])
            .unwrap();
    }
    store.sync().unwrap();
    store
}

/// Bytes of the commit log's mappings resident now.
fn log_resident(dir: &std::path::Path) -> u64 {
    resident_in(&dir.join("commitlog"), "")
}

/// The writer's own window (warm-up ahead, kept behind) is resident before the read; the read
/// may add its keep and step behind the reader (2 MiB + 1 MiB) and a fault-around or two.
const READ_ALLOWANCE: u64 = 4 << 20;

/// Every quiet record, in order, each with its number in its body: touched as a consumer does.
fn check_quiet(records: &[Record]) {
    assert_eq!(records.len() as u64, QUIET);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset(), i as u64);
        assert_eq!(&r.body()[..8], &(i as u64).to_be_bytes());
    }
}

/// `what` held at most `held` bytes of commit log resident, which was `before` before it.
fn assert_within_release_bound(what: &str, before: u64, held: u64) {
    eprintln!(
        "commit log resident: {} KiB before {what}, {} KiB during or after it ({QUIET} records \
         over {} MiB of log)",
        before >> 10,
        held >> 10,
        (QUIET * 33 * 1024) >> 20
    );
    assert!(
        held <= before + READ_ALLOWANCE,
        "{what} held {} KiB of commit log resident (was {} KiB)",
        held >> 10,
        before >> 10
    );
}

#[test]
fn a_fetch_of_records_sparse_in_the_log_keeps_no_more_of_it_resident_than_the_release_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = sparse_store(dir.path());
    let before = log_resident(dir.path());
    let records = store.read("quiet", 0, 0, all_quiet()).unwrap();
    check_quiet(&records);
    assert_within_release_bound("the read", before, log_resident(dir.path()));
    drop(records);
}

#[test]
fn a_visiting_read_of_sparse_records_keeps_no_more_of_the_log_resident_than_the_release_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = sparse_store(dir.path());
    let before = log_resident(dir.path());
    let mut seen = 0u64;
    let mut peak = 0u64;
    let mut at = 0;
    while at < QUIET {
        let p = store
            .read_with("quiet", 0, at, all_quiet(), &mut |r| {
                assert_eq!(&r.body()[..8], &seen.to_be_bytes());
                seen += 1;
                if seen.is_multiple_of(500) {
                    peak = peak.max(log_resident(dir.path()));
                }
                ControlFlow::Continue(())
            })
            .unwrap();
        at = p.next_offset;
    }
    assert_eq!(seen, QUIET);
    let after = log_resident(dir.path());
    assert_within_release_bound("the visit", before, peak.max(after));
}

#[test]
fn a_tag_filtered_read_of_sparse_records_keeps_no_more_of_the_log_resident_than_the_release_bound()
{
    let dir = tempfile::tempdir().unwrap();
    let store = sparse_store(dir.path());
    let before = log_resident(dir.path());
    let read = store
        .read_tagged("quiet", 0, 0, all_quiet(), &["q".to_owned()])
        .unwrap();
    check_quiet(&read.records);
    assert_within_release_bound("the tagged read", before, log_resident(dir.path()));
}
