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
pub(crate) struct Lake {
    pub(crate) dir: PathBuf,
    /// Where the tables are: `dir`, or an `s3://` location.
    pub(crate) tables: String,
    group: String,
    labels: String,
    logs: Vec<PathBuf>,
}

impl Lake {
    pub(crate) fn new() -> Lake {
        let dir = std::env::temp_dir().join(unique("ll-lakehouse"));
        Lake {
            tables: dir.to_str().expect("a UTF-8 path").to_owned(),
            dir,
            group: unique("it-lakehouse"),
            labels: unique("it-labels"),
            logs: Vec::new(),
        }
    }

    pub(crate) fn spawn(&mut self, s: &Setup, extra: &[&str]) -> Child {
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
            &self.tables,
            "--kafka-option",
            "session.timeout.ms=6000",
            "--kafka-option",
            "heartbeat.interval.ms=500",
        ])
        .args(s.broker_args())
        .args(extra)
        .env("LAMBDALAKE_LOG", "info")
        // a short trigger unless the test chose one
        .env("LAMBDALAKE_LAKEHOUSE_TRIGGER", "300ms")
        .stdout(Stdio::from(file.try_clone().expect("log file")))
        .stderr(Stdio::from(file));
        self.logs.push(log);
        cmd.spawn().expect("start lambdalake-lakehouse")
    }

    /// Wait until the newest instance was assigned its partitions (a killed member's
    /// partitions move after the session timeout).
    pub(crate) async fn wait_assigned(&self, timeout: Duration) {
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
pub(crate) async fn query(tables: &str, table: Table, sql: &str) -> Vec<RecordBatch> {
    let location = Location::parse(tables).unwrap();
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
async fn bronze_rows(dir: &str) -> BTreeMap<(String, i32, i64), usize> {
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

async fn gold_sensors(dir: &str) -> BTreeMap<(String, i64), SensorRow> {
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

async fn gold_cards(dir: &str) -> BTreeMap<(String, i64), (i64, i64, i64)> {
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
        let rows = bronze_rows(&lake.tables).await;
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
    let rows = bronze_rows(&lake.tables).await;
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
            &lake.tables,
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

    let sensors = gold_sensors(&lake.tables).await;
    let want = expected_sensors(&table::sensor_windows(&s.sensors, WindowSpec::ONE_MINUTE));
    assert_eq!(sensors.len(), want.len());
    assert_eq!(sensors, want, "gold sensor windows");
    let cards = gold_cards(&lake.tables).await;
    let want = expected_cards(&table::card_windows(&s.payments, WindowSpec::ONE_MINUTE));
    assert_eq!(cards, want, "gold card windows");
    assert_scores_and_alerts(s, lake).await;
}

/// Gold's fraud scores and alerts, recomputed from bronze (the Kafka log, in offset order): each
/// payment's first occurrence scored by the shared rules on its card's earlier payments (lower
/// offsets of its partition, within a day); an alert per payment at or above 0.8 and per reading
/// past the sensor thresholds.
async fn assert_scores_and_alerts(s: &Setup, lake: &Lake) {
    use lambdalake_events::{Event, Payment, Policy, SensorReading};
    use lambdalake_views::fraud;

    let mut log: Vec<(String, i32, i64, Vec<u8>)> = Vec::new();
    for b in query(
        &lake.tables,
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
        let v = cast(b.column_by_name("value").unwrap(), &DataType::Binary).unwrap();
        let v = v
            .as_any()
            .downcast_ref::<lambdalake_lakehouse::deltalake_core::arrow::array::BinaryArray>()
            .unwrap()
            .clone();
        for i in 0..b.num_rows() {
            log.push((
                t.value(i).to_owned(),
                p.value(i),
                o.value(i),
                v.value(i).to_vec(),
            ));
        }
    }
    log.sort_by(|a, b| (a.1, a.2, &a.0).cmp(&(b.1, b.2, &b.0)));
    let policy = Policy::stored();
    let mut seen_ids = std::collections::HashSet::new();
    // (card, partition) → (offset, seen) of first occurrences so far
    let mut history: std::collections::HashMap<(String, i32), Vec<(i64, fraud::Seen)>> =
        std::collections::HashMap::new();
    let mut want_scores: BTreeMap<String, f64> = BTreeMap::new();
    let mut want_alerts: Vec<String> = Vec::new();
    for (topic, p, o, value) in &log {
        if *topic == s.payment {
            let Ok(pay) = Payment::from_json(value, &policy) else {
                continue;
            };
            if !seen_ids.insert(pay.event_id().as_str().to_owned()) {
                continue;
            }
            let ts = pay.ts.millis();
            let h = history
                .entry((pay.card_id.as_str().to_owned(), *p))
                .or_default();
            let earlier: Vec<fraud::Seen> = h
                .iter()
                .filter(|(off, seen)| {
                    off < o && seen.ts_ms >= ts - lambdalake_lakehouse::pipeline::HISTORY_MS
                })
                .map(|(_, seen)| *seen)
                .collect();
            let score = fraud::score(&fraud::features(&pay, &earlier, None), None);
            if score.value >= 0.8 {
                want_alerts.push(format!("fraud:{}", pay.event_id.as_str()));
            }
            want_scores.insert(pay.event_id.as_str().to_owned(), score.value);
            h.push((*o, fraud::Seen::from(&pay)));
        } else if *topic == s.sensor {
            let Ok(r) = SensorReading::from_json(value, &policy) else {
                continue;
            };
            if seen_ids.insert(r.event_id().as_str().to_owned())
                && !fraud::sensor_alerts(&r, None).is_empty()
            {
                want_alerts.push(format!("sensor:{}", r.event_id.as_str()));
            }
        }
    }
    let mut got_scores: BTreeMap<String, f64> = BTreeMap::new();
    for b in query(
        &lake.tables,
        Table::GoldFraudScores,
        "select event_id, score from t",
    )
    .await
    {
        let id = text(&b, "event_id");
        let sc = col::<Float64Array>(&b, "score");
        for i in 0..b.num_rows() {
            let prev = got_scores.insert(id.value(i).to_owned(), sc.value(i));
            assert!(prev.is_none(), "payment {} scored twice", id.value(i));
        }
    }
    assert_eq!(got_scores.len(), table::dedupe(&s.payments).len());
    assert_eq!(got_scores, want_scores, "gold fraud scores");
    let mut got_alerts: Vec<String> = Vec::new();
    for b in query(&lake.tables, Table::GoldAlerts, "select alert_id from t").await {
        let id = text(&b, "alert_id");
        got_alerts.extend((0..b.num_rows()).map(|i| id.value(i).to_owned()));
    }
    got_alerts.sort();
    want_alerts.sort();
    assert!(!want_alerts.is_empty(), "the stream raises alerts");
    assert_eq!(got_alerts, want_alerts, "gold alerts, each once");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_keeps_bronze_silver_and_gold_exact() {
    let mut lake = Lake::new();
    killed_at_random_moments(&mut lake, 12_000, 6).await;
    let _ = std::fs::remove_dir_all(&lake.dir);
}

/// The same on the stack's S3-compatible store: commits are conditional puts.
#[tokio::test(flavor = "multi_thread")]
async fn on_s3_sigkills_keep_every_table_exact() {
    let bucket =
        std::env::var("LAMBDALAKE_S3_URL").unwrap_or_else(|_| "s3://lambdalake".to_owned());
    let mut lake = Lake::new();
    lake.tables = format!(
        "{}/{}",
        bucket.trim_end_matches('/'),
        unique("it-lakehouse")
    );
    killed_at_random_moments(&mut lake, 4_000, 3).await;
    assert!(!lake.dir.exists(), "nothing was written to the local disk");
}

/// Events flow (duplicates, out-of-order, one very late) while the lakehouse is SIGKILLed `kills`
/// times at random moments; then every table is exact.
async fn killed_at_random_moments(lake: &mut Lake, events: usize, kills_wanted: usize) {
    let mut s = Setup::new();
    // duplicates (5%) and out-of-order event times, 600 ms apart: late events for a windowed
    // stream processor, corrections for gold
    let (sensors, payments) = stream_spaced(events, 30, 0.05, 600);
    let mut guard = Kill(vec![lake.spawn(&s, &[])]);
    let mut kills = 0;
    let mut rng = rand::rng();
    let chunks: Vec<(&[String], &[String])> =
        sensors.chunks(100).zip(payments.chunks(100)).collect();
    let mut sent = 0;
    // each instance is killed at a random moment once it has its partitions, while events flow
    // (micro-batches every 300 ms: kills land before, during and after commits)
    while kills < kills_wanted {
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
    wait_bronze(&s, lake, Duration::from_secs(120)).await;
    // bronze is written first: wait until gold caught up
    wait_gold(&s, lake, Duration::from_secs(60)).await;
    assert_eq!(kills, kills_wanted);
    assert_tables(&s, lake).await;
    drop(guard);
}

/// Wait until gold counts every reading and payment sent (bronze and silver come first).
pub(crate) async fn wait_gold(s: &Setup, lake: &Lake, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let readings: i64 = gold_sensors(&lake.tables).await.values().map(|v| v.0).sum();
        let payments: i64 = gold_cards(&lake.tables).await.values().map(|v| v.0).sum();
        let scores = count(&lake.tables, Table::GoldFraudScores).await;
        if readings as usize == table::dedupe(&s.sensors).len()
            && payments as usize == table::dedupe(&s.payments).len()
            && scores as usize == table::dedupe(&s.payments).len()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gold has {readings} readings, {payments} payments and {scores} scores after {timeout:?}; logs: {}",
            lake.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // the alerts of the last micro-batch are committed right after its scores: wait until their
    // number holds still for a second
    let mut last = count(&lake.tables, Table::GoldAlerts).await;
    let mut still_since = Instant::now();
    while still_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = count(&lake.tables, Table::GoldAlerts).await;
        if n != last {
            last = n;
            still_since = Instant::now();
        }
        assert!(Instant::now() < deadline, "gold_alerts keeps changing");
    }
}

/// Rows in one table.
async fn count(tables: &str, table: Table) -> i64 {
    let b = query(tables, table, "select count(*) as n from t").await;
    col::<Int64Array>(&b[0], "n").value(0)
}

/// The windows of an answer without their source: what both architectures must agree on.
fn values(body: &serde_json::Value) -> Vec<serde_json::Value> {
    body["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .map(|w| {
            let mut w = w.clone();
            w.as_object_mut().unwrap().remove("source");
            w
        })
        .collect()
}

/// The lakehouse through the serving API: the Lambda response shape with `source: "gold"`;
/// a late event corrects gold at once while the Lambda merged view waits for the batch
/// recompute, after which both agree on every window; time travel by version and by instant;
/// each table's history.
#[tokio::test(flavor = "multi_thread")]
async fn gold_equals_the_lambda_merged_view_after_the_recompute_and_travels_in_time() {
    use crate::serving::{check_openapi, get, redis_url, serve_with};
    use crate::speed::{
        now_ms, send_stream, sensor_json, spawn_archiver, stream_until, wait_archived,
    };

    let mut s = Setup::new();
    let mut lake = Lake::new();
    let master = std::env::temp_dir().join(unique("ll-master"));
    let (archiver, log) = spawn_archiver(&s, &master);
    let _guard = Kill(vec![s.spawn(&[]), archiver, lake.spawn(&s, &[])]);
    let end = now_ms() - 120_000;
    let (sensors, payments) = stream_until(3_000, 5, 0.05, 300, end);
    send_stream(&mut s, &sensors, &payments, 300, Duration::from_millis(10)).await;
    s.wait_applied(Duration::from_secs(90));
    wait_archived(&s, &master, &log).await;
    wait_gold(&s, &lake, Duration::from_secs(90)).await;

    let url = crate::batch::fresh_database().await;
    let config = crate::batch::config_for(&master, &url, &s.prefix, &[]);
    lambdalake_batch::run_once(&config).await.expect("run 1");
    let (base, token) = serve_with(
        &url,
        &redis_url(),
        &s.prefix,
        &s.sensor,
        &s.payment,
        &["--lakehouse-tables", &lake.tables, "--version-ttl", "1ms"],
    )
    .await;
    let http = reqwest::Client::new();
    let range = format!(
        "from={}&to={}",
        lambdalake_serving::windows::rfc3339(end - 40 * 60_000),
        lambdalake_serving::windows::rfc3339(now_ms() + 60_000)
    );
    for (kind, key, path) in [
        ("sensors", "d0", "/v1/lakehouse/sensors/{device_id}/windows"),
        ("sensors", "d3", "/v1/lakehouse/sensors/{device_id}/windows"),
        ("cards", "c1", "/v1/lakehouse/cards/{card_id}/windows"),
        ("cards", "c4", "/v1/lakehouse/cards/{card_id}/windows"),
    ] {
        let (status, gold) = get(
            &http,
            &format!("{base}/v1/lakehouse/{kind}/{key}/windows?{range}"),
        )
        .await;
        assert_eq!(status, 200, "{gold}");
        check_openapi(&http, &base, path, 200, &gold).await;
        assert_eq!(gold["degraded"], serde_json::json!([]));
        assert_eq!(gold["batch"]["cutoff"], serde_json::Value::Null);
        assert!(gold["batch"]["version"].as_i64().unwrap() > 0, "{gold}");
        assert!(gold["speed"]["freshness_ms"].as_i64().is_some(), "{gold}");
        let windows = gold["windows"].as_array().unwrap();
        assert!(!windows.is_empty());
        assert!(windows.iter().all(|w| w["source"] == "gold"), "{gold}");
        let (_, lambda) = get(
            &http,
            &format!("{base}/v1/lambda/{kind}/{key}/windows?{range}"),
        )
        .await;
        assert_eq!(values(&gold), values(&lambda), "{kind} {key}");
    }

    // the overview's lakehouse part: gold's version, bronze caught up with Kafka
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, o) = get(&http, &format!("{base}/v1/overview")).await;
        assert_eq!(status, 200, "{o}");
        check_openapi(&http, &base, "/v1/overview", 200, &o).await;
        let lake_part = &o["lakehouse"];
        if lake_part["lag_records"] == 0 {
            let gold = Location::parse(&lake.tables)
                .unwrap()
                .load(
                    Table::GoldSensorWindows,
                    lambdalake_lakehouse::tables::At::Latest,
                )
                .await
                .unwrap();
            assert_eq!(lake_part["gold_version"].as_u64(), gold.version(), "{o}");
            assert!(lake_part["freshness_ms"].as_i64().is_some(), "{o}");
            break;
        }
        assert!(Instant::now() < deadline, "{o}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // a reading 8 minutes behind the stream: the speed layer drops it (late), the lakehouse
    // MERGEs it into its window at once, the Lambda merged view shows it after a recompute
    let path = format!("{base}/v1/lakehouse/sensors/d0/windows?{range}");
    let (_, before) = get(&http, &path).await;
    let v_before = before["batch"]["version"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = now_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late_ts = end - 8 * 60_000 + 7;
    s.send_sensors(&[sensor_json("late-1", "d0", late_ts, 190.5, 0.25)])
        .await;
    let minute = lambdalake_serving::windows::rfc3339(late_ts.div_euclid(60_000) * 60_000);
    let count_at = |body: &serde_json::Value| {
        body["windows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["start"] == minute.as_str())
            .map_or(0, |w| w["count"].as_u64().unwrap())
    };
    let old_count = count_at(&before);
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let (_, body) = get(&http, &path).await;
        if count_at(&body) == old_count + 1 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "gold did not take the late reading: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let w = after["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["start"] == minute.as_str())
        .unwrap();
    assert_eq!(w["temperature_c"]["max"], 190.5);
    let lambda_path = format!("{base}/v1/lambda/sensors/d0/windows?{range}");
    let (_, lambda) = get(&http, &lambda_path).await;
    assert_eq!(
        count_at(&lambda),
        old_count,
        "the Lambda view waits for the batch"
    );
    s.wait_applied(Duration::from_secs(30));
    wait_archived(&s, &master, &log).await;
    lambdalake_batch::run_once(&config).await.expect("run 2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, lambda) = get(&http, &lambda_path).await;
    assert_eq!(
        values(&lambda),
        values(&after),
        "after the recompute both agree"
    );

    // time travel: the version before the late reading, by number and by instant
    for q in [
        format!("version={v_before}"),
        format!("as_of={}", lambdalake_serving::windows::rfc3339(between)),
    ] {
        let (status, old) = get(&http, &format!("{path}&{q}")).await;
        assert_eq!(status, 200, "{q}: {old}");
        assert_eq!(old["batch"]["version"], v_before, "{q}");
        assert_eq!(values(&old), values(&before), "{q}");
    }
    let (status, body) = get(&http, &format!("{path}&version=999999")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no version 999999"),
        "{body}"
    );
    let (status, body) = get(
        &http,
        &format!("{path}&version=1&as_of=2026-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // history: newest first, the MERGE that took the late reading among them
    let (status, h) = get(
        &http,
        &format!("{base}/v1/lakehouse/tables/gold_sensor_windows/history?limit=5"),
    )
    .await;
    assert_eq!(status, 200, "{h}");
    check_openapi(&http, &base, "/v1/lakehouse/tables/{name}/history", 200, &h).await;
    let commits = h["commits"].as_array().unwrap();
    let latest = h["latest_version"].as_i64().unwrap();
    assert_eq!(commits.len() as i64, (latest + 1).min(5), "{h}");
    assert_eq!(commits[0]["version"], h["latest_version"]);
    assert!(
        commits
            .windows(2)
            .all(|c| c[0]["version"].as_i64() > c[1]["version"].as_i64())
    );
    assert!(commits.iter().any(|c| c["operation"] == "MERGE"), "{h}");
    let (status, h) = get(
        &http,
        &format!("{base}/v1/lakehouse/tables/bronze/history?limit=3"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        h["commits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["operation"] == "WRITE" && c["rows_added"].as_i64() > Some(0)),
        "{h}"
    );
    let (status, body) = get(&http, &format!("{base}/v1/lakehouse/tables/nope/history")).await;
    assert_eq!(status, 404, "{body}");
    check_openapi(
        &http,
        &base,
        "/v1/lakehouse/tables/{name}/history",
        404,
        &body,
    )
    .await;
    token.cancel();
    let _ = std::fs::remove_dir_all(&master);
    let _ = std::fs::remove_dir_all(&lake.dir);
}

/// A gold sensor window as the Python reader lists it: device, start, then [`SensorRow`].
type GoldRow = (String, i64, i64, f64, f64, i64, f64, f64, i64);

/// The Python interpreter with `deltalake` installed by `infra/local/stack install-pydelta`.
fn pydelta() -> String {
    std::env::var("LAMBDALAKE_PYDELTA").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/lambdalake/pydeltalake-1.6.6/bin/python")
    })
}

/// What Python `deltalake` (an independent reader) sees in the tables at `dir`: per table its
/// version and rows (bronze: coordinates; gold sensor windows: every column but the update time).
fn read_with_python(dir: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
from deltalake import DeltaTable
root = sys.argv[1]
out = {}
for name in ["bronze", "silver_sensor_readings", "silver_payments", "gold_sensor_windows", "gold_card_windows"]:
    dt = DeltaTable(f"{root}/{name}")
    t = dt.to_pyarrow_table()
    out[name] = {"version": dt.version(), "rows": t.num_rows}
b = DeltaTable(f"{root}/bronze").to_pyarrow_table(columns=["topic", "kafka_partition", "kafka_offset"]).to_pylist()
out["bronze_rows"] = sorted([r["topic"], r["kafka_partition"], r["kafka_offset"]] for r in b)
g = DeltaTable(f"{root}/gold_sensor_windows").to_pyarrow_table().to_pylist()
out["gold_rows"] = sorted([r["device_id"], r["start_ms"], r["count"], r["temperature_min"], r["temperature_max"],
    r["temperature_sum_micro"], r["vibration_min"], r["vibration_max"], r["vibration_sum_micro"]] for r in g)
print(json.dumps(out), flush=True)
# deltalake 1.6.6's runtime can abort at interpreter teardown, after the answer: leave at once
import os
os._exit(0)
"#;
    let python = pydelta();
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} (install it with `infra/local/stack install-pydelta`): {e}")
        });
    assert!(
        out.status.success(),
        "Python deltalake failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the Python reader")
}

/// The tables are valid Delta (Python `deltalake` reads the same rows); OPTIMIZE compacts them
/// while time travel still reaches the versions before it; VACUUM keeps the files a version
/// inside the retention needs and deletes them once outside it.
#[tokio::test(flavor = "multi_thread")]
async fn an_independent_reader_agrees_and_vacuum_respects_retention() {
    use lambdalake_lakehouse::maintenance;
    use lambdalake_lakehouse::tables::At;

    let mut s = Setup::new();
    let mut lake = Lake::new();
    let (sensors, payments) = stream_spaced(2_000, 8, 0.05, 400);
    let mut guard = Kill(vec![lake.spawn(&s, &[])]);
    for (a, b) in sensors.chunks(100).zip(payments.chunks(100)) {
        s.send_sensors(a).await;
        s.send_payments(b).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_bronze(&s, &lake, Duration::from_secs(60)).await;
    wait_gold(&s, &lake, Duration::from_secs(60)).await;
    // /metrics names every series and counts what was written
    let log = std::fs::read_to_string(lake.logs.last().unwrap()).unwrap();
    let port = log
        .split("lakehouse ready")
        .nth(1)
        .and_then(|l| l.split("port=").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .expect("the port in the log");
    let page = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in lambdalake_lakehouse::metrics::NAMES {
        assert!(page.contains(name), "{name} missing from /metrics");
    }
    let written = page
        .lines()
        .find(|l| l.starts_with(r#"lambdalake_lakehouse_rows_total{table="bronze"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("the bronze rows series");
    assert_eq!(written as i64, s.ends.values().sum::<i64>());
    assert!(
        page.contains(r#"lambdalake_lakehouse_dropped_total{reason="duplicate""#),
        "duplicates are counted"
    );
    guard.0[0].kill().expect("stop the lakehouse");
    let _ = guard.0[0].wait();
    assert_tables(&s, &lake).await;

    // Python deltalake: same versions, rows, bronze coordinates and gold windows
    let py = read_with_python(&lake.dir);
    let location = Location::parse(&lake.tables).unwrap();
    for t in [
        Table::Bronze,
        Table::SilverSensorReadings,
        Table::SilverPayments,
        Table::GoldSensorWindows,
        Table::GoldCardWindows,
    ] {
        let ours = location.load(t, At::Latest).await.unwrap();
        assert_eq!(
            py[t.name()]["version"].as_u64(),
            ours.version(),
            "{}",
            t.name()
        );
    }
    let bronze: Vec<(String, i32, i64)> = bronze_rows(&lake.tables).await.into_keys().collect();
    let py_bronze: Vec<(String, i32, i64)> =
        serde_json::from_value(py["bronze_rows"].clone()).unwrap();
    assert_eq!(py_bronze, bronze);
    let gold = gold_sensors(&lake.tables).await;
    let py_gold: Vec<GoldRow> = serde_json::from_value(py["gold_rows"].clone()).unwrap();
    let ours: Vec<GoldRow> = gold
        .iter()
        .map(|((d, s), v)| (d.clone(), *s, v.0, v.1, v.2, v.3, v.4, v.5, v.6))
        .collect();
    assert_eq!(py_gold, ours);

    // OPTIMIZE of bronze (appended to by every micro-batch: many small files): fewer files,
    // same rows; the version before it is still readable
    let before = location.load(Table::Bronze, At::Latest).await.unwrap();
    let v_before = before.version().unwrap();
    let files_before = before.get_file_uris().unwrap().count();
    let (optimized, summary) = maintenance::optimize(before).await.unwrap();
    assert!(optimized.version().unwrap() > v_before, "{summary}");
    assert!(
        optimized.get_file_uris().unwrap().count() < files_before,
        "{summary}"
    );
    let read_at = |at: At| {
        let location = location.clone();
        async move {
            let t = location.load(Table::Bronze, at).await?;
            let ctx = SessionContext::new();
            t.update_datafusion_session(&ctx.state())?;
            ctx.register_table("t", t.table_provider().await?)?;
            let n = ctx
                .sql("select count(*) as n, count(distinct (kafka_partition, kafka_offset, topic)) as c from t")
                .await?
                .collect()
                .await?;
            Ok::<_, Box<dyn std::error::Error>>((
                col::<Int64Array>(&n[0], "n").value(0),
                col::<Int64Array>(&n[0], "c").value(0),
            ))
        }
    };
    let records: i64 = s.ends.values().sum();
    let rows = (records, records);
    assert_eq!(read_at(At::Latest).await.unwrap(), rows);
    assert_eq!(read_at(At::Version(v_before)).await.unwrap(), rows);

    // VACUUM with a retention the compacted files are inside of: nothing deleted, time travel
    // still works
    let (t, deleted) = maintenance::vacuum(optimized, Duration::from_secs(3_600))
        .await
        .unwrap();
    assert_eq!(deleted, 0);
    assert_eq!(read_at(At::Version(v_before)).await.unwrap(), rows);
    // VACUUM with no retention: the files only old versions use are gone, so is the travel
    // back to them; the latest version is whole
    let (_, deleted) = maintenance::vacuum(t, Duration::ZERO).await.unwrap();
    assert!(deleted > 0);
    assert!(
        read_at(At::Version(v_before)).await.is_err(),
        "the old files are gone"
    );
    assert_eq!(read_at(At::Latest).await.unwrap(), rows);
    let py = read_with_python(&lake.dir);
    assert_eq!(py["bronze"]["rows"].as_i64(), Some(records));
    let _ = std::fs::remove_dir_all(&lake.dir);
}

/// Schema evolution: events gain new optional fields while the lakehouse runs; silver gains one
/// column per field (the JSON value as a string, null for the rows before), without a restart,
/// and readers see it; names that cannot be columns stay in bronze; gold is unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn new_event_fields_become_silver_columns_without_a_restart() {
    use crate::speed::{now_ms, sensor_json};

    let mut s = Setup::new();
    let mut lake = Lake::new();
    let _guard = Kill(vec![lake.spawn(&s, &[])]);
    let t = now_ms() - 300_000;
    let before: Vec<String> = (0..200)
        .map(|i| {
            sensor_json(
                &format!("old{i}"),
                &format!("d{}", i % 4),
                t + i * 500,
                21.5,
                1.0,
            )
        })
        .collect();
    s.send_sensors(&before).await;
    wait_gold(&s, &lake, Duration::from_secs(60)).await;
    // the same readings with three new fields, one of them nested, and one field whose name
    // cannot be a column
    let after: Vec<String> = (0..100)
        .map(|i| {
            // the first one overheats: an alert
            let temp = if i == 0 { 95.5 } else { 22.5 };
            let plain = sensor_json(&format!("new{i}"), &format!("d{}", i % 4), t + 100_000 + i * 500, temp, 1.0);
            format!(
                r#"{},"firmware":"1.2.{i}","battery_pct":{},"meta":{{"a":[1,2]}},"Bad-Name":true}}"#,
                plain.trim_end_matches('}'),
                50 + i % 50
            )
        })
        .collect();
    s.send_sensors(&after).await;
    wait_gold(&s, &lake, Duration::from_secs(60)).await;
    assert_tables(&s, &lake).await;

    let mut rows = BTreeMap::new();
    for b in query(
        &lake.tables,
        Table::SilverSensorReadings,
        "select event_id, firmware, battery_pct, meta from t",
    )
    .await
    {
        assert!(b.column_by_name("Bad-Name").is_none());
        let (id, fw, bat, meta) = (
            text(&b, "event_id"),
            text(&b, "firmware"),
            text(&b, "battery_pct"),
            text(&b, "meta"),
        );
        for i in 0..b.num_rows() {
            let opt = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_owned());
            rows.insert(id.value(i).to_owned(), (opt(&fw), opt(&bat), opt(&meta)));
        }
    }
    assert_eq!(rows.len(), 300);
    assert_eq!(rows["old7"], (None, None, None));
    assert_eq!(
        rows["new7"],
        (
            Some("1.2.7".to_owned()),
            Some("57".to_owned()),
            Some(r#"{"a":[1,2]}"#.to_owned())
        )
    );
    // an independent reader sees the evolved schema
    let python = pydelta();
    let out = Command::new(&python)
        .arg("-c")
        .arg(
            // os._exit: deltalake 1.6.6's runtime can abort at interpreter teardown, after the answer
            "import os, sys, json; from deltalake import DeltaTable; \
             t = DeltaTable(sys.argv[1]).to_pyarrow_table(); \
             print(json.dumps([t.num_rows, sum(1 for v in t.column('firmware').to_pylist() if v is not None)]), flush=True); \
             os._exit(0)",
        )
        .arg(lake.dir.join("silver_sensor_readings"))
        .output()
        .expect("python deltalake");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: (u64, u64) = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts, (300, 100));
    let _ = std::fs::remove_dir_all(&lake.dir);
}

/// Two instances in one consumer group write the same tables (their MERGEs into gold conflict
/// and are merged again), then one is SIGKILLed and the other takes over its partitions: every
/// table stays exact.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_the_tables_and_one_takes_over_after_a_kill() {
    let mut s = Setup::new();
    let mut lake = Lake::new();
    let (sensors, payments) = stream_spaced(6_000, 30, 0.05, 600);
    let mut guard = Kill(vec![lake.spawn(&s, &[])]);
    lake.wait_assigned(Duration::from_secs(60)).await;
    guard.0.push(lake.spawn(&s, &[]));
    let chunks: Vec<(&[String], &[String])> =
        sensors.chunks(100).zip(payments.chunks(100)).collect();
    let half = chunks.len() / 2;
    for c in &chunks[..half] {
        s.send_sensors(c.0).await;
        s.send_payments(c.1).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // both have partitions by now (the second joined, the group rebalanced)
    lake.wait_assigned(Duration::from_secs(60)).await;
    guard.0[0].kill().expect("SIGKILL");
    guard.0[0].wait().expect("reaped");
    for c in &chunks[half..] {
        s.send_sensors(c.0).await;
        s.send_payments(c.1).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    wait_bronze(&s, &lake, Duration::from_secs(120)).await;
    wait_gold(&s, &lake, Duration::from_secs(90)).await;
    assert_tables(&s, &lake).await;
    drop(guard);
    let _ = std::fs::remove_dir_all(&lake.dir);
}

/// A backlog taken in one micro-batch holds tens of thousands of cards: their histories are read
/// in bounded queries (one IN list of every card overflowed the pipeline thread's stack, seen
/// when the benchmark's SIGKILLed lakehouse caught up); every payment is scored once.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_many_distinct_cards_is_scored_in_one_micro_batch() {
    let mut s = Setup::new();
    let mut lake = Lake::new();
    let now = crate::speed::now_ms();
    let n = 30_000;
    let payments: Vec<String> = (0..n)
        .map(|i| {
            crate::speed::payment_json(
                &format!("{}-p{i}", lake.group),
                &format!("card-{i}"),
                now + i as i64,
                1_000,
                "m-1",
                5411,
                "FR",
                45.0,
                4.0,
            )
        })
        .collect();
    for chunk in payments.chunks(5_000) {
        s.send_payments(chunk).await;
    }
    // the backlog is there before the lakehouse starts: its first micro-batches are large
    let _guard = Kill(vec![lake.spawn(&s, &["--max-rows", "100000"])]);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if lake.dir.join("gold_fraud_scores").exists()
            && count(&lake.tables, Table::GoldFraudScores).await == n as i64
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the payments were not all scored; logs: {}",
            lake.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = std::fs::read_to_string(lake.logs.last().unwrap()).unwrap();
    assert!(!log.contains("overflowed"), "{log}");
    drop(_guard);
    let _ = std::fs::remove_dir_all(&lake.dir);
}

/// A trigger shorter than a micro-batch (Spark's ProcessingTime: the next batch starts as soon
/// as the late one ends) must not shrink the batches to one record each: the next batch takes
/// everything the consumer fetched meanwhile. Batches of one record (seen in the fault suite
/// under CPU load) commit eight tables per record and never catch up.
#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_shorter_than_a_batch_still_takes_what_arrived_in_one_batch() {
    let mut s = Setup::new();
    let mut lake = Lake::new();
    let now = crate::speed::now_ms();
    let n = 20_000;
    let readings: Vec<String> = (0..n)
        .map(|i| {
            crate::speed::sensor_json(
                &format!("{}-r{i}", lake.group),
                &format!("dev-{}", i % 50),
                now - 60_000 + i as i64,
                20.0,
                1.0,
            )
        })
        .collect();
    for chunk in readings.chunks(5_000) {
        s.send_sensors(chunk).await;
    }
    let _guard = Kill(vec![lake.spawn(&s, &["--trigger", "1ms"])]);
    wait_bronze(&s, &lake, Duration::from_secs(120)).await;
    let bronze = Location::parse(&lake.tables)
        .unwrap()
        .open(Table::Bronze, 10)
        .await
        .unwrap();
    let commits = bronze.version().unwrap_or_default();
    // the consumer fetches thousands of records at a time; one record per batch would be
    // 20,000 commits
    assert!(
        commits <= 200,
        "{commits} bronze commits for {n} records; logs: {}",
        lake.logs()
    );
    drop(_guard);
    let _ = std::fs::remove_dir_all(&lake.dir);
}
