//! The Redis key scheme of the speed layer: the speed layer writes these keys, the serving layer
//! and the tests read them. Documented in `docs/speed-layer.md`.
//!
//! Every key starts with a configurable prefix (default `ll`). Fixed-format components (view
//! name, a one-letter role, a window start in epoch ms) come first and the client-supplied id comes
//! last, so no id — whatever characters it holds — can make two keys collide.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:v:sensor:{view}:w:{start}:{device}` | hash | one device window: `start end count t_sum t_min t_max v_sum v_min v_max` |
//! | `{p}:v:sensor:{view}:i:{device}` | zset | index of the device's windows (score and member = start) |
//! | `{p}:v:card:1m:w:{start}:{card}` | hash | one card window: `start end count amount_sum amount_max` |
//! | `{p}:v:card:1m:m:{start}:{card}` / `…:c:…` | set | the window's distinct merchants / countries |
//! | `{p}:v:card:1m:i:{card}` | zset | index of the card's 1-minute windows |
//! | `{p}:v:card:session:w:{start}:{card}` (+ `:m:`, `:c:`) | hash (+ sets) | one card session, same fields |
//! | `{p}:v:card:session:i:{card}` | zset | the card's sessions (score and member = start) |
//! | `{p}:speed:part:{topic}:{partition}` | hash | `offset` (next to apply), `max_ts`, `watermark`, `updated_ms` |
//! | `{p}:speed:seen:{topic}:{partition}:{minute}` | set | event ids applied, by event-time minute (dedupe) |
//! | `{p}:speed:seen:{topic}:{partition}` | zset | index of the partition's dedupe sets |
//! | `{p}:card:recent:{card}` | zset | the card's recent payments (fraud history), score = ts |
//! | `{p}:alerts` | zset | alerts as JSON, score = event time |
//! | `{p}:model:fraud` | string | the fraud model (JSON [`crate::fraud::Model`]) published by the batch layer |
//! | `{p}:profile:card:{card}` | string | a card profile (JSON [`crate::fraud::CardProfile`]) |
//! | `{p}:baseline:device:{device}` | string | a device baseline (JSON [`crate::fraud::DeviceBaseline`]) |
//!
//! Sums are fixed-point integers in micro-units (temperature, vibration) or cents (amounts), so
//! Redis adds them exactly with `HINCRBY`; min and max keep the client's number as written.

use std::collections::HashMap;

use crate::aggregate::{CardAgg, SensorAgg, Stat};
use crate::window::Window;
use lambdalake_events::EventTime;

/// The sensor views kept by the speed layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

    pub fn sensor_window(&self, view: SensorView, device: &str, start_ms: i64) -> String {
        format!(
            "{}:v:sensor:{}:w:{start_ms}:{device}",
            self.prefix,
            view.name()
        )
    }

    pub fn sensor_index(&self, view: SensorView, device: &str) -> String {
        format!("{}:v:sensor:{}:i:{device}", self.prefix, view.name())
    }

    pub fn card_window(&self, view: CardView, card: &str, start_ms: i64) -> String {
        format!("{}:v:card:{}:w:{start_ms}:{card}", self.prefix, view.name())
    }

    /// The distinct merchants of a card window.
    pub fn card_merchants(&self, view: CardView, card: &str, start_ms: i64) -> String {
        format!("{}:v:card:{}:m:{start_ms}:{card}", self.prefix, view.name())
    }

    /// The distinct countries of a card window.
    pub fn card_countries(&self, view: CardView, card: &str, start_ms: i64) -> String {
        format!("{}:v:card:{}:c:{start_ms}:{card}", self.prefix, view.name())
    }

    pub fn card_index(&self, view: CardView, card: &str) -> String {
        format!("{}:v:card:{}:i:{card}", self.prefix, view.name())
    }

    /// The speed layer's stored state of one partition (next offset, watermark).
    pub fn partition(&self, topic: &str, partition: i32) -> String {
        format!("{}:speed:part:{topic}:{partition}", self.prefix)
    }

    /// Prefix of the dedupe sets of one partition (the script appends `:{minute}`).
    pub fn seen(&self, topic: &str, partition: i32) -> String {
        format!("{}:speed:seen:{topic}:{partition}", self.prefix)
    }

    pub fn card_recent(&self, card: &str) -> String {
        format!("{}:card:recent:{card}", self.prefix)
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

    pub fn device_baseline(&self, device: &str) -> String {
        format!("{}:baseline:device:{device}", self.prefix)
    }
}

/// A stored window hash that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window hash field {field}: {reason}")]
pub struct HashError {
    pub field: &'static str,
    pub reason: String,
}

fn field<T: std::str::FromStr>(
    h: &HashMap<String, String>,
    name: &'static str,
) -> Result<T, HashError>
where
    T::Err: std::fmt::Display,
{
    let raw = h.get(name).ok_or_else(|| HashError {
        field: name,
        reason: "missing".to_owned(),
    })?;
    raw.parse().map_err(|e: T::Err| HashError {
        field: name,
        reason: format!("{raw:?}: {e}"),
    })
}

/// The window a stored hash describes.
pub fn window_from_hash(h: &HashMap<String, String>) -> Result<Window, HashError> {
    Ok(Window {
        start: EventTime::from_millis_unchecked(field(h, "start")?),
        end: EventTime::from_millis_unchecked(field(h, "end")?),
    })
}

/// Read a sensor window hash back into the aggregate it stores.
pub fn sensor_agg_from_hash(h: &HashMap<String, String>) -> Result<SensorAgg, HashError> {
    Ok(SensorAgg {
        count: field(h, "count")?,
        temperature_c: Stat {
            min: field(h, "t_min")?,
            max: field(h, "t_max")?,
            sum_micro: field(h, "t_sum")?,
        },
        vibration_mm_s: Stat {
            min: field(h, "v_min")?,
            max: field(h, "v_max")?,
            sum_micro: field(h, "v_sum")?,
        },
    })
}

/// Read a card window hash and its two sets back into the aggregate they store.
pub fn card_agg_from_hash(
    h: &HashMap<String, String>,
    merchants: impl IntoIterator<Item = String>,
    countries: impl IntoIterator<Item = String>,
) -> Result<CardAgg, HashError> {
    Ok(CardAgg {
        count: field(h, "count")?,
        amount_sum_cents: field(h, "amount_sum")?,
        amount_max_cents: field(h, "amount_max")?,
        merchants: merchants.into_iter().collect(),
        countries: countries.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_make_keys_collide() {
        let k = Keys::default();
        // an id that looks like a start plus an id
        let a = k.sensor_window(SensorView::OneMinute, "a", 60_000);
        let b = k.sensor_index(SensorView::OneMinute, "60000:a");
        assert_ne!(a, b);
        assert_eq!(a, "ll:v:sensor:1m:w:60000:a");
        assert_ne!(
            k.card_merchants(CardView::OneMinute, "x", 0),
            k.card_countries(CardView::OneMinute, "x", 0)
        );
    }

    #[test]
    fn hash_round_trip() {
        let h: HashMap<String, String> = [
            ("start", "60000"),
            ("end", "120000"),
            ("count", "2"),
            ("t_sum", "43000000"),
            ("t_min", "21.5"),
            ("t_max", "21.5"),
            ("v_sum", "600000"),
            ("v_min", "0.3"),
            ("v_max", "0.3"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        let agg = sensor_agg_from_hash(&h).unwrap();
        assert_eq!(agg.count, 2);
        assert_eq!(agg.temperature_c.mean(agg.count), 21.5);
        assert_eq!(window_from_hash(&h).unwrap().end.millis(), 120_000);
        let mut bad = h.clone();
        bad.insert("count".into(), "x".into());
        assert_eq!(sensor_agg_from_hash(&bad).unwrap_err().field, "count");
    }
}
