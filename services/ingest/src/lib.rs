//! lambdalake ingest: HTTP → validated events → Kafka.
//!
//! `POST /v1/sensor-readings` and `POST /v1/payments` take one JSON object, a JSON array of
//! objects, or NDJSON (`Content-Type: application/x-ndjson`). Each item is validated with
//! `lambdalake-events`; valid items are produced, unchanged, to the kind's topic keyed by
//! `device_id` / `card_id`. The answer reports every item that was not accepted, with its index,
//! field and reason (see [`report`]). An item counts as accepted only after the broker
//! acknowledged it.

mod config;
pub mod metrics;
pub mod report;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use lambdalake_events::Policy;
use lambdalake_kafka::{Producer, ensure_topics};
use lambdalake_runtime::{Readiness, Tasks};

pub use config::Config;
pub use lambdalake_runtime::tasks::CancellationToken;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Listen(#[from] lambdalake_runtime::ops::ListenError),
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[source] lambdalake_kafka::rdkafka::error::KafkaError),
    #[error(transparent)]
    Topics(#[from] lambdalake_kafka::TopicError),
}

/// What every request handler shares.
pub(crate) struct State {
    pub producer: Producer,
    pub topics: lambdalake_kafka::TopicArgs,
    pub policy: Policy,
    pub max_body_bytes: usize,
    pub body_timeout: std::time::Duration,
    pub max_events: usize,
    pub access: lambdalake_runtime::Access,
    pub retry_after: Duration,
}

/// A built, listening, not yet serving ingest service.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    producer: Producer,
    shutdown_timeout: Duration,
    tasks: Tasks,
}

impl Application {
    /// Check the configuration, create the topics (unless told not to), connect the producer
    /// and bind the listener.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.check().map_err(StartError::Config)?;
        metrics::register();
        if config.create_topics {
            let names = [
                config.topics.sensor_readings.as_str(),
                config.topics.payments.as_str(),
            ];
            ensure_topics(
                &config.kafka,
                &config.topics,
                &names,
                Duration::from_secs(10),
            )
            .await?;
        }
        let producer =
            Producer::new(&config.kafka, &config.producer).map_err(StartError::Producer)?;
        let (listener, port) = lambdalake_runtime::ops::bind(config.listen)?;

        let readiness = Readiness::default();
        let health = producer.health().clone();
        readiness.add("kafka", move || {
            if health.is_fatal() {
                Err("the producer hit a fatal error; restarting".to_owned())
            } else if health.brokers_reachable() {
                Ok(())
            } else {
                Err("all brokers are down".to_owned())
            }
        });

        let state = web::Data::new(State {
            producer: producer.clone(),
            topics: config.topics.clone(),
            policy: Policy::ingest(config.max_future_skew),
            max_body_bytes: config.max_body_bytes.get(),
            body_timeout: config.body_timeout,
            max_events: config.max_events_per_request.get(),
            access: lambdalake_runtime::Access::new(
                config.api_keys.clone(),
                config.rate_limit,
                config.rate_limit_burst,
            ),
            retry_after: config.retry_after,
        });
        let readiness = Arc::new(readiness);
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(lambdalake_runtime::ops::routes(Readiness::clone(
                    &readiness,
                )))
                .configure(routes::configure)
        })
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs().max(1));
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        let server = server
            .listen(listener)
            .map_err(|source| lambdalake_runtime::ops::ListenError {
                addr: config.listen,
                source,
            })?
            .run();
        tracing::info!(
            listen = %config.listen, port, brokers = %config.kafka.brokers,
            sensor_topic = %config.topics.sensor_readings, payment_topic = %config.topics.payments,
            auth = !config.api_keys.is_empty(), "ingest ready"
        );
        Ok(Application {
            port,
            server,
            producer,
            shutdown_timeout: config.shutdown_timeout,
            tasks: Tasks::new(),
        })
    }

    /// The port the listener is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the service when cancelled (tests; signals do the same).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.token()
    }

    /// Serve until SIGINT/SIGTERM (or the shutdown token): stop accepting, finish in-flight
    /// requests, then flush the producer.
    pub async fn run_until_stopped(self) -> Result<(), std::io::Error> {
        let Application {
            server,
            producer,
            shutdown_timeout,
            tasks,
            ..
        } = self;
        tasks.cancel_on_signals();
        tasks.spawn_http(server);
        let token = tasks.token();
        let sampler = producer.clone();
        // samples the queue depth, and stops the service (non-zero exit) when the producer hit a
        // fatal error: it cannot deliver any more, a restart gives a fresh one
        tasks.spawn("producer-watch", async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        metrics::PRODUCER_QUEUE_DEPTH.set(sampler.in_flight() as i64);
                        if sampler.health().is_fatal() {
                            return Err("the Kafka producer hit a fatal error".into());
                        }
                    }
                    () = token.cancelled() => return Ok(()),
                }
            }
        });
        let outcome = tasks.wait().await;
        tracing::info!(
            in_flight = producer.in_flight(),
            "http stopped; flushing the producer"
        );
        let flushed = tokio::task::spawn_blocking(move || producer.flush(shutdown_timeout))
            .await
            .map_err(std::io::Error::other)?;
        if let Err(e) = flushed {
            tracing::error!(error = %e, "producer flush incomplete");
        }
        tracing::info!("ingest stopped");
        outcome
            .map_err(|(task, error)| std::io::Error::other(format!("task {task} failed: {error}")))
    }
}
