//! The lakehouse's metrics. The names are the ones `dashboards/` uses.

use std::sync::LazyLock;

use prometheus::{
    HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, register_histogram_vec,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
};

use crate::tables::Table;

/// Rows written, by table.
pub static ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_lakehouse_rows_total",
        "Rows written to the lakehouse's Delta tables (gold: windows inserted or updated)",
        &["table"]
    )
    .expect("metric registers once")
});

/// Commits by table and outcome (`ok`, `conflict`: another writer held the partition, `error`).
pub static COMMITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_lakehouse_commits_total",
        "Delta commits of the streaming pipeline, by table and outcome",
        &["table", "outcome"]
    )
    .expect("metric registers once")
});

/// Delta commit latency (write or MERGE, files and log entry), by table.
pub static COMMIT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "lambdalake_lakehouse_commit_duration_seconds",
        "Time to write one micro-batch to one Delta table and commit it",
        &["table"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    )
    .expect("metric registers once")
});

/// Time spent in each step of a micro-batch that is not a commit, and in the whole micro-batch:
/// `micro_batch` (from the trigger to the last commit), `card_history` (the fraud scorer's reads
/// of the cards' earlier payments), `dedupe_lookup` (event ids of older minutes read from
/// silver), `gold_repair` (events silver holds and a gold table missed, after a crash).
pub static STEP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "lambdalake_lakehouse_step_duration_seconds",
        "Time of one micro-batch, and of its steps that read tables rather than commit",
        &["step"],
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    )
    .expect("metric registers once")
});

/// Cards whose recent payments the fraud scorer holds (`crate::history`).
pub static HISTORY_CARDS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "lambdalake_lakehouse_card_history_cards",
        "Cards (per partition) whose recent payments the fraud scorer holds in memory"
    )
    .expect("metric registers once")
});

/// The steps of [`STEP_SECONDS`].
pub const STEPS: [&str; 4] = [
    "micro_batch",
    "card_history",
    "dedupe_lookup",
    "gold_repair",
];

/// Records not written to silver, by topic and reason (`duplicate`, `invalid`).
pub static DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_lakehouse_dropped_total",
        "Records kept in bronze only: duplicates of an event already in silver, or invalid events",
        &["topic", "reason"]
    )
    .expect("metric registers once")
});

/// Maintenance runs by operation (`optimize`, `vacuum`) and outcome (`ok`, `error`).
pub static MAINTENANCE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "lambdalake_lakehouse_maintenance_total",
        "Maintenance operations on the Delta tables, by operation and outcome",
        &["operation", "outcome"]
    )
    .expect("metric registers once")
});

/// The latest version of each table.
pub static VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdalake_lakehouse_table_version",
        "The latest Delta version of each table this instance committed or read",
        &["table"]
    )
    .expect("metric registers once")
});

/// Consumer lag per owned partition: the broker's high watermark (from librdkafka's statistics,
/// every second) minus the offset every table has committed for the partition.
pub static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "lambdalake_lakehouse_consumer_lag",
        "Records in the partition not committed to every lakehouse table yet",
        &["topic", "partition"]
    )
    .expect("metric registers once")
});

/// Every metric name, so a test can check `/metrics` shows them all.
pub const NAMES: [&str; 9] = [
    "lambdalake_lakehouse_consumer_lag",
    "lambdalake_lakehouse_card_history_cards",
    "lambdalake_lakehouse_step_duration_seconds",
    "lambdalake_lakehouse_rows_total",
    "lambdalake_lakehouse_commits_total",
    "lambdalake_lakehouse_commit_duration_seconds",
    "lambdalake_lakehouse_dropped_total",
    "lambdalake_lakehouse_maintenance_total",
    "lambdalake_lakehouse_table_version",
];

/// Register every metric, with its series at 0.
pub fn register() {
    LazyLock::force(&CONSUMER_LAG);
    LazyLock::force(&HISTORY_CARDS);
    for t in Table::ALL {
        ROWS.with_label_values(&[t.name()]);
        COMMIT_SECONDS.with_label_values(&[t.name()]);
        VERSION.with_label_values(&[t.name()]);
        for o in ["ok", "conflict", "error"] {
            COMMITS.with_label_values(&[t.name(), o]);
        }
    }
    for s in STEPS {
        STEP_SECONDS.with_label_values(&[s]);
    }
    for op in ["optimize", "vacuum"] {
        for o in ["ok", "error"] {
            MAINTENANCE.with_label_values(&[op, o]);
        }
    }
    LazyLock::force(&DROPPED);
}
