//! The ordering layer, over any [`LogStore`](crate::LogStore): it reads and writes through the
//! trait and the consumer layer only, and imports no engine.
//!
//! - Orderly consumption ([`OrderlyConsumer`], RocketMQ's `MessageListenerOrderly`): within a
//!   group one member at a time holds a partition's lease ([`LeaseTable`], with expiry and a
//!   fencing token, renewed in the background); a partition's records go to the handler
//!   strictly in offset order, one call at a time; a failing record suspends its partition and
//!   is retried in place; offsets are committed only under a valid lease ([`Error::LeaseLost`](crate::Error::LeaseLost)
//!   otherwise).
//!
//! It owns no files and no topics of its own (dead letters go to the consumer layer's
//! `%DLQ%<group>`); its leases live in memory, in the [`GroupCoordinator`](crate::consumer::GroupCoordinator).

mod lease;
mod orderly;

pub use lease::{
    Lease, LeaseClock, LeaseOptions, LeaseTable, MAX_LEASE, ManualClock, SystemLeaseClock,
};
pub use orderly::{
    ConsumeOrderlyStatus, OrderlyConfig, OrderlyConsumer, OrderlyContext, OrderlyHandler,
};
