//! The lakehouse's Delta tables: where they live, their schemas, and the offsets each one
//! records.
//!
//! | table | rows | partitioned by |
//! |---|---|---|
//! | `bronze` | every Kafka record of the event topics, raw: topic, partition, offset, key, value, Kafka timestamp, ingestion time | `topic` |
//! | `silver_sensor_readings` | valid readings, one per `event_id` (the first occurrence), typed, with the window minute and the Kafka coordinates of the record that brought it | — |
//! | `silver_payments` | valid payments, one per `event_id`, typed, enriched with the merchant category's risk | — |
//! | `silver_fraud_labels` | valid labels, one per `event_id` | — |
//! | `gold_sensor_windows` | the 1-minute windows of every device (`lambdalake-views`' aggregates), upserted with MERGE | — |
//! | `gold_card_windows` | the 1-minute windows of every card: count, amount sum and maximum, upserted with MERGE | — |
//! | `gold_fraud_scores` | every payment's fraud score and features (`lambdalake_views::fraud`), appended | — |
//! | `gold_alerts` | fraud alerts (score ≥ the threshold) and sensor alerts (thresholds), appended | — |
//!
//! **Offsets.** Every commit carries one Delta transaction identifier (`txn` action) per Kafka
//! partition it covers: `appId` = `lambdalake-lakehouse:{topic}:{partition}`, `version` = the next
//! offset (every record before it is in the table, or was found to add nothing to it). They are
//! what the pipeline resumes from: nothing is kept anywhere else.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use deltalake_core::kernel::{DataType, PrimitiveType, StructField};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use object_store::ObjectStore;
use url::Url;

/// The tables, in the order a micro-batch writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Bronze,
    SilverSensorReadings,
    SilverPayments,
    SilverFraudLabels,
    GoldSensorWindows,
    GoldCardWindows,
    GoldFraudScores,
    GoldAlerts,
}

/// What an event topic holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    SensorReading,
    Payment,
    FraudLabel,
}

impl Kind {
    pub fn silver(self) -> Table {
        match self {
            Kind::SensorReading => Table::SilverSensorReadings,
            Kind::Payment => Table::SilverPayments,
            Kind::FraudLabel => Table::SilverFraudLabels,
        }
    }

    /// The gold tables the events of this kind feed.
    pub fn golds(self) -> Vec<Table> {
        match self {
            Kind::SensorReading => vec![Table::GoldSensorWindows, Table::GoldAlerts],
            Kind::Payment => vec![
                Table::GoldCardWindows,
                Table::GoldFraudScores,
                Table::GoldAlerts,
            ],
            Kind::FraudLabel => Vec::new(),
        }
    }

    /// The tables that record this topic's offsets.
    pub fn tables(self) -> Vec<Table> {
        let mut t = vec![Table::Bronze, self.silver()];
        t.extend(self.golds());
        t
    }
}

fn field(name: &str, t: PrimitiveType, nullable: bool) -> StructField {
    StructField::new(name.to_owned(), DataType::Primitive(t), nullable)
}

impl Table {
    pub const ALL: [Table; 8] = [
        Table::Bronze,
        Table::SilverSensorReadings,
        Table::SilverPayments,
        Table::SilverFraudLabels,
        Table::GoldSensorWindows,
        Table::GoldCardWindows,
        Table::GoldFraudScores,
        Table::GoldAlerts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Bronze => "bronze",
            Table::SilverSensorReadings => "silver_sensor_readings",
            Table::SilverPayments => "silver_payments",
            Table::SilverFraudLabels => "silver_fraud_labels",
            Table::GoldSensorWindows => "gold_sensor_windows",
            Table::GoldCardWindows => "gold_card_windows",
            Table::GoldFraudScores => "gold_fraud_scores",
            Table::GoldAlerts => "gold_alerts",
        }
    }

    pub fn parse(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The Delta schema (the Arrow batches written follow it column for column).
    pub fn columns(self) -> Vec<StructField> {
        use PrimitiveType::{Boolean, Double, Integer, Long, String};
        let coordinates = || {
            vec![
                field("kafka_partition", Integer, false),
                field("kafka_offset", Long, false),
            ]
        };
        match self {
            Table::Bronze => vec![
                field("topic", String, false),
                field("kafka_partition", Integer, false),
                field("kafka_offset", Long, false),
                field("key", String, true),
                field("value", PrimitiveType::Binary, true),
                field("kafka_ts_ms", Long, true),
                field("ingested_at_ms", Long, false),
            ],
            Table::SilverSensorReadings => {
                let mut c = vec![
                    field("event_id", String, false),
                    field("device_id", String, false),
                    field("site", String, false),
                    field("ts_ms", Long, false),
                    field("minute_ms", Long, false),
                    field("temperature_c", Double, false),
                    field("vibration_mm_s", Double, false),
                ];
                c.extend(coordinates());
                c.push(field("json", String, false));
                c
            }
            Table::SilverPayments => {
                let mut c = vec![
                    field("event_id", String, false),
                    field("txn_id", String, false),
                    field("card_id", String, false),
                    field("merchant_id", String, false),
                    field("mcc", Integer, false),
                    field("amount_cents", Long, false),
                    field("currency", String, false),
                    field("country", String, false),
                    field("lat", Double, false),
                    field("lon", Double, false),
                    field("ts_ms", Long, false),
                    field("minute_ms", Long, false),
                    field("mcc_risk", Double, false),
                ];
                c.extend(coordinates());
                c.push(field("json", String, false));
                c
            }
            Table::SilverFraudLabels => {
                let mut c = vec![
                    field("event_id", String, false),
                    field("txn_id", String, false),
                    field("card_id", String, false),
                    field("fraud", Boolean, false),
                    field("ts_ms", Long, false),
                    field("minute_ms", Long, false),
                ];
                c.extend(coordinates());
                c.push(field("json", String, false));
                c
            }
            Table::GoldSensorWindows => vec![
                field("device_id", String, false),
                field("start_ms", Long, false),
                field("end_ms", Long, false),
                field("count", Long, false),
                field("temperature_min", Double, false),
                field("temperature_max", Double, false),
                field("temperature_sum_micro", Long, false),
                field("vibration_min", Double, false),
                field("vibration_max", Double, false),
                field("vibration_sum_micro", Long, false),
                field("updated_at_ms", Long, false),
            ],
            Table::GoldCardWindows => vec![
                field("card_id", String, false),
                field("start_ms", Long, false),
                field("end_ms", Long, false),
                field("count", Long, false),
                field("amount_sum_cents", Long, false),
                field("amount_max_cents", Long, false),
                field("updated_at_ms", Long, false),
            ],
            Table::GoldFraudScores => vec![
                field("event_id", String, false),
                field("txn_id", String, false),
                field("card_id", String, false),
                field("ts_ms", Long, false),
                field("amount_cents", Long, false),
                field("score", Double, false),
                field("model_version", String, false),
                field("reasons", String, false),
                field("amount_z", Double, false),
                field("recent_count", Long, false),
                field("travel_kmh", Double, false),
                field("new_country", Boolean, false),
                field("mcc_risk", Double, false),
                field("scored_at_ms", Long, false),
            ],
            Table::GoldAlerts => vec![
                field("alert_id", String, false),
                field("kind", String, false),
                field("key", String, false),
                field("ts_ms", Long, false),
                field("score", Double, true),
                field("model_version", String, false),
                field("reasons", String, false),
                field("detected_at_ms", Long, false),
            ],
        }
    }

    pub fn partition_columns(self) -> Vec<&'static str> {
        match self {
            Table::Bronze => vec!["topic"],
            _ => Vec::new(),
        }
    }
}

/// The transaction identifier of one Kafka partition.
pub fn app_id(topic: &str, partition: i32) -> String {
    format!("lambdalake-lakehouse:{topic}:{partition}")
}

/// Where the tables live.
#[derive(Clone)]
pub enum Location {
    Local(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
        store: Arc<dyn ObjectStore>,
    },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl Location {
    /// A directory, or `s3://bucket/prefix` (with the standard `AWS_*` variables).
    pub fn parse(s: &str) -> Result<Location, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!(
                    "{s:?} names no bucket (expected s3://bucket/prefix)"
                ));
            }
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| format!("{s}: {e}"))?;
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
                store: Arc::new(store),
            });
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?}: only a directory or s3://bucket/prefix is supported"
            ));
        }
        if s.trim().is_empty() {
            return Err("empty".to_owned());
        }
        Ok(Location::Local(PathBuf::from(s)))
    }

    pub fn describe(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// The URL of one table (a directory URL: it ends with `/`).
    pub fn url(&self, table: Table) -> Result<Url, DeltaTableError> {
        let bad = |e: String| DeltaTableError::InvalidTableLocation(e);
        match self {
            Location::Local(dir) => {
                let path = dir.join(table.name());
                let abs = std::path::absolute(&path)
                    .map_err(|e| bad(format!("{}: {e}", path.display())))?;
                Url::from_directory_path(&abs).map_err(|()| bad(abs.display().to_string()))
            }
            Location::S3 { bucket, prefix, .. } => {
                let path = if prefix.is_empty() {
                    format!("s3://{bucket}/{}/", table.name())
                } else {
                    format!("s3://{bucket}/{prefix}/{}/", table.name())
                };
                Url::parse(&path).map_err(|e| bad(format!("{path}: {e}")))
            }
        }
    }

    /// A handle on one table, not loaded.
    pub fn builder(&self, table: Table) -> Result<DeltaTableBuilder, DeltaTableError> {
        let url = self.url(table)?;
        let builder = DeltaTableBuilder::from_url(url.clone())?;
        Ok(match self {
            Location::Local(_) => builder,
            Location::S3 { store, bucket, .. } => {
                register_s3();
                let root = Url::parse(&format!("s3://{bucket}/"))
                    .map_err(|e| DeltaTableError::InvalidTableLocation(e.to_string()))?;
                builder.with_storage_backend(store.clone(), root)
            }
        })
    }

    /// Open a table at its latest version, creating it when it does not exist (a concurrent
    /// creation by another instance is fine: the table is then loaded).
    pub async fn open(
        &self,
        table: Table,
        checkpoint_interval: u64,
    ) -> Result<DeltaTable, DeltaTableError> {
        if let Location::Local(dir) = self {
            let path = dir.join(table.name());
            std::fs::create_dir_all(&path).map_err(|e| {
                DeltaTableError::InvalidTableLocation(format!(
                    "cannot create {}: {e}",
                    path.display()
                ))
            })?;
        }
        let mut t = self.builder(table)?.build()?;
        match t.load().await {
            Ok(()) => return Ok(t),
            Err(DeltaTableError::NotATable(_)) => {}
            Err(e) => return Err(e),
        }
        let created = t
            .create()
            .with_table_name(table.name())
            .with_columns(table.columns())
            .with_partition_columns(table.partition_columns())
            .with_configuration_property(
                TableProperty::CheckpointInterval,
                Some(checkpoint_interval.to_string()),
            )
            .await;
        match created {
            Ok(t) => Ok(t),
            Err(e) => {
                // another instance created it first
                let mut t = self.builder(table)?.build()?;
                t.load().await.map_err(|_| e)?;
                Ok(t)
            }
        }
    }
}

/// What a reader asks for: the latest version, a version, or the version current at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Latest,
    Version(u64),
    /// Epoch milliseconds.
    Timestamp(i64),
}

impl Location {
    /// Load an existing table (never creates one) at `at`.
    pub async fn load(&self, table: Table, at: At) -> Result<DeltaTable, DeltaTableError> {
        let b = self.builder(table)?;
        let b = match at {
            At::Latest => b,
            At::Version(v) => b.with_version(v),
            At::Timestamp(ms) => b.with_timestamp(
                chrono::DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| DeltaTableError::Generic(format!("{ms} is not a time")))?,
            ),
        };
        b.load().await
    }
}

/// The transaction versions `table` holds for the given app ids (absent: none recorded).
pub async fn stored_offsets(
    table: &DeltaTable,
    ids: &[String],
) -> Result<HashMap<String, i64>, DeltaTableError> {
    let mut out = HashMap::new();
    let snapshot = table.snapshot()?;
    let log_store = table.log_store();
    for id in ids {
        if let Some(v) = snapshot
            .transaction_version(log_store.as_ref(), id.clone())
            .await?
        {
            out.insert(id.clone(), v);
        }
    }
    Ok(out)
}

/// Delta's default log store (commits by conditional put: If-None-Match on the commit file)
/// for `s3://` URLs whose object store we build ourselves (no AWS SDK).
fn register_s3() {
    use deltalake_core::logstore::{
        LogStore, LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
        logstore_factories,
    };

    struct ConditionalPut;

    impl LogStoreFactory for ConditionalPut {
        fn with_options(
            &self,
            prefixed_store: ObjectStoreRef,
            root_store: ObjectStoreRef,
            location: &Url,
            options: &StorageConfig,
        ) -> deltalake_core::DeltaResult<Arc<dyn LogStore>> {
            Ok(default_logstore(
                prefixed_store,
                root_store,
                location,
                options,
            ))
        }
    }

    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(url) = Url::parse("s3://") {
            logstore_factories().insert(url, Arc::new(ConditionalPut));
        }
    });
}
