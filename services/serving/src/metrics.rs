//! The serving layer's metrics. The names are the ones `dashboards/` uses.

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec, register_histogram_vec, register_int_counter_vec};

/// Answers by route (the matched pattern) and status code.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_serving_requests_total",
        "HTTP answers of the serving API, by route pattern and status",
        &["route", "status"]
    )
    .expect("metric registers once")
});

/// Time to answer, by route.
pub static REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "lambdalake_serving_request_duration_seconds",
        "Time to answer one request of the serving API, by route pattern",
        &["route"],
        vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
        ]
    )
    .expect("metric registers once")
});

/// Answers that lacked a store (`batch`, `speed`, `kafka`).
pub static DEGRADED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_serving_degraded_total",
        "Answers given without one of the stores, by missing store",
        &["store"]
    )
    .expect("metric registers once")
});

/// Batch-window reads answered from memory (`hit`) or Postgres (`miss`).
pub static BATCH_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_serving_batch_cache_total",
        "Batch-window reads of the serving layer, answered from its cache (hit) or Postgres (miss)",
        &["result"]
    )
    .expect("metric registers once")
});

/// Every metric name, so a test can check `/metrics` shows them all.
pub const NAMES: [&str; 4] = [
    "lambdalake_serving_requests_total",
    "lambdalake_serving_request_duration_seconds",
    "lambdalake_serving_degraded_total",
    "lambdalake_serving_batch_cache_total",
];

/// Register every metric, with its series at 0.
pub fn register() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_SECONDS);
    for s in ["batch", "speed", "kafka"] {
        DEGRADED.with_label_values(&[s]);
    }
    for r in ["hit", "miss"] {
        BATCH_CACHE.with_label_values(&[r]);
    }
}

/// Count the stores an answer lacked.
pub fn degraded(stores: &[String]) {
    for s in stores {
        DEGRADED.with_label_values(&[s.as_str()]).inc();
    }
}
