//! `lambdalake-lakehouse bench`: the bronze append path alone — Arrow batches built from
//! Kafka-like records (sensor readings as JSON, 4 partitions) and appended to a fresh `bronze`
//! table, each commit carrying its `txn` offsets as the pipeline's do. Prints rows/s and the
//! commit latency (build + write + commit) p50/p99.

use std::time::{Duration, Instant};

use deltalake_core::kernel::Transaction;
use deltalake_core::kernel::transaction::CommitProperties;

use crate::pipeline::{Record, bronze_batch};
use crate::tables::{Location, Table, app_id};

/// The benchmark's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "lambdalake-lakehouse bench")]
pub struct BenchArgs {
    /// Commits to make.
    #[arg(long, default_value = "30", value_parser = clap::value_parser!(u64).range(1..))]
    pub commits: u64,
    /// Records per commit (the pipeline's `LAMBDALAKE_LAKEHOUSE_MAX_ROWS` at full load).
    #[arg(long, default_value = "100000", value_parser = clap::value_parser!(u64).range(1..))]
    pub rows: u64,
    /// Where the bench table goes (a fresh directory is made under it and removed after).
    #[arg(long, default_value = "/tmp")]
    pub dir: std::path::PathBuf,
}

pub async fn bench(args: &BenchArgs) -> Result<String, String> {
    let dir = args
        .dir
        .join(format!("lambdalake-bench-bronze-{}", std::process::id()));
    let location = Location::parse(dir.to_str().ok_or("the directory is not UTF-8")?)?;
    let result = run(&location, args).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(location: &Location, args: &BenchArgs) -> Result<String, String> {
    let mut table = location
        .open(Table::Bronze, 10)
        .await
        .map_err(|e| e.to_string())?;
    let t0_ms = chrono::Utc::now().timestamp_millis();
    let mut latencies = Vec::with_capacity(args.commits as usize);
    let mut offsets = [0i64; 4];
    let started = Instant::now();
    let mut total = 0u64;
    for c in 0..args.commits {
        // the records are made before the clock starts: Kafka hands them over ready
        let records: Vec<Record> = (0..args.rows)
            .map(|i| {
                let n = c * args.rows + i;
                let p = (n % 4) as usize;
                let offset = offsets[p];
                offsets[p] += 1;
                Record {
                    topic: "sensor-readings".to_owned(),
                    partition: p as i32,
                    offset,
                    key: Some(format!("dev-{}", n % 1000)),
                    value: format!(
                        r#"{{"event_id":"e{n}","device_id":"dev-{}","site":"plant-1","ts":{},"temperature_c":{}.5,"vibration_mm_s":1.25}}"#,
                        n % 1000,
                        t0_ms + n as i64,
                        20 + n % 15
                    )
                    .into_bytes(),
                    kafka_ts: Some(t0_ms + n as i64),
                    trace: None,
                }
            })
            .collect();
        let refs: Vec<&Record> = records.iter().collect();
        let now = chrono::Utc::now().timestamp_millis();
        let txns: Vec<Transaction> = (0..4)
            .map(|p| {
                Transaction::new_with_last_update(
                    app_id("sensor-readings", p),
                    offsets[p as usize],
                    Some(now),
                )
            })
            .collect();
        let t = Instant::now();
        let batch = bronze_batch(&refs)?;
        table = table
            .write(vec![batch])
            .with_commit_properties(CommitProperties::default().with_application_transactions(txns))
            .await
            .map_err(|e| e.to_string())?;
        latencies.push(t.elapsed());
        total += args.rows;
    }
    let busy: Duration = latencies.iter().sum();
    latencies.sort();
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(format!(
        "bronze append: {total} rows in {} commits of {}: {:.0} rows/s (commit time only; {:.0} rows/s wall, record generation included); commit latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; table version {}",
        args.commits,
        args.rows,
        total as f64 / busy.as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        table.version().map_or(-1, |v| v as i64),
    ))
}
