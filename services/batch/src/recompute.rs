//! The recompute: every batch view, from scratch, over one snapshot of the master dataset, with
//! Polars (lazy). The semantics are those of `lambdalake_views` — a test compares the two on the
//! same events — applied to whole tables:
//! - an event id counts once per kind (the copy with the smallest (topic, partition, offset) is
//!   kept; a client retry sends identical copies);
//! - no event is late here: every archived event counts, which is how the batch layer repairs
//!   what the speed layer dropped behind its watermark;
//! - sums are exact: each value is rounded to micro-units (half away from zero, as
//!   `lambdalake_views::Stat` does) and summed as integers; `-0.0` counts as `0.0`;
//! - 1-minute tumbling windows `[start, start + 1m)`, 5-minute windows sliding by 1 minute (each
//!   the merge of five 1-minute aggregates), 30-minute-gap card sessions `[first, last + gap)`.
//!
//! Only windows that end at or before the **cutoff** are published: the smallest, over the
//! partitions archived, of their largest event time, minus the allowed lateness, floored to
//! the minute. A later event of a partition is at most that late, so the windows before the
//! cutoff are final (except for events later than the lateness, which the next run counts).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lambdalake_views::Sessions;
use polars::prelude::*;

use crate::dataset::{Kind, Snapshot};

/// The views of one run, with what they cover.
#[derive(Debug)]
pub struct Recomputed {
    /// `device_id, view ("1m" | "5m1m"), start_ms, end_ms, count, temperature_{min,max,sum_micro},
    /// vibration_mm_s_{min,max,sum_micro}`.
    pub sensor_windows: DataFrame,
    /// `card_id, start_ms, end_ms, count, amount_sum_cents, amount_max_cents, merchants, countries`.
    pub card_windows: DataFrame,
    /// Same columns as `card_windows`, one row per closed session.
    pub card_sessions: DataFrame,
    /// `device_id, hour (null: all hours), count, temperature_{mean,std}, vibration_{mean,std}`.
    pub device_baselines: DataFrame,
    /// `card_id, payments, amount_mean_cents, amount_std_cents, home_country, countries, mccs,
    /// active_hours`, over the card's payments not labelled fraud.
    pub card_profiles: DataFrame,
    /// The labelled payments and their verdicts: `txn_id, card_id, fraud`.
    pub labels: DataFrame,
    /// The deduplicated payments (for training): sorted by card then event time.
    pub payments: DataFrame,
    pub cutoff_ms: Option<i64>,
    /// topic → partition → next offset, as of the snapshot.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Rows of the dataset read (copies included) and events counted (after dedupe), per kind.
    pub rows_scanned: u64,
    pub events_counted: u64,
    pub phases: Vec<(&'static str, Duration)>,
}

pub const ONE_MINUTE_MS: i64 = 60_000;
pub const SLIDE_SIZE_MS: i64 = 5 * ONE_MINUTE_MS;
pub const HOUR_MS: i64 = 3_600_000;

/// The cutoff of a snapshot (see the module documentation).
pub fn cutoff(snapshot: &Snapshot, lateness_ms: i64) -> Option<i64> {
    snapshot
        .manifests
        .iter()
        .filter(|m| {
            m.files
                .iter()
                .any(|f| matches!(f.kind, Kind::SensorReading | Kind::Payment))
        })
        .filter_map(|m| m.max_ts)
        .min()
        .map(|t| (t - lateness_ms).div_euclid(ONE_MINUTE_MS) * ONE_MINUTE_MS)
}

fn scan(paths: &[PathBuf], columns: &[&str]) -> PolarsResult<Option<LazyFrame>> {
    if paths.is_empty() {
        return Ok(None);
    }
    let sources: Vec<PlRefPath> = paths
        .iter()
        .map(|p| PlRefPath::from(p.to_string_lossy().as_ref()))
        .collect();
    let mut args = ScanArgsParquet::default();
    // the directory names are for people and other engines: the columns are in the files
    args.hive_options.enabled = Some(false);
    let lf = LazyFrame::scan_parquet_files(sources.into(), args)?;
    Ok(Some(lf.select(
        columns.iter().map(|c| col(*c)).collect::<Vec<_>>(),
    )))
}

/// `v` rounded to micro-units as an integer, half away from zero.
fn micro(c: &str) -> Expr {
    (col(c) * lit(1_000_000.0))
        .round(0, RoundMode::HalfAwayFromZero)
        .cast(DataType::Int64)
}

/// `-0.0` as `0.0`, so that min and max do not depend on the order of the rows.
fn no_negative_zero(c: &str) -> Expr {
    when(col(c).eq(lit(0.0)))
        .then(lit(0.0))
        .otherwise(col(c))
        .alias(c)
}

fn minute_of(c: &str) -> Expr {
    col(c).floor_div(lit(ONE_MINUTE_MS)) * lit(ONE_MINUTE_MS)
}

fn empty_sensor_windows() -> PolarsResult<DataFrame> {
    DataFrame::new_infer_height(vec![
        Column::new_empty("device_id".into(), &DataType::String),
        Column::new_empty("view".into(), &DataType::String),
        Column::new_empty("start_ms".into(), &DataType::Int64),
        Column::new_empty("end_ms".into(), &DataType::Int64),
        Column::new_empty("count".into(), &DataType::UInt32),
        Column::new_empty("temperature_min".into(), &DataType::Float64),
        Column::new_empty("temperature_max".into(), &DataType::Float64),
        Column::new_empty("temperature_sum_micro".into(), &DataType::Int64),
        Column::new_empty("vibration_min".into(), &DataType::Float64),
        Column::new_empty("vibration_max".into(), &DataType::Float64),
        Column::new_empty("vibration_sum_micro".into(), &DataType::Int64),
    ])
}

/// Recompute every view over `snapshot`.
pub fn recompute(snapshot: &Snapshot, lateness_ms: i64) -> PolarsResult<Recomputed> {
    let mut phases = Vec::new();
    let cutoff_ms = cutoff(snapshot, lateness_ms);
    // nothing is published before there is a cutoff
    let cut = cutoff_ms.unwrap_or(i64::MIN);
    let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for m in &snapshot.manifests {
        offsets
            .entry(m.topic.clone())
            .or_default()
            .insert(m.partition, m.next_offset);
    }
    let rows_scanned: u64 = snapshot
        .manifests
        .iter()
        .flat_map(|m| &m.files)
        .filter(|f| matches!(f.kind, Kind::SensorReading | Kind::Payment))
        .map(|f| f.rows)
        .sum();

    // --- sensors
    let t0 = Instant::now();
    let sensors = scan(
        snapshot.files(Kind::SensorReading),
        &[
            "event_id",
            "device_id",
            "ts",
            "temperature_c",
            "vibration_mm_s",
        ],
    )?
    .map(|lf| {
        lf.unique_stable(Some(cols(["event_id"])), UniqueKeepStrategy::First)
            .with_columns([
                no_negative_zero("temperature_c"),
                no_negative_zero("vibration_mm_s"),
            ])
            .collect()
    })
    .transpose()?;
    phases.push(("scan sensors", t0.elapsed()));
    let t0 = Instant::now();
    let (sensor_windows, device_baselines, sensor_events) = match &sensors {
        None => (empty_sensor_windows()?, DataFrame::empty(), 0),
        Some(df) => {
            let minute = df
                .clone()
                .lazy()
                .with_columns([
                    minute_of("ts").alias("start_ms"),
                    micro("temperature_c").alias("t_micro"),
                    micro("vibration_mm_s").alias("v_micro"),
                ])
                .group_by([col("device_id"), col("start_ms")])
                .agg([
                    len().alias("count"),
                    col("temperature_c").min().alias("temperature_min"),
                    col("temperature_c").max().alias("temperature_max"),
                    col("t_micro").sum().alias("temperature_sum_micro"),
                    col("vibration_mm_s").min().alias("vibration_min"),
                    col("vibration_mm_s").max().alias("vibration_max"),
                    col("v_micro").sum().alias("vibration_sum_micro"),
                ])
                .collect()?;
            let one = minute
                .clone()
                .lazy()
                .with_columns([
                    lit("1m").alias("view"),
                    (col("start_ms") + lit(ONE_MINUTE_MS)).alias("end_ms"),
                ])
                .filter(col("end_ms").lt_eq(lit(cut)));
            // a 5-minute window starting at s merges the minutes s … s + 4
            let shifted: Vec<LazyFrame> = (0..5)
                .map(|k| {
                    minute
                        .clone()
                        .lazy()
                        .with_column((col("start_ms") - lit(k * ONE_MINUTE_MS)).alias("start_ms"))
                })
                .collect();
            let five = concat(shifted, UnionArgs::default())?
                .group_by([col("device_id"), col("start_ms")])
                .agg([
                    col("count").sum().alias("count"),
                    col("temperature_min").min(),
                    col("temperature_max").max(),
                    col("temperature_sum_micro").sum(),
                    col("vibration_min").min(),
                    col("vibration_max").max(),
                    col("vibration_sum_micro").sum(),
                ])
                .with_columns([
                    lit("5m1m").alias("view"),
                    (col("start_ms") + lit(SLIDE_SIZE_MS)).alias("end_ms"),
                ])
                .filter(col("end_ms").lt_eq(lit(cut)));
            let order = [
                "device_id",
                "view",
                "start_ms",
                "end_ms",
                "count",
                "temperature_min",
                "temperature_max",
                "temperature_sum_micro",
                "vibration_min",
                "vibration_max",
                "vibration_sum_micro",
            ];
            let select: Vec<Expr> = order.iter().map(|c| col(*c)).collect();
            let windows = concat(
                [one.select(select.clone()), five.select(select)],
                UnionArgs::default(),
            )?
            .with_column(col("count").cast(DataType::UInt32))
            .collect()?;
            let stats = |by: Vec<Expr>| {
                df.clone()
                    .lazy()
                    .with_column((col("ts").floor_div(lit(HOUR_MS)) % lit(24i64)).alias("hour"))
                    .group_by(by)
                    .agg([
                        len().alias("count"),
                        col("temperature_c").mean().alias("temperature_mean"),
                        col("temperature_c").std(0).alias("temperature_std"),
                        col("vibration_mm_s").mean().alias("vibration_mean"),
                        col("vibration_mm_s").std(0).alias("vibration_std"),
                    ])
            };
            let per_hour = stats(vec![col("device_id"), col("hour")]);
            let overall = stats(vec![col("device_id")])
                .with_column(lit(NULL).cast(DataType::Int64).alias("hour"));
            let cols_b = [
                "device_id",
                "hour",
                "count",
                "temperature_mean",
                "temperature_std",
                "vibration_mean",
                "vibration_std",
            ];
            let sel: Vec<Expr> = cols_b.iter().map(|c| col(*c)).collect();
            let baselines = concat(
                [overall.select(sel.clone()), per_hour.select(sel)],
                UnionArgs::default(),
            )?
            .collect()?;
            (windows, baselines, df.height() as u64)
        }
    };
    phases.push(("sensor views", t0.elapsed()));

    let t0 = Instant::now();
    let labels = scan(
        snapshot.files(Kind::FraudLabel),
        &["txn_id", "card_id", "fraud", "ts"],
    )?
    .map(|lf| {
        // the latest verdict on a transaction wins
        lf.sort(
            ["ts"],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .unique_stable(Some(cols(["txn_id"])), UniqueKeepStrategy::Last)
        .select([col("txn_id"), col("card_id"), col("fraud")])
        .collect()
    })
    .transpose()?
    .unwrap_or_default();
    phases.push(("labels", t0.elapsed()));

    // --- payments
    let t0 = Instant::now();
    let payments = scan(
        snapshot.files(Kind::Payment),
        &[
            "event_id",
            "txn_id",
            "card_id",
            "merchant_id",
            "mcc",
            "amount_cents",
            "country",
            "lat",
            "lon",
            "ts",
        ],
    )?
    .map(|lf| {
        lf.unique_stable(Some(cols(["event_id"])), UniqueKeepStrategy::First)
            .sort(
                ["card_id", "ts"],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .collect()
    })
    .transpose()?;
    phases.push(("scan payments", t0.elapsed()));
    let t0 = Instant::now();
    let card_aggs = || {
        [
            len().cast(DataType::UInt32).alias("count"),
            col("amount_cents").sum().alias("amount_sum_cents"),
            col("amount_cents").max().alias("amount_max_cents"),
            col("merchant_id")
                .unique()
                .sort(SortOptions::default())
                .implode(false)
                .alias("merchants"),
            col("country")
                .unique()
                .sort(SortOptions::default())
                .implode(false)
                .alias("countries"),
        ]
    };
    let card_cols = [
        "card_id",
        "start_ms",
        "end_ms",
        "count",
        "amount_sum_cents",
        "amount_max_cents",
        "merchants",
        "countries",
    ];
    let (card_windows, card_sessions, card_profiles, payment_events, payments_df) = match payments {
        None => (
            DataFrame::empty(),
            DataFrame::empty(),
            DataFrame::empty(),
            0,
            DataFrame::empty(),
        ),
        Some(df) => {
            let sel: Vec<Expr> = card_cols.iter().map(|c| col(*c)).collect();
            let windows = df
                .clone()
                .lazy()
                .with_column(minute_of("ts").alias("start_ms"))
                .group_by([col("card_id"), col("start_ms")])
                .agg(card_aggs())
                .with_column((col("start_ms") + lit(ONE_MINUTE_MS)).alias("end_ms"))
                .filter(col("end_ms").lt_eq(lit(cut)))
                .select(sel.clone())
                .collect()?;
            let gap = Sessions::CARD_GAP_MS;
            // sorted by card then time: a session starts at a card's first payment or after a
            // silence longer than the gap
            let sessions = df
                .clone()
                .lazy()
                .with_column(
                    (col("card_id")
                        .neq(col("card_id").shift(lit(1)))
                        .fill_null(lit(true))
                        .or((col("ts") - col("ts").shift(lit(1)))
                            .gt(lit(gap))
                            .fill_null(lit(true))))
                    .cast(DataType::Int64)
                    .cum_sum(false)
                    .alias("session"),
                )
                .group_by([col("session")])
                .agg(
                    [
                        col("card_id").first(),
                        col("ts").min().alias("start_ms"),
                        (col("ts").max() + lit(gap)).alias("end_ms"),
                    ]
                    .into_iter()
                    .chain(card_aggs())
                    .collect::<Vec<_>>(),
                )
                .filter(col("end_ms").lt_eq(lit(cut)))
                .select(sel)
                .collect()?;
            // the habits of a card are those of its legitimate payments: a fraudster's country
            // or amounts must not become the card's usual ones
            let legit = if labels.height() > 0 {
                df.clone()
                    .lazy()
                    .join(
                        labels.clone().lazy().select([col("txn_id"), col("fraud")]),
                        [col("txn_id")],
                        [col("txn_id")],
                        JoinArgs::new(JoinType::Left),
                    )
                    .filter(col("fraud").fill_null(lit(false)).not())
                    .drop(cols(["fraud"]))
            } else {
                df.clone().lazy()
            };
            let home = legit
                .clone()
                .group_by([col("card_id"), col("country")])
                .agg([len().alias("n")])
                .sort(
                    ["card_id", "n", "country"],
                    SortMultipleOptions::default()
                        .with_order_descending_multi([false, true, false]),
                )
                .group_by([col("card_id")])
                .agg([col("country").first().alias("home_country")]);
            let mccs = legit
                .clone()
                .group_by([col("card_id"), col("mcc")])
                .agg([len().alias("n")])
                .sort(
                    ["card_id", "n", "mcc"],
                    SortMultipleOptions::default()
                        .with_order_descending_multi([false, true, false]),
                )
                .group_by_stable([col("card_id")])
                .agg([col("mcc").head(Some(5)).alias("mccs")]);
            let profiles = legit
                .with_column((col("ts").floor_div(lit(HOUR_MS)) % lit(24i64)).alias("hour"))
                .group_by([col("card_id")])
                .agg([
                    len().cast(DataType::UInt32).alias("payments"),
                    col("amount_cents")
                        .cast(DataType::Float64)
                        .mean()
                        .alias("amount_mean_cents"),
                    col("amount_cents")
                        .cast(DataType::Float64)
                        .std(0)
                        .alias("amount_std_cents"),
                    col("country")
                        .unique()
                        .sort(SortOptions::default())
                        .implode(false)
                        .alias("countries"),
                    col("hour")
                        .unique()
                        .sort(SortOptions::default())
                        .implode(false)
                        .alias("active_hours"),
                ])
                .join(
                    home,
                    [col("card_id")],
                    [col("card_id")],
                    JoinArgs::new(JoinType::Left),
                )
                .join(
                    mccs,
                    [col("card_id")],
                    [col("card_id")],
                    JoinArgs::new(JoinType::Left),
                )
                .collect()?;
            let n = df.height() as u64;
            (windows, sessions, profiles, n, df)
        }
    };
    phases.push(("card views", t0.elapsed()));

    Ok(Recomputed {
        sensor_windows,
        card_windows,
        card_sessions,
        device_baselines,
        card_profiles,
        labels,
        payments: payments_df,
        cutoff_ms,
        offsets,
        rows_scanned,
        events_counted: sensor_events + payment_events,
        phases,
    })
}
