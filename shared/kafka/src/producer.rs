use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Statistics};

use crate::{KafkaArgs, ProducerArgs, producer_config};

/// Where the broker stored an acknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

/// Why a message was not acknowledged, classed by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The local queue is full: back off and retry (HTTP 429).
    #[error("producer queue is full")]
    QueueFull,
    /// The broker could not be reached or did not acknowledge in time: retry later (HTTP 503).
    /// The message may or may not have been stored; a retry with the same event id is safe
    /// because every view counts an event id once.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] KafkaError),
    /// The broker refused this message for good (e.g. too large): do not retry it.
    #[error("message refused by the broker: {0}")]
    Refused(#[source] KafkaError),
}

impl ProduceError {
    fn classify(err: KafkaError) -> Self {
        use RDKafkaErrorCode as C;
        match err.rdkafka_error_code() {
            Some(C::QueueFull) => ProduceError::QueueFull,
            Some(
                C::MessageSizeTooLarge
                | C::InvalidMessage
                | C::InvalidMessageSize
                | C::InvalidRecord
                | C::InvalidTopic,
            ) => ProduceError::Refused(err),
            _ => ProduceError::Unavailable(err),
        }
    }

    pub fn is_retryable(&self) -> bool {
        !matches!(self, ProduceError::Refused(_))
    }
}

/// Whether the brokers looked reachable lately, and whether the producer hit a fatal error, as
/// librdkafka reports it. Cheap to read; set from librdkafka's callbacks (which only flip flags:
/// no work happens inside them).
#[derive(Debug, Clone, Default)]
pub struct ProducerHealth {
    all_brokers_down: Arc<AtomicBool>,
    fatal: Arc<AtomicBool>,
}

impl ProducerHealth {
    pub fn brokers_reachable(&self) -> bool {
        !self.all_brokers_down.load(Ordering::Relaxed)
    }

    /// A fatal error (e.g. the idempotent producer lost its sequence): the producer cannot be
    /// used any more and the process should restart.
    pub fn is_fatal(&self) -> bool {
        self.fatal.load(Ordering::Relaxed)
    }

    fn mark_reachable(&self) {
        self.all_brokers_down.store(false, Ordering::Relaxed);
    }
}

/// Client context: records broker reachability.
#[derive(Clone)]
pub struct HealthContext(ProducerHealth);

impl ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown) => {
                self.0.all_brokers_down.store(true, Ordering::Relaxed)
            }
            KafkaError::Global(RDKafkaErrorCode::Fatal) => {
                self.0.fatal.store(true, Ordering::Relaxed)
            }
            _ => {}
        }
        tracing::warn!(%error, reason, "kafka client error");
    }

    fn stats(&self, stats: Statistics) {
        if stats.brokers.values().any(|b| b.state == "UP") {
            self.0.mark_reachable();
        }
    }
}

/// An idempotent `acks=all` producer.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<HealthContext>,
    health: ProducerHealth,
    capacity: usize,
}

impl Producer {
    pub fn new(kafka: &KafkaArgs, args: &ProducerArgs) -> Result<Self, KafkaError> {
        let mut config: ClientConfig = producer_config(kafka, args);
        // statistics feed the reachability flag back to "up" after an outage
        config.set("statistics.interval.ms", "1000");
        let health = ProducerHealth::default();
        let inner = config.create_with_context(HealthContext(health.clone()))?;
        Ok(Producer {
            inner,
            health,
            capacity: args.queue_max_messages.get(),
        })
    }

    /// Enqueue one message; the returned future resolves when the broker acknowledged it (or
    /// it failed). Never blocks.
    pub fn send(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<Delivery, ProduceError> {
        let record = FutureRecord::to(topic).key(key).payload(payload);
        match self.inner.send_result(record) {
            Ok(future) => Ok(Delivery(future)),
            Err((err, _)) => Err(ProduceError::classify(err)),
        }
    }

    /// Messages enqueued and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.inner.in_flight_count()).unwrap_or(0)
    }

    /// The most messages the queue holds (`queue.buffering.max.messages`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn health(&self) -> &ProducerHealth {
        &self.health
    }

    /// Wait until every enqueued message is acknowledged or failed. Blocking: call it from a
    /// blocking thread.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(Timeout::After(timeout))
    }
}

/// The outcome of one message, when the broker has answered.
pub struct Delivery(DeliveryFuture);

impl Delivery {
    pub async fn acked(self) -> Result<Acked, ProduceError> {
        match self.0.await {
            Ok(Ok(delivered)) => Ok(Acked {
                partition: delivered.partition,
                offset: delivered.offset,
            }),
            Ok(Err((err, _))) => Err(ProduceError::classify(err)),
            // the producer was dropped before the message was delivered
            Err(_canceled) => Err(ProduceError::Unavailable(KafkaError::Canceled)),
        }
    }
}
