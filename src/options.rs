//! Store options with their documented defaults.
//!
//! One style across the crate: plain structs with public fields and `Default`, built with
//! struct-update syntax (`StoreOptions { flush: FlushPolicy::Sync, ..Default::default() }`).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::{FileSystem, RealFs};
use crate::store::EngineKind;

/// When appended bytes are fsync'ed.
///
/// What survives, per policy:
/// - `Async`: a process crash loses nothing written (the page cache survives it); a power loss
///   loses at most the last `interval` of appends.
/// - `Sync`: nothing acknowledged by [`LogStore::append`](crate::LogStore::append) is lost by a
///   process crash or a power loss. Concurrent appenders share one fsync (group commit).
/// - `Every`: like `Async`, but a flush also starts once `messages` or `bytes` have piled up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Page cache plus a background flush every `interval`.
    Async {
        /// Time between background flushes; at least 1 ms. `Duration::MAX` (Kafka's default
        /// `flush.ms`) means no timed flush: data becomes durable at `sync`, `close` or a
        /// checkpoint.
        interval: Duration,
    },
    /// Group commit: `append` returns after the fsync that covers it.
    Sync,
    /// A background flush after `messages` messages, `bytes` bytes or `interval`, whichever first.
    Every {
        /// Unflushed messages that start a flush; at least 1.
        messages: u64,
        /// Unflushed bytes that start a flush; at least 1.
        bytes: u64,
        /// Longest time between flushes; at least 1 ms (`Duration::MAX`: no timed flush).
        interval: Duration,
    },
}

impl Default for FlushPolicy {
    /// `Async { interval: 500 ms }`, RocketMQ's default flush interval for async flush.
    fn default() -> Self {
        FlushPolicy::Async {
            interval: Duration::from_millis(500),
        }
    }
}

impl FlushPolicy {
    /// Whether this policy flushes so often (per append, per few messages, or at intervals
    /// under 100 ms) that each flush writing only the pages it changed matters.
    pub(crate) fn flushes_often(&self) -> bool {
        match self {
            FlushPolicy::Async { interval } => *interval < Duration::from_millis(100),
            FlushPolicy::Sync | FlushPolicy::Every { .. } => true,
        }
    }

    /// The longest the background flusher sleeps under this policy.
    pub(crate) fn interval(&self) -> Duration {
        match *self {
            FlushPolicy::Async { interval } | FlushPolicy::Every { interval, .. } => interval,
            FlushPolicy::Sync => Duration::from_millis(200),
        }
    }
}

/// Options of the CommitLog engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitLogOptions {
    /// Size of each commit-log file. Default: 1 GiB (RocketMQ's default). Minimum 4 KiB,
    /// maximum `i32::MAX` bytes (the blank record that ends a file stores its length in an i32).
    pub file_size: u64,
    /// Entries per consume-queue file (20 bytes each). Default: 300,000 (RocketMQ's default).
    /// At least 1; a file of at most `i32::MAX` bytes (107,374,182 units).
    pub consume_queue_units: u32,
    /// Delete commit-log files whose newest record is older than this. Default: 72 hours
    /// (RocketMQ's `fileReservedTime`). `None` keeps files forever, and so does a duration
    /// longer than time since the epoch (`Duration::MAX`).
    pub retention: Option<Duration>,
    /// Delete the oldest commit-log files while the log is larger than this. Default: none.
    pub retention_bytes: Option<u64>,
    /// How often the checkpoint is written (it bounds the work of an unclean open). Default: 1 s.
    /// At least 1 ms; `Duration::MAX`: only at `close`.
    pub checkpoint_interval: Duration,
    /// How often retention runs in the background. Default: 10 s. At least 1 ms;
    /// `Duration::MAX`: only when `enforce_retention` is called.
    pub retention_check_interval: Duration,
    /// Fault the pages of commit-log and consume-queue files in on a background thread ahead of
    /// the appender (RocketMQ's `warmMapedFileEnable`), taking the kernel's zero-fill of fresh
    /// pages off the append path. Default: `true`.
    pub warm_files: bool,
}

impl Default for CommitLogOptions {
    fn default() -> Self {
        CommitLogOptions {
            file_size: 1 << 30,
            consume_queue_units: 300_000,
            retention: Some(Duration::from_secs(72 * 3600)),
            retention_bytes: None,
            checkpoint_interval: Duration::from_secs(1),
            retention_check_interval: Duration::from_secs(10),
            warm_files: true,
        }
    }
}

/// Options of the segmented (Kafka-style) engine. Defaults are Kafka's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentedOptions {
    /// Roll to a new segment before a segment's log would exceed this. Default: 1 GiB
    /// (`segment.bytes`).
    pub segment_bytes: u64,
    /// Roll a segment older than this at the next append. Default: 7 days (`segment.ms`).
    pub segment_ms: Duration,
    /// Log bytes between two offset-index entries. Default: 4096 (`index.interval.bytes`).
    pub index_interval_bytes: u64,
    /// Preallocated size of each index file; a full index rolls the segment. Default: 10 MiB
    /// (`segment.index.bytes`). Many partitions want this smaller: the active segment of every
    /// partition holds two such files.
    pub max_index_bytes: u64,
    /// Delete segments whose newest record is older than this. Default: 7 days
    /// (`retention.ms`). `None` keeps them.
    pub retention: Option<Duration>,
    /// Delete the oldest segments while a partition is larger than this. Default: none
    /// (`retention.bytes` = -1).
    pub retention_bytes: Option<u64>,
    /// How often recovery points are written (they bound an unclean open). Default: 1 s.
    /// At least 1 ms; `Duration::MAX`: only at `close`.
    pub checkpoint_interval: Duration,
    /// How often retention runs in the background. Default: 10 s. At least 1 ms;
    /// `Duration::MAX`: only when `enforce_retention` is called.
    pub retention_check_interval: Duration,
}

impl Default for SegmentedOptions {
    fn default() -> Self {
        SegmentedOptions {
            segment_bytes: 1 << 30,
            segment_ms: Duration::from_secs(7 * 24 * 3600),
            index_interval_bytes: 4096,
            max_index_bytes: 10 << 20,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: None,
            checkpoint_interval: Duration::from_secs(1),
            retention_check_interval: Duration::from_secs(10),
        }
    }
}

/// Options of the key index (both engines). Defaults are RocketMQ's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexOptions {
    /// Index message keys, `KEYS` and `UNIQ_KEY` (RocketMQ's `messageIndexEnable`). Default: true.
    pub enabled: bool,
    /// Hash slots per index file. Default: 5,000,000 (`maxHashSlotNum`). At least 1.
    pub slots: u32,
    /// Entries per index file; a full file rolls to a new one. Default: 20,000,000
    /// (`maxIndexNum`), a 420 MB file. At least 1. A file (40 + 4 × `slots` + 20 ×
    /// (`max_entries` + 1) bytes) may not exceed `i32::MAX` bytes, as RocketMQ's int positions
    /// into it require. Neither size is checked while the index is disabled.
    pub max_entries: u32,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            enabled: true,
            slots: 5_000_000,
            max_entries: 20_000_000,
        }
    }
}

/// Options of the log cleaner (both engines), for topics whose cleanup policy compacts.
/// Defaults are Kafka's (`log.cleaner.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct CompactionOptions {
    /// Run the cleaner in the background (`log.cleaner.enable`). Default: `true`.
    /// [`LogStore::compact`](crate::LogStore::compact) cleans on demand either way.
    pub enabled: bool,
    /// Time between background passes (`log.cleaner.backoff.ms`). Default: 15 s. At least
    /// 1 ms; `Duration::MAX`: never in the background.
    pub check_interval: Duration,
    /// A partition is cleaned in the background once this share of its bytes is dirty
    /// (written since its last cleaning) (`min.cleanable.dirty.ratio`). Default: 0.5. 0 to 1.
    pub min_cleanable_dirty_ratio: f64,
    /// Memory of the key → offset map one pass builds, 24 bytes a key
    /// (`log.cleaner.dedupe.buffer.size`). A pass that fills it stops there and the next pass
    /// goes on, so any number of keys is cleaned within this memory. Default: 128 MiB. At
    /// least 1 KiB.
    pub offset_map_bytes: usize,
    /// Throttle on the bytes the cleaner reads and writes per second
    /// (`log.cleaner.io.max.bytes.per.second`). Default: `None`, unthrottled (Kafka's default).
    pub io_bytes_per_sec: Option<u64>,
    /// Store-wide `min.compaction.lag.ms`: records younger than this are never compacted.
    /// Default: 0.
    pub min_compaction_lag: Duration,
    /// Store-wide `delete.retention.ms`: a tombstone outlives its write by at least this
    /// before compaction may remove it. Default: 24 hours.
    pub delete_retention: Duration,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            enabled: true,
            check_interval: Duration::from_secs(15),
            min_cleanable_dirty_ratio: 0.5,
            offset_map_bytes: 128 << 20,
            io_bytes_per_sec: None,
            min_compaction_lag: Duration::ZERO,
            delete_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Options for opening or creating a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The engine of a *new* store. An existing store always opens with the engine that made it;
    /// asking for another is an error. Default: `None` (existing engine, or CommitLog when new).
    pub engine: Option<EngineKind>,
    /// Flush policy. Default: [`FlushPolicy::default`].
    pub flush: FlushPolicy,
    /// Largest encoded message accepted. Default: 4 MiB (RocketMQ's `maxMessageSize`).
    pub max_message_bytes: usize,
    /// Options of the CommitLog engine.
    pub commitlog: CommitLogOptions,
    /// Options of the segmented engine.
    pub segmented: SegmentedOptions,
    /// Options of the key index.
    pub index: IndexOptions,
    /// Options of the log cleaner (compacted topics).
    pub compaction: CompactionOptions,
    /// Bounds the files the store's caches keep open, whatever the number of partitions.
    /// Segmented engine: at most this many sealed segments open (each one descriptor and two
    /// mappings), and `8 × max_open_files` segments not sealed yet (the active ones: their log
    /// is mapped, so three mappings and no descriptor each); records the application holds keep
    /// at most `max_open_files` active logs' mappings alive on top (a read past that copies).
    /// CommitLog engine: consume-queue mappings hold no descriptor, so at most
    /// `16 × max_open_files` partitions keep their queues mapped (8,192 by default, well under
    /// the kernel's 65,530 mappings). Partitions beyond the bound reopen their files on use.
    /// The store's fixed files (its `LOCK`, the commit-log and key-index files, a few dozen at
    /// most) come on top. Default: 512, which leaves room under the usual soft limit of 1,024
    /// descriptors. Minimum 1.
    pub max_open_files: usize,
    /// How long a partition remembers an idempotent producer that wrote nothing to it (Kafka's
    /// `producer.id.expiration.ms`): after that, its state is dropped and its next batch must
    /// start a new sequence at 0. Bounds the producer state kept in memory and in snapshots.
    /// `Duration::MAX` never expires. Default: 1 day. Minimum 1 ms.
    pub producer_id_expiration: Duration,
    /// The storage every file operation goes through. Default: the real file system.
    pub fs: Arc<dyn FileSystem>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            engine: None,
            flush: FlushPolicy::default(),
            max_message_bytes: 4 << 20,
            commitlog: CommitLogOptions::default(),
            segmented: SegmentedOptions::default(),
            index: IndexOptions::default(),
            compaction: CompactionOptions::default(),
            max_open_files: 512,
            producer_id_expiration: Duration::from_secs(24 * 3600),
            fs: Arc::new(RealFs),
        }
    }
}

/// Shortest interval a background thread accepts: below it the thread would spin.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Largest mapped file of RocketMQ's formats (their positions are Java ints).
const MAX_FILE_BYTES: u64 = i32::MAX as u64;

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(what()))
    }
}

fn check_interval(name: &str, d: Duration) -> Result<()> {
    check(d >= MIN_INTERVAL, || {
        format!("{name} must be at least 1 ms (Duration::MAX for never), not {d:?}")
    })
}

impl StoreOptions {
    /// Refuses, with an error naming the option, what would stop or spin a background thread,
    /// divide by zero or overflow a format's field. Merely large values (`Duration::MAX`
    /// retention or intervals: "never") are accepted. Only the opened engine's options count.
    pub(crate) fn validate(&self, engine: EngineKind) -> Result<()> {
        match self.flush {
            FlushPolicy::Sync => {}
            FlushPolicy::Async { interval } => check_interval("flush interval (Async)", interval)?,
            FlushPolicy::Every {
                messages,
                bytes,
                interval,
            } => {
                check(messages >= 1 && bytes >= 1, || {
                    format!(
                        "flush thresholds (Every) must be at least 1 (FlushPolicy::Sync flushes \
                         every append), not messages {messages}, bytes {bytes}"
                    )
                })?;
                check_interval("flush interval (Every)", interval)?;
            }
        }
        let c = &self.compaction;
        check_interval("compaction.check_interval", c.check_interval)?;
        check((0.0..=1.0).contains(&c.min_cleanable_dirty_ratio), || {
            format!(
                "compaction.min_cleanable_dirty_ratio must be 0 to 1, not {}",
                c.min_cleanable_dirty_ratio
            )
        })?;
        check(c.offset_map_bytes >= 1024, || {
            format!(
                "compaction.offset_map_bytes must be at least 1024, not {}",
                c.offset_map_bytes
            )
        })?;
        check(c.io_bytes_per_sec != Some(0), || {
            "compaction.io_bytes_per_sec must be at least 1 (None: unthrottled)".to_owned()
        })?;
        check(self.max_open_files >= 1, || {
            "max_open_files must be at least 1".to_owned()
        })?;
        // Zero would forget every producer at once, so no retry could ever be recognised.
        check(self.producer_id_expiration >= MIN_INTERVAL, || {
            format!(
                "producer_id_expiration must be at least 1 ms (Duration::MAX: never), not {:?}",
                self.producer_id_expiration
            )
        })?;
        if self.index.enabled {
            let IndexOptions {
                slots, max_entries, ..
            } = self.index;
            check(slots >= 1, || "index.slots must be at least 1".to_owned())?;
            check(max_entries >= 1, || {
                "index.max_entries must be at least 1".to_owned()
            })?;
            let bytes = 40 + 4 * u64::from(slots) + 20 * (u64::from(max_entries) + 1);
            check(bytes <= MAX_FILE_BYTES, || {
                format!(
                    "index.slots ({slots}) and index.max_entries ({max_entries}) make a \
                     {bytes}-byte index file; at most {MAX_FILE_BYTES} bytes"
                )
            })?;
        }
        match engine {
            EngineKind::CommitLog => {
                let o = &self.commitlog;
                check(o.file_size <= MAX_FILE_BYTES, || {
                    format!(
                        "commitlog.file_size must be at most {MAX_FILE_BYTES} bytes, not {}",
                        o.file_size
                    )
                })?;
                let cq_bytes = u64::from(o.consume_queue_units) * 20;
                check(cq_bytes <= MAX_FILE_BYTES, || {
                    format!(
                        "commitlog.consume_queue_units must be at most {}, not {}",
                        MAX_FILE_BYTES / 20,
                        o.consume_queue_units
                    )
                })?;
                check_interval("commitlog.checkpoint_interval", o.checkpoint_interval)?;
                check_interval(
                    "commitlog.retention_check_interval",
                    o.retention_check_interval,
                )?;
            }
            EngineKind::Segmented => {
                let o = &self.segmented;
                // Index entries hold log positions as u32 and Kafka caps `segment.bytes` at
                // i32::MAX: a larger segment would overflow them.
                check((1024..=MAX_FILE_BYTES).contains(&o.segment_bytes), || {
                    format!(
                        "segmented.segment_bytes must be 1024 to {MAX_FILE_BYTES} bytes, not {}",
                        o.segment_bytes
                    )
                })?;
                check((24..=MAX_FILE_BYTES).contains(&o.max_index_bytes), || {
                    format!(
                        "segmented.max_index_bytes must be 24 to {MAX_FILE_BYTES} bytes, not {}",
                        o.max_index_bytes
                    )
                })?;
                check(o.index_interval_bytes >= 1, || {
                    "segmented.index_interval_bytes must be at least 1".to_owned()
                })?;
                check_interval("segmented.checkpoint_interval", o.checkpoint_interval)?;
                check_interval(
                    "segmented.retention_check_interval",
                    o.retention_check_interval,
                )?;
            }
        }
        Ok(())
    }
}
