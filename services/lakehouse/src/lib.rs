//! lambdalake lakehouse: the Kafka event topics → one streaming Delta Lake pipeline, bronze →
//! silver → gold ([`pipeline`]), exactly once per table by Delta transaction identifiers
//! ([`tables`]), with OPTIMIZE and VACUUM while it streams ([`maintenance`]).
//! `docs/lakehouse.md` documents the design.

pub mod bench;
mod config;
pub mod history;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod tables;

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{App, HttpServer};
use lambdalake_kafka::rdkafka::consumer::BaseConsumer;
use lambdalake_kafka::{consumer_config, ensure_topics};
use lambdalake_runtime::{Readiness, Tasks};

pub use config::Config;
pub use deltalake_core;
pub use lambdalake_runtime::tasks::CancellationToken;

use crate::pipeline::{Pipeline, Settings};
use crate::tables::{Kind, Location};

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
    #[error("cannot open the Delta tables at {location}: {source}")]
    Tables {
        location: String,
        source: deltalake_core::DeltaTableError,
    },
}

/// A built, not yet running lakehouse service.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    pipeline: Pipeline,
    tasks: Tasks,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.check().map_err(StartError::Config)?;
        let location = Location::parse(&config.tables).map_err(|e| StartError::Config(vec![e]))?;
        metrics::register();
        let tasks = Tasks::new();
        let t = &config.topics;
        if config.create_topics {
            let names = [
                t.sensor_readings.as_str(),
                t.payments.as_str(),
                t.fraud_labels.as_str(),
            ];
            ensure_topics(&config.kafka, t, &names, Duration::from_secs(10)).await?;
        }
        let topics = vec![
            (t.sensor_readings.clone(), Kind::SensorReading),
            (t.payments.clone(), Kind::Payment),
            (t.fraud_labels.clone(), Kind::FraudLabel),
        ];
        let handle = tokio::runtime::Handle::current();
        let mut cc = consumer_config(&config.kafka, &config.group);
        cc.set("partition.assignment.strategy", "roundrobin");
        // the high watermarks for the lag metric, every second
        cc.set("statistics.interval.ms", "1000");
        for (k, v) in &config.kafka.options {
            cc.set(k, v);
        }
        let consumer: BaseConsumer<pipeline::Context> = cc
            .create_with_context(pipeline::Context::new(
                location.clone(),
                topics.clone(),
                config.checkpoint_interval.get(),
                handle.clone(),
                config.delivery,
            ))
            .map_err(StartError::Kafka)?;
        let settings = Settings {
            topics,
            trigger: config.trigger,
            max_rows: config.max_rows.get(),
            dedupe_memory: config.dedupe_memory,
            checkpoint_interval: config.checkpoint_interval.get(),
            optimize_every: config.optimize_every,
            vacuum_every: config.vacuum_every,
            vacuum_retention: config.vacuum_retention,
            fraud_threshold: config.fraud_threshold,
            max_extra_columns: config.max_extra_columns,
            delivery: config.delivery,
        };
        let pipeline = Pipeline::open(consumer, location.clone(), settings, handle, tasks.token())
            .await
            .map_err(|source| StartError::Tables {
                location: location.describe(),
                source,
            })?;
        let readiness = Readiness::default();
        let healthy = pipeline.healthy.clone();
        readiness.add("tables", move || {
            if healthy.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("the last micro-batch could not be committed".to_owned())
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
        tracing::info!(listen = %config.listen, port, tables = %location.describe(), group = %config.group, trigger = ?config.trigger, "lakehouse ready");
        Ok(Application {
            port,
            server,
            pipeline,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.token()
    }

    /// Run until SIGINT/SIGTERM (or the token): the micro-batch buffered then is committed.
    pub async fn run_until_stopped(self) -> Result<(), String> {
        let Application {
            server,
            pipeline,
            tasks,
            ..
        } = self;
        tasks.cancel_on_signals();
        tasks.spawn_http(server);
        tasks.spawn_thread("pipeline", move || pipeline.run())?;
        tasks
            .wait()
            .await
            .map_err(|(task, error)| format!("{task}: {error}"))
    }
}
