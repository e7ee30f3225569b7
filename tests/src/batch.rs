//! The batch layer on the real broker, Postgres and filesystem: the `lambdalake-batch` archiver
//! under SIGKILLs, and versioned publication read concurrently.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lambdalake_batch::archiver::append;
use lambdalake_batch::dataset::{Dataset, Kind};
use lambdalake_events::EventTime;
use lambdalake_kafka::{KafkaArgs, Producer, ProducerArgs};
use lambdalake_views::fraud::{CardProfile, Model};
use lambdalake_views::keys::Keys;
use lambdalake_views::table::Keyed;
use lambdalake_views::{CardAgg, SensorAgg, Stat, Window};
use polars::prelude::*;
use rand::Rng;

use crate::support::unique;

pub(crate) fn batch_binary() -> PathBuf {
    crate::support::workspace_binary("lambdalake-batch")
}

fn postgres_url() -> String {
    std::env::var("LAMBDALAKE_POSTGRES_URL").unwrap_or_else(|_| {
        "postgres://lambdalake:lambdalake@127.0.0.1:15432/lambdalake".to_owned()
    })
}

/// A fresh database for one test; its URL.
pub(crate) async fn fresh_database() -> String {
    fresh_database_on(&postgres_url()).await
}

/// A new database on the server of `base` (a URL naming any database there).
pub(crate) async fn fresh_database_on(base: &str) -> String {
    let admin = lambdalake_batch::connect(base)
        .await
        .expect("postgres (is the local stack up?)");
    let name = unique("ll_test").replace('-', "_");
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .expect("create database");
    let (head, _) = base.rsplit_once('/').expect("a database in the URL");
    format!("{head}/{name}")
}

fn kafka() -> (KafkaArgs, ProducerArgs) {
    crate::support::kafka_and_producer()
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every (offset, raw record) a partition's manifest lists, in file order.
fn archived(dataset: &Dataset, topic: &str, partition: i32) -> Vec<(i64, String)> {
    let Some(m) = dataset.manifest(topic, partition).expect("manifest") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for f in &m.files {
        let file = std::fs::File::open(dataset.local(&f.path).expect("listed file exists"))
            .expect("listed file readable");
        let df = ParquetReader::new(file).finish().expect("parquet");
        let offsets = df.column("offset").unwrap().i64().unwrap().clone();
        let raw = df.column("raw").unwrap().clone();
        for i in 0..df.height() {
            let r = match raw.dtype() {
                DataType::String => raw.str().unwrap().get(i).unwrap().to_owned(),
                _ => String::from_utf8_lossy(raw.binary().unwrap().get(i).unwrap()).into_owned(),
            };
            out.push((offsets.get(i).unwrap(), r));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn archiver_killed_at_random_moments_keeps_every_record_exactly_once() {
    let dir = std::env::temp_dir().join(unique("ll-master"));
    archiver_under_kills(dir.to_str().unwrap(), 30_000).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same on the S3-compatible store of the local stack: data files put whole, manifests put
/// conditionally on the version last read.
#[tokio::test(flavor = "multi_thread")]
async fn archiver_on_s3_killed_at_random_moments_keeps_every_record_exactly_once() {
    let location = format!("{}/{}", s3_url(), unique("it-master"));
    let dataset = archiver_under_kills(&location, 12_000).await;
    // a recompute reads the bucket (through its local cache)
    let url = fresh_database().await;
    let run = lambdalake_batch::run_once(&config_for(
        Path::new(&location),
        &url,
        &unique("it-batch"),
        &[],
    ))
    .await
    .expect("a run over the bucket");
    let (sensor_rows, payment_rows) = tokio::task::spawn_blocking(move || {
        let s = dataset.snapshot().unwrap();
        let rows = |k: Kind| -> u64 {
            s.manifests
                .iter()
                .flat_map(|m| &m.files)
                .filter(|f| f.kind == k)
                .map(|f| f.rows)
                .sum()
        };
        (rows(Kind::SensorReading), rows(Kind::Payment))
    })
    .await
    .unwrap();
    assert_eq!(run.rows_scanned, sensor_rows + payment_rows);
    assert_eq!(run.events_counted, sensor_rows + payment_rows);
}

fn s3_url() -> String {
    std::env::var("LAMBDALAKE_S3_URL").expect(
        "LAMBDALAKE_S3_URL and AWS_* (eval \"$(infra/local/stack env)\": the local stack runs an S3-compatible store)",
    )
}

/// A manifest is replaced only by the writer that read its current version: a second writer
/// that committed in between fences the first, whose commit fails without overwriting.
#[tokio::test(flavor = "multi_thread")]
async fn on_s3_a_manifest_commit_is_conditional_on_the_version_read() {
    let location = format!("{}/{}", s3_url(), unique("it-master"));
    tokio::task::spawn_blocking(move || {
        let a = Dataset::open(&location).unwrap();
        let b = Dataset::open(&location).unwrap();
        append(
            &a,
            "s",
            0,
            Kind::SensorReading,
            readings(0, 10, 1_764_028_800_000, 2),
        )
        .unwrap();
        let seen_by_a = a.manifest("s", 0).unwrap().unwrap();
        // b commits records 10..20 meanwhile
        append(
            &b,
            "s",
            0,
            Kind::SensorReading,
            readings(10, 10, 1_764_028_800_000, 2),
        )
        .unwrap();
        let mut stale = seen_by_a.clone();
        stale.retired.push(("x".to_owned(), 0));
        match a.put_manifest(&stale) {
            Err(lambdalake_batch::dataset::DatasetError::Fenced { topic, partition }) => {
                assert_eq!((topic.as_str(), partition), ("s", 0));
            }
            other => panic!("a stale commit went through: {other:?}"),
        }
        let stored = b.manifest("s", 0).unwrap().unwrap();
        assert_eq!(stored.next_offset, 20);
        assert_eq!(stored.rows(), 20);
        // a writer that never read the manifest cannot create it over an existing one either
        let c = Dataset::open(&location).unwrap();
        assert!(c.manifest("s", 1).unwrap().is_none());
        append(
            &b,
            "s",
            1,
            Kind::SensorReading,
            readings(0, 5, 1_764_028_800_000, 2),
        )
        .unwrap();
        let fresh = lambdalake_batch::dataset::Manifest::new("s", 1);
        assert!(matches!(
            c.put_manifest(&fresh),
            Err(lambdalake_batch::dataset::DatasetError::Fenced { .. })
        ));
    })
    .await
    .unwrap();
}

/// Run the archiver binary on `location` while at least `events` records flow, SIGKILL it at
/// random moments (five times or more), then check every record is archived exactly once.
async fn archiver_under_kills(location: &str, events: u64) -> Dataset {
    let (kafka, producer_args) = kafka();
    let producer = Producer::new(&kafka, &producer_args).expect("producer");
    let sensor = unique("it-sensor");
    let payment = unique("it-payment");
    let labels = unique("it-labels");
    let group = unique("it-archiver");
    let log = std::env::temp_dir().join(format!("{group}.log"));
    let spawn = || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        Command::new(batch_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--dataset",
                location,
                "--group",
                &group,
                "--topic-sensor-readings",
                &sensor,
                "--topic-payments",
                &payment,
                "--topic-fraud-labels",
                &labels,
                "--flush-interval",
                "150ms",
                "--flush-records",
                "500",
                "--compact-every",
                "1s",
                "--compact-min-files",
                "4",
                "--kafka-option",
                "session.timeout.ms=6000",
                "--kafka-option",
                "heartbeat.interval.ms=500",
                "archive",
            ])
            .env("LAMBDALAKE_LOG", "info")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start lambdalake-batch")
    };
    let mut guard = Kill(vec![spawn()]);
    let mut rng = rand::rng();
    let t0 = 1_764_028_000_000i64;
    // what was produced: (topic, partition) → offset → payload
    let mut sent: HashMap<(String, i32), BTreeMap<i64, String>> = HashMap::new();
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(rng.random_range(1_000..2_500));
    let mut i = 0u64;
    while i < events || kills < 5 {
        let batch = producer.batch();
        let mut payloads = Vec::new();
        for _ in 0..300 {
            i += 1;
            let ts = t0 + i as i64 * 37;
            let (topic, key, json) = if i.is_multiple_of(3) {
                let card = format!("c{}", i % 50);
                (
                    &payment,
                    card.clone(),
                    format!(
                        r#"{{"event_id":"p{i}","txn_id":"t{i}","card_id":"{card}","merchant_id":"m1","mcc":"5411","amount":12.5,"currency":"EUR","country":"FR","lat":1.0,"lon":2.0,"ts":{ts}}}"#
                    ),
                )
            } else if i.is_multiple_of(97) {
                // not an event: archived as invalid, never lost
                (&sensor, "bad".to_owned(), format!("{{broken {i}"))
            } else {
                let dev = format!("d{}", i % 30);
                (
                    &sensor,
                    dev.clone(),
                    format!(
                        r#"{{"event_id":"s{i}","device_id":"{dev}","site":"p","ts":{ts},"temperature_c":20.5,"vibration_mm_s":1.25}}"#
                    ),
                )
            };
            batch
                .send(payloads.len(), topic, key.as_bytes(), json.as_bytes())
                .expect("enqueue");
            payloads.push((topic.clone(), json));
        }
        for (slot, outcome) in batch.acked().await {
            let acked = outcome.expect("acknowledged");
            let (topic, json) = &payloads[slot];
            sent.entry((topic.clone(), acked.partition))
                .or_default()
                .insert(acked.offset, json.clone());
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        if Instant::now() >= next_kill {
            let child = &mut guard.0[0];
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
            kills += 1;
            guard.0[0] = spawn();
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(1_000..2_500));
        }
    }
    // wait until every partition's manifest reached what was produced
    let dataset = Dataset::open(location).expect("dataset");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let behind: Vec<String> = sent
            .iter()
            .filter_map(|((topic, p), offsets)| {
                let end = offsets.keys().last().map_or(0, |o| o + 1);
                let next = dataset
                    .manifest(topic, *p)
                    .ok()
                    .flatten()
                    .map_or(0, |m| m.next_offset);
                (next < end).then(|| format!("{topic}/{p}: {next} < {end}"))
            })
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the archiver did not catch up: {behind:?}; log {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(kills >= 5);
    for ((topic, p), offsets) in &sent {
        let got = archived(&dataset, topic, *p);
        let mut by_offset: BTreeMap<i64, String> = BTreeMap::new();
        for (offset, raw) in got {
            assert!(
                by_offset.insert(offset, raw).is_none(),
                "{topic}/{p}: offset {offset} archived twice"
            );
        }
        assert_eq!(
            &by_offset, offsets,
            "{topic}/{p}: the archive differs from what was produced"
        );
    }
    // the compaction ran and nothing the manifests do not list is left
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("compacted small files"),
        "no compaction happened; log {}",
        log.display()
    );
    drop(guard);
    dataset
}

/// Sensor readings of `devices` devices, one per second from `t0`, as (offset, ts, raw).
fn readings(from: i64, n: i64, t0: i64, devices: i64) -> Vec<(i64, Option<i64>, Vec<u8>)> {
    (from..from + n)
        .map(|i| {
            let ts = t0 + i * 1_000;
            (
                i,
                Some(ts),
                format!(
                    r#"{{"event_id":"s{i}","device_id":"d{}","site":"p","ts":{ts},"temperature_c":{}.5,"vibration_mm_s":1.0}}"#,
                    i % devices,
                    i % 40
                )
                .into_bytes(),
            )
        })
        .collect()
}

/// A `run-once` configuration on `dataset` and the database at `url`, writing the speed layer's
/// reference data under `key_prefix`.
pub(crate) fn config_for(
    dataset: &Path,
    url: &str,
    key_prefix: &str,
    extra: &[&str],
) -> lambdalake_batch::Config {
    let mut args = vec![
        "lambdalake-batch",
        "--dataset",
        dataset.to_str().unwrap(),
        "--postgres-url",
        url,
        "--keep-versions",
        "2",
        "--key-prefix",
        key_prefix,
    ];
    args.extend(extra);
    args.push("run-once");
    <lambdalake_batch::Config as clap::Parser>::try_parse_from(args).expect("valid arguments")
}

fn window(start: i64, end: i64) -> Window {
    Window {
        start: EventTime::from_millis_unchecked(start),
        end: EventTime::from_millis_unchecked(end),
    }
}

/// A sensor view (`1m` or `5m1m`) of batch version `version`, as `lambdalake_views` keys it.
pub(crate) async fn batch_sensor_view(
    client: &tokio_postgres::Client,
    version: i64,
    view: &str,
) -> Keyed<SensorAgg> {
    client
        .query(
            "select device_id, start_ms, end_ms, count, temperature_min, temperature_max,
                    temperature_sum_micro, vibration_min, vibration_max, vibration_sum_micro
             from sensor_windows where version = $1 and view = $2",
            &[&version, &view],
        )
        .await
        .expect("sensor_windows")
        .iter()
        .map(|r| {
            (
                (r.get::<_, String>(0), window(r.get(1), r.get(2))),
                SensorAgg {
                    count: r.get::<_, i64>(3) as u64,
                    temperature_c: Stat {
                        min: r.get(4),
                        max: r.get(5),
                        sum_micro: i128::from(r.get::<_, i64>(6)),
                    },
                    vibration_mm_s: Stat {
                        min: r.get(7),
                        max: r.get(8),
                        sum_micro: i128::from(r.get::<_, i64>(9)),
                    },
                },
            )
        })
        .collect()
}

/// A card view (`card_windows` or `card_sessions`) of batch version `version`.
pub(crate) async fn batch_card_view(
    client: &tokio_postgres::Client,
    table: &str,
    version: i64,
) -> Keyed<CardAgg> {
    client
        .query(
            &format!(
                "select card_id, start_ms, end_ms, count, amount_sum_cents, amount_max_cents,
                        merchants, countries
                 from {table} where version = $1"
            ),
            &[&version],
        )
        .await
        .expect("card view")
        .iter()
        .map(|r| {
            (
                (r.get::<_, String>(0), window(r.get(1), r.get(2))),
                CardAgg {
                    count: r.get::<_, i64>(3) as u64,
                    amount_sum_cents: r.get(4),
                    amount_max_cents: r.get(5),
                    merchants: r.get::<_, Vec<String>>(6).into_iter().collect(),
                    countries: r.get::<_, Vec<String>>(7).into_iter().collect(),
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_version_is_published_atomically_while_readers_query_the_last_one() {
    let url = fresh_database().await;
    let dir = std::env::temp_dir().join(unique("ll-master"));
    let dataset = Dataset::open(&dir).unwrap();
    let t0 = 1_764_028_800_000i64; // a minute boundary
    append(
        &dataset,
        "s",
        0,
        Kind::SensorReading,
        readings(0, 20_000, t0, 50),
    )
    .unwrap();
    let config = config_for(&dir, &url, &unique("it-batch"), &[]);
    let first = lambdalake_batch::run_once(&config)
        .await
        .expect("first run");
    assert_eq!(first.version, 1);
    // cutoff: the last reading (t0 + 19,999 s) − 30 s, floored to the minute
    let cutoff = first.cutoff_ms.expect("cutoff");
    assert_eq!(
        cutoff,
        (t0 + 19_999_000 - 30_000).div_euclid(60_000) * 60_000
    );
    let expected_v1 = (cutoff - t0) / 1_000; // readings in closed 1-minute windows
    let client = lambdalake_batch::connect(&url).await.unwrap();
    let row = client
        .query_one(
            "select sum(count)::bigint, count(*) from sensor_windows where version = 1 and view = '1m'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), expected_v1);
    // one window checked field by field: device d0's first minute holds readings 0, 50
    let w = client
        .query_one(
            "select count, temperature_min, temperature_max, temperature_sum_micro
             from sensor_windows where version = 1 and view = '1m' and device_id = 'd0' and start_ms = $1",
            &[&t0],
        )
        .await
        .unwrap();
    assert_eq!(w.get::<_, i64>(0), 2);
    assert_eq!(w.get::<_, f64>(1), 0.5);
    assert_eq!(w.get::<_, f64>(2), 10.5);
    assert_eq!(w.get::<_, i64>(3), 11_000_000);

    // more data, and a reader that checks every version it sees is whole
    append(
        &dataset,
        "s",
        0,
        Kind::SensorReading,
        readings(20_000, 20_000, t0, 50),
    )
    .unwrap();
    let reader_url = url.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_r = stop.clone();
    let reader = tokio::spawn(async move {
        let mut c = lambdalake_batch::connect(&reader_url).await.unwrap();
        let mut seen: BTreeMap<i64, u64> = BTreeMap::new();
        while !stop_r.load(std::sync::atomic::Ordering::Acquire) {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await
                .unwrap();
            let v = tx
                .query_one(
                    "select version, cutoff_ms from batch_runs order by version desc limit 1",
                    &[],
                )
                .await
                .unwrap();
            let (version, cutoff): (i64, i64) = (v.get(0), v.get(1));
            let sum: i64 = tx
                .query_one(
                    "select coalesce(sum(count), 0)::bigint from sensor_windows where version = $1 and view = '1m'",
                    &[&version],
                )
                .await
                .unwrap()
                .get(0);
            tx.commit().await.unwrap();
            assert_eq!(
                sum,
                (cutoff - t0) / 1_000,
                "version {version} read incomplete"
            );
            *seen.entry(version).or_default() += 1;
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = lambdalake_batch::run_once(&config)
        .await
        .expect("second run");
    assert_eq!(second.version, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let seen = reader.await.expect("reader");
    assert!(seen.contains_key(&1) && seen.contains_key(&2), "{seen:?}");
    // a third run drops version 1 (two versions kept)
    let third = lambdalake_batch::run_once(&config)
        .await
        .expect("third run");
    assert_eq!(third.version, 3);
    let versions: Vec<i64> = client
        .query("select version from batch_runs order by version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![2, 3]);
    let gone = client
        .query(
            "select 1 from sensor_windows where version = 1 limit 1",
            &[],
        )
        .await
        .unwrap();
    assert!(gone.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_trains_the_fraud_model_and_hands_it_with_the_profiles_to_the_speed_layer() {
    let url = fresh_database().await;
    let dir = std::env::temp_dir().join(unique("ll-master"));
    let dataset = Dataset::open(&dir).unwrap();
    let (payments, labels) = lambdalake_batch::testing::fraud_history(5, 120, 40);
    let offsets = |records: Vec<Vec<u8>>| -> Vec<(i64, Option<i64>, Vec<u8>)> {
        records
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i as i64, None, r))
            .collect()
    };
    append(&dataset, "p", 0, Kind::Payment, offsets(payments)).unwrap();
    append(&dataset, "l", 0, Kind::FraudLabel, offsets(labels)).unwrap();
    let prefix = unique("it-batch");
    let config = config_for(&dir, &url, &prefix, &["--model-min-frauds", "10"]);
    let run = lambdalake_batch::run_once(&config).await.expect("run");
    let m = run.model.clone().expect("a model is trained");
    assert_eq!(m.model.version, "batch-v1");
    assert!(m.auc.expect("AUC") > 0.95, "{m:?}");
    assert!(m.recall.expect("recall") > 0.5, "{m:?}");
    let line = run.to_string();
    assert!(line.contains("model batch-v1 (trained on"), "{line}");

    // Postgres: the model and its quality, in the version
    let client = lambdalake_batch::connect(&url).await.unwrap();
    let row = client
        .query_one(
            "select model, trained_on, held_out, precision, recall, auc from fraud_models where version = 1",
            &[],
        )
        .await
        .expect("a fraud_models row");
    let stored: Model = serde_json::from_value(row.get(0)).unwrap();
    assert_eq!(stored, m.model);
    assert_eq!(row.get::<_, i64>(1) as u64, m.trained_on);
    assert_eq!(row.get::<_, i64>(2) as u64, m.held_out);
    assert_eq!(row.get::<_, Option<f64>>(5), m.auc);

    // Redis: what the speed layer reads
    let keys = Keys::new(prefix.clone());
    let redis_url = std::env::var("LAMBDALAKE_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:16379".to_owned());
    let mut con = redis::Client::open(redis_url)
        .unwrap()
        .get_connection()
        .expect("redis (is the local stack up?)");
    let model: String = redis::cmd("GET").arg(keys.model()).query(&mut con).unwrap();
    assert_eq!(serde_json::from_str::<Model>(&model).unwrap(), m.model);
    let version: String = redis::cmd("GET")
        .arg(keys.reference_version())
        .query(&mut con)
        .unwrap();
    assert_eq!(version, "1");
    let written = run.reference.clone().expect("written to Redis");
    assert_eq!(written.profiles, 120);
    let profiles = client
        .query(
            "select card_id, amount_mean_cents, amount_std_cents, home_country, countries
             from card_profiles where version = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(profiles.len(), 120);
    for r in &profiles {
        let card: String = r.get(0);
        let raw: String = redis::cmd("GET")
            .arg(keys.card_profile(&card))
            .query(&mut con)
            .unwrap();
        let p: CardProfile = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            p,
            CardProfile {
                amount_mean_cents: r.get(1),
                amount_std_cents: r.get(2),
                home_country: r.get(3),
                countries: r.get(4),
            },
            "card {card}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The scheduled mode recomputes on its interval without an archiver, and `/metrics` names every
/// series of the batch layer.
#[tokio::test(flavor = "multi_thread")]
async fn the_scheduled_mode_publishes_on_its_interval_and_metrics_name_every_series() {
    let url = fresh_database().await;
    let dir = std::env::temp_dir().join(unique("ll-master"));
    let dataset = Dataset::open(&dir).unwrap();
    append(
        &dataset,
        "s",
        0,
        Kind::SensorReading,
        readings(0, 3_000, 1_764_028_800_000, 5),
    )
    .unwrap();
    let prefix = unique("it-batch");
    let config = <lambdalake_batch::Config as clap::Parser>::try_parse_from([
        "lambdalake-batch",
        "--listen",
        "127.0.0.1:0",
        "--dataset",
        dir.to_str().unwrap(),
        "--postgres-url",
        &url,
        "--key-prefix",
        &prefix,
        "--interval",
        "300ms",
        "schedule",
    ])
    .unwrap();
    let app = lambdalake_batch::Application::build(config)
        .await
        .expect("the service starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let token = app.shutdown_token();
    let running = tokio::spawn(app.run_until_stopped());
    let client = lambdalake_batch::connect(&url).await.unwrap();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let versions = loop {
        let n: i64 = client
            .query_one("select count(*) from batch_runs", &[])
            .await
            .map_or(0, |r| r.get(0));
        if n >= 2 {
            break n;
        }
        assert!(Instant::now() < deadline, "no two scheduled runs in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(versions >= 2);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in lambdalake_batch::metrics::NAMES {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains(r#"lambdalake_batch_runs_total{outcome="published"}"#),
        "{metrics}"
    );
    token.cancel();
    running.await.unwrap().expect("the service stops cleanly");
    let _ = std::fs::remove_dir_all(&dir);
}
