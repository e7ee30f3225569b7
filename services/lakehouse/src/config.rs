use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use lambdalake_kafka::{Delivery, KafkaArgs, TopicArgs};
use lambdalake_runtime::TelemetryArgs;

/// lambdalake lakehouse: one streaming Delta Lake pipeline — Kafka → bronze (raw records) →
/// silver (deduplicated, validated, typed, enriched events) → gold (the windows of
/// `lambdalake-views`, upserted with MERGE) — exactly once per table by Delta transaction
/// identifiers.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "lambdalake-lakehouse", version)]
pub struct Config {
    /// Address of `/healthz`, `/readyz` and `/metrics`; port 0 picks a free one.
    #[arg(
        long,
        env = "LAMBDALAKE_LAKEHOUSE_LISTEN",
        default_value = "127.0.0.1:8084"
    )]
    pub listen: SocketAddr,

    /// Where the Delta tables live: a directory (created if missing) or `s3://bucket/prefix`
    /// (with the standard `AWS_*` variables; commits use conditional puts, never a rename).
    #[arg(
        long,
        env = "LAMBDALAKE_LAKEHOUSE_TABLES",
        default_value = "data/lakehouse"
    )]
    pub tables: String,

    /// The consumer group (its own: the lakehouse reads every record, whatever the Lambda
    /// services do).
    #[arg(
        long,
        env = "LAMBDALAKE_LAKEHOUSE_GROUP",
        default_value = "lambdalake-lakehouse"
    )]
    pub group: String,

    /// Micro-batch trigger: a batch starts this long after the previous one started (as Spark's
    /// ProcessingTime trigger: when a batch takes longer, the next starts as soon as it ends)...
    #[arg(long, env = "LAMBDALAKE_LAKEHOUSE_TRIGGER", value_parser = humantime::parse_duration, default_value = "1s")]
    pub trigger: Duration,

    /// ... or as soon as it holds this many records.
    #[arg(long, env = "LAMBDALAKE_LAKEHOUSE_MAX_ROWS", default_value = "100000")]
    pub max_rows: NonZeroUsize,

    /// Event-time span of the event ids kept in memory for deduplication (older minutes are
    /// looked up in the silver tables: no event is excluded for lateness).
    #[arg(long, env = "LAMBDALAKE_LAKEHOUSE_DEDUPE_MEMORY", value_parser = humantime::parse_duration, default_value = "10m")]
    pub dedupe_memory: Duration,

    /// A checkpoint every N commits of a table (`delta.checkpointInterval`, set when the table
    /// is created).
    #[arg(
        long,
        env = "LAMBDALAKE_LAKEHOUSE_CHECKPOINT_INTERVAL",
        default_value = "10"
    )]
    pub checkpoint_interval: NonZeroU64,

    /// Delivery semantics. `exactly-once` (the default) records each partition's offset in
    /// every table's commit (`txn`) and starts from there; `at-least-once` commits the group's
    /// offsets to Kafka once every table has the micro-batch (a crash repeats it: bronze holds
    /// the records twice); `at-most-once` commits to Kafka first (a crash skips it). The last two
    /// exist to be measured against the first.
    #[arg(long, env = "LAMBDALAKE_LAKEHOUSE_DELIVERY", value_enum, default_value_t = Delivery::ExactlyOnce)]
    pub delivery: Delivery,

    /// Compaction (OPTIMIZE) of every table's small files, this often.
    #[arg(long, env = "LAMBDALAKE_LAKEHOUSE_OPTIMIZE_EVERY", value_parser = humantime::parse_duration, default_value = "5m")]
    pub optimize_every: Duration,

    /// VACUUM of every table, this often.
    #[arg(long, env = "LAMBDALAKE_LAKEHOUSE_VACUUM_EVERY", value_parser = humantime::parse_duration, default_value = "1h")]
    pub vacuum_every: Duration,

    /// VACUUM deletes files removed from the table longer ago than this (time travel reaches
    /// back this far).
    #[arg(long, env = "LAMBDALAKE_LAKEHOUSE_VACUUM_RETENTION", value_parser = humantime::parse_duration, default_value = "168h")]
    pub vacuum_retention: Duration,

    /// A payment whose fraud score is at or above this is written to `gold_alerts`.
    #[arg(
        long,
        env = "LAMBDALAKE_LAKEHOUSE_FRAUD_THRESHOLD",
        default_value = "0.8"
    )]
    pub fraud_threshold: f64,

    /// Columns a silver table may gain when events carry fields the event types do not know
    /// (schema evolution); further new fields stay in bronze only.
    #[arg(
        long,
        env = "LAMBDALAKE_LAKEHOUSE_MAX_EXTRA_COLUMNS",
        default_value = "32"
    )]
    pub max_extra_columns: usize,

    /// Create the event topics when missing (as the other services do).
    #[arg(long, env = "LAMBDALAKE_LAKEHOUSE_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub create_topics: bool,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub topics: TopicArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Config {
    /// Rules across fields; every problem is reported.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Err(e) = crate::tables::Location::parse(&self.tables) {
            problems.push(format!("LAMBDALAKE_LAKEHOUSE_TABLES: {e}"));
        }
        if self.group.trim().is_empty() {
            problems.push("LAMBDALAKE_LAKEHOUSE_GROUP must not be empty".to_owned());
        }
        if self.trigger.is_zero() {
            problems.push("LAMBDALAKE_LAKEHOUSE_TRIGGER must be more than 0".to_owned());
        }
        if !(self.fraud_threshold > 0.0 && self.fraud_threshold <= 1.0) {
            problems.push(format!(
                "LAMBDALAKE_LAKEHOUSE_FRAUD_THRESHOLD must be in (0, 1], got {}",
                self.fraud_threshold
            ));
        }
        if self.dedupe_memory < Duration::from_secs(60) {
            problems.push("LAMBDALAKE_LAKEHOUSE_DEDUPE_MEMORY must be at least 1m".to_owned());
        }
        for (name, d) in [
            ("LAMBDALAKE_LAKEHOUSE_OPTIMIZE_EVERY", self.optimize_every),
            ("LAMBDALAKE_LAKEHOUSE_VACUUM_EVERY", self.vacuum_every),
        ] {
            if d.is_zero() {
                problems.push(format!("{name} must be more than 0"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
