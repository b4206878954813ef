//! A read allocates in proportion to what it returns, not to the backlog behind its offset: a
//! small fetch at the start of a large backlog must not reserve a unit per pending record.
//! (Its own test binary: it installs a global allocator that records the largest allocation.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use duolog::{EngineKind, Message, ReadLimits, TopicConfig};

struct Largest;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Allocations made by threads that set `COUNTING`.
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// Bytes those allocations asked for.
static BYTES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count(size: usize) {
    if COUNTING.with(std::cell::Cell::get) {
        COUNT.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        }
        count(layout.size());
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated by `System` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            LARGEST.fetch_max(new_size, Ordering::Relaxed);
        }
        count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

#[test]
fn small_read_over_a_large_backlog_allocates_little() {
    // The CommitLog engine (one consume-queue unit per record). The segmented engine reads
    // whole batches (a 1000-record batch here is one allocation of about 168 KB), which is
    // bounded by the batch size rather than the backlog.
    let engine = EngineKind::CommitLog;
    {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let mut opts = common::small_options(engine);
        opts.commitlog.file_size = 64 << 20;
        opts.commitlog.consume_queue_units = 300_000;
        opts.segmented.segment_bytes = 64 << 20;
        opts.index.enabled = false;
        let store = duolog::open(dir, opts).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        let batch: Vec<Message> = (0..1000).map(|_| Message::new("x")).collect();
        for _ in 0..200 {
            store.append_oneway("t", 0, &batch).unwrap();
        }
        // 200,000 records pending; ask for about 1 KiB with no message limit.
        let limits = ReadLimits {
            max_messages: usize::MAX,
            max_bytes: 1024,
            ..ReadLimits::default()
        };
        LARGEST.store(0, Ordering::Relaxed);
        ARMED.store(true, Ordering::Relaxed);
        let records = store.read("t", 0, 0, limits).unwrap();
        ARMED.store(false, Ordering::Relaxed);
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            !records.is_empty() && records.len() <= 1000,
            "{}",
            records.len()
        );
        // Before the fix: 200,000 × 24 bytes reserved for units in one allocation.
        assert!(
            largest < 64 << 10,
            "{engine}: a read returning {} records made a {largest}-byte allocation",
            records.len()
        );
        drop(records);
        let _ = store.close();
    }
}

/// A tagged read on the CommitLog engine allocates per record it returns (and per call), never
/// per unit it skips: 60,000 skipped units cost no allocation.
#[test]
fn tagged_read_allocates_nothing_per_skipped_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = common::small_options(EngineKind::CommitLog);
    opts.commitlog.file_size = 64 << 20;
    opts.commitlog.consume_queue_units = 300_000;
    opts.index.enabled = false;
    let store = duolog::open(dir.path(), opts).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let batch: Vec<Message> = (0..1000)
        .map(|i| Message::new("x").with_tags(if i == 500 { "TagA" } else { "TagB" }))
        .collect();
    for _ in 0..60 {
        store.append_oneway("t", 0, &batch).unwrap();
    }
    let wanted = vec!["TagA".to_string()];
    let measure = |from: u64, limits: ReadLimits| {
        COUNT.store(0, Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        let r = store.read_tagged("t", 0, from, limits, &wanted).unwrap();
        COUNTING.with(|c| c.set(false));
        (
            r.records.len(),
            r.next_offset,
            COUNT.load(Ordering::Relaxed),
        )
    };
    let (n, next, allocations) = measure(0, ReadLimits::messages(1000));
    assert_eq!((n, next), (60, 60_000));
    // A few per call plus a few per returned record (the result vector grows; a span per log
    // file) — nowhere near one per skipped unit.
    assert!(
        allocations < 200,
        "{allocations} allocations for 60 records"
    );
    let (n, _, one) = measure(450, ReadLimits::messages(1));
    assert_eq!(n, 1);
    assert!(one < 20, "{one} allocations for 1 record after 50 skipped");
    eprintln!("tagged reads: {allocations} allocations for 60 records, {one} for 1");
    let _ = store.close();
}

/// A sequential read of the segmented engine's active segment (mapped for its appends) slices
/// the mapping: besides the result vector it allocates next to nothing, where copying the
/// 8,192 one-record batches out in chunks allocated more than the ~1.4 MB they take.
#[test]
fn a_segmented_read_of_the_active_segment_copies_no_log_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = duolog::StoreOptions {
        engine: Some(EngineKind::Segmented),
        ..duolog::StoreOptions::default()
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let msg = [Message::new(vec![b'r'; 100])];
    for _ in 0..10_000 {
        store.append_oneway("t", 0, &msg).unwrap();
    }
    let limits = ReadLimits {
        max_messages: 8192,
        max_bytes: 1 << 20,
        ..ReadLimits::default()
    };
    BYTES.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let records = store.read("t", 0, 0, limits).unwrap();
    COUNTING.with(|c| c.set(false));
    let allocated = BYTES.load(Ordering::Relaxed);
    let returned: usize = records.iter().map(|r| r.stored_size() as usize).sum();
    let vector = records.capacity() * std::mem::size_of::<duolog::Record>();
    assert!(records.len() > 5000, "{}", records.len());
    assert!(records.iter().all(|r| r.body() == &[b'r'; 100][..]));
    assert!(
        allocated.saturating_sub(vector) < 64 << 10,
        "{allocated} bytes allocated to return {} records ({returned} bytes stored, {vector} \
         bytes of vector)",
        records.len()
    );
    drop(records);
    let _ = store.close();
}

/// A record shares one buffer among its fields (key, body, tags, properties are ranges of it),
/// so it holds one reference-counted handle rather than one per field, and moving it into the
/// result vector moves little.
#[test]
fn a_record_holds_one_buffer_handle_not_one_per_field() {
    let size = std::mem::size_of::<duolog::Record>();
    // Four 32-byte `Bytes` handles alone made 128 bytes (176 in all).
    assert!(size <= 120, "a Record is {size} bytes");
}

/// Appends 10,000 copies of `msg` to a new store of `engine` and visits the first 8,192 with
/// `read_with`, counting the allocations made during the visit: returns whether `check` held
/// for every visited record, the allocations and their bytes.
fn visit_counting(
    engine: EngineKind,
    msg: Message,
    check: impl Fn(&duolog::RecordRef<'_>) -> bool,
) -> (bool, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let opts = duolog::StoreOptions {
        engine: Some(engine),
        ..duolog::StoreOptions::default()
    };
    let store = duolog::open(dir.path(), opts).unwrap();
    store.create_topic("t", TopicConfig::default()).unwrap();
    let msg = [msg];
    for _ in 0..10_000 {
        store.append_oneway("t", 0, &msg).unwrap();
    }
    let limits = ReadLimits {
        max_messages: 8192,
        max_bytes: 4 << 20,
        ..ReadLimits::default()
    };
    let mut seen = 0usize;
    let mut good = true;
    COUNT.store(0, Ordering::Relaxed);
    BYTES.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let p = store
        .read_with("t", 0, 0, limits, &mut |r| {
            seen += 1;
            good &= check(r);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    COUNTING.with(|c| c.set(false));
    let (count, bytes) = (COUNT.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    assert_eq!((p.visited, p.next_offset, seen), (8192, 8192, 8192));
    let _ = store.close();
    (good, count, bytes)
}

/// `read_with` on either engine allocates per call, not per record: no `Record`, no result
/// vector, no buffer per record (the trait's default, built on `fetch`, allocated the vector
/// of 8,192 records, about 900 KB).
#[test]
fn a_visiting_read_allocates_nothing_per_record() {
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let msg = Message::new(vec![b'r'; 100])
            .with_key("k")
            .with_tags("TagA")
            .with_property("p", "v");
        let (good, count, bytes) = visit_counting(engine, msg, |r| {
            r.body() == &[b'r'; 100][..]
                && r.key() == Some(&b"k"[..])
                && r.tags() == Some("TagA")
                && r.properties().get("p") == Some("v")
        });
        assert!(
            good,
            "{engine}: a visited record differs from what was appended"
        );
        assert!(
            count < 64 && bytes < 64 << 10,
            "{engine}: {count} allocations, {bytes} bytes, to visit 8,192 records"
        );
        eprintln!("{engine}: read_with of 8,192 records: {count} allocations, {bytes} bytes");
    }
}

/// A binary (non-UTF-8) key is what the CommitLog engine stores hex-encoded; it is decoded
/// into one scratch buffer the read reuses, so visiting 8,192 such records does not cost an
/// allocation each (review rv1: 8,193 before).
#[test]
fn a_visiting_read_of_binary_keys_allocates_nothing_per_record() {
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let key = vec![0xffu8, 0x00, 0x80, 0x01];
        let msg = Message::new(vec![b'r'; 100]).with_key(key.clone());
        let (good, count, _) = visit_counting(engine, msg, |r| r.key() == Some(&key[..]));
        assert!(good, "{engine}: a key differs");
        eprintln!("{engine}: {count} allocations to visit 8,192 binary-keyed records");
        assert!(
            count < 64,
            "{engine}: {count} allocations to visit 8,192 records with binary keys"
        );
    }
}
