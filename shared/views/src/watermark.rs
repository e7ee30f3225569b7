//! The watermark: how far event time has certainly progressed.
//!
//! Per partition, the watermark is the largest event time seen minus the allowed lateness. The
//! operator's watermark is the minimum over its assigned partitions, so an event is late only if
//! every partition has moved past it.
//!
//! Idle partitions: a partition that received nothing for `idle_after_ms` of processing time
//! stops holding the minimum back (as Flink's `withIdleness`); it counts again as soon as it
//! receives an event. When every partition is idle, the watermark is the largest partition
//! watermark. A partition that is assigned ([`Watermarks::assign`]) but has not received an
//! event yet holds the watermark where it is until it goes idle: its first events may be older
//! than the other partitions'. A partition never assigned nor observed does not count.
//! The watermark never goes backwards while the assignment stays the same. When partitions are
//! assigned or revoked ([`Watermarks::assign`], [`Watermarks::restore`], [`Watermarks::remove`]),
//! it is recomputed from the partitions now assigned and may go back — a partition taken over
//! from a failed instance brings its backlog; the speed layer keeps a stored per-partition floor
//! so that no partition's own watermark ever goes back.

use std::collections::HashMap;

/// Watermarks of the partitions one operator is assigned.
#[derive(Debug, Clone)]
pub struct Watermarks {
    lateness_ms: i64,
    idle_after_ms: i64,
    /// partition → (max event time seen, processing time of the last event or assignment)
    partitions: HashMap<i32, (Option<i64>, i64)>,
    current: Option<i64>,
}

impl Watermarks {
    /// Default allowed lateness: 30 s.
    pub const DEFAULT_LATENESS_MS: i64 = 30_000;

    pub fn new(lateness_ms: i64, idle_after_ms: i64) -> Self {
        Watermarks {
            lateness_ms,
            idle_after_ms,
            partitions: HashMap::new(),
            current: None,
        }
    }

    /// A partition was assigned at processing time `now_ms`: until its first event or until it
    /// goes idle, it holds the watermark back.
    pub fn assign(&mut self, partition: i32, now_ms: i64) {
        self.partitions.entry(partition).or_insert((None, now_ms));
        self.current = None;
    }

    /// A partition was assigned with the largest event time it had seen before (restored from
    /// storage): it counts as active from `now_ms`.
    pub fn restore(&mut self, partition: i32, max_ts_ms: i64, now_ms: i64) {
        self.partitions.insert(partition, (Some(max_ts_ms), now_ms));
        self.current = None;
    }

    /// Record an event of `partition` with event time `ts_ms`, seen at processing time `now_ms`.
    pub fn observe(&mut self, partition: i32, ts_ms: i64, now_ms: i64) {
        let entry = self.partitions.entry(partition).or_insert((None, now_ms));
        entry.0 = Some(entry.0.map_or(ts_ms, |m| m.max(ts_ms)));
        entry.1 = now_ms;
    }

    /// Forget a partition (revoked in a rebalance).
    pub fn remove(&mut self, partition: i32) {
        if self.partitions.remove(&partition).is_some() {
            self.current = None;
        }
    }

    /// The operator watermark at processing time `now_ms` (epoch ms), if any event was seen.
    pub fn watermark(&mut self, now_ms: i64) -> Option<i64> {
        let mut active = self
            .partitions
            .values()
            .filter(|(_, seen)| now_ms - seen < self.idle_after_ms)
            .map(|(max, _)| max.map(|m| m - self.lateness_ms))
            .peekable();
        let candidate = if active.peek().is_some() {
            // an active partition without events holds the watermark where it is
            active
                .collect::<Option<Vec<i64>>>()
                .and_then(|w| w.into_iter().min())
        } else {
            self.partitions
                .values()
                .filter_map(|(max, _)| max.map(|m| m - self.lateness_ms))
                .max()
        };
        if let Some(c) = candidate {
            self.current = Some(self.current.map_or(c, |w| w.max(c)));
        }
        self.current
    }

    /// An event at `ts_ms` is late when it is behind the watermark.
    pub fn is_late(&mut self, ts_ms: i64, now_ms: i64) -> bool {
        self.watermark(now_ms).is_some_and(|w| ts_ms < w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_active_partitions_and_idle_ones_release_it() {
        let mut w = Watermarks::new(30_000, 10_000);
        w.observe(0, 100_000, 0);
        w.observe(1, 50_000, 0);
        assert_eq!(w.watermark(1_000), Some(20_000));
        assert!(w.is_late(19_999, 1_000));
        assert!(!w.is_late(20_000, 1_000));
        // partition 1 goes idle, partition 0 keeps receiving
        w.observe(0, 110_000, 15_000);
        assert_eq!(w.watermark(15_000), Some(80_000));
        // partition 1 wakes up with an old event: the watermark does not go back
        w.observe(1, 60_000, 16_000);
        assert_eq!(w.watermark(16_000), Some(80_000));
        // all idle: the largest
        assert_eq!(w.watermark(100_000), Some(80_000));
    }

    #[test]
    fn an_assigned_partition_without_events_holds_the_watermark_until_idle() {
        let mut w = Watermarks::new(30_000, 10_000);
        w.assign(0, 0);
        w.assign(1, 0);
        w.observe(0, 100_000, 1_000);
        assert_eq!(
            w.watermark(1_000),
            None,
            "partition 1 may still bring older events"
        );
        w.observe(1, 90_000, 2_000);
        assert_eq!(w.watermark(2_000), Some(60_000));
        // a third partition assigned later: the assignment changed, and it holds the
        // watermark back until it goes idle
        w.assign(2, 3_000);
        w.observe(0, 200_000, 4_000);
        w.observe(1, 200_000, 4_000);
        assert_eq!(w.watermark(4_000), None);
        w.observe(0, 200_000, 13_500);
        w.observe(1, 200_000, 13_500);
        assert_eq!(w.watermark(13_500), Some(170_000));
    }

    #[test]
    fn a_new_assignment_recomputes_the_watermark() {
        let mut w = Watermarks::new(30_000, 10_000);
        w.observe(0, 500_000, 0);
        assert_eq!(w.watermark(0), Some(470_000));
        // partition 1 taken over from a failed instance, behind
        w.restore(1, 200_000, 1_000);
        assert_eq!(w.watermark(1_000), Some(170_000));
        w.remove(1);
        assert_eq!(w.watermark(1_000), Some(470_000));
    }

    #[test]
    fn no_event_no_watermark() {
        let mut w = Watermarks::new(30_000, 10_000);
        assert_eq!(w.watermark(0), None);
        assert!(!w.is_late(0, 0));
    }
}
