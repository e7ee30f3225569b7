//! The archiver: consumes the event topics in its own consumer group and appends every record,
//! unchanged (the original JSON is kept next to the decoded columns), to the master dataset.
//!
//! Exactly once, from the dataset itself: a partition is assigned at the `next_offset` of its
//! manifest (from the beginning when it has none); its records are buffered and flushed (on
//! an interval or a size) as one Parquet file per kind and event date, then the manifest is
//! rewritten atomically with the new files and offset. A crash before the manifest leaves
//! orphan files, deleted at the next assignment and never read; a crash after it loses nothing.
//! Before committing, the manifest on disk must still be the one this instance last wrote: a
//! second writer (a zombie after a rebalance) makes the flush drop its buffer and seek to the
//! stored offset instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lambdalake_events::{Event, FraudLabel, Payment, Policy, SensorReading};
use lambdalake_kafka::rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use lambdalake_kafka::rdkafka::message::Message;
use lambdalake_kafka::rdkafka::{ClientContext, Offset, TopicPartitionList};
use lambdalake_runtime::otel;
use lambdalake_runtime::tasks::CancellationToken;
use polars::prelude::*;

use crate::dataset::{Dataset, DatasetError, FileEntry, Kind, Manifest};
use crate::metrics;

/// What the archiver needs to know.
#[derive(Debug, Clone)]
pub struct ArchiverSettings {
    /// (topic, what its records are).
    pub topics: Vec<(String, Kind)>,
    pub flush_interval: Duration,
    pub flush_records: usize,
    /// Compact a partition's files of one kind and date once it has this many small ones.
    pub compact_min_files: usize,
    /// A file with fewer rows than this is small.
    pub compact_small_rows: u64,
    pub compact_every: Duration,
    /// How long files replaced by a compaction stay readable (a recompute may be reading them).
    pub retire_after: Duration,
}

/// A change of assignment, posted by the rebalance callback.
#[derive(Debug)]
enum Change {
    Assigned(Vec<(String, i32, Option<Manifest>)>),
    Revoked(Vec<(String, i32)>),
}

/// Turns rebalances into assignments at the manifests' offsets.
pub struct Context {
    dataset: Dataset,
    changes: Mutex<Vec<Change>>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut assignment = TopicPartitionList::new();
                let mut parts = Vec::new();
                for e in tpl.elements() {
                    let (topic, p) = (e.topic().to_owned(), e.partition());
                    // a manifest that cannot be read stops the partition (archiving it from the
                    // start would duplicate everything)
                    let m = match self.dataset.manifest(&topic, p) {
                        Ok(m) => m,
                        Err(err) => {
                            tracing::error!(topic, partition = p, error = %err, "cannot read the partition's manifest; not archiving it");
                            continue;
                        }
                    };
                    let offset = m
                        .as_ref()
                        .map_or(Offset::Beginning, |m| Offset::Offset(m.next_offset));
                    if let Err(err) = assignment.add_partition_offset(&topic, p, offset) {
                        tracing::error!(topic, partition = p, error = %err, "bad offset");
                        continue;
                    }
                    parts.push((topic, p, m));
                }
                tracing::info!(
                    partitions = ?parts.iter().map(|(t, p, m)| format!("{t}/{p}@{}", m.as_ref().map_or("start".to_owned(), |m| m.next_offset.to_string()))).collect::<Vec<_>>(),
                    "partitions assigned; starting at the offsets of their manifests"
                );
                if let Err(err) = consumer.assign(&assignment) {
                    tracing::error!(error = %err, "cannot assign partitions");
                }
                self.push(Change::Assigned(parts));
            }
            Rebalance::Revoke(tpl) => {
                let parts = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect::<Vec<_>>();
                tracing::info!(partitions = parts.len(), "partitions revoked");
                self.push(Change::Revoked(parts));
                let _ = consumer.unassign();
            }
            Rebalance::Error(e) => {
                tracing::error!(error = %e, "rebalance error");
            }
        }
    }
}

impl Context {
    pub fn new(dataset: Dataset) -> Self {
        Context {
            dataset,
            changes: Mutex::new(Vec::new()),
        }
    }

    fn push(&self, c: Change) {
        if let Ok(mut v) = self.changes.lock() {
            v.push(c);
        }
    }

    fn take(&self) -> Vec<Change> {
        self.changes
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// One archived record, decoded.
enum Row {
    Sensor(SensorReading),
    Payment(Payment),
    Label(FraudLabel),
    Invalid(String),
}

struct Rec {
    offset: i64,
    kafka_ts: Option<i64>,
    raw: Vec<u8>,
    row: Row,
    /// The trace the record carries (only read when tracing is on).
    trace: Option<otel::Parent>,
}

impl Rec {
    fn kind(&self) -> Kind {
        match self.row {
            Row::Sensor(_) => Kind::SensorReading,
            Row::Payment(_) => Kind::Payment,
            Row::Label(_) => Kind::FraudLabel,
            Row::Invalid(_) => Kind::Invalid,
        }
    }

    /// Event time of a valid event.
    fn ts(&self) -> Option<i64> {
        match &self.row {
            Row::Sensor(r) => Some(r.ts.millis()),
            Row::Payment(p) => Some(p.ts.millis()),
            Row::Label(l) => Some(l.ts.millis()),
            Row::Invalid(_) => None,
        }
    }

    /// The date directory: event time, or the Kafka timestamp of an invalid record.
    fn date(&self) -> String {
        let ms = self.ts().or(self.kafka_ts).unwrap_or(0);
        chrono::DateTime::from_timestamp_millis(ms).map_or_else(
            || "unknown".to_owned(),
            |d| d.format("%Y-%m-%d").to_string(),
        )
    }
}

struct Part {
    kind: Kind,
    /// The manifest as last committed by this instance.
    manifest: Manifest,
    /// The next offset expected from the consumer.
    expect: i64,
    buffer: Vec<Rec>,
    orphans_checked: bool,
}

/// Why the archiver stopped.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot subscribe: {0}")]
    Subscribe(#[source] lambdalake_kafka::rdkafka::error::KafkaError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
}

pub struct Archiver {
    consumer: BaseConsumer<Context>,
    dataset: Dataset,
    settings: ArchiverSettings,
    parts: HashMap<(String, i32), Part>,
    shutdown: CancellationToken,
    policy: Policy,
    buffered: usize,
    last_compaction: Instant,
    /// Whether the last flush reached the dataset (readiness).
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
}

impl Archiver {
    pub fn new(
        consumer: BaseConsumer<Context>,
        dataset: Dataset,
        settings: ArchiverSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Archiver {
            consumer,
            dataset,
            settings,
            parts: HashMap::new(),
            shutdown,
            policy: Policy::stored(),
            buffered: 0,
            last_compaction: Instant::now(),
            healthy: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    fn kind_of(&self, topic: &str) -> Option<Kind> {
        self.settings
            .topics
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, k)| *k)
    }

    /// Run until shutdown; what is buffered then is flushed.
    pub fn run(mut self) -> Result<(), ArchiveError> {
        let topics: Vec<&str> = self
            .settings
            .topics
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        self.consumer
            .subscribe(&topics)
            .map_err(ArchiveError::Subscribe)?;
        let mut last_flush = Instant::now();
        while !self.shutdown.is_cancelled() {
            let polled = self.consumer.poll(Duration::from_millis(100)).map(|r| {
                r.map(|m| {
                    (
                        m.topic().to_owned(),
                        m.partition(),
                        m.offset(),
                        m.timestamp().to_millis(),
                        m.payload().unwrap_or_default().to_vec(),
                        lambdalake_kafka::parent_of(&m),
                    )
                })
            });
            self.handle_changes();
            match polled {
                None => {}
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                Some(Ok((topic, p, offset, kafka_ts, payload, trace))) => {
                    self.take(topic, p, offset, kafka_ts, payload, trace);
                }
            }
            if self.buffered >= self.settings.flush_records
                || (self.buffered > 0 && last_flush.elapsed() >= self.settings.flush_interval)
            {
                self.flush_all()?;
                last_flush = Instant::now();
            }
            if self.last_compaction.elapsed() >= self.settings.compact_every {
                self.compact_all()?;
                self.last_compaction = Instant::now();
            }
        }
        self.handle_changes();
        self.flush_all()?;
        tracing::info!("archiver stopping: leaving the consumer group");
        self.consumer.unsubscribe();
        Ok(())
    }

    fn handle_changes(&mut self) {
        for change in self.consumer.context().take() {
            match change {
                Change::Revoked(parts) => {
                    for key in parts {
                        if let Some(part) = self.parts.remove(&key) {
                            // read again from the manifest by the next owner
                            self.buffered -= part.buffer.len();
                        }
                    }
                }
                Change::Assigned(parts) => {
                    for (topic, p, m) in parts {
                        let Some(kind) = self.kind_of(&topic) else {
                            continue;
                        };
                        let manifest = m.unwrap_or_else(|| Manifest::new(&topic, p));
                        self.parts.insert(
                            (topic, p),
                            Part {
                                kind,
                                expect: manifest.next_offset,
                                manifest,
                                buffer: Vec::new(),
                                orphans_checked: false,
                            },
                        );
                    }
                }
            }
        }
        let dataset = self.dataset.clone();
        for ((topic, p), part) in &mut self.parts {
            if part.orphans_checked {
                continue;
            }
            match dataset.remove_orphans(topic, *p, Some(&part.manifest)) {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(
                            topic,
                            partition = p,
                            files = n,
                            "removed files no manifest lists (a crash before their commit)"
                        );
                    }
                    part.orphans_checked = true;
                }
                Err(e) => {
                    tracing::warn!(topic, partition = p, error = %e, "cannot remove orphan files; will retry")
                }
            }
        }
    }

    fn take(
        &mut self,
        topic: String,
        p: i32,
        offset: i64,
        kafka_ts: Option<i64>,
        payload: Vec<u8>,
        trace: Option<otel::Parent>,
    ) {
        let key = (topic, p);
        let Some(part) = self.parts.get_mut(&key) else {
            return; // not assigned through the rebalance path
        };
        if offset < part.expect {
            return; // fetched before a seek
        }
        if offset > part.expect {
            // a record fetched from an old position after a seek, or records deleted by
            // retention: read again from the expected offset unless they are gone
            let low = self
                .consumer
                .fetch_watermarks(&key.0, p, Duration::from_secs(5))
                .map_or(0, |(low, _)| low);
            if low <= part.expect {
                let _ = self.consumer.seek(
                    &key.0,
                    p,
                    Offset::Offset(part.expect),
                    Duration::from_secs(5),
                );
                return;
            }
            tracing::error!(
                topic = key.0,
                partition = p,
                expected = part.expect,
                low,
                "records were deleted by retention before they were archived; continuing from the oldest left"
            );
        }
        part.expect = offset + 1;
        let row = match part.kind {
            Kind::SensorReading => {
                SensorReading::from_json(&payload, &self.policy).map(Row::Sensor)
            }
            Kind::Payment => Payment::from_json(&payload, &self.policy).map(Row::Payment),
            Kind::FraudLabel => FraudLabel::from_json(&payload, &self.policy).map(Row::Label),
            Kind::Invalid => Ok(Row::Invalid("not an event topic".to_owned())),
        }
        .unwrap_or_else(|e| Row::Invalid(e.to_string()));
        part.buffer.push(Rec {
            offset,
            kafka_ts,
            raw: payload,
            row,
            trace,
        });
        self.buffered += 1;
    }

    /// Flush every partition with buffered records. A dataset error stops the archiver (the
    /// buffer is read again from Kafka at the next start); a fenced partition is repositioned.
    fn flush_all(&mut self) -> Result<(), ArchiveError> {
        let keys: Vec<(String, i32)> = self
            .parts
            .iter()
            .filter(|(_, part)| !part.buffer.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let t0 = Instant::now();
            let Some(part) = self.parts.get_mut(&key) else {
                continue;
            };
            let records = std::mem::take(&mut part.buffer);
            self.buffered -= records.len();
            let n = records.len();
            // the write, as a span in each trace the records carry (tracing on)
            let mut traces = otel::BatchTraces::default();
            for parent in records.iter().filter_map(|r| r.trace.as_ref()) {
                traces.add(parent);
            }
            let start = std::time::SystemTime::now();
            let result = flush(&self.dataset, part, records);
            for mut span in traces.spans("archiver write", otel::Kind::Consumer, start) {
                span.set("messaging.destination.name", key.0.clone());
                span.set("messaging.destination.partition.id", key.1.to_string());
                span.set("lambdalake.records", n as i64);
                match &result {
                    Ok(Flushed::Committed(files)) => span.set("lambdalake.files", *files as i64),
                    Ok(Flushed::Fenced(_)) => span.set("lambdalake.fenced", true),
                    Err(e) => span.fail(e),
                }
            }
            match result {
                Ok(Flushed::Committed(files)) => {
                    metrics::ARCHIVED_EVENTS
                        .with_label_values(&[part.kind.as_str()])
                        .inc_by(n as u64);
                    metrics::ARCHIVER_FILES.inc_by(files as u64);
                    metrics::ARCHIVER_FLUSH_SECONDS.observe(t0.elapsed().as_secs_f64());
                    self.healthy
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                Ok(Flushed::Fenced(stored)) => {
                    tracing::warn!(
                        topic = key.0,
                        partition = key.1,
                        stored = stored.next_offset,
                        "another archiver committed this partition; dropping the buffer and reading from its offset"
                    );
                    part.expect = stored.next_offset;
                    part.manifest = stored;
                    let _ = self.consumer.seek(
                        &key.0,
                        key.1,
                        Offset::Offset(part.expect),
                        Duration::from_secs(5),
                    );
                }
                Err(e) => {
                    self.healthy
                        .store(false, std::sync::atomic::Ordering::Release);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    fn compact_all(&mut self) -> Result<(), ArchiveError> {
        for ((topic, p), part) in &mut self.parts {
            let compacted = match compact(
                &self.dataset,
                &mut part.manifest,
                self.settings.compact_min_files,
                self.settings.compact_small_rows,
                self.settings.retire_after,
            ) {
                Ok(n) => n,
                Err(DatasetError::Fenced { .. }) => {
                    // another writer owns the partition now: follow its manifest
                    let stored = self
                        .dataset
                        .manifest(topic, *p)?
                        .unwrap_or_else(|| Manifest::new(topic, *p));
                    tracing::warn!(
                        topic,
                        partition = p,
                        "compaction fenced by another archiver"
                    );
                    part.expect = stored.next_offset;
                    part.manifest = stored;
                    self.buffered -= part.buffer.len();
                    part.buffer.clear();
                    let _ = self.consumer.seek(
                        topic,
                        *p,
                        Offset::Offset(part.expect),
                        Duration::from_secs(5),
                    );
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if compacted > 0 {
                tracing::info!(
                    topic,
                    partition = p,
                    files = compacted,
                    "compacted small files"
                );
                metrics::ARCHIVER_COMPACTED_FILES.inc_by(compacted as u64);
            }
        }
        Ok(())
    }
}

/// Append already-read records (offset, Kafka timestamp, payload) of one partition to the
/// dataset, as the archiver does after a poll: decoded, written per kind and date, committed.
/// For tools that fill a dataset without a broker (tests, the benchmark's generator). The
/// records must follow the partition's manifest.
pub fn append(
    dataset: &Dataset,
    topic: &str,
    partition: i32,
    kind: Kind,
    records: impl IntoIterator<Item = (i64, Option<i64>, Vec<u8>)>,
) -> Result<Manifest, DatasetError> {
    let manifest = dataset
        .manifest(topic, partition)?
        .unwrap_or_else(|| Manifest::new(topic, partition));
    let policy = Policy::stored();
    let recs: Vec<Rec> = records
        .into_iter()
        .map(|(offset, kafka_ts, raw)| {
            let row = decode(kind, &raw, &policy);
            Rec {
                offset,
                kafka_ts,
                raw,
                row,
                trace: None,
            }
        })
        .collect();
    let mut part = Part {
        kind,
        expect: manifest.next_offset,
        manifest,
        buffer: Vec::new(),
        orphans_checked: true,
    };
    match flush(dataset, &mut part, recs)? {
        Flushed::Committed(_) => Ok(part.manifest),
        Flushed::Fenced(m) => Ok(m),
    }
}

fn decode(kind: Kind, payload: &[u8], policy: &Policy) -> Row {
    match kind {
        Kind::SensorReading => SensorReading::from_json(payload, policy).map(Row::Sensor),
        Kind::Payment => Payment::from_json(payload, policy).map(Row::Payment),
        Kind::FraudLabel => FraudLabel::from_json(payload, policy).map(Row::Label),
        Kind::Invalid => Ok(Row::Invalid("not an event topic".to_owned())),
    }
    .unwrap_or_else(|e| Row::Invalid(e.to_string()))
}

enum Flushed {
    Committed(usize),
    /// The manifest on disk is not the one this instance committed last.
    Fenced(Manifest),
}

/// Write `records` (one partition's, in offset order) as files per kind and date, then commit the
/// manifest.
fn flush(dataset: &Dataset, part: &mut Part, records: Vec<Rec>) -> Result<Flushed, DatasetError> {
    let (Some(first), Some(last)) = (
        records.first().map(|r| r.offset),
        records.last().map(|r| r.offset),
    ) else {
        return Ok(Flushed::Committed(0));
    };
    let m = &part.manifest;
    let stored = dataset.manifest(&m.topic, m.partition)?;
    if stored.as_ref().is_some_and(|s| s != m) || (stored.is_none() && !m.files.is_empty()) {
        return Ok(Flushed::Fenced(
            stored.unwrap_or_else(|| Manifest::new(&m.topic, m.partition)),
        ));
    }
    let mut groups: BTreeMap<(Kind, String), Vec<Rec>> = BTreeMap::new();
    for r in records {
        groups.entry((r.kind(), r.date())).or_default().push(r);
    }
    let mut next = part.manifest.clone();
    let mut files = 0;
    for ((kind, date), recs) in groups {
        let path = Dataset::file_path(kind, &date, &next.topic, next.partition, first, last);
        let min_ts = recs.iter().filter_map(Rec::ts).min();
        let max_ts = recs.iter().filter_map(Rec::ts).max();
        let rows = recs.len() as u64;
        let mut df = frame(kind, recs).map_err(|source| DatasetError::Parquet {
            path: dataset.path(&path),
            source,
        })?;
        let bytes = put_parquet(dataset, &path, &mut df)?;
        next.files.push(FileEntry {
            path,
            kind,
            date,
            first,
            last,
            rows,
            bytes,
            min_ts,
            max_ts,
        });
        next.max_ts = match (next.max_ts, max_ts) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        files += 1;
    }
    next.next_offset = last + 1;
    match dataset.put_manifest(&next) {
        Ok(()) => {}
        // an object store's conditional put saw another writer's commit: its files win, ours
        // are orphans (removed at the next assignment)
        Err(DatasetError::Fenced { .. }) => {
            let stored = dataset.manifest(&next.topic, next.partition)?;
            return Ok(Flushed::Fenced(
                stored.unwrap_or_else(|| Manifest::new(&next.topic, next.partition)),
            ));
        }
        Err(e) => return Err(e),
    }
    part.manifest = next;
    Ok(Flushed::Committed(files))
}

/// Write `df` as one zstd Parquet file at `path`, atomically; its size.
fn put_parquet(dataset: &Dataset, path: &str, df: &mut DataFrame) -> Result<u64, DatasetError> {
    dataset.put(path, |f| {
        ParquetWriter::new(f)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(df)
            .map(|_| ())
            .map_err(std::io::Error::other)
    })
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The columns of one kind. Every file keeps the Kafka coordinates and the original record.
fn frame(kind: Kind, recs: Vec<Rec>) -> PolarsResult<DataFrame> {
    let n = recs.len();
    let partition_offset: Vec<i64> = recs.iter().map(|r| r.offset).collect();
    let kafka_ts: Vec<Option<i64>> = recs.iter().map(|r| r.kafka_ts).collect();
    let mut cols: Vec<Column> = Vec::new();
    match kind {
        Kind::SensorReading => {
            let mut event_id = Vec::with_capacity(n);
            let mut device_id = Vec::with_capacity(n);
            let mut site = Vec::with_capacity(n);
            let mut ts = Vec::with_capacity(n);
            let mut temperature = Vec::with_capacity(n);
            let mut vibration = Vec::with_capacity(n);
            for r in &recs {
                if let Row::Sensor(s) = &r.row {
                    event_id.push(s.event_id.as_str());
                    device_id.push(s.device_id.as_str());
                    site.push(s.site.as_str());
                    ts.push(s.ts.millis());
                    temperature.push(s.temperature_c);
                    vibration.push(s.vibration_mm_s);
                }
            }
            cols.push(Column::new("event_id".into(), event_id));
            cols.push(Column::new("device_id".into(), device_id));
            cols.push(Column::new("site".into(), site));
            cols.push(Column::new("ts".into(), ts));
            cols.push(Column::new("temperature_c".into(), temperature));
            cols.push(Column::new("vibration_mm_s".into(), vibration));
        }
        Kind::Payment => {
            let mut c: [Vec<&str>; 7] = Default::default();
            let mut mcc = Vec::with_capacity(n);
            let mut amount = Vec::with_capacity(n);
            let mut lat = Vec::with_capacity(n);
            let mut lon = Vec::with_capacity(n);
            let mut ts = Vec::with_capacity(n);
            for r in &recs {
                if let Row::Payment(p) = &r.row {
                    c[0].push(p.event_id.as_str());
                    c[1].push(p.txn_id.as_str());
                    c[2].push(p.card_id.as_str());
                    c[3].push(p.merchant_id.as_str());
                    c[4].push(p.currency.as_str());
                    c[5].push(p.country.as_str());
                    mcc.push(i32::from(p.mcc.code()));
                    amount.push(p.amount.cents());
                    lat.push(p.lat);
                    lon.push(p.lon);
                    ts.push(p.ts.millis());
                }
            }
            let [event_id, txn_id, card_id, merchant_id, currency, country, _] = c;
            cols.push(Column::new("event_id".into(), event_id));
            cols.push(Column::new("txn_id".into(), txn_id));
            cols.push(Column::new("card_id".into(), card_id));
            cols.push(Column::new("merchant_id".into(), merchant_id));
            cols.push(Column::new("mcc".into(), mcc));
            cols.push(Column::new("amount_cents".into(), amount));
            cols.push(Column::new("currency".into(), currency));
            cols.push(Column::new("country".into(), country));
            cols.push(Column::new("lat".into(), lat));
            cols.push(Column::new("lon".into(), lon));
            cols.push(Column::new("ts".into(), ts));
        }
        Kind::FraudLabel => {
            let mut event_id = Vec::with_capacity(n);
            let mut txn_id = Vec::with_capacity(n);
            let mut card_id = Vec::with_capacity(n);
            let mut fraud = Vec::with_capacity(n);
            let mut ts = Vec::with_capacity(n);
            for r in &recs {
                if let Row::Label(l) = &r.row {
                    event_id.push(l.event_id.as_str());
                    txn_id.push(l.txn_id.as_str());
                    card_id.push(l.card_id.as_str());
                    fraud.push(l.fraud);
                    ts.push(l.ts.millis());
                }
            }
            cols.push(Column::new("event_id".into(), event_id));
            cols.push(Column::new("txn_id".into(), txn_id));
            cols.push(Column::new("card_id".into(), card_id));
            cols.push(Column::new("fraud".into(), fraud));
            cols.push(Column::new("ts".into(), ts));
        }
        Kind::Invalid => {
            let errors: Vec<&str> = recs
                .iter()
                .map(|r| match &r.row {
                    Row::Invalid(e) => e.as_str(),
                    _ => "",
                })
                .collect();
            cols.push(Column::new("error".into(), errors));
        }
    }
    cols.push(Column::new("offset".into(), partition_offset));
    cols.push(Column::new("kafka_ts".into(), kafka_ts));
    if kind == Kind::Invalid {
        let raw: Vec<&[u8]> = recs.iter().map(|r| r.raw.as_slice()).collect();
        cols.push(Column::new("raw".into(), raw));
    } else {
        // decoded events are valid UTF-8 JSON
        let raw: Vec<&str> = recs
            .iter()
            .map(|r| std::str::from_utf8(&r.raw).unwrap_or_default())
            .collect();
        cols.push(Column::new("raw".into(), raw));
    }
    DataFrame::new_infer_height(cols)
}

/// Merge runs of small files of one kind and date into one, keeping every row and its order;
/// the manifest is committed before the old files are deleted. Returns the files merged.
pub fn compact(
    dataset: &Dataset,
    manifest: &mut Manifest,
    min_files: usize,
    small_rows: u64,
    retire_after: Duration,
) -> Result<usize, DatasetError> {
    let now = now_ms();
    // files retired long enough ago that no recompute still reads them
    let expired = |at: i64| now - at >= i64::try_from(retire_after.as_millis()).unwrap_or(i64::MAX);
    if manifest.retired.iter().any(|(_, at)| expired(*at)) {
        let mut next = manifest.clone();
        let (gone, kept): (Vec<_>, Vec<_>) =
            next.retired.drain(..).partition(|(_, at)| expired(*at));
        next.retired = kept;
        dataset.put_manifest(&next)?;
        *manifest = next;
        for (path, _) in gone {
            if let Err(e) = dataset.remove(&path) {
                tracing::warn!(path, error = %e, "cannot delete a retired file");
            }
        }
    }
    let mut groups: BTreeMap<(Kind, String), Vec<usize>> = BTreeMap::new();
    for (i, f) in manifest.files.iter().enumerate() {
        if f.rows < small_rows {
            groups.entry((f.kind, f.date.clone())).or_default().push(i);
        }
    }
    let mut next = manifest.clone();
    let mut remove: Vec<usize> = Vec::new();
    let mut merged_files = 0;
    for ((kind, date), idx) in groups {
        if idx.len() < min_files.max(2) {
            continue;
        }
        let mut entries: Vec<&FileEntry> = idx.iter().map(|&i| &manifest.files[i]).collect();
        entries.sort_by_key(|f| f.first);
        let mut df: Option<DataFrame> = None;
        for f in &entries {
            let path = dataset.path(&f.path);
            let bytes = dataset.read(&f.path)?;
            let part = ParquetReader::new(std::io::Cursor::new(bytes))
                .finish()
                .map_err(|source| DatasetError::Parquet {
                    path: path.clone(),
                    source,
                })?;
            df = Some(match df {
                None => part,
                Some(mut acc) => {
                    acc.vstack_mut_owned(part)
                        .map_err(|source| DatasetError::Parquet { path, source })?;
                    acc
                }
            });
        }
        let Some(mut df) = df else { continue };
        let (first, last) = (entries[0].first, entries[entries.len() - 1].last);
        let path = Dataset::file_path(
            kind,
            &date,
            &manifest.topic,
            manifest.partition,
            first,
            last,
        );
        let bytes = put_parquet(dataset, &path, &mut df)?;
        let entry = FileEntry {
            path,
            kind,
            date,
            first,
            last,
            rows: entries.iter().map(|f| f.rows).sum(),
            bytes,
            min_ts: entries.iter().filter_map(|f| f.min_ts).min(),
            max_ts: entries.iter().filter_map(|f| f.max_ts).max(),
        };
        merged_files += entries.len();
        remove.extend(idx);
        next.files.push(entry);
    }
    if remove.is_empty() {
        return Ok(0);
    }
    let mut keep = Vec::new();
    for (i, f) in next.files.iter().enumerate() {
        if !remove.contains(&i) {
            keep.push(f.clone());
        }
    }
    next.files = keep;
    next.files
        .sort_by_key(|f| (f.kind, f.date.clone(), f.first));
    next.retired.extend(
        remove
            .iter()
            .map(|&i| (manifest.files[i].path.clone(), now)),
    );
    dataset.put_manifest(&next)?;
    *manifest = next;
    Ok(merged_files)
}
