//! What one micro-batch of one partition changes, computed without I/O from its live events
//! (already deduplicated within the batch and not late) with the functions of
//! `lambdalake-views`. [`crate::apply`] turns a plan into the atomic Redis script call.

use std::collections::{BTreeMap, HashMap};

use lambdalake_events::{Payment, SensorReading};
use lambdalake_views::fraud::{self, CardProfile, DeviceBaseline, Features, Model, Seen};
use lambdalake_views::keys::SensorView;
use lambdalake_views::{CardAgg, SensorAgg, SessionAggs, Sessions, Window};
use serde::Serialize;

/// Payments more than this far behind a card's newest one are dropped from its fraud history
/// (10 minutes of recent payments plus the allowed lateness, so an out-of-order payment still
/// sees its full history).
pub fn history_horizon_ms(allowed_lateness_ms: i64) -> i64 {
    fraud::RECENT_MS + allowed_lateness_ms
}

/// The view updates of one partition's micro-batch.
#[derive(Debug, Default)]
pub struct Plan {
    /// Event ids to mark as counted, by event-time minute.
    pub ids_by_minute: BTreeMap<i64, Vec<String>>,
    pub sensor_windows: Vec<(SensorView, String, Window, SensorAgg)>,
    pub card_windows: Vec<(String, Window, CardAgg)>,
    /// Per card, the batch's partial sessions.
    pub card_sessions: Vec<(String, Vec<(Window, CardAgg)>)>,
    /// Per card: the history cut (entries before it are dropped) and the new entries with
    /// their event ids.
    pub card_history: Vec<(String, i64, Vec<(Seen, String)>)>,
    pub alerts: Vec<Alert>,
    /// Events the plan counts.
    pub events: usize,
    /// Largest event time in the plan.
    pub max_ts: Option<i64>,
}

/// An alert, as stored in Redis and produced to the alerts topic.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// `fraud:{event_id}` or `sensor:{event_id}`: the same for every copy of an alert (the
    /// alerts topic is at-least-once; consumers dedupe on it).
    pub alert_id: String,
    pub kind: &'static str,
    /// The card or device.
    pub key: String,
    /// Event time, epoch ms.
    pub ts: i64,
    pub detected_at_ms: i64,
    /// The fraud probability, or the largest |z-score| of a sensor alert (null without baseline).
    pub score: Option<f64>,
    /// The model version, `rules` (payments), or `baseline` / `thresholds` (sensors).
    pub model_version: String,
    pub reasons: Vec<String>,
    pub features: serde_json::Value,
    pub event: serde_json::Value,
}

/// What scoring needs from outside the batch.
pub struct Reference<'a> {
    pub model: Option<&'a Model>,
    pub profiles: &'a HashMap<String, Option<CardProfile>>,
    pub baselines: &'a HashMap<String, Option<DeviceBaseline>>,
    pub fraud_threshold: f64,
    pub now_ms: i64,
}

fn minute(ts: i64) -> i64 {
    ts.div_euclid(60_000)
}

/// Plan a batch of sensor readings.
pub fn sensors(readings: &[&SensorReading], reference: &Reference<'_>) -> Plan {
    let mut plan = Plan::default();
    let mut windows: HashMap<(SensorView, &str, Window), SensorAgg> = HashMap::new();
    for r in readings {
        let ts = r.ts.millis();
        plan.ids_by_minute
            .entry(minute(ts))
            .or_default()
            .push(r.event_id.as_str().to_owned());
        plan.max_ts = Some(plan.max_ts.map_or(ts, |m| m.max(ts)));
        for view in SensorView::ALL {
            for w in view.spec().assign(r.ts) {
                windows
                    .entry((view, r.device_id.as_str(), w))
                    .and_modify(|a| a.add(r))
                    .or_insert_with(|| SensorAgg::of(r));
            }
        }
        let baseline = reference
            .baselines
            .get(r.device_id.as_str())
            .and_then(Option::as_ref);
        let reasons = fraud::sensor_alerts(r, baseline);
        if !reasons.is_empty() {
            let z = baseline.map(|b| {
                let zt = if b.temperature_std > 0.0 {
                    (r.temperature_c - b.temperature_mean) / b.temperature_std
                } else {
                    0.0
                };
                let zv = if b.vibration_std > 0.0 {
                    (r.vibration_mm_s - b.vibration_mean) / b.vibration_std
                } else {
                    0.0
                };
                (zt, zv)
            });
            plan.alerts.push(Alert {
                alert_id: format!("sensor:{}", r.event_id.as_str()),
                kind: "sensor",
                key: r.device_id.as_str().to_owned(),
                ts,
                detected_at_ms: reference.now_ms,
                score: z.map(|(zt, zv)| zt.abs().max(zv.abs())),
                model_version: if baseline.is_some() {
                    "baseline"
                } else {
                    "thresholds"
                }
                .to_owned(),
                reasons: reasons
                    .iter()
                    .map(|a| {
                        serde_json::to_value(a)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    })
                    .collect(),
                features: serde_json::json!({
                    "temperature_c": r.temperature_c,
                    "vibration_mm_s": r.vibration_mm_s,
                    "temperature_z": z.map(|z| z.0),
                    "vibration_z": z.map(|z| z.1),
                }),
                event: serde_json::to_value(r).unwrap_or_default(),
            });
        }
    }
    plan.events = readings.len();
    plan.sensor_windows = windows
        .into_iter()
        .map(|((view, device, w), agg)| (view, device.to_owned(), w, agg))
        .collect();
    plan
}

/// Plan a batch of payments. `history` holds each card's fraud history known before the batch
/// (as loaded from Redis); it is not changed — the plan lists the entries to add.
pub fn payments(
    payments: &[&Payment],
    history: &HashMap<String, Vec<Seen>>,
    horizon_ms: i64,
    reference: &Reference<'_>,
) -> Plan {
    let mut plan = Plan::default();
    let mut windows: HashMap<(&str, Window), CardAgg> = HashMap::new();
    let mut sessions: HashMap<&str, SessionAggs<CardAgg>> = HashMap::new();
    let mut seen_now: HashMap<&str, Vec<(Seen, String)>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for p in payments {
        let card = p.card_id.as_str();
        let ts = p.ts.millis();
        plan.ids_by_minute
            .entry(minute(ts))
            .or_default()
            .push(p.event_id.as_str().to_owned());
        plan.max_ts = Some(plan.max_ts.map_or(ts, |m| m.max(ts)));
        for w in lambdalake_views::WindowSpec::ONE_MINUTE.assign(p.ts) {
            windows
                .entry((card, w))
                .and_modify(|a| a.add(p))
                .or_insert_with(|| CardAgg::of(p));
        }
        sessions
            .entry(card)
            .or_insert_with(|| SessionAggs::new(Sessions::CARD_GAP_MS))
            .add_event(p.ts, CardAgg::of(p));

        // fraud: the card's history before the batch plus the batch's earlier payments
        let new = seen_now.entry(card).or_insert_with(|| {
            order.push(card);
            Vec::new()
        });
        let mut known: Vec<Seen> = history.get(card).cloned().unwrap_or_default();
        known.extend(new.iter().map(|(s, _)| *s));
        let profile = reference.profiles.get(card).and_then(Option::as_ref);
        let features = fraud::features(p, &known, profile);
        let score = fraud::score(&features, reference.model);
        if score.value >= reference.fraud_threshold {
            plan.alerts.push(Alert {
                alert_id: format!("fraud:{}", p.event_id.as_str()),
                kind: "fraud",
                key: card.to_owned(),
                ts,
                detected_at_ms: reference.now_ms,
                score: Some(score.value),
                model_version: score.by,
                reasons: fraud_reasons(&features),
                features: features_json(&features),
                event: serde_json::to_value(p).unwrap_or_default(),
            });
        }
        new.push((Seen::from(*p), p.event_id.as_str().to_owned()));
    }
    plan.events = payments.len();
    plan.card_windows = windows
        .into_iter()
        .map(|((card, w), agg)| (card.to_owned(), w, agg))
        .collect();
    plan.card_sessions = sessions
        .into_iter()
        .map(|(card, s)| (card.to_owned(), s.into_sessions()))
        .collect();
    for card in order {
        let new = seen_now.remove(card).unwrap_or_default();
        let newest = history
            .get(card)
            .into_iter()
            .flatten()
            .map(|s| s.ts_ms)
            .chain(new.iter().map(|(s, _)| s.ts_ms))
            .max()
            .unwrap_or(0);
        plan.card_history
            .push((card.to_owned(), newest - horizon_ms, new));
    }
    plan
}

/// The rules that fired, named (also when a model scored the payment: they explain it).
fn fraud_reasons(f: &Features) -> Vec<String> {
    let mut r = Vec::new();
    if f.travel_kmh > fraud::IMPOSSIBLE_KMH {
        r.push("impossible_travel".to_owned());
    }
    if f.recent_count >= 5 {
        r.push("card_testing".to_owned());
    }
    if f.amount_z > 4.0 {
        r.push("amount_spike".to_owned());
    }
    if f.new_country {
        r.push("new_country".to_owned());
    }
    if f.mcc_risk >= 0.8 {
        r.push("high_risk_merchant".to_owned());
    }
    r
}

fn features_json(f: &Features) -> serde_json::Value {
    serde_json::to_value(f).unwrap_or_default()
}

/// The member a history entry is stored as in the card's sorted set: `ts|lat|lon|event_id`.
pub fn history_member(s: &Seen, event_id: &str) -> String {
    format!("{}|{}|{}|{event_id}", s.ts_ms, s.lat, s.lon)
}

/// Parse a history member back; `None` for anything else.
pub fn parse_history_member(m: &str) -> Option<Seen> {
    let mut it = m.splitn(4, '|');
    let ts_ms = it.next()?.parse().ok()?;
    let lat = it.next()?.parse().ok()?;
    let lon = it.next()?.parse().ok()?;
    Some(Seen { ts_ms, lat, lon })
}

#[cfg(test)]
mod tests {
    use lambdalake_events::{Event, Policy};

    use super::*;

    fn payment(id: &str, card: &str, ts: i64, lat: f64, lon: f64) -> Payment {
        let json = format!(
            r#"{{"event_id":"{id}","txn_id":"t","card_id":"{card}","merchant_id":"m","mcc":"5411","amount":10.5,"currency":"EUR","country":"FR","lat":{lat},"lon":{lon},"ts":{ts}}}"#
        );
        Payment::from_json(json.as_bytes(), &Policy::stored()).unwrap()
    }

    fn reference<'a>(
        profiles: &'a HashMap<String, Option<CardProfile>>,
        baselines: &'a HashMap<String, Option<DeviceBaseline>>,
    ) -> Reference<'a> {
        Reference {
            model: None,
            profiles,
            baselines,
            fraud_threshold: 0.8,
            now_ms: 0,
        }
    }

    #[test]
    fn impossible_travel_uses_history_from_before_the_batch() {
        let (p, b) = (HashMap::new(), HashMap::new());
        let t0 = 1_764_064_800_000;
        let paris = Seen {
            ts_ms: t0,
            lat: 48.85,
            lon: 2.35,
        };
        let history = HashMap::from([("c".to_owned(), vec![paris])]);
        // New York five minutes later
        let ny = payment("e2", "c", t0 + 300_000, 40.71, -74.0);
        let plan = payments(&[&ny], &history, 600_000, &reference(&p, &b));
        assert_eq!(plan.alerts.len(), 1);
        assert_eq!(plan.alerts[0].alert_id, "fraud:e2");
        assert_eq!(plan.alerts[0].reasons, ["impossible_travel"]);
        assert_eq!(plan.alerts[0].model_version, "rules");
        // the new entry is listed, the cut keeps 10 minutes behind the newest
        assert_eq!(plan.card_history[0].1, t0 + 300_000 - 600_000);
        assert_eq!(plan.card_history[0].2.len(), 1);
        // without the history, no alert
        let plan = payments(&[&ny], &HashMap::new(), 600_000, &reference(&p, &b));
        assert!(plan.alerts.is_empty());
    }

    #[test]
    fn history_members_round_trip() {
        let s = Seen {
            ts_ms: 1_764_064_800_123,
            lat: -33.8688,
            lon: 151.2093,
        };
        assert_eq!(parse_history_member(&history_member(&s, "a|b")), Some(s));
        assert_eq!(parse_history_member("x|1|2"), None);
    }
}
