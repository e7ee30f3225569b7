use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use futures::StreamExt;
use lambdalake_events::body::{self, Framing};
use lambdalake_events::{Event, Payment, SensorReading};
use lambdalake_kafka::{ProduceError, TraceContext};
use lambdalake_runtime::Denied;
use lambdalake_runtime::otel::{self, Kind, Span};

use crate::State;
use crate::metrics;
use crate::report::{
    BROKER_UNAVAILABLE, IngestReport, ItemError, QUEUE_FULL, REFUSED, RequestError,
};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/sensor-readings",
        web::post().to(ingest::<SensorReading>),
    )
    .route("/v1/payments", web::post().to(ingest::<Payment>));
}

/// How long a request keeps retrying to enqueue while the producer queue is full.
const QUEUE_FULL_PATIENCE: Duration = Duration::from_millis(250);

#[tracing::instrument(skip_all, fields(kind = %E::KIND, items, accepted, status))]
async fn ingest<E: Event>(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, RequestError> {
    let started = Instant::now();
    let kind = E::KIND.as_str();
    // the request's span: a child of the client's trace when it sent one
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let parent = header(TraceContext::TRACEPARENT)
        .and_then(|tp| otel::Parent::from_w3c(tp, header(TraceContext::TRACESTATE)));
    let mut span = Span::start("ingest request", Kind::Server, parent.as_ref());
    span.set("http.route", req.match_pattern().unwrap_or_default());
    span.set("lambdalake.kind", kind);
    let result = handle::<E>(&req, payload, &state, &span).await;
    let (status, response) = match result {
        Ok(report) => {
            let status = report.status();
            span.set("lambdalake.accepted", report.accepted as i64);
            span.set("lambdalake.rejected", report.rejected as i64);
            span.set("lambdalake.failed", report.failed as i64);
            let span = tracing::Span::current();
            span.record("accepted", report.accepted);
            let mut response = HttpResponse::build(status);
            if status.as_u16() == 429 || status.as_u16() == 503 {
                let secs = state.retry_after.as_secs().max(1).to_string();
                if let Ok(v) = HeaderValue::from_str(&secs) {
                    response.insert_header((header::RETRY_AFTER, v));
                }
            }
            (status, Ok(response.json(report)))
        }
        Err(e) => {
            metrics::REJECTIONS
                .with_label_values(&[kind, request_reason(&e)])
                .inc();
            (actix_web::ResponseError::status_code(&e), Err(e))
        }
    };
    tracing::Span::current().record("status", status.as_u16());
    span.set("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() || status.is_client_error() {
        span.fail(status);
    }
    span.end();
    metrics::REQUESTS
        .with_label_values(&[kind, status.as_str()])
        .inc();
    metrics::REQUEST_SECONDS
        .with_label_values(&[kind])
        .observe(started.elapsed().as_secs_f64());
    response
}

fn request_reason(e: &RequestError) -> &'static str {
    match e {
        RequestError::Unauthorized(_) => "unauthorized",
        RequestError::RateLimited { .. } => "rate_limited",
        RequestError::UnsupportedMediaType(_) => "unsupported_media_type",
        RequestError::BodyTooLarge { .. } | RequestError::TooManyEvents { .. } => "too_large",
        RequestError::Body(_) | RequestError::Read(_) => "bad_body",
        RequestError::BodyTimeout { .. } => "body_timeout",
    }
}

fn framing(req: &HttpRequest) -> Result<Framing, RequestError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(Framing::Json);
    };
    let text = value.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = text.split(';').next().unwrap_or("").trim();
    match essence {
        "application/json" | "text/json" => Ok(Framing::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => Ok(Framing::Ndjson),
        _ => Err(RequestError::UnsupportedMediaType(
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        )),
    }
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::BytesMut, RequestError> {
    // a client that trickles its body holds a connection and a buffer: it has `timeout` in all
    let deadline = tokio::time::Instant::now() + timeout;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(RequestError::BodyTooLarge { limit });
    }
    // grow with what actually arrives, not with what the client declared
    let mut body =
        web::BytesMut::with_capacity(declared.unwrap_or(8192).min(limit).min(256 * 1024));
    loop {
        let next = tokio::time::timeout_at(deadline, payload.next())
            .await
            .map_err(|_| RequestError::BodyTimeout { timeout })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| RequestError::Read(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(RequestError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn handle<E: Event>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
    request_span: &Span,
) -> Result<IngestReport, RequestError> {
    state.access.check(req).map_err(|d| match d {
        Denied::Unauthorized(why) => RequestError::Unauthorized(why),
        Denied::RateLimited { retry_after } => RequestError::RateLimited { retry_after },
    })?;
    let framing = framing(req)?;
    let body = read_body(req, payload, state.max_body_bytes, state.body_timeout).await?;
    let items = body::split(&body, framing, state.max_events)?;
    tracing::Span::current().record("items", items.len());

    let kind = E::KIND.as_str();
    let topic = state.topics.for_kind(E::KIND);
    let mut report = IngestReport::default();

    // validate everything first: nothing is produced for an item that is invalid
    let mut valid = Vec::with_capacity(items.len());
    for item in &items {
        match E::from_json(item.json, &state.policy) {
            Ok(event) => valid.push((item, event)),
            Err(e) => {
                metrics::REJECTIONS
                    .with_label_values(&[kind, e.code.as_str()])
                    .inc();
                report
                    .errors
                    .push(ItemError::rejected(item.index, item.line, e));
            }
        }
    }
    report.rejected = report.errors.len();
    metrics::EVENTS
        .with_label_values(&[kind, "rejected"])
        .inc_by(report.rejected as u64);

    // admission: refuse the whole batch up front rather than half-enqueue it
    let producer = &state.producer;
    let queue_full = !valid.is_empty() && producer.in_flight() + valid.len() > producer.capacity();
    // the records carry the produce span's context (the consumers' spans are its children), or,
    // when tracing is off, the client's trace context as it came
    let mut produce_span = request_span.child("produce", Kind::Producer);
    produce_span.set("messaging.destination.name", topic.to_owned());
    let trace = match produce_span.w3c() {
        Some((tp, ts)) => TraceContext::from_http(Some(&tp), ts.as_deref()),
        None => {
            let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
            TraceContext::from_http(
                header(TraceContext::TRACEPARENT),
                header(TraceContext::TRACESTATE),
            )
        }
    };
    let batch = producer.batch().with_trace(trace.as_ref());
    let mut not_sent = Vec::new();
    if queue_full {
        not_sent.extend(valid.iter().map(|(item, _)| item.index));
    } else {
        let deadline = Instant::now() + QUEUE_FULL_PATIENCE;
        let mut iter = valid.iter();
        'items: for (item, event) in iter.by_ref() {
            loop {
                match batch.send(item.index, topic, event.key().as_bytes(), item.json) {
                    Ok(()) => continue 'items,
                    Err(ProduceError::QueueFull) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(ProduceError::QueueFull) => {
                        not_sent.push(item.index);
                        break 'items;
                    }
                    Err(e) => {
                        report.errors.push(failure(item.index, item.line, &e));
                        continue 'items;
                    }
                }
            }
        }
        not_sent.extend(iter.map(|(item, _)| item.index));
    }
    for index in not_sent {
        report
            .errors
            .push(failure(index, items[index].line, &ProduceError::QueueFull));
    }

    for (index, outcome) in batch.acked().await {
        match outcome {
            Ok(_) => report.accepted += 1,
            Err(e) => report.errors.push(failure(index, items[index].line, &e)),
        }
    }
    report.failed = report.errors.len() - report.rejected;
    produce_span.set("messaging.batch.message_count", valid.len() as i64);
    produce_span.set("lambdalake.acknowledged", report.accepted as i64);
    if report.failed > 0 {
        produce_span.fail(format!("{} events not persisted", report.failed));
    }
    produce_span.end();
    report.errors.sort_by_key(|e| e.index);
    metrics::EVENTS
        .with_label_values(&[kind, "accepted"])
        .inc_by(report.accepted as u64);
    metrics::EVENTS
        .with_label_values(&[kind, "failed"])
        .inc_by(report.failed as u64);
    metrics::PRODUCER_QUEUE_DEPTH.set(producer.in_flight() as i64);
    if report.failed > 0 {
        tracing::warn!(
            kind,
            failed = report.failed,
            accepted = report.accepted,
            "events not persisted"
        );
    }
    Ok(report)
}

fn failure(index: usize, line: Option<usize>, e: &ProduceError) -> ItemError {
    let code = match e {
        ProduceError::QueueFull => QUEUE_FULL,
        ProduceError::Unavailable(_) => BROKER_UNAVAILABLE,
        ProduceError::Refused(_) => REFUSED,
    };
    ItemError::failed(index, line, code, e.to_string(), e.is_retryable())
}
