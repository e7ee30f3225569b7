use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::fields::{RawTs, check_range};
use crate::{Event, EventId, EventKind, EventTime, FieldError, Ident, Policy};

/// One IoT telemetry reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorReading {
    pub event_id: EventId,
    pub device_id: Ident,
    pub site: Ident,
    pub ts: EventTime,
    /// Degrees Celsius, −80 … 200.
    pub temperature_c: f64,
    /// Vibration velocity in mm/s, 0 … 10,000.
    pub vibration_mm_s: f64,
}

impl SensorReading {
    pub const TEMPERATURE_RANGE: (f64, f64) = (-80.0, 200.0);
    /// Far above any running machine (ISO 10816 calls 45 mm/s destructive); the bound keeps
    /// every per-window sum exact in 64-bit fixed point (see `lambdalake-views`).
    pub const VIBRATION_RANGE: (f64, f64) = (0.0, 10_000.0);

    /// Check the rules the field types cannot hold themselves (ranges, clock skew).
    pub fn check(&self, policy: &Policy) -> Result<(), FieldError> {
        let (lo, hi) = Self::TEMPERATURE_RANGE;
        check_range("temperature_c", self.temperature_c, lo, hi, "°C")?;
        let (lo, hi) = Self::VIBRATION_RANGE;
        check_range("vibration_mm_s", self.vibration_mm_s, lo, hi, "mm/s")?;
        policy.check_ts(self.ts)
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    #[serde(borrow)]
    site: Cow<'a, str>,
    #[serde(borrow)]
    ts: RawTs<'a>,
    temperature_c: f64,
    vibration_mm_s: f64,
}

impl Event for SensorReading {
    const KIND: EventKind = EventKind::SensorReading;

    fn from_json(json: &[u8], policy: &Policy) -> Result<Self, FieldError> {
        let raw: Raw = crate::decode(json)?;
        let reading = SensorReading {
            event_id: EventId::parse(raw.event_id)?,
            device_id: Ident::parse("device_id", raw.device_id)?,
            site: Ident::parse("site", raw.site)?,
            ts: raw.ts.parse("ts")?,
            temperature_c: raw.temperature_c,
            vibration_mm_s: raw.vibration_mm_s,
        };
        reading.check(policy)?;
        Ok(reading)
    }

    fn event_id(&self) -> &EventId {
        &self.event_id
    }

    fn ts(&self) -> EventTime {
        self.ts
    }

    fn key(&self) -> &str {
        self.device_id.as_str()
    }
}
