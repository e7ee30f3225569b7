//! The micro-batch loop, on one dedicated thread: poll records until the trigger fires, classify
//! them (invalid, late, duplicate in the batch, live), plan the view updates, write the side
//! outputs (late events, dead letters, alerts) and wait for the broker's acknowledgement, then
//! apply each partition's plan with its offset in one atomic Redis script.
//!
//! Side outputs are written before the apply: a crash between the two re-sends them (at least
//! once, with stable ids) and never loses them. The views themselves are exactly once — unless
//! `--delivery` asks for at-least-once (apply, then commit the group's offsets to Kafka) or
//! at-most-once (commit, then apply), which exist to be measured against it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lambdalake_events::{Event, FieldError, Payment, Policy, SensorReading};
use lambdalake_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use lambdalake_kafka::rdkafka::error::KafkaResult;
use lambdalake_kafka::rdkafka::message::Message;
use lambdalake_kafka::rdkafka::{Offset, TopicPartitionList};
use lambdalake_kafka::{Delivery, ProduceError, Producer, Resume};
use lambdalake_runtime::otel;
use lambdalake_runtime::tasks::CancellationToken;
use lambdalake_views::Watermarks;
use lambdalake_views::keys::Keys;
use serde::Serialize;

use crate::applier::{Applied, Applier, Counts, Job, Report};
use crate::apply::{self, Outcome, Target};
use crate::consumer::{Change, Context, PartState};
use crate::metrics;
use crate::plan::{self, PartCache, Plan, Reference};
use crate::reference::ReferenceCache;

/// The loop's settings, from [`crate::Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub trigger_interval: Duration,
    pub max_batch: usize,
    pub close_when_caught_up: bool,
    pub lateness_ms: i64,
    pub idle_ms: i64,
    pub ttl_ms: i64,
    pub alerts_kept: usize,
    /// Card memories held in memory, over every partition.
    pub card_cache: usize,
    pub fraud_threshold: f64,
    pub shutdown_timeout: Duration,
    /// [sensor topic, payment topic]
    pub topics: [String; 2],
    pub alerts_topic: String,
    pub late_topic: String,
    pub dead_letter_topic: String,
    pub delivery: Delivery,
}

/// What the readiness checks look at.
#[derive(Debug, Default)]
pub struct Health {
    pub redis_ok: AtomicBool,
    pub kafka_ok: AtomicBool,
}

/// A dependency a step can wait for.
#[derive(Debug, Clone, Copy)]
enum Dep {
    Redis,
    Kafka,
}

const SENSORS: usize = 0;
const PAYMENTS: usize = 1;

enum Decoded {
    /// Not decoded yet (between `collect` and `decode`).
    Pending,
    Sensor(SensorReading),
    Payment(Payment),
    Invalid(FieldError),
}

impl Decoded {
    fn id_ts(&self) -> Option<(&str, i64)> {
        match self {
            Decoded::Sensor(r) => Some((r.event_id.as_str(), r.ts.millis())),
            Decoded::Payment(p) => Some((p.event_id.as_str(), p.ts.millis())),
            Decoded::Invalid(_) | Decoded::Pending => None,
        }
    }
}

struct Rec {
    offset: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
    kafka_ts: Option<i64>,
    decoded: Decoded,
    /// The trace the record carries (only read when tracing is on).
    trace: Option<otel::Parent>,
}

#[derive(Debug, Default)]
struct PartInfo {
    /// Records below this offset are stale (already applied or before a seek).
    expect: Option<i64>,
    /// The stored watermark: events behind it are late, whatever the operator watermark says.
    floor: Option<i64>,
    /// Increases at every (re)position; jobs of older epochs are dropped.
    epoch: u64,
    /// The next job may start after the stored offset (retention deleted the records between).
    gap_ok: bool,
    /// Not exactly once: the offset stored with the views at the assignment, compared with the
    /// first record the group's committed offset gives (what was skipped or repeated).
    resume_from: Option<Option<i64>>,
}

/// One partition's share of a micro-batch, classified.
struct Work {
    topic: usize,
    partition: i32,
    recs: Vec<Rec>,
    live: Vec<usize>,
    late: Vec<(usize, i64, i64)>,
    invalid: Vec<usize>,
    /// Copies of an event counted before or earlier in the batch.
    duplicates: usize,
}

#[derive(Serialize)]
struct LateRecord<'a> {
    reason: &'static str,
    lateness_ms: i64,
    watermark_ms: i64,
    topic: &'a str,
    partition: i32,
    offset: i64,
    event: &'a serde_json::value::RawValue,
}

#[derive(Serialize)]
struct DeadLetter<'a> {
    reason: &'static str,
    error: &'a FieldError,
    topic: &'a str,
    partition: i32,
    offset: i64,
    /// The record's value, lossily decoded as UTF-8, cut at [`DEAD_LETTER_PAYLOAD_BYTES`].
    payload: String,
    /// The value's size in bytes (more than `payload` holds when it was cut).
    payload_bytes: usize,
}

/// How much of an undecodable record a dead letter carries: enough to see what went wrong,
/// never enough to exceed the broker's message size.
pub const DEAD_LETTER_PAYLOAD_BYTES: usize = 64 * 1024;

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("kafka: {0}")]
    Kafka(#[from] lambdalake_kafka::rdkafka::error::KafkaError),
}

pub struct Pipeline {
    settings: Settings,
    consumer: BaseConsumer<Context>,
    producer: Producer,
    rt: tokio::runtime::Handle,
    redis: redis::Client,
    con: Option<redis::Connection>,
    keys: Keys,
    watermarks: [Watermarks; 2],
    parts: HashMap<(usize, i32), PartInfo>,
    /// The committed state of each partition's keys that can still change.
    caches: HashMap<(usize, i32), PartCache>,
    reference: ReferenceCache,
    shutdown: CancellationToken,
    health: Arc<Health>,
    policy: Policy,
    epoch_seq: u64,
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    reports: std::sync::mpsc::Receiver<Report>,
    applier: Option<std::thread::JoinHandle<()>>,
    /// At-least-once only: the next offset of each partition the applier applied, to commit.
    applied: Option<Applied>,
    /// The sequence number of the last job handed to the applier.
    seq: u64,
    /// The sequence number of the last job the applier finished (applied or dropped).
    done: Arc<AtomicU64>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: Settings,
        consumer: BaseConsumer<Context>,
        producer: Producer,
        rt: tokio::runtime::Handle,
        redis: redis::Client,
        keys: Keys,
        reference: ReferenceCache,
        shutdown: CancellationToken,
        health: Arc<Health>,
    ) -> Self {
        let wm = Watermarks::new(settings.lateness_ms, settings.idle_ms);
        // about two micro-batches of partitions in flight: planning runs ahead of Redis, not away
        let (jobs, job_rx) = std::sync::mpsc::sync_channel(16);
        let (report_tx, reports) = std::sync::mpsc::channel();
        let applied: Option<Applied> = (settings.delivery == Delivery::AtLeastOnce)
            .then(|| Arc::new(Mutex::new(HashMap::new())));
        let done = Arc::new(AtomicU64::new(0));
        let applier = Applier {
            done: done.clone(),
            applied: applied.clone(),
            redis: redis.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
            shutdown_timeout: settings.shutdown_timeout,
        };
        let applier = std::thread::Builder::new()
            .name("speed-applier".to_owned())
            .spawn(move || applier.run(job_rx, report_tx))
            .ok();
        Pipeline {
            settings,
            consumer,
            producer,
            rt,
            redis,
            con: None,
            keys,
            watermarks: [wm.clone(), wm],
            parts: HashMap::new(),
            caches: HashMap::new(),
            reference,
            shutdown,
            health,
            policy: Policy::stored(),
            epoch_seq: 0,
            jobs: Some(jobs),
            reports,
            applier,
            applied,
            seq: 0,
            done,
        }
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.settings.topics.iter().position(|t| t == topic)
    }

    /// Run until shutdown; the micro-batch in flight when shutdown is asked is finished.
    pub fn run(mut self) -> Result<(), LoopError> {
        let topics: Vec<&str> = self.settings.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        self.health.kafka_ok.store(true, Ordering::Release);
        let mut last_lag = Instant::now();
        while !self.shutdown.is_cancelled() {
            self.handle_reports();
            self.commit_applied();
            let collect_started = Instant::now();
            let batch = self.collect();
            if !batch.is_empty() {
                tracing::debug!(collect = ?collect_started.elapsed(), "micro-batch collected");
                self.apply_batch(batch);
            }
            if last_lag.elapsed() > Duration::from_secs(1) {
                self.report_lag();
                last_lag = Instant::now();
            }
        }
        // the applier finishes the micro-batches already planned
        drop(self.jobs.take());
        if let Some(applier) = self.applier.take() {
            let _ = applier.join();
        }
        self.commit_applied();
        tracing::info!("speed layer stopping: leaving the consumer group");
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Poll records until the trigger fires: the interval elapsed, the batch is full, or (when
    /// configured) the consumer has nothing ready.
    fn collect(&mut self) -> BTreeMap<(usize, i32), Vec<Rec>> {
        let mut batch: BTreeMap<(usize, i32), Vec<Rec>> = BTreeMap::new();
        let mut count = 0usize;
        let started = Instant::now();
        let deadline = started + self.settings.trigger_interval;
        while count < self.settings.max_batch && !self.shutdown.is_cancelled() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let timeout = if count > 0 && self.settings.close_when_caught_up {
                Duration::ZERO
            } else {
                (deadline - now).min(Duration::from_millis(100))
            };
            // copy what is needed out of the message: it borrows the consumer
            let polled = match self.consumer.poll(timeout) {
                None => None,
                Some(Err(e)) => Some(Err(e)),
                Some(Ok(m)) => Some(Ok((
                    m.topic().to_owned(),
                    m.partition(),
                    m.offset(),
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                    m.timestamp().to_millis(),
                    lambdalake_kafka::parent_of(&m),
                ))),
            };
            self.handle_changes(&mut batch, &mut count);
            match polled {
                None => {
                    if count > 0 && self.settings.close_when_caught_up {
                        break;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    self.health.kafka_ok.store(false, Ordering::Release);
                }
                Some(Ok((topic, p, offset, key, payload, kafka_ts, trace))) => {
                    self.health.kafka_ok.store(true, Ordering::Release);
                    let Some(ti) = self.topic_index(&topic) else {
                        continue;
                    };
                    // only partitions assigned by the rebalance path, and nothing before the
                    // position they were given (fetched before a seek, or already applied)
                    let Some(info) = self.parts.get_mut(&(ti, p)) else {
                        continue;
                    };
                    // a partition's records must follow each other: a micro-batch covers every
                    // offset from its first to its last. After a seek, records fetched from the
                    // old position can still arrive; they are dropped and read again in order.
                    match info.expect {
                        Some(e) if offset < e => continue,
                        Some(e) if offset > e => {
                            let low = self
                                .consumer
                                .fetch_watermarks(&topic, p, Duration::from_secs(5))
                                .map_or(0, |(low, _)| low);
                            if low <= e {
                                tracing::debug!(
                                    topic,
                                    partition = p,
                                    expected = e,
                                    offset,
                                    "out-of-order record after a seek; reading again from the expected offset"
                                );
                                if let Err(err) = self.consumer.seek(
                                    &topic,
                                    p,
                                    Offset::Offset(e),
                                    Duration::from_secs(5),
                                ) {
                                    tracing::warn!(topic, partition = p, error = %err, "seek failed");
                                }
                                continue;
                            }
                            // the records in between were deleted by retention: the apply
                            // script checks the same before accepting the gap
                        }
                        _ => {}
                    }
                    if let Some(stored) = info.resume_from.take() {
                        resumed(&topic, p, stored, offset, self.settings.delivery);
                    }
                    info.expect = Some(offset + 1);
                    batch.entry((ti, p)).or_default().push(Rec {
                        offset,
                        key,
                        payload,
                        kafka_ts,
                        decoded: Decoded::Pending,
                        trace,
                    });
                    count += 1;
                }
            }
        }
        batch
    }

    fn handle_changes(&mut self, batch: &mut BTreeMap<(usize, i32), Vec<Rec>>, count: &mut usize) {
        for change in self.consumer.context().take_changes() {
            match change {
                Change::Revoked(parts) => {
                    for (topic, p) in parts {
                        let Some(ti) = self.topic_index(&topic) else {
                            continue;
                        };
                        if let Some(recs) = batch.remove(&(ti, p)) {
                            *count -= recs.len();
                        }
                        self.parts.remove(&(ti, p));
                        self.watermarks[ti].remove(p);
                        self.caches.remove(&(ti, p));
                        let _ = metrics::CONSUMER_LAG
                            .remove_label_values(&[topic.as_str(), &p.to_string()]);
                    }
                }
                Change::Assigned(parts) => {
                    let now = now_ms();
                    for (topic, p, st) in parts {
                        let Some(ti) = self.topic_index(&topic) else {
                            continue;
                        };
                        self.assign(ti, p, st, now);
                    }
                }
            }
        }
    }

    fn assign(&mut self, ti: usize, p: i32, st: PartState, now: i64) {
        self.epoch_seq += 1;
        self.parts.insert(
            (ti, p),
            PartInfo {
                expect: st.offset,
                floor: st.watermark,
                epoch: self.epoch_seq,
                gap_ok: false,
                resume_from: None,
            },
        );
        match st.max_ts {
            Some(max_ts) => self.watermarks[ti].restore(p, max_ts, now),
            None => self.watermarks[ti].assign(p, now),
        }
        self.caches.insert((ti, p), PartCache::new(st.max_ts));
        if !self.settings.delivery.fenced()
            && let Some(info) = self.parts.get_mut(&(ti, p))
        {
            // the position is the group's committed offset, known at the first record
            info.expect = None;
            info.resume_from = Some(st.offset);
        }
    }

    fn connection(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.con.is_none() {
            let con = self
                .redis
                .get_connection_with_timeout(Duration::from_secs(2))?;
            con.set_read_timeout(Some(Duration::from_secs(30)))?;
            con.set_write_timeout(Some(Duration::from_secs(30)))?;
            self.con = Some(con);
        }
        self.con
            .as_mut()
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no connection")))
    }

    /// Classify every record of the batch, in arrival order per partition. Lateness is judged
    /// against the watermark as it stood when the batch started (as Spark does), so the result
    /// does not depend on the order partitions come in within a batch.
    fn classify(&mut self, batch: BTreeMap<(usize, i32), Vec<Rec>>, now: i64) -> Vec<Work> {
        let mut out = Vec::with_capacity(batch.len());
        let at_start = [
            self.watermarks[SENSORS].watermark(now),
            self.watermarks[PAYMENTS].watermark(now),
        ];
        for ((ti, p), recs) in batch {
            let floor = self.parts.get(&(ti, p)).and_then(|i| i.floor);
            let mut work = Work {
                topic: ti,
                partition: p,
                live: Vec::with_capacity(recs.len()),
                late: Vec::new(),
                invalid: Vec::new(),
                duplicates: 0,
                recs: Vec::new(),
            };
            let mut ids: HashSet<&str> = HashSet::with_capacity(recs.len());
            let counted = self.caches.get(&(ti, p));
            let wm = match (at_start[ti], floor) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            for (i, rec) in recs.iter().enumerate() {
                let Some((id, ts)) = rec.decoded.id_ts() else {
                    work.invalid.push(i);
                    continue;
                };
                match wm {
                    Some(w) if ts < w => work.late.push((i, w - ts, w)),
                    _ if counted.is_some_and(|c| c.was_counted(id, ts)) || !ids.insert(id) => {
                        work.duplicates += 1
                    }
                    _ => work.live.push(i),
                }
                self.watermarks[ti].observe(p, ts, now);
            }
            drop(ids);
            work.recs = recs;
            out.push(work);
        }
        out
    }

    fn live_sensors(w: &Work) -> Vec<&SensorReading> {
        w.live
            .iter()
            .filter_map(|&i| match &w.recs[i].decoded {
                Decoded::Sensor(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn live_payments(w: &Work) -> Vec<&Payment> {
        w.live
            .iter()
            .filter_map(|&i| match &w.recs[i].decoded {
                Decoded::Payment(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Plan every partition's share; partitions are independent, so two threads share them.
    fn plan_all(&self, works: &[Work], now: i64) -> Vec<Plan> {
        let reference = Reference {
            model: self.reference.model(),
            profiles: self.reference.profiles(),
            baselines: self.reference.baselines(),
            fraud_threshold: self.settings.fraud_threshold,
            now_ms: now,
        };
        let horizon = plan::history_horizon_ms(self.settings.lateness_ms);
        let caches = &self.caches;
        let plan = |w: &Work| {
            let empty = PartCache::default();
            let cache = caches.get(&(w.topic, w.partition)).unwrap_or(&empty);
            match w.topic {
                SENSORS => cache.plan_sensors(&Self::live_sensors(w), &reference),
                _ => cache.plan_payments(&Self::live_payments(w), horizon, &reference),
            }
        };
        let records: usize = works.iter().map(|w| w.live.len()).sum();
        if works.len() < 2 || records < 2_000 {
            return works.iter().map(plan).collect();
        }
        // split by records, keeping the order
        let mut half = 0;
        let mut acc = 0;
        while half < works.len() && acc * 2 < records {
            acc += works[half].live.len();
            half += 1;
        }
        let (a, b) = works.split_at(half);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| b.iter().map(plan).collect::<Vec<_>>());
            let mut plans: Vec<Plan> = a.iter().map(plan).collect();
            match other.join() {
                Ok(rest) => plans.extend(rest),
                Err(panic) => std::panic::resume_unwind(panic),
            }
            plans
        })
    }

    /// Read the event ids a partition counted before it was assigned here (minutes not behind
    /// its floor), once per assignment.
    fn load_seen(&mut self, parts: &[(usize, i32)]) -> redis::RedisResult<()> {
        for &(ti, p) in parts {
            let Some(cache) = self.caches.get(&(ti, p)) else {
                continue;
            };
            if cache.seen_loaded {
                continue;
            }
            let fresh = cache.restored_max_ts.is_none();
            let floor = self.parts.get(&(ti, p)).and_then(|i| i.floor);
            let index = self.keys.seen(&self.settings.topics[ti], p);
            let mut seen: plan::FastMap<
                i64,
                std::collections::HashSet<String, foldhash::fast::RandomState>,
            > = plan::FastMap::default();
            if !fresh {
                let from = floor.map_or("-inf".to_owned(), |f| plan::minute(f).to_string());
                let con = self.connection()?;
                let minutes: Vec<i64> = redis::cmd("ZRANGEBYSCORE")
                    .arg(&index)
                    .arg(from)
                    .arg("+inf")
                    .query(con)?;
                let mut pipe = redis::pipe();
                for m in &minutes {
                    pipe.cmd("GET").arg(format!("{index}:{m}"));
                }
                // (an empty pipeline is an error in the client)
                let values: Vec<Option<String>> = if minutes.is_empty() {
                    Vec::new()
                } else {
                    pipe.query(con)?
                };
                for (m, v) in minutes.into_iter().zip(values) {
                    let ids = seen.entry(m).or_default();
                    for id in v.unwrap_or_default().split('\n').filter(|s| !s.is_empty()) {
                        ids.insert(id.to_owned());
                    }
                }
            }
            if let Some(cache) = self.caches.get_mut(&(ti, p)) {
                cache.seen = seen;
                cache.seen_loaded = true;
            }
        }
        Ok(())
    }

    /// Read what the batch touches and the cache does not hold, and refresh the reference data.
    fn load_state(&mut self, works: &[Work]) -> redis::RedisResult<()> {
        let mut cards: HashSet<String> = HashSet::new();
        let mut devices: HashSet<String> = HashSet::new();
        let mut wanted: Vec<((usize, i32), plan::Missing)> = Vec::new();
        for w in works {
            let (rs, ps) = (Self::live_sensors(w), Self::live_payments(w));
            devices.extend(rs.iter().map(|r| r.device_id.as_str().to_owned()));
            cards.extend(ps.iter().map(|p| p.card_id.as_str().to_owned()));
            if let Some(cache) = self.caches.get(&(w.topic, w.partition)) {
                let m = cache.missing(&rs, &ps);
                if !m.is_empty() {
                    wanted.push(((w.topic, w.partition), m));
                }
            }
        }
        let keys = self.keys.clone();
        if !wanted.is_empty() {
            let mut pipe = redis::pipe();
            for (part, m) in &wanted {
                for ((view, start), devices) in &m.sensors {
                    pipe.cmd("HMGET")
                        .arg(keys.sensor_windows(*view, *start))
                        .arg(devices);
                }
                for (start, cards) in &m.cards {
                    pipe.cmd("HMGET").arg(keys.card_windows(*start)).arg(cards);
                }
                if !m.card_memory.is_empty() {
                    let (ti, p) = *part;
                    pipe.cmd("HMGET")
                        .arg(keys.speed_cards(&self.settings.topics[ti], p))
                        .arg(&m.card_memory);
                }
            }
            let mut replies: std::vec::IntoIter<redis::Value> = pipe
                .query::<Vec<redis::Value>>(self.connection()?)?
                .into_iter();
            for (part, m) in wanted {
                let Some(cache) = self.caches.get_mut(&part) else {
                    continue;
                };
                fill(cache, m, &mut replies)?;
            }
        }
        self.connection()?;
        let mut con = self.con.take();
        let result = match con.as_mut() {
            Some(c) => self.reference.refresh(c, &keys, &cards, &devices),
            None => Ok(()),
        };
        self.con = con;
        result
    }

    /// Run `op` until it succeeds, backing off from 50 ms to 5 s and marking `dep` unhealthy
    /// meanwhile; `None` once shutdown was asked and the shutdown timeout has passed since.
    fn retry<T, E: std::fmt::Display>(
        &mut self,
        what: &str,
        dep: Dep,
        mut op: impl FnMut(&mut Self) -> Result<T, E>,
    ) -> Option<T> {
        let mut delay = Duration::from_millis(50);
        let mut cancelled_at: Option<Instant> = None;
        loop {
            match op(self) {
                Ok(v) => {
                    match dep {
                        Dep::Redis => self.health.redis_ok.store(true, Ordering::Release),
                        Dep::Kafka => self.health.kafka_ok.store(true, Ordering::Release),
                    }
                    return Some(v);
                }
                Err(e) => {
                    let reason = match dep {
                        Dep::Redis => {
                            self.con = None;
                            self.health.redis_ok.store(false, Ordering::Release);
                            "redis_error"
                        }
                        Dep::Kafka => {
                            self.health.kafka_ok.store(false, Ordering::Release);
                            "kafka_error"
                        }
                    };
                    metrics::APPLY_RETRIES.with_label_values(&[reason]).inc();
                    if self.shutdown.is_cancelled() {
                        let at = *cancelled_at.get_or_insert_with(Instant::now);
                        if at.elapsed() > self.settings.shutdown_timeout {
                            tracing::error!(error = %e, "{what}; shutdown timeout passed, leaving the micro-batch (it will be read again)");
                            return None;
                        }
                    }
                    tracing::warn!(error = %e, retry_in = ?delay, "{what}; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Plan one micro-batch and hand it to the applier; Redis reads and Kafka writes are retried
    /// until they succeed or the shutdown timeout passes.
    fn apply_batch(&mut self, batch: BTreeMap<(usize, i32), Vec<Rec>>) {
        let started = Instant::now();
        let records: usize = batch.values().map(Vec::len).sum();
        metrics::BATCH_RECORDS.observe(records as f64);
        let now = now_ms();
        // the event ids counted before the assignment, to recognise copies
        let parts: Vec<(usize, i32)> = batch.keys().copied().collect();
        if self
            .retry(
                "cannot read the dedupe state from Redis",
                Dep::Redis,
                |this| this.load_seen(&parts),
            )
            .is_none()
        {
            return;
        }
        let mut batch = batch;
        decode(&mut batch, &self.policy);
        let works = self.classify(batch, now);
        let watermark_after: [Option<i64>; 2] = [
            self.watermarks[SENSORS].watermark(now),
            self.watermarks[PAYMENTS].watermark(now),
        ];
        for (ti, wm) in watermark_after.iter().enumerate() {
            if let Some(w) = wm {
                metrics::WATERMARK_DELAY
                    .with_label_values(&[self.settings.topics[ti].as_str()])
                    .set((now - w) / 1000);
            }
        }

        let t_classified = started.elapsed();
        // reference data and state not cached
        if self
            .retry("cannot read from Redis", Dep::Redis, |this| {
                this.load_state(&works)
            })
            .is_none()
        {
            return;
        }

        let t_loaded = started.elapsed();
        let plans = self.plan_all(&works, now);
        let t_planned = started.elapsed();
        // side outputs first: late events, dead letters, alerts
        if self
            .retry("cannot write side outputs to Kafka", Dep::Kafka, |this| {
                this.produce_side_outputs(&works, &plans)
            })
            .is_none()
        {
            return;
        }

        let t_produced = started.elapsed();
        // at-most-once: the group's offsets move past the batch before it is applied
        if self.settings.delivery == Delivery::AtMostOnce
            && self
                .retry("cannot commit offsets to Kafka", Dep::Kafka, |this| {
                    this.commit_offsets(&works)
                })
                .is_none()
        {
            return;
        }
        for (w, plan) in works.iter().zip(plans) {
            if !self.enqueue(w, plan, watermark_after[w.topic], now, started) {
                return;
            }
        }
        let evicted = plan::bound_card_memory(
            &mut self.caches,
            self.settings.card_cache,
            self.done.load(Ordering::Acquire),
        );
        metrics::CARD_CACHE_EVICTIONS.inc_by(evicted as u64);
        metrics::CARD_CACHE_HELD.set(
            self.caches
                .values()
                .map(|c| c.card_memory.len() as i64)
                .sum(),
        );
        let slow = started.elapsed() > Duration::from_millis(100);
        if slow {
            tracing::info!(
                records,
                classify = ?t_classified,
                load = ?(t_loaded - t_classified),
                plan = ?(t_planned - t_loaded),
                side_outputs = ?(t_produced - t_planned),
                enqueue = ?(started.elapsed() - t_produced),
                "slow micro-batch"
            );
        }
        tracing::debug!(
            records,
            classify = ?t_classified,
            load = ?(t_loaded - t_classified),
            plan = ?(t_planned - t_loaded),
            side_outputs = ?(t_produced - t_planned),
            enqueue = ?(started.elapsed() - t_produced),
            "micro-batch planned"
        );
    }

    /// Hand a partition's plan to the applier and take it as the partition's state (the
    /// applier reports when it was not applied, and the partition is then repositioned).
    /// Returns false when the applier is gone.
    fn enqueue(
        &mut self,
        w: &Work,
        plan: Plan,
        wm: Option<i64>,
        now: i64,
        started: Instant,
    ) -> bool {
        let key = (w.topic, w.partition);
        let topic = self.settings.topics[w.topic].clone();
        let first = w.recs.first().map_or(0, |r| r.offset);
        let next = w.recs.last().map_or(0, |r| r.offset + 1);
        let Some(info) = self.parts.get_mut(&key) else {
            return true; // revoked meanwhile
        };
        let target = Target {
            topic: &topic,
            partition: w.partition,
            first,
            next,
            watermark: wm,
            now_ms: now,
            ttl_ms: self.settings.ttl_ms,
            alerts_kept: self.settings.alerts_kept,
            gap_ok: std::mem::take(&mut info.gap_ok),
            fenced: self.settings.delivery.fenced(),
        };
        let invocation = match apply::invocation(&self.keys, &target, &plan) {
            Ok(inv) => inv,
            Err(e) => {
                // not reachable with validated events; stop rather than skip data
                tracing::error!(topic, partition = w.partition, error = %e, "cannot build the apply script call; stopping");
                self.shutdown.cancel();
                return false;
            }
        };
        info.expect = Some(next);
        info.floor = match (info.floor, wm) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let (floor, epoch) = (info.floor, info.epoch);
        let counts = Counts {
            applied: plan.events as u64,
            duplicates: w.duplicates as u64,
            invalid: w.invalid.len() as u64,
            late: w.late.iter().map(|&(_, l, _)| l).collect(),
            alerts: plan.alerts.iter().map(|a| a.kind).collect(),
            kafka_ts: w.live.iter().filter_map(|&i| w.recs[i].kafka_ts).collect(),
        };
        self.seq += 1;
        let seq = self.seq;
        if let Some(cache) = self.caches.get_mut(&key) {
            cache.commit(plan, floor, self.settings.ttl_ms, seq);
        }
        let mut traces = otel::BatchTraces::default();
        for rec in &w.recs {
            if let Some(parent) = &rec.trace {
                traces.add(parent);
            }
        }
        let job = Job {
            traces,
            topic_index: w.topic,
            topic,
            partition: w.partition,
            epoch,
            seq,
            first,
            next,
            invocation,
            counts,
            started,
        };
        match &self.jobs {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        }
    }

    /// Commit the group's offsets after each partition's share of `works` (at-most-once).
    fn commit_offsets(&self, works: &[Work]) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        for w in works {
            if let Some(last) = w.recs.last() {
                tpl.add_partition_offset(
                    &self.settings.topics[w.topic],
                    w.partition,
                    Offset::Offset(last.offset + 1),
                )?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&tpl, CommitMode::Sync)
    }

    /// At-least-once: commit the offsets the applier applied (asynchronously; a crash before the
    /// commit reads those records again).
    fn commit_applied(&self) {
        let Some(Ok(mut pending)) = self.applied.as_ref().map(|a| a.lock()) else {
            return; // another mode, or a poisoned lock (the applier panicked)
        };
        let applied: Vec<((String, i32), i64)> = pending.drain().collect();
        drop(pending);
        if applied.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), next) in &applied {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*next));
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(error = %e, "cannot commit offsets to Kafka; the records are read again after a restart");
        }
    }

    /// Act on what the applier could not apply.
    fn handle_reports(&mut self) {
        while let Ok(r) = self.reports.try_recv() {
            let key = (r.topic_index, r.partition);
            if self.parts.get(&key).is_none_or(|i| i.epoch != r.epoch) {
                continue; // already repositioned since
            }
            let topic = self.settings.topics[r.topic_index].clone();
            match r.outcome {
                Outcome::AlreadyApplied { stored } => {
                    metrics::APPLY_RETRIES.with_label_values(&["skip"]).inc();
                    tracing::info!(
                        topic,
                        partition = r.partition,
                        stored,
                        next = r.next,
                        "micro-batch already applied; skipping"
                    );
                    self.reposition(r.topic_index, r.partition, stored);
                }
                Outcome::Mismatch { stored } => {
                    metrics::APPLY_RETRIES
                        .with_label_values(&["mismatch"])
                        .inc();
                    // records between the stored offset and this batch: are they gone?
                    let low = (stored < r.first)
                        .then(|| {
                            self.consumer
                                .fetch_watermarks(&topic, r.partition, Duration::from_secs(5))
                                .ok()
                        })
                        .flatten()
                        .map(|(low, _)| low);
                    let gap = low.is_some_and(|low| low > stored);
                    if gap {
                        tracing::error!(
                            topic,
                            partition = r.partition,
                            stored,
                            low,
                            "records after the stored offset were deleted by retention before the speed layer applied them; continuing from the oldest record left"
                        );
                    }
                    tracing::warn!(
                        topic,
                        partition = r.partition,
                        stored,
                        first = r.first,
                        next = r.next,
                        "micro-batch does not continue the stored offset; seeking to it"
                    );
                    self.reposition(r.topic_index, r.partition, stored);
                    if let Some(info) = self.parts.get_mut(&key) {
                        info.gap_ok = gap;
                    }
                }
                Outcome::Applied => {}
            }
        }
    }

    /// Another writer moved the partition (or this instance's own earlier assignment did):
    /// everything planned here since the stored offset was not applied. Take the partition's
    /// state from Redis as a new assignment would — offset, watermark floor, largest event time
    /// — and forget the cache; nothing derived from the unapplied batches may survive (a
    /// watermark advanced by them would call the records read again late and drop them).
    fn reposition(&mut self, ti: usize, p: i32, stored: i64) {
        let topic = self.settings.topics[ti].clone();
        let parts = [(topic.clone(), p)];
        let Some(st) = self.retry("read a partition's stored state", Dep::Redis, |s| {
            crate::consumer::load_states(&s.redis, &s.keys, &parts)
        }) else {
            return; // shutting down: the partition is read again from Redis at the next start
        };
        let st = st.into_iter().next().unwrap_or_default();
        if !self.parts.contains_key(&(ti, p)) {
            return; // revoked meanwhile
        }
        // the state read now may already be past the offset the applier reported
        let offset = st.offset.unwrap_or(stored);
        let now = now_ms();
        self.assign(ti, p, st, now);
        if let Some(info) = self.parts.get_mut(&(ti, p)) {
            info.expect = Some(offset);
        }
        // another writer may still move it: everything may exist in Redis
        self.caches.insert((ti, p), PartCache::new(Some(i64::MAX)));
        if let Err(e) =
            self.consumer
                .seek(&topic, p, Offset::Offset(offset), Duration::from_secs(5))
        {
            tracing::warn!(topic, partition = p, error = %e, "seek failed");
        }
    }

    fn produce_side_outputs(&self, works: &[Work], plans: &[Plan]) -> Result<(), ProduceError> {
        let batch = self.producer.batch();
        let mut sent = 0usize;
        for w in works {
            let topic = self.settings.topics[w.topic].as_str();
            for &(i, lateness_ms, watermark_ms) in &w.late {
                let rec = &w.recs[i];
                // the record decoded, so it is JSON
                let Ok(event) =
                    serde_json::from_slice::<&serde_json::value::RawValue>(&rec.payload)
                else {
                    continue;
                };
                let body = serde_json::to_vec(&LateRecord {
                    reason: "behind_watermark",
                    lateness_ms,
                    watermark_ms,
                    topic,
                    partition: w.partition,
                    offset: rec.offset,
                    event,
                })
                .unwrap_or_default();
                batch.send(sent, &self.settings.late_topic, &rec.key, &body)?;
                sent += 1;
            }
            for &i in &w.invalid {
                let rec = &w.recs[i];
                let Decoded::Invalid(error) = &rec.decoded else {
                    continue;
                };
                let body = serde_json::to_vec(&DeadLetter {
                    reason: "invalid_event",
                    error,
                    topic,
                    partition: w.partition,
                    offset: rec.offset,
                    payload: String::from_utf8_lossy(
                        &rec.payload[..rec.payload.len().min(DEAD_LETTER_PAYLOAD_BYTES)],
                    )
                    .into_owned(),
                    payload_bytes: rec.payload.len(),
                })
                .unwrap_or_default();
                batch.send(sent, &self.settings.dead_letter_topic, &rec.key, &body)?;
                sent += 1;
            }
        }
        self.queue_alerts(&batch, plans, &mut sent)?;
        self.await_batch(batch, sent)
    }

    fn queue_alerts(
        &self,
        batch: &lambdalake_kafka::Batch<'_>,
        plans: &[Plan],
        sent: &mut usize,
    ) -> Result<(), ProduceError> {
        for a in plans.iter().flat_map(|p| &p.alerts) {
            let body = serde_json::to_vec(a).unwrap_or_default();
            batch.send(*sent, &self.settings.alerts_topic, a.key.as_bytes(), &body)?;
            *sent += 1;
        }
        Ok(())
    }

    fn await_batch(
        &self,
        batch: lambdalake_kafka::Batch<'_>,
        sent: usize,
    ) -> Result<(), ProduceError> {
        if sent == 0 {
            drop(batch);
            return Ok(());
        }
        let outcomes = self.rt.block_on(batch.acked());
        for (_, r) in outcomes {
            r?;
        }
        Ok(())
    }

    fn report_lag(&self) {
        let ctx = self.consumer.context();
        for (&(ti, p), info) in &self.parts {
            let topic = self.settings.topics[ti].as_str();
            if let (Some(high), Some(next)) = (ctx.high_watermark(topic, p), info.expect) {
                metrics::CONSUMER_LAG
                    .with_label_values(&[topic, &p.to_string()])
                    .set((high - next).max(0));
            }
        }
    }
}

/// Put the replies of [`Pipeline::load_state`]'s reads for one partition into its cache, in the
/// order they were asked.
/// Count (and log) what an assignment outside exactly-once skipped or repeated.
fn resumed(topic: &str, p: i32, stored: Option<i64>, first: i64, delivery: Delivery) {
    match Resume::of(stored, first) {
        Resume::Continues => {}
        Resume::Skipped(n) => {
            metrics::RESUMED_RECORDS
                .with_label_values(&[topic, "skipped"])
                .inc_by(n as u64);
            tracing::warn!(topic, partition = p, records = n, %delivery, "the group's committed offset is past the views: records skipped (lost)");
        }
        Resume::Repeated(n) => {
            metrics::RESUMED_RECORDS
                .with_label_values(&[topic, "repeated"])
                .inc_by(n as u64);
            tracing::warn!(topic, partition = p, records = n, %delivery, "the group's committed offset is behind the views: records read again");
        }
    }
}

fn fill(
    cache: &mut PartCache,
    m: plan::Missing,
    replies: &mut impl Iterator<Item = redis::Value>,
) -> redis::RedisResult<()> {
    use lambdalake_views::keys::{StoredCard, StoredSensor};
    use redis::FromRedisValue;
    let mut next = || {
        replies
            .next()
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Client, "missing reply")))
    };
    let bad = |what: &str, e: serde_json::Error| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "unreadable stored view",
            format!("{what}: {e}"),
        ))
    };
    for ((view, start), devices) in m.sensors {
        let values: Vec<Option<String>> = FromRedisValue::from_redis_value(next()?)?;
        for (device, v) in devices.into_iter().zip(values) {
            if let Some(v) = v {
                let s: StoredSensor =
                    serde_json::from_str(&v).map_err(|e| bad("sensor window", e))?;
                cache
                    .sensors
                    .entry(device)
                    .or_default()
                    .insert((view, start), s.agg());
            }
        }
    }
    for (start, cards) in m.cards {
        let values: Vec<Option<String>> = FromRedisValue::from_redis_value(next()?)?;
        for (card, v) in cards.into_iter().zip(values) {
            if let Some(v) = v {
                let s: StoredCard = serde_json::from_str(&v).map_err(|e| bad("card window", e))?;
                cache.cards.entry(card).or_default().insert(start, s.agg());
            }
        }
    }
    if !m.card_memory.is_empty() {
        metrics::CARD_CACHE_READS.inc_by(m.card_memory.len() as u64);
        let values: Vec<Option<String>> = FromRedisValue::from_redis_value(next()?)?;
        for (card, v) in m.card_memory.into_iter().zip(values) {
            let memory = v
                .map(|v| plan::CardMemory::from_json(&v))
                .unwrap_or_default();
            cache
                .card_memory
                .insert(card, plan::Held { memory, planned: 0 });
        }
    }
    Ok(())
}

/// Decode every record (two threads share the partitions of a large batch).
fn decode(batch: &mut BTreeMap<(usize, i32), Vec<Rec>>, policy: &Policy) {
    let decode_part = |((ti, _), recs): (&(usize, i32), &mut Vec<Rec>)| {
        for rec in recs.iter_mut() {
            rec.decoded = match *ti {
                SENSORS => SensorReading::from_json(&rec.payload, policy)
                    .map_or_else(Decoded::Invalid, Decoded::Sensor),
                _ => Payment::from_json(&rec.payload, policy)
                    .map_or_else(Decoded::Invalid, Decoded::Payment),
            };
        }
    };
    let records: usize = batch.values().map(Vec::len).sum();
    if batch.len() < 2 || records < 2_000 {
        batch.iter_mut().for_each(decode_part);
        return;
    }
    let mut parts: Vec<(&(usize, i32), &mut Vec<Rec>)> = batch.iter_mut().collect();
    let mut half = 0;
    let mut acc = 0;
    while half < parts.len() && acc * 2 < records {
        acc += parts[half].1.len();
        half += 1;
    }
    let b = parts.split_off(half);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| b.into_iter().for_each(decode_part));
        parts.into_iter().for_each(decode_part);
        if let Err(panic) = other.join() {
            std::panic::resume_unwind(panic);
        }
    });
}
