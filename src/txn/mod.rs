//! Transactions as layers over any [`LogStore`](crate::LogStore), reading and writing through
//! the trait only.
//!
//! - [`half`]: RocketMQ's transactional (half) messages: `send_half` / `end`, or
//!   `send_in_transaction`, with a [`TransactionChecker`](half::TransactionChecker) asked back
//!   about undecided ones (its scan in `half_check.rs`).

pub mod half;
mod half_check;

pub use half::{
    EndOutcome, HalfConfig, HalfId, HalfMessages, LocalTransactionState, TransactionChecker,
};
