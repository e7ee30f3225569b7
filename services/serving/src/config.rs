use std::net::SocketAddr;
use std::time::Duration;

use lambdalake_kafka::{KafkaArgs, TopicArgs};
use lambdalake_runtime::TelemetryArgs;

/// lambdalake serving layer: one query API over the batch views (Postgres) and the speed views
/// (Redis), merged on the batch version's event-time cutoff.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "lambdalake-serving", version)]
pub struct Config {
    /// Address of the API and the operations endpoints; port 0 picks a free one.
    #[arg(
        long,
        env = "LAMBDALAKE_SERVING_LISTEN",
        default_value = "127.0.0.1:8083"
    )]
    pub listen: SocketAddr,

    /// API keys, comma-separated in the environment. When any is set, every `/v1` request needs
    /// `Authorization: Bearer <key>` (the dashboard page sends the key given in its address as
    /// `#key=…`). Keys are never logged.
    #[arg(
        long = "api-key",
        env = "LAMBDALAKE_SERVING_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = lambdalake_runtime::access::parse_api_key
    )]
    pub api_keys: Vec<lambdalake_runtime::Secret>,

    /// Listen beyond loopback without API keys (anyone who reaches the port may query). Without
    /// this, such a configuration is refused at start.
    #[arg(long, env = "LAMBDALAKE_SERVING_ALLOW_ANONYMOUS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_anonymous: bool,

    /// `/v1` requests per second allowed per API key (per client address without keys); more
    /// get 429 `rate_limited` with `Retry-After`. 0: no limit.
    #[arg(long, env = "LAMBDALAKE_SERVING_RATE_LIMIT", default_value = "0")]
    pub rate_limit: f64,

    /// Requests a caller may send at once before the rate limit applies.
    #[arg(
        long,
        env = "LAMBDALAKE_SERVING_RATE_LIMIT_BURST",
        default_value = "200"
    )]
    pub rate_limit_burst: u32,

    /// PostgreSQL holding the batch views.
    #[arg(
        long,
        env = "LAMBDALAKE_POSTGRES_URL",
        default_value = "postgres://lambdalake:lambdalake@127.0.0.1:15432/lambdalake",
        hide_env_values = true
    )]
    pub postgres_url: String,

    /// Redis holding the speed views.
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

    /// Longest time range one window query may ask for.
    #[arg(long, env = "LAMBDALAKE_SERVING_MAX_RANGE", value_parser = humantime::parse_duration, default_value = "24h")]
    pub max_range: Duration,

    /// Postgres connections (queries on one connection are pipelined).
    #[arg(long, env = "LAMBDALAKE_SERVING_PG_CONNECTIONS", default_value = "4")]
    pub pg_connections: std::num::NonZeroUsize,

    /// How long a store may take to answer before it counts as unreachable for this request.
    #[arg(long, env = "LAMBDALAKE_SERVING_STORE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "1s")]
    pub store_timeout: Duration,

    /// How long the latest batch version read from Postgres is reused: a new version is served
    /// at most this long after it is published (an older one is still a whole version, merged
    /// on its own cutoff).
    #[arg(long, env = "LAMBDALAKE_SERVING_VERSION_TTL", value_parser = humantime::parse_duration, default_value = "250ms")]
    pub version_ttl: Duration,

    /// Batch windows kept in memory, over all cached answers (a published version never
    /// changes, so a cached answer is exact); 0 turns the cache off.
    #[arg(
        long,
        env = "LAMBDALAKE_SERVING_CACHE_WINDOWS",
        default_value = "200000"
    )]
    pub cache_windows: usize,

    /// The lakehouse's Delta tables (as `lambdalake-lakehouse` writes them): a directory or
    /// `s3://bucket/prefix`; the `/v1/lakehouse/...` endpoints read its gold tables.
    #[arg(
        long,
        env = "LAMBDALAKE_LAKEHOUSE_TABLES",
        default_value = "data/lakehouse"
    )]
    pub lakehouse_tables: String,

    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "LAMBDALAKE_SERVING_WORKERS")]
    pub workers: Option<std::num::NonZeroUsize>,

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
        problems.extend(lambdalake_runtime::access::check(
            &lambdalake_runtime::access::Settings {
                prefix: "LAMBDALAKE_SERVING",
                listen: self.listen,
                keys: &self.api_keys,
                allow_anonymous: self.allow_anonymous,
                rate_limit: self.rate_limit,
            },
        ));
        if let Err(e) = self.postgres_url.parse::<tokio_postgres::Config>() {
            problems.push(format!(
                "LAMBDALAKE_POSTGRES_URL is not a PostgreSQL URL: {e}"
            ));
        }
        if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
            problems.push(format!("LAMBDALAKE_REDIS_URL is not a Redis URL: {e}"));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            problems.push(format!(
                "LAMBDALAKE_SPEED_KEY_PREFIX must be non-empty without spaces, got {:?}",
                self.key_prefix
            ));
        }
        if self.max_range < Duration::from_secs(60) {
            problems.push("LAMBDALAKE_SERVING_MAX_RANGE must be at least 1m".to_owned());
        }
        if let Err(e) = lambdalake_lakehouse::tables::Location::parse(&self.lakehouse_tables) {
            problems.push(format!("LAMBDALAKE_LAKEHOUSE_TABLES: {e}"));
        }
        if self.store_timeout.is_zero() {
            problems.push("LAMBDALAKE_SERVING_STORE_TIMEOUT must be more than 0".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
