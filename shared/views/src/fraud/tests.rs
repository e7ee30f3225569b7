use lambdalake_events::{Event, Policy};
use proptest::prelude::*;

use super::*;

fn payment(ts_ms: i64, cents: i64, country: &str, lat: f64, lon: f64, mcc: u16) -> Payment {
    let json = format!(
        r#"{{"event_id":"e{ts_ms}","txn_id":"t","card_id":"c","merchant_id":"m","mcc":{mcc},"amount":{},"currency":"EUR","country":"{country}","lat":{lat},"lon":{lon},"ts":{ts_ms}}}"#,
        cents as f64 / 100.0
    );
    Payment::from_json(json.as_bytes(), &Policy::stored()).unwrap()
}

const T0: i64 = 1_764_064_800_000;
const LYON: (f64, f64) = (45.76, 4.84);
const NEW_YORK: (f64, f64) = (40.71, -74.01);

fn profile() -> CardProfile {
    CardProfile {
        amount_mean_cents: 3000.0,
        amount_std_cents: 1000.0,
        home_country: "FR".into(),
        countries: vec!["ES".into()],
    }
}

#[test]
fn distances() {
    let km = haversine_km(LYON.0, LYON.1, NEW_YORK.0, NEW_YORK.1);
    assert!((km - 6_200.0).abs() < 100.0, "{km}");
    assert_eq!(haversine_km(1.0, 2.0, 1.0, 2.0), 0.0);
}

#[test]
fn a_normal_payment_scores_low() {
    let p = payment(T0, 3500, "FR", LYON.0, LYON.1, 5411);
    let history = [Seen {
        ts_ms: T0 - 3_600_000,
        lat: LYON.0,
        lon: LYON.1,
    }];
    let f = features(&p, &history, Some(&profile()));
    assert_eq!(f.recent_count, 1);
    assert!((f.amount_z - 0.5).abs() < 1e-9);
    assert!(!f.new_country);
    assert!(f.travel_kmh < 1.0);
    let s = score(&f, None);
    assert_eq!((s.value, s.by.as_str()), (0.0, "rules"));
}

#[test]
fn impossible_travel_card_testing_spike_and_new_country() {
    // Lyon, then New York one hour later: ~6,200 km/h
    let p = payment(T0, 3000, "US", NEW_YORK.0, NEW_YORK.1, 5411);
    let f = features(
        &p,
        &[Seen {
            ts_ms: T0 - 3_600_000,
            lat: LYON.0,
            lon: LYON.1,
        }],
        Some(&profile()),
    );
    assert!(f.travel_kmh > IMPOSSIBLE_KMH);
    assert!(f.new_country);
    let s = rules_score(&f);
    assert!((s - (1.0 - 0.05 * 0.5)).abs() < 1e-12, "{s}");

    // five small payments in ten minutes
    let history: Vec<Seen> = (1..=4)
        .map(|i| Seen {
            ts_ms: T0 - i * 60_000,
            lat: LYON.0,
            lon: LYON.1,
        })
        .collect();
    let f = features(
        &payment(T0, 100, "FR", LYON.0, LYON.1, 5411),
        &history,
        Some(&profile()),
    );
    assert_eq!(f.recent_count, 5);
    assert!((rules_score(&f) - 0.85).abs() < 1e-12);

    // an amount spike: 5 standard deviations
    let f = features(
        &payment(T0, 8000, "ES", LYON.0, LYON.1, 4829),
        &[],
        Some(&profile()),
    );
    assert!((f.amount_z - 5.0).abs() < 1e-9);
    assert!(!f.new_country, "ES is a usual country");
    assert!((rules_score(&f) - (1.0 - 0.2 * 0.6)).abs() < 1e-12);
}

#[test]
fn later_payments_do_not_count() {
    let history = [
        Seen {
            ts_ms: T0 + 1,
            lat: NEW_YORK.0,
            lon: NEW_YORK.1,
        },
        Seen {
            ts_ms: T0 - 11 * 60_000,
            lat: LYON.0,
            lon: LYON.1,
        },
    ];
    let f = features(
        &payment(T0, 100, "FR", LYON.0, LYON.1, 5411),
        &history,
        None,
    );
    assert_eq!(
        f.recent_count, 1,
        "one is in the future, one older than 10 minutes"
    );
    assert!(f.travel_kmh < 1.0, "the previous payment is the Lyon one");
}

#[test]
fn model_score_is_logistic() {
    let model = Model {
        version: "v7".into(),
        bias: -2.0,
        weights: [1.0, 0.0, 0.0, 0.0, 0.0],
    };
    let f = Features {
        amount_z: 2.0,
        recent_count: 3,
        travel_kmh: 0.0,
        new_country: false,
        mcc_risk: 0.1,
    };
    let s = score(&f, Some(&model));
    assert_eq!((s.value, s.by.as_str()), (0.5, "v7"));
}

#[test]
fn sensor_alert_rules() {
    let reading = |t: f64, v: f64| {
        let json = format!(
            r#"{{"event_id":"e","device_id":"d","site":"s","ts":{T0},"temperature_c":{t},"vibration_mm_s":{v}}}"#
        );
        SensorReading::from_json(json.as_bytes(), &Policy::stored()).unwrap()
    };
    assert!(sensor_alerts(&reading(25.0, 1.0), None).is_empty());
    assert_eq!(
        sensor_alerts(&reading(95.0, 20.0), None),
        [SensorAlert::Overheating, SensorAlert::Vibration]
    );
    let b = DeviceBaseline {
        temperature_mean: 20.0,
        temperature_std: 2.0,
        vibration_mean: 1.0,
        vibration_std: 0.5,
    };
    assert_eq!(
        sensor_alerts(&reading(30.0, 1.2), Some(&b)),
        [SensorAlert::TemperatureAnomaly]
    );
    assert_eq!(
        sensor_alerts(&reading(20.0, 3.5), Some(&b)),
        [SensorAlert::VibrationAnomaly]
    );
}

proptest! {
    #[test]
    fn features_do_not_depend_on_history_order(
        times in prop::collection::vec(-1_200_000i64..600_000, 0..30),
        seed in any::<u64>(),
    ) {
        let p = payment(T0, 4200, "DE", LYON.0, LYON.1, 5999);
        let history: Vec<Seen> = times.iter().enumerate()
            .map(|(i, &dt)| Seen { ts_ms: T0 + dt, lat: 40.0 + (i as f64) * 0.1, lon: 2.0 })
            .collect();
        let a = features(&p, &history, Some(&profile()));
        let mut shuffled = history.clone();
        shuffled.rotate_left((seed as usize) % history.len().max(1));
        shuffled.reverse();
        let b = features(&p, &shuffled, Some(&profile()));
        // distinct timestamps aside, the previous payment is unique; with ties both are valid,
        // so compare what does not depend on ties
        prop_assert_eq!(a.recent_count, b.recent_count);
        prop_assert_eq!(a.amount_z, b.amount_z);
        prop_assert_eq!(a.new_country, b.new_country);
        let s = rules_score(&a);
        prop_assert!((0.0..=1.0).contains(&s));
    }
}
