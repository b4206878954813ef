//! Retry and dead letters for the [`PushConsumer`](super::PushConsumer), after RocketMQ's
//! `sendMessageBack`: a record its handler failed (`ReconsumeLater`, or a panic) is copied to
//! the group's retry topic `%RETRY%<group>` ([`retry_topic`]), to be delivered again after the
//! [`RetryPolicy`]'s back-off; once it has been retried `max_reconsume_times` times, the next
//! failure copies it to the dead-letter topic `%DLQ%<group>` ([`dlq_topic`]) instead, where
//! nobody consumes it automatically.
//!
//! This module owns those two topics (one partition each, made on first use) and the
//! properties it stamps on the copies: [`RETRY_TOPIC`] (the original topic),
//! [`ORIGIN_PARTITION`], [`ORIGIN_OFFSET`], [`ORIGIN_MESSAGE_ID`] (`topic-partition-offset` of
//! the first delivery; all four kept across retries) and [`RECONSUME_TIMES`] (RocketMQ's
//! `RECONSUME_TIME`: how many times the copy has been sent back). It touches no other topic
//! and no file.
//!
//! **The delayed send** goes through the delay layer ([`DelayQueue`]): the copy is scheduled
//! for `%RETRY%<group>` at now + the back-off (at most the queue's `max_delay`), waits durably
//! in the layer's topics with nothing per copy in memory, and arrives in the retry topic once
//! due (never early: the layer delivers once the exact due time has passed), where the consumer
//! handles it at once. Dead letters are appended directly.
//!
//! **What can repeat after a crash** (delivery is at least once, never lost): the push consumer
//! commits past a failed record only after its copy was scheduled (appended to the delay
//! layer's topic) *and* the store synced, so a crash between the handler and the commit finds
//! either no copy (the original is handled again) or a copy and the original's uncommitted
//! offset (the original is handled again *and*
//! its copy is delivered later: one extra delivery, whose `RECONSUME_TIMES` is one ahead). The
//! same holds for a retry record that fails again: its next copy may exist while its own offset
//! in the retry topic was not committed.

use std::time::Duration;

use super::pull::ConsumerRecord;
use crate::delay::{DelayHandle, DelayQueue, LAYER_PROPERTIES};
use crate::error::{Error, Result};
use crate::store::{LogStore, Message, TopicConfig, validate_topic_name};

/// Property: the topic the record was first delivered from (RocketMQ's `RETRY_TOPIC`).
pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
/// Property: the partition of the first delivery.
pub const ORIGIN_PARTITION: &str = "ORIGIN_PARTITION";
/// Property: the offset of the first delivery.
pub const ORIGIN_OFFSET: &str = "ORIGIN_OFFSET";
/// Property: `topic-partition-offset` of the first delivery (RocketMQ's `ORIGIN_MESSAGE_ID`).
pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
/// Property: how many times the record has been sent back (RocketMQ's `RECONSUME_TIME`); 1 on
/// the first retry copy.
pub const RECONSUME_TIMES: &str = "RECONSUME_TIME";

/// The properties `send_back` owns: replaced, never duplicated, on each copy.
const RETRY_PROPERTIES: [&str; 5] = [
    RETRY_TOPIC,
    ORIGIN_PARTITION,
    ORIGIN_OFFSET,
    ORIGIN_MESSAGE_ID,
    RECONSUME_TIMES,
];

/// RocketMQ's delay levels 3..=18, the broker's retry schedule (`3 + reconsumeTimes`).
const ROCKETMQ_LEVELS_S: [u64; 16] = [
    10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200,
];

/// The group's retry topic, `%RETRY%<group>` (RocketMQ's `MixAll.getRetryTopic`).
///
/// ```
/// assert_eq!(duolog::consumer::retry_topic("billing"), "%RETRY%billing");
/// ```
pub fn retry_topic(group: &str) -> String {
    format!("%RETRY%{group}")
}

/// The group's dead-letter topic, `%DLQ%<group>` (RocketMQ's `MixAll.getDLQTopic`).
///
/// ```
/// assert_eq!(duolog::consumer::dlq_topic("billing"), "%DLQ%billing");
/// ```
pub fn dlq_topic(group: &str) -> String {
    format!("%DLQ%{group}")
}

/// How long a failed record waits before its next delivery, by how many times it has been
/// sent back already (0 for its first failure).
///
/// ```
/// use std::time::Duration;
/// use duolog::consumer::RetryPolicy;
/// // RocketMQ's schedule: 10 s, 30 s, 1 min … 2 h, then 2 h.
/// let rocketmq = RetryPolicy::default();
/// assert_eq!(rocketmq.delay(0), Duration::from_secs(10));
/// assert_eq!(rocketmq.delay(2), Duration::from_secs(60));
/// assert_eq!(rocketmq.delay(15), Duration::from_secs(7200));
/// assert_eq!(rocketmq.delay(100), Duration::from_secs(7200));
/// // RocketMQ 5's exponential policy: min(2 h, 5 s × 2^n).
/// let exp = RetryPolicy::exponential();
/// assert_eq!(exp.delay(0), Duration::from_secs(5));
/// assert_eq!(exp.delay(3), Duration::from_secs(40));
/// assert_eq!(exp.delay(20), Duration::from_secs(7200));
/// // A short schedule of your own (tests use these).
/// let short = RetryPolicy::Customized(vec![Duration::from_millis(50), Duration::from_millis(100)]);
/// assert_eq!(short.delay(7), Duration::from_millis(100));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum RetryPolicy {
    /// The n-th entry for the n-th retry, the last one past the end (RocketMQ 5's
    /// `CUSTOMIZED`). The default is RocketMQ's: 10 s 30 s 1 m 2 m 3 m 4 m 5 m 6 m 7 m 8 m
    /// 9 m 10 m 20 m 30 m 1 h 2 h. Must not be empty.
    Customized(Vec<Duration>),
    /// `min(max, initial × multiplier^n)`, n capped at 32 (RocketMQ 5's `EXPONENTIAL`:
    /// 5 s, 2, 2 h — [`RetryPolicy::exponential`]). `multiplier` must be finite and ≥ 1.
    Exponential {
        /// The first retry's delay.
        initial: Duration,
        /// The growth per retry.
        multiplier: f64,
        /// The longest delay.
        max: Duration,
    },
}

impl Default for RetryPolicy {
    /// RocketMQ's schedule, levels 3 to 18 (see [`RetryPolicy`]).
    fn default() -> Self {
        RetryPolicy::Customized(
            ROCKETMQ_LEVELS_S
                .iter()
                .map(|&s| Duration::from_secs(s))
                .collect(),
        )
    }
}

impl RetryPolicy {
    /// RocketMQ 5's exponential policy: 5 s doubling up to 2 h.
    pub fn exponential() -> Self {
        RetryPolicy::Exponential {
            initial: Duration::from_secs(5),
            multiplier: 2.0,
            max: Duration::from_secs(7200),
        }
    }

    /// The delay before the next delivery of a record sent back `reconsume_times` times
    /// before this failure (see [`RetryPolicy`] for examples). Never panics: an empty
    /// schedule (refused by the push consumer) gives zero, an overflow the maximum.
    pub fn delay(&self, reconsume_times: u32) -> Duration {
        match self {
            RetryPolicy::Customized(levels) => {
                let i = (reconsume_times as usize).min(levels.len().saturating_sub(1));
                levels.get(i).copied().unwrap_or(Duration::ZERO)
            }
            RetryPolicy::Exponential {
                initial,
                multiplier,
                max,
            } => {
                let n = reconsume_times.min(32) as i32;
                let secs = initial.as_secs_f64() * multiplier.powi(n);
                Duration::try_from_secs_f64(secs).map_or(*max, |d| d.min(*max))
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            RetryPolicy::Customized(levels) if levels.is_empty() => Err(Error::InvalidArgument(
                "a customized retry policy needs at least one delay".into(),
            )),
            RetryPolicy::Exponential { multiplier, .. }
                if !multiplier.is_finite() || *multiplier < 1.0 =>
            {
                Err(Error::InvalidArgument(format!(
                    "an exponential retry policy needs a finite multiplier >= 1, not {multiplier}"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Where [`send_back`] put a failed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendBack {
    /// Scheduled by the delay layer for `%RETRY%<group>`, delivered at `handle.deliver_at_ms`.
    Retry { handle: DelayHandle },
    /// Appended to `%DLQ%<group>` at `offset`.
    DeadLetter { offset: u64 },
}

/// Checks that the group's retry and dead-letter topic names are valid topic names.
pub(crate) fn validate_group_topics(group: &str) -> Result<()> {
    validate_topic_name(&retry_topic(group))
        .and_then(|()| validate_topic_name(&dlq_topic(group)))
        .map_err(|_| {
            Error::InvalidArgument(format!(
                "group {group:?} cannot have retry topics: %RETRY%<group> must be a valid topic \
                 name (at most 127 characters of [A-Za-z0-9._%-])"
            ))
        })
}

/// Makes a one-partition topic unless it exists.
pub(crate) fn ensure_topic(store: &dyn LogStore, topic: &str) -> Result<()> {
    match store.describe_topic(topic) {
        Ok(_) => Ok(()),
        Err(Error::UnknownTopic(_)) => match store.create_topic(topic, TopicConfig::default()) {
            Ok(()) | Err(Error::TopicExists(_)) => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// How many times `record` was sent back: its `RECONSUME_TIME` if it is a copy delivered from
/// `retry` (the group's retry topic), else 0 — a message republished to its topic (from the
/// dead-letter topic, say) starts its retries afresh, as a new send does in RocketMQ.
pub(crate) fn reconsume_times(record: &ConsumerRecord, retry: &str) -> u32 {
    if record.topic() != retry {
        return 0;
    }
    record
        .record()
        .properties()
        .get(RECONSUME_TIMES)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sends a failed record back: a copy with the retry properties to `%RETRY%<group>`
/// partition 0, to be handled after `policy.delay(reconsume_times)`, or — once it has been
/// sent back `max_reconsume_times` times — to `%DLQ%<group>` at once. Returns where it went;
/// only after `Ok` may the original's offset be committed past.
pub(crate) fn send_back(
    store: &dyn LogStore,
    delay: &DelayQueue,
    group: &str,
    record: &ConsumerRecord,
    policy: &RetryPolicy,
    max_reconsume_times: u32,
) -> Result<SendBack> {
    let retry = retry_topic(group);
    let times = reconsume_times(record, &retry);
    let props = record.record().properties();
    // A copy delivered from the retry topic carries its first delivery's coordinates.
    let origin = match props.get(RETRY_TOPIC) {
        Some(topic) if record.topic() == retry => (
            topic.to_owned(),
            props.get(ORIGIN_PARTITION).unwrap_or_default().to_owned(),
            props.get(ORIGIN_OFFSET).unwrap_or_default().to_owned(),
            props.get(ORIGIN_MESSAGE_ID).unwrap_or_default().to_owned(),
        ),
        _ => (
            record.topic().to_owned(),
            record.partition().to_string(),
            record.offset().to_string(),
            format!(
                "{}-{}-{}",
                record.topic(),
                record.partition(),
                record.offset()
            ),
        ),
    };
    let mut message: Message = record.record().to_message();
    // A copy delivered by the delay layer carries its delivery properties: a new schedule
    // may not (they are the layer's own), and the next delivery writes fresh ones.
    message.properties.retain(|(k, _)| {
        !RETRY_PROPERTIES.contains(&k.as_str()) && !LAYER_PROPERTIES.contains(&k.as_str())
    });
    let (topic, partition, offset, id) = origin;
    message.properties.extend([
        (RETRY_TOPIC.to_owned(), topic),
        (ORIGIN_PARTITION.to_owned(), partition),
        (ORIGIN_OFFSET.to_owned(), offset),
        (ORIGIN_MESSAGE_ID.to_owned(), id),
        (
            RECONSUME_TIMES.to_owned(),
            times.saturating_add(1).to_string(),
        ),
    ]);
    if times >= max_reconsume_times {
        return dead_letter(store, group, &message, record);
    }
    // A back-off past what the delay layer accepts waits its longest delay instead.
    let backoff = policy.delay(times);
    let backoff = delay.max_delay().map_or(backoff, |max| backoff.min(max));
    // The delay layer holds the copy (durably, with nothing per message in memory) and puts it
    // in the retry topic once due, the back-off measured on the layer's clock: the consumer
    // handles whatever arrives there at once.
    ensure_topic(store, &retry)?;
    match delay.schedule_after(&retry, 0, message.clone(), backoff) {
        Ok(handle) => Ok(SendBack::Retry { handle }),
        // A copy too large to schedule (the retry properties, the delay layer's own) could
        // never be retried: it goes to the dead letters now — as it was delivered if even the
        // copy with its retry properties is too large there — instead of being handled again
        // every few seconds forever while its partition's offset stays behind it.
        Err(Error::MessageTooLarge { .. }) => dead_letter(store, group, &message, record),
        Err(e) => Err(e),
    }
}

/// Appends `message` (the copy with its retry properties) to the group's dead-letter topic;
/// if that is too large, the record as it was delivered (no retry properties, which it fit
/// without), so a record never waits forever for a copy that cannot be written.
fn dead_letter(
    store: &dyn LogStore,
    group: &str,
    message: &Message,
    record: &ConsumerRecord,
) -> Result<SendBack> {
    let dlq = dlq_topic(group);
    ensure_topic(store, &dlq)?;
    let appended = match store.append(&dlq, 0, std::slice::from_ref(message)) {
        Err(Error::MessageTooLarge { .. }) => {
            let mut bare = record.record().to_message();
            bare.properties
                .retain(|(k, _)| !LAYER_PROPERTIES.contains(&k.as_str()));
            store.append(&dlq, 0, &[bare])?
        }
        r => r?,
    };
    Ok(SendBack::DeadLetter {
        offset: appended.base_offset,
    })
}

/// Appends `message` (a failed `record` with its retry properties) to `%DLQ%<group>`: the
/// orderly consumer's way to the dead letters, which never goes through the retry topic.
pub(crate) fn dead_letter_record(
    store: &dyn LogStore,
    group: &str,
    message: &Message,
    record: &ConsumerRecord,
) -> Result<()> {
    dead_letter(store, group, message, record).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_policy_saturates_instead_of_overflowing() {
        let p = RetryPolicy::Exponential {
            initial: Duration::MAX,
            multiplier: 1e300,
            max: Duration::from_secs(1),
        };
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(1));
        assert_eq!(RetryPolicy::Customized(Vec::new()).delay(3), Duration::ZERO);
        assert!(RetryPolicy::Customized(Vec::new()).validate().is_err());
        let nan = RetryPolicy::Exponential {
            initial: Duration::from_secs(1),
            multiplier: f64::NAN,
            max: Duration::from_secs(1),
        };
        assert!(nan.validate().is_err());
        assert_eq!(nan.delay(1), Duration::from_secs(1));
    }

    #[test]
    fn rocketmq_schedule_is_sixteen_levels_totalling_about_four_hours_three_quarters() {
        let p = RetryPolicy::default();
        let total: Duration = (0..16).map(|n| p.delay(n)).sum();
        assert_eq!(total, Duration::from_secs(4 * 3600 + 45 * 60 + 40));
    }
}
