//! Set-up the push and orderly consumer tests share: a store shared between threads, topic `t`
//! filled partition by partition, its group coordinator, a bounded wait and the group's
//! committed offsets.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use duolog::consumer::GroupCoordinator;
use duolog::{EngineKind, LogStore, Message, StoreOptions, TopicConfig};

/// Opens a store that threads can share.
pub fn open(dir: &Path, opts: &StoreOptions) -> Arc<dyn LogStore> {
    Arc::from(duolog::open(dir, opts.clone()).expect("open"))
}

/// Appends `n` messages made by `message(i)` to one partition, 100 to a batch.
pub fn produce_with(
    store: &dyn LogStore,
    topic: &str,
    partition: u32,
    n: usize,
    message: impl Fn(usize) -> Message,
) {
    let batch: Vec<Message> = (0..n).map(message).collect();
    for chunk in batch.chunks(100) {
        store.append(topic, partition, chunk).unwrap();
    }
}

/// A store with small files on `engine` holding topic `t` of `partitions` partitions, each
/// filled with `records` messages by `produce`, and its group coordinator.
pub fn topic_t(
    engine: EngineKind,
    dir: &Path,
    partitions: u32,
    records: usize,
    produce: fn(&dyn LogStore, &str, u32, usize),
) -> (Arc<dyn LogStore>, GroupCoordinator) {
    let store = open(dir, &super::small_options(engine));
    store
        .create_topic("t", TopicConfig::with_partitions(partitions))
        .unwrap();
    if records > 0 {
        for p in 0..partitions {
            produce(&*store, "t", p, records);
        }
    }
    let groups = GroupCoordinator::new(Arc::clone(&store)).unwrap();
    (store, groups)
}

/// Waits up to 20 s for `done`; fails the test with `what` otherwise.
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    super::wait_for(
        Duration::from_secs(20),
        &format!("timed out waiting for {what}"),
        done,
    );
}

/// The offset `group` has committed for partition `p` of `topic`.
pub fn committed(groups: &GroupCoordinator, group: &str, topic: &str, p: u32) -> Option<u64> {
    groups
        .committed_offsets(group)
        .get(topic)
        .and_then(|t| t.get(&p))
        .copied()
}
