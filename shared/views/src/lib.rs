//! The one definition of every view, as pure functions: the speed layer applies them
//! incrementally, the batch layer and the lakehouse to whole tables, and the results agree.
//!
//! - [`window`]: event-time window assignment (tumbling, sliding, session);
//! - [`aggregate`]: the per-window aggregates of readings and payments, exact and independent of
//!   arrival order (sums are fixed-point integers, so adding in any order gives the same bits);
//! - [`watermark`]: the operator watermark over partitions, with the idle-partition rule;
//! - [`table`]: the views of whole tables (batch layer, lakehouse), each event id counted once;
//! - [`incremental`]: the same views event by event, as the speed layer applies them (late
//!   events, duplicates), equal to [`table`]'s on the same events in any order within the
//!   allowed lateness.
//!
//! - [`keys`]: the Redis key scheme the speed layer writes and the serving layer reads.
//! - [`fraud`]: a payment's fraud features and score (logistic model or documented rules), and
//!   the IoT alert rules.

pub mod aggregate;
pub mod fraud;
pub mod incremental;
pub mod keys;
pub mod table;
pub mod watermark;
pub mod window;

#[cfg(test)]
mod testing;

pub use aggregate::{CardAgg, Merge, SensorAgg, Stat};
pub use watermark::Watermarks;
pub use window::{SessionAggs, Sessions, Window, WindowSpec};
