//! Review rv1: `read_with` allocations with keys the CommitLog engine stores hex-encoded.
//! (Its own test binary: it installs a global allocator that counts allocations.)

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use duolog::{EngineKind, Message, ReadLimits, TopicConfig};

struct Counting;

static COUNT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static ON: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON.with(std::cell::Cell::get) {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: allocated by `System` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON.with(std::cell::Cell::get) {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// ARCHITECTURE.md: "a key stored hex-encoded is decoded into one scratch buffer reused by the
/// read"; `RecordRef`'s docs: the read "allocates nothing per record". A binary (non-UTF-8)
/// key is what the CommitLog engine stores hex-encoded: visiting 8,192 such records must not
/// cost an allocation each.
#[test]
fn a_visiting_read_of_binary_keys_allocates_nothing_per_record() {
    for engine in [EngineKind::CommitLog, EngineKind::Segmented] {
        let dir = tempfile::tempdir().unwrap();
        let opts = duolog::StoreOptions {
            engine: Some(engine),
            ..duolog::StoreOptions::default()
        };
        let store = duolog::open(dir.path(), opts).unwrap();
        store.create_topic("t", TopicConfig::default()).unwrap();
        let key = vec![0xffu8, 0x00, 0x80, 0x01];
        let msg = [Message::new(vec![b'r'; 100]).with_key(key.clone())];
        for _ in 0..10_000 {
            store.append_oneway("t", 0, &msg).unwrap();
        }
        let limits = ReadLimits {
            max_messages: 8192,
            max_bytes: 4 << 20,
            ..ReadLimits::default()
        };
        let mut good = true;
        COUNT.store(0, Ordering::Relaxed);
        ON.with(|c| c.set(true));
        let p = store
            .read_with("t", 0, 0, limits, &mut |r| {
                good &= r.key() == Some(&key[..]);
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        ON.with(|c| c.set(false));
        let count = COUNT.load(Ordering::Relaxed);
        assert_eq!(p.visited, 8192);
        assert!(good, "{engine}: a key differs");
        eprintln!("{engine}: {count} allocations to visit 8,192 binary-keyed records");
        assert!(
            count < 64,
            "{engine}: {count} allocations to visit 8,192 records with binary keys"
        );
        let _ = store.close();
    }
}
