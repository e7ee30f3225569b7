//! `GET /v1/overview`: what the dashboard shows at the top — how much came in and how fast, how
//! fresh and how far behind each layer is, which batch version is served.
//!
//! - **ingest**: the sum of the event topics' high watermarks (every record ever accepted) and its
//!   rate, from a Kafka client that polls the watermarks every second (it never consumes);
//! - **speed**: freshness (time since it last stored a partition's state) and lag (records in
//!   Kafka beyond the offsets stored with its views);
//! - **batch**: the latest version, its cutoff, when it was published, events counted, freshness
//!   (now − cutoff) and lag (records beyond the offsets the version covered);
//! - **degraded**: `kafka`, `speed` or `batch` when that source could not be read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lambdalake_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use lambdalake_kafka::{KafkaArgs, consumer_config};
use lambdalake_runtime::tasks::CancellationToken;
use serde::Serialize;

use crate::State;
use crate::windows::rfc3339;

/// The event topics' high watermarks, and the ingest rate between two polls.
#[derive(Debug, Clone, Default)]
pub struct Watermarks {
    pub high: BTreeMap<(String, i32), i64>,
    pub total: i64,
    pub rate_per_s: Option<f64>,
    pub error: Option<String>,
}

/// Poll the high watermarks of `topics` every second on a thread of its own until `stop`.
pub fn watch(
    kafka: &KafkaArgs,
    topics: Vec<String>,
    stop: CancellationToken,
) -> Result<Arc<Mutex<Watermarks>>, String> {
    let consumer: BaseConsumer = consumer_config(kafka, "lambdalake-serving-watch")
        .create()
        .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
    let shared = Arc::new(Mutex::new(Watermarks::default()));
    let out = shared.clone();
    std::thread::Builder::new()
        .name("kafka-watch".to_owned())
        .spawn(move || {
            let mut last: Option<(Instant, i64)> = None;
            while !stop.is_cancelled() {
                let t0 = Instant::now();
                let mut high = BTreeMap::new();
                let mut error = None;
                for topic in &topics {
                    match consumer.fetch_metadata(Some(topic), Duration::from_secs(2)) {
                        Ok(md) => {
                            for t in md.topics() {
                                for p in t.partitions() {
                                    match consumer.fetch_watermarks(
                                        topic,
                                        p.id(),
                                        Duration::from_secs(2),
                                    ) {
                                        Ok((_, h)) => {
                                            high.insert((topic.clone(), p.id()), h);
                                        }
                                        Err(e) => error = Some(e.to_string()),
                                    }
                                }
                            }
                        }
                        Err(e) => error = Some(e.to_string()),
                    }
                }
                let total: i64 = high.values().sum();
                let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
                if error.is_none() {
                    w.rate_per_s = last.map(|(at, prev)| {
                        (total - prev).max(0) as f64 / at.elapsed().as_secs_f64().max(1e-3)
                    });
                    last = Some((Instant::now(), total));
                    w.high = high;
                    w.total = total;
                }
                w.error = error;
                drop(w);
                let rest = Duration::from_secs(1).saturating_sub(t0.elapsed());
                std::thread::sleep(rest);
            }
        })
        .map_err(|e| format!("cannot start the Kafka watch thread: {e}"))?;
    Ok(shared)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ingest {
    pub events_total: Option<i64>,
    pub rate_per_s: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Speed {
    pub freshness_ms: Option<i64>,
    pub lag_records: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Batch {
    pub version: Option<i64>,
    pub cutoff: Option<String>,
    pub published_at: Option<String>,
    pub events_counted: Option<i64>,
    pub freshness_ms: Option<i64>,
    pub lag_records: Option<i64>,
}

/// The lakehouse, when its tables can be read.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Lakehouse {
    /// The gold sensor table's latest Delta version.
    pub gold_version: i64,
    /// Time since that version was committed.
    pub freshness_ms: Option<i64>,
    /// Records in Kafka beyond the offsets bronze recorded (`null` without Kafka).
    pub lag_records: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    pub ingest: Ingest,
    pub speed: Speed,
    pub batch: Batch,
    /// `null` when the lakehouse's tables cannot be read (not deployed, or not created yet).
    pub lakehouse: Option<Lakehouse>,
    pub degraded: Vec<String>,
}

pub async fn overview(state: &State) -> Overview {
    let mut degraded = Vec::new();
    let now = chrono::Utc::now().timestamp_millis();
    let marks = state
        .watermarks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let kafka_ok = marks.error.is_none() && !marks.high.is_empty();
    if marks.error.is_some() {
        degraded.push("kafka".to_owned());
    }
    // speed: stored offsets of the partitions Kafka has
    let freshness = state.speed_freshness().await;
    let speed_lag = if kafka_ok {
        let mut pipe = redis::pipe();
        for (topic, p) in marks.high.keys() {
            pipe.cmd("HGET")
                .arg(state.keys.partition(topic, *p))
                .arg("offset");
        }
        match state.redis.query::<Vec<Option<i64>>>(&pipe).await {
            Ok(stored) => Some(
                marks
                    .high
                    .values()
                    .zip(stored)
                    .map(|(h, s)| (h - s.unwrap_or(0)).max(0))
                    .sum(),
            ),
            Err(_) => {
                degraded.push("speed".to_owned());
                None
            }
        }
    } else {
        None
    };
    let run = state
        .pg
        .with(|c| async move {
            c.query_opt(
                "select version, cutoff_ms, (extract(epoch from published_at) * 1000)::bigint,
                        events_counted, offsets
                 from batch_runs order by version desc limit 1",
                &[],
            )
            .await
        })
        .await;
    let batch = match run {
        Ok(Some(r)) => {
            let cutoff: Option<i64> = r.get(1);
            let published: i64 = r.get(2);
            let offsets: serde_json::Value = r.get(4);
            let lag = kafka_ok.then(|| {
                marks
                    .high
                    .iter()
                    .map(|((topic, p), h)| {
                        let covered = offsets[topic.as_str()][p.to_string()].as_i64().unwrap_or(0);
                        (h - covered).max(0)
                    })
                    .sum()
            });
            Batch {
                version: Some(r.get(0)),
                cutoff: cutoff.map(rfc3339),
                published_at: Some(rfc3339(published)),
                events_counted: Some(r.get(3)),
                freshness_ms: cutoff.map(|c| (now - c).max(0)),
                lag_records: lag,
            }
        }
        Ok(None) | Err(crate::stores::StoreError::NoBatchSchema) => Batch {
            version: None,
            cutoff: None,
            published_at: None,
            events_counted: None,
            freshness_ms: None,
            lag_records: None,
        },
        Err(e) => {
            tracing::warn!(error = %e, "batch views unreachable");
            degraded.push("batch".to_owned());
            Batch {
                version: None,
                cutoff: None,
                published_at: None,
                events_counted: None,
                freshness_ms: None,
                lag_records: None,
            }
        }
    };
    let parts: Vec<(String, i32)> = marks.high.keys().cloned().collect();
    let lakehouse = match state.lake.progress(&parts).await {
        Ok((gold_version, committed, offsets)) => Some(Lakehouse {
            gold_version,
            freshness_ms: committed.map(|c| (now - c).max(0)),
            lag_records: kafka_ok.then(|| {
                marks
                    .high
                    .iter()
                    .map(|(part, h)| (h - offsets.get(part).copied().unwrap_or(0)).max(0))
                    .sum()
            }),
        }),
        Err(_) => None,
    };
    Overview {
        ingest: Ingest {
            events_total: kafka_ok.then_some(marks.total),
            rate_per_s: marks.rate_per_s,
        },
        speed: Speed {
            freshness_ms: freshness,
            lag_records: speed_lag,
        },
        batch,
        lakehouse,
        degraded,
    }
}
