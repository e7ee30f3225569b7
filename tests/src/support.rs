//! Helpers: unique names, a running ingest service, a plain consumer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use lambdalake_ingest::CancellationToken;
use lambdalake_ingest::{Application, Config};
use lambdalake_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use lambdalake_kafka::rdkafka::message::Headers;
use lambdalake_kafka::rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use lambdalake_kafka::{KafkaArgs, consumer_config};
use rand::Rng;

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{:012x}",
        rand::rng().random::<u64>() & 0xffff_ffff_ffff
    )
}

/// A running ingest service on a free port; stops when dropped.
pub struct Ingest {
    pub url: String,
    pub sensor_topic: String,
    pub payment_topic: String,
    stop: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), std::io::Error>>>,
}

impl Ingest {
    /// Start ingest with fresh topics and `extra` command-line arguments.
    pub async fn start(extra: &[&str]) -> Ingest {
        Ingest::start_on(&unique("it-sensor"), &unique("it-payment"), extra).await
    }

    /// Start ingest producing to the given topics.
    pub async fn start_on(sensor_topic: &str, payment_topic: &str, extra: &[&str]) -> Ingest {
        let (sensor_topic, payment_topic) = (sensor_topic.to_owned(), payment_topic.to_owned());
        let mut args = vec![
            "lambdalake-ingest",
            "--listen",
            "127.0.0.1:0",
            "--topic-sensor-readings",
            &sensor_topic,
            "--topic-payments",
            &payment_topic,
        ];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).expect("valid ingest arguments");
        let app = Application::build(config)
            .await
            .expect("ingest starts (is the local stack up? run `infra/local/stack up`)");
        let url = format!("http://127.0.0.1:{}", app.port());
        let stop = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped());
        Ingest {
            url,
            sensor_topic,
            payment_topic,
            stop,
            handle: Some(handle),
        }
    }

    /// Stop gracefully and wait until the producer is flushed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("ingest task").expect("ingest stops cleanly");
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One record read back from Kafka.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub key: String,
    pub value: serde_json::Value,
    pub raw: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

pub fn kafka_args() -> KafkaArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }
    Cli::parse_from(["tests"]).kafka
}

/// Read `topic` from the beginning of every partition until `expected` records arrived, then
/// keep reading `settle` longer to catch any record too many.
pub fn read_topic(topic: &str, expected: usize, settle: Duration) -> Vec<Record> {
    read_topic_on(&kafka_args(), topic, expected, settle)
}

/// [`read_topic`] from the cluster `kafka` names.
pub fn read_topic_on(
    kafka: &KafkaArgs,
    topic: &str,
    expected: usize,
    settle: Duration,
) -> Vec<Record> {
    let config: ClientConfig = consumer_config(kafka, &unique("it-reader"));
    let consumer: BaseConsumer = config.create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions = metadata.topics()[0].partitions().len();
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p as i32, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if settle_until.is_some_and(|t| now >= t) || now >= deadline {
            break;
        }
        if records.len() >= expected && settle_until.is_none() {
            settle_until = Some(now + settle);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let raw = m.payload().unwrap_or_default().to_vec();
                records.push(Record {
                    partition: m.partition(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: serde_json::from_slice(&raw).expect("record is JSON"),
                    raw,
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {}
        }
    }
    records
}

/// Partition of each key; panics if one key landed on two partitions.
pub fn partition_by_key(records: &[Record]) -> HashMap<String, i32> {
    let mut map = HashMap::new();
    for r in records {
        let p = *map.entry(r.key.clone()).or_insert(r.partition);
        assert_eq!(
            p, r.partition,
            "key {} landed on partitions {p} and {}",
            r.key, r.partition
        );
    }
    map
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(key: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in chunks.by_ref() {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner picks for `key`.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[test]
fn murmur2_matches_kafka() {
    // Apache Kafka's UtilsTest.testMurmur2
    assert_eq!(murmur2(b"21"), -973_932_308);
    assert_eq!(murmur2(b"foobar"), -790_332_482);
    assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
    assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
    assert_eq!(
        murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
        -58_897_971
    );
    assert_eq!(murmur2(b"abc"), 479_470_107);
}

/// A binary of the workspace, built next to this test binary (`infra/local/test` builds them).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join(name))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p {name}`; infra/local/test does)",
        bin.display()
    );
    bin
}

/// Producer and consumer settings from the environment (`infra/local/stack env`).
pub fn kafka_and_producer() -> (KafkaArgs, lambdalake_kafka::ProducerArgs) {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        producer: lambdalake_kafka::ProducerArgs,
    }
    let cli = <Cli as clap::Parser>::parse_from(["tests"]);
    (cli.kafka, cli.producer)
}

/// A service's `/metrics` page.
pub async fn metrics_page(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("/metrics text")
}
