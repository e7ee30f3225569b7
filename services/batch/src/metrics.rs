//! The batch layer's metrics. The names are the ones `dashboards/` uses.

use std::sync::LazyLock;

use prometheus::{
    GaugeVec, Histogram, IntCounter, IntCounterVec, IntGauge, register_gauge_vec,
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
};

/// Events archived to the master dataset, by kind (`sensor_reading`, `payment`, `fraud_label`,
/// `invalid`).
pub static ARCHIVED_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_batch_archived_events_total",
        "Records appended to the master dataset, by kind",
        &["kind"]
    )
    .expect("metric registers once")
});

/// Parquet files the archiver committed.
pub static ARCHIVER_FILES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "lambdalake_batch_archiver_files_total",
        "Parquet files committed to the master dataset"
    )
    .expect("metric registers once")
});

/// Small files merged by compaction.
pub static ARCHIVER_COMPACTED_FILES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "lambdalake_batch_archiver_compacted_files_total",
        "Small master-dataset files merged by compaction"
    )
    .expect("metric registers once")
});

/// Time to write one partition's files and commit its manifest.
pub static ARCHIVER_FLUSH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "lambdalake_batch_archiver_flush_duration_seconds",
        "Time to write one partition's buffered records and commit its manifest",
        vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("metric registers once")
});

/// Duration of a whole recompute run (scan, aggregate, train, publish).
pub static RUN_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "lambdalake_batch_run_duration_seconds",
        "Duration of one batch recompute run, scan to publish",
        vec![0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]
    )
    .expect("metric registers once")
});

/// Runs by outcome (`published`, `failed`).
pub static RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_batch_runs_total",
        "Batch recompute runs, by outcome",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Master-dataset rows the last run scanned.
pub static ROWS_SCANNED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "lambdalake_batch_rows_scanned",
        "Rows of the master dataset the last batch run scanned"
    )
    .expect("metric registers once")
});

/// The last published batch version.
pub static VERSION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "lambdalake_batch_version",
        "The last batch version published to Postgres"
    )
    .expect("metric registers once")
});

/// The event-time cutoff of the last published version, epoch seconds.
pub static CUTOFF: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "lambdalake_batch_cutoff_seconds",
        "Event-time cutoff covered by the last batch version, epoch seconds"
    )
    .expect("metric registers once")
});

/// Quality of the last trained fraud model on its held-out split (`precision`, `recall`, `auc`).
pub static MODEL_QUALITY: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "lambdalake_batch_model_quality",
        "Fraud model quality on the held-out split, by measure",
        &["measure"]
    )
    .expect("metric registers once")
});

/// Publications of profiles, baselines and the model to Redis for the speed layer, by outcome
/// (`written`, `failed`).
pub static REFERENCE_PUBLICATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_batch_reference_publications_total",
        "Publications of card profiles, device baselines and the fraud model to Redis, by outcome",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Every metric name, so a test can check `/metrics` shows them all.
pub const NAMES: [&str; 11] = [
    "lambdalake_batch_archived_events_total",
    "lambdalake_batch_archiver_files_total",
    "lambdalake_batch_archiver_compacted_files_total",
    "lambdalake_batch_archiver_flush_duration_seconds",
    "lambdalake_batch_run_duration_seconds",
    "lambdalake_batch_runs_total",
    "lambdalake_batch_rows_scanned",
    "lambdalake_batch_version",
    "lambdalake_batch_cutoff_seconds",
    "lambdalake_batch_model_quality",
    "lambdalake_batch_reference_publications_total",
];

/// Register every metric, with its series at 0.
pub fn register() {
    for kind in crate::dataset::Kind::ALL {
        ARCHIVED_EVENTS.with_label_values(&[kind.as_str()]);
    }
    LazyLock::force(&ARCHIVER_FILES);
    LazyLock::force(&ARCHIVER_COMPACTED_FILES);
    LazyLock::force(&ARCHIVER_FLUSH_SECONDS);
    LazyLock::force(&RUN_SECONDS);
    for o in ["published", "failed"] {
        RUNS.with_label_values(&[o]);
    }
    LazyLock::force(&ROWS_SCANNED);
    LazyLock::force(&VERSION);
    LazyLock::force(&CUTOFF);
    for m in ["precision", "recall", "auc"] {
        MODEL_QUALITY.with_label_values(&[m]);
    }
    for o in ["written", "failed"] {
        REFERENCE_PUBLICATIONS.with_label_values(&[o]);
    }
}
