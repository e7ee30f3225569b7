//! Postgres: versioned schema migrations, and the atomic publication of a run as batch version N.
//!
//! A run's rows are copied (`COPY … FROM STDIN`) into fresh tables `{view}_v{N}`, indexed, then
//! attached as version N's partition of each view table; the `batch_runs` row (cutoff, offsets,
//! counts) and the model are inserted in the same transaction. Until it commits, readers see
//! version N − 1 complete; after, version N complete. Versions older than the last K are then
//! dropped (with a short lock timeout: a reader holding an old version delays the drop to the
//! next run rather than blocking).

use std::fmt::Write as _;

use futures::SinkExt;
use polars::prelude::*;
use tokio_postgres::Client;

use crate::recompute::Recomputed;

/// The schema migrations, applied in order at start (each once, recorded in `schema_migrations`).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "batch views",
    include_str!("../migrations/0001_batch_views.sql"),
)];

/// Advisory lock keys (one migration runner, one publisher at a time).
const MIGRATE_LOCK: i64 = 0x6c6c_6d69_6772;
const PUBLISH_LOCK: i64 = 0x6c6c_7075_626c;

/// The view tables, partitioned by version, with the index a reader needs.
pub const TABLES: [(&str, &str); 5] = [
    ("sensor_windows", "(device_id, view, start_ms)"),
    ("card_windows", "(card_id, start_ms)"),
    ("card_sessions", "(card_id, start_ms)"),
    ("device_baselines", "(device_id, hour)"),
    ("card_profiles", "(card_id)"),
];

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("postgres: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("reading the computed views: {0}")]
    Frame(#[from] PolarsError),
    #[error("migration {version} ({name}): {}", pg_message(.source))]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// The server's message when there is one (`tokio_postgres::Error` displays "db error" alone).
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        // a connection or TLS failure: its causes say what was wrong (a certificate…)
        None => lambdalake_runtime::with_causes(e),
    }
}

/// Apply the migrations not applied yet.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, PublishError> {
    client
        .batch_execute(
            "create table if not exists schema_migrations (
                version integer primary key,
                name text not null,
                applied_at timestamptz not null default now())",
        )
        .await?;
    let tx = client.transaction().await?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    let done: Vec<i32> = tx
        .query("select version from schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS {
        if done.contains(&version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|source| PublishError::Migration {
                version,
                name,
                source,
            })?;
        tx.execute(
            "insert into schema_migrations (version, name) values ($1, $2)",
            &[&version, &name],
        )
        .await?;
        applied.push(version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// The fraud model of a run, with its quality on the held-out split.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainedModel {
    pub model: lambdalake_views::fraud::Model,
    pub trained_on: u64,
    pub held_out: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub auc: Option<f64>,
}

pub use lambdalake_views::fraud::model_name;

/// What a publication wrote.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: i64,
    pub rows: Vec<(&'static str, u64)>,
    pub dropped_versions: Vec<i64>,
}

/// Publish `r` as the next version, keep the last `keep` versions.
pub async fn publish(
    client: &mut Client,
    r: &Recomputed,
    model: Option<&TrainedModel>,
    started_at: chrono::DateTime<chrono::Utc>,
    duration_ms: i64,
    keep: usize,
) -> Result<Published, PublishError> {
    let tx = client.transaction().await?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&PUBLISH_LOCK])
        .await?;
    let version: i64 = tx
        .query_one("select coalesce(max(version), 0) + 1 from batch_runs", &[])
        .await?
        .get(0);
    let frames: [(&str, &DataFrame, &[&str]); 5] = [
        (
            "sensor_windows",
            &r.sensor_windows,
            &[
                "view",
                "device_id",
                "start_ms",
                "end_ms",
                "count",
                "temperature_min",
                "temperature_max",
                "temperature_sum_micro",
                "vibration_min",
                "vibration_max",
                "vibration_sum_micro",
            ],
        ),
        ("card_windows", &r.card_windows, &CARD_COLUMNS),
        ("card_sessions", &r.card_sessions, &CARD_COLUMNS),
        (
            "device_baselines",
            &r.device_baselines,
            &[
                "device_id",
                "hour",
                "count",
                "temperature_mean",
                "temperature_std",
                "vibration_mean",
                "vibration_std",
            ],
        ),
        (
            "card_profiles",
            &r.card_profiles,
            &[
                "card_id",
                "payments",
                "amount_mean_cents",
                "amount_std_cents",
                "home_country",
                "countries",
                "mccs",
                "active_hours",
            ],
        ),
    ];
    let mut rows = Vec::new();
    for ((table, df, columns), (_, index)) in frames.into_iter().zip(TABLES) {
        let part = format!("{table}_v{version}");
        tx.batch_execute(&format!(
            "create table {part} (like {table} including defaults)"
        ))
        .await?;
        let n = if df.height() == 0 || df.width() == 0 {
            0
        } else {
            let text = copy_text(version, df, columns)?;
            let sink = tx
                .copy_in(&format!(
                    "copy {part} (version, {}) from stdin",
                    columns.join(", ")
                ))
                .await?;
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::from(text)).await?;
            sink.finish().await?
        };
        tx.batch_execute(&format!(
            "create index on {part} {index};
             alter table {part} add constraint {part}_version check (version = {version});
             alter table {table} attach partition {part} for values in ({version})"
        ))
        .await?;
        rows.push((table, n));
    }
    let offsets = serde_json::to_value(&r.offsets).unwrap_or_default();
    let rows_json = serde_json::Value::Object(
        rows.iter()
            .map(|(t, n)| ((*t).to_owned(), serde_json::Value::from(*n)))
            .collect(),
    );
    tx.execute(
        "insert into batch_runs (version, started_at, cutoff_ms, offsets, rows_scanned,
             events_counted, duration_ms, rows)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &version,
            &std::time::SystemTime::from(started_at),
            &r.cutoff_ms,
            &offsets,
            &(r.rows_scanned as i64),
            &(r.events_counted as i64),
            &duration_ms,
            &rows_json,
        ],
    )
    .await?;
    if let Some(m) = model {
        let mut named = m.model.clone();
        named.version = model_name(version);
        let json = serde_json::to_value(&named).unwrap_or_default();
        tx.execute(
            "insert into fraud_models (version, model, trained_on, held_out, precision, recall, auc)
             values ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &version,
                &json,
                &(m.trained_on as i64),
                &(m.held_out as i64),
                &m.precision,
                &m.recall,
                &m.auc,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    let dropped_versions = prune(client, version, keep).await;
    Ok(Published {
        version,
        rows,
        dropped_versions,
    })
}

const CARD_COLUMNS: [&str; 8] = [
    "card_id",
    "start_ms",
    "end_ms",
    "count",
    "amount_sum_cents",
    "amount_max_cents",
    "merchants",
    "countries",
];

/// Drop versions older than the last `keep`; a version a reader still holds is left for the
/// next run.
async fn prune(client: &mut Client, latest: i64, keep: usize) -> Vec<i64> {
    let oldest_kept = latest - keep.max(1) as i64 + 1;
    let old: Vec<i64> = match client
        .query(
            "select version from batch_runs where version < $1 order by version",
            &[&oldest_kept],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list old batch versions");
            return Vec::new();
        }
    };
    let mut dropped = Vec::new();
    for v in old {
        let mut sql = String::from("set local lock_timeout = '2s';");
        for (table, _) in TABLES {
            let _ = write!(sql, "drop table if exists {table}_v{v};");
        }
        let _ = write!(
            sql,
            "delete from fraud_models where version = {v}; delete from batch_runs where version = {v};"
        );
        let result = async {
            let tx = client.transaction().await?;
            tx.batch_execute(&sql).await?;
            tx.commit().await
        }
        .await;
        match result {
            Ok(()) => dropped.push(v),
            Err(e) => {
                tracing::info!(version = v, error = %e, "old batch version still in use; dropping it at the next run");
                break;
            }
        }
    }
    dropped
}

/// One column, typed once, read by row.
enum Cells<'a> {
    Str(&'a StringChunked),
    I64(&'a Int64Chunked),
    I32(&'a Int32Chunked),
    U32(&'a UInt32Chunked),
    F64(&'a Float64Chunked),
    List(&'a ListChunked),
}

impl Cells<'_> {
    fn write(&self, i: usize, out: &mut String) -> PolarsResult<()> {
        match self {
            Cells::Str(c) => match c.get(i) {
                Some(s) => escape(s, out),
                None => out.push_str("\\N"),
            },
            Cells::I64(c) => write_opt(out, c.get(i)),
            Cells::I32(c) => write_opt(out, c.get(i)),
            Cells::U32(c) => write_opt(out, c.get(i)),
            Cells::F64(c) => write_opt(out, c.get(i)),
            Cells::List(c) => match c.get_as_series(i) {
                None => out.push_str("\\N"),
                Some(s) => {
                    out.push('{');
                    let s = s.cast(&DataType::String)?;
                    for (k, v) in s.str()?.iter().enumerate() {
                        if k > 0 {
                            out.push(',');
                        }
                        match v {
                            // array element: quoted, `"` and `\` escaped, then COPY-escaped
                            Some(v) => {
                                let mut el = String::with_capacity(v.len() + 2);
                                el.push('"');
                                for ch in v.chars() {
                                    if ch == '"' || ch == '\\' {
                                        el.push('\\');
                                    }
                                    el.push(ch);
                                }
                                el.push('"');
                                escape(&el, out);
                            }
                            None => out.push_str("NULL"),
                        }
                    }
                    out.push('}');
                }
            },
        }
        Ok(())
    }
}

fn write_opt<T: std::fmt::Display>(out: &mut String, v: Option<T>) {
    match v {
        Some(v) => {
            let _ = write!(out, "{v}");
        }
        None => out.push_str("\\N"),
    }
}

/// COPY text format: backslash, tab, newline and carriage return are escaped.
fn escape(s: &str, out: &mut String) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// The rows of `df` (its `columns`, after the version) in COPY text format.
fn copy_text(version: i64, df: &DataFrame, columns: &[&str]) -> PolarsResult<String> {
    let df = df.select(columns.iter().copied())?;
    let mut df = df;
    df.rechunk_mut();
    let cells: Vec<Cells<'_>> = df
        .columns()
        .iter()
        .map(|c| {
            Ok(match c.dtype() {
                DataType::String => Cells::Str(c.str()?),
                DataType::Int64 => Cells::I64(c.i64()?),
                DataType::Int32 => Cells::I32(c.i32()?),
                DataType::UInt32 => Cells::U32(c.u32()?),
                DataType::Float64 => Cells::F64(c.f64()?),
                DataType::List(_) => Cells::List(c.list()?),
                other => {
                    polars_bail!(ComputeError: "column {} has unexpected type {other}", c.name())
                }
            })
        })
        .collect::<PolarsResult<_>>()?;
    let mut out = String::with_capacity(df.height() * 96);
    for i in 0..df.height() {
        let _ = write!(out, "{version}");
        for c in &cells {
            out.push('\t');
            c.write(i, &mut out)?;
        }
        out.push('\n');
    }
    Ok(out)
}
