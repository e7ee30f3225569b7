use std::num::{NonZeroI32, NonZeroU16};
use std::time::Duration;

use lambdalake_events::EventKind;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::KafkaArgs;

/// The topic names every service agrees on, and the shape topics are created with.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicArgs {
    /// Topic of sensor readings (keyed by `device_id`).
    #[arg(
        long = "topic-sensor-readings",
        env = "LAMBDALAKE_TOPIC_SENSOR_READINGS",
        default_value = "sensor-readings"
    )]
    pub sensor_readings: String,

    /// Topic of card payments (keyed by `card_id`).
    #[arg(
        long = "topic-payments",
        env = "LAMBDALAKE_TOPIC_PAYMENTS",
        default_value = "payments"
    )]
    pub payments: String,

    /// Topic of alerts (fraud scores over the threshold, IoT alerts), keyed by card / device.
    #[arg(
        long = "topic-alerts",
        env = "LAMBDALAKE_TOPIC_ALERTS",
        default_value = "alerts"
    )]
    pub alerts: String,

    /// Topic of events the speed layer found behind its watermark, with the reason and lateness.
    #[arg(
        long = "topic-late-events",
        env = "LAMBDALAKE_TOPIC_LATE_EVENTS",
        default_value = "late-events"
    )]
    pub late_events: String,

    /// Topic of records a consumer could not decode (they passed no validation or a newer one).
    #[arg(
        long = "topic-dead-letter",
        env = "LAMBDALAKE_TOPIC_DEAD_LETTER",
        default_value = "dead-letter"
    )]
    pub dead_letter: String,

    /// Topic of fraud labels (verdicts on payments, keyed by `card_id`) the batch layer trains on.
    #[arg(
        long = "topic-fraud-labels",
        env = "LAMBDALAKE_TOPIC_FRAUD_LABELS",
        default_value = "fraud-labels"
    )]
    pub fraud_labels: String,

    /// Partitions of each topic when a service creates it.
    #[arg(
        long = "topic-partitions",
        env = "LAMBDALAKE_TOPIC_PARTITIONS",
        default_value = "4"
    )]
    pub partitions: NonZeroI32,

    /// Replication factor of each topic when a service creates it.
    #[arg(
        long = "topic-replication",
        env = "LAMBDALAKE_TOPIC_REPLICATION",
        default_value = "1"
    )]
    pub replication: NonZeroU16,
}

impl TopicArgs {
    pub fn for_kind(&self, kind: EventKind) -> &str {
        match kind {
            EventKind::SensorReading => &self.sensor_readings,
            EventKind::Payment => &self.payments,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot create a Kafka admin client: {0}")]
    CreateClient(#[source] KafkaError),
    #[error("cannot reach Kafka at {brokers} to create topics: {source}")]
    Unreachable {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot create topic {topic}: {source}")]
    CreateTopic {
        topic: String,
        #[source]
        source: RDKafkaErrorCode,
    },
}

/// Create `topics` if they do not exist yet (an existing topic is left as it is).
pub async fn ensure_topics(
    kafka: &KafkaArgs,
    topics: &TopicArgs,
    names: &[&str],
    timeout: Duration,
) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config()
        .create()
        .map_err(TopicError::CreateClient)?;
    let new: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                topics.partitions.get(),
                TopicReplication::Fixed(i32::from(topics.replication.get())),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|source| TopicError::Unreachable {
            brokers: kafka.brokers.clone(),
            source,
        })?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic, "topic exists")
            }
            Err((topic, source)) => return Err(TopicError::CreateTopic { topic, source }),
        }
    }
    Ok(())
}
