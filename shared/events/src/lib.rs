//! The one definition of lambdalake's events.
//!
//! Two event kinds travel through the system: [`SensorReading`] (IoT telemetry) and [`Payment`]
//! (card payments). Both carry a client-supplied [`EventId`] — every view counts an event id once,
//! so a client retry never double-counts — and an event time ([`EventTime`]) distinct from the time
//! the event was ingested.
//!
//! The JSON wire format is documented in `docs/wire-format.md`. In short:
//! - decoding is strict about the fields it knows: each one is required, typed and range-checked,
//!   and the first problem is reported as a [`FieldError`] naming the field;
//! - fields it does not know are accepted and preserved: ingest forwards the item's original JSON to
//!   Kafka, so a producer can add an optional field before the consumers know it (schema evolution);
//! - [`Policy`] holds the checks that depend on the clock (how far in the future `ts` may be).
//!
//! [`body`] splits an HTTP body (one object, a JSON array, or NDJSON) into items without
//! allocating a copy of each item.

pub mod body;
mod codes;
mod error;
mod fields;
#[doc(hidden)]
pub mod fuzzing;
mod label;
mod payment;
mod policy;
mod sensor;

pub use error::{ErrorCode, FieldError};
pub use fields::{Amount, Country, Currency, EventId, EventTime, Ident, Mcc};
pub use label::FraudLabel;
pub use payment::Payment;
pub use policy::Policy;
pub use sensor::SensorReading;

/// The kinds of event the system carries, one Kafka topic each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SensorReading,
    Payment,
}

impl EventKind {
    pub const ALL: [EventKind; 2] = [EventKind::SensorReading, EventKind::Payment];

    /// Stable lowercase name, used in metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::SensorReading => "sensor_reading",
            EventKind::Payment => "payment",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What every event kind offers to the code that moves events around without caring which kind
/// it is (ingest, archivers, dead-letter routing).
pub trait Event: Sized + serde::Serialize {
    const KIND: EventKind;

    /// Decode and validate one JSON object.
    fn from_json(json: &[u8], policy: &Policy) -> Result<Self, FieldError>;

    fn event_id(&self) -> &EventId;

    /// The event time.
    fn ts(&self) -> EventTime;

    /// The Kafka partitioning key: `device_id` for readings, `card_id` for payments, so that one
    /// key's events stay in order in one partition.
    fn key(&self) -> &str;
}

/// Deserialize one JSON item, recording the path of the first error, and refuse trailing data.
///
/// Only a JSON object is an event: serde would also build a struct from an array of its field
/// values, which the wire format does not allow.
fn decode<'a, T: serde::Deserialize<'a>>(json: &'a [u8]) -> Result<T, FieldError> {
    let found = match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b'-' | b'0'..=b'9') => Some("a number"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(b'n') => Some("null"),
        // not JSON at all: let the parser say where
        _ => None,
    };
    if let Some(found) = found {
        return Err(FieldError::item(
            ErrorCode::InvalidType,
            format!("expected a JSON object, found {found}"),
        ));
    }
    // fast path: plain serde; only a failed item pays for tracking the path of the error
    if let Ok(value) = serde_json::from_slice(json) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let value = serde_path_to_error::deserialize(&mut de).map_err(FieldError::from_serde)?;
    de.end()
        .map_err(|e| FieldError::item(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests;
