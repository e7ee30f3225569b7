//! Events and event tables for the crate's tests.

use lambdalake_events::{
    Amount, Country, Currency, EventId, EventTime, Ident, Mcc, Payment, SensorReading,
};
use proptest::prelude::*;

/// 2025-11-25T10:00:00Z.
pub const T0: i64 = 1_764_064_800_000;

/// How much event time a generated table covers: several minutes, so sliding windows overlap
/// and sessions with a small gap split.
pub const SPAN_MS: i64 = 6 * 60_000;

pub fn reading(id: &str, device: &str, ts_ms: i64, temperature_c: f64) -> SensorReading {
    SensorReading {
        event_id: EventId::parse(id).unwrap(),
        device_id: Ident::parse("device_id", device).unwrap(),
        site: Ident::parse("site", "plant-1").unwrap(),
        ts: EventTime::from_millis("ts", ts_ms).unwrap(),
        temperature_c,
        vibration_mm_s: temperature_c.abs() / 2.0,
    }
}

pub fn payment(
    id: &str,
    card: &str,
    ts_ms: i64,
    cents: i64,
    merchant: u8,
    country: &str,
) -> Payment {
    Payment {
        event_id: EventId::parse(id).unwrap(),
        txn_id: Ident::parse("txn_id", format!("t-{id}")).unwrap(),
        card_id: Ident::parse("card_id", card).unwrap(),
        merchant_id: Ident::parse("merchant_id", format!("m{merchant}")).unwrap(),
        mcc: Mcc::new("mcc", 5411).unwrap(),
        amount: Amount::from_cents("amount", cents).unwrap(),
        currency: Currency::parse("currency", "EUR").unwrap(),
        country: Country::parse("country", country).unwrap(),
        lat: 45.76,
        lon: 4.84,
        ts: EventTime::from_millis("ts", ts_ms).unwrap(),
    }
}

/// Up to `max` distinct events (ids `e0`, `e1`, …) over 4 keys and [`SPAN_MS`], then exact copies
/// of some of them (client retries) appended.
fn table<E: Clone + std::fmt::Debug, F: Strategy>(
    max: usize,
    fields: F,
    build: impl Fn(usize, F::Value) -> E,
) -> impl Strategy<Value = Vec<E>> {
    (
        prop::collection::vec(fields, 1..max),
        prop::collection::vec(any::<prop::sample::Index>(), 0..max / 4),
    )
        .prop_map(move |(fields, copies)| {
            let mut events: Vec<E> = fields
                .into_iter()
                .enumerate()
                .map(|(i, f)| build(i, f))
                .collect();
            let distinct = events.len();
            for c in copies {
                events.push(events[c.index(distinct)].clone());
            }
            events
        })
}

/// A table of readings (see [`table`]); temperatures include both zeros, whose min and max must
/// not depend on the order of addition.
pub fn readings(max: usize) -> impl Strategy<Value = Vec<SensorReading>> {
    let temperature = prop_oneof![
        1 => Just(0.0),
        1 => Just(-0.0),
        8 => -80.0f64..200.0,
    ];
    table(max, (0u8..4, 0..SPAN_MS, temperature), |i, (d, t, temp)| {
        reading(&format!("e{i}"), &format!("d{d}"), T0 + t, temp)
    })
}

/// A table of payments (see [`table`]).
pub fn payments(max: usize) -> impl Strategy<Value = Vec<Payment>> {
    let countries = ["FR", "DE", "ES"];
    table(
        max,
        (0u8..4, 0..SPAN_MS, 1i64..1_000_000, 0u8..5, 0usize..3),
        move |i, (c, t, cents, m, k)| {
            payment(
                &format!("e{i}"),
                &format!("c{c}"),
                T0 + t,
                cents,
                m,
                countries[k],
            )
        },
    )
}

/// Equal down to the bits of every float (`-0.0` and `0.0` compare equal but are not the same
/// value to a reader of the view): `Debug` writes a float's exact, shortest representation.
pub fn same_bits<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}
