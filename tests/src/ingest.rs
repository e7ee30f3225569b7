//! Ingest on the real broker: what is accepted arrives exactly once with the right key; what is
//! rejected says why and never reaches the topic.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Ingest, java_partition, partition_by_key, read_topic};

const SETTLE: Duration = Duration::from_secs(2);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn reading(i: usize) -> Value {
    json!({"event_id": format!("r-{i}"), "device_id": format!("dev-{}", i % 7), "site": "lyon",
           "ts": now_ms() - 1000, "temperature_c": 20.0 + (i % 10) as f64, "vibration_mm_s": 0.5})
}

fn payment(i: usize) -> Value {
    json!({"event_id": format!("p-{i}"), "txn_id": format!("t-{i}"), "card_id": format!("card-{}", i % 5),
           "merchant_id": "m-1", "mcc": "5411", "amount": 10.5 + i as f64, "currency": "EUR", "country": "FR",
           "lat": 45.7, "lon": 4.8, "ts": "2026-01-01T10:00:00Z"})
}

fn ndjson(items: &[Value]) -> String {
    items.iter().map(|v| v.to_string() + "\n").collect()
}

async fn post(
    url: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("answer is JSON: {text}"));
    (status, value)
}

fn ids(records: &[crate::support::Record]) -> Vec<String> {
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r.value["event_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Post `items` as one object, then a JSON array, then NDJSON; every request must accept all its
/// items.
async fn post_every_form(url: &str, items: &[Value], object_content_type: &str) {
    let k = items.len() / 3 + 1;
    let forms = [
        (object_content_type, items[0].to_string(), 1),
        (
            "application/json",
            Value::from(items[1..k].to_vec()).to_string(),
            k - 1,
        ),
        ("application/x-ndjson", ndjson(&items[k..]), items.len() - k),
    ];
    for (content_type, body, n) in forms {
        let (status, answer) = post(url, content_type, body).await;
        let errors = answer["errors"].as_array().map(Vec::len);
        assert_eq!(
            (status, answer["accepted"].as_u64(), errors),
            (StatusCode::OK, Some(n as u64), Some(0)),
            "{answer}"
        );
    }
}

/// The topic holds exactly `items`, each once, keyed by `key_field`, forwarded byte for byte,
/// and a key always lands on one partition.
fn assert_topic_holds(topic: &str, items: &[Value], key_field: &str) {
    let got = read_topic(topic, items.len(), SETTLE);
    let mut want: Vec<String> = items
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_owned())
        .collect();
    want.sort();
    assert_eq!(ids(&got), want, "{topic} holds exactly the accepted events");
    for r in &got {
        assert_eq!(
            r.key,
            r.value[key_field].as_str().unwrap(),
            "keyed by {key_field}"
        );
        let original = items
            .iter()
            .find(|v| v["event_id"] == r.value["event_id"])
            .unwrap();
        assert_eq!(
            r.raw,
            original.to_string().into_bytes(),
            "forwarded unchanged"
        );
    }
    let by_key = partition_by_key(&got);
    for (key, partition) in &by_key {
        assert_eq!(
            *partition,
            java_partition(key.as_bytes(), 4),
            "{key} is where the Java client puts it"
        );
    }
    let partitions: BTreeSet<i32> = by_key.into_values().collect();
    assert!(
        partitions.len() > 1,
        "several keys spread over the 4 partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_form_arrives_once_with_its_key() {
    let ingest = Ingest::start(&[]).await;
    let readings: Vec<Value> = (0..151).map(reading).collect();
    post_every_form(
        &format!("{}/v1/sensor-readings", ingest.url),
        &readings,
        "application/json",
    )
    .await;
    let payments: Vec<Value> = (0..40).map(payment).collect();
    post_every_form(
        &format!("{}/v1/payments", ingest.url),
        &payments,
        "application/json; charset=utf-8",
    )
    .await;

    assert_topic_holds(&ingest.sensor_topic, &readings, "device_id");
    assert_topic_holds(&ingest.payment_topic, &payments, "card_id");
    ingest.stop().await;
}

/// One malformed case: the body, and the status, code and field expected for item 0.
struct Case {
    name: &'static str,
    content_type: &'static str,
    body: String,
    status: StatusCode,
    code: &'static str,
    field: Option<&'static str>,
}

fn with(mut v: Value, field: &str, value: Value) -> Value {
    v[field] = value;
    v
}

fn without(mut v: Value, field: &str) -> Value {
    v.as_object_mut().unwrap().remove(field);
    v
}

fn cases() -> Vec<Case> {
    let item = |name, v: Value, code, field| Case {
        name,
        content_type: "application/json",
        body: v.to_string(),
        status: StatusCode::BAD_REQUEST,
        code,
        field,
    };
    let whole = |name, content_type, body: &str, status, code| Case {
        name,
        content_type,
        body: body.to_owned(),
        status,
        code,
        field: None,
    };
    vec![
        whole(
            "bad json",
            "application/json",
            r#"{"event_id": "x", "#,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        whole(
            "bad json array",
            "application/json",
            r#"[{"event_id": "x"}, {"#,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        whole(
            "empty body",
            "application/json",
            "",
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
        whole(
            "whitespace body",
            "application/x-ndjson",
            " \n\n ",
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
        whole(
            "empty array",
            "application/json",
            "[]",
            StatusCode::BAD_REQUEST,
            "no_events",
        ),
        whole(
            "a string",
            "application/json",
            r#""hello""#,
            StatusCode::BAD_REQUEST,
            "invalid_type",
        ),
        whole(
            "form content type",
            "application/x-www-form-urlencoded",
            "a=b",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        item(
            "wrong type",
            with(reading(0), "temperature_c", json!("hot")),
            "invalid_type",
            Some("temperature_c"),
        ),
        item(
            "null field",
            with(reading(0), "device_id", Value::Null),
            "invalid_type",
            Some("device_id"),
        ),
        item(
            "missing field",
            without(reading(0), "site"),
            "missing_field",
            Some("site"),
        ),
        item(
            "temperature too high",
            with(reading(0), "temperature_c", json!(250)),
            "out_of_range",
            Some("temperature_c"),
        ),
        item(
            "negative vibration",
            with(reading(0), "vibration_mm_s", json!(-1)),
            "out_of_range",
            Some("vibration_mm_s"),
        ),
        item(
            "future ts",
            with(reading(0), "ts", json!(now_ms() + 3_600_000)),
            "future_timestamp",
            Some("ts"),
        ),
        item(
            "ts in seconds",
            with(reading(0), "ts", json!(now_ms() / 1000)),
            "out_of_range",
            Some("ts"),
        ),
        item(
            "bad ts text",
            with(reading(0), "ts", json!("25/11/2026")),
            "invalid_value",
            Some("ts"),
        ),
        item(
            "empty event id",
            with(reading(0), "event_id", json!("")),
            "invalid_value",
            Some("event_id"),
        ),
        item(
            "long event id",
            with(reading(0), "event_id", json!("x".repeat(129))),
            "invalid_value",
            Some("event_id"),
        ),
        item(
            "control char in id",
            with(reading(0), "device_id", json!("a\nb")),
            "invalid_value",
            Some("device_id"),
        ),
        item("not an object item", json!([42]), "invalid_type", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_precise_errors_and_never_reach_the_topic() {
    let ingest =
        Ingest::start(&["--max-body-bytes", "4096", "--max-events-per-request", "20"]).await;
    let url = format!("{}/v1/sensor-readings", ingest.url);
    for case in cases() {
        let (status, answer) = post(&url, case.content_type, case.body.clone()).await;
        assert_eq!(status, case.status, "{}: {answer}", case.name);
        let (code, field) = match answer.get("errors") {
            Some(errors) => {
                assert_eq!(answer["accepted"], 0, "{}: {answer}", case.name);
                (errors[0]["code"].clone(), errors[0]["field"].clone())
            }
            None => (answer["error"].clone(), Value::Null),
        };
        assert_eq!(code, case.code, "{}: {answer}", case.name);
        assert_eq!(
            field,
            case.field.map_or(Value::Null, Value::from),
            "{}: {answer}",
            case.name
        );
    }

    // limits: body size and events per request
    let big = ndjson(&(0..60).map(reading).collect::<Vec<_>>());
    assert!(big.len() > 4096);
    let (status, answer) = post(&url, "application/x-ndjson", big).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")),
        "{answer}"
    );
    let many = ndjson(&(0..21).map(|i| json!({"event_id": i})).collect::<Vec<_>>());
    let (status, answer) = post(&url, "application/x-ndjson", many).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_many_events")),
        "{answer}"
    );

    // a mixed batch: the valid items are accepted, each invalid one is reported by index
    let mixed = vec![
        reading(1000),
        with(reading(1001), "temperature_c", json!(-100)),
        reading(1002),
        without(reading(1003), "ts"),
        reading(1004),
    ];
    let mut body = ndjson(&mixed);
    body.push_str("{not json}\n");
    let (status, answer) = post(&url, "application/x-ndjson", body).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(3), Some(3)),
        "{answer}"
    );
    let errors: Vec<(u64, u64, &str, Value)> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["line"].as_u64().unwrap(),
                e["code"].as_str().unwrap(),
                e["field"].clone(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, 2, "out_of_range", json!("temperature_c")),
            (3, 4, "missing_field", json!("ts")),
            (5, 6, "invalid_json", Value::Null),
        ]
    );

    let got = read_topic(&ingest.sensor_topic, 3, SETTLE);
    assert_eq!(
        ids(&got),
        ["r-1000", "r-1002", "r-1004"],
        "only the valid items of the mixed batch reached the topic"
    );
    assert!(read_topic(&ingest.payment_topic, 0, Duration::from_millis(500)).is_empty());
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_are_validated() {
    let ingest = Ingest::start(&[]).await;
    let url = format!("{}/v1/payments", ingest.url);
    let bad = [
        (
            with(payment(0), "amount", json!(12.345)),
            "invalid_value",
            "amount",
        ),
        (
            with(payment(0), "amount", json!(0)),
            "out_of_range",
            "amount",
        ),
        (
            with(payment(0), "amount", json!(1_000_000.01)),
            "out_of_range",
            "amount",
        ),
        (
            with(payment(0), "currency", json!("EURO")),
            "invalid_value",
            "currency",
        ),
        (
            with(payment(0), "country", json!("XX")),
            "invalid_value",
            "country",
        ),
        (with(payment(0), "lat", json!(91)), "out_of_range", "lat"),
        (with(payment(0), "lon", json!(181)), "out_of_range", "lon"),
        (
            with(payment(0), "mcc", json!("54x1")),
            "invalid_value",
            "mcc",
        ),
        (without(payment(0), "card_id"), "missing_field", "card_id"),
    ];
    let body = Value::from(bad.iter().map(|(v, _, _)| v.clone()).collect::<Vec<_>>()).to_string();
    let (status, answer) = post(&url, "application/json", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    for (i, (_, code, field)) in bad.iter().enumerate() {
        let e = &answer["errors"][i];
        assert_eq!(
            (e["index"].as_u64(), e["code"].as_str(), e["field"].as_str()),
            (Some(i as u64), Some(*code), Some(*field)),
            "{e}"
        );
        assert!(!e["reason"].as_str().unwrap().is_empty());
    }
    assert!(read_topic(&ingest.payment_topic, 0, Duration::from_millis(500)).is_empty());
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_enforced() {
    let ingest = Ingest::start(&["--api-key", "s3cret-one, s3cret-two"]).await;
    let url = format!("{}/v1/sensor-readings", ingest.url);
    let client = reqwest::Client::new();
    let send = |auth: Option<&'static str>| {
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .body(reading(1).to_string());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    for auth in [
        None,
        Some("Bearer nope"),
        Some("Basic czNjcmV0LW9uZQ=="),
        Some("Bearer s3cret-on"),
    ] {
        let r = send(auth).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(!body.to_string().contains("s3cret"), "keys never echoed");
    }
    // keys are trimmed ("k1, k2"), the scheme is case-insensitive
    for auth in [
        "Bearer s3cret-one",
        "Bearer s3cret-two",
        "bearer s3cret-two",
    ] {
        assert_eq!(
            send(Some(auth)).await.unwrap().status(),
            StatusCode::OK,
            "{auth}"
        );
    }
    // health and metrics stay open
    assert_eq!(
        client
            .get(format!("{}/healthz", ingest.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(read_topic(&ingest.sensor_topic, 3, SETTLE).len(), 3);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_is_rate_limited_on_its_own_and_never_shows_in_metrics() {
    // a token every 5 s: the burst is used up long before one comes back, even when the
    // machine is loaded (at 1 token/s, three slow acknowledgements let a fourth request in)
    let ingest = Ingest::start(&[
        "--api-key",
        "sk-live-7f3a,sk-live-9b2c",
        "--rate-limit",
        "0.2",
        "--rate-limit-burst",
        "3",
    ])
    .await;
    let url = format!("{}/v1/sensor-readings", ingest.url);
    let client = reqwest::Client::new();
    let send = |key: &'static str, i: usize| {
        client
            .post(&url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(reading(i).to_string())
            .send()
    };
    for i in 0..3 {
        assert_eq!(
            send("sk-live-7f3a", i).await.unwrap().status(),
            StatusCode::OK
        );
    }
    let limited = send("sk-live-7f3a", 3).await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    // the other key has its own bucket
    assert_eq!(
        send("sk-live-9b2c", 4).await.unwrap().status(),
        StatusCode::OK
    );
    // a token comes back after five seconds
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    assert_eq!(
        send("sk-live-7f3a", 5).await.unwrap().status(),
        StatusCode::OK
    );
    // what was refused was not produced: 3 + 1 + 1 events
    assert_eq!(read_topic(&ingest.sensor_topic, 5, SETTLE).len(), 5);
    let metrics = crate::support::metrics_page(&ingest.url).await;
    assert!(metrics.contains(r#"reason="rate_limited""#), "{metrics}");
    assert!(!metrics.contains("sk-live"), "no key in the metrics");
    ingest.stop().await;
}

#[test]
fn listening_beyond_loopback_needs_keys_or_an_explicit_choice() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        let mut all = vec!["lambdalake-ingest"];
        all.extend_from_slice(args);
        lambdalake_ingest::Config::try_parse_from(all)
            .unwrap()
            .check()
    };
    let problems = parse(&["--listen", "0.0.0.0:8080"]).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("LAMBDALAKE_INGEST_API_KEYS")),
        "{problems:?}"
    );
    assert!(parse(&["--listen", "0.0.0.0:8080", "--api-key", "k"]).is_ok());
    assert!(parse(&["--listen", "0.0.0.0:8080", "--allow-anonymous", "true"]).is_ok());
    assert!(parse(&["--listen", "127.0.0.1:8080"]).is_ok());
    assert!(parse(&["--rate-limit", "NaN"]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_408_while_others_are_served() {
    use std::io::{Read, Write};
    let ingest = Ingest::start(&["--body-timeout", "8s"]).await;
    let addr = ingest.url.trim_start_matches("http://").to_owned();
    let body = reading(1).to_string();
    // slow clients: headers and a few bytes, then the rest of the body never comes
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let slow: Vec<std::thread::JoinHandle<(String, Instant)>> = (0..20)
        .map(|_| {
            let (addr, body, started) = (addr.clone(), body.clone(), started_tx.clone());
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                write!(
                    s,
                    "POST /v1/sensor-readings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                    body.len(),
                    &body[..10]
                )
                .unwrap();
                let _ = started.send(());
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                (answer, Instant::now())
            })
        })
        .collect();
    for _ in 0..20 {
        started_rx.recv().unwrap();
    }
    // meanwhile, valid requests are served: all of them answered before any slow client is
    // timed out (an order, not a duration: the machine may be loaded)
    let url = format!("{}/v1/sensor-readings", ingest.url);
    let answers = futures::future::join_all(
        (0..20).map(|i| post(&url, "application/json", reading(100 + i).to_string())),
    )
    .await;
    let served_at = Instant::now();
    for (status, answer) in answers {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    for t in slow {
        let (answer, at) = t.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("body_timeout"), "{answer}");
        assert!(
            served_at <= at,
            "a valid request waited for a slow client's timeout"
        );
    }
    assert_eq!(read_topic(&ingest.sensor_topic, 20, SETTLE).len(), 20);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_and_a_full_queue_gives_429() {
    // nothing listens on port 1: the producer can never deliver
    let ingest = Ingest::start(&[
        "--kafka-brokers",
        "127.0.0.1:1",
        "--create-topics",
        "false",
        "--kafka-delivery-timeout",
        "2s",
        "--kafka-queue-max-messages",
        "10",
        "--max-events-per-request",
        "10",
    ])
    .await;
    let url = format!("{}/v1/sensor-readings", ingest.url);
    let batch = ndjson(&(0..8).map(reading).collect::<Vec<_>>());
    let first = tokio::spawn({
        let (url, batch) = (url.clone(), batch.clone());
        async move { post(&url, "application/x-ndjson", batch).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    // 8 messages wait in a 10-message queue: 8 more do not fit
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/x-ndjson")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["failed"].as_u64()),
        (Some(0), Some(8)),
        "{answer}"
    );
    assert!(
        answer["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["code"] == "queue_full" && e["retryable"] == true)
    );

    let (status, answer) = first.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["failed"].as_u64()),
        (Some(0), Some(8)),
        "{answer}"
    );
    assert!(
        answer["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["code"] == "broker_unavailable" && e["retryable"] == true)
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let ingest = Ingest::start(&[]).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", ingest.url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), StatusCode::OK);
    let ready = get("/readyz").await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(ready.text().await.unwrap().contains("kafka: ok"));
    post(
        &format!("{}/v1/sensor-readings", ingest.url),
        "application/json",
        with(reading(1), "site", json!("")).to_string(),
    )
    .await;
    post(
        &format!("{}/v1/sensor-readings", ingest.url),
        "application/json",
        reading(2).to_string(),
    )
    .await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in lambdalake_ingest::metrics::NAMES {
        assert!(metrics.contains(name), "/metrics lists {name}");
    }
    let sample = |needle: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no sample {needle} in\n{metrics}"))
    };
    assert!(
        sample(
            r#"lambdalake_ingest_rejections_total{kind="sensor_reading",reason="invalid_value"}"#
        ) >= 1.0
    );
    assert!(
        sample(r#"lambdalake_ingest_events_total{kind="sensor_reading",outcome="accepted"}"#)
            >= 1.0
    );
    let mut by_status = HashMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("lambdalake_ingest_requests_total{"))
    {
        by_status.insert(line.to_owned(), ());
    }
    assert!(!by_status.is_empty());
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_what_was_accepted() {
    let ingest = Ingest::start(&["--kafka-linger", "200ms"]).await;
    let url = format!("{}/v1/sensor-readings", ingest.url);
    let (status, _) = post(
        &url,
        "application/x-ndjson",
        ndjson(&(0..500).map(reading).collect::<Vec<_>>()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let topic = ingest.sensor_topic.clone();
    ingest.stop().await;
    assert_eq!(read_topic(&topic, 500, SETTLE).len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_travels_in_record_headers() {
    let ingest = Ingest::start(&[]).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = reqwest::Client::new()
        .post(format!("{}/v1/sensor-readings", ingest.url))
        .header("content-type", "application/x-ndjson")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=abc")
        .body(ndjson(&[reading(1), reading(2)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // a malformed traceparent is ignored, not an error
    let response = reqwest::Client::new()
        .post(format!("{}/v1/sensor-readings", ingest.url))
        .header("traceparent", "not-a-trace")
        .body(reading(3).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let got = read_topic(&ingest.sensor_topic, 3, SETTLE);
    assert_eq!(got.len(), 3);
    for r in &got {
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if r.value["event_id"] == "r-3" {
            assert_eq!(header("traceparent"), None);
        } else {
            assert_eq!(header("traceparent"), Some(traceparent.as_bytes().to_vec()));
            assert_eq!(header("tracestate"), Some(b"vendor=abc".to_vec()));
        }
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_a_clear_4xx_and_the_service_stays_healthy() {
    let ingest = Ingest::start(&["--max-body-bytes", "1048576"]).await;
    let url = format!("{}/v1/sensor-readings", ingest.url);
    let digits = "9".repeat(10_000);
    let mut invalid_utf8 = reading(1).to_string().into_bytes();
    let at = invalid_utf8.windows(4).position(|w| w == b"lyon").unwrap();
    invalid_utf8[at] = 0xff;
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "invalid utf-8",
            "application/json",
            invalid_utf8,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "10,000-digit number",
            "application/json",
            reading(1)
                .to_string()
                .replace(
                    "\"vibration_mm_s\":0.5",
                    &format!("\"vibration_mm_s\":{digits}"),
                )
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "10,000-character id",
            "application/json",
            with(reading(1), "event_id", json!(digits))
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            "NaN",
            "application/json",
            reading(1)
                .to_string()
                .replace("\"vibration_mm_s\":0.5", "\"vibration_mm_s\":NaN")
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "a number beyond f64 (1e400)",
            "application/json",
            reading(1)
                .to_string()
                .replace("\"vibration_mm_s\":0.5", "\"vibration_mm_s\":1e400")
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "an integer beyond i64 as the timestamp",
            "application/json",
            with(reading(1), "ts", json!(u64::MAX))
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "out_of_range",
        ),
        (
            "truncated NDJSON",
            "application/x-ndjson",
            reading(1).to_string().as_bytes()[..40].to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "wrong content type",
            "text/csv",
            b"a,b\n1,2\n".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (name, content_type, body, status, code) in cases {
        let (got, answer) = post(&url, content_type, body).await;
        assert_eq!(got, status, "{name}: {answer}");
        let got_code = answer
            .get("error")
            .cloned()
            .unwrap_or_else(|| answer["errors"][0]["code"].clone());
        assert_eq!(got_code, code, "{name}: {answer}");
    }

    // deep nesting: refused, never a crash (the array's item is an array; the object's unknown
    // field is skipped, or stopped by the parser's depth limit)
    for (content_type, body) in [
        (
            "application/json",
            format!("{}{}", "[".repeat(400_000), "]".repeat(400_000)),
        ),
        (
            "application/x-ndjson",
            format!("{{\"x\":{}{}}}\n", "[".repeat(400_000), "]".repeat(400_000)),
        ),
    ] {
        let (status, answer) = post(&url, content_type, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let code = answer["errors"][0]["code"].as_str().unwrap();
        assert!(
            ["invalid_type", "invalid_json", "missing_field"].contains(&code),
            "{answer}"
        );
    }

    // 100 MB streamed without a Content-Length: refused once the limit is crossed
    let chunk = vec![b' '; 1024 * 1024];
    let stream =
        futures::stream::iter((0..100).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    match response {
        Ok(r) => assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE),
        // the server may close the connection while the client is still sending
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }

    // still healthy, still serving
    let (status, answer) = post(&url, "application/json", reading(2).to_string()).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{answer}"
    );
    assert_eq!(
        read_topic(&ingest.sensor_topic, 1, SETTLE).len(),
        1,
        "only the valid event reached the topic"
    );
    ingest.stop().await;
}
