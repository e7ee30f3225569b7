//! Each partition's high watermark as librdkafka's statistics report it (every
//! `statistics.interval.ms`): a consumer's lag without a request to the broker.

use std::collections::HashMap;
use std::sync::Mutex;

use rdkafka::Statistics;

#[derive(Debug, Default)]
pub struct HighWatermarks(Mutex<HashMap<(String, i32), i64>>);

impl HighWatermarks {
    /// Take the high watermarks of a statistics report (from `ClientContext::stats`).
    pub fn record(&self, stats: Statistics) {
        if let Ok(mut highs) = self.0.lock() {
            for (name, topic) in stats.topics {
                for (p, part) in topic.partitions {
                    if p >= 0 && part.hi_offset >= 0 {
                        highs.insert((name.clone(), p), part.hi_offset);
                    }
                }
            }
        }
    }

    /// A partition's high watermark as of the last report.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.0
            .lock()
            .ok()
            .and_then(|h| h.get(&(topic.to_owned(), partition)).copied())
    }
}
