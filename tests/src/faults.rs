//! The fault suite: a ledger of every event sent through ingest and the answer it got (accepted,
//! rejected, indeterminate); SIGKILLs of the speed layer, the lakehouse and the archiver at
//! random moments and a consumer rebalance (a second speed instance joins, then is killed) while
//! events flow; then, in every view — speed, batch, merged, lakehouse bronze, silver and gold —
//! the events lost, doubled and phantom, each listed. Run under each delivery mode of the speed
//! layer and the lakehouse, side by side.
//!
//! Every ledger event is the only reading of its own device, so a device's count in a view is
//! how many times that view counted the event. The short form runs in the test command;
//! `LAMBDALAKE_FAULTS=long` runs the long one (8 rounds: 25 kills with exactly-once, 17 in
//! each other mode, 49 faults in the infrastructure run).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use lambdalake_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use lambdalake_lakehouse::deltalake_core::arrow::array::{Array, Int64Array, StringArray};
use lambdalake_lakehouse::deltalake_core::arrow::compute::cast;
use lambdalake_lakehouse::deltalake_core::arrow::datatypes::DataType;
use lambdalake_lakehouse::tables::Table;
use lambdalake_views::keys::SensorView;
use rand::Rng;
use serde_json::Value;

use crate::lakehouse::{Lake, query};
use crate::speed::{Setup, now_ms, sensor_json, spawn_archiver, wait_archived};
use crate::support::{Ingest, unique};

/// What ingest answered for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    Rejected,
    /// Not confirmed: an item ingest reported `failed` (503, 429, 422: the broker did not
    /// acknowledge it) or a request without an answer. Maybe persisted, never a 2xx.
    Indeterminate,
}

/// Lost, doubled and phantom events of one view.
#[derive(Debug, Default, Clone)]
struct Judged {
    lost: Vec<String>,
    doubled: Vec<String>,
    phantom: Vec<String>,
}

impl Judged {
    /// `counts`: device → how many times the view counted its event.
    fn of(ledger: &BTreeMap<String, Answer>, counts: &HashMap<String, u64>) -> Judged {
        let mut j = Judged::default();
        for (device, answer) in ledger {
            let n = counts.get(device).copied().unwrap_or(0);
            match answer {
                Answer::Accepted if n == 0 => j.lost.push(device.clone()),
                Answer::Rejected if n > 0 => j.phantom.push(device.clone()),
                _ if n > 1 => j.doubled.push(device.clone()),
                _ => {}
            }
        }
        for device in counts.keys() {
            if !ledger.contains_key(device) {
                j.phantom.push(device.clone());
            }
        }
        j
    }

    fn clean(&self) -> bool {
        self.lost.is_empty() && self.doubled.is_empty() && self.phantom.is_empty()
    }
}

fn listed(v: &[String]) -> String {
    if v.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = v.iter().take(5).map(String::as_str).collect();
    format!(
        " ({}{})",
        shown.join(", "),
        if v.len() > 5 { ", …" } else { "" }
    )
}

struct Run {
    mode: &'static str,
    sent: usize,
    accepted: usize,
    rejected: usize,
    indeterminate: usize,
    kills: BTreeMap<&'static str, usize>,
    views: Vec<(&'static str, Judged)>,
    /// Ledger events before the batch cutoff (the batch view is judged on those).
    batch_covered: usize,
    /// Indeterminate events found in bronze (the broker had them; the answer was lost).
    indeterminate_persisted: usize,
}

/// Rounds of kills (each round kills every victim once): 2, or 8 with `LAMBDALAKE_FAULTS=long`.
fn kills_per_service() -> usize {
    match std::env::var("LAMBDALAKE_FAULTS").as_deref() {
        Ok("long") => 8,
        _ => 2,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_view_loses_doubles_and_invents_nothing_under_kills_with_exactly_once() {
    let mut runs = Vec::new();
    for mode in ["exactly-once", "at-least-once", "at-most-once"] {
        runs.push(run(mode, None).await);
    }
    let report = report(&runs);
    println!("{report}");
    let dir = crate::dashboard::artifacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("faults.md"), &report).unwrap();

    for r in &runs {
        assert!(r.accepted > 0, "{report}");
        assert!(r.kills.values().sum::<usize>() >= 4, "{report}");
        for (view, j) in &r.views {
            assert!(
                j.phantom.is_empty(),
                "{} {view}: phantoms\n{report}",
                r.mode
            );
            match r.mode {
                "exactly-once" => assert!(j.clean(), "exactly-once, {view}\n{report}"),
                // a repeated micro-batch: never skipped in the raw layer or the speed views
                "at-least-once" if matches!(*view, "bronze" | "speed") => {
                    assert!(j.lost.is_empty(), "at-least-once, {view}: lost\n{report}")
                }
                // a skipped micro-batch: never counted twice
                "at-most-once" => {
                    assert!(
                        j.doubled.is_empty(),
                        "at-most-once, {view}: doubled\n{report}"
                    )
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        runs[0].views.len(),
        6,
        "every view judged with exactly-once"
    );
    assert!(
        runs[0].batch_covered * 2 > runs[0].accepted,
        "most events are before the batch cutoff: {report}"
    );
}

fn report(runs: &[Run]) -> String {
    let mut out = String::from("# Fault suite\n\n");
    for r in runs {
        let _ = writeln!(
            out,
            "## {}: {} events sent, {} accepted, {} rejected, {} indeterminate; kills: {}\n",
            r.mode,
            r.sent,
            r.accepted,
            r.rejected,
            r.indeterminate,
            r.kills
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if r.indeterminate > 0 {
            let _ = writeln!(
                out,
                "Of the {} indeterminate events (ingest answered 503: not confirmed), {} reached Kafka anyway and count once; the others never did.\n",
                r.indeterminate, r.indeterminate_persisted
            );
        }
        if r.batch_covered > 0 {
            let _ = writeln!(
                out,
                "The batch view is judged on the {} ledger events (whatever their answer) before its cutoff.\n",
                r.batch_covered
            );
        }
        out.push_str("| view | lost | doubled | phantom |\n|---|---:|---:|---:|\n");
        for (view, j) in &r.views {
            let _ = writeln!(
                out,
                "| {view} | {}{} | {}{} | {}{} |",
                j.lost.len(),
                listed(&j.lost),
                j.doubled.len(),
                listed(&j.doubled),
                j.phantom.len(),
                listed(&j.phantom)
            );
        }
        out.push('\n');
    }
    out
}

/// One ingest request of `events` readings (one in 25 invalid: a phantom if it ever shows up).
async fn send(
    http: &reqwest::Client,
    url: &str,
    run: &str,
    base: i64,
    from: usize,
    events: usize,
) -> Vec<(String, Answer, i64)> {
    // event time: 50 ms per event from `base`, half an hour back — the batch layer publishes
    // the windows before its cutoff (the event time every partition reached, minus the
    // lateness), so most of the run is before it
    let ts = base + from as i64 * 50;
    let devices: Vec<String> = (from..from + events)
        .map(|i| format!("{run}-d{i}"))
        .collect();
    let body: Vec<String> = devices
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let t = if (from + k) % 25 == 24 { 999.0 } else { 20.5 };
            sensor_json(&format!("{d}-e"), d, ts + k as i64 * 50, t, 1.0)
        })
        .collect();
    let response = http
        .post(format!("{url}/v1/sensor-readings"))
        .header("content-type", "application/x-ndjson")
        .body(body.join("\n"))
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    let answer: Option<Value> = match response {
        Ok(r) => r.json().await.ok(),
        Err(_) => None,
    };
    let Some(answer) = answer else {
        return devices
            .into_iter()
            .enumerate()
            .map(|(k, d)| (d, Answer::Indeterminate, ts + k as i64 * 50))
            .collect();
    };
    // per item: `rejected` (invalid: never produced) or `failed` (the broker did not
    // acknowledge it: maybe persisted, maybe not — never a 2xx)
    let item_status: HashMap<usize, String> = answer["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["index"].as_u64()? as usize,
                e["status"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let all_refused = answer.get("error").is_some();
    devices
        .into_iter()
        .enumerate()
        .map(|(k, d)| {
            let a = match item_status.get(&k).map(String::as_str) {
                _ if all_refused => Answer::Rejected,
                Some("rejected") => Answer::Rejected,
                Some(_) => Answer::Indeterminate,
                None => Answer::Accepted,
            };
            (d, a, ts + k as i64 * 50)
        })
        .collect()
}

/// Each partition's end offset (what ingest produced), into `s.ends` for the waits.
fn record_ends(s: &mut Setup) {
    let (mut kafka, _) = crate::support::kafka_and_producer();
    if let Some(b) = &s.brokers {
        kafka.brokers = b.clone();
    }
    let consumer: BaseConsumer = lambdalake_kafka::consumer_config(&kafka, &unique("it-ends"))
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(&s.sensor), Duration::from_secs(10))
        .expect("metadata");
    for p in md.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(&s.sensor, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        s.ends.insert((s.sensor.clone(), p.id()), high);
    }
}

/// Device → count of `sql`'s (device, n) rows over one table.
async fn counts_in(tables: &str, table: Table, sql: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for b in query(tables, table, sql).await {
        // DataFusion may answer with string views and other integer widths
        let d = cast(b.column(0), &DataType::Utf8).expect("a string column");
        let d = d.as_any().downcast_ref::<StringArray>().expect("strings");
        let n = cast(b.column(1), &DataType::Int64).expect("a count");
        let n = n.as_any().downcast_ref::<Int64Array>().expect("counts");
        for i in 0..b.num_rows() {
            if !d.is_null(i) {
                *out.entry(d.value(i).to_owned()).or_insert(0) += n.value(i) as u64;
            }
        }
    }
    out
}

/// Wait until `count` reaches `want` or stops moving for 10 s (a mode that loses never gets
/// there); the last value.
async fn settle<F, Fut>(want: u64, timeout: Duration, mut count: F) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let deadline = Instant::now() + timeout;
    let (mut last, mut since) = (u64::MAX, Instant::now());
    loop {
        let n = count().await;
        if n >= want || Instant::now() > deadline || since.elapsed() > Duration::from_secs(10) {
            return n;
        }
        if n != last {
            (last, since) = (n, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Services {
    speed: Child,
    lake: Child,
    archiver: Option<Child>,
    extra_speed: Option<Child>,
}

impl Drop for Services {
    fn drop(&mut self) {
        for c in [Some(&mut self.speed), Some(&mut self.lake)]
            .into_iter()
            .chain([self.archiver.as_mut(), self.extra_speed.as_mut()])
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn kill(c: &mut Child) {
    c.kill().expect("SIGKILL");
    c.wait().expect("reaped");
}

fn log_has(path: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
}

async fn run(mode: &'static str, mut infra: Option<&mut Infra>) -> Run {
    let exactly = mode == "exactly-once";
    let pg = infra.as_ref().map(|i| i.postgres_url());
    let mut s = match &infra {
        Some(i) => Setup::on(Some(&i.brokers()), &i.redis_url()),
        None => Setup::new(),
    };
    let mut lake = Lake::new();
    let master = std::env::temp_dir().join(unique("ll-master"));
    let ingest_args = s.broker_args();
    let ingest_args: Vec<&str> = ingest_args.iter().map(String::as_str).collect();
    let ingest = Ingest::start_on(&s.sensor, &s.payment, &ingest_args).await;
    let delivery = ["--delivery", mode];
    let mut svc = Services {
        speed: s.spawn(&delivery),
        lake: lake.spawn(&s, &delivery),
        archiver: None,
        extra_speed: None,
    };
    let mut archiver_log = PathBuf::new();
    if exactly {
        let (child, log) = spawn_archiver(&s, &master);
        svc.archiver = Some(child);
        archiver_log = log;
    }

    // the sender: 20 readings every 100 ms until told to stop, each answer in the ledger
    let run_id = unique("f");
    let stop = lambdalake_serving::CancellationToken::new();
    let sender = {
        let (url, run_id, stop) = (ingest.url.clone(), run_id.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let base = now_ms() - 30 * 60_000;
            let mut ledger = Vec::new();
            while !stop.is_cancelled() {
                let got = send(&http, &url, &run_id, base, ledger.len(), 20).await;
                ledger.extend(got);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ledger
        })
    };

    // the kills, round robin at random moments, each once the victim works again
    let per = kills_per_service();
    let mut kills: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut rng = rand::rng();
    let victims: Vec<&'static str> = match (exactly, infra.is_some()) {
        (_, true) => vec![
            "broker",
            "speed",
            "network",
            "redis",
            "lakehouse",
            "postgres",
            "archiver",
        ],
        (true, false) => vec!["speed", "lakehouse", "archiver"],
        (false, false) => vec!["speed", "lakehouse"],
    };
    for round in 0..per {
        for &v in &victims {
            tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_500))).await;
            match v {
                "broker" | "redis" | "postgres" | "network" => {
                    let i = infra.as_deref_mut().expect("private infrastructure");
                    match v {
                        "broker" => i.restart_broker(),
                        "redis" => i.restart_redis(),
                        "postgres" => i.restart_postgres(),
                        _ => {
                            // a few seconds of a slow network to the broker and Redis
                            let delay = Duration::from_millis(rng.random_range(20..200));
                            i.slow(Some(delay));
                            let slow_for = Duration::from_millis(rng.random_range(2_000..5_000));
                            tokio::time::sleep(slow_for).await;
                            i.slow(None);
                        }
                    }
                    *kills.entry(v).or_default() += 1;
                    continue;
                }
                "speed" => {
                    kill(&mut svc.speed);
                    svc.speed = s.spawn(&delivery);
                }
                "lakehouse" => {
                    kill(&mut svc.lake);
                    svc.lake = lake.spawn(&s, &delivery);
                }
                _ => {
                    if let Some(a) = svc.archiver.as_mut() {
                        kill(a);
                    }
                    let (child, log) = spawn_archiver(&s, &master);
                    svc.archiver = Some(child);
                    archiver_log = log;
                }
            }
            *kills.entry(v).or_default() += 1;
            // the restarted instance has its partitions (the killed member's session expires)
            let log = match v {
                "speed" => s.logs.last().cloned(),
                "lakehouse" => None,
                _ => Some(archiver_log.clone()),
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            while let Some(l) = &log
                && !log_has(l, "assigned")
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if v == "lakehouse" {
                lake.wait_assigned(Duration::from_secs(60)).await;
            }
        }
        // a rebalance: a second speed instance joins (the partitions split), then dies
        if round == 0 {
            svc.extra_speed = Some(s.spawn(&delivery));
            tokio::time::sleep(Duration::from_secs(3)).await;
        } else if let Some(mut c) = svc.extra_speed.take() {
            kill(&mut c);
            *kills.entry("speed (second instance)").or_default() += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let entries = sender.await.expect("sender");
    ingest.stop().await;
    let times: HashMap<String, i64> = entries.iter().map(|(d, _, t)| (d.clone(), *t)).collect();
    let ledger: BTreeMap<String, Answer> = entries.into_iter().map(|(d, a, _)| (d, a)).collect();
    let count = |a: Answer| ledger.values().filter(|x| **x == a).count();
    let accepted = count(Answer::Accepted);

    // every path reads to the end of the topic
    record_ends(&mut s);
    s.wait_applied(Duration::from_secs(120));
    let want = accepted as u64;
    let tables = lake.tables.clone();
    let sensor_topic = s.sensor.clone();
    let bronze_sql =
        format!("select key, count(*) from t where topic = '{sensor_topic}' group by key");
    settle(want, Duration::from_secs(120), || {
        let (tables, sql) = (tables.clone(), bronze_sql.clone());
        async move { counts_in(&tables, Table::Bronze, &sql).await.len() as u64 }
    })
    .await;
    let gold_sql = "select device_id, cast(sum(count) as bigint) from t group by device_id";
    settle(want, Duration::from_secs(60), || {
        let tables = tables.clone();
        async move {
            counts_in(&tables, Table::GoldSensorWindows, gold_sql)
                .await
                .values()
                .sum()
        }
    })
    .await;

    let mut views: Vec<(&'static str, Judged)> = Vec::new();
    let mut batch_covered = 0;
    // speed: the 1-minute windows in Redis
    let speed: HashMap<String, u64> = speed_counts(&s);
    views.push(("speed", Judged::of(&ledger, &speed)));
    if exactly {
        let (cutoff, mut batch, merged) =
            batch_and_merged(&s, &master, &archiver_log, &ledger, pg.as_deref()).await;
        // the batch view holds the windows that end by its cutoff: judged on those events
        let covered = |d: &String| {
            times
                .get(d)
                .is_none_or(|t| t.div_euclid(60_000) * 60_000 + 60_000 <= cutoff)
        };
        let before: BTreeMap<String, Answer> = ledger
            .iter()
            .filter(|(d, _)| covered(d))
            .map(|(d, a)| (d.clone(), *a))
            .collect();
        batch.retain(|d, _| covered(d));
        batch_covered = before.len();
        views.push(("batch", Judged::of(&before, &batch)));
        views.push(("merged", Judged::of(&ledger, &merged)));
    }
    let bronze = counts_in(&tables, Table::Bronze, &bronze_sql).await;
    views.push(("bronze", Judged::of(&ledger, &bronze)));
    // events ingest could not confirm (503 during an outage): persisted or not, never a 2xx
    let indeterminate_persisted = ledger
        .iter()
        .filter(|(d, a)| **a == Answer::Indeterminate && bronze.contains_key(*d))
        .count();
    let silver = counts_in(
        &tables,
        Table::SilverSensorReadings,
        "select device_id, count(*) from t group by device_id",
    )
    .await;
    views.push(("silver", Judged::of(&ledger, &silver)));
    let gold = counts_in(&tables, Table::GoldSensorWindows, gold_sql).await;
    views.push(("gold", Judged::of(&ledger, &gold)));

    drop(svc);
    let _ = std::fs::remove_dir_all(&lake.dir);
    let _ = std::fs::remove_dir_all(&master);
    Run {
        mode,
        sent: ledger.len(),
        accepted,
        rejected: count(Answer::Rejected),
        indeterminate: count(Answer::Indeterminate),
        kills,
        views,
        batch_covered,
        indeterminate_persisted,
    }
}

/// Device → count in the speed layer's 1-minute windows.
/// (Every key under the run's own prefix.)
fn speed_counts(s: &Setup) -> HashMap<String, u64> {
    use redis::Commands;
    let mut con = s.con();
    let pattern = format!("{}:v:sensor:{}:*", s.prefix, SensorView::OneMinute.name());
    let keys: Vec<String> = con.keys(&pattern).expect("keys");
    let mut out: HashMap<String, u64> = HashMap::new();
    for key in keys {
        let fields: HashMap<String, String> = con.hgetall(&key).expect("hgetall");
        for (device, json) in fields {
            let v: Value = serde_json::from_str(&json).expect("a stored window");
            *out.entry(device).or_default() += v["count"].as_u64().expect("count");
        }
    }
    out
}

/// The batch view (Postgres, after a recompute over the archived master dataset) and the merged
/// view (serving's Lambda answer), device → count.
async fn batch_and_merged(
    s: &Setup,
    master: &std::path::Path,
    archiver_log: &std::path::Path,
    ledger: &BTreeMap<String, Answer>,
    pg: Option<&str>,
) -> (i64, HashMap<String, u64>, HashMap<String, u64>) {
    wait_archived(s, master, archiver_log).await;
    let url = match pg {
        Some(base) => crate::batch::fresh_database_on(base).await,
        None => crate::batch::fresh_database().await,
    };
    let config = crate::batch::config_for(master, &url, &s.prefix, &[]);
    let summary = lambdalake_batch::run_once(&config)
        .await
        .expect("recompute");
    let client = lambdalake_batch::connect(&url).await.expect("postgres");
    let mut batch: HashMap<String, u64> = HashMap::new();
    for ((device, _), agg) in crate::batch::batch_sensor_view(&client, summary.version, "1m").await
    {
        *batch.entry(device).or_default() += agg.count;
    }
    let (base, token) = crate::serving::serve_with(
        &url,
        &s.redis_url,
        &s.prefix,
        &s.sensor,
        &s.payment,
        &["--version-ttl", "1ms"],
    )
    .await;
    let http = reqwest::Client::new();
    let range = format!(
        "from={}&to={}",
        lambdalake_serving::windows::rfc3339(now_ms() - 3_600_000),
        lambdalake_serving::windows::rfc3339(now_ms() + 60_000)
    );
    let mut merged: HashMap<String, u64> = HashMap::new();
    let mut devices: BTreeSet<&String> = ledger.keys().collect();
    devices.extend(batch.keys());
    for device in devices {
        let (status, body) = crate::serving::get(
            &http,
            &format!("{base}/v1/lambda/sensors/{device}/windows?{range}"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let n: u64 = body["windows"]
            .as_array()
            .map(|w| w.iter().filter_map(|w| w["count"].as_u64()).sum())
            .unwrap_or(0);
        if n > 0 {
            merged.insert(device.clone(), n);
        }
    }
    token.cancel();
    (summary.cutoff_ms.expect("a cutoff"), batch, merged)
}

/// A PostgreSQL server, a broker (nisshi, its log on `postgres://` storage in that server, so
/// that it survives a restart) and a Redis (append-only file) of the test's own: restarted
/// without disturbing the other tests — the broker and Redis by SIGKILL, PostgreSQL by an
/// immediate shutdown (no checkpoint: crash recovery at the restart).
struct Infra {
    broker: Child,
    redis: Child,
    broker_port: u16,
    redis_port: u16,
    /// Every client reaches the broker and Redis through these (network slowness).
    broker_proxy: SlowProxy,
    redis_proxy: SlowProxy,
    pg_port: u16,
    pg_bin: PathBuf,
    storage: String,
    dir: PathBuf,
}

/// A TCP proxy on loopback that can delay every chunk it forwards, both ways: a slow network
/// between the services and a store (the connections stay up; bytes arrive late).
struct SlowProxy {
    port: u16,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

impl SlowProxy {
    async fn start(target: u16) -> SlowProxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let port = listener.local_addr().unwrap().port();
        let delay_ms = std::sync::Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue; // the store is restarting: the client sees a closed connection
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let pipes: [(Reader, Writer); 2] =
                    [(Box::new(cr), Box::new(sw)), (Box::new(sr), Box::new(cw))];
                for (mut from, mut to) in pipes {
                    let delay = delay.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let d = delay.load(Ordering::Relaxed);
                            if d > 0 {
                                tokio::time::sleep(Duration::from_millis(d)).await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown().await;
                    });
                }
            }
        });
        SlowProxy {
            port,
            delay_ms,
            task,
        }
    }

    fn set_delay(&self, d: Option<Duration>) {
        let ms = d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.delay_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Run as the `postgres` user when root (PostgreSQL refuses to run as root).
pub(crate) fn as_pg(program: &std::path::Path) -> std::process::Command {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    }
}

/// A new cluster in `<dir>/pg/data` (the directory given to the `postgres` user when root).
pub(crate) fn initdb(bin: &std::path::Path, dir: &std::path::Path) {
    let _ = std::process::Command::new("chown")
        .args(["-R", "postgres:", dir.join("pg").to_str().unwrap()])
        .status();
    let out = as_pg(&bin.join("initdb"))
        .args(["-D", dir.join("pg/data").to_str().unwrap()])
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ])
        .output()
        .expect("initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pg_ctl -D <dir>/pg/data -w … args`; panics with its output when it fails.
pub(crate) fn pg_ctl(bin: &std::path::Path, dir: &std::path::Path, args: &[String]) {
    let data = dir.join("pg/data");
    let out = as_pg(&bin.join("pg_ctl"))
        .args(["-D", data.to_str().unwrap(), "-w", "-t", "60"])
        .args(args)
        .output()
        .expect("pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pg_ctl start` arguments: a port of its own, loopback only, the socket in `<dir>/pg`.
pub(crate) fn start_args(dir: &std::path::Path, port: u16) -> Vec<String> {
    let opts = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -k {} -c max_connections=100",
        dir.join("pg").display()
    );
    let log = dir.join("pg/postgres.log");
    ["-l", log.to_str().unwrap(), "-o", &opts, "start"]
        .map(str::to_owned)
        .to_vec()
}

pub(crate) fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL (infra/local/stack installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("initdb")
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

pub(crate) fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn nisshi() -> PathBuf {
    let cache = PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/lambdalake");
    std::fs::read_dir(&cache)
        .expect("~/.cache/lambdalake (infra/local/stack up builds the broker)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin/nisshi")))
        .find(|p| p.exists())
        .expect("the nisshi broker (infra/local/stack up builds it)")
}

impl Infra {
    async fn start() -> Infra {
        let dir = std::env::temp_dir().join(unique("ll-infra"));
        for d in ["broker", "redis", "pg"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let (pg_bin, pg_port) = (pg_bin(), free_port());
        initdb(&pg_bin, &dir);
        pg_ctl(&pg_bin, &dir, &start_args(&dir, pg_port));
        let pg_url = format!("postgres://postgres@127.0.0.1:{pg_port}/postgres");
        let storage = crate::batch::fresh_database_on(&pg_url).await;
        let (broker_port, redis_port) = (free_port(), free_port());
        let (broker_proxy, redis_proxy) = (
            SlowProxy::start(broker_port).await,
            SlowProxy::start(redis_port).await,
        );
        let i = Infra {
            broker: Self::spawn_broker(&dir, broker_port, broker_proxy.port, &storage),
            redis: Self::spawn_redis(&dir, redis_port),
            broker_port,
            redis_port,
            broker_proxy,
            redis_proxy,
            pg_port,
            pg_bin,
            storage,
            dir,
        };
        wait_port(i.broker_port, "the broker");
        wait_port(i.redis_port, "redis");
        i
    }

    fn postgres_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    /// An immediate shutdown (every backend killed, no checkpoint), then a start: crash recovery.
    fn restart_postgres(&mut self) {
        pg_ctl(
            &self.pg_bin,
            &self.dir,
            &["-m", "immediate", "stop"].map(str::to_owned),
        );
        std::thread::sleep(Duration::from_millis(500));
        pg_ctl(
            &self.pg_bin,
            &self.dir,
            &start_args(&self.dir, self.pg_port),
        );
    }

    /// The broker listens on `port` and advertises `advertised` (its proxy): every client's
    /// connection, after the bootstrap one, goes through the proxy too.
    fn spawn_broker(dir: &std::path::Path, port: u16, advertised: u16, storage: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .unwrap();
        std::process::Command::new(nisshi())
            .current_dir(dir.join("broker"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args([
                "broker",
                "--cluster-id",
                "lambdalake-faults",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised}"),
                "--storage-engine",
                storage,
                "--group-initial-rebalance-delay",
                "0s",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nisshi")
    }

    fn spawn_redis(dir: &std::path::Path, port: u16) -> Child {
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                dir.join("redis").to_str().unwrap(),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--logfile",
                dir.join("redis.log").to_str().unwrap(),
            ])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (infra/local/stack installs it)")
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.broker_proxy.port)
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis_proxy.port)
    }

    /// Make the network to the broker and Redis slow (`Some(delay)` per chunk each way) or not.
    fn slow(&self, delay: Option<Duration>) {
        for p in [&self.broker_proxy, &self.redis_proxy] {
            p.set_delay(delay);
        }
    }

    /// SIGKILL the broker and start it again on the same storage, a moment later.
    fn restart_broker(&mut self) {
        kill(&mut self.broker);
        std::thread::sleep(Duration::from_millis(500));
        self.broker = Self::spawn_broker(
            &self.dir,
            self.broker_port,
            self.broker_proxy.port,
            &self.storage,
        );
        wait_port(self.broker_port, "the restarted broker");
    }

    /// SIGKILL Redis (up to a second of writes not yet in its append-only file is lost) and
    /// start it again on the same directory.
    fn restart_redis(&mut self) {
        kill(&mut self.redis);
        self.redis = Self::spawn_redis(&self.dir, self.redis_port);
        wait_port(self.redis_port, "the restarted redis");
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        for c in [&mut self.broker, &mut self.redis] {
            let _ = c.kill();
            let _ = c.wait();
        }
        let data = self.dir.join("pg/data");
        let _ = as_pg(&self.pg_bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_view_stays_exact_through_broker_redis_and_postgres_restarts_and_a_slow_network() {
    let mut infra = Infra::start().await;
    let r = run("exactly-once", Some(&mut infra)).await;
    let report = report(std::slice::from_ref(&r));
    println!("{report}");
    std::fs::create_dir_all(crate::dashboard::artifacts_dir()).unwrap();
    std::fs::write(
        crate::dashboard::artifacts_dir().join("faults-infra.md"),
        &report,
    )
    .unwrap();
    assert!(r.kills.get("broker").copied().unwrap_or(0) >= 2, "{report}");
    assert!(r.kills.get("redis").copied().unwrap_or(0) >= 2, "{report}");
    assert!(
        r.kills.get("postgres").copied().unwrap_or(0) >= 2,
        "{report}"
    );
    assert!(r.accepted > 0, "{report}");
    for (view, j) in &r.views {
        assert!(j.clean(), "{view}\n{report}");
    }
    assert_eq!(r.views.len(), 6, "{report}");
}
