//! Set-up the half-message tests share: a manual clock at a fixed start, the layer configured
//! to scan by hand or on its own thread, the bodies of a partition, and a bounded wait.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use duolog::delay::ManualClock;
use duolog::txn::{HalfConfig, HalfMessages, TransactionChecker};
use duolog::{EngineKind, LogStore, TopicConfig};

/// Where every test's manual clock starts (a fixed wall time, far from zero).
pub const T0: i64 = 1_700_000_000_000;

/// The layer on `clock`, scanning only when the test calls `check_now`.
pub fn manual(clock: &Arc<ManualClock>) -> HalfConfig {
    HalfConfig {
        clock: clock.clone(),
        background: false,
        ..HalfConfig::default()
    }
}

/// The layer on `clock`, its check thread scanning every 10 ms.
pub fn background(clock: &Arc<ManualClock>) -> HalfConfig {
    HalfConfig {
        background: true,
        check_interval: Duration::from_millis(10),
        ..manual(clock)
    }
}

/// A manual clock at [`T0`] and the layer over `store`, configured by `config` on that clock.
pub fn open_layer(
    store: &Arc<dyn LogStore>,
    config: impl FnOnce(&Arc<ManualClock>) -> HalfConfig,
    checker: Arc<dyn TransactionChecker>,
) -> (Arc<ManualClock>, HalfMessages) {
    let clock = Arc::new(ManualClock::new(T0));
    let txn = HalfMessages::open(Arc::clone(store), config(&clock), checker).unwrap();
    (clock, txn)
}

/// Every body of a partition, as text.
pub fn bodies(store: &dyn LogStore, topic: &str, partition: u32) -> Vec<String> {
    super::read_all(store, topic, partition)
        .iter()
        .map(|r| String::from_utf8(r.body().to_vec()).unwrap())
        .collect()
}

/// A store with small files (`small_options`) and the topic `orders` of `partitions`
/// partitions, created on the first open only, so a test can reopen it.
pub fn orders_store(engine: EngineKind, dir: &Path, partitions: u32) -> Arc<dyn LogStore> {
    let store: Arc<dyn LogStore> =
        Arc::from(duolog::open(dir, super::small_options(engine)).unwrap());
    if store.describe_topic("orders").is_err() {
        store
            .create_topic("orders", TopicConfig::with_partitions(partitions))
            .unwrap();
    }
    store
}
