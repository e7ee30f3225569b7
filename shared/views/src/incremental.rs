//! What the speed layer does with each event it consumes, without the I/O: judge it (late?
//! already applied?), then apply it to the views with the same per-event update that, over a
//! whole table, gives [`crate::table`]. The property tests (`incremental/tests.rs`) check that
//! the two agree on the same events in any arrival order within the allowed lateness.
//!
//! Per input topic (readings, payments) the [`Operator`] keeps:
//! - the watermark over that topic's partitions ([`Watermarks`]): the two topics' partitions are
//!   unrelated, so a stalled payments partition does not hold back the sensor windows;
//! - the ids of the events it applied, by event-time minute, as the speed layer's `seen` sets in
//!   Redis ([`crate::keys`]). An event is judged late *before* its id is looked up, so the ids of
//!   a minute the watermark has passed are never read again and are dropped: the dedupe state
//!   covers the allowed lateness, not all history. This relies on a retry being an exact copy
//!   (same `ts`), which is what a client retry is.
//!
//! The views themselves are kept whole (the speed layer expires them in Redis instead).

use std::collections::{BTreeMap, HashSet};

use lambdalake_events::{EventId, EventTime, Payment, SensorReading};

use crate::aggregate::{CardAgg, SensorAgg};
use crate::table::{self, Keyed};
use crate::watermark::Watermarks;
use crate::window::{SessionAggs, Sessions, WindowSpec};

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to every view.
    Applied,
    /// Its event id was applied before: counted once, this copy is dropped.
    Duplicate,
    /// Behind the watermark when it arrived: not applied (the windows it belongs to may already
    /// have been reported final). `lateness_ms` is how far behind.
    Late { lateness_ms: i64 },
}

/// The windows an [`Operator`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Views {
    /// Readings per device.
    pub sensor: WindowSpec,
    /// Payments per card.
    pub card: WindowSpec,
    /// Payments per card session: the inactivity that closes a session.
    pub card_session_gap_ms: i64,
}

impl Views {
    pub const DEFAULT: Views = Views {
        sensor: WindowSpec::ONE_MINUTE,
        card: WindowSpec::ONE_MINUTE,
        card_session_gap_ms: Sessions::CARD_GAP_MS,
    };
}

/// Width of the event-time buckets of applied ids.
const SEEN_BUCKET_MS: i64 = 60_000;

/// What decides whether an event of one topic is applied.
#[derive(Debug, Clone)]
struct Admission {
    watermarks: Watermarks,
    /// Applied event ids by the start of their event-time minute.
    seen: BTreeMap<i64, HashSet<EventId>>,
}

impl Admission {
    fn new(lateness_ms: i64, idle_after_ms: i64) -> Self {
        Admission {
            watermarks: Watermarks::new(lateness_ms, idle_after_ms),
            seen: BTreeMap::new(),
        }
    }

    /// Judge an event against the watermark as it was before the event, then let the event move
    /// the watermark; [`Outcome::Applied`] means the caller must apply it.
    fn admit(&mut self, partition: i32, id: &EventId, ts: EventTime, now_ms: i64) -> Outcome {
        let ts_ms = ts.millis();
        let watermark = self.watermarks.watermark(now_ms);
        // a late event still shows its partition is alive
        self.watermarks.observe(partition, ts_ms, now_ms);
        if let Some(watermark) = watermark {
            // every event of these minutes is late now, so their ids are never looked up again
            while let Some(oldest) = self.seen.first_entry()
                && *oldest.key() + SEEN_BUCKET_MS <= watermark
            {
                oldest.remove();
            }
            if ts_ms < watermark {
                return Outcome::Late {
                    lateness_ms: watermark - ts_ms,
                };
            }
        }
        let minute = ts_ms.div_euclid(SEEN_BUCKET_MS) * SEEN_BUCKET_MS;
        let seen = self.seen.entry(minute).or_default();
        if seen.contains(id) {
            Outcome::Duplicate
        } else {
            seen.insert(id.clone());
            Outcome::Applied
        }
    }

    #[cfg(test)]
    fn seen_len(&self) -> usize {
        self.seen.values().map(HashSet::len).sum()
    }
}

/// The speed layer's operator over readings and payments, event by event.
#[derive(Debug, Clone)]
pub struct Operator {
    views: Views,
    readings: Admission,
    payments: Admission,
    sensor_windows: Keyed<SensorAgg>,
    card_windows: Keyed<CardAgg>,
    card_sessions: BTreeMap<String, SessionAggs<CardAgg>>,
}

impl Operator {
    /// `lateness_ms` and `idle_after_ms` apply to each topic's watermark (see [`Watermarks`]).
    pub fn new(views: Views, lateness_ms: i64, idle_after_ms: i64) -> Self {
        Operator {
            views,
            readings: Admission::new(lateness_ms, idle_after_ms),
            payments: Admission::new(lateness_ms, idle_after_ms),
            sensor_windows: Keyed::new(),
            card_windows: Keyed::new(),
            card_sessions: BTreeMap::new(),
        }
    }

    pub fn views(&self) -> Views {
        self.views
    }

    /// A reading from `partition` of the readings topic, consumed at processing time `now_ms`.
    pub fn push_sensor(&mut self, partition: i32, r: &SensorReading, now_ms: i64) -> Outcome {
        let outcome = self.readings.admit(partition, &r.event_id, r.ts, now_ms);
        if outcome == Outcome::Applied {
            let spec = self.views.sensor;
            let device = r.device_id.as_str();
            table::fold(
                &mut self.sensor_windows,
                device,
                spec,
                r.ts,
                SensorAgg::of(r),
            );
        }
        outcome
    }

    /// A payment from `partition` of the payments topic, consumed at processing time `now_ms`.
    pub fn push_payment(&mut self, partition: i32, p: &Payment, now_ms: i64) -> Outcome {
        let outcome = self.payments.admit(partition, &p.event_id, p.ts, now_ms);
        if outcome == Outcome::Applied {
            let agg = CardAgg::of(p);
            let card = p.card_id.as_str();
            table::fold(
                &mut self.card_windows,
                card,
                self.views.card,
                p.ts,
                agg.clone(),
            );
            self.card_sessions
                .entry(card.to_owned())
                .or_insert_with(|| SessionAggs::new(self.views.card_session_gap_ms))
                .add_event(p.ts, agg);
        }
        outcome
    }

    /// Readings per device and window of [`Views::sensor`].
    pub fn sensor_windows(&self) -> &Keyed<SensorAgg> {
        &self.sensor_windows
    }

    /// Payments per card and window of [`Views::card`].
    pub fn card_windows(&self) -> &Keyed<CardAgg> {
        &self.card_windows
    }

    /// Payments per card and session.
    pub fn card_sessions(&self) -> Keyed<CardAgg> {
        self.card_sessions
            .iter()
            .flat_map(|(card, sessions)| {
                sessions
                    .sessions()
                    .iter()
                    .map(move |(w, agg)| ((card.clone(), *w), agg.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
