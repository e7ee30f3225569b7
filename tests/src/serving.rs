//! The serving layer on the real stores: the speed layer and the archiver on one stream, batch
//! versions published from the archive, and `lambdalake-serving` merging the two on the cutoff.

use std::path::Path;
use std::time::Duration;

use lambdalake_events::{Event, Policy, SensorReading};
use lambdalake_views::table::{self, Keyed};
use lambdalake_views::{CardAgg, SensorAgg, WindowSpec};
use serde_json::{Value, json};

use crate::speed::{
    Kill, Setup, now_ms, payment_json, send_stream, sensor_json, spawn_archiver, stream_spaced,
    stream_until, wait_archived,
};
use crate::support::unique;

fn millis(rfc3339: &str) -> i64 {
    lambdalake_events::EventTime::parse_rfc3339("time", rfc3339)
        .expect("an RFC 3339 time")
        .millis()
}

fn rfc3339(ms: i64) -> String {
    lambdalake_serving::windows::rfc3339(ms)
}

/// Start a serving instance in-process; its base URL and stop token.
async fn serve(
    postgres_url: &str,
    redis_url: &str,
    prefix: &str,
) -> (String, lambdalake_serving::CancellationToken) {
    serve_topics(
        postgres_url,
        redis_url,
        prefix,
        "sensor-readings",
        "payments",
    )
    .await
}

/// [`serve`] watching the given event topics for the overview.
pub(crate) async fn serve_topics(
    postgres_url: &str,
    redis_url: &str,
    prefix: &str,
    sensor_topic: &str,
    payment_topic: &str,
) -> (String, lambdalake_serving::CancellationToken) {
    serve_with(
        postgres_url,
        redis_url,
        prefix,
        sensor_topic,
        payment_topic,
        &[],
    )
    .await
}

/// [`serve_topics`] with more arguments.
pub(crate) async fn serve_with(
    postgres_url: &str,
    redis_url: &str,
    prefix: &str,
    sensor_topic: &str,
    payment_topic: &str,
    extra: &[&str],
) -> (String, lambdalake_serving::CancellationToken) {
    let mut args = vec![
        "lambdalake-serving",
        "--topic-sensor-readings",
        sensor_topic,
        "--topic-payments",
        payment_topic,
        "--listen",
        "127.0.0.1:0",
        "--postgres-url",
        postgres_url,
        "--redis-url",
        redis_url,
        "--key-prefix",
        prefix,
        "--store-timeout",
        "500ms",
        "--workers",
        "2",
    ];
    args.extend_from_slice(extra);
    let config = <lambdalake_serving::Config as clap::Parser>::try_parse_from(args)
        .expect("valid arguments");
    let app = lambdalake_serving::Application::build(config)
        .await
        .expect("serving starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let token = app.shutdown_token();
    tokio::spawn(app.run_until_stopped());
    (base, token)
}

pub(crate) fn redis_url() -> String {
    std::env::var("LAMBDALAKE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:16379".to_owned())
}

/// The expected merged windows of `device`: every window of `events`, `batch` when it ends at or
/// before `cutoff`.
fn expected_sensor(
    events: &[SensorReading],
    device: &str,
    cutoff: Option<i64>,
) -> Vec<(i64, u64, f64, f64, f64, &'static str)> {
    let view: Keyed<SensorAgg> = table::sensor_windows(events, WindowSpec::ONE_MINUTE);
    view.iter()
        .filter(|((d, _), _)| d == device)
        .map(|((_, w), a)| {
            let source = if cutoff.is_some_and(|c| w.end.millis() <= c) {
                "batch"
            } else {
                "speed"
            };
            (
                w.start.millis(),
                a.count,
                a.temperature_c.min,
                a.temperature_c.max,
                a.temperature_c.sum_micro as f64 / 1_000_000.0 / a.count as f64,
                source,
            )
        })
        .collect()
}

fn got_sensor(body: &Value) -> Vec<(i64, u64, f64, f64, f64, &'static str)> {
    body["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .map(|w| {
            let start = millis(w["start"].as_str().unwrap());
            let end = millis(w["end"].as_str().unwrap());
            assert_eq!(end - start, 60_000, "{w}");
            let t = &w["temperature_c"];
            (
                start,
                w["count"].as_u64().unwrap(),
                t["min"].as_f64().unwrap(),
                t["max"].as_f64().unwrap(),
                t["mean"].as_f64().unwrap(),
                match w["source"].as_str().unwrap() {
                    "batch" => "batch",
                    "speed" => "speed",
                    other => panic!("source {other}"),
                },
            )
        })
        .collect()
}

/// `v` conforms to `schema` (OpenAPI 3.1 / JSON Schema subset utoipa emits: `$ref`, `type` (one or
/// a list), `properties`/`required` — an undeclared field is an error —, `items`, `enum`,
/// `oneOf`/`anyOf`/`allOf`).
pub(crate) fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], v, at);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema[key].as_array() {
            if options.iter().any(|o| conforms(doc, o, v, at).is_ok()) {
                return Ok(());
            }
            return Err(format!("{at}: {v} matches no {key} branch"));
        }
    }
    if let Some(all) = schema["allOf"].as_array() {
        for o in all {
            conforms(doc, o, v, at)?;
        }
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(v)
    {
        return Err(format!("{at}: {v} not in {options:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "null" => v.is_null(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not {types:?}"));
        }
    }
    if let (Some(obj), Some(props)) = (v.as_object(), schema["properties"].as_object()) {
        for (k, val) in obj {
            let Some(p) = props.get(k) else {
                return Err(format!("{at}: field {k:?} is not in the document"));
            };
            conforms(doc, p, val, &format!("{at}.{k}"))?;
        }
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap_or_default();
            if !obj.contains_key(r) {
                return Err(format!("{at}: required field {r:?} missing"));
            }
        }
    }
    if let (Some(items), Some(schema_items)) = (v.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conforms(doc, schema_items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The answer `body` (status `status`) of `path` (as the document names it) conforms to the
/// served OpenAPI document.
pub(crate) async fn check_openapi(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    status: u16,
    body: &Value,
) {
    let (s, doc) = get(http, &format!("{base}/openapi.json")).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let schema = &doc["paths"][path]["get"]["responses"][status.to_string()]["content"]["application/json"]
        ["schema"];
    assert!(schema.is_object(), "{path} {status} is not documented");
    if let Err(e) = conforms(&doc, schema, body, path) {
        panic!("{path} {status}: the answer does not match /openapi.json: {e}\n{body}");
    }
}

pub(crate) async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

/// The value of one series in a `/metrics` page.
async fn metric(http: &reqwest::Client, base: &str, series: &str) -> f64 {
    let page = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{series} not in /metrics: {page}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn merged_windows_come_once_from_the_right_side_of_the_cutoff_across_version_switches() {
    let mut s = Setup::new();
    let dir = std::env::temp_dir().join(unique("ll-master"));
    let (archiver, log) = spawn_archiver(&s, &dir);
    let _guard = Kill(vec![s.spawn(&[]), archiver]);
    // 20 minutes of on-time events ending 3 minutes ago (the second stream below fills the
    // last 3 minutes, so the cutoff moves by 2 minutes or more)
    let first_end = now_ms() - 180_000;
    let (sensors, payments) = stream_until(4_000, 5, 0.02, 300, first_end);
    send_stream(&mut s, &sensors, &payments, 400, Duration::from_millis(10)).await;
    s.wait_applied(Duration::from_secs(90));
    // late readings of d0, 8 minutes behind the stream: the speed layer drops them, the archive
    // keeps them
    let late_ts = first_end - 8 * 60_000;
    let late: Vec<String> = (0..5)
        .map(|i| sensor_json(&format!("late{i}"), "d0", late_ts + i * 1_000, 99.5, 1.0))
        .collect();
    let late_events: Vec<SensorReading> = late
        .iter()
        .map(|j| SensorReading::from_json(j.as_bytes(), &Policy::stored()).unwrap())
        .collect();
    let records: Vec<(String, Vec<u8>)> = late
        .iter()
        .map(|j| ("d0".to_owned(), j.clone().into_bytes()))
        .collect();
    let topic = s.sensor.clone();
    s.produce(&topic, &records).await;
    s.wait_applied(Duration::from_secs(60));
    wait_archived(&s, &dir, &log).await;

    let url = crate::batch::fresh_database().await;
    let config = crate::batch::config_for(&dir, &url, &s.prefix, &[]);
    let v1 = lambdalake_batch::run_once(&config).await.expect("run 1");
    let cutoff1 = v1.cutoff_ms.expect("cutoff");
    assert!(
        cutoff1 > late_ts + 60_000,
        "the late minute is before the cutoff"
    );

    let (base, token) = serve_topics(&url, &redis_url(), &s.prefix, &s.sensor, &s.payment).await;
    let http = reqwest::Client::new();
    let from = rfc3339(now_ms() - 40 * 60_000);
    let to = rfc3339(now_ms() + 5 * 60_000);
    let mut all: Vec<SensorReading> = s.sensors.clone();
    all.extend(late_events.iter().cloned());
    for device in ["d0", "d1", "d4"] {
        let (status, body) = get(
            &http,
            &format!("{base}/v1/lambda/sensors/{device}/windows?from={from}&to={to}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        check_openapi(
            &http,
            &base,
            "/v1/lambda/sensors/{device_id}/windows",
            200,
            &body,
        )
        .await;
        assert_eq!(body["batch"]["version"], v1.version);
        assert_eq!(body["batch"]["cutoff"], rfc3339(cutoff1));
        assert_eq!(body["degraded"], serde_json::json!([]));
        assert!(body["speed"]["freshness_ms"].as_i64().is_some(), "{body}");
        let got = got_sensor(&body);
        let want = expected_sensor(&all, device, Some(cutoff1));
        assert_eq!(got, want, "device {device}");
        assert!(got.iter().any(|w| w.5 == "batch") && got.iter().any(|w| w.5 == "speed"));
    }
    // the late readings count in the merged view, not in the speed view of their minute
    let minute = late_ts.div_euclid(60_000) * 60_000;
    let (_, body) = get(
        &http,
        &format!("{base}/v1/lambda/sensors/d0/windows?from={from}&to={to}"),
    )
    .await;
    let merged = got_sensor(&body);
    let speed_only = expected_sensor(&s.sensors, "d0", None);
    let m = merged
        .iter()
        .find(|w| w.0 == minute)
        .expect("the late minute");
    let sp = speed_only.iter().find(|w| w.0 == minute);
    assert_eq!(m.3, 99.5, "the batch repaired the window");
    assert!(sp.is_none_or(|w| w.1 < m.1), "{sp:?} vs {m:?}");

    // card windows, same rule
    let cards: Keyed<CardAgg> = table::card_windows(&s.payments, WindowSpec::ONE_MINUTE);
    let (status, body) = get(
        &http,
        &format!("{base}/v1/lambda/cards/c2/windows?from={from}&to={to}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    check_openapi(
        &http,
        &base,
        "/v1/lambda/cards/{card_id}/windows",
        200,
        &body,
    )
    .await;
    let want: Vec<(String, u64, f64, f64, &str)> = cards
        .iter()
        .filter(|((c, _), _)| c == "c2")
        .map(|((_, w), a)| {
            (
                rfc3339(w.start.millis()),
                a.count,
                a.amount_sum_cents as f64 / 100.0,
                a.amount_max_cents as f64 / 100.0,
                if w.end.millis() <= cutoff1 {
                    "batch"
                } else {
                    "speed"
                },
            )
        })
        .collect();
    let got: Vec<(String, u64, f64, f64, &str)> = body["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["start"].as_str().unwrap().to_owned(),
                w["count"].as_u64().unwrap(),
                w["amount"]["sum"].as_f64().unwrap(),
                w["amount"]["max"].as_f64().unwrap(),
                if w["source"] == "batch" {
                    "batch"
                } else {
                    "speed"
                },
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(!got.is_empty());

    // more events move the cutoff; a new version is published while clients query: every
    // answer is whole — each window once, from one side, with its exact value
    // (strictly after the first stream's events, so none is late for the speed layer)
    let t = first_end + 5_000;
    let more_s: Vec<String> = (0..600)
        .map(|i| {
            let ts = t + i * 280;
            // the last one overheats: an alert
            let temp = if i == 599 { 95.5 } else { 20.25 };
            sensor_json(&format!("b-s{i}"), &format!("d{}", i % 5), ts, temp, 1.5)
        })
        .collect();
    let more_p: Vec<String> = (0..600)
        .map(|i| {
            payment_json(
                &format!("b-p{i}"),
                &format!("c{}", i % 5),
                t + i * 280,
                1_250,
                "m1",
                5411,
                "FR",
                48.0,
                2.0,
            )
        })
        .collect();
    send_stream(&mut s, &more_s, &more_p, 300, Duration::from_millis(10)).await;
    s.wait_applied(Duration::from_secs(60));
    wait_archived(&s, &dir, &log).await;
    let mut all: Vec<SensorReading> = s.sensors.clone();
    all.extend(late_events.iter().cloned());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (http, base, from, to, all, stop) = (
                http.clone(),
                base.clone(),
                from.clone(),
                to.clone(),
                all.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut versions = std::collections::BTreeSet::new();
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let (status, body) = get(
                        &http,
                        &format!("{base}/v1/lambda/sensors/d0/windows?from={from}&to={to}"),
                    )
                    .await;
                    assert_eq!(status, 200);
                    let cutoff = body["batch"]["cutoff"].as_str().map(millis);
                    assert_eq!(got_sensor(&body), expected_sensor(&all, "d0", cutoff));
                    versions.insert(body["batch"]["version"].as_i64().unwrap());
                }
                versions
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let v2 = lambdalake_batch::run_once(&config).await.expect("run 2");
    assert!(v2.cutoff_ms.expect("cutoff") > cutoff1, "the cutoff moved");
    // two more publications (same cutoff) while the readers go on: each switch is a chance to
    // catch a half-seen version
    for _ in 0..2 {
        lambdalake_batch::run_once(&config).await.expect("run");
    }
    // serving reads the latest version again after LAMBDALAKE_SERVING_VERSION_TTL (250 ms)
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    for r in readers {
        let versions = r.await.expect("reader");
        assert!(versions.contains(&(v2.version + 2)), "{versions:?}");
    }
    // the readers' repeated queries were answered from the batch-window cache (and were exact)
    let hits = metric(
        &http,
        &base,
        r#"lambdalake_serving_batch_cache_total{result="hit"}"#,
    )
    .await;
    assert!(hits > 0.0, "no cache hit");
    // the overview: everything produced is counted, and both layers caught up with it
    let produced: i64 = s.ends.values().sum();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, body) = get(&http, &format!("{base}/v1/overview")).await;
        assert_eq!(status, 200, "{body}");
        if body["ingest"]["events_total"] == produced && body["ingest"]["rate_per_s"].is_number() {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    check_openapi(&http, &base, "/v1/overview", 200, &body).await;
    assert_eq!(body["speed"]["lag_records"], 0, "{body}");
    assert_eq!(body["batch"]["lag_records"], 0, "{body}");
    assert_eq!(body["batch"]["version"], v2.version + 2, "{body}");
    assert!(body["speed"]["freshness_ms"].as_i64().is_some(), "{body}");
    assert!(
        body["batch"]["freshness_ms"].as_i64().unwrap() >= 30_000,
        "{body}"
    );
    assert_eq!(body["degraded"], serde_json::json!([]));

    // the alerts feed: newest event time first, `since` and `limit` honoured
    let overheat_ts = t + 599 * 280;
    let (status, body) = get(
        &http,
        &format!("{base}/v1/alerts?since={}&limit=50", rfc3339(overheat_ts)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    check_openapi(&http, &base, "/v1/alerts", 200, &body).await;
    let list = body["alerts"].as_array().expect("alerts");
    assert!(
        list.iter().any(|a| a["alert_id"] == "sensor:b-s599"
            && a["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "overheating")),
        "{body}"
    );
    assert!(
        list.iter()
            .all(|a| a["ts"].as_i64().unwrap() >= overheat_ts)
    );
    // `until` bounds the other end, inclusive
    let (status, body) = get(
        &http,
        &format!(
            "{base}/v1/alerts?since={0}&until={0}&limit=50",
            rfc3339(overheat_ts)
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let list = body["alerts"].as_array().expect("alerts");
    assert!(!list.is_empty(), "{body}");
    assert!(
        list.iter()
            .all(|a| a["ts"].as_i64().unwrap() == overheat_ts)
    );
    let (_, body) = get(&http, &format!("{base}/v1/alerts?limit=3")).await;
    let ts: Vec<i64> = body["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ts"].as_i64().unwrap())
        .collect();
    assert!(ts.len() <= 3 && !ts.is_empty(), "{body}");
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first: {ts:?}");
    token.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// With Redis unreachable the batch windows are served and `degraded` says the speed views are
/// missing; with Postgres unreachable, the reverse. Never a 500.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_is_reported_not_hidden() {
    let mut s = Setup::new();
    let dir = std::env::temp_dir().join(unique("ll-master"));
    let (archiver, log) = spawn_archiver(&s, &dir);
    let _guard = Kill(vec![s.spawn(&[]), archiver]);
    let (sensors, payments) = stream_spaced(1_500, 3, 0.0, 600);
    send_stream(&mut s, &sensors, &payments, 500, Duration::from_millis(10)).await;
    s.wait_applied(Duration::from_secs(60));
    wait_archived(&s, &dir, &log).await;
    let url = crate::batch::fresh_database().await;
    let run = lambdalake_batch::run_once(&crate::batch::config_for(&dir, &url, &s.prefix, &[]))
        .await
        .expect("run");
    let cutoff = run.cutoff_ms.unwrap();
    let http = reqwest::Client::new();
    let from = rfc3339(now_ms() - 30 * 60_000);
    let to = rfc3339(now_ms());

    // c1's newest payment, as the speed layer scored it
    let newest_c1 = s
        .payments
        .iter()
        .filter(|p| p.card_id.as_str() == "c1")
        .max_by_key(|p| p.ts.millis())
        .expect("payments of c1")
        .event_id
        .as_str()
        .to_owned();

    // Redis down (nothing listens on port 1)
    let (base, token) = serve_topics(
        &url,
        "redis://127.0.0.1:1",
        &s.prefix,
        &s.sensor,
        &s.payment,
    )
    .await;
    let (status, body) = get(&http, &format!("{base}/v1/lambda/cards/c1/risk")).await;
    assert_eq!(status, 200, "{body}");
    check_openapi(&http, &base, "/v1/lambda/cards/{card_id}/risk", 200, &body).await;
    assert_eq!(body["degraded"], json!(["speed"]));
    assert_eq!(body["latest_score"], Value::Null);
    let c1_payments: std::collections::BTreeSet<&str> = s
        .payments
        .iter()
        .filter(|p| p.card_id.as_str() == "c1")
        .map(|p| p.event_id.as_str())
        .collect();
    assert_eq!(body["profile"]["payments"], c1_payments.len(), "{body}");
    let (status, body) = get(
        &http,
        &format!("{base}/v1/lambda/sensors/d1/windows?from={from}&to={to}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    check_openapi(
        &http,
        &base,
        "/v1/lambda/sensors/{device_id}/windows",
        200,
        &body,
    )
    .await;
    assert_eq!(body["degraded"], serde_json::json!(["speed"]));
    let want: Vec<_> = expected_sensor(&s.sensors, "d1", Some(cutoff))
        .into_iter()
        .filter(|w| w.5 == "batch")
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got_sensor(&body), want);
    // /metrics names every series; the answer is counted by route, and as degraded
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in lambdalake_serving::metrics::NAMES {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains(r#"lambdalake_serving_requests_total{route="/v1/lambda/sensors/{device_id}/windows",status="200"}"#),
        "{metrics}"
    );
    let degraded_speed = metrics
        .lines()
        .find(|l| l.starts_with(r#"lambdalake_serving_degraded_total{store="speed"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the degraded series");
    assert!(degraded_speed >= 1.0, "{metrics}");
    token.cancel();

    // Postgres down
    let bad_pg = "postgres://lambdalake:lambdalake@127.0.0.1:1/lambdalake";
    let (base, token) = serve_topics(bad_pg, &redis_url(), &s.prefix, &s.sensor, &s.payment).await;
    let (status, body) = get(&http, &format!("{base}/v1/lambda/cards/c1/risk")).await;
    assert_eq!(status, 200, "{body}");
    check_openapi(&http, &base, "/v1/lambda/cards/{card_id}/risk", 200, &body).await;
    assert_eq!(body["degraded"], json!(["batch"]));
    assert_eq!(body["profile"], Value::Null);
    assert_eq!(body["model"], Value::Null);
    assert_eq!(
        body["latest_score"]["event_id"],
        newest_c1.as_str(),
        "{body}"
    );
    let (status, body) = get(
        &http,
        &format!("{base}/v1/lambda/sensors/d1/windows?from={from}&to={to}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    check_openapi(
        &http,
        &base,
        "/v1/lambda/sensors/{device_id}/windows",
        200,
        &body,
    )
    .await;
    assert_eq!(body["degraded"], serde_json::json!(["batch"]));
    assert_eq!(body["batch"]["version"], Value::Null);
    let want = expected_sensor(&s.sensors, "d1", None);
    assert_eq!(got_sensor(&body), want);
    token.cancel();
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

/// `/risk`: the card's profile and the model of the latest batch version, and the speed layer's
/// score of the card's newest payment — computed with that model and profile, as checked here
/// with the shared functions.
#[tokio::test(flavor = "multi_thread")]
async fn a_cards_risk_joins_the_batch_profile_and_model_with_the_speed_layers_latest_score() {
    use lambdalake_batch::archiver::append;
    use lambdalake_batch::dataset::{Dataset, Kind};
    use lambdalake_events::Payment;
    use lambdalake_views::fraud::{self, CardProfile, Seen};

    let mut s = Setup::new();
    let url = crate::batch::fresh_database().await;
    let dir = std::env::temp_dir().join(unique("ll-master"));
    let dataset = Dataset::open(&dir).unwrap();
    let (history, labels) = lambdalake_batch::testing::fraud_history(7, 60, 40);
    let numbered = |records: Vec<Vec<u8>>| -> Vec<(i64, Option<i64>, Vec<u8>)> {
        records
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i as i64, None, r))
            .collect()
    };
    append(&dataset, "p", 0, Kind::Payment, numbered(history)).unwrap();
    append(&dataset, "l", 0, Kind::FraudLabel, numbered(labels)).unwrap();
    let config = crate::batch::config_for(&dir, &url, &s.prefix, &["--model-min-frauds", "10"]);
    let run = lambdalake_batch::run_once(&config).await.expect("run");
    let trained = run.model.clone().expect("a model is trained");
    // the speed layer starts after the publication: it scores with the model and the profiles
    let _guard = Kill(vec![s.spawn(&[])]);
    // c4 lives in Germany (fraud_history); its newest payment is a large one in Brazil, sent
    // before an older one (out of order: the newest by event time is the one shown)
    let t = now_ms() - 120_000;
    let sent = [
        payment_json("r1", "c4", t, 5_000, "m1", 5411, "DE", 52.52, 13.40),
        payment_json(
            "r3",
            "c4",
            t + 40_000,
            900_000,
            "m2",
            7995,
            "BR",
            -23.55,
            -46.63,
        ),
        payment_json(
            "r2",
            "c4",
            t + 20_000,
            7_000,
            "m1",
            5411,
            "DE",
            52.52,
            13.40,
        ),
    ];
    s.send_payments(&sent).await;
    s.wait_applied(Duration::from_secs(60));

    let (base, token) = serve_topics(&url, &redis_url(), &s.prefix, &s.sensor, &s.payment).await;
    let http = reqwest::Client::new();
    let (status, body) = get(&http, &format!("{base}/v1/lambda/cards/c4/risk")).await;
    assert_eq!(status, 200, "{body}");
    check_openapi(&http, &base, "/v1/lambda/cards/{card_id}/risk", 200, &body).await;
    assert_eq!(body["card_id"], "c4");
    assert_eq!(body["degraded"], json!([]));
    assert_eq!(body["batch"]["version"], run.version);

    // the profile: version 1's row
    let client = lambdalake_batch::connect(&url).await.unwrap();
    let row = client
        .query_one(
            "select payments, amount_mean_cents, amount_std_cents, home_country, countries, mccs,
                    active_hours
             from card_profiles where version = 1 and card_id = 'c4'",
            &[],
        )
        .await
        .unwrap();
    let profile = CardProfile {
        amount_mean_cents: row.get(1),
        amount_std_cents: row.get(2),
        home_country: row.get(3),
        countries: row.get(4),
    };
    assert_eq!(profile.home_country, "DE");
    let p = &body["profile"];
    assert_eq!(p["payments"], row.get::<_, i64>(0));
    assert_eq!(p["amount_mean"], profile.amount_mean_cents / 100.0);
    assert_eq!(p["amount_std"], profile.amount_std_cents / 100.0);
    assert_eq!(p["home_country"], "DE");
    assert_eq!(p["countries"], json!(profile.countries));
    assert_eq!(p["mccs"], json!(row.get::<_, Vec<i32>>(5)));
    assert_eq!(p["active_hours"], json!(row.get::<_, Vec<i16>>(6)));

    // the model
    let m = &body["model"];
    assert_eq!(m["name"], "batch-v1");
    assert_eq!(m["trained_on"], trained.trained_on);
    assert_eq!(m["held_out"], trained.held_out);
    assert_eq!(m["auc"], json!(trained.auc));
    assert_eq!(m["precision"], json!(trained.precision));
    assert_eq!(m["recall"], json!(trained.recall));

    // the latest score: r3, scored by the model with c4's profile and the history it had when
    // it was applied (r1: r2 came after it in the partition)
    let parse = |j: &str| Payment::from_json(j.as_bytes(), &Policy::stored()).unwrap();
    let (r1, r3) = (parse(&sent[0]), parse(&sent[1]));
    let features = fraud::features(&r3, &[Seen::from(&r1)], Some(&profile));
    let want = fraud::score(&features, Some(&trained.model));
    let l = &body["latest_score"];
    assert_eq!(l["event_id"], "r3", "{body}");
    assert_eq!(l["txn_id"], "t-r3");
    assert_eq!(l["ts"], rfc3339(t + 40_000));
    assert_eq!(l["model_version"], "batch-v1");
    assert_eq!(want.by, "batch-v1");
    let got = l["score"].as_f64().unwrap();
    assert!((got - want.value).abs() < 1e-12, "{got} vs {}", want.value);
    assert_eq!(l["features"]["recent_count"], 2);
    assert_eq!(l["features"]["new_country"], true);
    assert!(
        l["reasons"]
            .as_array()
            .unwrap()
            .contains(&json!("new_country")),
        "{body}"
    );
    assert!(body["speed"]["freshness_ms"].as_i64().is_some());

    // a card nobody knows: nothing, and said so by nulls, not an error
    let (status, body) = get(&http, &format!("{base}/v1/lambda/cards/nobody/risk")).await;
    assert_eq!(status, 200, "{body}");
    check_openapi(&http, &base, "/v1/lambda/cards/{card_id}/risk", 200, &body).await;
    assert_eq!(body["profile"], Value::Null);
    assert_eq!(body["latest_score"], Value::Null);
    assert_eq!(body["model"]["name"], "batch-v1");
    token.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_queries_get_a_precise_400() {
    let (base, token) = serve(
        "postgres://lambdalake:lambdalake@127.0.0.1:1/x",
        "redis://127.0.0.1:1",
        &unique("it-serving"),
    )
    .await;
    let http = reqwest::Client::new();
    let long = "d".repeat(300);
    let cases = [
        (format!("/v1/lambda/sensors/{long}/windows"), "device_id"),
        (
            "/v1/lambda/sensors/d1/windows?from=yesterday".to_owned(),
            "from",
        ),
        (
            "/v1/lambda/sensors/d1/windows?from=2026-01-01T10:00:00Z&to=2026-01-01T09:00:00Z"
                .to_owned(),
            "must be before",
        ),
        (
            "/v1/lambda/cards/c1/windows?from=2026-01-01T00:00:00Z&to=2026-01-03T00:00:00Z"
                .to_owned(),
            "longer than the maximum of 1day",
        ),
        (
            "/v1/lambda/cards/c1/windows?since=2026-01-01T00:00:00Z".to_owned(),
            "unknown query parameter(s): since",
        ),
        ("/v1/lambda/cards/%20c1/windows".to_owned(), "card_id"),
        ("/v1/alerts?limit=0".to_owned(), "limit"),
        ("/v1/alerts?since=soon".to_owned(), "since"),
        (
            "/v1/alerts?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z".to_owned(),
            "since must not be after until",
        ),
        ("/v1/lakehouse/alerts?limit=1001".to_owned(), "limit"),
        (
            "/v1/lakehouse/alerts?kind=fraud".to_owned(),
            "unknown query parameter(s): kind",
        ),
        (format!("/v1/lambda/cards/{long}/risk"), "card_id"),
        (
            "/v1/lambda/cards/c1/risk?as_of=2026-01-01T00:00:00Z".to_owned(),
            "unknown query parameter(s): as_of",
        ),
    ];
    for (path, expect) in cases {
        let (status, body) = get(&http, &format!("{base}{path}")).await;
        assert_eq!(status, 400, "{path}: {body}");
        let documented = if path.starts_with("/v1/alerts") {
            "/v1/alerts"
        } else if path.starts_with("/v1/lakehouse/alerts") {
            "/v1/lakehouse/alerts"
        } else if path.ends_with("/risk") || path.contains("/risk?") {
            "/v1/lambda/cards/{card_id}/risk"
        } else if path.starts_with("/v1/lambda/cards") {
            "/v1/lambda/cards/{card_id}/windows"
        } else {
            "/v1/lambda/sensors/{device_id}/windows"
        };
        check_openapi(&http, &base, documented, 400, &body).await;
        let msg = body["error"].as_str().expect("an error message");
        assert!(msg.contains(expect), "{path}: {msg}");
    }
    // the lakehouse twins: no tables there → a 200 that says gold is missing; bad time travel
    // → a precise 400
    let (status, body) = get(&http, &format!("{base}/v1/lakehouse/sensors/d1/windows")).await;
    assert_eq!(status, 200, "{body}");
    check_openapi(
        &http,
        &base,
        "/v1/lakehouse/sensors/{device_id}/windows",
        200,
        &body,
    )
    .await;
    assert_eq!(body["degraded"], json!(["gold"]));
    assert_eq!(body["windows"], json!([]));
    for (q, expect) in [
        ("version=-1", "version"),
        ("version=x", "version"),
        ("as_of=yesterday", "as_of"),
        ("version=1&as_of=2026-01-01T00:00:00Z", "not both"),
        ("since=1", "unknown query parameter(s): since"),
    ] {
        let (status, body) = get(&http, &format!("{base}/v1/lakehouse/cards/c1/windows?{q}")).await;
        assert_eq!(status, 400, "{q}: {body}");
        check_openapi(
            &http,
            &base,
            "/v1/lakehouse/cards/{card_id}/windows",
            400,
            &body,
        )
        .await;
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(expect), "{q}: {msg}");
    }
    let (status, body) = get(
        &http,
        &format!("{base}/v1/lakehouse/tables/gold_card_windows/history?limit=0"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(
        &http,
        &format!("{base}/v1/lakehouse/tables/gold_card_windows/history"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    check_openapi(
        &http,
        &base,
        "/v1/lakehouse/tables/{name}/history",
        503,
        &body,
    )
    .await;
    // the check is not vacuous: an undeclared field, a wrong type, a missing field fail it
    let (_, doc) = get(&http, &format!("{base}/openapi.json")).await;
    let error = json!({"$ref": "#/components/schemas/ErrorBody"});
    let windows = json!({"$ref": "#/components/schemas/SensorWindows"});
    assert!(conforms(&doc, &error, &json!({"error": "x", "extra": 1}), "e").is_err());
    assert!(conforms(&doc, &error, &json!({"error": 5}), "e").is_err());
    assert!(conforms(&doc, &error, &json!({}), "e").is_err());
    let w = json!({"device_id": "d", "windows": [{"start": "s", "end": "e", "count": 1,
        "temperature_c": {"min": 1.0, "max": 1.0, "mean": 1.0},
        "vibration_mm_s": {"min": 1.0, "max": 1.0, "mean": 1.0}, "source": "cache"}],
        "batch": {"version": null, "cutoff": null}, "speed": {"freshness_ms": null}, "degraded": []});
    let e = conforms(&doc, &windows, &w, "w").expect_err("an unknown source");
    assert!(e.contains("source"), "{e}");
    // the service stays healthy
    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_a_rate_limit_guard_the_api_not_the_page() {
    let (base, token) = serve_with(
        "postgres://lambdalake:lambdalake@127.0.0.1:1/x",
        "redis://127.0.0.1:1",
        &unique("it-serving"),
        "sensor-readings",
        "payments",
        &[
            "--api-key",
            "sv-key-41d0,sv-key-83aa",
            // a token every 5 s: none comes back while the test spends the burst
            "--rate-limit",
            "0.2",
            "--rate-limit-burst",
            "2",
        ],
    )
    .await;
    let http = reqwest::Client::new();
    // a query that needs no store: a 400 means it passed the guard
    let path = format!("{base}/v1/lambda/sensors/d1/windows?from=yesterday");
    let call = |key: Option<&str>| {
        let mut r = http.get(&path);
        if let Some(k) = key {
            r = r.header("authorization", format!("Bearer {k}"));
        }
        r.send()
    };
    for key in [None, Some("sv-key-41d"), Some("nope")] {
        let r = call(key).await.unwrap();
        assert_eq!(r.status(), 401, "{key:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.unwrap();
        check_openapi(
            &http,
            &base,
            "/v1/lambda/sensors/{device_id}/windows",
            401,
            &body,
        )
        .await;
        assert!(
            body["error"].as_str().unwrap().starts_with("unauthorized"),
            "{body}"
        );
        assert!(!body.to_string().contains("sv-key"), "keys never echoed");
    }
    for _ in 0..2 {
        assert_eq!(call(Some("sv-key-41d0")).await.unwrap().status(), 400);
    }
    let limited = call(Some("sv-key-41d0")).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    check_openapi(
        &http,
        &base,
        "/v1/lambda/sensors/{device_id}/windows",
        429,
        &body,
    )
    .await;
    // the other key, the page, the document and the operations endpoints are not limited
    assert_eq!(call(Some("sv-key-83aa")).await.unwrap().status(), 400);
    for open in ["/", "/openapi.json", "/healthz", "/metrics"] {
        let status = http
            .get(format!("{base}{open}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{open}");
    }
    let metrics = crate::support::metrics_page(&base).await;
    assert!(!metrics.contains("sv-key"), "no key in the metrics");
    token.cancel();
}
