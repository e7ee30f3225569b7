use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Statistics};
use tokio::sync::Notify;

use crate::{KafkaArgs, ProducerArgs, TraceContext, producer_config};

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

impl ProducerContext for HealthContext {
    type DeliveryOpaque = Box<Slot>;

    /// Book-keeping only: record the outcome in the message's batch.
    fn delivery(&self, result: &DeliveryResult<'_>, slot: Box<Slot>) {
        let outcome = match result {
            Ok(m) => Ok(Acked {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((err, _)) => Err(ProduceError::classify(err.clone())),
        };
        slot.batch.record(slot.index, outcome);
    }
}

/// An idempotent `acks=all` producer.
///
/// Messages are sent in batches ([`Producer::batch`]): each message's delivery report is
/// recorded in its batch, and the batch is awaited once, so a request of a thousand events costs
/// one wake-up instead of a thousand futures.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ThreadedProducer<HealthContext>>,
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
            inner: Arc::new(inner),
            health,
            capacity: args.queue_max_messages.get(),
        })
    }

    /// Start a batch of messages.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            producer: self,
            state: Arc::new(BatchState {
                // one for the batch itself, released by `Batch::acked`
                pending: AtomicUsize::new(1),
                outcomes: Mutex::new(Vec::new()),
                done: Notify::new(),
            }),
            headers: None,
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

/// Where a delivery report goes: its batch and its index there.
pub struct Slot {
    batch: Arc<BatchState>,
    index: usize,
}

struct BatchState {
    pending: AtomicUsize,
    outcomes: Mutex<Vec<(usize, Result<Acked, ProduceError>)>>,
    done: Notify,
}

impl BatchState {
    fn record(&self, index: usize, outcome: Result<Acked, ProduceError>) {
        if let Ok(mut outcomes) = self.outcomes.lock() {
            outcomes.push((index, outcome));
        }
        self.release();
    }

    fn release(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_one();
        }
    }
}

/// Messages sent together; [`Batch::acked`] waits for every delivery report.
pub struct Batch<'p> {
    producer: &'p Producer,
    state: Arc<BatchState>,
    headers: Option<OwnedHeaders>,
}

impl Batch<'_> {
    /// Attach a trace context to every message of the batch.
    pub fn with_trace(mut self, trace: Option<&TraceContext>) -> Self {
        self.headers = trace.map(TraceContext::headers);
        self
    }

    /// Enqueue one message, remembered under `index`. Never blocks.
    pub fn send(
        &self,
        index: usize,
        topic: &str,
        key: &[u8],
        payload: &[u8],
    ) -> Result<(), ProduceError> {
        self.state.pending.fetch_add(1, Ordering::AcqRel);
        let slot = Box::new(Slot {
            batch: self.state.clone(),
            index,
        });
        let mut record = BaseRecord::with_opaque_to(topic, slot)
            .key(key)
            .payload(payload);
        if let Some(headers) = &self.headers {
            record = record.headers(headers.clone());
        }
        match self.producer.inner.send(record) {
            Ok(()) => Ok(()),
            Err((err, _record)) => {
                self.state.release();
                Err(ProduceError::classify(err))
            }
        }
    }

    /// Wait until the broker answered for every message sent; the outcome of each, by index
    /// (in the order the reports arrived).
    pub async fn acked(self) -> Vec<(usize, Result<Acked, ProduceError>)> {
        if self.state.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            self.state.done.notified().await;
        }
        match self.state.outcomes.lock() {
            Ok(mut outcomes) => std::mem::take(&mut *outcomes),
            Err(_) => Vec::new(),
        }
    }
}
