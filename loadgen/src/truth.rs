//! The ground truth: what every 1-minute window must hold given the events ingest accepted, and
//! which payments were fraud — and the comparison of a served window with it.
//!
//! Windows are the serving API's (`/v1/{lambda,lakehouse}/{sensors,cards}/{id}/windows`): 1-minute
//! tumbling windows of event time, aggregated with `shared/views`' own aggregates, so "exact"
//! means equal counts, equal minima and maxima, equal sums to the micro-unit (the cent for
//! amounts).
//!
//! A window is *judged* only when nothing touched it for a settle time (`settle`): an event sent
//! or acknowledged for it since then may or may not be visible yet, which says nothing about
//! correctness (that is freshness, measured apart).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use lambdalake_views::{CardAgg, SensorAgg};
use serde::Serialize;

use crate::generator::Valid;

pub const MINUTE_MS: i64 = 60_000;

/// A window of one key: (device or card id, start in ms).
pub type WindowKey = (String, i64);

#[derive(Default)]
pub struct Truth {
    seen: HashSet<String>,
    pub sensors: BTreeMap<WindowKey, SensorAgg>,
    pub cards: BTreeMap<WindowKey, CardAgg>,
    /// Event ids of the fraudulent payments accepted.
    pub fraud: HashSet<String>,
    pub payments: u64,
    pub readings: u64,
    pub labels: u64,
    /// Last time an event of a window was sent or acknowledged.
    touched: HashMap<WindowKey, Instant>,
    /// Keys in the order they first appeared (a stable sample for the checks).
    pub device_order: Vec<String>,
    pub card_order: Vec<String>,
    device_set: HashSet<String>,
    card_set: HashSet<String>,
}

pub fn floor_minute(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS) * MINUTE_MS
}

/// The window a valid reading or payment lands in (labels have none).
pub fn window_of(v: &Valid) -> Option<WindowKey> {
    match v {
        Valid::Reading(r) => Some((r.device_id.as_str().to_owned(), floor_minute(r.ts.millis()))),
        Valid::Payment(p, _) => Some((p.card_id.as_str().to_owned(), floor_minute(p.ts.millis()))),
        Valid::Label(_) => None,
    }
}

impl Truth {
    /// An event is on its way: its window is in flux.
    pub fn touch(&mut self, v: &Valid, at: Instant) {
        if let Some(w) = window_of(v) {
            self.touched.insert(w, at);
        }
    }

    /// Ingest accepted `v` (a duplicate event id changes nothing).
    pub fn accept(&mut self, v: &Valid, at: Instant) {
        self.touch(v, at);
        if !self.seen.insert(v.event_id().to_owned()) {
            return;
        }
        match v {
            Valid::Reading(r) => {
                self.readings += 1;
                let w = window_of(v).expect("a reading has a window");
                if self.device_set.insert(w.0.clone()) {
                    self.device_order.push(w.0.clone());
                }
                self.sensors
                    .entry(w)
                    .and_modify(|a| a.add(r))
                    .or_insert_with(|| SensorAgg::of(r));
            }
            Valid::Payment(p, fraud) => {
                self.payments += 1;
                if *fraud {
                    self.fraud.insert(p.event_id.as_str().to_owned());
                }
                let w = window_of(v).expect("a payment has a window");
                if self.card_set.insert(w.0.clone()) {
                    self.card_order.push(w.0.clone());
                }
                self.cards
                    .entry(w)
                    .and_modify(|a| a.add(p))
                    .or_insert_with(|| CardAgg::of(p));
            }
            Valid::Label(_) => self.labels += 1,
        }
    }

    pub fn settled(&self, w: &WindowKey, now: Instant, settle: Duration) -> bool {
        self.touched
            .get(w)
            .is_none_or(|t| now.saturating_duration_since(*t) >= settle)
    }

    pub fn distinct_events(&self) -> usize {
        self.seen.len()
    }
}

/// Windows judged and windows exactly right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Score {
    pub judged: u64,
    pub exact: u64,
}

impl Score {
    pub fn add(&mut self, other: Score) {
        self.judged += other.judged;
        self.exact += other.exact;
    }

    /// Share exact, 0 … 1 (1 when nothing was judged).
    pub fn share(&self) -> f64 {
        if self.judged == 0 {
            1.0
        } else {
            self.exact as f64 / self.judged as f64
        }
    }
}

fn num(v: &serde_json::Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// Equal means: the same sum over the same count, allowing the last bit of a division done in
/// another order (`sum / 1e6 / count` in one layer, `sum / count / 1e6` in another).
fn same_mean(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// Does the served sensor window equal the expected aggregate?
pub fn sensor_exact(expected: &SensorAgg, served: &serde_json::Value) -> bool {
    let count = expected.count;
    let measure = |name: &str, s: &lambdalake_views::Stat| {
        num(served, &[name, "min"]) == Some(s.min)
            && num(served, &[name, "max"]) == Some(s.max)
            && num(served, &[name, "mean"]).is_some_and(|m| same_mean(m, s.mean(count)))
    };
    served.get("count").and_then(|c| c.as_u64()) == Some(count)
        && measure("temperature_c", &expected.temperature_c)
        && measure("vibration_mm_s", &expected.vibration_mm_s)
}

/// Does the served card window equal the expected aggregate (amounts to the cent)?
pub fn card_exact(expected: &CardAgg, served: &serde_json::Value) -> bool {
    let cents = |path: &[&str]| num(served, path).map(|v| (v * 100.0).round() as i64);
    served.get("count").and_then(|c| c.as_u64()) == Some(expected.count)
        && cents(&["amount", "sum"]) == Some(expected.amount_sum_cents)
        && cents(&["amount", "max"]) == Some(expected.amount_max_cents)
}

/// Judge one key's served windows (`windows` of a serving response, each with `start` in RFC
/// 3339) against the truth, over the windows starting in `[from_ms, to_ms)`: every settled window
/// of the truth must be served and equal; every served window the truth does not have (and that
/// is settled) is a phantom and counts wrong.
#[allow(clippy::too_many_arguments)]
pub fn judge<A: std::fmt::Debug>(
    truth: &BTreeMap<WindowKey, A>,
    settled: impl Fn(&WindowKey) -> bool,
    key: &str,
    from_ms: i64,
    to_ms: i64,
    served: &[serde_json::Value],
    exact: impl Fn(&A, &serde_json::Value) -> bool,
    wrong: &mut Vec<String>,
) -> Score {
    let mut by_start: HashMap<i64, &serde_json::Value> = HashMap::new();
    for w in served {
        if let Some(ms) = w
            .get("start")
            .and_then(|s| s.as_str())
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_millis())
        {
            by_start.insert(ms, w);
        }
    }
    let mut score = Score::default();
    let lo = (key.to_owned(), from_ms);
    let hi = (key.to_owned(), to_ms);
    for (w, agg) in truth.range(lo..hi) {
        if !settled(w) {
            continue;
        }
        score.judged += 1;
        match by_start.remove(&w.1) {
            Some(s) if exact(agg, s) => score.exact += 1,
            s => wrong.push(format!(
                "{key} {}: expected {agg:?}, served {}",
                crate::report::rfc3339(w.1),
                s.map_or("nothing".to_owned(), |s| s.to_string())
            )),
        }
    }
    for (start, s) in by_start {
        let w = (key.to_owned(), start);
        if (from_ms..to_ms).contains(&start) && !truth.contains_key(&w) && settled(&w) {
            // served, never sent
            score.judged += 1;
            wrong.push(format!(
                "{key} {}: never sent, served {s}",
                crate::report::rfc3339(start)
            ));
        }
    }
    score
}

/// Precision and recall of a set of flagged payments against the fraudulent ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Detection {
    pub flagged: u64,
    pub true_positives: u64,
    pub frauds: u64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

pub fn detection(flagged: &HashSet<String>, fraud: &HashSet<String>) -> Detection {
    let tp = flagged.intersection(fraud).count() as u64;
    let (f, n) = (flagged.len() as u64, fraud.len() as u64);
    Detection {
        flagged: f,
        true_positives: tp,
        frauds: n,
        precision: (f > 0).then(|| tp as f64 / f as f64),
        recall: (n > 0).then(|| tp as f64 / n as f64),
    }
}

/// Latency percentiles from an HDR histogram of microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn percentiles(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Percentiles {
        samples: h.len(),
        p50_ms: ms(0.5),
        p95_ms: ms(0.95),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use lambdalake_events::{EventId, EventTime, Ident, SensorReading};
    use serde_json::json;

    use super::*;

    fn reading(id: &str, dev: &str, ts: i64, t: f64, v: f64) -> Valid {
        Valid::Reading(SensorReading {
            event_id: EventId::parse(id).unwrap(),
            device_id: Ident::parse("device_id", dev).unwrap(),
            site: Ident::parse("site", "s").unwrap(),
            ts: EventTime::from_millis_unchecked(ts),
            temperature_c: t,
            vibration_mm_s: v,
        })
    }

    fn served(
        start_ms: i64,
        count: u64,
        t: (f64, f64, f64),
        v: (f64, f64, f64),
    ) -> serde_json::Value {
        let start = chrono::DateTime::from_timestamp_millis(start_ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        json!({"start": start, "count": count,
               "temperature_c": {"min": t.0, "max": t.1, "mean": t.2},
               "vibration_mm_s": {"min": v.0, "max": v.1, "mean": v.2}})
    }

    #[test]
    fn judge_counts_exact_wrong_missing_phantom_and_skips_unsettled() {
        let t0 = Instant::now();
        let mut truth = Truth::default();
        let m = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE_MS;
        // window m: two readings, one duplicate of the first (ignored)
        truth.accept(&reading("a", "d", m + 1, 20.0, 1.0), t0);
        truth.accept(&reading("b", "d", m + 2, 22.0, 3.0), t0);
        truth.accept(&reading("a", "d", m + 1, 20.0, 1.0), t0);
        // window m+1: one reading; window m+2: one; window m+3: touched just now
        truth.accept(&reading("c", "d", m + MINUTE_MS, 30.0, 0.5), t0);
        truth.accept(&reading("e", "d", m + 2 * MINUTE_MS, 31.0, 0.5), t0);
        let later = t0 + Duration::from_secs(10);
        truth.accept(&reading("f", "d", m + 3 * MINUTE_MS, 31.0, 0.5), later);
        assert_eq!(truth.readings, 5);
        let settle = Duration::from_secs(5);
        let now = t0 + Duration::from_secs(11);
        let served = vec![
            served(m, 2, (20.0, 22.0, 21.0), (1.0, 3.0, 2.0)), // exact
            served(m + MINUTE_MS, 2, (30.0, 30.0, 30.0), (0.5, 0.5, 0.5)), // wrong count
            // m+2 missing
            served(m + 3 * MINUTE_MS, 9, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)), // unsettled: skipped
            served(m + 4 * MINUTE_MS, 1, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)), // phantom
        ];
        let mut wrong = Vec::new();
        let s = judge(
            &truth.sensors,
            |w| truth.settled(w, now, settle),
            "d",
            m,
            m + 10 * MINUTE_MS,
            &served,
            sensor_exact,
            &mut wrong,
        );
        assert_eq!(
            s,
            Score {
                judged: 4,
                exact: 1
            }
        );
        // each wrong window named: the wrong count, the missing one, the phantom
        assert_eq!(wrong.len(), 3, "{wrong:?}");
        assert!(wrong[0].contains("served {"), "{wrong:?}");
        assert!(wrong[1].contains("served nothing"), "{wrong:?}");
        assert!(wrong[2].contains("never sent"), "{wrong:?}");
        assert_eq!(s.share(), 0.25);
        // out of range: nothing judged
        let s = judge(
            &truth.sensors,
            |_| true,
            "d",
            m + 20 * MINUTE_MS,
            m + 30 * MINUTE_MS,
            &served,
            sensor_exact,
            &mut wrong,
        );
        assert_eq!(s, Score::default());
        assert_eq!(s.share(), 1.0);
    }

    #[test]
    fn card_windows_compare_to_the_cent() {
        let agg = CardAgg {
            count: 2,
            amount_sum_cents: 123_457,
            amount_max_cents: 100_000,
            merchants: Default::default(),
            countries: Default::default(),
        };
        assert!(card_exact(
            &agg,
            &json!({"count": 2, "amount": {"sum": 1234.57, "max": 1000.0}})
        ));
        assert!(!card_exact(
            &agg,
            &json!({"count": 2, "amount": {"sum": 1234.56, "max": 1000.0}})
        ));
        assert!(!card_exact(
            &agg,
            &json!({"count": 3, "amount": {"sum": 1234.57, "max": 1000.0}})
        ));
        assert!(!card_exact(&agg, &json!({"count": 2})));
    }

    #[test]
    fn precision_and_recall() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        let d = detection(
            &set(&["a", "b", "c", "x"]),
            &set(&["a", "b", "c", "d", "e", "f"]),
        );
        assert_eq!((d.flagged, d.true_positives, d.frauds), (4, 3, 6));
        assert_eq!(d.precision, Some(0.75));
        assert_eq!(d.recall, Some(0.5));
        let none = detection(&set(&[]), &set(&[]));
        assert_eq!((none.precision, none.recall), (None, None));
    }

    #[test]
    fn percentiles_of_hand_made_latencies() {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        // 1 … 100 ms, one sample each
        for ms in 1..=100u64 {
            h.record(ms * 1000).unwrap();
        }
        let p = percentiles(&h);
        assert_eq!(p.samples, 100);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.001 + 0.001;
        assert!(close(p.p50_ms, 50.0), "{p:?}");
        assert!(close(p.p95_ms, 95.0), "{p:?}");
        assert!(close(p.p99_ms, 99.0), "{p:?}");
        assert!(close(p.max_ms, 100.0), "{p:?}");
        assert_eq!(
            percentiles(&hdrhistogram::Histogram::new(3).unwrap()),
            Percentiles::default()
        );
    }
}
