//! `bench ingest`: ingest throughput with NDJSON batches, next to the raw producer ceiling of the
//! same broker measured in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use hdrhistogram::Histogram;
use lambdalake_events::EventTime;
use lambdalake_kafka::rdkafka::ClientConfig;
use lambdalake_kafka::rdkafka::client::ClientContext;
use lambdalake_kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use lambdalake_kafka::rdkafka::message::DeliveryResult;
use lambdalake_kafka::rdkafka::producer::{
    BaseProducer, BaseRecord, Producer as _, ProducerContext,
};
use lambdalake_kafka::{KafkaArgs, ProducerArgs, TopicArgs, ensure_topics, producer_config};
use serde::Serialize;

use crate::workload::Workload;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Ingest throughput (NDJSON batches over HTTP → Kafka acks) vs a plain rdkafka producer.
    Ingest(IngestBenchArgs),
    /// Speed layer: consumption rate from a pre-filled topic into Redis vs a plain consumer, and
    /// freshness (ingest acknowledgement → window visible in Redis) at a steady rate.
    Speed(crate::bench_speed::SpeedBenchArgs),
}

#[derive(clap::Args)]
pub struct IngestBenchArgs {
    /// Events sent through ingest (and, separately, by the raw producer).
    #[arg(long, default_value = "1000000")]
    events: usize,

    /// Events per NDJSON request.
    #[arg(long, default_value = "1000")]
    batch: usize,

    /// Concurrent HTTP requests in flight.
    #[arg(long, default_value = "16")]
    concurrency: usize,

    /// Use a running ingest at this URL (its topics are used) instead of starting one in-process.
    #[arg(long)]
    ingest_url: Option<String>,

    /// Seed of the workload.
    #[arg(long, default_value = "1")]
    seed: u64,

    /// Where to write the JSON result.
    #[arg(long, default_value = "results/bench-ingest.json")]
    out: PathBuf,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    producer: ProducerArgs,

    /// Only the partition count and replication are used: the bench makes fresh topics.
    #[command(flatten)]
    topics: TopicArgs,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingest(args) => ingest(args).await,
        BenchCommand::Speed(args) => crate::bench_speed::run(args).await,
    }
}

#[derive(Serialize)]
pub(crate) struct Throughput {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
}

#[derive(Serialize)]
struct IngestResult {
    machine: String,
    events: usize,
    batch: usize,
    concurrency: usize,
    raw_producer: Throughput,
    ingest: Throughput,
    ingest_share_of_raw: f64,
    request_latency_ms: Latency,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    requests: u64,
}

/// One pre-built request: the kind's path and the NDJSON body, with each line's key for the raw
/// producer.
pub(crate) struct Batch {
    pub path: &'static str,
    pub body: Vec<u8>,
    pub keys: Vec<(String, std::ops::Range<usize>)>,
}

fn build_batches(events: usize, batch: usize, seed: u64) -> Vec<Batch> {
    let run = format!("bench-{}", EventTime::now().millis());
    let mut w = Workload::new(seed, &run, 10_000, 100_000);
    let now = EventTime::now();
    let mut batches = Vec::with_capacity(events.div_ceil(batch));
    let mut made = 0;
    let mut n = 0;
    while made < events {
        let size = batch.min(events - made);
        let mut body = Vec::with_capacity(size * 260);
        let mut keys = Vec::with_capacity(size);
        let path = if n % 2 == 0 {
            "/v1/sensor-readings"
        } else {
            "/v1/payments"
        };
        for _ in 0..size {
            let start = body.len();
            let key = if n % 2 == 0 {
                let r = w.reading(now);
                serde_json::to_writer(&mut body, &r).expect("json");
                r.device_id.as_str().to_owned()
            } else {
                let p = w.payment(now);
                serde_json::to_writer(&mut body, &p).expect("json");
                p.card_id.as_str().to_owned()
            };
            keys.push((key, start..body.len()));
            body.push(b'\n');
        }
        made += size;
        n += 1;
        batches.push(Batch { path, body, keys });
    }
    batches
}

struct Counting {
    acked: AtomicU64,
    failed: AtomicU64,
}

#[derive(Clone)]
struct Ctx(Arc<Counting>);

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A plain rdkafka producer loop with the same idempotent `acks=all` configuration ingest uses.
pub(crate) fn raw_producer(
    config: ClientConfig,
    topics: [String; 2],
    batches: &[Batch],
) -> anyhow::Result<Throughput> {
    let counting = Arc::new(Counting {
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let producer: BaseProducer<Ctx> = config.create_with_context(Ctx(counting.clone()))?;
    let total: usize = batches.iter().map(|b| b.keys.len()).sum();
    // warm-up, not timed: connection and idempotent producer id
    producer
        .send(BaseRecord::to(&topics[0]).key("warm-up").payload("{}"))
        .map_err(|(e, _)| anyhow::anyhow!("raw producer warm-up: {e}"))?;
    producer.flush(Duration::from_secs(30))?;
    counting.acked.store(0, Ordering::Relaxed);
    let started = Instant::now();
    for (i, batch) in batches.iter().enumerate() {
        let topic = &topics[i % 2];
        for (key, range) in &batch.keys {
            let mut record = BaseRecord::to(topic)
                .key(key.as_bytes())
                .payload(&batch.body[range.clone()]);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(1));
                    }
                    Err((e, _)) => bail!("raw producer: {e}"),
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120))?;
    let seconds = started.elapsed().as_secs_f64();
    let failed = counting.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("raw producer: {failed} of {total} messages failed");
    }
    let events = counting.acked.load(Ordering::Relaxed);
    Ok(Throughput {
        events,
        seconds,
        events_per_second: events as f64 / seconds,
    })
}

async fn ingest(args: IngestBenchArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.events == 0 || args.concurrency == 0 {
        bail!("--events, --batch and --concurrency must be positive");
    }
    let id = EventTime::now().millis();
    eprintln!(
        "generating {} events in batches of {} …",
        args.events, args.batch
    );
    let batches = Arc::new(build_batches(args.events, args.batch, args.seed));

    // 1. the raw producer ceiling, on fresh topics
    let topic_args = &args.topics;
    let raw_topics = [
        format!("bench-raw-sensor-{id}"),
        format!("bench-raw-payments-{id}"),
    ];
    ensure_topics(
        &args.kafka,
        topic_args,
        &[&raw_topics[0], &raw_topics[1]],
        Duration::from_secs(10),
    )
    .await?;
    eprintln!("raw producer: {} events …", args.events);
    let config = producer_config(&args.kafka, &args.producer);
    let raw = {
        let batches = batches.clone();
        let topics = raw_topics.clone();
        tokio::task::spawn_blocking(move || raw_producer(config, topics, &batches)).await??
    };
    eprintln!("raw producer: {:.0} events/s", raw.events_per_second);

    // 2. ingest, in-process on fresh topics unless a URL was given
    let (url, stop, handle) = match &args.ingest_url {
        Some(url) => (url.trim_end_matches('/').to_owned(), None, None),
        None => {
            let sensor = format!("bench-ingest-sensor-{id}");
            let payments = format!("bench-ingest-payments-{id}");
            let config = lambdalake_ingest::Config::try_parse_from([
                "lambdalake-ingest",
                "--listen",
                "127.0.0.1:0",
                "--topic-sensor-readings",
                &sensor,
                "--topic-payments",
                &payments,
            ])?;
            let app = lambdalake_ingest::Application::build(config).await?;
            let url = format!("http://127.0.0.1:{}", app.port());
            let stop = app.shutdown_token();
            (url, Some(stop), Some(tokio::spawn(app.run_until_stopped())))
        }
    };
    eprintln!(
        "ingest at {url}: {} events, {} concurrent requests …",
        args.events, args.concurrency
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    // warm-up, not timed: connection and the producer's idempotent id
    let warm = &batches[0];
    let first_line = warm
        .body
        .split(|b| *b == b'\n')
        .next()
        .unwrap_or_default()
        .to_vec();
    let response = client
        .post(format!("{url}{}", warm.path))
        .header("content-type", "application/x-ndjson")
        .body(first_line)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!(
            "ingest warm-up answered {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, batches, next, accepted) = (
            client.clone(),
            url.clone(),
            batches.clone(),
            next.clone(),
            accepted.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(batch) = batches.get(i) else { break };
                let sent = Instant::now();
                let response = client
                    .post(format!("{url}{}", batch.path))
                    .header("content-type", "application/x-ndjson")
                    .body(batch.body.clone())
                    .send()
                    .await?;
                let status = response.status();
                let answer: serde_json::Value = response.json().await?;
                hist.record(sent.elapsed().as_micros() as u64).ok();
                if !status.is_success() {
                    bail!("ingest answered {status}: {answer}");
                }
                accepted.fetch_add(answer["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
            }
            anyhow::Ok(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for w in workers {
        hist.add(w.await??).ok();
    }
    let seconds = started.elapsed().as_secs_f64();
    let events = accepted.load(Ordering::Relaxed);
    if let (Some(stop), Some(handle)) = (stop, handle) {
        stop.cancel();
        handle.await??;
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let result = IngestResult {
        machine: machine(),
        events: args.events,
        batch: args.batch,
        concurrency: args.concurrency,
        ingest_share_of_raw: (events as f64 / seconds) / raw.events_per_second,
        ingest: Throughput {
            events,
            seconds,
            events_per_second: events as f64 / seconds,
        },
        raw_producer: raw,
        request_latency_ms: Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            max: hist.max() as f64 / 1000.0,
            requests: hist.len(),
        },
    };
    print_markdown(&result);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&result)?)?;
    eprintln!("wrote {}", args.out.display());
    if events != args.events as u64 {
        bail!("ingest accepted {events} of {} events", args.events);
    }
    Ok(())
}

pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} cores, {model}")
}

fn print_markdown(r: &IngestResult) {
    println!(
        "\n## Ingest benchmark ({} events, NDJSON batches of {}, {} concurrent requests; {})\n",
        r.events, r.batch, r.concurrency, r.machine
    );
    println!("| path | events/s | seconds |");
    println!("|---|---:|---:|");
    println!(
        "| raw rdkafka producer (idempotent, acks=all) | {:.0} | {:.2} |",
        r.raw_producer.events_per_second, r.raw_producer.seconds
    );
    println!(
        "| ingest HTTP → Kafka ack | {:.0} | {:.2} |",
        r.ingest.events_per_second, r.ingest.seconds
    );
    println!("\ningest / raw = {:.0}%", r.ingest_share_of_raw * 100.0);
    let l = &r.request_latency_ms;
    println!(
        "request latency (ms): p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1} over {} requests",
        l.p50, l.p90, l.p99, l.max, l.requests
    );
}
