//! lambdalake serving layer: the query API. `/v1/lambda/...` merges the batch views (Postgres)
//! and the speed views (Redis) on the latest batch version's cutoff ([`windows`]);
//! `docs/serving.md` documents the API.

pub mod cache;
mod config;
pub mod lakehouse;
pub mod metrics;
pub mod overview;
pub mod risk;
pub mod stores;
pub mod windows;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use lambdalake_runtime::otel;
use lambdalake_runtime::{Readiness, Tasks};
use lambdalake_views::keys::Keys;

pub use config::Config;
pub use lambdalake_runtime::tasks::CancellationToken;

use crate::stores::{Postgres, Redis};
use crate::windows::Range;
use lambdalake_lakehouse::tables::{At, Table};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error(transparent)]
    Listen(#[from] lambdalake_runtime::ops::ListenError),
}

/// What the handlers share.
pub struct State {
    pg: Postgres,
    redis: Redis,
    keys: Keys,
    /// The payments topic (its partitions' card states hold the latest scores).
    payments_topic: String,
    max_range: Duration,
    /// (read at, value): the speed layer's freshness, read at most every 500 ms.
    freshness: Mutex<Option<(Instant, Option<i64>)>>,
    /// (listed at, keys): the speed layer's partition-state keys, listed at most every 30 s.
    partitions: Mutex<Option<(Instant, Vec<String>)>>,
    /// The latest batch version, read at most every `LAMBDALAKE_SERVING_VERSION_TTL`.
    runs: cache::LatestRun,
    /// Batch windows by (version, key, range): a published version never changes.
    sensor_cache: cache::WindowCache<windows::SensorWindow>,
    card_cache: cache::WindowCache<windows::CardWindow>,
    /// The lakehouse's gold tables.
    lake: lakehouse::Reader,
    /// The event topics' high watermarks, polled every second.
    watermarks: std::sync::Arc<Mutex<overview::Watermarks>>,
}

impl State {
    /// Milliseconds since the speed layer last stored a partition's state (`updated_ms` of
    /// `{p}:speed:part:*`, the newest); `None` when Redis is unreachable or nothing was applied.
    async fn speed_freshness(&self) -> Option<i64> {
        if let Some((at, v)) = *self.freshness.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < Duration::from_millis(500)
        {
            return v;
        }
        let parts = self.partition_keys().await.unwrap_or_default();
        let value = if parts.is_empty() {
            None
        } else {
            let mut get = redis::pipe();
            for p in &parts {
                get.cmd("HGET").arg(p).arg("updated_ms");
            }
            self.redis
                .query::<Vec<Option<i64>>>(&get)
                .await
                .ok()
                .and_then(|v| v.into_iter().flatten().max())
                .map(|last| (chrono::Utc::now().timestamp_millis() - last).max(0))
        };
        *self.freshness.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), value));
        value
    }
}

impl State {
    /// The keys of `{p}:speed:part:*` (SCAN, never KEYS: Redis keeps serving meanwhile).
    async fn partition_keys(&self) -> Result<Vec<String>, stores::StoreError> {
        if let Some((at, keys)) = &*self.partitions.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < Duration::from_secs(30)
        {
            return Ok(keys.clone());
        }
        let pattern = format!("{}:speed:part:*", self.keys.prefix());
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::pipe();
            scan.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let ((next, found),) = self.redis.query::<((u64, Vec<String>),)>(&scan).await?;
            keys.extend(found);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // none yet (the speed layer has not applied anything): look again next time
        if !keys.is_empty() {
            *self.partitions.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((Instant::now(), keys.clone()));
        }
        Ok(keys)
    }
}

/// The body of every 4xx and 5xx answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, precisely.
    pub error: String,
}

/// A 400 with a precise message.
fn bad_request(message: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest().json(ErrorBody {
        error: message.into(),
    })
}

/// `GET /v1/alerts`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AlertsBody {
    /// The alerts as the speed layer stores them (`alert_id`, `kind`, `key`, `ts`,
    /// `detected_at_ms`, `score`, `model_version`, `reasons`, `features`, `event`).
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<serde_json::Value>,
    pub degraded: Vec<String>,
}

/// The OpenAPI 3 document, generated from the handlers and the response types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "lambdalake serving API",
        description = "One query API over the Lambda architecture's batch (Postgres) and speed (Redis) views."
    ),
    paths(
        sensor_windows,
        card_windows,
        card_risk,
        alerts,
        get_overview,
        lakehouse_sensor_windows,
        lakehouse_card_windows,
        lakehouse_history,
        lakehouse_alerts
    ),
    components(schemas(
        windows::SensorWindows,
        windows::CardWindows,
        risk::Risk,
        lakehouse::History,
        overview::Overview,
        AlertsBody,
        ErrorBody
    ))
)]
pub struct ApiDoc;

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// The id in the path, checked with the event field rules.
fn check_id(field: &str, id: &str) -> Result<(), String> {
    lambdalake_events::Ident::parse(field, id)
        .map(|_| ())
        .map_err(|e| format!("{field}: {}", e.reason))
}

/// `from` and `to` (RFC 3339; default: the hour up to now), in order, within the maximum range.
fn parse_range(query: &HashMap<String, String>, max_range: Duration) -> Result<Range, String> {
    parse_range_with(query, max_range, &[])
}

/// [`parse_range`] accepting the parameters `extra` too (checked by the caller).
fn parse_range_with(
    query: &HashMap<String, String>,
    max_range: Duration,
    extra: &[&str],
) -> Result<Range, String> {
    let mut unknown: Vec<&str> = query
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "from" | "to") && !extra.contains(k))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        let mut expected = vec!["from", "to"];
        expected.extend_from_slice(extra);
        return Err(format!(
            "unknown query parameter(s): {} (expected {})",
            unknown.join(", "),
            expected.join(", ")
        ));
    }
    let parse = |name: &str| -> Result<Option<i64>, String> {
        query
            .get(name)
            .map(|v| {
                lambdalake_events::EventTime::parse_rfc3339(name, v)
                    .map(|t| t.millis())
                    .map_err(|e| format!("{name}: {}", e.reason))
            })
            .transpose()
    };
    let to = parse("to")?.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let from = parse("from")?.unwrap_or(to - 3_600_000);
    if from >= to {
        return Err(format!(
            "from ({}) must be before to ({})",
            windows::rfc3339(from),
            windows::rfc3339(to)
        ));
    }
    let max = i64::try_from(max_range.as_millis()).unwrap_or(i64::MAX);
    if to - from > max {
        return Err(format!(
            "the range from {} to {} is longer than the maximum of {} (LAMBDALAKE_SERVING_MAX_RANGE)",
            windows::rfc3339(from),
            windows::rfc3339(to),
            humantime::format_duration(max_range)
        ));
    }
    Ok(Range {
        from_ms: windows::floor_minute(from),
        to_ms: to,
    })
}

/// One device's 1-minute windows: batch up to the cutoff, speed after it.
#[utoipa::path(
    get,
    path = "/v1/lambda/sensors/{device_id}/windows",
    params(
        ("device_id" = String, Path, description = "The device (event id rules)"),
        ("from" = Option<String>, Query, description = "RFC 3339; default: an hour before `to`"),
        ("to" = Option<String>, Query, description = "RFC 3339; default: now"),
    ),
    responses(
        (status = 200, description = "The windows, ordered by start", body = windows::SensorWindows),
        (status = 400, description = "A bad id, time or range", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 429, description = "This API key (or client address) exceeded the rate limit; see Retry-After", body = ErrorBody),
    )
)]
async fn sensor_windows(
    state: web::Data<State>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let device = path.into_inner();
    let range =
        match check_id("device_id", &device).and_then(|()| parse_range(&query, state.max_range)) {
            Ok(r) => r,
            Err(m) => return bad_request(m),
        };
    let freshness = state.speed_freshness().await;
    let body = windows::sensor_windows(&state, freshness, &device, &range).await;
    metrics::degraded(&body.degraded);
    HttpResponse::Ok().json(body)
}

/// One card's 1-minute windows: batch up to the cutoff, speed after it.
#[utoipa::path(
    get,
    path = "/v1/lambda/cards/{card_id}/windows",
    params(
        ("card_id" = String, Path, description = "The card (event id rules)"),
        ("from" = Option<String>, Query, description = "RFC 3339; default: an hour before `to`"),
        ("to" = Option<String>, Query, description = "RFC 3339; default: now"),
    ),
    responses(
        (status = 200, description = "The windows, ordered by start", body = windows::CardWindows),
        (status = 400, description = "A bad id, time or range", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 429, description = "This API key (or client address) exceeded the rate limit; see Retry-After", body = ErrorBody),
    )
)]
async fn card_windows(
    state: web::Data<State>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let card = path.into_inner();
    let range = match check_id("card_id", &card).and_then(|()| parse_range(&query, state.max_range))
    {
        Ok(r) => r,
        Err(m) => return bad_request(m),
    };
    let freshness = state.speed_freshness().await;
    let body = windows::card_windows(&state, freshness, &card, &range).await;
    metrics::degraded(&body.degraded);
    HttpResponse::Ok().json(body)
}

/// A card's fraud risk: its profile and the model of the latest batch version, the score of its
/// newest payment in the speed layer.
#[utoipa::path(
    get,
    path = "/v1/lambda/cards/{card_id}/risk",
    params(("card_id" = String, Path, description = "The card (event id rules)")),
    responses(
        (status = 200, description = "What each layer knows of the card", body = risk::Risk),
        (status = 400, description = "A bad id or parameter", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 429, description = "This API key (or client address) exceeded the rate limit; see Retry-After", body = ErrorBody),
    )
)]
async fn card_risk(
    state: web::Data<State>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let card = path.into_inner();
    if let Err(m) = check_id("card_id", &card) {
        return bad_request(m);
    }
    if !query.is_empty() {
        let mut names: Vec<&str> = query.keys().map(String::as_str).collect();
        names.sort_unstable();
        return bad_request(format!(
            "unknown query parameter(s): {} (this endpoint takes none)",
            names.join(", ")
        ));
    }
    let body = risk::risk(&state, &card).await;
    metrics::degraded(&body.degraded);
    HttpResponse::Ok().json(body)
}

/// `since`, `until` (RFC 3339, both inclusive) and `limit` (1 … 1000, default 100) of the
/// alert endpoints.
fn alert_query(query: &HashMap<String, String>) -> Result<(Option<i64>, Option<i64>, u16), String> {
    let unknown: Vec<&str> = query
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "since" | "until" | "limit"))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "unknown query parameter(s): {} (expected since, until, limit)",
            unknown.join(", ")
        ));
    }
    let instant = |name: &str| match query.get(name) {
        None => Ok(None),
        Some(v) => lambdalake_events::EventTime::parse_rfc3339(name, v)
            .map(|t| Some(t.millis()))
            .map_err(|e| format!("{name}: {}", e.reason)),
    };
    let (since, until) = (instant("since")?, instant("until")?);
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err("since must not be after until".to_owned());
    }
    let limit = match query.get("limit").map(|l| l.parse::<u16>()) {
        None => 100,
        Some(Ok(l)) if (1..=1000).contains(&l) => l,
        Some(_) => return Err("limit: must be an integer from 1 to 1000".to_owned()),
    };
    Ok((since, until, limit))
}

/// `GET /v1/alerts?since=…&until=…&limit=…`: the speed layer's recent alerts (fraud and sensor),
/// newest event time first; `since` and `until` (RFC 3339, inclusive) bound the events' time;
/// `limit` 1 … 1000, default 100.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    params(
        ("since" = Option<String>, Query, description = "RFC 3339: alerts of events at or after it"),
        ("until" = Option<String>, Query, description = "RFC 3339: alerts of events at or before it"),
        ("limit" = Option<u16>, Query, description = "1 … 1000, default 100"),
    ),
    responses(
        (status = 200, description = "Newest event time first", body = AlertsBody),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 429, description = "This API key (or client address) exceeded the rate limit; see Retry-After", body = ErrorBody),
    )
)]
async fn alerts(
    state: web::Data<State>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let (since, until, limit) = match alert_query(&query) {
        Ok(q) => q,
        Err(m) => return bad_request(m),
    };
    let mut pipe = redis::pipe();
    pipe.cmd("ZRANGE")
        .arg(state.keys.alerts())
        .arg(until.map_or_else(|| "+inf".to_owned(), |u| u.to_string()))
        .arg(since.map_or_else(|| "-inf".to_owned(), |s| s.to_string()))
        .arg("BYSCORE")
        .arg("REV")
        .arg("LIMIT")
        .arg(0)
        .arg(limit);
    let (list, degraded) = match state.redis.query::<(Vec<String>,)>(&pipe).await {
        Ok((raw,)) => (
            raw.iter()
                .filter_map(|a| serde_json::from_str::<serde_json::Value>(a).ok())
                .collect::<Vec<_>>(),
            Vec::<String>::new(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "speed views unreachable");
            (Vec::new(), vec!["speed".to_owned()])
        }
    };
    metrics::degraded(&degraded);
    HttpResponse::Ok().json(AlertsBody {
        alerts: list,
        degraded,
    })
}

/// `GET /v1/lakehouse/alerts?since=…&until=…&limit=…`: the lakehouse's alerts (gold_alerts),
/// with the parameters and the order of `/v1/alerts`.
#[utoipa::path(
    get,
    path = "/v1/lakehouse/alerts",
    params(
        ("since" = Option<String>, Query, description = "RFC 3339: alerts of events at or after it"),
        ("until" = Option<String>, Query, description = "RFC 3339: alerts of events at or before it"),
        ("limit" = Option<u16>, Query, description = "1 … 1000, default 100"),
    ),
    responses(
        (status = 200, description = "Newest event time first (`degraded`: `[\"gold\"]` when the tables cannot be read)", body = AlertsBody),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 429, description = "This API key (or client address) exceeded the rate limit; see Retry-After", body = ErrorBody),
    )
)]
async fn lakehouse_alerts(
    state: web::Data<State>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let (since, until, limit) = match alert_query(&query) {
        Ok(q) => q,
        Err(m) => return bad_request(m),
    };
    let (alerts, degraded) = match state.lake.alerts(since, until, usize::from(limit)).await {
        Ok(a) => (a, Vec::new()),
        Err(lakehouse::ReadError::BadRequest(m)) => return bad_request(m),
        Err(lakehouse::ReadError::Unavailable(m)) => {
            tracing::warn!(error = %m, "gold tables unreadable");
            (Vec::new(), vec!["gold".to_owned()])
        }
    };
    metrics::degraded(&degraded);
    HttpResponse::Ok().json(AlertsBody { alerts, degraded })
}

/// `version` or `as_of` (not both): which version of a gold table to read.
fn parse_at(query: &HashMap<String, String>) -> Result<At, String> {
    match (query.get("version"), query.get("as_of")) {
        (Some(_), Some(_)) => Err("version and as_of: give one, not both".to_owned()),
        (Some(v), None) => v
            .parse::<u64>()
            .map(At::Version)
            .map_err(|_| format!("version: {v:?} is not a table version (an integer ≥ 0)")),
        (None, Some(t)) => lambdalake_events::EventTime::parse_rfc3339("as_of", t)
            .map(|t| At::Timestamp(t.millis()))
            .map_err(|e| format!("as_of: {}", e.reason)),
        (None, None) => Ok(At::Latest),
    }
}

/// The range and the version of a lakehouse window query.
fn lakehouse_query(
    query: &HashMap<String, String>,
    max_range: Duration,
) -> Result<(Range, At), String> {
    let range = parse_range_with(query, max_range, &["version", "as_of"])?;
    Ok((range, parse_at(query)?))
}

type GoldAnswer<W> = (Vec<W>, windows::BatchInfo, windows::SpeedInfo, Vec<String>);

/// One key's windows from a gold table, as `convert` makes them: what every lakehouse window
/// answer holds. A bad version or instant is a 400 (the `Err`); unreadable tables are `degraded`.
async fn gold_windows<W>(
    state: &State,
    table: Table,
    key_column: &str,
    key: &str,
    range: &Range,
    at: At,
    convert: fn(&lakehouse::Read) -> Result<Vec<W>, String>,
) -> Result<GoldAnswer<W>, HttpResponse> {
    let mut degraded = Vec::new();
    let read = match state.lake.windows(table, key_column, key, range, at).await {
        Ok(r) => Some(r),
        Err(lakehouse::ReadError::BadRequest(m)) => return Err(bad_request(m)),
        Err(lakehouse::ReadError::Unavailable(m)) => {
            tracing::warn!(error = %m, "gold tables unreadable");
            degraded.push("gold".to_owned());
            None
        }
    };
    let windows = match read.as_ref().map(convert).transpose() {
        Ok(w) => w.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "gold tables unreadable");
            degraded.push("gold".to_owned());
            Vec::new()
        }
    };
    let (batch, speed) = lakehouse::info(read.as_ref());
    metrics::degraded(&degraded);
    Ok((windows, batch, speed, degraded))
}

/// One device's 1-minute windows from the lakehouse's gold table.
#[utoipa::path(
    get,
    path = "/v1/lakehouse/sensors/{device_id}/windows",
    params(
        ("device_id" = String, Path, description = "The device (event id rules)"),
        ("from" = Option<String>, Query, description = "RFC 3339; default: an hour before `to`"),
        ("to" = Option<String>, Query, description = "RFC 3339; default: now"),
        ("version" = Option<u64>, Query, description = "Time travel: the gold table's Delta version"),
        ("as_of" = Option<String>, Query, description = "Time travel: the version current at this RFC 3339 instant"),
    ),
    responses(
        (status = 200, description = "The windows, ordered by start (`source`: `gold`)", body = windows::SensorWindows),
        (status = 400, description = "A bad id, time, range or version", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 429, description = "This API key (or client address) exceeded the rate limit; see Retry-After", body = ErrorBody),
    )
)]
async fn lakehouse_sensor_windows(
    state: web::Data<State>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let device = path.into_inner();
    let (range, at) = match check_id("device_id", &device)
        .and_then(|()| lakehouse_query(&query, state.max_range))
    {
        Ok(r) => r,
        Err(m) => return bad_request(m),
    };
    let (windows, batch, speed, degraded) = match gold_windows(
        &state,
        Table::GoldSensorWindows,
        "device_id",
        &device,
        &range,
        at,
        lakehouse::sensor_windows,
    )
    .await
    {
        Ok(w) => w,
        Err(answer) => return answer,
    };
    HttpResponse::Ok().json(windows::SensorWindows {
        device_id: device,
        windows,
        batch,
        speed,
        degraded,
    })
}

/// One card's 1-minute windows from the lakehouse's gold table.
#[utoipa::path(
    get,
    path = "/v1/lakehouse/cards/{card_id}/windows",
    params(
        ("card_id" = String, Path, description = "The card (event id rules)"),
        ("from" = Option<String>, Query, description = "RFC 3339; default: an hour before `to`"),
        ("to" = Option<String>, Query, description = "RFC 3339; default: now"),
        ("version" = Option<u64>, Query, description = "Time travel: the gold table's Delta version"),
        ("as_of" = Option<String>, Query, description = "Time travel: the version current at this RFC 3339 instant"),
    ),
    responses(
        (status = 200, description = "The windows, ordered by start (`source`: `gold`)", body = windows::CardWindows),
        (status = 400, description = "A bad id, time, range or version", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 429, description = "This API key (or client address) exceeded the rate limit; see Retry-After", body = ErrorBody),
    )
)]
async fn lakehouse_card_windows(
    state: web::Data<State>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let card = path.into_inner();
    let (range, at) =
        match check_id("card_id", &card).and_then(|()| lakehouse_query(&query, state.max_range)) {
            Ok(r) => r,
            Err(m) => return bad_request(m),
        };
    let (windows, batch, speed, degraded) = match gold_windows(
        &state,
        Table::GoldCardWindows,
        "card_id",
        &card,
        &range,
        at,
        lakehouse::card_windows,
    )
    .await
    {
        Ok(w) => w,
        Err(answer) => return answer,
    };
    HttpResponse::Ok().json(windows::CardWindows {
        card_id: card,
        windows,
        batch,
        speed,
        degraded,
    })
}

/// The newest commits of one lakehouse table: version, time, operation, rows added.
#[utoipa::path(
    get,
    path = "/v1/lakehouse/tables/{name}/history",
    params(
        ("name" = String, Path, description = "bronze, silver_sensor_readings, silver_payments, silver_fraud_labels, gold_sensor_windows, gold_card_windows, gold_fraud_scores or gold_alerts"),
        ("limit" = Option<u16>, Query, description = "1 … 1000, default 100"),
    ),
    responses(
        (status = 200, description = "Newest first", body = lakehouse::History),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 401, description = "API keys are configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 429, description = "This API key (or client address) exceeded the rate limit; see Retry-After", body = ErrorBody),
        (status = 404, description = "No such table", body = ErrorBody),
        (status = 503, description = "The tables cannot be read", body = ErrorBody),
    )
)]
async fn lakehouse_history(
    state: web::Data<State>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let name = path.into_inner();
    let Some(table) = Table::parse(&name) else {
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        return HttpResponse::NotFound().json(ErrorBody {
            error: format!("no table {name:?}; the tables are {}", names.join(", ")),
        });
    };
    let unknown: Vec<&str> = query
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "limit")
        .collect();
    if !unknown.is_empty() {
        return bad_request(format!(
            "unknown query parameter(s): {} (expected limit)",
            unknown.join(", ")
        ));
    }
    let limit = match query.get("limit").map(|l| l.parse::<u16>()) {
        None => 100,
        Some(Ok(l)) if (1..=1000).contains(&l) => l,
        Some(_) => return bad_request("limit: must be an integer from 1 to 1000"),
    };
    match state.lake.history(table, usize::from(limit)).await {
        Ok(h) => HttpResponse::Ok().json(h),
        Err(lakehouse::ReadError::BadRequest(m)) => bad_request(m),
        Err(lakehouse::ReadError::Unavailable(m)) => {
            metrics::degraded(&["gold".to_owned()]);
            HttpResponse::ServiceUnavailable().json(ErrorBody { error: m })
        }
    }
}

/// The live dashboard: one self-contained page (no external resource) polling the API.
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .body(include_str!("dashboard.html"))
}

/// Totals, rates, freshness and lag of each layer, the batch version.
#[utoipa::path(
    get,
    path = "/v1/overview",
    responses(
        (status = 200, description = "The overview", body = overview::Overview),
        (status = 401, description = "API keys are configured and the request has none, or a wrong one", body = ErrorBody),
        (status = 429, description = "This API key (or client address) exceeded the rate limit; see Retry-After", body = ErrorBody),
    )
)]
async fn get_overview(state: web::Data<State>) -> HttpResponse {
    let o = overview::overview(&state).await;
    metrics::degraded(&o.degraded);
    HttpResponse::Ok().json(o)
}

/// 401 or 429, in the API's error shape (`{"error": …}`).
fn denied_response(d: &lambdalake_runtime::Denied) -> HttpResponse {
    use actix_web::http::header;
    match d {
        lambdalake_runtime::Denied::Unauthorized(why) => HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(ErrorBody {
                error: format!("unauthorized: {why}"),
            }),
        lambdalake_runtime::Denied::RateLimited { retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            HttpResponse::TooManyRequests()
                .insert_header((header::RETRY_AFTER, secs.max(1)))
                .json(ErrorBody {
                    error: format!(
                        "rate limited: too many requests from this caller (API key, or client address without keys); retry in {retry_after:?}"
                    ),
                })
        }
    }
}

/// The API routes (without the operations endpoints).
pub fn api(state: web::Data<State>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(state)
            .app_data(web::QueryConfig::default().error_handler(|e, _| {
                actix_web::error::InternalError::from_response(
                    e.to_string(),
                    bad_request(format!("query string: {e}")),
                )
                .into()
            }))
            .app_data(web::PathConfig::default().error_handler(|e, _| {
                actix_web::error::InternalError::from_response(
                    e.to_string(),
                    bad_request(format!("path: {e}")),
                )
                .into()
            }))
            .route(
                "/v1/lambda/sensors/{device_id}/windows",
                web::get().to(sensor_windows),
            )
            .route(
                "/v1/lambda/cards/{card_id}/windows",
                web::get().to(card_windows),
            )
            .route("/v1/lambda/cards/{card_id}/risk", web::get().to(card_risk))
            .route("/v1/alerts", web::get().to(alerts))
            .route("/v1/lakehouse/alerts", web::get().to(lakehouse_alerts))
            .route("/v1/overview", web::get().to(get_overview))
            .route("/", web::get().to(dashboard))
            .route("/openapi.json", web::get().to(openapi))
            .route(
                "/v1/lakehouse/sensors/{device_id}/windows",
                web::get().to(lakehouse_sensor_windows),
            )
            .route(
                "/v1/lakehouse/cards/{card_id}/windows",
                web::get().to(lakehouse_card_windows),
            )
            .route(
                "/v1/lakehouse/tables/{name}/history",
                web::get().to(lakehouse_history),
            );
    }
}

/// A built, not yet running serving service.
pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    tasks: Tasks,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        config.check().map_err(StartError::Config)?;
        metrics::register();
        let pg = Postgres::new(
            &config.postgres_url,
            config.pg_connections.get(),
            config.store_timeout,
        )
        .map_err(|e| StartError::Config(vec![e]))?;
        let redis = Redis::new(&config.redis_url, config.store_timeout)
            .map_err(|e| StartError::Config(vec![e]))?;
        let tasks = Tasks::new();
        let watermarks = overview::watch(
            &config.kafka,
            vec![
                config.topics.sensor_readings.clone(),
                config.topics.payments.clone(),
            ],
            tasks.token(),
        )
        .map_err(|e| StartError::Config(vec![e]))?;
        let state = web::Data::new(State {
            pg,
            redis,
            keys: Keys::new(config.key_prefix.clone()),
            payments_topic: config.topics.payments.clone(),
            runs: cache::LatestRun::new(config.version_ttl),
            lake: lakehouse::Reader::new(
                lambdalake_lakehouse::tables::Location::parse(&config.lakehouse_tables).ok(),
                config.version_ttl,
            ),
            sensor_cache: cache::WindowCache::new(config.cache_windows / 2),
            card_cache: cache::WindowCache::new(config.cache_windows - config.cache_windows / 2),
            max_range: config.max_range,
            freshness: Mutex::new(None),
            partitions: Mutex::new(None),
            watermarks,
        });
        let readiness = Readiness::default();
        let access = std::sync::Arc::new(lambdalake_runtime::Access::new(
            config.api_keys.clone(),
            config.rate_limit,
            config.rate_limit_burst,
        ));
        let (listener, port) = lambdalake_runtime::ops::bind(config.listen)?;
        let mut server = HttpServer::new(move || {
            let access = access.clone();
            App::new()
                .wrap_fn(move |req, srv| {
                    let started = Instant::now();
                    let route = req
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".to_owned());
                    // the API's queries are spans, children of the caller's trace if any
                    let mut span = if req.path().starts_with("/v1/") {
                        let header =
                            |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
                        let parent = header("traceparent")
                            .and_then(|tp| otel::Parent::from_w3c(tp, header("tracestate")));
                        let mut span =
                            otel::Span::start("serving query", otel::Kind::Server, parent.as_ref());
                        span.set("http.route", route.clone());
                        span
                    } else {
                        otel::Span::none()
                    };
                    // API keys and the rate limit guard the API, not the page or the operations
                    let denied = req
                        .path()
                        .starts_with("/v1/")
                        .then(|| access.check(req.request()).err())
                        .flatten();
                    let fut: futures::future::LocalBoxFuture<'static, _> = match denied {
                        Some(d) => {
                            let res = req.into_response(denied_response(&d));
                            Box::pin(async move { Ok(res) })
                        }
                        None => Box::pin(actix_web::dev::Service::call(srv, req)),
                    };
                    async move {
                        let res = fut.await;
                        if let Ok(res) = &res {
                            span.set(
                                "http.response.status_code",
                                i64::from(res.status().as_u16()),
                            );
                            if res.status().is_server_error() {
                                span.fail(res.status());
                            }
                        }
                        span.end();
                        let res = res?;
                        metrics::REQUEST_SECONDS
                            .with_label_values(&[route.as_str()])
                            .observe(started.elapsed().as_secs_f64());
                        metrics::REQUESTS
                            .with_label_values(&[route.as_str(), res.status().as_str()])
                            .inc();
                        Ok(res)
                    }
                })
                .configure(lambdalake_runtime::ops::routes(readiness.clone()))
                .configure(api(state.clone()))
        })
        .disable_signals();
        if let Some(w) = config.workers {
            server = server.workers(w.get());
        }
        let server = server
            .listen(listener)
            .map_err(|source| lambdalake_runtime::ops::ListenError {
                addr: config.listen,
                source,
            })?
            .run();
        tracing::info!(listen = %config.listen, port, "serving layer ready");
        Ok(Application {
            port,
            server,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.token()
    }

    /// Serve until SIGINT/SIGTERM (or the token).
    pub async fn run_until_stopped(self) -> Result<(), String> {
        let Application { server, tasks, .. } = self;
        tasks.cancel_on_signals();
        tasks.spawn_http(server);
        tasks
            .wait()
            .await
            .map_err(|(task, error)| format!("{task}: {error}"))
    }
}
