use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::ArgAction;
use lambdalake_kafka::{KafkaArgs, ProducerArgs, Secret, TopicArgs};
use lambdalake_runtime::TelemetryArgs;

/// lambdalake ingest: accepts sensor readings and payments over HTTP (one JSON object, a JSON
/// array or NDJSON), validates each event and produces it to Kafka. An event is reported accepted
/// only once the broker acknowledged it.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "lambdalake-ingest", version)]
pub struct Config {
    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(
        long,
        env = "LAMBDALAKE_INGEST_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(
        long,
        env = "LAMBDALAKE_INGEST_MAX_BODY_BYTES",
        default_value = "16777216"
    )]
    pub max_body_bytes: NonZeroUsize,

    /// Longest a request body may take to arrive, in all; a slower client gets 408 (request
    /// headers have 5 s, actix-web's default).
    #[arg(long, env = "LAMBDALAKE_INGEST_BODY_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub body_timeout: Duration,

    /// Most events in one request; more get 413. At most the producer queue size.
    #[arg(long, env = "LAMBDALAKE_INGEST_MAX_EVENTS", default_value = "10000")]
    pub max_events_per_request: NonZeroUsize,

    /// How far in the future an event's `ts` may be, relative to this server's clock.
    #[arg(long, env = "LAMBDALAKE_INGEST_MAX_FUTURE_SKEW", value_parser = humantime::parse_duration, default_value = "5m")]
    pub max_future_skew: Duration,

    /// API keys, comma-separated in the environment. When any is set, every `/v1` request needs
    /// `Authorization: Bearer <key>`. Keys are never logged.
    #[arg(
        long = "api-key",
        env = "LAMBDALAKE_INGEST_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = lambdalake_runtime::access::parse_api_key
    )]
    pub api_keys: Vec<Secret>,

    /// Listen beyond loopback without API keys (anyone who reaches the port may send events).
    /// Without this, such a configuration is refused at start.
    #[arg(long, env = "LAMBDALAKE_INGEST_ALLOW_ANONYMOUS", default_value_t = false, action = ArgAction::Set)]
    pub allow_anonymous: bool,

    /// Requests per second allowed per API key (per client address without keys); more get 429
    /// `rate_limited` with `Retry-After`. 0: no limit.
    #[arg(long, env = "LAMBDALAKE_INGEST_RATE_LIMIT", default_value = "0")]
    pub rate_limit: f64,

    /// Requests a caller may send at once before the rate limit applies.
    #[arg(
        long,
        env = "LAMBDALAKE_INGEST_RATE_LIMIT_BURST",
        default_value = "100"
    )]
    pub rate_limit_burst: u32,

    /// Create the event topics at start when they do not exist.
    #[arg(long, env = "LAMBDALAKE_INGEST_CREATE_TOPICS", default_value_t = true, action = ArgAction::Set)]
    pub create_topics: bool,

    /// HTTP worker threads (0: one per core).
    #[arg(long, env = "LAMBDALAKE_INGEST_WORKERS", default_value = "0")]
    pub workers: usize,

    /// How long shutdown waits for in-flight requests and unacknowledged messages.
    #[arg(long, env = "LAMBDALAKE_INGEST_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub shutdown_timeout: Duration,

    /// `Retry-After` sent with 429 and 503 answers.
    #[arg(long, env = "LAMBDALAKE_INGEST_RETRY_AFTER", value_parser = humantime::parse_duration, default_value = "1s")]
    pub retry_after: Duration,

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
        problems.extend(lambdalake_runtime::access::check(
            &lambdalake_runtime::access::Settings {
                prefix: "LAMBDALAKE_INGEST",
                listen: self.listen,
                keys: &self.api_keys,
                allow_anonymous: self.allow_anonymous,
                rate_limit: self.rate_limit,
            },
        ));
        if self.max_events_per_request > self.producer.queue_max_messages {
            problems.push(format!(
                "--max-events-per-request ({}) exceeds --kafka-queue-max-messages ({}): such a request could never be accepted",
                self.max_events_per_request, self.producer.queue_max_messages
            ));
        }
        if self.topics.sensor_readings == self.topics.payments {
            problems.push("the sensor-readings and payments topics must differ".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
