use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::ArgAction;
use lambdalake_kafka::{Delivery, KafkaArgs, ProducerArgs, TopicArgs};
use lambdalake_runtime::TelemetryArgs;

/// lambdalake speed layer: consumes the sensor and payment topics in micro-batches, assigns
/// events to event-time windows, scores payments and writes the views to Redis exactly once
/// (each micro-batch's updates and its partition offset in one atomic script).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "lambdalake-speed", version)]
pub struct Config {
    /// Address of the operations endpoints (/healthz, /readyz, /metrics); port 0 picks a free one.
    #[arg(
        long,
        env = "LAMBDALAKE_SPEED_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,

    /// Redis holding the speed views (a single node: the apply script touches many keys).
    #[arg(
        long,
        env = "LAMBDALAKE_REDIS_URL",
        default_value = "redis://127.0.0.1:16379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// Prefix of every Redis key the speed layer writes (see docs/speed-layer.md).
    #[arg(long, env = "LAMBDALAKE_SPEED_KEY_PREFIX", default_value = "ll")]
    pub key_prefix: String,

    /// Kafka consumer group; instances in one group split the partitions.
    #[arg(
        long,
        env = "LAMBDALAKE_SPEED_GROUP",
        default_value = "lambdalake-speed"
    )]
    pub group: String,

    /// Longest a micro-batch stays open before it is applied.
    #[arg(long, env = "LAMBDALAKE_SPEED_TRIGGER_INTERVAL", value_parser = humantime::parse_duration, default_value = "200ms")]
    pub trigger_interval: Duration,

    /// A micro-batch is applied as soon as it holds this many records.
    #[arg(long, env = "LAMBDALAKE_SPEED_MAX_BATCH", default_value = "50000")]
    pub max_batch: NonZeroUsize,

    /// Also apply a micro-batch as soon as the consumer has no record ready (caught up), rather
    /// than waiting for the interval: low latency when idle, large batches under load. `false`
    /// gives a fixed processing-time trigger.
    #[arg(long, env = "LAMBDALAKE_SPEED_CLOSE_WHEN_CAUGHT_UP", default_value_t = true, action = ArgAction::Set)]
    pub close_when_caught_up: bool,

    /// Longest the broker may hold a fetch when the consumer has caught up (librdkafka's
    /// `fetch.wait.max.ms`): the floor of the speed layer's latency at low rates.
    #[arg(long, env = "LAMBDALAKE_SPEED_FETCH_WAIT", value_parser = humantime::parse_duration, default_value = "10ms")]
    pub fetch_wait: Duration,

    /// Allowed lateness: the watermark is the largest event time seen minus this.
    #[arg(long, env = "LAMBDALAKE_SPEED_ALLOWED_LATENESS", value_parser = humantime::parse_duration, default_value = "30s")]
    pub allowed_lateness: Duration,

    /// A partition that received nothing for this long stops holding the watermark back.
    #[arg(long, env = "LAMBDALAKE_SPEED_IDLE_PARTITION_AFTER", value_parser = humantime::parse_duration, default_value = "10s")]
    pub idle_partition_after: Duration,

    /// How long a window (and every other view key) lives in Redis after its last update. The
    /// serving layer reads windows older than the batch cutoff from Postgres.
    #[arg(long, env = "LAMBDALAKE_SPEED_VIEW_TTL", value_parser = humantime::parse_duration, default_value = "2h")]
    pub view_ttl: Duration,

    /// A payment whose fraud score reaches this raises an alert.
    #[arg(long, env = "LAMBDALAKE_SPEED_FRAUD_THRESHOLD", default_value = "0.8")]
    pub fraud_threshold: f64,

    /// How often the fraud model and `{prefix}:reference:version` are read; card profiles and
    /// device baselines published by the batch layer are reloaded when that version changes.
    #[arg(long, env = "LAMBDALAKE_SPEED_REFERENCE_REFRESH", value_parser = humantime::parse_duration, default_value = "5s")]
    pub reference_refresh: Duration,

    /// Alerts kept in the Redis alerts sorted set (oldest dropped first).
    #[arg(long, env = "LAMBDALAKE_SPEED_ALERTS_KEPT", default_value = "100000")]
    pub alerts_kept: NonZeroUsize,

    /// Cards whose memory (open sessions, recent payments, newest score) is held in memory,
    /// over every assigned partition. Past it, the least recently seen go (Redis keeps them,
    /// and a card that pays again is read back): the speed layer's memory stays bounded however
    /// many cards pay within the view TTL. 0 holds only the cards of the micro-batches in
    /// flight.
    #[arg(long, env = "LAMBDALAKE_SPEED_CARD_CACHE", default_value = "20000")]
    pub card_cache: usize,

    /// Create the topics the speed layer reads and writes when they do not exist.
    #[arg(long, env = "LAMBDALAKE_SPEED_CREATE_TOPICS", default_value_t = true, action = ArgAction::Set)]
    pub create_topics: bool,

    /// Delivery semantics. `exactly-once` (the default) stores each partition's offset in the
    /// same atomic Redis write as the views and starts from it; `at-least-once` applies, then
    /// commits the group's offsets to Kafka (a crash repeats the batch: the event-id dedupe then
    /// decides whether it is counted twice); `at-most-once` commits to Kafka before applying (a
    /// crash skips the batch). The last two exist to be measured against the first.
    #[arg(long, env = "LAMBDALAKE_SPEED_DELIVERY", value_enum, default_value_t = Delivery::ExactlyOnce)]
    pub delivery: Delivery,

    /// How long shutdown waits for the in-flight micro-batch.
    #[arg(long, env = "LAMBDALAKE_SPEED_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub shutdown_timeout: Duration,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub producer: ProducerArgs,

    #[command(flatten)]
    pub topics: TopicArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Config {
    /// Rules across fields; every problem is reported, not just the first.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.trigger_interval.is_zero() {
            problems.push("LAMBDALAKE_SPEED_TRIGGER_INTERVAL must be more than 0".to_owned());
        }
        if !(self.fraud_threshold > 0.0 && self.fraud_threshold <= 1.0) {
            problems.push(format!(
                "LAMBDALAKE_SPEED_FRAUD_THRESHOLD must be in (0, 1], got {}",
                self.fraud_threshold
            ));
        }
        if self.view_ttl < Duration::from_secs(60) {
            problems.push("LAMBDALAKE_SPEED_VIEW_TTL must be at least 1m".to_owned());
        }
        if self.view_ttl <= self.allowed_lateness {
            problems.push(
                "LAMBDALAKE_SPEED_VIEW_TTL must be longer than LAMBDALAKE_SPEED_ALLOWED_LATENESS"
                    .to_owned(),
            );
        }
        if self.reference_refresh.is_zero() {
            problems.push("LAMBDALAKE_SPEED_REFERENCE_REFRESH must be more than 0".to_owned());
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            problems.push(format!(
                "LAMBDALAKE_SPEED_KEY_PREFIX must be non-empty without spaces, got {:?}",
                self.key_prefix
            ));
        }
        for (key, why) in [
            (
                "partition.assignment.strategy",
                "its rebalance callback assigns partitions eagerly, at the offsets stored in Redis",
            ),
            (
                "auto.offset.reset",
                "a partition without stored offset starts at its beginning, and a retention gap resumes at the oldest record",
            ),
        ] {
            if self.kafka.options.iter().any(|(k, _)| k == key) {
                problems.push(format!(
                    "--kafka-option {key} cannot be set for the speed layer: {why}"
                ));
            }
        }
        if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
            problems.push(format!("LAMBDALAKE_REDIS_URL is not a Redis URL: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn options_that_break_the_rebalance_path_are_refused() {
        let c = Config::try_parse_from([
            "lambdalake-speed",
            "--kafka-option",
            "auto.offset.reset=latest",
            "--kafka-option",
            "partition.assignment.strategy=cooperative-sticky",
            "--fraud-threshold",
            "1.5",
        ])
        .unwrap();
        let problems = c.check().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("auto.offset.reset")));
        assert!(
            Config::try_parse_from(["lambdalake-speed"])
                .unwrap()
                .check()
                .is_ok()
        );
    }
}
