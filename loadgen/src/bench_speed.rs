//! `bench speed`: the speed layer's consumption rate from a pre-filled topic into Redis, next to
//! a plain consumer reading the same topics in the same run, and its freshness at a steady rate
//! through ingest (ingest acknowledgement → the window visible in Redis).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use lambdalake_events::EventTime;
use lambdalake_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use lambdalake_kafka::rdkafka::{Offset, TopicPartitionList};
use lambdalake_kafka::{
    KafkaArgs, ProducerArgs, TopicArgs, consumer_config, ensure_topics, producer_config,
};
use lambdalake_views::keys::{Keys, SensorView};
use serde::Serialize;

use crate::bench::{Batch, Throughput, machine, raw_producer};
use crate::workload::Workload;

/// A probe waiting to become visible: (window hash, device) and when ingest acknowledged it.
type Probe = ((String, String), Instant);

#[derive(clap::Args)]
pub struct SpeedBenchArgs {
    /// Events pre-filled for the consumption phase (half readings, half payments).
    #[arg(long, default_value = "2000000")]
    events: usize,

    /// Devices and cards of the workload.
    #[arg(long, default_value = "1000")]
    devices: usize,
    #[arg(long, default_value = "100000")]
    cards: usize,

    /// Event time the pre-filled events span (in order, so none is late). With the defaults a
    /// device reports every 7 s and a card pays every 12 minutes.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2h")]
    span: Duration,

    /// Rate of the freshness phase, events/s through ingest.
    #[arg(long, default_value = "10000")]
    rate: usize,

    /// Length of the freshness phase (0 skips it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    freshness_duration: Duration,

    /// Seed of the workload.
    #[arg(long, default_value = "1")]
    seed: u64,

    #[arg(
        long,
        env = "LAMBDALAKE_REDIS_URL",
        default_value = "redis://127.0.0.1:16379"
    )]
    redis_url: String,

    /// Keep the bench's Redis keys (by default they are deleted after each phase, so a run
    /// leaves Redis as it found it).
    #[arg(long)]
    keep_keys: bool,

    /// Where to write the JSON result.
    #[arg(long, default_value = "results/bench-speed.json")]
    out: PathBuf,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    producer: ProducerArgs,

    /// Only the partition count and replication are used: the bench makes fresh topics.
    #[command(flatten)]
    topics: TopicArgs,
}

#[derive(Serialize)]
struct SpeedResult {
    machine: String,
    events: usize,
    partitions_per_topic: i32,
    raw_consumer: Throughput,
    /// From the first applied micro-batch to the last (group join excluded, as the raw
    /// consumer's assignment has none).
    speed: Throughput,
    /// From the service's start, group join included.
    speed_including_start: Throughput,
    speed_share_of_raw: f64,
    freshness: Option<Freshness>,
}

#[derive(Serialize)]
struct Freshness {
    rate: usize,
    seconds: f64,
    probes: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// NDJSON batches whose event time advances evenly over `span`.
fn spread_batches(args: &SpeedBenchArgs, run: &str) -> Vec<Batch> {
    let mut w = Workload::new(args.seed, run, args.devices, args.cards);
    let start = EventTime::now().millis() - args.span.as_millis() as i64;
    let step = args.span.as_millis() as f64 / args.events.max(1) as f64;
    let per_batch = 1000;
    let mut batches = Vec::new();
    let mut i = 0usize;
    let mut n = 0usize;
    while i < args.events {
        let size = per_batch.min(args.events - i);
        let mut body = Vec::with_capacity(size * 260);
        let mut keys = Vec::with_capacity(size);
        for _ in 0..size {
            let ts = EventTime::from_millis_unchecked(start + (i as f64 * step) as i64);
            let begin = body.len();
            let key = if n.is_multiple_of(2) {
                let r = w.reading(ts);
                serde_json::to_writer(&mut body, &r).expect("json");
                r.device_id.as_str().to_owned()
            } else {
                let p = w.payment(ts);
                serde_json::to_writer(&mut body, &p).expect("json");
                p.card_id.as_str().to_owned()
            };
            keys.push((key, begin..body.len()));
            body.push(b'\n');
            i += 1;
        }
        let path = if n.is_multiple_of(2) {
            "/v1/sensor-readings"
        } else {
            "/v1/payments"
        };
        batches.push(Batch { path, body, keys });
        n += 1;
    }
    batches
}

/// A plain consumer assigned every partition from the beginning, until `total` records.
fn raw_consume(
    kafka: &KafkaArgs,
    topics: &[String; 2],
    partitions: i32,
    total: usize,
) -> anyhow::Result<Throughput> {
    let consumer: BaseConsumer =
        consumer_config(kafka, &format!("bench-raw-{}", EventTime::now().millis())).create()?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in 0..partitions {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut n = 0usize;
    let mut bytes = 0usize;
    while n < total {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                use lambdalake_kafka::rdkafka::Message;
                bytes += m.payload().map_or(0, <[u8]>::len);
                n += 1;
            }
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None => bail!("raw consumer: nothing for 10 s after {n} of {total} records"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    std::hint::black_box(bytes);
    Ok(Throughput {
        events: n as u64,
        seconds,
        events_per_second: n as f64 / seconds,
    })
}

/// Stored offsets of every partition, summed (what the speed layer applied).
fn applied(
    con: &mut redis::Connection,
    keys: &Keys,
    topics: &[String; 2],
    partitions: i32,
) -> anyhow::Result<i64> {
    let mut pipe = redis::pipe();
    for t in topics {
        for p in 0..partitions {
            pipe.cmd("HGET").arg(keys.partition(t, p)).arg("offset");
        }
    }
    let offsets: Vec<Option<i64>> = pipe.query(con)?;
    Ok(offsets.into_iter().flatten().sum())
}

fn speed_config(
    args: &SpeedBenchArgs,
    topics: &[String; 2],
    prefix: &str,
) -> anyhow::Result<lambdalake_speed::Config> {
    let side = |what: &str| format!("{prefix}-{what}");
    Ok(lambdalake_speed::Config::try_parse_from([
        "lambdalake-speed".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--redis-url".into(),
        args.redis_url.clone(),
        "--key-prefix".into(),
        prefix.to_owned(),
        "--group".into(),
        prefix.to_owned(),
        "--topic-sensor-readings".into(),
        topics[0].clone(),
        "--topic-payments".into(),
        topics[1].clone(),
        "--topic-alerts".into(),
        side("alerts"),
        "--topic-late-events".into(),
        side("late"),
        "--topic-dead-letter".into(),
        side("dead"),
        "--kafka-brokers".into(),
        args.kafka.brokers.clone(),
    ])?)
}

pub async fn run(args: SpeedBenchArgs) -> anyhow::Result<()> {
    if args.events == 0 {
        bail!("--events must be positive");
    }
    let id = EventTime::now().millis();
    let partitions = args.topics.partitions.get();
    let topics = [
        format!("bench-speed-sensor-{id}"),
        format!("bench-speed-payments-{id}"),
    ];
    ensure_topics(
        &args.kafka,
        &args.topics,
        &[&topics[0], &topics[1]],
        Duration::from_secs(10),
    )
    .await?;
    eprintln!(
        "generating {} events spanning {:?} of event time …",
        args.events, args.span
    );
    let batches = spread_batches(&args, &format!("bench-speed-{id}"));
    eprintln!("pre-filling {} and {} …", topics[0], topics[1]);
    let config = producer_config(&args.kafka, &args.producer);
    let fill = {
        let topics = topics.clone();
        tokio::task::spawn_blocking(move || raw_producer(config, topics, &batches)).await??
    };
    eprintln!("pre-filled at {:.0} events/s", fill.events_per_second);

    eprintln!("plain consumer …");
    let raw = {
        let (kafka, topics, total) = (args.kafka.clone(), topics.clone(), args.events);
        tokio::task::spawn_blocking(move || raw_consume(&kafka, &topics, partitions, total))
            .await??
    };
    eprintln!("plain consumer: {:.0} events/s", raw.events_per_second);

    eprintln!("speed layer …");
    let prefix = format!("bench-{id}");
    let keys = Keys::new(prefix.clone());
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut con = client.get_connection().context("connect to Redis")?;
    let app = lambdalake_speed::Application::build(speed_config(&args, &topics, &prefix)?).await?;
    let stop = app.shutdown_token();
    let started = Instant::now();
    let handle = tokio::spawn(app.run_until_stopped());
    let total = args.events as i64;
    let mut first: Option<(Instant, i64)> = None;
    let mut last_report = Instant::now();
    loop {
        let done = applied(&mut con, &keys, &topics, partitions)?;
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        if done >= total {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            eprintln!("  applied {done} of {total}");
            last_report = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the speed layer applied {done} of {total} in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let end = Instant::now();
    let (t_first, at_first) = first.expect("something was applied");
    let steady_seconds = (end - t_first).as_secs_f64().max(1e-9);
    let speed = Throughput {
        events: (total - at_first) as u64,
        seconds: steady_seconds,
        events_per_second: (total - at_first) as f64 / steady_seconds,
    };
    let whole = (end - started).as_secs_f64();
    let speed_including_start = Throughput {
        events: total as u64,
        seconds: whole,
        events_per_second: total as f64 / whole,
    };
    eprintln!("speed layer: {:.0} events/s", speed.events_per_second);
    stop.cancel();
    handle.await?.map_err(anyhow::Error::msg)?;
    if !args.keep_keys {
        delete_prefix(&mut con, &prefix)?;
    }

    let freshness = if args.freshness_duration.is_zero() {
        None
    } else {
        Some(freshness(&args, &client, id).await?)
    };

    let result = SpeedResult {
        machine: machine(),
        events: args.events,
        partitions_per_topic: partitions,
        speed_share_of_raw: speed.events_per_second / raw.events_per_second,
        raw_consumer: raw,
        speed,
        speed_including_start,
        freshness,
    };
    print_markdown(&result);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&result)?)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Ingest and the speed layer in-process on fresh topics; a steady load at `rate` plus probe
/// readings (one new device each) whose 1-minute window is polled in Redis every millisecond.
async fn freshness(
    args: &SpeedBenchArgs,
    client: &redis::Client,
    id: i64,
) -> anyhow::Result<Freshness> {
    let topics = [
        format!("bench-fresh-sensor-{id}"),
        format!("bench-fresh-payments-{id}"),
    ];
    let prefix = format!("bench-fresh-{id}");
    let keys = Keys::new(prefix.clone());
    let ingest =
        lambdalake_ingest::Application::build(lambdalake_ingest::Config::try_parse_from([
            "lambdalake-ingest",
            "--listen",
            "127.0.0.1:0",
            "--topic-sensor-readings",
            &topics[0],
            "--topic-payments",
            &topics[1],
            "--kafka-brokers",
            &args.kafka.brokers,
        ])?)
        .await?;
    let url = format!("http://127.0.0.1:{}", ingest.port());
    let stop_ingest = ingest.shutdown_token();
    let ingest_task = tokio::spawn(ingest.run_until_stopped());
    let speed = lambdalake_speed::Application::build(speed_config(args, &topics, &prefix)?).await?;
    let stop_speed = speed.shutdown_token();
    let speed_task = tokio::spawn(speed.run_until_stopped());
    let http = reqwest::Client::new();

    // wait until the speed layer has its partitions: a first probe becomes visible
    eprintln!("freshness: waiting for the speed layer to join its group …");
    let mut con = client.get_connection()?;
    let warm_ts = EventTime::now().millis();
    post_probe(&http, &url, "warm-up", warm_ts).await?;
    let warm_key = keys.sensor_windows(SensorView::OneMinute, warm_ts.div_euclid(60_000) * 60_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !redis::cmd("EXISTS")
        .arg(&warm_key)
        .query::<bool>(&mut con)?
    {
        if Instant::now() > deadline {
            bail!("the speed layer did not apply a first event within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    eprintln!(
        "freshness: {} events/s for {:?} …",
        args.rate, args.freshness_duration
    );
    // probes: ((window hash, device), acknowledged at)
    let pending: Arc<Mutex<Vec<Probe>>> = Arc::new(Mutex::new(Vec::new()));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
    let stop_poll = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (pending, hist, stop_poll, client) = (
            pending.clone(),
            hist.clone(),
            stop_poll.clone(),
            client.clone(),
        );
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut con = client.get_connection()?;
            loop {
                let waiting: Vec<Probe> = pending.lock().map(|p| p.clone()).unwrap_or_default();
                if waiting.is_empty() {
                    if stop_poll.load(std::sync::atomic::Ordering::Acquire) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                let mut pipe = redis::pipe();
                for ((k, f), _) in &waiting {
                    pipe.cmd("HEXISTS").arg(k).arg(f);
                }
                let found: Vec<bool> = pipe.query(&mut con)?;
                let now = Instant::now();
                let visible: Vec<&(String, String)> = waiting
                    .iter()
                    .zip(&found)
                    .filter(|(_, f)| **f)
                    .map(|((k, acked), _)| {
                        if let Ok(mut h) = hist.lock() {
                            h.record(now.duration_since(*acked).as_micros() as u64).ok();
                        }
                        k
                    })
                    .collect();
                if let Ok(mut p) = pending.lock() {
                    p.retain(|(k, _)| !visible.contains(&k));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    // steady load: every 10 ms a batch of rate/100 events, open loop
    let mut w = Workload::new(
        args.seed + 1,
        &format!("fresh-{id}"),
        args.devices,
        args.cards,
    );
    let per_tick = (args.rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut n = 0u64;
    let mut inflight = Vec::new();
    while started.elapsed() < args.freshness_duration {
        tick.tick().await;
        let now = EventTime::now();
        let (mut sensors, mut payments) = (Vec::new(), Vec::new());
        for i in 0..per_tick {
            if i % 2 == 0 {
                serde_json::to_writer(&mut sensors, &w.reading(now))?;
                sensors.push(b'\n');
            } else {
                serde_json::to_writer(&mut payments, &w.payment(now))?;
                payments.push(b'\n');
            }
        }
        for (path, body) in [("/v1/sensor-readings", sensors), ("/v1/payments", payments)] {
            let req = http
                .post(format!("{url}{path}"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send();
            inflight.push(tokio::spawn(req));
        }
        // a probe every other tick
        if n.is_multiple_of(2) {
            let (http, url, pending, keys) =
                (http.clone(), url.clone(), pending.clone(), keys.clone());
            let device = format!("probe-{n}");
            tokio::spawn(async move {
                let ts = EventTime::now().millis();
                if post_probe(&http, &url, &device, ts).await.is_ok() {
                    let key = (
                        keys.sensor_windows(SensorView::OneMinute, ts.div_euclid(60_000) * 60_000),
                        device,
                    );
                    if let Ok(mut p) = pending.lock() {
                        p.push((key, Instant::now()));
                    }
                }
            });
        }
        n += 1;
        inflight.retain(|h: &tokio::task::JoinHandle<_>| !h.is_finished());
    }
    for h in inflight {
        let _ = h.await;
    }
    // let the last probes land
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending.lock().map(|p| !p.is_empty()).unwrap_or(false) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_poll.store(true, std::sync::atomic::Ordering::Release);
    let missing = pending.lock().map(|p| p.len()).unwrap_or(0);
    if let Ok(mut p) = pending.lock() {
        p.clear();
    }
    poller
        .join()
        .map_err(|_| anyhow::anyhow!("poller panicked"))??;
    stop_speed.cancel();
    stop_ingest.cancel();
    speed_task.await?.map_err(anyhow::Error::msg)?;
    ingest_task.await??;
    if !args.keep_keys {
        delete_prefix(&mut con, &prefix)?;
    }
    if missing > 0 {
        bail!("{missing} probes never became visible in Redis");
    }
    let h = hist.lock().map_err(|_| anyhow::anyhow!("histogram lock"))?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Freshness {
        rate: args.rate,
        seconds: args.freshness_duration.as_secs_f64(),
        probes: h.len(),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1000.0,
    })
}

/// Every key under `prefix:` (SCAN, not KEYS: Redis keeps serving meanwhile).
pub(crate) fn keys_under(
    con: &mut redis::Connection,
    prefix: &str,
) -> redis::RedisResult<Vec<String>> {
    let iter: redis::Iter<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{prefix}:*"))
        .arg("COUNT")
        .arg(10_000)
        .clone()
        .iter(con)?;
    iter.collect()
}

/// Delete every key under `prefix:` (a bench's own keys).
fn delete_prefix(con: &mut redis::Connection, prefix: &str) -> anyhow::Result<()> {
    let keys = keys_under(con, prefix)?;
    for chunk in keys.chunks(10_000) {
        redis::cmd("UNLINK").arg(chunk).query::<()>(con)?;
    }
    eprintln!("deleted {} keys under {prefix}:", keys.len());
    Ok(())
}

async fn post_probe(
    http: &reqwest::Client,
    url: &str,
    device: &str,
    ts: i64,
) -> anyhow::Result<()> {
    let body = format!(
        r#"{{"event_id":"{device}-{ts}","device_id":"{device}","site":"probe","ts":{ts},"temperature_c":20.0,"vibration_mm_s":0.1}}"#
    );
    let r = http
        .post(format!("{url}/v1/sensor-readings"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("probe answered {}", r.status());
    }
    Ok(())
}

fn print_markdown(r: &SpeedResult) {
    println!(
        "\n## Speed layer benchmark ({} events pre-filled, {} partitions per topic; {})\n",
        r.events, r.partitions_per_topic, r.machine
    );
    println!("| path | events/s | seconds |");
    println!("|---|---:|---:|");
    println!(
        "| plain consumer (assigned partitions) | {:.0} | {:.2} |",
        r.raw_consumer.events_per_second, r.raw_consumer.seconds
    );
    println!(
        "| speed layer → Redis (first to last micro-batch) | {:.0} | {:.2} |",
        r.speed.events_per_second, r.speed.seconds
    );
    println!(
        "| speed layer, group join included | {:.0} | {:.2} |",
        r.speed_including_start.events_per_second, r.speed_including_start.seconds
    );
    println!("\nspeed / raw = {:.0}%", r.speed_share_of_raw * 100.0);
    if let Some(f) = &r.freshness {
        println!(
            "freshness at {} events/s through ingest (ack → window in Redis, {} probes): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            f.rate, f.probes, f.p50_ms, f.p90_ms, f.p99_ms, f.max_ms
        );
    }
}
