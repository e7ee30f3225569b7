//! The Lambda window queries: one device's (or card's) 1-minute windows over a time range, the
//! windows the latest batch version covers from Postgres and the later ones from Redis.
//!
//! **Merge rule.** The latest `batch_runs` row gives the version and its event-time cutoff (a
//! minute boundary). A 1-minute window ending at or before the cutoff comes from that version in
//! Postgres (the batch layer publishes exactly those); a window starting at or after the cutoff
//! comes from Redis. Windows are aligned on minutes, so each is on exactly one side: never
//! counted twice, never missing. The rows are read from the version whose cutoff is used (see
//! [`batch_rows`]), so a version published meanwhile is seen whole or not at all.
//!
//! **Caches** ([`crate::cache`]): the latest version is read at most every
//! `LAMBDALAKE_SERVING_VERSION_TTL`, and a version's windows for one key and range are kept in
//! memory — a published version never changes, so only the speed part is read on every request.
//!
//! **Degraded.** Postgres unreachable: there is no cutoff, every window comes from Redis and
//! `degraded` lists `"batch"`. Redis unreachable: the batch windows are served, the later ones are
//! missing and `degraded` lists `"speed"`. Never a 500 for a store outage.

use std::sync::Arc;

use lambdalake_views::keys::{SensorView, StoredCard, StoredSensor};
use serde::Serialize;

use crate::State;
use crate::cache::WindowCache;
use crate::stores::{Postgres, StoreError};

pub const MINUTE_MS: i64 = 60_000;

/// A validated window query.
#[derive(Debug, Clone)]
pub struct Range {
    /// First window start (the `from` instant floored to the minute).
    pub from_ms: i64,
    /// Windows start before this.
    pub to_ms: i64,
}

/// Min, max and mean of a measure over a window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Measure {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Measure {
    pub(crate) fn new(min: f64, max: f64, sum_micro: i64, count: u64) -> Self {
        Measure {
            min,
            max,
            mean: if count == 0 {
                0.0
            } else {
                sum_micro as f64 / 1_000_000.0 / count as f64
            },
        }
    }
}

/// Which store a window came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Batch,
    Speed,
    /// The lakehouse's gold table (`/v1/lakehouse/...`).
    Gold,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SensorWindow {
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub start_ms: i64,
    pub count: u64,
    pub temperature_c: Measure,
    pub vibration_mm_s: Measure,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Amount {
    /// In the currency's units (cents / 100), exact to the cent.
    pub sum: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CardWindow {
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub start_ms: i64,
    pub count: u64,
    pub amount: Amount,
    pub source: Source,
}

/// The batch version a response used.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BatchInfo {
    /// `null`: no version published yet (or Postgres unreachable).
    pub version: Option<i64>,
    /// RFC 3339; windows ending at or before it come from the batch views.
    pub cutoff: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SpeedInfo {
    /// Time since the speed layer last applied a micro-batch; `null` when unknown.
    pub freshness_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SensorWindows {
    pub device_id: String,
    pub windows: Vec<SensorWindow>,
    pub batch: BatchInfo,
    pub speed: SpeedInfo,
    pub degraded: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CardWindows {
    pub card_id: String,
    pub windows: Vec<CardWindow>,
    pub batch: BatchInfo,
    pub speed: SpeedInfo,
    pub degraded: Vec<String>,
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The latest version, its cutoff and its rows for one key.
///
/// Two statements, not one: PostgreSQL plans a statement with the partitions attached when it is
/// planned but reads rows with the snapshot taken when it executes, so one statement joining
/// `batch_runs` to the views can see version N's row and plan without N's partition (a test
/// caught exactly that). The version is read first; the rows are read by a second statement,
/// planned after N's partition — attached in the transaction that inserted N's row — is visible.
/// If that finds no rows because N was dropped in between (two newer versions published), the
/// read starts over.
async fn batch_rows<W: MergedWindow>(
    state: &State,
    cache: &WindowCache<W>,
    key: &str,
    range: &Range,
) -> Result<Option<(i64, Option<i64>, Arc<Vec<W>>)>, StoreError> {
    let pg = &state.pg;
    for attempt in 0..3 {
        let run = if attempt == 0 {
            state.runs.get(pg).await?
        } else {
            state.runs.read(pg).await?
        };
        let Some(v) = run else {
            return Ok(None);
        };
        let (version, cutoff) = (v.version, v.cutoff);
        let Some(c) = cutoff else {
            return Ok(Some((version, None, Arc::default())));
        };
        // windows ending at or before the cutoff start before it: the batch part ends at the
        // earlier of `to` and the cutoff
        let (from, to) = (range.from_ms, range.to_ms.min(c));
        if from >= to {
            return Ok(Some((version, cutoff, Arc::default())));
        }
        if let Some(hit) = cache.get(&v, key, from, to) {
            crate::metrics::BATCH_CACHE
                .with_label_values(&["hit"])
                .inc();
            return Ok(Some((version, cutoff, hit)));
        }
        crate::metrics::BATCH_CACHE
            .with_label_values(&["miss"])
            .inc();
        let owned = key.to_owned();
        let rows = pg
            .with(|cl| async move { cl.query(W::SQL, &[&version, &owned, &from, &to, &c]).await })
            .await?;
        if rows.is_empty() && !version_exists(pg, version).await? {
            continue;
        }
        let windows = Arc::new(rows.iter().map(W::from_row).collect::<Vec<W>>());
        cache.put(&v, key, from, to, windows.clone());
        return Ok(Some((version, cutoff, windows)));
    }
    Err(replaced())
}

/// The latest batch version and its cutoff (`None`: none published, or no batch tables yet).
pub(crate) async fn latest_run(pg: &Postgres) -> Result<crate::cache::Run, StoreError> {
    let run = match pg
        .with(|c| async move {
            c.query_opt(
                "select version, cutoff_ms, (extract(epoch from published_at) * 1000000)::bigint
                 from batch_runs order by version desc limit 1",
                &[],
            )
            .await
        })
        .await
    {
        Err(StoreError::NoBatchSchema) => return Ok(None),
        other => other?,
    };
    Ok(run.map(|r| crate::cache::LatestVersion {
        version: r.get(0),
        cutoff: r.get(1),
        published_us: r.get(2),
    }))
}

/// Whether version `v` is still published (a reader that found no rows checks it was not
/// dropped meanwhile).
pub(crate) async fn version_exists(pg: &Postgres, v: i64) -> Result<bool, StoreError> {
    let still = pg
        .with(|cl| async move {
            cl.query_opt("select 1 from batch_runs where version = $1", &[&v])
                .await
        })
        .await?;
    Ok(still.is_some())
}

pub(crate) fn replaced() -> StoreError {
    StoreError::Postgres("batch versions were replaced faster than they could be read".to_owned())
}

/// Window starts from `from` (inclusive) to `to` (exclusive), by minute.
fn minutes(from: i64, to: i64) -> impl Iterator<Item = i64> {
    (0..)
        .map(move |i| from + i * MINUTE_MS)
        .take_while(move |s| *s < to)
}

/// `ms` floored to the minute.
pub fn floor_minute(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// A window type the merge reads from both stores.
pub trait MergedWindow: Sized + Clone {
    /// Its batch rows: `$1` version, `$2` key, `$3`/`$4` start range, `$5` cutoff.
    const SQL: &'static str;
    fn from_row(r: &tokio_postgres::Row) -> Self;
    /// From the speed layer's stored value.
    fn from_speed(json: &str) -> serde_json::Result<Self>;
    fn start_ms(&self) -> i64;
}

impl MergedWindow for SensorWindow {
    const SQL: &'static str = "select start_ms, end_ms, count,
            temperature_min, temperature_max, temperature_sum_micro,
            vibration_min, vibration_max, vibration_sum_micro
        from sensor_windows
        where version = $1 and view = '1m' and device_id = $2
          and start_ms >= $3 and start_ms < $4 and end_ms <= $5
        order by start_ms";

    fn from_row(r: &tokio_postgres::Row) -> Self {
        let count = r.get::<_, i64>(2) as u64;
        let start_ms: i64 = r.get(0);
        SensorWindow {
            start: rfc3339(start_ms),
            end: rfc3339(r.get(1)),
            start_ms,
            count,
            temperature_c: Measure::new(r.get(3), r.get(4), r.get(5), count),
            vibration_mm_s: Measure::new(r.get(6), r.get(7), r.get(8), count),
            source: Source::Batch,
        }
    }

    fn from_speed(json: &str) -> serde_json::Result<Self> {
        let s: StoredSensor = serde_json::from_str(json)?;
        Ok(SensorWindow {
            start: rfc3339(s.start),
            end: rfc3339(s.end),
            start_ms: s.start,
            count: s.count,
            temperature_c: Measure::new(s.t_min, s.t_max, s.t_sum, s.count),
            vibration_mm_s: Measure::new(s.v_min, s.v_max, s.v_sum, s.count),
            source: Source::Speed,
        })
    }

    fn start_ms(&self) -> i64 {
        self.start_ms
    }
}

fn cents(c: i64) -> f64 {
    c as f64 / 100.0
}

impl MergedWindow for CardWindow {
    const SQL: &'static str = "select start_ms, end_ms, count, amount_sum_cents, amount_max_cents
        from card_windows
        where version = $1 and card_id = $2 and start_ms >= $3 and start_ms < $4 and end_ms <= $5
        order by start_ms";

    fn from_row(r: &tokio_postgres::Row) -> Self {
        let start_ms: i64 = r.get(0);
        CardWindow {
            start: rfc3339(start_ms),
            end: rfc3339(r.get(1)),
            start_ms,
            count: r.get::<_, i64>(2) as u64,
            amount: Amount {
                sum: cents(r.get(3)),
                max: cents(r.get(4)),
            },
            source: Source::Batch,
        }
    }

    fn from_speed(json: &str) -> serde_json::Result<Self> {
        let s: StoredCard = serde_json::from_str(json)?;
        Ok(CardWindow {
            start: rfc3339(s.start),
            end: rfc3339(s.end),
            start_ms: s.start,
            count: s.count,
            amount: Amount {
                sum: cents(s.amount_sum),
                max: cents(s.amount_max),
            },
            source: Source::Speed,
        })
    }

    fn start_ms(&self) -> i64 {
        self.start_ms
    }
}

/// The merge rule (module documentation) for one key: the windows ordered by start, the batch
/// version used, the stores that could not be read. `speed_key(start)` names the speed layer's
/// hash of the windows starting at `start` (field = `key`).
async fn merge<W: MergedWindow>(
    state: &State,
    cache: &WindowCache<W>,
    key: &str,
    range: &Range,
    speed_key: impl Fn(i64) -> String,
) -> (Vec<W>, BatchInfo, Vec<String>) {
    let mut degraded = Vec::new();
    let mut windows = Vec::new();
    let none = BatchInfo {
        version: None,
        cutoff: None,
    };
    let (info, speed_from) = match batch_rows(state, cache, key, range).await {
        Ok(Some((version, cutoff, rows))) => {
            windows.extend(rows.iter().cloned());
            (
                BatchInfo {
                    version: Some(version),
                    cutoff: cutoff.map(rfc3339),
                },
                cutoff.map_or(range.from_ms, |c| c.max(range.from_ms)),
            )
        }
        Ok(None) => (none, range.from_ms),
        Err(e) => {
            tracing::warn!(error = %e, "batch views unreachable");
            degraded.push("batch".to_owned());
            (none, range.from_ms)
        }
    };
    let starts: Vec<i64> = minutes(speed_from, range.to_ms).collect();
    if !starts.is_empty() {
        let mut pipe = redis::pipe();
        for s in &starts {
            pipe.cmd("HGET").arg(speed_key(*s)).arg(key);
        }
        match state.redis.query::<Vec<Option<String>>>(&pipe).await {
            Ok(values) => {
                for v in values.into_iter().flatten() {
                    match W::from_speed(&v) {
                        Ok(w) => windows.push(w),
                        Err(e) => {
                            tracing::warn!(error = %e, key, "unreadable speed window");
                            if !degraded.iter().any(|d| d == "speed") {
                                degraded.push("speed".to_owned());
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "speed views unreachable");
                degraded.push("speed".to_owned());
            }
        }
    }
    windows.sort_by_key(W::start_ms);
    (windows, info, degraded)
}

pub async fn sensor_windows(
    state: &State,
    freshness_ms: Option<i64>,
    device: &str,
    range: &Range,
) -> SensorWindows {
    let (windows, batch, degraded) = merge(state, &state.sensor_cache, device, range, |s| {
        state.keys.sensor_windows(SensorView::OneMinute, s)
    })
    .await;
    SensorWindows {
        device_id: device.to_owned(),
        windows,
        batch,
        speed: SpeedInfo { freshness_ms },
        degraded,
    }
}

pub async fn card_windows(
    state: &State,
    freshness_ms: Option<i64>,
    card: &str,
    range: &Range,
) -> CardWindows {
    let (windows, batch, degraded) = merge(state, &state.card_cache, card, range, |s| {
        state.keys.card_windows(s)
    })
    .await;
    CardWindows {
        card_id: card.to_owned(),
        windows,
        batch,
        speed: SpeedInfo { freshness_ms },
        degraded,
    }
}
