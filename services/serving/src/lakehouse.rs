//! The lakehouse twins of the window endpoints, read from the gold Delta tables written by
//! `lambdalake-lakehouse` — with exactly the Lambda response shape, every window `"source":
//! "gold"` — plus time travel (`?version=N`, `?as_of=RFC 3339`) and each table's history.
//!
//! In a lakehouse answer `batch.version` is the gold table's Delta version that was read,
//! `batch.cutoff` is `null` (gold holds every window, there is no cutoff), and
//! `speed.freshness_ms` is the time since that version was committed. When the tables cannot be
//! read (not created yet, storage unreachable) the answer lists `"gold"` in `degraded`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use lambdalake_lakehouse::deltalake_core::DeltaTable;
use lambdalake_lakehouse::deltalake_core::arrow::array::{
    Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use lambdalake_lakehouse::deltalake_core::arrow::compute::cast;
use lambdalake_lakehouse::deltalake_core::arrow::datatypes::DataType;
use lambdalake_lakehouse::deltalake_core::datafusion::logical_expr::{Expr, SortExpr};
use lambdalake_lakehouse::deltalake_core::datafusion::prelude::{SessionContext, col, lit};
use lambdalake_lakehouse::tables::{At, Location, Table};
use serde::Serialize;

use crate::windows::{
    Amount, BatchInfo, CardWindow, Measure, Range, SensorWindow, Source, SpeedInfo, rfc3339,
};

/// The gold tables, the latest versions read at most every `ttl`.
///
/// Memory stays bounded under concurrent queries: one request at a time reloads a stale latest
/// version (the others wait for it and use it: without this, every request arriving while the
/// cached version is stale loaded its own copy of the table's log), and at most
/// [`SCANS_AT_ONCE`] scans decode Parquet at once (the rest queue).
pub struct Reader {
    location: Option<Location>,
    ttl: Duration,
    latest: Mutex<HashMap<Table, Latest>>,
    reload: tokio::sync::Mutex<()>,
    scans: tokio::sync::Semaphore,
    /// Table loads so far (every version, latest or not).
    loads: std::sync::atomic::AtomicU64,
}

/// Lakehouse scans running at once; each decodes the Parquet row groups its filter cannot skip.
pub const SCANS_AT_ONCE: usize = 2;

/// (read at, the table, when its version was committed).
type Latest = (Instant, DeltaTable, Option<i64>);

/// A table read: its Delta version, when that version was committed, the rows.
pub struct Read {
    pub version: i64,
    pub committed_ms: Option<i64>,
    pub batches: Vec<RecordBatch>,
}

/// Why a lakehouse query has no answer.
#[derive(Debug)]
pub enum ReadError {
    /// The client asked for something that does not exist (a version, an instant).
    BadRequest(String),
    /// The tables could not be read.
    Unavailable(String),
}

impl Reader {
    pub fn new(location: Option<Location>, ttl: Duration) -> Self {
        Reader {
            location,
            ttl,
            latest: Mutex::new(HashMap::new()),
            reload: tokio::sync::Mutex::new(()),
            scans: tokio::sync::Semaphore::new(SCANS_AT_ONCE),
            loads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Table loads so far: each replays the table's log from its last checkpoint.
    pub fn loads(&self) -> u64 {
        self.loads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `table` at `at`: the cached latest version when fresh enough.
    async fn table(&self, table: Table, at: At) -> Result<(DeltaTable, Option<i64>), ReadError> {
        let location = self
            .location
            .as_ref()
            .ok_or_else(|| ReadError::Unavailable("no lakehouse tables configured".to_owned()))?;
        let cached = || {
            self.latest
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&table)
                .filter(|(read_at, _, _)| read_at.elapsed() < self.ttl)
                .map(|(_, t, committed)| (t.clone(), *committed))
        };
        if at == At::Latest
            && let Some(hit) = cached()
        {
            return Ok(hit);
        }
        // one reload at a time; a request that waited uses what the one before it loaded
        let _reloading = match at {
            At::Latest => {
                let guard = self.reload.lock().await;
                if let Some(hit) = cached() {
                    return Ok(hit);
                }
                Some(guard)
            }
            _ => None,
        };
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let loaded = location.load(table, at).await;
        let t = match loaded {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                return Err(match at {
                    At::Latest => ReadError::Unavailable(format!("{}: {msg}", table.name())),
                    At::Version(v) => {
                        // the table is there, the version is not
                        match location.load(table, At::Latest).await {
                            Ok(latest) => ReadError::BadRequest(format!(
                                "version: {} has no version {v} (latest is {}); VACUUM may have removed its files",
                                table.name(),
                                latest.version().map_or(-1, |v| v as i64)
                            )),
                            Err(_) => ReadError::Unavailable(format!("{}: {msg}", table.name())),
                        }
                    }
                    At::Timestamp(ms) => match location.load(table, At::Latest).await {
                        Ok(_) => ReadError::BadRequest(format!(
                            "as_of: {} has no version at {}: {msg}",
                            table.name(),
                            rfc3339(ms)
                        )),
                        Err(_) => ReadError::Unavailable(format!("{}: {msg}", table.name())),
                    },
                });
            }
        };
        let committed = t
            .history(Some(1))
            .try_collect::<Vec<_>>()
            .await
            .ok()
            .and_then(|h| h.first().and_then(|c| c.timestamp));
        if at == At::Latest {
            self.latest
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(table, (Instant::now(), t.clone(), committed));
        }
        Ok((t, committed))
    }

    /// The windows of one key in `range`, ordered by start.
    pub async fn windows(
        &self,
        table: Table,
        key_column: &str,
        key: &str,
        range: &Range,
        at: At,
    ) -> Result<Read, ReadError> {
        let (t, committed) = self.table(table, at).await?;
        let filter = col(key_column)
            .eq(lit(key))
            .and(col("start_ms").gt_eq(lit(range.from_ms)))
            .and(col("start_ms").lt(lit(range.to_ms)));
        let batches = scan(
            &self.scans,
            &t,
            table,
            filter,
            vec![col("start_ms").sort(true, false)],
            None,
        )
        .await?;
        Ok(Read {
            version: t.version().map_or(-1, |v| v as i64),
            committed_ms: committed,
            batches,
        })
    }

    /// The gold sensor table's latest version and commit time, and the offset bronze recorded for
    /// each of `parts` (absent: none).
    pub async fn progress(
        &self,
        parts: &[(String, i32)],
    ) -> Result<(i64, Option<i64>, HashMap<(String, i32), i64>), ReadError> {
        let (gold, committed) = self.table(Table::GoldSensorWindows, At::Latest).await?;
        let (bronze, _) = self.table(Table::Bronze, At::Latest).await?;
        let ids: Vec<String> = parts
            .iter()
            .map(|(t, p)| lambdalake_lakehouse::tables::app_id(t, *p))
            .collect();
        let stored = lambdalake_lakehouse::tables::stored_offsets(&bronze, &ids)
            .await
            .map_err(|e| ReadError::Unavailable(format!("bronze: {e}")))?;
        let offsets = parts
            .iter()
            .zip(&ids)
            .filter_map(|(part, id)| stored.get(id).map(|o| (part.clone(), *o)))
            .collect();
        Ok((gold.version().map_or(-1, |v| v as i64), committed, offsets))
    }

    /// gold_alerts rows of events in `[since, until]` (event time, ms), newest event time first,
    /// at most `limit`; each in the shape of the speed layer's alerts (`alert_id`, `kind`, `key`, `ts`, `score`, `model_version`, `reasons`, `detected_at_ms`).
    pub async fn alerts(
        &self,
        since: Option<i64>,
        until: Option<i64>,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, ReadError> {
        let table = Table::GoldAlerts;
        let (t, _) = self.table(table, At::Latest).await?;
        let mut filter = lit(true);
        if let Some(s) = since {
            filter = filter.and(col("ts_ms").gt_eq(lit(s)));
        }
        if let Some(u) = until {
            filter = filter.and(col("ts_ms").lt_eq(lit(u)));
        }
        let sort = vec![
            col("ts_ms").sort(false, false),
            col("alert_id").sort(true, false),
        ];
        let batches = scan(&self.scans, &t, table, filter, sort, Some(limit)).await?;
        let mut out = Vec::new();
        for b in &batches {
            // strings may come back as Utf8 or Utf8View depending on the reader: cast to one
            let strings = |name: &str| -> Option<StringArray> {
                let c = b.column_by_name(name)?;
                let c = cast(c.as_ref(), &DataType::Utf8).ok()?;
                c.as_any().downcast_ref::<StringArray>().cloned()
            };
            let (Some(id), Some(kind), Some(key), Some(model), Some(reasons)) = (
                strings("alert_id"),
                strings("kind"),
                strings("key"),
                strings("model_version"),
                strings("reasons"),
            ) else {
                return Err(ReadError::Unavailable(
                    "gold_alerts: unexpected schema".to_owned(),
                ));
            };
            let (Some(ts), Some(detected), Some(score)) = (
                longs(b, "ts_ms"),
                longs(b, "detected_at_ms"),
                doubles(b, "score"),
            ) else {
                return Err(ReadError::Unavailable(
                    "gold_alerts: unexpected schema".to_owned(),
                ));
            };
            for i in 0..b.num_rows() {
                out.push(serde_json::json!({
                    "alert_id": id.value(i),
                    "kind": kind.value(i),
                    "key": key.value(i),
                    "ts": ts.value(i),
                    "score": (!score.is_null(i)).then(|| score.value(i)),
                    "model_version": model.value(i),
                    "reasons": reasons.value(i).split(',').filter(|r| !r.is_empty()).collect::<Vec<_>>(),
                    "detected_at_ms": detected.value(i),
                }));
            }
        }
        Ok(out)
    }

    /// The newest `limit` commits of `table`, newest first.
    pub async fn history(&self, table: Table, limit: usize) -> Result<History, ReadError> {
        let (t, _) = self.table(table, At::Latest).await?;
        let latest = t.version().map_or(-1, |v| v as i64);
        let infos: Vec<_> = t
            .history(Some(limit))
            .try_collect()
            .await
            .map_err(|e| ReadError::Unavailable(format!("{}: {e}", table.name())))?;
        let commits = infos
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let metrics = c
                    .info
                    .get("operationMetrics")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({}));
                let rows_added = [
                    "num_added_rows",
                    "num_target_rows_inserted",
                    "numOutputRows",
                ]
                .iter()
                .find_map(|k| {
                    let v = &metrics[*k];
                    v.as_i64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                });
                Commit {
                    version: latest - i as i64,
                    timestamp: c.timestamp.map(rfc3339),
                    operation: c.operation.clone().unwrap_or_default(),
                    rows_added,
                    metrics,
                }
            })
            .collect();
        Ok(History {
            table: table.name().to_owned(),
            latest_version: latest,
            commits,
        })
    }
}

/// The rows of `t` (a version of `table`) matching `filter`, in `sort` order, at most `limit`.
async fn scan(
    scans: &tokio::sync::Semaphore,
    t: &DeltaTable,
    table: Table,
    filter: Expr,
    sort: Vec<SortExpr>,
    limit: Option<usize>,
) -> Result<Vec<RecordBatch>, ReadError> {
    let unavailable = |e: String| ReadError::Unavailable(format!("{}: {e}", table.name()));
    let _permit = scans
        .acquire()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let ctx = SessionContext::new();
    t.update_datafusion_session(&ctx.state())
        .map_err(|e| unavailable(e.to_string()))?;
    let provider = t
        .table_provider()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    ctx.read_table(provider)
        .and_then(|df| df.filter(filter))
        .and_then(|df| df.sort(sort))
        .and_then(|df| df.limit(0, limit))
        .map_err(|e| unavailable(e.to_string()))?
        .collect()
        .await
        .map_err(|e| unavailable(e.to_string()))
}

/// `GET /v1/lakehouse/tables/{name}/history`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    pub table: String,
    pub latest_version: i64,
    /// Newest first.
    pub commits: Vec<Commit>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Commit {
    pub version: i64,
    /// RFC 3339.
    pub timestamp: Option<String>,
    /// `CREATE TABLE`, `WRITE`, `MERGE`, `OPTIMIZE`, `VACUUM START`, …
    pub operation: String,
    /// Rows the commit added (written, or inserted by a MERGE); `null` when the operation adds
    /// none or does not say.
    pub rows_added: Option<i64>,
    /// The commit's `operationMetrics`, as Delta records them (`{}` when it has none).
    #[schema(value_type = Object)]
    pub metrics: serde_json::Value,
}

fn longs<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a Int64Array> {
    b.column_by_name(name)?
        .as_any()
        .downcast_ref::<Int64Array>()
}

fn doubles<'a>(b: &'a RecordBatch, name: &str) -> Option<&'a Float64Array> {
    b.column_by_name(name)?
        .as_any()
        .downcast_ref::<Float64Array>()
}

/// Gold sensor rows as API windows.
pub fn sensor_windows(read: &Read) -> Result<Vec<SensorWindow>, String> {
    let mut out = Vec::new();
    for b in &read.batches {
        let bad = || "gold_sensor_windows has an unexpected schema".to_owned();
        let (start, end, count) = (
            longs(b, "start_ms").ok_or_else(bad)?,
            longs(b, "end_ms").ok_or_else(bad)?,
            longs(b, "count").ok_or_else(bad)?,
        );
        let (tmin, tmax, tsum) = (
            doubles(b, "temperature_min").ok_or_else(bad)?,
            doubles(b, "temperature_max").ok_or_else(bad)?,
            longs(b, "temperature_sum_micro").ok_or_else(bad)?,
        );
        let (vmin, vmax, vsum) = (
            doubles(b, "vibration_min").ok_or_else(bad)?,
            doubles(b, "vibration_max").ok_or_else(bad)?,
            longs(b, "vibration_sum_micro").ok_or_else(bad)?,
        );
        for i in 0..b.num_rows() {
            let n = count.value(i) as u64;
            out.push(SensorWindow {
                start: rfc3339(start.value(i)),
                end: rfc3339(end.value(i)),
                start_ms: start.value(i),
                count: n,
                temperature_c: Measure::new(tmin.value(i), tmax.value(i), tsum.value(i), n),
                vibration_mm_s: Measure::new(vmin.value(i), vmax.value(i), vsum.value(i), n),
                source: Source::Gold,
            });
        }
    }
    Ok(out)
}

/// Gold card rows as API windows.
pub fn card_windows(read: &Read) -> Result<Vec<CardWindow>, String> {
    let mut out = Vec::new();
    for b in &read.batches {
        let bad = || "gold_card_windows has an unexpected schema".to_owned();
        let (start, end, count, sum, max) = (
            longs(b, "start_ms").ok_or_else(bad)?,
            longs(b, "end_ms").ok_or_else(bad)?,
            longs(b, "count").ok_or_else(bad)?,
            longs(b, "amount_sum_cents").ok_or_else(bad)?,
            longs(b, "amount_max_cents").ok_or_else(bad)?,
        );
        for i in 0..b.num_rows() {
            out.push(CardWindow {
                start: rfc3339(start.value(i)),
                end: rfc3339(end.value(i)),
                start_ms: start.value(i),
                count: count.value(i) as u64,
                amount: Amount {
                    sum: sum.value(i) as f64 / 100.0,
                    max: max.value(i) as f64 / 100.0,
                },
                source: Source::Gold,
            });
        }
    }
    Ok(out)
}

/// `batch` and `speed` of a lakehouse answer (module documentation).
pub fn info(read: Option<&Read>) -> (BatchInfo, SpeedInfo) {
    let now = chrono::Utc::now().timestamp_millis();
    (
        BatchInfo {
            version: read.map(|r| r.version),
            cutoff: None,
        },
        SpeedInfo {
            freshness_ms: read.and_then(|r| r.committed_ms.map(|c| (now - c).max(0))),
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_arriving_together_share_one_load_of_a_stale_table() {
        let dir = std::env::temp_dir().join(format!(
            "ll-reader-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let location = Location::parse(dir.to_str().unwrap()).unwrap();
        location.open(Table::GoldSensorWindows, 10).await.unwrap();
        let reader = Arc::new(Reader::new(Some(location), Duration::from_secs(600)));
        let range = Range {
            from_ms: 0,
            to_ms: 3_600_000,
        };
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (reader, range) = (reader.clone(), range.clone());
                tokio::spawn(async move {
                    reader
                        .windows(
                            Table::GoldSensorWindows,
                            "device_id",
                            &format!("d{i}"),
                            &range,
                            At::Latest,
                        )
                        .await
                        .map(|r| r.batches.iter().map(|b| b.num_rows()).sum::<usize>())
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().ok(), Some(0));
        }
        assert_eq!(reader.loads(), 1, "one load for 16 requests");
        // a version asked for is loaded on its own
        let read = reader
            .windows(
                Table::GoldSensorWindows,
                "device_id",
                "d0",
                &range,
                At::Version(0),
            )
            .await
            .ok()
            .map(|r| r.version);
        assert_eq!(read, Some(0));
        assert_eq!(reader.loads(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
