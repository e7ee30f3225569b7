//! The streaming pipeline: one consumer in its own group; every micro-batch (trigger: an
//! interval or a number of records) goes to bronze, then silver, then gold, each table in one
//! Delta commit that records the offsets it covers (`txn`, see [`crate::tables`]).
//!
//! **Exactly once per table.** On assignment a partition starts at the smallest offset its tables
//! recorded; each table then skips the records below its own offset. Bronze appends every
//! record; silver appends the events not seen before (deduplicated on `event_id` against the
//! batch, the ids of recent minutes held in memory, and the silver table itself for older
//! minutes); gold MERGEs the windows of the events silver added. A crash between two commits is
//! repaired on restart: gold finds the events silver added and gold has not counted by the Kafka
//! coordinates silver stores with each event. A commit that conflicts with another writer of the
//! same partition (a zombie after a rebalance) fails; the pipeline then re-reads the offsets from
//! the tables and seeks there — it never writes twice.
//!
//! `--delivery at-least-once` (commit the group's offsets to Kafka after every table has the
//! micro-batch) and `at-most-once` (commit before) give up the `txn` offsets, to be measured
//! against exactly once: a crash then repeats or skips records.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deltalake_core::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray,
};
use deltalake_core::arrow::datatypes::{DataType as ArrowType, Field, Schema};
use deltalake_core::datafusion::prelude::SessionContext;
use deltalake_core::kernel::Transaction;
use deltalake_core::kernel::transaction::CommitProperties;
use deltalake_core::{DeltaTable, DeltaTableError};
use lambdalake_events::{Event, FraudLabel, Payment, Policy, SensorReading};
use lambdalake_kafka::rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance,
};
use lambdalake_kafka::rdkafka::error::KafkaResult;
use lambdalake_kafka::rdkafka::message::Message;
use lambdalake_kafka::rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use lambdalake_kafka::{Delivery, HighWatermarks};
use lambdalake_runtime::otel::{self, Kind as SpanKind};
use lambdalake_runtime::tasks::CancellationToken;
use lambdalake_views::table::{self, Keyed};
use lambdalake_views::{CardAgg, SensorAgg, WindowSpec};
use tokio::runtime::Handle;

use crate::history::CardHistory;
use crate::metrics;
use crate::tables::{Kind, Location, Table, app_id, stored_offsets};

const MINUTE_MS: i64 = 60_000;

/// MERGEs tried before a conflicting micro-batch is given up (and read again from Kafka).
const MERGE_ATTEMPTS: u32 = 8;

/// What the pipeline needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    pub topics: Vec<(String, Kind)>,
    pub trigger: Duration,
    pub max_rows: usize,
    pub dedupe_memory: Duration,
    pub checkpoint_interval: u64,
    pub optimize_every: Duration,
    pub vacuum_every: Duration,
    pub vacuum_retention: Duration,
    /// A payment scored at or above this is a fraud alert.
    pub fraud_threshold: f64,
    /// Columns a silver table may gain from new event fields.
    pub max_extra_columns: usize,
    pub delivery: Delivery,
}

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot subscribe: {0}")]
    Subscribe(#[source] lambdalake_kafka::rdkafka::error::KafkaError),
    #[error("delta: {0}")]
    Delta(#[from] DeltaTableError),
}

/// Why a micro-batch was not committed (it is read again from Kafka).
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("{table}: another writer committed offsets of the same partitions: {source}")]
    Fenced {
        table: &'static str,
        source: DeltaTableError,
    },
    /// A concurrent commit touched what this one read (not the same partitions): retryable.
    #[error("{table}: a concurrent commit conflicted: {source}")]
    Conflict {
        table: &'static str,
        source: DeltaTableError,
    },
    #[error("{table}: {source}")]
    Delta {
        table: &'static str,
        source: DeltaTableError,
    },
    #[error("{0}")]
    Other(String),
}

fn delta(table: Table) -> impl FnOnce(DeltaTableError) -> BatchError {
    use deltalake_core::kernel::transaction::{CommitConflictError, TransactionError};
    move |source| {
        // another commit recorded an offset of the same partition since this one's snapshot
        let fenced = matches!(
            &source,
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(
                    CommitConflictError::ConcurrentTransaction
                )
            }
        );
        let conflict = matches!(
            &source,
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
            }
        );
        if fenced {
            BatchError::Fenced {
                table: table.name(),
                source,
            }
        } else if conflict {
            BatchError::Conflict {
                table: table.name(),
                source,
            }
        } else {
            BatchError::Delta {
                table: table.name(),
                source,
            }
        }
    }
}

/// A change of assignment, posted by the rebalance callback.
#[derive(Debug)]
enum Change {
    /// Per partition: the offset each of its tables recorded.
    Assigned(Vec<(String, i32, HashMap<Table, i64>)>),
    Revoked(Vec<(String, i32)>),
}

/// Turns rebalances into assignments at the offsets the tables recorded.
pub struct Context {
    location: Location,
    topics: Vec<(String, Kind)>,
    checkpoint_interval: u64,
    handle: Handle,
    changes: Mutex<Vec<Change>>,
    /// High watermark per partition, from librdkafka's statistics.
    highs: HighWatermarks,
    delivery: Delivery,
}

impl ClientContext for Context {
    /// Keep each partition's high watermark from the statistics (every second), for the lag.
    fn stats(&self, stats: Statistics) {
        self.highs.record(stats);
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let wanted: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                let stored = match self.handle.block_on(self.read_offsets(&wanted)) {
                    Ok(s) => s,
                    Err(e) => {
                        // reading from the beginning would be correct (every table skips what it
                        // has) but slow; not assigning is safer: the next rebalance retries
                        tracing::error!(error = %e, "cannot read the offsets stored in the tables; not consuming");
                        return;
                    }
                };
                let mut assignment = TopicPartitionList::new();
                let mut parts = Vec::new();
                for (topic, p, offsets) in stored {
                    let start = offsets.values().copied().min().unwrap_or(0);
                    let offset = if !self.delivery.fenced() {
                        // the group's offset committed to Kafka (the beginning when none)
                        Offset::Stored
                    } else if start > 0 {
                        Offset::Offset(start)
                    } else {
                        Offset::Beginning
                    };
                    if let Err(e) = assignment.add_partition_offset(&topic, p, offset) {
                        tracing::error!(topic, partition = p, error = %e, "bad offset");
                        continue;
                    }
                    parts.push((topic, p, offsets));
                }
                if self.delivery.fenced() {
                    tracing::info!(
                        partitions = ?parts.iter().map(|(t, p, o)| format!("{t}/{p}@{}", o.values().min().copied().unwrap_or(0))).collect::<Vec<_>>(),
                        "partitions assigned; starting at the offsets the tables recorded"
                    );
                } else {
                    tracing::info!(
                        partitions = ?parts.iter().map(|(t, p, _)| format!("{t}/{p}")).collect::<Vec<_>>(),
                        delivery = %self.delivery,
                        "partitions assigned; starting at the group's offsets committed to Kafka"
                    );
                }
                if let Err(e) = consumer.assign(&assignment) {
                    tracing::error!(error = %e, "cannot assign partitions");
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
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
        }
    }
}

impl Context {
    pub fn new(
        location: Location,
        topics: Vec<(String, Kind)>,
        checkpoint_interval: u64,
        handle: Handle,
        delivery: Delivery,
    ) -> Self {
        Context {
            delivery,
            location,
            topics,
            checkpoint_interval,
            handle,
            changes: Mutex::new(Vec::new()),
            highs: HighWatermarks::default(),
        }
    }

    fn kind(&self, topic: &str) -> Option<Kind> {
        self.topics
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, k)| *k)
    }

    /// Per partition: the offset every table of its topic recorded (0: none).
    async fn read_offsets(
        &self,
        parts: &[(String, i32)],
    ) -> Result<Vec<(String, i32, HashMap<Table, i64>)>, DeltaTableError> {
        let mut tables: HashMap<Table, DeltaTable> = HashMap::new();
        let mut out = Vec::new();
        for (topic, p) in parts {
            let Some(kind) = self.kind(topic) else {
                continue;
            };
            let id = app_id(topic, *p);
            let mut offsets = HashMap::new();
            for t in kind.tables() {
                if let std::collections::hash_map::Entry::Vacant(e) = tables.entry(t) {
                    e.insert(self.location.open(t, self.checkpoint_interval).await?);
                }
                let stored = stored_offsets(&tables[&t], std::slice::from_ref(&id)).await?;
                offsets.insert(t, stored.get(&id).copied().unwrap_or(0));
            }
            out.push((topic.clone(), *p, offsets));
        }
        Ok(out)
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

/// One Kafka record.
pub(crate) struct Record {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<String>,
    pub(crate) value: Vec<u8>,
    pub(crate) kafka_ts: Option<i64>,
    /// The trace the record carries (only read when tracing is on).
    pub(crate) trace: Option<otel::Parent>,
}

struct Part {
    kind: Kind,
    /// The next offset expected from the consumer.
    expect: i64,
    /// Not exactly once: the position is the group's committed offset, taken from the first
    /// record read.
    anywhere: bool,
    /// The next offset each table recorded.
    stored: HashMap<Table, i64>,
}

/// An event silver holds, with the Kafka coordinates of the record that brought it.
#[derive(Clone)]
struct Fresh {
    partition: i32,
    offset: i64,
    event: Parsed,
}

pub use crate::history::HISTORY_MS;

/// The columns of `silver_payments` a card history is read from (what [`history_rows`] reads).
const HISTORY_COLUMNS: [&str; 6] = [
    "card_id",
    "kafka_partition",
    "kafka_offset",
    "ts_ms",
    "lat",
    "lon",
];

/// The event ids of recent minutes, per event kind: what silver holds for them.
#[derive(Default)]
struct Seen {
    ids: HashMap<i64, HashSet<String>>,
    /// Minutes whose ids were read from silver (or known to have none).
    loaded: HashSet<i64>,
    /// Minutes after this one had no row in silver when the memory was reset.
    empty_after: Option<Option<i64>>,
}

/// A valid event of a record.
#[derive(Clone)]
enum Parsed {
    Sensor(SensorReading),
    Payment(Payment),
    Label(FraudLabel),
}

impl Parsed {
    fn id(&self) -> &str {
        match self {
            Parsed::Sensor(e) => e.event_id().as_str(),
            Parsed::Payment(e) => e.event_id().as_str(),
            Parsed::Label(e) => e.event_id.as_str(),
        }
    }

    fn ts(&self) -> i64 {
        match self {
            Parsed::Sensor(e) => e.ts.millis(),
            Parsed::Payment(e) => e.ts.millis(),
            Parsed::Label(e) => e.ts.millis(),
        }
    }
}

pub struct Pipeline {
    consumer: BaseConsumer<Context>,
    settings: Settings,
    handle: Handle,
    tables: HashMap<Table, DeltaTable>,
    parts: HashMap<(String, i32), Part>,
    buffer: Vec<Record>,
    seen: HashMap<Kind, Seen>,
    history: CardHistory,
    shutdown: CancellationToken,
    policy: Policy,
    last_optimize: Instant,
    last_vacuum: Instant,
    /// Whether the last micro-batch was committed (readiness).
    pub healthy: Arc<AtomicBool>,
}

impl Pipeline {
    /// Open (or create) every table. `handle` is the runtime the pipeline's thread (not one of
    /// the runtime's) blocks on for Delta operations.
    pub async fn open(
        consumer: BaseConsumer<Context>,
        location: Location,
        settings: Settings,
        handle: Handle,
        shutdown: CancellationToken,
    ) -> Result<Self, DeltaTableError> {
        let mut tables = HashMap::new();
        for t in Table::ALL {
            let opened = location.open(t, settings.checkpoint_interval).await?;
            if let Some(v) = opened.version() {
                metrics::VERSION
                    .with_label_values(&[t.name()])
                    .set(v as i64);
            }
            tables.insert(t, opened);
        }
        Ok(Pipeline {
            consumer,
            settings,
            handle,
            tables,
            parts: HashMap::new(),
            buffer: Vec::new(),
            seen: HashMap::new(),
            history: CardHistory::default(),
            shutdown,
            policy: Policy::stored(),
            last_optimize: Instant::now(),
            last_vacuum: Instant::now(),
            healthy: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Run until shutdown; what is buffered then is committed.
    pub fn run(mut self) -> Result<(), PipelineError> {
        let topics: Vec<&str> = self
            .settings
            .topics
            .iter()
            .map(|(t, _)| t.as_str())
            .collect();
        self.consumer
            .subscribe(&topics)
            .map_err(PipelineError::Subscribe)?;
        // as Spark's ProcessingTime trigger: a micro-batch every `trigger` from the start of the
        // previous one; one that took longer is followed at once, by a batch of everything that
        // arrived meanwhile
        let mut next_batch = Instant::now() + self.settings.trigger;
        let mut last_lag = Instant::now();
        while !self.shutdown.is_cancelled() {
            self.poll(Duration::from_millis(50));
            if !self.buffer.is_empty() && Instant::now() >= next_batch {
                // what the consumer has already fetched belongs to this batch: without this, a
                // batch that overran the trigger would be followed by batches of one record each
                while self.buffer.len() < self.settings.max_rows && self.poll(Duration::ZERO) {}
            }
            if self.buffer.len() >= self.settings.max_rows
                || (!self.buffer.is_empty() && Instant::now() >= next_batch)
            {
                let started = Instant::now();
                self.micro_batch();
                next_batch = started + self.settings.trigger;
            }
            if last_lag.elapsed() >= Duration::from_secs(1) {
                self.report_lag();
                last_lag = Instant::now();
            }
            self.maintain();
        }
        self.handle_changes();
        if !self.buffer.is_empty() {
            self.micro_batch();
        }
        tracing::info!("lakehouse stopping: leaving the consumer group");
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Consumer lag per owned partition: the high watermark of the last statistics (no
    /// request to the broker) minus the offset every table committed.
    fn report_lag(&self) {
        let highs = &self.consumer.context().highs;
        for ((topic, p), part) in &self.parts {
            if let Some(high) = highs.get(topic, *p) {
                // not exactly once, the tables record no offset: the consumer's position
                let committed = if self.settings.delivery.fenced() {
                    part.stored.values().copied().min().unwrap_or(0)
                } else {
                    part.expect
                };
                metrics::CONSUMER_LAG
                    .with_label_values(&[topic.as_str(), &p.to_string()])
                    .set((high - committed).max(0));
            }
        }
    }

    fn kind_of(&self, topic: &str) -> Option<Kind> {
        self.settings
            .topics
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, k)| *k)
    }

    fn handle_changes(&mut self) {
        for change in self.consumer.context().take() {
            match change {
                Change::Revoked(parts) => {
                    for key in parts {
                        let _ = metrics::CONSUMER_LAG
                            .remove_label_values(&[key.0.as_str(), &key.1.to_string()]);
                        self.parts.remove(&key);
                        self.buffer
                            .retain(|r| (r.topic.as_str(), r.partition) != (key.0.as_str(), key.1));
                    }
                }
                Change::Assigned(parts) => {
                    for (topic, p, stored) in parts {
                        let Some(kind) = self.kind_of(&topic) else {
                            continue;
                        };
                        let expect = stored.values().copied().min().unwrap_or(0);
                        let fenced = self.settings.delivery.fenced();
                        self.parts.insert(
                            (topic, p),
                            Part {
                                kind,
                                expect,
                                anywhere: !fenced,
                                // not exactly once: no table filters by its recorded offset
                                stored: if fenced { stored } else { HashMap::new() },
                            },
                        );
                    }
                    // other writers may have committed: read the tables again, and forget the
                    // event ids (the partitions owned changed)
                    self.refresh_tables();
                    self.seen.clear();
                    self.history.clear();
                }
            }
        }
    }

    fn refresh_tables(&mut self) {
        for (t, table) in &mut self.tables {
            if let Err(e) = self.handle.block_on(table.update_state()) {
                tracing::warn!(table = t.name(), error = %e, "cannot refresh the table");
            }
        }
    }

    /// Wait up to `timeout` for one record and buffer it; apply the assignment changes the poll
    /// delivered. Whether a record came.
    fn poll(&mut self, timeout: Duration) -> bool {
        let polled = self.consumer.poll(timeout).map(|r| {
            r.map(|m| Record {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().unwrap_or_default().to_vec(),
                kafka_ts: m.timestamp().to_millis(),
                trace: lambdalake_kafka::parent_of(&m),
            })
        });
        self.handle_changes();
        match polled {
            None => false,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                false
            }
            Some(Ok(r)) => {
                self.take(r);
                true
            }
        }
    }

    fn take(&mut self, r: Record) {
        let key = (r.topic.clone(), r.partition);
        let Some(part) = self.parts.get_mut(&key) else {
            return; // not assigned through the rebalance path
        };
        if std::mem::take(&mut part.anywhere) {
            part.expect = r.offset;
        }
        if r.offset < part.expect {
            return; // fetched before a seek
        }
        if r.offset > part.expect {
            // fetched from an old position after a seek, or deleted by retention
            let low = self
                .consumer
                .fetch_watermarks(&key.0, key.1, Duration::from_secs(5))
                .map_or(0, |(low, _)| low);
            if low <= part.expect {
                let _ = self.consumer.seek(
                    &key.0,
                    key.1,
                    Offset::Offset(part.expect),
                    Duration::from_secs(5),
                );
                return;
            }
            tracing::error!(
                topic = key.0,
                partition = key.1,
                expected = part.expect,
                low,
                "records were deleted by retention before the lakehouse read them; continuing from the oldest left"
            );
        }
        part.expect = r.offset + 1;
        self.buffer.push(r);
    }

    /// Commit the buffered records; on failure, read them again from the offsets the tables hold.
    fn micro_batch(&mut self) {
        let records = std::mem::take(&mut self.buffer);
        // at-most-once: the group's offsets move past the records before the tables get them
        if self.settings.delivery == Delivery::AtMostOnce
            && let Err(e) = self.commit_to_kafka(&records)
        {
            tracing::warn!(error = %e, "cannot commit offsets to Kafka; reading the records again");
            self.reposition();
            return;
        }
        let start = std::time::SystemTime::now();
        let t0 = Instant::now();
        let result = {
            let handle = self.handle.clone();
            handle.block_on(self.commit(&records))
        };
        metrics::STEP_SECONDS
            .with_label_values(&["micro_batch"])
            .observe(t0.elapsed().as_secs_f64());
        // the commit, as a span in each trace the records carry (tracing on)
        let mut traces = otel::BatchTraces::default();
        for parent in records.iter().filter_map(|r| r.trace.as_ref()) {
            traces.add(parent);
        }
        for mut span in traces.spans("lakehouse micro-batch commit", SpanKind::Consumer, start) {
            span.set("lambdalake.records", records.len() as i64);
            if let Err(e) = &result {
                span.fail(e);
            }
        }
        match result {
            Ok(()) => {
                self.healthy.store(true, Ordering::Release);
                // at-least-once: the group's offsets move once every table has the records
                if self.settings.delivery == Delivery::AtLeastOnce
                    && let Err(e) = self.commit_to_kafka(&records)
                {
                    tracing::warn!(error = %e, "cannot commit offsets to Kafka; the records are read again after a restart");
                }
            }
            Err(e) => {
                match &e {
                    BatchError::Fenced { .. } => {
                        tracing::warn!(error = %e, "micro-batch fenced; seeking to the offsets in the tables")
                    }
                    _ => {
                        self.healthy.store(false, Ordering::Release);
                        tracing::error!(error = %e, records = records.len(), "micro-batch not committed; reading it again");
                    }
                }
                self.reposition();
            }
        }
    }

    /// Commit the group's offsets past `records` to Kafka (at-least/at-most-once only).
    fn commit_to_kafka(&self, records: &[Record]) -> KafkaResult<()> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in records {
            let e = next.entry((r.topic.as_str(), r.partition)).or_insert(0);
            *e = (*e).max(r.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in next {
            tpl.add_partition_offset(t, p, Offset::Offset(o))?;
        }
        self.consumer.commit(&tpl, CommitMode::Sync)
    }

    /// Read every owned partition's offsets from the tables again and seek there (not exactly
    /// once: to the group's offsets committed to Kafka).
    fn reposition(&mut self) {
        self.buffer.clear();
        self.refresh_tables();
        self.seen.clear();
        self.history.clear();
        if !self.settings.delivery.fenced() {
            let mut tpl = TopicPartitionList::new();
            for (topic, p) in self.parts.keys() {
                tpl.add_partition(topic, *p);
            }
            let committed = self.consumer.committed_offsets(tpl, Duration::from_secs(5));
            for ((topic, p), part) in &mut self.parts {
                let offset = committed
                    .as_ref()
                    .ok()
                    .and_then(|c| c.find_partition(topic, *p))
                    .map(|e| e.offset())
                    .filter(|o| matches!(o, Offset::Offset(_)))
                    .unwrap_or(Offset::Beginning);
                part.anywhere = true;
                if let Err(e) = self
                    .consumer
                    .seek(topic, *p, offset, Duration::from_secs(5))
                {
                    tracing::warn!(topic, partition = p, error = %e, "seek failed");
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        let keys: Vec<(String, i32)> = self.parts.keys().cloned().collect();
        for (topic, p) in keys {
            let id = app_id(&topic, p);
            let Some(part) = self.parts.get_mut(&(topic.clone(), p)) else {
                continue;
            };
            for t in part.kind.tables() {
                let stored = self
                    .handle
                    .block_on(stored_offsets(&self.tables[&t], std::slice::from_ref(&id)));
                match stored {
                    Ok(s) => {
                        part.stored.insert(t, s.get(&id).copied().unwrap_or(0));
                    }
                    Err(e) => {
                        tracing::warn!(table = t.name(), error = %e, "cannot read the stored offsets")
                    }
                }
            }
            part.expect = part.stored.values().copied().min().unwrap_or(0);
            let offset = if part.expect > 0 {
                Offset::Offset(part.expect)
            } else {
                Offset::Beginning
            };
            if let Err(e) = self
                .consumer
                .seek(&topic, p, offset, Duration::from_secs(5))
            {
                tracing::warn!(topic, partition = p, error = %e, "seek failed");
            }
        }
        // do not retry at once in a tight loop when a store is down
        std::thread::sleep(Duration::from_millis(200));
    }

    async fn commit(&mut self, records: &[Record]) -> Result<(), BatchError> {
        if records.is_empty() {
            return Ok(());
        }
        // bronze: every record not in it yet
        let bronze: Vec<&Record> = records
            .iter()
            .filter(|r| r.offset >= self.stored(Table::Bronze, &r.topic, r.partition))
            .collect();
        if !bronze.is_empty() {
            let batch = bronze_batch(&bronze).map_err(BatchError::Other)?;
            let txns = self.txns(Table::Bronze, &bronze);
            self.write(Table::Bronze, batch, txns).await?;
        }
        for kind in [Kind::SensorReading, Kind::Payment, Kind::FraudLabel] {
            let of_kind: Vec<&Record> = records
                .iter()
                .filter(|r| self.kind_of(&r.topic) == Some(kind))
                .collect();
            if !of_kind.is_empty() {
                self.commit_kind(kind, &of_kind).await?;
            }
        }
        Ok(())
    }

    fn stored(&self, table: Table, topic: &str, partition: i32) -> i64 {
        self.parts
            .get(&(topic.to_owned(), partition))
            .and_then(|p| p.stored.get(&table).copied())
            .unwrap_or(0)
    }

    /// One transaction identifier per partition of `records`: the offset after its last one
    /// (none when not exactly once: the offsets are then committed to Kafka, not to the tables).
    fn txns(&self, _table: Table, records: &[&Record]) -> Vec<Transaction> {
        if !self.settings.delivery.fenced() {
            return Vec::new();
        }
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in records {
            let e = next.entry((r.topic.as_str(), r.partition)).or_insert(0);
            *e = (*e).max(r.offset + 1);
        }
        let now = chrono::Utc::now().timestamp_millis();
        next.into_iter()
            .map(|((t, p), v)| Transaction::new_with_last_update(app_id(t, p), v, Some(now)))
            .collect()
    }

    /// The offsets now recorded by `table`.
    fn record_offsets(&mut self, table: Table, txns: &[Transaction]) {
        for (key, part) in &mut self.parts {
            let id = app_id(&key.0, key.1);
            if let Some(t) = txns.iter().find(|t| t.app_id == id) {
                part.stored.insert(table, t.version);
            }
        }
    }

    /// Append `batch` to `table` with `txns` in the same commit.
    /// The columns of a silver table beyond its base schema (added by schema evolution).
    fn extra_columns_of(&self, table: Table) -> Vec<String> {
        let base: Vec<String> = table
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect();
        self.tables[&table]
            .snapshot()
            .map(|s| {
                s.schema()
                    .fields()
                    .map(|f| f.name().to_owned())
                    .filter(|n| !base.contains(n))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn write(
        &mut self,
        table: Table,
        batch: RecordBatch,
        txns: Vec<Transaction>,
    ) -> Result<(), BatchError> {
        let t0 = Instant::now();
        let rows = batch.num_rows();
        let current = self.tables[&table].clone();
        let props = CommitProperties::default().with_application_transactions(txns.clone());
        let mut write = current.write(vec![batch]).with_commit_properties(props);
        if matches!(
            table,
            Table::SilverSensorReadings | Table::SilverPayments | Table::SilverFraudLabels
        ) {
            write = write.with_schema_mode(deltalake_core::operations::write::SchemaMode::Merge);
        }
        let written = write.await;
        self.committed(table, written, t0, rows as u64, &txns)
    }

    fn committed(
        &mut self,
        table: Table,
        result: Result<DeltaTable, DeltaTableError>,
        t0: Instant,
        rows: u64,
        txns: &[Transaction],
    ) -> Result<(), BatchError> {
        match result {
            Ok(t) => {
                metrics::COMMIT_SECONDS
                    .with_label_values(&[table.name()])
                    .observe(t0.elapsed().as_secs_f64());
                metrics::COMMITS
                    .with_label_values(&[table.name(), "ok"])
                    .inc();
                metrics::ROWS
                    .with_label_values(&[table.name()])
                    .inc_by(rows);
                if let Some(v) = t.version() {
                    metrics::VERSION
                        .with_label_values(&[table.name()])
                        .set(v as i64);
                }
                self.tables.insert(table, t);
                self.record_offsets(table, txns);
                Ok(())
            }
            Err(e) => {
                let e = delta(table)(e);
                let outcome =
                    if matches!(e, BatchError::Fenced { .. } | BatchError::Conflict { .. }) {
                        "conflict"
                    } else {
                        "error"
                    };
                metrics::COMMITS
                    .with_label_values(&[table.name(), outcome])
                    .inc();
                Err(e)
            }
        }
    }

    /// Silver then gold for the records of one event kind.
    async fn commit_kind(&mut self, kind: Kind, records: &[&Record]) -> Result<(), BatchError> {
        let silver = kind.silver();
        // a gold table behind silver (a crash between the commits): the events silver added and
        // it did not take, found by the coordinates silver stores
        let mut recovered: Vec<(Table, Vec<Fresh>)> = Vec::new();
        for gold in kind.golds() {
            let mut ranges = Vec::new();
            for (key, part) in &self.parts {
                if part.kind != kind {
                    continue;
                }
                let (g, s) = (
                    part.stored.get(&gold).copied().unwrap_or(0),
                    part.stored.get(&silver).copied().unwrap_or(0),
                );
                if g < s {
                    ranges.push((key.1, g, s));
                }
            }
            let mut events = Vec::new();
            let t0 = Instant::now();
            let repairing = !ranges.is_empty();
            for (p, from, to) in ranges {
                let rows = self
                    .query_coordinates(
                        silver,
                        &format!(
                            "select kafka_partition, kafka_offset, json from t where kafka_partition = {p} and kafka_offset >= {from} and kafka_offset < {to}"
                        ),
                    )
                    .await?;
                tracing::info!(
                    table = gold.name(),
                    partition = p,
                    from,
                    to,
                    events = rows.len(),
                    "gold is behind silver: taking the events silver added"
                );
                for (partition, offset, j) in rows {
                    if let Some(event) = self.parse(kind, j.as_bytes()) {
                        events.push(Fresh {
                            partition,
                            offset,
                            event,
                        });
                    }
                }
            }
            if repairing {
                metrics::STEP_SECONDS
                    .with_label_values(&["gold_repair"])
                    .observe(t0.elapsed().as_secs_f64());
            }
            recovered.push((gold, events));
        }

        // silver: the valid events of the records it does not have, not seen before
        let fresh: Vec<&Record> = records
            .iter()
            .copied()
            .filter(|r| r.offset >= self.stored(silver, &r.topic, r.partition))
            .collect();
        let mut added: Vec<(&Record, Parsed)> = Vec::new();
        if !fresh.is_empty() {
            let mut parsed: Vec<(&Record, Parsed)> = Vec::new();
            for r in &fresh {
                match self.parse(kind, &r.value) {
                    Some(e) => parsed.push((r, e)),
                    None => metrics::DROPPED
                        .with_label_values(&[r.topic.as_str(), "invalid"])
                        .inc(),
                }
            }
            let minutes: BTreeSet<i64> = parsed
                .iter()
                .map(|(_, e)| e.ts().div_euclid(MINUTE_MS))
                .collect();
            self.load_seen(kind, &minutes).await?;
            let seen = self.seen.entry(kind).or_default();
            let mut batch_ids: HashSet<String> = HashSet::new();
            for (r, e) in parsed {
                let minute = e.ts().div_euclid(MINUTE_MS);
                let known = seen
                    .ids
                    .get(&minute)
                    .is_some_and(|ids| ids.contains(e.id()));
                if known || !batch_ids.insert(e.id().to_owned()) {
                    metrics::DROPPED
                        .with_label_values(&[r.topic.as_str(), "duplicate"])
                        .inc();
                    continue;
                }
                added.push((r, e));
            }
            if !added.is_empty() {
                let existing = self.extra_columns_of(silver);
                let extra = extra_columns(kind, &existing, &added, self.settings.max_extra_columns);
                let batch = silver_batch(kind, &added, &extra).map_err(BatchError::Other)?;
                let txns = self.txns(silver, &fresh);
                if extra.len() > existing.len() {
                    tracing::info!(
                        table = silver.name(),
                        new = ?extra.iter().filter(|c| !existing.contains(c)).collect::<Vec<_>>(),
                        "events carry new fields: the table's schema gains them"
                    );
                }
                self.write(silver, batch, txns).await?;
                let seen = self.seen.entry(kind).or_default();
                for (_, e) in &added {
                    seen.ids
                        .entry(e.ts().div_euclid(MINUTE_MS))
                        .or_default()
                        .insert(e.id().to_owned());
                }
            }
            self.forget_old_minutes(kind);
        }

        // gold: what the events silver added (and each gold table has not taken) make
        // the scores of the events last scored, by their coordinates: the alerts of the same
        // events reuse them instead of reading the card histories again
        let mut scored: Option<ScoredAt> = None;
        for (gold, mut events) in recovered {
            for (r, e) in &added {
                if r.offset >= self.stored(gold, &r.topic, r.partition) {
                    events.push(Fresh {
                        partition: r.partition,
                        offset: r.offset,
                        event: e.clone(),
                    });
                }
            }
            if events.is_empty() {
                continue;
            }
            let covered: Vec<&Record> = records
                .iter()
                .copied()
                .filter(|r| r.offset >= self.stored(gold, &r.topic, r.partition))
                .collect();
            let mut txns = self.txns(gold, &covered);
            // it also covers what silver recorded (the repaired range)
            for (key, part) in &self.parts {
                if part.kind != kind {
                    continue;
                }
                let s = part.stored.get(&silver).copied().unwrap_or(0);
                let id = app_id(&key.0, key.1);
                match txns.iter_mut().find(|t| t.app_id == id) {
                    Some(t) => t.version = t.version.max(s),
                    None if s > part.stored.get(&gold).copied().unwrap_or(0) => {
                        txns.push(Transaction::new(id, s));
                    }
                    None => {}
                }
            }
            match gold {
                Table::GoldSensorWindows | Table::GoldCardWindows => {
                    let events: Vec<Parsed> = events.into_iter().map(|f| f.event).collect();
                    self.merge_gold(kind, gold, &events, txns).await?;
                }
                Table::GoldFraudScores => {
                    let scores = self.score(&events).await?;
                    let batch = scores_batch(&scores).map_err(BatchError::Other)?;
                    self.write(gold, batch, txns).await?;
                    scored = Some((coordinates(&events), scores));
                }
                Table::GoldAlerts => {
                    let scores = match scored.take() {
                        Some((at, scores)) if at == coordinates(&events) => scores,
                        _ => self.score(&events).await?,
                    };
                    // no alert is still a commit: the offsets must move, or every later batch
                    // would take the whole range again from silver
                    let alerts = self.alerts(&events, scores, self.settings.fraud_threshold);
                    let batch = alerts_batch(&alerts).map_err(BatchError::Other)?;
                    self.write(gold, batch, txns).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The fraud score of each payment of `events`, from the card's history in silver: its
    /// payments in the same partition at lower offsets within [`HISTORY_MS`] — the order the
    /// stream delivered them in, so the answer is the same after any crash. The histories come
    /// from [`CardHistory`], which reads silver only for what it does not hold. No card profile
    /// or model is trained in the lakehouse: the shared rules score (`model_version` `rules`).
    async fn score(&mut self, events: &[Fresh]) -> Result<Vec<Scored>, BatchError> {
        let mut payments: Vec<(&Fresh, &Payment)> = events
            .iter()
            .filter_map(|f| match &f.event {
                Parsed::Payment(p) => Some((f, p)),
                _ => None,
            })
            .collect();
        let Some(min_ts) = payments.iter().map(|(_, p)| p.ts.millis()).min() else {
            return Ok(Vec::new());
        };
        // in stream order: each payment is added to its card's history once scored
        payments.sort_by_key(|(f, _)| (f.partition, f.offset));
        let t0 = Instant::now();
        if !self.history.loaded() {
            self.load_card_history(min_ts - HISTORY_MS).await?;
        }
        // what the memory cannot answer (late payments, a card's first after a long silence) is
        // read from silver, per card
        let unknown: Vec<(&str, i32, i64)> = payments
            .iter()
            .filter(|(f, p)| {
                !self
                    .history
                    .knows(p.card_id.as_str(), f.partition, f.offset, p.ts.millis())
            })
            .map(|(f, p)| (p.card_id.as_str(), f.partition, p.ts.millis()))
            .collect();
        if let Some(floor) = unknown.iter().map(|u| u.2 - HISTORY_MS).min() {
            let cards: BTreeSet<&str> = unknown.iter().map(|u| u.0).collect();
            let mut rows = self.card_rows(&cards, floor).await?;
            let keys: BTreeSet<(&str, i32)> = unknown.iter().map(|u| (u.0, u.1)).collect();
            for (card, partition) in keys {
                let read = rows
                    .remove(&(card.to_owned(), partition))
                    .unwrap_or_default();
                self.history.load_card(card, partition, floor, read);
            }
        }
        metrics::STEP_SECONDS
            .with_label_values(&["card_history"])
            .observe(t0.elapsed().as_secs_f64());
        let now = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::with_capacity(payments.len());
        for (f, p) in payments {
            let (card, ts) = (p.card_id.as_str(), p.ts.millis());
            let seen = self
                .history
                .before(card, f.partition, f.offset, ts)
                .ok_or_else(|| {
                    BatchError::Other(format!(
                        "card history of {card} in partition {} not known after reading it",
                        f.partition
                    ))
                })?;
            let features = lambdalake_views::fraud::features(p, &seen, None);
            let score = lambdalake_views::fraud::score(&features, None);
            self.history.add(
                card,
                f.partition,
                f.offset,
                lambdalake_views::fraud::Seen::from(p),
            );
            out.push(Scored {
                payment: p.clone(),
                reasons: lambdalake_views::fraud::reasons(&features),
                features,
                score,
                at_ms: now,
            });
        }
        self.history.compact();
        metrics::HISTORY_CARDS.set(self.history.len() as i64);
        Ok(out)
    }

    /// Read every card history of the owned payment partitions with an event time of at least
    /// `floor` from silver into [`CardHistory`], in one streamed scan.
    async fn load_card_history(&mut self, floor: i64) -> Result<(), BatchError> {
        use deltalake_core::datafusion::prelude::{col, lit};
        use futures::StreamExt as _;
        let parts: Vec<i32> = self
            .parts
            .iter()
            .filter(|(_, p)| p.kind == Kind::Payment)
            .map(|(k, _)| k.1)
            .collect();
        self.history.begin_load(floor);
        if parts.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        let err = |e: String| BatchError::Other(format!("silver_payments: card histories: {e}"));
        let t = &self.tables[&Table::SilverPayments];
        let ctx = SessionContext::new();
        t.update_datafusion_session(&ctx.state())
            .map_err(|e| err(e.to_string()))?;
        let provider = t.table_provider().await.map_err(|e| err(e.to_string()))?;
        let mut stream = ctx
            .read_table(provider)
            .and_then(|df| {
                df.filter(col("ts_ms").gt_eq(lit(floor)).and(
                    col("kafka_partition").in_list(parts.iter().map(|p| lit(*p)).collect(), false),
                ))
            })
            .and_then(|df| df.select_columns(&HISTORY_COLUMNS))
            .map_err(|e| err(e.to_string()))?
            .execute_stream()
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut rows = 0usize;
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| err(e.to_string()))?;
            rows += b.num_rows();
            let history = &mut self.history;
            history_rows(&b, |card, partition, offset, seen| {
                history.load(card, partition, offset, seen)
            })?;
        }
        self.history.compact();
        metrics::HISTORY_CARDS.set(self.history.len() as i64);
        tracing::info!(
            payments = rows,
            cards = self.history.len(),
            seconds = t0.elapsed().as_secs_f64(),
            "card histories loaded from silver"
        );
        Ok(())
    }

    /// The payments of `cards` in silver with an event time of at least `floor`, per (card,
    /// partition): (offset, payment).
    async fn card_rows(
        &self,
        cards: &BTreeSet<&str>,
        floor: i64,
    ) -> Result<HashMap<(String, i32), Vec<(i64, lambdalake_views::fraud::Seen)>>, BatchError> {
        use deltalake_core::datafusion::prelude::{col, lit};
        let cards: Vec<&str> = cards.iter().copied().collect();
        let t = &self.tables[&Table::SilverPayments];
        let err = |e: String| BatchError::Other(format!("silver_payments: card history: {e}"));
        let ctx = SessionContext::new();
        t.update_datafusion_session(&ctx.state())
            .map_err(|e| err(e.to_string()))?;
        let provider = t.table_provider().await.map_err(|e| err(e.to_string()))?;
        let mut out: HashMap<(String, i32), Vec<(i64, lambdalake_views::fraud::Seen)>> =
            HashMap::new();
        // a bounded IN list per query: file pruning turns the list into a chain of ORs that is
        // walked recursively, and a micro-batch catching up a backlog holds tens of thousands of
        // cards (a list that long overflowed the pipeline thread's stack)
        for chunk in cards.chunks(CARDS_PER_HISTORY_QUERY) {
            let batches = ctx
                .read_table(provider.clone())
                .and_then(|df| {
                    df.filter(
                        col("card_id")
                            .in_list(chunk.iter().map(|c| lit(*c)).collect(), false)
                            .and(col("ts_ms").gt_eq(lit(floor))),
                    )
                })
                .and_then(|df| df.select_columns(&HISTORY_COLUMNS))
                .map_err(|e| err(e.to_string()))?
                .collect()
                .await
                .map_err(|e| err(e.to_string()))?;
            for b in &batches {
                history_rows(b, |card, partition, offset, seen| {
                    out.entry((card.to_owned(), partition))
                        .or_default()
                        .push((offset, seen))
                })?;
            }
        }
        Ok(out)
    }

    /// The alerts of `events`: payments scored at or above the threshold, readings past the
    /// sensor thresholds (the lakehouse keeps no device baselines).
    fn alerts(&self, events: &[Fresh], scored: Vec<Scored>, threshold: f64) -> Vec<GoldAlert> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut out = Vec::new();
        for f in events {
            if let Parsed::Sensor(r) = &f.event {
                let reasons: Vec<String> = lambdalake_views::fraud::sensor_alerts(r, None)
                    .iter()
                    .filter_map(|a| {
                        serde_json::to_value(a)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                    })
                    .collect();
                if !reasons.is_empty() {
                    out.push(GoldAlert {
                        alert_id: format!("sensor:{}", r.event_id.as_str()),
                        kind: "sensor",
                        key: r.device_id.as_str().to_owned(),
                        ts_ms: r.ts.millis(),
                        score: None,
                        model_version: "thresholds".to_owned(),
                        reasons,
                        detected_at_ms: now,
                    });
                }
            }
        }
        for s in scored {
            if s.score.value >= threshold {
                out.push(GoldAlert {
                    alert_id: format!("fraud:{}", s.payment.event_id.as_str()),
                    kind: "fraud",
                    key: s.payment.card_id.as_str().to_owned(),
                    ts_ms: s.payment.ts.millis(),
                    score: Some(s.score.value),
                    model_version: s.score.by.clone(),
                    reasons: s.reasons.clone(),
                    detected_at_ms: now,
                });
            }
        }
        out
    }

    fn parse(&self, kind: Kind, bytes: &[u8]) -> Option<Parsed> {
        match kind {
            Kind::SensorReading => SensorReading::from_json(bytes, &self.policy)
                .ok()
                .map(Parsed::Sensor),
            Kind::Payment => Payment::from_json(bytes, &self.policy)
                .ok()
                .map(Parsed::Payment),
            Kind::FraudLabel => FraudLabel::from_json(bytes, &self.policy)
                .ok()
                .map(Parsed::Label),
        }
    }

    /// Make sure the ids silver holds for `minutes` are in memory.
    async fn load_seen(&mut self, kind: Kind, minutes: &BTreeSet<i64>) -> Result<(), BatchError> {
        let silver = kind.silver();
        let t0 = Instant::now();
        let observe = || {
            metrics::STEP_SECONDS
                .with_label_values(&["dedupe_lookup"])
                .observe(t0.elapsed().as_secs_f64())
        };
        let read_max = self.seen.get(&kind).is_none_or(|s| s.empty_after.is_none());
        if read_max {
            let max = self
                .query_i64(silver, "select max(minute_ms) from t")
                .await?;
            self.seen.entry(kind).or_default().empty_after = Some(max.map(|m| m / MINUTE_MS));
        }
        let seen = self.seen.entry(kind).or_default();
        let empty_after = seen.empty_after.flatten();
        let missing: Vec<i64> = minutes
            .iter()
            .copied()
            .filter(|m| !seen.loaded.contains(m))
            .collect();
        let (known_empty, to_read): (Vec<i64>, Vec<i64>) = missing
            .into_iter()
            .partition(|m| empty_after.is_none_or(|e| *m > e));
        for m in known_empty {
            seen.loaded.insert(m);
        }
        if to_read.is_empty() {
            if read_max {
                observe();
            }
            return Ok(());
        }
        let list = to_read
            .iter()
            .map(|m| (m * MINUTE_MS).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let rows = self
            .query_pairs(
                silver,
                &format!("select event_id, minute_ms from t where minute_ms in ({list})"),
            )
            .await?;
        let seen = self.seen.entry(kind).or_default();
        for (id, minute_ms) in rows {
            seen.ids
                .entry(minute_ms.div_euclid(MINUTE_MS))
                .or_default()
                .insert(id);
        }
        for m in to_read {
            seen.loaded.insert(m);
        }
        observe();
        Ok(())
    }

    /// Keep the ids of the last `dedupe_memory` of event time (older minutes are read again
    /// from silver when an event comes for them).
    fn forget_old_minutes(&mut self, kind: Kind) {
        let span = (self.settings.dedupe_memory.as_millis() as i64 / MINUTE_MS).max(1);
        let Some(seen) = self.seen.get_mut(&kind) else {
            return;
        };
        let Some(newest) = seen.loaded.iter().copied().max() else {
            return;
        };
        seen.loaded.retain(|m| *m >= newest - span);
        seen.ids.retain(|m, _| *m >= newest - span);
    }

    async fn query(&self, table: Table, sql: &str) -> Result<Vec<RecordBatch>, BatchError> {
        let t = &self.tables[&table];
        let ctx = SessionContext::new();
        let err = |e: String| BatchError::Other(format!("{}: {sql}: {e}", table.name()));
        t.update_datafusion_session(&ctx.state())
            .map_err(|e| err(e.to_string()))?;
        let provider = t.table_provider().await.map_err(|e| err(e.to_string()))?;
        ctx.register_table("t", provider)
            .map_err(|e| err(e.to_string()))?;
        let df = ctx.sql(sql).await.map_err(|e| err(e.to_string()))?;
        df.collect().await.map_err(|e| err(e.to_string()))
    }

    async fn query_coordinates(
        &self,
        table: Table,
        sql: &str,
    ) -> Result<Vec<(i32, i64, String)>, BatchError> {
        let mut out = Vec::new();
        for b in self.query(table, sql).await? {
            let p = b
                .column(0)
                .as_any()
                .downcast_ref::<Int32Array>()
                .ok_or_else(|| BatchError::Other("expected an int column".to_owned()))?;
            let o = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| BatchError::Other("expected a bigint column".to_owned()))?;
            let j = string_column(b.column(2))?;
            out.extend((0..b.num_rows()).map(|i| (p.value(i), o.value(i), j.value(i).to_owned())));
        }
        Ok(out)
    }

    async fn query_pairs(&self, table: Table, sql: &str) -> Result<Vec<(String, i64)>, BatchError> {
        let mut out = Vec::new();
        for b in self.query(table, sql).await? {
            let ids = string_column(b.column(0))?;
            let n = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| BatchError::Other("expected a bigint column".to_owned()))?;
            out.extend((0..ids.len()).map(|i| (ids.value(i).to_owned(), n.value(i))));
        }
        Ok(out)
    }

    async fn query_i64(&self, table: Table, sql: &str) -> Result<Option<i64>, BatchError> {
        for b in self.query(table, sql).await? {
            if b.num_rows() == 0 {
                continue;
            }
            let n = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| BatchError::Other("expected a bigint column".to_owned()))?;
            return Ok((!n.is_null(0)).then(|| n.value(0)));
        }
        Ok(None)
    }

    /// MERGE the windows of `events` into `gold`: a window that exists gets the new events
    /// added (a late event corrects its window), a new one is inserted.
    async fn merge_gold(
        &mut self,
        kind: Kind,
        gold: Table,
        events: &[Parsed],
        txns: Vec<Transaction>,
    ) -> Result<(), BatchError> {
        let now = chrono::Utc::now().timestamp_millis();
        // the views of `lambdalake-views` over the batch's events: each window's increment
        let (batch, key, updates): (RecordBatch, &str, Vec<(&str, String)>) = match kind {
            Kind::SensorReading => {
                let readings: Vec<SensorReading> = events
                    .iter()
                    .filter_map(|e| match e {
                        Parsed::Sensor(r) => Some(r.clone()),
                        _ => None,
                    })
                    .collect();
                let windows = table::sensor_windows(&readings, WindowSpec::ONE_MINUTE);
                (
                    sensor_windows_batch(&windows, now).map_err(BatchError::Other)?,
                    "device_id",
                    vec![
                        ("count", add("count")),
                        ("temperature_min", least("temperature_min")),
                        ("temperature_max", greatest("temperature_max")),
                        ("temperature_sum_micro", add("temperature_sum_micro")),
                        ("vibration_min", least("vibration_min")),
                        ("vibration_max", greatest("vibration_max")),
                        ("vibration_sum_micro", add("vibration_sum_micro")),
                        ("updated_at_ms", "source.updated_at_ms".to_owned()),
                    ],
                )
            }
            Kind::Payment => {
                let payments: Vec<Payment> = events
                    .iter()
                    .filter_map(|e| match e {
                        Parsed::Payment(p) => Some(p.clone()),
                        _ => None,
                    })
                    .collect();
                let windows = table::card_windows(&payments, WindowSpec::ONE_MINUTE);
                (
                    card_windows_batch(&windows, now).map_err(BatchError::Other)?,
                    "card_id",
                    vec![
                        ("count", add("count")),
                        ("amount_sum_cents", add("amount_sum_cents")),
                        ("amount_max_cents", greatest("amount_max_cents")),
                        ("updated_at_ms", "source.updated_at_ms".to_owned()),
                    ],
                )
            }
            Kind::FraudLabel => return Ok(()),
        };
        let predicate =
            format!("target.{key} = source.{key} AND target.start_ms = source.start_ms");
        let columns: Vec<String> = gold.columns().iter().map(|c| c.name().to_owned()).collect();
        let t0 = Instant::now();
        let rows = batch.num_rows() as u64;
        // another instance MERGEing other partitions' windows into the same table can conflict
        // (it rewrote a file this MERGE read): read the table again and MERGE again; the txn
        // check still refuses a partition someone else committed
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ctx = SessionContext::new();
            let source = ctx
                .read_batch(batch.clone())
                .map_err(|e| BatchError::Other(format!("{}: {e}", gold.name())))?;
            let current = self.tables[&gold].clone();
            let props = CommitProperties::default().with_application_transactions(txns.clone());
            let merged = async {
                current
                    .merge(source, predicate.as_str())
                    .with_source_alias("source")
                    .with_target_alias("target")
                    .with_commit_properties(props)
                    .when_matched_update(|mut u| {
                        for (c, e) in &updates {
                            u = u.update(*c, e.as_str());
                        }
                        u
                    })?
                    .when_not_matched_insert(|mut i| {
                        for c in &columns {
                            i = i.set(c.as_str(), format!("source.{c}"));
                        }
                        i
                    })?
                    .await
                    .map(|(t, _metrics)| t)
            }
            .await;
            match self.committed(gold, merged, t0, rows, &txns) {
                Err(BatchError::Conflict { .. }) if attempt < MERGE_ATTEMPTS => {
                    tracing::info!(
                        table = gold.name(),
                        attempt,
                        "MERGE conflicted with another writer; merging again"
                    );
                    if let Some(t) = self.tables.get_mut(&gold) {
                        t.update_state().await.map_err(delta(gold))?;
                    }
                }
                other => return other,
            }
        }
    }

    /// OPTIMIZE and VACUUM on their schedules, between micro-batches. A failure (a conflict
    /// with another instance's commit, a store error) is logged and retried next time.
    fn maintain(&mut self) {
        let optimize = self.last_optimize.elapsed() >= self.settings.optimize_every;
        let vacuum = self.last_vacuum.elapsed() >= self.settings.vacuum_every;
        if !optimize && !vacuum {
            return;
        }
        let handle = self.handle.clone();
        if optimize {
            self.last_optimize = Instant::now();
            for t in Table::ALL {
                let current = self.tables[&t].clone();
                match handle.block_on(crate::maintenance::optimize(current)) {
                    Ok((table, summary)) => {
                        metrics::MAINTENANCE
                            .with_label_values(&["optimize", "ok"])
                            .inc();
                        tracing::info!(table = t.name(), %summary, "optimized");
                        self.tables.insert(t, table);
                    }
                    Err(e) => {
                        metrics::MAINTENANCE
                            .with_label_values(&["optimize", "error"])
                            .inc();
                        tracing::warn!(table = t.name(), error = %e, "optimize failed; retrying next time");
                        if let Some(x) = self.tables.get_mut(&t) {
                            let _ = handle.block_on(x.update_state());
                        }
                    }
                }
            }
        }
        if vacuum {
            self.last_vacuum = Instant::now();
            for t in Table::ALL {
                let current = self.tables[&t].clone();
                let retention = self.settings.vacuum_retention;
                match handle.block_on(crate::maintenance::vacuum(current, retention)) {
                    Ok((table, deleted)) => {
                        metrics::MAINTENANCE
                            .with_label_values(&["vacuum", "ok"])
                            .inc();
                        tracing::info!(table = t.name(), files_deleted = deleted, "vacuumed");
                        self.tables.insert(t, table);
                    }
                    Err(e) => {
                        metrics::MAINTENANCE
                            .with_label_values(&["vacuum", "error"])
                            .inc();
                        tracing::warn!(table = t.name(), error = %e, "vacuum failed; retrying next time");
                    }
                }
            }
        }
    }
}

/// Scores and the coordinates of the events they score.
type ScoredAt = (Vec<(i32, i64)>, Vec<Scored>);

/// Most cards in one history query of [`Pipeline::score`].
const CARDS_PER_HISTORY_QUERY: usize = 500;

/// The Kafka coordinates of `events`, in order.
fn coordinates(events: &[Fresh]) -> Vec<(i32, i64)> {
    events.iter().map(|f| (f.partition, f.offset)).collect()
}

/// MERGE update expressions: a window's stored value combined with its increment.
fn add(c: &str) -> String {
    format!("target.{c} + source.{c}")
}

fn least(c: &str) -> String {
    format!("CASE WHEN source.{c} < target.{c} THEN source.{c} ELSE target.{c} END")
}

fn greatest(c: &str) -> String {
    format!("CASE WHEN source.{c} > target.{c} THEN source.{c} ELSE target.{c} END")
}

/// A string column as plain UTF-8 (DataFusion may read strings as views or dictionaries).
/// Each row of a card-history read (`card_id, kafka_partition, kafka_offset, ts_ms, lat, lon`).
fn history_rows(
    b: &RecordBatch,
    mut each: impl FnMut(&str, i32, i64, lambdalake_views::fraud::Seen),
) -> Result<(), BatchError> {
    let err =
        |what: &str| BatchError::Other(format!("silver_payments: card history: expected {what}"));
    let card = string_column(b.column(0))?;
    let ints = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or_else(|| err("an int column"))
    };
    let longs = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| err("a bigint column"))
    };
    let doubles = |i: usize| {
        b.column(i)
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| err("a double column"))
    };
    let (part, off, ts, lat, lon) = (ints(1)?, longs(2)?, longs(3)?, doubles(4)?, doubles(5)?);
    for i in 0..b.num_rows() {
        each(
            card.value(i),
            part.value(i),
            off.value(i),
            lambdalake_views::fraud::Seen {
                ts_ms: ts.value(i),
                lat: lat.value(i),
                lon: lon.value(i),
            },
        );
    }
    Ok(())
}

fn string_column(a: &ArrayRef) -> Result<StringArray, BatchError> {
    let cast = deltalake_core::arrow::compute::cast(a, &ArrowType::Utf8)
        .map_err(|e| BatchError::Other(format!("expected a string column: {e}")))?;
    cast.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| {
            BatchError::Other(format!("expected a string column, got {}", a.data_type()))
        })
}

fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>) -> Result<RecordBatch, String> {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

pub(crate) fn bronze_batch(records: &[&Record]) -> Result<RecordBatch, String> {
    let now = chrono::Utc::now().timestamp_millis();
    batch(
        vec![
            Field::new("topic", ArrowType::Utf8, false),
            Field::new("kafka_partition", ArrowType::Int32, false),
            Field::new("kafka_offset", ArrowType::Int64, false),
            Field::new("key", ArrowType::Utf8, true),
            Field::new("value", ArrowType::Binary, true),
            Field::new("kafka_ts_ms", ArrowType::Int64, true),
            Field::new("ingested_at_ms", ArrowType::Int64, false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                records.iter().map(|r| r.topic.as_str()),
            )),
            Arc::new(Int32Array::from_iter_values(
                records.iter().map(|r| r.partition),
            )),
            Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.offset),
            )),
            Arc::new(StringArray::from_iter(
                records.iter().map(|r| r.key.as_deref()),
            )),
            Arc::new(BinaryArray::from_iter(
                records.iter().map(|r| Some(r.value.as_slice())),
            )),
            Arc::new(Int64Array::from_iter(records.iter().map(|r| r.kafka_ts))),
            Arc::new(Int64Array::from_iter_values(records.iter().map(|_| now))),
        ],
    )
}

fn strings<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}

fn longs(it: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(it))
}

fn doubles(it: impl Iterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(it))
}

fn silver_batch(
    kind: Kind,
    rows: &[(&Record, Parsed)],
    extra_columns: &[String],
) -> Result<RecordBatch, String> {
    let f = |n: &str, t: ArrowType| Field::new(n, t, false);
    let coordinates = |fields: &mut Vec<Field>, cols: &mut Vec<ArrayRef>| {
        fields.push(f("kafka_partition", ArrowType::Int32));
        fields.push(f("kafka_offset", ArrowType::Int64));
        cols.push(Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|(r, _)| r.partition),
        )));
        cols.push(longs(rows.iter().map(|(r, _)| r.offset)));
    };
    let json = |e: &Parsed| {
        match e {
            Parsed::Sensor(x) => serde_json::to_string(x),
            Parsed::Payment(x) => serde_json::to_string(x),
            Parsed::Label(x) => serde_json::to_string(x),
        }
        .unwrap_or_default()
    };
    let minute = |e: &Parsed| e.ts().div_euclid(MINUTE_MS) * MINUTE_MS;
    let (mut fields, mut cols): (Vec<Field>, Vec<ArrayRef>) = match kind {
        Kind::SensorReading => {
            let s: Vec<&SensorReading> = rows
                .iter()
                .filter_map(|(_, e)| match e {
                    Parsed::Sensor(r) => Some(r),
                    _ => None,
                })
                .collect();
            (
                vec![
                    f("event_id", ArrowType::Utf8),
                    f("device_id", ArrowType::Utf8),
                    f("site", ArrowType::Utf8),
                    f("ts_ms", ArrowType::Int64),
                    f("minute_ms", ArrowType::Int64),
                    f("temperature_c", ArrowType::Float64),
                    f("vibration_mm_s", ArrowType::Float64),
                ],
                vec![
                    strings(s.iter().map(|r| r.event_id.as_str())),
                    strings(s.iter().map(|r| r.device_id.as_str())),
                    strings(s.iter().map(|r| r.site.as_str())),
                    longs(s.iter().map(|r| r.ts.millis())),
                    longs(rows.iter().map(|(_, e)| minute(e))),
                    doubles(s.iter().map(|r| r.temperature_c)),
                    doubles(s.iter().map(|r| r.vibration_mm_s)),
                ],
            )
        }
        Kind::Payment => {
            let p: Vec<&Payment> = rows
                .iter()
                .filter_map(|(_, e)| match e {
                    Parsed::Payment(p) => Some(p),
                    _ => None,
                })
                .collect();
            (
                vec![
                    f("event_id", ArrowType::Utf8),
                    f("txn_id", ArrowType::Utf8),
                    f("card_id", ArrowType::Utf8),
                    f("merchant_id", ArrowType::Utf8),
                    f("mcc", ArrowType::Int32),
                    f("amount_cents", ArrowType::Int64),
                    f("currency", ArrowType::Utf8),
                    f("country", ArrowType::Utf8),
                    f("lat", ArrowType::Float64),
                    f("lon", ArrowType::Float64),
                    f("ts_ms", ArrowType::Int64),
                    f("minute_ms", ArrowType::Int64),
                    f("mcc_risk", ArrowType::Float64),
                ],
                vec![
                    strings(p.iter().map(|x| x.event_id.as_str())),
                    strings(p.iter().map(|x| x.txn_id.as_str())),
                    strings(p.iter().map(|x| x.card_id.as_str())),
                    strings(p.iter().map(|x| x.merchant_id.as_str())),
                    Arc::new(Int32Array::from_iter_values(
                        p.iter().map(|x| i32::from(x.mcc.code())),
                    )),
                    longs(p.iter().map(|x| x.amount.cents())),
                    strings(p.iter().map(|x| x.currency.as_str())),
                    strings(p.iter().map(|x| x.country.as_str())),
                    doubles(p.iter().map(|x| x.lat)),
                    doubles(p.iter().map(|x| x.lon)),
                    longs(p.iter().map(|x| x.ts.millis())),
                    longs(rows.iter().map(|(_, e)| minute(e))),
                    doubles(
                        p.iter()
                            .map(|x| lambdalake_views::fraud::mcc_risk(x.mcc.code())),
                    ),
                ],
            )
        }
        Kind::FraudLabel => {
            let l: Vec<&FraudLabel> = rows
                .iter()
                .filter_map(|(_, e)| match e {
                    Parsed::Label(l) => Some(l),
                    _ => None,
                })
                .collect();
            (
                vec![
                    f("event_id", ArrowType::Utf8),
                    f("txn_id", ArrowType::Utf8),
                    f("card_id", ArrowType::Utf8),
                    f("fraud", ArrowType::Boolean),
                    f("ts_ms", ArrowType::Int64),
                    f("minute_ms", ArrowType::Int64),
                ],
                vec![
                    strings(l.iter().map(|x| x.event_id.as_str())),
                    strings(l.iter().map(|x| x.txn_id.as_str())),
                    strings(l.iter().map(|x| x.card_id.as_str())),
                    Arc::new(BooleanArray::from_iter(l.iter().map(|x| Some(x.fraud)))),
                    longs(l.iter().map(|x| x.ts.millis())),
                    longs(rows.iter().map(|(_, e)| minute(e))),
                ],
            )
        }
    };
    coordinates(&mut fields, &mut cols);
    fields.push(f("json", ArrowType::Utf8));
    let jsons: Vec<String> = rows.iter().map(|(_, e)| json(e)).collect();
    cols.push(strings(jsons.iter().map(String::as_str)));
    // schema evolution: fields the event types do not know, one nullable string column each
    // (the field's JSON value), in name order
    for name in extra_columns {
        let values: Vec<Option<String>> = rows
            .iter()
            .map(|(r, _)| {
                serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&r.value)
                    .ok()
                    .and_then(|m| {
                        m.get(name.as_str()).map(|v| match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                    })
            })
            .collect();
        fields.push(Field::new(name.as_str(), ArrowType::Utf8, true));
        cols.push(Arc::new(StringArray::from(values)));
    }
    batch(fields, cols)
}

/// The top-level fields of an event kind's wire format (anything else is an extra field).
fn known_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::SensorReading => &[
            "event_id",
            "device_id",
            "site",
            "ts",
            "temperature_c",
            "vibration_mm_s",
        ],
        Kind::Payment => &[
            "event_id",
            "txn_id",
            "card_id",
            "merchant_id",
            "mcc",
            "amount",
            "currency",
            "country",
            "lat",
            "lon",
            "ts",
        ],
        Kind::FraudLabel => &["event_id", "txn_id", "card_id", "fraud", "ts"],
    }
}

/// The extra fields of `rows` that become silver columns: the table's extra columns so far, plus
/// new names (lower-case letters, digits and `_`, at most 64, not a silver column) while the
/// table has fewer than `max` extra columns. A field that cannot be a column stays in bronze.
fn extra_columns(
    kind: Kind,
    existing: &[String],
    rows: &[(&Record, Parsed)],
    max: usize,
) -> Vec<String> {
    let base: Vec<String> = kind
        .silver()
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let mut out: BTreeSet<String> = existing.iter().cloned().collect();
    for (r, _) in rows {
        let Ok(m) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&r.value)
        else {
            continue;
        };
        for k in m.keys() {
            if out.contains(k) || known_fields(kind).contains(&k.as_str()) {
                continue;
            }
            let valid = !k.is_empty()
                && k.len() <= 64
                && k.starts_with(|c: char| c.is_ascii_lowercase())
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !base.contains(k);
            if valid && out.len() < max {
                out.insert(k.clone());
            }
        }
    }
    out.into_iter().collect()
}

fn sensor_windows_batch(windows: &Keyed<SensorAgg>, now: i64) -> Result<RecordBatch, String> {
    let f = |n: &str, t: ArrowType| Field::new(n, t, false);
    let sum = |v: i128| i64::try_from(v).map_err(|_| "a window sum exceeds 64 bits".to_owned());
    let mut t_sum = Vec::with_capacity(windows.len());
    let mut v_sum = Vec::with_capacity(windows.len());
    for a in windows.values() {
        t_sum.push(sum(a.temperature_c.sum_micro)?);
        v_sum.push(sum(a.vibration_mm_s.sum_micro)?);
    }
    batch(
        vec![
            f("device_id", ArrowType::Utf8),
            f("start_ms", ArrowType::Int64),
            f("end_ms", ArrowType::Int64),
            f("count", ArrowType::Int64),
            f("temperature_min", ArrowType::Float64),
            f("temperature_max", ArrowType::Float64),
            f("temperature_sum_micro", ArrowType::Int64),
            f("vibration_min", ArrowType::Float64),
            f("vibration_max", ArrowType::Float64),
            f("vibration_sum_micro", ArrowType::Int64),
            f("updated_at_ms", ArrowType::Int64),
        ],
        vec![
            strings(windows.keys().map(|(d, _)| d.as_str())),
            longs(windows.keys().map(|(_, w)| w.start.millis())),
            longs(windows.keys().map(|(_, w)| w.end.millis())),
            longs(windows.values().map(|a| a.count as i64)),
            doubles(windows.values().map(|a| a.temperature_c.min)),
            doubles(windows.values().map(|a| a.temperature_c.max)),
            longs(t_sum.into_iter()),
            doubles(windows.values().map(|a| a.vibration_mm_s.min)),
            doubles(windows.values().map(|a| a.vibration_mm_s.max)),
            longs(v_sum.into_iter()),
            longs(windows.values().map(|_| now)),
        ],
    )
}

fn card_windows_batch(windows: &Keyed<CardAgg>, now: i64) -> Result<RecordBatch, String> {
    let f = |n: &str, t: ArrowType| Field::new(n, t, false);
    batch(
        vec![
            f("card_id", ArrowType::Utf8),
            f("start_ms", ArrowType::Int64),
            f("end_ms", ArrowType::Int64),
            f("count", ArrowType::Int64),
            f("amount_sum_cents", ArrowType::Int64),
            f("amount_max_cents", ArrowType::Int64),
            f("updated_at_ms", ArrowType::Int64),
        ],
        vec![
            strings(windows.keys().map(|(c, _)| c.as_str())),
            longs(windows.keys().map(|(_, w)| w.start.millis())),
            longs(windows.keys().map(|(_, w)| w.end.millis())),
            longs(windows.values().map(|a| a.count as i64)),
            longs(windows.values().map(|a| a.amount_sum_cents)),
            longs(windows.values().map(|a| a.amount_max_cents)),
            longs(windows.values().map(|_| now)),
        ],
    )
}

/// A payment and its fraud score.
struct Scored {
    payment: Payment,
    features: lambdalake_views::fraud::Features,
    score: lambdalake_views::fraud::Score,
    reasons: Vec<String>,
    at_ms: i64,
}

struct GoldAlert {
    alert_id: String,
    kind: &'static str,
    key: String,
    ts_ms: i64,
    score: Option<f64>,
    model_version: String,
    reasons: Vec<String>,
    detected_at_ms: i64,
}

fn scores_batch(rows: &[Scored]) -> Result<RecordBatch, String> {
    let f = |n: &str, t: ArrowType| Field::new(n, t, false);
    let reasons: Vec<String> = rows.iter().map(|r| r.reasons.join(",")).collect();
    batch(
        vec![
            f("event_id", ArrowType::Utf8),
            f("txn_id", ArrowType::Utf8),
            f("card_id", ArrowType::Utf8),
            f("ts_ms", ArrowType::Int64),
            f("amount_cents", ArrowType::Int64),
            f("score", ArrowType::Float64),
            f("model_version", ArrowType::Utf8),
            f("reasons", ArrowType::Utf8),
            f("amount_z", ArrowType::Float64),
            f("recent_count", ArrowType::Int64),
            f("travel_kmh", ArrowType::Float64),
            f("new_country", ArrowType::Boolean),
            f("mcc_risk", ArrowType::Float64),
            f("scored_at_ms", ArrowType::Int64),
        ],
        vec![
            strings(rows.iter().map(|r| r.payment.event_id.as_str())),
            strings(rows.iter().map(|r| r.payment.txn_id.as_str())),
            strings(rows.iter().map(|r| r.payment.card_id.as_str())),
            longs(rows.iter().map(|r| r.payment.ts.millis())),
            longs(rows.iter().map(|r| r.payment.amount.cents())),
            doubles(rows.iter().map(|r| r.score.value)),
            strings(rows.iter().map(|r| r.score.by.as_str())),
            strings(reasons.iter().map(String::as_str)),
            doubles(rows.iter().map(|r| r.features.amount_z)),
            longs(rows.iter().map(|r| i64::from(r.features.recent_count))),
            doubles(rows.iter().map(|r| r.features.travel_kmh)),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.features.new_country)),
            )),
            doubles(rows.iter().map(|r| r.features.mcc_risk)),
            longs(rows.iter().map(|r| r.at_ms)),
        ],
    )
}

fn alerts_batch(rows: &[GoldAlert]) -> Result<RecordBatch, String> {
    let f = |n: &str, t: ArrowType| Field::new(n, t, false);
    let reasons: Vec<String> = rows.iter().map(|r| r.reasons.join(",")).collect();
    batch(
        vec![
            f("alert_id", ArrowType::Utf8),
            f("kind", ArrowType::Utf8),
            f("key", ArrowType::Utf8),
            f("ts_ms", ArrowType::Int64),
            Field::new("score", ArrowType::Float64, true),
            f("model_version", ArrowType::Utf8),
            f("reasons", ArrowType::Utf8),
            f("detected_at_ms", ArrowType::Int64),
        ],
        vec![
            strings(rows.iter().map(|r| r.alert_id.as_str())),
            strings(rows.iter().map(|r| r.kind)),
            strings(rows.iter().map(|r| r.key.as_str())),
            longs(rows.iter().map(|r| r.ts_ms)),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.score))),
            strings(rows.iter().map(|r| r.model_version.as_str())),
            strings(reasons.iter().map(String::as_str)),
            longs(rows.iter().map(|r| r.detected_at_ms)),
        ],
    )
}
