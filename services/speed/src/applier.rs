//! The applier thread: runs each partition's apply script, in the order the micro-batches were
//! planned, while the pipeline thread consumes and plans the next batch (Redis and the planning
//! then use both cores). A script call is retried on connection errors until it succeeds or the
//! shutdown timeout passes; an outcome other than "applied" (already applied, mismatch) goes back
//! to the pipeline, which repositions the partition — and every job of that partition planned
//! before the reposition is dropped here, since it was planned from a state that was not Redis'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lambdalake_runtime::otel::{self, Kind};
use lambdalake_runtime::tasks::CancellationToken;

use crate::apply::{self, Outcome};
use crate::metrics;
use crate::pipeline::Health;

/// What to count once a job is applied.
#[derive(Debug, Default)]
pub struct Counts {
    pub applied: u64,
    pub duplicates: u64,
    pub invalid: u64,
    /// Lateness of each late event, ms.
    pub late: Vec<i64>,
    pub alerts: Vec<&'static str>,
    /// Kafka timestamps of the applied records (freshness).
    pub kafka_ts: Vec<i64>,
}

/// One partition's share of a micro-batch, ready to run.
pub struct Job {
    pub topic_index: usize,
    pub topic: String,
    pub partition: i32,
    /// Increases at every reposition of the partition.
    pub epoch: u64,
    /// The pipeline's sequence number of this job (increases by one per job).
    pub seq: u64,
    pub first: i64,
    pub next: i64,
    pub invocation: redis::Cmd,
    pub counts: Counts,
    /// When the micro-batch started being processed.
    pub started: Instant,
    /// The traces the job's records carry: the apply is a span in each.
    pub traces: otel::BatchTraces,
}

/// A job that was not applied.
#[derive(Debug)]
pub struct Report {
    pub topic_index: usize,
    pub partition: i32,
    pub epoch: u64,
    pub first: i64,
    pub next: i64,
    pub outcome: Outcome,
}

/// The next offset of each (topic, partition) applied, not yet committed to Kafka.
pub type Applied = Arc<Mutex<HashMap<(String, i32), i64>>>;

pub struct Applier {
    /// The sequence number of the last job finished (applied or dropped): a card the cache
    /// holds from an older job may leave it, Redis has its state.
    pub done: Arc<AtomicU64>,
    /// At-least-once: where each applied partition's next offset goes, for the pipeline to
    /// commit to Kafka.
    pub applied: Option<Applied>,
    pub redis: redis::Client,
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
    pub shutdown_timeout: Duration,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Applier {
    /// Run jobs until the sender is dropped (the pipeline stopped) and the queue is empty.
    pub fn run(self, jobs: Receiver<Job>, reports: Sender<Report>) {
        let mut con: Option<redis::Connection> = None;
        // partition → the epoch of a job that was not applied: older or equal jobs are dropped
        let mut blocked: HashMap<(usize, i32), u64> = HashMap::new();
        let mut cancelled_at: Option<Instant> = None;
        for job in jobs {
            let key = (job.topic_index, job.partition);
            if blocked.get(&key).is_some_and(|&e| job.epoch <= e) {
                self.done.store(job.seq, Ordering::Release);
                continue;
            }
            let mut delay = Duration::from_millis(50);
            loop {
                let t0 = Instant::now();
                let result = match con.as_mut() {
                    Some(c) => apply::run(c, &job.invocation),
                    None => match self.connect() {
                        Ok(c) => apply::run(con.insert(c), &job.invocation),
                        Err(e) => Err(e.into()),
                    },
                };
                metrics::REDIS_WRITE_SECONDS.observe(t0.elapsed().as_secs_f64());
                match result {
                    Ok(Outcome::Applied) => {
                        self.health.redis_ok.store(true, Ordering::Release);
                        count(&job);
                        trace(&job);
                        if let Some(applied) = &self.applied
                            && let Ok(mut a) = applied.lock()
                        {
                            a.insert((job.topic.clone(), job.partition), job.next);
                        }
                        break;
                    }
                    Ok(outcome) => {
                        self.health.redis_ok.store(true, Ordering::Release);
                        blocked.insert(key, job.epoch);
                        let _ = reports.send(Report {
                            topic_index: job.topic_index,
                            partition: job.partition,
                            epoch: job.epoch,
                            first: job.first,
                            next: job.next,
                            outcome,
                        });
                        break;
                    }
                    Err(e) => {
                        con = None;
                        self.health.redis_ok.store(false, Ordering::Release);
                        metrics::APPLY_RETRIES
                            .with_label_values(&["redis_error"])
                            .inc();
                        if self.shutdown.is_cancelled() {
                            let at = *cancelled_at.get_or_insert_with(Instant::now);
                            if at.elapsed() > self.shutdown_timeout {
                                tracing::error!(
                                    topic = job.topic,
                                    partition = job.partition,
                                    "shutdown timeout: leaving micro-batches unapplied (they will be read again)"
                                );
                                return;
                            }
                        }
                        tracing::warn!(error = %e, retry_in = ?delay, topic = job.topic, partition = job.partition, "cannot apply the micro-batch to Redis; retrying");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            self.done.store(job.seq, Ordering::Release);
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let con = self
            .redis
            .get_connection_with_timeout(Duration::from_secs(2))?;
        con.set_read_timeout(Some(Duration::from_secs(30)))?;
        con.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(con)
    }
}

/// The micro-batch's apply, as a span in each trace its records carry (tracing on).
fn trace(job: &Job) {
    if job.traces.is_empty() {
        return;
    }
    let start = std::time::SystemTime::now()
        .checked_sub(job.started.elapsed())
        .unwrap_or_else(std::time::SystemTime::now);
    for mut span in job
        .traces
        .spans("speed micro-batch apply", Kind::Consumer, start)
    {
        span.set("messaging.destination.name", job.topic.clone());
        span.set(
            "messaging.destination.partition.id",
            job.partition.to_string(),
        );
        span.set("lambdalake.offsets.first", job.first);
        span.set("lambdalake.offsets.next", job.next);
        span.set("lambdalake.events.applied", job.counts.applied as i64);
    }
}

fn count(job: &Job) {
    let topic = job.topic.as_str();
    let c = &job.counts;
    let ev = &metrics::EVENTS;
    ev.with_label_values(&[topic, "applied"]).inc_by(c.applied);
    ev.with_label_values(&[topic, "duplicate"])
        .inc_by(c.duplicates);
    ev.with_label_values(&[topic, "late"])
        .inc_by(c.late.len() as u64);
    ev.with_label_values(&[topic, "invalid"]).inc_by(c.invalid);
    metrics::LATE_EVENTS
        .with_label_values(&[topic])
        .inc_by(c.late.len() as u64);
    let lateness = metrics::LATENESS_SECONDS.with_label_values(&[topic]);
    for &l in &c.late {
        lateness.observe(l as f64 / 1000.0);
    }
    for kind in &c.alerts {
        metrics::ALERTS.with_label_values(&[kind]).inc();
    }
    let visible = now_ms();
    let fresh = metrics::FRESHNESS_SECONDS.with_label_values(&[topic]);
    for &ts in &c.kafka_ts {
        fresh.observe(((visible - ts).max(0)) as f64 / 1000.0);
    }
    metrics::APPLY_SECONDS.observe(job.started.elapsed().as_secs_f64());
}
