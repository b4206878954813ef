//! [`GroupCoordinator`]: the consumer groups of one store — their committed offsets and the
//! membership and partition assignment of every group whose members live in this process.
//!
//! The assignment protocol is "revoke, then assign" (Kafka's cooperative protocol, inside one
//! process): a rebalance only changes each member's *target*. A partition moves to its new
//! member when its old owner, on its own thread at its next `poll`/`commit`/`close`, has run
//! its revoke callback, committed (with auto-commit) and released it; until then the new
//! member waits for it. So a partition never has two owners, and the new owner resumes at the
//! offset the old one committed last.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::assignor::{Assignor, Averagely, MemberSubscription, TopicPartition, check_assignment};
use super::offsets::{OffsetStore, OffsetTable};
use crate::durability::Wakeup;
use crate::error::{Error, Result};
use crate::store::LogStore;

/// Stores served by a live coordinator in this process, by the address of the store object
/// (a coordinator holds its store, so the address cannot be reused while it is listed). Not a
/// registry of state: a guard, like the store's `LOCK` file one level up, so that two
/// coordinators of one store (which would each hand out every partition) cannot exist at once.
static SERVED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn store_key(store: &Arc<dyn LogStore>) -> usize {
    Arc::as_ptr(store).cast::<()>() as usize
}

struct Member {
    topics: BTreeSet<String>,
    /// What the last rebalance assigned it.
    target: BTreeSet<TopicPartition>,
    /// What it holds now (a subset of `target` plus partitions it has yet to revoke).
    owned: BTreeSet<TopicPartition>,
    wakeup: Wakeup,
    /// When it last acted on the group (a `poll`, `commit`…), and whether it is inside a
    /// `poll` now (a member blocked in a long poll is alive).
    last_active: Instant,
    polling: bool,
    /// Kafka's `max.poll.interval.ms`: past it, an idle member may be evicted.
    max_poll_interval: Duration,
}

impl Member {
    fn expired(&self, now: Instant) -> bool {
        !self.polling && now.saturating_duration_since(self.last_active) > self.max_poll_interval
    }
}

struct GroupState {
    assignor: Arc<dyn Assignor>,
    generation: u64,
    members: BTreeMap<String, Member>,
    /// Who holds each partition: the single source of truth that no partition has two owners.
    owners: HashMap<TopicPartition, String>,
    /// Partition counts of the subscribed topics at the last rebalance.
    counts: BTreeMap<String, u32>,
}

pub(crate) struct CoordinatorInner {
    pub(crate) store: Arc<dyn LogStore>,
    pub(crate) offsets: OffsetStore,
    groups: Mutex<HashMap<String, GroupState>>,
    next_member: std::sync::atomic::AtomicU64,
    dir: PathBuf,
    /// State other layers keep per coordinator, one value per type (the order layer's lease
    /// table): shared by every consumer made from this coordinator, gone with it.
    extensions: Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
}

impl Drop for CoordinatorInner {
    fn drop(&mut self) {
        let key = store_key(&self.store);
        SERVED.lock().retain(|k| *k != key);
    }
}

/// The consumer groups of one store: their durable committed offsets (in the internal topic
/// `__consumer_offsets`) and the members of each group in this process, whose subscribed
/// topics' partitions it assigns with the group's [`Assignor`] and moves on every join, leave
/// and partition increase — revoking a partition from its old owner before assigning it.
///
/// One coordinator per store, explicitly made and shared (no process-wide registry of
/// groups): every [`Consumer`](super::Consumer) of the store is made from it. A second
/// coordinator of the same store while the first is alive is refused with
/// [`Error::InvalidArgument`] (share the first: it is cheap to clone); a second *process*
/// cannot open the store at all (its `LOCK` file: [`Error::Locked`]).
/// Cloning gives another handle to the same coordinator.
///
/// ```
/// use std::sync::Arc;
/// use duolog::{LogStore, StoreOptions};
/// use duolog::consumer::GroupCoordinator;
/// # fn main() -> duolog::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
/// let groups = GroupCoordinator::new(Arc::clone(&store))?;
/// assert!(groups.committed_offsets("billing").is_empty());
/// assert!(GroupCoordinator::new(Arc::clone(&store)).is_err(), "one per store");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GroupCoordinator {
    pub(crate) inner: Arc<CoordinatorInner>,
}

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl GroupCoordinator {
    /// Serves the groups of `store`: creates `__consumer_offsets` on first use (compacted) and
    /// loads every group's committed offsets by reading it once from its start.
    pub fn new(store: Arc<dyn LogStore>) -> Result<GroupCoordinator> {
        let dir = store.dir().to_path_buf();
        let key = store_key(&store);
        {
            let mut served = SERVED.lock();
            if served.contains(&key) {
                return Err(Error::InvalidArgument(format!(
                    "a GroupCoordinator already serves the store at {}: clone that one",
                    dir.display()
                )));
            }
            served.push(key);
        }
        let offsets = match OffsetStore::open(Arc::clone(&store)) {
            Ok(o) => o,
            Err(e) => {
                SERVED.lock().retain(|k| *k != key);
                return Err(e);
            }
        };
        Ok(GroupCoordinator {
            inner: Arc::new(CoordinatorInner {
                store,
                offsets,
                groups: Mutex::new(HashMap::new()),
                next_member: std::sync::atomic::AtomicU64::new(1),
                dir,
                extensions: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The store it serves.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions};
    /// # use duolog::consumer::{GroupCoordinator, OFFSETS_TOPIC};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// let groups = GroupCoordinator::new(store)?;
    /// assert!(groups.store().describe_topic(OFFSETS_TOPIC).is_ok());
    /// # Ok(()) }
    /// ```
    pub fn store(&self) -> &Arc<dyn LogStore> {
        &self.inner.store
    }

    /// A group's committed offsets: topic → partition → next offset to consume (see
    /// [`commit_offsets`](Self::commit_offsets) for an example).
    pub fn committed_offsets(&self, group: &str) -> OffsetTable {
        self.inner.offsets.table(group)
    }

    /// Every group that has committed offsets in this store (loaded at open or committed
    /// since), sorted by name: what `kafka-consumer-groups --list` shows. Members alone do not
    /// make a group appear here; a commit does.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions};
    /// # use duolog::consumer::GroupCoordinator;
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("orders", duolog::TopicConfig::with_partitions(2))?;
    /// let groups = GroupCoordinator::new(store)?;
    /// assert!(groups.groups().is_empty());
    /// groups.commit_offsets("shipping", &[("orders", 0, 3)])?;
    /// groups.commit_offsets("billing", &[("orders", 1, 5)])?;
    /// assert_eq!(groups.groups(), ["billing", "shipping"]);
    /// # Ok(()) }
    /// ```
    pub fn groups(&self) -> Vec<String> {
        self.inner.offsets.groups()
    }

    /// Commits offsets for a group from outside any consumer (an admin reset, Kafka's
    /// `kafka-consumer-groups --reset-offsets`), atomically and durably. Members that hold
    /// those partitions keep reading from their positions; new owners start from these. The
    /// topics must exist (`UnknownTopic` otherwise); the partitions are not checked.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions};
    /// # use duolog::consumer::GroupCoordinator;
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// # store.create_topic("t", duolog::TopicConfig::with_partitions(2))?;
    /// let groups = GroupCoordinator::new(store)?;
    /// groups.commit_offsets("g", &[("t", 0, 10), ("t", 1, 7)])?;
    /// assert_eq!(groups.committed_offsets("g")["t"][&1], 7);
    /// # Ok(()) }
    /// ```
    pub fn commit_offsets(&self, group: &str, offsets: &[(&str, u32, u64)]) -> Result<()> {
        validate_group(group)?;
        let owned: Vec<(String, u32, u64)> = offsets
            .iter()
            .map(|&(t, p, o)| (t.to_owned(), p, o))
            .collect();
        self.inner.offsets.commit(group, &owned)
    }

    /// Members of a group in this process and the partitions each holds now, sorted by member
    /// id. No partition appears twice.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use duolog::{LogStore, StoreOptions, TopicConfig};
    /// use duolog::consumer::{Consumer, ConsumerConfig, GroupCoordinator};
    /// # fn main() -> duolog::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let store: Arc<dyn LogStore> = Arc::from(duolog::open(dir.path(), StoreOptions::default())?);
    /// store.create_topic("t", TopicConfig::with_partitions(4))?;
    /// let groups = GroupCoordinator::new(store)?;
    /// let (a, b) = (Consumer::new(&groups, ConsumerConfig::new("g"))?, Consumer::new(&groups, ConsumerConfig::new("g"))?);
    /// a.subscribe(&["t"])?;
    /// b.subscribe(&["t"])?;
    /// for _ in 0..2 {
    ///     a.poll(std::time::Duration::ZERO)?; // the second poll revokes what moved to `b`
    ///     b.poll(std::time::Duration::ZERO)?;
    /// }
    /// let owners = groups.owners("g");
    /// assert_eq!(owners[a.member_id()].len(), 2);
    /// assert_eq!(owners[b.member_id()].len(), 2);
    /// assert!(groups.generation("g") >= 2);
    /// # Ok(()) }
    /// ```
    pub fn owners(&self, group: &str) -> BTreeMap<String, Vec<TopicPartition>> {
        let groups = self.inner.groups.lock();
        groups
            .get(group)
            .map(|g| {
                g.members
                    .iter()
                    .map(|(id, m)| (id.clone(), m.owned.iter().cloned().collect()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many rebalances a group has gone through in this process (see
    /// [`owners`](Self::owners) for an example).
    pub fn generation(&self, group: &str) -> u64 {
        self.inner
            .groups
            .lock()
            .get(group)
            .map_or(0, |g| g.generation)
    }
}

impl GroupCoordinator {
    /// A transaction's offset records for the group of `meta` (see `OffsetStore::append_txn`).
    /// With a member id, every partition must be held by that member now (else
    /// `NotAssigned`), checked under the group's commit lock, which an eviction takes too.
    pub(crate) fn append_txn_offsets(
        &self,
        meta: &super::ConsumerGroupMetadata,
        offsets: &[(String, u32, u64)],
        producer_id: i64,
        append: impl FnOnce(Vec<crate::Message>) -> Result<crate::AppendResult>,
    ) -> Result<crate::AppendResult> {
        let group = meta.group();
        let check = || {
            let Some(member) = meta.member_id() else {
                return Ok(());
            };
            for (topic, partition, _) in offsets {
                let tp = super::TopicPartition::new(topic.as_str(), *partition);
                if !self.inner.holds(group, member, &tp) {
                    return Err(Error::NotAssigned {
                        group: group.to_owned(),
                        topic: topic.clone(),
                        partition: *partition,
                    });
                }
            }
            Ok(())
        };
        self.inner
            .offsets
            .append_txn(group, offsets, producer_id, check, append)
    }

    /// The transaction of `producer_id` ended: its offsets apply (commit) or are dropped.
    pub(crate) fn complete_txn_offsets(&self, producer_id: i64, commit: bool) {
        self.inner.offsets.complete_txn(producer_id, commit);
    }

    /// Reads the offsets that a transaction left open at load time kept out of reach.
    pub(crate) fn reload_offsets(&self) -> Result<()> {
        self.inner.offsets.reload()
    }
}

pub(crate) fn validate_group(group: &str) -> Result<()> {
    if group.is_empty() || group.len() > 255 {
        return Err(Error::InvalidArgument(format!(
            "a group name needs 1 to 255 bytes, not {}",
            group.len()
        )));
    }
    Ok(())
}

impl CoordinatorInner {
    /// The coordinator's one value of type `T` (made with `Default` on first use): how a layer
    /// above keeps state shared by all consumers of this coordinator without the consumer
    /// layer knowing its type.
    pub(crate) fn extension<T: std::any::Any + Send + Sync + Default>(&self) -> Arc<T> {
        let mut ext = self.extensions.lock();
        for e in ext.iter() {
            if let Ok(t) = Arc::clone(e).downcast::<T>() {
                return t;
            }
        }
        let t = Arc::new(T::default());
        ext.push(Arc::clone(&t) as Arc<dyn std::any::Any + Send + Sync>);
        t
    }

    pub(crate) fn new_member_id(&self, prefix: &str) -> String {
        let n = self
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}-{n:06}")
    }

    /// Adds a member (or replaces its subscription) and rebalances.
    pub(crate) fn join(
        &self,
        group: &str,
        member: &str,
        topics: BTreeSet<String>,
        assignor: &Arc<dyn Assignor>,
        wakeup: &Wakeup,
        max_poll_interval: Duration,
    ) -> Result<()> {
        let mut groups = self.groups.lock();
        let g = groups
            .entry(group.to_owned())
            .or_insert_with(|| GroupState {
                assignor: Arc::clone(assignor),
                generation: 0,
                members: BTreeMap::new(),
                owners: HashMap::new(),
                counts: BTreeMap::new(),
            });
        if g.members.is_empty() {
            g.assignor = Arc::clone(assignor);
        } else if g.assignor.name() != assignor.name() {
            return Err(Error::InvalidArgument(format!(
                "group {group:?} assigns with {:?}; a member cannot join with {:?}",
                g.assignor.name(),
                assignor.name()
            )));
        }
        match g.members.get_mut(member) {
            Some(m) => m.topics = topics,
            None => {
                g.members.insert(
                    member.to_owned(),
                    Member {
                        topics,
                        target: BTreeSet::new(),
                        owned: BTreeSet::new(),
                        wakeup: wakeup.clone(),
                        last_active: Instant::now(),
                        polling: false,
                        max_poll_interval,
                    },
                );
            }
        }
        self.rebalance(g);
        Ok(())
    }

    /// Removes a member: whatever it still holds is free at once (a dropped member cannot
    /// read any more), and the rest of the group rebalances.
    pub(crate) fn leave(&self, group: &str, member: &str) {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return;
        };
        let Some(m) = g.members.remove(member) else {
            return;
        };
        for tp in &m.owned {
            g.owners.remove(tp);
        }
        self.rebalance(g);
        for m in g.members.values() {
            m.wakeup.wake();
        }
        if g.members.is_empty() {
            groups.remove(group);
        }
    }

    /// Rebalances if a subscribed topic's partition count changed since the last rebalance.
    pub(crate) fn check_metadata(&self, group: &str) {
        let mut groups = self.groups.lock();
        if let Some(g) = groups.get_mut(group)
            && self.counts(g) != g.counts
        {
            self.rebalance(g);
        }
    }

    fn counts(&self, g: &GroupState) -> BTreeMap<String, u32> {
        let topics: BTreeSet<&String> = g.members.values().flat_map(|m| &m.topics).collect();
        topics
            .into_iter()
            .map(|t| {
                let n = self.store.describe_topic(t).map_or(0, |c| c.partitions);
                (t.clone(), n)
            })
            .collect()
    }

    /// New targets for every member; members whose target changed are woken to act on it.
    fn rebalance(&self, g: &mut GroupState) {
        let counts = self.counts(g);
        let subs: Vec<MemberSubscription> = g
            .members
            .iter()
            .map(|(id, m)| MemberSubscription {
                member_id: id.clone(),
                topics: m.topics.clone(),
                previous: m.target.clone(),
            })
            .collect();
        let mut assignment = g.assignor.assign(&subs, &counts);
        if check_assignment(&subs, &counts, &assignment).is_err() {
            // A custom assignor broke the rules: the group still needs an assignment.
            assignment = Averagely.assign(&subs, &counts);
        }
        for ((_, m), parts) in g.members.iter_mut().zip(assignment) {
            let target: BTreeSet<TopicPartition> = parts.into_iter().collect();
            if target != m.target {
                m.target = target;
                m.wakeup.wake();
            }
        }
        g.counts = counts;
        g.generation += 1;
    }

    /// Partitions the member holds but is no longer assigned: it must revoke them.
    pub(crate) fn to_revoke(&self, group: &str, member: &str) -> Vec<TopicPartition> {
        let groups = self.groups.lock();
        groups
            .get(group)
            .and_then(|g| g.members.get(member))
            .map(|m| m.owned.difference(&m.target).cloned().collect())
            .unwrap_or_default()
    }

    /// The member has revoked these: they are free for their new owners, who are woken.
    pub(crate) fn release(&self, group: &str, member: &str, parts: &[TopicPartition]) {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return;
        };
        if let Some(m) = g.members.get_mut(member) {
            for tp in parts {
                if m.owned.remove(tp) {
                    g.owners.remove(tp);
                }
            }
        }
        for (id, m) in &g.members {
            if id != member && parts.iter().any(|tp| m.target.contains(tp)) {
                m.wakeup.wake();
            }
        }
    }

    /// Takes the member's assigned partitions that nobody holds any more; returns them, and
    /// the members that hold others of them but have not acted for longer than their
    /// `max_poll_interval` (to be evicted with [`evict`](Self::evict)). Counts as activity.
    pub(crate) fn claim(&self, group: &str, member: &str) -> (Vec<TopicPartition>, Vec<String>) {
        let mut groups = self.groups.lock();
        let Some(g) = groups.get_mut(group) else {
            return (Vec::new(), Vec::new());
        };
        let now = Instant::now();
        let GroupState {
            members, owners, ..
        } = g;
        let Some(m) = members.get_mut(member) else {
            return (Vec::new(), Vec::new());
        };
        m.last_active = now;
        let mut claimed = Vec::new();
        let mut holders = BTreeSet::new();
        for tp in m.target.difference(&m.owned) {
            match owners.get(tp) {
                None => {
                    owners.insert(tp.clone(), member.to_owned());
                    claimed.push(tp.clone());
                }
                Some(other) => {
                    holders.insert(other.clone());
                }
            }
        }
        m.owned.extend(claimed.iter().cloned());
        let expired = holders
            .into_iter()
            .filter(|h| members.get(h).is_some_and(|x| x.expired(now)))
            .collect();
        (claimed, expired)
    }

    /// Removes a member that stopped polling (Kafka: the member left the group after
    /// `max.poll.interval.ms`). Its partitions are free at once; its next `poll` finds itself
    /// evicted, drops its positions without committing them and joins again. Taken under
    /// the group's commit lock, so a commit of the evicted member that passed its ownership
    /// check has landed before anyone else can take its partitions.
    pub(crate) fn evict(&self, group: &str, member: &str) {
        self.offsets.with_commit_lock(group, || {
            let still_expired = self
                .groups
                .lock()
                .get(group)
                .and_then(|g| g.members.get(member))
                .is_some_and(|m| m.expired(Instant::now()));
            if still_expired {
                self.leave(group, member);
            }
        });
    }

    /// Whether `member` is (still) in the group.
    pub(crate) fn is_member(&self, group: &str, member: &str) -> bool {
        self.groups
            .lock()
            .get(group)
            .is_some_and(|g| g.members.contains_key(member))
    }

    /// Marks the member as inside `poll` (alive however long it blocks) or out of it.
    pub(crate) fn set_polling(&self, group: &str, member: &str, polling: bool) {
        if let Some(m) = self
            .groups
            .lock()
            .get_mut(group)
            .and_then(|g| g.members.get_mut(member))
        {
            m.polling = polling;
            m.last_active = Instant::now();
        }
    }

    /// Whether the member holds `tp` now.
    pub(crate) fn holds(&self, group: &str, member: &str, tp: &TopicPartition) -> bool {
        self.groups
            .lock()
            .get(group)
            .and_then(|g| g.owners.get(tp))
            .is_some_and(|o| o == member)
    }
}
