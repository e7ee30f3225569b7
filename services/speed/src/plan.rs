//! What one micro-batch of one partition changes, computed without I/O from its live events
//! (deduplicated within the batch and not late) and the partition's cached state, with the
//! functions of `lambdalake-views`. A plan holds the *new values* of every window, session and
//! history it touches; [`crate::apply`] writes them with the partition's offset in one atomic
//! Redis script, and [`PartCache::commit`] makes them the cached state once that succeeded.
//!
//! The cache holds the committed state of the windows that can still change: a window whose end
//! is at or behind the partition's watermark floor only receives late events, which are never
//! applied, so it is evicted. What is not cached is read from Redis before planning
//! ([`PartCache::missing`]), except windows that start after the largest event time the
//! partition had when it was assigned: no earlier event can be in them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A fast hash for the per-record maps (keys are ids, not attacker-chosen table sizes: a client
/// can only add keys it sends events for, each costing a validated event).
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use lambdalake_events::{Payment, SensorReading};
use lambdalake_views::fraud::{self, CardProfile, DeviceBaseline, Model, Seen};
use lambdalake_views::keys::{LatestScore, SensorView};
use lambdalake_views::{CardAgg, SensorAgg, SessionAggs, Sessions, Window, WindowSpec};
use serde::Serialize;

/// Payments more than this far behind a card's newest one are dropped from its fraud history
/// (10 minutes of recent payments plus the allowed lateness, so an out-of-order payment still
/// sees its full history); the newest is always kept (the previous location).
pub fn history_horizon_ms(allowed_lateness_ms: i64) -> i64 {
    fraud::RECENT_MS + allowed_lateness_ms
}

pub type SensorKey = (SensorView, i64, String);
pub type CardKey = (i64, String);
pub type History = Vec<(Seen, String)>;
/// Per device: its windows by (view, start).
pub type SensorState = FastMap<String, FastMap<(SensorView, i64), SensorAgg>>;
/// Per card: its 1-minute windows by start.
pub type CardState = FastMap<String, FastMap<i64, CardAgg>>;

/// The committed state of one partition's keys that can still change.
#[derive(Debug, Default)]
pub struct PartCache {
    /// Windows starting after this hold no event applied before the assignment (`None`: the
    /// partition had no stored state, nothing needs reading).
    pub restored_max_ts: Option<i64>,
    pub sensors: SensorState,
    pub cards: CardState,
    /// Per card: its open sessions and fraud history, as far as held (see [`bound_card_memory`]).
    pub card_memory: FastMap<String, Held>,
    /// Event ids counted, by event-time minute, for minutes not wholly behind the floor.
    pub seen: FastMap<i64, std::collections::HashSet<String, foldhash::fast::RandomState>>,
    /// Whether `seen` was read from Redis since the assignment.
    pub seen_loaded: bool,
    /// Whether a card memory left for the bound (`--card-cache`) since the assignment: a card
    /// not held may then have a stored memory even in a partition assigned without state.
    pub evicted: bool,
}

/// A card's memory in the cache, with the job that last planned it: it may leave the cache only
/// once that job was applied (Redis then holds the same state).
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub memory: CardMemory,
    /// The pipeline's sequence number of the job that last planned the card (0: read from Redis).
    pub planned: u64,
}

/// What the speed layer remembers of a card between batches (and stores, to read it back after
/// a restart): its sessions that can still grow, its recent payments, and the score of its
/// newest payment (what the serving layer's risk endpoint shows).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CardMemory {
    pub sessions: Vec<(Window, CardAgg)>,
    pub history: History,
    pub last: Option<LatestScore>,
}

#[derive(serde::Deserialize)]
struct StoredMemory {
    /// `[[ts, lat, lon, event_id], …]`
    history: Vec<(i64, f64, f64, String)>,
    sessions: Vec<lambdalake_views::keys::StoredCard>,
    /// Absent in states stored before it existed.
    #[serde(default)]
    last: Option<LatestScore>,
}

impl CardMemory {
    /// The last instant this state matters, epoch ms: its newest payment or the end of its
    /// newest open session. A view TTL behind the watermark, the apply script forgets it.
    pub fn matters_until(&self) -> i64 {
        let paid = self.history.iter().map(|(s, _)| s.ts_ms).max();
        let open = self.sessions.iter().map(|(w, _)| w.end.millis()).max();
        paid.max(open).unwrap_or(i64::MIN)
    }

    /// `{"history": [[ts, lat, lon, event_id], …], "sessions": [StoredCard, …], "last":
    /// LatestScore | null}`, written from borrowed parts.
    pub fn to_json(&self) -> String {
        let history: Vec<(i64, f64, f64, &str)> = self
            .history
            .iter()
            .map(|(s, id)| (s.ts_ms, s.lat, s.lon, id.as_str()))
            .collect();
        let mut out = String::with_capacity(64 + 160 * (history.len() + self.sessions.len()));
        out.push_str("{\"history\":");
        out.push_str(&serde_json::to_string(&history).unwrap_or_else(|_| "[]".to_owned()));
        out.push_str(",\"sessions\":[");
        for (i, (w, a)) in self.sessions.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&lambdalake_views::keys::StoredCard::json(*w, a));
        }
        out.push_str("],\"last\":");
        out.push_str(&serde_json::to_string(&self.last).unwrap_or_else(|_| "null".to_owned()));
        out.push('}');
        out
    }

    /// Unreadable data counts as none: it only feeds fraud features and session merging.
    pub fn from_json(json: &str) -> CardMemory {
        match serde_json::from_str::<StoredMemory>(json) {
            Ok(m) => CardMemory {
                history: m
                    .history
                    .into_iter()
                    .map(|(ts_ms, lat, lon, id)| (Seen { ts_ms, lat, lon }, id))
                    .collect(),
                sessions: m.sessions.iter().map(|s| (s.window(), s.agg())).collect(),
                last: m.last,
            },
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable stored card state");
                CardMemory::default()
            }
        }
    }
}

/// What must be read from Redis before a batch can be planned.
#[derive(Debug, Default)]
pub struct Missing {
    pub sensors: BTreeMap<(SensorView, i64), BTreeSet<String>>,
    pub cards: BTreeMap<i64, BTreeSet<String>>,
    pub card_memory: BTreeSet<String>,
}

impl Missing {
    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty() && self.cards.is_empty() && self.card_memory.is_empty()
    }
}

/// The view updates of one partition's micro-batch: new values only.
#[derive(Debug, Default)]
pub struct Plan {
    /// Event ids to mark as counted, by event-time minute.
    pub ids_by_minute: BTreeMap<i64, Vec<String>>,
    pub sensors: Vec<(SensorKey, Window, SensorAgg)>,
    pub cards: Vec<(CardKey, Window, CardAgg)>,
    /// Per card: the sessions to write and the starts to delete in the session view.
    pub sessions: Vec<SessionUpdate>,
    /// Per card: what it remembers after the batch.
    pub card_memory: Vec<(String, CardMemory)>,
    pub alerts: Vec<Alert>,
    /// Events the plan counts.
    pub events: usize,
    /// Largest event time in the plan.
    pub max_ts: Option<i64>,
}

#[derive(Debug)]
pub struct SessionUpdate {
    pub card: String,
    pub write: Vec<(Window, CardAgg)>,
    pub delete: Vec<i64>,
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

pub fn minute(ts: i64) -> i64 {
    ts.div_euclid(60_000)
}

impl PartCache {
    /// A partition assigned with the largest event time it had (None: never applied).
    pub fn new(restored_max_ts: Option<i64>) -> Self {
        PartCache {
            restored_max_ts,
            ..PartCache::default()
        }
    }

    /// Whether an event id with event time `ts` was counted.
    pub fn was_counted(&self, id: &str, ts: i64) -> bool {
        self.seen
            .get(&minute(ts))
            .is_some_and(|ids| ids.contains(id))
    }

    fn may_exist(&self, start: i64) -> bool {
        self.restored_max_ts.is_some_and(|m| start <= m)
    }

    /// The keys `readings` and `payments` touch that are neither cached nor known to be new.
    pub fn missing(&self, readings: &[&SensorReading], payments: &[&Payment]) -> Missing {
        let mut m = Missing::default();
        if self.restored_max_ts.is_none() && !self.evicted {
            return m;
        }
        for r in readings {
            let device = r.device_id.as_str();
            let cached = self.sensors.get(device);
            for view in SensorView::ALL {
                for w in view.spec().assign(r.ts) {
                    let start = w.start.millis();
                    if self.may_exist(start)
                        && !cached.is_some_and(|c| c.contains_key(&(view, start)))
                    {
                        m.sensors
                            .entry((view, start))
                            .or_default()
                            .insert(device.to_owned());
                    }
                }
            }
        }
        for p in payments {
            let card = p.card_id.as_str();
            let cached = self.cards.get(card);
            for w in WindowSpec::ONE_MINUTE.assign(p.ts) {
                let start = w.start.millis();
                if self.may_exist(start) && !cached.is_some_and(|c| c.contains_key(&start)) {
                    m.cards.entry(start).or_default().insert(card.to_owned());
                }
            }
            if !self.card_memory.contains_key(card) {
                m.card_memory.insert(card.to_owned());
            }
        }
        m
    }

    /// Plan a batch of sensor readings.
    pub fn plan_sensors(&self, readings: &[&SensorReading], reference: &Reference<'_>) -> Plan {
        let mut plan = Plan::default();
        let mut windows: FastMap<(SensorView, i64, &str), (Window, SensorAgg)> = FastMap::default();
        for r in readings {
            let ts = r.ts.millis();
            plan.ids_by_minute
                .entry(minute(ts))
                .or_default()
                .push(r.event_id.as_str().to_owned());
            plan.max_ts = Some(plan.max_ts.map_or(ts, |m| m.max(ts)));
            let device = r.device_id.as_str();
            for view in SensorView::ALL {
                for w in view.spec().assign(r.ts) {
                    let start = w.start.millis();
                    windows
                        .entry((view, start, device))
                        .and_modify(|(_, a)| a.add(r))
                        .or_insert_with(|| {
                            let old = self.sensors.get(device).and_then(|c| c.get(&(view, start)));
                            let agg = match old {
                                Some(old) => {
                                    let mut a = old.clone();
                                    a.add(r);
                                    a
                                }
                                None => SensorAgg::of(r),
                            };
                            (w, agg)
                        });
                }
            }
            if let Some(alert) = sensor_alert(r, reference) {
                plan.alerts.push(alert);
            }
        }
        plan.events = readings.len();
        plan.sensors = windows
            .into_iter()
            .map(|((view, start, device), (w, agg))| ((view, start, device.to_owned()), w, agg))
            .collect();
        plan
    }

    /// Plan a batch of payments.
    pub fn plan_payments(
        &self,
        payments: &[&Payment],
        horizon_ms: i64,
        reference: &Reference<'_>,
    ) -> Plan {
        let mut plan = Plan::default();
        let mut windows: FastMap<(i64, &str), (Window, CardAgg)> = FastMap::default();
        let mut sessions: FastMap<&str, SessionAggs<CardAgg>> = FastMap::default();
        let mut history: FastMap<&str, History> = FastMap::default();
        // the same history without ids, as `fraud::features` takes it
        let mut seen: FastMap<&str, Vec<Seen>> = FastMap::default();
        // per card: the score of its newest payment so far
        let mut last: FastMap<&str, Option<LatestScore>> = FastMap::default();
        let mut order: Vec<&str> = Vec::new();
        for p in payments {
            let card = p.card_id.as_str();
            let ts = p.ts.millis();
            plan.ids_by_minute
                .entry(minute(ts))
                .or_default()
                .push(p.event_id.as_str().to_owned());
            plan.max_ts = Some(plan.max_ts.map_or(ts, |m| m.max(ts)));
            for w in WindowSpec::ONE_MINUTE.assign(p.ts) {
                let start = w.start.millis();
                windows
                    .entry((start, card))
                    .and_modify(|(_, a)| a.add(p))
                    .or_insert_with(|| {
                        let old = self.cards.get(card).and_then(|c| c.get(&start));
                        let agg = match old {
                            Some(old) => {
                                let mut a = old.clone();
                                a.add(p);
                                a
                            }
                            None => CardAgg::of(p),
                        };
                        (w, agg)
                    });
            }
            sessions
                .entry(card)
                .or_insert_with(|| {
                    let mut s = SessionAggs::new(Sessions::CARD_GAP_MS);
                    for (w, a) in self
                        .card_memory
                        .get(card)
                        .into_iter()
                        .flat_map(|h| &h.memory.sessions)
                    {
                        s.add(*w, a.clone());
                    }
                    s
                })
                .add_event(p.ts, CardAgg::of(p));

            // fraud: the card's history before this payment
            let known = history.entry(card).or_insert_with(|| {
                order.push(card);
                self.card_memory
                    .get(card)
                    .map(|h| h.memory.history.clone())
                    .unwrap_or_default()
            });
            let card_seen = seen
                .entry(card)
                .or_insert_with(|| known.iter().map(|(s, _)| *s).collect());
            let profile = reference.profiles.get(card).and_then(Option::as_ref);
            let features = fraud::features(p, card_seen, profile);
            let score = fraud::score(&features, reference.model);
            let reasons = fraud::reasons(&features);
            let card_last = last.entry(card).or_insert_with(|| {
                self.card_memory
                    .get(card)
                    .and_then(|h| h.memory.last.clone())
            });
            // the newest payment by event time (a tie goes to the later offset)
            if card_last.as_ref().is_none_or(|l| ts >= l.ts) {
                *card_last = Some(LatestScore {
                    ts,
                    event_id: p.event_id.as_str().to_owned(),
                    txn_id: p.txn_id.as_str().to_owned(),
                    score: score.value,
                    model_version: score.by.clone(),
                    reasons: reasons.clone(),
                    features,
                    scored_at_ms: reference.now_ms,
                });
            }
            if score.value >= reference.fraud_threshold {
                plan.alerts.push(Alert {
                    alert_id: format!("fraud:{}", p.event_id.as_str()),
                    kind: "fraud",
                    key: card.to_owned(),
                    ts,
                    detected_at_ms: reference.now_ms,
                    score: Some(score.value),
                    model_version: score.by,
                    reasons,
                    features: serde_json::to_value(features).unwrap_or_default(),
                    event: serde_json::to_value(p).unwrap_or_default(),
                });
            }
            known.push((Seen::from(*p), p.event_id.as_str().to_owned()));
            card_seen.push(Seen::from(*p));
        }
        plan.events = payments.len();
        plan.cards = windows
            .into_iter()
            .map(|((start, card), (w, agg))| ((start, card.to_owned()), w, agg))
            .collect();
        for card in order {
            let all = sessions
                .remove(card)
                .map(SessionAggs::into_sessions)
                .unwrap_or_default();
            let old: &[(Window, CardAgg)] = self
                .card_memory
                .get(card)
                .map(|h| h.memory.sessions.as_slice())
                .unwrap_or_default();
            let write: Vec<(Window, CardAgg)> = all
                .iter()
                .filter(|(w, a)| !old.iter().any(|(ow, oa)| ow == w && oa == a))
                .cloned()
                .collect();
            let delete: Vec<i64> = old
                .iter()
                .map(|(w, _)| w.start.millis())
                .filter(|s| !all.iter().any(|(w, _)| w.start.millis() == *s))
                .collect();
            plan.sessions.push(SessionUpdate {
                card: card.to_owned(),
                write,
                delete,
            });
            let mut h = history.remove(card).unwrap_or_default();
            trim_history(&mut h, horizon_ms);
            plan.card_memory.push((
                card.to_owned(),
                CardMemory {
                    sessions: all,
                    history: h,
                    last: last.remove(card).flatten(),
                },
            ));
        }
        plan
    }

    /// The plan was handed to the applier as job `planned`: its values become the cached state;
    /// what can no longer change (behind `floor`) is evicted.
    pub fn commit(&mut self, plan: Plan, floor: Option<i64>, ttl_ms: i64, planned: u64) {
        for ((view, start, device), _, agg) in plan.sensors {
            self.sensors
                .entry(device)
                .or_default()
                .insert((view, start), agg);
        }
        for ((start, card), _, agg) in plan.cards {
            self.cards.entry(card).or_default().insert(start, agg);
        }
        for (card, memory) in plan.card_memory {
            self.card_memory.insert(card, Held { memory, planned });
        }
        for (m, ids) in plan.ids_by_minute {
            self.seen.entry(m).or_default().extend(ids);
        }
        let Some(floor) = floor else { return };
        // a minute wholly behind the floor only has late events from now on
        self.seen.retain(|m, _| (m + 1) * 60_000 > floor);
        let view_end = |view: SensorView, start: i64| match view.spec() {
            WindowSpec::Tumbling { size_ms } | WindowSpec::Sliding { size_ms, .. } => {
                start + size_ms
            }
        };
        // a window ending at or before the floor receives only late events
        self.sensors.retain(|_, windows| {
            windows.retain(|(view, start), _| view_end(*view, *start) > floor);
            !windows.is_empty()
        });
        self.cards.retain(|_, windows| {
            windows.retain(|start, _| start + 60_000 > floor);
            !windows.is_empty()
        });
        // a session ending before the floor cannot merge with any event applied from now on; a
        // card with no open session and no payment for a view TTL is done with (the apply
        // script forgets its stored state by the same rule)
        self.card_memory.retain(|_, h| {
            h.memory.sessions.retain(|(w, _)| w.end.millis() >= floor);
            h.memory.matters_until() >= floor - ttl_ms
        });
    }
}

/// Bound the card memories held over every partition's cache to `capacity`: once over it, the
/// least recently planned go until a quarter of the capacity is free again (one pass per
/// quarter, not one per card). Only a card whose last job the applier finished (`planned <=
/// applied`) may go: Redis then holds what the cache held, and [`PartCache::missing`] reads it
/// back when the card pays again. Returns how many went.
pub fn bound_card_memory<K>(
    caches: &mut HashMap<K, PartCache>,
    capacity: usize,
    applied: u64,
) -> usize {
    let held: usize = caches.values().map(|c| c.card_memory.len()).sum();
    if held <= capacity {
        return 0;
    }
    let target = capacity - capacity / 4;
    let mut evictable: Vec<u64> = caches
        .values()
        .flat_map(|c| c.card_memory.values().map(|h| h.planned))
        .filter(|&p| p <= applied)
        .collect();
    let go = (held - target).min(evictable.len());
    if go == 0 {
        return 0;
    }
    // the `go`-th oldest job: everything planned up to it leaves (ties may take a few more)
    let (_, &mut threshold, _) = evictable.select_nth_unstable(go - 1);
    let mut gone = 0;
    for cache in caches.values_mut() {
        let before = cache.card_memory.len();
        cache
            .card_memory
            .retain(|_, h| h.planned > threshold || h.planned > applied);
        let went = before - cache.card_memory.len();
        cache.evicted |= went > 0;
        gone += went;
    }
    gone
}

/// Keep the entries within `horizon_ms` of the newest (the newest always stays).
pub fn trim_history(h: &mut History, horizon_ms: i64) {
    if let Some(newest) = h.iter().map(|(s, _)| s.ts_ms).max() {
        h.retain(|(s, _)| s.ts_ms >= newest - horizon_ms);
    }
}

fn sensor_alert(r: &SensorReading, reference: &Reference<'_>) -> Option<Alert> {
    let baseline = reference
        .baselines
        .get(r.device_id.as_str())
        .and_then(Option::as_ref);
    let reasons = fraud::sensor_alerts(r, baseline);
    if reasons.is_empty() {
        return None;
    }
    let z = baseline.map(|b| {
        let z = |v: f64, mean: f64, std: f64| if std > 0.0 { (v - mean) / std } else { 0.0 };
        (
            z(r.temperature_c, b.temperature_mean, b.temperature_std),
            z(r.vibration_mm_s, b.vibration_mean, b.vibration_std),
        )
    });
    Some(Alert {
        alert_id: format!("sensor:{}", r.event_id.as_str()),
        kind: "sensor",
        key: r.device_id.as_str().to_owned(),
        ts: r.ts.millis(),
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
            .filter_map(|a| {
                serde_json::to_value(a)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
            })
            .collect(),
        features: serde_json::json!({
            "temperature_c": r.temperature_c,
            "vibration_mm_s": r.vibration_mm_s,
            "temperature_z": z.map(|z| z.0),
            "vibration_z": z.map(|z| z.1),
        }),
        event: serde_json::to_value(r).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use lambdalake_events::{Event, Policy};
    use lambdalake_views::fraud::Features;

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
        let mut cache = PartCache::new(Some(t0));
        cache.card_memory.insert(
            "c".to_owned(),
            Held {
                memory: CardMemory {
                    sessions: Vec::new(),
                    history: vec![(paris, "e1".to_owned())],
                    last: None,
                },
                planned: 0,
            },
        );
        // New York five minutes later
        let ny = payment("e2", "c", t0 + 300_000, 40.71, -74.0);
        let plan = cache.plan_payments(&[&ny], 600_000, &reference(&p, &b));
        assert_eq!(plan.alerts.len(), 1);
        assert_eq!(plan.alerts[0].alert_id, "fraud:e2");
        assert_eq!(plan.alerts[0].reasons, ["impossible_travel"]);
        assert_eq!(plan.alerts[0].model_version, "rules");
        assert_eq!(plan.card_memory[0].1.history.len(), 2);
        let last = plan.card_memory[0].1.last.as_ref().unwrap();
        assert_eq!((last.event_id.as_str(), last.ts), ("e2", t0 + 300_000));
        assert_eq!(last.score, plan.alerts[0].score.unwrap());
        assert_eq!(last.reasons, ["impossible_travel"]);
        // without the history, no alert
        let plan = PartCache::new(None).plan_payments(&[&ny], 600_000, &reference(&p, &b));
        assert!(plan.alerts.is_empty());
    }

    #[test]
    fn the_latest_score_is_the_newest_payments_and_a_late_payment_keeps_it() {
        let (p, b) = (HashMap::new(), HashMap::new());
        let t0 = 1_764_064_800_000;
        let mut cache = PartCache::new(None);
        let newer = payment("e2", "c", t0 + 60_000, 0.0, 0.0);
        let older = payment("e1", "c", t0, 0.0, 0.0);
        // out of order within a batch
        let plan = cache.plan_payments(&[&newer, &older], 600_000, &reference(&p, &b));
        assert_eq!(plan.card_memory[0].1.last.as_ref().unwrap().event_id, "e2");
        cache.commit(plan, None, 3_600_000, 1);
        // and across batches
        let late = payment("e0", "c", t0 - 60_000, 0.0, 0.0);
        let plan = cache.plan_payments(&[&late], 600_000, &reference(&p, &b));
        assert_eq!(plan.card_memory[0].1.last.as_ref().unwrap().event_id, "e2");
        cache.commit(plan, None, 3_600_000, 1);
        let next = payment("e3", "c", t0 + 120_000, 0.0, 0.0);
        let plan = cache.plan_payments(&[&next], 600_000, &reference(&p, &b));
        let last = plan.card_memory[0].1.last.as_ref().unwrap();
        assert_eq!(
            (last.event_id.as_str(), last.model_version.as_str()),
            ("e3", "rules")
        );
        assert_eq!(last.features.recent_count, 4);
    }

    #[test]
    fn a_bridging_payment_merges_stored_sessions_and_deletes_the_absorbed_one() {
        let (p, b) = (HashMap::new(), HashMap::new());
        let t0 = 1_764_064_800_000;
        let gap = Sessions::CARD_GAP_MS;
        let mut cache = PartCache::new(Some(t0 + 3 * gap));
        let first = payment("e1", "c", t0, 0.0, 0.0);
        let second = payment("e2", "c", t0 + gap + 60_000, 0.0, 0.0);
        let plan = cache.plan_payments(&[&first, &second], 600_000, &reference(&p, &b));
        assert_eq!(plan.card_memory[0].1.sessions.len(), 2);
        cache.commit(plan, None, 3_600_000, 1);
        let bridge = payment("e3", "c", t0 + 60_000, 0.0, 0.0);
        let plan = cache.plan_payments(&[&bridge], 600_000, &reference(&p, &b));
        let u = &plan.sessions[0];
        let all = &plan.card_memory[0].1.sessions;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.count, 3);
        assert_eq!(u.delete, [t0 + gap + 60_000]);
        assert_eq!(u.write.len(), 1);
    }

    #[test]
    fn only_keys_that_may_exist_are_read() {
        let t0 = 1_764_064_800_000;
        let r = lambdalake_events::SensorReading::from_json(
            format!(r#"{{"event_id":"e","device_id":"d","site":"s","ts":{t0},"temperature_c":1,"vibration_mm_s":1}}"#).as_bytes(),
            &Policy::stored(),
        )
        .unwrap();
        assert!(PartCache::new(None).missing(&[&r], &[]).is_empty());
        // restored just before t0: the windows starting at or before it may exist
        let m = PartCache::new(Some(t0 - 1)).missing(&[&r], &[]);
        assert_eq!(m.sensors.len(), 4, "{m:?}"); // 4 sliding windows start before t0
    }

    #[test]
    fn the_card_bound_drops_the_least_recently_planned_and_only_what_was_applied() {
        let mut caches: HashMap<(usize, i32), PartCache> = HashMap::new();
        for (i, planned) in (1..=10u64).enumerate() {
            let cache = caches.entry((1, (i % 2) as i32)).or_default();
            let memory = CardMemory::default();
            cache
                .card_memory
                .insert(format!("c{planned}"), Held { memory, planned });
        }
        let held = |caches: &HashMap<(usize, i32), PartCache>| -> BTreeSet<String> {
            caches
                .values()
                .flat_map(|c| c.card_memory.keys().cloned())
                .collect()
        };
        // within the bound: nothing goes
        assert_eq!(bound_card_memory(&mut caches, 10, 10), 0);
        // over it, but the applier finished only jobs 1..=4: those go, nothing newer
        assert_eq!(bound_card_memory(&mut caches, 4, 4), 4);
        assert_eq!(held(&caches).len(), 6);
        assert!(!held(&caches).contains("c4") && held(&caches).contains("c5"));
        // a partition assigned without state now reads the cards it does not hold
        let cache = caches.get(&(1, 0)).unwrap();
        assert!(cache.evicted && cache.restored_max_ts.is_none());
        let p = payment("e", "c2", 1_764_064_800_000, 0.0, 0.0);
        let missing = cache.missing(&[], &[&p]);
        assert_eq!(missing.card_memory, BTreeSet::from(["c2".to_owned()]));
        assert!(
            missing.cards.is_empty(),
            "windows are not evicted: none to read"
        );
        // all applied: down to three quarters of the bound, oldest first
        assert_eq!(bound_card_memory(&mut caches, 4, 10), 3);
        assert_eq!(
            held(&caches),
            BTreeSet::from(["c8", "c9", "c10"].map(str::to_owned))
        );
        // a bound of 0 keeps only what is in flight
        assert_eq!(bound_card_memory(&mut caches, 0, 9), 2);
        assert_eq!(held(&caches), BTreeSet::from(["c10".to_owned()]));
    }

    #[test]
    fn a_card_matters_until_its_newest_payment_or_open_session_end() {
        let t0 = 1_764_064_800_000;
        let seen = |ts_ms| {
            (
                Seen {
                    ts_ms,
                    lat: 0.0,
                    lon: 0.0,
                },
                "e".to_owned(),
            )
        };
        let mut m = CardMemory::default();
        assert_eq!(m.matters_until(), i64::MIN);
        m.history = vec![seen(t0 + 5_000), seen(t0 + 9_000), seen(t0 + 7_000)];
        assert_eq!(m.matters_until(), t0 + 9_000);
        let w = Window {
            start: lambdalake_events::EventTime::from_millis_unchecked(t0 + 8_000),
            end: lambdalake_events::EventTime::from_millis_unchecked(t0 + 20_000),
        };
        let p = payment("e", "c", t0 + 8_000, 0.0, 0.0);
        m.sessions = vec![(w, CardAgg::of(&p))];
        assert_eq!(m.matters_until(), t0 + 20_000);
    }

    #[test]
    fn card_memory_round_trips() {
        let m = CardMemory {
            sessions: Vec::new(),
            history: vec![(
                Seen {
                    ts_ms: 1_764_064_800_123,
                    lat: -33.8688,
                    lon: 151.2093,
                },
                "a|b\"c".to_owned(),
            )],
            last: Some(LatestScore {
                ts: 1_764_064_800_123,
                event_id: "a|b\"c".to_owned(),
                txn_id: "t".to_owned(),
                score: 0.125,
                model_version: "batch-v3".to_owned(),
                reasons: vec!["new_country".to_owned()],
                features: Features {
                    amount_z: -0.5,
                    recent_count: 2,
                    travel_kmh: 12.25,
                    new_country: true,
                    mcc_risk: 0.1,
                },
                scored_at_ms: 1_764_064_801_000,
            }),
        };
        assert_eq!(CardMemory::from_json(&m.to_json()), m);
        // a state stored before `last` existed
        let old = r#"{"history":[],"sessions":[]}"#;
        assert_eq!(CardMemory::from_json(old), CardMemory::default());
        assert_eq!(CardMemory::from_json("garbage"), CardMemory::default());
    }
}
