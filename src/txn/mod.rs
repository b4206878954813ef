//! Transactions, as a layer over any [`LogStore`](crate::LogStore): it reads and writes through
//! the trait only (`append_transactional`, `write_marker`, `fetch` under an isolation level) and
//! imports no engine.
//!
//! - Kafka's model: [`TransactionCoordinator`] (producer ids and epochs per transactional id,
//!   the durable transaction log in the internal compacted topic `__transaction_state`
//!   ([`TXN_LOG_TOPIC`]), the two-phase end of a transaction, recovery at open, timeouts) and
//!   [`TransactionalProducer`] (`begin`, `send`, `send_offsets`, `commit`, `abort`). Records
//!   of the transaction log are [`TxnLogEntry`] values, a pure codec.
//! - Exactly once end to end: [`transform`], the consume-transform-produce loop.
//!
//! It owns the topic `__transaction_state` and no files; it may not reach into the engines'
//! files or types, nor change the consumer groups' offsets other than through their
//! coordinator.

mod coordinator;
mod eos;
mod log;
mod producer;

pub use coordinator::{TransactionCoordinator, TxnCoordinatorConfig};
pub use eos::transform;
pub use log::{TXN_LOG_PARTITIONS, TXN_LOG_SEGMENT_BYTES, TXN_LOG_TOPIC, TxnLogEntry, TxnState};
pub use producer::{TransactionalProducer, TxnProducerConfig};
