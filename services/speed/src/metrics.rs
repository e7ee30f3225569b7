//! The speed layer's metrics. The names are the ones `dashboards/` uses.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, register_histogram,
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec,
};

/// Records consumed, by topic and outcome: `applied` (counted in the views), `duplicate` (an
/// event id already counted), `late` (behind the watermark, sent to the late-events topic),
/// `invalid` (not a valid event, sent to the dead-letter topic).
pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_speed_events_total",
        "Records consumed by the speed layer, by topic and outcome",
        &["topic", "outcome"]
    )
    .expect("metric registers once")
});

/// Late events, by topic (also counted in `lambdalake_speed_events_total{outcome="late"}`).
pub static LATE_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_speed_late_events_total",
        "Events behind the watermark, routed to the late-events topic, by topic",
        &["topic"]
    )
    .expect("metric registers once")
});

/// How far behind the watermark late events were.
pub static LATENESS_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "lambdalake_speed_lateness_seconds",
        "How far behind the watermark a late event was, by topic",
        &["topic"],
        vec![0.1, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0]
    )
    .expect("metric registers once")
});

/// Consumer lag per partition: high watermark − the next offset the speed layer will read into a
/// micro-batch (the applier may still be writing the last ones).
pub static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdalake_speed_consumer_lag",
        "Records in the partition the speed layer has not read into a micro-batch yet",
        &["topic", "partition"]
    )
    .expect("metric registers once")
});

/// Processing time minus the operator watermark, by topic, in seconds.
pub static WATERMARK_DELAY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdalake_speed_watermark_delay_seconds",
        "Wall-clock time minus the speed layer's event-time watermark, by topic",
        &["topic"]
    )
    .expect("metric registers once")
});

/// Records per micro-batch.
pub static BATCH_RECORDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "lambdalake_speed_batch_records",
        "Records in one micro-batch",
        vec![
            1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0
        ]
    )
    .expect("metric registers once")
});

/// From the start of a micro-batch's processing to one partition's share of it applied in Redis
/// (planning, side outputs, the queue to the applier and the script).
pub static APPLY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "lambdalake_speed_apply_duration_seconds",
        "From the start of a micro-batch to one partition's share of it applied in Redis",
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0
        ]
    )
    .expect("metric registers once")
});

/// Redis write latency of one partition's apply script.
pub static REDIS_WRITE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "lambdalake_speed_redis_write_duration_seconds",
        "Latency of one partition's atomic apply script in Redis",
        vec![
            0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
        ]
    )
    .expect("metric registers once")
});

/// Broker append time of a record to the moment its window is visible in Redis.
pub static FRESHNESS_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "lambdalake_speed_window_freshness_seconds",
        "Time from a record's Kafka timestamp to its window being updated in Redis, by topic",
        &["topic"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0
        ]
    )
    .expect("metric registers once")
});

/// Alerts raised, by kind (`fraud`, `sensor`).
pub static ALERTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_speed_alerts_total",
        "Alerts raised by the speed layer, by kind",
        &["kind"]
    )
    .expect("metric registers once")
});

/// Apply outcomes that were not a plain success, by reason (`skip`, `mismatch`, `redis_error`,
/// `kafka_error`).
pub static APPLY_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_speed_apply_retries_total",
        "Micro-batch partitions not applied at the first try, by reason",
        &["reason"]
    )
    .expect("metric registers once")
});

/// At an assignment under `--delivery at-most-once` or `at-least-once`: the records between the
/// offset stored with the views and the group's offset committed to Kafka, `skipped` (committed
/// but never applied: lost) or `repeated` (applied but not committed: read again). Always 0 with
/// exactly-once, which starts at the stored offset.
pub static RESUMED_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_speed_resumed_records_total",
        "Records skipped or read again at an assignment, against the offset stored with the views",
        &["topic", "outcome"]
    )
    .expect("metric registers once")
});

/// Partition assignments and revocations.
pub static REBALANCES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_speed_rebalances_total",
        "Consumer group rebalances seen, by kind (assign, revoke)",
        &["kind"]
    )
    .expect("metric registers once")
});

/// The fraud model in use (1 for the current version label).
pub static MODEL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdalake_speed_fraud_model",
        "The fraud model the speed layer scores with (value 1 for the version in use)",
        &["version"]
    )
    .expect("metric registers once")
});

/// Card memories (open sessions, fraud history) held in memory, over every partition; bounded
/// by `--card-cache`.
pub static CARD_CACHE_HELD: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "lambdalake_speed_card_cache_cards",
        "Card memories (open sessions, fraud history) the speed layer holds in memory"
    )
    .expect("metric registers once")
});

/// Card memories dropped from memory to stay within `--card-cache` (Redis keeps them).
pub static CARD_CACHE_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "lambdalake_speed_card_cache_evictions_total",
        "Card memories dropped from memory to stay within --card-cache (Redis keeps them)"
    )
    .expect("metric registers once")
});

/// Card memories read from Redis because a paying card was not held.
pub static CARD_CACHE_READS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "lambdalake_speed_card_cache_reads_total",
        "Card memories read from Redis because a paying card was not held in memory"
    )
    .expect("metric registers once")
});

/// Every metric name, for the docs and the dashboard tests.
pub const NAMES: [&str; 17] = [
    "lambdalake_speed_events_total",
    "lambdalake_speed_late_events_total",
    "lambdalake_speed_lateness_seconds",
    "lambdalake_speed_consumer_lag",
    "lambdalake_speed_watermark_delay_seconds",
    "lambdalake_speed_batch_records",
    "lambdalake_speed_apply_duration_seconds",
    "lambdalake_speed_redis_write_duration_seconds",
    "lambdalake_speed_window_freshness_seconds",
    "lambdalake_speed_alerts_total",
    "lambdalake_speed_apply_retries_total",
    "lambdalake_speed_rebalances_total",
    "lambdalake_speed_fraud_model",
    "lambdalake_speed_resumed_records_total",
    "lambdalake_speed_card_cache_cards",
    "lambdalake_speed_card_cache_evictions_total",
    "lambdalake_speed_card_cache_reads_total",
];

/// Register every metric now, so `/metrics` lists them before the first event.
pub fn register() {
    LazyLock::force(&EVENTS);
    LazyLock::force(&LATE_EVENTS);
    LazyLock::force(&LATENESS_SECONDS);
    LazyLock::force(&CONSUMER_LAG);
    LazyLock::force(&WATERMARK_DELAY);
    LazyLock::force(&BATCH_RECORDS);
    LazyLock::force(&APPLY_SECONDS);
    LazyLock::force(&REDIS_WRITE_SECONDS);
    LazyLock::force(&FRESHNESS_SECONDS);
    LazyLock::force(&ALERTS);
    LazyLock::force(&APPLY_RETRIES);
    LazyLock::force(&REBALANCES);
    LazyLock::force(&MODEL);
    LazyLock::force(&RESUMED_RECORDS);
    LazyLock::force(&CARD_CACHE_HELD);
    LazyLock::force(&CARD_CACHE_EVICTIONS);
    LazyLock::force(&CARD_CACHE_READS);
    // series that exist from the start at 0, so dashboards and alerts see them before the first
    // occurrence
    for reason in ["skip", "mismatch", "redis_error", "kafka_error"] {
        APPLY_RETRIES.with_label_values(&[reason]);
    }
    for kind in ["assign", "revoke"] {
        REBALANCES.with_label_values(&[kind]);
    }
    for kind in ["fraud", "sensor"] {
        ALERTS.with_label_values(&[kind]);
    }
}

/// The per-topic series, at 0, for the topics the service reads.
pub fn register_topics(topics: &[&str]) {
    for topic in topics {
        for outcome in ["applied", "duplicate", "late", "invalid"] {
            EVENTS.with_label_values(&[topic, outcome]);
        }
        LATE_EVENTS.with_label_values(&[topic]);
        for outcome in ["skipped", "repeated"] {
            RESUMED_RECORDS.with_label_values(&[topic, outcome]);
        }
        LATENESS_SECONDS.with_label_values(&[topic]);
        FRESHNESS_SECONDS.with_label_values(&[topic]);
    }
}
