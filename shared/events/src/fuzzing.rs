//! The property the `cargo fuzz` target checks (`fuzz/`, run by `infra/local/fuzz`), here so the
//! test suite checks it too, on stable, over the seed corpus and generated inputs.
//!
//! What ingest does with a request body, on arbitrary bytes: split it (JSON and NDJSON
//! framing), then decode and validate every item as each event kind. Nothing may panic; the
//! bytes ingest accepts (it produces them as sent) must read as the same event with the
//! consumers' policy; and a valid event must serialise to JSON that reads back as itself.

use crate::body::{self, Framing};
use crate::{Event, FraudLabel, Payment, Policy, SensorReading};

/// Panics when the property does not hold for `data`.
pub fn ingest_body(data: &[u8]) {
    let policy = Policy::default();
    for framing in [Framing::Json, Framing::Ndjson] {
        if let Ok(items) = body::split(data, framing, 10_000) {
            for item in items {
                check(item.json, &policy, SensorReading::from_json);
                check(item.json, &policy, Payment::from_json);
                check(item.json, &policy, FraudLabel::from_json);
            }
        }
    }
}

type FromJson<E> = fn(&[u8], &Policy) -> Result<E, crate::FieldError>;

fn check<E: serde::Serialize + PartialEq + std::fmt::Debug>(
    json: &[u8],
    policy: &Policy,
    from_json: FromJson<E>,
) {
    let Ok(event) = from_json(json, policy) else {
        return;
    };
    let read = from_json(json, &Policy::stored())
        .unwrap_or_else(|e| panic!("accepted by ingest, refused by a consumer: {e:?}"));
    assert_eq!(read, event, "a consumer reads another event");
    let again = serde_json::to_vec(&event).expect("a valid event serialises");
    let back = from_json(&again, &Policy::stored())
        .unwrap_or_else(|e| panic!("a re-serialised event is refused: {e:?}"));
    assert_eq!(back, event, "the round trip changed the event");
}
