//! Transactions, as layers over any [`LogStore`](crate::LogStore): they read and write through
//! the trait only (`append_transactional`, `write_marker`, `fetch` under an isolation level,
//! plain appends for half messages) and import no engine.
//!
//! - Kafka's model: [`TransactionCoordinator`] (producer ids and epochs per transactional id,
//!   the durable transaction log in the internal compacted topic `__transaction_state`
//!   ([`TXN_LOG_TOPIC`]), the two-phase end of a transaction, recovery at open, timeouts) and
//!   [`TransactionalProducer`] (`begin`, `send`, `send_offsets`, `commit`, `abort`). Records
//!   of the transaction log are [`TxnLogEntry`] values, a pure codec.
//! - Exactly once end to end: [`transform`], the consume-transform-produce loop.
//! - [`half`]: RocketMQ's transactional (half) messages: `send_half` / `end`, or
//!   `send_in_transaction`, with a [`TransactionChecker`] asked back
//!   about undecided ones (its scan in `half_check.rs`).
//!
//! It owns the topics `__transaction_state`, `RMQ_SYS_TRANS_HALF_TOPIC`,
//! `RMQ_SYS_TRANS_OP_HALF_TOPIC` and `TRANS_CHECK_MAX_TIME_TOPIC`, and no files; it may not reach
//! into the engines' files or types, nor change the consumer groups' offsets other than through
//! their coordinator.

mod coordinator;
mod eos;
pub mod half;
mod half_check;
mod log;
mod producer;

pub use coordinator::{TransactionCoordinator, TxnCoordinatorConfig};
pub use eos::transform;
pub use half::{
    EndOutcome, HalfConfig, HalfId, HalfMessages, LocalTransactionState, TransactionChecker,
};
pub use log::{TXN_LOG_PARTITIONS, TXN_LOG_SEGMENT_BYTES, TXN_LOG_TOPIC, TxnLogEntry, TxnState};
pub use producer::{TransactionalProducer, TxnProducerConfig};
