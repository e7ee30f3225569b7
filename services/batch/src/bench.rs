//! `lambdalake-batch bench`: the batch layer's benchmark. A seeded generator writes N events
//! (sensor readings, payments, a fraud label per fraud) through the archiver's write path
//! (`archiver::append`: decode, Parquet, manifest) into a fresh master dataset — the archiver
//! rate — then one `run_once` recomputes and publishes every view and the model into a fresh
//! Postgres database, split by phase, next to a plain Polars group-by of the same Parquet files
//! measured in the same run. The dataset and the database are removed at the end (`--keep`
//! keeps the dataset).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use polars::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::archiver::append;
use crate::dataset::{Dataset, Kind};
use crate::{Config, RunSummary};

/// Options of `lambdalake-batch bench`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct BenchArgs {
    /// Events to generate (sensor readings and payments; fraud labels come on top).
    #[arg(long, default_value = "10000000", value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Seed of the generator: the same seed writes the same events.
    #[arg(long, default_value = "42")]
    pub seed: u64,
    /// Partitions per topic.
    #[arg(long, default_value = "4", value_parser = clap::value_parser!(u16).range(1..))]
    pub partitions: u16,
    /// Events generated and appended per round (each round writes one file per partition and
    /// date, as an archiver flush does).
    #[arg(long, default_value = "400000")]
    pub chunk: std::num::NonZeroUsize,
    /// Devices in the workload (the speed bench's default).
    #[arg(long, default_value = "1000", value_parser = clap::value_parser!(u32).range(1..))]
    pub devices: u32,
    /// Cards in the workload (the speed bench's default).
    #[arg(long, default_value = "100000", value_parser = clap::value_parser!(u32).range(1..))]
    pub cards: u32,
    /// Event time the events span (evenly, ±5 s), ending on 2026-01-05T00:00Z + span.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2h")]
    pub span: Duration,
    /// Where the dataset is written (default: a new directory under the system's temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the generated dataset.
    #[arg(long)]
    pub keep: bool,
}

/// What the benchmark measured.
#[derive(Debug)]
pub struct BenchReport {
    pub args: BenchArgs,
    pub events: u64,
    pub labels: u64,
    pub dataset_bytes: u64,
    pub files: usize,
    pub archive: Duration,
    pub run: RunSummary,
    pub plain_sensor: Duration,
    pub plain_payment: Duration,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.events as f64 / self.archive.as_secs_f64();
        writeln!(f, "## lambdalake-batch bench")?;
        writeln!(f)?;
        writeln!(
            f,
            "- dataset: {} events ({} devices, {} cards, over {}) + {} labels, {} Parquet files, {:.1} MiB",
            self.events,
            self.args.devices,
            self.args.cards,
            humantime::format_duration(self.args.span),
            self.labels,
            self.files,
            self.dataset_bytes as f64 / 1_048_576.0
        )?;
        writeln!(
            f,
            "- archiver write path: {:.2?} → **{:.0} events/s** (decode, Parquet zstd, manifest)",
            self.archive, rate
        )?;
        writeln!(
            f,
            "- recompute end to end: **{:.2?}** (version {}, {} rows scanned)",
            self.run.duration, self.run.version, self.run.rows_scanned
        )?;
        writeln!(f)?;
        writeln!(f, "| phase | time |")?;
        writeln!(f, "|---|---:|")?;
        for (p, d) in &self.run.phases {
            writeln!(f, "| {p} | {:.3} s |", d.as_secs_f64())?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "plain Polars group-by of the same files (scan + group by key and minute: count, min, max, sum):"
        )?;
        writeln!(
            f,
            "sensors {:.3} s, payments {:.3} s",
            self.plain_sensor.as_secs_f64(),
            self.plain_payment.as_secs_f64()
        )?;
        writeln!(f)?;
        write!(f, "{}", self.run)
    }
}

/// Event time of the first event: 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;

/// A record as `archiver::append` takes it: offset, Kafka timestamp, payload.
type Record = (i64, Option<i64>, Vec<u8>);

/// One generated round: records per (kind, partition).
struct Round {
    sensors: Vec<Vec<Record>>,
    payments: Vec<Vec<Record>>,
    labels: Vec<Vec<Record>>,
}

struct Generator {
    rng: StdRng,
    args: BenchArgs,
    next: u64,
    offsets: [Vec<i64>; 3],
    /// Event time between two events, so that the stream spans `span`.
    step_ms: f64,
}

const HOMES: [(&str, f64, f64); 6] = [
    ("FR", 48.85, 2.35),
    ("DE", 52.52, 13.40),
    ("ES", 40.42, -3.70),
    ("IT", 41.90, 12.50),
    ("NL", 52.37, 4.90),
    ("BE", 50.85, 4.35),
];

impl Generator {
    fn new(args: &BenchArgs) -> Self {
        let p = usize::from(args.partitions);
        Generator {
            rng: StdRng::seed_from_u64(args.seed),
            args: args.clone(),
            next: 0,
            offsets: [vec![0; p], vec![0; p], vec![0; p]],
            step_ms: args.span.as_millis() as f64 / args.events.max(1) as f64,
        }
    }

    fn push(&mut self, to: &mut [Vec<Record>], which: usize, key: u32, ts: i64, json: String) {
        let p = (key % u32::from(self.args.partitions)) as usize;
        let off = &mut self.offsets[which][p];
        to[p].push((*off, Some(ts), json.into_bytes()));
        *off += 1;
    }

    fn round(&mut self) -> Option<Round> {
        if self.next >= self.args.events {
            return None;
        }
        let p = usize::from(self.args.partitions);
        let mut r = Round {
            sensors: vec![Vec::new(); p],
            payments: vec![Vec::new(); p],
            labels: vec![Vec::new(); p],
        };
        let end = (self.next + self.args.chunk.get() as u64).min(self.args.events);
        while self.next < end {
            let i = self.next;
            self.next += 1;
            let ts = T0 + (i as f64 * self.step_ms) as i64 + self.rng.random_range(-5_000..5_000);
            if self.rng.random_range(0..10) < 7 {
                let d = self.rng.random_range(0..self.args.devices);
                let hour = (ts / 3_600_000 % 24) as f64;
                let t = 40.0
                    + 10.0 * (hour / 24.0 * std::f64::consts::TAU).sin()
                    + self.rng.random_range(-3.0..3.0)
                    + f64::from(d % 20);
                let v = 2.0 + self.rng.random_range(0.0..1.5);
                let json = format!(
                    r#"{{"event_id":"s{i}","device_id":"dev-{d}","site":"site-{}","ts":{ts},"temperature_c":{t:.2},"vibration_mm_s":{v:.3}}}"#,
                    d % 50
                );
                self.push(&mut r.sensors, 0, d, ts, json);
            } else {
                let c = self.rng.random_range(0..self.args.cards);
                let (home, lat, lon) = HOMES[(c as usize) % HOMES.len()];
                let fraud = self.rng.random_range(0..1000) < 5;
                let (country, lat, lon, mcc, cents) = if fraud {
                    (
                        "BR",
                        -23.55,
                        -46.63,
                        6051,
                        self.rng.random_range(50_000..500_000),
                    )
                } else {
                    let mcc = [5411, 5812, 5541, 4111, 5732][self.rng.random_range(0..5)];
                    let mean = 1_000 + i64::from(c % 97) * 100;
                    (home, lat, lon, mcc, mean + self.rng.random_range(0..mean))
                };
                let json = format!(
                    r#"{{"event_id":"p{i}","txn_id":"t{i}","card_id":"card-{c}","merchant_id":"m{}","mcc":"{mcc}","amount":{}.{:02},"currency":"EUR","country":"{country}","lat":{lat},"lon":{lon},"ts":{ts}}}"#,
                    self.rng.random_range(0..5_000),
                    cents / 100,
                    cents % 100
                );
                self.push(&mut r.payments, 1, c, ts, json);
                if fraud {
                    let at = ts + 86_400_000;
                    let json = format!(
                        r#"{{"event_id":"l{i}","txn_id":"t{i}","card_id":"card-{c}","fraud":true,"ts":{at}}}"#
                    );
                    self.push(&mut r.labels, 2, c, at, json);
                }
            }
        }
        Some(r)
    }
}

fn dir_size(path: &std::path::Path) -> std::io::Result<(u64, usize)> {
    let mut bytes = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (b, f) = dir_size(&entry.path())?;
            bytes += b;
            files += f;
        } else if entry.path().extension().is_some_and(|e| e == "parquet") {
            bytes += meta.len();
            files += 1;
        }
    }
    Ok((bytes, files))
}

fn plain_group_by(paths: &[PathBuf], key: &str, value: &str) -> PolarsResult<Duration> {
    let t0 = Instant::now();
    if paths.is_empty() {
        return Ok(t0.elapsed());
    }
    let sources: Vec<PlRefPath> = paths
        .iter()
        .map(|p| PlRefPath::from(p.to_string_lossy().as_ref()))
        .collect();
    let mut args = ScanArgsParquet::default();
    args.hive_options.enabled = Some(false);
    let df = LazyFrame::scan_parquet_files(sources.into(), args)?
        .group_by([
            col(key),
            (col("ts").floor_div(lit(60_000i64)) * lit(60_000i64)).alias("start_ms"),
        ])
        .agg([
            len().alias("count"),
            col(value).min().alias("min"),
            col(value).max().alias("max"),
            col(value).sum().alias("sum"),
        ])
        .collect()?;
    std::hint::black_box(df.height());
    Ok(t0.elapsed())
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("master dataset: {0}")]
    Dataset(#[from] crate::dataset::DatasetError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("plain group-by: {0}")]
    Polars(#[from] PolarsError),
    #[error("cannot create the benchmark database (the Postgres user needs CREATEDB): {}", crate::publish::pg_message(.0))]
    Database(#[source] tokio_postgres::Error),
    #[error("recompute: {0}")]
    Run(#[from] crate::RunError),
}

/// Run the benchmark with `config`'s Postgres server; progress goes to the log.
pub async fn bench(config: &Config, args: &BenchArgs) -> Result<BenchReport, BenchError> {
    let dir = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lambdalake-batch-bench-{}", std::process::id()))
    });
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let dataset = Dataset::open(&dir)?;
    tracing::info!(events = args.events, seed = args.seed, dir = %dir.display(), "bench: generating and archiving");
    let mut generator = Generator::new(args);
    let mut archive = Duration::ZERO;
    let mut labels = 0u64;
    let mut last_report = Instant::now();
    while let Some(round) = generator.round() {
        let t0 = Instant::now();
        for (kind, topic, parts) in [
            (Kind::SensorReading, "sensor-readings", round.sensors),
            (Kind::Payment, "payments", round.payments),
            (Kind::FraudLabel, "fraud-labels", round.labels),
        ] {
            for (p, records) in parts.into_iter().enumerate() {
                if kind == Kind::FraudLabel {
                    labels += records.len() as u64;
                }
                if !records.is_empty() {
                    append(&dataset, topic, p as i32, kind, records)?;
                }
            }
        }
        archive += t0.elapsed();
        if last_report.elapsed() >= Duration::from_secs(2) || generator.next == args.events {
            last_report = Instant::now();
            tracing::info!(
                archived = generator.next,
                of = args.events,
                rate = format!("{:.0}/s", generator.next as f64 / archive.as_secs_f64()),
                "bench: archiving"
            );
        }
    }
    let (dataset_bytes, files) = dir_size(&dir)?;

    // a fresh database on the configured server, dropped at the end
    let name = format!("ll_bench_{}", std::process::id());
    let admin = crate::connect(&config.postgres_url)
        .await
        .map_err(BenchError::Database)?;
    // one statement each: CREATE DATABASE cannot run in the implicit transaction of a batch
    for sql in [
        format!("drop database if exists {name}"),
        format!("create database {name}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .map_err(BenchError::Database)?;
    }
    let mut run_config = config.clone();
    run_config.dataset = dir.clone();
    run_config.postgres_url = to_url(&config.postgres_url, &name);
    run_config.publish_reference = false;
    tracing::info!("bench: recompute and publish");
    let run = crate::run_once(&run_config).await;
    let plain = (|| -> PolarsResult<(Duration, Duration)> {
        let snapshot = dataset
            .snapshot()
            .map_err(|e| polars_err!(ComputeError: "{e}"))?;
        Ok((
            plain_group_by(
                snapshot.files(Kind::SensorReading),
                "device_id",
                "temperature_c",
            )?,
            plain_group_by(snapshot.files(Kind::Payment), "card_id", "amount_cents")?,
        ))
    })();
    let _ = admin
        .batch_execute(&format!("drop database if exists {name} with (force)"))
        .await;
    if !args.keep {
        std::fs::remove_dir_all(&dir)?;
    }
    let run = run?;
    let (plain_sensor, plain_payment) = plain?;
    Ok(BenchReport {
        args: args.clone(),
        events: args.events,
        labels,
        dataset_bytes,
        files,
        archive,
        run,
        plain_sensor,
        plain_payment,
    })
}

/// The connection string `url` (URL or `key=value` form) with its database replaced by `db`.
fn to_url(url: &str, db: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // key=value form: a later key wins
        return format!("{url} dbname={db}");
    };
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = base.split_once('/').map_or(base, |(a, _)| a);
    format!("{scheme}://{authority}/{db}{query}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_benchmark_database_replaces_the_configured_one() {
        assert_eq!(
            super::to_url("postgres://u:p@h:1/app?sslmode=disable", "b"),
            "postgres://u:p@h:1/b?sslmode=disable"
        );
        assert_eq!(super::to_url("postgresql://h", "b"), "postgresql://h/b");
        assert_eq!(
            super::to_url("host=h user=u dbname=app", "b"),
            "host=h user=u dbname=app dbname=b"
        );
    }
}
