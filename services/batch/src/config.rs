use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::ArgAction;
use lambdalake_kafka::{KafkaArgs, TopicArgs};
use lambdalake_runtime::TelemetryArgs;

/// lambdalake batch layer: archives every event to the master dataset (Parquet) and recomputes
/// every view from it with Polars, publishing each run to Postgres as a new batch version.
///
/// Options go before the command: `lambdalake-batch --dataset DIR run-once`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "lambdalake-batch", version)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address of the operations endpoints (/healthz, /readyz, /metrics); port 0 picks a free one.
    #[arg(
        long,
        env = "LAMBDALAKE_BATCH_LISTEN",
        default_value = "127.0.0.1:8082"
    )]
    pub listen: SocketAddr,

    /// Directory of the master dataset (created if missing).
    #[arg(long, env = "LAMBDALAKE_MASTER_DATASET", default_value = "data/master")]
    pub dataset: PathBuf,

    /// PostgreSQL holding the batch views.
    #[arg(
        long,
        env = "LAMBDALAKE_POSTGRES_URL",
        default_value = "postgres://lambdalake:lambdalake@127.0.0.1:15432/lambdalake",
        hide_env_values = true
    )]
    pub postgres_url: String,

    /// The archiver's consumer group; archivers in one group split the partitions.
    #[arg(
        long,
        env = "LAMBDALAKE_ARCHIVER_GROUP",
        default_value = "lambdalake-archiver"
    )]
    pub group: String,

    /// Longest the archiver buffers records before writing them.
    #[arg(long, env = "LAMBDALAKE_ARCHIVER_FLUSH_INTERVAL", value_parser = humantime::parse_duration, default_value = "5s")]
    pub flush_interval: Duration,

    /// The archiver writes as soon as it buffers this many records.
    #[arg(
        long,
        env = "LAMBDALAKE_ARCHIVER_FLUSH_RECORDS",
        default_value = "200000"
    )]
    pub flush_records: NonZeroUsize,

    /// How often the archiver compacts small files.
    #[arg(long, env = "LAMBDALAKE_ARCHIVER_COMPACT_EVERY", value_parser = humantime::parse_duration, default_value = "5m")]
    pub compact_every: Duration,

    /// A partition's files of one kind and date are compacted once this many are small.
    #[arg(
        long,
        env = "LAMBDALAKE_ARCHIVER_COMPACT_MIN_FILES",
        default_value = "8"
    )]
    pub compact_min_files: NonZeroUsize,

    /// A file with fewer rows than this is small.
    #[arg(
        long,
        env = "LAMBDALAKE_ARCHIVER_COMPACT_SMALL_ROWS",
        default_value = "1000000"
    )]
    pub compact_small_rows: u64,

    /// How long files replaced by a compaction stay on disk (a recompute may still read them);
    /// longer than the longest recompute.
    #[arg(long, env = "LAMBDALAKE_ARCHIVER_RETIRE_AFTER", value_parser = humantime::parse_duration, default_value = "1h")]
    pub retire_after: Duration,

    /// Interval between two recompute runs (scheduled mode).
    #[arg(long, env = "LAMBDALAKE_BATCH_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub interval: Duration,

    /// Batch versions kept in Postgres (older ones are dropped after a publication).
    #[arg(long, env = "LAMBDALAKE_BATCH_KEEP_VERSIONS", default_value = "3")]
    pub keep_versions: NonZeroUsize,

    /// Allowed lateness: the cutoff is the smallest partition's largest event time minus this
    /// (the speed layer's setting, so the merge sees the same closed windows).
    #[arg(long, env = "LAMBDALAKE_BATCH_ALLOWED_LATENESS", value_parser = humantime::parse_duration, default_value = "30s")]
    pub allowed_lateness: Duration,

    /// Fewest labelled frauds in the training split for a fraud model to be trained (until then
    /// the speed layer scores with its rules).
    #[arg(long, env = "LAMBDALAKE_BATCH_MODEL_MIN_FRAUDS", default_value = "10")]
    pub model_min_frauds: usize,

    /// Most payments the model is trained and tested on; legitimate payments are sampled
    /// beyond it (every fraud is kept).
    #[arg(
        long,
        env = "LAMBDALAKE_BATCH_MODEL_MAX_ROWS",
        default_value = "200000"
    )]
    pub model_max_rows: NonZeroUsize,

    /// Redis the speed layer reads; each run writes the card profiles, device baselines and
    /// fraud model there after publishing to Postgres.
    #[arg(
        long,
        env = "LAMBDALAKE_REDIS_URL",
        default_value = "redis://127.0.0.1:16379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// The speed layer's Redis key prefix.
    #[arg(long, env = "LAMBDALAKE_SPEED_KEY_PREFIX", default_value = "ll")]
    pub key_prefix: String,

    /// Write profiles, baselines and the model to Redis after each run.
    #[arg(long, env = "LAMBDALAKE_BATCH_PUBLISH_REFERENCE", default_value_t = true, action = ArgAction::Set)]
    pub publish_reference: bool,

    /// Create the topics the archiver reads when they do not exist.
    #[arg(long, env = "LAMBDALAKE_BATCH_CREATE_TOPICS", default_value_t = true, action = ArgAction::Set)]
    pub create_topics: bool,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub topics: TopicArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// What the process does (default: `run`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Archive continuously and recompute every interval (the service).
    Run,
    /// Archive only.
    Archive,
    /// Recompute every interval only.
    Schedule,
    /// Recompute and publish once, print the summary, exit.
    RunOnce,
    /// Benchmark: archive N generated events into a fresh dataset, recompute and publish them
    /// into a fresh database on the configured server, print the figures by phase.
    Bench(crate::bench::BenchArgs),
}

impl Config {
    /// Rules across fields; every problem is reported.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.flush_interval.is_zero() {
            problems.push("LAMBDALAKE_ARCHIVER_FLUSH_INTERVAL must be more than 0".to_owned());
        }
        if self.interval.is_zero() {
            problems.push("LAMBDALAKE_BATCH_INTERVAL must be more than 0".to_owned());
        }
        if self.compact_every.is_zero() {
            problems.push("LAMBDALAKE_ARCHIVER_COMPACT_EVERY must be more than 0".to_owned());
        }
        if let Err(e) = self.postgres_url.parse::<tokio_postgres::Config>() {
            problems.push(format!(
                "LAMBDALAKE_POSTGRES_URL is not a PostgreSQL URL: {e}"
            ));
        }
        if self.publish_reference {
            if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
                problems.push(format!("LAMBDALAKE_REDIS_URL is not a Redis URL: {e}"));
            }
            if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
                problems.push(format!(
                    "LAMBDALAKE_SPEED_KEY_PREFIX must be non-empty without spaces, got {:?}",
                    self.key_prefix
                ));
            }
        }
        if self
            .kafka
            .options
            .iter()
            .any(|(k, _)| k == "partition.assignment.strategy")
        {
            problems.push("--kafka-option partition.assignment.strategy cannot be set for the archiver: its rebalance callback assigns partitions eagerly, at the offsets of the manifests".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    pub fn command(&self) -> Command {
        self.command.clone().unwrap_or(Command::Run)
    }
}
