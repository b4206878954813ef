//! The consumer side, as a layer over any [`LogStore`](crate::LogStore): it reads through the
//! trait only and imports no engine. Today it holds [`CompactedTable`], the key → latest value
//! view of a (compacted) topic, and the message filters consumers subscribe with: RocketMQ's
//! tag expressions ([`TagFilter`]) and SQL92 property expressions ([`SqlFilter`]). Consumer
//! groups, pull and push consumers come with their issue.
//!
//! It owns no files of its own yet; it may not reach into the engines' files or types.

mod sql;
mod table;
mod tags;

pub use sql::{FilterError, SqlFilter};
pub use table::CompactedTable;
pub use tags::TagFilter;
