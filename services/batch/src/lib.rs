//! lambdalake batch layer: the archiver appends every event to the immutable master dataset
//! (Parquet, [`dataset`], [`archiver`]), and the recompute job rebuilds every view from it with
//! Polars ([`recompute`]) and publishes them to Postgres as a new batch version ([`publish`]).
//! `docs/batch-layer.md` documents the design.

pub mod archiver;
pub mod bench;
mod config;
pub mod dataset;
pub mod metrics;
pub mod model;
pub mod publish;
pub mod recompute;
pub mod reference;
pub mod testing;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer};
use lambdalake_kafka::rdkafka::consumer::BaseConsumer;
use lambdalake_kafka::{consumer_config, ensure_topics};
use lambdalake_runtime::{Readiness, Tasks};

pub use config::{Command, Config};
pub use lambdalake_runtime::tasks::CancellationToken;

use crate::archiver::{Archiver, ArchiverSettings};
use crate::dataset::{Dataset, Kind};

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
    #[error("master dataset: {0}")]
    Dataset(#[from] dataset::DatasetError),
}

/// Why a recompute run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("master dataset: {0}")]
    Dataset(#[from] dataset::DatasetError),
    #[error("recompute: {0}")]
    Recompute(#[from] polars::error::PolarsError),
    #[error("cannot connect to Postgres: {}", publish::pg_message(.0))]
    Connect(#[source] tokio_postgres::Error),
    #[error("publish: {0}")]
    Publish(#[from] publish::PublishError),
    #[error("the recompute thread panicked")]
    Panicked,
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub version: i64,
    /// The model published with the version (its `version` field named), or why there is none.
    pub model: Result<publish::TrainedModel, String>,
    /// What was written to Redis for the speed layer, or why not.
    pub reference: Result<reference::Written, String>,
    pub rows_scanned: u64,
    pub events_counted: u64,
    pub cutoff_ms: Option<i64>,
    pub rows: Vec<(&'static str, u64)>,
    pub phases: Vec<(&'static str, Duration)>,
    pub duration: Duration,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cutoff = self
            .cutoff_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map_or_else(|| "none".to_owned(), |c| c.to_rfc3339());
        write!(
            f,
            "batch version {} published: {} rows scanned, {} events counted, cutoff {cutoff}, views written [",
            self.version, self.rows_scanned, self.events_counted
        )?;
        for (i, (t, n)) in self.rows.iter().enumerate() {
            write!(f, "{}{t}={n}", if i > 0 { " " } else { "" })?;
        }
        match &self.model {
            Ok(m) => {
                let q = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
                write!(
                    f,
                    "], model {} (trained on {}, held out {}: precision {}, recall {}, AUC {})",
                    m.model.version,
                    m.trained_on,
                    m.held_out,
                    q(m.precision),
                    q(m.recall),
                    q(m.auc)
                )?;
            }
            Err(why) => write!(f, "], no model ({why})")?,
        }
        match &self.reference {
            Ok(w) => write!(
                f,
                ", Redis: {} profiles {} baselines",
                w.profiles, w.baselines
            )?,
            Err(why) => write!(f, ", Redis not updated ({why})")?,
        }
        write!(f, " in {:.2?} (", self.duration)?;
        for (i, (p, d)) in self.phases.iter().enumerate() {
            write!(f, "{}{p} {:.2?}", if i > 0 { ", " } else { "" }, d)?;
        }
        write!(f, ")")
    }
}

/// Connect to Postgres (the connection is driven by a task that ends with the client); TLS as
/// the URL's `sslmode` says (see `lambdalake_runtime::tls`).
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls =
        tokio_postgres_rustls::MakeRustlsConnect::new(lambdalake_runtime::tls::client_config());
    let (client, connection) = tokio_postgres::connect(url, tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Recompute every view from the master dataset and publish them as the next batch version.
pub async fn run_once(config: &Config) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let mut client = connect(&config.postgres_url)
        .await
        .map_err(RunError::Connect)?;
    publish::migrate(&mut client)
        .await
        .map_err(RunError::Publish)?;
    let dataset = Dataset::open(&config.dataset)?;
    let lateness = i64::try_from(config.allowed_lateness.as_millis()).unwrap_or(i64::MAX);
    tracing::info!(dataset = %config.dataset.display(), "recompute: reading the master dataset");
    let settings = model::ModelSettings {
        min_frauds: config.model_min_frauds,
        max_rows: config.model_max_rows.get(),
    };
    let result = tokio::task::spawn_blocking(move || -> Result<_, RunError> {
        let t0 = Instant::now();
        let snapshot = dataset.snapshot()?;
        let listed = t0.elapsed();
        let mut r = recompute::recompute(&snapshot, lateness)?;
        r.phases.insert(0, ("list", listed));
        let t0 = Instant::now();
        let profiles = model::card_profiles(&r.card_profiles)?;
        let baselines = reference::device_baselines(&r.device_baselines)?;
        let training = model::train(&r.payments, &r.labels, &profiles, settings)?;
        r.phases.push(("model", t0.elapsed()));
        Ok((r, training, profiles, baselines))
    })
    .await
    .map_err(|_| RunError::Panicked)?;
    let (r, training, profiles, baselines) = match result {
        Ok(r) => r,
        Err(e) => {
            metrics::RUNS.with_label_values(&["failed"]).inc();
            return Err(e);
        }
    };
    let (trained, skipped) = match training {
        model::Training::Trained(m) => (Some(m), String::new()),
        model::Training::Skipped(why) => {
            tracing::info!(reason = %why, "no fraud model this run");
            (None, why)
        }
    };
    tracing::info!(
        rows = r.rows_scanned,
        events = r.events_counted,
        "recompute: views computed; publishing"
    );
    let t0 = Instant::now();
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let published = match publish::publish(
        &mut client,
        &r,
        trained.as_ref(),
        started_at,
        duration_ms,
        config.keep_versions.get(),
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            metrics::RUNS.with_label_values(&["failed"]).inc();
            return Err(e.into());
        }
    };
    let mut phases = r.phases.clone();
    phases.push(("publish", t0.elapsed()));
    let model = match trained {
        Some(mut m) => {
            m.model.version = publish::model_name(published.version);
            for (measure, v) in [
                ("precision", m.precision),
                ("recall", m.recall),
                ("auc", m.auc),
            ] {
                metrics::MODEL_QUALITY
                    .with_label_values(&[measure])
                    .set(v.unwrap_or(f64::NAN));
            }
            Ok(m)
        }
        None => Err(skipped),
    };
    let reference = if config.publish_reference {
        let t0 = Instant::now();
        let url = config.redis_url.clone();
        let keys = lambdalake_views::keys::Keys::new(config.key_prefix.clone());
        let version = published.version;
        let m = model.as_ref().ok().map(|m| m.model.clone());
        let written = tokio::task::spawn_blocking(move || {
            reference::publish(&url, &keys, version, &profiles, &baselines, m.as_ref())
        })
        .await
        .map_err(|_| "the Redis publication panicked".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
        phases.push(("redis", t0.elapsed()));
        match &written {
            Ok(_) => metrics::REFERENCE_PUBLICATIONS
                .with_label_values(&["written"])
                .inc(),
            Err(e) => {
                tracing::warn!(error = %e, version, "cannot write the reference data to Redis; the next run writes it again");
                metrics::REFERENCE_PUBLICATIONS
                    .with_label_values(&["failed"])
                    .inc();
            }
        }
        written
    } else {
        Err("LAMBDALAKE_BATCH_PUBLISH_REFERENCE is off".to_owned())
    };
    let duration = started.elapsed();
    metrics::RUNS.with_label_values(&["published"]).inc();
    metrics::RUN_SECONDS.observe(duration.as_secs_f64());
    metrics::ROWS_SCANNED.set(r.rows_scanned as i64);
    metrics::VERSION.set(published.version);
    if let Some(c) = r.cutoff_ms {
        metrics::CUTOFF.set(c / 1000);
    }
    Ok(RunSummary {
        version: published.version,
        model,
        reference,
        rows_scanned: r.rows_scanned,
        events_counted: r.events_counted,
        cutoff_ms: r.cutoff_ms,
        rows: published.rows,
        phases,
        duration,
    })
}

/// A built, not yet running batch service (`run`, `archive` or `schedule`).
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    archiver: Option<Archiver>,
    config: Config,
    tasks: Tasks,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.check().map_err(StartError::Config)?;
        metrics::register();
        let tasks = Tasks::new();
        let command = config.command();
        let dataset = Dataset::open(&config.dataset)?;
        let t = &config.topics;
        let readiness = Readiness::default();
        let archiver = if matches!(command, Command::Run | Command::Archive) {
            if config.create_topics {
                let names = [
                    t.sensor_readings.as_str(),
                    t.payments.as_str(),
                    t.fraud_labels.as_str(),
                ];
                ensure_topics(&config.kafka, t, &names, Duration::from_secs(10)).await?;
            }
            let mut cc = consumer_config(&config.kafka, &config.group);
            cc.set("partition.assignment.strategy", "roundrobin");
            for (k, v) in &config.kafka.options {
                cc.set(k, v);
            }
            let consumer: BaseConsumer<archiver::Context> = cc
                .create_with_context(archiver::Context::new(dataset.clone()))
                .map_err(StartError::Kafka)?;
            let settings = ArchiverSettings {
                topics: vec![
                    (t.sensor_readings.clone(), Kind::SensorReading),
                    (t.payments.clone(), Kind::Payment),
                    (t.fraud_labels.clone(), Kind::FraudLabel),
                ],
                flush_interval: config.flush_interval,
                flush_records: config.flush_records.get(),
                compact_min_files: config.compact_min_files.get(),
                compact_small_rows: config.compact_small_rows,
                compact_every: config.compact_every,
                retire_after: config.retire_after,
            };
            let a = Archiver::new(consumer, dataset, settings, tasks.token());
            let healthy = a.healthy.clone();
            readiness.add("dataset", move || {
                if healthy.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err("the last write to the master dataset failed".to_owned())
                }
            });
            Some(a)
        } else {
            None
        };
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
        tracing::info!(listen = %config.listen, port, ?command, dataset = %config.dataset.display(), group = %config.group, "batch layer ready");
        Ok(Application {
            port,
            server,
            archiver,
            config,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.token()
    }

    /// Run until SIGINT/SIGTERM (or the token): the archiver flushes what it buffered, a run in
    /// progress is finished.
    pub async fn run_until_stopped(self) -> Result<(), String> {
        let Application {
            server,
            archiver,
            config,
            tasks,
            ..
        } = self;
        tasks.cancel_on_signals();
        tasks.spawn_http(server);
        if let Some(archiver) = archiver {
            tasks.spawn_thread("archiver", move || archiver.run())?;
        }
        if matches!(config.command(), Command::Run | Command::Schedule) {
            let token = tasks.token();
            let config = Arc::new(config);
            tasks.spawn("recompute", async move {
                loop {
                    tokio::select! {
                        () = token.cancelled() => return Ok(()),
                        () = tokio::time::sleep(config.interval) => {}
                    }
                    match run_once(&config).await {
                        Ok(s) => tracing::info!("{s}"),
                        Err(e) => tracing::error!(error = %e, "batch run failed; retrying at the next interval"),
                    }
                }
            });
        }
        let result = tasks.wait().await;
        result.map_err(|(task, error)| format!("{task}: {error}"))
    }
}

#[cfg(test)]
mod tests;
