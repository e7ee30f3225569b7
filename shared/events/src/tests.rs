use proptest::prelude::*;
use serde_json::json;

use crate::body::{self, BodyError, Framing};
use crate::*;

const NOW: i64 = 1_764_064_800_000; // 2025-11-25T10:00:00Z

fn policy() -> Policy {
    Policy::default().at(EventTime::from_millis_unchecked(NOW))
}

fn reading() -> serde_json::Value {
    json!({"event_id": "r-1", "device_id": "dev-1", "site": "lyon", "ts": "2025-11-25T09:59:00Z",
           "temperature_c": 21.5, "vibration_mm_s": 0.3})
}

fn payment() -> serde_json::Value {
    json!({"event_id": "p-1", "txn_id": "t-1", "card_id": "card-1", "merchant_id": "m-1", "mcc": "5411",
           "amount": 12.34, "currency": "EUR", "country": "FR", "lat": 45.76, "lon": 4.83, "ts": NOW - 1000})
}

fn sensor_err(v: &serde_json::Value) -> FieldError {
    SensorReading::from_json(v.to_string().as_bytes(), &policy()).expect_err("should be rejected")
}

fn payment_err(v: &serde_json::Value) -> FieldError {
    Payment::from_json(v.to_string().as_bytes(), &policy()).expect_err("should be rejected")
}

fn with(mut v: serde_json::Value, field: &str, value: serde_json::Value) -> serde_json::Value {
    v[field] = value;
    v
}

fn without(mut v: serde_json::Value, field: &str) -> serde_json::Value {
    v.as_object_mut().unwrap().remove(field);
    v
}

#[test]
fn valid_events_decode() {
    let r = SensorReading::from_json(reading().to_string().as_bytes(), &policy()).unwrap();
    assert_eq!(r.device_id.as_str(), "dev-1");
    assert_eq!(r.ts.millis(), NOW - 60_000);
    assert_eq!(r.key(), "dev-1");
    let p = Payment::from_json(payment().to_string().as_bytes(), &policy()).unwrap();
    assert_eq!(p.amount.cents(), 1234);
    assert_eq!(p.mcc.code(), 5411);
    assert_eq!(p.key(), "card-1");
    assert_eq!(p.currency.as_str(), "EUR");
}

#[test]
fn missing_fields_are_named() {
    for field in [
        "event_id",
        "device_id",
        "site",
        "ts",
        "temperature_c",
        "vibration_mm_s",
    ] {
        let e = sensor_err(&without(reading(), field));
        assert_eq!(
            (e.field.as_deref(), e.code),
            (Some(field), ErrorCode::MissingField),
            "{e}"
        );
    }
    for field in [
        "event_id",
        "txn_id",
        "card_id",
        "merchant_id",
        "mcc",
        "amount",
        "currency",
        "country",
        "lat",
        "lon",
        "ts",
    ] {
        let e = payment_err(&without(payment(), field));
        assert_eq!(
            (e.field.as_deref(), e.code),
            (Some(field), ErrorCode::MissingField),
            "{e}"
        );
    }
}

#[test]
fn wrong_types_name_the_field() {
    let cases = [
        ("temperature_c", json!("hot")),
        ("temperature_c", json!(null)),
        ("vibration_mm_s", json!([1])),
        ("device_id", json!(12)),
        ("ts", json!(true)),
        ("ts", json!(1.764e12)),
    ];
    for (field, value) in cases {
        let e = sensor_err(&with(reading(), field, value.clone()));
        assert_eq!(
            (e.field.as_deref(), e.code),
            (Some(field), ErrorCode::InvalidType),
            "{value}: {e}"
        );
    }
    let e = payment_err(&with(payment(), "amount", json!("12.34")));
    assert_eq!(
        (e.field.as_deref(), e.code),
        (Some("amount"), ErrorCode::InvalidType)
    );
    assert!(e.reason.contains("expected a number"), "{e}");
}

#[test]
fn ranges_are_enforced() {
    let cases: Vec<(&str, serde_json::Value, ErrorCode)> = vec![
        ("temperature_c", json!(-80.1), ErrorCode::OutOfRange),
        ("temperature_c", json!(200.01), ErrorCode::OutOfRange),
        ("vibration_mm_s", json!(-0.001), ErrorCode::OutOfRange),
        ("vibration_mm_s", json!(10_000.001), ErrorCode::OutOfRange),
    ];
    for (field, value, code) in cases {
        let e = sensor_err(&with(reading(), field, value.clone()));
        assert_eq!(
            (e.field.as_deref(), e.code),
            (Some(field), code),
            "{value}: {e}"
        );
    }
    for ok in [json!(-80), json!(200), json!(0)] {
        SensorReading::from_json(
            with(reading(), "temperature_c", ok).to_string().as_bytes(),
            &policy(),
        )
        .unwrap();
    }
    let cases: Vec<(&str, serde_json::Value, ErrorCode)> = vec![
        ("amount", json!(0), ErrorCode::OutOfRange),
        ("amount", json!(-5), ErrorCode::OutOfRange),
        ("amount", json!(1_000_000.01), ErrorCode::OutOfRange),
        ("amount", json!(12.345), ErrorCode::InvalidValue),
        ("amount", json!(0.001), ErrorCode::InvalidValue),
        ("lat", json!(90.5), ErrorCode::OutOfRange),
        ("lon", json!(-180.5), ErrorCode::OutOfRange),
        ("currency", json!("EURO"), ErrorCode::InvalidValue),
        ("currency", json!("eur"), ErrorCode::InvalidValue),
        ("currency", json!("XXX"), ErrorCode::InvalidValue),
        ("country", json!("FRA"), ErrorCode::InvalidValue),
        ("country", json!("ZZ"), ErrorCode::InvalidValue),
        ("mcc", json!("541"), ErrorCode::InvalidValue),
        ("mcc", json!(10000), ErrorCode::OutOfRange),
        ("mcc", json!(-1), ErrorCode::OutOfRange),
    ];
    for (field, value, code) in cases {
        let e = payment_err(&with(payment(), field, value.clone()));
        assert_eq!(
            (e.field.as_deref(), e.code),
            (Some(field), code),
            "{value}: {e}"
        );
    }
    let p = Payment::from_json(
        with(payment(), "amount", json!(1_000_000))
            .to_string()
            .as_bytes(),
        &policy(),
    )
    .unwrap();
    assert_eq!(p.amount.cents(), 100_000_000);
    let p = Payment::from_json(
        with(payment(), "amount", json!(19.99))
            .to_string()
            .as_bytes(),
        &policy(),
    )
    .unwrap();
    assert_eq!(p.amount.cents(), 1999);
    let p = Payment::from_json(
        with(payment(), "mcc", json!(742)).to_string().as_bytes(),
        &policy(),
    )
    .unwrap();
    assert_eq!(p.mcc.to_string(), "0742");
    let e = payment_err(&with(payment(), "currency", json!("eur")));
    assert!(e.reason.contains("upper case"), "{e}");
}

#[test]
fn non_finite_numbers_are_rejected() {
    // JSON has no NaN/Infinity literals; the parser refuses them and numbers that overflow f64
    for text in [r#"NaN"#, r#"Infinity"#, r#"-Infinity"#, "1e400"] {
        let body = reading().to_string().replace("21.5", text);
        let e = SensorReading::from_json(body.as_bytes(), &policy()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidJson, "{text}: {e}");
    }
}

#[test]
fn timestamps() {
    let ok = |ts: serde_json::Value| {
        SensorReading::from_json(with(reading(), "ts", ts).to_string().as_bytes(), &policy())
            .map(|r| r.ts.millis())
    };
    assert_eq!(
        ok(json!("2025-11-25T11:59:00+02:00")).unwrap(),
        NOW - 60_000
    );
    assert_eq!(
        ok(json!("2025-11-25T09:59:00.123456Z")).unwrap(),
        NOW - 60_000 + 123
    );
    assert_eq!(ok(json!(NOW)).unwrap(), NOW);
    // within the 5-minute skew
    assert_eq!(ok(json!(NOW + 299_000)).unwrap(), NOW + 299_000);
    let e = ok(json!(NOW + 301_000)).unwrap_err();
    assert_eq!(
        (e.field.as_deref(), e.code),
        (Some("ts"), ErrorCode::FutureTimestamp)
    );
    let e = ok(json!("yesterday")).unwrap_err();
    assert_eq!(
        (e.field.as_deref(), e.code),
        (Some("ts"), ErrorCode::InvalidValue)
    );
    let e = ok(json!(1_764_064_800)).unwrap_err();
    assert_eq!(e.code, ErrorCode::OutOfRange);
    assert!(e.reason.contains("epoch seconds"), "{e}");
    // stored events skip the clock check
    let far = with(reading(), "ts", json!(NOW + 86_400_000));
    SensorReading::from_json(far.to_string().as_bytes(), &Policy::stored()).unwrap();
}

#[test]
fn identifiers() {
    for (value, ok) in [
        (json!("a"), true),
        (json!("x".repeat(128)), true),
        (json!("é".repeat(128)), true),
        (json!("x".repeat(129)), false),
        (json!(""), false),
        (json!("a\tb"), false),
        (json!("a\u{7}b"), false),
        (json!(" a"), false),
        (json!("a b"), true),
        (json!("a\u{200B}b"), false),
        (json!("a\u{202E}b"), false),
        (json!("\u{FEFF}ab"), false),
    ] {
        let r = SensorReading::from_json(
            with(reading(), "event_id", value.clone())
                .to_string()
                .as_bytes(),
            &policy(),
        );
        match r {
            Ok(_) => assert!(ok, "{value} should be rejected"),
            Err(e) => {
                assert!(!ok, "{value} should be accepted: {e}");
                assert_eq!(
                    (e.field.as_deref(), e.code),
                    (Some("event_id"), ErrorCode::InvalidValue)
                );
            }
        }
    }
}

#[test]
fn unknown_fields_are_accepted_and_duplicates_refused() {
    let v = with(reading(), "firmware", json!({"version": "1.2"}));
    SensorReading::from_json(v.to_string().as_bytes(), &policy()).unwrap();
    let dup = r#"{"event_id":"a","event_id":"b","device_id":"d","site":"s","ts":1764064800000,"temperature_c":1,"vibration_mm_s":1}"#;
    let e = SensorReading::from_json(dup.as_bytes(), &policy()).unwrap_err();
    assert_eq!(
        (e.field.as_deref(), e.code),
        (Some("event_id"), ErrorCode::DuplicateField)
    );
}

#[test]
fn malformed_items() {
    for (text, code) in [
        ("{", ErrorCode::InvalidJson),
        ("[1,2]", ErrorCode::InvalidType),
        ("42", ErrorCode::InvalidType),
        ("{\"event_id\": \"\u{0}\"}", ErrorCode::InvalidJson),
    ] {
        let e = SensorReading::from_json(text.as_bytes(), &policy()).unwrap_err();
        assert_eq!(e.code, code, "{text}: {e}");
        assert_eq!(e.field, None, "{text}: {e}");
    }
    let trailing = format!("{} {{}}", reading());
    let e = SensorReading::from_json(trailing.as_bytes(), &policy()).unwrap_err();
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidJson, None),
        "{e}"
    );
    let e = SensorReading::from_json(b"{\"event_id\": \"\xff\"}", &policy()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidJson);
    let deep = format!(
        "{{\"x\": {}{}, {}}}",
        "[".repeat(10_000),
        "]".repeat(10_000),
        &reading().to_string()[1..]
    );
    let e = SensorReading::from_json(deep.as_bytes(), &policy()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidJson);
}

#[test]
fn split_bodies() {
    let one = reading().to_string();
    let items = body::split(one.as_bytes(), Framing::Json, 10).unwrap();
    assert_eq!(items.len(), 1);
    let arr = format!("[{one}, {one} ,\n{one}]");
    let items = body::split(arr.as_bytes(), Framing::Json, 10).unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[2].index, 2);
    assert_eq!(items[1].json, one.as_bytes());
    let nd = format!("{one}\r\n\n{one}\n  \n{{bad\n");
    let items = body::split(nd.as_bytes(), Framing::Ndjson, 10).unwrap();
    assert_eq!(
        items.iter().map(|i| (i.index, i.line)).collect::<Vec<_>>(),
        [(0, Some(1)), (1, Some(3)), (2, Some(5))]
    );
    assert_eq!(items[0].json, one.as_bytes());

    assert_eq!(
        body::split(b"  \n", Framing::Json, 10),
        Err(BodyError::Empty)
    );
    assert_eq!(
        body::split(b"[]", Framing::Json, 10),
        Err(BodyError::NoEvents)
    );
    assert_eq!(
        body::split(b"\"x\"", Framing::Json, 10),
        Err(BodyError::NotObjectOrArray("a string"))
    );
    assert!(matches!(
        body::split(b"[{}, ", Framing::Json, 10),
        Err(BodyError::InvalidJson(_))
    ));
    assert!(matches!(
        body::split(b"<xml/>", Framing::Json, 10),
        Err(BodyError::InvalidJson(_))
    ));
    assert_eq!(
        body::split(arr.as_bytes(), Framing::Json, 2),
        Err(BodyError::TooManyEvents { limit: 2 })
    );
    assert_eq!(
        body::split(b"{}\n{}\n{}", Framing::Ndjson, 2),
        Err(BodyError::TooManyEvents { limit: 2 })
    );
}

fn ident() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.:-][a-zA-Z0-9 _.:é-]{0,40}[a-zA-Z0-9]"
}

prop_compose! {
    fn arb_reading()(event_id in ident(), device_id in ident(), site in ident(),
                     ts in EventTime::MIN.millis()..NOW + 300_000,
                     temperature_c in -80.0f64..=200.0, vibration_mm_s in 0.0f64..=10_000.0) -> SensorReading {
        SensorReading {
            event_id: EventId::parse(event_id).unwrap(), device_id: Ident::parse("device_id", device_id).unwrap(),
            site: Ident::parse("site", site).unwrap(), ts: EventTime::from_millis("ts", ts).unwrap(),
            temperature_c, vibration_mm_s,
        }
    }
}

prop_compose! {
    fn arb_payment()(event_id in ident(), txn in ident(), card in ident(), merchant in ident(),
                     mcc in 0i64..=9999, cents in 1i64..=Amount::MAX_CENTS,
                     currency in prop::sample::select(&crate::codes::CURRENCIES[..]),
                     country in prop::sample::select(&crate::codes::COUNTRIES[..]),
                     lat in -90.0f64..=90.0, lon in -180.0f64..=180.0,
                     ts in EventTime::MIN.millis()..NOW) -> Payment {
        Payment {
            event_id: EventId::parse(event_id).unwrap(), txn_id: Ident::parse("txn_id", txn).unwrap(),
            card_id: Ident::parse("card_id", card).unwrap(), merchant_id: Ident::parse("merchant_id", merchant).unwrap(),
            mcc: Mcc::new("mcc", mcc).unwrap(), amount: Amount::from_cents("amount", cents).unwrap(),
            currency: Currency::parse("currency", currency).unwrap(), country: Country::parse("country", country).unwrap(),
            lat, lon, ts: EventTime::from_millis("ts", ts).unwrap(),
        }
    }
}

proptest! {
    #[test]
    fn reading_round_trips(r in arb_reading()) {
        let json = serde_json::to_vec(&r).unwrap();
        prop_assert_eq!(SensorReading::from_json(&json, &policy()).unwrap(), r);
    }

    #[test]
    fn payment_round_trips(p in arb_payment()) {
        let json = serde_json::to_vec(&p).unwrap();
        prop_assert_eq!(Payment::from_json(&json, &policy()).unwrap(), p);
    }

    #[test]
    fn rfc3339_and_millis_agree(ms in EventTime::MIN.millis()..EventTime::MAX.millis()) {
        let t = EventTime::from_millis("ts", ms).unwrap();
        prop_assert_eq!(EventTime::parse_rfc3339("ts", &t.to_string()).unwrap(), t);
    }

    #[test]
    fn two_decimal_amounts_are_exact(cents in 1i64..=Amount::MAX_CENTS) {
        let v = cents as f64 / 100.0;
        let text = serde_json::to_string(&v).unwrap();
        let parsed: f64 = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(Amount::from_f64("amount", parsed).unwrap().cents(), cents);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = SensorReading::from_json(&bytes, &policy());
        let _ = Payment::from_json(&bytes, &policy());
        let _ = body::split(&bytes, Framing::Json, 100);
        let _ = body::split(&bytes, Framing::Ndjson, 100);
    }

    #[test]
    fn mutated_fields_are_rejected_with_their_name(
        field in prop::sample::select(vec!["event_id", "txn_id", "card_id", "merchant_id", "mcc", "amount", "currency", "country", "lat", "lon", "ts"]),
        value in prop_oneof![Just(json!(null)), Just(json!({})), Just(json!([])), Just(json!(true))],
    ) {
        let e = payment_err(&with(payment(), field, value));
        prop_assert_eq!(e.field.as_deref(), Some(field));
    }
}

#[test]
fn very_deep_nesting_does_not_overflow_the_stack() {
    let depth = 8 * 1024 * 1024;
    let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // the array's single item is an array: not an event, and no crash on the way
    let items = body::split(body.as_bytes(), Framing::Json, 10).unwrap();
    let e = SensorReading::from_json(items[0].json, &policy()).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidType);
    let unclosed = "[".repeat(depth);
    assert!(body::split(unclosed.as_bytes(), Framing::Json, 10).is_err());
    let item = format!("{{\"x\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
    // refused (the parser's depth limit, or the skipped unknown field leaves the required ones
    // missing), never a crash
    let code = SensorReading::from_json(item.as_bytes(), &policy())
        .unwrap_err()
        .code;
    assert!(
        matches!(code, ErrorCode::InvalidJson | ErrorCode::MissingField),
        "{code}"
    );
}

/// The `cargo fuzz` target's seeds (`fuzz/seeds`), each as it is.
fn fuzz_seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("fuzz/seeds")
        .map(|e| std::fs::read(e.expect("a seed").path()).expect("a seed"))
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "{}", dir.display());
    seeds
}

#[test]
fn the_fuzz_property_holds_on_the_seeds() {
    let mut valid = 0;
    for seed in fuzz_seeds() {
        crate::fuzzing::ingest_body(&seed);
        for framing in [Framing::Json, Framing::Ndjson] {
            for item in body::split(&seed, framing, 100).unwrap_or_default() {
                let p = Policy::default();
                valid += usize::from(SensorReading::from_json(item.json, &p).is_ok())
                    + usize::from(Payment::from_json(item.json, &p).is_ok())
                    + usize::from(FraudLabel::from_json(item.json, &p).is_ok());
            }
        }
    }
    // the seeds reach the round trip, not only the refusals
    assert!(valid >= 5, "{valid} valid events in the seeds");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The fuzz target's property, on stable, over seeds edited at random (bytes replaced,
    /// inserted, removed, the tail cut): what `infra/local/fuzz` runs for longer.
    #[test]
    fn the_fuzz_property_holds_on_edited_seeds(
        which in 0usize..64,
        edits in proptest::collection::vec((0usize..4, any::<usize>(), any::<u8>()), 1..8),
    ) {
        let seeds = fuzz_seeds();
        let mut data = seeds[which % seeds.len()].clone();
        for (kind, at, byte) in edits {
            let at = if data.is_empty() { 0 } else { at % data.len() };
            match kind {
                0 if !data.is_empty() => data[at] = byte,
                1 => data.insert(at, byte),
                2 if !data.is_empty() => { data.remove(at); }
                _ => data.truncate(at),
            }
        }
        crate::fuzzing::ingest_body(&data);
    }
}
