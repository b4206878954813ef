//! The one error type of the crate.
//!
//! Every fallible public function returns [`Result`]. Variants are the conditions a caller can act
//! on: retry later (`StorageFull`), reopen (`Poisoned`), fix the request (`OffsetOutOfRange`,
//! `UnknownTopic`, `MessageTooLarge`, `InvalidArgument`), or report damage (`Corrupted`).

use std::io;
use std::path::PathBuf;

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in duolog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed for a reason not covered by a more specific variant.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// Bytes on disk failed a check (magic, length, checksum, cross-reference).
    #[error("corrupted data in {file} at position {position}: {reason}")]
    Corrupted {
        /// The damaged file.
        file: PathBuf,
        /// Byte position inside that file.
        position: u64,
        /// What check failed.
        reason: String,
    },

    /// The disk (or a quota or file-size limit) is full. Nothing acknowledged is lost; appends
    /// succeed again once space is freed.
    #[error("storage full while writing {path}")]
    StorageFull {
        /// The file that could not grow or be created.
        path: PathBuf,
    },

    /// An fsync failed earlier; the store refuses writes until it is reopened, because the page
    /// cache may have dropped the dirty pages the failed sync was meant to persist.
    #[error("store is poisoned after a failed sync ({reason}); reopen it")]
    Poisoned {
        /// The failure that poisoned the store.
        reason: String,
    },

    /// The store was closed.
    #[error("store is closed")]
    Closed,

    /// An offset outside `[log_start, end]` of a partition.
    #[error("offset {offset} is out of range for {topic}-{partition} (valid: {start}..={end})")]
    OffsetOutOfRange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The offset asked for.
        offset: u64,
        /// The partition's log start offset.
        start: u64,
        /// The partition's end offset (next offset to be assigned).
        end: u64,
    },

    /// The topic does not exist.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),

    /// The topic exists but has no such partition.
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Partition asked for.
        partition: u32,
        /// How many partitions the topic has.
        partitions: u32,
    },

    /// `create_topic` for a name that is taken.
    #[error("topic {0:?} already exists")]
    TopicExists(String),

    /// One encoded message exceeds the store's limit.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Encoded size of the message.
        size: usize,
        /// The configured limit.
        max: usize,
    },

    /// Another process (or another open store in this process) holds the directory's `LOCK`.
    #[error("store directory {0} is locked by another process")]
    Locked(PathBuf),

    /// The request is malformed (bad topic name, zero partitions, property with a separator…).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A consumer with `auto_offset_reset: None` has no committed offset for a partition it
    /// must read (Kafka's `NoOffsetForPartitionException`): seek it, or commit one first.
    #[error(
        "group {group:?} has no committed offset for {topic}-{partition} and its auto_offset_reset is none"
    )]
    NoCommittedOffset {
        /// The consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },

    /// A consumer acted on a partition it does not hold (never assigned, or revoked by a
    /// rebalance: Kafka's `CommitFailedException`); poll again to learn its assignment.
    #[error("{topic}-{partition} is not assigned to this member of group {group:?}")]
    NotAssigned {
        /// The consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },

    /// An orderly consumer acted on a partition whose lease it no longer holds with this
    /// fencing token: the lease expired (its renewals stalled) or passed to another member.
    /// Nothing was committed; the member stops delivering the partition until it holds a new
    /// lease, and then resumes from the group's committed offset.
    #[error(
        "the lease of group {group:?} on {topic}-{partition} with fencing token {token} expired or passed to another member"
    )]
    LeaseLost {
        /// The consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The fencing token the member held.
        token: u64,
    },

    /// An idempotent batch whose first sequence number does not follow the producer's last one
    /// on the partition (Kafka's `OUT_OF_ORDER_SEQUENCE_NUMBER`): a batch was lost in between,
    /// or the producer is unknown here (never seen, or expired) and did not start at 0.
    #[error(
        "out-of-order sequence for {producer} on {topic}-{partition}: expected {expected}, got {got}"
    )]
    OutOfOrderSequence {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The producer.
        producer: crate::store::ProducerId,
        /// The sequence number the partition expects next.
        expected: i32,
        /// The batch's first sequence number.
        got: i32,
    },

    /// An idempotent batch from an epoch older than the one the partition knows for the
    /// producer id (Kafka's `PRODUCER_FENCED` / `INVALID_PRODUCER_EPOCH`): a newer instance of
    /// the producer took over.
    #[error("{producer} is fenced on {topic}-{partition}: epoch {current_epoch} took over")]
    ProducerFenced {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The fenced producer.
        producer: crate::store::ProducerId,
        /// The epoch the partition knows.
        current_epoch: i16,
    },

    /// A transactional operation that does not fit the producer's transaction state on the
    /// partition (Kafka's `INVALID_TXN_STATE`), or the coordinator's state for a transactional
    /// id: e.g. a non-transactional idempotent append while the producer's transaction is open.
    #[error("invalid transaction state for {producer} on {topic}-{partition}: {reason}")]
    InvalidTxnState {
        /// Topic (or the transaction log's name, for coordinator states).
        topic: String,
        /// Partition.
        partition: u32,
        /// The producer.
        producer: crate::store::ProducerId,
        /// What did not fit.
        reason: String,
    },
}

impl Error {
    /// Wraps an I/O error, turning out-of-space conditions into [`Error::StorageFull`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if is_storage_full(&source) {
            Error::StorageFull { path }
        } else {
            Error::Io { path, source }
        }
    }

    /// A `Corrupted` error.
    pub(crate) fn corrupted(
        file: impl Into<PathBuf>,
        position: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupted {
            file: file.into(),
            position,
            reason: reason.into(),
        }
    }

    /// `true` for [`Error::StorageFull`].
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Error::StorageFull { .. })
    }
}

/// ENOSPC, EDQUOT and EFBIG all mean "this write needs space it cannot have".
pub(crate) fn is_storage_full(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded {
        return true;
    }
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT || code == libc::EFBIG)
}
