//! lambdalake speed layer: Kafka → event-time windows, fraud scoring → Redis views, exactly once.
//!
//! One consumer group reads the sensor and payment topics in micro-batches ([`pipeline`]). Each
//! batch is classified (invalid → dead-letter topic, behind the watermark → late-events topic,
//! duplicate → dropped, otherwise live), planned with the view definitions of `lambdalake-views`
//! ([`plan`]), and applied per partition by one atomic Redis script that also advances the
//! partition's stored offset and refuses offsets or event ids already applied ([`apply`]). On
//! assignment, partitions start at the offsets stored in Redis ([`consumer`]). The key scheme is
//! `lambdalake_views::keys`; `docs/speed-layer.md` documents the whole design.

pub mod applier;
pub mod apply;
mod config;
pub mod consumer;
pub mod metrics;
pub mod pipeline;
pub mod plan;
mod reference;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{App, HttpServer};
use lambdalake_kafka::rdkafka::consumer::BaseConsumer;
use lambdalake_kafka::{Producer, consumer_config, ensure_topics};
use lambdalake_runtime::{Readiness, Tasks};
use lambdalake_views::keys::Keys;

pub use config::Config;
pub use lambdalake_runtime::tasks::CancellationToken;

use crate::pipeline::{Health, Pipeline, Settings};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Listen(#[from] lambdalake_runtime::ops::ListenError),
    #[error("cannot create a Kafka client: {0}")]
    Kafka(#[source] lambdalake_kafka::rdkafka::error::KafkaError),
    #[error(transparent)]
    Topics(#[from] lambdalake_kafka::TopicError),
    #[error("invalid Redis URL: {0}")]
    Redis(#[source] redis::RedisError),
}

/// A built, not yet running speed layer.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    pipeline: Pipeline,
    producer: Producer,
    shutdown_timeout: Duration,
    tasks: Tasks,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.check().map_err(StartError::Config)?;
        metrics::register();
        let t = &config.topics;
        metrics::register_topics(&[&t.sensor_readings, &t.payments]);
        if config.create_topics {
            let names = [
                t.sensor_readings.as_str(),
                t.payments.as_str(),
                t.alerts.as_str(),
                t.late_events.as_str(),
                t.dead_letter.as_str(),
            ];
            ensure_topics(&config.kafka, t, &names, Duration::from_secs(10)).await?;
        }
        let redis = redis::Client::open(config.redis_url.as_str()).map_err(StartError::Redis)?;
        let redis_up = match redis
            .get_connection_with_timeout(Duration::from_secs(2))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "Redis is not reachable yet; the speed layer waits for it");
                false
            }
        };
        let keys = Keys::new(config.key_prefix.clone());
        let tasks = Tasks::new();
        let producer = Producer::new(&config.kafka, &config.producer).map_err(StartError::Kafka)?;
        let mut cc = consumer_config(&config.kafka, &config.group);
        // eager rebalancing: the rebalance callback assigns with the offsets stored in Redis
        cc.set("partition.assignment.strategy", "roundrobin")
            // the statistics carry each partition's high watermark, for the lag metric
            .set("statistics.interval.ms", "1000")
            .set(
                "fetch.wait.max.ms",
                millis(config.fetch_wait).max(1).to_string(),
            );
        // the operator's --kafka-option still wins (the checks refused the strategy)
        for (k, v) in &config.kafka.options {
            cc.set(k, v);
        }
        let consumer: BaseConsumer<consumer::Context> = cc
            .create_with_context(consumer::Context::new(
                redis.clone(),
                keys.clone(),
                tasks.token(),
                config.delivery,
            ))
            .map_err(StartError::Kafka)?;

        let health = Arc::new(Health::default());
        health.redis_ok.store(redis_up, Ordering::Release);
        let settings = Settings {
            trigger_interval: config.trigger_interval,
            max_batch: config.max_batch.get(),
            close_when_caught_up: config.close_when_caught_up,
            lateness_ms: millis(config.allowed_lateness),
            idle_ms: millis(config.idle_partition_after),
            ttl_ms: millis(config.view_ttl),
            alerts_kept: config.alerts_kept.get(),
            card_cache: config.card_cache,
            fraud_threshold: config.fraud_threshold,
            shutdown_timeout: config.shutdown_timeout,
            topics: [t.sensor_readings.clone(), t.payments.clone()],
            alerts_topic: t.alerts.clone(),
            late_topic: t.late_events.clone(),
            dead_letter_topic: t.dead_letter.clone(),
            delivery: config.delivery,
        };
        let pipeline = Pipeline::new(
            settings,
            consumer,
            producer.clone(),
            tokio::runtime::Handle::current(),
            redis,
            keys,
            reference::ReferenceCache::new(config.reference_refresh),
            tasks.token(),
            health.clone(),
        );

        let readiness = Readiness::default();
        let h = health.clone();
        readiness.add("redis", move || {
            if h.redis_ok.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("Redis is unreachable or the last write failed".to_owned())
            }
        });
        let h = health.clone();
        readiness.add("kafka", move || {
            if h.kafka_ok.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("the consumer reports errors".to_owned())
            }
        });
        let (listener, port) = lambdalake_runtime::ops::bind(config.listen)?;
        let server = HttpServer::new(move || {
            App::new().configure(lambdalake_runtime::ops::routes(readiness.clone()))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .map_err(|source| lambdalake_runtime::ops::ListenError {
            addr: config.listen,
            source,
        })?
        .run();
        tracing::info!(
            listen = %config.listen, port, brokers = %config.kafka.brokers, group = %config.group,
            topics = ?[&t.sensor_readings, &t.payments], lateness = ?config.allowed_lateness,
            trigger = ?config.trigger_interval, "speed layer ready"
        );
        Ok(Application {
            port,
            server,
            pipeline,
            producer,
            shutdown_timeout: config.shutdown_timeout,
            tasks,
        })
    }

    /// The port of the operations endpoints.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the service when cancelled (tests; signals do the same).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.token()
    }

    /// Run until SIGINT/SIGTERM (or the shutdown token): the micro-batch in flight is finished,
    /// then the consumer leaves the group.
    pub async fn run_until_stopped(self) -> Result<(), String> {
        let Application {
            server,
            pipeline,
            producer,
            shutdown_timeout,
            tasks,
            ..
        } = self;
        tasks.cancel_on_signals();
        tasks.spawn_http(server);
        tasks.spawn_thread("pipeline", move || pipeline.run())?;
        let result = tasks.wait().await;
        let _ = tokio::task::spawn_blocking(move || producer.flush(shutdown_timeout)).await;
        result.map_err(|(task, error)| format!("{task}: {error}"))
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
