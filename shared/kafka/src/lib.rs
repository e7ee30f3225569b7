//! The one place a Kafka client configuration is built.
//!
//! - [`KafkaArgs`]: how to reach the cluster (brokers, security settings passed through);
//! - [`TopicArgs`]: the topic names every service agrees on, and how to create them;
//! - [`ProducerArgs`] + [`Producer`]: an idempotent, `acks=all` producer whose errors know
//!   whether they are worth retrying;
//! - [`TraceContext`]: W3C trace context carried in record headers;
//! - [`consumer_config`]: manual offset management (offsets are stored with the results, never
//!   auto-committed) and bounded fetch buffers.

mod config;
mod delivery;
mod producer;
mod topics;
mod trace;
mod watermarks;

pub use config::{
    KafkaArgs, ProducerArgs, SaslMechanism, Secret, SecurityProtocol, consumer_config,
    producer_config,
};
pub use delivery::{Delivery, Resume};
pub use producer::{Acked, Batch, ProduceError, Producer, ProducerHealth};
pub use topics::{TopicArgs, TopicError, ensure_topics};
pub use trace::{TraceContext, parent_of};
pub use watermarks::HighWatermarks;

pub use rdkafka;
