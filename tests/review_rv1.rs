//! Review rv1 (issue 16 merge: read_with, the segmented sync pool, fresh consume-queue
//! directories): cases the change's own tests do not reach.

mod common;

use std::time::Duration;

use duolog::{LogStore, Message, TopicConfig};

/// A sync that panics (a bug, or an I/O layer that panics) during a group flush: the sync
/// pool catches it and fails the flush (`sync_pool.rs`: "a panicking job counts as a failed
/// one"), but a flush the flushing thread runs alone (one dirty partition, or cheap syncs) lets
/// it unwind through the group commit's leader, which leaves its `flushing` flag set: every
/// later durable append then parks forever. Expected: the next append returns (an error is
/// fine) instead of hanging.
#[test]
fn a_sync_that_panics_on_the_flushing_thread_does_not_wedge_later_durable_appends() {
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use common::wrap::{FsHooks, WrapFs};
    use duolog::io::SimFs;

    #[derive(Debug, Default)]
    struct PanicOnce(AtomicBool);
    impl FsHooks for PanicOnce {
        fn sync(
            &self,
            _path: &Path,
            sync: &mut dyn FnMut() -> std::io::Result<()>,
        ) -> std::io::Result<()> {
            if self.0.swap(false, Ordering::SeqCst) {
                panic!("injected: a sync panics");
            }
            sync()
        }
    }
    for engine in common::engines() {
        let hooks = Arc::new(PanicOnce::default());
        let store: Arc<dyn LogStore> = Arc::from(
            duolog::open(
                "/store",
                duolog::StoreOptions {
                    flush: duolog::FlushPolicy::Sync,
                    fs: WrapFs::new(SimFs::new(), Arc::clone(&hooks)),
                    ..common::small_options(engine)
                },
            )
            .unwrap(),
        );
        store.create_topic("t", TopicConfig::default()).unwrap();
        store.append("t", 0, &[Message::new("before")]).unwrap();
        hooks.0.store(true, Ordering::SeqCst);
        let s = Arc::clone(&store);
        let first = std::thread::spawn(move || s.append("t", 0, &[Message::new("panics")]));
        let first = first.join();
        eprintln!(
            "{engine}: the append whose sync panicked: {:?}",
            first.as_ref().map(|r| r.is_ok())
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let s = Arc::clone(&store);
        std::thread::spawn(move || {
            let _ = tx.send(s.append("t", 0, &[Message::new("after")]).is_ok());
        });
        let next = rx.recv_timeout(Duration::from_secs(5));
        assert!(
            next.is_ok(),
            "{engine}: a durable append after a panicked sync did not return within 5 s"
        );
        eprintln!("{engine}: the next append returned, ok = {:?}", next);
        std::mem::forget(store);
    }
}
