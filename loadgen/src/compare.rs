//! `lambdalake-loadgen bench`: one workload through both architectures, side by side.
//!
//! Phases:
//! 1. **start**: every service (ingest, speed, batch, serving, lakehouse) as its own process on
//!    fresh topics, a fresh Redis prefix, a fresh Postgres database, fresh directories — or, with
//!    `--external`, the running ones named by their URLs;
//! 2. **load** (`--duration`): the workload at `--rate`, open loop; probe readings (one new device
//!    each) measure freshness — ingest acknowledgement → visible through serving — for the speed
//!    path, lakehouse gold and the batch path; the served windows of a sample of keys are compared
//!    with the ground truth every `--check-every`; CPU and memory of each process are sampled;
//! 3. **recovery** (local services, unless `--no-recovery`): with the load going on, the speed layer
//!    and then the lakehouse are SIGKILLed and restarted; catch-up time = kill → an event
//!    acknowledged at the kill is visible again;
//! 4. **drain**: the load stops; once both paths have consumed everything, the windows are checked
//!    (before a batch recompute), then again once the batch layer has published a version that
//!    covers the whole run (after);
//! 5. **report**: fraud precision/recall per path from the alerts served, storage per store, lines
//!    of code per path; Markdown, PNG charts and JSON in `--out`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use lambdalake_events::{EventId, EventTime, Ident, SensorReading};
use lambdalake_kafka::{KafkaArgs, ProducerArgs, TopicArgs};
use serde::Serialize;

use crate::generator::{Generator, Valid};
use crate::report::{self, Report};
use crate::run::WorkloadArgs;
use crate::send::{SendArgs, Sender};
use crate::truth::{self, MINUTE_MS, Score, Truth, floor_minute};

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Length of the load phase.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2m")]
    pub duration: Duration,

    /// Skip the recovery phase (SIGKILL of the speed layer and of the lakehouse under load).
    #[arg(long)]
    pub no_recovery: bool,

    /// Longest wait for a killed service to catch up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "90s")]
    pub recovery_timeout: Duration,

    /// Batch recompute interval of the batch service the bench starts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub batch_interval: Duration,

    /// Micro-batch trigger of the lakehouse the bench starts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub lakehouse_trigger: Duration,

    /// A probe reading every this long (freshness samples).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    pub probe_every: Duration,

    /// A probe not visible in a path after this long counts as never seen there (the batch
    /// path gets three recompute intervals more).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub probe_timeout: Duration,

    /// Compare the served windows with the ground truth every this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub check_every: Duration,

    /// Devices and cards whose windows are compared (the first that appear).
    #[arg(long, default_value = "100")]
    pub check_keys: usize,

    /// Devices and cards compared after the load (before and after the recompute).
    #[arg(long, default_value = "1000")]
    pub final_keys: usize,

    /// A window is judged once no event of it was sent for this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub settle: Duration,

    /// Longest wait, after the load, for both paths to consume everything and for the batch
    /// version covering the run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub drain_timeout: Duration,

    /// Where the report, charts and JSON go (default: results/bench-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Use running services (URLs below) instead of starting them; no recovery, no process cost.
    #[arg(long)]
    pub external: bool,

    /// Serving's base URL (external mode).
    #[arg(
        long,
        env = "LAMBDALAKE_SERVING_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub serving_url: String,
    #[arg(
        long,
        env = "LAMBDALAKE_SPEED_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub speed_url: String,
    #[arg(
        long,
        env = "LAMBDALAKE_BATCH_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub batch_url: String,
    #[arg(
        long,
        env = "LAMBDALAKE_LAKEHOUSE_URL",
        default_value = "http://127.0.0.1:8084"
    )]
    pub lakehouse_url: String,

    /// Directory of the service binaries (default: the one of this program).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,

    /// Local mode: ingest listens on this port, speed +1, batch +2, serving +3, lakehouse +4;
    /// 0 picks free ports.
    #[arg(long, default_value = "0")]
    pub base_port: u16,

    /// Local mode: leave the services running after the report (their pids in `--run-dir`).
    #[arg(long)]
    pub keep_running: bool,

    /// Local mode: pid files, logs and data of the services.
    #[arg(
        long,
        env = "LAMBDALAKE_STACK_DIR",
        default_value = "/tmp/lambdalake-stack"
    )]
    pub run_dir: PathBuf,

    /// PostgreSQL server (local mode creates a fresh database there).
    #[arg(
        long,
        env = "LAMBDALAKE_POSTGRES_URL",
        default_value = "postgres://lambdalake:lambdalake@127.0.0.1:15432/lambdalake"
    )]
    pub postgres_url: String,

    #[arg(
        long,
        env = "LAMBDALAKE_REDIS_URL",
        default_value = "redis://127.0.0.1:16379"
    )]
    pub redis_url: String,

    /// Redis key prefix of the speed layer (external mode; local mode makes a fresh one).
    #[arg(long, env = "LAMBDALAKE_SPEED_KEY_PREFIX", default_value = "ll")]
    pub key_prefix: String,

    /// Source tree for the lines-of-code count (default: the workspace this was built from).
    #[arg(long)]
    pub source: Option<PathBuf>,

    #[command(flatten)]
    pub workload: WorkloadArgs,

    #[command(flatten)]
    pub send: SendArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub producer: ProducerArgs,

    #[command(flatten)]
    pub topics: TopicArgs,
}

/// Most probes polled per path and round.
const PROBES_PER_ROUND: usize = 16;

/// A probe query not answered within this long is given up (counted in `failed_queries`) and
/// asked again the next round.
const PROBE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

const SERVICES: [&str; 5] = ["ingest", "speed", "batch", "serving", "lakehouse"];

/// One service process (local mode) or endpoint (external mode).
struct Service {
    name: &'static str,
    url: String,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// CPU seconds of processes of this service that were killed.
    cpu_before: f64,
    cpu_now: f64,
    peak_rss_kib: u64,
    restarts: u32,
    /// The current process: when it started, and its resident set (VmRSS, KiB) at each sample.
    started: Option<Instant>,
    rss: Vec<(Duration, u64)>,
}

/// After this long a process is warm (caches filled, queues at their working size): resident
/// memory should not grow past it under a steady load.
const WARM_UP: Duration = Duration::from_secs(60);

impl Service {
    /// Resident memory (MiB) when warm, and at the last sample, for a process that ran at least
    /// twice the warm-up.
    fn rss_growth(&self) -> Option<(f64, f64)> {
        let (last_at, last) = *self.rss.last()?;
        if last_at < WARM_UP * 2 {
            return None;
        }
        let warm = self.rss.iter().find(|(at, _)| *at >= WARM_UP)?.1;
        Some((warm as f64 / 1024.0, last as f64 / 1024.0))
    }
}

struct Stack {
    services: Vec<Service>,
    bin_dir: PathBuf,
    run_dir: PathBuf,
    keep: bool,
    clock_ticks: f64,
}

impl Stack {
    fn get(&self, name: &str) -> &Service {
        self.services
            .iter()
            .find(|s| s.name == name)
            .expect("a known service")
    }

    fn url(&self, name: &str) -> String {
        self.get(name).url.clone()
    }

    fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        let (bin_dir, run_dir) = (self.bin_dir.clone(), self.run_dir.clone());
        let s = self
            .services
            .iter_mut()
            .find(|s| s.name == name)
            .expect("a known service");
        let bin = bin_dir.join(format!("lambdalake-{name}"));
        let log_path = run_dir.join("logs").join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut cmd = Command::new(&bin);
        // as the image runs them (Dockerfile): glibc's malloc with two arenas, not one per thread
        // up to 8 per core, each keeping what it freed (serving's peak: 166 → 133 MiB)
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            cmd.env("MALLOC_ARENA_MAX", "2");
        }
        cmd.envs(s.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // its own process group: a Ctrl-C of the bench does not reach it (the bench stops it)
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} (build it first)", bin.display()))?;
        std::fs::write(run_dir.join(format!("{name}.pid")), child.id().to_string())?;
        s.child = Some(child);
        s.started = Some(Instant::now());
        s.rss.clear();
        Ok(())
    }

    /// SIGKILL and restart; the killed process's CPU time is kept.
    fn kill_and_restart(&mut self, name: &str) -> anyhow::Result<()> {
        self.sample();
        let s = self
            .services
            .iter_mut()
            .find(|s| s.name == name)
            .expect("a known service");
        if let Some(mut c) = s.child.take() {
            c.kill()?;
            c.wait()?;
        }
        s.cpu_before += s.cpu_now;
        s.cpu_now = 0.0;
        s.restarts += 1;
        self.spawn(name)
    }

    /// CPU time and peak RSS of every process, from /proc.
    fn sample(&mut self) {
        for s in &mut self.services {
            let Some(pid) = s.child.as_ref().map(Child::id) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // fields after the command (which may hold spaces) start after the last ')'
                let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
                let f: Vec<&str> = rest.split_whitespace().collect();
                // utime and stime are fields 14 and 15 of the line, 12 and 13 here
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                s.cpu_now = (ticks(11) + ticks(12)) / self.clock_ticks;
            }
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let kib = |field: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(field))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                };
                if let Some(peak) = kib("VmHWM:") {
                    s.peak_rss_kib = s.peak_rss_kib.max(peak);
                }
                if let (Some(now), Some(started)) = (kib("VmRSS:"), s.started) {
                    s.rss.push((started.elapsed(), now));
                }
            }
        }
    }

    fn stop(&mut self) {
        for s in &mut self.services {
            if let Some(mut c) = s.child.take() {
                // SIGTERM: a graceful stop; SIGKILL after 30 s
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = c.kill();
                let _ = c.wait();
                let _ = std::fs::remove_file(self.run_dir.join(format!("{}.pid", s.name)));
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.keep {
            self.stop();
        }
    }
}

/// Stops the services when dropped, unless disarmed (the run succeeded).
struct StopOnError(Option<Arc<Mutex<Stack>>>);

impl Drop for StopOnError {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.lock().unwrap_or_else(|e| e.into_inner()).stop();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A probe reading waiting to be seen.
#[derive(Clone)]
struct Probe {
    device: String,
    window_ms: i64,
    acked: Instant,
    /// Recovery probes measure from the kill, not from the acknowledgement.
    kill: Option<Instant>,
    in_load_phase: bool,
}

#[derive(Default)]
struct Freshness {
    speed: Vec<Probe>,
    lake: Vec<Probe>,
    batch: Vec<Probe>,
    hist: HashMap<&'static str, Histogram<u64>>,
    recovered: HashMap<&'static str, f64>,
    unseen: HashMap<&'static str, u64>,
    /// Per path, each probe seen in the load phase: (acknowledged, latency, time of the query
    /// that saw it).
    seen: HashMap<&'static str, Vec<(Instant, Duration, Duration)>>,
    /// Per path, probe queries that failed or were not answered within [`PROBE_QUERY_TIMEOUT`].
    failed_queries: HashMap<&'static str, u64>,
}

impl Freshness {
    /// The probes still to be seen in `path`.
    fn pending(&mut self, path: &str) -> &mut Vec<Probe> {
        match path {
            "speed" => &mut self.speed,
            "lakehouse" => &mut self.lake,
            _ => &mut self.batch,
        }
    }

    /// `p` was seen in `path` at `now`, by a query that took `query`.
    fn record(&mut self, path: &'static str, p: &Probe, now: Instant, query: Duration) {
        if let Some(kill) = p.kill {
            self.recovered
                .insert(path, now.duration_since(kill).as_secs_f64());
        } else if p.in_load_phase {
            let latency = now.duration_since(p.acked);
            self.hist
                .entry(path)
                .or_insert_with(|| Histogram::new(3).expect("histogram"))
                .record(latency.as_micros() as u64)
                .ok();
            self.seen
                .entry(path)
                .or_default()
                .push((p.acked, latency, query));
        }
    }
}

/// Everything the background tasks share.
struct Shared {
    http: reqwest::Client,
    serving: String,
    truth: Arc<Mutex<Truth>>,
    fresh: Mutex<Freshness>,
    load_phase: AtomicBool,
    stop: AtomicBool,
    run: String,
    started: Instant,
    range_from_ms: i64,
    probe_timeout: Duration,
    batch_probe_timeout: Duration,
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    let r = http.get(url).send().await?;
    let status = r.status();
    let body: serde_json::Value = r.json().await?;
    if !status.is_success() {
        bail!("{url}: {status}: {body}");
    }
    Ok(body)
}

async fn windows(
    sh: &Shared,
    path: &str,
    kind: &str,
    key: &str,
    from_ms: i64,
    to_ms: i64,
) -> Option<serde_json::Value> {
    let url = format!(
        "{}/v1/{path}/{kind}/{key}/windows?from={}&to={}",
        sh.serving,
        report::rfc3339(from_ms),
        report::rfc3339(to_ms)
    );
    get_json(&sh.http, &url).await.ok()
}

fn served_windows(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v.get("windows")
        .and_then(|w| w.as_array())
        .cloned()
        .unwrap_or_default()
}

/// Send one probe reading through ingest; its acknowledgement instant.
async fn send_probe(
    sh: &Shared,
    ingest: &str,
    n: u64,
    kill: Option<Instant>,
) -> anyhow::Result<Probe> {
    let ts = EventTime::now().millis();
    let device = format!("probe-{}-{n}", sh.run);
    let r = SensorReading {
        event_id: EventId::parse(format!("{device}-{ts}"))?,
        device_id: Ident::parse("device_id", device.clone())?,
        site: Ident::parse("site", "probe")?,
        ts: EventTime::from_millis_unchecked(ts),
        temperature_c: 20.0,
        vibration_mm_s: 0.1,
    };
    let resp = sh
        .http
        .post(format!("{ingest}/v1/sensor-readings"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&r)?)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("probe answered {}", resp.status());
    }
    let acked = Instant::now();
    sh.truth
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .accept(&Valid::Reading(r), acked);
    Ok(Probe {
        device,
        window_ms: floor_minute(ts),
        acked,
        kill,
        in_load_phase: sh.load_phase.load(Ordering::Relaxed),
    })
}

/// Give up the probes of `path` not seen within `timeout` (counted as never seen).
fn expire(sh: &Shared, path: &'static str, timeout: Duration) {
    let mut f = sh.fresh.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let f = &mut *f;
    let list = f.pending(path);
    let before = list.len();
    list.retain(|p| now.duration_since(p.acked) < timeout);
    let gone = (before - list.len()) as u64;
    *f.unseen.entry(path).or_default() += gone;
}

/// Query the window of probe `p`'s minute in `api` (`lambda` or `lakehouse`): the answer, when it
/// arrived and how long the query took (`None`: the query failed).
async fn probe_window(
    sh: &Shared,
    api: &str,
    p: &Probe,
) -> Option<(serde_json::Value, Instant, Duration)> {
    let asked = Instant::now();
    let v = windows(
        sh,
        api,
        "sensors",
        &p.device,
        p.window_ms,
        p.window_ms + MINUTE_MS,
    )
    .await?;
    let at = Instant::now();
    Some((v, at, at - asked))
}

/// Record the probes of `path` seen: (device, when, query time).
fn mark_seen(sh: &Shared, path: &'static str, seen: Vec<(String, Instant, Duration)>) {
    let mut f = sh.fresh.lock().unwrap_or_else(|e| e.into_inner());
    for (device, at, query) in seen {
        let list = f.pending(path);
        if let Some(i) = list.iter().position(|p| p.device == device) {
            let p = list.remove(i);
            f.record(path, &p, at, query);
        }
    }
}

/// Poll the pending probes of the speed path (`api` `lambda`) or of gold (`lakehouse`) every
/// `every`, the oldest first. Each path is polled by its own task, so a slow answer in one path
/// never delays the measurement of another.
async fn poll_path(sh: Arc<Shared>, path: &'static str, api: &'static str, every: Duration) {
    while !sh.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        expire(&sh, path, sh.probe_timeout);
        let pending = {
            let mut f = sh.fresh.lock().unwrap_or_else(|e| e.into_inner());
            // a bounded number per round: the queries must not load the server they measure
            f.pending(path)
                .iter()
                .take(PROBES_PER_ROUND)
                .cloned()
                .collect::<Vec<_>>()
        };
        // a query that hangs must not hold the round (and every newer probe) up: it is given up
        // after PROBE_QUERY_TIMEOUT and counted, and its probe is asked again next round
        let answers: Vec<Option<(Probe, bool, Instant, Duration)>> = futures::stream::iter(pending)
            .map(|p| {
                let sh = sh.clone();
                async move {
                    let (v, at, query) =
                        tokio::time::timeout(PROBE_QUERY_TIMEOUT, probe_window(&sh, api, &p))
                            .await
                            .ok()
                            .flatten()?;
                    Some((p, !served_windows(&v).is_empty(), at, query))
                }
            })
            .buffer_unordered(PROBES_PER_ROUND)
            .collect()
            .await;
        let failed = answers.iter().filter(|a| a.is_none()).count() as u64;
        if failed > 0 {
            let mut f = sh.fresh.lock().unwrap_or_else(|e| e.into_inner());
            *f.failed_queries.entry(path).or_default() += failed;
        }
        let seen = answers
            .into_iter()
            .flatten()
            .filter(|a| a.1)
            .map(|(p, _, at, query)| (p.device, at, query))
            .collect();
        mark_seen(&sh, path, seen);
    }
}

/// Poll the batch path: when a new batch version is published, the pending probes its cutoff
/// covers (in a task of its own: a version covers dozens of probes at once).
async fn poll_batch(sh: Arc<Shared>) {
    let mut batch_version: Option<i64> = None;
    while !sh.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        expire(&sh, "batch", sh.batch_probe_timeout);
        let Ok(o) = get_json(&sh.http, &format!("{}/v1/overview", sh.serving)).await else {
            continue;
        };
        let version = o["batch"]["version"].as_i64();
        let cutoff = o["batch"]["cutoff"]
            .as_str()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|c| c.timestamp_millis());
        if version.is_none() || version == batch_version {
            continue;
        }
        batch_version = version;
        let covered: Vec<Probe> = {
            let f = sh.fresh.lock().unwrap_or_else(|e| e.into_inner());
            f.batch
                .iter()
                .filter(|p| cutoff.is_some_and(|c| p.window_ms + MINUTE_MS <= c))
                .cloned()
                .collect()
        };
        let seen = futures::stream::iter(covered)
            .map(|p| {
                let sh = sh.clone();
                async move {
                    let (v, at, query) = probe_window(&sh, "lambda", &p).await?;
                    served_windows(&v)
                        .first()
                        .is_some_and(|w| w["source"] == "batch")
                        .then_some((p.device, at, query))
                }
            })
            .buffer_unordered(PROBES_PER_ROUND)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        mark_seen(&sh, "batch", seen);
    }
}

/// One comparison of the served windows with the truth.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub at_s: f64,
    pub label: String,
    pub batch_version: Option<i64>,
    pub lambda: Score,
    pub lakehouse: Score,
    /// The wrong windows (key, window, expected and served), the first few.
    pub lambda_wrong: Vec<String>,
    pub lakehouse_wrong: Vec<String>,
}

async fn check(sh: &Arc<Shared>, keys: usize, settle: Duration, label: &str) -> Check {
    let (devices, cards) = {
        let t = sh.truth.lock().unwrap_or_else(|e| e.into_inner());
        (
            t.device_order
                .iter()
                .filter(|d| !d.starts_with("probe-"))
                .take(keys)
                .cloned()
                .collect::<Vec<_>>(),
            t.card_order.iter().take(keys).cloned().collect::<Vec<_>>(),
        )
    };
    let from = sh.range_from_ms;
    let to = floor_minute(EventTime::now().millis()) + 2 * MINUTE_MS;
    let mut requests = Vec::new();
    for api in ["lambda", "lakehouse"] {
        for d in &devices {
            requests.push((api, "sensors", d.clone()));
        }
        for c in &cards {
            requests.push((api, "cards", c.clone()));
        }
    }
    let answers: Vec<_> = futures::stream::iter(requests)
        .map(|(api, kind, key)| {
            let sh = sh.clone();
            async move {
                let v = windows(&sh, api, kind, &key, from, to).await;
                (api, kind, key, v)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut version = None;
    let now = Instant::now();
    let t = sh.truth.lock().unwrap_or_else(|e| e.into_inner());
    let (mut lambda, mut lake) = (Score::default(), Score::default());
    let (mut lambda_wrong, mut lake_wrong) = (Vec::new(), Vec::new());
    for (api, kind, key, v) in answers {
        let wrong = if api == "lambda" {
            &mut lambda_wrong
        } else {
            &mut lake_wrong
        };
        let served = v.as_ref().map(served_windows).unwrap_or_default();
        if api == "lambda" && version.is_none() {
            version = v.as_ref().and_then(|v| v["batch"]["version"].as_i64());
        }
        let settled = |w: &truth::WindowKey| t.settled(w, now, settle);
        let mut s = if kind == "sensors" {
            truth::judge(
                &t.sensors,
                settled,
                &key,
                from,
                to,
                &served,
                truth::sensor_exact,
                wrong,
            )
        } else {
            truth::judge(
                &t.cards,
                settled,
                &key,
                from,
                to,
                &served,
                truth::card_exact,
                wrong,
            )
        };
        if v.is_none() {
            // no answer: every judged window of the key is wrong
            if s.exact > 0 {
                wrong.push(format!("{kind}/{key}: no answer"));
            }
            s.exact = 0;
        }
        if api == "lambda" {
            &mut lambda
        } else {
            &mut lake
        }
        .add(s);
    }
    Check {
        at_s: sh.started.elapsed().as_secs_f64(),
        label: label.to_owned(),
        batch_version: version,
        lambda,
        lakehouse: lake,
        lambda_wrong: first(lambda_wrong),
        lakehouse_wrong: first(lake_wrong),
    }
}

/// The first [`WRONG_LISTED`] wrong windows, sorted, and how many more there were.
fn first(mut wrong: Vec<String>) -> Vec<String> {
    wrong.sort();
    let more = wrong.len().saturating_sub(WRONG_LISTED);
    wrong.truncate(WRONG_LISTED);
    if more > 0 {
        wrong.push(format!("… and {more} more"));
    }
    wrong
}

/// Most wrong windows a check names per architecture.
const WRONG_LISTED: usize = 20;

/// The fraud alerts of one path: the payments' event ids, paging by event time.
async fn flagged(sh: &Shared, api_path: &str, since_ms: i64, until_ms: i64) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut slices = vec![(since_ms, until_ms)];
    while let Some((a, b)) = slices.pop() {
        let url = format!(
            "{}{api_path}?since={}&until={}&limit=1000",
            sh.serving,
            report::rfc3339(a),
            report::rfc3339(b)
        );
        let Ok(v) = get_json(&sh.http, &url).await else {
            continue;
        };
        let alerts = v["alerts"].as_array().cloned().unwrap_or_default();
        if alerts.len() >= 1000 && b > a {
            let mid = a + (b - a) / 2;
            slices.push((a, mid));
            slices.push((mid + 1, b));
            continue;
        }
        for al in alerts {
            if al["kind"] == "fraud"
                && let Some(id) = al["alert_id"]
                    .as_str()
                    .and_then(|i| i.strip_prefix("fraud:"))
            {
                out.insert(id.to_owned());
            }
        }
    }
    out
}

/// Sum of a Prometheus counter's samples whose labels contain `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A counter that survives restarts of the process exposing it.
#[derive(Default, Clone, Copy)]
struct Counter {
    base: f64,
    last: f64,
}

impl Counter {
    fn update(&mut self, v: f64) -> f64 {
        if v < self.last {
            self.base += self.last;
        }
        self.last = v;
        self.base + v
    }
}

/// Processed events per path per second.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub at_s: f64,
    pub accepted: f64,
    pub speed: f64,
    pub lakehouse: f64,
    pub archiver: f64,
}

async fn sampler(
    sh: Arc<Shared>,
    urls: [String; 3],
    accepted: Arc<crate::send::Stats>,
    stack: Option<Arc<Mutex<Stack>>>,
) -> Vec<Sample> {
    let mut counters = [Counter::default(); 3];
    let mut series: Vec<Sample> = Vec::new();
    let mut last = (Instant::now(), [0.0; 4]);
    let queries = [
        ("lambdalake_speed_events_total", ""),
        ("lambdalake_lakehouse_rows_total", "table=\"bronze\""),
        ("lambdalake_batch_archived_events_total", ""),
    ];
    while !sh.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(s) = &stack {
            s.lock().unwrap_or_else(|e| e.into_inner()).sample();
        }
        let mut now_vals = [
            accepted.accepted.load(Ordering::Relaxed) as f64,
            0.0,
            0.0,
            0.0,
        ];
        for (i, ((name, labels), url)) in queries.iter().zip(&urls).enumerate() {
            let text = match sh.http.get(format!("{url}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let v = if text.is_empty() {
                counters[i].last
            } else {
                metric_sum(&text, name, labels)
            };
            now_vals[i + 1] = counters[i].update(v);
        }
        let dt = last.0.elapsed().as_secs_f64().max(1e-3);
        let rate = |i: usize| ((now_vals[i] - last.1[i]) / dt).max(0.0);
        series.push(Sample {
            at_s: sh.started.elapsed().as_secs_f64(),
            accepted: rate(0),
            speed: rate(1),
            lakehouse: rate(2),
            archiver: rate(3),
        });
        last = (Instant::now(), now_vals);
    }
    series
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

async fn create_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (client, conn) = tokio_postgres::connect(
        url,
        tokio_postgres_rustls::MakeRustlsConnect::new(lambdalake_runtime::tls::client_config()),
    )
    .await
    .with_context(|| "cannot reach PostgreSQL (LAMBDALAKE_POSTGRES_URL)")?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("create database {name}"))
        .await?;
    let (head, _) = url
        .rsplit_once('/')
        .context("LAMBDALAKE_POSTGRES_URL names no database")?;
    Ok(format!("{head}/{name}"))
}

async fn database_bytes(url: &str) -> Option<u64> {
    let (client, conn) = tokio_postgres::connect(
        url,
        tokio_postgres_rustls::MakeRustlsConnect::new(lambdalake_runtime::tls::client_config()),
    )
    .await
    .ok()?;
    tokio::spawn(conn);
    let row = client
        .query_one("select pg_database_size(current_database())", &[])
        .await
        .ok()?;
    u64::try_from(row.get::<_, i64>(0)).ok()
}

fn redis_bytes(url: &str, prefix: &str) -> Option<u64> {
    let mut con = redis::Client::open(url).ok()?.get_connection().ok()?;
    let keys = crate::bench_speed::keys_under(&mut con, prefix).ok()?;
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("MEMORY").arg("USAGE").arg(k);
    }
    let sizes: Vec<Option<u64>> = pipe.query(&mut con).ok()?;
    Some(sizes.into_iter().flatten().sum())
}

async fn wait_ready(http: &reqwest::Client, stack: &Arc<Mutex<Stack>>) -> anyhow::Result<()> {
    for name in SERVICES {
        let url = stack.lock().unwrap_or_else(|e| e.into_inner()).url(name);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(r) = http.get(format!("{url}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            let exited = {
                let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
                let svc = s.services.iter_mut().find(|s| s.name == name);
                svc.and_then(|s| s.child.as_mut())
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
            };
            if exited {
                let run_dir = stack
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .run_dir
                    .clone();
                bail!(
                    "{name} exited at start; see {}",
                    run_dir.join("logs").join(format!("{name}.log")).display()
                );
            }
            if Instant::now() > deadline {
                bail!("{name} not ready at {url} after 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

async fn overview(sh: &Shared) -> Option<serde_json::Value> {
    get_json(&sh.http, &format!("{}/v1/overview", sh.serving))
        .await
        .ok()
}

/// Wait until `probe` (sent now) is visible in the speed path and in gold.
async fn wait_probe(sh: &Arc<Shared>, p: &Probe, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for api in ["lambda", "lakehouse"] {
        loop {
            if let Some(v) = windows(
                sh,
                api,
                "sensors",
                &p.device,
                p.window_ms,
                p.window_ms + MINUTE_MS,
            )
            .await
                && !served_windows(&v).is_empty()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("a first event did not become visible in the {api} path within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub async fn run(mut args: CompareArgs) -> anyhow::Result<()> {
    let started_ms = EventTime::now().millis();
    let id = format!("{started_ms}");
    let run = format!("bench-{id}");
    let spec = args.workload.spec(&run)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("results/bench-{}", report::stamp(started_ms))));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    // 1. the services
    let mut prefix = args.key_prefix.clone();
    let mut pg_url = args.postgres_url.clone();
    let mut data_dirs: Vec<(&'static str, PathBuf)> = Vec::new();
    let stack = if args.external {
        None
    } else {
        let data = args.run_dir.join(format!("bench-{id}"));
        std::fs::create_dir_all(args.run_dir.join("logs"))?;
        std::fs::create_dir_all(&data)?;
        prefix = format!("bench-{id}");
        pg_url = create_database(&args.postgres_url, &format!("lambdalake_bench_{id}")).await?;
        // fresh topics, named after the run
        for t in [
            &mut args.topics.sensor_readings,
            &mut args.topics.payments,
            &mut args.topics.alerts,
            &mut args.topics.late_events,
            &mut args.topics.dead_letter,
            &mut args.topics.fraud_labels,
        ] {
            *t = format!("{run}-{t}");
        }
        let (master, lake) = (data.join("master"), data.join("lakehouse"));
        data_dirs.push(("master dataset (Parquet)", master.clone()));
        data_dirs.push(("lakehouse tables (Delta)", lake.clone()));
        let ports: Vec<u16> = if args.base_port == 0 {
            (0..5).map(|_| free_port()).collect::<Result<_, _>>()?
        } else {
            (0..5).map(|i| args.base_port + i).collect()
        };
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let common: Vec<(String, String)> = vec![
            (
                "LAMBDALAKE_KAFKA_BROKERS".into(),
                args.kafka.brokers.clone(),
            ),
            (
                "LAMBDALAKE_TOPIC_SENSOR_READINGS".into(),
                args.topics.sensor_readings.clone(),
            ),
            (
                "LAMBDALAKE_TOPIC_PAYMENTS".into(),
                args.topics.payments.clone(),
            ),
            ("LAMBDALAKE_TOPIC_ALERTS".into(), args.topics.alerts.clone()),
            (
                "LAMBDALAKE_TOPIC_LATE_EVENTS".into(),
                args.topics.late_events.clone(),
            ),
            (
                "LAMBDALAKE_TOPIC_DEAD_LETTER".into(),
                args.topics.dead_letter.clone(),
            ),
            (
                "LAMBDALAKE_TOPIC_FRAUD_LABELS".into(),
                args.topics.fraud_labels.clone(),
            ),
            (
                "LAMBDALAKE_TOPIC_PARTITIONS".into(),
                args.topics.partitions.to_string(),
            ),
            ("LAMBDALAKE_SPEED_KEY_PREFIX".into(), prefix.clone()),
            ("LAMBDALAKE_REDIS_URL".into(), args.redis_url.clone()),
            ("LAMBDALAKE_POSTGRES_URL".into(), pg_url.clone()),
            (
                "LAMBDALAKE_MASTER_DATASET".into(),
                master.display().to_string(),
            ),
            (
                "LAMBDALAKE_LAKEHOUSE_TABLES".into(),
                lake.display().to_string(),
            ),
            ("LAMBDALAKE_SPEED_GROUP".into(), format!("{run}-speed")),
            (
                "LAMBDALAKE_ARCHIVER_GROUP".into(),
                format!("{run}-archiver"),
            ),
            (
                "LAMBDALAKE_LAKEHOUSE_GROUP".into(),
                format!("{run}-lakehouse"),
            ),
            ("LAMBDALAKE_BATCH_INTERVAL".into(), ms(args.batch_interval)),
            (
                "LAMBDALAKE_LAKEHOUSE_TRIGGER".into(),
                ms(args.lakehouse_trigger),
            ),
        ];
        let bin_dir = match &args.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("no directory for this program")?
                .to_owned(),
        };
        let services = SERVICES
            .iter()
            .zip(&ports)
            .map(|(name, port)| {
                let mut env = common.clone();
                env.push((
                    format!("LAMBDALAKE_{}_LISTEN", name.to_uppercase()),
                    format!("127.0.0.1:{port}"),
                ));
                Service {
                    name,
                    url: format!("http://127.0.0.1:{port}"),
                    child: None,
                    env,
                    cpu_before: 0.0,
                    cpu_now: 0.0,
                    peak_rss_kib: 0,
                    restarts: 0,
                    started: None,
                    rss: Vec::new(),
                }
            })
            .collect();
        let clock_ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        let mut stack = Stack {
            services,
            bin_dir,
            run_dir: args.run_dir.clone(),
            keep: args.keep_running,
            clock_ticks,
        };
        for name in SERVICES {
            eprintln!("bench: starting {name}");
            stack.spawn(name)?;
        }
        let stack = Arc::new(Mutex::new(stack));
        wait_ready(&http, &stack).await?;
        Some(stack)
    };
    // a failed run stops the services it started (other tasks hold the stack too: explicit)
    let mut guard = StopOnError(stack.clone());
    if let Some(stack) = &stack {
        // Ctrl-C: stop the services this run started, then exit
        let stack = stack.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nbench: interrupted; stopping the services it started");
                stack.lock().unwrap_or_else(|e| e.into_inner()).stop();
                std::process::exit(130);
            }
        });
    }
    let url = |name: &str, external: &str| match &stack {
        Some(s) => s.lock().unwrap_or_else(|e| e.into_inner()).url(name),
        None => external.trim_end_matches('/').to_owned(),
    };
    let ingest_url = url("ingest", &args.send.ingest_url);
    let serving_url = url("serving", &args.serving_url);
    let metric_urls = [
        url("speed", &args.speed_url),
        url("lakehouse", &args.lakehouse_url),
        url("batch", &args.batch_url),
    ];
    let mut send = args.send.clone();
    send.ingest_url = ingest_url.clone();
    if stack.is_some() {
        // the services' addresses, for a shell (`. services.env`) and the course map's commands
        let env: String = [
            ("INGEST", &ingest_url),
            ("SERVING", &serving_url),
            ("SPEED", &metric_urls[0]),
            ("LAKEHOUSE", &metric_urls[1]),
            ("BATCH", &metric_urls[2]),
        ]
        .iter()
        .map(|(k, v)| format!("export LAMBDALAKE_{k}_URL={v}\n"))
        .chain(
            [
                ("SENSOR_READINGS", &args.topics.sensor_readings),
                ("PAYMENTS", &args.topics.payments),
                ("ALERTS", &args.topics.alerts),
                ("LATE_EVENTS", &args.topics.late_events),
                ("DEAD_LETTER", &args.topics.dead_letter),
                ("FRAUD_LABELS", &args.topics.fraud_labels),
            ]
            .iter()
            .map(|(k, v)| format!("export LAMBDALAKE_TOPIC_{k}={v}\n")),
        )
        .chain([format!("export LAMBDALAKE_SPEED_KEY_PREFIX={prefix}\n")])
        .collect();
        std::fs::write(out.join("services.env"), env)?;
    }

    let truth = Arc::new(Mutex::new(Truth::default()));
    let lateness = spec.late_by_ms.1;
    let sh = Arc::new(Shared {
        http: http.clone(),
        serving: serving_url.clone(),
        truth: truth.clone(),
        fresh: Mutex::new(Freshness::default()),
        load_phase: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        run: run.clone(),
        started: Instant::now(),
        range_from_ms: floor_minute(started_ms - lateness - MINUTE_MS),
        probe_timeout: args.probe_timeout,
        batch_probe_timeout: args.probe_timeout + 3 * args.batch_interval,
    });

    // warm-up: both consumers have joined their groups once a first event is visible in each
    eprintln!("bench: waiting for the speed layer and the lakehouse to take a first event");
    let first = send_probe(&sh, &ingest_url, 0, None).await?;
    wait_probe(&sh, &first, Duration::from_secs(120)).await?;

    // 2. load
    let sender = Sender::new(
        send.clone(),
        &args.kafka,
        &args.producer,
        args.topics.clone(),
        truth.clone(),
    )?;
    let recovery = !args.external && !args.no_recovery;
    let load_for = if recovery {
        args.duration + 2 * args.recovery_timeout
    } else {
        args.duration
    };
    let stop_load = Arc::new(AtomicBool::new(false));
    sh.load_phase.store(true, Ordering::Relaxed);
    let load = {
        let (sender, stop_load) = (sender.clone(), stop_load.clone());
        let mut generator = Generator::new(spec.clone());
        tokio::spawn(async move { sender.run(&mut generator, load_for, &stop_load, true).await })
    };
    let pollers = [
        tokio::spawn(poll_path(
            sh.clone(),
            "speed",
            "lambda",
            Duration::from_millis(50),
        )),
        tokio::spawn(poll_path(
            sh.clone(),
            "lakehouse",
            "lakehouse",
            Duration::from_millis(100),
        )),
        tokio::spawn(poll_batch(sh.clone())),
    ];
    let sampler_task = tokio::spawn(sampler(
        sh.clone(),
        metric_urls.clone(),
        sender.stats.clone(),
        stack.clone(),
    ));
    let probes = {
        let (sh, ingest, every) = (sh.clone(), ingest_url.clone(), args.probe_every);
        tokio::spawn(async move {
            let mut n = 1;
            while !sh.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                if let Ok(p) = send_probe(&sh, &ingest, n, None).await {
                    let mut f = sh.fresh.lock().unwrap_or_else(|e| e.into_inner());
                    f.speed.push(p.clone());
                    f.lake.push(p.clone());
                    f.batch.push(p);
                }
                n += 1;
            }
        })
    };
    let mut checks = Vec::new();
    let load_end = Instant::now() + args.duration;
    while Instant::now() < load_end {
        let rest = load_end.saturating_duration_since(Instant::now());
        tokio::time::sleep(rest.min(args.check_every)).await;
        if Instant::now() + Duration::from_millis(500) < load_end || checks.is_empty() {
            let c = check(&sh, args.check_keys, args.settle, "during load").await;
            eprintln!(
                "\nbench: {:>5.0} s  windows exact: Lambda {:.1}% ({} judged), Lakehouse {:.1}% ({} judged)",
                c.at_s,
                100.0 * c.lambda.share(),
                c.lambda.judged,
                100.0 * c.lakehouse.share(),
                c.lakehouse.judged
            );
            checks.push(c);
        }
    }
    sh.load_phase.store(false, Ordering::Relaxed);
    let load_seconds = sh.started.elapsed().as_secs_f64();

    // 3. recovery under load
    let mut recoveries: Vec<report::Recovery> = Vec::new();
    if let (true, Some(stack)) = (recovery, &stack) {
        for (service, path) in [("speed", "speed"), ("lakehouse", "lakehouse")] {
            eprintln!("\nbench: SIGKILL {service} under load, restart, wait until it caught up");
            let kill = Instant::now();
            stack
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .kill_and_restart(service)?;
            let p = send_probe(
                &sh,
                &ingest_url,
                1_000_000 + recoveries.len() as u64,
                Some(kill),
            )
            .await?;
            {
                let mut f = sh.fresh.lock().unwrap_or_else(|e| e.into_inner());
                if path == "speed" {
                    f.speed.push(p);
                } else {
                    f.lake.push(p);
                }
            }
            let deadline = kill + args.recovery_timeout;
            let seconds = loop {
                if let Some(s) = sh
                    .fresh
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .recovered
                    .get(path)
                {
                    break Some(*s);
                }
                if Instant::now() > deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            eprintln!(
                "bench: {service} caught up in {}",
                seconds.map_or("— (timeout)".to_owned(), |s| format!("{s:.2} s"))
            );
            recoveries.push(report::Recovery {
                service: service.to_owned(),
                catch_up_seconds: seconds,
            });
        }
    }

    // 4. drain
    stop_load.store(true, Ordering::Relaxed);
    let summary = load.await?;
    let load_stopped_ms = EventTime::now().millis();
    let load_stopped = Instant::now();
    eprintln!("\nbench: load stopped; waiting for both paths to consume everything");
    let drain_deadline = Instant::now() + args.drain_timeout;
    loop {
        if let Some(o) = overview(&sh).await
            && o["speed"]["lag_records"].as_i64() == Some(0)
            && o["lakehouse"]["lag_records"].as_i64() == Some(0)
        {
            break;
        }
        if Instant::now() > drain_deadline {
            eprintln!("bench: the paths did not catch up within --drain-timeout; checking anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // let every window settle, then the merged view before a recompute covers the late events
    tokio::time::sleep(args.settle.saturating_sub(load_stopped.elapsed())).await;
    let drained = check(
        &sh,
        args.final_keys,
        args.settle,
        "drained, before the recompute",
    )
    .await;
    eprintln!(
        "bench: drained: windows exact: Lambda {:.2}%, Lakehouse {:.2}%",
        100.0 * drained.lambda.share(),
        100.0 * drained.lakehouse.share()
    );
    checks.push(drained);
    // a version published after the archiver wrote the last events (it flushes every 5 s)
    eprintln!("bench: waiting for a batch version that covers the whole run");
    let wanted_after_ms = load_stopped_ms + 6_000;
    let mut covered = false;
    while Instant::now() < drain_deadline {
        if let Some(o) = overview(&sh).await
            && let Some(published) = o["batch"]["published_at"]
                .as_str()
                .and_then(|p| chrono::DateTime::parse_from_rfc3339(p).ok())
            && published.timestamp_millis() > wanted_after_ms
        {
            covered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !covered {
        eprintln!("bench: no batch version covering the run within --drain-timeout");
    }
    let after = check(
        &sh,
        args.final_keys,
        args.settle,
        "after the batch recompute",
    )
    .await;
    eprintln!(
        "bench: after the recompute: windows exact: Lambda {:.2}%, Lakehouse {:.2}%",
        100.0 * after.lambda.share(),
        100.0 * after.lakehouse.share()
    );
    for w in after.lambda_wrong.iter() {
        eprintln!("bench: Lambda wrong: {w}");
    }
    for w in after.lakehouse_wrong.iter() {
        eprintln!("bench: Lakehouse wrong: {w}");
    }
    checks.push(after);

    // 5. the rest of the figures
    let (since, until) = (sh.range_from_ms, EventTime::now().millis());
    let fraud = truth
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .fraud
        .clone();
    let lambda_flagged = flagged(&sh, "/v1/alerts", since, until).await;
    let lake_flagged = flagged(&sh, "/v1/lakehouse/alerts", since, until).await;
    let detection = [
        (
            "Lambda (speed layer)",
            truth::detection(&lambda_flagged, &fraud),
        ),
        ("Lakehouse (gold)", truth::detection(&lake_flagged, &fraud)),
    ];
    sh.stop.store(true, Ordering::Relaxed);
    for p in pollers {
        p.await?;
    }
    probes.await?;
    let series = sampler_task.await?;
    let fresh = std::mem::take(&mut *sh.fresh.lock().unwrap_or_else(|e| e.into_inner()));
    let mut freshness = Vec::new();
    for (path, label) in [
        ("speed", "Lambda speed path (Redis)"),
        ("batch", "Lambda batch path (after a recompute)"),
        ("lakehouse", "Lakehouse gold"),
    ] {
        let h = fresh.hist.get(path);
        let pending = match path {
            "speed" => fresh.speed.len(),
            "lakehouse" => fresh.lake.len(),
            _ => fresh.batch.len(),
        };
        freshness.push(report::FreshnessRow {
            path: label.to_owned(),
            percentiles: h.map(truth::percentiles).unwrap_or_default(),
            never_seen: pending as u64 + fresh.unseen.get(path).copied().unwrap_or(0),
            cdf: h.map(report::cdf).unwrap_or_default(),
            failed_queries: fresh.failed_queries.get(path).copied().unwrap_or(0),
            probes: fresh
                .seen
                .get(path)
                .map(|v| {
                    v.iter()
                        .map(|(acked, latency, query)| report::ProbeSeen {
                            acked_s: acked.saturating_duration_since(sh.started).as_secs_f64(),
                            latency_ms: latency.as_secs_f64() * 1e3,
                            query_ms: query.as_secs_f64() * 1e3,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    let mut processes = Vec::new();
    if let Some(stack) = &stack {
        let mut s = stack.lock().unwrap_or_else(|e| e.into_inner());
        s.sample();
        for svc in &s.services {
            processes.push(report::Process {
                service: svc.name.to_owned(),
                cpu_seconds: svc.cpu_before + svc.cpu_now,
                peak_rss_mib: svc.peak_rss_kib as f64 / 1024.0,
                restarts: svc.restarts,
                rss_warm_to_end_mib: svc.rss_growth(),
            });
        }
    }
    let mut storage = vec![
        report::Store {
            store: "Redis (speed views)".to_owned(),
            bytes: redis_bytes(&args.redis_url, &prefix),
        },
        report::Store {
            store: "PostgreSQL (batch views)".to_owned(),
            bytes: database_bytes(&pg_url).await,
        },
    ];
    for (name, dir) in &data_dirs {
        storage.push(report::Store {
            store: (*name).to_owned(),
            bytes: Some(dir_bytes(dir)),
        });
    }
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let t = truth.lock().unwrap_or_else(|e| e.into_inner());
    let processed = |f: fn(&Sample) -> f64| {
        let v: Vec<f64> = series
            .iter()
            .filter(|s| s.at_s <= load_seconds)
            .map(f)
            .collect();
        v.iter().sum::<f64>() / (v.len().max(1) as f64)
    };
    let report = Report {
        machine: crate::bench::machine(),
        run: run.clone(),
        external: args.external,
        rate: args.send.rate,
        load_seconds: args.duration.as_secs_f64(),
        workload: spec.clone(),
        sent: summary,
        distinct_events: t.distinct_events() as u64,
        fraudulent_payments: t.fraud.len() as u64,
        throughput: vec![
            ("accepted by ingest".to_owned(), processed(|s| s.accepted)),
            (
                "Lambda speed layer (records consumed)".to_owned(),
                processed(|s| s.speed),
            ),
            (
                "Lambda archiver (master dataset)".to_owned(),
                processed(|s| s.archiver),
            ),
            (
                "Lakehouse bronze (rows appended)".to_owned(),
                processed(|s| s.lakehouse),
            ),
        ],
        freshness,
        checks,
        detection: detection.iter().map(|(p, d)| (p.to_string(), *d)).collect(),
        processes,
        storage,
        recovery: recoveries,
        lines_of_code: report::lines_of_code(&source),
        series,
        serving_url: serving_url.clone(),
    };
    drop(t);
    report::write(&out, &report)?;
    guard.0 = None;
    println!("report: {}", out.join("report.md").display());
    if args.keep_running {
        println!("dashboard: {serving_url}/");
    } else if let Some(stack) = &stack {
        stack.lock().unwrap_or_else(|e| e.into_inner()).stop();
    }
    Ok(())
}
