//! `sample`: post a few events (some invalid on purpose) and show where the accepted ones landed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lambdalake_events::EventTime;
use lambdalake_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use lambdalake_kafka::rdkafka::{Message, Offset, TopicPartitionList};
use lambdalake_kafka::{KafkaArgs, TopicArgs, consumer_config};
use serde_json::{Value, json};

use crate::workload::Workload;

#[derive(clap::Args)]
pub struct SampleArgs {
    /// Base URL of the ingest service.
    #[arg(
        long,
        env = "LAMBDALAKE_INGEST_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    ingest_url: String,

    /// API key, when ingest requires one.
    #[arg(long, env = "LAMBDALAKE_INGEST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// How long to wait for the accepted events to show up in Kafka.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    timeout: Duration,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    topics: TopicArgs,
}

pub async fn run(args: SampleArgs) -> anyhow::Result<()> {
    let run = format!("sample-{}", EventTime::now().millis());
    let mut w = Workload::new(42, &run, 5, 5);
    let now = EventTime::now();
    let client = reqwest::Client::new();

    let mut readings: Vec<Value> = (0..4)
        .map(|_| serde_json::to_value(w.reading(now)).expect("json"))
        .collect();
    readings[3]["temperature_c"] = json!(999); // out of range on purpose
    let body: String = readings.iter().map(|v| format!("{v}\n")).collect();
    let mut expected: HashSet<String> = HashSet::new();
    let answer = post(
        &client,
        &args,
        "/v1/sensor-readings",
        "application/x-ndjson",
        body,
    )
    .await?;
    expected.extend(accepted_ids(&readings, &answer));

    let mut payments: Vec<Value> = (0..3)
        .map(|_| serde_json::to_value(w.payment(now)).expect("json"))
        .collect();
    payments[2]["currency"] = json!("EURO"); // not an ISO 4217 code on purpose
    let answer = post(
        &client,
        &args,
        "/v1/payments",
        "application/json",
        Value::from(payments.clone()).to_string(),
    )
    .await?;
    expected.extend(accepted_ids(&payments, &answer));

    println!(
        "\nreading {} accepted events back from Kafka ({}):",
        expected.len(),
        args.kafka.brokers
    );
    let found = read_back(&args, &expected, args.timeout)?;
    if found < expected.len() {
        bail!(
            "only {found} of {} accepted events arrived within {:?}",
            expected.len(),
            args.timeout
        );
    }
    println!("all {found} accepted events arrived; the 2 invalid ones did not");
    Ok(())
}

async fn post(
    client: &reqwest::Client,
    args: &SampleArgs,
    path: &str,
    content_type: &str,
    body: String,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", args.ingest_url.trim_end_matches('/'));
    let mut req = client
        .post(&url)
        .header("content-type", content_type)
        .body(body);
    if let Some(key) = &args.api_key {
        req = req.bearer_auth(key);
    }
    let response = req
        .send()
        .await
        .with_context(|| format!("cannot reach ingest at {url}"))?;
    let status = response.status();
    let answer: Value = response.json().await.context("ingest answer is not JSON")?;
    println!(
        "POST {path} → {status}\n{}",
        serde_json::to_string_pretty(&answer)?
    );
    Ok(answer)
}

fn accepted_ids(items: &[Value], answer: &Value) -> Vec<String> {
    let refused: HashSet<u64> = answer["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["index"].as_u64())
        .collect();
    items
        .iter()
        .enumerate()
        .filter(|(i, _)| !refused.contains(&(*i as u64)))
        .filter_map(|(_, v)| v["event_id"].as_str().map(str::to_owned))
        .collect()
}

fn read_back(
    args: &SampleArgs,
    expected: &HashSet<String>,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let consumer: BaseConsumer =
        consumer_config(&args.kafka, "lambdalake-sample-reader").create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in [&args.topics.sensor_readings, &args.topics.payments] {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for p in metadata.topics()[0].partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    let mut found = 0;
    while found < expected.len() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = message?;
        let value: Value =
            serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null);
        if value["event_id"]
            .as_str()
            .is_some_and(|id| expected.contains(id))
        {
            found += 1;
            println!(
                "  {}[{}]@{} key={} event_id={}",
                m.topic(),
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()),
                value["event_id"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(found)
}
