use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::ClientConfig;

/// How to reach the Kafka cluster. Security settings are passed to librdkafka as they are; the
/// SASL password is never printed (not in `--help`, not in `Debug`, not in logs).
#[derive(Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated `host:port` (the local stack's broker by default).
    #[arg(
        long = "kafka-brokers",
        env = "LAMBDALAKE_KAFKA_BROKERS",
        default_value = "127.0.0.1:19092"
    )]
    pub brokers: String,

    /// Kafka `security.protocol`.
    #[arg(long = "kafka-security-protocol", env = "LAMBDALAKE_KAFKA_SECURITY_PROTOCOL", value_enum, default_value_t = SecurityProtocol::Plaintext)]
    pub security_protocol: SecurityProtocol,

    /// Kafka `sasl.mechanism`, when the security protocol uses SASL.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "LAMBDALAKE_KAFKA_SASL_MECHANISM",
        value_enum
    )]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// Kafka `sasl.username`.
    #[arg(long = "kafka-sasl-username", env = "LAMBDALAKE_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// Kafka `sasl.password` (prefer the environment variable to the flag).
    #[arg(
        long = "kafka-sasl-password",
        env = "LAMBDALAKE_KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,

    /// Kafka `ssl.ca.location`: CA certificate(s) to verify the brokers with.
    #[arg(
        long = "kafka-ssl-ca-location",
        env = "LAMBDALAKE_KAFKA_SSL_CA_LOCATION"
    )]
    pub ssl_ca_location: Option<PathBuf>,

    /// Extra librdkafka properties as `key=value`, repeatable (environment: comma-separated).
    /// Applied last, so they override everything above.
    #[arg(long = "kafka-option", env = "LAMBDALAKE_KAFKA_OPTIONS", value_delimiter = ',', value_parser = parse_key_value, hide_env_values = true)]
    pub options: Vec<(String, String)>,
}

impl fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options: Vec<String> = self
            .options
            .iter()
            .map(|(k, v)| {
                let secret = ["password", "secret", "key", "token", "jaas"]
                    .iter()
                    .any(|w| k.contains(w));
                if secret {
                    format!("{k}=***")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("options", &options)
            .finish()
    }
}

impl KafkaArgs {
    /// Settings shared by every client: brokers and security.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("security.protocol", self.security_protocol.as_str())
            // the broker's address family is whatever `brokers` names
            .set("broker.address.family", "any");
        if let Some(m) = self.sasl_mechanism {
            c.set("sasl.mechanism", m.as_str());
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if let Some(p) = &self.sasl_password {
            c.set("sasl.password", p.expose());
        }
        if let Some(ca) = &self.ssl_ca_location {
            c.set("ssl.ca.location", ca.to_string_lossy());
        }
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

/// librdkafka properties that carry the project's guarantees or have a flag of their own: they
/// cannot be overridden through `--kafka-option`.
const RESERVED: [(&str, &str); 14] = [
    ("bootstrap.servers", "use --kafka-brokers"),
    ("acks", "the producer always uses acks=all"),
    ("request.required.acks", "the producer always uses acks=all"),
    ("enable.idempotence", "the producer is always idempotent"),
    (
        "transactional.id",
        "lambdalake does not use Kafka transactions (exactly-once comes from offsets stored with results)",
    ),
    (
        "queue.buffering.max.messages",
        "use --kafka-queue-max-messages",
    ),
    ("queue.buffering.max.kbytes", "use --kafka-queue-max-kbytes"),
    ("message.timeout.ms", "use --kafka-delivery-timeout"),
    ("delivery.timeout.ms", "use --kafka-delivery-timeout"),
    (
        "partitioner",
        "keys are always partitioned with murmur2, as the Java client does",
    ),
    ("group.id", "each service names its consumer group"),
    (
        "enable.auto.commit",
        "offsets are stored with the results, never auto-committed",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored with the results, never auto-committed",
    ),
    ("compression.type", "use --kafka-compression"),
];

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s
        .split_once('=')
        .map(|(k, v)| (k.trim(), v))
        .filter(|(k, _)| !k.is_empty())
    else {
        return Err("expected key=value".to_owned());
    };
    if let Some((_, why)) = RESERVED.iter().find(|(name, _)| *name == k) {
        return Err(format!("{k} cannot be set here: {why}"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

pub use lambdalake_runtime::Secret;

/// Producer tuning. The delivery guarantees (idempotence, `acks=all`) are not options.
#[derive(Debug, Clone, clap::Args)]
pub struct ProducerArgs {
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[arg(long = "kafka-linger", env = "LAMBDALAKE_KAFKA_LINGER", value_parser = humantime::parse_duration, default_value = "5ms")]
    pub linger: Duration,

    /// Most messages waiting in the producer queue (`queue.buffering.max.messages`); beyond it
    /// ingest answers 429.
    #[arg(
        long = "kafka-queue-max-messages",
        env = "LAMBDALAKE_KAFKA_QUEUE_MAX_MESSAGES",
        default_value = "200000"
    )]
    pub queue_max_messages: NonZeroUsize,

    /// Most kilobytes waiting in the producer queue (`queue.buffering.max.kbytes`).
    #[arg(
        long = "kafka-queue-max-kbytes",
        env = "LAMBDALAKE_KAFKA_QUEUE_MAX_KBYTES",
        default_value = "65536"
    )]
    pub queue_max_kbytes: NonZeroUsize,

    /// How long a message may wait for the broker's acknowledgement before it counts as failed
    /// (`message.timeout.ms`); ingest then answers 503.
    #[arg(long = "kafka-delivery-timeout", env = "LAMBDALAKE_KAFKA_DELIVERY_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub delivery_timeout: Duration,

    /// Batch compression (`compression.type`): none, gzip, snappy, lz4 or zstd.
    #[arg(long = "kafka-compression", env = "LAMBDALAKE_KAFKA_COMPRESSION", default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    pub compression: String,
}

impl Default for ProducerArgs {
    fn default() -> Self {
        ProducerArgs {
            linger: Duration::from_millis(5),
            queue_max_messages: NonZeroUsize::new(200_000).unwrap_or(NonZeroUsize::MIN),
            queue_max_kbytes: NonZeroUsize::new(65_536).unwrap_or(NonZeroUsize::MIN),
            delivery_timeout: Duration::from_secs(10),
            compression: "none".into(),
        }
    }
}

/// An idempotent producer configuration: `acks=all`, `enable.idempotence=true`, no reordering or
/// duplicates on retry.
pub fn producer_config(kafka: &KafkaArgs, producer: &ProducerArgs) -> ClientConfig {
    let mut c = kafka.client_config();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", producer.linger.as_millis().to_string())
        .set("batch.num.messages", "10000")
        .set("batch.size", (1024 * 1024).to_string())
        .set(
            "queue.buffering.max.messages",
            producer.queue_max_messages.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            producer.queue_max_kbytes.to_string(),
        )
        .set(
            "message.timeout.ms",
            producer.delivery_timeout.as_millis().max(1).to_string(),
        )
        .set("compression.type", &producer.compression)
        // the Java client's partitioner: a key lands on the same partition whichever client
        // produced it
        .set("partitioner", "murmur2_random");
    c
}

/// A consumer configuration for `group`: offsets are never committed automatically (each service
/// stores them with its results), reads start at the beginning when nothing is stored, and the
/// fetch buffers are bounded. `--kafka-option` still applies last (fetch sizes, timeouts).
pub fn consumer_config(kafka: &KafkaArgs, group: &str) -> ClientConfig {
    let mut c = kafka.client_config();
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", (16 * 1024 * 1024).to_string())
        .set("max.partition.fetch.bytes", (4 * 1024 * 1024).to_string())
        .set("queued.max.messages.kbytes", (32 * 1024).to_string())
        .set("queued.min.messages", "100000")
        // a member that crashed keeps its partitions until its session times out: Kafka's 45 s
        // default was the whole catch-up time after a SIGKILL (measured by the bench); 10 s is
        // the old default, with a heartbeat every 3 s
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000");
    for (k, v) in &kafka.options {
        c.set(k, v);
    }
    c
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        producer: ProducerArgs,
    }

    #[test]
    fn producer_is_idempotent_and_options_apply_last() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-brokers",
            "b1:9092,b2:9092",
            "--kafka-option",
            "socket.keepalive.enable=true",
            "--kafka-option",
            "sasl.oauthbearer.client.secret=abc123",
            "--kafka-sasl-password",
            "hunter2",
        ])
        .unwrap();
        let c = producer_config(&cli.kafka, &cli.producer);
        assert_eq!(c.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
        let debug = format!("{:?}", cli.kafka);
        assert!(
            !debug.contains("hunter2") && !debug.contains("abc123"),
            "{debug}"
        );
    }

    #[test]
    fn guarantees_cannot_be_overridden() {
        for option in [
            "acks=0",
            "enable.idempotence=false",
            "enable.auto.commit=true",
            " queue.buffering.max.messages =5",
            "novalue",
            "=x",
        ] {
            assert!(
                Cli::try_parse_from(["x", "--kafka-option", option]).is_err(),
                "{option}"
            );
        }
    }

    #[test]
    fn consumer_never_autocommits() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        let c = consumer_config(&cli.kafka, "g");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("group.id"), Some("g"));
        // a crashed member's partitions move after 10 s, not Kafka's 45 s; still overridable
        assert_eq!(c.get("session.timeout.ms"), Some("10000"));
        let cli = Cli::try_parse_from(["x", "--kafka-option", "session.timeout.ms=30000"]).unwrap();
        let c = consumer_config(&cli.kafka, "g");
        assert_eq!(c.get("session.timeout.ms"), Some("30000"));
    }
}
