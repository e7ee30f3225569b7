//! The recompute against the one-shot views of `lambdalake_views::table` on the same events.

use std::collections::BTreeSet;

use lambdalake_events::{EventTime, Payment, Policy, SensorReading};
use lambdalake_views::table::{self, Keyed};
use lambdalake_views::{CardAgg, SensorAgg, Sessions, Stat, Window, WindowSpec};
use polars::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::archiver::append;
use crate::dataset::{Dataset, Kind};
use crate::recompute::{self, Recomputed};

fn window(start: i64, end: i64) -> Window {
    Window {
        start: EventTime::from_millis_unchecked(start),
        end: EventTime::from_millis_unchecked(end),
    }
}

fn sensor_view(r: &Recomputed, view: &str) -> Keyed<SensorAgg> {
    let df = r
        .sensor_windows
        .clone()
        .lazy()
        .filter(col("view").eq(lit(view)))
        .collect()
        .unwrap();
    let s = |c: &str| df.column(c).unwrap().clone();
    let (dev, start, end, count) = (s("device_id"), s("start_ms"), s("end_ms"), s("count"));
    let (tmin, tmax, tsum) = (
        s("temperature_min"),
        s("temperature_max"),
        s("temperature_sum_micro"),
    );
    let (vmin, vmax, vsum) = (
        s("vibration_min"),
        s("vibration_max"),
        s("vibration_sum_micro"),
    );
    let mut out = Keyed::new();
    for i in 0..df.height() {
        let f = |c: &Column| c.f64().unwrap().get(i).unwrap();
        let n = |c: &Column| c.i64().unwrap().get(i).unwrap();
        out.insert(
            (
                dev.str().unwrap().get(i).unwrap().to_owned(),
                window(n(&start), n(&end)),
            ),
            SensorAgg {
                count: u64::from(count.u32().unwrap().get(i).unwrap()),
                temperature_c: Stat {
                    min: f(&tmin),
                    max: f(&tmax),
                    sum_micro: i128::from(n(&tsum)),
                },
                vibration_mm_s: Stat {
                    min: f(&vmin),
                    max: f(&vmax),
                    sum_micro: i128::from(n(&vsum)),
                },
            },
        );
    }
    out
}

fn card_view(df: &DataFrame) -> Keyed<CardAgg> {
    let s = |c: &str| df.column(c).unwrap().clone();
    let set = |c: &Column, i: usize| -> BTreeSet<String> {
        let l = c.list().unwrap().get_as_series(i).unwrap();
        l.str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap().to_owned())
            .collect()
    };
    let (card, start, end, count) = (s("card_id"), s("start_ms"), s("end_ms"), s("count"));
    let (sum, max, merchants, countries) = (
        s("amount_sum_cents"),
        s("amount_max_cents"),
        s("merchants"),
        s("countries"),
    );
    let mut out = Keyed::new();
    for i in 0..df.height() {
        let n = |c: &Column| c.i64().unwrap().get(i).unwrap();
        out.insert(
            (
                card.str().unwrap().get(i).unwrap().to_owned(),
                window(n(&start), n(&end)),
            ),
            CardAgg {
                count: u64::from(count.u32().unwrap().get(i).unwrap()),
                amount_sum_cents: n(&sum),
                amount_max_cents: n(&max),
                merchants: set(&merchants, i),
                countries: set(&countries, i),
            },
        );
    }
    out
}

/// The windows of `view` that end at or before `cutoff`.
fn closed<A: Clone>(view: Keyed<A>, cutoff: i64) -> Keyed<A> {
    view.into_iter()
        .filter(|((_, w), _)| w.end.millis() <= cutoff)
        .collect()
}

/// Random events over two UTC days (the dataset splits them by date), out of order, with copies,
/// values with more decimals than micro-units, `-0.0`, and a few invalid records.
fn events(seed: u64, n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    // 23:00 UTC: the events cross midnight
    let t0 = 1_764_025_200_000i64;
    let (mut sensors, mut payments) = (Vec::new(), Vec::new());
    for i in 0..n {
        let ts = t0 + (i as i64) * 1_500 + rng.random_range(-90_000..90_000);
        if i % 2 == 0 {
            let t = match rng.random_range(0..10) {
                0 => "-0.0".to_owned(),
                1 => format!("{:.9}", rng.random_range(-50.0..120.0)),
                _ => format!("{:.2}", rng.random_range(-50.0..120.0)),
            };
            let v = format!("{:.7}", rng.random_range(0.0..30.0));
            sensors.push(format!(
                r#"{{"event_id":"s{i}","device_id":"d{}","site":"p1","ts":{ts},"temperature_c":{t},"vibration_mm_s":{v}}}"#,
                rng.random_range(0..7)
            ).into_bytes());
        } else {
            let country = ["FR", "DE", "ES", "IT"][rng.random_range(0..4)];
            // the first third's cards stop paying: their sessions close before the cutoff
            let card = rng.random_range(0..9) + if i < n / 3 { 0 } else { 10 };
            payments.push(format!(
                r#"{{"event_id":"p{i}","txn_id":"t{i}","card_id":"c{}","merchant_id":"m{}","mcc":"5411","amount":{}.{:02},"currency":"EUR","country":"{country}","lat":48.8,"lon":2.3,"ts":{ts}}}"#,
                card,
                rng.random_range(0..6),
                rng.random_range(1..900),
                rng.random_range(0..100)
            ).into_bytes());
        }
    }
    for list in [&mut sensors, &mut payments] {
        for _ in 0..list.len() / 20 {
            let at = rng.random_range(0..list.len());
            let copy = list[at].clone();
            let to = (at + rng.random_range(1..200)).min(list.len());
            list.insert(to, copy);
        }
        list.insert(list.len() / 2, b"{not json".to_vec());
    }
    (sensors, payments)
}

/// (offset, Kafka timestamp, payload).
type Record = (i64, Option<i64>, Vec<u8>);

/// Append `records` to `partitions` partitions of `topic` (by index), in flushes of `chunk`.
fn archive(dataset: &Dataset, topic: &str, kind: Kind, records: &[Vec<u8>], chunk: usize) {
    let parts = 2;
    let mut next = [0i64; 2];
    for batch in records.chunks(chunk) {
        let mut by_part: [Vec<Record>; 2] = Default::default();
        for r in batch {
            // a key's events stay in one partition, as with Kafka's key hashing
            let key = serde_json::from_slice::<serde_json::Value>(r)
                .ok()
                .and_then(|v| {
                    let k = v.get("device_id").or_else(|| v.get("card_id"))?;
                    Some(k.as_str()?.bytes().map(usize::from).sum::<usize>())
                })
                .unwrap_or(0);
            let p = key % parts;
            by_part[p].push((next[p], Some(1_764_025_200_000), r.clone()));
            next[p] += 1;
        }
        for (p, recs) in by_part.into_iter().enumerate() {
            if !recs.is_empty() {
                append(dataset, topic, p as i32, kind, recs).unwrap();
            }
        }
    }
}

fn decode<E: lambdalake_events::Event>(records: &[Vec<u8>]) -> Vec<E> {
    records
        .iter()
        .filter_map(|r| E::from_json(r, &Policy::stored()).ok())
        .collect()
}

#[test]
fn the_recompute_equals_the_one_shot_views_on_the_same_events() {
    let dir = std::env::temp_dir().join(format!("ll-batch-test-{}", rand::random::<u64>()));
    let dataset = Dataset::open(&dir).unwrap();
    let (sensors, payments) = events(7, 6_000);
    archive(&dataset, "sensors", Kind::SensorReading, &sensors, 700);
    archive(&dataset, "payments", Kind::Payment, &payments, 500);
    let snapshot = dataset.snapshot().unwrap();
    let r = recompute::recompute(&snapshot, 30_000).unwrap();
    let cutoff = r.cutoff_ms.expect("a cutoff");
    let readings: Vec<SensorReading> = decode(&sensors);
    let pays: Vec<Payment> = decode(&payments);
    assert_eq!(
        r.events_counted as usize,
        table::dedupe(&readings).len() + table::dedupe(&pays).len()
    );
    // most windows are closed: the comparison covers them
    assert!(
        sensor_view(&r, "1m").len() > 300,
        "{}",
        sensor_view(&r, "1m").len()
    );
    assert!(r.card_sessions.height() > 5, "{}", r.card_sessions.height());
    assert_eq!(
        sensor_view(&r, "1m"),
        closed(
            table::sensor_windows(&readings, WindowSpec::ONE_MINUTE),
            cutoff
        )
    );
    let five = WindowSpec::Sliding {
        size_ms: 300_000,
        slide_ms: 60_000,
    };
    assert_eq!(
        sensor_view(&r, "5m1m"),
        closed(table::sensor_windows(&readings, five), cutoff)
    );
    assert_eq!(
        card_view(&r.card_windows),
        closed(table::card_windows(&pays, WindowSpec::ONE_MINUTE), cutoff)
    );
    assert_eq!(
        card_view(&r.card_sessions),
        closed(table::card_sessions(&pays, Sessions::CARD_GAP_MS), cutoff)
    );
    // files per date: the events crossed midnight
    let dates: BTreeSet<&str> = snapshot
        .manifests
        .iter()
        .flat_map(|m| &m.files)
        .map(|f| f.date.as_str())
        .collect();
    assert!(dates.len() >= 2, "{dates:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn recomputed_history(seed: u64, cards: usize, per_card: usize) -> (Recomputed, Vec<Payment>) {
    let dir = std::env::temp_dir().join(format!("ll-batch-model-{}", rand::random::<u64>()));
    let dataset = Dataset::open(&dir).unwrap();
    let (payments, labels) = crate::testing::fraud_history(seed, cards, per_card);
    archive(&dataset, "payments", Kind::Payment, &payments, 900);
    archive(&dataset, "fraud-labels", Kind::FraudLabel, &labels, 300);
    let r = recompute::recompute(&dataset.snapshot().unwrap(), 30_000).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (r, decode(&payments))
}

#[test]
fn the_training_features_are_the_shared_features_over_the_whole_card_history() {
    let (r, pays) = recomputed_history(3, 40, 60);
    let profiles = crate::model::card_profiles(&r.card_profiles).unwrap();
    assert_eq!(profiles.len(), 40);
    // a fraud abroad did not make its country a usual one
    assert!(
        profiles
            .values()
            .all(|p| !p.countries.iter().any(|c| c == "BR"))
    );
    let features = crate::model::features(&r.payments, &profiles, |_| true).unwrap();
    assert_eq!(features.len(), pays.len());
    let txns = r.payments.column("txn_id").unwrap().str().unwrap().clone();
    let by_txn: std::collections::HashMap<&str, &Payment> =
        pays.iter().map(|p| (p.txn_id.as_str(), p)).collect();
    let frauds: BTreeSet<String> = {
        let l = &r.labels;
        let (t, f) = (l.column("txn_id").unwrap(), l.column("fraud").unwrap());
        (0..l.height())
            .filter(|i| f.bool().unwrap().get(*i).unwrap())
            .map(|i| t.str().unwrap().get(i).unwrap().to_owned())
            .collect()
    };
    assert!(frauds.len() > 20, "{}", frauds.len());
    let mut bursts = 0;
    for (i, f) in features {
        let p = by_txn[txns.get(i).unwrap()];
        let card = p.card_id.as_str();
        let history: Vec<lambdalake_views::fraud::Seen> = pays
            .iter()
            .filter(|q| q.card_id.as_str() == card && q.txn_id != p.txn_id)
            .map(Into::into)
            .collect();
        let profile = &profiles[card];
        // the profile is the card's whole legitimate history
        let amounts: Vec<f64> = pays
            .iter()
            .filter(|q| q.card_id.as_str() == card && !frauds.contains(q.txn_id.as_str()))
            .map(|q| q.amount.cents() as f64)
            .collect();
        let mean = amounts.iter().sum::<f64>() / amounts.len() as f64;
        assert!((profile.amount_mean_cents - mean).abs() < 1e-6);
        let expected = lambdalake_views::fraud::features(p, &history, Some(profile));
        assert_eq!(f, expected, "payment {}", p.txn_id.as_str());
        bursts += usize::from(f.recent_count >= 5);
    }
    assert!(bursts > 0, "card-testing bursts are in the history");
}

#[test]
fn the_fraud_model_learns_the_labelled_frauds_and_is_measured_on_held_out_payments() {
    let (r, pays) = recomputed_history(11, 150, 40);
    let profiles = crate::model::card_profiles(&r.card_profiles).unwrap();
    let settings = crate::model::ModelSettings {
        min_frauds: 10,
        max_rows: 2_000,
    };
    let m = match crate::model::train(&r.payments, &r.labels, &profiles, settings).unwrap() {
        crate::model::Training::Trained(m) => m,
        crate::model::Training::Skipped(why) => panic!("no model: {why}"),
    };
    // legitimate payments were sampled down to about max_rows
    assert!(pays.len() > 6_000);
    let used = (m.trained_on + m.held_out) as usize;
    assert!((1_700..2_300).contains(&used), "{used} {m:?}");
    assert!(m.held_out > 200, "{}", m.held_out);
    let auc = m.auc.unwrap();
    assert!(auc > 0.95, "AUC {auc}");
    assert!(m.recall.unwrap() > 0.6, "{m:?}");
    assert!(m.precision.unwrap() > 0.5, "{m:?}");
    // a new country and a risky category push toward fraud
    assert!(
        m.model.weights[3] > 0.0 && m.model.weights[4] > 0.0,
        "{m:?}"
    );
    // the intercept is corrected for the sampling: a typical legitimate payment scores low
    let typical = lambdalake_views::fraud::Features {
        amount_z: 0.0,
        recent_count: 1,
        travel_kmh: 0.0,
        new_country: false,
        mcc_risk: 0.1,
    };
    let p = lambdalake_views::fraud::score(&typical, Some(&m.model)).value;
    assert!(p < 0.05, "{p}");

    // too few frauds: no model, and why
    let strict = crate::model::ModelSettings {
        min_frauds: 100_000,
        max_rows: 2_000,
    };
    match crate::model::train(&r.payments, &r.labels, &profiles, strict).unwrap() {
        crate::model::Training::Skipped(why) => assert!(why.contains("fewer than 100000"), "{why}"),
        crate::model::Training::Trained(m) => panic!("trained {m:?}"),
    }
}

#[test]
fn quality_measures_on_hand_made_scores() {
    use crate::model::quality;
    // perfect ranking, one false positive at 0.6
    let q = quality(
        &[
            (0.9, true),
            (0.8, true),
            (0.6, false),
            (0.4, true),
            (0.1, false),
        ],
        1.0,
    );
    assert_eq!(q.precision, Some(2.0 / 3.0));
    assert_eq!(q.recall, Some(2.0 / 3.0));
    // pairs (fraud, legit) ranked right: (0.9,0.6) (0.9,0.1) (0.8,0.6) (0.8,0.1) (0.4,0.1) = 5 of 6
    assert_eq!(q.auc, Some(5.0 / 6.0));
    // ties count one half; a sampled legitimate payment counts 1 / rate times
    let q = quality(&[(0.7, true), (0.7, false), (0.2, false)], 4.0);
    assert_eq!(q.auc, Some(0.75));
    assert_eq!(q.precision, Some(1.0 / 5.0));
    // undefined measures
    let q = quality(&[(0.2, false), (0.1, false)], 1.0);
    assert_eq!((q.precision, q.recall, q.auc), (None, None, None));
}
