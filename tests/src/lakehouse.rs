//! The lakehouse on the real broker and filesystem: `lambdalake-lakehouse` killed at random
//! moments while events flow, its Delta tables read back and compared with the ground truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lambdalake_lakehouse::deltalake_core::arrow::array::{
    Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use lambdalake_lakehouse::deltalake_core::arrow::compute::cast;
use lambdalake_lakehouse::deltalake_core::arrow::datatypes::DataType;
use lambdalake_lakehouse::deltalake_core::datafusion::prelude::SessionContext;
use lambdalake_lakehouse::tables::{Location, Table};
use lambdalake_views::table::{self, Keyed};
use lambdalake_views::{CardAgg, SensorAgg, WindowSpec};
use rand::Rng;

use crate::speed::{Kill, Setup, stream_spaced};
use crate::support::unique;

fn lakehouse_binary() -> PathBuf {
    crate::support::workspace_binary("lambdalake-lakehouse")
}

/// A lakehouse deployment: its topics (those of `s`), group and table directory.
struct Lake {
    dir: PathBuf,
    group: String,
    labels: String,
    logs: Vec<PathBuf>,
}

impl Lake {
    fn new() -> Lake {
        Lake {
            dir: std::env::temp_dir().join(unique("ll-lakehouse")),
            group: unique("it-lakehouse"),
            labels: unique("it-labels"),
            logs: Vec::new(),
        }
    }

    fn spawn(&mut self, s: &Setup, extra: &[&str]) -> Child {
        let log = std::env::temp_dir().join(format!("{}-{}.log", self.group, self.logs.len()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(lakehouse_binary());
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--topic-sensor-readings",
            &s.sensor,
            "--topic-payments",
            &s.payment,
            "--topic-fraud-labels",
            &self.labels,
            "--group",
            &self.group,
            "--tables",
            self.dir.to_str().expect("a UTF-8 path"),
            "--trigger",
            "300ms",
            "--kafka-option",
            "session.timeout.ms=6000",
            "--kafka-option",
            "heartbeat.interval.ms=500",
        ])
        .args(extra)
        .env("LAMBDALAKE_LOG", "info")
        .stdout(Stdio::from(file.try_clone().expect("log file")))
        .stderr(Stdio::from(file));
        self.logs.push(log);
        cmd.spawn().expect("start lambdalake-lakehouse")
    }

    /// Wait until the newest instance was assigned its partitions (a killed member's
    /// partitions move after the session timeout).
    async fn wait_assigned(&self, timeout: Duration) {
        let log = self.logs.last().expect("an instance");
        let deadline = Instant::now() + timeout;
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("partitions assigned")
        {
            assert!(
                Instant::now() < deadline,
                "no assignment after {timeout:?}: {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Run `sql` over one table (registered as `t`) at its latest version.
pub(crate) async fn query(dir: &Path, table: Table, sql: &str) -> Vec<RecordBatch> {
    let location = Location::parse(dir.to_str().unwrap()).unwrap();
    let t = location.open(table, 10).await.expect("the table opens");
    let ctx = SessionContext::new();
    t.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", t.table_provider().await.unwrap())
        .unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// A string column as plain UTF-8 (DataFusion may read strings as views or dictionaries).
fn text(b: &RecordBatch, name: &str) -> StringArray {
    let c = b
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let cast = cast(c, &DataType::Utf8).expect("a string column");
    cast.as_any().downcast_ref::<StringArray>().unwrap().clone()
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_any()
        .downcast_ref::<T>()
        .unwrap_or_else(|| panic!("column {name} has another type"))
}

/// Bronze's (topic, partition, offset) → how many rows.
async fn bronze_rows(dir: &Path) -> BTreeMap<(String, i32, i64), usize> {
    let mut out = BTreeMap::new();
    for b in query(
        dir,
        Table::Bronze,
        "select topic, kafka_partition, kafka_offset, value from t",
    )
    .await
    {
        let (t, p, o) = (
            text(&b, "topic"),
            col::<Int32Array>(&b, "kafka_partition"),
            col::<Int64Array>(&b, "kafka_offset"),
        );
        assert_eq!(b.column_by_name("value").unwrap().null_count(), 0);
        for i in 0..b.num_rows() {
            *out.entry((t.value(i).to_owned(), p.value(i), o.value(i)))
                .or_insert(0) += 1;
        }
    }
    out
}

/// Gold sensor windows: (device, start) → (count, t min, t max, t sum µ, v min, v max, v sum µ).
type SensorRow = (i64, f64, f64, i64, f64, f64, i64);

async fn gold_sensors(dir: &Path) -> BTreeMap<(String, i64), SensorRow> {
    let mut out = BTreeMap::new();
    for b in query(dir, Table::GoldSensorWindows, "select * from t").await {
        let d = text(&b, "device_id");
        let s = col::<Int64Array>(&b, "start_ms");
        let c = col::<Int64Array>(&b, "count");
        let (tmin, tmax, tsum) = (
            col::<Float64Array>(&b, "temperature_min"),
            col::<Float64Array>(&b, "temperature_max"),
            col::<Int64Array>(&b, "temperature_sum_micro"),
        );
        let (vmin, vmax, vsum) = (
            col::<Float64Array>(&b, "vibration_min"),
            col::<Float64Array>(&b, "vibration_max"),
            col::<Int64Array>(&b, "vibration_sum_micro"),
        );
        for i in 0..b.num_rows() {
            let prev = out.insert(
                (d.value(i).to_owned(), s.value(i)),
                (
                    c.value(i),
                    tmin.value(i),
                    tmax.value(i),
                    tsum.value(i),
                    vmin.value(i),
                    vmax.value(i),
                    vsum.value(i),
                ),
            );
            assert!(
                prev.is_none(),
                "window {} {} twice in gold",
                d.value(i),
                s.value(i)
            );
        }
    }
    out
}

fn expected_sensors(view: &Keyed<SensorAgg>) -> BTreeMap<(String, i64), SensorRow> {
    view.iter()
        .map(|((d, w), a)| {
            (
                (d.clone(), w.start.millis()),
                (
                    a.count as i64,
                    a.temperature_c.min,
                    a.temperature_c.max,
                    a.temperature_c.sum_micro as i64,
                    a.vibration_mm_s.min,
                    a.vibration_mm_s.max,
                    a.vibration_mm_s.sum_micro as i64,
                ),
            )
        })
        .collect()
}

async fn gold_cards(dir: &Path) -> BTreeMap<(String, i64), (i64, i64, i64)> {
    let mut out = BTreeMap::new();
    for b in query(dir, Table::GoldCardWindows, "select * from t").await {
        let c = text(&b, "card_id");
        let s = col::<Int64Array>(&b, "start_ms");
        let n = col::<Int64Array>(&b, "count");
        let sum = col::<Int64Array>(&b, "amount_sum_cents");
        let max = col::<Int64Array>(&b, "amount_max_cents");
        for i in 0..b.num_rows() {
            let prev = out.insert(
                (c.value(i).to_owned(), s.value(i)),
                (n.value(i), sum.value(i), max.value(i)),
            );
            assert!(prev.is_none(), "card window twice in gold");
        }
    }
    out
}

fn expected_cards(view: &Keyed<CardAgg>) -> BTreeMap<(String, i64), (i64, i64, i64)> {
    view.iter()
        .map(|((c, w), a)| {
            (
                (c.clone(), w.start.millis()),
                (a.count as i64, a.amount_sum_cents, a.amount_max_cents),
            )
        })
        .collect()
}

/// Wait until bronze holds a row for every record produced (`ends`), or fail naming the logs.
async fn wait_bronze(s: &Setup, lake: &Lake, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let want: usize = s.ends.values().map(|e| *e as usize).sum();
    loop {
        let rows = bronze_rows(&lake.dir).await;
        let distinct = rows.len();
        if distinct >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "bronze has {distinct} of {want} records after {timeout:?}; logs: {}",
            lake.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every table exact: bronze holds each Kafka record once, silver each valid event once, gold
/// the windows of `lambdalake-views` over everything sent.
async fn assert_tables(s: &Setup, lake: &Lake) {
    let rows = bronze_rows(&lake.dir).await;
    let doubled: Vec<_> = rows.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "bronze holds records twice: {doubled:?}"
    );
    let mut want = Vec::new();
    for ((topic, p), end) in &s.ends {
        for o in 0..*end {
            want.push((topic.clone(), *p, o));
        }
    }
    want.sort();
    let got: Vec<(String, i32, i64)> = rows.into_keys().collect();
    assert_eq!(got, want, "bronze is every record produced, once");

    // silver: each event id once
    for (table, sent) in [
        (Table::SilverSensorReadings, table::dedupe(&s.sensors).len()),
        (Table::SilverPayments, table::dedupe(&s.payments).len()),
    ] {
        let b = query(
            &lake.dir,
            table,
            "select count(*) as n, count(distinct event_id) as d from t",
        )
        .await;
        let (n, d) = (
            col::<Int64Array>(&b[0], "n").value(0),
            col::<Int64Array>(&b[0], "d").value(0),
        );
        assert_eq!((n, d), (sent as i64, sent as i64), "{}", table.name());
    }

    let sensors = gold_sensors(&lake.dir).await;
    let want = expected_sensors(&table::sensor_windows(&s.sensors, WindowSpec::ONE_MINUTE));
    assert_eq!(sensors.len(), want.len());
    assert_eq!(sensors, want, "gold sensor windows");
    let cards = gold_cards(&lake.dir).await;
    let want = expected_cards(&table::card_windows(&s.payments, WindowSpec::ONE_MINUTE));
    assert_eq!(cards, want, "gold card windows");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_keeps_bronze_silver_and_gold_exact() {
    let mut s = Setup::new();
    let mut lake = Lake::new();
    // duplicates (5%) and out-of-order event times, 600 ms apart: late events for a windowed
    // stream processor, corrections for gold
    let (sensors, payments) = stream_spaced(12_000, 30, 0.05, 600);
    let mut guard = Kill(vec![lake.spawn(&s, &[])]);
    let mut kills = 0;
    let mut rng = rand::rng();
    let chunks: Vec<(&[String], &[String])> =
        sensors.chunks(100).zip(payments.chunks(100)).collect();
    let mut sent = 0;
    // each instance is killed at a random moment once it has its partitions, while events flow
    // (micro-batches every 300 ms: kills land before, during and after commits)
    while kills < 6 {
        lake.wait_assigned(Duration::from_secs(60)).await;
        let kill_at = Instant::now() + Duration::from_millis(rng.random_range(300..2_500));
        while Instant::now() < kill_at {
            if sent < chunks.len() {
                s.send_sensors(chunks[sent].0).await;
                s.send_payments(chunks[sent].1).await;
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let child = &mut guard.0[0];
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        kills += 1;
        guard.0[0] = lake.spawn(&s, &[]);
    }
    for c in &chunks[sent..] {
        s.send_sensors(c.0).await;
        s.send_payments(c.1).await;
    }
    // a late reading of a window gold already has: MERGE corrects it
    let old = s.sensors[0].ts.millis() + 1;
    s.send_sensors(&[crate::speed::sensor_json(
        "very-late",
        "d0",
        old,
        150.0,
        0.5,
    )])
    .await;
    wait_bronze(&s, &lake, Duration::from_secs(120)).await;
    // bronze is written first: wait until gold caught up (the counts match)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let readings: i64 = gold_sensors(&lake.dir).await.values().map(|v| v.0).sum();
        let payments: i64 = gold_cards(&lake.dir).await.values().map(|v| v.0).sum();
        if readings as usize == table::dedupe(&s.sensors).len()
            && payments as usize == table::dedupe(&s.payments).len()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gold has {readings} readings and {payments} payments; logs: {}",
            lake.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(kills >= 5);
    assert_tables(&s, &lake).await;
    drop(guard);
    let _ = std::fs::remove_dir_all(&lake.dir);
}
