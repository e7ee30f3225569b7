//! The consumer and its rebalance path: on assignment, each partition starts at the offset stored
//! in Redis with the views (not at a Kafka-committed offset), inside the rebalance callback, before
//! any record of the new assignment is fetched. With `--delivery at-least-once` or
//! `at-most-once` (to measure them against exactly-once) a partition starts at the group's
//! offset committed to Kafka instead.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lambdalake_kafka::rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use lambdalake_kafka::rdkafka::types::RDKafkaRespErr;
use lambdalake_kafka::rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use lambdalake_kafka::{Delivery, HighWatermarks};
use lambdalake_runtime::tasks::CancellationToken;
use lambdalake_views::keys::Keys;

use crate::metrics;

/// What Redis holds for one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartState {
    /// Next offset to apply.
    pub offset: Option<i64>,
    pub max_ts: Option<i64>,
    pub watermark: Option<i64>,
}

/// A change of assignment, for the batch loop to act on.
#[derive(Debug, Clone)]
pub enum Change {
    Assigned(Vec<(String, i32, PartState)>),
    Revoked(Vec<(String, i32)>),
}

pub struct Context {
    redis: redis::Client,
    keys: Keys,
    changes: Mutex<Vec<Change>>,
    changed: AtomicBool,
    shutdown: CancellationToken,
    /// High watermark of each partition, from the client's statistics.
    highs: HighWatermarks,
    delivery: Delivery,
}

impl Context {
    pub fn new(
        redis: redis::Client,
        keys: Keys,
        shutdown: CancellationToken,
        delivery: Delivery,
    ) -> Self {
        Context {
            delivery,
            redis,
            keys,
            changes: Mutex::new(Vec::new()),
            changed: AtomicBool::new(false),
            shutdown,
            highs: HighWatermarks::default(),
        }
    }

    /// Changes since the last call (cheap when there are none).
    pub fn take_changes(&self) -> Vec<Change> {
        if !self.changed.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        self.changes
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    fn push(&self, change: Change) {
        if let Ok(mut c) = self.changes.lock() {
            c.push(change);
        }
        self.changed.store(true, Ordering::Release);
    }

    /// Stored state of every partition; retries while Redis is unreachable (the assignment
    /// cannot start anywhere else without risking double counting).
    fn load(&self, parts: &[(String, i32)]) -> Option<Vec<PartState>> {
        let mut delay = Duration::from_millis(100);
        loop {
            match load_states(&self.redis, &self.keys, parts) {
                Ok(states) => return Some(states),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read stored offsets from Redis; retrying");
                    if self.shutdown.is_cancelled() {
                        return None;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Read the stored state of `parts` in one round trip.
pub fn load_states(
    client: &redis::Client,
    keys: &Keys,
    parts: &[(String, i32)],
) -> redis::RedisResult<Vec<PartState>> {
    if parts.is_empty() {
        // an instance can be assigned nothing (more instances than partitions)
        return Ok(Vec::new());
    }
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut pipe = redis::pipe();
    for (topic, p) in parts {
        pipe.cmd("HMGET")
            .arg(keys.partition(topic, *p))
            .arg("offset")
            .arg("max_ts")
            .arg("watermark");
    }
    let rows: Vec<(Option<i64>, Option<i64>, Option<i64>)> = pipe.query(&mut con)?;
    Ok(rows
        .into_iter()
        .map(|(offset, max_ts, watermark)| PartState {
            offset,
            max_ts,
            watermark,
        })
        .collect())
}

impl ClientContext for Context {
    fn stats(&self, stats: Statistics) {
        self.highs.record(stats);
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                metrics::REBALANCES.with_label_values(&["assign"]).inc();
                let Some(states) = self.load(&parts) else {
                    // shutting down: take nothing
                    let _ = consumer.assign(&TopicPartitionList::new());
                    return;
                };
                let mut assignment = TopicPartitionList::new();
                for ((topic, p), st) in parts.iter().zip(&states) {
                    // exactly once: the offset stored with the views; otherwise the group's
                    // offset committed to Kafka (the beginning when there is none)
                    let offset = if self.delivery.fenced() {
                        st.offset.map_or(Offset::Beginning, Offset::Offset)
                    } else {
                        Offset::Stored
                    };
                    if let Err(e) = assignment.add_partition_offset(topic, *p, offset) {
                        tracing::error!(topic, partition = p, error = %e, "bad offset");
                    }
                }
                if self.delivery.fenced() {
                    tracing::info!(
                        partitions = ?parts.iter().zip(&states).map(|((t, p), s)| format!("{t}/{p}@{}", s.offset.map_or("start".to_owned(), |o| o.to_string()))).collect::<Vec<_>>(),
                        "partitions assigned; starting at the offsets stored in Redis"
                    );
                } else {
                    tracing::info!(
                        partitions = ?parts.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>(),
                        delivery = %self.delivery,
                        "partitions assigned; starting at the group's offsets committed to Kafka"
                    );
                }
                if let Err(e) = consumer.assign(&assignment) {
                    tracing::error!(error = %e, "cannot assign partitions");
                }
                self.push(Change::Assigned(
                    parts
                        .into_iter()
                        .zip(states)
                        .map(|((t, p), s)| (t, p, s))
                        .collect(),
                ));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                metrics::REBALANCES.with_label_values(&["revoke"]).inc();
                tracing::info!(partitions = parts.len(), "partitions revoked");
                self.push(Change::Revoked(parts));
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "cannot unassign partitions");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; dropping the assignment");
                self.push(Change::Revoked(parts));
                let _ = consumer.unassign();
            }
        }
    }
}

impl Context {
    /// The high watermark of a partition, as of the last statistics (every second).
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        self.highs.get(topic, partition)
    }
}
