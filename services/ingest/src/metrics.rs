//! Ingest's metrics. The names are the ones `dashboards/` uses.

use std::sync::LazyLock;

use prometheus::{
    HistogramVec, IntCounterVec, IntGauge, register_histogram_vec, register_int_counter_vec,
    register_int_gauge,
};

/// Events by kind and outcome: `accepted` (acknowledged by the broker), `rejected` (invalid),
/// `failed` (valid, but not persisted: queue full or broker unavailable).
pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_ingest_events_total",
        "Events received by ingest, by kind and outcome",
        &["kind", "outcome"]
    )
    .expect("metric registers once")
});

/// Rejected events by kind and reason (the validation error code).
pub static REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_ingest_rejections_total",
        "Events rejected by validation, by kind and reason",
        &["kind", "reason"]
    )
    .expect("metric registers once")
});

/// Requests by kind and HTTP status.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_ingest_requests_total",
        "Ingest HTTP requests, by kind and status",
        &["kind", "status"]
    )
    .expect("metric registers once")
});

/// Request duration, body read to answer, by kind.
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "lambdalake_ingest_request_duration_seconds",
        "Ingest request duration (body read to broker acknowledgement), by kind",
        &["kind"],
        vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    )
    .expect("metric registers once")
});

/// Messages in the producer queue, not yet acknowledged.
pub static PRODUCER_QUEUE_DEPTH: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "lambdalake_ingest_producer_queue_depth",
        "Messages waiting in the Kafka producer queue"
    )
    .expect("metric registers once")
});

/// Names of every metric above, for the test that scrapes `/metrics`.
pub const NAMES: [&str; 5] = [
    "lambdalake_ingest_events_total",
    "lambdalake_ingest_rejections_total",
    "lambdalake_ingest_requests_total",
    "lambdalake_ingest_request_duration_seconds",
    "lambdalake_ingest_producer_queue_depth",
];

/// Make sure every metric is registered (so `/metrics` lists them before the first request).
pub fn register() {
    for kind in lambdalake_events::EventKind::ALL {
        for outcome in ["accepted", "rejected", "failed"] {
            EVENTS.with_label_values(&[kind.as_str(), outcome]);
        }
    }
    LazyLock::force(&REJECTIONS);
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_SECONDS);
    LazyLock::force(&PRODUCER_QUEUE_DEPTH);
}
