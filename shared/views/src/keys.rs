//! The Redis key scheme of the speed layer: the speed layer writes these keys, the serving layer
//! and the tests read them. Documented in `docs/speed-layer.md`.
//!
//! Every key starts with a configurable prefix (default `ll`). The windows of one view that start
//! at the same instant share one hash, one field per device or card: a micro-batch writes a
//! handful of hashes however many keys it touched (Redis spends its time per command, not per
//! field), and a reader gets every key's window in a range with one `HMGET` per window start.
//! Fields hold JSON ([`StoredSensor`], [`StoredCard`]); ids are field names, never parsed out of
//! key names, so no id can make two keys collide.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:v:sensor:{view}:{start}` | hash | field `{device}` → [`StoredSensor`], `view` = `1m` or `5m1m` |
//! | `{p}:v:card:1m:{start}` | hash | field `{card}` → [`StoredCard`] |
//! | `{p}:v:card:session:{minute_ms}` | hash | field `{card}` → [`StoredCard`]: the card's session starting in the minute that starts at `minute_ms` (sessions are 30 min apart, so one per card) |
//! | `{p}:speed:cards:{topic}:{partition}` | hash | field `{card}` → the speed layer's state of a card: its recent payments (fraud history), open sessions and the score of its newest payment (`"last"`: [`LatestScore`]), read back on assignment; the serving layer's risk endpoint reads `last` |
//! | `{p}:speed:card-index:{topic}:{partition}` | zset | member `{card}`, score = the last instant its state in `{p}:speed:cards:…` matters (its newest payment or the end of its newest open session): a card whose score falls a view TTL behind the watermark leaves both keys |
//! | `{p}:speed:part:{topic}:{partition}` | hash | `offset` (next to apply), `max_ts`, `watermark`, `updated_ms` |
//! | `{p}:speed:seen:{topic}:{partition}:{n}` | string | event ids applied with an event time in minute `n` (= ts ÷ 60,000), each followed by `\n` (dedupe) |
//! | `{p}:speed:seen:{topic}:{partition}` | zset | the minutes that have a dedupe string |
//! | `{p}:alerts` | zset | alerts as JSON, score = event time |
//! | `{p}:model:fraud` | string | the fraud model (JSON [`crate::fraud::Model`]) published by the batch layer |
//! | `{p}:profile:card:{card}` | string | a card profile (JSON [`crate::fraud::CardProfile`]) |
//! | `{p}:baseline:device:{device}` | string | a device baseline (JSON [`crate::fraud::DeviceBaseline`]) |
//! | `{p}:reference:version` | string | changed by the batch layer after it wrote new profiles and baselines |
//!
//! Every view key expires after the view TTL (refreshed on each write). Sums are fixed-point
//! integers: micro-units for temperature and vibration, cents for amounts.

use lambdalake_events::EventTime;
use serde::{Deserialize, Serialize};

use crate::aggregate::{CardAgg, SensorAgg, Stat};
use crate::window::Window;

/// The sensor views kept by the speed layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SensorView {
    /// 1-minute tumbling windows (the default view).
    OneMinute,
    /// 5-minute windows sliding every minute.
    FiveByOneMinute,
}

impl SensorView {
    pub const ALL: [SensorView; 2] = [SensorView::OneMinute, SensorView::FiveByOneMinute];

    pub fn name(self) -> &'static str {
        match self {
            SensorView::OneMinute => "1m",
            SensorView::FiveByOneMinute => "5m1m",
        }
    }

    pub fn spec(self) -> crate::WindowSpec {
        match self {
            SensorView::OneMinute => crate::WindowSpec::ONE_MINUTE,
            SensorView::FiveByOneMinute => crate::WindowSpec::FIVE_BY_ONE_MINUTE,
        }
    }
}

/// The card views kept by the speed layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardView {
    /// 1-minute tumbling windows.
    OneMinute,
    /// Sessions closed by 30 minutes without a payment.
    Session,
}

impl CardView {
    pub fn name(self) -> &'static str {
        match self {
            CardView::OneMinute => "1m",
            CardView::Session => "session",
        }
    }
}

/// Key builder for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(Keys::DEFAULT_PREFIX)
    }
}

impl Keys {
    pub const DEFAULT_PREFIX: &'static str = "ll";

    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash of every device's window of `view` starting at `start_ms` (field = device id).
    pub fn sensor_windows(&self, view: SensorView, start_ms: i64) -> String {
        format!("{}:v:sensor:{}:{start_ms}", self.prefix, view.name())
    }

    /// The hash of every card's 1-minute window starting at `start_ms` (field = card id).
    pub fn card_windows(&self, start_ms: i64) -> String {
        format!("{}:v:card:1m:{start_ms}", self.prefix)
    }

    /// The hash of the card sessions starting in the minute that starts at `minute_ms`
    /// (field = card id).
    pub fn card_sessions(&self, minute_ms: i64) -> String {
        format!("{}:v:card:session:{minute_ms}", self.prefix)
    }

    /// The speed layer's per-card state of one payments partition (field = card id).
    pub fn speed_cards(&self, topic: &str, partition: i32) -> String {
        format!("{}:speed:cards:{topic}:{partition}", self.prefix)
    }

    /// The index of [`Keys::speed_cards`]: card → the last instant its state matters (the
    /// apply script forgets the cards whose instant is a view TTL behind the watermark).
    pub fn speed_card_index(&self, topic: &str, partition: i32) -> String {
        format!("{}:speed:card-index:{topic}:{partition}", self.prefix)
    }

    /// The speed layer's stored state of one partition (next offset, watermark).
    pub fn partition(&self, topic: &str, partition: i32) -> String {
        format!("{}:speed:part:{topic}:{partition}", self.prefix)
    }

    /// Index of the dedupe strings of one partition; each is this key + `:{minute}`.
    pub fn seen(&self, topic: &str, partition: i32) -> String {
        format!("{}:speed:seen:{topic}:{partition}", self.prefix)
    }

    pub fn alerts(&self) -> String {
        format!("{}:alerts", self.prefix)
    }

    pub fn model(&self) -> String {
        format!("{}:model:fraud", self.prefix)
    }

    pub fn card_profile(&self, card: &str) -> String {
        format!("{}:profile:card:{card}", self.prefix)
    }

    /// Bumped by the batch layer once it wrote a run's profiles and baselines.
    pub fn reference_version(&self) -> String {
        format!("{}:reference:version", self.prefix)
    }

    pub fn device_baseline(&self, device: &str) -> String {
        format!("{}:baseline:device:{device}", self.prefix)
    }
}

/// A device window as stored: the window and [`SensorAgg`] with 64-bit sums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSensor {
    pub start: i64,
    pub end: i64,
    pub count: u64,
    /// Sum of temperatures in µ°C.
    pub t_sum: i64,
    pub t_min: f64,
    pub t_max: f64,
    /// Sum of vibrations in µmm/s.
    pub v_sum: i64,
    pub v_min: f64,
    pub v_max: f64,
}

/// A card window or session as stored: the window and [`CardAgg`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCard {
    pub start: i64,
    pub end: i64,
    pub count: u64,
    /// Cents.
    pub amount_sum: i64,
    /// Cents.
    pub amount_max: i64,
    pub merchants: Vec<String>,
    pub countries: Vec<String>,
}

/// The fraud score of a card's newest payment (by event time) the speed layer applied, kept in
/// the card's state (`"last"`) until the card is forgotten (no open session, history older
/// than the view TTL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatestScore {
    /// The payment's event time, epoch ms.
    pub ts: i64,
    pub event_id: String,
    pub txn_id: String,
    /// The fraud probability, 0 … 1.
    pub score: f64,
    /// `batch-vN` (the batch layer's model) or `rules` (no model yet).
    pub model_version: String,
    /// The rules that fired (they explain the score, also when a model scored it).
    pub reasons: Vec<String>,
    pub features: crate::fraud::Features,
    /// When the speed layer scored it, epoch ms.
    pub scored_at_ms: i64,
}

/// A sum too large for the stored 64-bit form (not reachable with the validated ranges).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a window sum exceeds 64 bits")]
pub struct Overflow;

impl StoredSensor {
    pub fn new(w: Window, a: &SensorAgg) -> Result<Self, Overflow> {
        Ok(StoredSensor {
            start: w.start.millis(),
            end: w.end.millis(),
            count: a.count,
            t_sum: i64::try_from(a.temperature_c.sum_micro).map_err(|_| Overflow)?,
            t_min: a.temperature_c.min,
            t_max: a.temperature_c.max,
            v_sum: i64::try_from(a.vibration_mm_s.sum_micro).map_err(|_| Overflow)?,
            v_min: a.vibration_mm_s.min,
            v_max: a.vibration_mm_s.max,
        })
    }

    pub fn window(&self) -> Window {
        window(self.start, self.end)
    }

    pub fn agg(&self) -> SensorAgg {
        SensorAgg {
            count: self.count,
            temperature_c: Stat {
                min: self.t_min,
                max: self.t_max,
                sum_micro: i128::from(self.t_sum),
            },
            vibration_mm_s: Stat {
                min: self.v_min,
                max: self.v_max,
                sum_micro: i128::from(self.v_sum),
            },
        }
    }
}

/// [`StoredCard`]'s JSON, written from a borrowed aggregate (no copy of the id sets).
#[derive(Serialize)]
struct StoredCardRef<'a> {
    start: i64,
    end: i64,
    count: u64,
    amount_sum: i64,
    amount_max: i64,
    merchants: &'a std::collections::BTreeSet<String>,
    countries: &'a std::collections::BTreeSet<String>,
}

impl StoredCard {
    /// The JSON of [`StoredCard::new`]`(w, a)`, without building it.
    pub fn json(w: Window, a: &CardAgg) -> String {
        serde_json::to_string(&StoredCardRef {
            start: w.start.millis(),
            end: w.end.millis(),
            count: a.count,
            amount_sum: a.amount_sum_cents,
            amount_max: a.amount_max_cents,
            merchants: &a.merchants,
            countries: &a.countries,
        })
        .unwrap_or_default()
    }

    pub fn new(w: Window, a: &CardAgg) -> Self {
        StoredCard {
            start: w.start.millis(),
            end: w.end.millis(),
            count: a.count,
            amount_sum: a.amount_sum_cents,
            amount_max: a.amount_max_cents,
            merchants: a.merchants.iter().cloned().collect(),
            countries: a.countries.iter().cloned().collect(),
        }
    }

    pub fn window(&self) -> Window {
        window(self.start, self.end)
    }

    pub fn agg(&self) -> CardAgg {
        CardAgg {
            count: self.count,
            amount_sum_cents: self.amount_sum,
            amount_max_cents: self.amount_max,
            merchants: self.merchants.iter().cloned().collect(),
            countries: self.countries.iter().cloned().collect(),
        }
    }
}

fn window(start: i64, end: i64) -> Window {
    Window {
        start: EventTime::from_millis_unchecked(start),
        end: EventTime::from_millis_unchecked(end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fields_or_last() {
        let k = Keys::default();
        assert_eq!(
            k.sensor_windows(SensorView::OneMinute, 60_000),
            "ll:v:sensor:1m:60000"
        );
        assert_ne!(k.card_windows(60_000), k.card_sessions(60_000));
    }

    #[test]
    fn stored_forms_round_trip_exactly() {
        let w = window(60_000, 120_000);
        let a = SensorAgg {
            count: 2,
            temperature_c: Stat {
                min: 0.1,
                max: 21.500000000000004,
                sum_micro: 21_600_000,
            },
            vibration_mm_s: Stat {
                min: 0.0,
                max: 9999.999,
                sum_micro: 9_999_999_000,
            },
        };
        let json = serde_json::to_string(&StoredSensor::new(w, &a).unwrap()).unwrap();
        let back: StoredSensor = serde_json::from_str(&json).unwrap();
        assert_eq!(back.agg(), a);
        assert_eq!(back.window(), w);

        let c = CardAgg {
            count: 3,
            amount_sum_cents: 1_000_001,
            amount_max_cents: 999_999,
            merchants: ["m1".to_owned(), "m\"2".to_owned()].into(),
            countries: ["FR".to_owned()].into(),
        };
        let json = StoredCard::json(w, &c);
        assert_eq!(
            json,
            serde_json::to_string(&StoredCard::new(w, &c)).unwrap()
        );
        let back: StoredCard = serde_json::from_str(&json).unwrap();
        assert_eq!(back.agg(), c);
    }
}
