//! Per-topic configuration: Kafka's config names onto [`TopicConfig`], and the effective values
//! an engine uses once the store-wide options fill what a topic leaves unset. Pure: no files.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::options::StoreOptions;
use crate::store::{CleanupPolicy, EngineKind, MessageOrder, TopicConfig};

/// Kafka's names of the per-topic configs duolog knows, in the order they are listed.
pub const TOPIC_CONFIG_NAMES: [&str; 9] = [
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "min.compaction.lag.ms",
    "delete.retention.ms",
    "message.order",
];

/// Largest file offset a segment's index can address (Kafka caps `segment.bytes` at it).
const MAX_SEGMENT_BYTES: u64 = i32::MAX as u64;

/// The values an engine applies to one topic: its overrides, else the store's options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Effective {
    pub(crate) policy: CleanupPolicy,
    /// `None`: no retention by time (or the policy does not delete).
    pub(crate) retention: Option<Duration>,
    /// `None`: no retention by size (or the policy does not delete).
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) segment_bytes: u64,
    pub(crate) segment_ms: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) min_compaction_lag: Duration,
    pub(crate) delete_retention: Duration,
}

fn ms(d: Duration) -> String {
    if d == Duration::MAX {
        "-1".to_owned()
    } else {
        d.as_millis().to_string()
    }
}

fn parse_ms(name: &str, value: &str, allow_forever: bool) -> Result<Duration> {
    match value.trim().parse::<i64>() {
        Ok(-1) if allow_forever => Ok(Duration::MAX),
        Ok(v) if v >= 0 => Ok(Duration::from_millis(v as u64)),
        _ => Err(Error::InvalidArgument(format!(
            "{name} must be a number of milliseconds{}, not {value:?}",
            if allow_forever { " (-1: forever)" } else { "" }
        ))),
    }
}

fn parse_bytes(name: &str, value: &str, allow_unlimited: bool) -> Result<u64> {
    match value.trim().parse::<i64>() {
        Ok(-1) if allow_unlimited => Ok(u64::MAX),
        Ok(v) if v >= 0 => Ok(v as u64),
        _ => Err(Error::InvalidArgument(format!(
            "{name} must be a number of bytes{}, not {value:?}",
            if allow_unlimited {
                " (-1: unlimited)"
            } else {
                ""
            }
        ))),
    }
}

impl TopicConfig {
    /// Sets one config by its Kafka name (`cleanup.policy`, `retention.ms`,
    /// `retention.bytes`, `segment.bytes`, `segment.ms`, `max.message.bytes`,
    /// `min.compaction.lag.ms`, `delete.retention.ms`, and duolog's `message.order`:
    /// `partition` or `global`), with Kafka's value syntax (`-1` for
    /// unlimited retention). An unknown name or a malformed value is an error naming it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        match name {
            "cleanup.policy" => {
                self.cleanup_policy = CleanupPolicy::from_name(value).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "cleanup.policy must be delete, compact or compact,delete, not {value:?}"
                    ))
                })?;
            }
            "retention.ms" => self.retention = Some(parse_ms(name, value, true)?),
            "retention.bytes" => self.retention_bytes = Some(parse_bytes(name, value, true)?),
            "segment.bytes" => self.segment_bytes = Some(parse_bytes(name, value, false)?),
            "segment.ms" => self.segment_ms = Some(parse_ms(name, value, false)?),
            "max.message.bytes" => {
                let v = parse_bytes(name, value, false)?;
                self.max_message_bytes = Some(usize::try_from(v).unwrap_or(usize::MAX));
            }
            "min.compaction.lag.ms" => {
                self.min_compaction_lag = Some(parse_ms(name, value, false)?);
            }
            "delete.retention.ms" => self.delete_retention = Some(parse_ms(name, value, false)?),
            "message.order" => {
                self.message_order = MessageOrder::from_name(value).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "message.order must be partition or global, not {value:?}"
                    ))
                })?;
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown topic config {name:?} (known: {})",
                    TOPIC_CONFIG_NAMES.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Drops the topic's override of one config (Kafka's `--delete-config`), so the store's
    /// default applies again (`cleanup.policy` goes back to `delete`).
    pub fn unset(&mut self, name: &str) -> Result<()> {
        match name {
            "cleanup.policy" => self.cleanup_policy = CleanupPolicy::Delete,
            "retention.ms" => self.retention = None,
            "retention.bytes" => self.retention_bytes = None,
            "segment.bytes" => self.segment_bytes = None,
            "segment.ms" => self.segment_ms = None,
            "max.message.bytes" => self.max_message_bytes = None,
            "min.compaction.lag.ms" => self.min_compaction_lag = None,
            "delete.retention.ms" => self.delete_retention = None,
            "message.order" => self.message_order = MessageOrder::Partition,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "unknown topic config {name:?} (known: {})",
                    TOPIC_CONFIG_NAMES.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The configs this topic sets, by Kafka name, in [`TOPIC_CONFIG_NAMES`] order (the
    /// cleanup policy only when it is not the default `delete`, the message order only when
    /// `global`). [`TopicConfig::set`] reads
    /// every pair back to the same config.
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if self.cleanup_policy != CleanupPolicy::Delete {
            v.push(("cleanup.policy", self.cleanup_policy.name().to_owned()));
        }
        if let Some(d) = self.retention {
            v.push(("retention.ms", ms(d)));
        }
        if let Some(b) = self.retention_bytes {
            let s = if b == u64::MAX {
                "-1".to_owned()
            } else {
                b.to_string()
            };
            v.push(("retention.bytes", s));
        }
        if let Some(b) = self.segment_bytes {
            v.push(("segment.bytes", b.to_string()));
        }
        if let Some(d) = self.segment_ms {
            v.push(("segment.ms", ms(d)));
        }
        if let Some(b) = self.max_message_bytes {
            v.push(("max.message.bytes", b.to_string()));
        }
        if let Some(d) = self.min_compaction_lag {
            v.push(("min.compaction.lag.ms", ms(d)));
        }
        if let Some(d) = self.delete_retention {
            v.push(("delete.retention.ms", ms(d)));
        }
        if self.message_order != MessageOrder::Partition {
            v.push(("message.order", self.message_order.name().to_owned()));
        }
        v
    }

    /// Every config of the topic by Kafka name with the value that applies in a store opened
    /// with `options` and engine `engine`, and whether the topic overrides it (Kafka's
    /// `kafka-configs --describe --all`).
    ///
    /// ```
    /// use duolog::{EngineKind, StoreOptions, TopicConfig};
    /// let mut config = TopicConfig::default();
    /// config.set("retention.ms", "60000")?;
    /// let all = config.describe(&StoreOptions::default(), EngineKind::Segmented);
    /// assert!(all.contains(&("retention.ms", "60000".to_owned(), true)));
    /// assert!(all.contains(&("cleanup.policy", "delete".to_owned(), false)));
    /// # Ok::<(), duolog::Error>(())
    /// ```
    pub fn describe(
        &self,
        options: &StoreOptions,
        engine: EngineKind,
    ) -> Vec<(&'static str, String, bool)> {
        let e = self.effective(options, engine);
        let set: Vec<&str> = self.overrides().iter().map(|(n, _)| *n).collect();
        let limit = |v: Option<u64>| v.map_or("-1".to_owned(), |b| b.to_string());
        let time = |v: Option<Duration>| v.map_or("-1".to_owned(), ms);
        let values = [
            e.policy.name().to_owned(),
            time(e.retention),
            limit(e.retention_bytes),
            e.segment_bytes.to_string(),
            ms(e.segment_ms),
            e.max_message_bytes.to_string(),
            ms(e.min_compaction_lag),
            ms(e.delete_retention),
            self.message_order.name().to_owned(),
        ];
        TOPIC_CONFIG_NAMES
            .iter()
            .zip(values)
            .map(|(name, value)| (*name, value, set.contains(name)))
            .collect()
    }

    /// What an engine applies: this topic's overrides over the store's options. Retention by
    /// time and size: the topic's, else the engine's (`commitlog.retention*` or
    /// `segmented.retention*`); `Duration::MAX` and `u64::MAX` mean none. `segment.*`: the
    /// segmented options' on both engines.
    pub(crate) fn effective(&self, options: &StoreOptions, engine: EngineKind) -> Effective {
        let (retention, retention_bytes) = match engine {
            EngineKind::CommitLog => (
                options.commitlog.retention,
                options.commitlog.retention_bytes,
            ),
            EngineKind::Segmented => (
                options.segmented.retention,
                options.segmented.retention_bytes,
            ),
        };
        let retention = self.retention.or(retention).filter(|d| *d != Duration::MAX);
        let retention_bytes = self
            .retention_bytes
            .or(retention_bytes)
            .filter(|b| *b != u64::MAX);
        let deletes = self.cleanup_policy.deletes();
        Effective {
            policy: self.cleanup_policy,
            retention: retention.filter(|_| deletes),
            retention_bytes: retention_bytes.filter(|_| deletes),
            segment_bytes: self
                .segment_bytes
                .unwrap_or(options.segmented.segment_bytes),
            segment_ms: self.segment_ms.unwrap_or(options.segmented.segment_ms),
            max_message_bytes: self.max_message_bytes.unwrap_or(options.max_message_bytes),
            min_compaction_lag: self
                .min_compaction_lag
                .unwrap_or(options.compaction.min_compaction_lag),
            delete_retention: self
                .delete_retention
                .unwrap_or(options.compaction.delete_retention),
        }
    }

    /// Refuses overrides no engine can honour, naming the config.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.message_order == MessageOrder::Global && self.partitions != 1 {
            return Err(Error::InvalidArgument(format!(
                "a globally ordered topic (message.order=global) has exactly one partition, not {}",
                self.partitions
            )));
        }
        if let Some(b) = self.segment_bytes
            && !(1024..=MAX_SEGMENT_BYTES).contains(&b)
        {
            return Err(Error::InvalidArgument(format!(
                "segment.bytes must be 1024 to {MAX_SEGMENT_BYTES}, not {b}"
            )));
        }
        if self
            .segment_ms
            .is_some_and(|d| d < Duration::from_millis(1))
        {
            return Err(Error::InvalidArgument(
                "segment.ms must be at least 1 ms".into(),
            ));
        }
        // What the catalog cannot write back in Kafka's syntax (a signed 64-bit number, `-1`
        // only for unlimited retention) is refused here rather than making the store unopenable.
        const MAX_MS: u128 = i64::MAX as u128;
        let too_long = |d: Option<Duration>| d.is_some_and(|d| d.as_millis() > MAX_MS);
        for (name, d) in [
            ("segment.ms", self.segment_ms),
            ("min.compaction.lag.ms", self.min_compaction_lag),
            ("delete.retention.ms", self.delete_retention),
            (
                "retention.ms",
                self.retention.filter(|d| *d != Duration::MAX),
            ),
        ] {
            if too_long(d) {
                return Err(Error::InvalidArgument(format!(
                    "{name} must be at most {MAX_MS} ms"
                )));
            }
        }
        if self
            .retention_bytes
            .is_some_and(|b| b != u64::MAX && b > i64::MAX as u64)
        {
            return Err(Error::InvalidArgument(format!(
                "retention.bytes must be at most {} (or unlimited)",
                i64::MAX
            )));
        }
        if self
            .max_message_bytes
            .is_some_and(|b| b as u64 > i64::MAX as u64)
        {
            return Err(Error::InvalidArgument(format!(
                "max.message.bytes must be at most {}",
                i64::MAX
            )));
        }
        if self.max_message_bytes == Some(0) {
            return Err(Error::InvalidArgument(
                "max.message.bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_override_reads_back_through_set() {
        let mut c = TopicConfig::with_partitions(2);
        for (name, value) in [
            ("cleanup.policy", "delete, compact"),
            ("retention.ms", "-1"),
            ("retention.bytes", "1048576"),
            ("segment.bytes", "4096"),
            ("segment.ms", "60000"),
            ("max.message.bytes", "1000"),
            ("min.compaction.lag.ms", "0"),
            ("delete.retention.ms", "5000"),
            ("message.order", "global"),
        ] {
            c.set(name, value).unwrap();
        }
        assert_eq!(c.cleanup_policy, CleanupPolicy::CompactDelete);
        assert_eq!(c.retention, Some(Duration::MAX));
        let mut back = TopicConfig::with_partitions(2);
        for (n, v) in c.overrides() {
            back.set(n, &v).unwrap();
        }
        assert_eq!(back, c);
        assert_eq!(c.overrides().len(), TOPIC_CONFIG_NAMES.len());
        for name in TOPIC_CONFIG_NAMES {
            c.unset(name).unwrap();
        }
        assert_eq!(c, TopicConfig::with_partitions(2));
        assert!(c.unset("retention.hours").is_err());
    }

    #[test]
    fn bad_names_and_values_are_errors_naming_them() {
        let mut c = TopicConfig::default();
        for (name, value) in [
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("segment.bytes", "-1"),
            ("cleanup.policy", "compact,,delete"),
            ("cleanup.policy", ""),
            ("retention.hours", "1"),
        ] {
            let e = c.set(name, value).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
        assert_eq!(c, TopicConfig::default());
    }

    #[test]
    fn effective_values_take_the_store_defaults_and_the_policy() {
        let opts = StoreOptions::default();
        let mut c = TopicConfig::default();
        let e = c.effective(&opts, EngineKind::Segmented);
        assert_eq!(e.retention, opts.segmented.retention);
        assert_eq!(e.delete_retention, Duration::from_secs(24 * 3600));
        c.cleanup_policy = CleanupPolicy::Compact;
        c.retention = Some(Duration::from_secs(1));
        let e = c.effective(&opts, EngineKind::CommitLog);
        assert_eq!(e.retention, None, "compact alone deletes nothing by age");
        c.cleanup_policy = CleanupPolicy::CompactDelete;
        let e = c.effective(&opts, EngineKind::CommitLog);
        assert_eq!(e.retention, Some(Duration::from_secs(1)));
        c.retention = Some(Duration::MAX);
        assert_eq!(c.effective(&opts, EngineKind::CommitLog).retention, None);
    }
}
