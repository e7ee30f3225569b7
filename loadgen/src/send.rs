//! Sending the workload: open loop at a target rate (latency from each event's *scheduled* send
//! time, so a slow server cannot hide its queueing — no coordinated omission) or as fast as the
//! server takes it; through ingest's HTTP API (NDJSON batches) or straight to Kafka. Fraud labels
//! always go straight to Kafka: they come from another system (chargebacks), not through ingest.
//!
//! Every event ingest accepted goes into the ground truth ([`Truth`]); rejected, failed and
//! indeterminate ones are counted (a malformed event accepted or a valid one rejected is a bug
//! and is counted apart).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lambdalake_events::EventTime;
use lambdalake_kafka::{KafkaArgs, ProducerArgs, TopicArgs};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::generator::{Generator, Kind, Outgoing};
use crate::truth::Truth;

/// How events reach Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Through ingest's HTTP API (validated, acknowledged once in Kafka).
    Ingest,
    /// Straight to the topics with the Kafka producer (malformed events reach the consumers,
    /// which must drop them).
    Kafka,
}

/// Where and how fast to send.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// Events per second, open loop; 0 sends as fast as the server takes them (closed loop,
    /// `--concurrency` requests in flight).
    #[arg(long, default_value = "2000")]
    pub rate: u64,

    /// How events reach Kafka.
    #[arg(long, value_enum, default_value = "ingest")]
    pub via: Via,

    /// Ingest's base URL.
    #[arg(
        long,
        env = "LAMBDALAKE_INGEST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub ingest_url: String,

    /// Most events per NDJSON request (or per producer batch).
    #[arg(long, default_value = "500")]
    pub batch: usize,

    /// Most requests in flight; beyond it, sends wait (and the wait counts in the latency).
    #[arg(long, default_value = "64")]
    pub concurrency: usize,
}

/// Counters of a run, shared with the progress line and the report.
#[derive(Default)]
pub struct Stats {
    pub scheduled: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub indeterminate: AtomicU64,
    pub labels: AtomicU64,
    /// Bugs if non-zero: malformed events accepted, valid events rejected.
    pub malformed_accepted: AtomicU64,
    pub valid_rejected: AtomicU64,
    /// Latency from the scheduled send time to the acknowledgement, µs.
    pub latency: Mutex<Option<Histogram<u64>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scheduled: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub failed: u64,
    pub indeterminate: u64,
    pub labels: u64,
    pub malformed_accepted: u64,
    pub valid_rejected: u64,
    pub seconds: f64,
    pub accepted_per_second: f64,
    pub latency: crate::truth::Percentiles,
}

impl Stats {
    fn record_latency(&self, scheduled: &[Instant], at: Instant) {
        if let Ok(mut h) = self.latency.lock() {
            let h = h.get_or_insert_with(|| Histogram::new(3).expect("histogram"));
            for s in scheduled {
                h.record(at.saturating_duration_since(*s).as_micros() as u64)
                    .ok();
            }
        }
    }

    pub fn summary(&self, seconds: f64) -> Summary {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let latency = self
            .latency
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(crate::truth::percentiles))
            .unwrap_or_default();
        Summary {
            scheduled: get(&self.scheduled),
            accepted: get(&self.accepted),
            rejected: get(&self.rejected),
            failed: get(&self.failed),
            indeterminate: get(&self.indeterminate),
            labels: get(&self.labels),
            malformed_accepted: get(&self.malformed_accepted),
            valid_rejected: get(&self.valid_rejected),
            seconds,
            accepted_per_second: get(&self.accepted) as f64 / seconds.max(1e-9),
            latency,
        }
    }
}

/// Sends batches of generated events and records the answers.
#[derive(Clone)]
pub struct Sender {
    args: SendArgs,
    http: reqwest::Client,
    producer: lambdalake_kafka::Producer,
    topics: Arc<TopicArgs>,
    pub truth: Arc<Mutex<Truth>>,
    pub stats: Arc<Stats>,
    permits: Arc<Semaphore>,
}

/// One batch: events of one kind with their scheduled send times.
struct Batch {
    kind: Kind,
    events: Vec<Outgoing>,
    scheduled: Vec<Instant>,
}

impl Sender {
    pub fn new(
        args: SendArgs,
        kafka: &KafkaArgs,
        producer: &ProducerArgs,
        topics: TopicArgs,
        truth: Arc<Mutex<Truth>>,
    ) -> anyhow::Result<Self> {
        if args.batch == 0 || args.concurrency == 0 {
            anyhow::bail!("--batch and --concurrency must be at least 1");
        }
        url::Url::parse(&args.ingest_url)
            .map_err(|e| anyhow::anyhow!("--ingest-url {:?}: {e}", args.ingest_url))?;
        Ok(Sender {
            permits: Arc::new(Semaphore::new(args.concurrency)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            producer: lambdalake_kafka::Producer::new(kafka, producer)?,
            topics: Arc::new(topics),
            args,
            truth,
            stats: Arc::new(Stats::default()),
        })
    }

    /// Run the workload for `duration` (or until `stop` is set); returns the summary once every
    /// request in flight has its answer.
    pub async fn run(
        &self,
        generator: &mut Generator,
        duration: Duration,
        stop: &AtomicBool,
        progress: bool,
    ) -> Summary {
        let started = Instant::now();
        let show = progress.then(|| self.progress(started, duration));
        let mut tasks = tokio::task::JoinSet::new();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while started.elapsed() < duration && !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let elapsed = started.elapsed().min(duration);
            let (due, when): (u64, Box<dyn Fn(u64) -> Instant>) = if self.args.rate == 0 {
                // closed loop: keep `concurrency` requests busy
                let free = self.permits.available_permits() as u64;
                let now = Instant::now();
                (sent + free * self.args.batch as u64, Box::new(move |_| now))
            } else {
                let rate = self.args.rate;
                (
                    (elapsed.as_secs_f64() * rate as f64) as u64,
                    Box::new(move |i| started + Duration::from_secs_f64(i as f64 / rate as f64)),
                )
            };
            let now_ms = EventTime::now().millis();
            let mut batches: Vec<Batch> = Vec::new();
            while sent < due {
                let e = generator.next(now_ms);
                let at = when(sent);
                sent += 1;
                match batches
                    .iter_mut()
                    .find(|b| b.kind == e.kind && b.events.len() < self.args.batch)
                {
                    Some(b) => {
                        b.events.push(e);
                        b.scheduled.push(at);
                    }
                    None => batches.push(Batch {
                        kind: e.kind,
                        events: vec![e],
                        scheduled: vec![at],
                    }),
                }
            }
            self.stats.scheduled.store(sent, Ordering::Relaxed);
            for b in batches {
                let this = self.clone();
                tasks.spawn(async move { this.send(b).await });
            }
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        if let Some(h) = show {
            h.abort();
            eprintln!();
        }
        self.stats.summary(started.elapsed().as_secs_f64())
    }

    fn progress(&self, started: Instant, duration: Duration) -> tokio::task::JoinHandle<()> {
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let accepted = stats.accepted.load(Ordering::Relaxed);
                let rate = (accepted - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), accepted);
                let p99 = stats
                    .latency
                    .lock()
                    .ok()
                    .and_then(|h| h.as_ref().map(|h| h.value_at_quantile(0.99)))
                    .unwrap_or(0) as f64
                    / 1000.0;
                let done = started.elapsed().as_secs_f64() / duration.as_secs_f64().max(1e-9);
                let bar = "#".repeat(((done.min(1.0)) * 30.0) as usize);
                eprint!(
                    "\r[{bar:<30}] {:>5.0} s  accepted {accepted:>10}  {rate:>8.0}/s  rejected {:>7}  failed {:>5}  p99 {p99:>7.1} ms ",
                    started.elapsed().as_secs_f64(),
                    stats.rejected.load(Ordering::Relaxed),
                    stats.failed.load(Ordering::Relaxed)
                        + stats.indeterminate.load(Ordering::Relaxed),
                );
            }
        })
    }

    async fn send(&self, b: Batch) {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        {
            // in flux from now on
            let now = Instant::now();
            if let Ok(mut t) = self.truth.lock() {
                for e in &b.events {
                    if let Some(v) = &e.valid {
                        t.touch(v, now);
                    }
                }
            }
        }
        let outcomes = if b.kind == Kind::Label || self.args.via == Via::Kafka {
            self.produce(&b).await
        } else {
            self.post(&b).await
        };
        let at = Instant::now();
        self.stats.record_latency(&b.scheduled, at);
        let mut truth = self.truth.lock().unwrap_or_else(|e| e.into_inner());
        for (e, outcome) in b.events.iter().zip(outcomes) {
            let counter = match (outcome, &e.valid) {
                (Outcome::Accepted, Some(v)) => {
                    truth.accept(v, at);
                    if b.kind == Kind::Label {
                        &self.stats.labels
                    } else {
                        &self.stats.accepted
                    }
                }
                (Outcome::Accepted, None) if self.args.via == Via::Kafka => &self.stats.accepted,
                (Outcome::Accepted, None) => &self.stats.malformed_accepted,
                (Outcome::Rejected, Some(_)) => &self.stats.valid_rejected,
                (Outcome::Rejected, None) => &self.stats.rejected,
                (Outcome::Failed, _) => &self.stats.failed,
                (Outcome::Indeterminate, _) => &self.stats.indeterminate,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn produce(&self, b: &Batch) -> Vec<Outcome> {
        let topic = match b.kind {
            Kind::Sensor => &self.topics.sensor_readings,
            Kind::Payment => &self.topics.payments,
            Kind::Label => &self.topics.fraud_labels,
        };
        let batch = self.producer.batch();
        let mut outcomes = vec![Outcome::Failed; b.events.len()];
        for (i, e) in b.events.iter().enumerate() {
            if batch.send(i, topic, e.key.as_bytes(), &e.json).is_err() {
                outcomes[i] = Outcome::Failed;
            }
        }
        for (i, r) in batch.acked().await {
            outcomes[i] = match r {
                Ok(_) => Outcome::Accepted,
                Err(e) if e.is_retryable() => Outcome::Failed,
                Err(_) => Outcome::Indeterminate,
            };
        }
        outcomes
    }

    async fn post(&self, b: &Batch) -> Vec<Outcome> {
        let path = match b.kind {
            Kind::Sensor => "/v1/sensor-readings",
            _ => "/v1/payments",
        };
        let mut body = Vec::with_capacity(b.events.iter().map(|e| e.json.len() + 1).sum());
        for e in &b.events {
            body.extend_from_slice(&e.json);
            body.push(b'\n');
        }
        let n = b.events.len();
        let response = self
            .http
            .post(format!(
                "{}{path}",
                self.args.ingest_url.trim_end_matches('/')
            ))
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            // the request may or may not have reached Kafka
            Err(_) => return vec![Outcome::Indeterminate; n],
        };
        let status = response.status().as_u16();
        let Ok(report) = response.json::<serde_json::Value>().await else {
            return vec![Outcome::Indeterminate; n];
        };
        if !matches!(status, 200 | 207 | 400) || report.get("accepted").is_none() {
            // 429, 503, 413 …: nothing persisted
            return vec![Outcome::Failed; n];
        }
        let mut outcomes = vec![Outcome::Accepted; n];
        for e in report
            .get("errors")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            let Some(i) = e.get("index").and_then(|i| i.as_u64()) else {
                continue;
            };
            if let Some(o) = outcomes.get_mut(i as usize) {
                *o = match e.get("status").and_then(|s| s.as_str()) {
                    Some("rejected") => Outcome::Rejected,
                    _ => Outcome::Failed,
                };
            }
        }
        outcomes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Rejected,
    Failed,
    Indeterminate,
}
