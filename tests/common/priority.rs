//! Set-up the priority tests share: a store holding the priority topic `jobs`, and a
//! subscribed member of its consumer group.

use std::path::Path;
use std::sync::Arc;

use duolog::consumer::{ConsumerConfig, GroupCoordinator};
use duolog::order::{PriorityConfig, PriorityConsumer, create_priority_topic};
use duolog::{EngineKind, LogStore, TopicConfig};

/// A store with small files on `engine` and the priority topic `jobs` of `partitions`
/// partitions.
pub fn jobs_store(engine: EngineKind, dir: &Path, partitions: u32) -> Arc<dyn LogStore> {
    let store = super::consumer::open(dir, &super::small_options(engine));
    create_priority_topic(&*store, "jobs", partitions, TopicConfig::default()).unwrap();
    store
}

/// A priority consumer of `jobs`, subscribed.
pub fn member(
    groups: &GroupCoordinator,
    config: ConsumerConfig,
    priority: PriorityConfig,
) -> PriorityConsumer {
    let c = PriorityConsumer::new(groups, config, "jobs", priority).unwrap();
    c.subscribe().unwrap();
    c
}
